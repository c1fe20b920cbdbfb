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

``--steps`` counts optimizer updates of ``--batch-size`` episodes each, as in
every memjax experiment; the default, 100,000 steps of batch 16 (1.6M episodes),
is the paper's. The older flags ``--episodes`` and ``--lr-drop-episodes`` are
still accepted (converted to steps by the batch size). Writes ``config.json``,
``metrics.jsonl``, checkpoints, ``results.json`` (atomically) and PNGs (accuracy
vs instance, training curve) to ``--workdir``. Ctrl-C or SIGTERM stops training
with a checkpoint, partial results (``"interrupted": true``) and plots, exit code
130/143; ``--resume`` continues. ``--ema-decay D`` keeps a moving average of the
parameters (:func:`memjax.training.with_params_ema`) that the evaluations and
``memjax.pretrained.export`` use; training itself is unchanged.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import time
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from memjax import cli, evaluation, training
from memjax.cli import non_negative_int, positive_float, positive_int, unit_float
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
# Keys of config.json that a --resume must not change (a learning-rate schedule and the
# training jitter may change only from the checkpoint on: memjax.training.lr_history and
# memjax.cli.check_jitter_resume check them).
RESUME_KEYS = ("model", "label_mode", "num_classes", "samples_per_class", "batch_size", "optimizer",
               "seed", "memory_size", "word_size",
               "read_heads", "controller_features", "usage_decay", "write", "image_size", "train_split")
# Deprecated flags counted in episodes -> the flags in steps that replace them.
DEPRECATED = {"--episodes": "--steps", "--lr-drop-episodes": "--lr-drop-steps"}


def build_parser() -> argparse.ArgumentParser:
  p = cli.parser(__doc__)
  p.aliases_of = {new: (old,) for old, new in DEPRECATED.items()}  # for memjax.reproduce's --train-args
  p.add_argument("--data-dir", default=None,
                 help="folder with the Omniglot zips (None: $MEMJAX_DATA_DIR, else the user cache, "
                      "downloading if needed)")
  p.add_argument("--model", choices=["mann", "lstm"], default="mann", help="memory-augmented or LSTM")
  p.add_argument("--label-mode", choices=list(episodes_lib.LABEL_MODES), default="onehot",
                 help="'onehot' (Table 1) or 'string': 5-character labels (Table 2)")
  p.add_argument("--num-classes", type=positive_int, default=None,
                 help="classes per episode (None: 5 one-hot, 15 string)")
  p.add_argument("--samples-per-class", type=positive_int, default=10, help="drawings per class per episode")
  p.add_argument("--batch-size", type=positive_int, default=16, help="episodes per step")
  p.add_argument("--optimizer", choices=["rmsprop", "adam"], default="rmsprop",
                 help="'rmsprop' is the paper's (centred, decay 0.95, momentum 0.9; lr 1e-4)")
  p.add_argument("--lr", type=positive_float, default=None,
                 help="learning rate (None: 1e-4 rmsprop, 1e-3 adam); a new value with --resume "
                      "applies from the checkpoint on (recorded in config.json's lr_history)")
  cli.add_lr_drop_flags(p)
  p.add_argument("--clip", type=positive_float, default=10.0, help="clip gradient components to ±clip")
  p.add_argument("--steps", type=positive_int, default=100_000,
                 help="total training steps (optimizer updates of --batch-size episodes), counting "
                      "resumed ones")
  p.add_argument("--episodes", type=positive_int, default=None, help=argparse.SUPPRESS)
  p.add_argument("--lr-drop-episodes", type=non_negative_int, default=None, help=argparse.SUPPRESS)
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
  p.add_argument("--seed", type=int, default=0, help="parameter initialisation and training episodes")
  p.add_argument("--memory-size", type=positive_int, default=128, help="memory slots")
  p.add_argument("--word-size", type=positive_int, default=40, help="slot width")
  p.add_argument("--read-heads", type=positive_int, default=4, help="read heads")
  p.add_argument("--controller-features", type=positive_int, default=200, help="LSTM controller units")
  p.add_argument("--usage-decay", type=unit_float, default=0.95, help="LRUA usage decay γ")
  p.add_argument("--write", choices=list(WRITE_MODES), default="add",
                 help="what each LRUA head writes: 'add' a separate add vector a_t (snowkylin/ntm, "
                      "tristandeleu/ntm-one-shot), 'key' the read key (paper-literal)")
  cli.add_jitter_flags(p)
  cli.add_ema_flag(p)
  cli.add_cpu_devices_flag(p)
  p.add_argument("--image-size", type=positive_int, default=20, help="side of the resized images")
  p.add_argument("--checkpoint-every", type=positive_int, default=500, help="checkpoint every this many steps")
  p.add_argument("--log-every", type=positive_int, default=50, help="metrics line every this many steps")
  split_help = ("Omniglot split: 'train'/'test' are Santoro et al.'s 1,200/423 characters, "
                "'background'/'evaluation' the official archives, 'small1'/'small2' for fast tests")
  p.add_argument("--train-split", choices=list(omniglot.SPLITS), default="train", help=split_help)
  p.add_argument("--test-split", choices=list(omniglot.SPLITS), default="test", help=split_help)
  p.add_argument("--no-progress", action="store_true", help="no progress bar (a line per evaluation)")
  p.add_argument("--no-plots", action="store_true", help="no PNGs")
  return p


def parse_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
  """The flags, checked; the deprecated episode counts converted to steps."""
  args = parser.parse_args(argv)
  for old, new, convert in (("episodes", "steps", lambda e: math.ceil(e / args.batch_size)),
                            ("lr_drop_episodes", "lr_drop_steps", lambda e: e // args.batch_size)):
    value = vars(args).pop(old)
    if value is None:
      continue
    if getattr(args, new) != parser.get_default(new):
      parser.error(f"--{old.replace('_', '-')} (deprecated) and --{new.replace('_', '-')} are exclusive")
    setattr(args, new, convert(value))
    print(f"warning: --{old.replace('_', '-')} {value} is deprecated; it means "
          f"--{new.replace('_', '-')} {getattr(args, new)} (batch size {args.batch_size})",
          file=sys.stderr)
  cli.check_lr_flags(parser, args)
  n = args.num_classes = args.num_classes or (5 if args.label_mode == "onehot" else 15)
  if args.label_mode == "string" and n > 5 ** 5:
    parser.error(f"--num-classes ({n}) must be at most 3125 for distinct string labels")
  if args.model == "mann" and args.read_heads > args.memory_size:
    parser.error(f"--read-heads ({args.read_heads}) must be at most --memory-size ({args.memory_size})")
  if args.samples_per_class > omniglot.NUM_DRAWERS:
    parser.error(f"--samples-per-class ({args.samples_per_class}) must be at most the "
                 f"{omniglot.NUM_DRAWERS} drawers per character")
  return args


def upgrade_config(old: dict) -> dict:
  """A saved config.json in today's keys: runs written before ``--steps`` counted episodes."""
  old = dict(old)
  batch = old.get("batch_size", 16)
  if "lr_drop_steps" not in old:
    old["lr_drop_steps"] = old.pop("lr_drop_episodes", 0) // batch
  if "steps" not in old and "episodes" in old:
    old["steps"] = math.ceil(old.pop("episodes") / batch)
  return old


def lr_of(config: dict) -> float:
  return config["lr"] if config.get("lr") is not None else DEFAULT_LR[config["optimizer"]]


def make_optimizer(args, lr: float) -> optax.GradientTransformation:
  """``--optimizer`` at ``lr`` (times ``--lr-drop-factor`` from step ``--lr-drop-steps`` on,
  or following ``--lr-schedule``), gradients clipped at ``--clip``; with ``--ema-decay``, a
  moving average of the parameters that the evaluations use (:func:`memjax.training.with_params_ema`)."""
  lr = training.step_decay(lr, args.lr_drop_steps, args.lr_drop_factor, args.lr_schedule)
  return training.with_params_ema(training.make_optimizer(args.optimizer, lr, clip=args.clip),
                                  args.ema_decay)


def build_model(args, features: int) -> tuple[nn.RNN, nn.RNNCellBase]:
  if args.model == "mann":
    cell = MANNCell(features=features, memory_size=args.memory_size, word_size=args.word_size,
                    num_read_heads=args.read_heads, controller_features=args.controller_features,
                    usage_decay=args.usage_decay, write=args.write)
  else:
    cell = LSTMCell(features=features, controller_features=args.controller_features)
  return nn.RNN(cell), cell


class Task:
  """The flags' episodes, model, loss and test protocol."""

  def __init__(self, args, train_images, test_images):
    n = args.num_classes
    self.args, self.train_images = args, train_images
    self.sample_kw = dict(num_classes=n, samples_per_class=args.samples_per_class,
                          label_mode=args.label_mode, rotate=True)
    features = episodes_lib.label_dim(n, args.label_mode)
    self.model, self.cell = build_model(args, features)
    # The MANN trains and evaluates through memjax.mann.unroll: nn.RNN(cell)'s logits, faster.
    self.apply = (lambda p, x: unroll(self.cell, p, x)) if args.model == "mann" else self.model.apply
    self.instances = tuple(k for k in INSTANCES if k <= args.samples_per_class)
    self.names = [INSTANCE_NAMES[k] for k in self.instances]
    example = jnp.zeros((1, n * args.samples_per_class, args.image_size ** 2 + features), jnp.float32)
    self.params = jax.jit(self.model.init)(jax.random.key(args.seed), example)
    self.test = evaluation.mann_evaluator(
        self.apply, test_images, num_episodes=args.eval_episodes, batch_size=args.eval_batch,
        instances=self.instances, key=training.eval_key(), **self.sample_kw)
    paper = PAPER.get((args.model, args.label_mode, n)) if args.samples_per_class >= 10 else None
    self.paper = paper

  def loss(self, p, key, max_shift: int = 0, max_rotation: float = 0.0):
    """The training loss on a batch of episodes drawn from ``key``, images
    jittered by up to ``max_shift`` pixels and ``max_rotation`` degrees."""
    args = self.args
    ep = episodes_lib.sample_mann_episodes(key, self.train_images, batch_size=args.batch_size,
                                           **self.sample_kw, max_shift=max_shift,
                                           max_rotation=max_rotation)
    ep = training.shard_batch(ep)  # split over devices when fit runs under a mesh
    logits = self.apply(p, ep.inputs)
    correct, total = per_instance_counts(logits, ep.targets, ep.instance, args.label_mode, self.instances)
    acc = correct / jnp.maximum(total, 1.0)
    return mann_loss(logits, ep.targets, args.label_mode), {
        f"acc_{name}": acc[i] for i, name in enumerate(self.names)}

  def loss_schedule(self) -> list[tuple[int, Callable]]:
    """:meth:`loss` under the flags' jitter, ``[(first step, loss_fn), ...]``
    (:func:`memjax.cli.jitter_loss_schedule`), for :func:`memjax.training.fit`."""
    return cli.jitter_loss_schedule(self.args, lambda shift, degrees: functools.partial(
        self.loss, max_shift=shift, max_rotation=degrees))

  def metrics(self, p) -> dict:
    """Test accuracy by instance and loss, ``{"acc_1st": ..., "loss": ...}``."""
    acc, loss = self.test(p)
    return {**{f"acc_{name}": acc[i] for i, name in enumerate(self.names)}, "loss": loss}

  def optimizer(self, config: dict) -> optax.GradientTransformation:
    return make_optimizer(self.args, lr_of(config))

  def describe(self, record: dict) -> str | None:
    """The progress bar's evaluation text: test accuracy by instance as measured."""
    if f"eval_acc_{self.names[0]}" not in record:
      return None
    return ("test acc % " + "/".join(self.names) + " "
            + "/".join(f"{100 * record[f'eval_acc_{name}']:.0f}" for name in self.names))


def main(argv=None) -> dict:
  parser = build_parser()
  args = parse_args(parser, argv)
  cli.set_cpu_devices(parser, args.cpu_devices, args.batch_size)
  train_images, test_images = (jnp.asarray(x) for x in cli.load_omniglot(
      parser, args.data_dir, args.train_split, args.test_split, image_size=args.image_size))
  for name, imgs in (("--train-split", train_images), ("--test-split", test_images)):
    if imgs.shape[0] < args.num_classes:
      parser.error(f"{name} has {imgs.shape[0]} characters, fewer than --num-classes {args.num_classes}")
  task = Task(args, train_images, test_images)
  config = {k: v for k, v in vars(args).items() if k not in ("resume", "no_progress", "no_plots")}
  run = training.Run(args.workdir, config, resume=args.resume, compare=RESUME_KEYS,
                     defaults={k: parser.get_default(k) for k in RESUME_KEYS}, upgrade=upgrade_config,
                     amend=[training.lr_history(lr_of), cli.check_jitter_resume, cli.ema_history],
                     error=parser.error)

  def eval_fn(p, step):
    # Training wall time so far, evaluations excluded, resumed invocations included:
    # the time-to-accuracy figure (benchmarks/time_to_accuracy.py reads it).
    record = {"train_seconds": run.train_seconds()}
    record = {**run.evaluate(task.metrics, p, prefix="eval_"), **record}
    if args.no_progress:
      print(f"step {step} ({step * args.batch_size} episodes): {task.describe(record)}, test loss "
            f"{record['eval_loss']:.4f}", flush=True)
    return record

  load_start = _load_avg()
  with run:
    state, history = run.fit(
        task.loss_schedule(), task.params, task.optimizer(run.config), num_steps=args.steps,
        seed=args.seed, checkpoint_every=args.checkpoint_every, log_every=args.log_every,
        progress=not args.no_progress,
        eval_every=args.eval_every, eval_fn=eval_fn, max_seconds=args.max_minutes * 60,
        batch_size=args.batch_size, describe=task.describe,
        # Under several devices each runs the loss on its slice: the loss and the per-instance
        # accuracies are means over equally weighted episodes (every episode holds N k-th instances).
        shard_map=True)
    train_eval_seconds = run.eval_seconds
    final = run.step(f"evaluating on {task.test.num_episodes} test episodes ({args.test_split} split)",
                     run.evaluate, task.metrics, training.averaged_params(state), prefix="eval_")
    results = make_results(args, task, run, int(state.step), final, train_eval_seconds, load_start)
    run.write_results(results)
    print_table(args, task, results)
    if not args.no_plots:
      run.step("plotting accuracy by instance and the training curve", plot, run, args, task, results,
               always=True)
  return results


def _load_avg() -> list[float] | None:
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return None


def make_results(args, task: Task, run: training.Run, steps: int, final: dict | None,
                 train_eval_seconds: float, load_start) -> dict:
  """results.json: the final test accuracy (interrupted: the last evaluation's, with its step)."""
  if final is None:  # interrupted: the last evaluation during training, if any
    evals = [r for r in _records(run.path) if f"eval_acc_{task.names[0]}" in r]
    final = evals[-1] if evals else None
  train_seconds = run.fit_seconds
  episodes_now = (steps - run.start_step) * args.batch_size
  paper = task.paper
  return {
      "model": args.model, "label_mode": args.label_mode, "num_classes": args.num_classes,
      "samples_per_class": args.samples_per_class, "seed": args.seed,
      "steps": steps, "episodes_trained": steps * args.batch_size,
      "episodes_this_invocation": episodes_now,
      "wall_seconds_this_invocation": train_seconds,
      "episodes_per_hour": episodes_now / train_seconds * 3600 if train_seconds > 0 else None,
      "episodes_per_hour_excluding_eval": (episodes_now / (train_seconds - train_eval_seconds) * 3600
                                           if train_seconds > train_eval_seconds else None),
      "eval_episodes": task.test.num_episodes, "test_split": args.test_split,
      "per_instance_accuracy": (None if final is None else
                                {name: final[f"eval_acc_{name}"] for name in task.names}),
      "eval_loss": None if final is None else final["eval_loss"],
      **({"evaluated_at_step": final.get("step")} if final is not None and "step" in final else {}),
      "paper_per_instance_accuracy": (dict(zip([INSTANCE_NAMES[k] for k in INSTANCES],
                                               [v / 100 for v in paper])) if paper else None),
      "config": run.config, "device": str(jax.devices()[0]),
      "num_devices": jax.device_count(), "cpu_count": os.cpu_count(),
      "load_average_start_end": [load_start, _load_avg()],
      "note": "episodes/hour measured on a shared CPU (other jobs running; see load averages)",
      "date": time.strftime("%Y-%m-%d"),
  }


def print_table(args, task: Task, results: dict) -> None:
  acc = results["per_instance_accuracy"]
  rate = results["episodes_per_hour"]
  print(f"\n{args.model.upper()} {args.num_classes}-way {args.label_mode}, {results['episodes_trained']} "
        f"episodes ({results['steps']} steps), {rate or 0:.0f} episodes/hour; test accuracy (%) by "
        "instance" + (f" (evaluation at step {results['evaluated_at_step']})"
                      if "evaluated_at_step" in results else "") + ":")
  print("            " + " ".join(f"{name:>6}" for name in task.names))
  if acc is not None:
    print("  memjax    " + " ".join(f"{100 * acc[name]:6.1f}" for name in task.names))
  if task.paper:
    print("  paper     " + " ".join(f"{v:6.1f}" for k, v in zip(INSTANCES, task.paper)
                                    if k in task.instances))


def _records(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def plot(run: training.Run, args, task: Task, results: dict):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  names, instances, paper = task.names, task.instances, task.paper
  model = args.model.upper()
  acc = results["per_instance_accuracy"]
  if acc is not None:
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(instances, [100 * acc[name] for name in names], "o-",
            label=f"memjax {model}, {results['episodes_trained']:,} episodes")
    if paper:
      ax.plot(INSTANCES, paper, "s--", color="gray", label=f"Santoro et al. 2016 {model}")
    ax.axhline(100 / args.num_classes, color="gray", ls=":", lw=1, label="chance (1st instance)")
    ax.set_xlabel("instance (presentation of the class in the episode)")
    ax.set_ylabel(f"test accuracy (%), {results['eval_episodes']} episodes")
    ax.set_xticks(list(instances))
    ax.set_ylim(0, 100)
    ax.set_title(f"{model} Omniglot {args.num_classes}-way, {args.label_mode} labels: accuracy by instance",
                 fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(run.output("accuracy_by_instance.png"), dpi=100)
    plt.close(fig)

  ev = [r for r in _records(run.path) if "eval_acc_1st" in r]
  if not ev:
    return
  fig, ax = plt.subplots(figsize=(7, 4))
  paper_at = dict(zip(INSTANCES, paper)) if paper else {}
  for k, name in zip(instances, names):
    line, = ax.plot([r["step"] * args.batch_size for r in ev], [100 * r[f"eval_acc_{name}"] for r in ev],
                    label=name)
    if k in paper_at:  # the paper's figure for this instance, same colour, dashed
      ax.axhline(paper_at[k], color=line.get_color(), linestyle="--", linewidth=0.8)
  ax.set_xlabel(f"training episodes ({args.batch_size} per step)")
  ax.set_ylabel(f"test accuracy (%), {args.eval_episodes} episodes")
  ax.set_ylim(0, 100)
  ax.set_title(f"{model} Omniglot {args.num_classes}-way {args.label_mode}: accuracy by "
               "instance during training" + ("\n(dashed: Santoro et al. 2016)" if paper else ""), fontsize=9)
  ax.legend(title="instance", fontsize=8, loc="lower right")
  fig.tight_layout()
  fig.savefig(run.output("accuracy_curve.png"), dpi=100)
  plt.close(fig)


if __name__ == "__main__":
  cli.run(main)
