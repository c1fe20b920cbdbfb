"""Invariants of the on-device episode samplers (memjax.data.episodes)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memjax.data import episodes as ep

C, K, H = 12, 20, 6  # characters, drawers, image side of the synthetic set
HW = H * H
B, N, S = 16, 5, 4   # episodes, classes, samples per class
T = N * S


def _id_images() -> np.ndarray:
  """float32 [C, K, H, H], constant images whose value c*K + k + 1 names them."""
  ids = np.arange(C * K, dtype=np.float32).reshape(C, K) + 1
  return np.broadcast_to(ids[:, :, None, None], (C, K, H, H)).copy()


def _decode_ids(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(character, drawer) of constant id images [..., H*W] or [..., H, W, 1]."""
  flat = pixels.reshape(*pixels.shape[:2], -1)
  assert np.all(flat.min(-1) == flat.max(-1)), "images are not constant"
  ids = flat[..., 0].astype(np.int64) - 1
  return ids // K, ids % K


@pytest.fixture(scope="module")
def id_images():
  return jnp.asarray(_id_images())


@pytest.fixture(scope="module")
def onehot_episode(id_images):
  e = ep.sample_mann_episodes(jax.random.key(0), id_images, batch_size=B, num_classes=N,
                              samples_per_class=S)
  return jax.tree.map(np.asarray, e)


@pytest.fixture(scope="module")
def string_episode(id_images):
  e = ep.sample_mann_episodes(jax.random.key(1), id_images, batch_size=B, num_classes=N,
                              samples_per_class=S, label_mode="string")
  return jax.tree.map(np.asarray, e)


def test_mann_shapes_and_dtypes(onehot_episode, string_episode):
  e = onehot_episode
  assert e.inputs.shape == (B, T, HW + N) and e.inputs.dtype == np.float32
  assert e.targets.shape == (B, T) and e.targets.dtype == np.int32
  assert e.instance.shape == (B, T) and e.instance.dtype == np.int32
  assert ep.label_dim(N, "onehot") == N
  s = string_episode
  assert s.inputs.shape == (B, T, HW + 25)
  assert s.targets.shape == (B, T, 5) and s.targets.dtype == np.int32
  assert s.targets.min() >= 0 and s.targets.max() <= 4
  assert ep.label_dim(N, "string") == 25


@pytest.mark.parametrize("mode", ["onehot", "string"])
def test_mann_classes_and_drawers(mode, onehot_episode, string_episode):
  e = onehot_episode if mode == "onehot" else string_episode
  chars, drawers = _decode_ids(e.inputs[..., :HW])
  for b in range(B):
    labels = e.targets[b] if mode == "onehot" else [tuple(x) for x in e.targets[b]]
    char_of_label: dict = {}
    for t in range(T):
      assert char_of_label.setdefault(labels[t], chars[b, t]) == chars[b, t]
    # N distinct labels <-> N distinct characters, each shown exactly S times.
    assert len(char_of_label) == N
    assert len(set(char_of_label.values())) == N
    uniq, counts = np.unique(chars[b], return_counts=True)
    assert len(uniq) == N and np.all(counts == S)
    for c in uniq:  # distinct drawers within a class
      assert len(set(drawers[b][chars[b] == c])) == S
    if mode == "onehot":
      assert sorted(char_of_label) == list(range(N))


def test_mann_labels_shifted_by_one_step(onehot_episode, string_episode):
  for e, mode in ((onehot_episode, "onehot"), (string_episode, "string")):
    enc = np.asarray(ep.encode_labels(jnp.asarray(e.targets), num_classes=N, label_mode=mode))
    label_part = e.inputs[..., HW:]
    np.testing.assert_array_equal(label_part[:, 0], 0.0)
    np.testing.assert_array_equal(label_part[:, 1:], enc[:, :-1])
    # The label of step t is never part of the input at step t: whenever the
    # class changes between steps, the visible label differs from the target's.
    changed = np.any((e.targets[:, 1:] != e.targets[:, :-1]).reshape(B, T - 1, -1), axis=-1)
    assert changed.any()
    same = np.all(label_part[:, 1:] == enc[:, 1:], axis=-1)
    assert not np.any(same & changed)
    # Steps 1..T-1 each carry exactly one encoded label.
    assert np.all(label_part[:, 1:].sum(-1) == (1 if mode == "onehot" else 5))


def test_mann_instance_counter(onehot_episode, string_episode):
  for e in (onehot_episode, string_episode):
    targets = e.targets.reshape(B, T, -1)
    for b in range(B):
      seen: dict = {}
      for t in range(T):
        lab = tuple(targets[b, t])
        assert e.instance[b, t] == seen.get(lab, 0)
        seen[lab] = seen.get(lab, 0) + 1
    assert e.instance.max() == S - 1


def test_mann_string_labels_distinct_within_episode(string_episode):
  for b in range(B):
    strings = {tuple(x) for x in string_episode.targets[b]}
    assert len(strings) == N  # one string per class, never shared


def test_mann_rotations_are_consistent_per_class():
  rng = np.random.default_rng(0)
  images = rng.random((C, K, H, H), dtype=np.float32)
  # All 4 rotations of every image, to identify (character, drawer, rotation).
  rots = np.stack([np.rot90(images, r, axes=(2, 3)) for r in range(4)], axis=2)  # [C,K,4,H,H]
  table = rots.reshape(C * K * 4, HW)
  for rotate in (True, False):
    e = ep.sample_mann_episodes(jax.random.key(2), jnp.asarray(images), batch_size=8,
                                num_classes=N, samples_per_class=S, rotate=rotate)
    x = np.asarray(e.inputs[..., :HW]).reshape(-1, HW)
    match = np.all(x[:, None, :] == table[None], axis=-1)  # [B*T, C*K*4]
    assert np.all(match.sum(-1) == 1), "every image is one rotation of one source image"
    idx = match.argmax(-1).reshape(8, T)
    char, rot = idx // (K * 4), idx % 4
    targets = np.asarray(e.targets)
    for b in range(8):
      for lab in range(N):
        assert len(set(rot[b][targets[b] == lab])) == 1  # one rotation per class
        assert len(set(char[b][targets[b] == lab])) == 1
    if rotate:
      assert len(set(rot.ravel())) == 4
    else:
      assert np.all(rot == 0)


def test_mann_shift_augmentation():
  images = jnp.ones((C, K, H, H), jnp.float32)
  # (Also checks that raw uint32 keys work.)
  e = ep.sample_mann_episodes(jax.random.PRNGKey(3), images, batch_size=8, num_classes=N,
                              samples_per_class=S, rotate=False, max_shift=2)
  x = np.asarray(e.inputs[..., :HW]).reshape(-1, H, H)
  rows, cols = x.any(2), x.any(1)
  dy = H - rows.sum(-1)
  dx = H - cols.sum(-1)
  assert dy.max() <= 2 and dx.max() <= 2
  assert dy.max() == 2 and dx.max() == 2 and (dy == 0).any()
  # Each image is a shifted block of ones: the kept part is all ones.
  np.testing.assert_array_equal(x.sum((1, 2)), (H - dy) * (H - dx))
  assert set(np.unique(x)) <= {0.0, 1.0}


def test_mann_deterministic_and_key_dependent(id_images, onehot_episode):
  again = ep.sample_mann_episodes(jax.random.key(0), id_images, batch_size=B, num_classes=N,
                                  samples_per_class=S)
  np.testing.assert_array_equal(np.asarray(again.inputs), onehot_episode.inputs)
  other = ep.sample_mann_episodes(jax.random.key(7), id_images, batch_size=B, num_classes=N,
                                  samples_per_class=S)
  assert not np.array_equal(np.asarray(other.inputs), onehot_episode.inputs)
  # Episodes of one batch differ from one another.
  assert len({onehot_episode.inputs[b].tobytes() for b in range(B)}) == B


def test_mann_jits_once(id_images):
  @jax.jit
  @chex.assert_max_traces(n=1)
  def sample(key, images):
    return ep.sample_mann_episodes(key, images, batch_size=2, num_classes=3,
                                   samples_per_class=2)

  outs = [sample(jax.random.key(i), id_images) for i in range(3)]
  assert outs[0].inputs.shape == (2, 6, HW + 3)
  assert not np.array_equal(outs[0].inputs, outs[1].inputs)
  # The library function is itself jitted with static ints: no retrace either.
  size = ep.sample_mann_episodes._cache_size()
  for i in range(3):
    ep.sample_mann_episodes(jax.random.key(i), id_images, batch_size=2, num_classes=3,
                            samples_per_class=2)
  assert ep.sample_mann_episodes._cache_size() <= size + 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_classes=C + 1), "num_classes"),
    (dict(samples_per_class=K + 1), "samples_per_class"),
    (dict(label_mode="words"), "label_mode"),
    (dict(batch_size=0), "batch_size"),
    (dict(max_shift=-1), "max_shift"),
    (dict(num_classes=2.5), "num_classes"),
])
def test_mann_argument_errors(id_images, kwargs, match):
  args = dict(batch_size=2, num_classes=N, samples_per_class=S) | kwargs
  with pytest.raises(ValueError, match=match):
    ep.sample_mann_episodes(jax.random.key(0), id_images, **args)


def test_image_argument_errors():
  key = jax.random.key(0)
  with pytest.raises(ValueError, match=r"images.*\[C, K, H, W\]"):
    ep.sample_mann_episodes(key, jnp.zeros((C, H, H)), batch_size=1)
  with pytest.raises(ValueError, match="images.*floating"):
    ep.sample_mann_episodes(key, jnp.zeros((C, K, H, H), jnp.uint8), batch_size=1)
  with pytest.raises(ValueError, match="square"):
    ep.sample_few_shot(key, jnp.zeros((C, K, H, H + 1)), batch_size=1, num_classes=2)
  with pytest.raises(ValueError, match="num_support"):
    ep.sample_few_shot(key, jnp.zeros((C, K, H, H)), batch_size=1, num_classes=2,
                       num_support=10, num_query=11)
  with pytest.raises(ValueError, match="targets"):
    ep.encode_labels(jnp.zeros((3, 4), jnp.int32), num_classes=5, label_mode="string")


def test_few_shot_invariants(id_images):
  ns, nq = 2, 3
  e = ep.sample_few_shot(jax.random.key(4), id_images, batch_size=B, num_classes=N,
                         num_support=ns, num_query=nq)
  e = jax.tree.map(np.asarray, e)
  assert e.support.shape == (B, N * ns, H, H, 1) and e.query.shape == (B, N * nq, H, H, 1)
  assert e.support_labels.shape == (B, N * ns) and e.query_labels.shape == (B, N * nq)
  assert e.support_labels.dtype == np.int32 and e.query_labels.dtype == np.int32
  s_char, s_drawer = _decode_ids(e.support)
  q_char, q_drawer = _decode_ids(e.query)
  for b in range(B):
    assert np.all(np.bincount(e.support_labels[b], minlength=N) == ns)
    assert np.all(np.bincount(e.query_labels[b], minlength=N) == nq)
    chars = []
    for lab in range(N):
      sc = set(s_char[b][e.support_labels[b] == lab])
      qc = set(q_char[b][e.query_labels[b] == lab])
      assert len(sc) == 1 and sc == qc  # support and query classes match
      chars += sc
      sd = s_drawer[b][e.support_labels[b] == lab]
      qd = q_drawer[b][e.query_labels[b] == lab]
      assert len(set(sd)) == ns and len(set(qd)) == nq
      assert not set(sd) & set(qd)  # drawers disjoint
    assert len(set(chars)) == N  # classes distinct
  # Support sets are shuffled, not sorted by label.
  assert any(np.any(np.diff(e.support_labels[b]) < 0) for b in range(B))


def test_few_shot_rotation_shared_by_support_and_query():
  rng = np.random.default_rng(1)
  images = rng.random((C, K, H, H), dtype=np.float32)
  rots = np.stack([np.rot90(images, r, axes=(2, 3)) for r in range(4)], axis=2)
  table = rots.reshape(C * K * 4, HW)
  e = ep.sample_few_shot(jax.random.key(5), jnp.asarray(images), batch_size=8, num_classes=N,
                         num_support=1, num_query=2)

  def ident(x):
    match = np.all(np.asarray(x).reshape(-1, HW)[:, None] == table[None], axis=-1)
    assert np.all(match.sum(-1) == 1)
    idx = match.argmax(-1).reshape(x.shape[:2])
    return idx // (K * 4), idx % 4

  s_char, s_rot = ident(e.support)
  q_char, q_rot = ident(e.query)
  sl, ql = np.asarray(e.support_labels), np.asarray(e.query_labels)
  for b in range(8):
    for lab in range(N):
      assert set(s_rot[b][sl[b] == lab]) == set(q_rot[b][ql[b] == lab])
      assert set(s_char[b][sl[b] == lab]) == set(q_char[b][ql[b] == lab])
  assert len(set(s_rot.ravel())) == 4


def test_few_shot_jits_once(id_images):
  @jax.jit
  @chex.assert_max_traces(n=1)
  def sample(key, images):
    return ep.sample_few_shot(key, images, batch_size=2, num_classes=N)

  for i in range(3):
    out = sample(jax.random.key(i), id_images)
  assert out.query.shape == (2, N * 10, H, H, 1)


def test_on_omniglot_small1(omniglot_dir, tmp_path):
  from memjax.data import omniglot
  (tmp_path / "images_background_small1.zip").symlink_to(
      omniglot_dir / "images_background_small1.zip")
  split = omniglot.load("small1", data_dir=tmp_path, download=False)
  images = jnp.asarray(split.images)
  e = ep.sample_mann_episodes(jax.random.key(0), images, batch_size=4, label_mode="string")
  assert e.inputs.shape == (4, 50, 400 + 25)
  assert 0.0 < float(e.inputs[..., :400].mean()) < 0.5


def test_small_rotation_is_a_rotation_about_the_centre():
  img = np.zeros((7, 7), np.float32)
  img[1, 2:6] = 1.0  # an asymmetric L-shape
  img[1:4, 5] = 1.0
  x = jnp.asarray(np.stack([img, img, img]))
  out = np.asarray(ep._rotate_small(jnp.asarray([0.0, np.pi / 2, -np.pi / 2]), x))
  np.testing.assert_allclose(out[0], img, atol=1e-6)
  # ±90° about the centre of a square image moves pixels exactly onto pixels.
  matches = [np.allclose(out[1], np.rot90(img, k), atol=1e-5) for k in (1, 3)]
  assert sum(matches) == 1
  np.testing.assert_allclose(out[2], np.rot90(img, 1 if matches[1] else 3), atol=1e-5)


def test_mann_rotation_augmentation():
  images = jnp.zeros((C, K, H, H), jnp.float32).at[:, :, 2:H - 2, 2:H - 2].set(1.0)
  kw = dict(batch_size=4, num_classes=N, samples_per_class=S, rotate=False)
  plain = ep.sample_mann_episodes(jax.random.key(3), images, **kw)
  jit = ep.sample_mann_episodes(jax.random.key(3), images, max_rotation=20.0, **kw)
  x = np.asarray(jit.inputs[..., :HW]).reshape(-1, H, H)
  assert np.all((x >= -1e-6) & (x <= 1 + 1e-6))
  assert np.mean((x > 1e-3) & (x < 1 - 1e-3)) > 0.01  # interpolated edges: rotated
  # Rotation keeps the square inside the frame: its area is kept (bilinear, ±a few %).
  np.testing.assert_allclose(x.sum((1, 2)), (H - 4) ** 2, rtol=0.08)
  assert jit.inputs.shape == plain.inputs.shape and jit.targets.shape == plain.targets.shape
  with pytest.raises(ValueError, match="max_rotation"):
    ep.sample_mann_episodes(jax.random.key(3), images, max_rotation=-1.0, **kw)


def _shifts(img: np.ndarray, max_shift: int) -> list[np.ndarray]:
  """Every translation of ``img [H, W]`` by up to ``max_shift`` pixels per axis, zero fill."""
  h, w = img.shape
  padded = np.pad(img, max_shift)
  return [padded[i:i + h, j:j + w] for i in range(2 * max_shift + 1) for j in range(2 * max_shift + 1)]


def test_few_shot_jitter_moves_pixels_only():
  """Jitter keeps an episode's characters, drawers, 90° rotations, labels and order (the
  same key without jitter) and moves each image by its own shift; 0 is no jitter at all."""
  rng = np.random.default_rng(2)
  images = jnp.asarray(rng.random((C, K, H, H), dtype=np.float32))
  kw = dict(batch_size=4, num_classes=N, num_support=1, num_query=3)
  plain = ep.sample_few_shot(jax.random.key(7), images, **kw)
  zero = ep.sample_few_shot(jax.random.key(7), images, max_shift=0, max_rotation=0.0, **kw)
  for a, b in zip(plain, zero):
    np.testing.assert_array_equal(a, b)
  moved = ep.sample_few_shot(jax.random.key(7), images, max_shift=1, **kw)
  np.testing.assert_array_equal(moved.support_labels, plain.support_labels)
  np.testing.assert_array_equal(moved.query_labels, plain.query_labels)
  offsets = []
  for before, after in ((plain.support, moved.support), (plain.query, moved.query)):
    before, after = np.asarray(before)[..., 0], np.asarray(after)[..., 0]
    for x, y in zip(before.reshape(-1, H, H), after.reshape(-1, H, H)):
      match = [np.array_equal(s, y) for s in _shifts(x, 1)]
      assert sum(match) == 1  # a translation of this very image, by at most 1 pixel
      offsets.append(match.index(True))
  assert len(set(offsets)) > 4  # each image its own shift
  spun = ep.sample_few_shot(jax.random.key(7), images, max_rotation=15.0, **kw)
  np.testing.assert_array_equal(spun.query_labels, plain.query_labels)
  assert not np.array_equal(spun.query, plain.query)
  assert np.all((np.asarray(spun.query) >= 0.0) & (np.asarray(spun.query) <= 1.0 + 1e-6))


def test_few_shot_invert_is_one_minus_the_episode_after_the_jitter():
  """``invert`` gives 1 - x of the same episode (same key), the jitter's zero fill included:
  with ink images (paper 0) every shifted-in pixel of an inverted image is paper 1."""
  rng = np.random.default_rng(3)
  images = jnp.asarray(rng.random((C, K, H, H), dtype=np.float32))
  kw = dict(batch_size=3, num_classes=N, num_support=1, num_query=2, max_shift=2, max_rotation=10.0)
  plain = ep.sample_few_shot(jax.random.key(5), images, **kw)
  flipped = ep.sample_few_shot(jax.random.key(5), images, invert=True, **kw)
  for name in ("support", "query"):
    np.testing.assert_allclose(getattr(flipped, name), 1 - np.asarray(getattr(plain, name)), atol=1e-6)
  for name in ("support_labels", "query_labels"):
    np.testing.assert_array_equal(getattr(flipped, name), getattr(plain, name))
  blank = ep.sample_few_shot(jax.random.key(5), jnp.zeros_like(images), invert=True, **kw)
  np.testing.assert_array_equal(blank.query, np.ones_like(blank.query))  # paper everywhere
  with pytest.raises(ValueError, match="invert"):
    ep.sample_few_shot(jax.random.key(0), images, batch_size=1, num_classes=N, invert=1)


@pytest.mark.parametrize("bad", [dict(max_shift=-1), dict(max_shift=1.5), dict(max_rotation=-1.0),
                                 dict(max_rotation=181.0), dict(max_rotation=True)])
def test_few_shot_jitter_bad_arguments(bad):
  images = jnp.zeros((C, K, H, H), jnp.float32)
  with pytest.raises(ValueError, match=next(iter(bad))):
    ep.sample_few_shot(jax.random.key(0), images, batch_size=1, num_classes=N, **bad)
