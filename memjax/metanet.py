"""Meta Networks (Munkhdalai & Yu 2017, ICML, arXiv:1703.00837) as a Flax module.

MetaNet classifies the queries of one N-way episode from its labelled support
set. It has four parts, each written here as a pure function of an explicit
parameter pytree, so that meta information can be computed with ``jax.grad``
inside the forward pass:

* the embedding function u (the paper's dynamic representation learning
  function): a conv net with slow weights Q and task-level fast weights Q*;
* the base learner b: a conv net with slow weights W and example-level fast
  weights W*_i, one set per support example;
* the meta learner d (slow weights G), a coordinate-wise LSTM that turns the
  embedding loss gradients of the support set into Q*;
* the meta learner m (slow weights Z), a coordinate-wise MLP 2→20→20→1 that
  turns each support example's base-learner loss gradient into W*_i.

One forward pass (the paper's Algorithm 1, one-shot supervised learning)::

  for chunk t = 1..T of the support set:                        (meta info of u)
    ∇_t = ∇_Q L_emb(u(Q, ·), chunk t)
  Q* = d(G, ∇_1..∇_T)                                            (task-level)
  for every support example i:                                  (meta info of b)
    ∇_i = ∇_W L_task(b(W, x'_i), y'_i)
    W*_i = m(Z, ∇_i);  M[i] = W*_i                               (value memory)
    r'_i = u(Q, Q*, x'_i);  R[i] = r'_i                          (key memory)
  for every query x:
    r = u(Q, Q*, x)
    a = softmax_i cos(R[i], r)                                   (attention)
    W* = Σ_i a_i M[i]                                            (retrieval)
    logits = b(W, W*, x)
  loss = Σ_queries L_task(logits, y)

Gradients are fed to d and m preprocessed as in Andrychowicz et al. (2016),
k = 7 (:func:`preprocess_gradients`), coordinate-wise: every parameter is
one "example" of the small meta nets, with weights shared across coordinates
(one net for the conv kernels and one for the FC matrices, as in the authors'
code). Per-example gradients are ``jax.vmap(jax.grad(loss))`` over the
support set — no Python loop over examples.

Layer augmentation (§3.3): every layer outputs ReLU(slow branch) + ReLU(fast
branch); the logits layer outputs slow + fast, and so does the embedding's
representation layer (FC-64, linear as in the authors' code, so that cosine
similarities can be negative).

First order by default: the meta information (the gradients) is put under
``jax.lax.stop_gradient``, as in the paper, so training does not differentiate
through ``jax.grad``; ``second_order=True`` differentiates through it
(Hessian-vector products).

Choices where the paper leaves room, or where this differs (the defaults follow
the authors' Omniglot model — 28×28×1 inputs, 5 conv blocks of 64 3×3 filters,
ReLU and 2×2 max-pooling, then FC 64 and FC N, no biases — with fast weights on
*all* layers of both nets, as the authors' "MetaNetFull"):

* Representation loss (``embedding_loss``). ``'auto'`` (default) is the
  paper's choice (§3.1) and the authors' code: when the support set has one
  example per class (S = N, 1-shot) it is ``'cross_entropy'``, the softmax
  cross-entropy of the embedding net's own FC-N classifier head on
  ReLU(u(Q, x'_i)); otherwise ``'contrastive'``. ``'contrastive'`` is the
  paper's pair loss L_i = loss_emb(u(Q, x'_{1,i}), u(Q, x'_{2,i}), l_i),
  l_i = 1 for a same-class pair: the pairs are (x'_i, x'_{(i+1) mod S}) of the
  (shuffled) support set, and loss_emb is binary cross-entropy on
  s · cos(r_1, r_2), s = ``contrastive_scale`` (in 1-shot episodes every pair
  is a negative pair).
* Chunks. The support pairs (or examples) are split into T = ``num_chunks``
  consecutive chunks (T = 5 as in the authors' code, at most S); ∇_t is the
  gradient of the chunk's mean loss; d runs over ∇_1..∇_T and Q* is its output
  at the last step.
* Scale of the fast weights. The fast weights are the meta learners' raw
  outputs, W*_i = m(∇_i) and Q* = d(∇_1..∇_T), as in the authors' code (no
  per-layer rescaling). The output layers of m and d that emit FC fast weights
  start as Chainer's default ``Linear`` (LeCun normal, std 1/√20), as the
  authors'; those that emit conv fast weights start small
  (std ``_CONV_META_OUT_STD`` = 1e-3): a coordinate-wise net maps the many
  near-zero gradient coordinates of a kernel to nearly the same value c, and a
  3×3×64 kernel of constant c multiplies a non-negative input by ~576 c per
  layer, so with Chainer's init the five blocks' activations explode at the
  start of training (logits ×300 at initialisation, measured). At
  initialisation the fast part of the logits then spreads over the classes
  about as much as the slow part (tested), instead of ~1000× less.
* N-way training, K-way testing (§4.2.1, Table 4; ``fast_only_output``). With
  ``fast_only_output=True`` the base learner's softmax layer is parameterised
  by fast weights only: logits = h W*_{fc2}, and any slow ``fc2`` weights in the
  variables are ignored, so a model trained on N-way episodes is applied to
  K-way episodes by building it with ``num_classes=K``. The meta information
  of that layer is its support-loss gradient at its slow weights, which are
  zero: ∇_i = h_i ⊗ (softmax(0) − e_{y'_i}) = h_i ⊗ (1/K − e_{y'_i}). Through a
  zero layer the layers below would get zero gradients, so their meta
  information is taken with the layer set to V = Σ_i h_i ⊗ (e_{y'_i} − 1/K)
  (one gradient step from zero on the support set's summed loss, under
  stop_gradient); the embedding net's cross-entropy head (used only by the
  representation loss) is replaced by the same V of its own features.
* ``fast_layers='fc'`` restricts fast weights to the FC layers of both nets.
  Measured on 2 shared CPU cores, one 5-way episode (50 queries) per update
  takes ~5–6 s with ``'all'`` and ~1.2 s with ``'fc'``; with ``'all'`` about
  40% of it is d, the LSTM over the embedding net's 148k conv coordinates.
* A query's retrieved conv fast weights are never materialised per query
  (:class:`MixedWeights`): XLA turns per-example kernels into grouped
  convolutions, whose gradient is ~20× slower on CPU.
* With ``use_example_fast_weights=False`` the base learner has no route to the
  support set, and its output is the slow network's: the embedding net (and
  its task-level fast weights) then does not affect the logits.

Example::

  model = MetaNet(num_classes=5)
  params = model.init(key, support, support_labels, query)
  logits = model.apply(params, support, support_labels, query)   # [Q, 5]
  # the 5-way-trained variables on a 20-way episode (fast-only softmax layer)
  MetaNet(num_classes=20, fast_only_output=True).apply(params, s20, l20, q20)  # [Q, 20]
  # a batch of episodes: vmap at the call site
  jax.vmap(model.apply, in_axes=(None, 0, 0, 0))(params, S, SL, QX)
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Sequence

import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from memjax import addressing

__all__ = [
    "EMBEDDING_LOSSES",
    "FAST_LAYERS",
    "GRADIENT_PREPROCESS_K",
    "MetaNet",
    "MixedWeights",
    "conv_features",
    "embed",
    "init_conv_net",
    "init_lstm",
    "init_mlp",
    "lstm_apply",
    "mlp_apply",
    "net_logit_parts",
    "net_logits",
    "net_shapes",
    "preprocess_gradients",
    "retrieve",
]

GRADIENT_PREPROCESS_K = 7.0
EMBEDDING_LOSSES = ("auto", "contrastive", "cross_entropy")
FAST_LAYERS = ("all", "fc")
# Std at initialisation of the output layer of the meta learners' 'conv' nets
# (the FC nets' start as Chainer's default Linear, std 1/sqrt(fan_in), as the
# authors'). The fast weights are the raw outputs (see the module docstring).
# Measured on the default 5-way model at initialisation (Omniglot support set),
# the spread of the slow part of the logits over the classes for this std
# 0.1 / 0.01 / 1e-3 / 3e-4: 190 / 11.1 / 7.9 / 7.8 (the plain slow network:
# 0.62; the remaining ×12 comes from the FC fast weights): from ~1e-3 down the
# conv fast weights no longer blow the activations up.
_CONV_META_OUT_STD = 1e-3

Params = dict[str, jax.Array]


# ----------------------------------------------------------------------------
# Meta information preprocessing.


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


# ----------------------------------------------------------------------------
# The conv nets u and b as pure functions of their parameters.


def _pooled(n: int) -> int:
  """Side after a 2×2, stride-2, 'SAME' max-pool; pooling stops at size 1."""
  return n if n == 1 else -(-n // 2)


def _fan_in(name: str, shape: Sequence[int]) -> int:
  return int(np.prod(shape[:-1]))


def _he_scale(name: str, shape: Sequence[int]) -> float:
  """sqrt(2 / fan_in) for ReLU layers, sqrt(1 / fan_in) for the output layer."""
  return float(np.sqrt((1.0 if name == "fc2" else 2.0) / _fan_in(name, shape)))


def net_shapes(image_shape: Sequence[int], filters: int, num_blocks: int, hidden: int,
               num_outputs: int | None) -> dict[str, tuple[int, ...]]:
  """Parameter shapes of a conv net (conv{b} [3, 3, C_in, F], fc1 [D, hidden],
  fc2 [hidden, num_outputs]; no biases, as the authors' code)."""
  h, w, c = image_shape
  shapes = {}
  for b in range(num_blocks):
    shapes[f"conv{b}"] = (3, 3, c if b == 0 else filters, filters)
    h, w = _pooled(h), _pooled(w)
  shapes["fc1"] = (h * w * (filters if num_blocks else c), hidden)
  if num_outputs is not None:
    shapes["fc2"] = (hidden, num_outputs)
  return shapes


def init_conv_net(key: jax.Array, shapes: dict[str, tuple[int, ...]]) -> Params:
  """He-normal kernels (LeCun-normal for the logits layer fc2)."""
  keys = jax.random.split(key, len(shapes))
  return {name: _he_scale(name, shape) * jax.random.normal(k, shape, jnp.float32)
          for k, (name, shape) in zip(keys, sorted(shapes.items()))}


def _conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """3×3 'SAME' convolution of one image x [H, W, C] with kernel [3, 3, C, F]."""
  return jax.lax.conv_general_dilated(x[None], kernel, (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))[0]


class MixedWeights(NamedTuple):
  """The retrieved fast weights Σ_i a_i values[i] of one layer, kept unmixed.

  A query's fast weights are a convex combination of the S support examples'
  fast weights. Materialising them per query and running a conv makes every
  query's conv use its own kernel, which XLA lowers (under vmap) to a grouped
  convolution — on CPU ~20× slower than a dense one, its gradient far more.
  A conv layer therefore applies them as an im2col matmul: the query's 3×3
  patches (built by slicing, no convolution) times its mixed kernel, one
  batched matmul over the queries (exact; also cheaper than one dense conv
  with the S kernels stacked along the output channels, which costs S times
  the FLOPs).

  Attributes:
    values: [S, *layer shape] the support examples' fast weights (memory M).
    weights: [S] attention a (softmax of cosine similarities).
  """
  values: jax.Array
  weights: jax.Array

  def mix(self) -> jax.Array:
    return jnp.tensordot(self.weights, self.values, axes=1)


def _patches(x: jax.Array, kh: int, kw: int) -> jax.Array:
  """'SAME' stride-1 patches of x [H, W, C] → [H·W, kh·kw·C], in HWIO kernel order."""
  h, w, _ = x.shape
  top, left = (kh - 1) // 2, (kw - 1) // 2
  xp = jnp.pad(x, ((top, kh - 1 - top), (left, kw - 1 - left), (0, 0)))
  cols = [xp[i:i + h, j:j + w] for i in range(kh) for j in range(kw)]
  return jnp.stack(cols, axis=2).reshape(h * w, -1)


def _conv_any(x: jax.Array, kernel) -> jax.Array:
  """:func:`_conv` with a plain kernel or a :class:`MixedWeights` one."""
  if not isinstance(kernel, MixedWeights):
    return _conv(x, kernel)
  _, kh, kw, c, f = kernel.values.shape
  y = _patches(x, kh, kw) @ kernel.mix().reshape(kh * kw * c, f)
  return y.reshape(*x.shape[:2], f)


def _max_pool(x: jax.Array) -> jax.Array:
  """2×2 stride-2 'SAME' max-pool of x [H, W, F]; an axis of size 1 is kept."""
  h, w, _ = x.shape
  window = (min(h, 2), min(w, 2), 1)
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, window, "SAME")


def _augmented(slow_out: jax.Array, fast_out: jax.Array | None) -> jax.Array:
  """Layer augmentation (§3.3): ReLU(slow) + ReLU(fast)."""
  y = jax.nn.relu(slow_out)
  return y if fast_out is None else y + jax.nn.relu(fast_out)


def _fast(fast: Params | None, name: str) -> jax.Array | None:
  return None if fast is None else fast.get(name)


def conv_features(slow: Params, fast: Params | None, x: jax.Array) -> jax.Array:
  """The conv blocks of u or b on one image, flattened.

  h_b = maxpool(ReLU(conv(h_{b−1}, slow_b)) + ReLU(conv(h_{b−1}, fast_b))).

  Args:
    slow: slow weights (``conv0``..``conv{B−1}``, ...).
    fast: fast weights for any subset of the layers (same shapes, or
      :class:`MixedWeights`), or None.
    x: [H, W, C] image.

  Returns:
    [D] features (D = fc1's fan-in).
  """
  h = x
  b = 0
  while f"conv{b}" in slow:
    name = f"conv{b}"
    fw = _fast(fast, name)
    h = _max_pool(_augmented(_conv(h, slow[name]), None if fw is None else _conv_any(h, fw)))
    b += 1
  return h.reshape(-1)


def _linear(h: jax.Array, slow: Params, fast: Params | None, name: str) -> tuple:
  """(h W, h W*) of a linear layer; None for a missing slow or fast weight."""
  fw = _fast(fast, name)
  if isinstance(fw, MixedWeights):
    fw = fw.mix()
  return (h @ slow[name] if name in slow else None), (None if fw is None else h @ fw)


def net_logit_parts(slow: Params, fast: Params | None, x: jax.Array) -> tuple:
  """The slow and the fast part of b's logits: (h W_2, h W*_2), either None if absent."""
  h = _augmented(*_linear(conv_features(slow, fast, x), slow, fast, "fc1"))
  return _linear(h, slow, fast, "fc2")


def net_logits(slow: Params, fast: Params | None, x: jax.Array) -> jax.Array:
  """The base learner b(W, W*, x) on one image.

  h = ReLU(f W_1) + ReLU(f W*_1);  logits = h W_2 + h W*_2,  f = conv_features.
  Without a slow ``fc2`` (a softmax layer of fast weights only) logits = h W*_2.

  Args:
    slow: slow weights with ``fc1`` (and ``fc2`` unless ``fast`` has it).
    fast: fast weights for any subset of the layers, or None.
    x: [H, W, C] image.

  Returns:
    [N] logits.
  """
  s, f = net_logit_parts(slow, fast, x)
  if s is None and f is None:
    raise ValueError("argument `slow`: expected an `fc2` layer in the slow or the fast weights")
  return s if f is None else (f if s is None else s + f)


def _hidden(slow: Params, x: jax.Array) -> jax.Array:
  """ReLU(f W_1), the features entering b's softmax layer (slow weights only)."""
  return jax.nn.relu(conv_features(slow, None, x) @ slow["fc1"])


def _embedding_hidden(slow: Params, x: jax.Array) -> jax.Array:
  """ReLU(u(Q, x)), the features entering the embedding net's classifier head."""
  return jax.nn.relu(embed(slow, None, x))


def embed(slow: Params, fast: Params | None, x: jax.Array) -> jax.Array:
  """The representation u(Q, Q*, x) of one image: r = f Q_1 + f Q*_1 (linear).

  Args:
    slow: slow weights Q (``conv*``, ``fc1``).
    fast: task-level fast weights Q* for any subset of the layers, or None.
    x: [H, W, C] image.

  Returns:
    [hidden] representation (a memory key).
  """
  s, f = _linear(conv_features(slow, fast, x), slow, fast, "fc1")
  return s if f is None else s + f


def _bounded(r: jax.Array) -> jax.Array:
  """r / max(1, max_i |r_i|), the divisor under stop_gradient.

  Cosine similarity is scale-invariant and its gradient homogeneous, so values
  and (first- and second-order) gradients are unchanged up to rounding; but
  ‖r‖² no longer overflows float32 when the representation is huge (≳1e19),
  which otherwise turns second-order gradients into inf/inf = NaN.
  """
  return r / jax.lax.stop_gradient(jnp.maximum(1.0, jnp.max(jnp.abs(r))))


def _cross_entropy(logits: jax.Array, label: jax.Array) -> jax.Array:
  return -jax.nn.log_softmax(logits)[label]


# ----------------------------------------------------------------------------
# The coordinate-wise meta learners m (MLP) and d (LSTM).


def init_mlp(key: jax.Array, sizes: Sequence[int] = (2, 20, 20, 1),
             out_std: float | None = None) -> dict:
  """LeCun-normal layers (Chainer's default ``Linear``), zero biases.

  Args:
    key: PRNG key.
    sizes: layer widths, input first.
    out_std: std of the output layer's weights (default LeCun, 1/√fan_in).
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
  """Coordinate-wise MLP m: [..., 2] → [...] (ReLU hidden layers, linear output)."""
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
    hidden: LSTM units.
    inputs: input features per coordinate (2 after preprocessing).
    out_std: std of the read-out weights (default LeCun, 1/√hidden).
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

  Returns:
    [P] the read-out of the last hidden state, one value per coordinate.
  """
  hidden = params["wh"].shape[0]
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

  if remat:  # keep only the [2H, P] carries for the backward pass
    step = jax.checkpoint(step)
  zeros = jnp.zeros((hidden, xs.shape[1]), xs.dtype)
  (h, _), _ = jax.lax.scan(step, (zeros, zeros), jnp.moveaxis(xs, -1, 1))  # xs: [T, 2, P]
  return (params["w_out"].T @ h + params["b_out"][:, None])[0]


def _layer_groups(names: Sequence[str], fast_layers: str) -> dict[str, list[str]]:
  """Which layers get fast weights, by meta-net group ('conv' / 'fc')."""
  groups = {"fc": [n for n in names if n.startswith("fc")]}
  if fast_layers == "all":
    groups["conv"] = [n for n in names if n.startswith("conv")]
  return {g: sorted(v) for g, v in groups.items() if v}


def _meta_out_std(group: str) -> float | None:
  """Output-layer init std of a meta learner's net for ``group`` (None: LeCun)."""
  return _CONV_META_OUT_STD if group == "conv" else None


def _generate(nets: dict, grads: Params, groups: dict[str, list[str]], apply_fn) -> Params:
  """Fast weights for the layers of ``groups`` from one gradient pytree.

  For each group: ravel the group's gradients to [P] (with any leading axes
  handled by the caller), preprocess to [P, 2], apply the group's
  coordinate-wise net and unravel: the fast weights are the net's raw outputs
  (W* = m(∇), the authors' code).
  """
  fast = {}
  for group, names in groups.items():
    flat, unravel = ravel_pytree({n: grads[n] for n in names})
    fast.update(unravel(apply_fn(nets[group], preprocess_gradients(flat))))
  return fast


def _imprinted_head(h: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
  """V = Σ_i h_i ⊗ (e_{y_i} − 1/K) = −Σ_i ∇_V CE(h_i V, y_i) at V = 0.

  The stand-in for a softmax layer without slow weights when the support loss
  of the layers below it is differentiated (see the module docstring).

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
    return _support_grads_unscoped(params, features, images, labels, num_classes, fast_only)


def _support_grads_unscoped(params, features, images, labels, num_classes, fast_only):
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


def retrieve(keys: jax.Array, values: Any, query: jax.Array) -> tuple[jax.Array, Any]:
  """Reads a query's fast weights from the example-level memory (§3.2).

  a_i = softmax_i cos(R[i], r);   W* = Σ_i a_i M[i].

  Args:
    keys: [S, D] key memory R (support representations).
    values: pytree of [S, ...] value memory M (support fast weights).
    query: [D] the query representation r.

  Returns:
    (a [S] attention weights, pytree of [...] retrieved fast weights).
  """
  a = jax.nn.softmax(addressing.cosine_similarity(keys, query))
  return a, jax.tree.map(lambda v: jnp.tensordot(a, v, axes=1), values)


# Jitted initialisers for the module: un-jitted, every random draw of a new
# shape is compiled on its own, which makes ``init`` take seconds.
@functools.partial(jax.jit, static_argnums=1)
def _init_net_jit(key, shape_items):
  return init_conv_net(key, dict(shape_items))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _init_mlps_jit(key, groups, sizes):
  return {g: init_mlp(k, sizes, _meta_out_std(g))
          for g, k in zip(groups, jax.random.split(key, len(groups)))}


@functools.partial(jax.jit, static_argnums=(1, 2))
def _init_lstms_jit(key, groups, hidden):
  return {g: init_lstm(k, hidden, out_std=_meta_out_std(g))
          for g, k in zip(groups, jax.random.split(key, len(groups)))}


# ----------------------------------------------------------------------------
# The Flax module.


class MetaNet(nn.Module):
  """Meta Networks for N-way classification of one episode.

  ``apply(params, support_images [S, H, W, C], support_labels [S] int,
  query_images [Q, H, W, C]) -> logits [Q, N]``; vmap at the call site for a
  batch of episodes. ``init`` checks the arguments and creates the parameters
  without running the forward pass (``init_with_output`` returns zeros).

  Attributes:
    num_classes: N, classes per episode (labels 0..N−1).
    image_shape: (H, W, C) of the images (28×28×1 in the paper).
    filters: conv filters per block (64).
    num_blocks: conv blocks (5); pooling stops once the spatial size is 1.
    hidden: width of the FC layer after the conv blocks (64); also the
      representation (key) size.
    meta_hidden: hidden units of m (2→h→h→1) and of d's LSTM (20).
    num_chunks: T, support chunks that d runs over (5; at most S are used).
    embedding_loss: the representation loss: ``'auto'`` (``'cross_entropy'``
      when S = N, one support example per class, as the paper's §3.1 and the
      authors' code; else ``'contrastive'``), ``'cross_entropy'`` (the
      embedding net's FC-N head) or ``'contrastive'`` (the pair loss); see the
      module docs and :meth:`representation_loss`.
    contrastive_scale: s in the pair loss BCE(s · cos(r_1, r_2), l).
    fast_layers: ``'all'`` (every layer of both nets, the default) or ``'fc'``.
    use_task_fast_weights: generate Q* for the embedding net u.
    use_example_fast_weights: generate W*_i and retrieve them for the queries.
    second_order: differentiate through the meta information.
    fast_only_output: the base learner's softmax layer has fast weights only
      (no slow ``fc2``; slow ``fc2`` weights in the variables are ignored), and
      the embedding net's head is replaced likewise, so that variables trained
      on N-way episodes classify K-way ones with ``num_classes=K`` (§4.2.1,
      Table 4); see the module docs.
  """
  num_classes: int
  image_shape: tuple[int, int, int] = (28, 28, 1)
  filters: int = 64
  num_blocks: int = 5
  hidden: int = 64
  meta_hidden: int = 20
  num_chunks: int = 5
  embedding_loss: str = "auto"
  contrastive_scale: float = 5.0
  fast_layers: str = "all"
  use_task_fast_weights: bool = True
  use_example_fast_weights: bool = True
  second_order: bool = False
  fast_only_output: bool = False

  def setup(self):
    for name in ("num_classes", "filters", "num_blocks", "hidden", "meta_hidden", "num_chunks"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (
          0 if name == "num_blocks" else 1):
        raise ValueError(f"argument `{name}`: expected a positive int, got {value!r}")
    shape = tuple(self.image_shape)
    if len(shape) != 3 or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1
                              for s in shape):
      raise ValueError(f"argument `image_shape`: expected (H, W, C) positive ints, got "
                       f"{self.image_shape!r}")
    if self.embedding_loss not in EMBEDDING_LOSSES:
      raise ValueError(f"argument `embedding_loss`: expected one of {EMBEDDING_LOSSES}, got "
                       f"{self.embedding_loss!r}")
    if self.fast_layers not in FAST_LAYERS:
      raise ValueError(f"argument `fast_layers`: expected one of {FAST_LAYERS}, got "
                       f"{self.fast_layers!r}")
    if self.fast_only_output and not self.use_example_fast_weights:
      raise ValueError("argument `fast_only_output`: a softmax layer of fast weights only needs "
                       "use_example_fast_weights=True")
    base_shapes = net_shapes(shape, self.filters, self.num_blocks, self.hidden, self.num_classes)
    self._groups_base = _layer_groups(list(base_shapes), self.fast_layers)
    if self.fast_only_output:
      del base_shapes["fc2"]
    self.base = self._net_param("base", base_shapes)
    if self.use_example_fast_weights:
      head = self.embedding_loss != "contrastive" and not self.fast_only_output
      emb_shapes = net_shapes(shape, self.filters, self.num_blocks, self.hidden,
                              self.num_classes if head else None)
      self.embedding = self._net_param("embedding", emb_shapes)
      sizes = (2, self.meta_hidden, self.meta_hidden, 1)
      self.meta_example = self.param(
          "meta_example", lambda k: _init_mlps_jit(k, tuple(self._groups_base), sizes))
      if self.use_task_fast_weights:
        # The FC-N head serves only the representation loss: no fast weights.
        self._groups_emb = _layer_groups([n for n in emb_shapes if n != "fc2"], self.fast_layers)
        self.meta_task = self.param(
            "meta_task", lambda k: _init_lstms_jit(k, tuple(self._groups_emb), self.meta_hidden))

  def _net_param(self, name: str, shapes: dict[str, tuple[int, ...]]) -> Params:
    try:
      return self.param(name, lambda k: _init_net_jit(k, tuple(shapes.items())))
    except flax.errors.ScopeParamShapeError as e:
      if "fc2" not in shapes:
        raise
      raise ValueError(
          f"argument `num_classes`: the variables' `{name}` does not fit a {self.num_classes}-way "
          f"model (its softmax layer `fc2` should be {list(shapes['fc2'])}); to classify "
          f"{self.num_classes}-way episodes with variables trained on another N, build the model "
          f"with fast_only_output=True (a softmax layer of fast weights only). {e}") from None

  def init_params(self) -> None:
    """Touches every parameter (``model.init(key, method=MetaNet.init_params)``
    creates them all without any input)."""
    for name in ("base", "embedding", "meta_example", "meta_task"):
      if hasattr(self, name):
        getattr(self, name)

  def representation_loss(self, num_support: int) -> str:
    """``'cross_entropy'`` or ``'contrastive'``: the representation loss for a
    support set of ``num_support`` examples (``embedding_loss='auto'``:
    cross-entropy when num_support = N, one example per class)."""
    if self.embedding_loss != "auto":
      return self.embedding_loss
    return "cross_entropy" if num_support == self.num_classes else "contrastive"

  # -- argument checks -------------------------------------------------------

  def _check_images(self, name: str, x) -> jax.Array:
    shape = getattr(x, "shape", None)
    dtype = getattr(x, "dtype", None)
    if shape is None or dtype is None:
      raise ValueError(f"argument `{name}`: expected an array [*, H, W, C], got {type(x).__name__}")
    if not jnp.issubdtype(dtype, jnp.floating):
      raise ValueError(f"argument `{name}`: expected a floating-point array, got dtype {dtype}")
    want = tuple(self.image_shape)
    if len(shape) != 4 or tuple(shape[1:]) != want or shape[0] < 1:
      raise ValueError(f"argument `{name}`: expected shape [n >= 1, {want[0]}, {want[1]}, "
                       f"{want[2]}] (one episode; vmap over episodes), got {list(shape)}")
    return x

  def _check_support(self, images, labels) -> tuple[jax.Array, jax.Array]:
    images = self._check_images("support_images", images)
    shape = getattr(labels, "shape", None)
    dtype = getattr(labels, "dtype", None)
    if shape is None or dtype is None or not jnp.issubdtype(dtype, jnp.integer):
      raise ValueError(f"argument `support_labels`: expected an int array [S], got "
                       f"{getattr(dtype, 'name', type(labels).__name__)}")
    if tuple(shape) != (images.shape[0],):
      raise ValueError(f"argument `support_labels`: expected shape [{images.shape[0]}] (one label "
                       f"per support image), got {list(shape)}")
    return images, labels

  def _slow(self, name: str, head: bool) -> Params:
    """The slow weights of ``'base'`` or ``'embedding'``; their softmax layer
    ``fc2`` checked against N when ``head`` (and dropped when fast-only)."""
    params = getattr(self, name)
    if self.fast_only_output:
      return {n: v for n, v in params.items() if n != "fc2"}
    if head:
      if "fc2" not in params:
        raise ValueError(f"argument `fast_only_output`: the variables have no slow `{name}/fc2` "
                         f"(trained with fast_only_output=True); build the module with it")
      k = params["fc2"].shape[-1]
      if k != self.num_classes:
        raise ValueError(f"argument `num_classes`: the variables' softmax layer `{name}/fc2` has "
                         f"{k} outputs, the module {self.num_classes}; build it with "
                         f"fast_only_output=True to classify {self.num_classes}-way episodes "
                         f"with {k}-way-trained variables")
    return params

  # -- the meta learners -------------------------------------------------------

  def _meta_info(self, grads):
    return grads if self.second_order else jax.lax.stop_gradient(grads)

  def task_fast_weights(self, support_images: jax.Array, support_labels: jax.Array) -> Params:
    """Q* = d(G, {∇_t}_{t=1}^T), ∇_t = ∇_Q (mean representation loss of chunk t).

    Args:
      support_images: [S, H, W, C].
      support_labels: int [S].

    Returns:
      Task-level fast weights: a dict of [layer shape] arrays for the
      embedding layers that get fast weights (raw outputs of d).
    """
    sx, sy = self._check_support(support_images, support_labels)
    if not (self.use_task_fast_weights and self.use_example_fast_weights):
      raise ValueError("task_fast_weights needs use_task_fast_weights=True and "
                       "use_example_fast_weights=True")
    s = sx.shape[0]
    if self.representation_loss(s) == "contrastive":
      q = self._slow("embedding", head=False)
      partner = (jnp.arange(s) + 1) % s

      def loss(params, x1, x2, same):
        r1, r2 = _bounded(embed(params, None, x1)), _bounded(embed(params, None, x2))
        logit = self.contrastive_scale * addressing.cosine_similarity(r1[None], r2)[0]
        return jnp.where(same, jax.nn.softplus(-logit), jax.nn.softplus(logit))

      with jax.named_scope("support_grads"):
        grads = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0, 0))(
            q, sx, sx[partner], sy == sy[partner])
    else:
      q = self._slow("embedding", head=True)
      grads = _support_grads(q, _embedding_hidden, sx, sy, self.num_classes,
                             self.fast_only_output)
    grads = self._meta_info(grads)
    t = min(self.num_chunks, s)
    chunk = (np.arange(s) * t) // s  # consecutive chunks, sizes differ by at most 1
    avg = np.eye(t, dtype=np.float32)[chunk].T
    avg = jnp.asarray(avg / avg.sum(axis=1, keepdims=True))  # [T, S]: mean over each chunk
    fast = {}
    for group, names in self._groups_emb.items():
      chunk_grads = {n: jnp.tensordot(avg, grads[n], axes=1) for n in names}  # [T, ...]
      flat = jax.vmap(lambda g: ravel_pytree(g)[0])(chunk_grads)  # [T, P]
      _, unravel = ravel_pytree({n: q[n] for n in names})
      with jax.named_scope("meta_learner_d"):
        fast.update(unravel(lstm_apply(self.meta_task[group], preprocess_gradients(flat))))
    return fast

  def example_fast_weights(self, support_images: jax.Array, support_labels: jax.Array) -> Params:
    """W*_i = m(Z, ∇_W L_task(b(W, x'_i), y'_i)) for every support example.

    Args:
      support_images: [S, H, W, C].
      support_labels: int [S].

    Returns:
      The value memory M: a dict of [S, layer shape] arrays for the base
      learner's layers that get fast weights (raw outputs of m).
    """
    sx, sy = self._check_support(support_images, support_labels)
    if not self.use_example_fast_weights:
      raise ValueError("example_fast_weights needs use_example_fast_weights=True")
    w = self._slow("base", head=True)
    grads = self._meta_info(_support_grads(w, _hidden, sx, sy, self.num_classes,
                                           self.fast_only_output))
    with jax.named_scope("meta_learner_m"):
      return jax.vmap(lambda g: _generate(self.meta_example, g, self._groups_base, mlp_apply))(
          grads)

  def representations(self, images: jax.Array, task_fast: Params | None) -> jax.Array:
    """r = u(Q, Q*, x) for [n, H, W, C] images → [n, hidden]."""
    q = self._slow("embedding", head=False)
    with jax.named_scope("representations"):
      return jax.vmap(lambda x: embed(q, task_fast, x))(images)

  def _memory(self, support_images, support_labels):
    task_fast = (self.task_fast_weights(support_images, support_labels)
                 if self.use_task_fast_weights else None)
    keys = self.representations(support_images, task_fast)
    values = self.example_fast_weights(support_images, support_labels)
    return task_fast, keys, values

  def attention(self, support_images: jax.Array, support_labels: jax.Array,
                query_images: jax.Array) -> jax.Array:
    """[Q, S] attention of every query over the support examples (softmax of cos)."""
    sx, sy = self._check_support(support_images, support_labels)
    qx = self._check_images("query_images", query_images)
    if not self.use_example_fast_weights:
      raise ValueError("attention needs use_example_fast_weights=True")
    task_fast, keys, _ = self._memory(sx, sy)
    return jax.vmap(lambda r: jax.nn.softmax(addressing.cosine_similarity(keys, r)))(
        self.representations(qx, task_fast))

  def _logit_parts(self, sx, sy, qx) -> tuple[jax.Array | None, jax.Array | None]:
    base = self._slow("base", head=True)
    if not self.use_example_fast_weights:
      return jax.vmap(lambda x: net_logit_parts(base, None, x))(qx)
    task_fast, keys, values = self._memory(sx, sy)
    query_keys = self.representations(qx, task_fast)

    def classify(x, r):
      # retrieve(keys, values, r), with the mixing left to the layers (MixedWeights).
      a = jax.nn.softmax(addressing.cosine_similarity(keys, r))
      return net_logit_parts(base, {n: MixedWeights(v, a) for n, v in values.items()}, x)

    with jax.named_scope("base_learner"):
      return jax.vmap(classify)(qx, query_keys)

  def logit_parts(self, support_images: jax.Array, support_labels: jax.Array,
                  query_images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The logits' slow and fast parts (h W_2, h W*_2), each [Q, N]; zeros where absent.

    ``__call__`` returns their sum.
    """
    sx, sy = self._check_support(support_images, support_labels)
    qx = self._check_images("query_images", query_images)
    s, f = self._logit_parts(sx, sy, qx)
    zeros = jnp.zeros((qx.shape[0], self.num_classes), jnp.float32)
    return (zeros if s is None else s), (zeros if f is None else f)

  def __call__(self, support_images: jax.Array, support_labels: jax.Array,
               query_images: jax.Array) -> jax.Array:
    """Classifies the queries of one episode.

    Args:
      support_images: [S, H, W, C] float support set.
      support_labels: int [S] labels in 0..N−1.
      query_images: [Q, H, W, C] float queries.

    Returns:
      [Q, N] logits b(W, W*_q, x_q) (h W*_2 alone with ``fast_only_output``).
    """
    sx, sy = self._check_support(support_images, support_labels)
    qx = self._check_images("query_images", query_images)
    if self.is_initializing():
      # Declaring the parameters needs no forward pass; running one here would
      # run un-jitted, op by op (~30 s for the default model).
      self.init_params()
      return jnp.zeros((qx.shape[0], self.num_classes), jnp.float32)
    s, f = self._logit_parts(sx, sy, qx)
    return s if f is None else (f if s is None else s + f)
