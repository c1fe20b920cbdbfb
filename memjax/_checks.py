"""Trace-time argument validation shared by memjax's public functions.

Every check runs on static shapes and dtypes, so it costs nothing at run time
and fires once, when a function is traced, with a message that names the
argument, the expected shape and the given one.
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np


def as_float_array(name: str, x, ndim: int | None = None) -> jnp.ndarray:
  """Returns ``x`` as a floating-point array, checking its rank.

  Raises:
    ValueError: ``x`` is not numeric, or has the wrong number of axes.
  """
  dtype = getattr(x, "dtype", None)
  if dtype is None:
    if x is None:
      raise ValueError(f"argument `{name}`: expected a real floating-point array, got None")
    try:
      x = jnp.asarray(x)
    except (TypeError, ValueError) as e:
      raise ValueError(f"argument `{name}`: expected a real floating-point array, got "
                       f"{type(x).__name__} ({e})") from None
    dtype = x.dtype
  if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
          or jnp.issubdtype(dtype, jnp.bool_)):
    raise ValueError(f"argument `{name}`: expected a real floating-point array, got dtype {dtype}")
  if not jnp.issubdtype(dtype, jnp.floating):
    x = jnp.asarray(x, jnp.float32)
  else:
    try:
      x = jnp.asarray(x)
    except TypeError as e:  # e.g. float128, which JAX has no type for
      raise ValueError(f"argument `{name}`: expected float16/32/64, got dtype {dtype} ({e})") from None
  if ndim is not None and x.ndim != ndim:
    raise ValueError(
        f"argument `{name}`: expected {ndim} axes, got shape {tuple(x.shape)}"
        + (" (memjax functions take one example: vmap over batch and heads)" if x.ndim > ndim else ""))
  return x


def check_shape(name: str, x, expected: Sequence[int | None]) -> jnp.ndarray:
  """Checks that ``x`` is a float array of shape ``expected`` (None = any size)."""
  x = as_float_array(name, x, ndim=len(expected))
  for got, want in zip(x.shape, expected):
    if want is not None and got != want:
      exp = "[" + ", ".join("?" if w is None else str(w) for w in expected) + "]"
      raise ValueError(f"argument `{name}`: expected shape {exp}, got {list(x.shape)}")
  return x


def check_scalar(name: str, x) -> jnp.ndarray:
  """Checks that ``x`` is a 0-d number (Python float or 0-d array)."""
  x = as_float_array(name, x)
  if x.ndim != 0:
    raise ValueError(f"argument `{name}`: expected a scalar (shape []), got shape {list(x.shape)}")
  return x


def check_positive_int(name: str, value) -> int:
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"argument `{name}`: expected a positive int, got {value!r}")
  return int(value)
