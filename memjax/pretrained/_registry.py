"""The registry format: one ``NAME.npz`` of float32 arrays + one ``NAME.json``.

``NAME.npz`` holds the model's variables flattened to ``"/"``-joined paths
(``params/cell/controller/ii/kernel``), written with :func:`numpy.savez` and
read back with ``allow_pickle=False``. ``NAME.json`` holds

* ``format`` (1), ``name``;
* ``model``: how to build the Flax module, generically — its public class path
  and constructor attributes, recursively (``{"module": "flax.linen.RNN",
  "kwargs": {"cell": {"module": "memjax.MANNCell", "kwargs": {...}}}}``).
  Every attribute of a memjax module is recorded (so a later change of a
  default cannot change a shipped model, and a new attribute needs no registry
  change); of other modules (``flax.linen.RNN``) only those that differ from
  their defaults. Tuples become JSON lists and dtypes ``{"dtype": "float32"}``;
* ``inputs``: shapes and dtypes of one example call of ``model.init`` (used to
  check the weights' shapes against the module on load);
* ``weights``: ``{"file", "sha256", "bytes"}`` of the ``.npz``, verified on load;
* anything else the writer passes (:mod:`memjax.pretrained.export` records the
  paper table and row, data split, image size, number of classes, training
  command, steps/episodes trained, measured results, date, hardware).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import re
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

FORMAT_VERSION = 1
# Shipped models: memjax/pretrained/models/NAME.{json,npz} (package data).
PACKAGE_DIR = Path(__file__).resolve().parent / "models"
# Extra registry directories (os.pathsep-separated), searched before the package's.
PATH_ENV = "MEMJAX_PRETRAINED_PATH"
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_SEP = "/"
# Modules a registry file may name (it is data, not code: nothing else is imported).
_ALLOWED_MODULE_PREFIXES = ("memjax.", "flax.linen.")


class Pretrained(NamedTuple):
  """A loaded model.

  Attributes:
    model: a Flax module ready for ``model.apply(variables, ...)``.
    variables: its variables (``{"params": ...}``), float32 jax arrays.
    config: the registry record (a plain dict): table/row, data, training
      command, results, date, hardware, ... plus ``"path"`` (the ``.json`` read)
      and ``"overrides"``.
  """
  model: nn.Module
  variables: dict
  config: dict


class PretrainedFileError(ValueError):
  """A registry file is missing, corrupt, truncated or does not fit its module.

  The message starts with the file's path.
  """


# ----------------------------------------------------------------------------
# Where the models are.


def search_path() -> list[Path]:
  """The registry directories searched by :func:`load`, first match wins: those
  in ``$MEMJAX_PRETRAINED_PATH`` (``os.pathsep``-separated, e.g. models you
  exported yourself), then the package's own (``memjax/pretrained/models``)."""
  extra = [Path(p) for p in os.environ.get(PATH_ENV, "").split(os.pathsep) if p]
  return extra + [PACKAGE_DIR]


def _index() -> dict[str, Path]:
  """name -> .json path, for every name whose .json and .npz both exist (first directory wins)."""
  found: dict[str, Path] = {}
  for directory in search_path():
    if not directory.is_dir():
      continue
    for path in sorted(directory.glob("*.json")):
      name = path.stem
      if _NAME.match(name) and name not in found and path.with_suffix(".npz").is_file():
        found[name] = path
  return found


def available() -> tuple[str, ...]:
  """Names of the models that can be loaded (shipped, or on ``$MEMJAX_PRETRAINED_PATH``), sorted."""
  return tuple(sorted(_index()))


def path_of(name: str) -> Path:
  """The ``.json`` file of model ``name``.

  Raises:
    ValueError: ``name`` is not available (the message lists the available names).
  """
  if not isinstance(name, str):
    raise ValueError(f"argument `name`: expected a str, got {type(name).__name__}")
  index = _index()
  if name not in index:
    names = ", ".join(sorted(index)) or "none"
    raise ValueError(f"argument `name`: no pretrained model {name!r}; available: {names}")
  return index[name]


# ----------------------------------------------------------------------------
# Modules <-> JSON.


def _public_path(cls: type) -> str:
  """``memjax.NTMCell`` when the class is re-exported at the package top, else its module path."""
  top = cls.__module__.split(".")[0]
  try:
    if getattr(importlib.import_module(top), cls.__name__, None) is cls:
      return f"{top}.{cls.__name__}"
  except ImportError:  # pragma: no cover
    pass
  if cls.__module__.startswith("flax.linen") and getattr(nn, cls.__name__, None) is cls:
    return f"flax.linen.{cls.__name__}"
  return f"{cls.__module__}.{cls.__qualname__}"


def _is_default(field: dataclasses.Field, value) -> bool:
  if field.default is dataclasses.MISSING:
    return False
  try:
    return bool(value == field.default)
  except Exception:  # noqa: BLE001 - arrays and odd types: not a default
    return False


def _dtype_name(value) -> str | None:
  if isinstance(value, (np.dtype, type)):
    try:
      dtype = np.dtype(value)
    except TypeError:
      return None
    return None if dtype == np.dtype(object) else dtype.name
  return None


def _encode(value, where: str):
  if isinstance(value, nn.Module):
    return module_spec(value)
  if value is None or isinstance(value, (bool, str)):
    return value
  if isinstance(value, (int, np.integer)):
    return int(value)
  if isinstance(value, (float, np.floating)):
    if not np.isfinite(value):
      raise ValueError(f"cannot record attribute {where}={value!r}: not a finite number")
    return float(value)
  if isinstance(value, (tuple, list)):
    return [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
  if isinstance(value, dict) or hasattr(value, "items"):
    return {"dict": {str(k): _encode(v, f"{where}.{k}") for k, v in value.items()}}
  dtype = _dtype_name(value)
  if dtype is not None:
    return {"dtype": dtype}
  raise ValueError(f"cannot record attribute {where}={value!r} ({type(value).__name__}) in a "
                   "registry file: only numbers, strings, bools, None, tuples, dtypes and modules")


def module_spec(module: nn.Module) -> dict:
  """The JSON description of ``module``: ``{"module": class path, "kwargs": {...}}``.

  Records every constructor attribute of a memjax module and the non-default
  ones of other modules (e.g. ``flax.linen.RNN``), recursively for attributes
  that are modules (the RNN's cell).

  Raises:
    ValueError: an attribute cannot be written as JSON (the message names it).
  """
  if not isinstance(module, nn.Module):
    raise ValueError(f"argument `module`: expected a flax.linen.Module, got {type(module).__name__}")
  path = _public_path(type(module))
  own = path.startswith("memjax.")
  kwargs = {}
  for field in dataclasses.fields(module):
    if field.name in ("parent", "name") or not field.init:
      continue
    value = getattr(module, field.name)
    if not own and _is_default(field, value):
      continue
    kwargs[field.name] = _encode(value, f"{path}.{field.name}")
  return {"module": path, "kwargs": kwargs}


def _decode(value):
  if isinstance(value, list):
    return tuple(_decode(v) for v in value)
  if isinstance(value, dict):
    if _is_spec(value):
      return build_module(value)
    if set(value) == {"dtype"}:
      return jnp.dtype(value["dtype"])
    if set(value) == {"dict"}:
      return {k: _decode(v) for k, v in value["dict"].items()}
    raise ValueError(f"unrecognised value in a module description: {value!r}")
  return value


def _resolve_class(path: str) -> type:
  if not isinstance(path, str) or not path.startswith(_ALLOWED_MODULE_PREFIXES):
    raise ValueError(f"module class {path!r}: expected a class of memjax or flax.linen")
  module_name, _, attr = path.rpartition(".")
  try:
    cls = getattr(importlib.import_module(module_name), attr)
  except (ImportError, AttributeError):
    raise ValueError(f"module class {path!r} does not exist in this memjax/flax "
                     "(was the file written by another version?)") from None
  if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
    raise ValueError(f"module class {path!r} is not a flax.linen.Module")
  return cls


def _is_spec(value) -> bool:
  return isinstance(value, dict) and set(value) == {"module", "kwargs"}


def with_overrides(spec: dict, overrides: dict) -> dict:
  """``spec`` with ``overrides`` applied to its first memjax module (the model
  itself, or the cell inside ``nn.RNN``).

  Raises:
    ValueError: an override that names no attribute of that module.
  """
  if not overrides:
    return spec
  if spec["module"].startswith("memjax."):
    cls = _resolve_class(spec["module"])
    names = {f.name for f in dataclasses.fields(cls) if f.init and f.name not in ("parent", "name")}
    unknown = sorted(set(overrides) - names)
    if unknown:
      raise ValueError(f"override {unknown[0]!r}: not an attribute of {spec['module']}; "
                       f"expected one of {sorted(names)}")
    kwargs = dict(spec["kwargs"])
    kwargs.update({k: _encode(v, f"{spec['module']}.{k}") for k, v in overrides.items()})
    return {"module": spec["module"], "kwargs": kwargs}
  for key, value in spec["kwargs"].items():
    if _is_spec(value):
      return {"module": spec["module"],
              "kwargs": {**spec["kwargs"], key: with_overrides(value, overrides)}}
  raise ValueError(f"overrides {sorted(overrides)}: {spec['module']} holds no memjax module")


def build_module(spec: dict, overrides: dict | None = None) -> nn.Module:
  """Builds the module a :func:`module_spec` describes.

  Args:
    spec: ``{"module": class path, "kwargs": {...}}``.
    overrides: attributes replacing the recorded ones (:func:`with_overrides`).

  Raises:
    ValueError: an unknown class, an attribute the class does not accept, or
      an override naming no attribute of the memjax module.
  """
  if not _is_spec(spec):
    raise ValueError(f"argument `spec`: expected {{'module': ..., 'kwargs': {{...}}}}, got {spec!r}")
  spec = with_overrides(spec, overrides or {})
  cls = _resolve_class(spec["module"])
  decoded = {k: _decode(v) for k, v in spec["kwargs"].items()}
  try:
    return cls(**decoded)
  except TypeError as e:
    raise ValueError(f"{spec['module']} does not accept the recorded attributes "
                     f"({e}); was the file written by another memjax version?") from None


def _memjax_kwargs(spec: dict) -> dict:
  """The recorded kwargs of the first memjax module in ``spec``."""
  if spec["module"].startswith("memjax."):
    return spec["kwargs"]
  for v in spec["kwargs"].values():
    if _is_spec(v):
      return _memjax_kwargs(v)
  return {}


# ----------------------------------------------------------------------------
# Writing and reading.


def _sha256(path: Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def _input_specs(inputs) -> list[dict]:
  specs = []
  for i, x in enumerate(inputs):
    shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", None)
    if shape is None or dtype is None:
      raise ValueError(f"argument `inputs[{i}]`: expected an array or jax.ShapeDtypeStruct, "
                       f"got {type(x).__name__}")
    specs.append({"shape": [int(s) for s in shape], "dtype": np.dtype(dtype).name})
  return specs


def save(directory: str | os.PathLike, name: str, model: nn.Module, variables, inputs,
         record: dict | None = None) -> Path:
  """Writes ``variables`` of ``model`` in the registry format: ``NAME.npz`` + ``NAME.json``.

  Args:
    directory: the registry directory (created if needed).
    name: lowercase letters, digits and ``-`` (e.g. ``ntm-copy``).
    model: the Flax module the variables belong to.
    variables: its variables; every leaf must be a floating-point array (it is
      stored as float32).
    inputs: the positional arguments of one ``model.init`` call (arrays or
      ``jax.ShapeDtypeStruct``), recorded as shapes and dtypes.
    record: further JSON-serialisable fields of ``NAME.json`` (table, results, ...).

  Returns:
    The path of ``NAME.json``.

  Raises:
    ValueError: a bad name, a non-float leaf, an unrecordable attribute, or a
      ``record`` key that the format reserves.
  """
  if not isinstance(name, str) or not _NAME.match(name):
    raise ValueError(f"argument `name`: expected lowercase letters, digits and '-', got {name!r}")
  record = dict(record or {})
  reserved = {"format", "name", "model", "inputs", "weights"} & set(record)
  if reserved:
    raise ValueError(f"argument `record`: keys {sorted(reserved)} are written by save itself")
  flat = traverse_util.flatten_dict(jax.device_get(variables), sep=_SEP)
  arrays = {}
  for key, leaf in flat.items():
    leaf = np.asarray(leaf)
    if not np.issubdtype(leaf.dtype, np.floating):
      raise ValueError(f"argument `variables`: leaf {key!r} has dtype {leaf.dtype}, expected floating point")
    arrays[key] = leaf.astype(np.float32)
  spec = module_spec(model)
  input_specs = _input_specs(inputs)
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  npz, js = directory / f"{name}.npz", directory / f"{name}.json"
  tmp = directory / f".{name}.npz.tmp"
  with open(tmp, "wb") as f:
    np.savez(f, **arrays)
  os.replace(tmp, npz)
  out = {"format": FORMAT_VERSION, "name": name, "model": spec, "inputs": input_specs,
         "weights": {"file": npz.name, "sha256": _sha256(npz), "bytes": npz.stat().st_size},
         **record}
  tmp = directory / f".{name}.json.tmp"
  with open(tmp, "w") as f:
    json.dump(out, f, indent=1)
    f.write("\n")
  os.replace(tmp, js)
  return js


def record(name: str) -> dict:
  """The registry record (``NAME.json``) of model ``name``, without loading its weights."""
  return _read_record(path_of(name))


def _read_record(path: Path) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      record = json.load(f)
  except FileNotFoundError:
    raise PretrainedFileError(f"{path}: no such file") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise PretrainedFileError(f"{path}: corrupt or truncated registry record (not valid JSON: {e})") from None
  if not isinstance(record, dict):
    raise PretrainedFileError(f"{path}: expected a JSON object, got {type(record).__name__}")
  missing = [k for k in ("format", "name", "model", "inputs", "weights") if k not in record]
  if missing:
    raise PretrainedFileError(f"{path}: not a memjax registry record (missing {missing})")
  if record["format"] != FORMAT_VERSION:
    raise PretrainedFileError(f"{path}: registry format {record['format']!r}, this memjax reads "
                              f"{FORMAT_VERSION}")
  return record


def _read_weights(path: Path, expected: dict) -> dict[str, np.ndarray]:
  if not path.is_file():
    raise PretrainedFileError(f"{path}: weights file missing")
  size = path.stat().st_size
  digest = _sha256(path)
  if digest != expected.get("sha256") or size != expected.get("bytes", size):
    raise PretrainedFileError(
        f"{path}: corrupt or truncated weights: sha256 {digest[:16]}… ({size} bytes), recorded "
        f"{str(expected.get('sha256'))[:16]}… ({expected.get('bytes')} bytes); reinstall memjax or "
        "re-export the model")
  try:
    with np.load(path, allow_pickle=False) as z:
      arrays = {k: z[k] for k in z.files}
  except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
    raise PretrainedFileError(f"{path}: unreadable weights ({e})") from None
  for k, a in arrays.items():
    if a.dtype != np.float32:
      raise PretrainedFileError(f"{path}: array {k!r} has dtype {a.dtype}, expected float32")
  return arrays


def _dummy(spec: dict, i: int) -> jax.ShapeDtypeStruct:
  try:
    return jax.ShapeDtypeStruct(tuple(int(s) for s in spec["shape"]), jnp.dtype(spec["dtype"]))
  except (KeyError, TypeError, ValueError):
    raise ValueError(f"inputs[{i}]: expected {{'shape': [...], 'dtype': ...}}, got {spec!r}") from None


def _k_way_overrides(spec: dict, overrides: dict) -> dict:
  """``num_classes=K`` ≠ the trained N on a module with a ``fast_only_output``
  attribute (MetaNet) also sets ``fast_only_output=True`` unless it is given:
  the K-way softmax layer is then made of fast weights only (Munkhdalai & Yu
  2017, §4.2.1, Table 4), as ``experiments/omniglot_metanet.py`` evaluates K-way."""
  if "num_classes" not in overrides or "fast_only_output" in overrides:
    return overrides
  inner = spec
  while not inner["module"].startswith("memjax."):
    inner = next((v for v in inner["kwargs"].values() if _is_spec(v)), None)
    if inner is None:
      return overrides
  cls = _resolve_class(inner["module"])
  has = any(f.name == "fast_only_output" for f in dataclasses.fields(cls))
  if has and inner["kwargs"].get("num_classes") != overrides["num_classes"]:
    return {**overrides, "fast_only_output": True}
  return overrides


def load_file(path: str | os.PathLike, **overrides) -> Pretrained:
  """Loads the model whose registry record is ``path`` (a ``NAME.json``).

  See :func:`load`.
  """
  path = Path(path)
  record = _read_record(path)
  weights_path = path.parent / record["weights"]["file"]
  arrays = _read_weights(weights_path, record["weights"])
  overrides = dict(overrides)
  try:
    overrides = _k_way_overrides(record["model"], overrides)
    model = build_module(record["model"], overrides or None)
    inputs = [_dummy(s, i) for i, s in enumerate(record["inputs"])]
  except ValueError as e:
    raise PretrainedFileError(f"{path}: {e}") from None
  expected = traverse_util.flatten_dict(
      jax.eval_shape(model.init, jax.random.key(0), *inputs), sep=_SEP)
  missing = sorted(set(expected) - set(arrays))
  extra = sorted(set(arrays) - set(expected))
  # An overridden module may use fewer arrays (a K-way MetaNet ignores the slow
  # softmax layer); they stay in the variables, unused. Otherwise all must match.
  if missing or (extra and not overrides):
    raise PretrainedFileError(f"{weights_path}: the arrays do not match the module "
                              f"(missing {missing[:3]}, unexpected {extra[:3]})")
  for key, want in expected.items():
    if arrays[key].shape != tuple(want.shape):
      what = f" with overrides {overrides}" if overrides else ""
      raise PretrainedFileError(f"{weights_path}: array {key!r} has shape {list(arrays[key].shape)}, "
                                f"the module{what} expects {list(want.shape)}")
  variables = traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in arrays.items()}, sep=_SEP)
  config = {k: v for k, v in record.items()}
  config["path"] = str(path)
  config["overrides"] = dict(overrides)
  return Pretrained(model, variables, config)


def load(name: str, **overrides) -> Pretrained:
  """Loads a pretrained model by name, verified against its recorded sha256.

  Args:
    name: one of :func:`available`.
    **overrides: attributes of the model's memjax module to change, e.g.
      ``num_classes=K`` for a MetaNet trained on N-way episodes and tested on
      K-way ones (paper Table 4): for K ≠ N this also sets
      ``fast_only_output=True`` (a softmax layer of fast weights only; the
      slow one is ignored), as ``experiments/omniglot_metanet.py`` does.

  Returns:
    ``Pretrained(model, variables, config)``.

  Raises:
    ValueError: an unknown name (the message lists the available ones) or
      override.
    PretrainedFileError: (a ValueError) a missing, corrupt or truncated file,
      named in the message, or weights that do not fit the module.
  """
  return load_file(path_of(name), **overrides)
