"""The Neural Turing Machine (Graves, Wayne & Danihelka 2014) as a Flax RNN cell.

``NTMCell`` owns the parameterised parts — the controller and the linear map
from the controller output to every head's parameters — and calls the pure
functions of :mod:`memjax.addressing` and :mod:`memjax.memory` for the rest.
Heads are vectorised with ``jax.vmap``, as is the batch, so the memory logic is
written once, for one example and one head.

One step, for inputs x_t and the previous state:

1. controller input = [x_t, r_{t−1}] (all previous read vectors);
2. controller output h_t (LSTM or feed-forward);
3. every head's parameters from h_t: key k (linear), β = softplus, g = σ,
   s = softmax over 2K+1 offsets, γ = 1 + softplus; write heads also emit
   erase e = σ and add a = tanh;
4. every head addresses M_{t−1} (:func:`memjax.addressing.ntm_address`);
5. read heads read r_t from M_{t−1} (eq. 2), write heads erase then add
   (eqs. 3–4) to give M_t;
6. output logits = linear([h_t, r_t]).

Example::

  cell = NTMCell(features=8)
  model = nn.RNN(cell)
  params = model.init(key, x)          # x: [batch, time, 9]
  logits = model.apply(params, x)      # [batch, time, 8]
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from memjax import _checks, addressing
from memjax import memory as memory_lib

MEMORY_INIT_CONSTANT = 1e-6


class NTMState(NamedTuple):
  """The recurrent state of an :class:`NTMCell` (leading batch axes ``...``).

  Attributes:
    controller: the controller's carry — ``(c, h)`` each ``[..., C]`` for an
      LSTM, ``()`` for a feed-forward controller.
    memory: [..., N, M] memory matrix M_t.
    read_weights: [..., R, N] read weightings w^r_t.
    write_weights: [..., W, N] write weightings w^w_t.
    reads: [..., R, M] read vectors r_t.
    step: [...] int32 number of steps taken.
  """
  controller: Any
  memory: jax.Array
  read_weights: jax.Array
  write_weights: jax.Array
  reads: jax.Array
  step: jax.Array


class NTMCell(nn.RNNCellBase):
  """Neural Turing Machine cell, usable in ``flax.linen.RNN``.

  Attributes:
    features: size of the output logits.
    memory_size: N, number of memory slots.
    word_size: M, width of a slot.
    controller: ``'lstm'`` or ``'feedforward'``.
    controller_features: controller width.
    num_read_heads: R.
    num_write_heads: W.
    shift_range: K; heads shift by −K..K slots.
    memory_init: ``'constant'`` (every entry 1e-6; Collier & Beel 2018),
      ``'random'`` (N(0, 0.1²), drawn from the rng given to
      ``initialize_carry``) or ``'learned'`` (a parameter, initialised at 1e-6).
      Initial read/write weightings are one-hot at slot 0, which breaks the
      symmetry between rows.
    return_state: when True the cell outputs ``(logits, state)`` at every step,
      so ``nn.RNN`` returns the whole state trajectory (see :func:`trajectory`).
  """
  features: int
  memory_size: int = 128
  word_size: int = 20
  controller: str = "lstm"
  controller_features: int = 100
  num_read_heads: int = 1
  num_write_heads: int = 1
  shift_range: int = 1
  memory_init: str = "constant"
  return_state: bool = False
  param_dtype: Any = jnp.float32

  def _validate(self):
    for name in ("features", "memory_size", "word_size", "controller_features", "num_read_heads",
                 "num_write_heads"):
      _checks.check_positive_int(name, getattr(self, name))
    if not isinstance(self.shift_range, int) or self.shift_range < 0:
      raise ValueError(f"argument `shift_range`: expected an int >= 0, got {self.shift_range!r}")
    if self.controller not in ("lstm", "feedforward"):
      raise ValueError(f"argument `controller`: expected 'lstm' or 'feedforward', got {self.controller!r}")
    if self.memory_init not in ("constant", "random", "learned"):
      raise ValueError("argument `memory_init`: expected 'constant', 'random' or 'learned', "
                       f"got {self.memory_init!r}")

  @property
  def num_feature_axes(self) -> int:
    return 1

  @nn.nowrap
  def initialize_carry(self, rng: jax.Array, input_shape: tuple[int, ...]) -> NTMState:
    """Initial state for inputs of shape ``input_shape`` = ``(*batch, features_in)``."""
    self._validate()
    batch = tuple(input_shape[:-1])
    n, m = self.memory_size, self.word_size
    r, w = self.num_read_heads, self.num_write_heads
    if self.memory_init == "random":
      rng, mem_rng = jax.random.split(rng)
      mem = 0.1 * jax.random.normal(mem_rng, batch + (n, m), self.param_dtype)
    else:
      mem = jnp.full(batch + (n, m), MEMORY_INIT_CONSTANT, self.param_dtype)
    if self.controller == "lstm":
      ctrl = nn.OptimizedLSTMCell(self.controller_features, param_dtype=self.param_dtype,
                                  parent=None).initialize_carry(rng, batch + (1,))
    else:
      ctrl = ()
    one_hot = jax.nn.one_hot(0, n, dtype=self.param_dtype)
    read_w = jnp.broadcast_to(one_hot, batch + (r, n))
    write_w = jnp.broadcast_to(one_hot, batch + (w, n))
    reads = jnp.broadcast_to(mem[..., None, 0, :], batch + (r, m))
    return NTMState(ctrl, mem, read_w, write_w, reads, jnp.zeros(batch, jnp.int32))

  @nn.compact
  def __call__(self, carry: NTMState, inputs: jax.Array):
    """One NTM step.

    Args:
      carry: :class:`NTMState` with leading batch axes ``...``.
      inputs: [..., I] inputs x_t.

    Returns:
      ``(new_carry, logits)`` with logits [..., features]; or
      ``(new_carry, (logits, new_carry))`` when ``return_state``.
    """
    self._validate()
    n, m, k = self.memory_size, self.word_size, self.shift_range
    r, w = self.num_read_heads, self.num_write_heads
    inputs = _checks.as_float_array("inputs", inputs)
    if inputs.ndim < 1:
      raise ValueError(f"argument `inputs`: expected shape [..., features_in], got {list(inputs.shape)}")
    batch = inputs.shape[:-1]
    expected = {"memory": batch + (n, m), "read_weights": batch + (r, n),
                "write_weights": batch + (w, n), "reads": batch + (r, m)}
    for name, shape in expected.items():
      got = getattr(carry, name).shape
      if tuple(got) != shape:
        raise ValueError(f"argument `carry.{name}`: expected shape {list(shape)} "
                         f"(inputs batch axes {list(batch)}), got {list(got)}")

    memory = carry.memory
    if self.memory_init == "learned":
      learned = self.param("memory_init", nn.initializers.constant(MEMORY_INIT_CONSTANT), (n, m),
                           self.param_dtype)
      memory = jnp.where((carry.step == 0)[..., None, None], learned, memory)

    # 1-2. Controller.
    ctrl_in = jnp.concatenate([inputs, carry.reads.reshape(batch + (r * m,))], axis=-1)
    if self.controller == "lstm":
      ctrl_state, h = nn.OptimizedLSTMCell(self.controller_features, param_dtype=self.param_dtype,
                                           name="controller")(carry.controller, ctrl_in)
    else:
      ctrl_state = ()
      h = nn.tanh(nn.Dense(self.controller_features, param_dtype=self.param_dtype,
                           name="controller")(ctrl_in))

    # 3. Head parameters: [key M, β, g, s 2K+1, γ] per head; write heads add [e M, a M].
    addr_size = m + 3 + (2 * k + 1)
    addr = nn.Dense((r + w) * addr_size, param_dtype=self.param_dtype, name="addressing")(h)
    addr = addr.reshape(batch + (r + w, addr_size))
    key_vec = addr[..., :m]
    beta = jax.nn.softplus(addr[..., m])
    gate = jax.nn.sigmoid(addr[..., m + 1])
    gamma = 1.0 + jax.nn.softplus(addr[..., m + 2])
    shifts = jax.nn.softmax(addr[..., m + 3:], axis=-1)
    ea = nn.Dense(w * 2 * m, param_dtype=self.param_dtype, name="erase_add")(h)
    ea = ea.reshape(batch + (w, 2 * m))
    erase = jax.nn.sigmoid(ea[..., :m])
    add = jnp.tanh(ea[..., m:])

    # 4-5. Addressing, read, write: written for one example, vmapped over heads and batch.
    def memory_step(mem, w_prev, key_vec, beta, gate, shifts, gamma, erase, add):
      weights = jax.vmap(addressing.ntm_address, in_axes=(None, 0, 0, 0, 0, 0, 0))(
          mem, key_vec, beta, gate, shifts, gamma, w_prev)
      read_w, write_w = weights[:r], weights[r:]
      reads = jax.vmap(memory_lib.read, in_axes=(None, 0))(mem, read_w)
      if w == 1:
        new_mem = memory_lib.write(mem, write_w[0], erase[0], add[0])
      else:
        new_mem = memory_lib.write_heads(mem, write_w, erase, add)
      return new_mem, read_w, write_w, reads

    for _ in batch:
      memory_step = jax.vmap(memory_step)
    w_prev = jnp.concatenate([carry.read_weights, carry.write_weights], axis=-2)
    new_mem, read_w, write_w, reads = memory_step(memory, w_prev, key_vec, beta, gate, shifts,
                                                  gamma, erase, add)

    # 6. Output.
    out_in = jnp.concatenate([h, reads.reshape(batch + (r * m,))], axis=-1)
    logits = nn.Dense(self.features, param_dtype=self.param_dtype, name="output")(out_in)
    new_carry = NTMState(ctrl_state, new_mem, read_w, write_w, reads, carry.step + 1)
    if self.return_state:
      return new_carry, (logits, new_carry)
    return new_carry, logits


def trajectory(cell: NTMCell, variables, inputs: jax.Array, *, initial_carry: NTMState | None = None,
               rng: jax.Array | None = None) -> tuple[jax.Array, NTMState]:
  """Runs ``nn.RNN(cell)`` and returns the logits and the state at every step.

  Use it to plot read/write weightings over time.

  Args:
    cell: the :class:`NTMCell` the variables were created for (inside ``nn.RNN``).
    variables: variables of ``nn.RNN(cell)``.
    inputs: [..., T, I] inputs (time on the second-to-last axis).
    initial_carry: optional initial state.
    rng: rng for ``initialize_carry`` (``memory_init='random'``).

  Returns:
    ``(logits [..., T, features], states)`` where every leaf of ``states`` has
    a time axis after the batch axes, e.g. ``states.read_weights`` [..., T, R, N].
  """
  model = nn.RNN(cell.clone(return_state=True))
  logits, states = model.apply(variables, inputs, initial_carry=initial_carry,
                               init_key=rng)
  return logits, states
