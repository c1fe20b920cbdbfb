"""memjax.cli: the persistent compilation cache switch."""

from __future__ import annotations

import jax
import pytest

from memjax import cli


@pytest.fixture
def restore_cache_dir():
  old = jax.config.jax_compilation_cache_dir
  yield
  jax.config.update("jax_compilation_cache_dir", old)


def test_compilation_cache_locations(tmp_path, monkeypatch, restore_cache_dir):
  monkeypatch.setenv("MEMJAX_COMPILATION_CACHE", "off")
  before = jax.config.jax_compilation_cache_dir
  assert cli.enable_compilation_cache() is None
  assert jax.config.jax_compilation_cache_dir == before

  monkeypatch.delenv("MEMJAX_COMPILATION_CACHE")
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  path = cli.enable_compilation_cache()
  assert path == str(tmp_path / "xdg" / "memjax" / "xla")
  assert jax.config.jax_compilation_cache_dir == path

  monkeypatch.setenv("MEMJAX_COMPILATION_CACHE", str(tmp_path / "env"))
  assert cli.enable_compilation_cache() == str(tmp_path / "env")
  assert cli.enable_compilation_cache(str(tmp_path / "arg")) == str(tmp_path / "arg")
  assert (tmp_path / "arg").is_dir()
