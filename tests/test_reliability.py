"""Faults and long runs: SIGKILL + resume is bitwise identical, NaN debugging, 10k steps, CLI errors."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from memjax import NTMCell, tasks, training

ROOT = Path(__file__).resolve().parents[1]
COPY = [sys.executable, str(ROOT / "experiments" / "copy_task.py")]
TINY = ["--memory-size", "16", "--word-size", "6", "--controller-features", "16", "--num-bits", "4",
        "--max-length", "4", "--batch-size", "4", "--optimizer", "adam", "--steps", "80",
        "--checkpoint-every", "4", "--eval-every", "1000", "--eval-sequences", "8",
        "--generalisation-lengths", "4", "--no-progress", "--no-plots", "--seed", "5"]


# Runs copy_task.py with the checkpointer monkeypatched to die (SIGKILL) while the
# asynchronous write of step KILL_AT's checkpoint is still in flight.
KILLED_DURING_SAVE = textwrap.dedent("""
    import os, runpy, sys
    from memjax import training
    save = training._Checkpointer.save
    def save_then_die(self, state):
      save(self, state)
      if int(state.step) == int(os.environ["KILL_AT"]):
        os.kill(os.getpid(), 9)
    training._Checkpointer.save = save_then_die
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
""")


def _cached_env(tmp_path: Path) -> dict:
  """The subprocesses' environment: CPU, and one persistent compilation cache for all of them
  (every executable cached, however fast to compile: a run then skips compiling what an earlier
  one compiled; the executables are the ones XLA compiles, so results are unchanged)."""
  return dict(os.environ, JAX_PLATFORMS="cpu", MEMJAX_COMPILATION_CACHE=str(tmp_path / "xla_cache"),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")


def _latest_checkpoint(workdir: Path) -> int:
  ckpts = workdir / "checkpoints"
  steps = [int(p.name) for p in ckpts.iterdir() if p.name.isdigit()] if ckpts.exists() else []
  return max(steps, default=-1)


def _final_params(workdir: Path):
  mgr = ocp.CheckpointManager(workdir / "checkpoints")
  try:
    step = mgr.latest_step()
    return step, mgr.restore(step, args=ocp.args.StandardRestore())
  finally:
    mgr.close()


def _metrics(workdir: Path):
  with open(workdir / "metrics.jsonl") as f:
    records = [json.loads(line) for line in f]
  for r in records:
    r.pop("wall_time")
  return records


@pytest.mark.slow
def test_sigkill_and_resume_equals_uninterrupted_run(tmp_path):
  env = _cached_env(tmp_path)
  ref = tmp_path / "reference"
  subprocess.run(COPY + TINY + ["--workdir", str(ref)], env=env, check=True, capture_output=True,
                 timeout=600)

  run = tmp_path / "killed"
  rng = random.Random(0)
  kills = 0
  # 1. Killed while the checkpoint of step 8 is being written (fault injection).
  proc = subprocess.run([sys.executable, "-c", KILLED_DURING_SAVE] + COPY[1:] + TINY + ["--workdir", str(run)],
                        capture_output=True, timeout=600, env=dict(env, KILL_AT="8"))
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
  kills += 1
  # 2-4. Killed at random moments after random numbers of checkpoints.
  for _ in range(3):
    target = _latest_checkpoint(run) + 4 * rng.randint(1, 4)
    p = subprocess.Popen(COPY + TINY + ["--workdir", str(run), "--resume"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while _latest_checkpoint(run) < target and p.poll() is None and time.time() < deadline:
      time.sleep(0.01)
    time.sleep(rng.uniform(0.0, 0.2))
    if p.poll() is None:
      p.send_signal(signal.SIGKILL)
      kills += 1
    p.wait()
  assert kills >= 4
  proc = subprocess.run(COPY + TINY + ["--workdir", str(run), "--resume"], env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]

  step_ref, params_ref = _final_params(ref)
  step_run, params_run = _final_params(run)
  assert step_ref == step_run == 80
  for a, b in zip(jax.tree.leaves(params_ref), jax.tree.leaves(params_run)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # bitwise
  assert _metrics(ref) == _metrics(run)
  # Only finished checkpoints remain, and only the last `keep` of them.
  names = sorted(p.name for p in (run / "checkpoints").iterdir())
  assert all(n.isdigit() for n in names) and len(names) <= 3, names


def test_same_seed_same_result_different_seed_differs():
  model = nn.RNN(NTMCell(features=4, memory_size=16, word_size=6, controller_features=16))

  def run(seed):
    params = model.init(jax.random.key(seed), jnp.zeros((1, tasks.copy_length(4), 5)))

    def loss_fn(p, key):
      batch = tasks.copy(key, 4, num_bits=4, max_length=4)
      return tasks.sequence_loss(model.apply(p, batch.inputs), batch)

    state, hist = training.fit(loss_fn, params, training.make_optimizer("adam", 1e-2), num_steps=6,
                               seed=seed, progress=False, log_every=1)
    return state.params, [r["loss"] for r in hist]

  (pa, la), (pb, lb), (pc, lc) = run(5), run(5), run(6)
  assert la == lb and la != lc
  for a, b in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
    np.testing.assert_array_equal(a, b)
  assert not all(np.array_equal(a, c) for a, c in zip(jax.tree.leaves(pa), jax.tree.leaves(pc)))


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "0"], "expected a positive integer"),
    (["--task", "sort"], "invalid choice"),
    (["--lr", "nan"], "expected a positive number"),
    (["--generalisation-lengths", "20,x"], "comma-separated"),
    (["--memory-size", "2"], "memory-size"),
])
def test_cli_rejects_bad_flags_with_usage_and_exit_2(flags, message):
  proc = subprocess.run(COPY + flags, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert "usage:" in proc.stderr and message in proc.stderr
  assert "Traceback" not in proc.stderr


def test_ntm_training_under_jax_debug_nans():
  cell = NTMCell(features=4, memory_size=16, word_size=6, controller_features=16)
  model = nn.RNN(cell)
  params = model.init(jax.random.key(0), jnp.zeros((1, tasks.copy_length(4), 5)))

  def loss_fn(p, key):
    batch = tasks.copy(key, 8, num_bits=4, max_length=4)
    return tasks.sequence_loss(model.apply(p, batch.inputs), batch)

  with jax.debug_nans(True):
    state, hist = training.fit(loss_fn, params, training.make_optimizer("adam", 1e-2), num_steps=20,
                               progress=False, log_every=5)
  assert int(state.step) == 20 and np.isfinite(hist[-1]["loss"])


def test_mann_training_under_jax_debug_nans():
  """A short MANN (LRUA) run on sampled episodes, every op checked for NaN."""
  from memjax.data import sample_mann_episodes
  from memjax.mann import MANNCell, mann_loss
  images = jax.random.bernoulli(jax.random.key(1), 0.2, (8, 6, 8, 8)).astype(jnp.float32)
  kw = dict(batch_size=4, num_classes=3, samples_per_class=3, label_mode="string")
  model = nn.RNN(MANNCell(features=25, memory_size=16, word_size=8, num_read_heads=2,
                          controller_features=16))
  example = sample_mann_episodes(jax.random.key(0), images, **kw)
  params = model.init(jax.random.key(0), example.inputs)

  def loss_fn(p, key):
    ep = sample_mann_episodes(key, images, **kw)
    return mann_loss(model.apply(p, ep.inputs), ep.targets, "string"), {}

  with jax.debug_nans(True):
    state, hist = training.fit(loss_fn, params, training.make_optimizer("rmsprop", 1e-3),
                               num_steps=20, progress=False, log_every=5)
  assert int(state.step) == 20 and np.isfinite(hist[-1]["loss"])


def test_metanet_training_under_jax_debug_nans():
  """A short run of the full MetaNet (task- and example-level fast weights on every
  layer, second order: NaNs anywhere in the double backward pass are caught too)."""
  from memjax.data import sample_few_shot
  from memjax.metanet import MetaNet
  images = jax.random.bernoulli(jax.random.key(1), 0.2, (8, 4, 8, 8)).astype(jnp.float32)
  kw = dict(batch_size=2, num_classes=3, num_support=1, num_query=2)
  model = MetaNet(num_classes=3, image_shape=(8, 8, 1), filters=4, num_blocks=2, hidden=8,
                  second_order=True)
  ep = sample_few_shot(jax.random.key(0), images, **kw)
  params = model.init(jax.random.key(0), ep.support[0], ep.support_labels[0], ep.query[0])

  def loss_fn(p, key):
    ep = sample_few_shot(key, images, **kw)
    logits = jax.vmap(model.apply, in_axes=(None, 0, 0, 0))(p, ep.support, ep.support_labels,
                                                            ep.query)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits),
                                         ep.query_labels[..., None], -1)), {}

  with jax.debug_nans(True):
    state, hist = training.fit(loss_fn, params, training.make_optimizer("adam", 1e-3),
                               num_steps=10, progress=False, log_every=5)
  assert int(state.step) == 10 and np.isfinite(hist[-1]["loss"])


def test_ntm_ten_thousand_steps_stay_finite():
  cell = NTMCell(features=4, memory_size=32, word_size=8, controller_features=16)
  model = nn.RNN(cell)
  x = jax.random.bernoulli(jax.random.key(1), 0.5, (10_000, 5)).astype(jnp.float32)
  params = model.init(jax.random.key(0), x[:2])
  # Large weights push the heads to extreme β, γ, gates and erase/add values.
  params = jax.tree.map(lambda p: 5.0 * p, params)
  logits, states = jax.jit(lambda p, x: __import__("memjax").trajectory(cell, p, x))(params, x)
  assert np.all(np.isfinite(logits))
  assert np.all(np.isfinite(states.memory[-1]))
  np.testing.assert_allclose(states.read_weights[::997].sum(-1), 1.0, rtol=1e-4)
