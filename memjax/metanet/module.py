"""The MetaNet Flax module (Munkhdalai & Yu 2017, Algorithm 1); see :mod:`memjax.metanet`."""

from __future__ import annotations

import functools

import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from memjax.metanet.layers import (MixedWeights, Params, _embedding_hidden, _hidden, _sum_parts,
                                   embed, init_conv_net, net_logit_parts, net_shapes)
from memjax.metanet.memory import attention_weights
from memjax.metanet.meta_learners import (_CONV_META_OUT_STD, _chunk_means, _contrastive_grads, _layer_groups,
                                          _meta_out_std, _support_grads, generate_fast_weights,
                                          init_lstm, init_mlp, lstm_apply_tiled, mlp_apply_tiled)

EMBEDDING_LOSSES = ("auto", "contrastive", "cross_entropy")
FAST_LAYERS = ("all", "fc")


# Jitted initialisers for the module: un-jitted, every random draw of a new
# shape is compiled on its own, which makes ``init`` take seconds.
@functools.partial(jax.jit, static_argnums=1)
def _init_net_jit(key, shape_items):
  return init_conv_net(key, dict(shape_items))


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _init_mlps_jit(key, groups, sizes, conv_std):
  return {g: init_mlp(k, sizes, _meta_out_std(g, conv_std))
          for g, k in zip(groups, jax.random.split(key, len(groups)))}


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _init_lstms_jit(key, groups, hidden, conv_std):
  return {g: init_lstm(k, hidden, out_std=_meta_out_std(g, conv_std))
          for g, k in zip(groups, jax.random.split(key, len(groups)))}


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
      package docs (:mod:`memjax.metanet`) and :meth:`representation_loss`.
    contrastive_scale: s in the pair loss BCE(s · cos(r_1, r_2), l).
    fast_layers: ``'all'`` (every layer of both nets, the default) or ``'fc'``.
    use_task_fast_weights: generate Q* for the embedding net u.
    use_example_fast_weights: generate W*_i and retrieve them for the queries.
    second_order: differentiate through the meta information.
    fast_only_output: the base learner's softmax layer has fast weights only
      (no slow ``fc2``; slow ``fc2`` weights in the variables are ignored), and
      the embedding net's head is replaced likewise, so that variables trained
      on N-way episodes classify K-way ones with ``num_classes=K`` (§4.2.1,
      Table 4); see the package docs.
    conv_meta_out_std: std at initialisation of the read-out layer of the
      conv meta nets (m_conv, d_conv); 1e-3 by default (the FC nets' start as
      Chainer's default, 1/√meta_hidden, as the authors'; see
      :data:`memjax.metanet.meta_learners._CONV_META_OUT_STD`).
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
  conv_meta_out_std: float = _CONV_META_OUT_STD

  def setup(self):
    for name in ("num_classes", "filters", "num_blocks", "hidden", "meta_hidden", "num_chunks"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (
          0 if name == "num_blocks" else 1):
        raise ValueError(f"argument `{name}`: expected a positive int, got {value!r}")
    std = self.conv_meta_out_std
    if isinstance(std, bool) or not isinstance(std, (int, float, np.floating)) or not std > 0:
      raise ValueError(f"argument `conv_meta_out_std`: expected a positive float, got {std!r}")
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
          "meta_example", lambda k: _init_mlps_jit(k, tuple(self._groups_base), sizes, float(std)))
      if self.use_task_fast_weights:
        # The FC-N head serves only the representation loss: no fast weights.
        self._groups_emb = _layer_groups([n for n in emb_shapes if n != "fc2"], self.fast_layers)
        self.meta_task = self.param(
            "meta_task", lambda k: _init_lstms_jit(k, tuple(self._groups_emb), self.meta_hidden,
                                               float(std)))

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
  # The public methods check their arguments; the private ones they share take
  # checked arrays, so one forward pass checks the support set once.

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
    return self._task_fast_weights(sx, sy)

  def _task_fast_weights(self, sx: jax.Array, sy: jax.Array) -> Params:
    if self.representation_loss(sx.shape[0]) == "contrastive":
      grads = _contrastive_grads(self._slow("embedding", head=False), sx, sy,
                                 self.contrastive_scale)
    else:
      grads = _support_grads(self._slow("embedding", head=True), _embedding_hidden, sx, sy,
                             self.num_classes, self.fast_only_output)
    chunk_grads = _chunk_means(self._meta_info(grads), self.num_chunks)  # [T, layer shape]
    with jax.named_scope("meta_learner_d"):
      return generate_fast_weights(self.meta_task, chunk_grads, self._groups_emb, lstm_apply_tiled,
                                   lead=1)

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
    return self._example_fast_weights(sx, sy)

  def _example_fast_weights(self, sx: jax.Array, sy: jax.Array) -> Params:
    w = self._slow("base", head=True)
    grads = self._meta_info(_support_grads(w, _hidden, sx, sy, self.num_classes,
                                           self.fast_only_output))
    with jax.named_scope("meta_learner_m"):
      return generate_fast_weights(self.meta_example, grads, self._groups_base, mlp_apply_tiled,
                                   batch=1)

  def representations(self, images: jax.Array, task_fast: Params | None) -> jax.Array:
    """r = u(Q, Q*, x) for [n, H, W, C] images → [n, hidden]."""
    q = self._slow("embedding", head=False)
    with jax.named_scope("representations"):
      return jax.vmap(lambda x: embed(q, task_fast, x))(images)

  def _memory(self, sx: jax.Array, sy: jax.Array) -> tuple:
    """(Q*, key memory R [S, hidden], value memory M) of a checked support set."""
    task_fast = self._task_fast_weights(sx, sy) if self.use_task_fast_weights else None
    keys = self.representations(sx, task_fast)
    values = self._example_fast_weights(sx, sy)
    return task_fast, keys, values

  def attention(self, support_images: jax.Array, support_labels: jax.Array,
                query_images: jax.Array) -> jax.Array:
    """[Q, S] attention of every query over the support examples, a = softmax_i cos(R[i], r)."""
    sx, sy = self._check_support(support_images, support_labels)
    qx = self._check_images("query_images", query_images)
    if not self.use_example_fast_weights:
      raise ValueError("attention needs use_example_fast_weights=True")
    task_fast, keys, _ = self._memory(sx, sy)
    return jax.vmap(lambda r: attention_weights(keys, r))(self.representations(qx, task_fast))

  def _logit_parts(self, sx, sy, qx) -> tuple[jax.Array | None, jax.Array | None]:
    base = self._slow("base", head=True)
    if not self.use_example_fast_weights:
      return jax.vmap(lambda x: net_logit_parts(base, None, x))(qx)
    task_fast, keys, values = self._memory(sx, sy)
    query_keys = self.representations(qx, task_fast)

    def classify(x, r):
      # memory.retrieve(keys, values, r), with the mixing left to the layers (MixedWeights).
      a = attention_weights(keys, r)
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
    return _sum_parts(*self._logit_parts(sx, sy, qx))
