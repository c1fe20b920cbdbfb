"""python -m memjax.reproduce: one command per results table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from memjax import pretrained, reproduce
from memjax.pretrained import export

ROOT = Path(__file__).resolve().parents[1]


def _run(args, env=None, timeout=600):
  """Runs the command in a subprocess; only the shipped models unless ``env`` says otherwise."""
  if env is None:
    env = {k: v for k, v in os.environ.items() if k != pretrained.PATH_ENV}
  t0 = time.perf_counter()
  proc = subprocess.run([sys.executable, "-m", "memjax.reproduce", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)
  return proc, time.perf_counter() - t0


@pytest.mark.skipif("ntm-copy" not in pretrained.available(), reason="ntm-copy not shipped")
def test_copy_quick_runs_in_ci_time(tmp_path):
  proc, seconds = _run(["copy", "--quick", "--out", str(tmp_path), "--no-progress"])
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert seconds < 60, f"{seconds:.0f} s"
  result = json.loads((tmp_path / "copy.json").read_text())
  assert (tmp_path / "copy.png").stat().st_size > 0
  row = result["rows"][0]
  assert row["name"] == "ntm-copy" and result["quick"] and not result["missing"]
  assert set(row["measured"]) == {"20", "40", "80", "120"}
  assert all(0 <= v <= 100 for v in row["measured"].values())
  assert row["recorded"]["80"] < 1.0  # the shipped model's own results
  assert "memjax NTM — measured now" in proc.stdout and "target (issue 2)" in proc.stdout


def test_a_table_whose_models_are_not_shipped_says_so_with_exit_code_2(tmp_path):
  table = next((t for t in reproduce.TABLES.values()
                if not {r.name for r in t.rows} & set(pretrained.available())), None)
  if table is None:
    pytest.skip("every table has a shipped model")
  proc, _ = _run([table.key, "--out", str(tmp_path)])
  assert proc.returncode == 2
  assert "Traceback" not in proc.stderr
  for row in table.rows:
    assert row.name in proc.stderr
  assert "--train" in proc.stderr


@pytest.mark.parametrize("argv", [["table9"], ["copy", "--episodes", "0"], ["copy", "--resume"],
                                  ["copy", "--max-minutes", "1"]])
def test_bad_usage_exits_2_without_traceback(argv, capsys):
  code = None
  try:
    code = reproduce.main(argv + ["--out", "/nonexistent/never-written"])
  except SystemExit as e:
    code = e.code
  assert code == 2
  assert "Traceback" not in capsys.readouterr().err


def test_every_table_names_real_experiments_and_the_papers_rows():
  experiments = export.experiments_dir()
  for table in reproduce.TABLES.values():
    assert table.paper, table.key
    for row in table.rows:
      module = export.load_experiment(row.script, experiments)
      module.build_parser().parse_args(list(row.recipe))  # the recipe's flags exist
      assert all(f"{k}-way" in table.columns for k in row.ways)
      assert set(row.ways) <= set(table.episodes)  # a default evaluation size for every K


def test_metanet_row_labels_say_which_model_the_shipped_weights_are():
  """A row is labelled MetaNet− exactly when its shipped model has no task-level fast weights."""
  shipped = set(pretrained.available())
  checked = 0
  for table in reproduce.TABLES.values():
    for row in table.rows:
      if row.script != "omniglot_metanet" or row.name not in shipped:
        continue
      kwargs = pretrained.record(row.name)["model"]["kwargs"]
      minus = not kwargs.get("use_task_fast_weights", True)
      assert ("MetaNet−" in row.label) == minus, (table.key, row.name, row.label)
      checked += 1
  assert checked >= 4


@pytest.mark.slow
def test_train_copy_retrains_exports_and_evaluates(tmp_path):
  tiny = ("--memory-size 8 --word-size 4 --controller-features 8 --steps 4 --eval-every 2 "
          "--checkpoint-every 2 --generalisation-lengths 20")
  # One compilation cache for every process of the test, every executable cached: the second
  # command compiles nothing the first one compiled (the executables are XLA's, results unchanged).
  env = {k: v for k, v in os.environ.items() if k != pretrained.PATH_ENV}
  env.update(MEMJAX_COMPILATION_CACHE=str(tmp_path / "xla_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  proc, _ = _run(["copy", "--train", "--quick", "--max-minutes", "5", "--no-progress",
                  "--train-args", tiny, "--out", str(tmp_path)], env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "training ntm-copy" in proc.stdout and "--memory-size 8" in proc.stdout
  record = json.loads((tmp_path / "train" / "pretrained" / "ntm-copy.json").read_text())
  assert record["steps"] == 4 and record["run_config"]["memory_size"] == 8
  assert "--resume" not in record["train_command"]
  result = json.loads((tmp_path / "copy.json").read_text())
  assert result["trained"] and result["rows"][0]["steps"] == 4
  # --resume continues from the checkpoint: nothing left to train at 4 of 4 steps.
  proc, _ = _run(["copy", "--train", "--resume", "--quick", "--max-minutes", "5", "--no-progress",
                  "--train-args", tiny, "--out", str(tmp_path)], env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "--resume" in proc.stdout
  assert json.loads((tmp_path / "copy.json").read_text())["rows"][0]["steps"] == 4


def _tiny_mann_run(omniglot_dir, workdir):
  export.load_experiment("omniglot_mann").main([
      "--data-dir", str(omniglot_dir), "--train-split", "small1", "--test-split", "small1",
      "--label-mode", "string", "--num-classes", "15", "--samples-per-class", "10",
      "--steps", "2", "--batch-size", "2", "--eval-every", "0", "--eval-episodes", "4",
      "--eval-batch", "2", "--memory-size", "8", "--word-size", "4", "--read-heads", "2",
      "--controller-features", "8", "--workdir", str(workdir), "--no-progress", "--no-plots",
      "--optimizer", "adam"])


def test_mann_table_reevaluates_an_exported_run_exactly(omniglot_dir, tmp_path):
  """The same protocol as the experiment: the same test episodes give the same accuracies."""
  _tiny_mann_run(omniglot_dir, tmp_path / "run")
  export.export_run(tmp_path / "run", "mann-omniglot-15way-string", table="mann-table2",
                    out_dir=tmp_path / "reg")
  env = dict(os.environ, **{pretrained.PATH_ENV: str(tmp_path / "reg")})
  proc, _ = _run(["mann-table2", "--episodes", "4", "--data-dir", str(omniglot_dir),
                  "--out", str(tmp_path / "out")], env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  row = json.loads((tmp_path / "out" / "mann-table2.json").read_text())["rows"][0]
  assert row["episodes"] == 4 and row["test_split"] == "small1"
  assert row["measured"] == pytest.approx(row["recorded"], abs=1e-9)
  assert (tmp_path / "out" / "mann-table2.png").exists()


def test_metanet_table_reevaluates_an_exported_run_and_reports_the_missing_row(omniglot_dir, tmp_path,
                                                                                monkeypatch, capsys):
  export.load_experiment("omniglot_metanet").main([
      "--data-dir", str(omniglot_dir), "--train-split", "small1", "--test-split", "small1",
      "--filters", "4", "--num-blocks", "1", "--hidden", "8", "--fast-layers", "fc",
      "--num-query", "2", "--steps", "2", "--log-every", "1", "--eval-every", "0",
      "--eval-episodes", "8", "--workdir", str(tmp_path / "run"), "--no-progress", "--no-plots"])
  export.export_run(tmp_path / "run", "metanet-omniglot-5way", table="metanet-table1",
                    out_dir=tmp_path / "reg")
  # Only the exported 5-way model is visible (the shipped ones are hidden): the 5-way row is
  # evaluated, the missing 20-way one named, exit 2.
  monkeypatch.setenv(pretrained.PATH_ENV, str(tmp_path / "reg"))
  monkeypatch.setattr(pretrained, "available", lambda: ("metanet-omniglot-5way",))
  code = reproduce.main(["metanet-table1", "--episodes", "8", "--no-progress", "--data-dir",
                         str(omniglot_dir), "--out", str(tmp_path / "out")])
  err = capsys.readouterr().err
  assert code == 2, err[-3000:]
  assert "metanet-omniglot-20way" in err and "metanet-omniglot-5way-full" in err
  result = json.loads((tmp_path / "out" / "metanet-table1.json").read_text())
  assert result["missing"] == ["metanet-omniglot-20way", "metanet-omniglot-5way-full"]
  row = result["rows"][0]
  assert row["episodes"] == {"5-way": 8}
  assert row["measured"]["5-way"] == pytest.approx(row["recorded"]["5-way"], abs=1e-6)


def test_train_starts_the_full_metanet_row_from_the_5way_rows_run(tmp_path, monkeypatch, capsys):
  """--train: a row with ``init_from`` gets ``--init-from OUT/train/NAME``: the shipped model
  restored there, or that row's retrained run where there is one."""
  table = reproduce.TABLES["metanet-table1"]
  row = next(r for r in table.rows if r.init_from)
  assert row.init_from == "metanet-omniglot-5way" and row.init_from in {r.name for r in table.rows}
  args = reproduce.build_parser().parse_args(["metanet-table1", "--train", "--quick", "--no-progress",
                                              "--out", str(tmp_path)])
  commands = []
  monkeypatch.setattr(reproduce.subprocess, "call", lambda cmd, **kw: commands.append(cmd) or 1)
  source = tmp_path / "train" / row.init_from
  if row.init_from in pretrained.available():  # restored, then named
    with pytest.raises(reproduce.ReproduceError, match="failed"):
      reproduce.train_row(row, table, args, tmp_path)
    assert (source / "checkpoints").is_dir() and (source / "config.json").exists()
    assert "restoring metanet-omniglot-5way" in capsys.readouterr().out
    argv = commands[-1]
    assert argv[argv.index("--init-from") + 1] == str(source.resolve())
  # An earlier row's retrained run is used as it is.
  other = tmp_path / "other"
  (other / "train" / row.init_from / "checkpoints").mkdir(parents=True)
  with pytest.raises(reproduce.ReproduceError, match="failed"):
    reproduce.train_row(row, table, args, other)
  argv = commands[-1]
  assert argv[argv.index("--init-from") + 1] == str((other / "train" / row.init_from).resolve())
  assert "restoring" not in capsys.readouterr().out
  # Neither retrained nor shipped: a clear error.
  monkeypatch.setattr(pretrained, "available", lambda: ())
  with pytest.raises(reproduce.ReproduceError, match="neither retrained .* nor shipped"):
    reproduce.train_row(row, table, args, tmp_path / "none")
