"""The Neural Turing Machine (Graves, Wayne & Danihelka 2014) as a Flax RNN cell.

``NTMCell`` owns the parameterised parts — the controller and the linear map
from the controller output to every head's parameters — and calls the pure
functions of :mod:`memjax.addressing` and :mod:`memjax.memory` for the rest.
Heads are vectorised with ``jax.vmap``, as is the batch, so the memory logic is
written once, for one example and one head.

One step, for inputs x_t and the previous state:

1. controller input = [x_t, r_{t−1}] (all previous read vectors);
2. controller output h_t (LSTM or feed-forward);
3. every head's parameters from h_t, each its own linear projection named
   after its symbol: key k (``key``), β = softplus (``beta``), g = σ
   (``gate``), s = softmax over 2K+1 offsets (``shift``), γ = 1 + softplus
   (``gamma``); write heads also emit erase e = σ (``erase``) and add
   a = tanh (``add``);
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

from typing import Any, Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from memjax import _cell, addressing
from memjax import memory as memory_lib
from memjax._cell import MEMORY_INIT_CONSTANT, trajectory

__all__ = ["MEMORY_INIT_CONSTANT", "NTMCell", "NTMHeads", "NTMState", "convert_legacy_params", "is_legacy",
           "to_legacy_params", "trajectory"]

# The head projections, in the order of the paper's §3.3.1; write heads also have "erase", "add".
HEAD_PARAMS = ("key", "beta", "gate", "shift", "gamma")
WRITE_PARAMS = ("erase", "add")
# The single Dense layers of earlier NTMCell parameter trees (see convert_legacy_params).
LEGACY_PARAMS = ("addressing", "erase_add")


class NTMState(NamedTuple):
  """The recurrent state of an :class:`NTMCell`; every field has the leading batch axes ``...``."""
  controller: Any  # the controller's carry: (c, h), each [..., C], for an LSTM; () for feed-forward
  memory: jax.Array  # [..., N, M] memory matrix M_t
  read_weights: jax.Array  # [..., R, N] read weightings w^r_t
  write_weights: jax.Array  # [..., W, N] write weightings w^w_t
  reads: jax.Array  # [..., R, M] read vectors r_t
  step: jax.Array  # [...] int32 number of steps taken


class NTMHeads(NamedTuple):
  """Every head's parameters at one step (Graves et al. 2014, §3.3), H = R + W heads, read heads first.

  Attributes:
    key: [..., H, M] key k (eq. 5).
    beta: [..., H] key strength β ≥ 0 (eq. 5).
    gate: [..., H] interpolation gate g ∈ (0, 1) (eq. 7).
    shift: [..., H, 2K+1] shift weighting s over offsets −K..K (eq. 8).
    gamma: [..., H] sharpening exponent γ ≥ 1 (eq. 9).
    erase: [..., W, M] erase vectors e ∈ (0, 1)^M of the write heads (eq. 3).
    add: [..., W, M] add vectors a ∈ (−1, 1)^M of the write heads (eq. 4).
  """
  key: jax.Array
  beta: jax.Array
  gate: jax.Array
  shift: jax.Array
  gamma: jax.Array
  erase: jax.Array
  add: jax.Array


class NTMCell(_cell.MemoryCell):
  """Neural Turing Machine cell, usable in ``flax.linen.RNN``.

  Attributes:
    features: size of the output logits.
    memory_size: N, number of memory slots.
    word_size: M, width of a slot.
    memory_init: ``'constant'`` (every entry 1e-6; Collier & Beel 2018),
      ``'random'`` (N(0, 0.1²), drawn from the rng given to
      ``initialize_carry``) or ``'learned'`` (a parameter, initialised at 1e-6).
      Initial read/write weightings are one-hot at slot 0, which breaks the
      symmetry between rows.
    controller: ``'lstm'`` or ``'feedforward'``.
    controller_features: controller width.
    num_read_heads: R.
    num_write_heads: W.
    shift_range: K; heads shift by −K..K slots.
    return_state: when True the cell outputs ``(logits, state)`` at every step,
      so ``nn.RNN`` returns the whole state trajectory (see :func:`trajectory`).
  """
  features: int
  # Memory: N slots of width M, and its initial value.
  memory_size: int = 128
  word_size: int = 20
  memory_init: str = "constant"
  # Controller.
  controller: str = "lstm"
  controller_features: int = 100
  # Heads.
  num_read_heads: int = 1
  num_write_heads: int = 1
  shift_range: int = 1
  return_state: bool = False
  param_dtype: Any = jnp.float32

  _POSITIVE_INTS = ("features", "memory_size", "word_size", "controller_features", "num_read_heads",
                    "num_write_heads")

  def _validate_more(self):
    if not isinstance(self.shift_range, int) or self.shift_range < 0:
      raise ValueError(f"argument `shift_range`: expected an int >= 0, got {self.shift_range!r}")
    if self.controller not in ("lstm", "feedforward"):
      raise ValueError(f"argument `controller`: expected 'lstm' or 'feedforward', got {self.controller!r}")
    if self.memory_init not in ("constant", "random", "learned"):
      raise ValueError("argument `memory_init`: expected 'constant', 'random' or 'learned', "
                       f"got {self.memory_init!r}")

  @property
  def _num_reads(self) -> int:
    return self.num_read_heads

  def _carry_shapes(self, batch):
    n, m, r, w = self.memory_size, self.word_size, self.num_read_heads, self.num_write_heads
    return {"memory": batch + (n, m), "read_weights": batch + (r, n),
            "write_weights": batch + (w, n), "reads": batch + (r, m)}

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
    ctrl = self._initial_lstm_carry(rng, batch) if self.controller == "lstm" else ()
    one_hot = jax.nn.one_hot(0, n, dtype=self.param_dtype)
    read_w = jnp.broadcast_to(one_hot, batch + (r, n))
    write_w = jnp.broadcast_to(one_hot, batch + (w, n))
    reads = jnp.broadcast_to(mem[..., None, 0, :], batch + (r, m))
    return NTMState(ctrl, mem, read_w, write_w, reads, jnp.zeros(batch, jnp.int32))

  def _heads(self, h: jax.Array) -> NTMHeads:
    """Every head's parameters from the controller output h [..., C] (Graves et al. 2014, §3.3.1).

    Each quantity is its own linear projection of h, for all H = R + W heads
    at once (read heads first):
    k = W_k h + b_k; β = softplus(W_β h + b_β); g = σ(W_g h + b_g);
    s = softmax(W_s h + b_s) over 2K+1 offsets; γ = 1 + softplus(W_γ h + b_γ);
    for the W write heads e = σ(W_e h + b_e) and a = tanh(W_a h + b_a).
    """
    m, s = self.word_size, 2 * self.shift_range + 1
    heads, w = self.num_read_heads + self.num_write_heads, self.num_write_heads
    batch = h.shape[:-1]
    proj = lambda name, num, size: self._dense(h, num * size, name).reshape(batch + (num, size))
    return NTMHeads(
        key=proj("key", heads, m),
        beta=jax.nn.softplus(proj("beta", heads, 1)[..., 0]),
        gate=jax.nn.sigmoid(proj("gate", heads, 1)[..., 0]),
        shift=jax.nn.softmax(proj("shift", heads, s), axis=-1),
        gamma=1.0 + jax.nn.softplus(proj("gamma", heads, 1)[..., 0]),
        erase=jax.nn.sigmoid(proj("erase", w, m)),
        add=jnp.tanh(proj("add", w, m)))

  @nn.nowrap
  def _memory_step(self, memory: jax.Array, w_prev: jax.Array, heads: NTMHeads):
    """Addressing, read and write for one example (Graves et al. 2014, eqs. 2–9).

    Args:
      memory: [N, M] memory M_{t−1}.
      w_prev: [H, N] previous weightings, read heads first.
      heads: :class:`NTMHeads` of this example (no batch axes).

    Returns:
      ``(M_t [N, M], read weightings [R, N], write weightings [W, N], reads [R, M])``.
    """
    r, w = self.num_read_heads, self.num_write_heads
    weights = jax.vmap(addressing.ntm_address, in_axes=(None, 0, 0, 0, 0, 0, 0))(
        memory, heads.key, heads.beta, heads.gate, heads.shift, heads.gamma, w_prev)
    read_w, write_w = weights[:r], weights[r:]
    reads = jax.vmap(memory_lib.read, in_axes=(None, 0))(memory, read_w)
    if w == 1:
      new_mem = memory_lib.write(memory, write_w[0], heads.erase[0], heads.add[0])
    else:
      new_mem = memory_lib.write_heads(memory, write_w, heads.erase, heads.add)
    return new_mem, read_w, write_w, reads

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
    if not self.is_initializing() and any(self.has_variable("params", n) for n in LEGACY_PARAMS):
      raise ValueError("argument `variables`: NTMCell parameters in the old layout (one "
                       f"{LEGACY_PARAMS[0]!r} and one {LEGACY_PARAMS[1]!r} Dense); convert them with "
                       "memjax.ntm.convert_legacy_params(cell, variables)")
    inputs, batch = self._check_step(carry, inputs)
    n, m = self.memory_size, self.word_size

    memory = carry.memory
    if self.memory_init == "learned":
      learned = self.param("memory_init", nn.initializers.constant(MEMORY_INIT_CONSTANT), (n, m),
                           self.param_dtype)
      memory = jnp.where((carry.step == 0)[..., None, None], learned, memory)

    # 1-2. Controller.
    ctrl_in = self._controller_input(inputs, carry.reads, batch)
    if self.controller == "lstm":
      ctrl_state, h = self._lstm_controller(carry.controller, ctrl_in)
    else:
      ctrl_state = ()
      h = nn.tanh(self._dense(ctrl_in, self.controller_features, "controller"))

    # 3. Head parameters, one named projection each.
    heads = self._heads(h)

    # 4-5. Addressing, read, write: written for one example, vmapped over heads and batch.
    w_prev = jnp.concatenate([carry.read_weights, carry.write_weights], axis=-2)
    new_mem, read_w, write_w, reads = _cell.over_batch(self._memory_step, batch, memory, w_prev, heads)

    # 6. Output.
    logits = self._output(h, reads, batch)
    return self._emit(NTMState(ctrl_state, new_mem, read_w, write_w, reads, carry.step + 1), logits)


def _is_legacy(node) -> bool:
  return isinstance(node, Mapping) and all(k in node for k in LEGACY_PARAMS)


def _is_named(node) -> bool:
  return isinstance(node, Mapping) and all(k in node for k in HEAD_PARAMS + WRITE_PARAMS)


def _legacy_columns(cell: NTMCell) -> dict[str, tuple[int, dict[str, tuple[int, int]]]]:
  """Old Dense name -> (heads, {new name: its columns within one head's block})."""
  cell = cell.cell if isinstance(cell, nn.RNN) else cell
  if not isinstance(cell, NTMCell):
    raise ValueError(f"argument `cell`: expected an NTMCell, got {type(cell).__name__}")
  m, s = cell.word_size, 2 * cell.shift_range + 1
  # Per head: [k (M), β, g, γ, s (2K+1)]; per write head: [e (M), a (M)].
  return {"addressing": (cell.num_read_heads + cell.num_write_heads,
                         {"key": (0, m), "beta": (m, m + 1), "gate": (m + 1, m + 2),
                          "gamma": (m + 2, m + 3), "shift": (m + 3, m + 3 + s)}),
          "erase_add": (cell.num_write_heads, {"erase": (0, m), "add": (m, 2 * m)})}


def _split_legacy(params: Mapping, layout: dict) -> dict:
  """One parameter dict: the old "addressing"/"erase_add" Dense → the named projections."""
  out = {k: v for k, v in params.items() if k not in LEGACY_PARAMS}
  for old, (num, parts) in layout.items():
    width = num * max(b for _, b in parts.values())
    for leaf in ("kernel", "bias"):
      x = params[old][leaf]
      if x.shape[-1] != width:
        raise ValueError(f"argument `tree`: {old}/{leaf} has shape {list(x.shape)}, expected "
                         f"{width} columns for this NTMCell")
      x = x.reshape(x.shape[:-1] + (num, -1))
      for name, (a, b) in parts.items():
        part = x[..., a:b]
        out.setdefault(name, {})[leaf] = part.reshape(part.shape[:-2] + (-1,))
  return out


def _merge_named(params: Mapping, layout: dict) -> dict:
  """The inverse of :func:`_split_legacy`."""
  out = {k: v for k, v in params.items() if k not in HEAD_PARAMS + WRITE_PARAMS}
  for old, (num, parts) in layout.items():
    out[old] = {}
    for leaf in ("kernel", "bias"):
      blocks = [params[name][leaf].reshape(params[name][leaf].shape[:-1] + (num, -1))
                for name in sorted(parts, key=lambda n: parts[n][0])]
      x = jnp.concatenate(blocks, axis=-1)
      out[old][leaf] = x.reshape(x.shape[:-2] + (-1,))
  return out


def convert_legacy_params(cell: NTMCell, tree):
  """Converts NTMCell parameters of the old layout to the named head projections.

  Earlier NTMCells computed every head's parameters with one Dense layer
  ``addressing`` (per head, columns [k (M), β, g, γ, s (2K+1)]) and the write
  heads' erase and add vectors with one ``erase_add`` (per write head,
  [e (M), a (M)]). This splits their kernel and bias columns into the
  projections ``key``, ``beta``, ``gate``, ``shift``, ``gamma``, ``erase``
  and ``add``: the parameters compute exactly the same function.

  Works on any pytree holding such parameter dicts: ``nn.RNN`` variables
  (``{"params": {"cell": ...}}``), a cell's own params, or a whole
  :class:`memjax.training.TrainState`, whose optimiser moments mirror the
  parameters; everything else is returned as is. An orbax checkpoint of an
  old run loads as::

    like = training.init_state(params, optimizer)       # params of the new layout
    old = training.load_checkpoint(workdir, to_legacy_params(cell, like))
    state = convert_legacy_params(cell, old)

  Args:
    cell: the :class:`NTMCell` (or ``nn.RNN`` of it) the parameters belong to.
    tree: a pytree.

  Returns:
    The same tree with every old-layout parameter dict converted.

  Raises:
    ValueError: an old-layout dict whose shapes do not fit ``cell``.
  """
  layout = _legacy_columns(cell)
  return jax.tree.map(lambda n: _split_legacy(n, layout) if _is_legacy(n) else n, tree,
                      is_leaf=_is_legacy)


def to_legacy_params(cell: NTMCell, tree):
  """The inverse of :func:`convert_legacy_params`: named projections → the old layout.

  For restoring an old checkpoint, whose tree structure is the old one (see
  :func:`convert_legacy_params`).
  """
  layout = _legacy_columns(cell)
  return jax.tree.map(lambda n: _merge_named(n, layout) if _is_named(n) else n, tree, is_leaf=_is_named)


def is_legacy(tree) -> bool:
  """Whether ``tree`` holds NTMCell parameters in the old one-Dense layout
  (see :func:`convert_legacy_params`)."""
  return any(_is_legacy(n) for n in jax.tree.leaves(tree, is_leaf=_is_legacy))
