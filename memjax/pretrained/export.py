"""Export a trained experiment run into the pretrained registry format.

A run directory written by one of the experiment scripts (``config.json`` +
orbax checkpoints, see :func:`memjax.training.load_checkpoint`) becomes
``NAME.npz`` + ``NAME.json`` (:mod:`memjax.pretrained`), by default inside the
package (``memjax/pretrained/models/``) so that it ships with memjax:

    python -m memjax.pretrained.export --workdir runs/copy --name ntm-copy --table copy
    python -m memjax.pretrained.export --workdir runs/mann_onehot --name mann-omniglot-5way \\
      --table mann-table1 --results runs/mann_onehot/results.json \\
      --command "python experiments/omniglot_mann.py --optimizer adam --lr 1e-3 --max-minutes 121"

The model is rebuilt with the experiment's own ``build_model`` from the run's
``config.json`` (so any attribute the experiment sets — e.g. the MANN cell's
``write`` — is recorded without a change here), the latest checkpoint is
restored into it, and the record gets the paper table and row, data split,
image size, number of classes, the training command (``--command``, else
rebuilt from ``config.json``: the flags that differ from the script's
defaults), steps and episodes trained, the measured results
(``--results``, default ``WORKDIR/results.json``), the date and the hardware.
Needs a source checkout (the ``experiments/`` folder).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import shlex
import sys
from pathlib import Path
from types import ModuleType

import jax
import jax.numpy as jnp

from memjax import cli
from memjax.pretrained import _registry

# Experiment script -> a key its config.json always has (and the others never do).
EXPERIMENTS = {
    "copy_task": "shift_range",
    "omniglot_mann": "label_mode",
    "omniglot_metanet": "ablate",
}
REGISTRY_BUDGET_BYTES = 30 * 2**20  # all shipped weights together (issue 13)


def experiments_dir() -> Path | None:
  """The ``experiments/`` folder of the source checkout memjax runs from (or of
  the working directory), or None."""
  for root in (Path(__file__).resolve().parents[2], Path.cwd()):
    if (root / "experiments" / "copy_task.py").is_file():
      return root / "experiments"
  return None


def load_experiment(script: str, directory: Path | None = None) -> ModuleType:
  """Imports ``experiments/<script>.py`` (without running it).

  Raises:
    FileNotFoundError: no source checkout with ``experiments/`` is found.
  """
  directory = directory or experiments_dir()
  path = None if directory is None else Path(directory) / f"{script}.py"
  if path is None or not path.is_file():
    raise FileNotFoundError(
        f"experiments/{script}.py not found: exporting and retraining need a source checkout of "
        "memjax (run from the repository root, or install it with `pip install -e .`)")
  spec = importlib.util.spec_from_file_location(f"memjax_experiment_{script}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def detect_experiment(config: dict) -> str:
  """The experiment script (stem) that wrote a run's ``config.json``."""
  for script, key in EXPERIMENTS.items():
    if key in config:
      return script
  raise ValueError(f"config.json of an unknown experiment (none of the keys {sorted(EXPERIMENTS.values())})")


def run_args(module: ModuleType, config: dict) -> argparse.Namespace:
  """The experiment's parsed flags as in a run: its defaults, updated with ``config``."""
  args = module.build_parser().parse_args([])
  vars(args).update(config)
  return args


def build_run_model(script: str, module: ModuleType, args: argparse.Namespace):
  """``(model, example inputs, optimizer)`` of a run, built by the experiment's own code."""
  from memjax import tasks, training
  from memjax.data import episodes as episodes_lib

  if script == "copy_task":
    model, _ = module.build_model(args)
    _, train_kw, _, _ = module.task_config(args)
    sampler = tasks.TASKS[args.task][0]
    example = sampler(jax.random.key(0), 1, **train_kw).inputs
    inputs = (jax.ShapeDtypeStruct(example.shape, example.dtype),)
    optimizer = training.make_optimizer(args.optimizer, args.lr, clip=args.clip)
  elif script == "omniglot_mann":
    features = episodes_lib.label_dim(args.num_classes, args.label_mode)
    model, _ = module.build_model(args, features)
    steps = args.num_classes * args.samples_per_class
    inputs = (jax.ShapeDtypeStruct((1, steps, args.image_size ** 2 + features), jnp.float32),)
    # The run's own optimiser: its step decay (--lr-drop-steps) is part of the state's structure.
    optimizer = module.make_optimizer(args, module.lr_of(vars(args)))
  elif script == "omniglot_metanet":
    model = module.build_model(args)
    size, n = module.IMAGE_SIZE, args.num_classes
    inputs = (jax.ShapeDtypeStruct((n * module.NUM_SUPPORT, size, size, 1), jnp.float32),
              jax.ShapeDtypeStruct((n * module.NUM_SUPPORT,), jnp.int32),
              jax.ShapeDtypeStruct((n * args.num_query, size, size, 1), jnp.float32))
    optimizer = module.make_optimizer(args)
  else:
    raise ValueError(f"argument `script`: expected one of {sorted(EXPERIMENTS)}, got {script!r}")
  return model, inputs, optimizer


def restore_params(workdir: str | os.PathLike, model, inputs, optimizer):
  """The parameters and step of the latest checkpoint in ``workdir`` (the
  parameter average where the run kept one: :func:`memjax.training.averaged_params`)."""
  from memjax import training

  like = jax.eval_shape(lambda k, *xs: training.init_state(model.init(k, *xs), optimizer),
                        jax.random.key(0), *inputs)
  state = training.load_checkpoint(str(workdir), like)
  return training.averaged_params(state), int(state.step)


def command_from_config(module: ModuleType, script: str, config: dict) -> list[str]:
  """The flags of ``config`` that differ from the script's defaults, as argv."""
  argv = []
  for action in module.build_parser()._actions:
    if action.dest not in config or not action.option_strings:
      continue
    value = config[action.dest]
    if value == action.default:
      continue
    flag = max(action.option_strings, key=len)
    if isinstance(action, argparse._StoreTrueAction):
      if value:
        argv.append(flag)
      continue
    if isinstance(value, (list, tuple)):  # --lr-schedule's [[step, lr], ...] as STEP:LR,...
      value = ",".join(":".join(str(x) for x in v) if isinstance(v, (list, tuple)) else str(v)
                       for v in value)
    argv += [flag, str(value)]
  return argv


def parse_command(command: str, script: str, module: ModuleType) -> list[str]:
  """The flags of a training command ``python experiments/<script>.py FLAGS``, checked
  with the script's own parser."""
  words = shlex.split(command)
  at = next((i for i, w in enumerate(words) if w.endswith(f"{script}.py")), None)
  if at is None:
    raise ValueError(f"argument `command`: expected `python experiments/{script}.py ...` (the "
                     f"script that wrote the run), got {command!r}")
  argv = words[at + 1:]
  try:
    module.build_parser().parse_args(argv)
  except SystemExit:
    raise ValueError(f"argument `command`: experiments/{script}.py rejects the flags {argv}") from None
  return argv


def hardware() -> str:
  """A one-line description of this machine: CPU model and cores, JAX devices."""
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    cpu = names[0] if names else cpu
  except OSError:
    pass
  devices = jax.devices()
  text = f"{os.cpu_count()} CPU cores ({cpu}, {platform.machine()})"
  if devices[0].platform != "cpu":
    text += f", {len(devices)} × {devices[0].device_kind}"
  return f"{text}, JAX {jax.__version__} {devices[0].platform}"


def export_run(workdir: str | os.PathLike, name: str, *, table: str, row: str | None = None,
               results: str | os.PathLike | None = None, command: str | None = None,
               hardware_text: str | None = None, date: str | None = None, note: str | None = None,
               out_dir: str | os.PathLike | None = None, force: bool = False,
               experiments: Path | None = None) -> Path:
  """Writes the latest checkpoint of an experiment run as pretrained model ``name``.

  Args:
    workdir: the run directory (``config.json``, ``checkpoints/``, ``results.json``).
    name: registry name, e.g. ``ntm-copy``.
    table: the results table the model reproduces (a :mod:`memjax.reproduce` table).
    row: label of its row (default: from the model and the run).
    results: the run's results JSON (default ``workdir/results.json`` when present).
    command: the training command (default: rebuilt from ``config.json``).
    hardware_text: where it was trained (default: this machine).
    date: when (default: the results' date, else today).
    note: free text recorded with the model (e.g. "short of the paper's row").
    out_dir: registry directory (default: the package's ``memjax/pretrained/models``).
    force: overwrite an existing model of that name.
    experiments: the ``experiments/`` folder (default: found from the checkout).

  Returns:
    The path of ``NAME.json``.
  """
  workdir = Path(workdir)
  out_dir = Path(out_dir) if out_dir is not None else _registry.PACKAGE_DIR
  if not force and (out_dir / f"{name}.json").exists():
    raise FileExistsError(f"{out_dir / (name + '.json')} exists; pass force=True (--force) to replace it")
  config_path = workdir / "config.json"
  try:
    config = json.loads(config_path.read_text())
  except FileNotFoundError:
    raise FileNotFoundError(f"{config_path}: no such file; --workdir must be an experiment run "
                            "directory") from None
  script = detect_experiment(config)
  module = load_experiment(script, experiments)
  args = run_args(module, config)
  model, inputs, optimizer = build_run_model(script, module, args)
  params, step = restore_params(workdir, model, inputs, optimizer)

  results_path = Path(results) if results is not None else workdir / "results.json"
  if results is not None or results_path.exists():
    result_record = json.loads(results_path.read_text())
    result_record.pop("config", None)  # the same as run_config below
  else:
    result_record = None
  if command is None:
    argv = command_from_config(module, script, config)
  else:
    argv = parse_command(command, script, module)
  train_command = " ".join(["python", f"experiments/{script}.py"] + [shlex.quote(a) for a in argv])
  batch = int(config.get("batch_size", 1))
  kind = {"copy_task": "sequences", "omniglot_mann": "episodes", "omniglot_metanet": "episodes"}[script]
  record = {
      "table": table,
      "row": row or _default_row(script, args),
      "split": ({"train": config.get("train_split"), "test": config.get("test_split")}
                if script != "copy_task" else None),
      "image_size": (config.get("image_size") if script == "omniglot_mann"
                     else module.IMAGE_SIZE if script == "omniglot_metanet" else None),
      "num_classes": config.get("num_classes"),
      "train_command": train_command,
      "train": {"script": f"experiments/{script}.py", "argv": argv},
      "steps": step,
      kind: step * batch,
      "results": result_record,
      "date": date or (result_record or {}).get("date") or datetime.date.today().isoformat(),
      "hardware": hardware_text or hardware(),
      "note": note,
      "run_config": config,
      **({"restored_from": marker} if (marker := _restored_from(workdir)) else {}),
      "memjax_version": _memjax_version(),
      "exported": datetime.datetime.now().isoformat(timespec="seconds"),
  }
  path = _registry.save(out_dir, name, model, params, inputs, record)
  total = sum(p.stat().st_size for p in out_dir.glob("*.npz"))
  if out_dir == _registry.PACKAGE_DIR and total > REGISTRY_BUDGET_BYTES:
    print(f"warning: the shipped weights now take {total / 2**20:.1f} MB, over the "
          f"{REGISTRY_BUDGET_BYTES / 2**20:.0f} MB budget", file=sys.stderr)
  return path


def _restored_from(workdir: Path) -> dict | None:
  """The model a run was restored from (:mod:`memjax.pretrained.restore`), or None."""
  from memjax.pretrained.restore import restored_from
  return restored_from(workdir)


def _default_row(script: str, args) -> str:
  if script == "copy_task":
    return f"memjax NTM, {args.task}, seed {args.seed}"
  if script == "omniglot_mann":
    return f"memjax {args.model.upper()}, {args.num_classes}-way {args.label_mode}"
  ablate = "" if args.ablate == "none" else f" ({args.ablate})"
  return f"memjax MetaNet{ablate}, {args.num_classes}-way 1-shot"


def _memjax_version() -> str:
  import memjax
  return memjax.__version__


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m memjax.pretrained.export",
                              description=__doc__.split("\n\n")[0],
                              formatter_class=cli.HelpFormatter)
  p.add_argument("--workdir", required=True, help="the experiment run directory")
  p.add_argument("--name", required=True, help="registry name, e.g. ntm-copy")
  p.add_argument("--table", required=True, help="the table it reproduces (python -m memjax.reproduce --help)")
  p.add_argument("--row", default=None, help="label of its row in the table")
  p.add_argument("--results", default=None, help="results JSON (default: WORKDIR/results.json)")
  p.add_argument("--command", default=None,
                 help="training command, 'python experiments/SCRIPT.py FLAGS' (default: from config.json)")
  p.add_argument("--hardware", default=None, help="where it was trained (default: this machine)")
  p.add_argument("--date", default=None, help="when it was trained (default: the results' date)")
  p.add_argument("--note", default=None, help="free text recorded with the model")
  p.add_argument("--out", default=None, help="registry directory (default: inside the package)")
  p.add_argument("--force", action="store_true", help="replace an existing model of that name")
  return p


def main(argv=None) -> Path:
  parser = build_parser()
  args = parser.parse_args(argv)
  from memjax.reproduce import TABLES
  if args.table not in TABLES:
    parser.error(f"argument --table: expected one of {sorted(TABLES)}, got {args.table!r}")
  if not _registry._NAME.match(args.name):
    parser.error(f"argument --name: expected lowercase letters, digits and '-', got {args.name!r}")
  try:
    path = export_run(args.workdir, args.name, table=args.table, row=args.row, results=args.results,
                      command=args.command, hardware_text=args.hardware, date=args.date,
                      note=args.note, out_dir=args.out, force=args.force)
  except (FileNotFoundError, FileExistsError, ValueError) as e:
    parser.error(str(e))
  record = json.loads(path.read_text())
  print(f"wrote {path} and {path.with_suffix('.npz').name} ({record['weights']['bytes'] / 2**20:.2f} MB, "
        f"sha256 {record['weights']['sha256'][:16]}…), {record['steps']} steps")
  return path


if __name__ == "__main__":
  main()
