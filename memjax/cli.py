"""Small helpers shared by the experiment scripts' command lines.

The argparse types turn a bad value into argparse's usage message and exit code
2 (not a traceback); :func:`write_json` writes a file atomically, so a killed run
never leaves half a results file.
"""

from __future__ import annotations

import argparse
import json
import math
import os


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


def unit_float(text) -> float:
  return _number(text, float, "a number in [0, 1]", lambda v: 0 <= v <= 1)


def int_list(text) -> list[int]:
  """Comma-separated positive integers, e.g. ``20,40,80``."""
  try:
    values = [int(v) for v in text.split(",") if v]
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
  if not values or min(values) < 1:
    raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
  return values


def write_json(path: str, obj) -> None:
  """Writes ``obj`` as JSON to ``path`` atomically (temporary file + rename)."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


def run(main) -> None:
  """Runs an experiment's ``main()``; a diverged run exits 1 with its message, not a traceback."""
  import sys

  from memjax.training import NonFiniteError
  try:
    main()
  except NonFiniteError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
