"""Small helpers shared by the experiment scripts' command lines.

The argparse types (from :mod:`memjax._checks`, re-exported here) turn a bad
value into argparse's usage message and exit code 2 (not a traceback);
:class:`HelpFormatter` shows every flag's default in ``--help``;
:func:`load_omniglot` turns a missing data directory into a short usage error;
:func:`write_json` writes a file atomically, so a killed run never leaves half
a results file; :func:`run` is every experiment's ``__main__``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys

from memjax import training
from memjax._checks import (ema_decay, int_list, jitter_schedule, lr_schedule, non_negative_float,
                            non_negative_int, positive_float, positive_int, rotation_degrees,
                            unit_float)

__all__ = ["HelpFormatter", "JITTER_KEYS", "RecordingParser", "add_cpu_devices_flag", "add_ema_flag",
           "add_jitter_flags",
           "add_lr_drop_flags", "add_run_dir_flags", "check_jitter_resume", "check_lr_flags", "ema_decay",
           "ema_history", "enable_compilation_cache", "int_list", "jitter_at", "jitter_loss_schedule",
           "jitter_phases", "jitter_schedule", "load_omniglot", "lr_schedule", "non_negative_float",
           "non_negative_int", "parser", "positive_float", "positive_int", "rotation_degrees", "run",
           "set_cpu_devices", "unit_float", "write_json"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
  """``--help`` with every option's default, flags without help text included
  (a help text that already says ``(default: ...)`` is kept as it is)."""

  def _get_help_string(self, action):
    if "(default" in (action.help or ""):
      return action.help
    return super()._get_help_string(action)

  def _format_action(self, action):
    if not action.help and action.option_strings and action.default is not argparse.SUPPRESS:
      action = copy.copy(action)
      action.help = " "
    return super()._format_action(action)


class RecordingParser(argparse.ArgumentParser):
  """An ``ArgumentParser`` whose namespaces name the flags the command line gave.

  ``args.given_flags`` is the frozenset of the destinations given, at any value:
  a flag given at its default value (``--num-classes 5``) is told apart from one
  left out, which comparing a value with the default cannot do. (A second parse
  with every default suppressed finds them; the first parse's errors come first.)
  """

  def parse_known_args(self, args=None, namespace=None):
    namespace, extras = super().parse_known_args(args, namespace)
    saved = [(action, action.default) for action in self._actions], dict(self._defaults)
    try:
      for action, _ in saved[0]:
        action.default = argparse.SUPPRESS
      self._defaults.clear()
      probe, _ = super().parse_known_args(args, None)
    finally:
      for action, default in saved[0]:
        action.default = default
      self._defaults.update(saved[1])
    namespace.given_flags = frozenset(vars(probe))
    return namespace, extras


def parser(doc: str, *, record_given: bool = False, **kwargs) -> argparse.ArgumentParser:
  """An experiment's parser: the first paragraph of ``doc`` as description,
  :class:`HelpFormatter` (every default shown); with ``record_given`` a
  :class:`RecordingParser` (``args.given_flags``: the flags given on the command line)."""
  cls = RecordingParser if record_given else argparse.ArgumentParser
  return cls(description=doc.split("\n\n")[0], formatter_class=HelpFormatter, **kwargs)


def add_run_dir_flags(p: argparse.ArgumentParser, script: str) -> None:
  """``--data-dir``, ``--workdir`` (a run directory of ``script``) and ``--episodes``:
  the flags of a diagnostic that evaluates a run's checkpoint on test episodes."""
  p.add_argument("--data-dir", default=None, help="Omniglot archives (default: memjax's resolution)")
  p.add_argument("--workdir", required=True, help=f"an {script} run directory")
  p.add_argument("--episodes", type=positive_int, default=100, help="test episodes")


def add_lr_drop_flags(p: argparse.ArgumentParser) -> None:
  """``--lr-drop-steps`` and ``--lr-drop-factor`` (one drop) or ``--lr-schedule``
  (any piecewise-constant schedule), the schedules of
  :func:`memjax.training.step_decay`; :func:`check_lr_flags` rejects both."""
  p.add_argument("--lr-drop-steps", type=non_negative_int, default=0,
                 help="multiply the learning rate by --lr-drop-factor after this many steps (0: never)")
  p.add_argument("--lr-drop-factor", type=positive_float, default=0.1, help="see --lr-drop-steps")
  p.add_argument("--lr-schedule", type=lr_schedule, default=None, metavar="STEP:LR[,STEP:LR...]",
                 help="piecewise-constant learning rate: --lr until the first STEP, then each LR from its "
                      "STEP on (e.g. 5000:1e-4,8000:1e-3,12000:1e-4; the same as changing --lr on --resume "
                      "at those steps); on --resume it may change only after the checkpoint; exclusive "
                      "with --lr-drop-steps")


JITTER_KEYS = ("max_shift", "max_rotation", "jitter_schedule")
"""The config keys of the training jitter: :func:`check_jitter_resume` checks
them on ``--resume`` (leave them out of a :class:`memjax.training.Run`'s ``compare``)."""


def add_jitter_flags(p: argparse.ArgumentParser) -> None:
  """``--max-shift`` and ``--max-rotation``: per-image jitter of the training
  episodes (the samplers' ``max_shift`` / ``max_rotation``), and
  ``--jitter-schedule``, other values from later steps on (:func:`jitter_phases`);
  test episodes are never jittered."""
  p.add_argument("--max-shift", type=non_negative_int, default=0,
                 help="training-time jitter: translate each image by up to this many pixels")
  p.add_argument("--max-rotation", type=rotation_degrees, default=0.0,
                 help="training-time jitter: rotate each image by up to ± this many degrees "
                      "(snowkylin/ntm: 11.25); test episodes are never jittered")
  p.add_argument("--jitter-schedule", type=jitter_schedule, default=None,
                 metavar="STEP:SHIFT:DEGREES[,...]",
                 help="piecewise-constant jitter: --max-shift / --max-rotation until the first STEP, then "
                      "each SHIFT and DEGREES from its STEP on (e.g. 100000:0:0 trains without jitter "
                      "from step 100,000 on); on --resume it may change only after the checkpoint")


def jitter_phases(config) -> list[tuple[int, int, float]]:
  """``[(first step, max_shift, max_rotation), ...]`` of a run: ``config`` is
  its parsed flags or config.json (keys missing: no jitter). Update ``s + 1``
  uses the last phase whose first step is at most ``s``."""
  get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
  phases = [(0, int(get("max_shift", 0) or 0), float(get("max_rotation", 0.0) or 0.0))]
  phases += [(int(s), int(shift), float(deg)) for s, shift, deg in get("jitter_schedule", None) or []]
  return phases


def jitter_loss_schedule(config, make_loss) -> list[tuple[int, object]]:
  """``[(first step, make_loss(max_shift, max_rotation)), ...]`` over a run's
  :func:`jitter_phases`: the loss schedule :func:`memjax.training.fit` takes."""
  return [(first, make_loss(shift, degrees)) for first, shift, degrees in jitter_phases(config)]


def jitter_at(config, step: int) -> tuple[int, float]:
  """``(max_shift, max_rotation)`` of update ``step + 1`` of a run (:func:`jitter_phases`)."""
  return [p[1:] for p in jitter_phases(config) if p[0] <= step][-1]


def check_jitter_resume(config: dict, old: dict | None, start_step: int) -> None:
  """A :class:`memjax.training.Run` ``amend``: on ``--resume`` the training
  jitter (:data:`JITTER_KEYS`) may change only from the checkpoint on; a change
  that would rewrite updates already made raises
  :class:`memjax.training.ConfigMismatchError` naming the first such update."""
  if old is None:
    return
  marks = {p[0] for p in jitter_phases(config) + jitter_phases(old)}
  for step in sorted(m for m in marks if m < start_step):
    now, was = jitter_at(config, step), jitter_at(old, step)
    if now != was:
      raise training.ConfigMismatchError(
          f"--resume with a training jitter that changes updates already made: update {step + 1} "
          f"would have (max_shift, max_rotation) {now} where it was trained with {was}; give the new "
          f"jitter from the checkpoint (step {start_step}) on with --jitter-schedule "
          f"{start_step}:SHIFT:DEGREES, keeping --max-shift {old.get('max_shift', 0)} --max-rotation "
          f"{old.get('max_rotation', 0.0)}")
  now, was = jitter_at(config, start_step), jitter_at(old, start_step)
  if now != was:
    print(f"training jitter from step {start_step} on: max_shift {now[0]}, max_rotation {now[1]:g} "
          f"(was {was[0]}, {was[1]:g})", flush=True)


def add_ema_flag(p: argparse.ArgumentParser) -> None:
  """``--ema-decay``: evaluate an exponential moving average of the parameters
  (:func:`memjax.training.with_params_ema`); it may change on ``--resume``
  (:func:`ema_history`)."""
  p.add_argument("--ema-decay", type=ema_decay, default=0.0, metavar="DECAY",
                 help="keep an exponential moving average of the parameters (e.g. 0.999: over the "
                      "last ~1,000 updates) and evaluate it (learning curve, final test, exported "
                      "weights); training itself is unchanged; 0: off. May be switched on, changed "
                      "or off on --resume (the average then starts from the checkpoint's parameters)")


def add_cpu_devices_flag(p: argparse.ArgumentParser) -> None:
  """``--cpu-devices N``: split the host CPU into N JAX devices and train
  data-parallel over them (:func:`set_cpu_devices`)."""
  p.add_argument("--cpu-devices", type=positive_int, default=None, metavar="N",
                 help="split the host CPU into N JAX devices (jax_num_cpu_devices) and train data-parallel "
                      "over them, each device on its slice of the batch (which N must divide); on a "
                      "2-core CPU 2 trained the MANN 1.16x faster than one device using both cores (README). "
                      "None: JAX's default (one CPU device, or what XLA_FLAGS says). Same model and "
                      "mathematics; the gradients' summation order changes")


def set_cpu_devices(parser: argparse.ArgumentParser, n: int | None, batch_size: int) -> None:
  """Applies ``--cpu-devices``: ``jax_num_cpu_devices = n`` before JAX starts its
  CPU backend; a clear parser error where ``n`` does not divide ``batch_size`` or
  the backend already started (then the device count can no longer change)."""
  if n is None:
    return
  if batch_size % n:
    parser.error(f"--cpu-devices {n}: expected a count that divides --batch-size {batch_size}")
  import jax
  try:
    jax.config.update("jax_num_cpu_devices", n)
  except RuntimeError as e:
    if jax.device_count("cpu") != n:
      parser.error(f"--cpu-devices {n}: JAX's CPU backend already started with {jax.device_count('cpu')} "
                   f"device(s) in this process ({e}); run the script in a fresh process")


def ema_history(config: dict, old: dict | None, start_step: int) -> None:
  """A :class:`memjax.training.Run` ``amend`` for ``ema_decay``: config.json's
  ``ema_history``, ``[[step, decay from that step on], ...]``, gains an entry
  where a resume changes ``--ema-decay`` (leave ``ema_decay`` out of the run's
  ``compare``). The average changes no update, so any change is accepted."""
  decay = float(config.get("ema_decay") or 0.0)
  if old is None:
    config["ema_history"] = [[0, decay]]
    return
  was = float(old.get("ema_decay") or 0.0)
  history = [list(x) for x in old.get("ema_history", [[0, was]])]
  if decay != was:
    history = [x for x in history if x[0] < start_step] + [[start_step, decay]]
    print(f"parameter average from step {start_step} on: "
          + (f"decay {decay:g}" if decay else "off")
          + (f" (was {was:g}" + (", continued)" if decay else ")") if was else
             " (new: starts from the checkpoint's parameters)"), flush=True)
  config["ema_history"] = history


def check_lr_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  """Usage error (exit 2) for ``--lr-schedule`` together with ``--lr-drop-steps``."""
  if args.lr_schedule and args.lr_drop_steps:
    parser.error("--lr-schedule and --lr-drop-steps are exclusive (write the drop into the schedule)")


def load_omniglot(parser: argparse.ArgumentParser, data_dir: str | None, *splits: str,
                  image_size: int):
  """Loads Omniglot splits for an experiment; returns one ``[C, 20, S, S]`` array per split.

  A ``--data-dir`` (or ``$MEMJAX_DATA_DIR``) that does not exist, or archives
  that are missing and cannot be downloaded, end the program with a short
  message naming both, the files expected, and exit code 2 (argparse's
  ``error:`` line without the usage), before anything is written.
  """
  from memjax.data import omniglot

  given = data_dir or os.environ.get("MEMJAX_DATA_DIR") or None
  source = "--data-dir" if data_dir else "$MEMJAX_DATA_DIR"
  files = ", ".join(dict.fromkeys(f"{omniglot.ARCHIVES[a].name}.zip"
                                  for s in splits for a in omniglot.SPLITS[s]))
  hint = (f"pass --data-dir (or set $MEMJAX_DATA_DIR to) the folder that holds {files} "
          f"(from {omniglot.BASE_URL}) or the folders they extract to")
  error = lambda message: parser.exit(2, f"{parser.prog}: error: {message}\n")
  if given is not None and not os.path.isdir(os.path.expanduser(given)):
    error(f"{source} {given}: no such directory;\n  {hint}")
  out = []
  for split in splits:
    try:
      out.append(omniglot.load(split, image_size, data_dir).images)
    except (FileNotFoundError, ValueError) as e:
      error(f"cannot load Omniglot split {split!r}: {str(e).splitlines()[0]}\n  {hint}")
  return out




def write_json(path: str, obj) -> None:
  """Writes ``obj`` as JSON to ``path`` atomically (temporary file + rename)."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


def enable_compilation_cache(path: str | None = None) -> str | None:
  """Turns on JAX's persistent compilation cache for this process.

  A re-run of an experiment (a resume, another seed, the same configuration)
  then loads its compiled train step from disk instead of compiling it again
  (the copy-task step: ~15 s to compile on 2 CPU cores, ~1.5 s to load).
  Cached executables are the ones XLA would compile, so results are unchanged.

  Args:
    path: cache directory; default ``$MEMJAX_COMPILATION_CACHE``, else
      ``$XDG_CACHE_HOME/memjax/xla`` (``~/.cache/memjax/xla``). The value
      ``off`` disables the cache.

  Returns:
    The directory used, or None when disabled.
  """
  import jax

  path = path or os.environ.get("MEMJAX_COMPILATION_CACHE")
  if path == "off":
    return None
  if not path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = os.path.join(base, "memjax", "xla")
  try:
    os.makedirs(path, exist_ok=True)
  except OSError:
    return None  # an unwritable cache only costs compile time
  jax.config.update("jax_compilation_cache_dir", path)
  return path


def run(main) -> None:
  """Runs an experiment's ``main()`` with the persistent compilation cache on
  (:func:`enable_compilation_cache`); a diverged run exits 1 with its message,
  a checkpoint that does not fit the model 2 (its run folder as it was), not a traceback. An interrupted run exits 130/143 (see :class:`memjax.training.Run`),
  a Ctrl-C before training starts (loading data, compiling) 130, also without a traceback."""
  from memjax.training import CheckpointMismatchError, NonFiniteError
  enable_compilation_cache()
  try:
    main()
  except NonFiniteError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  except CheckpointMismatchError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except KeyboardInterrupt:
    print("\ninterrupted before training started", file=sys.stderr)
    sys.exit(130)
