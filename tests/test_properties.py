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
       scale=st.sampled_from([0.0, 1e-3, 1.0, 10.0, 100.0]),
       seed=st.integers(0, 2**16),
       input_kind=st.sampled_from(["zeros", "bits", "huge"]))
def test_ntm_forward_and_backward_finite(config, scale, seed, input_kind):
  params, value_and_grad = _FNS[config]
  key = jax.random.key(seed)
  params = jax.tree.map(lambda p: p + 0.5 * jax.random.normal(key, p.shape), params)
  if input_kind == "zeros":
    x = jnp.zeros((2, 12, 3))
  elif input_kind == "bits":
    x = jax.random.bernoulli(key, 0.5, (2, 12, 3)).astype(jnp.float32)
  else:
    x = 1e4 * jax.random.normal(key, (2, 12, 3))
  value, grads = value_and_grad(params, scale, x)
  assert np.isfinite(value)
  for g in jax.tree.leaves(grads):
    assert np.all(np.isfinite(g))
