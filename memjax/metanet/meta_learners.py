"""MetaNet's meta information and meta learners (Munkhdalai & Yu 2017, §3.1–3.2).

* Meta information: per-example loss gradients of the support set —
  ∇_i = ∇_W L_task(b(W, x'_i), y'_i) for the base learner and
  ∇_Q L_emb(u(Q, ·)) for the embedding net — computed as
  ``jax.vmap(jax.grad(loss))`` over the support set, no Python loop.
* Gradient preprocessing of Andrychowicz et al. (2016, §3.2), k = 7.
* The coordinate-wise meta learners: m (slow weights Z), an MLP 2→20→20→1,
  and d (slow weights G), an LSTM over the T support chunks. Every parameter
  coordinate is one "example" of these small nets, with weights shared across
  coordinates (one net for the conv kernels and one for the FC matrices, as in
  the authors' code).
* Fast-weight generation: the meta learner's raw outputs are the fast
  weights, W*_i = m(Z, ∇_i) and Q* = d(G, ∇_1..∇_T).
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from memjax import addressing
from memjax.metanet.layers import Params, embed

GRADIENT_PREPROCESS_K = 7.0
# Std at initialisation of the output layer of the meta learners' 'conv' nets
# (the FC nets' start as Chainer's default Linear, std 1/sqrt(fan_in), as the
# authors'). The fast weights are the raw outputs (see the package docstring).
# Measured on the default 5-way model at initialisation (Omniglot support set),
# the spread of the slow part of the logits over the classes for this std
# 0.1 / 0.01 / 1e-3 / 3e-4: 190 / 11.1 / 7.9 / 7.8 (the plain slow network:
# 0.62; the remaining ×12 comes from the FC fast weights): from ~1e-3 down the
# conv fast weights no longer blow the activations up.
_CONV_META_OUT_STD = 1e-3
# With plain Adam, whose first steps move every parameter by ~lr whatever its
# gradient's size, a read-out of that std changes its outputs by ~100% per
# update at lr 1e-3: in the shipped MetaNet− models, m_conv's outputs went
# negative for every gradient in the first updates (its biases moved by
# 0.0060 each, ~6 steps of 1e-3, then never again), so every conv
# fast kernel was negative on non-negative inputs, ReLU(fast) = 0 and the conv
# fast weights were inert for the rest of training. Scaling that layer's Adam
# steps by std / (1/√meta_hidden) — 1e-3·√20 ≈ 0.0045 — gives it the step
# relative to its initial scale that the authors' read-out (Chainer's default
# init, std 1/√20) has at the same lr: :func:`meta_out_lr_scale`, the
# ``--conv-meta-lr-scale`` of ``experiments/omniglot_metanet.py``.


# ----------------------------------------------------------------------------
# Meta information.


def _cross_entropy(logits: jax.Array, label: jax.Array) -> jax.Array:
  """−log softmax(logits)[label] of one example: logits [K], int label."""
  return optax.losses.softmax_cross_entropy_with_integer_labels(logits, label)


def _bounded(r: jax.Array) -> jax.Array:
  """r / max(1, max_i |r_i|), the divisor under stop_gradient.

  Cosine similarity is scale-invariant and its gradient homogeneous, so values
  and (first- and second-order) gradients are unchanged up to rounding; but
  ‖r‖² no longer overflows float32 when the representation is huge (≳1e19),
  which otherwise turns second-order gradients into inf/inf = NaN.
  """
  return r / jax.lax.stop_gradient(jnp.maximum(1.0, jnp.max(jnp.abs(r))))


def _imprinted_head(h: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
  """V = Σ_i h_i ⊗ (e_{y_i} − 1/K) = −Σ_i ∇_V CE(h_i V, y_i) at V = 0.

  The stand-in for a softmax layer without slow weights when the support loss
  of the layers below it is differentiated (see the package docstring).

  Args:
    h: [S, D] features entering the layer.
    labels: int [S] labels in 0..K−1.
    num_classes: K.

  Returns:
    [D, K] weights.
  """
  return h.T @ (jax.nn.one_hot(labels, num_classes, dtype=h.dtype) - 1.0 / num_classes)


def _support_grads(params: Params, features, images: jax.Array, labels: jax.Array,
                   num_classes: int, fast_only: bool) -> Params:
  """Per-example gradients of the support loss CE(features(params, x'_i) · W_out, y'_i).

  ∇_i = ∇_W L_task(b(W, x'_i), y'_i) (the base learner's meta information) or,
  with the embedding net's FC-N head, ∇_Q of its cross-entropy (§3.1).

  Args:
    params: slow weights of the net, with its softmax layer ``fc2`` [D, K]
      unless ``fast_only``.
    features: ``(params, x) -> [D]`` the features entering ``fc2``.
    images: [S, H, W, C] support images.
    labels: int [S].
    num_classes: K.
    fast_only: the softmax layer has no slow weights (zero): its gradient is
      taken at zero, h_i ⊗ (1/K − e_{y_i}), and the layers' below it with
      W_out = :func:`_imprinted_head` (under stop_gradient).

  Returns:
    dict of [S, layer shape] gradients, ``fc2`` included.
  """
  with jax.named_scope("support_grads"):
    if not fast_only:
      def loss(p, x, y):
        return _cross_entropy(features(p, x) @ p["fc2"], y)

      return jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(params, images, labels)
    lower = {n: v for n, v in params.items() if n != "fc2"}
    h = jax.vmap(lambda x: features(lower, x))(images)  # [S, D]
    head = jax.lax.stop_gradient(_imprinted_head(h, labels, num_classes))  # [D, K]

    def loss_below(p, x, y):
      return _cross_entropy(features(p, x) @ head, y)

    grads = jax.vmap(jax.grad(loss_below), in_axes=(None, 0, 0))(lower, images, labels)
    target = jax.nn.one_hot(labels, num_classes, dtype=h.dtype) - 1.0 / num_classes  # [S, K]
    grads["fc2"] = -h[:, :, None] * target[:, None, :]  # [S, D, K], the gradient at W_out = 0
    return grads


def _contrastive_grads(params: Params, images: jax.Array, labels: jax.Array,
                       scale: float) -> Params:
  """Per-pair gradients of the representation pair loss (§3.1).

  L_i = BCE(s · cos(u(Q, x'_i), u(Q, x'_{(i+1) mod S})), l_i), l_i = 1 for a
  same-class pair: softplus(−s cos) for l_i = 1, softplus(s cos) otherwise.

  Args:
    params: the embedding net's slow weights Q (``conv*``, ``fc1``).
    images: [S, H, W, C] support images (pairs of neighbours, cyclically).
    labels: int [S].
    scale: s.

  Returns:
    dict of [S, layer shape] gradients ∇_Q L_i.
  """
  s = images.shape[0]
  partner = (jnp.arange(s) + 1) % s

  def loss(p, x1, x2, same):
    r1, r2 = _bounded(embed(p, None, x1)), _bounded(embed(p, None, x2))
    logit = scale * addressing.cosine_similarity(r1[None], r2)[0]
    return jnp.where(same, jax.nn.softplus(-logit), jax.nn.softplus(logit))

  with jax.named_scope("support_grads"):
    return jax.vmap(jax.grad(loss), in_axes=(None, 0, 0, 0))(
        params, images, images[partner], labels == labels[partner])


def _chunk_means(grads: Params, num_chunks: int) -> Params:
  """∇_t = mean of the per-example gradients of chunk t, t = 1..T.

  The S examples are split into T = min(num_chunks, S) consecutive chunks whose
  sizes differ by at most one.

  Args:
    grads: dict of [S, layer shape] per-example gradients.
    num_chunks: T (at most S are used).

  Returns:
    dict of [T, layer shape] chunk gradients.
  """
  s = next(iter(grads.values())).shape[0]
  t = min(num_chunks, s)
  chunk = (np.arange(s) * t) // s
  avg = np.eye(t, dtype=np.float32)[chunk].T
  avg = jnp.asarray(avg / avg.sum(axis=1, keepdims=True))  # [T, S]: mean over each chunk
  return {n: jnp.tensordot(avg, g, axes=1) for n, g in grads.items()}


# ----------------------------------------------------------------------------
# Preprocessing and the coordinate-wise meta learners m (MLP) and d (LSTM).


def preprocess_gradients(g: jax.Array, k: float = GRADIENT_PREPROCESS_K) -> jax.Array:
  """Gradient preprocessing of Andrychowicz et al. (2016, §3.2).

  g ↦ (log|g| / k, sign(g))   if |g| ≥ e^{−k},
      (−1, e^k · g)           otherwise.

  Both branches are finite with finite derivatives everywhere (log is taken of
  max(|g|, e^{−k}) only), so the result can be differentiated (second order).

  Args:
    g: [...] gradient coordinates.
    k: the constant k (7 in MetaNet).

  Returns:
    [..., 2] preprocessed coordinates.
  """
  a = jnp.abs(g)
  big = a >= np.exp(-k)
  log_part = jnp.where(big, jnp.log(jnp.maximum(a, np.exp(-k))) / k, -1.0)
  sign_part = jnp.where(big, jnp.sign(g), np.exp(k) * g)
  return jnp.stack([log_part, sign_part], axis=-1)


def init_mlp(key: jax.Array, sizes: Sequence[int] = (2, 20, 20, 1),
             out_std: float | None = None) -> dict:
  """LeCun-normal layers (Chainer's default ``Linear``), zero biases.

  Args:
    key: PRNG key.
    sizes: layer widths, input first.
    out_std: std of the output layer's weights (default LeCun, 1/√fan_in).

  Returns:
    ``{"w{i}": [n_in, n_out], "b{i}": [n_out]}``.
  """
  keys = jax.random.split(key, len(sizes) - 1)
  params = {}
  for i, (k, n_in, n_out) in enumerate(zip(keys, sizes[:-1], sizes[1:])):
    std = 1.0 / np.sqrt(n_in)
    if i == len(sizes) - 2 and out_std is not None:
      std = out_std
    params[f"w{i}"] = std * jax.random.normal(k, (n_in, n_out), jnp.float32)
    params[f"b{i}"] = jnp.zeros((n_out,), jnp.float32)
  return params


def mlp_apply(params: dict, x: jax.Array) -> jax.Array:
  """Coordinate-wise MLP m: [..., 2] → [...] (ReLU hidden layers, linear output).

  W*_i = m(Z, ∇_i): x_{l+1} = ReLU(x_l W_l + b_l), the last layer linear.
  """
  n = len(params) // 2
  for i in range(n):
    x = x @ params[f"w{i}"] + params[f"b{i}"]
    if i < n - 1:
      x = jax.nn.relu(x)
  return x[..., 0]


def init_lstm(key: jax.Array, hidden: int = 20, inputs: int = 2,
              out_std: float | None = None) -> dict:
  """LSTM weights (gates i, f, g, o; forget bias 1) and a linear read-out.

  Args:
    key: PRNG key.
    hidden: LSTM units H.
    inputs: input features per coordinate (2 after preprocessing).
    out_std: std of the read-out weights (default LeCun, 1/√hidden).

  Returns:
    ``wx`` [inputs, 4H], ``wh`` [H, 4H], ``b`` [4H], ``w_out`` [H, 1], ``b_out`` [1].
  """
  k1, k2, k3 = jax.random.split(key, 3)
  out_std = 1.0 / np.sqrt(hidden) if out_std is None else out_std
  return {
      "wx": jax.random.normal(k1, (inputs, 4 * hidden), jnp.float32) / np.sqrt(inputs),
      "wh": jax.random.normal(k2, (hidden, 4 * hidden), jnp.float32) / np.sqrt(hidden),
      "b": jnp.zeros((4 * hidden,), jnp.float32).at[hidden:2 * hidden].set(1.0),
      "w_out": out_std * jax.random.normal(k3, (hidden, 1), jnp.float32),
      "b_out": jnp.zeros((1,), jnp.float32),
  }


def lstm_apply(params: dict, xs: jax.Array, *, remat: bool = True) -> jax.Array:
  """Coordinate-wise LSTM d over a sequence of preprocessed gradients.

  i, f, g, o = σ, σ, tanh, σ of (x_t W_x + h_{t−1} W_h + b);
  c_t = f c_{t−1} + i g;  h_t = o tanh(c_t);  output = h_T w_out + b_out.

  Args:
    params: from :func:`init_lstm`.
    xs: [T, P, 2] the T preprocessed chunk gradients of P coordinates.
    remat: recompute each step in the backward pass (``jax.checkpoint``)
      instead of saving its gates.

  Returns:
    [P] the read-out of the last hidden state, one value per coordinate.
  """
  # Feature-major layout: the gates are [4H, P] rows, so the elementwise gate
  # math runs over contiguous coordinates (~25% faster than [P, 4H] on CPU).
  wx, wh, b = params["wx"].T, params["wh"].T, params["b"][:, None]

  def step(carry, x):
    h, c = carry
    z = wx @ x + wh @ h + b
    i, f, g, o = jnp.split(z, 4, axis=0)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (h, c), None

  xs = jnp.moveaxis(xs, -1, 1)  # [T, 2, P]
  # The first step from h_0 = c_0 = 0 on its own: wx x_1 + b, c_1 = i g (the
  # terms with h_0 and c_0 are exactly zero; a fifth of the W_h work saved).
  i, _, g, o = jnp.split(wx @ xs[0] + b, 4, axis=0)
  c = jax.nn.sigmoid(i) * jnp.tanh(g)
  h = jax.nn.sigmoid(o) * jnp.tanh(c)
  if remat:  # keep only the [2H, P] carries for the backward pass
    step = jax.checkpoint(step)
  (h, _), _ = jax.lax.scan(step, (h, c), xs[1:])
  return (params["w_out"].T @ h + params["b_out"][:, None])[0]


# ----------------------------------------------------------------------------
# Tiled application: the same functions, a cache-sized working set.

# Coordinates per tile of :func:`coordinatewise` (measured on the default
# model, 2-core AMD EPYC: the LSTM's [80, tile] gates and the MLP's [tile, 20]
# activations stay in L2/L3; 2–4× faster than one pass over all coordinates).
LSTM_TILE = 2048
MLP_TILE = 8192


def coordinatewise(fn: Callable, params, x: jax.Array, tile: int) -> jax.Array:
  """``fn`` applied to ``x`` tile by tile along its first axis, gradients by recomputation.

  For a coordinate-wise net (one output per coordinate, weights shared by
  all coordinates) this is exactly ``fn(params, x)``: the forward pass maps
  ``fn`` over tiles of ``tile`` coordinates (the last tile zero-padded, its
  padding dropped), and the backward pass (a ``custom_vjp``) recomputes each
  tile and takes its VJP there, summing the weights' gradients over the
  tiles. Every intermediate of a tile (the LSTM's [4H, tile] gates, the MLP's
  [tile, 20] activations) then stays in cache, where one pass over all P
  coordinates writes and re-reads arrays of hundreds of MB: the meta learners
  were memory-bound. Nothing is saved for the backward pass but the inputs.
  The weights' gradients are float32 sums in another order (~1e-5 relative
  to the one-pass sums; both are within that of a float64 sum, see the tests).

  Args:
    fn: ``(params, x [tile, ...]) -> [tile]``, coordinate-wise.
    params: the net's weights (a pytree).
    x: [P, ...] inputs, coordinates first.
    tile: coordinates per tile (> 0).

  Returns:
    [P] outputs, ``fn(params, x)``.
  """
  p = x.shape[0]
  tile = max(1, min(int(tile), p))
  nt = -(-p // tile)

  def tiles(a):
    a = jnp.pad(a, [(0, nt * tile - p)] + [(0, 0)] * (a.ndim - 1))
    return a.reshape(nt, tile, *a.shape[1:])

  @jax.custom_vjp
  def run(params, x):
    return jax.lax.map(lambda xb: fn(params, xb), tiles(x)).reshape(-1)[:p]

  def run_fwd(params, x):
    return run(params, x), (params, x)

  def run_bwd(res, g):
    params, x = res

    def tile_vjp(acc, xg):
      _, vjp = jax.vjp(fn, params, xg[0])
      dp, dx = vjp(xg[1])
      return jax.tree.map(jnp.add, acc, dp), dx

    dp, dx = jax.lax.scan(tile_vjp, jax.tree.map(jnp.zeros_like, params), (tiles(x), tiles(g)))
    return dp, dx.reshape(nt * tile, *x.shape[1:])[:p]

  run.defvjp(run_fwd, run_bwd)
  return run(params, x)


def lstm_apply_tiled(params: dict, xs: jax.Array, *, tile: int = LSTM_TILE) -> jax.Array:
  """:func:`lstm_apply` through :func:`coordinatewise` (the same values and gradients).

  Args:
    params: from :func:`init_lstm`.
    xs: [T, P, 2] the T preprocessed chunk gradients of P coordinates.
    tile: coordinates per tile.

  Returns:
    [P] d's outputs.
  """
  def on_tile(p, xb):  # xb [tile, T, 2]
    return lstm_apply(p, jnp.moveaxis(xb, 0, 1), remat=False)

  return coordinatewise(on_tile, params, jnp.moveaxis(xs, 1, 0), tile)


def mlp_apply_tiled(params: dict, x: jax.Array, *, tile: int = MLP_TILE) -> jax.Array:
  """:func:`mlp_apply` through :func:`coordinatewise` (the same values and gradients).

  Args:
    params: from :func:`init_mlp`.
    x: [..., 2] preprocessed gradient coordinates (any leading axes, e.g.
      [S, P, 2] for the S support examples).
    tile: coordinates per tile.

  Returns:
    [...] m's outputs.
  """
  return coordinatewise(mlp_apply, params, x.reshape(-1, x.shape[-1]), tile).reshape(x.shape[:-1])


# ----------------------------------------------------------------------------
# Fast-weight generation.


def _layer_groups(names: Sequence[str], fast_layers: str) -> dict[str, list[str]]:
  """Which layers get fast weights, by meta-net group ('conv' / 'fc')."""
  groups = {"fc": [n for n in names if n.startswith("fc")]}
  if fast_layers == "all":
    groups["conv"] = [n for n in names if n.startswith("conv")]
  return {g: sorted(v) for g, v in groups.items() if v}


def _meta_out_std(group: str, conv_std: float = _CONV_META_OUT_STD) -> float | None:
  """Output-layer init std of a meta learner's net for ``group`` (None: LeCun)."""
  return conv_std if group == "conv" else None


def meta_out_lr_scale(meta_hidden: int = 20, out_std: float = _CONV_META_OUT_STD) -> float:
  """out_std / (1/√meta_hidden): the step scale of a conv meta net's read-out
  (init std ``out_std``) that matches the authors' relative step (see the
  note on ``_CONV_META_OUT_STD``)."""
  return out_std * float(np.sqrt(meta_hidden))


def read_out_names(net: Params) -> tuple[str, str]:
  """The names of a meta learner's read-out weight and bias: ``('w_out', 'b_out')``
  for an LSTM (d), ``('w{L}', 'b{L}')`` for an MLP (m) of layers 0..L."""
  if "w_out" in net:
    return "w_out", "b_out"
  last = max(int(k[1:]) for k in net if k[0] == "w" and k[1:].isdigit())
  return f"w{last}", f"b{last}"


def meta_out_mask(params, group: str = "conv"):
  """True on the read-out layer of every meta learner's ``group`` net, else False.

  The read-out is an MLP's last ``w{i}``/``b{i}`` (m) or an LSTM's
  ``w_out``/``b_out`` (d), in ``params["params"]["meta_example" | "meta_task"][group]``;
  for ``optax.masked`` (e.g. ``optax.masked(optax.scale(meta_out_lr_scale()), meta_out_mask)``).

  Args:
    params: a MetaNet's variables (``{"params": {...}}``).
    group: ``'conv'`` or ``'fc'``.

  Returns:
    a pytree of bools with the structure of ``params``.
  """
  def read_out(path, _) -> bool:
    keys = [getattr(k, "key", None) for k in path]
    if len(keys) != 4 or keys[1] not in ("meta_example", "meta_task") or keys[2] != group:
      return False
    return keys[3] in read_out_names(params[keys[0]][keys[1]][group])
  return jax.tree_util.tree_map_with_path(read_out, params)


def generate_fast_weights(nets: dict, grads: Params, groups: dict[str, list[str]],
                          apply_fn: Callable, *, lead: int = 0, batch: int = 0) -> Params:
  """Fast weights for the layers of ``groups`` from one gradient pytree.

  W*_i = m(Z, ∇_i) (``mlp_apply_tiled``, ``batch=1`` over the S support
  examples) or Q* = d(G, ∇_1..∇_T) (``lstm_apply_tiled``, ``lead=1``). For
  each group: flatten the group's gradients to [*batch axes, *lead axes, P],
  preprocess to [..., P, 2], apply the group's coordinate-wise net (which
  consumes the lead axes) and split its [*batch axes, P] outputs back into the
  layers: the fast weights are the net's raw outputs (the authors' code).

  Args:
    nets: one meta-net per group (``{"conv": ..., "fc": ...}``).
    grads: dict of [*batch axes, *lead axes, layer shape] gradients.
    groups: layer names per group (:func:`_layer_groups`).
    apply_fn: ``(net, [*batch axes, *lead axes, P, 2]) -> [*batch axes, P]``.
    lead: leading axes (after the batch axes) that ``apply_fn`` consumes.
    batch: leading axes kept: one set of fast weights per index.

  Returns:
    dict of [*batch axes, layer shape] fast weights.
  """
  fast = {}
  for group, names in groups.items():
    outer = grads[names[0]].shape[:batch]
    shapes = [grads[n].shape[batch + lead:] for n in names]
    flat = jnp.concatenate([grads[n].reshape(*grads[n].shape[:batch + lead], -1) for n in names],
                           axis=-1)
    out = apply_fn(nets[group], preprocess_gradients(flat))  # [*batch axes, P]
    ends = np.cumsum([int(np.prod(s)) for s in shapes])
    for n, shape, part in zip(names, shapes, jnp.split(out, ends[:-1], axis=-1)):
      fast[n] = part.reshape(*outer, *shape)
  return fast
