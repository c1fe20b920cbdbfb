"""Algorithmic tasks: layouts checked against plain-numpy constructions of Graves et al. §4."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memjax import tasks


def test_copy_layout_matches_definition():
  batch = tasks.copy(jax.random.key(0), 64, num_bits=8, min_length=1, max_length=20)
  assert batch.inputs.shape == (64, 41, 9)
  assert batch.targets.shape == (64, 41, 8)
  for b in range(64):
    L = int(batch.lengths[b])
    x, y, m = (np.asarray(a[b]) for a in (batch.inputs, batch.targets, batch.mask))
    seq = x[:L, :8]
    np.testing.assert_array_equal(x[:L, 8], 0)
    assert x[L, 8] == 1 and np.all(x[L, :8] == 0)
    assert np.all(x[L + 1:] == 0)  # nothing shown while answering
    np.testing.assert_array_equal(y[L + 1:2 * L + 1], seq)
    np.testing.assert_array_equal(m, (np.arange(41) > L) & (np.arange(41) <= 2 * L))
    assert np.all(y[m == 0] == 0)
  assert set(np.asarray(batch.lengths)) <= set(range(1, 21))
  assert len(set(np.asarray(batch.lengths))) > 10


def test_repeat_copy_layout():
  batch = tasks.repeat_copy(jax.random.key(1), 16, num_bits=4, max_length=5, max_repeats=4)
  T = tasks.repeat_copy_length(5, 4)
  assert batch.inputs.shape == (16, T, 6) and batch.targets.shape == (16, T, 5)
  counts = np.asarray(batch.inputs[:, :, 5].sum(-1))
  for b in range(16):
    L = int(batch.lengths[b])
    x, y, m = (np.asarray(a[b]) for a in (batch.inputs, batch.targets, batch.mask))
    seq = x[:L, :4]
    assert x[L, 4] == 1
    # Recover R from the scored steps: L·R bits steps + 1 end step.
    R = (int(m.sum()) - 1) // L
    assert 1 <= R <= 4
    np.testing.assert_allclose(counts[b], (R - 2.5) / np.sqrt((16 - 1) / 12), rtol=1e-5)
    np.testing.assert_array_equal(y[L + 1:L + 1 + L * R, :4], np.tile(seq, (R, 1)))
    assert y[L + 1 + L * R, 4] == 1 and y[:, 4].sum() == 1


def test_associative_recall_layout():
  batch = tasks.associative_recall(jax.random.key(2), 32, num_bits=6, item_length=3, max_items=6)
  T = tasks.associative_recall_length(6, 3)
  assert batch.inputs.shape == (32, T, 8)
  for b in range(32):
    n = int(batch.lengths[b])
    x, y, m = (np.asarray(a[b]) for a in (batch.inputs, batch.targets, batch.mask))
    items = [x[i * 4 + 1:i * 4 + 4, :6] for i in range(n)]
    assert all(x[i * 4, 6] == 1 for i in range(n))
    q0 = n * 4
    assert x[q0, 7] == 1 and x[q0 + 4, 7] == 1
    query = x[q0 + 1:q0 + 4, :6]
    matches = [i for i in range(n - 1) if np.array_equal(items[i], query)]
    assert matches, "the query is one of the first n-1 items"
    out = y[m == 1]
    assert out.shape == (3, 6)
    assert any(np.array_equal(out, items[i + 1]) for i in matches)


def test_sequence_loss_counts_bit_errors():
  batch = tasks.copy(jax.random.key(3), 4, num_bits=8, max_length=5)
  perfect = (batch.targets * 2 - 1) * 20.0
  loss, m = tasks.sequence_loss(perfect, batch)
  assert float(m["bit_errors"]) == 0.0 and float(loss) < 1e-6
  flipped = perfect.at[:, :, 0].multiply(-1.0)
  _, m = tasks.sequence_loss(flipped, batch)
  np.testing.assert_allclose(float(m["bit_errors"]), float(batch.lengths.sum()) / 4)
  chance = jnp.zeros_like(batch.targets)
  _, m = tasks.sequence_loss(chance, batch)
  np.testing.assert_allclose(float(m["cost_bits"]), 8 * float(batch.lengths.mean()), rtol=1e-5)


def test_sampler_is_jittable_and_deterministic():
  f = jax.jit(lambda k: tasks.copy(k, 8, max_length=20))
  a, b = f(jax.random.key(7)), f(jax.random.key(7))
  np.testing.assert_array_equal(a.inputs, b.inputs)
  assert not np.array_equal(a.inputs, f(jax.random.key(8)).inputs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(min_length=5, max_length=3), "min_length"),
    (dict(num_bits=0), "num_bits"),
])
def test_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    tasks.copy(jax.random.key(0), 4, **kwargs)
  with pytest.raises(ValueError, match="min_items"):
    tasks.associative_recall(jax.random.key(0), 4, min_items=1)
