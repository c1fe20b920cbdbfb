"""Data parallelism: an 8-device step equals a 1-device step on the same batch.

Runs in a subprocess because the fake host devices must be configured before
JAX starts (XLA_FLAGS=--xla_force_host_platform_device_count=8).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np, flax.linen as nn
    from memjax import NTMCell, tasks, training
    assert jax.device_count() == 8, jax.devices()
    model = nn.RNN(NTMCell(features=4, memory_size=16, word_size=6, controller_features=16))
    params = model.init(jax.random.key(0), jnp.zeros((1, tasks.copy_length(5), 5)))

    def loss_fn(p, key):
      batch = training.shard_batch(tasks.copy(key, 16, num_bits=4, max_length=5))
      return tasks.sequence_loss(model.apply(p, batch.inputs), batch)

    opt = training.make_optimizer("adam", 1e-2)
    results = {}
    for name, mesh in [("one", None), ("eight", training.data_mesh())]:
      state, hist = training.fit(loss_fn, params, opt, num_steps=5, seed=1, progress=False,
                                 log_every=1, mesh=mesh)
      results[name] = (state, hist)
    (s1, h1), (s8, h8) = results["one"], results["eight"]
    leaf = jax.tree.leaves(s8.params)[0]
    assert len(leaf.sharding.device_set) == 8, leaf.sharding
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s8.params)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-6)
    np.testing.assert_allclose([r["loss"] for r in h1], [r["loss"] for r in h8], rtol=1e-5)
    # The batch really was split: inside the mesh the batch is sharded over 8 devices.
    with jax.set_mesh(training.data_mesh()):
      b = jax.jit(lambda k: training.shard_batch(tasks.copy(k, 16, max_length=5)))(jax.random.key(0))
    assert b.inputs.sharding.shard_shape(b.inputs.shape)[0] == 2
    try:
      with jax.set_mesh(training.data_mesh()):
        jax.jit(lambda k: training.shard_batch(tasks.copy(k, 12, max_length=5)))(jax.random.key(0))
    except ValueError as e:
      assert "divisible by 8" in str(e)
    else:
      raise AssertionError("batch 12 over 8 devices should raise")
    # fit's mesh="auto": all 8 devices when they divide the batch, else one.
    assert training.choose_mesh("auto", batch_size=16).shape[training.DATA_AXIS] == 8
    assert training.choose_mesh("auto", batch_size=12) is None
    print("OK")
""")


def test_eight_device_step_equals_one_device_step():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr


MANN_SCRIPT = textwrap.dedent("""
    import re
    import jax, jax.numpy as jnp, numpy as np, flax.linen as nn
    from memjax import MANNCell, mann, training
    assert jax.device_count() == 8, jax.devices()
    cell = MANNCell(features=5, memory_size=16, word_size=8, num_read_heads=2, controller_features=16)
    params = nn.RNN(cell).init(jax.random.key(0), jnp.zeros((1, 12, 30)))

    def loss_fn(p, key):
      kx, ky = jax.random.split(key)
      x, y = training.shard_batch((jax.random.uniform(kx, (16, 12, 30)), jax.random.randint(ky, (16, 12), 0, 5)))
      return mann.mann_loss(mann.unroll(cell, p, x), y), {}

    opt = training.make_optimizer("adam", 1e-2)
    s1, h1 = training.fit(loss_fn, params, opt, num_steps=3, seed=1, progress=False, log_every=1, mesh=None)
    mesh = training.data_mesh()
    state = training.replicate(training.init_state(params, opt), mesh)
    for shard_map in (False, True):
      s8, h8 = training.fit(loss_fn, params, opt, num_steps=3, seed=1, progress=False, log_every=1,
                            mesh=mesh, shard_map=shard_map)
      for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s8.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-6)
      np.testing.assert_allclose([r["loss"] for r in h1], [r["loss"] for r in h8], rtol=1e-5)
      # Either way the whole sequence is split over the devices: the only collectives are
      # the gradients' (and loss's) all-reduces after the loop — no per-step all-gather of
      # the batch (as lax.top_k's least-used slots caused: XLA does not partition it).
      hlo = training.make_step(loss_fn, opt, jax.random.key(1), mesh, shard_map=shard_map).lower(
          state).compile().as_text()
      ops = re.findall(r"\\s(all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)(?:-start)?\\(", hlo)
      assert "all-reduce" in ops and set(ops) == {"all-reduce"}, (shard_map, sorted(set(ops)))
      assert re.search(r"f32\\[2,16,8\\]", hlo), "the memory was not split 8 ways (2 of 16 episodes per device)"
    # shard_map slices the batch per device: device i keeps examples 2i, 2i+1.
    def probe(p, key):
      x = training.shard_batch(jnp.arange(16.0))
      return jnp.sum(x * jax.lax.axis_index("data")) / 8 + 0.0 * jnp.sum(p["params"]["cell"]["gate"]["bias"]), {}
    _, loss, _, _ = training.make_step(probe, opt, jax.random.key(1), mesh, shard_map=True)(state)
    assert float(loss) == sum(i * (4 * i + 1) for i in range(8)) / 64, float(loss)
    try:
      training.make_step(loss_fn, opt, jax.random.key(1), jax.sharding.Mesh(np.asarray(jax.devices()), ("x",)),
                         shard_map=True)
    except ValueError as e:
      assert "'data' axis" in str(e), e
    else:
      raise AssertionError("shard_map without a 'data' axis should raise")
    print("OK")
""")


def test_mann_step_splits_over_devices_without_per_step_collectives():
  """The MANN step on 8 devices, XLA-partitioned and under shard_map: equal to one device,
  split along the batch with no collective inside the time loop."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", MANN_SCRIPT], env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr
