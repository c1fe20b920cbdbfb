"""MANNCell (Santoro et al. 2016): one step vs numpy, cell contract, unroll, learning, experiment.

The LRUA step itself is tested in tests/test_memory.py; the loss and per-instance
accuracy in tests/test_tasks.py.
"""

from __future__ import annotations

import json
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from memjax.data import episodes as episodes_lib
from memjax.mann import LSTMCell, MANNCell, MANNState, mann_loss, trajectory, unroll
from memjax.pretrained import export

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy_reference as ref  # noqa: E402

SMALL = dict(features=2, memory_size=16, word_size=8, num_read_heads=2, controller_features=32)
IN = 8 * 8 + 2  # input features: an 8×8 image and a 2-way one-hot label


def _np_softmax(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def small_params():
  """Parameters of MANNCell(**SMALL) for IN input features (one compile, shared by the tests)."""
  cell = MANNCell(**SMALL)
  carry = cell.initialize_carry(jax.random.key(0), (IN,))
  return jax.jit(cell.init)(jax.random.key(1), carry, jnp.zeros((IN,)))["params"]


@pytest.mark.parametrize("write", ["add", "key"])
def test_single_step_matches_numpy_paper_equations(small_params, write):
  cell = MANNCell(**SMALL, usage_decay=0.9, write=write)
  n, m, r = 16, 8, 2
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(IN,)), jnp.float32)
  carry = cell.initialize_carry(jax.random.key(0), x.shape)
  read_w_prev = _np_softmax(rng.normal(size=(r, n)) * 2)
  usage = rng.permutation(n) * 0.3 + rng.uniform(0, 0.1, n)  # distinct usages, no ties
  carry = carry._replace(memory=jnp.asarray(rng.normal(size=(n, m)), jnp.float32),
                         usage=jnp.asarray(usage, jnp.float32),
                         read_weights=jnp.asarray(read_w_prev, jnp.float32),
                         reads=jnp.asarray(rng.normal(size=(r, m)), jnp.float32))
  variables = {"params": small_params}
  with jax.default_matmul_precision("highest"):
    new, logits = jax.jit(cell.apply)(variables, carry, x)
    p = variables["params"]
    ctrl_in = jnp.concatenate([x, carry.reads.reshape(-1)])
    (_, h), _ = nn.OptimizedLSTMCell(32).apply({"params": p["controller"]}, carry.controller, ctrl_in)
  h = np.asarray(h, np.float64)
  dense = lambda name: h @ np.asarray(p[name]["kernel"]) + np.asarray(p[name]["bias"])
  keys, alpha = np.tanh(dense("key")).reshape(r, m), dense("gate")
  adds = np.tanh(dense("add")).reshape(r, m) if write == "add" else keys
  mem, use, w_r, w_w, reads = ref.lrua_step(np.asarray(carry.memory, np.float64), usage, read_w_prev,
                                            keys, adds, alpha, 0.9)
  tol = dict(rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(new.write_weights, w_w, **tol)
  np.testing.assert_allclose(new.memory, mem, **tol)
  j = np.argmin(usage)  # the cleared slot holds only this step's writes
  np.testing.assert_allclose(new.memory[j], w_w[:, j] @ adds, **tol)
  np.testing.assert_allclose(new.read_weights, w_r, **tol)
  np.testing.assert_allclose(new.reads, reads, **tol)
  np.testing.assert_allclose(new.usage, use, **tol)
  out = np.concatenate([h, reads.reshape(-1)]) @ np.asarray(p["output"]["kernel"]) + np.asarray(
      p["output"]["bias"])
  np.testing.assert_allclose(logits, out, **tol)
  assert int(new.step) == 1


def test_initial_state_breaks_symmetry():
  cell = MANNCell(**SMALL)
  carry = cell.initialize_carry(jax.random.key(0), (3, 4))
  assert isinstance(carry, MANNState) and cell.num_feature_axes == 1
  np.testing.assert_allclose(carry.memory, 1e-6)
  np.testing.assert_array_equal(carry.usage, 0.0)
  np.testing.assert_array_equal(np.argmax(carry.read_weights, -1), [[0, 1]] * 3)  # distinct slots
  np.testing.assert_allclose(carry.read_weights.sum(-1), 1.0)
  with pytest.raises(ValueError, match="num_read_heads"):
    MANNCell(features=3, memory_size=2, num_read_heads=3).initialize_carry(jax.random.key(0), (4,))
  with pytest.raises(ValueError, match="usage_decay"):
    MANNCell(features=3, usage_decay=1.5).initialize_carry(jax.random.key(0), (4,))


def test_rnn_shapes_jit_and_finite_gradients(small_params):
  """nn.RNN with 1 and 2 batch axes, jitted; finite gradients through 50 steps."""
  cell = MANNCell(**SMALL)
  model = nn.RNN(cell)
  x2 = jax.random.normal(jax.random.key(1), (3, 2, 50, IN))  # two batch axes
  x1 = x2.reshape(6, 50, IN)  # one batch axis
  targets = jax.random.randint(jax.random.key(3), (6, 50), 0, 2)
  variables = {"params": {"cell": small_params}}  # nn.RNN's layout: the cell's params under "cell"
  y2 = jax.jit(model.apply)(variables, x2)
  assert y2.shape == (3, 2, 50, 2)

  def loss(v):
    logits, states = trajectory(cell, v, x1)
    return mann_loss(logits, targets), (logits, states)

  (value, (y1, states)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables)
  assert y1.shape == (6, 50, 2)
  np.testing.assert_allclose(y2.reshape(6, 50, 2), y1, rtol=1e-5, atol=1e-6)
  assert np.isfinite(value) and np.all(np.isfinite(y1))
  leaves = jax.tree.leaves(grads)
  assert all(np.all(np.isfinite(g)) for g in leaves)
  assert all(np.any(g != 0) for g in leaves)  # every parameter gets a gradient
  # The trajectory: a time axis after the batch axes, weightings are distributions.
  assert states.read_weights.shape == (6, 50, 2, 16)
  assert states.memory.shape == (6, 50, 16, 8)
  np.testing.assert_allclose(states.read_weights.sum(-1), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(states.step[0], np.arange(1, 51))
  assert np.all(np.isfinite(states.memory)) and np.all(states.usage > 0)


@pytest.mark.parametrize("write", ["add", "key"])
def test_unroll_equals_nn_rnn_values_and_gradients(small_params, write):
  """memjax.mann.unroll (hoisted input projection and output layer) == nn.RNN(cell)."""
  cell = MANNCell(**SMALL, write=write)
  model = nn.RNN(cell)
  x = jax.random.normal(jax.random.key(4), (2, 3, 20, IN))  # two batch axes
  targets = jax.random.randint(jax.random.key(5), (2, 3, 20), 0, 2)
  variables = model.init(jax.random.key(6), x)
  with jax.default_matmul_precision("highest"):
    want, want_g = jax.jit(jax.value_and_grad(lambda v: mann_loss(model.apply(v, x), targets)))(variables)
    got, got_g = jax.jit(jax.value_and_grad(lambda v: mann_loss(unroll(cell, v, x), targets)))(variables)
    np.testing.assert_allclose(unroll(cell, variables, x), model.apply(variables, x), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  for g1, g2 in zip(jax.tree.leaves(got_g), jax.tree.leaves(want_g)):
    np.testing.assert_allclose(g1, g2, rtol=1e-4, atol=1e-6)
  assert ("add" in variables["params"]["cell"]) == (write == "add")
  with pytest.raises(ValueError, match="inputs"):
    unroll(cell, variables, x[..., :-1])


def test_unroll_gradients_of_any_cotangent_match_nn_rnn(small_params):
  """The VJP of unroll's logits (not only of the loss) equals nn.RNN's for a random cotangent."""
  cell = MANNCell(**SMALL)
  variables = {"params": {"cell": small_params}}
  x = jax.random.normal(jax.random.key(7), (3, 12, IN))
  ct = jax.random.normal(jax.random.key(8), (3, 12, 2))
  with jax.default_matmul_precision("highest"):
    want = jax.jit(jax.grad(lambda v, x: jnp.sum(nn.RNN(cell).apply(v, x) * ct), argnums=(0, 1)))(variables, x)
    got = jax.jit(jax.grad(lambda v, x: jnp.sum(unroll(cell, v, x) * ct), argnums=(0, 1)))(variables, x)
  for g1, g2 in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g1, g2, rtol=1e-4, atol=1e-6)


def test_write_mode_is_checked():
  with pytest.raises(ValueError, match="write"):
    MANNCell(features=3, write="erase").initialize_carry(jax.random.key(0), (4,))


def test_lstm_baseline_cell():
  model = nn.RNN(LSTMCell(features=5, controller_features=8))
  x = jnp.ones((2, 3, 6, 4))
  y, variables = jax.jit(model.init_with_output)(jax.random.key(0), x)
  assert y.shape == (2, 3, 6, 5) and np.all(np.isfinite(y))
  assert set(variables["params"]["cell"]) == {"controller", "output"}


def _prototype_images(key, num_chars=12, drawers=20, side=8, flip=0.05):
  """float32 [C, K, side, side]: each character a random binary prototype, each
  drawer a copy with a fraction ``flip`` of its pixels flipped."""
  k1, k2 = jax.random.split(key)
  proto = jax.random.bernoulli(k1, 0.5, (num_chars, 1, side, side))
  noise = jax.random.bernoulli(k2, flip, (num_chars, drawers, side, side))
  return (proto ^ noise).astype(jnp.float32)


def test_short_training_beats_chance(small_params):
  """A small MANN learns 2-way episodes of synthetic characters: loss well below chance (ln 2)."""
  images = _prototype_images(jax.random.key(0))
  kw = dict(batch_size=16, num_classes=2, samples_per_class=5)
  model = nn.RNN(MANNCell(**SMALL))
  params = {"params": {"cell": small_params}}  # inputs: 8×8 images + 2-way labels = IN
  opt = optax.adam(1e-2)

  @jax.jit
  def step(p, s, key):
    def loss_fn(p):
      ep = episodes_lib.sample_mann_episodes(key, images, **kw)
      return mann_loss(model.apply(p, ep.inputs), ep.targets)
    loss, g = jax.value_and_grad(loss_fn)(p)
    u, s = opt.update(g, s)
    return optax.apply_updates(p, u), s, loss

  state = opt.init(params)
  losses = []
  for i in range(400):
    params, state, loss = step(params, state, jax.random.key(i + 1))
    losses.append(float(loss))
  first, last = np.mean(losses[:10]), np.mean(losses[-20:])
  assert first == pytest.approx(np.log(2), abs=0.1)
  assert last < 0.75 * np.log(2), (first, last)  # ≈ 0.55 ln 2 after 400 steps


def argv_of(omniglot_dir, workdir):
  return ["--data-dir", str(omniglot_dir), "--train-split", "small1", "--test-split", "small1",
          "--batch-size", "2", "--eval-every", "2", "--eval-episodes", "4",
          "--eval-batch", "2", "--memory-size", "8", "--word-size", "4", "--read-heads", "2",
          "--controller-features", "8", "--log-every", "2", "--workdir", str(workdir), "--no-progress",
          "--no-plots", "--optimizer", "adam", "--steps", "4"]


def test_experiment_smoke(omniglot_dir, tmp_path):
  exp = export.load_experiment("omniglot_mann")
  workdir = tmp_path / "run"
  results = exp.main(argv_of(omniglot_dir, workdir))
  saved = json.loads((workdir / "results.json").read_text())
  assert saved["episodes_trained"] == 8 == results["episodes_trained"]
  assert set(saved["per_instance_accuracy"]) == {"1st", "2nd", "3rd", "4th", "5th", "10th"}
  assert all(0 <= v <= 1 for v in saved["per_instance_accuracy"].values())
  assert saved["paper_per_instance_accuracy"]["2nd"] == pytest.approx(0.828)
  assert saved["episodes_per_hour"] > 0
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert any("eval_acc_1st" in r for r in records)
  # Resume with a lower learning rate: a step of the schedule, recorded; training time adds up.
  argv = argv_of(omniglot_dir, workdir)[:-2]  # without "--steps 4"
  exp.main(argv + ["--steps", "6", "--resume", "--lr", "1e-4"])
  config = json.loads((workdir / "config.json").read_text())
  assert config["lr_history"] == [[0, 1e-3], [4, 1e-4]]
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  train_s = [r["train_seconds"] for r in records if "train_seconds" in r]
  assert len(train_s) == 3 and train_s == sorted(train_s)
  with pytest.raises(SystemExit):  # another model on resume is refused
    exp.main(argv + ["--steps", "6", "--resume", "--write", "key"])


def test_experiment_jitter_schedule_changes_the_training_jitter_on_resume(omniglot_dir, tmp_path,
                                                                          monkeypatch, capsys):
  """Each jitter phase traces its own sampler; a resume may add a phase from the checkpoint on
  (here: no jitter after step 4), but not change the jitter of updates already made."""
  exp = export.load_experiment("omniglot_mann")
  calls = []
  sampler = exp.episodes_lib.sample_mann_episodes

  def recording(key, images, **kw):
    if "max_shift" in kw:  # training episodes (the test sampler never jitters)
      calls.append((kw["max_shift"], kw["max_rotation"]))
    return sampler(key, images, **kw)

  monkeypatch.setattr(exp.episodes_lib, "sample_mann_episodes", recording)
  workdir = tmp_path / "run"
  argv = argv_of(omniglot_dir, workdir)[:-2] + ["--eval-every", "0", "--max-shift", "1",
                                                "--max-rotation", "5"]
  exp.main(argv + ["--steps", "4"])
  assert set(calls) == {(1, 5.0)}
  calls.clear()
  exp.main(argv + ["--steps", "6", "--resume", "--jitter-schedule", "4:0:0"])
  assert set(calls) == {(0, 0.0)}  # steps 5 and 6 only: the first phase is never traced
  assert "training jitter from step 4 on: max_shift 0, max_rotation 0 (was 1, 5)" in capsys.readouterr().out
  config = json.loads((workdir / "config.json").read_text())
  assert (config["max_shift"], config["max_rotation"], config["jitter_schedule"]) == (1, 5.0, [[4, 0, 0.0]])
  for more in (["--max-shift", "0"], ["--jitter-schedule", "2:0:0"]):
    with pytest.raises(SystemExit) as info:
      exp.main(argv_of(omniglot_dir, workdir)[:-2] + ["--eval-every", "0", "--max-rotation", "5",
                                                      "--max-shift", "1", *more, "--steps", "8",
                                                      "--resume"])
    assert info.value.code == 2 and "--jitter-schedule 6:SHIFT:DEGREES" in capsys.readouterr().err
  assert json.loads((workdir / "config.json").read_text()) == config  # refused: untouched


@pytest.mark.parametrize("argv", [["--model", "gru"], ["--batch-size", "0"], ["--lr", "-1"],
                                  ["--label-mode", "binary"], ["--train-split", "nope"],
                                  ["--usage-decay", "2"]])
def test_experiment_bad_flags_exit_2(argv, capsys):
  exp = export.load_experiment("omniglot_mann")
  with pytest.raises(SystemExit) as info:
    exp.main(argv)
  assert info.value.code == 2
  assert "usage:" in capsys.readouterr().err
