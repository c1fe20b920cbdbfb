"""MetaNet: meta information, first/second order, layer augmentation, retrieval, learning."""

from __future__ import annotations

import functools
import json

import chex
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from memjax import training
from memjax.metanet import MetaNet, layers, memory, meta_learners
from memjax.metanet.layers import MixedWeights
from memjax.pretrained import export

TINY = dict(num_classes=3, image_shape=(8, 8, 1), filters=4, num_blocks=2, hidden=8)
MICRO = dict(num_classes=3, image_shape=(4, 4, 1), filters=2, num_blocks=1, hidden=4)


@pytest.fixture(scope="module", autouse=True)
def fast_compiles():
  """These tests compile many small, different graphs: skip XLA's optimisation
  passes (about half the compile time), and restore the setting afterwards."""
  old = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", old)


def episode(key, cfg, labels=(0, 0, 1, 1, 2, 2), num_query=4):
  h, w, c = cfg["image_shape"]
  k1, k2 = jax.random.split(key)
  sx = jax.random.uniform(k1, (len(labels), h, w, c))
  qx = jax.random.uniform(k2, (num_query, h, w, c))
  return sx, jnp.asarray(labels, jnp.int32), qx


@pytest.fixture(scope="module")
def tiny():
  model = MetaNet(**TINY)
  sx, sy, qx = episode(jax.random.key(1), TINY)
  params = model.init(jax.random.key(0), sx, sy, qx)
  return model, params, (sx, sy, qx), jax.jit(model.apply)


def _ce(logits, y):
  return -jax.nn.log_softmax(logits)[y]


# ----------------------------------------------------------------------------
# Pure pieces.


def test_preprocess_gradients_matches_definition():
  k = 7.0
  g = np.array([0.5, -2.0, 1e-2, -1e-4, 1e-3, 0.0, np.exp(-k)], np.float32)
  want = np.stack([np.where(np.abs(g) >= np.exp(-k), np.log(np.maximum(np.abs(g), 1e-30)) / k, -1.0),
                   np.where(np.abs(g) >= np.exp(-k), np.sign(g), np.exp(k) * g)], -1)
  np.testing.assert_allclose(meta_learners.preprocess_gradients(jnp.asarray(g)), want, rtol=1e-5, atol=1e-6)
  d = jax.grad(lambda x: jnp.sum(meta_learners.preprocess_gradients(x)))(jnp.asarray(g))
  assert np.all(np.isfinite(d))  # finite at 0 and at the branch point: second order is safe


def _np_sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


def test_coordinate_wise_meta_learners_match_numpy():
  """m (MLP 2→20→20→1) and d (LSTM, 20 units) applied to every coordinate on its own."""
  g = np.random.default_rng(0).normal(size=(4, 7, 2)).astype(np.float32)  # [T, P, 2]
  mlp = jax.tree.map(np.float64, meta_learners.init_mlp(jax.random.key(1)))
  h = np.maximum(g[0] @ mlp["w0"] + mlp["b0"], 0)
  h = np.maximum(h @ mlp["w1"] + mlp["b1"], 0)
  np.testing.assert_allclose(meta_learners.mlp_apply(meta_learners.init_mlp(jax.random.key(1)), g[0]),
                             (h @ mlp["w2"] + mlp["b2"])[:, 0], rtol=1e-5, atol=1e-6)

  lstm = jax.tree.map(np.float64, meta_learners.init_lstm(jax.random.key(2)))
  hid = lstm["wh"].shape[0]
  h = c = np.zeros((7, hid))
  for x in g:  # the equations of lstm_apply's docstring, one step at a time
    z = x @ lstm["wx"] + h @ lstm["wh"] + lstm["b"]
    i, f, gg, o = (z[:, k * hid:(k + 1) * hid] for k in range(4))
    c = _np_sigmoid(f) * c + _np_sigmoid(i) * np.tanh(gg)
    h = _np_sigmoid(o) * np.tanh(c)
  np.testing.assert_allclose(meta_learners.lstm_apply(meta_learners.init_lstm(jax.random.key(2)), g),
                             (h @ lstm["w_out"] + lstm["b_out"])[:, 0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("s,kernel", [(3, (3, 3)), (11, (3, 3)), (2, (2, 3))])
def test_mixed_weights_conv_equals_materialised_kernel(s, kernel):
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(k1, (5, 6, 3))
  values = jax.random.normal(k2, (s, *kernel, 3, 4))
  a = jax.nn.softmax(jax.random.normal(k3, (s,)))
  mixed = MixedWeights(values, a)
  np.testing.assert_allclose(layers._conv_any(x, mixed), layers._conv(x, mixed.mix()),
                             rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("s,kernel", [(3, (3, 3)), (2, (2, 3))])
def test_mixed_weights_conv_gradients_equal_materialised_kernel(s, kernel):
  """The [F, kh·kw·C] mixed-kernel layout changes no gradient (image, values, attention)."""
  k1, k2, k3, k4 = jax.random.split(jax.random.key(1), 4)
  x = jax.random.normal(k1, (5, 6, 3))
  values = jax.random.normal(k2, (s, *kernel, 3, 4))
  a = jax.nn.softmax(jax.random.normal(k3, (s,)))
  ct = jax.random.normal(k4, (5, 6, 4))

  def loss(conv):
    return lambda x, v, a: jnp.sum(conv(x, v, a) * ct)

  mine = jax.grad(loss(lambda x, v, a: layers._conv_any(x, MixedWeights(v, a))), argnums=(0, 1, 2))
  want = jax.grad(loss(lambda x, v, a: layers._conv(x, MixedWeights(v, a).mix())), argnums=(0, 1, 2))
  for g, w in zip(mine(x, values, a), want(x, values, a)):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_support_loss_features_through_im2col_equal_conv_features_and_gradients():
  """The meta information's per-example gradients through im2col convolutions
  equal those through lax.conv (values and per-example kernel gradients)."""
  shapes = layers.net_shapes((8, 8, 1), 4, 2, 8, 3)
  params = layers.init_conv_net(jax.random.key(0), shapes)
  xs = jax.random.uniform(jax.random.key(1), (4, 8, 8, 1))
  np.testing.assert_allclose(jax.vmap(lambda x: layers._hidden(params, x))(xs),
                             jax.vmap(lambda x: jax.nn.relu(layers.conv_features(params, None, x)
                                                            @ params["fc1"]))(xs), rtol=1e-5, atol=1e-6)

  def per_example(features):
    return jax.vmap(jax.grad(lambda p, x: jnp.sum(jnp.sin(features(p, x)))), in_axes=(None, 0))(params, xs)

  chex.assert_trees_all_close(
      per_example(layers._embedding_hidden),
      per_example(lambda p, x: jax.nn.relu(layers.embed(p, None, x))), rtol=1e-4, atol=1e-6)


def _reduce_window_max_pool(x):
  h, w, _ = x.shape
  window = (min(h, 2), min(w, 2), 1)
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, window, "SAME")


@pytest.mark.parametrize("shape", [(8, 8, 3), (7, 7, 2), (3, 5, 1), (1, 1, 4), (1, 5, 2), (4, 1, 2)])
def test_max_pool_equals_reduce_window_with_its_gradient_on_ties(shape):
  """The reshape max-pool is reduce_window's, value and gradient bitwise, also where
  a window holds tied maxima (its gradient goes to the first one, as select-and-scatter's)."""
  rng = np.random.default_rng(sum(shape))
  x = jnp.asarray(rng.integers(-2, 3, size=shape).astype(np.float32))  # many ties
  y, vjp = jax.vjp(layers._max_pool, x)
  y_ref, vjp_ref = jax.vjp(_reduce_window_max_pool, x)
  g = jnp.asarray(rng.normal(size=y.shape).astype(np.float32))
  np.testing.assert_array_equal(y, y_ref)
  np.testing.assert_array_equal(vjp(g)[0], vjp_ref(g)[0])
  # Per window, the whole cotangent lands on one element (no split between ties).
  dx = np.asarray(vjp(jnp.ones_like(y))[0])
  assert np.isclose(dx.sum(), y.size) and set(np.unique(dx)) <= {0.0, 1.0}


def test_max_pool_gradients_check_and_second_order():
  x = jax.random.normal(jax.random.key(0), (6, 5, 2))
  jax.test_util.check_grads(layers._max_pool, (x,), order=2, modes=["rev"], eps=1e-3)


@pytest.mark.parametrize("p,tile", [(7, 3), (12, 4), (5, 64), (1, 1)])
def test_tiled_meta_learners_equal_one_pass_values_and_gradients(p, tile):
  """coordinatewise: d and m tile by tile (padding dropped, weights' gradients summed
  over tiles, inputs' gradients too, for second order) = one pass over all coordinates."""
  k1, k2, k3, k4 = jax.random.split(jax.random.key(p), 4)
  lstm = meta_learners.init_lstm(k1)
  lstm["b"] = lstm["b"] + 0.5 * jax.random.normal(k4, lstm["b"].shape)  # not the init symmetry
  xs = jax.random.normal(k2, (4, p, 2))
  ct = jax.random.normal(k3, (p,))

  def lstm_loss(apply):
    return lambda q, x: jnp.sum(apply(q, x) * ct)

  got = jax.value_and_grad(lstm_loss(functools.partial(meta_learners.lstm_apply_tiled, tile=tile)),
                           argnums=(0, 1))(lstm, xs)
  want = jax.value_and_grad(lstm_loss(meta_learners.lstm_apply), argnums=(0, 1))(lstm, xs)
  chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)

  mlp = meta_learners.init_mlp(k1)
  x = jax.random.normal(k2, (3, p, 2))  # [S, P, 2]: m on every support example's gradient
  mct = jax.random.normal(k3, (3, p))

  def mlp_loss(apply):
    return lambda q, x: jnp.sum(apply(q, x) * mct)

  got = jax.value_and_grad(mlp_loss(functools.partial(meta_learners.mlp_apply_tiled, tile=tile)),
                           argnums=(0, 1))(mlp, x)
  want = jax.value_and_grad(mlp_loss(jax.vmap(meta_learners.mlp_apply, in_axes=(None, 0))),
                            argnums=(0, 1))(mlp, x)
  chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)


def test_tiled_meta_learners_check_grads():
  """Reverse mode, first and second order (the custom VJP is differentiable again)."""
  lstm = meta_learners.init_lstm(jax.random.key(0), hidden=3)
  xs = jax.random.normal(jax.random.key(1), (3, 5, 2))
  f = functools.partial(meta_learners.lstm_apply_tiled, tile=2)
  jax.test_util.check_grads(f, (lstm, xs), order=2, modes=["rev"], eps=1e-2, atol=5e-2, rtol=5e-2)
  mlp = meta_learners.init_mlp(jax.random.key(2), (2, 4, 4, 1))
  x = jax.random.normal(jax.random.key(3), (7, 2))
  g = functools.partial(meta_learners.mlp_apply_tiled, tile=3)
  jax.test_util.check_grads(g, (mlp, x), order=2, modes=["rev"], eps=1e-2, atol=5e-2, rtol=5e-2)


def test_tiled_weight_gradient_sums_are_as_accurate_as_one_pass():
  """The tiles' float32 sums of m's weight gradients (over ~100k coordinates) are
  no further from a float64 reference than the one-pass sums."""
  mlp = meta_learners.init_mlp(jax.random.key(0))
  x = meta_learners.preprocess_gradients(1e-3 * jax.random.normal(jax.random.key(1), (120_000,)))
  ct = jax.random.normal(jax.random.key(2), (120_000,))
  tiled = jax.jit(jax.grad(lambda q: jnp.sum(meta_learners.mlp_apply_tiled(q, x) * ct)))(mlp)
  one = jax.jit(jax.grad(lambda q: jnp.sum(meta_learners.mlp_apply(q, x) * ct)))(mlp)
  m64 = jax.tree.map(lambda a: np.asarray(a, np.float64), mlp)
  x64, c64 = np.asarray(x, np.float64), np.asarray(ct, np.float64)
  h1 = x64 @ m64["w0"] + m64["b0"]
  a1 = np.maximum(h1, 0)
  h2 = a1 @ m64["w1"] + m64["b1"]
  a2 = np.maximum(h2, 0)
  d2 = (c64[:, None] * m64["w2"][:, 0][None]) * (h2 > 0)
  d1 = (d2 @ m64["w1"].T) * (h1 > 0)
  exact = {"w2": a2.T @ c64[:, None], "b2": np.array([c64.sum()]), "w1": a1.T @ d2,
           "b1": d2.sum(0), "w0": x64.T @ d1, "b0": d1.sum(0)}
  for name, e in exact.items():
    scale = np.max(np.abs(e))
    err_tiled = np.max(np.abs(np.asarray(tiled[name], np.float64) - e)) / scale
    err_one = np.max(np.abs(np.asarray(one[name], np.float64) - e)) / scale
    assert err_tiled < max(2 * err_one, 1e-5), (name, err_tiled, err_one)


def test_zero_fast_weights_reproduce_slow_network(tiny):
  model, params, (sx, sy, qx), forward = tiny
  base = params["params"]["base"]
  slow = jax.vmap(lambda x: layers.net_logits(base, None, x))(qx)
  zeros = jax.tree.map(jnp.zeros_like, base)
  np.testing.assert_allclose(jax.vmap(lambda x: layers.net_logits(base, zeros, x))(qx), slow,
                             rtol=1e-6, atol=1e-6)
  # Disabling both fast paths gives the slow base learner, from the same base weights.
  slow_model = MetaNet(**TINY, use_task_fast_weights=False, use_example_fast_weights=False)
  slow_params = slow_model.init(jax.random.key(0), sx, sy, qx)
  assert set(slow_params["params"]) == {"base"}
  out = slow_model.apply({"params": {"base": base}}, sx, sy, qx)
  np.testing.assert_allclose(out, slow, rtol=1e-6, atol=1e-6)
  # The full model with m's output layers zeroed generates zero fast weights: slow output again.
  p = jax.tree.map(lambda a: a, params)
  for group in p["params"]["meta_example"].values():
    group["w2"] = jnp.zeros_like(group["w2"])
    group["b2"] = jnp.zeros_like(group["b2"])
  np.testing.assert_allclose(forward(p, sx, sy, qx), slow, rtol=1e-5, atol=1e-6)


def test_retrieve_constructed_case():
  keys = jnp.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [-1.0, 0, 0]])
  values = {"w": jnp.arange(4.0)[:, None] * jnp.ones((4, 2))}
  a, out = memory.retrieve(keys, values, jnp.array([0.1, 0.2, 3.0]))
  assert int(jnp.argmax(a)) == 2
  np.testing.assert_allclose(a.sum(), 1.0, rtol=1e-6)
  np.testing.assert_allclose(out["w"], jnp.full((2,), jnp.dot(a, jnp.arange(4.0))), rtol=1e-6)


# ----------------------------------------------------------------------------
# Meta information inside the module.


def test_per_example_meta_information_equals_python_loop(tiny):
  """W*_i = m(∇_i) with ∇_i from vmap(grad) equals a Python loop of jax.grad."""
  model, params, (sx, sy, qx), forward = tiny
  p = params["params"]
  got = jax.jit(lambda p: model.apply(p, sx, sy, method=MetaNet.example_fast_weights))(params)
  grad = jax.jit(jax.grad(lambda w, x, y: _ce(layers.net_logits(w, None, x), y)))
  meta = jax.jit(lambda z, g: meta_learners.mlp_apply(z, meta_learners.preprocess_gradients(g)))
  for i in range(sx.shape[0]):  # one example at a time
    g = grad(p["base"], sx[i], sy[i])
    for group, names in (("conv", ["conv0", "conv1"]), ("fc", ["fc1", "fc2"])):
      flat, unravel = jax.flatten_util.ravel_pytree({n: g[n] for n in names})
      out = unravel(meta(p["meta_example"][group], flat))
      for n in names:  # raw outputs of m, as the authors' code
        np.testing.assert_allclose(got[n][i], out[n], rtol=1e-4, atol=1e-7)


def test_task_meta_information_equals_python_loop(tiny):
  """Q* = d(chunk means of pair-loss gradients), pairs (i, i+1 mod S), T = 5 chunks of S = 6."""
  model, params, (sx, sy, qx), forward = tiny
  p = params["params"]
  got = jax.jit(lambda p: model.apply(p, sx, sy, method=MetaNet.task_fast_weights))(params)
  s = sx.shape[0]

  def pair_loss(q, x1, x2, same):
    r1, r2 = layers.embed(q, None, x1), layers.embed(q, None, x2)
    cos = jnp.dot(r1, r2) / jnp.sqrt((jnp.sum(r1 ** 2) + 1e-8) * (jnp.sum(r2 ** 2) + 1e-8))
    logit = model.contrastive_scale * cos
    return jax.nn.softplus(-logit) if same else jax.nn.softplus(logit)

  grad = jax.jit(jax.grad(pair_loss), static_argnums=3)
  grads = [grad(p["embedding"], sx[i], sx[(i + 1) % s], bool(sy[i] == sy[(i + 1) % s]))
           for i in range(s)]
  chunks = [[0, 1], [2], [3], [4], [5]]  # i * T // S for S = 6, T = 5
  chunk_grads = [jax.tree.map(lambda *g: sum(g) / len(g), *[grads[i] for i in c]) for c in chunks]
  for group, names in (("conv", ["conv0", "conv1"]), ("fc", ["fc1"])):
    flat = jnp.stack([jax.flatten_util.ravel_pytree({n: g[n] for n in names})[0]
                      for g in chunk_grads])
    _, unravel = jax.flatten_util.ravel_pytree({n: p["embedding"][n] for n in names})
    out = unravel(meta_learners.lstm_apply(p["meta_task"][group], meta_learners.preprocess_gradients(flat)))
    for n in names:  # raw outputs of d
      np.testing.assert_allclose(got[n], out[n], rtol=1e-3, atol=1e-5)  # float32 sums in another order: ~1e-6 at entries ~1e-3


def test_one_shot_default_representation_loss_is_cross_entropy():
  """With one support example per class (S = N) the default representation loss
  is the cross-entropy of the embedding net's own FC-N head (paper §3.1, the
  authors' code): Q* = d(per-chunk gradients of that loss), here T = S = 3."""
  model = MetaNet(**TINY)
  assert model.embedding_loss == "auto"
  assert model.representation_loss(3) == "cross_entropy"  # S = N = 3: 1-shot
  assert model.representation_loss(6) == "contrastive"    # two per class
  assert MetaNet(**TINY, embedding_loss="contrastive").representation_loss(3) == "contrastive"
  sx, sy, qx = episode(jax.random.key(4), TINY, labels=(2, 0, 1))
  params = model.init(jax.random.key(0), sx, sy, qx)
  p = params["params"]
  assert p["embedding"]["fc2"].shape == (TINY["hidden"], 3)  # the head exists
  got = jax.jit(lambda p: model.apply(p, sx, sy, method=MetaNet.task_fast_weights))(params)

  def ce(q, x, y):
    return _ce(jax.nn.relu(layers.embed(q, None, x)) @ q["fc2"], y)

  grads = [jax.grad(ce)(p["embedding"], sx[i], sy[i]) for i in range(3)]  # one chunk each
  for group, names in (("conv", ["conv0", "conv1"]), ("fc", ["fc1"])):
    flat = jnp.stack([jax.flatten_util.ravel_pytree({n: g[n] for n in names})[0] for g in grads])
    _, unravel = jax.flatten_util.ravel_pytree({n: p["embedding"][n] for n in names})
    out = unravel(meta_learners.lstm_apply(p["meta_task"][group], meta_learners.preprocess_gradients(flat)))
    for n in names:
      np.testing.assert_allclose(got[n], out[n], rtol=1e-3, atol=1e-5)  # float32 sums in another order: ~1e-6 at entries ~1e-3
  # ... and not the contrastive pair loss's.
  contrastive = MetaNet(**TINY, embedding_loss="contrastive")
  other = jax.jit(lambda p: contrastive.apply(p, sx, sy, method=MetaNet.task_fast_weights))(params)
  assert not np.allclose(other["fc1"], got["fc1"], rtol=1e-3, atol=1e-6)


def test_fast_path_logit_spread_at_initialisation_is_comparable_to_slow_path():
  """The fast weights are the meta learners' raw outputs (not rescaled), and
  the FC meta nets start Chainer-like: at initialisation the fast part of the
  logits (h W*_2) spreads over the classes within 10× of the slow part (h W_2)
  (per-layer He rescaling with a 0.01 init made it ~1000× smaller and the loss
  sat at ln N). The conv fast weights start small: the slow part stays within
  30× of the plain slow network's logits (O(0.1) conv fast weights explode
  them by ~300×). The authors' default architecture, 5-way 1-shot."""
  n = 5
  model = MetaNet(num_classes=n)
  k1, k2 = jax.random.split(jax.random.key(5))
  sx = (jax.random.uniform(k1, (n, 28, 28, 1)) < 0.2).astype(jnp.float32)  # sparse strokes
  qx = (jax.random.uniform(k2, (4, 28, 28, 1)) < 0.2).astype(jnp.float32)
  sy = jnp.arange(n, dtype=jnp.int32)
  params = model.init(jax.random.key(0), sx, sy, qx)
  slow, fast = jax.jit(lambda p: model.apply(p, sx, sy, qx, method=MetaNet.logit_parts))(params)
  plain = MetaNet(num_classes=n, use_task_fast_weights=False, use_example_fast_weights=False)
  pure = jax.jit(plain.apply)({"params": {"base": params["params"]["base"]}}, sx, sy, qx)

  def spread(z):
    return float(jnp.mean(jnp.std(z, axis=-1)))

  assert 0.1 < spread(fast) / spread(slow) < 10, (spread(fast), spread(slow))
  assert spread(slow) < 30 * spread(pure), (spread(slow), spread(pure))


@pytest.mark.parametrize("method,slow,meta", [
    (MetaNet.example_fast_weights, "base", "meta_example"),
    (MetaNet.task_fast_weights, "embedding", "meta_task"),
])
def test_first_order_stops_gradient_through_meta_information(method, slow, meta):
  """The fast weights depend on the slow weights only through the meta
  information (gradients): their Jacobian w.r.t. the slow weights is zero in
  first-order mode and not in second-order mode; w.r.t. the meta learner it is
  the same in both."""
  sx, sy, _ = episode(jax.random.key(2), MICRO)
  grads = {}
  for order in (False, True):
    model = MetaNet(**MICRO, second_order=order)
    params = model.init(jax.random.key(0), sx, sy, sx)
    f = lambda p: sum(jnp.sum(jnp.sin(v)) for v in
                      jax.tree.leaves(model.apply(p, sx, sy, method=method)))
    grads[order] = jax.jit(jax.grad(f))(params)["params"]
  first, second = grads[False], grads[True]
  assert all(np.all(g == 0) for g in jax.tree.leaves(first[slow]))
  assert any(np.any(np.abs(g) > 1e-9) for g in jax.tree.leaves(second[slow]))
  for a, b in zip(jax.tree.leaves(first[meta]), jax.tree.leaves(second[meta])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-8)


def test_second_order_changes_only_the_slow_weight_gradients():
  sx, sy, qx = episode(jax.random.key(3), MICRO)
  out, grads = {}, {}
  for order in (False, True):
    model = MetaNet(**MICRO, second_order=order, fast_layers="fc", use_task_fast_weights=False)
    params = model.init(jax.random.key(0), sx, sy, qx)
    f = lambda p: jnp.mean(jax.vmap(_ce)(model.apply(p, sx, sy, qx), sy[:qx.shape[0]] % 3))
    out[order], grads[order] = jax.jit(jax.value_and_grad(f))(params)
  np.testing.assert_allclose(out[False], out[True], rtol=1e-6)  # same forward values
  first, second = grads[False]["params"], grads[True]["params"]
  for a, b in zip(jax.tree.leaves(first["meta_example"]), jax.tree.leaves(second["meta_example"])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-8)
  diff = max(float(jnp.max(jnp.abs(a - b)))
             for a, b in zip(jax.tree.leaves(first["base"]), jax.tree.leaves(second["base"])))
  assert diff > 1e-7


def test_retrieval_attends_to_the_support_example_of_the_query_class(tiny):
  """Queries that are copies of the support images (shuffled) attend most to
  their own support example — the one of their class."""
  model, params, (sx, sy, _), _ = tiny
  perm = jnp.array([3, 0, 5, 1, 4, 2])
  a = jax.jit(lambda p: model.apply(p, sx, sy, sx[perm], method=MetaNet.attention))(params)
  assert a.shape == (6, 6)
  np.testing.assert_allclose(a.sum(-1), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(jnp.argmax(a, -1), perm)
  np.testing.assert_array_equal(sy[jnp.argmax(a, -1)], sy[perm])


# ----------------------------------------------------------------------------
# N-way training, K-way testing (§4.2.1, Table 4).


def test_fast_only_output_applies_n_way_variables_to_k_way_episodes(tiny):
  """A model built with num_classes=K and fast_only_output=True classifies K-way
  episodes with variables trained N-way: its K-way softmax layer's weights come
  only from fast weights (the slow `fc2` layers are ignored)."""
  model3, params3, _, _ = tiny  # N = 3
  k = 5
  model5 = MetaNet(**{**TINY, "num_classes": k}, fast_only_output=True)
  sx, sy, qx = episode(jax.random.key(6), TINY, labels=(3, 0, 4, 1, 2), num_query=4)
  logits = jax.jit(model5.apply)(params3, sx, sy, qx)
  assert logits.shape == (4, k) and np.all(np.isfinite(logits))
  # The slow softmax layers play no part ...
  p = jax.tree.map(lambda a: a, params3)
  p["params"]["base"]["fc2"] = 100.0 * jnp.ones_like(p["params"]["base"]["fc2"])
  np.testing.assert_allclose(jax.jit(model5.apply)(p, sx, sy, qx), logits, rtol=1e-5, atol=1e-6)
  slow, fast = model5.apply(params3, sx, sy, qx, method=MetaNet.logit_parts)
  assert np.all(slow == 0) and np.allclose(fast, logits, rtol=1e-5, atol=1e-6)
  # ... and a fast-only model has none.
  own = model5.init(jax.random.key(0), sx, sy, qx)["params"]
  assert "fc2" not in own["base"] and "fc2" not in own["embedding"]
  # Without the flag, N-way variables on a K-way model are refused, naming the argument.
  with pytest.raises(ValueError, match="num_classes.*fast_only_output=True"):
    MetaNet(**{**TINY, "num_classes": k}).apply(params3, sx, sy, qx)
  with pytest.raises(ValueError, match="fast_only_output"):
    MetaNet(**TINY, fast_only_output=True, use_example_fast_weights=False).init(
        jax.random.key(0), sx, sy, qx)


def test_fast_only_output_meta_information():
  """Fast-only softmax layer: its meta information is the support loss gradient
  at zero slow weights, h_i ⊗ (1/K − e_{y_i}); the layers below take theirs
  with the layer set to V = Σ_j h_j ⊗ (e_{y_j} − 1/K) (module docs)."""
  k = 4
  model = MetaNet(**{**TINY, "num_classes": k}, fast_only_output=True)
  sx, sy, qx = episode(jax.random.key(7), TINY, labels=(1, 3, 0, 2))
  params = model.init(jax.random.key(0), sx, sy, qx)
  p = params["params"]
  got = jax.jit(lambda p: model.apply(p, sx, sy, method=MetaNet.example_fast_weights))(params)
  assert got["fc2"].shape == (4, TINY["hidden"], k)

  def hidden(w, x):
    return jax.nn.relu(layers.conv_features(w, None, x) @ w["fc1"])

  h = np.stack([hidden(p["base"], x) for x in sx])  # [S, D]
  t = np.eye(k)[np.asarray(sy)] - 1.0 / k
  v = h.T @ t
  np.testing.assert_allclose(v, meta_learners._imprinted_head(jnp.asarray(h), sy, k), rtol=1e-5, atol=1e-6)
  meta = jax.jit(lambda z, g: meta_learners.mlp_apply(z, meta_learners.preprocess_gradients(g)))
  for i in range(4):
    g = jax.grad(lambda w: _ce(hidden(w, sx[i]) @ v, sy[i]))(p["base"])
    g["fc2"] = -np.outer(h[i], t[i])
    for group, names in (("conv", ["conv0", "conv1"]), ("fc", ["fc1", "fc2"])):
      flat, unravel = jax.flatten_util.ravel_pytree({n: g[n] for n in names})
      out = unravel(meta(p["meta_example"][group], flat))
      for n in names:
        np.testing.assert_allclose(got[n][i], out[n], rtol=1e-4, atol=1e-6)


def test_fast_only_output_trained_three_way_classifies_five_way():
  """Trained on 3-way episodes with a fast-only softmax layer, the same
  variables classify 5-way episodes well above chance (20%)."""
  cfg = {**TINY, "filters": 8, "hidden": 16}
  model = MetaNet(**cfg, fast_layers="fc", use_task_fast_weights=False, fast_only_output=True)
  s, sl, q, ql = synthetic_episodes(jax.random.key(0), 1)
  params = model.init(jax.random.key(0), s[0], sl[0], q[0])

  def loss_fn(p, key):
    s, sl, q, ql = synthetic_episodes(key, 8)
    logits = jax.vmap(model.apply, in_axes=(None, 0, 0, 0))(p, s, sl, q)
    return jnp.mean(jax.vmap(jax.vmap(_ce))(logits, ql)), {}

  state, _ = training.fit(loss_fn, params, training.make_optimizer("adam", 3e-3), num_steps=80,
                          progress=False)
  five = MetaNet(**{**cfg, "num_classes": 5}, fast_layers="fc", use_task_fast_weights=False,
                 fast_only_output=True)
  s, sl, q, ql = synthetic_episodes(jax.random.key(123), 64, n=5)
  logits = jax.jit(jax.vmap(five.apply, in_axes=(None, 0, 0, 0)))(state.params, s, sl, q)
  acc = float(jnp.mean(jnp.argmax(logits, -1) == ql))
  assert acc > 0.5, f"5-way accuracy {acc:.2f} (chance 0.20)"


# ----------------------------------------------------------------------------
# The module's contract.


def test_shapes_one_compile_and_vmap_over_episodes(tiny):
  model, params, (sx, sy, qx), forward = tiny

  @jax.jit
  @chex.assert_max_traces(n=1)
  def batched(p, s, l, q):
    return jax.vmap(model.apply, in_axes=(None, 0, 0, 0))(p, s, l, q)

  eps = [(sx, sy, qx), episode(jax.random.key(10), TINY)]
  s, l, q = (jnp.stack(x) for x in zip(*eps))
  out = batched(params, s, l, q)
  out2 = batched(params, s + 0.1, l[:, ::-1], q * 0.5)  # new data, same shapes: no retrace
  assert out.shape == out2.shape == (2, 4, 3)
  assert np.all(np.isfinite(out)) and np.all(np.isfinite(out2))
  single = forward(params, *eps[1])
  np.testing.assert_allclose(out[1], single, rtol=1e-4, atol=1e-5)


def test_bad_arguments_raise_naming_the_argument(tiny):
  model, params, (sx, sy, qx), forward = tiny
  with pytest.raises(ValueError, match="support_images"):
    model.apply(params, sx[..., 0], sy, qx)
  with pytest.raises(ValueError, match="query_images"):
    model.apply(params, sx, sy, qx[:, :4])
  with pytest.raises(ValueError, match="support_labels"):
    model.apply(params, sx, sy.astype(jnp.float32), qx)
  with pytest.raises(ValueError, match="support_labels"):
    model.apply(params, sx, sy[:3], qx)
  with pytest.raises(ValueError, match="support_images"):
    model.apply(params, sx.astype(jnp.int32), sy, qx)
  with pytest.raises(ValueError, match="fast_layers"):
    MetaNet(**TINY, fast_layers="conv").init(jax.random.key(0), sx, sy, qx)
  with pytest.raises(ValueError, match="embedding_loss"):
    MetaNet(**TINY, embedding_loss="triplet").init(jax.random.key(0), sx, sy, qx)


def test_default_model_is_the_authors_omniglot_architecture():
  model = MetaNet(num_classes=5)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), method=MetaNet.init_params))
  base = {k: v.shape for k, v in shapes["params"]["base"].items()}
  assert base == {"conv0": (3, 3, 1, 64), **{f"conv{i}": (3, 3, 64, 64) for i in range(1, 5)},
                  "fc1": (64, 64), "fc2": (64, 5)}  # 28 -> 14 -> 7 -> 4 -> 2 -> 1
  mlp = {k: v.shape for k, v in shapes["params"]["meta_example"]["conv"].items()}
  assert (mlp["w0"], mlp["w1"], mlp["w2"]) == ((2, 20), (20, 20), (20, 1))
  assert shapes["params"]["meta_task"]["conv"]["wh"].shape == (20, 80)  # LSTM, 20 units


# ----------------------------------------------------------------------------
# Learning.


def synthetic_episodes(key, batch, n=3, queries=3, size=8, noise=0.3):
  """N random binary prototypes per episode; support and queries are noisy copies."""
  kp, ks, kq, kperm = jax.random.split(key, 4)
  protos = (jax.random.uniform(kp, (batch, n, size, size, 1)) < 0.3).astype(jnp.float32)
  support = protos + noise * jax.random.normal(ks, protos.shape)
  qlabels = jnp.tile(jnp.arange(n), (batch, queries))
  query = protos[jnp.arange(batch)[:, None], qlabels]
  query = query + noise * jax.random.normal(kq, query.shape)
  return support, jnp.tile(jnp.arange(n), (batch, 1)), query, qlabels


def test_short_training_beats_chance():
  # Example-level fast weights on the FC layers only (the no_task ablation): several
  # times faster to compile and run than the full model at this size.
  model = MetaNet(**{**TINY, "filters": 8, "hidden": 16}, fast_layers="fc",
                  use_task_fast_weights=False)
  s, sl, q, ql = synthetic_episodes(jax.random.key(0), 1)
  params = model.init(jax.random.key(0), s[0], sl[0], q[0])

  def loss_fn(p, key):
    s, sl, q, ql = synthetic_episodes(key, 8)
    logits = jax.vmap(model.apply, in_axes=(None, 0, 0, 0))(p, s, sl, q)
    loss = jnp.mean(jax.vmap(jax.vmap(_ce))(logits, ql))
    return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == ql)}

  # fit raises NonFiniteError on any NaN/Inf loss or gradient.
  state, _ = training.fit(loss_fn, params, training.make_optimizer("adam", 3e-3), num_steps=80,
                          progress=False)
  s, sl, q, ql = synthetic_episodes(jax.random.key(123), 64)
  logits = jax.jit(jax.vmap(model.apply, in_axes=(None, 0, 0, 0)))(state.params, s, sl, q)
  acc = float(jnp.mean(jnp.argmax(logits, -1) == ql))
  assert acc > 0.6, f"accuracy {acc:.2f} after {int(state.step)} steps (chance 0.33)"


# ----------------------------------------------------------------------------
# The experiment.


def experiment(name: str = "omniglot_metanet"):
  """The script experiments/NAME.py as a module."""
  return export.load_experiment(name)


def test_experiment_smoke(omniglot_dir, tmp_path, monkeypatch, capsys):
  module = experiment()
  calls = []  # (characters of the images, rotate, max_shift, max_rotation) of every sampler call
  sampler = module.sample_few_shot

  def recording(key, images, **kw):
    calls.append((int(images.shape[0]), kw["rotate"], kw.get("max_shift", 0), kw.get("max_rotation", 0),
                  kw.get("invert", False)))
    return sampler(key, images, **kw)

  monkeypatch.setattr(module, "sample_few_shot", recording)
  flags = ["--data-dir", str(omniglot_dir), "--filters", "4", "--num-blocks", "1", "--hidden", "8",
           "--fast-layers", "fc", "--ablate", "no_task", "--num-query", "2", "--workdir",
           str(tmp_path), "--no-progress", "--eval-episodes", "4"]
  results = module.main(flags + ["--train-split", "small1", "--test-split", "small2", "--steps", "3",
                                 "--log-every", "1", "--eval-every", "0", "--test-num-classes", "3,5",
                                 "--test-num-classes", "10", "--max-shift", "2", "--max-rotation", "11.25"])
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["steps"] == results["steps"] == 3
  assert saved["paper_accuracy"] == 98.4 and saved["paper_row"].startswith("MetaNet−")  # no_task
  assert saved["eval_episodes"] == 4 and saved["test_rotated"] is False
  per_episode = saved["test_episode_accuracies"]  # what experiments/compare_results.py pairs
  assert len(per_episode) == 4 and np.mean(per_episode) * 100 == pytest.approx(saved["test_accuracy"])
  assert (saved["train_characters"], saved["test_characters"]) == (136, 156)
  assert 0.0 <= saved["test_accuracy"] <= 100.0
  assert saved["episodes_per_hour"] > 0
  assert (tmp_path / "learning_curve.png").exists()
  # Training episodes are rotated and jittered (small1, 136 characters), test episodes neither
  # (small2, 156).
  assert {c for c in calls if c[0] == 136} == {(136, True, 2, 11.25, False)}
  assert {c for c in calls if c[0] == 156} == {(156, False, 0, 0, False)}
  assert (saved["config"]["max_shift"], saved["config"]["max_rotation"]) == (2, 11.25)
  # K-way tests (Table 4): K != N through a K-way softmax layer of fast weights only.
  kw = saved["k_way"]
  assert sorted(kw) == ["10", "3", "5"]
  assert kw["5"]["test_accuracy"] == saved["test_accuracy"] and not kw["5"]["fast_only_output"]
  assert kw["3"]["fast_only_output"] and kw["10"]["fast_only_output"]
  assert kw["10"]["paper_accuracy"] == 96.4 and kw["3"]["paper_accuracy"] is None
  assert all(0.0 <= r["test_accuracy"] <= 100.0 and r["eval_episodes"] == 4 for r in kw.values())
  # --eval-only re-evaluates the checkpoint with the run's configuration: same episodes, same numbers.
  capsys.readouterr()
  again = module.main(["--data-dir", str(omniglot_dir), "--workdir", str(tmp_path), "--eval-only",
                       "--eval-episodes", "4", "--no-progress", "--test-num-classes", "10"])
  assert again["steps"] == 3 and again["test_accuracy"] == saved["test_accuracy"]
  assert again["k_way"]["10"]["test_accuracy"] == kw["10"]["test_accuracy"]
  assert json.loads((tmp_path / "results_eval.json").read_text())["k_way"]["10"] == again["k_way"]["10"]
  # --num-query Q scores the run on the test episodes of Q queries per class (those of runs
  # trained with Q); the recorded configuration keeps the training value.
  other = module.main(["--data-dir", str(omniglot_dir), "--workdir", str(tmp_path), "--eval-only",
                       "--eval-episodes", "4", "--no-progress", "--num-query", "3"])
  assert other["num_query_per_class"] == 3 and other["config"]["num_query"] == 2
  assert saved["num_query_per_class"] == 2 and other["steps"] == 3
  assert json.loads((tmp_path / "config.json").read_text())["num_query"] == 2
  given_default = module.main(["--data-dir", str(omniglot_dir), "--workdir", str(tmp_path), "--eval-only",
                               "--eval-episodes", "4", "--no-progress", "--num-query", "10"])
  assert given_default["num_query_per_class"] == 10  # the default, given, is not taken for absent
  with pytest.raises(SystemExit):  # a model flag still may not differ
    module.main(["--data-dir", str(omniglot_dir), "--workdir", str(tmp_path), "--eval-only",
                 "--num-query", "3", "--hidden", "16"])
  # ...not even at its default value (the run has --filters 4): refused, where it once evaluated
  # the 4-filter run as if the flag were absent; the run's own value is accepted.
  capsys.readouterr()
  with pytest.raises(SystemExit):
    module.main(["--data-dir", str(omniglot_dir), "--workdir", str(tmp_path), "--eval-only",
                 "--filters", "64", "--num-classes", "5"])
  assert "--filters 64 (the run's: 4)" in capsys.readouterr().err
  same = module.main(["--data-dir", str(omniglot_dir), "--workdir", str(tmp_path), "--eval-only",
                      "--eval-episodes", "4", "--no-progress", "--filters", "4", "--hidden", "8"])
  assert same["test_accuracy"] == saved["test_accuracy"]
  # ...and keeps the training figures of the same checkpoint's results.json (exported with --results).
  for field in ("episodes_per_hour", "train_seconds_this_invocation", "final_train"):
    assert again[field] == saved[field] is not None
  # It trains nothing, so its summary gives no training rate (it printed "None episodes/hour").
  summary = capsys.readouterr().out
  assert "3 updates (3 episodes)" in summary and "None" not in summary and "episodes/hour" not in summary
  # The attention diagnostic reads the same run directory back.
  attention = experiment("metanet_attention")
  stats = attention.main(["--data-dir", str(omniglot_dir), "--workdir", str(tmp_path), "--episodes", "2"])
  assert stats["step"] == 3 and stats["uniform"] == 0.2
  assert 0.0 < stats["mean_own_class_attention"] < 1.0 and 0.0 <= stats["retrieval_accuracy"] <= 1.0
  assert attention.simplex_attention(5) == pytest.approx(0.466, abs=1e-3)
  assert attention.simplex_attention(20) == pytest.approx(0.131, abs=1e-3)
  # The conv-branch ablation refuses this run: its conv layers have no fast weights.
  with pytest.raises(SystemExit) as info:
    experiment("metanet_conv_branch").main(["--data-dir", str(omniglot_dir), "--workdir", str(tmp_path)])
  assert info.value.code == 2
  assert "--fast-layers fc" in capsys.readouterr().err


def test_read_run_config_names_what_is_wrong(tmp_path):
  from memjax.metanet.omniglot import FAST_WEIGHTS, RUN_KEYS, read_run_config
  with pytest.raises(ValueError, match="no config.json in"):
    read_run_config(str(tmp_path))
  (tmp_path / "config.json").write_text(json.dumps({k: 1 for k in RUN_KEYS}))
  with pytest.raises(ValueError, match="earlier MetaNet"):
    read_run_config(str(tmp_path))
  (tmp_path / "config.json").write_text(json.dumps({"fast_weights": FAST_WEIGHTS, "num_classes": 5}))
  with pytest.raises(ValueError, match="lacks .*'ablate'"):
    read_run_config(str(tmp_path))
  config = {"fast_weights": FAST_WEIGHTS, **{k: 1 for k in RUN_KEYS}}
  (tmp_path / "config.json").write_text(json.dumps(config))
  assert read_run_config(str(tmp_path)) == config


def test_conv_branch_ablation(omniglot_dir, tmp_path, capsys):
  """experiments/metanet_conv_branch.py on a 1-step run with conv fast weights: the
  model as trained differs from itself in no episode, and m_conv's output layer
  is replaced as asked."""
  experiment().main(["--data-dir", str(omniglot_dir), "--filters", "4", "--num-blocks", "1", "--hidden", "8",
                     "--fast-layers", "all", "--ablate", "no_task", "--num-query", "2", "--workdir",
                     str(tmp_path), "--no-progress", "--eval-episodes", "2", "--train-split", "small1",
                     "--test-split", "small2", "--steps", "1", "--eval-every", "0",
                     "--conv-meta-lr-scale", "0.0045"])  # load_run builds the run's own optimiser
  branch = experiment("metanet_conv_branch")
  res = branch.main(["--data-dir", str(omniglot_dir), "--workdir", str(tmp_path), "--episodes", "2"])
  assert res["step"] == 1 and res["episodes_differing"]["as trained"] == 0
  assert set(res["accuracy"]) == {"as trained", "conv fast weights 0", "m_conv bias 0.02"}
  low, high = res["conv_output_range"]
  assert low < high and np.isfinite([low, high]).all()
  params = {"params": {"meta_example": {"conv": {"w0": jnp.ones((2, 3)), "b0": jnp.ones(3),
                                                 "w1": jnp.ones((3, 1)), "b1": jnp.ones(1)}}}}
  assert branch.conv_output_range(branch.with_conv_output(params, 0.0, 0.0)) == (0.0, 0.0)
  assert branch.conv_output_range(branch.with_conv_output(params, -1.0, 0.0)) == (-1.0, -1.0)
  capsys.readouterr()
  with pytest.raises(SystemExit) as info:  # not a run directory: a usage error, no traceback
    branch.main(["--data-dir", str(omniglot_dir), "--workdir", str(tmp_path / "nope")])
  assert info.value.code == 2 and "no config.json" in capsys.readouterr().err


def test_meta_out_mask_marks_the_conv_read_outs_only():
  """meta_out_mask: True on m_conv's last layer and d_conv's w_out/b_out, nowhere else."""
  model = MetaNet(num_classes=3, image_shape=(8, 8, 1), filters=4, num_blocks=1, hidden=8)
  params = model.init(jax.random.key(0), method=MetaNet.init_params)
  marked = sorted(jax.tree_util.keystr(k) for k, v in
                  jax.tree_util.tree_leaves_with_path(meta_learners.meta_out_mask(params)) if v)
  assert marked == ["['params']['meta_example']['conv']['b2']", "['params']['meta_example']['conv']['w2']",
                    "['params']['meta_task']['conv']['b_out']", "['params']['meta_task']['conv']['w_out']"]
  fc = [k for k, v in jax.tree_util.tree_leaves_with_path(meta_learners.meta_out_mask(params, "fc")) if v]
  assert len(fc) == 4
  assert meta_learners.read_out_names(params["params"]["meta_example"]["conv"]) == ("w2", "b2")
  assert meta_learners.read_out_names(params["params"]["meta_task"]["conv"]) == ("w_out", "b_out")
  assert meta_learners.meta_out_lr_scale(20) == pytest.approx(1e-3 * np.sqrt(20))
  assert meta_learners.meta_out_lr_scale(20, 0.01) == pytest.approx(0.01 * np.sqrt(20))


def test_conv_meta_out_std_sets_the_conv_read_outs_init_only():
  """conv_meta_out_std: the conv meta nets' read-out starts at that std (same draws, scaled);
  every other variable is the default model's; a non-positive value is refused."""
  kw = dict(num_classes=3, image_shape=(8, 8, 1), filters=4, num_blocks=1, hidden=8)
  default = MetaNet(**kw).init(jax.random.key(0), method=MetaNet.init_params)
  wide = MetaNet(**kw, conv_meta_out_std=0.1).init(jax.random.key(0), method=MetaNet.init_params)
  mask = meta_learners.meta_out_mask(default)
  for m, a, b, path in zip(jax.tree.leaves(mask), jax.tree.leaves(default), jax.tree.leaves(wide),
                           [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(default)]):
    np.testing.assert_allclose(b, 100 * a if m else a, rtol=1e-5, err_msg=path)
  assert float(jnp.std(wide["params"]["meta_example"]["conv"]["w2"])) > 0.03
  for bad in (0.0, -1e-3, True):
    with pytest.raises(ValueError, match="conv_meta_out_std"):
      MetaNet(**kw, conv_meta_out_std=bad).init(jax.random.key(0), method=MetaNet.init_params)


def test_experiment_invert_images_inverts_train_and_test_episodes(omniglot_dir, tmp_path, monkeypatch):
  """--invert-images reaches every sampler call (training, curve, final test, --eval-only)
  and is recorded in config.json."""
  module = experiment()
  inverts = []
  sampler = module.sample_few_shot

  def recording(key, images, **kw):
    inverts.append((int(images.shape[0]), kw.get("invert", False)))
    return sampler(key, images, **kw)

  monkeypatch.setattr(module, "sample_few_shot", recording)
  common = ["--data-dir", str(omniglot_dir), "--workdir", str(tmp_path), "--no-progress", "--no-plots",
            "--eval-episodes", "2"]
  module.main(common + ["--filters", "4", "--num-blocks", "1", "--hidden", "8", "--fast-layers", "fc",
                        "--ablate", "no_task", "--num-query", "2", "--train-split", "small1",
                        "--test-split", "small2", "--steps", "2", "--eval-every", "1",
                        "--curve-episodes", "2", "--invert-images"])
  assert json.loads((tmp_path / "config.json").read_text())["invert_images"] is True
  assert {n for n, _ in inverts} == {136, 156} and all(flag for _, flag in inverts)
  inverts.clear()
  module.main(common + ["--eval-only"])
  assert inverts and all(flag for _, flag in inverts)


@pytest.mark.parametrize("clip_mode", ["component", "summed_norm"])
def test_experiment_conv_meta_lr_scale_scales_those_steps_only(clip_mode):
  """--conv-meta-lr-scale s: the conv read-outs' Adam steps are s times plain Adam's,
  every other step is plain Adam's; the flag is refused where no conv meta learner exists."""
  module = experiment()
  model = MetaNet(num_classes=3, image_shape=(8, 8, 1), filters=4, num_blocks=1, hidden=8,
                  use_task_fast_weights=False)
  params = model.init(jax.random.key(0), method=MetaNet.init_params)
  grads = jax.tree.map(lambda x: jnp.full_like(x, 0.5), params)
  flags = ["--clip-mode", clip_mode]
  plain = module.make_optimizer(module.parse_args(module.build_parser(), flags))
  scaled = module.make_optimizer(module.parse_args(module.build_parser(), flags + ["--conv-meta-lr-scale", "0.01"]))
  u_plain, _ = plain.update(grads, plain.init(params), params)
  u_scaled, _ = scaled.update(grads, scaled.init(params), params)
  mask = meta_learners.meta_out_mask(params)
  for m, a, b in zip(jax.tree.leaves(mask), jax.tree.leaves(u_plain), jax.tree.leaves(u_scaled)):
    assert np.abs(a).max() > 0
    np.testing.assert_allclose(b, 0.01 * a if m else a, rtol=1e-6)
  for bad in (["--fast-layers", "fc"], ["--ablate", "slow_only"]):
    for flag in (["--conv-meta-lr-scale", "0.01"], ["--conv-meta-out-std", "0.01"]):
      with pytest.raises(SystemExit):
        module.parse_args(module.build_parser(), bad + flag)


def test_experiment_summed_norm_clipping_takes_the_authors_steps():
  """--clip-mode summed_norm: Adam on the mean loss's gradient, clipped at norm
  clip / (B·N·Q), takes the steps of the authors' Chainer recipe, Adam on the
  summed loss's gradient (B·N·Q times the mean's) clipped at norm clip."""
  import optax
  module = experiment()
  args = module.build_parser().parse_args(["--clip-mode", "summed_norm", "--num-classes", "5",
                                           "--num-query", "2", "--batch-size", "2", "--lr", "0.01"])
  terms = 2 * 5 * 2
  ours, authors = module.make_optimizer(args), optax.chain(optax.clip_by_global_norm(10.0), optax.adam(0.01))
  params = {"w": jnp.zeros(3), "b": jnp.zeros(())}
  s_ours, s_auth = ours.init(params), authors.init(params)
  for scale in (3.0, 0.01, 1.0):  # summed norms 60·scale: clipped, not clipped, clipped
    g = {"w": jnp.array([1.0, -2.0, 2.0]) * scale, "b": jnp.array(0.0)}  # the mean loss's gradient
    u_ours, s_ours = ours.update(g, s_ours, params)
    u_auth, s_auth = authors.update(jax.tree.map(lambda x: terms * x, g), s_auth, params)
    np.testing.assert_allclose(u_ours["w"], u_auth["w"], rtol=1e-4)
  # Without the division by B·N·Q (clipping the mean's gradient at 10) the steps differ.
  wrong = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(0.01))
  s_wrong, s_auth = wrong.init(params), authors.init(params)
  for scale in (3.0, 0.01):
    g = {"w": jnp.array([1.0, -2.0, 2.0]) * scale, "b": jnp.array(0.0)}
    u_wrong, s_wrong = wrong.update(g, s_wrong, params)
    u_auth, s_auth = authors.update(jax.tree.map(lambda x: terms * x, g), s_auth, params)
  assert not np.allclose(u_wrong["w"], u_auth["w"], rtol=1e-2)


def test_experiment_standard_split_flags():
  """Table 3: train on images_background (964 characters), test on 400 episodes of
  images_evaluation; the run compares with the paper's Table 3 row."""
  module = experiment()
  args = module.build_parser().parse_args(["--num-classes", "20", "--train-split", "background",
                                           "--test-split", "evaluation", "--eval-episodes", "400"])
  assert (args.train_split, args.test_split, args.eval_episodes) == ("background", "evaluation", 400)
  label, row = module.paper_row(args)
  assert "Table 3" in label and row[20] == 95.92
  assert module.paper_row(module.build_parser().parse_args([]))[1][20] == 97.0
  model = module.build_model(args, num_classes=5)
  assert model.num_classes == 5 and model.fast_only_output
  assert not module.build_model(args).fast_only_output
  assert module.build_model(args).embedding_loss == "auto"


def test_experiment_eval_only_needs_a_run(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    experiment().main(["--workdir", str(tmp_path), "--eval-only"])
  assert e.value.code == 2 and "train a run" in capsys.readouterr().err
  (tmp_path / "config.json").write_text(json.dumps({"num_classes": 5, "embedding_loss": "contrastive"}))
  with pytest.raises(SystemExit) as e:  # a run of the earlier, rescaled fast weights
    experiment().main(["--workdir", str(tmp_path), "--eval-only"])
  assert e.value.code == 2 and "earlier MetaNet" in capsys.readouterr().err


def test_eval_only_training_fields_come_from_the_same_checkpoint(tmp_path):
  """--eval-only's results_eval.json keeps results.json's training figures only
  when both describe the same checkpoint (a resumed, unfinished run does not)."""
  training_fields = experiment().training_fields
  assert training_fields(str(tmp_path), 10) == {}  # no results.json
  saved = {"steps": 10, "episodes_per_hour": 2400.0, "train_seconds_this_invocation": 15.0,
           "final_train": {"loss": 0.1, "accuracy": 1.0}, "test_accuracy": 90.0}
  (tmp_path / "results.json").write_text(json.dumps(saved))
  assert training_fields(str(tmp_path), 10) == {
      "episodes_per_hour": 2400.0, "train_seconds_this_invocation": 15.0,
      "final_train": {"loss": 0.1, "accuracy": 1.0}}
  assert training_fields(str(tmp_path), 11) == {}  # a later checkpoint than results.json


def test_experiment_resume_and_eval_only_accept_the_workdir_relative_or_absolute(tmp_path, monkeypatch):
  module = experiment()
  parser = module.build_parser()
  monkeypatch.chdir(tmp_path)
  (tmp_path / "run").mkdir()
  config = module.run_config(parser, parser.parse_args(["--workdir", "run", "--filters", "8"]))
  (tmp_path / "run" / "config.json").write_text(json.dumps(config))
  absolute = str(tmp_path / "run")
  resumed = module.run_config(parser, parser.parse_args(["--workdir", absolute, "--resume",
                                                         "--filters", "8"]))
  assert resumed == {**config, "workdir": absolute}
  args = parser.parse_args(["--workdir", absolute, "--eval-only"])
  assert module.run_config(parser, args) == {**config, "workdir": absolute}
  assert args.filters == 8 and args.workdir == absolute  # the run's flags, the directory as given
  with pytest.raises(SystemExit) as e:  # another configuration is still refused
    args = parser.parse_args(["--workdir", absolute, "--resume"])
    module.open_run(parser, args, module.run_config(parser, args))
  assert e.value.code == 2
  assert json.loads((tmp_path / "run" / "config.json").read_text()) == config  # untouched
  # The same configuration resumes, the folder given relative or absolute.
  args = parser.parse_args(["--workdir", absolute, "--resume", "--filters", "8"])
  run = module.open_run(parser, args, module.run_config(parser, args))
  assert run.saved_config == config
  assert run.config == {**config, "workdir": absolute, "lr_history": [[0, 1e-3]], "ema_history": [[0, 0.0]]}


def test_experiment_resume_with_a_new_lr_records_it_and_refuses_other_changes(tmp_path):
  module = experiment()
  parser = module.build_parser()
  workdir = tmp_path / "run"
  args = parser.parse_args(["--workdir", str(workdir), "--filters", "8"])
  run = module.open_run(parser, args, module.run_config(parser, args))
  assert run.config["lr_history"] == [[0, 1e-3]]
  (workdir / "checkpoints" / "120").mkdir(parents=True)  # as if trained to step 120
  args = parser.parse_args(["--workdir", str(workdir), "--filters", "8", "--resume", "--lr", "1e-4"])
  run = module.open_run(parser, args, module.run_config(parser, args))
  assert run.config["lr"] == 1e-4 and run.config["lr_history"] == [[0, 1e-3], [120, 1e-4]]
  assert json.loads((workdir / "config.json").read_text())["lr_history"] == [[0, 1e-3], [120, 1e-4]]
  with pytest.raises(SystemExit):  # anything else than the rate still has to match
    args = parser.parse_args(["--workdir", str(workdir), "--filters", "8", "--resume", "--clip", "1"])
    module.open_run(parser, args, module.run_config(parser, args))


@pytest.mark.parametrize("drop", [0, 3])
def test_experiment_optimizer_drops_the_learning_rate_after_lr_drop_steps(drop):
  module = experiment()
  args = module.build_parser().parse_args(["--lr", "1e-2", "--lr-drop-steps", str(drop),
                                           "--lr-drop-factor", "0.5"])
  opt = module.make_optimizer(args)
  params = {"w": jnp.zeros(3)}
  state = opt.init(params)
  sizes = []
  for _ in range(5):  # a constant gradient: every Adam update is the learning rate itself
    updates, state = opt.update({"w": jnp.full(3, 20.0)}, state, params)
    sizes.append(float(-updates["w"][0]))
  want = [1e-2] * 5 if drop == 0 else [1e-2] * 3 + [5e-3] * 2
  np.testing.assert_allclose(sizes, want, rtol=1e-4)


def test_experiment_lr_schedule_flag_drives_the_optimizer_and_is_checked(tmp_path, capsys):
  module = experiment()
  parser = module.build_parser()
  args = module.parse_args(parser, ["--lr", "1e-2", "--lr-schedule", "2:1e-3,4:5e-3"])
  assert args.lr_schedule == [[2, 1e-3], [4, 5e-3]]
  opt = module.make_optimizer(args)
  params = {"w": jnp.zeros(3)}
  state, sizes = opt.init(params), []
  for _ in range(6):  # a constant gradient: every Adam update is the learning rate itself
    updates, state = opt.update({"w": jnp.full(3, 20.0)}, state, params)
    sizes.append(float(-updates["w"][0]))
  np.testing.assert_allclose(sizes, [1e-2, 1e-2, 1e-3, 1e-3, 5e-3, 5e-3], rtol=1e-4)
  for flags, message in ((["--lr-schedule", "2:1e-3", "--lr-drop-steps", "3"], "exclusive"),
                         (["--lr-schedule", "4:1e-3,2:1e-4"], "increasing steps"),
                         (["--lr-schedule", "2=1e-3"], "STEP:LR"),
                         (["--lr-schedule", "0:1e-3"], "STEP:LR"),
                         (["--lr-schedule", "2:-1"], "STEP:LR")):
    with pytest.raises(SystemExit) as e:
      module.parse_args(parser, flags)
    assert e.value.code == 2 and "--lr-schedule" in (err := capsys.readouterr().err) and message in err
  # a run saved before the flag existed resumes (no schedule = the default); a schedule is config
  workdir = tmp_path / "run"
  args = module.parse_args(parser, ["--workdir", str(workdir), "--filters", "8"])
  config = module.run_config(parser, args)
  assert config["lr_schedule"] is None
  del config["lr_schedule"]
  workdir.mkdir()
  (workdir / "config.json").write_text(json.dumps(config))
  args = module.parse_args(parser, ["--workdir", str(workdir), "--filters", "8", "--resume"])
  module.open_run(parser, args, module.run_config(parser, args))


def test_experiment_resume_takes_a_schedule_only_where_it_keeps_the_rates_already_trained(
    tmp_path, capsys):
  """A run trained by --lr legs continues under the --lr-schedule that writes them down and a
  later step; a schedule that changes an update before the checkpoint is refused, untouched."""
  module = experiment()
  parser = module.build_parser()
  workdir = tmp_path / "run"
  flags = ["--workdir", str(workdir), "--filters", "8"]

  def open_at(step, *more):
    (workdir / "checkpoints" / str(step)).mkdir(parents=True, exist_ok=True)
    args = module.parse_args(parser, [*flags, "--resume", *more])
    return module.open_run(parser, args, module.run_config(parser, args))

  args = module.parse_args(parser, flags)
  module.open_run(parser, args, module.run_config(parser, args))
  open_at(100, "--lr", "1e-4")
  saved = open_at(150, "--lr", "1e-3").config
  assert saved["lr_history"] == [[0, 1e-3], [100, 1e-4], [150, 1e-3]] and saved["lr_schedule"] is None
  for schedule, first_wrong in (("90:1e-4,150:1e-3,200:1e-4", 91), ("100:1e-5,150:1e-3", 101),
                                ("100:1e-4", 151), ("120:1e-3", 121)):
    with pytest.raises(SystemExit) as e:
      open_at(180, "--lr-schedule", schedule)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--resume" in err and "lr_schedule" in err, err
    assert f"update {first_wrong} the rate" in err, err
    assert json.loads((workdir / "config.json").read_text()) == saved  # untouched
  run = open_at(180, "--lr-schedule", "100:1e-4,150:1e-3,200:1e-5")
  assert run.config["lr_schedule"] == [[100, 1e-4], [150, 1e-3], [200, 1e-5]]
  assert "learning rate from step 180 on: 0.001" in capsys.readouterr().out
  rates = [training.learning_rate_at(run.config, s) for s in (0, 99, 100, 149, 150, 199, 200, 500)]
  np.testing.assert_allclose(rates, [1e-3, 1e-3, 1e-4, 1e-4, 1e-3, 1e-3, 1e-5, 1e-5], rtol=1e-6)
  # the schedule now fixes every trained rate: a later step may be added, an earlier one not moved
  run = open_at(250, "--lr-schedule", "100:1e-4,150:1e-3,200:1e-5,300:1e-6")
  assert training.learning_rate_at(run.config, 300) == pytest.approx(1e-6)
  with pytest.raises(SystemExit):
    open_at(260, "--lr-schedule", "100:1e-4,150:1e-3,220:1e-5")
  run = open_at(260, "--lr", "3e-4")  # back to legs: a constant rate from the checkpoint on
  assert run.config["lr_history"] == [[0, 1e-3], [100, 1e-4], [150, 1e-3], [200, 1e-5], [260, 3e-4]]


def test_experiment_resume_takes_a_jitter_schedule_from_the_checkpoint_on(tmp_path, capsys):
  module = experiment()
  parser = module.build_parser()
  workdir = tmp_path / "run"
  flags = ["--workdir", str(workdir), "--filters", "8", "--max-shift", "2", "--max-rotation", "11.25"]
  args = module.parse_args(parser, flags)
  module.open_run(parser, args, module.run_config(parser, args))
  (workdir / "checkpoints" / "300").mkdir(parents=True)  # as if trained to step 300
  saved = json.loads((workdir / "config.json").read_text())
  for more in (["--jitter-schedule", "200:0:0"], ["--max-rotation", "0"]):
    with pytest.raises(SystemExit) as e:
      args = module.parse_args(parser, [*flags, "--resume", *more])
      module.open_run(parser, args, module.run_config(parser, args))
    assert e.value.code == 2 and "--jitter-schedule 300:SHIFT:DEGREES" in capsys.readouterr().err
    assert json.loads((workdir / "config.json").read_text()) == saved  # untouched
  args = module.parse_args(parser, [*flags, "--resume", "--jitter-schedule", "300:0:0"])
  run = module.open_run(parser, args, module.run_config(parser, args))
  assert run.config["jitter_schedule"] == [[300, 0, 0.0]]
  assert "training jitter from step 300 on" in capsys.readouterr().out


def test_experiment_init_from_starts_the_full_model_from_a_metanet_minus_run(omniglot_dir, tmp_path,
                                                                             capsys):
  from memjax.metanet.omniglot import build_model, warm_start_from_run
  module = experiment()
  tiny = ["--data-dir", str(omniglot_dir), "--train-split", "small1", "--test-split", "small1",
          "--filters", "4", "--num-blocks", "1", "--hidden", "8", "--fast-layers", "fc",
          "--num-query", "2", "--no-progress", "--no-plots", "--eval-episodes", "2",
          "--eval-every", "0", "--log-every", "1", "--steps", "2"]
  src = tmp_path / "minus"
  module.main([*tiny, "--ablate", "no_task", "--workdir", str(src)])
  capsys.readouterr()
  config = json.loads((src / "config.json").read_text())
  minus = build_model(config)
  source = training.load_checkpoint(
      str(src), training.init_state(minus.init(jax.random.key(0), method=MetaNet.init_params),
                                    module.make_optimizer(module.parse_args(module.build_parser(), []))))
  full = build_model({**config, "ablate": "none"})
  init = full.init(jax.random.key(0), method=MetaNet.init_params)
  warm, taken, fresh = warm_start_from_run(init, str(src), fresh_meta_out_scale=0.1)
  assert {n.split("/")[1] for n in taken} == {"base", "embedding", "meta_example"}
  assert {n.split("/")[1] for n in fresh} == {"meta_task"}
  chex.assert_trees_all_equal(warm["params"]["base"], source.params["params"]["base"])
  chex.assert_trees_all_equal(warm["params"]["meta_example"], source.params["params"]["meta_example"])
  for group, net in warm["params"]["meta_task"].items():  # the new d: read-out × 0.1, the rest as is
    for k, v in net.items():
      want = init["params"]["meta_task"][group][k] * (0.1 if k in ("w_out", "b_out") else 1.0)
      np.testing.assert_allclose(v, want, rtol=1e-6)
  # skip: a trained net kept as initialised (--init-skip); a prefix naming nothing is refused.
  skipped, taken_s, fresh_s = warm_start_from_run(init, str(src), skip=["meta_example/fc"])
  assert {n.split("/")[1] for n in fresh_s} == {"meta_task", "meta_example"}
  assert not any(n.startswith("params/meta_example/fc") for n in taken_s)
  chex.assert_trees_all_equal(skipped["params"]["meta_example"], init["params"]["meta_example"])
  chex.assert_trees_all_equal(skipped["params"]["base"], source.params["params"]["base"])
  with pytest.raises(ValueError, match="meta_example/conv"):  # an FC-only model has no m_conv
    warm_start_from_run(init, str(src), skip=["meta_example/conv"])
  # With Q* near zero (read-out × 1e-6) the full model classifies as its MetaNet− source does.
  rng = np.random.default_rng(0)
  sx = jnp.asarray(rng.random((5, 28, 28, 1)), jnp.float32)
  sy = jnp.arange(5)
  qx = jnp.asarray(rng.random((4, 28, 28, 1)), jnp.float32)
  want = minus.apply(source.params, sx, sy, qx)
  near, _, _ = warm_start_from_run(init, str(src), fresh_meta_out_scale=1e-6)
  np.testing.assert_allclose(full.apply(near, sx, sy, qx), want, atol=1e-4)
  assert float(jnp.max(jnp.abs(full.apply(init, sx, sy, qx) - want))) > 1e-2  # not so without it
  # The experiment: --init-from, recorded in the run's configuration.
  results = module.main([*tiny, "--workdir", str(tmp_path / "full"), "--init-from", str(src),
                         "--init-fresh-scale", "0.1", "--lr", "1e-9"])
  out = capsys.readouterr().out
  assert "(base, embedding, meta_example) from its last checkpoint" in out and "(meta_task)" in out
  assert results["config"]["init_from"] == str(src) and results["config"]["init_fresh_scale"] == 0.1


@pytest.mark.parametrize("flags, message", [
    (["--init-fresh-scale", "0.1"], "--init-fresh-scale needs --init-from"),
    (["--init-skip", "meta_example/conv"], "--init-skip needs --init-from"),
    (["--init-from", "/no/such/run"], "--init-from: no checkpoint in '/no/such/run'"),
    (["--init-from", "runs/x", "--workdir", "runs/x"], "another run's directory"),
    (["--init-from", "runs/x", "--eval-only"], "--init-from with --eval-only")])
def test_experiment_init_from_bad_flags_exit_2(flags, message, tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "runs" / "x" / "checkpoints" / "5").mkdir(parents=True)
  with pytest.raises(SystemExit) as e:
    experiment().main(flags)
  assert e.value.code == 2 and message in capsys.readouterr().err
  assert not (tmp_path / "runs" / "metanet").exists()  # nothing written


def test_experiment_parses_an_init_from_command_without_its_folder():
  """A recorded command (memjax.pretrained) parses where its --init-from run is absent."""
  module = experiment()
  args = module.parse_args(module.build_parser(), ["--init-from", "/no/such/run", "--resume"])
  assert args.init_from == "/no/such/run"


def test_experiment_resume_refuses_a_run_of_the_earlier_metanet(tmp_path, capsys):
  module = experiment()
  parser = module.build_parser()
  config = module.run_config(parser, parser.parse_args(["--workdir", str(tmp_path)]))
  del config["fast_weights"]  # as the code before "raw" fast weights wrote it
  (tmp_path / "config.json").write_text(json.dumps(config))
  args = parser.parse_args(["--workdir", str(tmp_path), "--resume"])
  with pytest.raises(SystemExit) as e:
    module.open_run(parser, args, module.run_config(parser, args))
  assert e.value.code == 2 and "earlier MetaNet" in capsys.readouterr().err


@pytest.mark.parametrize("flags", [["--num-classes", "7"], ["--batch-size", "0"],
                                   ["--ablate", "everything"], ["--max-minutes", "-1"],
                                   ["--steps", "two"], ["--test-num-classes", "1"],
                                   ["--test-num-classes", "5,x"], ["--train-split", "nope"],
                                   ["--test-split", "images_evaluation"],
                                   ["--embedding-loss", "triplet"], ["--eval-only", "--resume"],
                                   ["--max-shift", "-1"], ["--max-rotation", "181"]])
def test_experiment_bad_flags_exit_2(flags, capsys):
  main = experiment().main
  with pytest.raises(SystemExit) as e:
    main(flags)
  assert e.value.code == 2
  assert "usage" in capsys.readouterr().err


def test_paired_ci95_against_numpy():
  from memjax.evaluation import paired_ci95
  rng = np.random.default_rng(0)
  a = rng.uniform(0.8, 1.0, 50)
  b = np.clip(a + rng.normal(0.01, 0.02, 50), 0, 1)
  d = b - a  # independent of mean_ci95: the normal-approximation interval by hand
  mean, half = paired_ci95(a, b)
  assert mean == pytest.approx(100 * d.sum() / 50)
  assert half == pytest.approx(100 * 1.96 * np.sqrt(((d - d.mean()) ** 2).sum() / 49) / np.sqrt(50))
  assert paired_ci95(a, a) == (0.0, 0.0)
  for bad, name in (((a, b[:-1]), "acc_a`, `acc_b"), ((a[:1], b[:1]), "acc_a"),
                    ((a, np.full(50, np.nan)), "acc_b")):
    with pytest.raises(ValueError, match=name):
      paired_ci95(*bad)


def test_compare_results_pairs_the_same_episodes_and_refuses_others(tmp_path, capsys):
  module = experiment("compare_results")
  proto = {"num_classes": 20, "num_support": 1, "num_query_per_class": 5, "test_split": "test",
           "eval_episodes": 4}
  a = dict(proto, test_accuracy=87.5, test_episode_accuracies=[0.9, 0.8, 1.0, 0.8])
  b = dict(proto, test_accuracy=92.5, test_episode_accuracies=[0.9, 0.9, 1.0, 0.9])
  for name, r in (("a.json", a), ("b.json", b), ("q10.json", dict(b, num_query_per_class=10)),
                  ("old.json", {k: v for k, v in b.items() if k != "test_episode_accuracies"})):
    (tmp_path / name).write_text(json.dumps(r))
  out = module.main([str(tmp_path / "a.json"), str(tmp_path / "b.json")])
  d = np.array([0.0, 0.1, 0.0, 0.1])
  assert out["difference"] == pytest.approx(5.0)
  assert out["ci95"] == pytest.approx(100 * 1.96 * d.std(ddof=1) / 2)
  assert "+5.00" in capsys.readouterr().out
  for other, message in (("q10.json", "num_query_per_class 5 vs 10"), ("old.json", "--eval-only"),
                         ("missing.json", "not a readable")):
    with pytest.raises(SystemExit) as e:
      module.main([str(tmp_path / "a.json"), str(tmp_path / other)])
    assert e.value.code == 2 and message in capsys.readouterr().err

