"""Omniglot (Lake, Salakhutdinov & Tenenbaum 2015): reading, checking, caching.

The official release is four archives, each a zip or the folder it extracts to::

  images_background.zip           30 alphabets, 964 characters, 19,280 images
  images_evaluation.zip           20 alphabets, 659 characters, 13,180 images
  images_background_small1.zip     5 alphabets, 136 characters,  2,720 images
  images_background_small2.zip     5 alphabets, 156 characters,  3,120 images

laid out as ``images_background/<Alphabet>/characterNN/NNNN_DD.png``: 20 drawers
per character, 105x105 1-bit PNGs, black strokes on white paper.

Data directory. Archives are looked up in, in order of precedence: the
``data_dir`` argument, the environment variable ``$MEMJAX_DATA_DIR``, or the
per-user cache ``$XDG_CACHE_HOME/memjax/omniglot`` (``~/.cache/memjax/omniglot``
when ``$XDG_CACHE_HOME`` is unset). A directory that holds none of the archives
but has an ``omniglot/`` subdirectory stands for that subdirectory, so
``$MEMJAX_DATA_DIR`` may name either the Omniglot folder or its parent. Under
each name the zip is preferred to the extracted folder.

Checks. Local archives are checked by their contents (counts of alphabets,
characters and images, 20 drawers per character, 105x105 images), not by their
bytes: re-packed zips of the official images are fine. Only freshly downloaded
zips are also checked against the sha256 that ``tensorflow_datasets`` lists.

Splits. ``'background'``, ``'evaluation'``, ``'small1'`` and ``'small2'`` are the
archives themselves. ``'train'`` and ``'test'`` are the usual 1,200 training and
423 test characters of Santoro et al. (2016) and Vinyals et al. (2016): the
1,623 characters of background and evaluation are pooled in a fixed order --
the background alphabets sorted by name (Python string order), then the
evaluation alphabets sorted by name, characters sorted by name (``character01``,
``character02``, ...) within each alphabet -- and the first 1,200 are ``'train'``
(all 964 background characters and the first 236 evaluation characters), the
remaining 423 ``'test'``. :func:`list_characters` gives this order without
decoding any image. Drawers (axis 1 of ``images``) are in file-name order.

Images. :func:`preprocess` maps the raw pixels to float32 ink (stroke 1.0, paper
0.0) and resizes with PIL's box (area-averaging) filter, so values lie in
[0, 1]. Rotations by 90/180/270 degrees as new classes are applied by the
samplers in :mod:`memjax.data.episodes`, not stored here.

Cache. Decoded and resized arrays are cached as ``<archive>_<size>px.npz`` in
``cache_dir`` (default: the data directory when it is writable, else the
per-user cache). Caches and downloads are written to a temporary file in the
same folder and moved into place with ``os.replace``, so a crash never leaves a
half-written file under the final name; an unreadable or ill-shaped cache is
deleted and rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Sequence

import numpy as np
from PIL import Image

from memjax._checks import check_positive_int

__all__ = [
    "ARCHIVES",
    "BASE_URL",
    "NUM_DRAWERS",
    "NUM_TRAIN_CHARACTERS",
    "RAW_IMAGE_SIZE",
    "SPLITS",
    "ArchiveSpec",
    "OmniglotSplit",
    "default_cache_dir",
    "download_archive",
    "list_characters",
    "load",
    "preprocess",
    "resolve_data_dir",
]

BASE_URL = "https://github.com/brendenlake/omniglot/raw/master/python/"
NUM_DRAWERS = 20
RAW_IMAGE_SIZE = 105
NUM_TRAIN_CHARACTERS = 1200
_CACHE_VERSION = 1


class ArchiveSpec(NamedTuple):
  """What one official Omniglot archive holds.

  Attributes:
    name: file stem, e.g. ``"images_background"`` (``<name>.zip``, ``<name>/``).
    sha256: checksum of the official download (tensorflow_datasets' value).
    num_alphabets: number of alphabet folders.
    num_characters: number of character folders, over all alphabets.
    num_images: number of PNG files (``num_characters * 20``).
  """
  name: str
  sha256: str
  num_alphabets: int
  num_characters: int
  num_images: int


ARCHIVES: dict[str, ArchiveSpec] = {
    "background": ArchiveSpec(
        "images_background",
        "ad41ab679c8b5d90b271ef46be6987cc81211774a695c29dcc5367b2b26ee640", 30, 964, 19280),
    "evaluation": ArchiveSpec(
        "images_evaluation",
        "1f61a8f3366785b057fc117d9228e78a16e3d976c8953b2a10fcc74cf0609cee", 20, 659, 13180),
    "small1": ArchiveSpec(
        "images_background_small1",
        "f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4", 5, 136, 2720),
    "small2": ArchiveSpec(
        "images_background_small2",
        "3ccaa407515a8778e5d0861875af38b17e418f301ad5bb3b5a6b65d901a41c7f", 5, 156, 3120),
}

# Split name -> the archives it is drawn from, in pooling order.
SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("background", "evaluation"),
    "test": ("background", "evaluation"),
    "background": ("background",),
    "evaluation": ("evaluation",),
    "small1": ("small1",),
    "small2": ("small2",),
}


class OmniglotSplit(NamedTuple):
  """A split of Omniglot, one row per character.

  Attributes:
    images: float32 ``[C, 20, size, size]``, characters x drawers; ink 1.0,
      paper 0.0, values in [0, 1].
    alphabets: ``C`` alphabet names, one per character (e.g. ``"Latin"``).
    characters: ``C`` character names ``"<Alphabet>/characterNN"``.
  """
  images: np.ndarray
  alphabets: list[str]
  characters: list[str]


# ----------------------------------------------------------------------------
# Locations.


def default_cache_dir() -> Path:
  """The per-user cache, ``$XDG_CACHE_HOME/memjax/omniglot`` or ``~/.cache/...``."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return Path(base) / "memjax" / "omniglot"


def _has_any_archive(path: Path) -> bool:
  return any((path / f"{spec.name}.zip").is_file() or (path / spec.name).is_dir()
             for spec in ARCHIVES.values())


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
  """Returns the directory that holds (or will hold) the Omniglot archives.

  Args:
    data_dir: explicit directory; ``None`` falls back on ``$MEMJAX_DATA_DIR``,
      then on :func:`default_cache_dir`. A directory without any archive but
      with an ``omniglot/`` subdirectory resolves to that subdirectory.

  Returns:
    The directory (it need not exist yet).
  """
  if data_dir is None:
    data_dir = os.environ.get("MEMJAX_DATA_DIR") or None
  if data_dir is None:
    return default_cache_dir()
  path = Path(data_dir).expanduser()
  if not _has_any_archive(path) and (path / "omniglot").is_dir():
    return path / "omniglot"
  return path


def _find_archive(spec: ArchiveSpec, data_dir: Path) -> Path | None:
  zip_path = data_dir / f"{spec.name}.zip"
  if zip_path.is_file():
    return zip_path
  folder = data_dir / spec.name
  if folder.is_dir():
    return folder
  return None


def _writable_dir(path: Path) -> bool:
  """Whether files can be created in ``path``, or ``path`` can be created.

  A directory without any write permission bit counts as read-only even for
  root, who could write there anyway: a deliberately read-only data folder
  gets no cache files.
  """
  path = path.absolute()
  while not path.exists():
    if path.parent == path:
      return False
    path = path.parent
  if not path.is_dir():
    return False
  return bool(path.stat().st_mode & 0o222) and os.access(path, os.W_OK | os.X_OK)


# ----------------------------------------------------------------------------
# Atomic writes.


@contextlib.contextmanager
def _atomic_file(final: Path) -> Iterator[Path]:
  """Yields a temp path beside ``final``; on success moves it to ``final``.

  The caller writes (and closes) the temp file inside the ``with`` block. On
  any exception (including KeyboardInterrupt) the temp file is removed and
  ``final`` is left untouched.
  """
  fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".part")
  os.close(fd)
  try:
    yield Path(tmp)
    os.chmod(tmp, 0o644)  # mkstemp makes it 0600; caches may be shared.
    os.replace(tmp, final)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


# ----------------------------------------------------------------------------
# Download.


def _manual_instructions(names: Sequence[str], data_dir: Path) -> str:
  urls = ", ".join(f"{BASE_URL}{n}.zip" for n in names)
  files = ", ".join(f"{n}.zip" for n in names)
  return (f"put {files} (from {urls}), or the folders they extract to, in {data_dir}; "
          "or pass data_dir=... / set $MEMJAX_DATA_DIR to a directory that holds them")


def download_archive(archive: str, data_dir: str | os.PathLike | None = None, *,
                     timeout: float = 60.0) -> Path:
  """Downloads one official archive into the data directory, atomically.

  The bytes are streamed to a temporary file in ``data_dir``, checked against
  the official sha256 and the expected contents, then moved to
  ``<data_dir>/<name>.zip``. Nothing is left behind on failure.

  Args:
    archive: one of ``'background'``, ``'evaluation'``, ``'small1'``, ``'small2'``.
    data_dir: target directory (see :func:`resolve_data_dir`).
    timeout: socket timeout in seconds.

  Returns:
    Path of the downloaded zip.

  Raises:
    ValueError: unknown ``archive``, or the download has the wrong checksum or
      contents.
    FileNotFoundError: the download failed (network error); the message says
      which file to put where.
  """
  if archive not in ARCHIVES:
    raise ValueError(f"argument `archive`: expected one of {sorted(ARCHIVES)}, got {archive!r}")
  return _download(ARCHIVES[archive], resolve_data_dir(data_dir), timeout)


def _download(spec: ArchiveSpec, data_dir: Path, timeout: float = 60.0) -> Path:
  """:func:`download_archive` into an already resolved ``data_dir``."""
  url = f"{BASE_URL}{spec.name}.zip"
  final = data_dir / f"{spec.name}.zip"
  try:
    data_dir.mkdir(parents=True, exist_ok=True)
  except OSError as err:
    raise FileNotFoundError(f"cannot create data directory {data_dir} ({err}); "
                            + _manual_instructions([spec.name], data_dir)) from err
  digest = hashlib.sha256()
  try:
    with _atomic_file(final) as tmp:
      with open(tmp, "wb") as f:
        try:
          with contextlib.closing(urllib.request.urlopen(url, timeout=timeout)) as resp:
            while chunk := resp.read(1 << 20):
              digest.update(chunk)
              f.write(chunk)
        except (urllib.error.URLError, OSError, ValueError) as err:
          raise FileNotFoundError(f"could not download {url} ({err}); "
                                  + _manual_instructions([spec.name], data_dir)) from err
      got = digest.hexdigest()
      if got != spec.sha256:
        raise ValueError(f"downloaded file {url}: expected sha256 {spec.sha256}, got {got}; "
                         "the file was discarded")
      _index_zip(tmp, spec, display=url)
  except FileNotFoundError:
    raise
  except OSError as err:
    raise FileNotFoundError(f"could not write {final} ({err}); "
                            + _manual_instructions([spec.name], data_dir)) from err
  return final


def _ensure_archives(archives: Sequence[str], data_dir: Path, download: bool) -> dict[str, Path]:
  """Finds (downloading when allowed) each archive; returns archive -> path."""
  found = {a: _find_archive(ARCHIVES[a], data_dir) for a in archives}
  missing = [a for a, p in found.items() if p is None]
  if missing and not download:
    names = [ARCHIVES[a].name for a in missing]
    raise FileNotFoundError(
        f"Omniglot files not found in {data_dir}: "
        + ", ".join(f"{n}.zip" for n in names)
        + " (nor the extracted folders), and download=False; " + _manual_instructions(names, data_dir))
  for i, a in enumerate(missing):
    try:
      found[a] = _download(ARCHIVES[a], data_dir)
    except FileNotFoundError as err:
      if len(missing) - i == 1:
        raise
      names = [ARCHIVES[m].name for m in missing[i:]]
      raise FileNotFoundError(f"{err}\nAll still missing: " + ", ".join(f"{n}.zip" for n in names)
                              + "; " + _manual_instructions(names, data_dir)) from err
  return found  # type: ignore[return-value]


# ----------------------------------------------------------------------------
# Indexing (no decoding).

# (alphabet, character) -> member names / file paths of its 20 drawers, sorted.
_Index = dict[tuple[str, str], list[str]]


def _index_names(names: Sequence[str], spec: ArchiveSpec, display: str) -> _Index:
  """Groups image paths ``[<name>/]<Alphabet>/<character>/<file>.png`` by character.

  Raises:
    ValueError: a PNG at the wrong depth, or counts different from ``spec``.
  """
  index: _Index = {}
  for name in names:
    parts = [p for p in name.replace("\\", "/").split("/") if p]
    if not parts or name.endswith("/") or parts[0] == "__MACOSX" or parts[-1].startswith("."):
      continue
    if not parts[-1].lower().endswith(".png"):
      continue
    if parts[0] == spec.name:
      parts = parts[1:]
    if len(parts) != 3:
      raise ValueError(
          f"{display}: expected images at '{spec.name}/<Alphabet>/characterNN/NNNN_DD.png', "
          f"got {name!r}")
    index.setdefault((parts[0], parts[1]), []).append(name)
  alphabets = {a for a, _ in index}
  num_images = sum(len(v) for v in index.values())
  got = (len(alphabets), len(index), num_images)
  want = (spec.num_alphabets, spec.num_characters, spec.num_images)
  if got != want:
    raise ValueError(
        f"{display}: expected the contents of the official {spec.name}.zip "
        f"({want[0]} alphabets / {want[1]} characters / {want[2]} images), "
        f"got {got[0]} alphabets / {got[1]} characters / {got[2]} images")
  for (alphabet, character), files in index.items():
    if len(files) != NUM_DRAWERS:
      raise ValueError(f"{display}: expected {NUM_DRAWERS} images in {alphabet}/{character}, "
                       f"got {len(files)}")
  return {k: sorted(v) for k, v in sorted(index.items())}


def _open_zip(path: Path, display: str | None = None) -> zipfile.ZipFile:
  display = display or str(path)
  try:
    return zipfile.ZipFile(path)
  except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
    raise ValueError(f"{display}: not a readable zip archive, the file is corrupt or "
                     f"truncated ({err}); delete it and download it again") from err


def _index_zip(path: Path, spec: ArchiveSpec, display: str | None = None) -> _Index:
  with _open_zip(path, display) as zf:
    return _index_names(zf.namelist(), spec, display or str(path))


def _index_archive(path: Path, spec: ArchiveSpec) -> _Index:
  if path.is_dir():
    names = [p.relative_to(path).as_posix() for p in path.rglob("*.png")]
    names += [p.relative_to(path).as_posix() for p in path.rglob("*.PNG")]
    return _index_names(sorted(set(names)), spec, str(path))
  return _index_zip(path, spec)


def _pooled_characters(split: str) -> slice:
  """Which rows of the pooled (background + evaluation) characters ``split`` takes."""
  if split == "train":
    return slice(0, NUM_TRAIN_CHARACTERS)
  if split == "test":
    return slice(NUM_TRAIN_CHARACTERS, None)
  return slice(None)


def _check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"argument `split`: expected one of {list(SPLITS)}, got {split!r}")


def list_characters(split: str = "train", data_dir: str | os.PathLike | None = None,
                    download: bool = False) -> list[str]:
  """Lists a split's characters, in :func:`load`'s order, without decoding images.

  Reads only the zip directories (or folder listings) and checks their counts.

  Args:
    split: ``'train'``, ``'test'``, ``'background'``, ``'evaluation'``,
      ``'small1'`` or ``'small2'``.
    data_dir: see :func:`resolve_data_dir`.
    download: fetch missing archives.

  Returns:
    Character names ``"<Alphabet>/characterNN"`` (1,200 for ``'train'``,
    423 for ``'test'``).
  """
  _check_split(split)
  data_dir = resolve_data_dir(data_dir)
  paths = _ensure_archives(SPLITS[split], data_dir, download)
  names: list[str] = []
  for a in SPLITS[split]:
    names += [f"{al}/{ch}" for al, ch in _index_archive(paths[a], ARCHIVES[a])]
  return names[_pooled_characters(split)]


# ----------------------------------------------------------------------------
# Decoding.


def preprocess(images: np.ndarray, image_size: int) -> np.ndarray:
  """Turns raw Omniglot pixels into resized float ink images.

  Args:
    images: uint8 ``[n, H, W]`` (0 = black stroke, 255 = white paper), or bool
      ``[n, H, W]`` (False = stroke, as PIL decodes 1-bit PNGs); the release's
      images are 105x105.
    image_size: output side length, a positive int.

  Returns:
    float32 ``[n, image_size, image_size]``: stroke 1.0, paper 0.0, resized
    with PIL's box (area-averaging) filter; values in [0, 1].

  Raises:
    ValueError: wrong dtype, number of axes, empty image, or bad ``image_size``.
  """
  check_positive_int("image_size", image_size)
  images = np.asarray(images)
  if images.dtype not in (np.uint8, np.bool_):
    raise ValueError(f"argument `images`: expected dtype uint8 (0 = stroke, 255 = paper) or "
                     f"bool, got {images.dtype}")
  if images.ndim != 3 or images.shape[1] < 1 or images.shape[2] < 1:
    raise ValueError(f"argument `images`: expected shape [n, H, W] (raw Omniglot is "
                     f"[n, {RAW_IMAGE_SIZE}, {RAW_IMAGE_SIZE}]), got {list(images.shape)}")
  scale = 1.0 if images.dtype == np.bool_ else 1.0 / 255.0
  ink = 1.0 - images.astype(np.float32) * np.float32(scale)
  n, h, w = images.shape
  size = int(image_size)
  if (h, w) == (size, size):
    return np.clip(ink, 0.0, 1.0)
  out = np.empty((n, size, size), np.float32)
  for i in range(n):
    out[i] = np.asarray(Image.fromarray(ink[i], mode="F").resize((size, size), Image.BOX))
  return np.clip(out, 0.0, 1.0, out=out)


def _decode_png(data: bytes, display: str) -> np.ndarray:
  """Decodes one Omniglot PNG to uint8 ``[105, 105]`` (0 = stroke, 255 = paper)."""
  try:
    with Image.open(io.BytesIO(data)) as im:
      im.load()
      if im.mode == "1":
        arr = np.asarray(im).astype(np.uint8) * np.uint8(255)
      else:
        arr = np.asarray(im.convert("L"))
  except Exception as err:  # PIL raises many types on bad data.
    raise ValueError(f"{display}: cannot decode PNG ({err})") from err
  if arr.shape != (RAW_IMAGE_SIZE, RAW_IMAGE_SIZE):
    raise ValueError(f"{display}: expected a {RAW_IMAGE_SIZE}x{RAW_IMAGE_SIZE} image, "
                     f"got {arr.shape[1]}x{arr.shape[0]}")
  return arr


def _decode_archive(path: Path, spec: ArchiveSpec, image_size: int) -> OmniglotSplit:
  """Decodes and preprocesses a whole archive (zip or folder)."""
  index = _index_archive(path, spec)
  out = np.empty((len(index), NUM_DRAWERS, image_size, image_size), np.float32)
  raw = np.empty((NUM_DRAWERS, RAW_IMAGE_SIZE, RAW_IMAGE_SIZE), np.uint8)
  zf = _open_zip(path) if path.is_file() else None
  try:
    read: Callable[[str], bytes]
    if zf is not None:
      def read(name: str) -> bytes:
        try:
          return zf.read(name)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError) as err:
          raise ValueError(f"{path}: cannot read member {name!r}, the archive is corrupt "
                           f"or truncated ({err}); delete it and download it again") from err
    else:
      def read(name: str) -> bytes:
        return (path / name).read_bytes()
    for c, files in enumerate(index.values()):
      for d, name in enumerate(files):
        raw[d] = _decode_png(read(name), f"{path}: {name}")
      out[c] = preprocess(raw, image_size)
  finally:
    if zf is not None:
      zf.close()
  alphabets = [a for a, _ in index]
  characters = [f"{a}/{ch}" for a, ch in index]
  return OmniglotSplit(out, alphabets, characters)


# ----------------------------------------------------------------------------
# Cache.


def _cache_path(spec: ArchiveSpec, image_size: int, cache_dir: Path) -> Path:
  return cache_dir / f"{spec.name}_{image_size}px.npz"


def _read_cache(path: Path, spec: ArchiveSpec, image_size: int) -> OmniglotSplit | None:
  """Returns the cached split, or None (deleting the file) when it is unusable."""
  if not path.is_file():
    return None
  want = (spec.num_characters, NUM_DRAWERS, image_size, image_size)
  try:
    with np.load(path, allow_pickle=False) as f:
      version = int(f["version"])
      images = f["images"]
      alphabets = [str(a) for a in f["alphabets"]]
      characters = [str(c) for c in f["characters"]]
    problem = None
    if version != _CACHE_VERSION:
      problem = f"expected cache version {_CACHE_VERSION}, got {version}"
    elif images.shape != want or images.dtype != np.float32:
      problem = f"expected images float32 {list(want)}, got {images.dtype} {list(images.shape)}"
    elif len(alphabets) != want[0] or len(characters) != want[0]:
      problem = (f"expected {want[0]} alphabet and character names, got "
                 f"{len(alphabets)} and {len(characters)}")
  except Exception as err:  # np.load raises many types on truncated files.
    problem = f"unreadable ({type(err).__name__}: {err})"
  if problem is None:
    return OmniglotSplit(images, alphabets, characters)
  warnings.warn(f"Omniglot cache {path} is unusable ({problem}); deleting and rebuilding it",
                RuntimeWarning, stacklevel=3)
  with contextlib.suppress(OSError):
    path.unlink()
  return None


def _write_cache(path: Path, split: OmniglotSplit) -> None:
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    with _atomic_file(path) as tmp, open(tmp, "wb") as f:
      np.savez(f, version=np.int64(_CACHE_VERSION), images=split.images,
               alphabets=np.asarray(split.alphabets, dtype=str),
               characters=np.asarray(split.characters, dtype=str))
  except OSError as err:
    warnings.warn(f"could not write Omniglot cache {path} ({err}); continuing without it",
                  RuntimeWarning, stacklevel=3)


def _cache_dir_for(cache_dir: str | os.PathLike | None, data_dir: Path) -> Path | None:
  if cache_dir is not None:
    path = Path(cache_dir).expanduser()
    return path if _writable_dir(path) or path.is_dir() else None  # read-only: read only
  for path in (data_dir, default_cache_dir()):
    if _writable_dir(path):
      return path
  return None


def _load_archive(archive: str, image_size: int, path: Path | None, cdir: Path | None,
                  data_dir: Path, download: bool) -> OmniglotSplit:
  """One archive's split: from the cache in ``cdir`` if usable, else decoded from
  ``path`` (found by :func:`load`; None: looked up in ``data_dir`` now) and cached."""
  spec = ARCHIVES[archive]
  cpath = _cache_path(spec, image_size, cdir) if cdir is not None else None
  if cpath is not None:
    cached = _read_cache(cpath, spec, image_size)
    if cached is not None:
      return cached
  if path is None:  # a cache was there, but it is unusable (and now deleted)
    path = _ensure_archives([archive], data_dir, download)[archive]
  split = _decode_archive(path, spec, image_size)
  if cpath is not None:
    _write_cache(cpath, split)
  return split


# ----------------------------------------------------------------------------
# tensorflow_datasets.

_TFDS_SPLITS = {"background": "train", "evaluation": "test", "small1": "small1", "small2": "small2"}


def _load_tfds_archive(archive: str, image_size: int, data_dir: str | os.PathLike | None,
                       download: bool) -> OmniglotSplit:
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as err:
    raise ImportError("source='tfds' needs tensorflow_datasets, which is not installed: "
                      "pip install memjax[data] (or use source='zip')") from err
  spec = ARCHIVES[archive]
  ds, info = tfds.load("omniglot", split=_TFDS_SPLITS[archive], with_info=True,
                       data_dir=None if data_dir is None else str(data_dir),
                       download=download, shuffle_files=False)
  names = info.features["alphabet"].names
  groups: dict[tuple[str, str], list[np.ndarray]] = {}
  for ex in tfds.as_numpy(ds):
    image = np.asarray(ex["image"])
    if image.ndim == 3:
      image = image[..., 0]
    key = (str(names[int(ex["alphabet"])]), f"character{int(ex['alphabet_char_id']) + 1:02d}")
    groups.setdefault(key, []).append(image.astype(np.uint8))
  display = f"tensorflow_datasets omniglot split {_TFDS_SPLITS[archive]!r}"
  index = _index_names([f"{a}/{c}/{i:02d}.png" for (a, c), v in groups.items()
                        for i in range(len(v))], spec, display)
  out = np.empty((len(index), NUM_DRAWERS, image_size, image_size), np.float32)
  for c, key in enumerate(index):
    raw = np.stack(groups[key])
    if raw.shape[1:] != (RAW_IMAGE_SIZE, RAW_IMAGE_SIZE):
      raise ValueError(f"{display}: expected {RAW_IMAGE_SIZE}x{RAW_IMAGE_SIZE} images, "
                       f"got {list(raw.shape[1:])}")
    out[c] = preprocess(raw, image_size)
  return OmniglotSplit(out, [a for a, _ in index], [f"{a}/{ch}" for a, ch in index])


# ----------------------------------------------------------------------------
# Public entry point.


def load(split: str = "train", image_size: int = 20, data_dir: str | os.PathLike | None = None,
         download: bool = True, source: str = "zip",
         cache_dir: str | os.PathLike | None = None) -> OmniglotSplit:
  """Loads an Omniglot split as a dense array of characters x drawers.

  Args:
    split: ``'train'`` (1,200 characters), ``'test'`` (423), ``'background'``
      (964), ``'evaluation'`` (659), ``'small1'`` (136) or ``'small2'`` (156);
      see the module docstring for the train/test order.
    image_size: side of the resized square images, a positive int.
    data_dir: where the archives are (see :func:`resolve_data_dir`).
    download: fetch missing archives from the official repository.
    source: ``'zip'`` (the official archives, or their extracted folders) or
      ``'tfds'`` (tensorflow_datasets' ``omniglot``; ``data_dir`` is then
      tfds' data directory, and nothing is cached here).
    cache_dir: where to cache decoded arrays; default the data directory when
      writable, else :func:`default_cache_dir`.

  Returns:
    An :class:`OmniglotSplit` with ``images`` float32
    ``[C, 20, image_size, image_size]`` and ``C`` alphabet and character names.

  Raises:
    ValueError: bad argument, or an archive that is corrupt or has the wrong
      layout or counts (the message names the file).
    FileNotFoundError: archives missing and not downloadable.
    ImportError: ``source='tfds'`` without tensorflow_datasets installed.
  """
  _check_split(split)
  image_size = check_positive_int("image_size", image_size)
  if source not in ("zip", "tfds"):
    raise ValueError(f"argument `source`: expected 'zip' or 'tfds', got {source!r}")
  if source == "zip":
    # The data and cache directories are resolved once, here. Every uncached
    # archive is found (or fetched) first, so that a missing one is reported
    # before any decoding.
    ddir = resolve_data_dir(data_dir)
    cdir = _cache_dir_for(cache_dir, ddir)
    needed = [a for a in SPLITS[split]
              if cdir is None or not _cache_path(ARCHIVES[a], image_size, cdir).is_file()]
    paths = _ensure_archives(needed, ddir, download)
    parts = [_load_archive(a, image_size, paths.get(a), cdir, ddir, download) for a in SPLITS[split]]
  else:
    parts = [_load_tfds_archive(a, image_size, data_dir, download) for a in SPLITS[split]]
  if len(parts) == 1:
    return parts[0]
  sel = _pooled_characters(split)
  images = np.concatenate([p.images for p in parts])[sel]
  alphabets = sum((p.alphabets for p in parts), [])[sel]
  characters = sum((p.characters for p in parts), [])[sel]
  return OmniglotSplit(np.ascontiguousarray(images), alphabets, characters)
