"""Turn a pretrained model back into a resumable experiment run (the inverse of export).

A shipped model (``NAME.json`` + ``NAME.npz``, :mod:`memjax.pretrained`) holds
the trained parameters and the run's configuration, not its checkpoints. This
writes a run folder that the experiment's ``--resume`` continues, so a shipped
model can be trained further without the machine it was trained on:

    python -m memjax.pretrained.restore --name metanet-omniglot-5way --workdir runs/metanet_5way_more
    python experiments/omniglot_metanet.py --data-dir PATH/TO/omniglot --ablate no_task \\
        --lr 1e-3 --steps 26000 --resume --workdir runs/metanet_5way_more

The folder gets ``config.json`` (the recorded ``run_config``, ``workdir``
replaced), one checkpoint at the recorded step holding the shipped parameters
and a new optimiser state, and ``restored_from.json`` (the model's name,
sha256 and step; :mod:`memjax.pretrained.export` copies it into the record of
a model exported from the folder). The optimiser state is not shipped, so it
restarts: Adam's / RMSProp's moments from zero (Adam's bias correction with
them), while learning-rate schedules (``--lr-schedule``, ``--lr-drop-steps``)
keep their place — their step count is set to the restored step. Training
episodes continue where the original run's would have (the step keys are
``fold_in(key(seed), step)``). Needs a source checkout (``experiments/``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

from memjax import cli, training
from memjax.pretrained import _registry
from memjax.pretrained.export import build_run_model, detect_experiment, load_experiment, run_args

MARKER = "restored_from.json"


def optimizer_state_at(optimizer: optax.GradientTransformation, params, step: int):
  """A new state of ``optimizer`` for ``params`` whose schedules stand at ``step``
  (every :class:`optax.ScaleByScheduleState` count); moments and bias-correction
  counts start from zero."""
  def at_step(node):
    if isinstance(node, optax.ScaleByScheduleState):
      return node._replace(count=jnp.asarray(step, jnp.asarray(node.count).dtype))
    return node

  return jax.tree.map(at_step, optimizer.init(params),
                      is_leaf=lambda x: isinstance(x, optax.ScaleByScheduleState))


def restore_run(name: str, workdir: str | os.PathLike, *, path: str | os.PathLike | None = None,
                experiments: Path | None = None) -> training.TrainState:
  """Writes pretrained model ``name`` (or the record at ``path``) as a run folder
  ``workdir`` that its experiment script continues with ``--resume``.

  Args:
    name: a registry name (:func:`memjax.pretrained.available`); ignored when
      ``path`` is given.
    workdir: the new run folder; must not hold a run already.
    path: a ``NAME.json`` record to restore instead of a registry name.
    experiments: the ``experiments/`` folder (default: found from the checkout).

  Returns:
    The checkpointed :class:`memjax.training.TrainState` (step = the record's steps).

  Raises:
    FileExistsError: ``workdir`` already holds a ``config.json`` or checkpoints.
    ValueError: an unknown name, a record without a run configuration, or
      weights that do not fit the run's model (:class:`PretrainedFileError`).
  """
  workdir = str(workdir)
  for existing in ("config.json", "checkpoints"):
    if os.path.exists(os.path.join(workdir, existing)):
      raise FileExistsError(f"{os.path.join(workdir, existing)} exists: --workdir must be a new "
                            "folder (restoring never overwrites a run)")
  record_path = Path(path) if path is not None else _registry.path_of(name)
  pretrained = _registry.load_file(record_path)
  record = pretrained.config
  config = record.get("run_config")
  if not isinstance(config, dict) or "steps" not in record:
    raise ValueError(f"{record_path}: no run configuration or steps recorded (not exported from a "
                     "training run), nothing to resume")
  script = detect_experiment(config)
  module = load_experiment(script, experiments)
  config = dict(config, workdir=workdir)
  model, inputs, optimizer = build_run_model(script, module, run_args(module, config))
  like = jax.eval_shape(model.init, jax.random.key(0), *inputs)
  got = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), pretrained.variables)
  if jax.tree.structure(like) != jax.tree.structure(got) or jax.tree.leaves(like) != jax.tree.leaves(got):
    raise _registry.PretrainedFileError(
        f"{record_path}: the weights do not fit the model experiments/{script}.py builds from the "
        "recorded run configuration (was it exported by another memjax version?)")
  step = int(record["steps"])
  state = training.TrainState(jnp.asarray(step, jnp.int32), pretrained.variables,
                              optimizer_state_at(optimizer, pretrained.variables, step))
  os.makedirs(workdir, exist_ok=True)
  ckpt = training._Checkpointer(workdir, keep=None)
  try:
    ckpt.save(state)
  finally:
    ckpt.close()
  training._write_json(os.path.join(workdir, "config.json"), config)
  training._write_json(os.path.join(workdir, MARKER), {
      "name": record.get("name"), "sha256": record["weights"]["sha256"], "step": step,
      "train_command": record.get("train_command"), "optimizer_state": "reinitialised",
      "restored": datetime.datetime.now().isoformat(timespec="seconds")})
  return state


def restored_from(workdir: str | os.PathLike) -> dict | None:
  """``workdir``'s :data:`MARKER` (the model a run was restored from), or None."""
  marker = Path(workdir) / MARKER
  return json.loads(marker.read_text()) if marker.exists() else None


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m memjax.pretrained.restore",
                              description=__doc__.split("\n\n")[0],
                              formatter_class=cli.HelpFormatter)
  p.add_argument("--name", required=True, help="the pretrained model (python -c 'import memjax.pretrained as p; "
                 "print(p.available())')")
  p.add_argument("--workdir", required=True, help="the new run folder (must not hold a run)")
  return p


def main(argv=None) -> training.TrainState:
  parser = build_parser()
  args = parser.parse_args(argv)
  try:
    state = restore_run(args.name, args.workdir)
  except (FileNotFoundError, FileExistsError, ValueError) as e:
    parser.error(str(e))
  marker = restored_from(args.workdir)
  print(f"restored {args.name} (sha256 {marker['sha256'][:16]}…) into {args.workdir} at step "
        f"{int(state.step)}, with a new optimiser state; continue it with its experiment's flags "
        f"(recorded: {marker['train_command']}), a larger --steps, and --resume --workdir {args.workdir}")
  return state


if __name__ == "__main__":
  main()
