"""The conv nets of MetaNet — the embedding function u and the base learner b —
as pure functions of explicit parameter pytrees (Munkhdalai & Yu 2017, §3.3).

Every layer is augmented (§3.3): it outputs ReLU(slow branch) + ReLU(fast
branch); the logits layer outputs slow + fast, and so does the embedding's
representation layer (FC-64, linear as in the authors' code, so that cosine
similarities can be negative). Fast weights are plain arrays of the layer's
shape or, for a query's retrieved example-level fast weights,
:class:`MixedWeights`.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Params = dict[str, jax.Array]


# ----------------------------------------------------------------------------
# Shapes and initialisation.


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


# ----------------------------------------------------------------------------
# Layers.


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
    """W* = Σ_i a_i M[i]: [*layer shape]."""
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
  s, kh, kw, c, f = kernel.values.shape
  # The mixed kernel is formed as [F, kh·kw·C] (the values transposed before
  # mixing; under vmap they are the same for every query, so once): the
  # gradient of the patches is then a batched matmul with a contiguous
  # contraction, 3–10× faster on CPU at the small late layers than with the
  # kernel [kh·kw·C, F] (same products and sums).
  values_t = jnp.swapaxes(kernel.values.reshape(s, kh * kw * c, f), 1, 2)
  y = jnp.einsum("pk,fk->pf", _patches(x, kh, kw), jnp.tensordot(kernel.weights, values_t, axes=1))
  return y.reshape(*x.shape[:2], f)


@jax.custom_vjp
def _window_max(xr: jax.Array) -> jax.Array:
  """max over the window axes 1 and 3 of xr [H', a, W', b, F] → [H', W', F]."""
  return jnp.max(xr, axis=(1, 3))


def _window_max_fwd(xr):
  y = _window_max(xr)
  return y, (xr, y)


def _window_max_bwd(res, g):
  # The gradient goes to the first maximum of each window in row-major order,
  # as XLA's select-and-scatter (the gradient of reduce_window max) does; a
  # plain jnp.max would split it between tied maxima.
  xr, y = res
  _, a, _, b, _ = xr.shape
  taken = jnp.zeros(y.shape, bool)
  rows = []
  for i in range(a):
    cols = []
    for j in range(b):
      hit = (xr[:, i, :, j] == y) & ~taken
      taken = taken | hit
      cols.append(jnp.where(hit, g, 0.0))
    rows.append(jnp.stack(cols, axis=2))  # [H', W', b, F]
  return (jnp.stack(rows, axis=1),)  # [H', a, W', b, F]


_window_max.defvjp(_window_max_fwd, _window_max_bwd)


def _max_pool(x: jax.Array) -> jax.Array:
  """2×2 stride-2 'SAME' max-pool of x [H, W, F]; an axis of size 1 is kept.

  ``jax.lax.reduce_window`` max, written as a reshape and a max over the
  window axes (odd sides padded with −∞ at the end, as 'SAME' pads), with the
  same gradient: XLA:CPU lowers reduce_window's gradient to a select-and-
  scatter that builds index arrays ([n, H, W, F] int32 iotas) per pooling
  layer, ~13% of the MetaNet train step; this one is elementwise.
  """
  h, w, f = x.shape
  a, b = min(h, 2), min(w, 2)
  x = jnp.pad(x, ((0, -h % a), (0, -w % b), (0, 0)), constant_values=-jnp.inf)
  return _window_max(x.reshape(x.shape[0] // a, a, x.shape[1] // b, b, f))


def _augmented(slow_out: jax.Array, fast_out: jax.Array | None) -> jax.Array:
  """Layer augmentation (§3.3): ReLU(slow) + ReLU(fast)."""
  y = jax.nn.relu(slow_out)
  return y if fast_out is None else y + jax.nn.relu(fast_out)


def _fast(fast: Params | None, name: str) -> jax.Array | None:
  return None if fast is None else fast.get(name)


def _linear(h: jax.Array, slow: Params, fast: Params | None, name: str) -> tuple:
  """(h W, h W*) of a linear layer; None for a missing slow or fast weight."""
  fw = _fast(fast, name)
  if isinstance(fw, MixedWeights):
    fw = fw.mix()
  return (h @ slow[name] if name in slow else None), (None if fw is None else h @ fw)


def _sum_parts(s: jax.Array | None, f: jax.Array | None) -> jax.Array | None:
  """s + f, either of which may be absent (None)."""
  return s if f is None else (f if s is None else s + f)


# ----------------------------------------------------------------------------
# The nets.


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


def net_logit_parts(slow: Params, fast: Params | None, x: jax.Array) -> tuple:
  """The slow and the fast part of b's logits on one image x [H, W, C]:
  (h W_2, h W*_2), each [N], either None if absent;
  h = ReLU(f W_1) + ReLU(f W*_1), f = :func:`conv_features`."""
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
  logits = _sum_parts(*net_logit_parts(slow, fast, x))
  if logits is None:
    raise ValueError("argument `slow`: expected an `fc2` layer in the slow or the fast weights")
  return logits


def embed(slow: Params, fast: Params | None, x: jax.Array) -> jax.Array:
  """The representation u(Q, Q*, x) of one image: r = f Q_1 + f Q*_1 (linear).

  Args:
    slow: slow weights Q (``conv*``, ``fc1``).
    fast: task-level fast weights Q* for any subset of the layers, or None.
    x: [H, W, C] image.

  Returns:
    [hidden] representation (a memory key).
  """
  return _sum_parts(*_linear(conv_features(slow, fast, x), slow, fast, "fc1"))


def _im2col_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """:func:`_conv` as patches @ kernel: [H·W, kh·kw·C] @ [kh·kw·C, F] (no conv op)."""
  kh, kw, c, f = kernel.shape
  return (_patches(x, kh, kw) @ kernel.reshape(kh * kw * c, f)).reshape(*x.shape[:2], f)


def _slow_features_im2col(slow: Params, x: jax.Array) -> jax.Array:
  """``conv_features(slow, None, x)`` with every convolution as :func:`_im2col_conv`.

  For the per-example gradients of the meta information (``vmap(grad)`` over
  the support set): there every example has its own kernel gradient, which
  XLA makes of a convolution a grouped convolution (``feature_group_count`` =
  S) and of a matmul a batched matmul; the latter is ~10% of the whole
  MetaNet step faster on CPU (``benchmarks/metanet_step.py``). Same values.
  """
  h, b = x, 0
  while f"conv{b}" in slow:
    h = _max_pool(jax.nn.relu(_im2col_conv(h, slow[f"conv{b}"])))
    b += 1
  return h.reshape(-1)


def _hidden(slow: Params, x: jax.Array) -> jax.Array:
  """ReLU(f W_1) [hidden], the features entering b's softmax layer (slow weights only;
  the support-loss features, see :func:`_slow_features_im2col`)."""
  return jax.nn.relu(_slow_features_im2col(slow, x) @ slow["fc1"])


def _embedding_hidden(slow: Params, x: jax.Array) -> jax.Array:
  """ReLU(u(Q, x)) [hidden], the features entering the embedding net's classifier head
  (= ReLU(embed(slow, None, x)), through :func:`_slow_features_im2col`)."""
  return jax.nn.relu(_slow_features_im2col(slow, x) @ slow["fc1"])
