"""The algorithmic tasks of Graves et al. 2014, §4, built on device from a PRNG key.

Each task draws a batch of variable-length examples padded to one fixed length
``T``, with a mask over the steps whose outputs are scored, so one compiled
training step serves every length. Every function is a pure function of the key
(jittable; the sizes are static Python ints) and returns a :class:`Batch`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from memjax import _checks


class Batch(NamedTuple):
  """A padded batch of sequences.

  Attributes:
    inputs: [B, T, I] float32 inputs.
    targets: [B, T, O] float32 binary targets (0 where unscored).
    mask: [B, T] float32, 1 at the steps whose outputs are scored.
    lengths: [B] int32 length of each example's sequence (items for recall).
  """
  inputs: jax.Array
  targets: jax.Array
  mask: jax.Array
  lengths: jax.Array


def _check_range(lo_name, lo, hi_name, hi):
  _checks.check_positive_int(lo_name, lo)
  _checks.check_positive_int(hi_name, hi)
  if lo > hi:
    raise ValueError(f"argument `{lo_name}`: expected <= {hi_name}={hi}, got {lo}")


def copy_length(max_length: int) -> int:
  """Padded number of steps T of a copy batch: input, delimiter, output = 2L + 1."""
  return 2 * max_length + 1


def copy(key: jax.Array, batch_size: int, *, num_bits: int = 8, min_length: int = 1,
         max_length: int = 20) -> Batch:
  """Copy task (Graves et al. 2014, §4.1).

  An example is L random ``num_bits``-bit vectors, L ~ U{min_length..max_length},
  followed by a delimiter flag on an extra input channel; the network must then
  output the L vectors, with no input. Inputs have ``num_bits + 1`` channels,
  targets ``num_bits``; T = 2·max_length + 1.

  Returns:
    :class:`Batch` with inputs [B, T, num_bits+1], targets/mask at steps L+1..2L.
  """
  _checks.check_positive_int("batch_size", batch_size)
  _checks.check_positive_int("num_bits", num_bits)
  _check_range("min_length", min_length, "max_length", max_length)
  t_max = copy_length(max_length)
  k_len, k_bits = jax.random.split(key)
  lengths = jax.random.randint(k_len, (batch_size,), min_length, max_length + 1)
  bits = jax.random.bernoulli(k_bits, 0.5, (batch_size, max_length, num_bits)).astype(jnp.float32)

  def one(seq, length):
    t = jnp.arange(t_max)
    in_seq = t < length
    src = jnp.take(seq, jnp.clip(t, 0, max_length - 1), axis=0)
    inputs = jnp.concatenate([src * in_seq[:, None], (t == length)[:, None]], axis=-1)
    out = (t > length) & (t <= 2 * length)
    tgt = jnp.take(seq, jnp.clip(t - length - 1, 0, max_length - 1), axis=0) * out[:, None]
    return inputs.astype(jnp.float32), tgt, out.astype(jnp.float32)

  inputs, targets, mask = jax.vmap(one)(bits, lengths)
  return Batch(inputs, targets, mask, lengths.astype(jnp.int32))


def repeat_copy_length(max_length: int, max_repeats: int) -> int:
  """Padded T of a repeat-copy batch: L + 1 + L·R + 1 at the largest L and R."""
  return max_length + 1 + max_length * max_repeats + 1


def repeat_copy(key: jax.Array, batch_size: int, *, num_bits: int = 8, min_length: int = 1,
                max_length: int = 10, min_repeats: int = 1, max_repeats: int = 10) -> Batch:
  """Repeat copy (Graves et al. 2014, §4.2).

  L random vectors, then a delimiter step whose extra channel carries the repeat
  count R, normalised to mean 0 and variance 1 over U{min_repeats..max_repeats};
  the network outputs the sequence R times and then raises an end marker on an
  extra output channel. Inputs: ``num_bits + 2`` channels (bits, start flag,
  repeat count); targets: ``num_bits + 1`` (bits, end marker).

  Returns:
    :class:`Batch`; scored steps are the L·R output steps and the end step.
  """
  _checks.check_positive_int("batch_size", batch_size)
  _checks.check_positive_int("num_bits", num_bits)
  _check_range("min_length", min_length, "max_length", max_length)
  _check_range("min_repeats", min_repeats, "max_repeats", max_repeats)
  t_max = repeat_copy_length(max_length, max_repeats)
  k_len, k_rep, k_bits = jax.random.split(key, 3)
  lengths = jax.random.randint(k_len, (batch_size,), min_length, max_length + 1)
  repeats = jax.random.randint(k_rep, (batch_size,), min_repeats, max_repeats + 1)
  bits = jax.random.bernoulli(k_bits, 0.5, (batch_size, max_length, num_bits)).astype(jnp.float32)
  n_rep = max_repeats - min_repeats + 1
  mean = (min_repeats + max_repeats) / 2.0
  std = ((n_rep ** 2 - 1) / 12.0) ** 0.5 or 1.0  # std of U{min..max}; 1 for a single value

  def one(seq, length, rep):
    t = jnp.arange(t_max)
    in_seq = t < length
    src = jnp.take(seq, jnp.clip(t, 0, max_length - 1), axis=0) * in_seq[:, None]
    delim = t == length
    count = jnp.where(delim, (rep - mean) / std, 0.0)
    inputs = jnp.concatenate([src, delim[:, None], count[:, None]], axis=-1)
    start = length + 1
    out = (t >= start) & (t < start + length * rep)
    pos = jnp.mod(t - start, length)
    tgt_bits = jnp.take(seq, jnp.clip(pos, 0, max_length - 1), axis=0) * out[:, None]
    end = t == start + length * rep
    targets = jnp.concatenate([tgt_bits, end[:, None]], axis=-1)
    return inputs.astype(jnp.float32), targets.astype(jnp.float32), (out | end).astype(jnp.float32)

  inputs, targets, mask = jax.vmap(one)(bits, lengths, repeats)
  return Batch(inputs, targets, mask, lengths.astype(jnp.int32))


def associative_recall_length(max_items: int, item_length: int) -> int:
  """Padded T of an associative-recall batch."""
  return max_items * (item_length + 1) + 2 * item_length + 2


def associative_recall(key: jax.Array, batch_size: int, *, num_bits: int = 6, item_length: int = 3,
                       min_items: int = 2, max_items: int = 6) -> Batch:
  """Associative recall (Graves et al. 2014, §4.3).

  An item is ``item_length`` random ``num_bits``-bit vectors. n ~ U{min_items..
  max_items} items are shown, each after a delimiter step (extra channel 0); then
  a query delimiter (extra channel 1), one of the first n − 1 items, and the query
  delimiter again; the network must output the item that followed the query.
  Inputs: ``num_bits + 2`` channels; targets: ``num_bits``.

  Returns:
    :class:`Batch`; ``lengths`` holds n, the number of items.
  """
  _checks.check_positive_int("batch_size", batch_size)
  _checks.check_positive_int("num_bits", num_bits)
  _checks.check_positive_int("item_length", item_length)
  _check_range("min_items", min_items, "max_items", max_items)
  if min_items < 2:
    raise ValueError(f"argument `min_items`: expected >= 2 (a query needs a next item), got {min_items}")
  L = item_length
  t_max = associative_recall_length(max_items, L)
  k_n, k_q, k_bits = jax.random.split(key, 3)
  n_items = jax.random.randint(k_n, (batch_size,), min_items, max_items + 1)
  query = jax.random.randint(k_q, (batch_size,), 0, max_items) % (n_items - 1)
  items = jax.random.bernoulli(k_bits, 0.5, (batch_size, max_items, L, num_bits)).astype(jnp.float32)

  def one(items, n, q):
    t = jnp.arange(t_max)
    flat = items.reshape(max_items * L, num_bits)
    # Item region: steps 0 .. n(L+1) − 1.
    in_items = t < n * (L + 1)
    j, r = t // (L + 1), t % (L + 1)
    item_delim = in_items & (r == 0)
    item_bits = jnp.take(flat, jnp.clip(j * L + r - 1, 0, max_items * L - 1), axis=0)
    item_bits = item_bits * (in_items & (r > 0))[:, None]
    # Query region: delimiter, L query steps, delimiter.
    q0 = n * (L + 1)
    query_delim = (t == q0) | (t == q0 + L + 1)
    in_query = (t > q0) & (t <= q0 + L)
    q_bits = jnp.take(flat, jnp.clip(q * L + (t - q0 - 1), 0, max_items * L - 1), axis=0)
    q_bits = q_bits * in_query[:, None]
    inputs = jnp.concatenate([item_bits + q_bits, item_delim[:, None], query_delim[:, None]], -1)
    # Output region: the item after the query.
    o0 = q0 + L + 2
    out = (t >= o0) & (t < o0 + L)
    tgt = jnp.take(flat, jnp.clip((q + 1) * L + (t - o0), 0, max_items * L - 1), axis=0)
    return inputs.astype(jnp.float32), tgt * out[:, None], out.astype(jnp.float32)

  inputs, targets, mask = jax.vmap(one)(items, n_items, query)
  return Batch(inputs, targets, mask, n_items.astype(jnp.int32))


def sequence_loss(logits: jax.Array, batch: Batch) -> tuple[jax.Array, dict]:
  """Binary cross-entropy on the scored steps, and bit errors.

  Args:
    logits: [B, T, O] output logits.
    batch: the :class:`Batch` they answer.

  Returns:
    ``(loss, metrics)``: loss is the BCE summed over channels and averaged over
    scored steps; metrics hold ``cost_bits`` (BCE in bits per sequence, Graves
    et al.'s "cost per sequence") and ``bit_errors`` (wrong bits per sequence,
    thresholding the logits at 0).
  """
  _checks.check_shape("logits", logits, batch.targets.shape)
  bce = jnp.sum(optax.losses.sigmoid_binary_cross_entropy(logits, batch.targets), axis=-1)
  mask = batch.mask
  n_seq = batch.targets.shape[0]
  loss = jnp.sum(bce * mask) / jnp.maximum(jnp.sum(mask), 1.0)
  errors = jnp.sum(((logits > 0) != (batch.targets > 0.5)) * mask[..., None])
  return loss, {"cost_bits": jnp.sum(bce * mask) / n_seq / jnp.log(2.0), "bit_errors": errors / n_seq}
