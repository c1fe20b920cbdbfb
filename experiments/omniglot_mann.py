"""One-shot Omniglot classification with a MANN or an LSTM (Santoro et al. 2016, §4.1).

Episodes of ``--num-classes`` characters × ``--samples-per-class`` drawings (5 × 10
= 50 steps by default) are sampled on device from the 1,200 training characters
(each class randomly rotated by a multiple of 90°, so rotations are new
classes); the input at step t is the 20×20 image x_t with the label of step
t − 1. Labels are one-hot (``--label-mode onehot``, 5-way: the paper's Table 1)
or 5-character strings over 5 letters (``--label-mode string``, 15-way by
default: Table 2). Evaluation uses ``--eval-episodes`` fixed episodes of the 423
test characters and reports the accuracy at the 1st, 2nd, 3rd, 4th, 5th and
10th presentation of each class, next to the paper's row.

    python experiments/omniglot_mann.py --data-dir /work/shared/data/omniglot
    python experiments/omniglot_mann.py --model lstm --workdir runs/lstm_onehot
    python experiments/omniglot_mann.py --label-mode string --workdir runs/mann_string
    python experiments/omniglot_mann.py --workdir runs/mann_onehot --resume

``--episodes`` counts episodes (training examples), not optimiser steps: one
step is ``--batch-size`` episodes. The default, 1.6M episodes, is the paper's
100,000 iterations of batch 16. Writes ``config.json``, ``metrics.jsonl``,
checkpoints, ``results.json`` (atomically) and PNGs (accuracy vs instance,
training curve) to ``--workdir``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from memjax import evaluation, training
from memjax import cli
from memjax.cli import (non_negative_float, non_negative_int, positive_float, positive_int, unit_float,
                        write_json)
from memjax.data import episodes as episodes_lib
from memjax.data import omniglot
from memjax.mann import WRITE_MODES, LSTMCell, MANNCell, mann_loss, per_instance_counts, unroll

INSTANCES = (1, 2, 3, 4, 5, 10)
DEFAULT_LR = {"rmsprop": 1e-4, "adam": 1e-3}
INSTANCE_NAMES = {1: "1st", 2: "2nd", 3: "3rd", 4: "4th", 5: "5th", 10: "10th"}
# Santoro et al. 2016, accuracy (%) at instance 1, 2, 3, 4, 5, 10.
PAPER = {
    # Table 1: 5-way, one-hot labels.
    ("mann", "onehot", 5): [36.4, 82.8, 91.0, 92.6, 94.9, 98.1],
    ("lstm", "onehot", 5): [24.4, 49.5, 55.3, 61.0, 63.6, 62.5],
    # Table 2: 15-way, 5-character string labels (MANN with LRUA).
    ("mann", "string", 15): [0.1, 62.6, 79.3, 86.6, 88.7, 95.3],
}


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--data-dir", default=None,
                 help="folder with the Omniglot zips (default: $MEMJAX_DATA_DIR, else the user "
                      "cache, downloading if needed)")
  p.add_argument("--model", choices=["mann", "lstm"], default="mann")
  p.add_argument("--label-mode", choices=list(episodes_lib.LABEL_MODES), default="onehot",
                 help="'onehot' (Table 1) or 'string': 5-character labels (Table 2)")
  p.add_argument("--num-classes", type=positive_int, default=None,
                 help="classes per episode (default: 5 one-hot, 15 string)")
  p.add_argument("--samples-per-class", type=positive_int, default=10)
  p.add_argument("--batch-size", type=positive_int, default=16)
  p.add_argument("--optimizer", choices=["rmsprop", "adam"], default="rmsprop",
                 help="'rmsprop' is the paper's (centred, decay 0.95, momentum 0.9; lr 1e-4)")
  p.add_argument("--lr", type=positive_float, default=None,
                 help="learning rate (default: 1e-4 rmsprop, 1e-3 adam); a new value with --resume "
                      "applies from the checkpoint on (recorded in config.json's lr_history)")
  p.add_argument("--lr-drop-episodes", type=non_negative_int, default=0,
                 help="multiply the learning rate by --lr-drop-factor after this many episodes (0: never)")
  p.add_argument("--lr-drop-factor", type=positive_float, default=0.1)
  p.add_argument("--clip", type=positive_float, default=10.0, help="clip gradient components to ±clip")
  p.add_argument("--episodes", type=positive_int, default=1_600_000,
                 help="total training episodes (steps × batch size), counting resumed ones")
  p.add_argument("--max-minutes", type=positive_float, default=60.0,
                 help="training wall-time budget of this invocation")
  p.add_argument("--workdir", default="runs/mann_onehot",
                 help="checkpoints, metrics.jsonl, results.json, PNGs")
  p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --workdir")
  p.add_argument("--eval-every", type=non_negative_int, default=500,
                 help="evaluate on the test characters every this many steps (0: only at the end)")
  p.add_argument("--eval-episodes", type=positive_int, default=1000, help="test episodes per evaluation")
  p.add_argument("--eval-batch", type=positive_int, default=100,
                 help="test episodes per compiled evaluation call")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--memory-size", type=positive_int, default=128)
  p.add_argument("--word-size", type=positive_int, default=40)
  p.add_argument("--read-heads", type=positive_int, default=4)
  p.add_argument("--controller-features", type=positive_int, default=200)
  p.add_argument("--usage-decay", type=unit_float, default=0.95)
  p.add_argument("--write", choices=list(WRITE_MODES), default="add",
                 help="what each LRUA head writes: 'add' a separate add vector a_t (snowkylin/ntm, "
                      "tristandeleu/ntm-one-shot), 'key' the read key (paper-literal)")
  p.add_argument("--max-shift", type=non_negative_int, default=0,
                 help="training-time jitter: translate each image by up to this many pixels")
  p.add_argument("--max-rotation", type=non_negative_float, default=0.0,
                 help="training-time jitter: rotate each image by up to ± this many degrees "
                      "(snowkylin/ntm: 11.25); test episodes are never jittered")
  p.add_argument("--image-size", type=positive_int, default=20)
  p.add_argument("--checkpoint-every", type=positive_int, default=500)
  p.add_argument("--log-every", type=positive_int, default=50)
  split_help = "Omniglot split ('train'/'test' are Santoro et al.'s 1,200/423 characters; " \
               "'small1' is for fast tests)"
  p.add_argument("--train-split", choices=list(omniglot.SPLITS), default="train", help=split_help)
  p.add_argument("--test-split", choices=list(omniglot.SPLITS), default="test", help=split_help)
  p.add_argument("--no-progress", action="store_true")
  p.add_argument("--no-plots", action="store_true")
  return p


def build_model(args, features: int) -> tuple[nn.RNN, nn.RNNCellBase]:
  if args.model == "mann":
    cell = MANNCell(features=features, memory_size=args.memory_size, word_size=args.word_size,
                    num_read_heads=args.read_heads, controller_features=args.controller_features,
                    usage_decay=args.usage_decay, write=args.write)
  else:
    cell = LSTMCell(features=features, controller_features=args.controller_features)
  return nn.RNN(cell), cell


def _latest_checkpoint_step(workdir: str) -> int:
  path = os.path.join(workdir, "checkpoints")
  steps = [int(d) for d in os.listdir(path) if d.isdigit()] if os.path.isdir(path) else []
  return max(steps, default=0)


def _prior_train_seconds(workdir: str, start_step: int) -> float:
  """Training seconds recorded up to ``start_step`` by earlier invocations (0 for a new run)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not start_step or not os.path.exists(path):
    return 0.0
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  done = [r["train_seconds"] for r in records if "train_seconds" in r and r["step"] <= start_step]
  return done[-1] if done else 0.0


def _load_avg() -> list[float] | None:
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return None


def main(argv=None) -> dict:
  parser = build_parser()
  args = parser.parse_args(argv)
  n = args.num_classes or (5 if args.label_mode == "onehot" else 15)
  args.num_classes = n
  if args.label_mode == "string" and n > 5 ** 5:
    parser.error(f"--num-classes ({n}) must be at most 3125 for distinct string labels")
  if args.model == "mann" and args.read_heads > args.memory_size:
    parser.error(f"--read-heads ({args.read_heads}) must be at most --memory-size ({args.memory_size})")
  if args.max_rotation > 180:
    parser.error(f"--max-rotation ({args.max_rotation}) must be at most 180 degrees")
  if args.samples_per_class > omniglot.NUM_DRAWERS:
    parser.error(f"--samples-per-class ({args.samples_per_class}) must be at most the "
                 f"{omniglot.NUM_DRAWERS} drawers per character")

  os.makedirs(args.workdir, exist_ok=True)
  config = {k: v for k, v in vars(args).items() if k not in ("resume", "no_progress", "no_plots")}
  config_path = os.path.join(args.workdir, "config.json")
  lr_of = lambda c: c["lr"] if c.get("lr") is not None else DEFAULT_LR[c["optimizer"]]
  config["lr_history"] = [[0, lr_of(config)]]  # [step, learning rate] from that step on
  if args.resume and os.path.exists(config_path):
    with open(config_path) as f:
      old = json.load(f)
    keys = ("model", "label_mode", "num_classes", "samples_per_class", "batch_size", "optimizer",
            "lr_drop_episodes", "lr_drop_factor",
            "seed", "memory_size", "word_size", "read_heads", "controller_features", "usage_decay",
            "write", "max_shift", "max_rotation", "image_size", "train_split")
    changed = {k for k in keys if old.get(k, parser.get_default(k)) != config.get(k)}
    if changed:
      parser.error(f"--resume with a different configuration than {config_path}: {sorted(changed)}")
    # A new --lr on resume is a step of a piecewise-constant schedule (the optimiser state is the
    # same for any constant rate); the history records each rate and the step it started at.
    config["lr_history"] = [list(x) for x in old.get("lr_history", [[0, lr_of(old)]])]
    if lr_of(config) != config["lr_history"][-1][1]:
      step = _latest_checkpoint_step(args.workdir)
      config["lr_history"] = [x for x in config["lr_history"] if x[0] < step] + [[step, lr_of(config)]]
      print(f"learning rate from step {step} on: {lr_of(config)} (was {lr_of(old)})", flush=True)
  write_json(config_path, config)

  train_images = jnp.asarray(omniglot.load(args.train_split, args.image_size, args.data_dir).images)
  test_images = jnp.asarray(omniglot.load(args.test_split, args.image_size, args.data_dir).images)
  for name, imgs in (("--train-split", train_images), ("--test-split", test_images)):
    if imgs.shape[0] < n:
      parser.error(f"{name} has {imgs.shape[0]} characters, fewer than --num-classes {n}")

  sample_kw = dict(num_classes=n, samples_per_class=args.samples_per_class,
                   label_mode=args.label_mode, rotate=True)
  features = episodes_lib.label_dim(n, args.label_mode)
  model, cell = build_model(args, features)
  # The MANN trains and evaluates through memjax.mann.unroll: nn.RNN(cell)'s logits, faster.
  apply = (lambda p, x: unroll(cell, p, x)) if args.model == "mann" else model.apply
  jitter = dict(max_shift=args.max_shift, max_rotation=args.max_rotation)
  instances = tuple(k for k in INSTANCES if k <= args.samples_per_class)
  names = [INSTANCE_NAMES[k] for k in instances]
  steps_per_episode = n * args.samples_per_class
  example = jnp.zeros((1, steps_per_episode, args.image_size ** 2 + features), jnp.float32)
  params = jax.jit(model.init)(jax.random.key(args.seed), example)

  def loss_fn(p, key):
    ep = episodes_lib.sample_mann_episodes(key, train_images, batch_size=args.batch_size, **sample_kw,
                                           **jitter)
    ep = training.shard_batch(ep)  # split over devices when fit runs under a mesh
    logits = apply(p, ep.inputs)
    correct, total = per_instance_counts(logits, ep.targets, ep.instance, args.label_mode, instances)
    acc = correct / jnp.maximum(total, 1.0)
    return mann_loss(logits, ep.targets, args.label_mode), {
        f"acc_{name}": acc[i] for i, name in enumerate(names)}

  # Fixed test episodes; never a training key (those are fold_in(key(seed), step)).
  eval_key = jax.random.key(2**31 - 1)
  eval_batch = min(args.eval_batch, args.eval_episodes)
  eval_chunks = math.ceil(args.eval_episodes / eval_batch)

  test_eval = evaluation.mann_evaluator(apply, test_images, num_episodes=args.eval_episodes,
                                        batch_size=args.eval_batch, instances=instances,
                                        key=eval_key, **sample_kw)
  eval_seconds = [0.0]

  def evaluate(p) -> dict:
    t0 = time.perf_counter()
    acc, loss = test_eval(p)
    eval_seconds[0] += time.perf_counter() - t0
    out = {f"eval_acc_{name}": float(acc[i]) for i, name in enumerate(names)}
    out["eval_loss"] = loss
    return out

  def eval_fn(p, step):
    # Training wall time so far, evaluations excluded, resumed invocations included:
    # the time-to-accuracy figure (benchmarks/time_to_accuracy.py reads it).
    train_s = prior_train_seconds + time.perf_counter() - t0 - eval_seconds[0]
    record = {**evaluate(p), "train_seconds": train_s}
    if args.no_progress:
      accs = " ".join(f"{name}={100 * record[f'eval_acc_{name}']:.1f}" for name in names)
      print(f"step {step} ({step * args.batch_size} episodes): test loss "
            f"{record['eval_loss']:.4f}, accuracy % {accs}", flush=True)
    return record

  lr = lr_of(config)
  if args.lr_drop_episodes:
    lr = optax.piecewise_constant_schedule(lr, {args.lr_drop_episodes // args.batch_size: args.lr_drop_factor})
  optimizer = training.make_optimizer(args.optimizer, lr, clip=args.clip)
  num_steps = math.ceil(args.episodes / args.batch_size)
  start_step = _latest_checkpoint_step(args.workdir) if args.resume else 0
  prior_train_seconds = _prior_train_seconds(args.workdir, start_step)
  load_start = _load_avg()
  t0 = time.perf_counter()
  state, history = training.fit(
      loss_fn, params, optimizer, num_steps=num_steps, seed=args.seed, workdir=args.workdir,
      checkpoint_every=args.checkpoint_every, resume=args.resume, log_every=args.log_every,
      progress=not args.no_progress, eval_every=args.eval_every, eval_fn=eval_fn,
      max_seconds=args.max_minutes * 60,
      mesh="auto" if args.batch_size % jax.device_count() == 0 else None)
  train_seconds = time.perf_counter() - t0
  train_eval_seconds = eval_seconds[0]
  steps = int(state.step)
  final = evaluate(state.params)

  episodes_now = (steps - start_step) * args.batch_size
  paper = PAPER.get((args.model, args.label_mode, n)) if args.samples_per_class >= 10 else None
  results = {
      "model": args.model, "label_mode": args.label_mode, "num_classes": n,
      "samples_per_class": args.samples_per_class, "seed": args.seed,
      "steps": steps, "episodes_trained": steps * args.batch_size,
      "episodes_this_invocation": episodes_now,
      "wall_seconds_this_invocation": train_seconds,
      "episodes_per_hour": episodes_now / train_seconds * 3600 if train_seconds > 0 else None,
      "episodes_per_hour_excluding_eval": (episodes_now / (train_seconds - train_eval_seconds) * 3600
                                           if train_seconds > train_eval_seconds else None),
      "eval_episodes": eval_chunks * eval_batch, "test_split": args.test_split,
      "per_instance_accuracy": {name: final[f"eval_acc_{name}"] for name in names},
      "eval_loss": final["eval_loss"],
      "paper_per_instance_accuracy": (dict(zip([INSTANCE_NAMES[k] for k in INSTANCES],
                                               [v / 100 for v in paper])) if paper else None),
      "config": config, "device": str(jax.devices()[0]), "cpu_count": os.cpu_count(),
      "load_average_start_end": [load_start, _load_avg()],
      "note": "episodes/hour measured on a shared CPU (other jobs running; see load averages)",
      "date": time.strftime("%Y-%m-%d"),
  }
  write_json(os.path.join(args.workdir, "results.json"), results)

  print(f"\n{args.model.upper()} {n}-way {args.label_mode}, {steps * args.batch_size} episodes, "
        f"{results['episodes_per_hour']:.0f} episodes/hour; test accuracy (%) by instance:")
  print("            " + " ".join(f"{name:>6}" for name in names))
  print("  memjax    " + " ".join(f"{100 * final[f'eval_acc_{name}']:6.1f}" for name in names))
  if paper:
    print("  paper     " + " ".join(f"{v:6.1f}" for k, v in zip(INSTANCES, paper) if k in instances))
  if not args.no_plots:
    plot(args, names, final, paper, instances)
  return results


def plot(args, names, final, paper, instances):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(5, 3.5))
  ax.plot(instances, [100 * final[f"eval_acc_{name}"] for name in names], "o-",
          label=f"memjax {args.model.upper()}")
  if paper:
    ax.plot(INSTANCES, paper, "s--", color="gray", label=f"Santoro et al. 2016 {args.model.upper()}")
  ax.set_xlabel("instance (presentation of the class)")
  ax.set_ylabel("test accuracy (%)")
  ax.set_xticks(list(instances))
  ax.set_ylim(0, 100)
  ax.set_title(f"Omniglot {args.num_classes}-way, {args.label_mode} labels")
  ax.legend(loc="lower right")
  fig.tight_layout()
  fig.savefig(os.path.join(args.workdir, "accuracy_by_instance.png"), dpi=100)
  plt.close(fig)

  with open(os.path.join(args.workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f if line.strip()]
  ev = [r for r in records if "eval_acc_1st" in r]
  if not ev:
    return
  fig, ax = plt.subplots(figsize=(7, 4))
  paper_at = dict(zip(INSTANCES, paper)) if paper else {}
  for k, name in zip(instances, names):
    line, = ax.plot([r["step"] * args.batch_size for r in ev], [100 * r[f"eval_acc_{name}"] for r in ev],
                    label=name)
    if k in paper_at:  # the paper's figure for this instance, same colour, dashed
      ax.axhline(paper_at[k], color=line.get_color(), linestyle="--", linewidth=0.8)
  ax.set_xlabel("training episodes")
  ax.set_ylabel(f"test accuracy (%), {args.eval_episodes} episodes")
  ax.set_ylim(0, 100)
  ax.set_title(f"{args.model.upper()} Omniglot {args.num_classes}-way {args.label_mode}: accuracy by "
               "instance during training" + ("\n(dashed: Santoro et al. 2016)" if paper else ""), fontsize=9)
  ax.legend(title="instance", fontsize=8, loc="lower right")
  fig.tight_layout()
  fig.savefig(os.path.join(args.workdir, "accuracy_curve.png"), dpi=100)
  plt.close(fig)


if __name__ == "__main__":
  cli.run(main)
