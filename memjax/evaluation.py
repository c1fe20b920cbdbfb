"""Evaluation protocols shared by the experiments and :mod:`memjax.reproduce`.

Each function is the protocol an experiment script scores its trained model
with, moved here unchanged so that the shipped weights
(:mod:`memjax.pretrained`) are re-evaluated by exactly the same code:

* :func:`sequence_metrics` and :func:`copy_generalisation` — the NTM copy task
  (``experiments/copy_task.py``): bit errors per sequence on fresh sequences of
  the training lengths, and the bit error rate at fixed longer lengths;
* :func:`mann_evaluator` — MANN/LSTM on Omniglot (``experiments/omniglot_mann.py``):
  accuracy at the k-th presentation of a class over fixed test episodes;
* :func:`few_shot_evaluator`, :func:`episode_metrics`, :func:`mean_ci95` —
  N-way 1-shot accuracy of a MetaNet (``experiments/omniglot_metanet.py``);
  :func:`paired_ci95` compares two models on the same episodes
  (``experiments/compare_results.py``).

Every protocol draws its test data from a fixed key (:func:`memjax.training.eval_key`,
the seed :data:`EVAL_KEY`), so the same weights always meet the same test
sequences or episodes.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from memjax import tasks, training
from memjax.data import episodes as episodes_lib
from memjax.tasks.omniglot import mann_loss, per_instance_counts

__all__ = [
    "EVAL_KEY",
    "copy_generalisation",
    "episode_metrics",
    "few_shot_evaluator",
    "mann_evaluator",
    "mean_ci95",
    "sequence_metrics",
]

# The experiments' evaluation seed (training.EVAL_SEED): never a training key.
EVAL_KEY = training.EVAL_SEED


# ----------------------------------------------------------------------------
# NTM: copy and the other algorithmic tasks.


def sequence_metrics(apply_fn: Callable, params, sample_fn: Callable, num_sequences: int,
                     key: jax.Array) -> dict:
  """Metrics of :func:`memjax.tasks.sequence_loss` on one batch of fresh sequences.

  Args:
    apply_fn: ``(params, inputs [B, T, I]) -> logits [B, T, O]``.
    params: the model's variables.
    sample_fn: ``(key, batch_size) -> Batch``, e.g. ``functools.partial(tasks.copy, ...)``.
    num_sequences: batch size B.
    key: PRNG key of the batch.

  Returns:
    ``{"bit_errors": [] wrong bits per sequence, "cost_bits": [] BCE in bits per sequence}``.
  """
  batch = sample_fn(key, num_sequences)
  _, metrics = tasks.sequence_loss(apply_fn(params, batch.inputs), batch)
  return metrics


def copy_generalisation(apply_fn: Callable, params, sampler: Callable,
                        kwargs_for_length: Callable[[int], dict], lengths: Sequence[int],
                        num_sequences: int, key: jax.Array) -> dict[str, dict[str, float]]:
  """Bit error rate at fixed sequence lengths (Graves et al. 2014, §4.1, generalisation).

  For each length L, ``num_sequences`` fresh sequences in 4 chunks (1 when
  fewer than 4), chunk c drawn from ``fold_in(key, 1000 L + c)``; an output
  bit is wrong when the sign of its logit disagrees with the target.

  Args:
    apply_fn: ``(params, inputs) -> logits``.
    params: the model's variables.
    sampler: a task sampler ``(key, batch_size, **kwargs) -> Batch`` (:data:`memjax.tasks.TASKS`).
    kwargs_for_length: ``L -> sampler kwargs`` for sequences of length L.
    lengths: the lengths L.
    num_sequences: sequences per length.
    key: the evaluation key.

  Returns:
    ``{str(L): {"bit_error_rate": wrong / scored bits, "bit_errors_per_sequence": ...}}``.
  """
  run = jax.jit(apply_fn)
  generalisation = {}
  for length in lengths:
    kw = kwargs_for_length(length)
    n_chunks, per = (4, num_sequences // 4) if num_sequences >= 4 else (1, num_sequences)
    errs, scored = 0.0, 0.0
    for c in range(n_chunks):
      batch = sampler(jax.random.fold_in(key, 1000 * length + c), per, **kw)
      logits = run(params, batch.inputs)
      wrong = ((logits > 0) != (batch.targets > 0.5)) * batch.mask[..., None]
      errs += float(jnp.sum(wrong))
      scored += float(jnp.sum(batch.mask)) * batch.targets.shape[-1]
    generalisation[str(length)] = {"bit_error_rate": errs / scored,
                                   "bit_errors_per_sequence": errs / (n_chunks * per)}
  return generalisation


# ----------------------------------------------------------------------------
# MANN and the LSTM baseline on Omniglot (Santoro et al. 2016).


def mann_evaluator(apply_fn: Callable, images: jax.Array, *, num_episodes: int, batch_size: int,
                   instances: Sequence[int], key: jax.Array, num_classes: int,
                   samples_per_class: int, label_mode: str = "onehot", rotate: bool = True
                   ) -> Callable[[Any], tuple[np.ndarray, float]]:
  """``evaluate(params) -> (accuracy [len(instances)], mean loss)`` over fixed test episodes.

  ``ceil(num_episodes / b)`` chunks of ``b = min(batch_size, num_episodes)``
  episodes (:func:`memjax.data.sample_mann_episodes`, chunk c from
  ``fold_in(key, c)``; one compilation); accuracy at the k-th presentation of
  a class for k in ``instances`` (:func:`memjax.tasks.omniglot.per_instance_counts`).
  ``evaluate.num_episodes`` is the number of episodes actually scored.

  Args:
    apply_fn: ``(params, inputs [B, T, H·W + label_dim]) -> logits``.
    images: float ``[C, K, H, W]`` test characters × drawers.
    num_episodes: test episodes wanted.
    batch_size: episodes per compiled call.
    instances: presentations to score, e.g. (1, 2, 3, 4, 5, 10).
    key: the evaluation key.
    num_classes, samples_per_class, label_mode, rotate: as
      :func:`memjax.data.sample_mann_episodes`.
  """
  eval_batch = min(batch_size, num_episodes)
  eval_chunks = math.ceil(num_episodes / eval_batch)
  sample_kw = dict(num_classes=num_classes, samples_per_class=samples_per_class,
                   label_mode=label_mode, rotate=rotate)
  instances = tuple(instances)

  @jax.jit
  def eval_chunk(p, chunk):
    ep = episodes_lib.sample_mann_episodes(jax.random.fold_in(key, chunk), images,
                                           batch_size=eval_batch, **sample_kw)
    logits = apply_fn(p, ep.inputs)
    correct, total = per_instance_counts(logits, ep.targets, ep.instance, label_mode, instances)
    return correct, total, mann_loss(logits, ep.targets, label_mode)

  def evaluate(p) -> tuple[np.ndarray, float]:
    correct, total, loss = 0.0, 0.0, 0.0
    for c in range(eval_chunks):
      cc, tt, ll = eval_chunk(p, c)
      correct, total, loss = correct + np.asarray(cc), total + np.asarray(tt), loss + float(ll)
    return correct / np.maximum(total, 1.0), loss / eval_chunks

  evaluate.num_episodes = eval_chunks * eval_batch
  return evaluate


# ----------------------------------------------------------------------------
# MetaNet: N-way 1-shot (Munkhdalai & Yu 2017).


def episode_metrics(model, params, episodes) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Mean loss, mean accuracy and [B] per-episode accuracies of a batch of few-shot episodes.

  Args:
    model: a :class:`memjax.MetaNet` (``apply(params, support, support_labels, query)``).
    params: its variables.
    episodes: a :class:`memjax.data.FewShotEpisode` batch.
  """
  logits = jax.vmap(model.apply, in_axes=(None, 0, 0, 0))(
      params, episodes.support, episodes.support_labels, episodes.query)  # [B, NQ, N]
  labels = episodes.query_labels
  loss = jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels))
  per_episode = jnp.mean(jnp.argmax(logits, -1) == labels, axis=-1)
  return loss, jnp.mean(per_episode), per_episode


def few_shot_evaluator(model, images: jax.Array, *, num_classes: int, num_query: int,
                       num_support: int = 1, chunk: int = 4, rotate: bool = False,
                       sampler: Callable | None = None):
  """``evaluate(params, num_episodes, key, progress=False) -> [E] accuracies`` over test episodes.

  Episodes are drawn ``chunk`` at a time from ``fold_in(key, i)`` (one
  compilation), so the set of episodes depends only on the key.

  Args:
    model: a :class:`memjax.MetaNet` for ``num_classes``-way episodes.
    images: float ``[C, K, H, W]`` test characters × drawers.
    num_classes: N-way.
    num_query: queries per class.
    num_support: support examples per class (1-shot).
    chunk: episodes per compiled call.
    rotate: rotate each class by a random multiple of 90°; test episodes are
      not rotated (the paper and the authors' test generator; training episodes are).
    sampler: the episode sampler, :func:`memjax.data.sample_few_shot` by default.
  """
  if sampler is None:
    from memjax.data import sample_few_shot as sampler

  @jax.jit
  def run_chunk(params, key):
    ep = sampler(key, images, batch_size=chunk, num_classes=num_classes,
                         num_support=num_support, num_query=num_query, rotate=rotate)
    return episode_metrics(model, params, ep)[2]

  def evaluate(params, num_episodes, key, progress=False):
    from tqdm.auto import tqdm
    n_chunks = -(-num_episodes // chunk)
    accs = [run_chunk(params, jax.random.fold_in(key, i))
            for i in tqdm(range(n_chunks), disable=not progress, desc="eval", leave=False)]
    return np.concatenate([np.asarray(a) for a in accs])[:num_episodes]

  return evaluate


def mean_ci95(acc: np.ndarray) -> tuple[float, float]:
  """Mean and 95% normal-approximation half-width (1.96 · s / √E), in %."""
  mean = float(np.mean(acc)) * 100
  half = float(1.96 * np.std(acc, ddof=1) / np.sqrt(len(acc))) * 100 if len(acc) > 1 else float("nan")
  return mean, half


def paired_ci95(acc_a, acc_b) -> tuple[float, float]:
  """Mean per-episode difference b − a and its 95% normal-approximation half-width, in %.

  For two models scored on the same episodes (the same key and protocol), the
  paired difference d_e = acc_b[e] − acc_a[e] removes the episodes' shared
  difficulty from the comparison: its half-width 1.96 · s_d / √E is usually far
  smaller than either model's own :func:`mean_ci95`.

  Args:
    acc_a, acc_b: [E] per-episode accuracies (fractions) of the two models on the
      same E ≥ 2 episodes, in the same order.
  """
  a, b = (np.asarray(x, np.float64) for x in (acc_a, acc_b))
  for name, x in (("acc_a", a), ("acc_b", b)):
    if x.ndim != 1 or len(x) < 2 or not np.all(np.isfinite(x)):
      raise ValueError(f"argument `{name}`: expected a 1-D array of at least 2 finite per-episode "
                       f"accuracies, got shape {list(x.shape)}")
  if a.shape != b.shape:
    raise ValueError(f"arguments `acc_a`, `acc_b`: expected the same episodes, got {len(a)} and "
                     f"{len(b)} accuracies")
  return mean_ci95(b - a)
