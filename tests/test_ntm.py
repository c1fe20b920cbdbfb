"""NTMCell: the Flax cell contract, shapes, transforms, gradients, one compile, learning."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from memjax import addressing, tasks
from memjax import memory as memory_lib
from memjax.ntm import NTMCell, NTMState, trajectory

SMALL = dict(features=3, memory_size=16, word_size=5, controller_features=12)


def init(cell, x, seed=0):
  model = nn.RNN(cell)
  return model, model.init(jax.random.key(seed), x)


@pytest.mark.parametrize("controller,memory_init,shapes", [
    ("lstm", "constant", [(7, 4), (3, 2, 7, 4)]),
    ("feedforward", "learned", [(2, 7, 4)]),
    ("lstm", "random", [(2, 7, 4)]),
])
def test_shapes_any_batch_axes(controller, memory_init, shapes):
  cell = NTMCell(**SMALL, controller=controller, memory_init=memory_init, num_read_heads=2,
                 num_write_heads=2)
  for shape in shapes:
    x = jax.random.normal(jax.random.key(1), shape)
    model, variables = init(cell, x)
    y = model.apply(variables, x)
    assert y.shape == shape[:-1] + (3,)
    assert np.all(np.isfinite(y))


def test_learned_memory_init_is_used_at_step_zero():
  cell = NTMCell(**SMALL, memory_init="learned")
  x = jnp.ones((3, 4))
  model, variables = init(cell, x)
  params = jax.tree.map(lambda a: a, variables)
  params["params"]["cell"]["memory_init"] = jax.random.normal(jax.random.key(5), (16, 5))
  _, states = trajectory(cell, params, x)
  assert not np.allclose(model.apply(params, x), model.apply(variables, x))
  assert np.all(np.isfinite(states.memory))


def test_cell_contract_and_carry_pytree():
  cell = NTMCell(**SMALL, num_read_heads=2)
  carry = cell.initialize_carry(jax.random.key(0), (5, 4))
  assert isinstance(carry, NTMState)
  assert cell.num_feature_axes == 1
  assert carry.memory.shape == (5, 16, 5)
  assert carry.read_weights.shape == (5, 2, 16)
  np.testing.assert_allclose(carry.read_weights.sum(-1), 1.0)
  assert np.all(carry.read_weights[..., 0] == 1.0)  # one-hot at slot 0 breaks row symmetry
  np.testing.assert_allclose(carry.memory, 1e-6)
  leaves = jax.tree.leaves(carry)
  assert len(leaves) == 7  # (c, h), memory, read_w, write_w, reads, step


def test_single_step_matches_addressing_functions():
  """One cell step equals calling the pure addressing/memory functions by hand."""
  cell = NTMCell(**SMALL)
  x = jax.random.normal(jax.random.key(3), (4,))
  carry = cell.initialize_carry(jax.random.key(0), x.shape)
  carry = carry._replace(memory=jax.random.normal(jax.random.key(4), carry.memory.shape))
  variables = cell.init(jax.random.key(1), carry, x)
  new, _ = cell.apply(variables, carry, x)
  # Recompute by hand from the controller output.
  p = variables["params"]
  ctrl_in = jnp.concatenate([x, carry.reads.reshape(-1)])
  (_, h), _ = nn.OptimizedLSTMCell(12).apply({"params": p["controller"]}, carry.controller, ctrl_in)
  dense = lambda name: h @ p[name]["kernel"] + p[name]["bias"]
  # One row per head (read head, write head): k [2, M], β, g, γ [2, 1], s [2, 2K+1].
  key, beta, gate, shift, gamma = (dense(name).reshape(2, -1)
                                   for name in ("key", "beta", "gate", "shift", "gamma"))
  erase, add = dense("erase"), dense("add")  # [M], the one write head
  ws = [addressing.ntm_address(carry.memory, key[i], jax.nn.softplus(beta[i, 0]),
                               jax.nn.sigmoid(gate[i, 0]), jax.nn.softmax(shift[i]),
                               1 + jax.nn.softplus(gamma[i, 0]), wp)
        for i, wp in enumerate([carry.read_weights[0], carry.write_weights[0]])]
  np.testing.assert_allclose(new.read_weights[0], ws[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new.reads[0], memory_lib.read(carry.memory, ws[0]), rtol=1e-5, atol=1e-6)
  expected_mem = memory_lib.write(carry.memory, ws[1], jax.nn.sigmoid(erase), jnp.tanh(add))
  np.testing.assert_allclose(new.memory, expected_mem, rtol=1e-5, atol=1e-6)


def test_jit_vmap_and_finite_gradients():
  cell = NTMCell(**SMALL)
  x = jax.random.normal(jax.random.key(1), (6, 10, 4))
  model, variables = init(cell, x[0])
  # vmap over examples equals a batched apply.
  batched = jax.jit(model.apply)(variables, x)
  mapped = jax.vmap(model.apply, in_axes=(None, 0))(variables, x)
  np.testing.assert_allclose(batched, mapped, rtol=1e-5, atol=1e-6)

  def loss(v):
    return jnp.mean(model.apply(v, x) ** 2)

  grads = jax.jit(jax.grad(loss))(variables)
  for g in jax.tree.leaves(grads):
    assert np.all(np.isfinite(g))
  assert any(np.any(g != 0) for g in jax.tree.leaves(grads))


def test_thousand_steps_finite_values_and_gradients():
  cell = NTMCell(**SMALL, shift_range=1)
  x = jax.random.bernoulli(jax.random.key(2), 0.5, (1000, 4)).astype(jnp.float32)
  model, variables = init(cell, x)

  def loss(v):
    return jnp.sum(jax.nn.sigmoid(model.apply(v, x)))

  value, grads = jax.jit(jax.value_and_grad(loss))(variables)
  assert np.isfinite(value)
  for g in jax.tree.leaves(grads):
    assert np.all(np.isfinite(g))


def test_one_compile_across_lengths():
  """Copy lengths 1..20 share one compiled training step (padding + mask)."""
  cell = NTMCell(features=8, memory_size=32, word_size=8, controller_features=16)
  model = nn.RNN(cell)
  params = model.init(jax.random.key(0), jnp.zeros((2, tasks.copy_length(20), 9)))

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(p, key):
    def loss(p):
      batch = tasks.copy(key, 2, max_length=20)
      return tasks.sequence_loss(model.apply(p, batch.inputs), batch)[0]
    return jax.grad(loss)(p)

  lengths = set()
  for i in range(6):
    key = jax.random.key(i)
    lengths.update(np.asarray(tasks.copy(key, 2, max_length=20).lengths).tolist())
    step(params, key)
  assert len(lengths) > 3  # really different lengths went through the one compile


def test_trajectory_returns_state_per_step():
  cell = NTMCell(**SMALL)
  x = jax.random.normal(jax.random.key(1), (2, 9, 4))
  model, variables = init(cell, x)
  logits, states = trajectory(cell, variables, x)
  np.testing.assert_allclose(logits, model.apply(variables, x), rtol=1e-6)
  assert states.read_weights.shape == (2, 9, 1, 16)
  np.testing.assert_allclose(states.write_weights.sum(-1), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(states.step[0], np.arange(1, 10))


def test_bad_configuration_and_inputs():
  with pytest.raises(ValueError, match="controller"):
    NTMCell(features=3, controller="gru").initialize_carry(jax.random.key(0), (2, 4))
  with pytest.raises(ValueError, match="memory_init"):
    NTMCell(features=3, memory_init="zeros").initialize_carry(jax.random.key(0), (2, 4))
  with pytest.raises(ValueError, match="memory_size"):
    NTMCell(features=3, memory_size=0).initialize_carry(jax.random.key(0), (2, 4))
  cell = NTMCell(**SMALL)
  carry = cell.initialize_carry(jax.random.key(0), (2, 4))
  with pytest.raises(ValueError, match=r"carry.memory.*\[3, 16, 5\]"):
    cell.init(jax.random.key(0), carry, jnp.zeros((3, 4)))


def test_short_training_reduces_loss():
  """A few hundred steps on short copies take the loss well below its start."""
  cell = NTMCell(features=4, memory_size=16, word_size=8, controller_features=32)
  model = nn.RNN(cell)
  params = model.init(jax.random.key(0), jnp.zeros((1, tasks.copy_length(4), 5)))
  opt = optax.adam(3e-3)

  def loss_fn(p, key):
    batch = tasks.copy(key, 16, num_bits=4, max_length=4)
    return tasks.sequence_loss(model.apply(p, batch.inputs), batch)[0]

  @jax.jit
  def step(p, s, key):
    loss, g = jax.value_and_grad(loss_fn)(p, key)
    u, s = opt.update(g, s)
    return optax.apply_updates(p, u), s, loss

  state = opt.init(params)
  losses = []
  for i in range(300):
    params, state, loss = step(params, state, jax.random.key(i))
    losses.append(float(loss))
  first, last = np.mean(losses[:20]), np.mean(losses[-20:])
  assert first > 2.5  # ≈ 4 bits × ln 2 at chance
  assert last < 0.6 * first, (first, last)


def _legacy_layout(params):
  """The named head projections merged back into the old one-Dense layout:
  "addressing" per head [k (M), β, g, γ, s (2K+1)], "erase_add" per write head [e, a]."""
  def merge(names, heads):
    out = {}
    for leaf in ("kernel", "bias"):
      parts = [params[n][leaf].reshape(params[n][leaf].shape[:-1] + (heads, -1)) for n in names]
      cat = jnp.concatenate(parts, axis=-1)
      out[leaf] = cat.reshape(cat.shape[:-2] + (-1,))
    return out
  named = ("key", "beta", "gate", "shift", "gamma", "erase", "add")
  old = {k: v for k, v in params.items() if k not in named}
  old["addressing"] = merge(("key", "beta", "gate", "gamma", "shift"), 3)
  old["erase_add"] = merge(("erase", "add"), 1)
  return old


def test_legacy_parameters_convert_to_the_same_function():
  """Old-layout trees (one "addressing", one "erase_add" Dense) convert exactly;
  applied unconverted they give a clear error."""
  from memjax.ntm import convert_legacy_params, is_legacy, to_legacy_params
  cell = NTMCell(**SMALL, num_read_heads=2, shift_range=2)
  x = jax.random.normal(jax.random.key(1), (2, 6, 4))
  model, variables = init(cell, x)
  assert {"key", "beta", "gate", "shift", "gamma", "erase", "add"} <= set(variables["params"]["cell"])
  legacy = {"params": {"cell": _legacy_layout(variables["params"]["cell"])}}
  assert is_legacy(legacy) and not is_legacy(variables)
  converted = convert_legacy_params(model, legacy)
  chex.assert_trees_all_equal(converted, variables)
  chex.assert_trees_all_equal(to_legacy_params(cell, variables), legacy)
  # An optimiser state mirrors the parameters: converted the same way, the rest left alone.
  opt_state = optax.adam(1e-3).init(legacy["params"])
  new_state = convert_legacy_params(cell, opt_state)
  chex.assert_trees_all_equal_structs(new_state, optax.adam(1e-3).init(variables["params"]))
  with pytest.raises(ValueError, match="convert_legacy_params"):
    model.apply(legacy, x)


@pytest.mark.parametrize("make", [
    lambda: NTMCell(**SMALL),
    lambda: __import__("memjax").MANNCell(features=3, memory_size=16, word_size=5, num_read_heads=2,
                                          controller_features=12),
])
def test_wrong_input_width_names_the_argument(make):
  cell = make()
  model, variables = init(cell, jnp.zeros((2, 5, 4)))
  with pytest.raises(ValueError, match=r"argument `inputs`: expected 4 features per step.*got 6"):
    model.apply(variables, jnp.zeros((2, 5, 6)))
