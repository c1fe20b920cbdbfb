"""The generic training loop: optimisers, resume, metrics, non-finite guard."""

from __future__ import annotations

import json
import os

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
