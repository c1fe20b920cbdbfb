"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def omniglot_dir() -> Path:
  """The directory holding the official Omniglot zips, or skip.

  Defaults to ``<repo>/../shared/data/omniglot`` (CI clones the repository with
  ``shared/`` beside it); ``$MEMJAX_TEST_OMNIGLOT_DIR`` overrides it.
  """
  env = os.environ.get("MEMJAX_TEST_OMNIGLOT_DIR")
  path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"
  if not path.is_dir():
    pytest.skip(f"Omniglot test data not found at {path} (set MEMJAX_TEST_OMNIGLOT_DIR)")
  return path
