"""memjax.cli: the persistent compilation cache switch, the training jitter schedule, the given-flags parser."""

from __future__ import annotations

import argparse

import jax
import pytest

from memjax import cli, training


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


def test_jitter_schedule_parses_triples_and_names_what_is_wrong():
  assert cli.jitter_schedule("100:0:0,250:3:15.5") == [[100, 0, 0.0], [250, 3, 15.5]]
  for text, message in (("100:2", "STEP:SHIFT:DEGREES"), ("0:1:1", "STEP:SHIFT:DEGREES"),
                        ("5:-1:0", "STEP:SHIFT:DEGREES"), ("5:1.5:0", "STEP:SHIFT:DEGREES"),
                        ("5:1:181", "STEP:SHIFT:DEGREES"), ("5:1:2:3", "STEP:SHIFT:DEGREES"),
                        ("9:0:0,4:1:1", "increasing steps")):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
      cli.jitter_schedule(text)


def test_jitter_phases_and_jitter_at_follow_the_flags():
  p = argparse.ArgumentParser()
  cli.add_jitter_flags(p)
  args = p.parse_args(["--max-shift", "2", "--max-rotation", "11.25", "--jitter-schedule", "10:0:0,20:3:5"])
  assert cli.jitter_phases(args) == [(0, 2, 11.25), (10, 0, 0.0), (20, 3, 5.0)]
  assert cli.jitter_phases(vars(args)) == cli.jitter_phases(args)
  # update s + 1 uses the phase of step s, as the learning-rate schedule
  assert [cli.jitter_at(args, s) for s in (0, 9, 10, 19, 20)] == [
      (2, 11.25), (2, 11.25), (0, 0.0), (0, 0.0), (3, 5.0)]
  assert cli.jitter_phases({}) == [(0, 0, 0.0)]  # a config.json written before the flags


def test_check_jitter_resume_takes_changes_from_the_checkpoint_on_only(capsys):
  old = {"max_shift": 2, "max_rotation": 11.25, "jitter_schedule": None}
  cli.check_jitter_resume(dict(old), None, 0)  # a new run: anything goes
  cli.check_jitter_resume(dict(old), old, 500)  # unchanged
  assert capsys.readouterr().out == ""
  cli.check_jitter_resume(dict(old, jitter_schedule=[[500, 0, 0.0]]), old, 500)
  assert "training jitter from step 500 on: max_shift 0, max_rotation 0 (was 2, 11.25)" in (
      capsys.readouterr().out)
  for new, first_wrong in ((dict(old, max_shift=0), 1), (dict(old, jitter_schedule=[[300, 0, 0.0]]), 301)):
    with pytest.raises(training.ConfigMismatchError,
                       match=rf"update {first_wrong} would have .* --jitter-schedule 500:SHIFT:DEGREES"):
      cli.check_jitter_resume(new, old, 500)
  # once trained under a schedule, the schedule must keep its past; a later phase may be added
  old = dict(old, jitter_schedule=[[500, 0, 0.0]])
  cli.check_jitter_resume(dict(old, jitter_schedule=[[500, 0, 0.0], [900, 1, 5.0]]), old, 800)
  with pytest.raises(training.ConfigMismatchError, match="update 501"):
    cli.check_jitter_resume(dict(old, jitter_schedule=None), old, 800)
  # a run saved before the keys existed had no jitter
  cli.check_jitter_resume({"max_shift": 0, "max_rotation": 0.0, "jitter_schedule": None}, {}, 100)


def test_recording_parser_names_the_flags_given_even_at_their_defaults(capsys):
  p = cli.parser("Doc.", record_given=True)
  p.add_argument("--ways", type=int, default=5, help="N")
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--ks", type=int, action="append", default=[])
  p.add_argument("--quiet", action="store_true")
  p.set_defaults(mode="train")
  args = p.parse_args(["--ways", "5", "--ks", "3", "--ks", "10"])
  assert args.given_flags == {"ways", "ks"}  # --ways at its default counts; --lr, --quiet do not
  assert (args.ways, args.lr, args.ks, args.quiet, args.mode) == (5, 1e-3, [3, 10], False, "train")
  # The defaults are intact after the parse (the second parse suppresses them for a while).
  again = p.parse_args([])
  assert again.given_flags == frozenset() and (again.ways, again.lr, again.ks, again.mode) == (5, 1e-3, [], "train")
  assert p.parse_args(["--quiet"]).given_flags == {"quiet"}
  assert p.get_default("ways") == 5 and "(default: 5)" in p.format_help()
  with pytest.raises(SystemExit):  # a bad value is still argparse's usage error, first
    p.parse_args(["--ways", "five"])
  assert "--ways: invalid int value" in capsys.readouterr().err
  # Parsers made without it (every other experiment) add nothing to the namespace.
  plain = cli.parser("Doc.")
  plain.add_argument("--ways", type=int, default=5)
  assert not hasattr(plain.parse_args([]), "given_flags") and type(plain) is argparse.ArgumentParser


def test_ema_flag_and_history_record_each_change_from_its_resume_step(capsys):
  p = argparse.ArgumentParser()
  cli.add_ema_flag(p)
  assert p.parse_args([]).ema_decay == 0.0 and p.parse_args(["--ema-decay", "0.999"]).ema_decay == 0.999
  for bad in ("1", "-0.1", "x"):
    with pytest.raises(SystemExit):
      p.parse_args(["--ema-decay", bad])
  assert "--ema-decay" in capsys.readouterr().err
  config = {"ema_decay": 0.0}
  cli.ema_history(config, None, 0)
  assert config["ema_history"] == [[0, 0.0]]
  on = {"ema_decay": 0.999}
  cli.ema_history(on, config, 500)
  assert on["ema_history"] == [[0, 0.0], [500, 0.999]]
  assert "parameter average from step 500 on: decay 0.999 (new: starts from the checkpoint's" in (
      capsys.readouterr().out)
  same = {"ema_decay": 0.999}
  cli.ema_history(same, on, 700)
  assert same["ema_history"] == [[0, 0.0], [500, 0.999]] and capsys.readouterr().out == ""
  off = {"ema_decay": 0.0}
  cli.ema_history(off, same, 900)
  assert off["ema_history"] == [[0, 0.0], [500, 0.999], [900, 0.0]]
  assert "from step 900 on: off (was 0.999)" in capsys.readouterr().out
  cli.ema_history({"ema_decay": 0.0}, {}, 100)  # a run saved before the key existed: no average
