"""The shell shared by the memory-augmented cells (:class:`memjax.NTMCell`, :class:`memjax.MANNCell`).

A memory cell is a ``flax.linen.RNNCellBase`` whose step reads

  controller input [x_t, r_{t−1}] → controller output h_t → head projections
  → memory step (one example, vmapped over the batch) → logits = W [h_t, r_t] + b.

:class:`MemoryCell` holds what every such cell does the same way: argument
validation, the checks of the inputs and of the carry's shapes at each step,
the controller input and the output layer, and the batching idiom
(:func:`over_batch`: the memory step is written for one example and vmapped
once over the flattened leading axes). :func:`trajectory` runs any memory cell
and returns its state at every step. The subclasses own only their equations.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from memjax import _checks

MEMORY_INIT_CONSTANT = 1e-6  # initial memory entries (Collier & Beel 2018)


def over_batch(fn: Callable, batch: tuple[int, ...], *args: jax.Array, in_axes=0):
  """``fn`` (written for one example) over the leading ``batch`` axes of ``args``.

  The batch axes are flattened into one, ``fn`` is vmapped once over it, and the
  outputs get the batch axes back. With no batch axes ``fn`` is called as is.

  Args:
    fn: a function of one example's arrays returning an array or a tuple of arrays.
    batch: the leading batch shape ``(...)`` shared by the mapped arguments.
    *args: arrays (or pytrees of arrays) ``[..., *tail]``; those with
      ``in_axes`` ``None`` are passed unmapped.
    in_axes: ``0`` for all, or a tuple with ``0`` / ``None`` per argument.

  Returns:
    ``fn``'s outputs, each ``[..., *tail]``.
  """
  if not batch:
    return fn(*args)
  axes = (0,) * len(args) if in_axes == 0 else tuple(in_axes)
  nb = len(batch)
  flat = [a if ax is None else jax.tree.map(lambda x: x.reshape((-1,) + x.shape[nb:]), a)
          for a, ax in zip(args, axes)]
  out = jax.vmap(fn, in_axes=axes)(*flat)
  return jax.tree.map(lambda x: x.reshape(batch + x.shape[1:]), out)


class MemoryCell(nn.RNNCellBase):
  """Base of the memory cells: validation, per-step checks, controller input, output layer.

  A subclass declares the attributes ``features``, ``memory_size``,
  ``word_size``, ``controller_features``, ``return_state`` and
  ``param_dtype`` (and its own), and defines

  * ``_POSITIVE_INTS``: the attribute names that must be ints ≥ 1;
  * ``_validate_more()``: its other attribute checks;
  * ``_carry_shapes(batch)``: ``{carry field: expected shape}`` for inputs
    with batch axes ``batch``;
  * ``_num_reads``: R, the number of read vectors fed back to the controller.
  """

  _POSITIVE_INTS = ()  # no annotation: a Flax module turns annotated names into fields

  def _validate_more(self) -> None:
    pass

  def _validate(self) -> None:
    """Checks the attributes; ValueError naming the first bad one."""
    for name in self._POSITIVE_INTS:
      _checks.check_positive_int(name, getattr(self, name))
    self._validate_more()

  @property
  def num_feature_axes(self) -> int:
    return 1

  def _carry_shapes(self, batch: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Abstract: each cell (NTMCell, MANNCell) gives its carry's shapes for batch axes ``batch``."""
    raise NotImplementedError(f"{type(self).__name__} must define _carry_shapes")

  @property
  def _num_reads(self) -> int:
    """Abstract: each cell gives its number of read heads R (the controller reads [R, M])."""
    raise NotImplementedError(f"{type(self).__name__} must define _num_reads")

  def _check_step(self, carry, inputs) -> tuple[jax.Array, tuple[int, ...]]:
    """Validates one step's arguments.

    Returns:
      ``(inputs as a float array [..., I], batch axes (...))``.

    Raises:
      ValueError: bad attributes, inputs that are not ``[..., I]``, an input
        width other than the one the parameters were made for, or a carry
        whose shapes do not fit the inputs' batch axes.
    """
    self._validate()
    inputs = _checks.as_float_array("inputs", inputs)
    if inputs.ndim < 1:
      raise ValueError(f"argument `inputs`: expected shape [..., features_in], got {list(inputs.shape)}")
    batch = tuple(inputs.shape[:-1])
    for name, shape in self._carry_shapes(batch).items():
      got = getattr(carry, name).shape
      if tuple(got) != shape:
        raise ValueError(f"argument `carry.{name}`: expected shape {list(shape)} "
                         f"(inputs batch axes {list(batch)}), got {list(got)}")
    expected = self._expected_input_width()
    if expected is not None and inputs.shape[-1] != expected:
      raise ValueError(f"argument `inputs`: expected {expected} features per step (the width the "
                       f"variables were made for), got {inputs.shape[-1]} (one step's inputs: shape "
                       f"{list(inputs.shape)})")
    return inputs, batch

  def _expected_input_width(self) -> int | None:
    """I, the input width the controller's parameters were made for (None
    while initialising): the rows of its input kernel minus the R·M read values."""
    if self.is_initializing() or not self.has_variable("params", "controller"):
      return None
    ctrl = self.variables["params"]["controller"]
    kernel = ctrl["ii"]["kernel"] if "ii" in ctrl else ctrl.get("kernel")
    if kernel is None:
      return None
    return int(kernel.shape[0]) - self._num_reads * self.word_size

  def _controller_input(self, inputs: jax.Array, reads: jax.Array, batch: tuple[int, ...]) -> jax.Array:
    """[x_t, r_{t−1}]: inputs [..., I] and reads [..., R, M] → [..., I + R·M]."""
    return jnp.concatenate([inputs, reads.reshape(batch + (-1,))], axis=-1)

  def _lstm_controller(self, carry, x: jax.Array):
    """(c, h) = LSTM((c, h)_{t−1}, x) with C = ``controller_features``, as ``"controller"``."""
    return nn.OptimizedLSTMCell(self.controller_features, param_dtype=self.param_dtype,
                                name="controller")(carry, x)

  @nn.nowrap
  def _initial_lstm_carry(self, rng: jax.Array, batch: tuple[int, ...]):
    """The LSTM controller's initial ``(c, h)``, each ``[..., C]`` (zeros)."""
    return nn.OptimizedLSTMCell(self.controller_features, param_dtype=self.param_dtype,
                                parent=None).initialize_carry(rng, batch + (1,))

  def _output(self, h: jax.Array, reads: jax.Array, batch: tuple[int, ...]) -> jax.Array:
    """logits = W_o [h_t, r_t] + b_o: h [..., C], reads [..., R, M] → [..., features], as ``"output"``."""
    out_in = jnp.concatenate([h, reads.reshape(batch + (-1,))], axis=-1)
    return nn.Dense(self.features, param_dtype=self.param_dtype, name="output")(out_in)

  def _emit(self, new_carry, logits: jax.Array):
    """``(new_carry, logits)``, or ``(new_carry, (logits, new_carry))`` when ``return_state``."""
    if self.return_state:
      return new_carry, (logits, new_carry)
    return new_carry, logits

  def _dense(self, h: jax.Array, size: int, name: str) -> jax.Array:
    """A named linear projection W h + b of the controller output h [..., C] → [..., size]."""
    return nn.Dense(size, param_dtype=self.param_dtype, name=name)(h)


def trajectory(cell: MemoryCell, variables, inputs: jax.Array, *, initial_carry: Any = None,
               rng: jax.Array | None = None) -> tuple[jax.Array, Any]:
  """Runs ``nn.RNN(cell)`` and returns the logits and the state at every step.

  Use it to plot read/write weightings over time.

  Args:
    cell: the memory cell (:class:`memjax.NTMCell`, :class:`memjax.MANNCell`)
      the variables were created for (inside ``nn.RNN``).
    variables: variables of ``nn.RNN(cell)``.
    inputs: [..., T, I] inputs (time on the second-to-last axis).
    initial_carry: optional initial state.
    rng: rng for ``initialize_carry`` (the NTM's ``memory_init='random'``).

  Returns:
    ``(logits [..., T, features], states)`` where every leaf of ``states`` has
    a time axis after the batch axes, e.g. ``states.read_weights`` [..., T, R, N].
  """
  model = nn.RNN(cell.clone(return_state=True))
  return model.apply(variables, inputs, initial_carry=initial_carry, init_key=rng)
