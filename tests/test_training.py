"""The generic training loop: optimisers, resume, metrics, non-finite guard."""

from __future__ import annotations

import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from memjax import training


def regression_loss(params, key):
  x = jax.random.normal(key, (32, 3))
  y = x @ jnp.array([1.0, -2.0, 0.5]) + 0.3
  pred = x @ params["w"] + params["b"]
  loss = jnp.mean((pred - y) ** 2)
  return loss, {"mse": loss}


PARAMS = {"w": jnp.zeros(3), "b": jnp.zeros(())}


def test_paper_rmsprop_clips_components():
  opt = training.paper_rmsprop()
  state = opt.init({"w": jnp.zeros(2)})
  # Identical clipped and unclipped gradients above 10 give identical updates.
  u1, _ = opt.update({"w": jnp.array([100.0, 1.0])}, state)
  u2, _ = opt.update({"w": jnp.array([10.0, 1.0])}, state)
  np.testing.assert_allclose(u1["w"], u2["w"])
  with pytest.raises(ValueError, match="name"):
    training.make_optimizer("sgd")


def test_adam_global_norm_clipping_scales_the_whole_gradient():
  """clip_mode='global_norm' (Chainer's GradientClipping): a gradient longer than
  the threshold is scaled to it as a whole, a shorter one passes; against a hand
  computation of the first Adam step, which sees the clipped gradient."""
  params = {"a": jnp.zeros(2), "b": jnp.zeros(())}
  grads = {"a": jnp.array([3.0, 4.0]), "b": jnp.array(12.0)}  # global norm 13
  clipper = training.make_optimizer("adam", 1.0, clip=6.5, clip_mode="global_norm")
  seen = clipper.update(grads, clipper.init(params), params)[1]  # Adam's first moment ← (1−β1) g
  np.testing.assert_allclose(seen[1][0].mu["a"] / 0.1, [1.5, 2.0], rtol=1e-6)  # halved, direction kept
  np.testing.assert_allclose(seen[1][0].mu["b"] / 0.1, 6.0, rtol=1e-6)
  short = {"a": jnp.array([0.3, 0.4]), "b": jnp.array(1.2)}
  np.testing.assert_allclose(clipper.update(short, clipper.init(params), params)[1][1][0].mu["b"] / 0.1, 1.2,
                             rtol=1e-6)
  component = training.make_optimizer("adam", 1.0, clip=6.5)  # per component: only b is cut, to 6.5
  np.testing.assert_allclose(component.update(grads, component.init(params), params)[1][1][0].mu["b"] / 0.1,
                             6.5, rtol=1e-6)
  with pytest.raises(ValueError, match="clip_mode"):
    training.make_optimizer("adam", clip_mode="norm")
  with pytest.raises(ValueError, match="clip_mode"):
    training.make_optimizer("rmsprop", clip_mode="global_norm")


def test_fit_learns_and_writes_metrics(tmp_path):
  opt = training.make_optimizer("adam", 0.05)
  state, history = training.fit(regression_loss, PARAMS, opt, num_steps=200, workdir=str(tmp_path),
                                log_every=20, progress=False)
  assert int(state.step) == 200
  assert history[-1]["loss"] < 0.01 * history[0]["loss"]
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in lines] == list(range(20, 201, 20))


def test_resume_is_bitwise_identical(tmp_path):
  opt = training.make_optimizer("rmsprop", 1e-2)
  full, _ = training.fit(regression_loss, PARAMS, opt, num_steps=60, seed=3, progress=False)
  wd = str(tmp_path / "run")
  part, _ = training.fit(regression_loss, PARAMS, opt, num_steps=25, seed=3, workdir=wd,
                         checkpoint_every=10, progress=False, log_every=5)
  assert int(part.step) == 25
  resumed, _ = training.fit(regression_loss, PARAMS, opt, num_steps=60, seed=3, workdir=wd,
                            checkpoint_every=10, resume=True, progress=False, log_every=5)
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b)
  steps = [json.loads(l)["step"] for l in open(os.path.join(wd, "metrics.jsonl"))]
  assert steps == list(range(5, 61, 5))
  # A different seed gives different parameters.
  other, _ = training.fit(regression_loss, PARAMS, opt, num_steps=60, seed=4, progress=False)
  assert not np.array_equal(other.params["w"], full.params["w"])


def test_resume_under_a_schedule_given_or_dropped_continues_the_same_run(tmp_path):
  """A constant-rate checkpoint resumes under a schedule and back (the optimiser state differs
  by the schedule's count): Adam's moments carry over, the schedule counts the updates made, and
  the result is the one-schedule run's. Any other mismatch is refused, the run folder as it was."""
  scheduled = training.make_optimizer("adam", training.step_decay(0.05, 0, 0.1, [[10, 1e-3], [20, 5e-2]]))
  constant = training.make_optimizer("adam", 0.05)
  full, _ = training.fit(regression_loss, PARAMS, scheduled, num_steps=30, seed=3, progress=False)
  wd = str(tmp_path / "run")
  kw = dict(seed=3, workdir=wd, checkpoint_every=5, progress=False)
  training.fit(regression_loss, PARAMS, constant, num_steps=10, **kw)
  part, _ = training.fit(regression_loss, PARAMS, scheduled, num_steps=20, resume=True, **kw)
  sched_state = [x for x in jax.tree.leaves(part.opt_state, is_leaf=lambda x: isinstance(
      x, optax.ScaleByScheduleState)) if isinstance(x, optax.ScaleByScheduleState)]
  assert [int(x.count) for x in sched_state] == [20]
  abstract = jax.eval_shape(lambda: training.init_state(PARAMS, constant))  # a target of shapes
  assert int(training.load_checkpoint(wd, abstract).step) == 20
  end, _ = training.fit(regression_loss, PARAMS, constant, num_steps=30, resume=True, **kw)
  assert jax.tree.structure(end) == jax.tree.structure(training.init_state(PARAMS, constant))
  for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(end.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5)
  # a different model: refused by name; a Run's config.json is put back
  training.Run(wd, {"x": 1}, verbose=False)
  before = (tmp_path / "run" / "config.json").read_text()
  run = training.Run(wd, {"x": 1}, resume=True, verbose=False, amend=lambda c, o, s: c.update(y=2))
  assert json.loads((tmp_path / "run" / "config.json").read_text())["y"] == 2
  with pytest.raises(training.CheckpointMismatchError, match="checkpoint 30 .* does not match"):
    run.fit(regression_loss, {"w": jnp.zeros(4), "b": jnp.zeros(())}, constant, num_steps=40)
  assert (tmp_path / "run" / "config.json").read_text() == before


def test_load_checkpoint_reads_the_latest_and_deletes_nothing(tmp_path):
  opt = training.make_optimizer("adam", 0.05)
  like = training.init_state(PARAMS, opt)
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    training.load_checkpoint(str(tmp_path), like)
  assert not (tmp_path / "checkpoints").exists()  # reading creates nothing
  (tmp_path / "checkpoints").mkdir()
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    training.load_checkpoint(str(tmp_path), like)
  state, _ = training.fit(regression_loss, PARAMS, opt, num_steps=30, workdir=str(tmp_path),
                          checkpoint_every=10, keep=3, progress=False)
  before = sorted(os.listdir(tmp_path / "checkpoints"))
  loaded = training.load_checkpoint(str(tmp_path), like)
  assert int(loaded.step) == 30
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(loaded)):
    np.testing.assert_array_equal(a, b)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == before


def test_non_finite_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
  def exploding(params, key):
    loss, m = regression_loss(params, key)
    step_marker = params["b"]  # becomes non-zero after the first update
    return jnp.where(jnp.abs(step_marker) > 0.05, jnp.nan, loss), m

  opt = optax.sgd(0.01)
  wd = str(tmp_path)
  with pytest.raises(training.NonFiniteError, match=r"step \d+"):
    training.fit(exploding, PARAMS, opt, num_steps=1000, workdir=wd, checkpoint_every=1,
                 progress=False)
  restored, _ = training.fit(regression_loss, PARAMS, opt, num_steps=0, workdir=wd, resume=True,
                             progress=False)
  for leaf in jax.tree.leaves(restored.params):
    assert np.all(np.isfinite(leaf))
  assert int(restored.step) > 0


def test_stop_fn_and_eval_fn(tmp_path):
  opt = training.make_optimizer("adam", 0.05)
  calls = []

  def eval_fn(params, step):
    calls.append(step)
    return {"eval_w0": params["w"][0]}

  state, history = training.fit(regression_loss, PARAMS, opt, num_steps=500, eval_every=10,
                                eval_fn=eval_fn, stop_fn=lambda r: r["eval_w0"] > 0.9,
                                progress=False, workdir=str(tmp_path))
  assert int(state.step) < 500 and calls[-1] == int(state.step)
  assert history[-1]["eval_w0"] > 0.9


def test_fit_rejects_a_bare_scalar_loss_with_the_contract():
  def scalar_only(params, key):
    return regression_loss(params, key)[0]

  with pytest.raises(TypeError, match=r"\(params, key\) -> \(loss, metrics\)"):
    training.fit(scalar_only, PARAMS, optax.sgd(0.1), num_steps=2, progress=False)
  with pytest.raises(TypeError, match="scalar loss"):
    training.fit(lambda p, k: (jnp.ones(3) * p["b"], {}), PARAMS, optax.sgd(0.1), num_steps=2,
                 progress=False)


def test_stop_fn_may_schedule_the_stop_at_the_first_evaluation_after_a_step():
  seen = []

  def stop_fn(record):
    seen.append(record["step"])
    return 23  # stop at the first evaluation at or after step 23

  state, _ = training.fit(regression_loss, PARAMS, optax.sgd(0.01), num_steps=100, eval_every=10,
                          eval_fn=lambda p, s: {}, stop_fn=stop_fn, progress=False)
  assert int(state.step) == 30 and seen == [10, 20, 30]


def test_eval_key_and_evaluate():
  np.testing.assert_array_equal(jax.random.key_data(training.eval_key()),
                                jax.random.key_data(jax.random.key(2**31 - 1)))
  np.testing.assert_array_equal(
      jax.random.key_data(training.eval_key(2)),
      jax.random.key_data(jax.random.fold_in(jax.random.key(2**31 - 1), 2)))
  out = training.evaluate(lambda p: {"w0": p["w"][0], "b": p["b"]}, PARAMS, prefix="eval_")
  assert out == {"eval_w0": 0.0, "eval_b": 0.0} and all(type(v) is float for v in out.values())


def test_choose_mesh():
  assert training.choose_mesh(None) is None
  expected = None if jax.device_count() == 1 else training.DATA_AXIS
  mesh = training.choose_mesh("auto", batch_size=jax.device_count())
  assert (mesh if mesh is None else mesh.axis_names[0]) == expected
  if jax.device_count() > 1:
    assert training.choose_mesh("auto", batch_size=jax.device_count() + 1) is None
  with pytest.raises(ValueError, match="mesh"):
    training.choose_mesh("all")


def test_run_saves_config_and_names_the_keys_that_differ_on_resume(tmp_path, monkeypatch):
  wd = tmp_path / "run"
  config = {"workdir": str(wd), "lr": 0.1, "seed": 0, "steps": 10}
  training.Run(str(wd), config, verbose=False)
  assert json.loads((wd / "config.json").read_text()) == config
  # Relative and absolute paths of the same folder are the same configuration.
  monkeypatch.chdir(tmp_path)
  run = training.Run("run", dict(config, workdir="run", steps=20), resume=True,
                     compare=["workdir", "lr", "seed"], verbose=False)
  assert run.saved_config["workdir"] == str(wd) and run.start_step == 0
  with pytest.raises(training.ConfigMismatchError, match=r"\['lr', 'seed'\]"):
    training.Run("run", dict(config, lr=0.2, seed=1), resume=True, compare=["lr", "seed", "workdir"],
                 verbose=False)
  errors = []
  with pytest.raises(training.ConfigMismatchError):
    training.Run("run", dict(config, lr=0.2), resume=True, compare=["lr"], error=errors.append,
                 verbose=False)
  assert "lr" in errors[0] and "saved 0.1" in errors[0]
  # Keys missing from an older config.json: its defaults; renamed keys: upgrade.
  training.Run("run", dict(config, workdir="run", new=1), resume=True, compare=["new", "lr"],
               defaults={"new": 1}, verbose=False)
  training.Run("run", {"steps_v2": 10}, resume=True,
               upgrade=lambda old: {"steps_v2": old["steps"]}, verbose=False)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_run_stops_on_a_signal_with_checkpoint_partial_results_and_exit_code(tmp_path, signum, code,
                                                                             capsys):
  wd = str(tmp_path / "run")
  run = training.Run(wd, {"seed": 0}, verbose=False)

  def eval_fn(params, step):
    if step == 20:
      os.kill(os.getpid(), signum)  # as Ctrl-C / `kill` during training
    return {}

  skipped = []
  with pytest.raises(SystemExit) as info:
    with run:
      state, _ = run.fit(regression_loss, PARAMS, optax.sgd(0.01), num_steps=1000, eval_every=10,
                         eval_fn=eval_fn, checkpoint_every=500, progress=False)
      assert run.step("later step", lambda: skipped.append(1)) is None
      run.step("plots", lambda: skipped.append(2), always=True)
      run.write_results({"steps": int(state.step)})
  assert info.value.code == code
  assert int(state.step) == 20 and skipped == [2]
  results = json.loads((tmp_path / "run" / "results.json").read_text())
  assert results == {"steps": 20, "interrupted": True, "signal": signal.Signals(signum).name}
  assert training.load_checkpoint(wd, training.init_state(PARAMS, optax.sgd(0.01))).step == 20
  assert signal.getsignal(signum) is not run._on_signal  # handlers restored
  # --resume continues from the checkpoint.
  run = training.Run(wd, {"seed": 0}, resume=True, verbose=False)
  assert run.start_step == 20
  with run:
    state, _ = run.fit(regression_loss, PARAMS, optax.sgd(0.01), num_steps=30, progress=False)
    run.write_results({})
  assert int(state.step) == 30 and not run.interrupted
  assert json.loads((tmp_path / "run" / "results.json").read_text())["interrupted"] is False


def test_an_interrupted_resume_keeps_the_finished_results_it_continues(tmp_path):
  wd = str(tmp_path / "run")
  results_path, partial_path = tmp_path / "run" / "results.json", tmp_path / "run" / "results_interrupted.json"
  with training.Run(wd, {"seed": 0}, verbose=False) as run:  # finished at step 20
    state, _ = run.fit(regression_loss, PARAMS, optax.sgd(0.01), num_steps=20, progress=False)
    run.write_results({"steps": int(state.step)})
  assert json.loads(results_path.read_text()) == {"steps": 20, "interrupted": False}

  def eval_fn(params, step):
    if step == 30:
      os.kill(os.getpid(), signal.SIGTERM)  # a resume towards 1000 killed at step 30
    return {}

  run = training.Run(wd, {"seed": 0}, resume=True, verbose=False)
  with pytest.raises(SystemExit) as info:
    with run:
      state, _ = run.fit(regression_loss, PARAMS, optax.sgd(0.01), num_steps=1000, eval_every=10,
                         eval_fn=eval_fn, checkpoint_every=500, progress=False)
      run.write_results({"steps": int(state.step)})
  assert info.value.code == 143
  assert json.loads(results_path.read_text()) == {"steps": 20, "interrupted": False}  # kept
  assert json.loads(partial_path.read_text()) == {"steps": 30, "interrupted": True, "signal": "SIGTERM"}
  assert "results_interrupted.json" in run.summary()
  # Interrupted again: the partial results are replaced, the finished ones still kept.
  run = training.Run(wd, {"seed": 0}, resume=True, verbose=False)
  with pytest.raises(SystemExit):
    with run:
      os.kill(os.getpid(), signal.SIGINT)
      run.write_results({"steps": run.start_step})
  assert json.loads(results_path.read_text()) == {"steps": 20, "interrupted": False}
  assert json.loads(partial_path.read_text())["signal"] == "SIGINT"
  # Finishing replaces the results and removes the partial ones.
  with training.Run(wd, {"seed": 0}, resume=True, verbose=False) as run:
    state, _ = run.fit(regression_loss, PARAMS, optax.sgd(0.01), num_steps=40, progress=False)
    run.write_results({"steps": int(state.step)})
  assert json.loads(results_path.read_text()) == {"steps": 40, "interrupted": False}
  assert not partial_path.exists()
  # A run interrupted before it ever finished writes results.json as before.
  with pytest.raises(SystemExit):
    with training.Run(str(tmp_path / "new"), {"seed": 0}, verbose=False) as run:
      os.kill(os.getpid(), signal.SIGTERM)
      run.write_results({})
  assert json.loads((tmp_path / "new" / "results.json").read_text())["interrupted"] is True


def test_lr_history_records_each_new_learning_rate_from_its_resume_step(capsys):
  amend = training.lr_history()
  config = {"lr": 1e-3}
  amend(config, None, 0)  # a new run
  assert config["lr_history"] == [[0, 1e-3]]
  resumed = {"lr": 1e-4}
  amend(resumed, config, 500)  # resumed at step 500 with a lower rate
  assert resumed["lr_history"] == [[0, 1e-3], [500, 1e-4]]
  assert "from step 500 on: 0.0001 (was 0.001)" in capsys.readouterr().out
  again = {"lr": 1e-4}
  amend(again, resumed, 800)  # the same rate: nothing new
  assert again["lr_history"] == [[0, 1e-3], [500, 1e-4]]
  back = {"lr": 3e-4}
  amend(back, resumed, 300)  # resumed from an earlier checkpoint: later steps are dropped
  assert back["lr_history"] == [[0, 1e-3], [300, 3e-4]]
  old = {"optimizer": "rmsprop", "lr": None}  # a run saved before lr_history, with a default rate
  new = {"optimizer": "rmsprop", "lr": 1e-5}
  training.lr_history(lambda c: c["lr"] or 1e-4)(new, old, 40)
  assert new["lr_history"] == [[0, 1e-4], [40, 1e-5]]


def test_lr_history_leaves_out_a_base_rate_that_the_schedule_overrides(capsys):
  amend = training.lr_history()
  first = {"lr": 1e-3, "lr_schedule": [[100, 1e-4]]}
  amend(first, None, 0)
  more = {"lr": 1e-3, "lr_schedule": [[100, 1e-4], [300, 1e-3]]}  # a later step added at 200
  amend(more, first, 200)
  assert more["lr_history"] == [[0, 1e-3], [100, 1e-4]]  # no [200, 1e-3]: no update takes it
  assert "learning rate from step 200 on: 0.0001" in capsys.readouterr().out
  want = [1e-3, 1e-3, 1e-4, 1e-4, 1e-4, 1e-3]
  got = [training.learning_rate_at(more, s) for s in (0, 99, 100, 200, 299, 300)]
  np.testing.assert_allclose(got, want, rtol=1e-6)
  again = {"lr": 1e-3, "lr_schedule": [[100, 1e-4], [300, 1e-3]]}
  amend(again, more, 400)  # the same command resumed later: nothing new
  assert again["lr_history"] == more["lr_history"]
  before = {"lr": 5e-4, "lr_schedule": [[100, 1e-4]]}
  amend(before, first, 50)  # before the schedule's first step the given rate is the rate
  assert before["lr_history"] == [[0, 1e-3], [50, 5e-4]]
  assert training.learning_rate_at(before, 60) == pytest.approx(5e-4)


def test_step_decay_schedule_is_lr_history_applied_from_each_step():
  sched = training.step_decay(1e-3, 0, 0.1, [[3, 1e-4], [5, 1e-3], [8, 2e-5]])
  # update k + 1 runs at count k: the rate changes at the first update after each step
  want = [1e-3] * 3 + [1e-4] * 2 + [1e-3] * 3 + [2e-5] * 2
  np.testing.assert_allclose([float(sched(k)) for k in range(10)], want, rtol=1e-6)
  assert float(sched(jnp.asarray(4))) == np.float32(1e-4)  # exact, not a product of factors
  assert training.step_decay(1e-3, 0, 0.1, None) == 1e-3 == training.step_decay(1e-3, 0, 0.1, [])
  with pytest.raises(ValueError, match="`drop_steps` and `schedule`"):
    training.step_decay(1e-3, 4, 0.1, [[3, 1e-4]])
  with pytest.raises(ValueError, match="increasing positive steps"):
    training.step_decay(1e-3, 0, 0.1, [[5, 1e-4], [3, 1e-3]])


def test_step_decay_schedule_inside_adam_equals_changing_the_rate_on_resume():
  """One optimiser over a schedule takes the same updates as a run resumed with a new
  constant rate at each step (Adam's state does not depend on the rate)."""
  params = {"w": jnp.zeros(4)}
  grads = [{"w": jnp.asarray([1.0, -2.0, 0.5, 3.0]) * (k + 1)} for k in range(6)]
  scheduled = optax.adam(training.step_decay(1e-2, 0, 0.1, [[2, 1e-3], [4, 5e-3]]))
  state, got = scheduled.init(params), []
  for g in grads:
    u, state = scheduled.update(g, state, params)
    got.append(u["w"])
  pieces, want, adam_state = [(1e-2, 2), (1e-3, 2), (5e-3, 2)], [], None
  for rate, n in pieces:
    opt = optax.adam(rate)
    adam_state = opt.init(params) if adam_state is None else adam_state
    for _ in range(n):
      u, adam_state = opt.update(grads[len(want)], adam_state, params)
      want.append(u["w"])
  np.testing.assert_allclose(np.stack(got), np.stack(want), rtol=1e-6)


def _scaled_loss(scale: float):
  """regression_loss times ``scale``, which it reports as a metric."""
  def loss(params, key):
    value, _ = regression_loss(params, key)
    return scale * value, {"scale": jnp.asarray(scale, jnp.float32)}
  return loss


def test_fit_follows_a_loss_schedule_and_resumes_inside_it(tmp_path):
  """Update s + 1 uses the last loss whose first step is at most s: the same run as one fit per
  phase resumed in turn, and a resume inside a phase picks that phase's loss."""
  opt = optax.sgd(1e-2)
  schedule = [(0, _scaled_loss(1.0)), (4, _scaled_loss(3.0))]
  full, history = training.fit(schedule, PARAMS, opt, num_steps=8, seed=1, log_every=1, progress=False)
  assert [r["scale"] for r in history] == [1.0] * 4 + [3.0] * 4
  kw = dict(seed=1, checkpoint_every=2, progress=False)
  wd = str(tmp_path / "phases")
  training.fit(_scaled_loss(1.0), PARAMS, opt, num_steps=4, workdir=wd, **kw)
  phases, _ = training.fit(_scaled_loss(3.0), PARAMS, opt, num_steps=8, workdir=wd, resume=True, **kw)
  wd = str(tmp_path / "inside")
  training.fit(schedule, PARAMS, opt, num_steps=6, workdir=wd, **kw)
  resumed, later = training.fit(schedule, PARAMS, opt, num_steps=8, workdir=wd, resume=True,
                                log_every=1, **kw)
  assert [r["scale"] for r in later] == [3.0, 3.0]
  for a, b, c in zip(jax.tree.leaves(full.params), jax.tree.leaves(phases.params),
                     jax.tree.leaves(resumed.params)):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
  # The one-phase run differs: the schedule is not ignored.
  plain, _ = training.fit(_scaled_loss(1.0), PARAMS, opt, num_steps=8, seed=1, progress=False)
  assert not np.array_equal(plain.params["w"], full.params["w"])


@pytest.mark.parametrize("bad", [[(1, regression_loss)], [(0, regression_loss), (0, regression_loss)],
                                 [(0, regression_loss), (5, 3.0)], [], "loss", 3.0])
def test_fit_rejects_a_malformed_loss_schedule(bad):
  with pytest.raises(TypeError, match="argument `loss_fn`: .*first steps increasing from 0"):
    training.fit(bad, PARAMS, optax.sgd(1e-2), num_steps=1, progress=False)


def test_run_applies_a_sequence_of_amends_in_order(tmp_path):
  order = []
  run = training.Run(str(tmp_path), {"x": 1}, verbose=False,
                     amend=[lambda c, o, s: order.append("a") or c.update(a=1),
                            lambda c, o, s: order.append("b") or c.update(b=c["a"] + 1)])
  assert order == ["a", "b"] and run.config == {"x": 1, "a": 1, "b": 2}


def test_warm_start_takes_the_checkpoints_shared_variables_and_keeps_the_rest(tmp_path):
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    training.load_checkpoint_params(str(tmp_path))
  opt = training.make_optimizer("adam", 0.05)
  state, _ = training.fit(regression_loss, PARAMS, opt, num_steps=20, workdir=str(tmp_path),
                          checkpoint_every=10, progress=False)
  source = training.load_checkpoint_params(str(tmp_path))  # no model or optimiser needed
  np.testing.assert_array_equal(source["w"], state.params["w"])
  # A bigger model: "w" and "b" shared, "extra" new.
  params = {"w": jnp.ones(3), "b": jnp.ones(()), "extra": {"v": jnp.full((2,), 7.0)}}
  merged, taken, fresh = training.warm_start(params, source)
  assert sorted(taken) == ["b", "w"] and fresh == ["extra/v"]
  np.testing.assert_array_equal(merged["w"], state.params["w"])
  np.testing.assert_array_equal(merged["b"], state.params["b"])
  np.testing.assert_array_equal(merged["extra"]["v"], params["extra"]["v"])
  with pytest.raises(ValueError, match="`w` is \\[3\\] float32, the model's \\[4\\]"):
    training.warm_start({"w": jnp.zeros(4)}, source)
  with pytest.raises(ValueError, match="no variable in common"):
    training.warm_start({"u": jnp.zeros(3)}, source)


def _numpy_ema(thetas, decay):
  """θ̄ after each update from the parameters θ_0, θ_1, … (θ_0 the start), in plain numpy:
  d_n = min(decay, (1 + n) / (10 + n)), θ̄ ← d_n θ̄ + (1 − d_n) θ_{n+1}."""
  ema = np.asarray(thetas[0], np.float64)
  for n, theta in enumerate(thetas[1:]):
    d = min(decay, (1.0 + n) / (10.0 + n))
    ema = d * ema + (1.0 - d) * np.asarray(theta, np.float64)
  return ema


def test_params_ema_is_the_warmed_up_moving_average_and_changes_no_update():
  """with_params_ema(opt, decay): the raw parameters follow opt's updates bit for bit, and the
  average equals a numpy moving average of the parameters after each update (warm-up d_n)."""
  base = training.make_optimizer("adam", 0.1)
  averaged = training.with_params_ema(base, 0.8)
  assert training.with_params_ema(base, 0.0) is base and training.with_params_ema(base, None) is base
  params = {"w": jnp.array([1.0, -2.0, 0.5]), "b": jnp.zeros(())}
  p_raw, s_raw = params, base.init(params)
  p_avg, s_avg = params, averaged.init(params)
  seen = [params]
  for i in range(40):  # past the warm-up: (1 + n) / (10 + n) > 0.8 from n = 32
    g = jax.grad(lambda p: regression_loss(p, jax.random.key(i))[0])(p_raw)
    u, s_raw = base.update(g, s_raw, p_raw)
    p_raw = optax.apply_updates(p_raw, u)
    u, s_avg = averaged.update(g, s_avg, p_avg)
    p_avg = optax.apply_updates(p_avg, u)
    seen.append(p_raw)
  for a, b in zip(jax.tree.leaves(p_raw), jax.tree.leaves(p_avg)):
    np.testing.assert_array_equal(a, b)
  state = training.TrainState(jnp.asarray(40), p_avg, s_avg)
  ema = training.averaged_params(state)
  for k in params:
    np.testing.assert_allclose(ema[k], _numpy_ema([s[k] for s in seen], 0.8), rtol=1e-5, atol=1e-6)
    assert not np.allclose(ema[k], p_avg[k])  # an average, not the last parameters
  plain = training.TrainState(jnp.asarray(40), p_raw, s_raw)
  assert training.averaged_params(plain) is p_raw
  for bad in (0.0, 1.0, -0.5, 1.5):
    with pytest.raises(ValueError, match="decay"):
      training.params_ema(bad)
  with pytest.raises(ValueError, match="params"):
    training.params_ema(0.9).update(params, training.params_ema(0.9).init(params))


def test_params_ema_survives_resume_and_may_be_switched_on_or_off_there(tmp_path):
  """fit with an average: a resumed run ends bit for bit where an uninterrupted one does
  (the average is checkpointed); switched on at a resume it starts from the checkpoint's
  parameters, switched off it is dropped; eval_fn, load_checkpoint_params and the
  returned state see the average."""
  plain = training.make_optimizer("adam", 0.05)
  averaged = training.with_params_ema(plain, 0.9)
  seen = []
  full, _ = training.fit(regression_loss, PARAMS, averaged, num_steps=30, seed=3, progress=False,
                         eval_every=10, eval_fn=lambda p, s: seen.append((s, p)) or {})
  assert [s for s, _ in seen] == [10, 20, 30]
  for a, b in zip(jax.tree.leaves(seen[-1][1]), jax.tree.leaves(training.averaged_params(full))):
    np.testing.assert_array_equal(a, b)
  wd = str(tmp_path / "run")
  kw = dict(seed=3, workdir=wd, checkpoint_every=5, progress=False)
  training.fit(regression_loss, PARAMS, averaged, num_steps=15, **kw)
  resumed, _ = training.fit(regression_loss, PARAMS, averaged, num_steps=30, resume=True, **kw)
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(training.load_checkpoint_params(wd)["w"],
                                training.averaged_params(resumed)["w"])
  # switched off on resume: the raw run goes on as without the average
  off, _ = training.fit(regression_loss, PARAMS, plain, num_steps=35, resume=True, **kw)
  assert training.averaged_params(off) is off.params
  np.testing.assert_array_equal(training.load_checkpoint_params(wd)["w"], off.params["w"])
  # switched on on resume: the first average is d_0 θ_ckpt + (1 − d_0) θ_new, d_0 = 0.1
  on, _ = training.fit(regression_loss, PARAMS, averaged, num_steps=36, resume=True, **kw)
  again, _ = training.fit(regression_loss, PARAMS, plain, num_steps=36, seed=3, progress=False,
                          workdir=str(tmp_path / "ref"))  # the same raw trajectory, no average
  np.testing.assert_allclose(on.params["w"], again.params["w"], rtol=1e-6)
  expected = 0.1 * np.asarray(off.params["w"]) + 0.9 * np.asarray(on.params["w"])
  np.testing.assert_allclose(training.averaged_params(on)["w"], expected, rtol=1e-6)
