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

An experiment script wraps :func:`fit` in a :class:`Run`: the run folder with
its ``config.json`` (checked against the saved one on ``--resume``), graceful
Ctrl-C / SIGTERM (checkpoint, partial ``results.json``, exit code 130/143),
evaluation timing, and a closing line saying where the results are. Test data
comes from :func:`eval_key`; :func:`evaluate` turns a metrics function's values
into plain floats.

Data parallelism: :func:`fit` runs the step under a device mesh with one axis,
``"data"`` (all devices by default; :func:`data_mesh`). Parameters and optimiser
state are replicated; a loss function marks its batch with :func:`shard_batch`
and XLA splits the batch — and the work — over the devices and all-reduces the
gradients. With ``shard_map=True`` every device instead runs the loss function
itself (``jax.shard_map``) on its equal slice of the batch (:func:`shard_batch`
slices it) and the loss, metrics and gradients are averaged over the devices:
exact when the loss and metrics are means over equally weighted examples, and
faster where XLA's partitioned program is slow (the MANN on host CPU devices).
The same code runs on one device (where :func:`shard_batch` is the identity) or
many. Several hosts: call ``jax.distributed.initialize()`` in every
process before training; ``jax.devices()`` then lists every host's devices, every
process draws the same batch from the same key and keeps its own shard.
"""

from __future__ import annotations

import bisect
import contextvars
import json
import os
import signal
import sys
import time
from typing import Any, Callable, Mapping, NamedTuple, Sequence

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


CLIP_MODES = ("component", "global_norm")


def make_optimizer(name: str = "rmsprop", learning_rate: float | None = None, *,
                   clip: float | None = 10.0, clip_mode: str = "component") -> optax.GradientTransformation:
  """An optimiser by name: ``'rmsprop'`` (the paper's, lr 1e-4 by default) or
  ``'adam'`` (lr 1e-3 by default), gradients clipped first.

  ``clip_mode='component'`` clips every gradient component to ±clip;
  ``'global_norm'`` (Adam only) scales the whole gradient down to L2 norm
  ``clip`` where it is longer (``optax.clip_by_global_norm``, as Chainer's
  ``GradientClipping`` hook).
  """
  if clip_mode not in CLIP_MODES:
    raise ValueError(f"argument `clip_mode`: expected one of {CLIP_MODES}, got {clip_mode!r}")
  if name == "rmsprop":
    if clip_mode != "component":
      raise ValueError("argument `clip_mode`: the paper's RMSProp clips components; use 'component'")
    return paper_rmsprop(1e-4 if learning_rate is None else learning_rate, clip=clip)
  if name == "adam":
    opt = optax.adam(1e-3 if learning_rate is None else learning_rate)
    if not clip:
      return opt
    clipper = optax.clip(clip) if clip_mode == "component" else optax.clip_by_global_norm(clip)
    return optax.chain(clipper, opt)
  raise ValueError(f"argument `name`: expected 'rmsprop' or 'adam', got {name!r}")


class ParamsEmaState(NamedTuple):
  """The state of :func:`params_ema`.

  Attributes:
    ema_count: [] int32 updates averaged so far.
    ema_params: the running average of the parameters (the params' tree and dtypes).
  """
  ema_count: jax.Array
  ema_params: Any


def params_ema(decay: float) -> optax.GradientTransformation:
  """An exponential moving average of the parameters (Polyak averaging), kept in
  the optimiser state; the updates pass through unchanged.

  Chain it last (:func:`with_params_ema`), so that it sees the final updates:
  after update n (counting from 0) with new parameters θ_{n+1},

    d_n = min(decay, (1 + n) / (10 + n)),    θ̄ ← d_n · θ̄ + (1 − d_n) · θ_{n+1},

  from θ̄ = θ at :meth:`init` (the warm-up d_n of TensorFlow's
  ``ExponentialMovingAverage(num_updates=...)``, so the average forgets its
  start within the first updates rather than over ~1 / (1 − decay) of them).
  The raw parameters train as without it; :func:`averaged_params` reads θ̄.

  Args:
    decay: in (0, 1), e.g. 0.999 (an average over the last ~1,000 updates).

  Raises:
    ValueError: ``decay`` outside (0, 1); ``update`` called without ``params``.
  """
  if not 0.0 < decay < 1.0:
    raise ValueError(f"argument `decay`: expected a float in (0, 1), got {decay!r}")

  def init(params):
    return ParamsEmaState(jnp.zeros((), jnp.int32), jax.tree.map(jnp.asarray, params))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("params_ema: `update` needs `params` (optax's update(updates, state, params))")
    new = optax.apply_updates(params, updates)
    n = state.ema_count.astype(jnp.float32)
    d = jnp.minimum(jnp.float32(decay), (1.0 + n) / (10.0 + n))
    ema = jax.tree.map(lambda e, p: (d * e + (1.0 - d) * p).astype(e.dtype), state.ema_params, new)
    return updates, ParamsEmaState(state.ema_count + 1, ema)

  return optax.GradientTransformation(init, update)


def with_params_ema(optimizer: optax.GradientTransformation,
                    decay: float | None) -> optax.GradientTransformation:
  """``optimizer`` followed by :func:`params_ema` (``decay`` None or 0: ``optimizer`` itself)."""
  return optax.chain(optimizer, params_ema(decay)) if decay else optimizer


def _is_ema(node) -> bool:
  return isinstance(node, ParamsEmaState)


def averaged_params(state: TrainState):
  """The parameters to evaluate: the :func:`params_ema` average where the
  optimiser keeps one, else ``state.params``."""
  found = [n for n in jax.tree.leaves(state.opt_state, is_leaf=_is_ema) if _is_ema(n)]
  return found[0].ema_params if found else state.params


DATA_AXIS = "data"
_DATA_SHARDS: contextvars.ContextVar[int | None] = contextvars.ContextVar("memjax_data_shards", default=None)
"""Devices on the data axis while :func:`make_step` traces a loss function under ``shard_map``."""


def step_decay(learning_rate: float, drop_steps: int, factor: float,
               schedule: Sequence[Sequence[float]] | None = None) -> float | optax.Schedule:
  """``learning_rate``, times ``factor`` from step ``drop_steps`` on (0: constant).

  With ``schedule`` ``[[step, lr], ...]`` (increasing steps, ``drop_steps`` 0)
  the rate is ``learning_rate`` before the first step and each ``lr`` from its
  step on (update ``step + 1`` is the first at ``lr``): the schedule a run
  follows when ``--lr`` is changed on ``--resume`` at those steps
  (:func:`lr_history` records them in the same form).
  """
  if schedule:
    if drop_steps:
      raise ValueError("arguments `drop_steps` and `schedule`: give one of them, not both")
    steps = [int(s) for s, _ in schedule]
    if steps != sorted(set(steps)) or steps[0] < 1:
      raise ValueError(f"argument `schedule`: expected increasing positive steps, got {steps}")
    boundaries = jnp.asarray(steps, jnp.int32)
    rates = jnp.asarray([learning_rate, *(float(r) for _, r in schedule)], jnp.float32)
    return lambda count: rates[jnp.searchsorted(boundaries, count, side="right")]
  if not drop_steps:
    return learning_rate
  return optax.piecewise_constant_schedule(learning_rate, {drop_steps: factor})


def data_mesh(devices=None) -> Mesh:
  """A one-axis mesh named ``"data"`` over ``devices`` (default: all devices)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def shard_batch(tree):
  """Splits the leading (batch) axis of every array in ``tree`` over the data axis.

  Call it on a batch inside a loss function. Under :func:`fit`'s mesh it marks
  the batch for XLA to split over the devices; under ``make_step(...,
  shard_map=True)``, where every device draws the same batch from the step's key,
  it returns this device's slice (device i of n: examples ``i·B/n … (i+1)·B/n − 1``).
  Outside a mesh with a ``"data"`` axis (e.g. one device, or a plain
  ``jax.jit``) it returns ``tree`` unchanged.

  Raises:
    ValueError: a batch axis is not divisible by the number of devices.
  """
  manual = _DATA_SHARDS.get()  # inside make_step's shard_map: this device's slice
  if manual is None:
    mesh = jax.sharding.get_abstract_mesh()
    n = 1 if mesh.empty or DATA_AXIS not in mesh.axis_names else mesh.shape[DATA_AXIS]
  else:
    n = manual
  if n == 1:
    return tree
  for leaf in jax.tree.leaves(tree):
    if jnp.ndim(leaf) == 0 or jnp.shape(leaf)[0] % n:
      raise ValueError(f"argument `tree`: batch axis of shape {list(jnp.shape(leaf))} cannot be split "
                       f"over {n} devices; use a batch size divisible by {n} or train on one device")
  if manual is None:
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, PartitionSpec(DATA_AXIS)), tree)
  i = jax.lax.axis_index(DATA_AXIS)
  return jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, i * (x.shape[0] // n), x.shape[0] // n), tree)


def init_state(params, optimizer: optax.GradientTransformation) -> TrainState:
  return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))


def _checked(loss_fn: LossFn) -> LossFn:
  """``loss_fn`` with its return value checked (at trace time) against the contract."""

  def checked(params, key):
    out = loss_fn(params, key)
    if not (isinstance(out, (tuple, list)) and len(out) == 2 and isinstance(out[1], Mapping)):
      got = (f"a {type(out).__name__} of length {len(out)}" if isinstance(out, (tuple, list))
             else f"{type(out).__name__} {getattr(out, 'shape', '')}".strip())
      raise TypeError(
          "argument `loss_fn`: expected a function (params, key) -> (loss, metrics) returning a "
          f"scalar loss and a dict of scalar metrics, got {got}; return `loss, {{}}` when there "
          "are no metrics")
    loss, metrics = out
    if jnp.shape(loss) != ():
      raise TypeError(f"argument `loss_fn`: expected a scalar loss (shape []), got shape "
                      f"{list(jnp.shape(loss))}")
    return loss, dict(metrics)

  return checked


def _value_and_grad(loss_fn: LossFn, shard_map_mesh: Mesh | None = None):
  """``(params, key) -> ((loss, metrics), grads)`` of ``loss_fn`` (checked); with a
  mesh, under ``jax.shard_map``: every device runs ``loss_fn`` on its slice of the
  batch (:func:`shard_batch`) and the three are averaged over the data axis."""
  local = jax.value_and_grad(_checked(loss_fn), has_aux=True)
  if shard_map_mesh is None:
    return local
  n = shard_map_mesh.shape[DATA_AXIS]

  def per_device(params, key):
    token = _DATA_SHARDS.set(n)  # read by shard_batch while loss_fn is traced
    try:
      out = local(params, key)
    finally:
      _DATA_SHARDS.reset(token)
    return jax.lax.pmean(out, DATA_AXIS)

  return jax.shard_map(per_device, mesh=shard_map_mesh, in_specs=(PartitionSpec(), PartitionSpec()),
                       out_specs=PartitionSpec(), axis_names={DATA_AXIS}, check_vma=False)


def make_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, seed_key: jax.Array,
              mesh: Mesh | None = None, *, shard_map: bool = False):
  """Returns ``step(state) -> (new_state, loss, metrics, finite)``, jitted.

  ``finite`` is False when the loss or any gradient is NaN/Inf; the returned
  state is then the input state unchanged. With a ``mesh`` the step runs under
  it and the state stays replicated: XLA splits the batch that ``loss_fn`` marks
  with :func:`shard_batch`, or, with ``shard_map=True``, every device runs
  ``loss_fn`` with the step's key under ``jax.shard_map``, keeps its equal slice
  of the batch (:func:`shard_batch`), and the loss, metrics and gradients are
  averaged over the devices — the whole batch's values when the loss and metrics
  are means over equally weighted examples (a masked mean whose mask differs
  between the slices is not: use the default there). ``step.lower(state)``
  lowers it ahead of time either way.

  ``shard_map=True`` is there for speed: on 2 host CPU devices XLA's partitioned
  MANN train step ran at 1.08–1.17× the pre-speed-work step where the
  ``shard_map`` one ran at 1.48–1.63× (``python -m benchmarks.mann_step --variants
  previous,current,data_parallel,data_parallel_xla``; 2-core Intel Xeon, 2026-12-07).

  Raises:
    ValueError: ``shard_map`` with a mesh that has no ``"data"`` axis.
  """
  if mesh is not None and shard_map and DATA_AXIS not in mesh.axis_names:
    raise ValueError(f"argument `mesh`: expected a mesh with a {DATA_AXIS!r} axis for shard_map, got "
                     f"axes {tuple(mesh.axis_names)}")
  value_and_grad = _value_and_grad(loss_fn, mesh if shard_map else None)

  def step(state: TrainState):
    key = jax.random.fold_in(seed_key, state.step)
    (loss, metrics), grads = value_and_grad(state.params, key)
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

  def lower(state):
    with jax.set_mesh(mesh):
      return jitted.lower(state)

  run.lower = lower  # ahead-of-time compilation, as a jitted function's: step.lower(state).compile()
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
    self.manager = ocp.CheckpointManager(  # the handler reads a checkpoint's tree without a target
        os.path.join(self.directory, "checkpoints"), item_handlers=ocp.StandardCheckpointHandler(),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, state: TrainState):
    step = int(state.step)
    self.manager.save(step, args=self._ocp.args.StandardSave(state), force=True)

  def restore(self, like: TrainState) -> TrainState:
    abstract = jax.tree.map(self._ocp.utils.to_shape_dtype_struct, like)
    step = self.latest_step()
    try:
      saved = getattr(self.manager.item_metadata(step), "tree", None)
      if saved is not None and _leaf_paths(saved) != _leaf_paths(like):
        # e.g. a learning-rate schedule given or dropped on resume: its step count differs
        restored = _with_schedule_counts(self.manager.restore(step), like, step)
      else:
        restored = self.manager.restore(step, args=self._ocp.args.StandardRestore(abstract))
    except ValueError as e:
      raise CheckpointMismatchError(
          f"checkpoint {step} in {self.directory} does not match the current model and optimiser "
          f"(was it written with another configuration or memjax version?): {str(e)[:500]}") from None
    return TrainState(*restored) if not isinstance(restored, TrainState) else restored

  def restore_saved(self):
    """The latest checkpoint as saved (dicts, lists, arrays), typed by its own metadata."""
    step = self.latest_step()
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype),
                            self.manager.item_metadata(step).tree)
    return self.manager.restore(step, args=self._ocp.args.StandardRestore(abstract))

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def _key(k) -> Any:
  """A pytree path entry's key: dict key, attribute name or sequence index."""
  return getattr(k, "key", getattr(k, "name", getattr(k, "idx", None)))


def path_name(path) -> str:
  """A pytree path as the ``/``-joined keys :func:`warm_start` reports (``params/base/conv1``)."""
  return "/".join(str(_key(k)) for k in path)


def _lookup(tree, keys: tuple):
  """``tree[k1][k2]...`` for the path ``keys``, or None where it has no such entry."""
  for k in keys:
    try:
      tree = tree[k]
    except (KeyError, IndexError, TypeError):
      return None
  return tree


def _leaf_paths(tree) -> set[tuple]:
  """The leaves' paths of ``tree`` as key tuples (a namedtuple's field and a dict's key alike)."""
  return {tuple(map(_key, path)) for path, _ in jax.tree_util.tree_leaves_with_path(tree)}


def _with_schedule_counts(saved, like: TrainState, step: int) -> TrainState:
  """``like`` filled from ``saved`` (a checkpoint restored without a target:
  dicts, lists, None for empty states), where the two differ only in learning-rate
  schedule states or a parameter average: an :class:`optax.ScaleByScheduleState`
  the checkpoint lacks (the run had a constant rate) counts ``step`` updates, a
  schedule count the checkpoint has and ``like`` does not (the rate is constant
  now) is dropped; a :class:`ParamsEmaState` the checkpoint lacks (averaging
  switched on at the resume) starts from the checkpoint's parameters, one it has
  and ``like`` does not (switched off) is dropped.

  Raises:
    ValueError: any other difference.
  """
  saved = _ema_switched(saved, like)
  is_sched = lambda x: isinstance(x, optax.ScaleByScheduleState)  # noqa: E731
  sched_paths = [tuple(map(_key, path)) for path, node in
                 jax.tree_util.tree_leaves_with_path(like, is_leaf=is_sched) if is_sched(node)]
  ema_paths = [tuple(map(_key, path)) for path, node in
               jax.tree_util.tree_leaves_with_path(like, is_leaf=_is_ema) if _is_ema(node)]
  used = set()

  def fill(path, leaf):
    path = tuple(map(_key, path))
    value = _lookup(saved, path)
    shape, dtype = tuple(leaf.shape), np.dtype(leaf.dtype)  # an array or a ShapeDtypeStruct
    if value is None:
      if any(path[:len(p)] == p for p in sched_paths):
        return jnp.asarray(step, dtype)
      for p in ema_paths:  # an average started on resume: from the checkpoint's parameters
        if path[:len(p) + 1] == (*p, "ema_count"):
          return jnp.zeros(shape, dtype)
        if path[:len(p) + 1] == (*p, "ema_params"):
          path, value = ("params", *path[len(p) + 1:]), _lookup(saved, ("params", *path[len(p) + 1:]))
          break
      if value is None:
        raise ValueError(f"checkpoint lacks {path}")
    if tuple(np.shape(value)) != shape or np.dtype(value.dtype) != dtype:
      raise ValueError(f"checkpoint's {path} is {np.shape(value)} {value.dtype}, expected {shape} {dtype}")
    used.add(path)
    return jnp.asarray(value)

  state = jax.tree_util.tree_map_with_path(fill, like)
  extra = [p for p in _leaf_paths(saved) if p not in used and p[-1] != "count"]
  if extra:
    raise ValueError(f"checkpoint has {extra[:3]} that the current state lacks")
  return state


def _has_top_ema(opt_state) -> bool:
  """Whether an optimiser state (typed, or as saved: lists and dicts) is
  :func:`with_params_ema`'s ``(inner state, average)``."""
  if not isinstance(opt_state, (list, tuple)) or len(opt_state) != 2:
    return False
  last = opt_state[1]
  return _is_ema(last) or (isinstance(last, Mapping) and {"ema_count", "ema_params"} <= set(last))


def _ema_switched(saved, like: TrainState):
  """``saved`` with its optimiser state in ``like``'s form where a resume switches
  the parameter average on (the inner state moves under ``opt_state[0]``; the
  average itself is then missing, filled from the parameters) or off (the
  average is dropped)."""
  saved_opt = _lookup(saved, ("opt_state",))
  on, was = _has_top_ema(like.opt_state), _has_top_ema(saved_opt)
  if on == was:
    return saved
  if on:
    return {**saved, "opt_state": [saved_opt, {}]}
  return {**saved, "opt_state": saved_opt[0]}


def _read_latest(workdir: str, read: Callable[[_Checkpointer], Any]):
  """``read(checkpointer)`` on the latest checkpoint in ``workdir`` (reads only: deletes nothing)."""
  missing = FileNotFoundError(f"no checkpoint in {os.path.join(os.path.abspath(workdir), 'checkpoints')}")
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise missing  # before the manager, which would create the directory
  ckpt = _Checkpointer(workdir, keep=None)
  try:
    if ckpt.latest_step() is None:
      raise missing
    return read(ckpt)
  finally:
    ckpt.close()


def load_checkpoint(workdir: str, like: TrainState) -> TrainState:
  """The latest checkpoint :func:`fit` wrote in ``workdir``, restored into the
  structure of ``like`` (e.g. ``init_state(params, optimizer)`` of the same model)."""
  return _read_latest(workdir, lambda ckpt: ckpt.restore(like))


def load_checkpoint_params(workdir: str):
  """The parameters of the latest checkpoint :func:`fit` wrote in ``workdir``,
  read without a target (no model or optimiser needed): the saved pytree of
  dicts and arrays, for :func:`warm_start`. Where the run averaged its
  parameters (:func:`with_params_ema`), the average (:func:`averaged_params`).

  Raises:
    FileNotFoundError: no checkpoint in ``workdir``.
  """
  saved = _read_latest(workdir, _Checkpointer.restore_saved)
  saved_opt = _lookup(saved, ("opt_state",))
  params = saved_opt[1]["ema_params"] if _has_top_ema(saved_opt) else _lookup(saved, ("params",))
  if params is None:
    raise CheckpointMismatchError(f"the latest checkpoint in {os.path.abspath(workdir)} has no `params`")
  return params


def warm_start(params, source, skip: Sequence[str] = ()) -> tuple[Any, list[str], list[str]]:
  """``params`` with every leaf that ``source`` has at the same path.

  For starting a model from another's trained variables (e.g. the full MetaNet
  from a MetaNet− run: every variable but the task-level meta learner's).

  Args:
    params: the new model's initial parameters (a pytree of dicts).
    source: trained parameters (:func:`load_checkpoint_params`).
    skip: ``/``-joined path prefixes (e.g. ``"params/meta_example/conv"``)
      whose leaves keep their initialisation even where ``source`` has them.

  Returns:
    (params, taken, fresh): the merged pytree, and the ``/``-joined paths of
    the leaves taken from ``source`` and of those left as initialised.

  Raises:
    ValueError: a shared leaf whose shape or dtype differs (named), no leaf in
      common, or a ``skip`` prefix that names no leaf of ``params``.
  """
  taken, fresh, used = [], [], set()
  skip = [p.strip("/") for p in skip]

  def pick(path, leaf):
    keys = tuple(map(_key, path))
    name = path_name(path)
    hits = {p for p in skip if name == p or name.startswith(p + "/")}
    used.update(hits)
    value = None if hits else _lookup(source, keys)
    if value is None:
      fresh.append(name)
      return leaf
    if tuple(np.shape(value)) != tuple(leaf.shape) or np.dtype(value.dtype) != np.dtype(leaf.dtype):
      raise ValueError(f"argument `source`: `{name}` is {list(np.shape(value))} {value.dtype}, the "
                       f"model's {list(leaf.shape)} {leaf.dtype}")
    taken.append(name)
    return jnp.asarray(value)

  merged = jax.tree_util.tree_map_with_path(pick, params)
  unknown = [p for p in skip if p not in used]
  if unknown:
    raise ValueError(f"argument `skip`: {unknown} name no variable of the model")
  if not taken:
    raise ValueError("argument `source`: no variable in common with the model")
  return merged, taken, fresh


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


def _format_seconds(seconds: float) -> str:
  seconds = max(0, int(round(seconds)))
  h, rem = divmod(seconds, 3600)
  return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60:02d}:{rem % 60:02d}"


class _Progress:
  """A tqdm bar whose text shows the loss, the latest evaluation as measured,
  and an ETA that counts to the earliest of: the last step, a stop scheduled by
  ``stop_fn`` and the wall-time budget."""

  def __init__(self, total: int, initial: int, enabled: bool, describe):
    from tqdm.auto import tqdm
    self.total, self.start, self.describe = total, initial, describe
    self.bar = tqdm(total=total, initial=initial, disable=not enabled, dynamic_ncols=True,
                    bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")
    self.loss_text = self.eval_text = ""
    self.t_first = self.n_first = None

  def update(self, done: int, record: dict | None, end_step: int, seconds_left: float | None):
    now = time.perf_counter()
    if self.t_first is None:  # timed from the first step on: compilation excluded
      self.t_first, self.n_first = now, done
    if record is not None:
      self.loss_text = f"loss {record['loss']:.4g}"
      text = self.describe(record) if self.describe is not None else None
      self.eval_text = text or self.eval_text
    eta, why = None, ""
    if done > self.n_first and now > self.t_first:
      eta = (min(end_step, self.total) - done) * (now - self.t_first) / (done - self.n_first)
      why = " (early stop)" if end_step < self.total else ""
    if seconds_left is not None and (eta is None or seconds_left < eta):
      eta, why = seconds_left, " (time limit)"
    parts = [self.loss_text, self.eval_text] + ([f"eta {_format_seconds(eta)}{why}"] if eta is not None
                                                else [])
    self.bar.set_postfix_str(", ".join(p for p in parts if p), refresh=False)
    self.bar.update(1)

  def close(self):
    self.bar.close()


def fit(loss_fn: LossFn | Sequence[tuple[int, LossFn]], params,
        optimizer: optax.GradientTransformation, *, num_steps: int,
        seed: int = 0, workdir: str | None = None, checkpoint_every: int = 500, keep: int = 3,
        resume: bool = False, log_every: int = 50, progress: bool = True,
        eval_every: int = 0, eval_fn: Callable[[Any, int], dict] | None = None,
        stop_fn: Callable[[dict], bool | int] | None = None,
        max_seconds: float | None = None,
        mesh: Mesh | str | None = "auto", batch_size: int | None = None,
        describe: Callable[[dict], str | None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        shard_map: bool = False) -> tuple[TrainState, list[dict]]:
  """Trains ``params`` to minimise ``loss_fn`` for ``num_steps`` steps.

  The loss contract: ``loss_fn(params, key) -> (loss, metrics)``, where
  ``loss`` is a scalar array and ``metrics`` a dict of scalar arrays (``{}``
  when there are none); ``key`` is the step's PRNG key, from which the function
  draws its own batch. A bare scalar return is rejected with a ``TypeError``.

  Args:
    loss_fn: ``(params, key) -> (scalar loss, dict of scalar metrics)``; builds
      its batch from ``key``. Or a schedule ``[(first step, loss_fn), ...]``
      (first steps increasing, from 0): update ``s + 1`` uses the last whose
      first step is at most ``s`` (e.g. training-time augmentation that changes
      during a run); each is compiled when first used.
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
      ``params`` is :func:`averaged_params` of the state: the parameter
      average where the optimiser keeps one (:func:`with_params_ema`).
    stop_fn: called with each eval record; True ends training now, an int S
      ends it at the first evaluation at or after step S (the progress bar's
      ETA counts to it); False/None goes on. Training ends after a checkpoint.
    max_seconds: stop (after a checkpoint) once this much training wall time
      has passed (compile time included).
    mesh: ``"auto"`` — all devices when there are several (and they divide
      ``batch_size``, when given), else none; a :class:`jax.sharding.Mesh`
      with a ``"data"`` axis; or None (no mesh).
    batch_size: the loss function's batch size, for ``mesh="auto"``.
    describe: ``record -> text`` for the progress bar (e.g. the evaluation
      metric as measured); None, or a None return, keeps the previous text.
    should_stop: polled after every step; True stops training after a
      checkpoint (:class:`Run` uses it for Ctrl-C and SIGTERM).
    shard_map: under a mesh, run the loss function on every device's slice of
      the batch and average over the devices (:func:`make_step`); only for a
      loss and metrics that are means over equally weighted examples.

  Returns:
    ``(final TrainState, list of metric records)``.

  Raises:
    NonFiniteError: a loss or gradient was NaN/Inf; the last checkpoint is
      the last good state.
    TypeError: ``loss_fn`` breaks the loss contract.
  """
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

  mesh = choose_mesh(mesh, batch_size)
  if mesh is not None:
    state = replicate(state, mesh)
  starts, step_fns = [], []
  for first, fn in _loss_schedule(loss_fn):
    starts.append(first)
    step_fns.append(make_step(fn, optimizer, seed_key, mesh, shard_map=shard_map))
  history: list[dict] = []
  start = int(state.step)
  t0 = time.perf_counter()
  bar = _Progress(num_steps, start, progress, describe)
  stop, end_step = False, num_steps
  try:
    for s in range(start, num_steps):
      step_fn = step_fns[bisect.bisect_right(starts, s) - 1]
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
        record.update({k: float(v) for k, v in eval_fn(averaged_params(state), done).items()})
        record["wall_time"] = time.perf_counter() - t0
        verdict = stop_fn(record) if stop_fn is not None else None
        if isinstance(verdict, (bool, np.bool_)) or verdict is None:
          stop = stop or bool(verdict)
        else:
          end_step = min(num_steps, -(-int(verdict) // eval_every) * eval_every)
          stop = stop or done >= int(verdict)
      elapsed = time.perf_counter() - t0
      if max_seconds is not None and elapsed >= max_seconds:
        stop = True
      if should_stop is not None and should_stop():
        stop = True
      if record is not None:
        history.append(record)
        if metrics_path:
          with open(metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
      bar.update(done, record, end_step, None if max_seconds is None else max_seconds - elapsed)
      if ckpt is not None and (done % checkpoint_every == 0 or done == num_steps or stop):
        ckpt.save(state)
      if stop:
        break
  finally:
    bar.close()
    if ckpt is not None:
      ckpt.close()
  return state, history


def _loss_schedule(loss_fn) -> list[tuple[int, LossFn]]:
  """:func:`fit`'s ``loss_fn`` as ``[(first step, loss_fn), ...]``, checked."""
  if callable(loss_fn):
    return [(0, loss_fn)]
  try:
    schedule = [(int(first), fn) for first, fn in loss_fn]
  except (TypeError, ValueError):
    schedule = None
  if (not schedule or schedule[0][0] != 0 or not all(callable(fn) for _, fn in schedule)
      or any(b[0] <= a[0] for a, b in zip(schedule, schedule[1:]))):
    raise TypeError("argument `loss_fn`: expected a function (params, key) -> (loss, metrics) or a "
                    "schedule [(first step, function), ...] with first steps increasing from 0, got "
                    f"{loss_fn!r}")
  return schedule


def choose_mesh(mesh: Mesh | str | None = "auto", batch_size: int | None = None) -> Mesh | None:
  """The mesh :func:`fit` trains under: ``"auto"`` gives :func:`data_mesh`
  when there are several devices and they divide ``batch_size`` (when given),
  else None; a Mesh or None is returned as is."""
  if not isinstance(mesh, str):
    return mesh
  if mesh != "auto":
    raise ValueError(f"argument `mesh`: expected 'auto', a Mesh or None, got {mesh!r}")
  n = jax.device_count()
  if n == 1 or (batch_size is not None and batch_size % n):
    return None
  return data_mesh()


# ----------------------------------------------------------------------------
# Evaluation and run folders.

EVAL_SEED = 2**31 - 1
"""The evaluation seed: never a training key, since those are ``fold_in(key(seed), step)``
for small step numbers under a training seed."""


def eval_key(*path: int) -> jax.Array:
  """The evaluation PRNG key, ``key(EVAL_SEED)`` folded in with each of ``path``.

  Every experiment draws its test data from it, so the same weights always meet
  the same test sequences or episodes: ``eval_key()`` for one test set,
  ``eval_key(i)`` for the i-th of several.
  """
  key = jax.random.key(EVAL_SEED)
  for i in path:
    key = jax.random.fold_in(key, i)
  return key


def evaluate(metrics_fn: Callable[[Any], Mapping], params, *, prefix: str = "") -> dict[str, float]:
  """``metrics_fn(params)`` as a dict of Python floats, keys prefixed with ``prefix``.

  Args:
    metrics_fn: ``params -> {name: scalar}``, e.g. a jitted evaluation over a
      fixed test set drawn from :func:`eval_key`.
    params: the model's parameters.
    prefix: prepended to every name (e.g. ``"eval_"`` for metrics lines).
  """
  return {prefix + k: float(v) for k, v in metrics_fn(params).items()}


class ConfigMismatchError(ValueError):
  """``resume`` was asked with a configuration other than the saved one."""


class CheckpointMismatchError(ValueError):
  """A checkpoint does not fit the current model and optimiser state."""


class Interrupted(KeyboardInterrupt):
  """A second Ctrl-C / SIGTERM (or one during an abortable step) of a :class:`Run`.

  Attributes:
    signum: the signal number; ``exit_code`` is ``128 + signum`` (130 SIGINT, 143 SIGTERM).
  """

  def __init__(self, signum: int):
    super().__init__(signal.Signals(signum).name)
    self.signum = signum
    self.exit_code = 128 + signum


LR_SCHEDULE_KEYS = ("lr_drop_steps", "lr_drop_factor", "lr_schedule")
_LR_SCHEDULE_DEFAULTS = {"lr_drop_steps": 0, "lr_drop_factor": 0.1, "lr_schedule": None}


def learning_rate_at(config: dict, step: int,
                     lr_of: Callable[[dict], float] = lambda config: config["lr"]) -> float:
  """The learning rate of update ``step + 1`` of a run recorded in ``config``.

  The rate given from each ``lr_history`` step on (``--lr`` on ``--resume``;
  ``lr_of(config)`` from 0 when there is none) under the run's own
  :func:`step_decay` (``lr_drop_steps``/``lr_drop_factor`` or ``lr_schedule``).
  """
  rate = [r for s, r in config.get("lr_history") or [[0, lr_of(config)]] if s <= step][-1]
  keys = {k: config.get(k, d) for k, d in _LR_SCHEDULE_DEFAULTS.items()}
  sched = step_decay(rate, keys["lr_drop_steps"] or 0, keys["lr_drop_factor"], keys["lr_schedule"])
  return float(sched(step)) if callable(sched) else float(sched)


def _lr_change_steps(config: dict) -> set[int]:
  """Every step where the rate of :func:`learning_rate_at` may change (0 included)."""
  return {0, *(int(s) for s, _ in config.get("lr_history") or []), config.get("lr_drop_steps") or 0,
          *(int(s) for s, _ in config.get("lr_schedule") or [])}


def lr_history(lr_of: Callable[[dict], float] = lambda config: config["lr"]
               ) -> Callable[[dict, dict | None, int], None]:
  """A :class:`Run` ``amend`` that keeps config.json's ``lr_history``,
  ``[[step, learning rate from that step on], ...]``, and checks a changed
  schedule on resume.

  A new learning rate given on resume is a step of a piecewise-constant
  schedule, applied from the checkpoint on (for optimisers whose state does not
  depend on the rate — Adam, RMSProp — nothing else changes); the run's
  configuration records every step so the schedule can be read back and
  repeated (:func:`learning_rate_at`).

  A schedule (``lr_schedule``, ``lr_drop_steps``/``lr_drop_factor``) may change
  on resume only where it has not been trained yet: with the new one every
  update before the checkpoint must have the rate it had (e.g. a run trained by
  ``--lr`` legs continues under the ``--lr-schedule`` that writes those legs
  down, or a schedule gains a later step); otherwise
  :class:`ConfigMismatchError` names the first update whose rate would change.
  When the schedule changes, ``lr_history`` becomes the rates the updates so
  far were made at (so dropping a schedule for ``--lr`` legs keeps its past).
  A resume past an ``lr_schedule``'s first step adds no entry: the schedule
  sets every rate from there on, whatever ``--lr`` says.
  Leave these keys out of the :class:`Run`'s ``compare``.

  Args:
    lr_of: ``config -> learning rate`` (e.g. a per-optimiser default for
      ``None``).

  Returns:
    ``amend(config, saved config or None, start step)``.
  """
  def amend(config: dict, old: dict | None, start_step: int) -> None:
    config["lr_history"] = [[0, lr_of(config)]]
    if old is None:
      return
    changed = [k for k, d in _LR_SCHEDULE_DEFAULTS.items()
               if not _same(config.get(k, d), old.get(k, d), False)]
    history = [list(x) for x in old.get("lr_history", [[0, lr_of(old)]])]
    if changed:  # the history the new schedule runs on: the rates the updates so far were made at
      marks = _lr_change_steps(old)
      history = []
      for step in sorted(m for m in marks if 0 <= m < max(start_step, 1)):
        rate = float(f"{learning_rate_at(old, step, lr_of):.7g}")  # the decimal given, not its float32
        if not history or history[-1][1] != rate:
          history.append([step, rate])
    # a base rate that the schedule overrides from the checkpoint on is no rate an update takes
    schedule = config.get("lr_schedule") or []
    inert = bool(schedule) and int(schedule[0][0]) <= start_step
    new_rate = lr_of(config) != history[-1][1] and not inert
    if new_rate:
      history = [x for x in history if x[0] < start_step] + [[start_step, lr_of(config)]]
    config["lr_history"] = history
    if changed:
      for step in sorted(m for m in _lr_change_steps(config) | _lr_change_steps(old) if m < start_step):
        now, was = learning_rate_at(config, step, lr_of), learning_rate_at(old, step, lr_of)
        if not np.isclose(now, was, rtol=1e-6, atol=0.0):
          raise ConfigMismatchError(
              f"--resume with a learning-rate schedule that changes updates already made: {changed} "
              f"(saved {', '.join(f'{k}={old.get(k, _LR_SCHEDULE_DEFAULTS[k])!r}' for k in changed)}; now "
              f"{', '.join(f'{k}={config.get(k)!r}' for k in changed)}) gives update {step + 1} the rate "
              f"{now:g} where it was trained at {was:g}; a schedule may change only from the "
              f"checkpoint (step {start_step}) on")
    if new_rate or changed:
      print(f"learning rate from step {start_step} on: {learning_rate_at(config, start_step, lr_of):g} "
            f"(was {learning_rate_at(old, start_step, lr_of):g})", flush=True)
  return amend


def _same(a, b, is_path: bool) -> bool:
  if is_path and isinstance(a, str) and isinstance(b, str):
    return os.path.realpath(os.path.expanduser(a)) == os.path.realpath(os.path.expanduser(b))
  if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
    return list(a) == list(b)
  return a == b


class Run:
  """A run folder and the life of one training invocation in it.

  Creating a ``Run`` checks and writes ``config.json``: with ``resume`` and a
  saved configuration, the keys ``compare`` (default: all of ``config``) must
  match it, paths (``path_keys``) compared resolved; otherwise
  :class:`ConfigMismatchError` names every differing key. Create it after the
  inputs (data, flags) are checked, so that a bad invocation leaves no folder.

  As a context manager it handles Ctrl-C and SIGTERM: the first signal during
  :meth:`fit` ends training after the current step with a checkpoint; during
  :meth:`step` it abandons that step; later steps are skipped unless
  ``always``. :meth:`write_results` then records ``"interrupted": true`` (beside,
  not over, the results of a finished invocation that a resume continues), and
  leaving the ``with`` block prints where the results are and exits with
  ``128 + signal`` (130 for SIGINT, 143 for SIGTERM) — no traceback. A second
  signal aborts at once (same exit code). ``--resume`` continues from the
  checkpoint.

  Args:
    workdir: the run folder.
    config: the configuration to save.
    resume: continue the run saved in ``workdir`` (if any).
    compare: keys that must match the saved configuration (None: all of ``config``).
    defaults: values of keys missing from the saved configuration.
    upgrade: ``saved config -> saved config`` in today's keys (renamed flags).
    amend: ``(config, saved config or None, start step)``, changes ``config``
      in place before it is saved (e.g. :func:`lr_history`), or a sequence of
      them, applied in order; a :class:`ConfigMismatchError` one raises goes to
      ``error`` like a key that differs.
    path_keys: keys compared as paths (resolved: relative and absolute agree).
    error: called with the message instead of raising (e.g. ``parser.error``).
    verbose: print what the run is doing and where its results are.

  A script's shape::

    run = training.Run(args.workdir, config, resume=args.resume, compare=KEYS, error=parser.error)
    with run:
      state, history = run.fit(loss_fn, params, optimizer, num_steps=..., ...)
      extra = run.step("testing generalisation", lambda: ...)   # None if interrupted
      run.write_results({...})
      run.step("plotting", plot, ..., always=True)

  Attributes:
    path: the run folder.
    config: the configuration saved in ``config.json``.
    saved_config: the configuration found there on resume (after ``upgrade``), else None.
    start_step: the latest checkpoint's step when resuming, else 0.
    prior_train_seconds: training seconds (evaluations excluded) recorded in
      ``metrics.jsonl`` up to ``start_step`` by earlier invocations.
    signum: the signal that interrupted the run, or None.
    eval_seconds: seconds spent in :meth:`evaluate` since :meth:`fit` began.
    fit_seconds: wall time of :meth:`fit` (compilation and evaluations included).
  """

  def __init__(self, workdir: str, config: dict, *, resume: bool = False,
               compare: Sequence[str] | None = None, defaults: Mapping | None = None,
               upgrade: Callable[[dict], dict] | None = None,
               amend: (Callable[[dict, dict | None, int], None]
                      | Sequence[Callable[[dict, dict | None, int], None]] | None) = None,
               path_keys: Sequence[str] = ("workdir", "data_dir"),
               error: Callable[[str], Any] | None = None, verbose: bool = True):
    self.path = str(workdir)
    self.resume = resume
    self.verbose = verbose
    self.signum: int | None = None
    self.eval_seconds = 0.0
    self.fit_seconds = 0.0
    self.files: list[str] = []
    self._mode = None
    self._handlers: dict = {}
    self._fit_t0: float | None = None
    config_path = os.path.join(self.path, "config.json")
    self.saved_config = None
    if resume and os.path.exists(config_path):
      with open(config_path) as f:
        self.saved_config = json.load(f)
      if upgrade is not None:
        self.saved_config = upgrade(self.saved_config)
      defaults = defaults or {}
      keys = list(config) if compare is None else list(compare)
      changed = [k for k in keys if not _same(self.saved_config.get(k, defaults.get(k)), config.get(k),
                                              k in path_keys)]
      if changed:
        detail = "; ".join(f"{k}: saved {self.saved_config.get(k, defaults.get(k))!r}, now "
                           f"{config.get(k)!r}" for k in changed)
        message = (f"--resume with a different configuration than {config_path}: "
                   f"{sorted(changed)} ({detail})")
        if error is not None:
          error(message)
        raise ConfigMismatchError(message)
    self.start_step = latest_checkpoint_step(self.path) if resume else 0
    self.prior_train_seconds = _prior_train_seconds(self.path, self.start_step)
    self._saved_config_text = None
    if self.saved_config is not None:
      with open(config_path) as f:
        self._saved_config_text = f.read()
    self.config = dict(config)
    for fn in ([] if amend is None else [amend] if callable(amend) else amend):
      try:
        fn(self.config, self.saved_config, self.start_step)
      except ConfigMismatchError as e:
        if error is not None:
          error(str(e))
        raise
    os.makedirs(self.path, exist_ok=True)
    _write_json(config_path, self.config)

  # -- signals ---------------------------------------------------------------

  def __enter__(self) -> "Run":
    import threading
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGINT, signal.SIGTERM):
        self._handlers[sig] = signal.signal(sig, self._on_signal)
    return self

  def __exit__(self, exc_type, exc, tb):
    for sig, handler in self._handlers.items():
      signal.signal(sig, handler)
    self._handlers = {}
    if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
      self.signum = self.signum or getattr(exc, "signum", signal.SIGINT)
      print(f"\naborted ({signal.Signals(self.signum).name}); the last checkpoint is in "
            f"{os.path.join(self.path, 'checkpoints')}", file=sys.stderr, flush=True)
      sys.exit(128 + self.signum)
    if exc_type is not None:
      return False
    self.say(self.summary())
    if self.signum is not None:
      sys.exit(128 + self.signum)
    return False

  def _on_signal(self, signum, frame):
    first = self.signum is None
    self.signum = self.signum or signum
    if first and self._mode != "abortable":
      print(f"\n{signal.Signals(signum).name}: stopping after this step, writing a checkpoint, "
            "partial results and plots (again to abort)", file=sys.stderr, flush=True)
      return
    raise Interrupted(self.signum)

  @property
  def interrupted(self) -> bool:
    return self.signum is not None

  # -- training and evaluation -------------------------------------------------

  def fit(self, loss_fn: LossFn, params, optimizer: optax.GradientTransformation, **kwargs):
    """:func:`fit` in this folder (``workdir``, ``resume`` from the run); stops
    gracefully on the first Ctrl-C / SIGTERM."""
    self._fit_t0 = time.perf_counter()
    self.eval_seconds = 0.0
    self._mode = "graceful"
    try:
      return fit(loss_fn, params, optimizer, workdir=self.path, resume=self.resume,
                 should_stop=lambda: self.signum is not None, **kwargs)
    except CheckpointMismatchError:  # nothing trained: the run folder stays as it was
      if self._saved_config_text is not None:
        _write_text(os.path.join(self.path, "config.json"), self._saved_config_text)
      raise
    finally:
      self._mode = None
      self.fit_seconds = time.perf_counter() - self._fit_t0

  def evaluate(self, metrics_fn: Callable[[Any], Mapping], params, *, prefix: str = "") -> dict:
    """:func:`evaluate`, its time added to :attr:`eval_seconds`."""
    t0 = time.perf_counter()
    out = evaluate(metrics_fn, params, prefix=prefix)
    self.eval_seconds += time.perf_counter() - t0
    return out

  def train_seconds(self) -> float:
    """Training wall time so far, evaluations excluded, earlier invocations included."""
    now = time.perf_counter() if self._fit_t0 is not None else 0.0
    return self.prior_train_seconds + now - (self._fit_t0 or 0.0) - self.eval_seconds

  def step(self, message: str, fn: Callable, *args, always: bool = False, **kwargs):
    """Says ``message`` and returns ``fn(*args, **kwargs)``; None when the run
    was interrupted before (unless ``always``) or during it."""
    if self.signum is not None and not always:
      self.say(f"skipped: {message} (interrupted)")
      return None
    self.say(message)
    self._mode = "abortable" if self.signum is None else None
    try:
      return fn(*args, **kwargs)
    except Interrupted:
      self.say(f"interrupted: {message}")
      return None
    finally:
      self._mode = None

  # -- output ------------------------------------------------------------------

  def say(self, message: str) -> None:
    if self.verbose:
      print(message, flush=True)

  def output(self, name: str) -> str:
    """The path of output file ``name`` in the run folder, listed by :meth:`summary`."""
    if name not in self.files:
      self.files.append(name)
    return os.path.join(self.path, name)

  def write_results(self, results: dict, name: str = "results.json") -> str:
    """Writes ``results`` with ``"interrupted"`` (and the signal) atomically; returns the path.

    An interrupted resume never replaces the results of the run it continues:
    when ``name`` in the folder records a finished invocation (``"interrupted":
    false``, e.g. the final test at 40,000 steps of a run resumed towards
    80,000), the partial results go to ``<stem>_interrupted<ext>`` beside it.
    A finished invocation writes ``name`` and removes that file.
    """
    interrupted = self.signum is not None
    results = dict(results, interrupted=interrupted)
    if interrupted:
      results["signal"] = signal.Signals(self.signum).name
    stem, ext = os.path.splitext(name)
    partial = f"{stem}_interrupted{ext}"
    if interrupted and self.start_step > 0 and _finished_results(os.path.join(self.path, name)):
      self.say(f"{name} keeps the results of the finished invocation before this one; "
               f"this one's partial results go to {partial}")
      name = partial
    elif not interrupted and os.path.exists(os.path.join(self.path, partial)):
      os.remove(os.path.join(self.path, partial))
    path = self.output(name)
    _write_json(path, results)
    return path

  def summary(self) -> str:
    """Where the results went (and how to continue an interrupted run)."""
    files = [f for f in self.files if os.path.exists(os.path.join(self.path, f))]
    lines = [f"results in {self.path}/: " + ", ".join(files + ["config.json", "metrics.jsonl",
                                                               "checkpoints/"])]
    if self.signum is not None:
      lines.append(f"interrupted ({signal.Signals(self.signum).name}): continue with --resume")
    return "\n".join(lines)


def _finished_results(path: str) -> bool:
  """Whether ``path`` is a results file of an invocation that was not interrupted."""
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError):
    return False
  return isinstance(saved, dict) and saved.get("interrupted") is False


def _write_json(path: str, obj) -> None:
  _write_text(path, json.dumps(obj, indent=1))


def _write_text(path: str, text: str) -> None:
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def latest_checkpoint_step(workdir: str) -> int:
  """The step of the latest checkpoint in ``workdir`` (0: none)."""
  path = os.path.join(workdir, "checkpoints")
  steps = [int(d) for d in os.listdir(path) if d.isdigit()] if os.path.isdir(path) else []
  return max(steps, default=0)


def _prior_train_seconds(workdir: str, start_step: int) -> float:
  """Training seconds recorded up to ``start_step`` by earlier invocations (0 for a new run)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not start_step or not os.path.exists(path):
    return 0.0
  records = []
  with open(path) as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  done = [r["train_seconds"] for r in records if "train_seconds" in r and r["step"] <= start_step]
  return done[-1] if done else 0.0
