"""Tasks: algorithmic layouts checked against plain-numpy constructions of Graves et al. §4;
the Omniglot task's loss and per-instance accuracy (Santoro et al. 2016) against numpy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memjax import tasks
from memjax.tasks.omniglot import mann_loss, per_instance_accuracy, per_instance_counts


def _np_softmax(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


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


# ---------------------------------------------------------------------------
# The Omniglot task (memjax.tasks.omniglot).


def test_mann_loss_onehot_and_string():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 3, 4)).astype(np.float32)
  targets = rng.integers(0, 4, size=(2, 3))
  logp = np.log(_np_softmax(logits.astype(np.float64)))
  expected = -np.mean(np.take_along_axis(logp, targets[..., None], -1))
  np.testing.assert_allclose(mann_loss(logits, targets, "onehot"), expected, rtol=1e-5)

  logits = rng.normal(size=(2, 3, 25)).astype(np.float32)
  targets = rng.integers(0, 5, size=(2, 3, 5))
  logp = np.log(_np_softmax(logits.reshape(2, 3, 5, 5).astype(np.float64)))
  nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]  # [2, 3, 5]
  np.testing.assert_allclose(mann_loss(logits, targets, "string"), nll.sum(-1).mean(), rtol=1e-5)
  # Uniform logits: 5 ln 5 per step, the chance level.
  np.testing.assert_allclose(mann_loss(np.zeros((1, 2, 25)), np.zeros((1, 2, 5), int), "string"),
                             5 * np.log(5), rtol=1e-6)
  with pytest.raises(ValueError, match="targets"):
    mann_loss(np.zeros((1, 2, 25)), np.zeros((1, 2), int), "string")
  with pytest.raises(ValueError, match="label_mode"):
    mann_loss(np.zeros((1, 2, 5)), np.zeros((1, 2), int), "binary")


def test_per_instance_accuracy_constructed():
  # One episode, 2 classes (labels 0, 1), 7 steps.
  targets = np.array([[0, 1, 0, 0, 1, 1, 0]])
  instance = np.array([[0, 0, 1, 2, 1, 2, 3]])
  predicted = np.array([[1, 1, 0, 1, 0, 1, 0]])  # right at steps 1, 2, 5, 6
  logits = np.eye(2)[predicted] * 3.0
  acc = per_instance_accuracy(logits, targets, instance, "onehot", instances=(1, 2, 3, 4, 10))
  # k=1: steps 0 (wrong), 1 (right); k=2: 2 (right), 4 (wrong); k=3: 3 (wrong), 5 (right);
  # k=4: 6 (right); k=10 never occurs.
  np.testing.assert_allclose(acc[:4], [0.5, 0.5, 0.5, 1.0])
  assert np.isnan(acc[4])
  correct, total = per_instance_counts(logits, targets, instance, "onehot", instances=(1, 2, 3, 4))
  np.testing.assert_array_equal(correct, [1, 1, 1, 1])
  np.testing.assert_array_equal(total, [2, 2, 2, 1])

  # String labels: a prediction counts only with all 5 characters right.
  targets = np.array([[[0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [0, 1, 2, 3, 4]]])
  instance = np.array([[0, 0, 1]])
  pred = targets.copy()
  pred[0, 1, 4] = 1  # one character wrong
  logits = (np.eye(5)[pred] * 2.0).reshape(1, 3, 25)
  acc = per_instance_accuracy(logits, targets, instance, "string", instances=(1, 2))
  np.testing.assert_allclose(acc, [0.5, 1.0])


def test_optax_cross_entropy_equals_log_softmax_form():
  """The losses from optax.losses equal the log-softmax form they replace (values and gradients)."""
  from memjax import evaluation
  rng = np.random.default_rng(3)
  logits = jnp.asarray(rng.normal(size=(3, 6, 5)) * 4, jnp.float32)
  targets = jnp.asarray(rng.integers(0, 5, size=(3, 6)))
  by_hand = lambda z: -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(z), targets[..., None], -1))
  np.testing.assert_allclose(mann_loss(logits, targets), by_hand(logits), rtol=1e-6)
  np.testing.assert_allclose(jax.grad(mann_loss)(logits, targets), jax.grad(by_hand)(logits),
                             rtol=1e-5, atol=1e-7)
  strings = jnp.asarray(rng.integers(0, 5, size=(3, 6, 5)))
  logits25 = jnp.asarray(rng.normal(size=(3, 6, 25)) * 4, jnp.float32)
  logp = jax.nn.log_softmax(logits25.reshape(3, 6, 5, 5))
  want = jnp.mean(jnp.sum(-jnp.take_along_axis(logp, strings[..., None], -1)[..., 0], -1))
  np.testing.assert_allclose(mann_loss(logits25, strings, "string"), want, rtol=1e-6)

  class Model:  # episode_metrics' model: apply(params, support, support_labels, query) -> [Q, N]
    @staticmethod
    def apply(params, support, support_labels, query):
      return query

  episodes = type("Episodes", (), dict(support=jnp.zeros((3, 1)), support_labels=jnp.zeros((3, 1)),
                                       query=logits, query_labels=targets))
  loss, _, _ = evaluation.episode_metrics(Model, None, episodes)
  np.testing.assert_allclose(loss, by_hand(logits), rtol=1e-6)


def test_omniglot_names_keep_their_old_import_paths():
  from memjax import mann
  from memjax.data import episodes
  from memjax.tasks import omniglot
  for name in ("mann_loss", "per_instance_accuracy", "per_instance_counts", "correct_predictions",
               "LABEL_MODES", "STRING_LENGTH", "STRING_SYMBOLS", "DEFAULT_INSTANCES"):
    assert getattr(mann, name) is getattr(omniglot, name)
  for name in ("LABEL_MODES", "STRING_LENGTH", "STRING_SYMBOLS", "encode_labels", "label_dim"):
    assert getattr(episodes, name) is getattr(omniglot, name)


def test_sequence_loss_is_sigmoid_bce_of_the_scored_steps():
  """optax's sigmoid BCE equals softplus(z) − z·y, averaged over the masked steps."""
  batch = tasks.copy(jax.random.key(3), 4, max_length=5)
  logits = 3.0 * jax.random.normal(jax.random.key(4), batch.targets.shape)
  z, y, mask = (np.asarray(a, np.float64) for a in (logits, batch.targets, batch.mask))
  bce = np.sum(np.logaddexp(0.0, z) - z * y, axis=-1)
  expected = np.sum(bce * mask) / np.sum(mask)
  loss, _ = tasks.sequence_loss(logits, batch)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
