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

from memjax import evaluation, tasks, training
from memjax import cli
from memjax.cli import int_list, positive_float, positive_int, write_json
from memjax.ntm import NTMCell, trajectory


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--task", choices=sorted(tasks.TASKS), default="copy")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--workdir", default="runs/copy", help="checkpoints, metrics.jsonl, results, PNGs")
  p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --workdir")
  p.add_argument("--steps", type=positive_int, default=50_000, help="maximum training steps")
  p.add_argument("--max-minutes", type=positive_float, default=10.0, help="training wall-time budget")
  p.add_argument("--batch-size", type=positive_int, default=1)
  p.add_argument("--optimizer", choices=["rmsprop", "adam"], default="rmsprop",
                 help="'rmsprop' is the paper's (centred, decay 0.95, momentum 0.9)")
  p.add_argument("--lr", type=positive_float, default=None,
                 help="learning rate (default: 1e-4 for rmsprop, 1e-3 for adam)")
  p.add_argument("--clip", type=positive_float, default=10.0, help="clip gradient components to ±clip")
  p.add_argument("--memory-size", type=positive_int, default=128)
  p.add_argument("--word-size", type=positive_int, default=20)
  p.add_argument("--controller", choices=["lstm", "feedforward"], default="lstm")
  p.add_argument("--controller-features", type=positive_int, default=100)
  p.add_argument("--read-heads", type=positive_int, default=1)
  p.add_argument("--write-heads", type=positive_int, default=1)
  p.add_argument("--shift-range", type=positive_int, default=1)
  p.add_argument("--memory-init", choices=["constant", "random", "learned"], default="constant")
  p.add_argument("--num-bits", type=positive_int, default=None,
                 help="bits per vector (default: 8; 6 for associative recall)")
  p.add_argument("--max-length", type=positive_int, default=None,
                 help="longest training sequence (default: 20 copy, 10 repeat copy, 6 items recall)")
  p.add_argument("--eval-every", type=positive_int, default=250)
  p.add_argument("--eval-sequences", type=positive_int, default=1000)
  p.add_argument("--solved-bit-errors", type=positive_float, default=0.1,
                 help="stop once eval bit errors per sequence fall below this")
  p.add_argument("--post-solve-steps", type=int, default=0,
                 help="keep training this many steps after first solving, to consolidate (and "
                      "generalise to longer sequences) before stopping")
  p.add_argument("--keep-training", action="store_true", help="do not stop when solved")
  p.add_argument("--generalisation-lengths", type=int_list, default=None,
                 help="lengths to test generalisation at (default: copy 20,40,80,120)")
  p.add_argument("--checkpoint-every", type=positive_int, default=1000)
  p.add_argument("--no-progress", action="store_true")
  p.add_argument("--no-plots", action="store_true")
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


def main(argv=None) -> dict:
  parser = build_parser()
  args = parser.parse_args(argv)
  if args.memory_size < 2 * args.shift_range + 1:
    parser.error(f"--memory-size ({args.memory_size}) must be at least 2*--shift-range+1")
  sampler, in_ch, out_ch = tasks.TASKS[args.task]
  bits, train_kw, gen_lengths, gen_kw = task_config(args)
  model, cell = build_model(args)
  os.makedirs(args.workdir, exist_ok=True)
  config = {k: v for k, v in vars(args).items() if k not in ("resume", "no_progress", "no_plots")}
  config_path = os.path.join(args.workdir, "config.json")
  if args.resume and os.path.exists(config_path):
    with open(config_path) as f:
      old = json.load(f)
    changed = {k for k in ("task", "seed", "batch_size", "optimizer", "lr", "memory_size", "word_size",
                           "controller", "controller_features", "read_heads", "write_heads")
               if old.get(k) != config.get(k)}
    if changed:
      parser.error(f"--resume with a different configuration than {config_path}: {sorted(changed)}")
  write_json(config_path, config)

  sample = functools.partial(sampler, **train_kw)
  example = sample(jax.random.key(0), 1)
  params = model.init(jax.random.key(args.seed), example.inputs)

  def loss_fn(p, key):
    batch = training.shard_batch(sample(key, args.batch_size))
    return tasks.sequence_loss(model.apply(p, batch.inputs), batch)

  eval_key = jax.random.key(evaluation.EVAL_KEY)  # never a training key: those are fold_in(key(seed), step)

  @jax.jit
  def evaluate(p):
    return evaluation.sequence_metrics(model.apply, p, sample, args.eval_sequences, eval_key)

  def eval_fn(p, step):
    m = evaluate(p)
    return {"eval_bit_errors": m["bit_errors"], "eval_cost_bits": m["cost_bits"]}

  solved = {}

  def stop_fn(record):
    if record["eval_bit_errors"] < args.solved_bit_errors and not solved:
      solved.update(step=record["step"], wall_time=record["wall_time"],
                    sequences=record["step"] * args.batch_size, bit_errors=record["eval_bit_errors"])
    return (bool(solved) and not args.keep_training
            and record["step"] >= solved["step"] + args.post_solve_steps)

  optimizer = training.make_optimizer(args.optimizer, args.lr, clip=args.clip)
  t0 = time.time()
  state, history = training.fit(
      loss_fn, params, optimizer, num_steps=args.steps, seed=args.seed, workdir=args.workdir,
      checkpoint_every=args.checkpoint_every, resume=args.resume, log_every=50,
      progress=not args.no_progress, eval_every=args.eval_every, eval_fn=eval_fn, stop_fn=stop_fn,
      max_seconds=args.max_minutes * 60,
      # Split the batch over all devices when it divides evenly (batch 1 runs on one).
      mesh="auto" if args.batch_size % jax.device_count() == 0 else None)
  train_seconds = time.time() - t0
  params = state.params

  # Generalisation: fixed lengths, fresh sequences.
  generalisation = evaluation.copy_generalisation(model.apply, params, sampler, gen_kw, gen_lengths,
                                                  args.eval_sequences, eval_key)

  final_eval = {k: float(v) for k, v in evaluate(params).items()}
  results = {
      "task": args.task, "seed": args.seed, "steps": int(state.step),
      "sequences": int(state.step) * args.batch_size, "train_seconds_this_invocation": train_seconds,
      "solved": solved or None, "final_eval": final_eval, "generalisation": generalisation,
      "config": config, "device": str(jax.devices()[0]), "date": time.strftime("%Y-%m-%d"),
  }
  write_json(os.path.join(args.workdir, "results.json"), results)
  if not args.no_plots:
    plot(args, model, cell, params, sampler, gen_kw, history, gen_lengths)
  print(json.dumps({k: results[k] for k in ("task", "seed", "steps", "sequences", "solved",
                                            "final_eval", "generalisation")}, indent=1))
  return results


def plot(args, model, cell, params, sampler, gen_kw, history, gen_lengths):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  metrics_path = os.path.join(args.workdir, "metrics.jsonl")
  with open(metrics_path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  steps = [r["step"] for r in records]
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.plot(steps, [r["cost_bits"] for r in records], label="train cost (bits/seq)")
  ev = [r for r in records if "eval_bit_errors" in r]
  ax.plot([r["step"] for r in ev], [r["eval_bit_errors"] for r in ev], "o-", label="eval bit errors/seq")
  ax.set_yscale("log")
  ax.set_xlabel("step")
  ax.legend()
  ax.set_title(f"NTM {args.task}")
  fig.tight_layout()
  fig.savefig(os.path.join(args.workdir, "loss.png"), dpi=100)
  plt.close(fig)

  for L in sorted({gen_lengths[0], *([80] if 80 in gen_lengths else gen_lengths[-1:])}):
    batch = sampler(jax.random.key(L), 1, **gen_kw(L))
    logits, states = trajectory(cell, params, batch.inputs)
    out = np.asarray(jax.nn.sigmoid(logits[0]))
    mask = np.asarray(batch.mask[0]) > 0
    fig, axes = plt.subplots(5, 1, figsize=(max(6, L / 8), 10))
    axes[0].imshow(np.asarray(batch.inputs[0]).T, aspect="auto", cmap="gray_r")
    axes[0].set_title(f"input (length {L})")
    axes[1].imshow(np.asarray(batch.targets[0])[mask].T, aspect="auto", cmap="gray_r", vmin=0, vmax=1)
    axes[1].set_title("target")
    axes[2].imshow(out[mask].T, aspect="auto", cmap="gray_r", vmin=0, vmax=1)
    axes[2].set_title("output (sigmoid)")
    slots = min(args.memory_size, 2 * L + 8)
    for a, name in ((axes[3], "write_weights"), (axes[4], "read_weights")):
      weights = np.asarray(getattr(states, name)[0, :, 0])  # [T, N], head 0
      a.imshow(weights.T[:slots], aspect="auto", cmap="viridis", origin="lower", interpolation="nearest")
      a.set_title(f"{name.replace('_', ' ')} over time (slot ↑, step →)")
    for a in axes:
      a.set_xticks([])
    fig.tight_layout()
    fig.savefig(os.path.join(args.workdir, f"sequence_{L}.png"), dpi=100)
    plt.close(fig)


if __name__ == "__main__":
  cli.run(main)
