"""Tests of the Omniglot loader (memjax.data.omniglot)."""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import sys
import types
import urllib.error
import urllib.request
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from memjax.data import omniglot as om

SMALL1 = "images_background_small1.zip"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path_factory):
  """Keeps tests away from the user's cache and $MEMJAX_DATA_DIR."""
  monkeypatch.delenv("MEMJAX_DATA_DIR", raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg")))


def _no_network(*args, **kwargs):
  raise AssertionError("unexpected network access")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
  monkeypatch.setattr(urllib.request, "urlopen", _no_network)


@pytest.fixture(scope="module")
def small1_bytes(omniglot_dir) -> bytes:
  return (omniglot_dir / SMALL1).read_bytes()


@pytest.fixture(scope="module")
def small1_reference(omniglot_dir, tmp_path_factory):
  """The small1 split loaded once from a private copy; also its directory."""
  d = tmp_path_factory.mktemp("small1")
  shutil.copy(omniglot_dir / SMALL1, d / SMALL1)
  return om.load("small1", data_dir=d, download=False), d


def _leftovers(d: Path) -> list[str]:
  return sorted(p.name for p in d.iterdir() if p.suffix in (".npz", ".part") or
                p.name.endswith(".part"))


# ----------------------------------------------------------------------------
# Loading.


def test_load_small1_zip(small1_reference):
  split, d = small1_reference
  assert split.images.shape == (136, 20, 20, 20)
  assert split.images.dtype == np.float32
  assert split.images.min() >= 0.0 and split.images.max() <= 1.0
  # Strokes are 1, paper 0: ink covers a small fraction of the image, and the
  # corners are blank.
  assert 0.02 < split.images.mean() < 0.2
  assert split.images[..., 0, 0].mean() < 0.01
  assert np.all(split.images.reshape(136 * 20, -1).max(-1) > 0.0)  # every image has ink
  assert len(split.alphabets) == len(split.characters) == 136
  assert len(set(split.alphabets)) == 5
  assert split.characters == sorted(split.characters)
  assert split.characters[0] == "Balinese/character01"
  assert all(c.startswith(a + "/") for a, c in zip(split.alphabets, split.characters))
  assert (d / "images_background_small1_20px.npz").is_file()
  assert om.list_characters("small1", d) == split.characters


def test_cache_is_reused(small1_reference, monkeypatch):
  split, d = small1_reference
  def fail(*args, **kwargs):
    raise AssertionError("decoded again instead of reading the cache")
  monkeypatch.setattr(om, "_decode_archive", fail)
  again = om.load("small1", data_dir=d, download=False)
  np.testing.assert_array_equal(again.images, split.images)
  assert again.characters == split.characters and again.alphabets == split.alphabets


def test_cache_dir_argument(small1_reference, omniglot_dir, tmp_path):
  split, _ = small1_reference
  data = tmp_path / "data"
  data.mkdir()
  (data / SMALL1).symlink_to(omniglot_dir / SMALL1)
  cache = tmp_path / "cache"
  out = om.load("small1", image_size=20, data_dir=data, cache_dir=cache, download=False)
  np.testing.assert_array_equal(out.images, split.images)
  assert (cache / "images_background_small1_20px.npz").is_file()
  assert not list(data.glob("*.npz"))


def test_read_only_data_dir_caches_in_user_cache(small1_reference, omniglot_dir, tmp_path):
  split, _ = small1_reference
  data = tmp_path / "ro"
  data.mkdir()
  (data / SMALL1).symlink_to(omniglot_dir / SMALL1)
  data.chmod(0o555)
  try:
    out = om.load("small1", data_dir=data, download=False)
  finally:
    data.chmod(0o755)
  np.testing.assert_array_equal(out.images, split.images)
  assert not list(data.glob("*.npz"))
  assert (om.default_cache_dir() / "images_background_small1_20px.npz").is_file()


def test_extracted_folder_layout(small1_reference, small1_bytes, tmp_path):
  split, _ = small1_reference
  with zipfile.ZipFile(io.BytesIO(small1_bytes)) as zf:
    zf.extractall(tmp_path)
  assert (tmp_path / "images_background_small1" / "Balinese" / "character01").is_dir()
  out = om.load("small1", data_dir=tmp_path, download=False)
  np.testing.assert_array_equal(out.images, split.images)
  assert out.characters == split.characters


def test_data_dir_from_env_and_parent_dir(small1_reference, omniglot_dir, tmp_path, monkeypatch):
  split, _ = small1_reference
  (tmp_path / "omniglot").mkdir()
  (tmp_path / "omniglot" / SMALL1).symlink_to(omniglot_dir / SMALL1)
  monkeypatch.setenv("MEMJAX_DATA_DIR", str(tmp_path))  # parent of omniglot/
  assert om.resolve_data_dir() == tmp_path / "omniglot"
  out = om.load("small1", download=False)
  np.testing.assert_array_equal(out.images, split.images)
  assert (tmp_path / "omniglot" / "images_background_small1_20px.npz").is_file()


def test_default_dirs(monkeypatch, tmp_path):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert om.resolve_data_dir() == tmp_path / "memjax" / "omniglot"
  monkeypatch.delenv("XDG_CACHE_HOME")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert om.default_cache_dir() == tmp_path / "home" / ".cache" / "memjax" / "omniglot"
  assert om.resolve_data_dir(tmp_path / "x") == tmp_path / "x"
  monkeypatch.setenv("MEMJAX_DATA_DIR", str(tmp_path / "env"))
  assert om.resolve_data_dir() == tmp_path / "env"
  assert om.resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"


def test_library_does_not_hardcode_shared_path():
  source = Path(om.__file__).read_text()
  assert "../shared" not in source and "shared/data" not in source


def test_image_size_and_other_sizes(small1_reference):
  _, d = small1_reference
  out = om.load("small1", image_size=28, data_dir=d, download=False)
  assert out.images.shape == (136, 20, 28, 28)
  assert (d / "images_background_small1_28px.npz").is_file()


# ----------------------------------------------------------------------------
# Bad archives and caches.


def test_truncated_zip_is_reported(small1_bytes, tmp_path):
  (tmp_path / SMALL1).write_bytes(small1_bytes[: len(small1_bytes) // 2])
  with pytest.raises(ValueError, match=r"images_background_small1\.zip.*(corrupt|truncated)"):
    om.load("small1", data_dir=tmp_path, download=False)
  assert _leftovers(tmp_path) == []


def test_corrupt_member_is_reported(small1_bytes, tmp_path):
  data = bytearray(small1_bytes)
  with zipfile.ZipFile(io.BytesIO(small1_bytes)) as zf:
    info = zf.getinfo("images_background_small1/Greek/character05/0398_07.png")
  start = info.header_offset + 30 + len(info.filename) + len(info.extra)
  for i in range(start, start + info.compress_size):
    data[i] ^= 0x5A
  (tmp_path / SMALL1).write_bytes(bytes(data))
  with pytest.raises(ValueError, match=r"images_background_small1\.zip.*0398_07"):
    om.load("small1", data_dir=tmp_path, download=False)
  assert _leftovers(tmp_path) == []


def _repack(src: bytes, rename=lambda n: n, keep=lambda n: True) -> bytes:
  out = io.BytesIO()
  with zipfile.ZipFile(io.BytesIO(src)) as zin, zipfile.ZipFile(out, "w") as zout:
    for info in zin.infolist():
      if keep(info.filename):
        zout.writestr(rename(info.filename), zin.read(info.filename))
  return out.getvalue()


def test_wrong_layout_zip_is_reported(small1_bytes, tmp_path):
  # Images one level too shallow: '<top>/<Alphabet>/XXXX_YY.png'.
  flat = _repack(small1_bytes, rename=lambda n: n.replace("/character", "_character", 1))
  (tmp_path / SMALL1).write_bytes(flat)
  with pytest.raises(ValueError, match=r"images_background_small1\.zip.*expected.*(images at|alphabets)"):
    om.load("small1", data_dir=tmp_path, download=False)
  nested = _repack(small1_bytes, rename=lambda n: "extra/" + n)
  (tmp_path / SMALL1).write_bytes(nested)
  with pytest.raises(ValueError, match=r"images_background_small1\.zip.*expected images at"):
    om.list_characters("small1", tmp_path)
  assert _leftovers(tmp_path) == []


def test_missing_alphabet_is_reported(small1_bytes, tmp_path):
  (tmp_path / SMALL1).write_bytes(_repack(small1_bytes, keep=lambda n: "/Greek/" not in n))
  with pytest.raises(ValueError, match=r"images_background_small1\.zip: expected .*5 alphabets.* "
                                       r"got 4 alphabets"):
    om.load("small1", data_dir=tmp_path, download=False)
  assert _leftovers(tmp_path) == []


def test_missing_image_is_reported(small1_bytes, tmp_path):
  (tmp_path / SMALL1).write_bytes(_repack(small1_bytes, keep=lambda n: not n.endswith("0108_03.png")))
  with pytest.raises(ValueError, match=r"images_background_small1\.zip: expected .*2720 images"):
    om.load("small1", data_dir=tmp_path, download=False)


def test_wrong_archive_under_the_name_is_reported(omniglot_dir, tmp_path):
  (tmp_path / "images_background_small2.zip").symlink_to(omniglot_dir / SMALL1)
  with pytest.raises(ValueError, match="images_background_small2.zip: expected"):
    om.list_characters("small2", tmp_path)


def test_truncated_cache_is_rebuilt(small1_reference, omniglot_dir, tmp_path):
  split, _ = small1_reference
  (tmp_path / SMALL1).symlink_to(omniglot_dir / SMALL1)
  cache = tmp_path / "images_background_small1_20px.npz"
  shutil.copy(small1_reference[1] / cache.name, cache)
  cache.write_bytes(cache.read_bytes()[:100_000])
  with pytest.warns(RuntimeWarning, match="unusable"):
    out = om.load("small1", data_dir=tmp_path, download=False)
  np.testing.assert_array_equal(out.images, split.images)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    again = om.load("small1", data_dir=tmp_path, download=False)  # the rebuilt cache is valid
  np.testing.assert_array_equal(again.images, split.images)
  assert _leftovers(tmp_path) == [cache.name]


def test_wrong_shape_cache_is_rebuilt(small1_reference, omniglot_dir, tmp_path):
  split, _ = small1_reference
  (tmp_path / SMALL1).symlink_to(omniglot_dir / SMALL1)
  cache = tmp_path / "images_background_small1_20px.npz"
  np.savez(cache, version=np.int64(1), images=np.zeros((3, 20, 20, 20), np.float32),
           alphabets=np.array(["a"] * 3), characters=np.array(["a/b"] * 3))
  with pytest.warns(RuntimeWarning, match="expected images float32"):
    out = om.load("small1", data_dir=tmp_path, download=False)
  np.testing.assert_array_equal(out.images, split.images)


def test_interrupted_decoding_leaves_no_cache(small1_bytes, tmp_path, monkeypatch):
  (tmp_path / SMALL1).write_bytes(small1_bytes)
  def boom(*args, **kwargs):
    raise KeyboardInterrupt
  monkeypatch.setattr(om.np, "savez", boom)
  with pytest.raises(KeyboardInterrupt):
    om.load("small1", data_dir=tmp_path, download=False)
  assert _leftovers(tmp_path) == []


# ----------------------------------------------------------------------------
# Missing files and downloads (offline: urlopen is faked).


class _FakeResponse(io.BytesIO):
  pass


def _serve(monkeypatch, payload: bytes | Exception, seen: list[str]):
  def urlopen(url, timeout=None):
    seen.append(url)
    if isinstance(payload, Exception):
      raise payload
    return _FakeResponse(payload)
  monkeypatch.setattr(urllib.request, "urlopen", urlopen)


def test_missing_files_without_download(tmp_path):
  with pytest.raises(FileNotFoundError, match=rf"images_background\.zip.*images_evaluation\.zip"
                                              rf".*{re.escape(str(tmp_path))}"):
    om.load("train", data_dir=tmp_path, download=False)
  with pytest.raises(FileNotFoundError, match="images_background_small2.zip"):
    om.list_characters("small2", tmp_path)


def test_download_success(small1_bytes, small1_reference, tmp_path, monkeypatch):
  seen: list[str] = []
  _serve(monkeypatch, small1_bytes, seen)
  out = om.load("small1", data_dir=tmp_path / "new")
  assert seen == [om.BASE_URL + SMALL1]
  assert seen[0] == "https://github.com/brendenlake/omniglot/raw/master/python/" + SMALL1
  assert (tmp_path / "new" / SMALL1).read_bytes() == small1_bytes
  np.testing.assert_array_equal(out.images, small1_reference[0].images)
  assert sorted(p.name for p in (tmp_path / "new").iterdir()) == [
      SMALL1, "images_background_small1_20px.npz"]


def test_download_with_wrong_checksum_leaves_nothing(tmp_path, monkeypatch):
  fake = io.BytesIO()
  with zipfile.ZipFile(fake, "w") as zf:
    zf.writestr("images_background_small1/A/character01/0001_01.png", b"not a png")
  seen: list[str] = []
  _serve(monkeypatch, fake.getvalue(), seen)
  got = hashlib.sha256(fake.getvalue()).hexdigest()
  with pytest.raises(ValueError, match=rf"sha256 {om.ARCHIVES['small1'].sha256}, got {got}"):
    om.load("small1", data_dir=tmp_path)
  assert seen and list(tmp_path.iterdir()) == []


def test_download_with_right_checksum_but_wrong_contents(tmp_path, monkeypatch):
  fake = io.BytesIO()
  with zipfile.ZipFile(fake, "w") as zf:
    zf.writestr("images_background_small1/A/character01/0001_01.png", b"x")
  monkeypatch.setitem(om.ARCHIVES, "small1", om.ARCHIVES["small1"]._replace(
      sha256=hashlib.sha256(fake.getvalue()).hexdigest()))
  _serve(monkeypatch, fake.getvalue(), [])
  with pytest.raises(ValueError, match=r"https://.*images_background_small1\.zip: expected"):
    om.download_archive("small1", tmp_path)
  assert list(tmp_path.iterdir()) == []


def test_network_failure_says_what_to_put_where(tmp_path, monkeypatch):
  _serve(monkeypatch, urllib.error.URLError("offline"), [])
  with pytest.raises(FileNotFoundError) as info:
    om.load("test", data_dir=tmp_path)
  msg = str(info.value)
  assert "images_background.zip" in msg and "images_evaluation.zip" in msg
  assert str(tmp_path) in msg and "offline" in msg and om.BASE_URL in msg
  assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------
# preprocess.


def test_preprocess_values_and_shape():
  raw = np.full((3, 105, 105), 255, np.uint8)
  raw[1] = 0
  raw[2, :, :23] = 0  # a stroke over the left 23 of 105 columns
  out = om.preprocess(raw, 20)
  assert out.shape == (3, 20, 20) and out.dtype == np.float32
  np.testing.assert_array_equal(out[0], 0.0)
  np.testing.assert_allclose(out[1], 1.0)
  np.testing.assert_allclose(out[2][:, :4], 1.0, atol=1e-6)
  np.testing.assert_allclose(out[2][:, 5:], 0.0, atol=1e-6)
  assert 0.0 < out[2][0, 4] < 1.0  # box filter averages the boundary pixel
  same = om.preprocess(raw, 105)
  np.testing.assert_array_equal(same, 1.0 - raw / 255.0)
  np.testing.assert_array_equal(om.preprocess(raw == 255, 20), out)  # bool input


@pytest.mark.parametrize("images, size, match", [
    (np.zeros((105, 105), np.uint8), 20, r"images.*\[n, H, W\].*got \[105, 105\]"),
    (np.zeros((2, 105, 105), np.float32), 20, "images.*uint8.*got float32"),
    (np.zeros((2, 0, 105), np.uint8), 20, "images"),
    (np.zeros((2, 105, 105), np.uint8), 0, "image_size.*got 0"),
    (np.zeros((2, 105, 105), np.uint8), 2.5, "image_size"),
    (np.zeros((2, 105, 105), np.uint8), True, "image_size"),
])
def test_preprocess_errors(images, size, match):
  with pytest.raises(ValueError, match=match):
    om.preprocess(images, size)


@pytest.mark.parametrize("kwargs, match", [
    (dict(split="validation"), "split.*validation"),
    (dict(split="small1", image_size=-1), "image_size"),
    (dict(split="small1", source="hub"), "source.*hub"),
])
def test_load_argument_errors(kwargs, match, tmp_path):
  with pytest.raises(ValueError, match=match):
    om.load(data_dir=tmp_path, **kwargs)


# ----------------------------------------------------------------------------
# tensorflow_datasets source.


def test_tfds_missing_gives_install_hint(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  with pytest.raises(ImportError, match=r"pip install memjax\[data\]"):
    om.load("small1", source="tfds", data_dir=tmp_path)


def test_tfds_source_with_fake_module(monkeypatch):
  spec = om.ARCHIVES["small1"]
  per_alphabet = [40, 30, 26, 20, 20]  # 136 characters
  names = ["Zeta", "Alpha", "Beta", "Gamma", "Delta"]
  image = np.full((105, 105, 3), 255, np.uint8)
  image[:50] = 0

  def examples():
    for a, count in enumerate(per_alphabet):
      for ch in range(count):
        for _ in range(20):
          yield {"image": image, "alphabet": a, "alphabet_char_id": ch, "label": 0}

  calls = []
  def load(name, split, with_info, data_dir, download, shuffle_files):
    calls.append((name, split))
    info = types.SimpleNamespace(features={"alphabet": types.SimpleNamespace(names=names)})
    return "ds", info

  fake = types.ModuleType("tensorflow_datasets")
  fake.load = load
  fake.as_numpy = lambda ds: examples()
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
  out = om.load("small1", image_size=10, source="tfds")
  assert calls == [("omniglot", "small1")]
  assert out.images.shape == (spec.num_characters, 20, 10, 10)
  np.testing.assert_allclose(out.images[:, :, :4], 1.0)
  np.testing.assert_allclose(out.images[:, :, 6:], 0.0)
  assert out.characters[0] == "Alpha/character01" and out.alphabets[-1] == "Zeta"


# ----------------------------------------------------------------------------
# Standard splits of the full data set.


def test_train_test_split_sizes_without_decoding(omniglot_dir):
  train = om.list_characters("train", omniglot_dir)
  test = om.list_characters("test", omniglot_dir)
  background = om.list_characters("background", omniglot_dir)
  evaluation = om.list_characters("evaluation", omniglot_dir)
  assert (len(train), len(test), len(background), len(evaluation)) == (1200, 423, 964, 659)
  assert len(set(train) | set(test)) == 1623
  assert train[:964] == background and train[964:] + test == evaluation
  assert len({c.split("/")[0] for c in background}) == 30
  assert len({c.split("/")[0] for c in evaluation}) == 20
  assert background[0] == "Alphabet_of_the_Magi/character01"
  assert evaluation[0] == "Angelic/character01"
  assert test[-1] == "ULOG/character26"


@pytest.mark.slow
def test_full_train_and_test_load(omniglot_dir, tmp_path):
  for name in ("images_background.zip", "images_evaluation.zip"):
    (tmp_path / name).symlink_to(omniglot_dir / name)
  train = om.load("train", data_dir=tmp_path, download=False)
  test = om.load("test", data_dir=tmp_path, download=False)  # from the caches
  assert train.images.shape == (1200, 20, 20, 20)
  assert test.images.shape == (423, 20, 20, 20)
  assert train.characters == om.list_characters("train", tmp_path)
  assert test.characters == om.list_characters("test", tmp_path)
  for split in (train, test):
    assert 0.0 <= split.images.min() and split.images.max() <= 1.0
    assert 0.02 < split.images.mean() < 0.2
  assert sorted(p.name for p in tmp_path.glob("*.npz")) == [
      "images_background_20px.npz", "images_evaluation_20px.npz"]


def test_memjax_data_load_after_import_memjax(small1_reference):
  import memjax

  split, d = small1_reference
  again = memjax.data.load("small1", data_dir=d, download=False)
  np.testing.assert_array_equal(again.images, split.images)
  assert memjax.data.load is om.load


def test_load_resolves_the_data_and_cache_directories_once(small1_reference, monkeypatch):
  split, d = small1_reference
  calls = {"resolve": 0, "cache": 0}
  resolve, cache_dir_for = om.resolve_data_dir, om._cache_dir_for

  def counted(name, fn):
    def wrapper(*args, **kwargs):
      calls[name] += 1
      return fn(*args, **kwargs)
    return wrapper

  monkeypatch.setattr(om, "resolve_data_dir", counted("resolve", resolve))
  monkeypatch.setattr(om, "_cache_dir_for", counted("cache", cache_dir_for))
  np.testing.assert_array_equal(om.load("small1", data_dir=d, download=False).images, split.images)
  assert calls == {"resolve": 1, "cache": 1}
