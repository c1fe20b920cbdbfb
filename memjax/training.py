"""One generic training loop for every memjax model and task.

A model plugs in as a loss function ``loss_fn(params, key) -> (loss, metrics)``
that builds its own batch on device from ``key`` (a task sampler or an episode
sampler) — so there are no host-to-device copies in the loop. :func:`fit` jits
one optax step, derives the key of step ``s`` as ``fold_in(seed_key, s)`` (so a
resumed run draws exactly the batches an uninterrupted one would), checkpoints
with orbax every ``checkpoint_every`` steps (atomic saves, last ``keep`` kept),
writes metrics as JSON lines, and shows a tqdm progress bar.

A non-finite loss or gradient stops training with :class:`NonFiniteError`
naming the step; the parameters of that step are never applied or saved.

Data parallelism: :func:`fit` runs the step under a device mesh with one axis,
``"data"`` (all devices by default; :func:`data_mesh`). Parameters and optimiser
state are replicated; a loss function marks its batch with :func:`shard_batch`
and XLA splits the batch — and the work — over the devices and all-reduces the
gradients. The same code runs on one device (where :func:`shard_batch` is the
identity) or many. Several hosts: call ``jax.distributed.initialize()`` in every
process before training; ``jax.devices()`` then lists every host's devices, every
process draws the same batch from the same key and keeps its own shard.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

LossFn = Callable[[Any, jax.Array], tuple[jax.Array, dict]]


class TrainState(NamedTuple):
  """What a checkpoint holds.

  Attributes:
    step: [] int32 number of optimiser steps taken.
    params: the model parameters.
    opt_state: the optax state.
  """
  step: jax.Array
  params: Any
  opt_state: Any


class NonFiniteError(FloatingPointError):
  """A loss or gradient became NaN/Inf; raised before the update is applied."""


def paper_rmsprop(learning_rate: float = 1e-4, *, decay: float = 0.95, momentum: float = 0.9,
                  clip: float | None = 10.0) -> optax.GradientTransformation:
  """Graves et al. 2014's optimiser: centred RMSProp, decay 0.95, momentum 0.9,
  learning rate 1e-4, every gradient component clipped to ±10."""
  opt = optax.rmsprop(learning_rate, decay=decay, momentum=momentum, centered=True)
  return optax.chain(optax.clip(clip), opt) if clip else opt


def make_optimizer(name: str = "rmsprop", learning_rate: float | None = None, *,
                   clip: float | None = 10.0) -> optax.GradientTransformation:
  """An optimiser by name: ``'rmsprop'`` (the paper's, lr 1e-4 by default) or
  ``'adam'`` (lr 1e-3 by default); gradients clipped component-wise to ±clip."""
  if name == "rmsprop":
    return paper_rmsprop(1e-4 if learning_rate is None else learning_rate, clip=clip)
  if name == "adam":
    opt = optax.adam(1e-3 if learning_rate is None else learning_rate)
    return optax.chain(optax.clip(clip), opt) if clip else opt
  raise ValueError(f"argument `name`: expected 'rmsprop' or 'adam', got {name!r}")


DATA_AXIS = "data"


def data_mesh(devices=None) -> Mesh:
  """A one-axis mesh named ``"data"`` over ``devices`` (default: all devices)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def shard_batch(tree):
  """Splits the leading (batch) axis of every array in ``tree`` over the data axis.

  Call it on a batch inside a loss function. Outside a mesh with a ``"data"``
  axis (e.g. one device, or a plain ``jax.jit``) it returns ``tree`` unchanged.

  Raises:
    ValueError: a batch axis is not divisible by the number of devices.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or DATA_AXIS not in mesh.axis_names:
    return tree
  n = mesh.shape[DATA_AXIS]
  if n == 1:
    return tree
  for leaf in jax.tree.leaves(tree):
    if leaf.ndim == 0 or leaf.shape[0] % n:
      raise ValueError(f"argument `tree`: batch axis of shape {list(leaf.shape)} cannot be split "
                       f"over {n} devices; use a batch size divisible by {n} or train on one device")
  return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, PartitionSpec(DATA_AXIS)), tree)


def init_state(params, optimizer: optax.GradientTransformation) -> TrainState:
  return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))


def make_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, seed_key: jax.Array,
              mesh: Mesh | None = None):
  """Returns ``step(state) -> (new_state, loss, metrics, finite)``, jitted.

  ``finite`` is False when the loss or any gradient is NaN/Inf; the returned
  state is then the input state unchanged. With a ``mesh`` the step runs under
  it (see :func:`shard_batch`) and the state stays replicated.
  """

  def step(state: TrainState):
    key = jax.random.fold_in(seed_key, state.step)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, key)
    finite = jnp.isfinite(loss) & jnp.all(
        jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))

    def update(state):
      updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
      return TrainState(state.step + 1, optax.apply_updates(state.params, updates), opt_state)

    # One conditional rather than a select per state leaf: the same values, and
    # about a second less XLA compile time for the NTM step on a 2-core CPU.
    new = jax.lax.cond(finite, update, lambda state: state, state)
    return new, loss, metrics, finite

  if mesh is None:
    return jax.jit(step)
  replicated = NamedSharding(mesh, PartitionSpec())
  jitted = jax.jit(step, out_shardings=replicated)

  def run(state):
    with jax.set_mesh(mesh):
      return jitted(state)

  return run


def replicate(tree, mesh: Mesh):
  """Places every array of ``tree`` on all devices of ``mesh``."""
  return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


class _Checkpointer:
  """Thin wrapper over orbax's CheckpointManager (atomic saves, keep last N)."""

  def __init__(self, directory: str, keep: int | None):
    import orbax.checkpoint as ocp
    self._ocp = ocp
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(
        os.path.join(self.directory, "checkpoints"),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, state: TrainState):
    step = int(state.step)
    self.manager.save(step, args=self._ocp.args.StandardSave(state), force=True)
    # Fault injection for the crash-recovery tests: die while the (asynchronous)
    # write of this step's checkpoint is still in flight.
    if os.environ.get("MEMJAX_FAULT_KILL_DURING_SAVE") == str(step):
      os.kill(os.getpid(), 9)

  def restore(self, like: TrainState) -> TrainState:
    abstract = jax.tree.map(self._ocp.utils.to_shape_dtype_struct, like)
    step = self.latest_step()
    try:
      restored = self.manager.restore(step, args=self._ocp.args.StandardRestore(abstract))
    except ValueError as e:
      raise ValueError(
          f"checkpoint {step} in {self.directory} does not match the current model and optimiser "
          f"(was it written with another configuration or memjax version?): {str(e)[:500]}") from None
    return TrainState(*restored) if not isinstance(restored, TrainState) else restored

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def load_checkpoint(workdir: str, like: TrainState) -> TrainState:
  """The latest checkpoint :func:`fit` wrote in ``workdir``, restored into the
  structure of ``like`` (e.g. ``init_state(params, optimizer)`` of the same model)."""
  missing = FileNotFoundError(f"no checkpoint in {os.path.join(os.path.abspath(workdir), 'checkpoints')}")
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise missing  # before the manager, which would create the directory
  ckpt = _Checkpointer(workdir, keep=None)  # reads only: deletes nothing
  try:
    if ckpt.latest_step() is None:
      raise missing
    return ckpt.restore(like)
  finally:
    ckpt.close()


def _truncate_metrics(path: str, last_step: int):
  """Keeps the JSON lines with step <= last_step (drops a half-written last line)."""
  if not os.path.exists(path):
    return
  kept = []
  with open(path) as f:
    for line in f:
      try:
        rec = json.loads(line)
      except json.JSONDecodeError:
        continue
      if rec.get("step", 0) <= last_step:
        kept.append(line if line.endswith("\n") else line + "\n")
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.writelines(kept)
  os.replace(tmp, path)


def fit(loss_fn: LossFn, params, optimizer: optax.GradientTransformation, *, num_steps: int,
        seed: int = 0, workdir: str | None = None, checkpoint_every: int = 500, keep: int = 3,
        resume: bool = False, log_every: int = 50, progress: bool = True,
        eval_every: int = 0, eval_fn: Callable[[Any, int], dict] | None = None,
        stop_fn: Callable[[dict], bool] | None = None,
        max_seconds: float | None = None,
        mesh: Mesh | str | None = "auto") -> tuple[TrainState, list[dict]]:
  """Trains ``params`` to minimise ``loss_fn`` for ``num_steps`` steps.

  Args:
    loss_fn: ``(params, key) -> (scalar loss, dict of scalar metrics)``; builds
      its batch from ``key``.
    params: initial parameters (ignored when resuming from a checkpoint).
    optimizer: an optax transformation (see :func:`make_optimizer`).
    num_steps: total steps, counting those done before a resume.
    seed: the step keys are ``fold_in(key(seed), step)``.
    workdir: where checkpoints (``checkpoints/``) and ``metrics.jsonl`` go;
      None trains in memory only.
    checkpoint_every: save every this many steps (and at the end).
    keep: number of checkpoints kept.
    resume: continue from the latest checkpoint in ``workdir`` if there is one.
    log_every: write a metrics line every this many steps.
    progress: show a tqdm bar.
    eval_every / eval_fn: every ``eval_every`` steps call ``eval_fn(params,
      step) -> dict``; its values are added to that step's metrics line.
    stop_fn: called with each eval record; returning True ends training early
      (after a checkpoint).
    max_seconds: stop (after a checkpoint) once this much training wall time
      has passed (compile time included).
    mesh: ``"auto"`` — all devices when there are several, else none; a
      :class:`jax.sharding.Mesh` with a ``"data"`` axis; or None (no mesh).

  Returns:
    ``(final TrainState, list of metric records)``.

  Raises:
    NonFiniteError: a loss or gradient was NaN/Inf; the last checkpoint is
      the last good state.
  """
  from tqdm.auto import tqdm

  if num_steps < 0:
    raise ValueError(f"argument `num_steps`: expected >= 0, got {num_steps}")
  seed_key = jax.random.key(seed)
  state = init_state(params, optimizer)
  ckpt = _Checkpointer(workdir, keep) if workdir else None
  metrics_path = os.path.join(workdir, "metrics.jsonl") if workdir else None
  if workdir:
    os.makedirs(workdir, exist_ok=True)
  if ckpt is not None and resume and ckpt.latest_step() is not None:
    state = ckpt.restore(state)
    _truncate_metrics(metrics_path, int(state.step))
  elif metrics_path and os.path.exists(metrics_path):
    os.remove(metrics_path)

  if isinstance(mesh, str):
    if mesh != "auto":
      raise ValueError(f"argument `mesh`: expected 'auto', a Mesh or None, got {mesh!r}")
    mesh = data_mesh() if jax.device_count() > 1 else None
  if mesh is not None:
    state = replicate(state, mesh)
  step_fn = make_step(loss_fn, optimizer, seed_key, mesh)
  history: list[dict] = []
  start = int(state.step)
  t0 = time.perf_counter()
  bar = tqdm(total=num_steps, initial=start, disable=not progress, dynamic_ncols=True)
  stop = False
  try:
    for s in range(start, num_steps):
      new_state, loss, metrics, finite = step_fn(state)
      if not bool(finite):
        raise NonFiniteError(
            f"non-finite loss or gradient at step {s} (loss={float(loss)}); the update was not "
            "applied" + (f"; the last good checkpoint is in {ckpt.directory}" if ckpt else ""))
      state = new_state
      done = s + 1
      record = None
      if done % log_every == 0 or done == num_steps:
        record = {"step": done, "loss": float(loss), **{k: float(v) for k, v in metrics.items()},
                  "wall_time": time.perf_counter() - t0}
      if eval_fn is not None and eval_every and (done % eval_every == 0 or done == num_steps):
        record = record or {"step": done, "loss": float(loss),
                            "wall_time": time.perf_counter() - t0}
        record.update({k: float(v) for k, v in eval_fn(state.params, done).items()})
        record["wall_time"] = time.perf_counter() - t0
        if stop_fn is not None and stop_fn(record):
          stop = True
      if max_seconds is not None and time.perf_counter() - t0 >= max_seconds:
        stop = True
      if record is not None:
        history.append(record)
        if metrics_path:
          with open(metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        bar.set_postfix(loss=f"{record['loss']:.4f}")
      bar.update(1)
      if ckpt is not None and (done % checkpoint_every == 0 or done == num_steps or stop):
        ckpt.save(state)
      if stop:
        break
  finally:
    bar.close()
    if ckpt is not None:
      ckpt.close()
  return state, history
