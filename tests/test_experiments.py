"""The experiment scripts' command lines: interrupts, data errors, flags, --help."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memjax import _checks, cli, pretrained, reproduce, training
from memjax.pretrained import export

ROOT = Path(__file__).resolve().parents[1]
TINY_COPY = ["--memory-size", "8", "--word-size", "4", "--controller-features", "8", "--num-bits", "4",
             "--max-length", "3", "--batch-size", "2", "--optimizer", "adam", "--eval-every", "20",
             "--eval-sequences", "4", "--generalisation-lengths", "3,6", "--checkpoint-every", "1000",
             "--no-progress"]

TINY_METANET = ["--train-split", "small1", "--test-split", "small1", "--filters", "4", "--num-blocks", "1",
                "--hidden", "8", "--fast-layers", "fc", "--num-query", "2", "--eval-every", "1",
                "--curve-episodes", "2", "--eval-episodes", "4", "--test-num-classes", "3",
                "--log-every", "1", "--checkpoint-every", "1000", "--no-progress"]


def tiny_mann(omniglot_dir, workdir) -> list[str]:
  return ["--data-dir", str(omniglot_dir), "--train-split", "small1", "--test-split", "small1",
          "--batch-size", "2", "--eval-every", "2", "--eval-episodes", "4", "--eval-batch", "2",
          "--memory-size", "8", "--word-size", "4", "--read-heads", "2", "--controller-features", "8",
          "--log-every", "2", "--workdir", str(workdir), "--no-progress", "--optimizer", "adam"]


def _env(tmp_path: Path) -> dict:
  """CPU, and one persistent compilation cache for the test's subprocesses (see test_reliability)."""
  return dict(os.environ, JAX_PLATFORMS="cpu", MEMJAX_COMPILATION_CACHE=str(tmp_path / "xla_cache"),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")


def _interrupt(argv, workdir: Path, signum: int, env: dict) -> subprocess.CompletedProcess:
  """Starts ``argv``, sends ``signum`` once training has written its first metrics line."""
  proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  metrics, deadline = workdir / "metrics.jsonl", time.time() + 400
  while proc.poll() is None and time.time() < deadline and not (
      metrics.exists() and metrics.read_text().count("\n") >= 1):
    time.sleep(0.1)
  assert proc.poll() is None, proc.communicate()[1][-3000:]
  proc.send_signal(signum)
  out, err = proc.communicate(timeout=300)
  return subprocess.CompletedProcess(argv, proc.returncode, out, err)


@pytest.mark.slow
def test_copy_ctrl_c_writes_checkpoint_partial_results_plots_and_resumes(tmp_path):
  workdir = tmp_path / "run"
  script = [sys.executable, str(ROOT / "experiments" / "copy_task.py")]
  proc = _interrupt(script + TINY_COPY + ["--steps", "1000000", "--workdir", str(workdir)], workdir,
                    signal.SIGINT, _env(tmp_path))
  assert proc.returncode == 130, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  results = json.loads((workdir / "results.json").read_text())
  assert results["interrupted"] is True and results["signal"] == "SIGINT"
  assert results["generalisation"] is None  # skipped: partial results
  steps = results["steps"]
  ckpts = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
  assert max(ckpts) == steps > 0
  for png in ("loss.png", "sequence_3.png", "sequence_6.png"):
    assert (workdir / png).stat().st_size > 0
  assert f"results in {workdir}/" in proc.stdout and "--resume" in proc.stdout
  # --resume continues from the checkpoint to the end.
  proc = subprocess.run(script + TINY_COPY + ["--steps", str(steps + 10), "--workdir", str(workdir),
                                              "--resume", "--no-plots"],
                        env=_env(tmp_path), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((workdir / "results.json").read_text())
  assert results["interrupted"] is False and results["steps"] == steps + 10
  assert "testing generalisation at lengths 3, 6" in proc.stdout


@pytest.mark.slow
def test_mann_sigterm_exits_143_with_partial_results(omniglot_dir, tmp_path):
  workdir = tmp_path / "run"
  argv = [sys.executable, str(ROOT / "experiments" / "omniglot_mann.py"),
          *tiny_mann(omniglot_dir, workdir), "--steps", "1000000"]
  proc = _interrupt(argv, workdir, signal.SIGTERM, _env(tmp_path))
  assert proc.returncode == 143, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  results = json.loads((workdir / "results.json").read_text())
  assert results["interrupted"] is True and results["signal"] == "SIGTERM"
  assert results["evaluated_at_step"] <= results["steps"]  # the last evaluation during training
  assert set(results["per_instance_accuracy"]) == {"1st", "2nd", "3rd", "4th", "5th", "10th"}
  assert (workdir / "accuracy_by_instance.png").exists() and (workdir / "accuracy_curve.png").exists()


@pytest.mark.slow
def test_metanet_sigterm_exits_143_with_partial_results_and_resumes(omniglot_dir, tmp_path):
  workdir = tmp_path / "run"
  argv = [sys.executable, str(ROOT / "experiments" / "omniglot_metanet.py"), *TINY_METANET,
          "--data-dir", str(omniglot_dir), "--workdir", str(workdir)]
  proc = _interrupt(argv + ["--steps", "1000000"], workdir, signal.SIGTERM, _env(tmp_path))
  assert proc.returncode == 143, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  results = json.loads((workdir / "results.json").read_text())
  assert results["interrupted"] is True and results["signal"] == "SIGTERM"
  assert results["test_accuracy"] is None and results["k_way"] == {}  # the tests were skipped
  assert results["last_curve_point"]["step"] <= results["steps"]
  steps = results["steps"]
  assert max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == steps
  assert (workdir / "learning_curve.png").exists()
  assert f"results in {workdir}/" in proc.stdout and "--resume" in proc.stdout
  proc = subprocess.run(argv + ["--steps", str(steps + 2), "--resume", "--no-plots"], env=_env(tmp_path),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((workdir / "results.json").read_text())
  assert results["interrupted"] is False and results["steps"] == steps + 2
  assert results["eval_episodes"] == 4 and sorted(results["k_way"]) == ["3"]
  assert "testing 5-way 1-shot on 4 episodes" in proc.stdout


@pytest.mark.parametrize("via_env", [False, True])
def test_missing_data_dir_is_a_short_error_exit_2_and_creates_nothing(tmp_path, capsys, monkeypatch,
                                                                       via_env):
  exp = export.load_experiment("omniglot_mann")
  missing, workdir = tmp_path / "omniglot_typo", tmp_path / "run"
  argv = tiny_mann(missing, workdir)
  if via_env:
    argv = argv[2:]  # no --data-dir
    monkeypatch.setenv("MEMJAX_DATA_DIR", str(missing))
  else:
    monkeypatch.delenv("MEMJAX_DATA_DIR", raising=False)
  with pytest.raises(SystemExit) as info:
    exp.main(argv)
  assert info.value.code == 2
  err = capsys.readouterr().err
  assert "Traceback" not in err and len(err.splitlines()) <= 4
  assert "--data-dir" in err and "$MEMJAX_DATA_DIR" in err and "images_background_small1.zip" in err
  assert str(missing) in err
  assert not missing.exists() and not workdir.exists()


def test_mann_lr_schedule_flag_builds_the_optimizer_and_is_exclusive_with_a_drop(capsys):
  exp = export.load_experiment("omniglot_mann")
  parser = exp.build_parser()
  args = exp.parse_args(parser, ["--optimizer", "adam", "--lr-schedule", "2:1e-4"])
  opt = exp.make_optimizer(args, exp.lr_of(vars(args)))
  params = {"w": jnp.zeros(2)}
  state, sizes = opt.init(params), []
  for _ in range(3):  # gradients within the clip: each Adam update is the learning rate itself
    updates, state = opt.update({"w": jnp.full(2, 2.0)}, state, params)
    sizes.append(float(-updates["w"][0]))
  np.testing.assert_allclose(sizes, [1e-3, 1e-3, 1e-4], rtol=1e-4)
  assert "lr_schedule" not in exp.RESUME_KEYS  # checked by training.lr_history: the past only
  with pytest.raises(SystemExit) as e:
    exp.parse_args(parser, ["--lr-schedule", "2:1e-4", "--lr-drop-steps", "3"])
  assert e.value.code == 2 and "exclusive" in capsys.readouterr().err


def test_deprecated_episode_flags_convert_to_steps(capsys):
  exp = export.load_experiment("omniglot_mann")
  parser = exp.build_parser()
  args = exp.parse_args(parser, ["--episodes", "9", "--lr-drop-episodes", "5", "--batch-size", "2"])
  assert (args.steps, args.lr_drop_steps) == (5, 2)  # ceil(9 / 2), 5 // 2: as before
  assert not hasattr(args, "episodes") and not hasattr(args, "lr_drop_episodes")
  assert "deprecated" in capsys.readouterr().err
  assert "--episodes" not in parser.format_help() and "--steps" in parser.format_help()
  with pytest.raises(SystemExit) as info:
    exp.parse_args(parser, ["--episodes", "8", "--steps", "3"])
  assert info.value.code == 2
  # Commands recorded in episodes still parse, to the same schedule: an earlier mann-omniglot-5way's,
  # and the shipped LSTM's (recorded as --episodes 172816).
  old_argv = ["--optimizer", "adam", "--lr", "1e-3", "--lr-drop-episodes", "153600", "--episodes", "204800",
              "--eval-every", "400", "--eval-episodes", "1000", "--checkpoint-every", "200"]
  args = exp.parse_args(parser, old_argv)
  assert (args.steps, args.lr_drop_steps) == (204800 // 16, 153600 // 16)
  lstm = json.loads((ROOT / "memjax/pretrained/models/lstm-omniglot-5way.json").read_text())
  assert "--episodes" in lstm["train"]["argv"]
  assert exp.parse_args(parser, lstm["train"]["argv"]).steps == lstm["steps"] == 10801
  # Every shipped MANN-family command parses to the number of steps recorded with it.
  for name in ("mann-omniglot-5way", "mann-omniglot-15way-string", "lstm-omniglot-5way"):
    recorded = json.loads((ROOT / f"memjax/pretrained/models/{name}.json").read_text())
    assert exp.parse_args(parser, recorded["train"]["argv"]).steps == recorded["steps"], name
  # memjax.reproduce's --train-args "--steps N" replaces a recorded --episodes.
  argv = reproduce._set_flags(lstm["train"]["argv"], ["--steps", "7"], parser)
  assert "--episodes" not in argv and exp.parse_args(parser, argv).steps == 7
  # Old run folders' config.json: episodes counts in today's keys.
  old = {"batch_size": 16, "episodes": 204800, "lr_drop_episodes": 153600}
  assert exp.upgrade_config(old) == {"batch_size": 16, "steps": 12800, "lr_drop_steps": 9600}


def test_an_old_run_folder_with_episode_counts_resumes(omniglot_dir, tmp_path):
  exp = export.load_experiment("omniglot_mann")
  workdir = tmp_path / "run"
  argv = tiny_mann(omniglot_dir, workdir) + ["--no-plots", "--eval-every", "0"]
  exp.main(argv + ["--steps", "2", "--lr-drop-steps", "1"])
  config = json.loads((workdir / "config.json").read_text())
  # As the code before --steps wrote it.
  config["episodes"], config["lr_drop_episodes"] = 2 * config.pop("steps"), 2 * config.pop("lr_drop_steps")
  (workdir / "config.json").write_text(json.dumps(config))
  results = exp.main(argv + ["--resume", "--episodes", "6", "--lr-drop-episodes", "2"])
  assert results["steps"] == 3
  assert json.loads((workdir / "config.json").read_text())["lr_drop_steps"] == 1
  with pytest.raises(SystemExit):  # another schedule on resume is refused
    exp.main(argv + ["--resume", "--steps", "4", "--lr-drop-steps", "2"])


def test_mann_ema_decay_switched_on_at_a_resume_is_what_the_run_tests_and_exports(omniglot_dir, tmp_path):
  """--ema-decay on a resume: config.json records it from that step, the training steps
  are the run's without it, and the final test and the exported weights are the average."""
  exp = export.load_experiment("omniglot_mann")
  argv = lambda wd: tiny_mann(omniglot_dir, wd) + ["--no-plots", "--eval-every", "0"]  # noqa: E731
  workdir, plain = tmp_path / "run", tmp_path / "plain"
  exp.main(argv(workdir) + ["--steps", "3"])
  results = exp.main(argv(workdir) + ["--steps", "6", "--ema-decay", "0.5", "--resume"])
  raw = exp.main(argv(plain) + ["--steps", "6"])
  assert json.loads((workdir / "config.json").read_text())["ema_history"] == [[0, 0.0], [3, 0.5]]
  saved = lambda wd: training._read_latest(str(wd), training._Checkpointer.restore_saved)  # noqa: E731
  averaged = training.load_checkpoint_params(str(workdir))
  for a, b in zip(jax.tree.leaves(saved(workdir)["params"]), jax.tree.leaves(saved(plain)["params"])):
    np.testing.assert_allclose(a, b, rtol=1e-6)  # the same updates
  assert not np.allclose(jax.tree.leaves(averaged)[0], jax.tree.leaves(saved(workdir)["params"])[0])
  assert results["eval_loss"] != raw["eval_loss"]  # the test saw other parameters
  path = export.export_run(workdir, "tiny-mann-ema", table="mann-table1", out_dir=tmp_path / "reg")
  shipped = pretrained.load_file(path).variables
  for a, b in zip(jax.tree.leaves(shipped), jax.tree.leaves(averaged)):
    np.testing.assert_array_equal(a, b)


def test_metanet_ema_decay_eval_only_tests_the_same_average(omniglot_dir, tmp_path):
  exp = export.load_experiment("omniglot_metanet")
  workdir = tmp_path / "run"
  argv = [*TINY_METANET, "--data-dir", str(omniglot_dir), "--workdir", str(workdir), "--no-plots"]
  trained = exp.main(argv + ["--steps", "3", "--ema-decay", "0.5", "--test-num-classes", "3"])
  assert json.loads((workdir / "config.json").read_text())["ema_history"] == [[0, 0.5]]
  again = exp.main(["--data-dir", str(omniglot_dir), "--workdir", str(workdir), "--eval-only", "--no-progress",
                    "--eval-episodes", "4"])
  assert again["test_episode_accuracies"] == trained["test_episode_accuracies"]


@pytest.mark.parametrize("name", ["copy_task", "omniglot_mann", "omniglot_metanet", "reproduce"])
def test_help_shows_every_default(name):
  parser = reproduce.build_parser() if name == "reproduce" else export.load_experiment(name).build_parser()
  formatter = parser._get_formatter()
  for action in parser._actions:
    if not action.option_strings or action.help == argparse.SUPPRESS or action.dest == "help":
      continue
    text = formatter._format_action(action)
    assert "(default" in text, (name, action.option_strings, text)
  if name in ("omniglot_mann", "omniglot_metanet"):  # the split choices are listed
    assert "{train,test,background,evaluation,small1,small2}" in parser.format_help()


def test_one_set_of_argument_validators():
  assert cli.positive_int is _checks.positive_int and cli.positive_float is _checks.positive_float
  assert reproduce.positive_int is _checks.positive_int
  with pytest.raises(argparse.ArgumentTypeError, match="positive integer"):
    _checks.positive_int("0")


def test_mann_cpu_devices_trains_data_parallel_like_one_device(omniglot_dir, tmp_path):
  """--cpu-devices 2 (a fresh process): 2 JAX CPU devices, each training on its half of the batch;
  the run's losses are the one-device run's to float tolerance (the same batches, means over the
  same episodes). A count that does not divide the batch is a clear flag error."""
  script = str(Path(__file__).resolve().parents[1] / "experiments" / "omniglot_mann.py")
  losses = {}
  for n in (None, 2):
    workdir = tmp_path / f"run{n}"
    argv = [sys.executable, script, *tiny_mann(omniglot_dir, workdir), "--steps", "4", "--eval-every", "0",
            "--no-plots", *(["--cpu-devices", str(n)] if n else [])]
    proc = subprocess.run(argv, env=_env(tmp_path), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((workdir / "config.json").read_text())["cpu_devices"] == n
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    losses[n] = [r["loss"] for r in records if "loss" in r]
    assert json.loads((workdir / "results.json").read_text())["num_devices"] == (n or 1)
  assert len(losses[None]) == len(losses[2]) >= 2
  np.testing.assert_allclose(losses[2], losses[None], rtol=1e-5)
  exp = export.load_experiment("omniglot_mann")
  with pytest.raises(SystemExit) as e:
    exp.main([*tiny_mann(omniglot_dir, tmp_path / "bad"), "--steps", "1", "--cpu-devices", "3"])
  assert e.value.code == 2
