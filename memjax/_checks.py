"""Argument validation shared by memjax's public functions and command lines.

The array checks run on static shapes and dtypes, so they cost nothing at run
time and fire once, when a function is traced, with a message that names the
argument, the expected shape and the given one. The command-line validators
(:func:`positive_int`, :func:`positive_float`, ...) are argparse ``type=``
functions: a bad value becomes argparse's usage message and exit code 2.
"""

from __future__ import annotations

import argparse
import math
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
  """Checks that ``value`` is a Python or numpy int >= 1 (not a bool); returns it as int."""
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"argument `{name}`: expected a positive int, got {value!r}")
  return int(value)


# ----------------------------------------------------------------------------
# Command-line values (argparse ``type=`` functions).


def _number(text, cast, what, ok):
  try:
    value = cast(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
  if not ok(value):
    raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
  return value


def positive_int(text) -> int:
  return _number(text, int, "a positive integer", lambda v: v >= 1)


def non_negative_int(text) -> int:
  return _number(text, int, "a non-negative integer", lambda v: v >= 0)


def positive_float(text) -> float:
  return _number(text, float, "a positive number", lambda v: v > 0 and math.isfinite(v))


def non_negative_float(text) -> float:
  return _number(text, float, "a non-negative number", lambda v: v >= 0 and math.isfinite(v))


def unit_float(text) -> float:
  return _number(text, float, "a number in [0, 1]", lambda v: 0 <= v <= 1)


def ema_decay(text) -> float:
  return _number(text, float, "0 (off) or a number in (0, 1)", lambda v: 0 <= v < 1)


def rotation_degrees(text) -> float:
  return _number(text, float, "degrees in [0, 180]", lambda v: 0 <= v <= 180)


def _step_schedule(text, form: str, parse) -> list[list]:
  """Comma-separated entries ``parse(entry) -> [step, ...]`` (None: malformed,
  described by ``form``), their steps increasing."""
  out = []
  for part in str(text).split(","):
    entry = parse(part.strip())
    if entry is None:
      raise argparse.ArgumentTypeError(f"expected {form}, comma-separated, got {part!r} in {text!r}")
    if out and entry[0] <= out[-1][0]:
      raise argparse.ArgumentTypeError(
          f"expected increasing steps, got {entry[0]} after {out[-1][0]} in {text!r}")
    out.append(entry)
  return out


def lr_schedule(text) -> list[list]:
  """``STEP:LR[,STEP:LR...]``: from step STEP on, learning rate LR; steps
  positive and increasing, rates positive, e.g. ``5000:1e-4,8000:1e-3``."""
  def parse(part):
    step, sep, rate = part.partition(":")
    try:
      step, rate = int(step), float(rate)
    except ValueError:
      return None
    return [step, rate] if sep and step >= 1 and math.isfinite(rate) and rate > 0 else None
  return _step_schedule(text, "STEP:LR pairs (a positive integer step, a positive learning rate)", parse)


def jitter_schedule(text) -> list[list]:
  """``STEP:SHIFT:DEGREES[,...]``: from step STEP on, training images jittered
  by up to SHIFT pixels and ±DEGREES; steps positive and increasing, shifts
  non-negative integers, degrees in [0, 180], e.g. ``100000:0:0`` (no jitter
  from step 100,000 on)."""
  def parse(part):
    fields = part.split(":")
    try:
      step, shift, degrees = int(fields[0]), int(fields[1]), float(fields[2])
    except (ValueError, IndexError):
      return None
    ok = len(fields) == 3 and step >= 1 and shift >= 0 and 0 <= degrees <= 180
    return [step, shift, degrees] if ok else None
  return _step_schedule(text, "STEP:SHIFT:DEGREES triples (a positive integer step, a non-negative "
                              "integer shift in pixels, a rotation in [0, 180] degrees)", parse)


def int_list(text) -> list[int]:
  """Comma-separated positive integers, e.g. ``20,40,80``."""
  try:
    values = [int(v) for v in text.split(",") if v]
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
  if not values or min(values) < 1:
    raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
  return values
