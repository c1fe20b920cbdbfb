"""On-device episode samplers for Omniglot-style data.

Both samplers are pure, jitted functions of a PRNG key and an image array
``images [C, K, H, W]`` (characters x drawers, e.g. ``jnp.asarray(load().images)``)
that stays on the device. A batch of episodes is one ``vmap`` over per-episode
keys: no Python loop runs per episode, and the integer arguments are static,
so each configuration compiles once.

Per episode, ``num_classes`` distinct characters are drawn; with
``rotate=True`` each gets its own random rotation by 0, 90, 180 or 270
degrees, which makes a rotated character a new class (Santoro et al. 2016,
Vinyals et al. 2016). Each class then uses distinct drawers.

``sample_mann_episodes`` builds the sequences of Santoro et al. (2016), "One-shot
learning with memory-augmented neural networks": at step ``t`` the input is
the image ``x_t`` together with the label of step ``t - 1`` (zeros at
``t = 0``), so the label of ``x_t`` is never visible at step ``t``. Labels are
either one-hot class indices or, as in the paper's Table 2, strings of five
characters over a five-letter alphabet, encoded as five concatenated one-hots
(25 values); the strings of the classes of one episode are always distinct.

Label formats, losses and metrics of the task: :mod:`memjax.tasks.omniglot`
(``LABEL_MODES``, ``encode_labels`` and ``label_dim`` are re-exported here).

``sample_few_shot`` builds N-way, S-shot classification episodes (support
and query sets, Vinyals et al. 2016) as used by Meta Networks.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# Label formats live with the task (memjax.tasks.omniglot); re-exported here for the samplers' users.
from memjax.tasks.omniglot import LABEL_MODES, STRING_LENGTH, STRING_SYMBOLS, encode_labels, label_dim
from memjax.tasks.omniglot import check_label_mode as _check_label_mode

__all__ = [
    "LABEL_MODES",
    "STRING_LENGTH",
    "STRING_SYMBOLS",
    "FewShotEpisode",
    "MANNEpisode",
    "encode_labels",
    "label_dim",
    "sample_few_shot",
    "sample_mann_episodes",
]


class MANNEpisode(NamedTuple):
  """A batch of MANN episodes (``T = num_classes * samples_per_class`` steps).

  Attributes:
    inputs: float32 ``[B, T, H*W + label_dim]``: the flattened image of step
      ``t``, then the encoded label of step ``t - 1`` (zeros at ``t = 0``).
    targets: int32 ``[B, T]`` class labels in ``0..num_classes-1``
      (``'onehot'``), or int32 ``[B, T, 5]`` string labels with values in
      ``0..4`` (``'string'``).
    instance: int32 ``[B, T]``: how many times the class of step ``t`` was
      shown before step ``t`` in this episode (0 on its first presentation);
      for per-instance accuracy.
  """
  inputs: jax.Array
  targets: jax.Array
  instance: jax.Array


class FewShotEpisode(NamedTuple):
  """A batch of N-way few-shot episodes.

  Attributes:
    support: ``[B, N*S, H, W, 1]`` support images (dtype of ``images``).
    support_labels: int32 ``[B, N*S]`` in ``0..N-1``.
    query: ``[B, N*Q, H, W, 1]`` query images.
    query_labels: int32 ``[B, N*Q]`` in ``0..N-1``.
  """
  support: jax.Array
  support_labels: jax.Array
  query: jax.Array
  query_labels: jax.Array


def _check_int(name: str, value, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"argument `{name}`: expected an int >= {minimum}, got {value!r}")
  return int(value)


def _check_images(images, rotate: bool) -> tuple[int, int, int, int]:
  shape = getattr(images, "shape", None)
  dtype = getattr(images, "dtype", None)
  if shape is None or dtype is None:
    raise ValueError(f"argument `images`: expected an array [C, K, H, W], got {type(images).__name__}")
  if len(shape) != 4:
    raise ValueError(f"argument `images`: expected shape [C, K, H, W] (characters, drawers, "
                     f"height, width), got {list(shape)}")
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"argument `images`: expected a floating-point array (e.g. from "
                     f"memjax.data.omniglot.load), got dtype {dtype}")
  c, k, h, w = (int(s) for s in shape)
  if min(c, k, h, w) < 1:
    raise ValueError(f"argument `images`: expected non-empty axes, got shape {list(shape)}")
  if rotate and h != w:
    raise ValueError(f"argument `images`: rotate=True needs square images, got H x W = {h} x {w}")
  return c, k, h, w


def _rotation_index(h: int, w: int) -> np.ndarray:
  """int32 ``[4, H*W]``: ``x.reshape(-1)[idx[r]] == np.rot90(x, r).reshape(-1)``."""
  idx = np.arange(h * w).reshape(h, w)
  return np.stack([np.rot90(idx, r).reshape(-1) for r in range(4)]).astype(np.int32)


class _Draws:
  """Hands out consecutive slices of one episode's uniform draws ``u [D]``.

  All randomness of a batch comes from a single ``jax.random.uniform`` call:
  every extra threefry call costs compile time, not run time.
  """

  def __init__(self, u: jax.Array):
    self._u = u
    self._pos = 0

  def take(self, *shape: int) -> jax.Array:
    size = int(np.prod(shape, dtype=np.int64))
    out = self._u[self._pos:self._pos + size].reshape(shape)
    self._pos += size
    return out


def _distinct(u: jax.Array, count: int) -> jax.Array:
  """int32 ``[..., count]``: distinct indices into the last axis of ``u [..., n]``.

  The positions of the ``count`` largest uniform draws: ``count`` distinct
  values of ``0..n-1`` drawn uniformly without replacement.
  """
  return jax.lax.top_k(u, count)[1].astype(jnp.int32)


def _randint(u: jax.Array, high: int) -> jax.Array:
  """int32 of ``u``'s shape, uniform in ``0..high-1``."""
  return jnp.minimum(jnp.floor(u * high), high - 1).astype(jnp.int32)


def _pick_draws(c: int, k: int, num_classes: int, per_class: int) -> int:
  return c + num_classes * k + num_classes


def _pick(draws: _Draws, images: jax.Array, num_classes: int, per_class: int,
          rotate: bool) -> jax.Array:
  """Draws one episode's images (uses ``_pick_draws(...)`` uniforms).

  Returns:
    ``[N, per_class, H, W]``: distinct characters, each with its own random
    rotation when ``rotate``, and distinct drawers within each class.
  """
  c, k, h, w = images.shape
  classes = _distinct(draws.take(c), num_classes)  # [N]
  drawers = _distinct(draws.take(num_classes, k), per_class)  # [N, P]
  rots = _randint(draws.take(num_classes), 4)  # [N]
  x = images[classes[:, None], drawers]  # [N, P, H, W]
  if rotate:
    index = jnp.asarray(_rotation_index(h, w))[rots]  # [N, H*W]
    flat = x.reshape(num_classes, per_class, h * w)
    x = jnp.take_along_axis(flat, index[:, None, :], axis=-1).reshape(x.shape)
  return x


def _check_jitter(max_shift, max_rotation) -> tuple[int, float]:
  max_shift = _check_int("max_shift", max_shift, 0)
  if (isinstance(max_rotation, bool) or not isinstance(max_rotation, (int, float, np.floating))
      or not 0 <= max_rotation <= 180):
    raise ValueError(f"argument `max_rotation`: expected degrees in [0, 180], got {max_rotation!r}")
  return max_shift, max_rotation


def _jitter(draws: _Draws, x: jax.Array, max_shift: int, max_rotation: float) -> jax.Array:
  """Per-image jitter of ``x [T, H, W]``: a shift of up to ``max_shift`` pixels
  per axis, then a rotation uniform in ``±max_rotation`` degrees (uses ``2 T``
  uniforms, plus ``T`` when ``max_rotation``)."""
  t = x.shape[0]
  offsets = _randint(draws.take(t, 2), 2 * max_shift + 1)
  if max_shift:
    x = _shift(offsets, x, max_shift)
  if max_rotation:
    angles = (2.0 * draws.take(t) - 1.0) * (max_rotation * np.pi / 180)
    x = _rotate_small(angles, x.astype(jnp.float32)).astype(x.dtype)
  return x


def _shift(offsets: jax.Array, x: jax.Array, max_shift: int) -> jax.Array:
  """Translates each image of ``x [T, H, W]``, zero fill.

  ``offsets`` int ``[T, 2]`` in ``0..2*max_shift`` (``max_shift`` = no shift).
  """
  t, h, w = x.shape
  padded = jnp.pad(x, ((0, 0), (max_shift, max_shift), (max_shift, max_shift)))
  return jax.vmap(lambda xi, o: jax.lax.dynamic_slice(xi, (o[0], o[1]), (h, w)))(padded, offsets)


def _rotate_small(angles: jax.Array, x: jax.Array) -> jax.Array:
  """Rotates each image of ``x [T, H, W]`` by ``angles [T]`` radians about its
  centre (bilinear interpolation, zero fill)."""
  t, h, w = x.shape
  yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) - (h - 1) / 2,
                        jnp.arange(w, dtype=jnp.float32) - (w - 1) / 2, indexing="ij")

  def one(img, a):
    cos, sin = jnp.cos(a), jnp.sin(a)  # output pixel p samples the input at R(−a) p
    src_y = cos * yy - sin * xx + (h - 1) / 2
    src_x = sin * yy + cos * xx + (w - 1) / 2
    return jax.scipy.ndimage.map_coordinates(img, [src_y, src_x], order=1, mode="constant", cval=0.0)

  return jax.vmap(one)(x, angles)


@functools.partial(jax.jit, static_argnames=("batch_size", "num_classes", "samples_per_class",
                                             "label_mode", "rotate", "max_shift", "max_rotation"))
def sample_mann_episodes(key: jax.Array, images: jax.Array, *, batch_size: int,
                         num_classes: int = 5, samples_per_class: int = 10,
                         label_mode: str = "onehot", rotate: bool = True,
                         max_shift: int = 0, max_rotation: float = 0.0) -> MANNEpisode:
  """Samples a batch of MANN episodes (Santoro et al. 2016), on device.

  Per episode: ``num_classes`` distinct characters (each randomly rotated by a
  multiple of 90 degrees when ``rotate``), ``samples_per_class`` distinct
  drawers of each, all ``T = num_classes * samples_per_class`` images in a
  random order, and a random assignment of labels to classes (a permutation of
  ``0..N-1``, or distinct random 5-character strings).

  Args:
    key: PRNG key.
    images: float ``[C, K, H, W]`` images (characters x drawers), ``H == W``
      when ``rotate``.
    batch_size: episodes ``B``.
    num_classes: classes per episode ``N <= C`` (at most 3,125 for strings).
    samples_per_class: images per class ``S <= K``.
    label_mode: ``'onehot'`` (label_dim = N) or ``'string'`` (label_dim = 25).
    rotate: random rotation per class, making rotated characters new classes.
    max_shift: random integer translation of every image by up to this many
      pixels along each axis (zero fill); 0 disables it.
    max_rotation: random rotation of every image by an angle uniform in
      ``[-max_rotation, max_rotation]`` degrees (bilinear, zero fill), on top
      of the per-class 90° rotations; 0 disables it. With ``max_shift`` this
      is the per-image jitter of snowkylin/ntm's Omniglot pipeline (±11.25°);
      a training-time augmentation, never applied to test episodes.

  Returns:
    A :class:`MANNEpisode`: ``inputs`` float32 ``[B, T, H*W + label_dim]``,
    ``targets`` int32 ``[B, T]`` or ``[B, T, 5]``, ``instance`` int32 ``[B, T]``.

  Raises:
    ValueError: bad shapes or arguments (at trace time).
  """
  c, k, h, w = _check_images(images, rotate)
  batch_size = _check_int("batch_size", batch_size, 1)
  n = _check_int("num_classes", num_classes, 1)
  s = _check_int("samples_per_class", samples_per_class, 1)
  max_shift, max_rotation = _check_jitter(max_shift, max_rotation)
  _check_label_mode(label_mode)
  if n > c:
    raise ValueError(f"argument `num_classes`: expected at most the {c} characters of `images`, "
                     f"got {n}")
  if label_mode == "string" and n > STRING_SYMBOLS ** STRING_LENGTH:
    raise ValueError(f"argument `num_classes`: expected at most {STRING_SYMBOLS ** STRING_LENGTH} "
                     f"for distinct string labels, got {n}")
  if s > k:
    raise ValueError(f"argument `samples_per_class`: expected at most the {k} drawers of "
                     f"`images`, got {s}")
  t = n * s

  num_strings = STRING_SYMBOLS ** STRING_LENGTH
  num_draws = (_pick_draws(c, k, n, s) + t + (n if label_mode == "onehot" else num_strings)
               + 2 * t + (t if max_rotation else 0))

  def episode(u):
    draws = _Draws(u)
    x = _pick(draws, images, n, s, rotate)  # [N, S, H, W]
    order = _distinct(draws.take(t), t)  # a random permutation of 0..T-1
    cls = order // s  # class slot of each step, [T]
    x = x[cls, order % s]  # [T, H, W]
    if label_mode == "onehot":
      targets = _distinct(draws.take(n), n)[cls]  # [T]
    else:
      codes = _distinct(draws.take(num_strings), n)  # [N] distinct strings
      powers = STRING_SYMBOLS ** jnp.arange(STRING_LENGTH)
      strings = (codes[:, None] // powers) % STRING_SYMBOLS  # [N, 5]
      targets = strings[cls]  # [T, 5]
    x = _jitter(draws, x, max_shift, max_rotation)
    targets = targets.astype(jnp.int32)
    enc = encode_labels(targets, num_classes=n, label_mode=label_mode)  # [T, L]
    prev = jnp.concatenate([jnp.zeros_like(enc[:1]), enc[:-1]], axis=0)
    inputs = jnp.concatenate([x.reshape(t, h * w).astype(jnp.float32), prev], axis=-1)
    seen = jax.nn.one_hot(cls, n, dtype=jnp.int32)  # [T, N]
    instance = jnp.sum((jnp.cumsum(seen, axis=0) - seen) * seen, axis=-1)
    return MANNEpisode(inputs, targets, instance.astype(jnp.int32))

  return jax.vmap(episode)(jax.random.uniform(key, (batch_size, num_draws)))


@functools.partial(jax.jit, static_argnames=("batch_size", "num_classes", "num_support",
                                             "num_query", "rotate", "max_shift", "max_rotation", "invert"))
def sample_few_shot(key: jax.Array, images: jax.Array, *, batch_size: int, num_classes: int,
                    num_support: int = 1, num_query: int = 10,
                    rotate: bool = True, max_shift: int = 0,
                    max_rotation: float = 0.0, invert: bool = False) -> FewShotEpisode:
  """Samples a batch of N-way few-shot episodes, on device.

  Per episode: ``num_classes`` distinct characters (each randomly rotated by a
  multiple of 90 degrees when ``rotate``) labelled ``0..N-1`` in random order,
  ``num_support + num_query`` distinct drawers of each, split into support and
  query; both sets are shuffled.

  Args:
    key: PRNG key.
    images: float ``[C, K, H, W]`` images (characters x drawers), ``H == W``
      when ``rotate``.
    batch_size: episodes ``B``.
    num_classes: ``N <= C`` classes per episode.
    num_support: ``S`` support images per class.
    num_query: ``Q`` query images per class, ``S + Q <= K``.
    rotate: random rotation per class, making rotated characters new classes.
    max_shift: random integer translation of every support and query image
      by up to this many pixels along each axis (zero fill); 0 disables it.
    max_rotation: random rotation of every support and query image by an
      angle uniform in ``[-max_rotation, max_rotation]`` degrees (bilinear,
      zero fill), on top of the per-class 90° rotations; 0 disables it. The
      same per-image jitter as :func:`sample_mann_episodes`' — a training-time
      augmentation, never applied to test episodes. Its draws come from
      ``fold_in(key, 1)``, so the characters, drawers, labels and order of an
      episode are those of the same key without jitter (and with both 0 the
      episodes are exactly the unjittered ones).
    invert: return ``1 - x`` for every image ``x``, after the rotations and
      the jitter (so their zero fill becomes background too): strokes 0.0 on
      paper 1.0, the release's PNG convention, for ink images of
      :func:`memjax.data.omniglot.preprocess` (strokes 1.0 on paper 0.0).

  Returns:
    A :class:`FewShotEpisode`: ``support [B, N*S, H, W, 1]``, ``support_labels``
    int32 ``[B, N*S]``, ``query [B, N*Q, H, W, 1]``, ``query_labels`` int32
    ``[B, N*Q]``.

  Raises:
    ValueError: bad shapes or arguments (at trace time).
  """
  c, k, h, w = _check_images(images, rotate)
  batch_size = _check_int("batch_size", batch_size, 1)
  n = _check_int("num_classes", num_classes, 1)
  ns = _check_int("num_support", num_support, 1)
  nq = _check_int("num_query", num_query, 0)
  if n > c:
    raise ValueError(f"argument `num_classes`: expected at most the {c} characters of `images`, "
                     f"got {n}")
  if ns + nq > k:
    raise ValueError(f"arguments `num_support` + `num_query`: expected at most the {k} drawers "
                     f"of `images`, got {ns} + {nq} = {ns + nq}")
  max_shift, max_rotation = _check_jitter(max_shift, max_rotation)
  if not isinstance(invert, (bool, np.bool_)):
    raise ValueError(f"argument `invert`: expected a bool, got {invert!r}")

  num_draws = _pick_draws(c, k, n, ns + nq) + n * ns + n * nq
  t = n * (ns + nq)
  jitter_draws = 3 * t  # _jitter: 2 T shift offsets, T rotation angles

  def episode(u, v):
    draws = _Draws(u)
    x = _pick(draws, images, n, ns + nq, rotate)  # [N, S+Q, H, W]
    if max_shift or max_rotation:
      x = _jitter(_Draws(v), x.reshape(t, h, w), max_shift, max_rotation).reshape(x.shape)
    if invert:
      x = 1 - x
    sup_perm = _distinct(draws.take(n * ns), n * ns)
    qry_perm = _distinct(draws.take(n * nq), n * nq)
    support = x[:, :ns].reshape(n * ns, h, w)[sup_perm]
    query = x[:, ns:].reshape(n * nq, h, w)[qry_perm]
    sup_labels = jnp.repeat(jnp.arange(n, dtype=jnp.int32), ns)[sup_perm]
    qry_labels = jnp.repeat(jnp.arange(n, dtype=jnp.int32), nq)[qry_perm]
    return FewShotEpisode(support[..., None], sup_labels, query[..., None], qry_labels)

  u = jax.random.uniform(key, (batch_size, num_draws))
  if not (max_shift or max_rotation):
    return jax.vmap(lambda ui: episode(ui, None))(u)
  return jax.vmap(episode)(u, jax.random.uniform(jax.random.fold_in(key, 1), (batch_size, jitter_draws)))
