"""Train Meta Networks on Omniglot N-way 1-shot (Munkhdalai & Yu 2017, §4.1).

Defaults are the authors' Omniglot model and training: 28×28 images, base
learner and embedding net of 5 conv blocks (64 3×3 filters) then FC 64 and
FC N, fast weights on every layer, cross-entropy representation loss (one
support example per class), Adam 1e-3 with gradients clipped at 10 (per
component; ``--clip-mode summed_norm`` clips as the authors' code), one
episode per update (as the authors' code; ``--lr-drop-steps`` for a step
decay), 10 queries per class, random 90° rotations as new classes during
training, train on the 1,200 characters of the 1200/423 split (Table 1).
``--max-shift`` / ``--max-rotation`` add per-image jitter (a shift of a few
pixels, a small rotation) to the training episodes, off by default: a training
recipe choice, not the authors'; test episodes are never jittered.
``--jitter-schedule`` changes them at later steps (also on ``--resume``, from
the checkpoint on). ``--ema-decay D`` keeps a moving average of the parameters
(:func:`memjax.training.with_params_ema`) that the learning curve, the final
tests and ``memjax.pretrained.export`` use; training itself is unchanged.

    python experiments/omniglot_metanet.py --data-dir /work/shared/data/omniglot
    python experiments/omniglot_metanet.py --num-classes 20 --workdir runs/metanet_20way
    python experiments/omniglot_metanet.py --workdir runs/metanet_5way --resume
    python experiments/omniglot_metanet.py --ablate no_task      # MetaNet− (no Q*)
    # the full model started from a trained MetaNet− run (its new task-level meta
    # learner d with a read-out × 0.1); Adam and the step count start afresh
    python experiments/omniglot_metanet.py --init-from runs/metanet_5way --init-fresh-scale 0.1 \
        --lr 1e-4 --workdir runs/metanet_full_5way
    # Table 3, the standard split: train on the 964 images_background characters,
    # test on 400 20-way episodes of the 659 images_evaluation characters
    python experiments/omniglot_metanet.py --num-classes 20 --train-split background \
        --test-split evaluation --eval-episodes 400 --workdir runs/metanet_standard_20way
    # Table 4: a 5-way-trained run tested on 5/10/15/20-way episodes (K-way softmax
    # layer of fast weights only), here re-evaluating a finished run without training
    python experiments/omniglot_metanet.py --workdir runs/metanet_5way --eval-only \
        --test-num-classes 10,15,20

Training stops after ``--steps`` updates or ``--max-minutes`` of training
(checkpointed; ``--resume`` continues). Ctrl-C or SIGTERM stops training with a
checkpoint, partial results (``"interrupted": true``) and the plot, exit code
130/143; ``--resume`` continues. Then it evaluates N-way 1-shot on
``--eval-episodes`` episodes of the test characters, not rotated (as the
paper and the authors' test generator; training episodes are rotated), prints
the mean accuracy with a 95% confidence interval beside the paper's and the
baselines', and writes ``results.json`` (atomically) and
``learning_curve.png`` to the workdir. ``--test-num-classes K[,K...]`` adds
K-way evaluations of the same trained variables (§4.2.1, Table 4): for K ≠ N
the model is built with ``num_classes=K`` and ``fast_only_output=True``, so
its K-way softmax layer's weights come only from fast weights (train with
``--fast-only-output`` to use the same layer during training).
``--eval-only`` evaluates the checkpoint in ``--workdir`` without training.
The learning curve's test points (``--eval-every``, ``--curve-episodes``) only
monitor training: nothing is selected or stopped on them. ``--max-minutes``
bounds training; the final evaluation comes on top (1,000 5-way episodes of the
default model took 23 min on 2 CPU cores shared with another training run).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from memjax import cli, evaluation, training
from memjax.cli import non_negative_int, positive_float, positive_int, write_json
from memjax.data import sample_few_shot
from memjax.data.omniglot import SPLITS
from memjax.evaluation import mean_ci95
from memjax.metanet import EMBEDDING_LOSSES, FAST_LAYERS, MetaNet, episode_loss
from memjax.metanet.meta_learners import meta_out_lr_scale
from memjax.metanet.omniglot import (ABLATIONS, FAST_WEIGHTS, IMAGE_SIZE, NUM_SUPPORT, build_model,
                                      warm_start_from_run)
from memjax.metanet.omniglot import make_optimizer as run_optimizer

# N-way 1-shot Omniglot accuracy (%), Munkhdalai & Yu 2017.
PAPER = {
    "table1": {5: 98.95, 10: 98.67, 15: 97.11, 20: 97.0},     # MetaNet, 1200/423 split
    "table1_no_task": {5: 98.4, 10: 98.32, 15: 96.68, 20: 96.13},  # MetaNet− (no Q*)
    "table3": {5: 98.45, 10: 97.32, 15: 96.4, 20: 95.92},      # standard split, 400 trials
}
# Table 4: trained N-way (key), tested K-way (inner key).
PAPER_TABLE4 = {5: {5: 98.95, 10: 96.4, 15: 93.6, 20: 93.07},
                20: {5: 99.55, 10: 98.87, 15: 97.41, 20: 97.0}}
WAYS = (5, 10, 15, 20)  # the paper's settings
BASELINES = {
    "Matching Nets": {5: 98.1, 20: 93.8},
    "Prototypical Nets": {5: 98.8, 20: 96.0},
    "MAML": {5: 98.7, 20: 95.8},
}
# Configuration flags that --eval-only may set otherwise than the run was trained with: they
# only shape the test episodes (--num-query Q scores a run on the test episodes of runs trained
# with Q queries per class).
EVAL_ONLY_FLAGS = ("num_query",)


# --clip-mode: per component (memjax's default) or the authors' norm of the summed loss's gradient.
CLIP_MODES = ("component", "summed_norm")

# Flags that are not part of a run's configuration (config.json).
NOT_CONFIG = ("resume", "no_progress", "no_plots", "max_minutes", "steps", "data_dir", "eval_episodes",
              "eval_every", "curve_episodes", "checkpoint_every", "log_every", "test_num_classes",
              "eval_only", "given_flags")


def num_ways(text):
  value = positive_int(text)
  if value not in WAYS:
    raise argparse.ArgumentTypeError(f"expected one of {WAYS} (the paper's settings), got {value}")
  return value


def ways_list(text) -> list[int]:
  """``--test-num-classes``: one or more K, comma-separated (each at least 2)."""
  values = []
  for part in str(text).split(","):
    value = positive_int(part.strip())
    if value < 2:
      raise argparse.ArgumentTypeError(f"expected K >= 2 classes per test episode, got {value}")
    values.append(value)
  return values


def paper_row(args) -> tuple[str, dict]:
  """The paper's row this run compares with: (label, {N: accuracy})."""
  if args.train_split == "background" and args.test_split == "evaluation":
    return "MetaNet (paper, Table 3, standard split)", PAPER["table3"]
  if args.ablate == "no_task":
    return "MetaNet− (paper, Table 1)", PAPER["table1_no_task"]
  return "MetaNet (paper, Table 1)", PAPER["table1"]


def build_parser() -> argparse.ArgumentParser:
  p = cli.parser(__doc__, record_given=True)  # args.given_flags: what --eval-only may not change
  p.add_argument("--data-dir", default=None,
                 help="folder with the Omniglot zips (None: $MEMJAX_DATA_DIR, else the user cache, "
                      "downloading if needed)")
  p.add_argument("--train-split", choices=list(SPLITS), default="train",
                 help="'train' (1,200 characters, Table 1) or 'background' (964, Table 3); "
                      "'small1'/'small2' for smoke tests")
  p.add_argument("--test-split", choices=list(SPLITS), default="test",
                 help="'test' (423 characters, Table 1) or 'evaluation' (659, Table 3)")
  p.add_argument("--num-classes", type=num_ways, default=5, help=f"N-way training, one of {WAYS}")
  p.add_argument("--test-num-classes", type=ways_list, action="append", default=[],
                 metavar="K[,K...]",
                 help="also evaluate K-way (repeatable or comma-separated; K != N uses a K-way "
                      "softmax layer of fast weights only, Table 4)")
  p.add_argument("--num-query", type=positive_int, default=10,
                 help="queries per class, in the training and the test episodes alike (the "
                 "test episodes are drawn with it: compare runs' tests at the same value; "
                 "with --eval-only it may differ from the run's, to score it on such episodes)")
  p.add_argument("--batch-size", type=positive_int, default=1, help="episodes per update")
  cli.add_jitter_flags(p)
  cli.add_ema_flag(p)
  p.add_argument("--steps", type=positive_int, default=100_000,
                 help="total training steps (updates of --batch-size episodes), counting resumed ones")
  p.add_argument("--max-minutes", type=positive_float, default=60.0,
                 help="training wall-time budget of this invocation")
  p.add_argument("--workdir", default="runs/metanet",
                 help="checkpoints, metrics.jsonl, results.json, learning_curve.png")
  p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --workdir")
  p.add_argument("--seed", type=int, default=0, help="parameter initialisation and training episodes")
  p.add_argument("--init-from", metavar="WORKDIR", default=None,
                 help="start from the variables of the last checkpoint in WORKDIR (a run of this "
                      "script, or one written by memjax.pretrained.restore): every variable the "
                      "model shares with it; the others (e.g. the full model's task-level meta "
                      "learner, from a MetaNet− run) keep their --seed initialisation; the "
                      "optimiser and the step count start afresh")
  p.add_argument("--init-fresh-scale", type=positive_float, default=1.0,
                 help="with --init-from: multiply the read-out layer of every meta learner not "
                      "in the checkpoint by this (0.1: the new fast weights start small, so the "
                      "model starts near the source run's accuracy)")
  p.add_argument("--init-skip", metavar="PATH", action="append", default=None,
                 help="with --init-from: keep these variables as initialised although the checkpoint has "
                      "them (a path prefix below params, e.g. meta_example/conv: a new conv meta learner "
                      "m_conv, with --conv-meta-lr-scale); repeatable")
  p.add_argument("--lr", type=positive_float, default=1e-3,
                 help="Adam learning rate; a new value with --resume applies from the checkpoint on "
                      "(recorded in config.json's lr_history)")
  cli.add_lr_drop_flags(p)
  p.add_argument("--clip", type=positive_float, default=10.0,
                 help="gradient clipping threshold (see --clip-mode)")
  p.add_argument("--clip-mode", choices=list(CLIP_MODES), default="component",
                 help="'component': clip every component of the mean query loss's gradient to ±clip; "
                      "'summed_norm': the authors' (Chainer GradientClipping(10) on the gradient of the "
                      "query losses summed over the update's episodes and queries): that gradient is "
                      "scaled down to L2 norm --clip where longer")
  p.add_argument("--conv-meta-out-std", type=positive_float, default=MetaNet.conv_meta_out_std,
                 help="std at initialisation of the conv meta learners' read-out layer (the authors': "
                      "1/sqrt(20) ≈ 0.22, which blows the activations up here)")
  p.add_argument("--conv-meta-lr-scale", type=positive_float, default=1.0,
                 help="multiply the Adam steps of the conv meta learners' read-out layer (m's, and d's in "
                      f"the full model) by this; {meta_out_lr_scale():.4g} gives that layer (init std "
                      f"{MetaNet.conv_meta_out_std:g}) the step relative to its scale of the authors' "
                      "(std 1/sqrt(20)); 1 (plain Adam, the "
                      "shipped models): the conv fast weights turn negative in the first updates and stay "
                      "inert (ReLU of a negative kernel on non-negative inputs)")
  p.add_argument("--second-order", action="store_true",
                 help="differentiate through the meta information (gradients)")
  p.add_argument("--ablate", choices=sorted(ABLATIONS), default="none",
                 help="slow_only: no fast weights; no_task: no Q*; no_example: no W* (the base "
                      "learner then never sees the support set: chance level)")
  p.add_argument("--fast-layers", choices=FAST_LAYERS, default="all",
                 help="which layers get fast weights ('fc' is ~4x cheaper on CPU)")
  p.add_argument("--fast-only-output", action="store_true",
                 help="train with the base learner's softmax layer made of fast weights only "
                      "(as it is at K-way test time)")
  p.add_argument("--embedding-loss", choices=EMBEDDING_LOSSES, default="auto",
                 help="representation loss; 'auto': cross-entropy for one example per class")
  p.add_argument("--invert-images", action="store_true",
                 help="strokes 0.0 on paper 1.0 (the PNGs' convention), not ink 1.0 on 0.0; "
                      "train and test episodes alike")
  p.add_argument("--filters", type=positive_int, default=64, help="3×3 filters per conv block")
  p.add_argument("--num-blocks", type=positive_int, default=5, help="conv blocks")
  p.add_argument("--hidden", type=positive_int, default=64, help="units of the FC layer")
  p.add_argument("--eval-episodes", type=positive_int, default=1000,
                 help="test episodes for the final accuracy (Table 3: 400)")
  p.add_argument("--eval-only", action="store_true",
                 help="no training: evaluate the checkpoint in --workdir (same configuration)")
  p.add_argument("--eval-every", type=non_negative_int, default=500,
                 help="learning-curve evaluation every this many updates (0: never)")
  p.add_argument("--curve-episodes", type=positive_int, default=50,
                 help="test episodes per learning-curve point")
  p.add_argument("--checkpoint-every", type=positive_int, default=100,
                 help="checkpoint every this many steps")
  p.add_argument("--log-every", type=positive_int, default=10, help="metrics line every this many steps")
  p.add_argument("--no-progress", action="store_true", help="no progress bars")
  p.add_argument("--no-plots", action="store_true", help="no PNG")
  return p


def parse_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
  """The flags, checked; ``--test-num-classes`` as one sorted list."""
  args = parser.parse_args(argv)
  args.test_num_classes = sorted({k for ks in args.test_num_classes for k in ks})
  cli.check_lr_flags(parser, args)
  if args.eval_only and args.resume:
    parser.error("--eval-only and --resume are exclusive (--eval-only trains nothing)")
  if args.init_from is not None:
    if args.eval_only:
      parser.error("--init-from with --eval-only: --eval-only evaluates the checkpoint in --workdir")
    if os.path.abspath(args.init_from) == os.path.abspath(args.workdir):
      parser.error("--init-from: give another run's directory than --workdir (--resume continues "
                   "the run in --workdir)")
  elif args.init_fresh_scale != 1.0 or args.init_skip:
    parser.error(f"{'--init-skip' if args.init_skip else '--init-fresh-scale'} needs --init-from")
  for flag, value, default in (("--conv-meta-lr-scale", args.conv_meta_lr_scale, 1.0),
                               ("--conv-meta-out-std", args.conv_meta_out_std, MetaNet.conv_meta_out_std)):
    if value != default and (args.fast_layers == "fc" or args.ablate == "slow_only"):
      parser.error(f"{flag}: the model has no conv meta learner (--fast-layers {args.fast_layers}, "
                   f"--ablate {args.ablate})")
  return args


def run_config(parser: argparse.ArgumentParser, args) -> dict:
  """The run's configuration (config.json), from the flags or the run in ``--workdir``.

  ``--eval-only`` takes the recorded configuration (flags given must not
  contradict it); ``--resume`` must repeat it (checked by :func:`open_run`).
  A run without the :data:`FAST_WEIGHTS` marker (fast weights rescaled per
  layer) neither resumes nor evaluates. Writes nothing.
  """
  config = {k: v for k, v in vars(args).items() if k not in NOT_CONFIG}
  config["fast_weights"] = FAST_WEIGHTS
  path = os.path.join(args.workdir, "config.json")
  if args.eval_only and not os.path.exists(path):
    parser.error(f"--eval-only: no {path}; train a run in --workdir first")
  if not (args.eval_only or args.resume) or not os.path.exists(path):
    return config
  with open(path) as f:
    old = json.load(f)
  if old.get("fast_weights") != FAST_WEIGHTS:
    parser.error(f"--{'eval-only' if args.eval_only else 'resume'}: {path} is a run of the earlier "
                 f"MetaNet (fast weights rescaled per layer); this code cannot "
                 f"{'evaluate' if args.eval_only else 'resume'} it")
  if args.resume:
    return config
  compared = [k for k in config if k != "workdir"]
  given_flags = args.given_flags  # build_parser's RecordingParser: every flag on the command line
  changed = sorted(k for k in compared if k in old and k in given_flags and config[k] != old[k]
                   and k not in EVAL_ONLY_FLAGS)
  if changed:
    hint = ("; K-way tests of this run: --test-num-classes K" if "num_classes" in changed else "")
    parser.error(f"--eval-only with flags that differ from {path}: "
                 + ", ".join(f"--{k.replace('_', '-')} {config[k]} (the run's: {old[k]})" for k in changed)
                 + hint)
  given = {k: getattr(args, k) for k in EVAL_ONLY_FLAGS if k in given_flags}
  for k in compared:
    if k != "fast_weights":
      setattr(args, k, old.get(k, parser.get_default(k)))
  config = {k: config[k] if k in ("workdir", "fast_weights") else getattr(args, k) for k in config}
  for k, v in given.items():  # the test episodes' protocol; config.json keeps the training value
    setattr(args, k, v)
  return config


def open_run(parser: argparse.ArgumentParser, args, config: dict) -> training.Run:
  """The training run in ``--workdir`` (writes config.json). With ``--resume``
  every key but ``workdir`` (the same folder may be given as a relative or an
  absolute path) and the learning rate must match the saved configuration; a
  new ``--lr`` applies from the checkpoint on and is recorded in config.json's
  ``lr_history``; a new ``--lr-schedule`` (or drop) is accepted where it gives
  the updates already made their rates (:func:`memjax.training.lr_history`), a
  new ``--jitter-schedule`` where it keeps their jitter
  (:func:`memjax.cli.check_jitter_resume`), and any ``--ema-decay``
  (:func:`memjax.cli.ema_history`)."""
  free = ("workdir", "lr", *training.LR_SCHEDULE_KEYS, *cli.JITTER_KEYS, "ema_decay")
  compare = [k for k in config if k not in free]
  return training.Run(args.workdir, config, resume=args.resume, compare=compare,
                      defaults={k: parser.get_default(k) for k in compare},
                      amend=[training.lr_history(), cli.check_jitter_resume, cli.ema_history],
                      error=parser.error)


def make_optimizer(args) -> optax.GradientTransformation:
  """The run's optimiser: :func:`memjax.metanet.omniglot.make_optimizer` of the flags."""
  return run_optimizer(args)


def starts_from_init(parser: argparse.ArgumentParser, args) -> bool:
  """Whether this invocation takes its variables from ``--init-from`` (not when
  it evaluates, or resumes a run that has checkpoints), checking that folder.
  (Not in :func:`parse_args`: a recorded command parses without the folder.)"""
  if args.init_from is None or args.eval_only or (args.resume and training.latest_checkpoint_step(args.workdir)):
    return False
  if not training.latest_checkpoint_step(args.init_from):
    parser.error(f"--init-from: no checkpoint in {args.init_from!r} (expected a run directory of "
                 f"this script, e.g. one written by python -m memjax.pretrained.restore)")
  return True


def warm_start(parser: argparse.ArgumentParser, args, params):
  """``--init-from``: the variables of its last checkpoint where the model has them."""
  try:
    params, taken, fresh = warm_start_from_run(params, args.init_from,
                                               fresh_meta_out_scale=args.init_fresh_scale,
                                               skip=args.init_skip or ())
  except (FileNotFoundError, ValueError) as e:
    skip = f" --init-skip {' '.join(args.init_skip)}" if args.init_skip else ""
    parser.error(f"--init-from {args.init_from}{skip}: {e}")
  top = lambda names: sorted({n.split("/")[1] for n in names})  # noqa: E731
  print(f"--init-from {args.init_from}: {len(taken)} arrays ({', '.join(top(taken))}) from its "
        f"last checkpoint; {len(fresh)} as initialised ({', '.join(top(fresh)) or 'none'})"
        + (f", meta learners' read-out × {args.init_fresh_scale:g}"
           if fresh and args.init_fresh_scale != 1.0 else ""), flush=True)
  return params


def load_images(parser: argparse.ArgumentParser, args) -> tuple[jax.Array, jax.Array]:
  """The train and test characters [C, 20, 28, 28], checked to fit the episodes."""
  train_images, test_images = (jnp.asarray(x) for x in cli.load_omniglot(
      parser, args.data_dir, args.train_split, args.test_split, image_size=IMAGE_SIZE))
  for split, imgs, ways in ((args.train_split, train_images, [args.num_classes]),
                            (args.test_split, test_images, [args.num_classes, *args.test_num_classes])):
    if imgs.shape[0] < max(ways) or imgs.shape[1] < NUM_SUPPORT + args.num_query:
      parser.error(f"split {split!r} has {imgs.shape[0]} characters × {imgs.shape[1]} drawers: "
                   f"too few for {max(ways)}-way 1-shot with {args.num_query} queries")
  return train_images, test_images


def make_evaluator(model, images, args, chunk: int = 4, num_classes: int | None = None):
  """``evaluate(params, num_episodes, key) -> [E] accuracies`` over test episodes
  (:func:`memjax.evaluation.few_shot_evaluator`: not rotated, ``chunk`` episodes
  per compiled call from ``fold_in(key, i)``)."""
  n = args.num_classes if num_classes is None else num_classes
  return evaluation.few_shot_evaluator(model, images, num_classes=n, num_query=args.num_query,
                                       num_support=NUM_SUPPORT, chunk=chunk, rotate=False,
                                       sampler=functools.partial(sample_few_shot, invert=args.invert_images))


def load_state(parser: argparse.ArgumentParser, args, params, optimizer) -> training.TrainState:
  """``--eval-only``: the checkpoint in ``--workdir``."""
  try:
    return training.load_checkpoint(args.workdir, training.init_state(params, optimizer))
  except FileNotFoundError as e:
    parser.error(f"--eval-only: {e}")


def describe(record: dict) -> str | None:
  """The progress bar's evaluation text: the latest learning-curve accuracy."""
  if "test_accuracy" not in record:
    return None
  return f"test acc {record['test_accuracy']:.1f}%"


def episodes_per_hour(history: list[dict], eval_seconds: float, batch_size: int) -> float | None:
  """Training throughput between the first and last metric lines of this invocation
  (no compile time), minus the learning-curve evaluations in between."""
  if len(history) < 2:
    return None
  first, last = history[0], history[-1]
  curve = sum(1 for r in history[1:] if "test_accuracy" in r)
  per_curve = eval_seconds / max(1, sum(1 for r in history if "test_accuracy" in r))
  dt = last["wall_time"] - first["wall_time"] - curve * per_curve
  return (last["step"] - first["step"]) * batch_size / dt * 3600 if dt > 0 else None


def k_way_tests(args, params, images, acc: np.ndarray, k_way: dict, progress: bool) -> dict:
  """N-way trained, K-way tested (Table 4), into ``k_way``: K ≠ N through a K-way softmax
  layer of fast weights only, on the episodes of ``eval_key(100 + K)``; K = N reuses the
  N-way accuracies ``acc``."""
  for k in args.test_num_classes:
    model = build_model(args, num_classes=k)
    k_acc = acc if k == args.num_classes else make_evaluator(
        model, images, args, num_classes=k)(params, args.eval_episodes, training.eval_key(100 + k),
                                            progress=progress)
    k_mean, k_half = mean_ci95(k_acc)
    k_way[k] = {"test_accuracy": k_mean, "test_ci95": k_half, "eval_episodes": int(len(k_acc)),
                "fast_only_output": model.fast_only_output,
                "paper_accuracy": PAPER_TABLE4.get(args.num_classes, {}).get(k)}
  return k_way


def make_results(args, config, state, history, acc, k_way, images, times, workdir=None) -> dict:
  """results.json: the N-way test accuracy beside the paper's, the K-way tests, throughput.

  ``acc`` None (interrupted before the final test): no test accuracy, and the
  last learning-curve point in ``workdir``'s metrics.jsonl, if any.
  """
  n, steps = args.num_classes, int(state.step)
  mean, half = mean_ci95(acc) if acc is not None else (None, None)
  label, row = paper_row(args)
  results = {
      "num_classes": n, "num_support": NUM_SUPPORT, "num_query_per_class": args.num_query,
      "ablate": args.ablate, "second_order": args.second_order,
      "steps": steps, "episodes": steps * args.batch_size,
      "test_accuracy": mean, "test_ci95": half, "eval_episodes": 0 if acc is None else int(len(acc)),
      # per test episode, in order (experiments/compare_results.py pairs two runs' on them)
      "test_episode_accuracies": None if acc is None else [round(float(x), 6) for x in np.asarray(acc)],
      "test_rotated": False,
      "train_split": args.train_split, "train_characters": int(images[0].shape[0]),
      "test_split": args.test_split, "test_characters": int(images[1].shape[0]),
      "paper_row": label, "paper_accuracy": row[n],
      "baselines": {k: v[n] for k, v in BASELINES.items() if n in v},
      "k_way": {str(k): v for k, v in k_way.items()},
      "episodes_per_hour": episodes_per_hour(history, times["curve"], args.batch_size),
      "train_seconds_this_invocation": times["train"],
      "eval_seconds": times["test"],
      "final_train": {k: history[-1][k] for k in ("loss", "accuracy") if history and k in history[-1]},
      "config": config, "device": str(jax.devices()[0]), "date": time.strftime("%Y-%m-%d"),
  }
  if acc is None:
    curve = [r for r in _records(workdir) if "test_accuracy" in r] if workdir else []
    results["last_curve_point"] = curve and {
        "step": curve[-1]["step"], "test_accuracy": curve[-1]["test_accuracy"],
        "test_ci95": curve[-1]["test_ci95"], "curve_episodes": args.curve_episodes} or None
  return results


def comparison_table(n: int, mean: float, half: float, args) -> str:
  label, row = paper_row(args)
  lines = [f"Omniglot {n}-way 1-shot accuracy (%), {args.eval_episodes} test episodes "
           f"({args.test_split} split)",
           f"  {'memjax MetaNet' + ('' if args.ablate == 'none' else f' ({args.ablate})'):<40}"
           f"{mean:6.2f} ± {half:.2f}",
           f"  {label:<40}{row[n]:6.2f}"]
  lines += [f"  {name:<40}{vals[n]:6.2f}" for name, vals in BASELINES.items() if n in vals]
  return "\n".join(lines)


def k_way_table(k_way: dict, args) -> str:
  lines = [f"Trained {args.num_classes}-way, tested K-way (Table 4), {args.eval_episodes} episodes each"]
  for k, r in sorted(k_way.items()):
    paper = PAPER_TABLE4.get(args.num_classes, {}).get(k)
    lines.append(f"  K = {k:<3} {r['test_accuracy']:6.2f} ± {r['test_ci95']:.2f}"
                 + ("" if paper is None else f"   (paper {paper:.2f})")
                 + ("   [fast-only softmax layer]" if r["fast_only_output"] else ""))
  return "\n".join(lines)


def main(argv=None) -> dict:
  parser = build_parser()
  args = parse_args(parser, argv)
  config = run_config(parser, args)
  init = starts_from_init(parser, args)
  train_images, test_images = load_images(parser, args)
  model = build_model(args)
  params = model.init(jax.random.key(args.seed), method=MetaNet.init_params)
  optimizer = make_optimizer(args)
  evaluate = make_evaluator(model, test_images, args)
  images = (train_images, test_images)
  if args.eval_only:  # no Run: nothing in --workdir changes but results_eval.json
    state = load_state(parser, args, params, optimizer)
    results = finish(args, config, state, [], evaluate, images, {"curve": 0.0, "train": None})
    print(f"results in {os.path.join(args.workdir, 'results_eval.json')}")
    return results

  if init:
    params = warm_start(parser, args, params)
  run = open_run(parser, args, config)
  loss_fn = cli.jitter_loss_schedule(args, lambda shift, degrees: episode_loss(  # --jitter-schedule
      model, train_images, batch_size=args.batch_size, num_classes=args.num_classes,
      num_query=args.num_query, rotate=True, sampler=functools.partial(  # rotations: new classes
          sample_few_shot, max_shift=shift, max_rotation=degrees, invert=args.invert_images)))

  def curve(p) -> dict:  # the learning curve's test points: episodes of eval_key(1)
    return dict(zip(("test_accuracy", "test_ci95"),
                    mean_ci95(evaluate(p, args.curve_episodes, training.eval_key(1)))))

  with run:
    state, history = run.fit(
        loss_fn, params, optimizer, num_steps=args.steps, seed=args.seed,
        checkpoint_every=args.checkpoint_every, log_every=args.log_every, progress=not args.no_progress,
        eval_every=args.eval_every, eval_fn=lambda p, step: run.evaluate(curve, p),
        max_seconds=args.max_minutes * 60, batch_size=args.batch_size, describe=describe)
    times = {"curve": run.eval_seconds, "train": run.fit_seconds - run.eval_seconds}
    results = finish(args, config, state, history, evaluate, images, times, run)
  return results


def _announce(message: str, fn, *args, always: bool = False, **kwargs):
  """:meth:`memjax.training.Run.step` without a run (``--eval-only``)."""
  print(message, flush=True)
  return fn(*args, **kwargs)


def finish(args, config, state, history, evaluate, images, times, run=None) -> dict:
  """The final N-way test on the episodes of ``eval_key(2)`` and the K-way tests
  (skipped, or kept as far as they got, when ``run`` is interrupted); writes
  results.json (``--eval-only``: results_eval.json), prints the tables, plots."""
  step = run.step if run is not None else _announce
  progress = not args.no_progress
  t = time.perf_counter()
  params = training.averaged_params(state)  # --ema-decay: the parameter average
  acc = step(f"testing {args.num_classes}-way 1-shot on {args.eval_episodes} episodes "
             f"({args.test_split} split)", evaluate, params, args.eval_episodes,
             training.eval_key(2), progress=progress)
  k_way = {}
  if args.test_num_classes:
    step(f"testing K-way, K = {', '.join(map(str, args.test_num_classes))} (Table 4)", k_way_tests,
         args, params, images[1], acc, k_way, progress)
  times["test"] = time.perf_counter() - t
  results = make_results(args, config, state, history, acc, k_way, images, times,
                         None if run is None else run.path)
  if run is None:
    results.update(training_fields(args.workdir, results["steps"]))
    write_json(os.path.join(args.workdir, "results_eval.json"), results)
  else:
    run.write_results(results)
  if acc is None:
    point = results["last_curve_point"]
    print("no final test (interrupted)" + ("" if point is None else
          f"; last learning-curve point: {point['test_accuracy']:.1f} ± {point['test_ci95']:.1f}% at "
          f"step {point['step']} ({point['curve_episodes']} test episodes)"))
  else:
    print(comparison_table(args.num_classes, results["test_accuracy"], results["test_ci95"], args))
  if k_way:
    print(k_way_table(k_way, args))
  rate = results["episodes_per_hour"] if run is not None else None  # --eval-only trains nothing
  print(f"{results['steps']} updates ({results['episodes']} episodes)"
        + ("" if rate is None else f"; {round(rate)} episodes/hour"))
  if run is not None and not args.no_plots:
    run.step("plotting the learning curve", plot, run, args, always=True)
  return results


TRAINING_FIELDS = ("episodes_per_hour", "train_seconds_this_invocation", "final_train")


def training_fields(workdir: str, steps: int) -> dict:
  """The training figures of the run's results.json, for ``--eval-only``'s
  results_eval.json (which trains nothing): kept only when results.json
  describes the same checkpoint (``steps``), else none."""
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    saved = json.load(f)
  if saved.get("steps") != steps:
    return {}
  return {k: saved[k] for k in TRAINING_FIELDS if k in saved}


def _records(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def plot(run: training.Run, args):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  records = _records(run.path)
  if not records:
    return
  episodes = np.array([r["step"] for r in records]) * args.batch_size
  acc = np.array([r.get("accuracy", np.nan) for r in records]) * 100
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.plot(episodes, acc, alpha=0.4, label="train (this step's episodes)")
  if len(acc) >= 10:
    k = max(1, len(acc) // 20)
    ax.plot(episodes[k - 1:], np.convolve(acc, np.ones(k) / k, "valid"), label=f"train, mean of {k}")
  ev = [r for r in records if "test_accuracy" in r]
  if ev:
    ax.errorbar([r["step"] * args.batch_size for r in ev], [r["test_accuracy"] for r in ev],
                yerr=[r["test_ci95"] for r in ev], fmt="o-", label="test (95% CI)")
  label, row = paper_row(args)
  ax.axhline(row[args.num_classes], color="k", ls="--", lw=1, label=label)
  ax.axhline(100 / args.num_classes, color="gray", ls=":", lw=1, label="chance")
  ax.set_xlabel("training episodes")
  ax.set_ylabel("query accuracy (%)")
  ax.set_ylim(0, 100)
  ax.set_title(f"MetaNet, Omniglot {args.num_classes}-way 1-shot")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(run.output("learning_curve.png"), dpi=100)
  plt.close(fig)


if __name__ == "__main__":
  cli.run(main)
