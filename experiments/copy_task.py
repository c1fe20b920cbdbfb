"""Train an NTM on copy / repeat copy / associative recall (Graves et al. 2014, §4).

Defaults are the paper's copy configuration: LSTM controller with 100 units,
1 read and 1 write head, a 128 × 20 memory, 8-bit vectors, lengths 1–20.

    python experiments/copy_task.py                      # copy, defaults
    python experiments/copy_task.py --task repeat_copy
    python experiments/copy_task.py --workdir runs/copy --resume

Every ``--eval-every`` steps it scores 1,000 fresh sequences (lengths drawn as in
training); the first time they average fewer than ``--solved-bit-errors`` wrong
bits per sequence the task counts as solved (steps, sequences and wall time are
recorded), and training goes on for ``--post-solve-steps`` more steps to
consolidate, or until ``--max-minutes``. Then it evaluates generalisation
to longer sequences (copy: lengths 20, 40, 80, 120) and writes ``results.json``
and PNGs (loss curve, target vs output, read/write weightings) to the workdir.
Ctrl-C or SIGTERM stops training with a checkpoint, partial results
(``"interrupted": true``) and plots, exit code 130/143; ``--resume`` continues.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time

import flax.linen as nn
import jax
import numpy as np

from memjax import cli, evaluation, tasks, training
from memjax.cli import int_list, non_negative_int, positive_float, positive_int
from memjax.ntm import NTMCell, trajectory

# Keys of config.json that a --resume must not change.
RESUME_KEYS = ("task", "seed", "batch_size", "optimizer", "lr", "memory_size", "word_size", "controller",
               "controller_features", "read_heads", "write_heads")


def build_parser() -> argparse.ArgumentParser:
  p = cli.parser(__doc__)
  p.add_argument("--task", choices=sorted(tasks.TASKS), default="copy", help="the algorithmic task")
  p.add_argument("--seed", type=int, default=0, help="parameter initialisation and training batches")
  p.add_argument("--workdir", default="runs/copy", help="checkpoints, metrics.jsonl, results, PNGs")
  p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --workdir")
  p.add_argument("--steps", type=positive_int, default=50_000,
                 help="maximum training steps (optimizer updates), counting resumed ones")
  p.add_argument("--max-minutes", type=positive_float, default=10.0,
                 help="training wall-time budget of this invocation")
  p.add_argument("--batch-size", type=positive_int, default=1, help="sequences per step")
  p.add_argument("--optimizer", choices=["rmsprop", "adam"], default="rmsprop",
                 help="'rmsprop' is the paper's (centred, decay 0.95, momentum 0.9)")
  p.add_argument("--lr", type=positive_float, default=None,
                 help="learning rate (None: 1e-4 for rmsprop, 1e-3 for adam)")
  p.add_argument("--clip", type=positive_float, default=10.0, help="clip gradient components to ±clip")
  p.add_argument("--memory-size", type=positive_int, default=128, help="memory slots N")
  p.add_argument("--word-size", type=positive_int, default=20, help="slot width M")
  p.add_argument("--controller", choices=["lstm", "feedforward"], default="lstm", help="controller type")
  p.add_argument("--controller-features", type=positive_int, default=100, help="controller units")
  p.add_argument("--read-heads", type=positive_int, default=1, help="read heads")
  p.add_argument("--write-heads", type=positive_int, default=1, help="write heads")
  p.add_argument("--shift-range", type=positive_int, default=1, help="largest location shift")
  p.add_argument("--memory-init", choices=["constant", "random", "learned"], default="constant",
                 help="initial memory contents")
  p.add_argument("--num-bits", type=positive_int, default=None,
                 help="bits per vector (None: 8; 6 for associative recall)")
  p.add_argument("--max-length", type=positive_int, default=None,
                 help="longest training sequence (None: 20 copy, 10 repeat copy, 6 items recall)")
  p.add_argument("--eval-every", type=positive_int, default=250, help="evaluate every this many steps")
  p.add_argument("--eval-sequences", type=positive_int, default=1000, help="sequences per evaluation")
  p.add_argument("--solved-bit-errors", type=positive_float, default=0.1,
                 help="solved once eval bit errors per sequence fall below this")
  p.add_argument("--post-solve-steps", type=non_negative_int, default=0,
                 help="keep training this many steps after first solving, to consolidate (and "
                      "generalise to longer sequences) before stopping")
  p.add_argument("--keep-training", action="store_true", help="do not stop when solved")
  p.add_argument("--generalisation-lengths", type=int_list, default=None,
                 help="lengths to test generalisation at (None: copy 20,40,80,120)")
  p.add_argument("--checkpoint-every", type=positive_int, default=1000, help="checkpoint every this many steps")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  p.add_argument("--no-plots", action="store_true", help="no PNGs")
  return p


def task_config(args):
  """The sampler kwargs for training and for a fixed generalisation length."""
  bits = args.num_bits or (6 if args.task == "associative_recall" else 8)
  if args.task == "copy":
    max_len = args.max_length or 20
    train = dict(num_bits=bits, min_length=1, max_length=max_len)
    gen_lengths = args.generalisation_lengths or [20, 40, 80, 120]
    gen = lambda L: dict(num_bits=bits, min_length=L, max_length=L)
  elif args.task == "repeat_copy":
    max_len = args.max_length or 10
    train = dict(num_bits=bits, min_length=1, max_length=max_len, min_repeats=1, max_repeats=10)
    gen_lengths = args.generalisation_lengths or [10, 20]
    gen = lambda L: dict(num_bits=bits, min_length=L, max_length=L, min_repeats=10, max_repeats=10)
  else:
    max_len = args.max_length or 6
    train = dict(num_bits=bits, item_length=3, min_items=2, max_items=max_len)
    gen_lengths = args.generalisation_lengths or [6, 12]
    gen = lambda L: dict(num_bits=bits, item_length=3, min_items=L, max_items=L)
  return bits, train, gen_lengths, gen


def build_model(args) -> tuple[nn.RNN, NTMCell]:
  """``(nn.RNN(cell), cell)``: the NTM of the flags (also used by ``memjax.pretrained.export``)."""
  out_ch = tasks.TASKS[args.task][2]
  bits = task_config(args)[0]
  cell = NTMCell(features=out_ch(bits), memory_size=args.memory_size, word_size=args.word_size,
                 controller=args.controller, controller_features=args.controller_features,
                 num_read_heads=args.read_heads, num_write_heads=args.write_heads,
                 shift_range=args.shift_range, memory_init=args.memory_init)
  return nn.RNN(cell), cell


def parse_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
  args = parser.parse_args(argv)
  if args.memory_size < 2 * args.shift_range + 1:
    parser.error(f"--memory-size ({args.memory_size}) must be at least 2*--shift-range+1")
  return args


def make_stop_fn(args, solved: dict):
  """Records when the evaluation first falls below ``--solved-bit-errors`` in ``solved`` and
  schedules the stop ``--post-solve-steps`` later (``training.fit``'s ``stop_fn``)."""

  def stop_fn(record):
    if record["eval_bit_errors"] < args.solved_bit_errors and not solved:
      solved.update(step=record["step"], wall_time=record["wall_time"],
                    sequences=record["step"] * args.batch_size, bit_errors=record["eval_bit_errors"])
    if solved and not args.keep_training:
      return solved["step"] + args.post_solve_steps
    return False

  return stop_fn


def main(argv=None) -> dict:
  parser = build_parser()
  args = parse_args(parser, argv)
  sampler = tasks.TASKS[args.task][0]
  _, train_kw, gen_lengths, gen_kw = task_config(args)
  model, cell = build_model(args)
  sample = functools.partial(sampler, **train_kw)
  # jitted: one compile instead of one per eager op (~4 s less at start-up; the same bits)
  params = jax.jit(model.init)(jax.random.key(args.seed), sample(jax.random.key(0), 1).inputs)
  config = {k: v for k, v in vars(args).items() if k not in ("resume", "no_progress", "no_plots")}
  run = training.Run(args.workdir, config, resume=args.resume, compare=RESUME_KEYS, error=parser.error)

  def loss_fn(p, key):
    batch = training.shard_batch(sample(key, args.batch_size))
    return tasks.sequence_loss(model.apply(p, batch.inputs), batch)

  metrics = jax.jit(lambda p: evaluation.sequence_metrics(model.apply, p, sample, args.eval_sequences,
                                                          training.eval_key()))
  solved = {}
  with run:
    state, history = run.fit(
        loss_fn, params, training.make_optimizer(args.optimizer, args.lr, clip=args.clip),
        num_steps=args.steps, seed=args.seed, checkpoint_every=args.checkpoint_every, log_every=50,
        progress=not args.no_progress, eval_every=args.eval_every,
        eval_fn=lambda p, step: run.evaluate(metrics, p, prefix="eval_"),
        stop_fn=make_stop_fn(args, solved), max_seconds=args.max_minutes * 60,
        batch_size=args.batch_size, describe=lambda r: describe(r, solved))
    generalisation = run.step(
        f"testing generalisation at lengths {', '.join(map(str, gen_lengths))} "
        f"({args.eval_sequences} sequences each)", evaluation.copy_generalisation, model.apply,
        state.params, sampler, gen_kw, gen_lengths, args.eval_sequences, training.eval_key())
    final_eval = run.step(f"evaluating on {args.eval_sequences} sequences of the training lengths",
                          training.evaluate, metrics, state.params)
    results = {
        "task": args.task, "seed": args.seed, "steps": int(state.step),
        "sequences": int(state.step) * args.batch_size,
        "train_seconds_this_invocation": run.fit_seconds, "solved": solved or None,
        "final_eval": final_eval, "generalisation": generalisation, "config": config,
        "device": str(jax.devices()[0]), "date": time.strftime("%Y-%m-%d"),
    }
    run.write_results(results)
    print(json.dumps({k: results[k] for k in ("task", "seed", "steps", "sequences", "solved",
                                              "final_eval", "generalisation")}, indent=1))
    if not args.no_plots:
      run.step("plotting the loss curve, outputs and memory weightings", plot, run, args, cell,
               state.params, sampler, gen_kw, gen_lengths, solved, always=True)
  return results


def describe(record: dict, solved: dict) -> str | None:
  """The progress bar's evaluation text: bit errors per sequence as measured."""
  if "eval_bit_errors" not in record:
    return None
  return (f"eval bit errors/seq {record['eval_bit_errors']:.3g}"
          + (f" (solved at step {solved['step']})" if solved else ""))


# ----------------------------------------------------------------------------
# Plots.


def used_slots(weights: np.ndarray, pad: int = 2, threshold: float = 0.05) -> np.ndarray:
  """The memory slots to show: the shortest circular window of slots holding every
  slot that some head weights above ``threshold`` at some step, ``pad`` slots wider
  on each side.

  Args:
    weights: [..., N] read/write weightings over time and heads.

  Returns:
    [W] slot numbers in order along the window (it may wrap from N-1 to 0).
  """
  n = weights.shape[-1]
  peak = weights.reshape(-1, n).max(0)
  used = np.flatnonzero(peak > threshold)
  if used.size == 0:
    used = np.array([int(np.argmax(peak))])
  gaps = np.diff(np.r_[used, used[0] + n])  # slots from each used slot to the next, circularly
  i = int(np.argmax(gaps))
  length = min(n, n - int(gaps[i]) + 1 + 2 * pad)
  start = int(used[(i + 1) % used.size]) - pad
  return (start + np.arange(length)) % n


def plot(run, args, cell, params, sampler, gen_kw, gen_lengths, solved):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  with open(os.path.join(run.path, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f if line.strip()]
  fig, ax = plt.subplots(figsize=(7, 4))
  train = [r for r in records if "cost_bits" in r]
  ax.plot([r["step"] for r in train], [r["cost_bits"] for r in train], label="training cost (bits/sequence)")
  ev = [r for r in records if "eval_bit_errors" in r]
  ax.plot([r["step"] for r in ev], [r["eval_bit_errors"] for r in ev], "o-", ms=3,
          label=f"evaluation bit errors/sequence ({args.eval_sequences} sequences)")
  ax.axhline(args.solved_bit_errors, color="k", ls="--", lw=1,
             label=f"solve threshold ({args.solved_bit_errors:g} bit errors/sequence)")
  if solved:
    ax.axvline(solved["step"], color="gray", ls=":", lw=1, label=f"solved at step {solved['step']}")
  ax.set_yscale("log")
  ax.set_xlabel("training step (optimizer updates)")
  ax.set_ylabel("bits per sequence (log scale)")
  ax.set_title(f"NTM {args.task}: training cost and evaluation bit errors")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(run.output("loss.png"), dpi=100)
  plt.close(fig)
  for length in sorted({gen_lengths[0], *([80] if 80 in gen_lengths else gen_lengths[-1:])}):
    plot_sequence(run.output(f"sequence_{length}.png"), args, cell, params,
                  sampler(jax.random.key(length), 1, **gen_kw(length)), length)


def plot_sequence(path, args, cell, params, batch, length):
  """Input, target and output on one time axis, then the heads' weightings over the used slots."""
  import matplotlib.pyplot as plt

  logits, states = trajectory(cell, params, batch.inputs)
  mask = np.asarray(batch.mask[0])[:, None] > 0  # [T, 1]: the steps where an output is scored
  inputs, targets = np.asarray(batch.inputs[0]), np.asarray(batch.targets[0])
  output = np.where(mask, np.asarray(jax.nn.sigmoid(logits[0])), np.nan)
  target = np.where(mask, targets, np.nan)
  write, read = np.asarray(states.write_weights[0]), np.asarray(states.read_weights[0])  # [T, H, N]
  slots = used_slots(np.concatenate([write, read], axis=1))
  steps = inputs.shape[0]
  fig, axes = plt.subplots(5, 1, figsize=(max(7.0, steps / 12), 12), sharex=True,
                           gridspec_kw=dict(height_ratios=[1, 1, 1, 2, 2]))
  cmap = plt.get_cmap("gray_r").copy()
  cmap.set_bad("#e8f0ff")  # steps without a target
  panels = [(inputs, f"input: {length} random vectors, then the delimiter (channel {inputs.shape[1] - 1})",
             "input channel", "bit value"),
            (target, "target (shaded: no output expected)", "bit", "bit value"),
            (output, "output of the NTM, sigmoid(logit)", "bit", "P(bit = 1)")]
  extent = lambda rows: (-0.5, steps - 0.5, -0.5, rows - 0.5)
  for a, (image, title, ylabel, clabel) in zip(axes, panels):
    im = a.imshow(image.T, aspect="auto", cmap=cmap, vmin=0, vmax=1, origin="lower",
                  extent=extent(image.shape[1]), interpolation="nearest")
    a.set_title(title, fontsize=9)
    a.set_ylabel(ylabel)
    fig.colorbar(im, ax=a, label=clabel, pad=0.01)
  for a, weights, name in ((axes[3], write, "write"), (axes[4], read, "read")):
    im = a.imshow(weights[:, 0, slots].T, aspect="auto", cmap="viridis", vmin=0, vmax=1, origin="lower",
                  extent=extent(len(slots)), interpolation="nearest")
    ticks = np.arange(0, len(slots), -(-len(slots) // 12))
    a.set_yticks(ticks, [str(slots[t]) for t in ticks])
    a.set_ylabel("memory slot")
    shown = (f"{slots[0]}–{slots[-1]}" if slots[0] <= slots[-1]
             else f"{slots[0]}–{args.memory_size - 1} and 0–{slots[-1]}")
    a.set_title(f"{name} head 0 weighting over time, slots {shown} of 0–{args.memory_size - 1} "
                "(the slots the heads used)", fontsize=9)
    fig.colorbar(im, ax=a, label="weight", pad=0.01)
  axes[-1].set_xlabel("time step")
  fig.suptitle(f"NTM {args.task}, sequence length {length}")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


if __name__ == "__main__":
  cli.run(main)
