"""memjax.pretrained: the registry format, its integrity checks, the export tool, the shipped models."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from memjax import MANNCell, MetaNet, NTMCell, cli, pretrained, tasks, training
from memjax.pretrained import export

SHIPPED = sorted(p.stem for p in pretrained.PACKAGE_DIR.glob("*.json"))
TINY_COPY = ["--memory-size", "8", "--word-size", "4", "--controller-features", "8", "--num-bits", "4",
             "--max-length", "3", "--batch-size", "2", "--optimizer", "adam", "--steps", "3",
             "--eval-every", "3", "--eval-sequences", "4", "--generalisation-lengths", "3",
             "--no-progress", "--no-plots"]


@pytest.fixture(autouse=True)
def _no_extra_registry(monkeypatch):
  monkeypatch.delenv(pretrained.PATH_ENV, raising=False)


@pytest.fixture(scope="module")
def tiny_copy_run(tmp_path_factory) -> Path:
  """A copy-task run of a tiny NTM trained for 3 steps with experiments/copy_task.py."""
  workdir = tmp_path_factory.mktemp("copy_run")
  export.load_experiment("copy_task").main(TINY_COPY + ["--workdir", str(workdir)])
  return workdir


@pytest.fixture
def tiny_registry(tmp_path) -> Path:
  """A registry directory holding one small NTM saved with pretrained.save."""
  model = nn.RNN(NTMCell(features=3, memory_size=8, word_size=4, controller_features=8))
  x = jnp.ones((2, 5, 4), jnp.float32)
  variables = model.init(jax.random.key(0), x)
  pretrained.save(tmp_path, "tiny-ntm", model, variables, (x,), {"table": "copy", "steps": 0})
  return tmp_path


def test_round_trip_from_a_trained_run_gives_the_same_logits(tiny_copy_run, tmp_path, monkeypatch):
  path = export.export_run(tiny_copy_run, "tiny-copy", table="copy", out_dir=tmp_path / "reg")
  pre = pretrained.load_file(path)
  # Reference: the checkpoint restored into the experiment's own model.
  config = json.loads((tiny_copy_run / "config.json").read_text())
  module = export.load_experiment("copy_task")
  model, inputs, optimizer = export.build_run_model("copy_task", module, export.run_args(module, config))
  params, step = export.restore_params(tiny_copy_run, model, inputs, optimizer)
  batch = tasks.copy(jax.random.key(7), 4, num_bits=4, min_length=1, max_length=3)
  np.testing.assert_array_equal(np.asarray(pre.model.apply(pre.variables, batch.inputs)),
                                np.asarray(model.apply(params, batch.inputs)))
  assert isinstance(pre.model, nn.RNN) and isinstance(pre.model.cell, NTMCell)
  assert pre.model.cell == model.cell
  c = pre.config
  assert step == c["steps"] == 3 and c["sequences"] == 6
  assert c["table"] == "copy" and c["row"] and c["date"] and c["hardware"]
  assert c["train_command"].startswith("python experiments/copy_task.py ")
  assert "--memory-size 8" in c["train_command"] and "--steps 3" in c["train_command"]
  assert c["train"]["script"] == "experiments/copy_task.py" and "--workdir" in c["train"]["argv"]
  assert c["results"]["steps"] == 3 and "generalisation" in c["results"]
  assert c["run_config"]["controller_features"] == 8
  for key in ("split", "image_size", "num_classes"):
    assert key in c
  # Found by name through $MEMJAX_PRETRAINED_PATH, which comes before the package's own models.
  monkeypatch.setenv(pretrained.PATH_ENV, str(tmp_path / "reg"))
  assert "tiny-copy" in pretrained.available()
  again = pretrained.load("tiny-copy")
  jax.tree.map(np.testing.assert_array_equal, again.variables, pre.variables)


@pytest.mark.parametrize("script", ["omniglot_mann", "omniglot_metanet"])
def test_export_restores_runs_trained_with_a_learning_rate_drop(script):
  """A run with ``--lr-drop-steps`` checkpoints the schedule's step count in its
  optimiser state; the export must build that optimiser (not a constant-rate
  one), or restoring the checkpoint fails on the state's structure."""
  module = export.load_experiment(script)
  params = {"w": jnp.zeros(3)}
  structure = lambda config: jax.tree.structure(export.build_run_model(
      script, module, export.run_args(module, {"num_classes": 5, **config}))[2].init(params))
  args = export.run_args(module, {"num_classes": 5, "lr_drop_steps": 4})
  name = getattr(args, "optimizer", "adam")
  expected = training.make_optimizer(name, training.step_decay(1e-3, 4, args.lr_drop_factor),
                                     clip=args.clip).init(params)
  assert structure({"lr_drop_steps": 4}) == jax.tree.structure(expected)
  assert structure({"lr_drop_steps": 4}) != structure({})


def test_export_cli_writes_both_files_and_refuses_to_overwrite(tiny_copy_run, tmp_path, capsys):
  out = tmp_path / "reg"
  argv = ["--workdir", str(tiny_copy_run), "--name", "tiny-copy", "--table", "copy", "--out", str(out),
          "--command", "python experiments/copy_task.py --memory-size 8 --steps 3"]
  path = export.main(argv)
  assert path == out / "tiny-copy.json" and (out / "tiny-copy.npz").is_file()
  record = json.loads(path.read_text())
  assert record["train"]["argv"] == ["--memory-size", "8", "--steps", "3"]
  assert "sha256" in capsys.readouterr().out
  for bad in (argv,  # exists
              argv[:-2] + ["--command", "python experiments/copy_task.py --no-such-flag"],
              ["--workdir", str(tmp_path / "nothing"), "--name", "x", "--table", "copy", "--out", str(out)],
              ["--workdir", str(tiny_copy_run), "--name", "x", "--table", "table9", "--out", str(out)],
              ["--workdir", str(tiny_copy_run), "--name", "Bad_Name", "--table", "copy", "--out", str(out)]):
    with pytest.raises(SystemExit) as e:
      export.main(bad)
    assert e.value.code == 2
  assert "usage" in capsys.readouterr().err


def test_save_load_round_trip_is_exact_and_float32(tiny_registry):
  pre = pretrained.load_file(tiny_registry / "tiny-ntm.json")
  model = nn.RNN(NTMCell(features=3, memory_size=8, word_size=4, controller_features=8))
  x = jax.random.uniform(jax.random.key(1), (3, 6, 4))
  variables = model.init(jax.random.key(0), jnp.ones((2, 5, 4), jnp.float32))
  np.testing.assert_array_equal(np.asarray(pre.model.apply(pre.variables, x)),
                                np.asarray(model.apply(variables, x)))
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(pre.variables))
  assert pre.config["table"] == "copy" and pre.config["overrides"] == {}
  with np.load(tiny_registry / "tiny-ntm.npz", allow_pickle=False) as z:  # no pickle inside
    assert "params/cell/controller/ii/kernel" in z.files


def _flip_byte(path: Path, at: int) -> None:
  data = bytearray(path.read_bytes())
  data[at] ^= 0xFF
  path.write_bytes(bytes(data))


def test_corrupt_weights_are_an_error_naming_the_file(tiny_registry):
  npz = tiny_registry / "tiny-ntm.npz"
  _flip_byte(npz, npz.stat().st_size // 2)
  with pytest.raises(pretrained.PretrainedFileError, match="corrupt or truncated") as e:
    pretrained.load_file(tiny_registry / "tiny-ntm.json")
  assert str(npz) in str(e.value)


def test_truncated_weights_are_an_error_naming_the_file(tiny_registry):
  npz = tiny_registry / "tiny-ntm.npz"
  npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
  with pytest.raises(pretrained.PretrainedFileError) as e:
    pretrained.load_file(tiny_registry / "tiny-ntm.json")
  assert str(npz) in str(e.value) and "bytes" in str(e.value)
  npz.unlink()
  with pytest.raises(pretrained.PretrainedFileError, match="missing") as e:
    pretrained.load_file(tiny_registry / "tiny-ntm.json")
  assert str(npz) in str(e.value)


def test_truncated_record_is_an_error_naming_the_file(tiny_registry):
  js = tiny_registry / "tiny-ntm.json"
  js.write_text(js.read_text()[:100])
  with pytest.raises(pretrained.PretrainedFileError) as e:
    pretrained.load_file(js)
  assert str(js) in str(e.value)


def test_weights_that_do_not_fit_the_module_are_an_error(tiny_registry):
  js = tiny_registry / "tiny-ntm.json"
  record = json.loads(js.read_text())
  record["model"]["kwargs"]["cell"]["kwargs"]["word_size"] = 5
  js.write_text(json.dumps(record))
  with pytest.raises(pretrained.PretrainedFileError, match="shape") as e:
    pretrained.load_file(js)
  assert "tiny-ntm.npz" in str(e.value)


def test_unknown_name_lists_the_available_ones():
  with pytest.raises(ValueError, match="no pretrained model 'ntm-cpoy'") as e:
    pretrained.load("ntm-cpoy")
  for name in pretrained.available():
    assert name in str(e.value)
  with pytest.raises(ValueError, match="argument `name`"):
    pretrained.load(3)


def test_unknown_override_names_the_attribute(tiny_registry):
  with pytest.raises(ValueError, match="'controler_features'"):
    pretrained.load_file(tiny_registry / "tiny-ntm.json", controler_features=4)


def test_available_lists_only_models_with_both_files(tiny_registry, monkeypatch):
  (tiny_registry / "half.json").write_text("{}")
  monkeypatch.setenv(pretrained.PATH_ENV, str(tiny_registry))
  names = pretrained.available()
  assert "tiny-ntm" in names and "half" not in names
  assert set(SHIPPED) <= set(names)
  # $MEMJAX_PRETRAINED_PATH comes first: a model exported under a shipped name shadows it.
  for ext in ("json", "npz"):
    shutil.copy(tiny_registry / f"tiny-ntm.{ext}", tiny_registry / f"ntm-copy.{ext}")
  assert pretrained.path_of("ntm-copy") == tiny_registry / "ntm-copy.json"


def test_module_description_records_every_attribute_generically():
  """A new cell attribute (MANN's ``write``) is recorded and rebuilt without a registry change."""
  fields = {f.name for f in dataclasses.fields(MANNCell)}
  kwargs = dict(features=5, memory_size=16, word_size=4, num_read_heads=2, controller_features=8)
  if "write" in fields:
    kwargs["write"] = "key"
  model = nn.RNN(MANNCell(**kwargs))
  spec = pretrained.module_spec(model)
  assert spec["module"] == "flax.linen.RNN" and spec["kwargs"]["cell"]["module"] == "memjax.MANNCell"
  assert set(spec["kwargs"]["cell"]["kwargs"]) == fields - {"parent", "name"}
  assert json.loads(json.dumps(spec)) == spec
  assert pretrained.build_module(spec).cell == model.cell
  with pytest.raises(ValueError, match="memjax or flax.linen"):
    pretrained.build_module({"module": "os.system", "kwargs": {}})


def test_metanet_k_way_override(tmp_path):
  """load(name, num_classes=K) gives the model for K-way episodes (paper Table 4)."""
  model = MetaNet(num_classes=5, filters=4, num_blocks=1, hidden=8, fast_layers="fc")
  s, l, q = jnp.zeros((5, 28, 28, 1)), jnp.arange(5, dtype=jnp.int32), jnp.zeros((10, 28, 28, 1))
  variables = model.init(jax.random.key(0), s, l, q)
  pretrained.save(tmp_path, "tiny-metanet", model, variables, (s, l, q), {"table": "metanet-table4"})
  pre = pretrained.load_file(tmp_path / "tiny-metanet.json")
  assert pre.model == model
  k = 10
  pre_k = pretrained.load_file(tmp_path / "tiny-metanet.json", num_classes=k)
  assert pre_k.model.num_classes == k and pre_k.config["overrides"]["num_classes"] == k
  if hasattr(MetaNet, "fast_only_output"):
    assert pre_k.model.fast_only_output
    x = jax.random.uniform(jax.random.key(2), (k, 28, 28, 1))
    logits = jax.jit(pre_k.model.apply)(pre_k.variables, x, jnp.arange(k, dtype=jnp.int32), x[:4])
    assert logits.shape == (4, k) and bool(jnp.all(jnp.isfinite(logits)))


def _example_inputs(pre, batch: int = 2):
  """Inputs of the recorded shapes: a batch of ``batch`` for RNNs, one small episode for MetaNet."""
  key = jax.random.key(3)
  out = []
  for spec in pre.config["inputs"]:
    shape = list(spec["shape"])
    if jnp.issubdtype(jnp.dtype(spec["dtype"]), jnp.integer):
      out.append(jnp.arange(shape[0], dtype=spec["dtype"]) % pre.model.num_classes)
    else:
      if isinstance(pre.model, nn.RNN):
        shape[0] = batch
      out.append(jax.random.bernoulli(key, 0.3, shape).astype(spec["dtype"]))
  return out


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_model_loads_and_runs(name):
  assert name in pretrained.available()
  pre = pretrained.load(name)
  c = pre.config
  for key in ("table", "row", "split", "image_size", "num_classes", "train_command", "steps",
              "results", "date", "hardware"):
    assert key in c, key
  logits = jax.jit(pre.model.apply)(pre.variables, *_example_inputs(pre))
  assert bool(jnp.all(jnp.isfinite(logits)))
  if isinstance(pre.model, nn.RNN):
    assert logits.shape[0] == 2 and logits.shape[-1] == pre.model.cell.features
  else:
    assert logits.shape[-1] == pre.model.num_classes


def test_shipped_weights_are_small_float32_files():
  total = sum(p.stat().st_size for p in pretrained.PACKAGE_DIR.glob("*.npz"))
  assert total <= 30 * 2**20
  for name in SHIPPED:
    with np.load(pretrained.PACKAGE_DIR / f"{name}.npz", allow_pickle=False) as z:
      assert all(z[k].dtype == np.float32 for k in z.files)


@pytest.mark.skipif("ntm-copy" not in SHIPPED, reason="ntm-copy not shipped")
def test_ntm_copy_is_a_trained_model():
  """The shipped weights solve the task they claim (not a placeholder)."""
  model, variables, config = pretrained.load("ntm-copy")
  assert isinstance(model, nn.RNN) and isinstance(model.cell, NTMCell)
  batch = tasks.copy(jax.random.key(11), 100)
  _, metrics = tasks.sequence_loss(jax.jit(model.apply)(variables, batch.inputs), batch)
  assert float(metrics["bit_errors"]) < 0.1  # bits wrong per sequence, lengths 1-20
  assert config["results"]["solved"]["sequences"] == config["sequences"]


def test_load_of_a_copied_registry_is_independent_of_the_package(tmp_path):
  for name in SHIPPED:
    for ext in ("json", "npz"):
      shutil.copy(pretrained.PACKAGE_DIR / f"{name}.{ext}", tmp_path)
    a, b = pretrained.load(name), pretrained.load_file(tmp_path / f"{name}.json")
    jax.tree.map(np.testing.assert_array_equal, a.variables, b.variables)


@pytest.mark.parametrize("name", [n for n in SHIPPED if n.startswith(("mann", "lstm", "metanet"))])
def test_shipped_train_command_repeats_the_runs_learning_rate_schedule_and_jitter(name):
  """The one command a record gives reproduces the rates its run trained at, resumes included,
  and a restored run resumes under it."""
  c = pretrained.load(name).config
  script = c["train"]["script"].removeprefix("experiments/").removesuffix(".py")
  module = export.load_experiment(script)
  parser = module.build_parser()
  args = module.parse_args(parser, c["train"]["argv"])
  assert args.steps == c["steps"]
  lr_of = module.lr_of if hasattr(module, "lr_of") else (lambda config: config["lr"])
  cmd = dict(vars(args), lr_history=None)
  run = c["run_config"]
  marks = {0, c["steps"] - 1, *(s for s, _ in run.get("lr_history", [])),
           run.get("lr_drop_steps") or 0, *(s for s, _ in run.get("lr_schedule") or [])}
  for step in sorted({m + d for m in marks for d in (-1, 0, 1) if 0 <= m + d < c["steps"]}):
    np.testing.assert_allclose(training.learning_rate_at(cmd, step, lr_of),
                               training.learning_rate_at(run, step, lr_of), rtol=1e-6,
                               err_msg=f"{name}: learning rate at step {step}")
  # restore's advice holds: the restored run resumes under the command's own schedule
  training.lr_history(lr_of)(cmd, run, c["steps"])
  # ...and its training jitter (--max-shift, --max-rotation, --jitter-schedule) is the run's
  assert cli.jitter_phases(args) == cli.jitter_phases(run), name
  cli.check_jitter_resume(cmd, run, c["steps"])


def test_command_from_config_writes_an_lr_schedule_the_parser_reads_back():
  module = export.load_experiment("omniglot_metanet")
  config = {"lr_schedule": [[5463, 1e-4], [6965, 1e-3]], "num_classes": 20}
  argv = export.command_from_config(module, "omniglot_metanet", config)
  assert argv == ["--num-classes", "20", "--lr-schedule", "5463:0.0001,6965:0.001"]
  assert module.parse_args(module.build_parser(), argv).lr_schedule == config["lr_schedule"]
  config = {"jitter_schedule": [[400, 0, 0.0], [900, 2, 11.25]]}
  argv = export.command_from_config(module, "omniglot_metanet", config)
  assert argv == ["--jitter-schedule", "400:0:0.0,900:2:11.25"]
  assert module.parse_args(module.build_parser(), argv).jitter_schedule == config["jitter_schedule"]


# -- memjax.pretrained.restore: a shipped model back into a resumable run -------------------------

from memjax.pretrained import restore  # noqa: E402


def test_restore_then_resume_continues_an_exported_run(tiny_copy_run, tmp_path):
  path = export.export_run(tiny_copy_run, "tiny-copy", table="copy", out_dir=tmp_path / "reg")
  record = pretrained.load_file(path).config
  workdir = tmp_path / "again"
  state = restore.restore_run("unused", workdir, path=path)
  assert int(state.step) == 3
  marker = restore.restored_from(workdir)
  assert marker["sha256"] == record["weights"]["sha256"] and marker["step"] == 3
  config = json.loads((workdir / "config.json").read_text())
  assert config == dict(record["run_config"], workdir=str(workdir))
  # The checkpoint holds the shipped parameters, a new optimiser state and the step.
  module = export.load_experiment("copy_task")
  model, inputs, optimizer = export.build_run_model("copy_task", module, export.run_args(module, config))
  params, step = export.restore_params(workdir, model, inputs, optimizer)
  assert step == 3
  jax.tree.map(np.testing.assert_array_equal, params, pretrained.load_file(path).variables)
  like = jax.eval_shape(lambda: training.init_state(params, optimizer))
  opt_state = training.load_checkpoint(str(workdir), like).opt_state
  assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(opt_state))
  # The experiment resumes it at step 3 (its own --resume checks), and an export records the origin.
  results = module.main(TINY_COPY[:-6] + ["--steps", "5", "--no-progress", "--no-plots", "--resume",
                                          "--workdir", str(workdir)])
  assert results["steps"] == 5
  steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert steps and min(steps) > 3
  again = export.export_run(workdir, "tiny-copy-more", table="copy", out_dir=tmp_path / "reg")
  assert pretrained.load_file(again).config["restored_from"]["sha256"] == record["weights"]["sha256"]


def test_restore_refuses_an_existing_run_and_unknown_names(tiny_copy_run, tmp_path, capsys):
  with pytest.raises(FileExistsError, match="config.json"):
    restore.restore_run("ntm-copy", tiny_copy_run)
  for argv in (["--name", "ntm-copy", "--workdir", str(tiny_copy_run)],
               ["--name", "no-such-model", "--workdir", str(tmp_path / "w")]):
    with pytest.raises(SystemExit) as e:
      restore.main(argv)
    assert e.value.code == 2
  err = capsys.readouterr().err
  assert "must be a new folder" in err and "ntm-copy" in err  # the second lists the available names
  assert not (tmp_path / "w").exists()


def test_restored_optimizer_state_keeps_the_schedule_and_restarts_the_moments():
  params = {"w": jnp.ones(3)}
  schedule = training.step_decay(1e-3, 0, 0.1, [[5, 1e-4]])
  optimizer = training.make_optimizer("adam", schedule, clip=10.0)
  state = restore.optimizer_state_at(optimizer, params, 7)
  has_count = lambda x: "count" in getattr(type(x), "_fields", ())
  counts = [x for x in jax.tree.leaves(state, is_leaf=has_count) if has_count(x)]
  kinds = {type(x).__name__: int(x.count) for x in counts}
  assert kinds == {"ScaleByAdamState": 0, "ScaleByScheduleState": 7}
  # The first update after the restore is at the schedule's rate for step 7 (1e-4), Adam's
  # bias-corrected first step being ±rate.
  updates, _ = optimizer.update({"w": jnp.array([1.0, -2.0, 3.0])}, state, params)
  np.testing.assert_allclose(np.asarray(updates["w"]), [-1e-4, 1e-4, -1e-4], rtol=1e-3)


@pytest.mark.parametrize("name", [n for n in SHIPPED if n.startswith(("mann", "lstm", "metanet"))])
def test_every_shipped_training_model_restores_into_its_experiment(name, tmp_path):
  state = restore.restore_run(name, tmp_path / "run")
  c = pretrained.load(name).config
  assert int(state.step) == c["steps"]
  config = json.loads((tmp_path / "run" / "config.json").read_text())
  script = export.detect_experiment(config)
  module = export.load_experiment(script)
  model, inputs, optimizer = export.build_run_model(script, module, export.run_args(module, config))
  params, step = export.restore_params(tmp_path / "run", model, inputs, optimizer)
  assert step == c["steps"]
  jax.tree.map(np.testing.assert_array_equal, params, pretrained.load(name).variables)
  # Under the optimiser of the record's command (its --lr-schedule where the run had --lr legs)
  # the checkpoint loads too, the schedule counting the updates made.
  args = module.parse_args(module.build_parser(), c["train"]["argv"])
  _, _, command_optimizer = export.build_run_model(script, module, args)
  state = training.load_checkpoint(str(tmp_path / "run"), training.init_state(params, command_optimizer))
  is_sched = lambda x: isinstance(x, optax.ScaleByScheduleState)
  counts = [int(x.count) for x in jax.tree.leaves(state.opt_state, is_leaf=is_sched) if is_sched(x)]
  assert counts in ([], [c["steps"]])
