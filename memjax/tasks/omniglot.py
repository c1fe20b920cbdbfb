"""The Omniglot one-shot task of Santoro et al. 2016: label formats, losses, per-instance metrics.

An episode shows ``T`` images of ``N`` classes; the network sees the image of
step t and the label of step t − 1 and predicts the label of step t. Labels are

* ``'onehot'``: a class index in 0..N−1, fed back as an N-way one-hot;
* ``'string'``: five characters over a five-letter alphabet (the paper's
  Table 2), fed back as five concatenated 5-way one-hots (25 values) and
  predicted by five independent 5-way softmaxes.

The paper's score is the accuracy at the k-th presentation of a class
(Tables 1–2): :func:`per_instance_accuracy`. The episodes themselves are
sampled on device by :func:`memjax.data.sample_mann_episodes`.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import optax

from memjax import _checks

__all__ = [
    "DEFAULT_INSTANCES",
    "LABEL_MODES",
    "STRING_LENGTH",
    "STRING_SYMBOLS",
    "check_label_mode",
    "correct_predictions",
    "encode_labels",
    "label_dim",
    "mann_loss",
    "per_instance_accuracy",
    "per_instance_counts",
]

LABEL_MODES = ("onehot", "string")
STRING_LENGTH = 5   # characters per string label (Santoro et al. 2016, Table 2)
STRING_SYMBOLS = 5  # letters per character
DEFAULT_INSTANCES = (1, 2, 3, 4, 5, 10)  # the presentations the paper's tables score


def check_label_mode(label_mode: str) -> None:
  """ValueError unless ``label_mode`` is one of :data:`LABEL_MODES`."""
  if label_mode not in LABEL_MODES:
    raise ValueError(f"argument `label_mode`: expected one of {LABEL_MODES}, got {label_mode!r}")


def label_dim(num_classes: int, label_mode: str = "onehot") -> int:
  """Width of an encoded label: ``num_classes`` (one-hot) or 25 (string)."""
  check_label_mode(label_mode)
  return num_classes if label_mode == "onehot" else STRING_LENGTH * STRING_SYMBOLS


def encode_labels(targets: jax.Array, *, num_classes: int, label_mode: str = "onehot") -> jax.Array:
  """Encodes labels as the samplers feed them to the network.

  Args:
    targets: int ``[...]`` in ``0..num_classes-1`` (``'onehot'``) or int
      ``[..., 5]`` in ``0..4`` (``'string'``).
    num_classes: classes per episode (one-hot width).
    label_mode: ``'onehot'`` or ``'string'``.

  Returns:
    float32 ``[..., label_dim(num_classes, label_mode)]``.
  """
  check_label_mode(label_mode)
  if label_mode == "onehot":
    return jax.nn.one_hot(targets, num_classes, dtype=jnp.float32)
  if targets.shape[-1:] != (STRING_LENGTH,):
    raise ValueError(f"argument `targets`: expected shape [..., {STRING_LENGTH}] for string "
                     f"labels, got {list(targets.shape)}")
  onehot = jax.nn.one_hot(targets, STRING_SYMBOLS, dtype=jnp.float32)
  return onehot.reshape(*targets.shape[:-1], STRING_LENGTH * STRING_SYMBOLS)


def _string_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """[..., T, 25] logits → [..., T, 5, 5] (character, letter)."""
  if logits.shape[-1] != STRING_LENGTH * STRING_SYMBOLS:
    raise ValueError(f"argument `logits`: expected {STRING_LENGTH * STRING_SYMBOLS} features for "
                     f"string labels, got shape {list(logits.shape)}")
  if targets.shape != logits.shape[:-1] + (STRING_LENGTH,):
    raise ValueError(f"argument `targets`: expected shape {list(logits.shape[:-1]) + [STRING_LENGTH]} "
                     f"for string labels, got {list(targets.shape)}")
  return logits.reshape(logits.shape[:-1] + (STRING_LENGTH, STRING_SYMBOLS))


def _check_onehot(logits: jax.Array, targets: jax.Array) -> None:
  if targets.shape != logits.shape[:-1]:
    raise ValueError(f"argument `targets`: expected shape {list(logits.shape[:-1])} (logits "
                     f"{list(logits.shape)} without the class axis), got {list(targets.shape)}")


def mann_loss(logits: jax.Array, targets: jax.Array, label_mode: str = "onehot") -> jax.Array:
  """Cross-entropy of MANN predictions (Santoro et al. 2016, §4.1).

  ``'onehot'``: softmax cross-entropy, L = −mean_{b,t} log p(y_t | ...).
  ``'string'``: five independent 5-way softmaxes, one per character of the
  label; L = −mean_{b,t} Σ_{c=1..5} log p(y_t[c] | ...), the negative
  log-likelihood of the whole string (chance: 5 ln 5 ≈ 8.05).

  Args:
    logits: [..., T, C] (one-hot) or [..., T, 25] (string) logits.
    targets: int [..., T] in 0..C−1 (one-hot) or int [..., T, 5] in 0..4 (string).
    label_mode: ``'onehot'`` or ``'string'``.

  Returns:
    [] mean loss over every leading axis.
  """
  check_label_mode(label_mode)
  logits = _checks.as_float_array("logits", logits)
  targets = jnp.asarray(targets)
  if label_mode == "onehot":
    _check_onehot(logits, targets)
    return jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(logits, targets))
  nll = optax.losses.softmax_cross_entropy_with_integer_labels(
      _string_logits(logits, targets), targets)  # [..., T, 5]
  return jnp.mean(jnp.sum(nll, axis=-1))


def correct_predictions(logits: jax.Array, targets: jax.Array, label_mode: str = "onehot") -> jax.Array:
  """bool [..., T]: the arg-max prediction equals the label (string: all 5 characters)."""
  check_label_mode(label_mode)
  logits = _checks.as_float_array("logits", logits)
  targets = jnp.asarray(targets)
  if label_mode == "onehot":
    _check_onehot(logits, targets)
    return jnp.argmax(logits, axis=-1) == targets
  pred = jnp.argmax(_string_logits(logits, targets), axis=-1)  # [..., T, 5]
  return jnp.all(pred == targets, axis=-1)


def per_instance_counts(logits: jax.Array, targets: jax.Array, instance: jax.Array,
                        label_mode: str = "onehot",
                        instances: Sequence[int] = DEFAULT_INSTANCES) -> tuple[jax.Array, jax.Array]:
  """Correct predictions and presentations at the k-th presentation of a class.

  Args:
    logits: [..., T, C] or [..., T, 25] logits.
    targets: int [..., T] or [..., T, 5] labels.
    instance: int [..., T] presentations of the step's class *before* step t
      (0 on the first; :class:`memjax.data.MANNEpisode`'s ``instance``).
    label_mode: ``'onehot'`` or ``'string'``.
    instances: the 1-based presentations k to score (paper: 1, 2, 3, 4, 5, 10).

  Returns:
    ``(correct [K], total [K])`` float32 counts over every leading axis and
    time, K = len(instances).
  """
  ok = correct_predictions(logits, targets, label_mode)  # [..., T]
  instance = jnp.asarray(instance)
  if instance.shape != ok.shape:
    raise ValueError(f"argument `instance`: expected shape {list(ok.shape)}, got {list(instance.shape)}")
  ks = jnp.asarray([_checks.check_positive_int("instances", k) for k in instances]) - 1  # 0-based
  at = instance[..., None] == ks  # [..., T, K]
  axes = tuple(range(at.ndim - 1))
  correct = jnp.sum(at & ok[..., None], axis=axes).astype(jnp.float32)
  total = jnp.sum(at, axis=axes).astype(jnp.float32)
  return correct, total


def per_instance_accuracy(logits: jax.Array, targets: jax.Array, instance: jax.Array,
                          label_mode: str = "onehot",
                          instances: Sequence[int] = DEFAULT_INSTANCES) -> jax.Array:
  """Accuracy at the k-th presentation of a class (Santoro et al. 2016, Tables 1–2).

  acc_k = #{(b, t): instance[b, t] = k − 1 and prediction correct} /
  #{(b, t): instance[b, t] = k − 1}. A string prediction is correct only when
  all 5 characters are.

  Args:
    logits: [..., T, C] (one-hot) or [..., T, 25] (string) logits.
    targets: int [..., T] or [..., T, 5] labels.
    instance: int [..., T], 0-based presentation count (0 = first time).
    label_mode: ``'onehot'`` or ``'string'``.
    instances: 1-based presentations to score.

  Returns:
    [K] accuracies in [0, 1], NaN for a k that never occurs.
  """
  correct, total = per_instance_counts(logits, targets, instance, label_mode, instances)
  return jnp.where(total > 0, correct / jnp.maximum(total, 1.0), jnp.nan)
