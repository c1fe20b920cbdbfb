"""Property tests over the models: random shapes and extreme parameters stay finite."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from memjax import NTMCell

# A few fixed configurations keep the number of compilations small; hypothesis
# varies the data, the parameter scale (up to saturating every gate) and the input.
NTM_CONFIGS = [
    dict(features=2, memory_size=3, word_size=1, controller_features=4, shift_range=1),
    dict(features=5, memory_size=16, word_size=8, controller_features=8, num_read_heads=3,
         num_write_heads=2, shift_range=2, controller="feedforward", memory_init="learned"),
]


SCALES = [0.0, 1e-3, 1.0, 10.0, 100.0]  # every parameter multiplied by this
INPUT_KINDS = ["zeros", "binary", "huge"]


def _perturbed(params, key):
  return jax.tree.map(lambda p: p + 0.5 * jax.random.normal(key, p.shape), params)


def _inputs(kind, key, shape):
  if kind == "zeros":
    return jnp.zeros(shape)
  if kind == "binary":
    return jax.random.bernoulli(key, 0.3, shape).astype(jnp.float32)
  return 1e4 * jax.random.normal(key, shape)


def _assert_finite(*trees):
  for leaf in jax.tree.leaves(trees):
    assert np.all(np.isfinite(leaf))


def _ntm_fns(config):
  model = nn.RNN(NTMCell(**config))
  x0 = jnp.zeros((2, 12, 3))
  params = model.init(jax.random.key(0), x0)

  @jax.jit
  def value_and_grad(params, scale, x):
    def loss(p):
      p = jax.tree.map(lambda a: a * scale, p)
      return jnp.mean(jax.nn.log_sigmoid(model.apply(p, x)))
    return jax.value_and_grad(loss)(params)

  return params, value_and_grad


_FNS = [_ntm_fns(c) for c in NTM_CONFIGS]


@settings(max_examples=12, deadline=None)
@given(config=st.integers(0, len(NTM_CONFIGS) - 1),
       scale=st.sampled_from(SCALES),
       seed=st.integers(0, 2**16),
       input_kind=st.sampled_from(INPUT_KINDS))
def test_ntm_forward_and_backward_finite(config, scale, seed, input_kind):
  params, value_and_grad = _FNS[config]
  key = jax.random.key(seed)
  value, grads = value_and_grad(_perturbed(params, key), scale, _inputs(input_kind, key, (2, 12, 3)))
  _assert_finite(value, grads)


# ----------------------------------------------------------------------------
# MANN (LRUA memory): forward and backward stay finite; read weightings stay
# distributions, write weightings stay within their bounds.

MANN_CONFIGS = [
    dict(features=2, memory_size=4, word_size=2, num_read_heads=1, controller_features=4),
    dict(features=5, memory_size=16, word_size=8, num_read_heads=4, controller_features=8),
]
MANN_IN, MANN_T = 6, 9


def _mann_fns(config):
  from memjax.mann import MANNCell, trajectory
  cell = MANNCell(**config)
  params = nn.RNN(cell).init(jax.random.key(0), jnp.zeros((2, MANN_T, MANN_IN)))

  @jax.jit
  def run(params, scale, x):
    def loss(p):
      p = jax.tree.map(lambda a: a * scale, p)
      logits, states = trajectory(cell, p, x)
      return jnp.mean(jax.nn.log_softmax(logits)[..., 0]), states
    (value, states), grads = jax.value_and_grad(loss, has_aux=True)(params)
    return value, states, grads

  return params, run


_MANN_FNS = [_mann_fns(c) for c in MANN_CONFIGS]


@settings(max_examples=12, deadline=None)
@given(config=st.integers(0, len(MANN_CONFIGS) - 1),
       scale=st.sampled_from(SCALES),
       seed=st.integers(0, 2**16),
       input_kind=st.sampled_from(INPUT_KINDS))
def test_mann_forward_and_backward_finite(config, scale, seed, input_kind):
  params, run = _MANN_FNS[config]
  key = jax.random.key(seed)
  x = _inputs(input_kind, key, (2, MANN_T, MANN_IN))
  value, states, grads = run(_perturbed(params, key), scale, x)
  _assert_finite(value, grads, states)
  np.testing.assert_allclose(states.read_weights.sum(-1), 1.0, rtol=1e-4)
  assert np.all(states.read_weights >= 0) and np.all(states.write_weights >= 0)
  # w^w = σ(α)·w^r_{t−1} + (1−σ(α))·w^lu_{t−1} with R ones in w^lu (the paper's n = number
  # of reads): every entry lies in [0, 1] and, after step 0, each head's total in [1, R].
  r = MANN_CONFIGS[config]["num_read_heads"]
  assert np.all(states.write_weights <= 1 + 1e-6)
  total = np.asarray(states.write_weights[:, 1:].sum(-1))
  assert np.all(total >= 1 - 1e-4) and np.all(total <= r + 1e-4)
  assert np.all(states.usage >= 0)


# ----------------------------------------------------------------------------
# MetaNet: fast weights come from loss gradients inside the forward pass; at
# extreme slow-weight scales those gradients are huge or exactly zero. The
# log/sign preprocessing, the meta learners and the cosine retrieval must keep
# logits and all parameter gradients (first and second order) finite, and the
# retrieval attention a distribution.

METANET_CFG = dict(num_classes=3, image_shape=(6, 6, 1), filters=3, num_blocks=2, hidden=4)


def _metanet_fns(second_order):
  from memjax.metanet import MetaNet
  model = MetaNet(**METANET_CFG, second_order=second_order)
  sx = jnp.zeros((3, 6, 6, 1))
  sy = jnp.arange(3, dtype=jnp.int32)
  params = model.init(jax.random.key(0), sx, sy, sx)

  @jax.jit
  def run(params, scale, sx, qx, qy):
    def loss(p):
      p = jax.tree.map(lambda a: a * scale, p)
      logits = model.apply(p, sx, sy, qx)
      return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), qy[:, None], -1))
    value, grads = jax.value_and_grad(loss)(params)
    attention = model.apply(jax.tree.map(lambda a: a * scale, params), sx, sy, qx,
                            method=MetaNet.attention)
    return value, grads, attention

  return params, run


_METANET_FNS = {order: _metanet_fns(order) for order in (False, True)}


@settings(max_examples=10, deadline=None)
@given(second_order=st.booleans(),
       scale=st.sampled_from(SCALES),
       seed=st.integers(0, 2**16),
       input_kind=st.sampled_from(INPUT_KINDS))
def test_metanet_forward_and_backward_finite(second_order, scale, seed, input_kind):
  if second_order:
    # Second-order gradients multiply activations by activations: with weights ×100 and
    # inputs ~1e4 the logits reach ~1e13 and those products overflow float32 (the
    # training loop's NaN guard stops such a run with a message). Up to ×10 they stay finite.
    scale = min(scale, 10.0)
  params, run = _METANET_FNS[second_order]
  key = jax.random.key(seed)
  k1, k2, k3 = jax.random.split(key, 3)
  shape = (3, 6, 6, 1)
  qy = jax.random.randint(k3, (3,), 0, 3)
  value, grads, attention = run(_perturbed(params, k1), scale, _inputs(input_kind, k2, shape),
                                _inputs(input_kind, k3, shape), qy)
  _assert_finite(value, grads)
  np.testing.assert_allclose(attention.sum(-1), 1.0, rtol=1e-4)
  assert np.all(attention >= 0)
