"""One command per results table: re-evaluate the shipped weights against the paper, or retrain them.

    python -m memjax.reproduce TABLE [--data-dir D] [--quick] [--train] [--resume] [--out DIR]

TABLE is one of ``copy`` (NTM copy task, Graves et al. 2014 §4.1), ``mann-table1``
and ``mann-table2`` (Santoro et al. 2016, Omniglot, accuracy by instance),
``metanet-table1``, ``metanet-table3`` and ``metanet-table4`` (Munkhdalai & Yu
2017, Omniglot N-way 1-shot). Without ``--train`` it loads the table's
pretrained models (:mod:`memjax.pretrained`), evaluates them with the same
protocol the experiment scripts use (:mod:`memjax.evaluation`: the same fixed
test key, sampler and metric) and prints the measured row beside the row
recorded when the model was exported and the paper's rows; it writes
``TABLE.json`` and ``TABLE.png`` to ``--out``. A table whose models are not
shipped says so and exits with code 2.

``--train`` first retrains every row from scratch with its recorded recipe —
the experiment script and flags stored with the shipped model (or, for a model
not shipped yet, the command in the README) — with checkpoints in
``OUT/train/NAME`` (``--resume`` continues them) and its progress bar, then
exports the run into the registry format and evaluates it. It runs unchanged on
whatever device JAX sees (CPU, GPU, TPU); ``--max-minutes`` caps each row's
training time and ``--train-args`` appends or replaces experiment flags (e.g.
``"--batch-size 64"``). Retraining needs a source checkout (``experiments/``).

``--quick`` evaluates on a handful of sequences/episodes (and, with
``--train``, trains for 15 s): a smoke test, not a measurement.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from memjax._checks import positive_float, positive_int

__all__ = ["PAPER", "TABLES", "Row", "Table", "main"]


@dataclass(frozen=True)
class Row:
  """One trained model of a table.

  Attributes:
    name: its :mod:`memjax.pretrained` name.
    label: the row's label.
    script: the experiment script that trains it (stem, in ``experiments/``).
    recipe: that script's flags, used for ``--train`` when the model is not
      shipped (a shipped model's recorded command wins); from the README.
    ways: MetaNet only: the K-way episodes it is tested on.
    init_from: the model this row's training starts from (the recipe's
      ``--init-from``): ``--train`` points it at that row's retrained run in
      ``OUT/train/NAME`` where there is one (trained first, in the same
      table), else at the shipped model restored there.
  """
  name: str
  label: str
  script: str
  recipe: tuple[str, ...] = ()
  ways: tuple[int, ...] = ()
  init_from: str = ""


@dataclass(frozen=True)
class Table:
  """A results table: its rows (models), columns and the paper's rows."""
  key: str
  title: str
  kind: str  # "copy", "mann" or "metanet"
  columns: tuple[str, ...]
  rows: tuple[Row, ...]
  paper: dict = field(default_factory=dict)  # row label -> {column: value}
  note: str = ""
  episodes: dict = field(default_factory=dict)  # MetaNet: K -> test episodes per model (default)


def _cols(labels, values):
  return {c: v for c, v in zip(labels, values) if v is not None}


INSTANCE_COLUMNS = ("1st", "2nd", "3rd", "4th", "5th", "10th")
INSTANCES = (1, 2, 3, 4, 5, 10)
WAY_COLUMNS = ("5-way", "10-way", "15-way", "20-way")
LENGTH_COLUMNS = ("20", "40", "80", "120")

# The papers' numbers (%), as in DESIGN.md's references.
PAPER = {
    "mann-table1": {
        "paper MANN (Santoro et al. 2016, Table 1)": _cols(INSTANCE_COLUMNS, [36.4, 82.8, 91.0, 92.6, 94.9, 98.1]),
        "paper LSTM (Table 1)": _cols(INSTANCE_COLUMNS, [24.4, 49.5, 55.3, 61.0, 63.6, 62.5]),
        "paper human (Table 1)": _cols(INSTANCE_COLUMNS, [34.5, 57.3, 70.1, 71.8, 81.4, 92.4]),
    },
    "mann-table2": {
        "paper MANN-LRUA, 15-way strings (Santoro et al. 2016, Table 2)":
            _cols(INSTANCE_COLUMNS, [0.1, 62.6, 79.3, 86.6, 88.7, 95.3]),
    },
    "metanet-table1": {
        "paper MetaNet (Munkhdalai & Yu 2017, Table 1)": _cols(WAY_COLUMNS, [98.95, 98.67, 97.11, 97.0]),
        "paper MetaNet- (no task-level fast weights)": _cols(WAY_COLUMNS, [98.4, 98.32, 96.68, 96.13]),
        "Matching Nets": _cols(WAY_COLUMNS, [98.1, None, None, 93.8]),
        "Prototypical Nets": _cols(WAY_COLUMNS, [98.8, None, None, 96.0]),
        "MAML": _cols(WAY_COLUMNS, [98.7, None, None, 95.8]),
    },
    "metanet-table3": {
        "paper MetaNet, standard split (Table 3)": _cols(WAY_COLUMNS, [98.45, 97.32, 96.4, 95.92]),
        "human (Table 3)": _cols(WAY_COLUMNS, [None, None, None, 95.5]),
    },
    "metanet-table4": {
        "paper MetaNet trained 5-way (Table 4)": _cols(WAY_COLUMNS, [98.95, 96.4, 93.6, 93.07]),
        "paper MetaNet trained 20-way (Table 4)": _cols(WAY_COLUMNS, [99.55, 98.87, 97.41, 97.0]),
    },
    "copy": {
        # Graves et al. 2014 give no numeric table for the copy task (Fig. 3-4: near-perfect
        # copies up to length 120); these are memjax's targets (issue 2).
        "target (issue 2)": {"80": 1.0, "120": 2.0},
    },
}

# The full model, started from the MetaNet− run of `metanet-omniglot-5way` (Row.init_from).
_METANET_FULL = ("--init-from", "runs/metanet_5way_80000", "--init-fresh-scale", "0.1", "--max-shift", "2",
                 "--max-rotation", "11.25", "--lr", "3e-5", "--lr-schedule", "200:1e-4", "--steps",
                 "10005", "--max-minutes", "95", "--eval-every", "500", "--curve-episodes", "40")
_MANN_ADAM = ("--optimizer", "adam", "--lr", "1e-3", "--eval-every", "500", "--eval-episodes", "1000")
TABLES: dict[str, Table] = {t.key: t for t in (
    Table("copy", "NTM copy task (Graves et al. 2014, §4.1): bit error rate (%) at length", "copy",
          LENGTH_COLUMNS,
          (Row("ntm-copy", "memjax NTM", "copy_task"),),
          PAPER["copy"],
          "Trained on lengths 1-20; the paper shows near-perfect copies up to length 120 (no table)."),
    Table("mann-table1", "Omniglot 5-way one-hot, accuracy (%) at instance (Santoro et al. 2016, Table 1)",
          "mann", INSTANCE_COLUMNS,
          (Row("mann-omniglot-5way", "memjax MANN", "omniglot_mann", _MANN_ADAM + ("--max-minutes", "121")),
           Row("lstm-omniglot-5way", "memjax LSTM", "omniglot_mann",
               ("--model", "lstm") + _MANN_ADAM + ("--max-minutes", "35"))),
          PAPER["mann-table1"]),
    Table("mann-table2", "Omniglot 15-way 5-character string labels, accuracy (%) at instance "
          "(Santoro et al. 2016, Table 2)", "mann", INSTANCE_COLUMNS,
          (Row("mann-omniglot-15way-string", "memjax MANN, 15-way strings", "omniglot_mann",
               ("--label-mode", "string") + _MANN_ADAM + ("--max-minutes", "40")),),
          PAPER["mann-table2"]),
    Table("metanet-table1", "Omniglot N-way 1-shot accuracy (%), 1,200/423 split "
          "(Munkhdalai & Yu 2017, Table 1)", "metanet", WAY_COLUMNS,
          (Row("metanet-omniglot-5way", "memjax MetaNet−, trained 5-way", "omniglot_metanet",
               ("--max-minutes", "60", "--eval-every", "200", "--curve-episodes", "40"), (5,)),
           Row("metanet-omniglot-20way", "memjax MetaNet−, trained 20-way", "omniglot_metanet",
               ("--num-classes", "20", "--max-minutes", "43", "--eval-every", "100", "--curve-episodes",
                "20", "--checkpoint-every", "25"), (20,)),
           Row("metanet-omniglot-5way-full", "memjax MetaNet (full model), trained 5-way",
               "omniglot_metanet", _METANET_FULL, (5,), init_from="metanet-omniglot-5way")),
          PAPER["metanet-table1"], episodes={5: 100, 20: 32}),
    Table("metanet-table3", "Omniglot N-way 1-shot accuracy (%), standard split: 964 background / "
          "659 evaluation characters (Munkhdalai & Yu 2017, Table 3)", "metanet", WAY_COLUMNS,
          (Row("metanet-omniglot-standard-20way", "memjax MetaNet−, trained 20-way (background)",
               "omniglot_metanet",
               ("--num-classes", "20", "--train-split", "background", "--test-split", "evaluation",
                "--max-minutes", "60", "--eval-every", "100", "--curve-episodes", "20",
                "--checkpoint-every", "25", "--eval-episodes", "400"), (5, 10, 15, 20)),),
          PAPER["metanet-table3"], episodes={5: 80, 10: 32, 15: 16, 20: 12}),
    Table("metanet-table4", "Omniglot: MetaNet trained N-way, tested K-way, accuracy (%) "
          "(Munkhdalai & Yu 2017, Table 4)", "metanet", WAY_COLUMNS,
          (Row("metanet-omniglot-5way", "memjax MetaNet− trained 5-way", "omniglot_metanet",
               ("--max-minutes", "60", "--eval-every", "200", "--curve-episodes", "40"),
               (5, 10, 15, 20)),
           Row("metanet-omniglot-20way", "memjax MetaNet− trained 20-way", "omniglot_metanet",
               ("--num-classes", "20", "--max-minutes", "43", "--eval-every", "100", "--curve-episodes",
                "20", "--checkpoint-every", "25"), (5, 10, 15, 20)),
           Row("metanet-omniglot-5way-full", "memjax MetaNet (full model) trained 5-way",
               "omniglot_metanet", _METANET_FULL, (5, 10, 15, 20), init_from="metanet-omniglot-5way")),
          PAPER["metanet-table4"],
          "K ≠ N: the N-way-trained variables with a K-way softmax layer of fast weights only "
          "(memjax.pretrained.load(name, num_classes=K)).",
          episodes={5: 40, 10: 12, 15: 8, 20: 4}),
)}

# Evaluation sizes. Copy and MANN: the experiments' protocols (1,000 sequences per length,
# 1,000 episodes). MetaNet: fewer than the experiment's 1,000 (Table 3: 400), per table
# (Table.episodes), so that a table evaluates within ~5 minutes on 2 CPU cores — measured under
# load: 0.49 s per 5-way and 2.8 s per 20-way episode of the authors' model, 14 s / 33 s to
# compile (cold cache). --episodes N gives the full protocol (on an accelerator).
FULL_SEQUENCES = 1000
FULL_MANN_EPISODES = 1000
QUICK_SEQUENCES = 40
QUICK_MANN_EPISODES = 32
QUICK_METANET_EPISODES = 4
# Flags that make a --train --quick run a smoke test (15 s of training, tiny evaluations).
QUICK_TRAIN_FLAGS = {
    "copy_task": ("--max-minutes", "0.25", "--eval-sequences", "40", "--eval-every", "50", "--no-plots"),
    "omniglot_mann": ("--max-minutes", "0.25", "--eval-every", "0", "--eval-episodes", "32",
                      "--eval-batch", "32", "--no-plots"),
    "omniglot_metanet": ("--max-minutes", "0.25", "--eval-every", "0", "--eval-episodes", "4",
                         "--no-plots"),
}


class ReproduceError(Exception):
  """A table cannot be reproduced as asked; the message says why (exit code ``code``)."""

  def __init__(self, message: str, code: int = 2):
    super().__init__(message)
    self.code = code


# ----------------------------------------------------------------------------
# Evaluation of one model, by kind.


def _eval_copy(pre, args) -> dict:
  import functools

  import jax

  from memjax import evaluation, tasks, training

  cfg = pre.config.get("run_config") or {}
  task = cfg.get("task", "copy")
  if task != "copy":
    raise ReproduceError(f"{pre.config['name']}: trained on {task!r}, the copy table needs 'copy'")
  bits = cfg.get("num_bits") or 8
  max_len = cfg.get("max_length") or 20
  lengths = [int(c) for c in LENGTH_COLUMNS]
  n = args.episodes or (QUICK_SEQUENCES if args.quick else FULL_SEQUENCES)
  key = training.eval_key()  # as the experiment
  sample = functools.partial(tasks.copy, num_bits=bits, min_length=1, max_length=max_len)
  apply = pre.model.apply
  train_lengths = jax.jit(lambda p: evaluation.sequence_metrics(apply, p, sample, n, key))(pre.variables)
  gen = evaluation.copy_generalisation(
      apply, pre.variables, tasks.copy,
      lambda L: dict(num_bits=bits, min_length=L, max_length=L), lengths, n, key)
  measured = {c: 100 * gen[c]["bit_error_rate"] for c in LENGTH_COLUMNS}
  recorded_gen = ((pre.config.get("results") or {}).get("generalisation") or {})
  recorded = {c: 100 * recorded_gen[c]["bit_error_rate"] for c in LENGTH_COLUMNS if c in recorded_gen}
  return {"measured": measured, "recorded": recorded, "sequences_per_length": n,
          "bit_errors_per_sequence": {c: gen[c]["bit_errors_per_sequence"] for c in LENGTH_COLUMNS},
          f"bit_errors_per_sequence_lengths_1_{max_len}": float(train_lengths["bit_errors"])}


_IMAGES: dict = {}


def _images(split: str, size: int, data_dir):
  import jax.numpy as jnp

  from memjax import data

  if (split, size) not in _IMAGES:
    try:
      _IMAGES[split, size] = jnp.asarray(data.load(split, size, data_dir).images)
    except (FileNotFoundError, ValueError, OSError) as e:
      raise ReproduceError(f"cannot load Omniglot split {split!r} ({e}); pass --data-dir "
                           "(the folder with images_background.zip and images_evaluation.zip)") from None
  return _IMAGES[split, size]


def _eval_mann(pre, args) -> dict:
  from memjax import evaluation, training

  cfg = pre.config.get("run_config") or {}
  n, spc = int(cfg["num_classes"]), int(cfg.get("samples_per_class", 10))
  label_mode = cfg.get("label_mode", "onehot")
  images = _images(cfg.get("test_split", "test"), int(cfg.get("image_size", 20)), args.data_dir)
  instances = tuple(k for k in INSTANCES if k <= spc)
  episodes = args.episodes or (QUICK_MANN_EPISODES if args.quick else FULL_MANN_EPISODES)
  from memjax import mann
  cell = getattr(pre.model, "cell", None)
  # As the experiment: the MANN's logits through mann.unroll (equal to nn.RNN's, faster).
  apply = ((lambda p, x: mann.unroll(cell, p, x)) if isinstance(cell, mann.MANNCell)
           and hasattr(mann, "unroll") else pre.model.apply)
  evaluate = evaluation.mann_evaluator(
      apply, images, num_episodes=episodes, batch_size=int(cfg.get("eval_batch", 100)),
      instances=instances, key=training.eval_key(), num_classes=n,
      samples_per_class=spc, label_mode=label_mode, rotate=True)
  acc, loss = evaluate(pre.variables)
  names = [INSTANCE_COLUMNS[INSTANCES.index(k)] for k in instances]
  recorded_acc = (pre.config.get("results") or {}).get("per_instance_accuracy") or {}
  return {"measured": {c: 100 * float(a) for c, a in zip(names, acc)},
          "recorded": {c: 100 * v for c, v in recorded_acc.items()},
          "episodes": evaluate.num_episodes, "test_loss": loss,
          "test_split": cfg.get("test_split", "test")}


def _eval_metanet(pre, table: Table, row: Row, args, loader) -> dict:
  import jax

  from memjax import evaluation

  cfg = pre.config.get("run_config") or {}
  trained = int(cfg.get("num_classes") or pre.config.get("num_classes"))
  images = _images(cfg.get("test_split", "test"), int(pre.config.get("image_size") or 28), args.data_dir)
  key = jax.random.key(evaluation.EVAL_KEY)
  results = pre.config.get("results") or {}
  measured, ci95, episodes, recorded = {}, {}, {}, {}
  for k in row.ways:
    col = f"{k}-way"
    # As the experiment: the trained N-way on fold_in(key, 2), K-way tests on fold_in(key, 100 + K).
    model = pre if k == trained else loader(num_classes=k)
    evaluate = evaluation.few_shot_evaluator(model.model, images, num_classes=k,
                                             num_query=int(cfg.get("num_query", 10)))
    e = args.episodes or (QUICK_METANET_EPISODES if args.quick else table.episodes[k])
    acc = evaluate(model.variables, e, jax.random.fold_in(key, 2 if k == trained else 100 + k),
                   progress=not args.no_progress)
    measured[col], ci95[col] = evaluation.mean_ci95(acc)
    episodes[col] = int(len(acc))
    if k == trained and "test_accuracy" in results:
      recorded[col] = results["test_accuracy"]
    elif str(k) in (results.get("k_way") or {}):
      recorded[col] = results["k_way"][str(k)]["test_accuracy"]
  return {"measured": measured, "ci95": ci95, "episodes": episodes, "recorded": recorded,
          "trained_ways": trained, "test_split": cfg.get("test_split", "test")}


# ----------------------------------------------------------------------------
# Retraining.


def _flag_takes_value(parser: argparse.ArgumentParser, flag: str) -> bool:
  for action in parser._actions:
    if flag in action.option_strings:
      return action.nargs != 0
  raise ReproduceError(f"--train-args: the experiment has no flag {flag!r}")


def _set_flags(argv: list[str], flags: list[str], parser) -> list[str]:
  """``argv`` with each flag of ``flags`` (``--flag [value]`` pairs) replaced or appended;
  a flag replaces its deprecated aliases too (``parser.aliases_of``, e.g. ``--steps``
  replaces the ``--episodes`` of a recorded command)."""
  out = list(argv)
  i = 0
  while i < len(flags):
    flag = flags[i]
    if not flag.startswith("--"):
      raise ReproduceError(f"--train-args: expected --flag [value] pairs, got {flag!r}")
    takes = _flag_takes_value(parser, flag)
    value = flags[i + 1:i + 2] if takes else []
    if takes and not value:
      raise ReproduceError(f"--train-args: {flag} needs a value")
    for name in (flag, *getattr(parser, "aliases_of", {}).get(flag, ())):
      out = _without(out, name, takes)
    out += [flag] + value
    i += 2 if takes else 1
  return out


def _without(argv: list[str], flag: str, takes: bool) -> list[str]:
  out, i = [], 0
  while i < len(argv):
    if argv[i] == flag:
      i += 2 if takes else 1
    elif argv[i].startswith(flag + "="):
      i += 1
    else:
      out.append(argv[i])
      i += 1
  return out


def _init_source(name: str, out: Path) -> Path:
  """The run a row's ``--init-from`` names: ``OUT/train/NAME`` (retrained, or the
  shipped model ``name`` restored there)."""
  from memjax import pretrained
  from memjax.pretrained import restore

  workdir = out / "train" / name
  if (workdir / "checkpoints").is_dir():
    return workdir
  if name not in pretrained.available():
    raise ReproduceError(f"training starts from {name}, which is neither retrained in {workdir} nor "
                         f"shipped; retrain its table's row first")
  print(f"restoring {name} into {workdir} (the run this row's training starts from)", flush=True)
  restore.restore_run(name, workdir)
  return workdir


def train_row(row: Row, table: Table, args, out: Path) -> Path:
  """Retrains ``row`` with its recorded recipe into ``OUT/train/NAME``; returns the exported ``.json``."""
  from memjax import pretrained
  from memjax.pretrained import export

  try:
    module = export.load_experiment(row.script)
  except FileNotFoundError as e:
    raise ReproduceError(str(e)) from None
  parser = module.build_parser()
  script, argv = row.script, list(row.recipe)
  source = "README recipe (model not shipped)"
  if row.name in pretrained.available():
    train = pretrained.record(row.name).get("train") or {}
    if train.get("script") == f"experiments/{row.script}.py":
      argv, source = list(train.get("argv", [])), f"recorded with {row.name}"
  workdir = out / "train" / row.name
  argv = _set_flags(argv, ["--workdir", str(workdir)], parser)
  if row.script != "copy_task":
    argv = _without(argv, "--data-dir", True)
    if args.data_dir:
      argv += ["--data-dir", args.data_dir]
  if row.init_from:
    argv = _set_flags(argv, ["--init-from", str(_init_source(row.init_from, out).resolve())], parser)
  if args.quick:
    argv = _set_flags(argv, list(QUICK_TRAIN_FLAGS[row.script]), parser)
  if args.max_minutes is not None:
    argv = _set_flags(argv, ["--max-minutes", str(args.max_minutes)], parser)
  if args.train_args:
    argv = _set_flags(argv, shlex.split(args.train_args), parser)
  if args.no_progress:
    argv = _set_flags(argv, ["--no-progress"], parser)
  argv = _without(argv, "--resume", False) + (["--resume"] if args.resume else [])
  script_path = export.experiments_dir() / f"{script}.py"
  command = [sys.executable, str(script_path)] + argv
  shown = " ".join(["python", f"experiments/{script}.py"] + [shlex.quote(a) for a in argv])
  print(f"[{table.key}] training {row.name} ({source}):\n  {shown}", flush=True)
  t0 = time.perf_counter()
  rc = subprocess.call(command, cwd=str(script_path.parents[1]))
  if rc != 0:
    raise ReproduceError(f"training {row.name} failed (exit code {rc}): {shown}", code=1)
  print(f"[{table.key}] {row.name} trained in {time.perf_counter() - t0:.0f} s", flush=True)
  record_cmd = " ".join(["python", f"experiments/{script}.py"]
                        + [shlex.quote(a) for a in _without(argv, "--resume", False)])
  return export.export_run(workdir, row.name, table=table.key, command=record_cmd,
                           out_dir=out / "train" / "pretrained", force=True)


# ----------------------------------------------------------------------------
# Output.


def _fmt(value, ci=None) -> str:
  if value is None:
    return "—"
  text = f"{value:.2f}" if ci is None else f"{value:.2f} ± {ci:.2f}"
  return text


def format_table(table: Table, result: dict) -> str:
  """The measured rows beside the recorded and the paper's, as text."""
  rows = []
  for r in result["rows"]:
    ci = r.get("ci95") or {}
    eps = r.get("episodes")
    size = (f"{r['sequences_per_length']} sequences/length" if "sequences_per_length" in r
            else f"{eps} episodes" if isinstance(eps, int)
            else ", ".join(f"{c}: {n}" for c, n in eps.items()) + " episodes" if eps else "")
    rows.append((f"{r['label']} — measured now ({size})",
                 [_fmt(r["measured"].get(c), ci.get(c)) for c in table.columns]))
    if r.get("recorded"):
      rows.append((f"{r['label']} — recorded at export",
                   [_fmt(r["recorded"].get(c)) for c in table.columns]))
  for m in result["missing"]:
    rows.append((f"{m} — not shipped", ["—"] * len(table.columns)))
  for label, values in table.paper.items():
    rows.append((label, [_fmt(values.get(c)) for c in table.columns]))
  width = max(len(label) for label, _ in rows)
  cw = max(10, *(len(v) for _, vs in rows for v in vs)) + 2
  lines = [table.title, "", " " * width + "  " + "".join(f"{c:>{cw}}" for c in table.columns)]
  lines += [f"{label:<{width}}  " + "".join(f"{v:>{cw}}" for v in vs) for label, vs in rows]
  if table.note:
    lines += ["", table.note]
  return "\n".join(lines)


def plot(table: Table, result: dict, path: Path) -> None:
  """Measured rows (solid, with 95% CIs where known) and paper rows (dashed)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  x = np.arange(len(table.columns))
  fig, ax = plt.subplots(figsize=(6.5, 4))
  for r in result["rows"]:
    cols = [i for i, c in enumerate(table.columns) if c in r["measured"]]
    ys = [r["measured"][table.columns[i]] for i in cols]
    ci = r.get("ci95") or {}
    errs = [ci.get(table.columns[i], 0.0) for i in cols]
    ax.errorbar(cols, ys, yerr=errs if any(errs) else None, fmt="o-", capsize=3, label=r["label"])
    if r.get("recorded"):
      rc = [i for i, c in enumerate(table.columns) if c in r["recorded"]]
      ax.plot(rc, [r["recorded"][table.columns[i]] for i in rc], "x:", color="gray",
              label=f"{r['label']} (recorded)")
  for label, values in table.paper.items():
    pc = [i for i, c in enumerate(table.columns) if c in values]
    ax.plot(pc, [values[table.columns[i]] for i in pc], "s--", alpha=0.7, label=label)
  ax.set_xticks(x, table.columns)
  if table.kind == "copy":
    ax.set_xlabel("sequence length")
    ax.set_ylabel("bit error rate (%)")
    ax.set_ylim(bottom=0)
  else:
    ax.set_xlabel("instance" if table.kind == "mann" else "K-way test episodes")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
  ax.set_title(table.key + (" (quick)" if result["quick"] else ""))
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


# ----------------------------------------------------------------------------
# The command.


def build_parser() -> argparse.ArgumentParser:
  from memjax.cli import HelpFormatter

  class Formatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    pass

  p = argparse.ArgumentParser(prog="python -m memjax.reproduce", description=__doc__.split("\n\n")[0],
                              formatter_class=Formatter,
                              epilog="tables:\n" + "\n".join(
                                  f"  {t.key:<15} {', '.join(r.name for r in t.rows)}"
                                  for t in TABLES.values()))
  p.add_argument("table", choices=sorted(TABLES), metavar="TABLE", help=f"one of {', '.join(TABLES)}")
  p.add_argument("--data-dir", default=None,
                 help="folder with the Omniglot zips (default: $MEMJAX_DATA_DIR, else memjax's cache)")
  p.add_argument("--quick", action="store_true", help="a few sequences/episodes only (smoke test)")
  p.add_argument("--train", action="store_true", help="retrain every row from scratch first")
  p.add_argument("--resume", action="store_true", help="with --train: continue from OUT/train checkpoints")
  p.add_argument("--out", default=None, help="output folder (default: runs/reproduce/TABLE)")
  p.add_argument("--episodes", type=positive_int, default=None,
                 help="test sequences per length / episodes per model and K (default: see module docs)")
  p.add_argument("--max-minutes", type=positive_float, default=None,
                 help="with --train: training time budget per row")
  p.add_argument("--train-args", default="",
                 help="with --train: experiment flags to add or replace, e.g. '--batch-size 64'")
  p.add_argument("--no-progress", action="store_true", help="no progress bars")
  return p


def run(args) -> dict:
  """Reproduces ``args.table``; returns the result written to ``TABLE.json``."""
  from memjax import pretrained

  table = TABLES[args.table]
  out = Path(args.out or os.path.join("runs", "reproduce", table.key))
  if (args.resume or args.max_minutes is not None or args.train_args) and not args.train:
    raise ReproduceError("--resume, --max-minutes and --train-args need --train")
  t_start = time.perf_counter()
  sources: dict[str, Path] = {}
  if args.train:
    out.mkdir(parents=True, exist_ok=True)
    for row in table.rows:
      if row.name not in sources:
        sources[row.name] = train_row(row, table, args, out)
  else:
    shipped = pretrained.available()
    sources = {row.name: pretrained.path_of(row.name) for row in table.rows if row.name in shipped}
  missing = sorted({row.name for row in table.rows} - set(sources))
  if not sources:
    raise ReproduceError(
        f"{table.key}: the pretrained model{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
        f"{'are' if len(missing) > 1 else 'is'} not shipped with this memjax yet (available: "
        f"{', '.join(pretrained.available()) or 'none'}). Retrain with "
        f"`python -m memjax.reproduce {table.key} --train"
        f"{' --data-dir PATH/TO/omniglot' if table.kind != 'copy' else ''}`.")
  out.mkdir(parents=True, exist_ok=True)
  rows = []
  for row in table.rows:
    if row.name not in sources:
      continue
    path = sources[row.name]
    pre = pretrained.load_file(path)
    t0 = time.perf_counter()
    if table.kind == "copy":
      r = _eval_copy(pre, args)
    elif table.kind == "mann":
      r = _eval_mann(pre, args)
    else:
      r = _eval_metanet(pre, table, row, args, lambda **o: pretrained.load_file(path, **o))
    r.update(name=row.name, label=row.label, source=str(path), seconds=time.perf_counter() - t0,
             steps=pre.config.get("steps"), train_command=pre.config.get("train_command"),
             trained_on=pre.config.get("hardware"), trained_date=pre.config.get("date"))
    rows.append(r)
  import jax

  from memjax.pretrained.export import hardware
  result = {"table": table.key, "title": table.title, "columns": list(table.columns), "rows": rows,
            "paper": table.paper, "missing": missing, "quick": bool(args.quick),
            "trained": bool(args.train), "hardware": hardware(), "device": str(jax.devices()[0]),
            "date": time.strftime("%Y-%m-%d"), "elapsed_s": time.perf_counter() - t_start,
            "note": table.note}
  from memjax.cli import write_json
  write_json(str(out / f"{table.key}.json"), result)
  plot(table, result, out / f"{table.key}.png")
  print(format_table(table, result))
  print(f"\nwrote {out / (table.key + '.json')} and {table.key}.png ({result['elapsed_s']:.0f} s)")
  return result


def main(argv=None) -> int:
  """Entry point; returns the exit code (0, 1 training failed, 2 models missing or bad usage)."""
  parser = build_parser()
  args = parser.parse_args(argv)
  from memjax.cli import enable_compilation_cache
  enable_compilation_cache()
  try:
    result = run(args)
  except ReproduceError as e:
    print(f"error: {e}", file=sys.stderr)
    return e.code
  if result["missing"]:
    print(f"error: {args.table}: not shipped yet: {', '.join(result['missing'])} "
          f"(retrain with `python -m memjax.reproduce {args.table} --train`)", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
