"""Memory-augmented neural network with LRUA (Santoro et al. 2016) as a Flax RNN cell.

Santoro, Bartunov, Botvinick, Wierstra & Lillicrap 2016, *Meta-Learning with
Memory-Augmented Neural Networks* (ICML), §3. ``MANNCell`` owns the
parameterised parts — an LSTM controller, the named projections from its
output to every head's key k, add vector a and write gate α, and the output layer — and calls the pure
single-example functions of :mod:`memjax.addressing` and :mod:`memjax.memory`
for the rest. The memory logic is written once, for one example, vmapped over
the heads and over the flattened batch axes.

One step, for input x_t and the previous state (R heads, N slots of width M):

1. controller input [x_t, r_{t−1}] (all R previous read vectors), LSTM output h_t;
2. per head h: read key k_{h,t} = tanh(W_k h_t + b_k) ∈ [−1, 1]^M, add vector
   a_{h,t} = tanh(W_a h_t + b_a) ∈ [−1, 1]^M (``write='add'``, the default; the
   key itself with ``write='key'``) and a scalar write gate logit α_h = W_α h_t + b_α;
3. least-used weights from the previous usage, with n = R (the paper's "n set
   to the number of reads"): w^lu_{t−1} = least_used(w^u_{t−1}, R);
4. write weights per head (paper eq. for w^w):
   w^w_{h,t} = σ(α_h) w^r_{h,t−1} + (1 − σ(α_h)) w^lu_{t−1};
5. LRUA write: the single least-used slot, least_used(w^u_{t−1}, 1), is set to
   zero, then M_t(i) = M_{t−1}(i) + Σ_h w^w_{h,t}(i) a_{h,t};
6. content-only reads from the *new* memory, no key strength β (paper eq. for
   w^r): w^r_{h,t}(i) = softmax_i(K(k_{h,t}, M_t(i))), K = cosine similarity;
   r_{h,t} = Σ_i w^r_{h,t}(i) M_t(i);
7. usage: w^u_t = γ w^u_{t−1} + Σ_h w^r_{h,t} + Σ_h w^w_{h,t} (γ = usage_decay);
8. output logits = linear([h_t, r_{1..R,t}]).

Choices the paper leaves open, and why:

* What is written. The paper writes the read key k_t itself; both public
  implementations that reproduce its Table 1 (snowkylin/ntm with its default
  ``k_strategy='separate'``, tristandeleu/ntm-one-shot) write a separate add
  vector a_t and read with k_t. Writing k_t and then reading from the memory
  just written makes every head's read favour the fresh copy of the current
  image rather than the slots written at the class's earlier presentations;
  with a_t the model took off about 2× earlier in small probes, so ``'add'``
  is the default and ``'key'`` keeps the paper-literal form.
* Keys and add vectors are tanh (bounded), which bounds the memory's growth;
  cosine addressing does not care about the key's scale.
* Two least-used computations. The write weighting uses w^lu with n = R,
  exactly as §3 defines it (an indicator of the R least-used slots, shared by
  all heads), while only the *single* least-used slot is cleared before
  writing ("the least used memory location is computed from w^u_{t−1} and is
  set to zero"): clearing R slots per step would erase R slots that other
  heads may still read from, while one cleared slot per step is what the text
  describes and is the common reading of it (e.g. snowkylin/ntm).
* Initial state (step 0): memory constant 1e-6 (Collier & Beel 2018); read
  weightings one-hot at *distinct* slots (head h at slot h), so the heads'
  first LRUA writes differ and the rows of memory stop being identical; usage
  zero (no slot has been used yet), so the first least-used slots are 0..R−1
  (ties go to the lower index); read vectors are the reads of the initial
  memory with those weightings (1e-6 everywhere).

Example::

  cell = MANNCell(features=5)
  model = nn.RNN(cell)
  params = model.init(key, x)          # x: [batch, time, 400 + 5]
  logits = model.apply(params, x)      # [batch, time, 5]

Also here: :class:`LSTMCell`, the paper's plain-LSTM baseline usable the same way
(``nn.RNN(LSTMCell(features=5))``), and :func:`unroll`, a faster equivalent of
``nn.RNN(MANNCell)``. The LRUA step itself is :func:`memjax.memory.lrua_step`;
the task's loss and per-instance accuracy are in :mod:`memjax.tasks.omniglot`
(re-exported here: :func:`mann_loss`, :func:`per_instance_accuracy`, ...).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from memjax import _cell, _checks
from memjax import memory as memory_lib
from memjax._cell import MEMORY_INIT_CONSTANT, trajectory
from memjax.memory import _lrua_forward, _lrua_update, lrua_step  # noqa: F401 (the LRUA step's home)
from memjax.tasks.omniglot import (  # noqa: F401 (the task's labels, loss and metrics)
    DEFAULT_INSTANCES,
    LABEL_MODES,
    STRING_LENGTH,
    STRING_SYMBOLS,
    correct_predictions,
    mann_loss,
    per_instance_accuracy,
    per_instance_counts,
)

WRITE_MODES = ("add", "key")


class MANNState(NamedTuple):
  """The recurrent state of a :class:`MANNCell` (leading batch axes ``...``).

  Attributes:
    controller: the LSTM carry ``(c, h)``, each [..., C].
    memory: [..., N, M] memory M_t.
    usage: [..., N] usage weights w^u_t.
    read_weights: [..., R, N] read weightings w^r_t.
    write_weights: [..., R, N] write weightings w^w_t (zero at step 0).
    reads: [..., R, M] read vectors r_t.
    step: [...] int32 number of steps taken.
  """
  controller: Any
  memory: jax.Array
  usage: jax.Array
  read_weights: jax.Array
  write_weights: jax.Array
  reads: jax.Array
  step: jax.Array


def _lrua(carry: MANNState, keys: jax.Array, adds: jax.Array, alpha: jax.Array, decay: jax.Array):
  """:func:`memjax.memory.lrua_step` over the leading batch axes of ``carry``
  (keys, adds [..., R, M], alpha [..., R]; decay [] shared)."""
  batch = carry.memory.shape[:-2]
  return _cell.over_batch(memory_lib.lrua_step, batch, carry.memory, carry.usage, carry.read_weights,
                          keys, adds, alpha, decay, in_axes=(0, 0, 0, 0, 0, 0, None))


class MANNCell(_cell.MemoryCell):
  """MANN with least-recently-used access (Santoro et al. 2016), for ``flax.linen.RNN``.

  Attributes:
    features: size of the output logits (5 for 5-way one-hot labels, 25 for
      5-character string labels).
    memory_size: N, number of memory slots (128 in the paper).
    word_size: M, width of a slot (40).
    num_read_heads: R, the number of read heads (4); each head also writes
      through LRUA.
    controller_features: LSTM controller width (200).
    usage_decay: γ in the usage update (0.95).
    write: what each head writes. ``'add'`` (default): a separate add vector
      a_t = tanh(W_a h_t + b_a), read with the key k_t — what both public
      implementations that reproduce the paper's Table 1 do (snowkylin/ntm's
      default ``k_strategy='separate'``, tristandeleu/ntm-one-shot's ``a_t``).
      ``'key'``: the paper-literal form, the key k_t itself is written; reads
      from the just-written memory then favour the fresh copy of the current
      image, and in small-model probes this form took off about 2× later.
    return_state: when True the cell outputs ``(logits, state)`` at every step,
      so ``nn.RNN`` returns the state trajectory (see :func:`trajectory`).
  """
  features: int
  memory_size: int = 128
  word_size: int = 40
  num_read_heads: int = 4
  controller_features: int = 200
  usage_decay: float = 0.95
  write: str = "add"
  return_state: bool = False
  param_dtype: Any = jnp.float32

  _POSITIVE_INTS = ("features", "memory_size", "word_size", "num_read_heads", "controller_features")

  def _validate_more(self):
    if self.num_read_heads > self.memory_size:
      raise ValueError(f"argument `num_read_heads`: expected at most memory_size="
                       f"{self.memory_size} heads (initial read weightings sit at distinct slots), "
                       f"got {self.num_read_heads}")
    if self.write not in WRITE_MODES:
      raise ValueError(f"argument `write`: expected one of {WRITE_MODES}, got {self.write!r}")
    decay = self.usage_decay
    if isinstance(decay, bool) or not isinstance(decay, (int, float, np.floating)) or not 0 <= decay <= 1:
      raise ValueError(f"argument `usage_decay`: expected a number in [0, 1], got {decay!r}")

  @property
  def _num_reads(self) -> int:
    return self.num_read_heads

  def _carry_shapes(self, batch):
    n, m, r = self.memory_size, self.word_size, self.num_read_heads
    return {"memory": batch + (n, m), "usage": batch + (n,), "read_weights": batch + (r, n),
            "write_weights": batch + (r, n), "reads": batch + (r, m)}

  def _head_projections(self, h: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Named head projections of the controller output h [..., C].

    Returns ``(keys [..., R, M], adds [..., R, M], alpha [..., R])``:
    k = tanh(W_k h + b_k), a = tanh(W_a h + b_a) (the key itself when
    ``write='key'``), α = W_α h + b_α.
    """
    r, m = self.num_read_heads, self.word_size
    batch = h.shape[:-1]
    dense = lambda size, name: self._dense(h, size, name)
    keys = jnp.tanh(dense(r * m, "key")).reshape(batch + (r, m))
    adds = jnp.tanh(dense(r * m, "add")).reshape(batch + (r, m)) if self.write == "add" else keys
    alpha = dense(r, "gate")
    return keys, adds, alpha

  @nn.nowrap
  def initialize_carry(self, rng: jax.Array, input_shape: tuple[int, ...]) -> MANNState:
    """Initial state for inputs of shape ``input_shape`` = ``(*batch, features_in)``.

    Memory 1e-6 everywhere, usage 0, head h's read weighting one-hot at slot h,
    write weightings 0, read vectors r_0 = w^r_0 M_0.
    """
    self._validate()
    batch = tuple(input_shape[:-1])
    n, m, r = self.memory_size, self.word_size, self.num_read_heads
    mem = jnp.full(batch + (n, m), MEMORY_INIT_CONSTANT, self.param_dtype)
    ctrl = self._initial_lstm_carry(rng, batch)
    read_w = jnp.broadcast_to(jnp.eye(r, n, dtype=self.param_dtype), batch + (r, n))
    reads = jnp.full(batch + (r, m), MEMORY_INIT_CONSTANT, self.param_dtype)
    return MANNState(ctrl, mem, jnp.zeros(batch + (n,), self.param_dtype), read_w,
                     jnp.zeros(batch + (r, n), self.param_dtype), reads, jnp.zeros(batch, jnp.int32))

  @nn.compact
  def __call__(self, carry: MANNState, inputs: jax.Array):
    """One MANN step.

    Args:
      carry: :class:`MANNState` with leading batch axes ``...``.
      inputs: [..., I] inputs x_t (for Omniglot: image then previous label).

    Returns:
      ``(new_carry, logits)`` with logits [..., features]; or
      ``(new_carry, (logits, new_carry))`` when ``return_state``.
    """
    inputs, batch = self._check_step(carry, inputs)

    # 1. Controller on [x_t, r_{t−1}].
    ctrl_in = self._controller_input(inputs, carry.reads, batch)
    ctrl_state, h = self._lstm_controller(carry.controller, ctrl_in)

    # 2. Per head: read key k, add vector a (tanh, [M] each) and write-gate logit α.
    keys, adds, alpha = self._head_projections(h)

    # 3-7. LRUA on one example, vmapped over the flattened batch axes.
    new_mem, usage, read_w, write_w, reads = _lrua(
        carry, keys, adds, alpha, jnp.asarray(self.usage_decay, self.param_dtype))

    # 8. Output.
    logits = self._output(h, reads, batch)
    return self._emit(MANNState(ctrl_state, new_mem, usage, read_w, write_w, reads, carry.step + 1), logits)


def _dense(params, x: jax.Array) -> jax.Array:
  return x @ params["kernel"] + params["bias"]


def unroll(cell: MANNCell, variables, inputs: jax.Array) -> jax.Array:
  """The logits of ``nn.RNN(cell).apply(variables, inputs)``, computed faster.

  The same equations as :class:`MANNCell` stepped by ``nn.RNN`` (tested equal,
  values and gradients), arranged for speed: the controller's non-recurrent
  input projection W_x x_t (the image and the previous label, 405 of the
  controller's 565 inputs in the paper's configuration) is one matmul over all
  T steps before the ``lax.scan``, and the output layer one matmul after it, so
  the weight gradients of those two are single matmuls too; only the recurrent
  parts (W_r r_{t−1} + W_h h_{t−1}, the heads, LRUA) stay in the loop, whose
  weight gradients autodiff accumulates step by step in the backward loop.
  (Forming those after the loop as well, through a ``custom_vjp`` around the
  scan, was measured no faster on a 2-core AMD EPYC: 1.30× vs 1.28× over the
  ``nn.RNN`` step at batch 16.)

  Args:
    cell: the :class:`MANNCell` the variables were made for (inside ``nn.RNN``).
    variables: variables of ``nn.RNN(cell)`` (``{"params": {"cell": ...}}``).
    inputs: [..., T, I] inputs, time on the second-to-last axis.

  Returns:
    [..., T, features] logits.
  """
  inputs = _checks.as_float_array("inputs", inputs)
  if inputs.ndim < 2:
    raise ValueError(f"argument `inputs`: expected shape [..., T, features_in], got {list(inputs.shape)}")
  p = variables["params"]["cell"]
  ctrl = p["controller"]
  r, m = cell.num_read_heads, cell.word_size
  num_in = inputs.shape[-1]
  expected_in = ctrl["ii"]["kernel"].shape[0] - r * m
  if num_in != expected_in:
    raise ValueError(f"argument `inputs`: expected {expected_in} features per step (the width the "
                     f"variables were made for), got {num_in}")
  gates = "ifgo"
  w_x = jnp.concatenate([ctrl[f"i{g}"]["kernel"][:num_in] for g in gates], axis=-1)  # [I, 4C]
  w_rh = jnp.concatenate([  # [R·M + C, 4C]: previous reads, then previous h
      jnp.concatenate([ctrl[f"i{g}"]["kernel"][num_in:] for g in gates], axis=-1),
      jnp.concatenate([ctrl[f"h{g}"]["kernel"] for g in gates], axis=-1)], axis=0)
  bias = jnp.concatenate([ctrl[f"h{g}"]["bias"] for g in gates])
  x_proj = jnp.moveaxis(inputs @ w_x + bias, -2, 0)  # [T, ..., 4C]
  batch = inputs.shape[:-2]
  decay = jnp.asarray(cell.usage_decay, cell.param_dtype)

  def step(carry: MANNState, xw):
    c, h = carry.controller
    z = xw + jnp.concatenate([carry.reads.reshape(batch + (r * m,)), h], axis=-1) @ w_rh
    i, f, g, o = jnp.split(z, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    keys = jnp.tanh(_dense(p["key"], h)).reshape(batch + (r, m))
    adds = jnp.tanh(_dense(p["add"], h)).reshape(batch + (r, m)) if cell.write == "add" else keys
    alpha = _dense(p["gate"], h)
    mem, usage, read_w, write_w, reads = _lrua(carry, keys, adds, alpha, decay)
    new = MANNState((c, h), mem, usage, read_w, write_w, reads, carry.step + 1)
    return new, jnp.concatenate([h, reads.reshape(batch + (r * m,))], axis=-1)

  carry = cell.initialize_carry(jax.random.key(0), batch + (num_in,))  # deterministic, key unused
  _, outs = jax.lax.scan(step, carry, x_proj)  # [T, ..., C + R·M]
  return _dense(p["output"], jnp.moveaxis(outs, 0, -2))


class LSTMCell(nn.RNNCellBase):
  """The paper's LSTM baseline: an LSTM with a linear output layer, for ``nn.RNN``.

  logits_t = W [h_t] + b, with (c_t, h_t) = LSTM((c_{t−1}, h_{t−1}), x_t).

  Attributes:
    features: size of the output logits.
    controller_features: LSTM width (200 in Santoro et al. 2016).
  """
  features: int
  controller_features: int = 200
  param_dtype: Any = jnp.float32

  @property
  def num_feature_axes(self) -> int:
    return 1

  @nn.nowrap
  def initialize_carry(self, rng: jax.Array, input_shape: tuple[int, ...]):
    """Zero LSTM carry ``(c, h)``, each [..., controller_features]."""
    _checks.check_positive_int("features", self.features)
    _checks.check_positive_int("controller_features", self.controller_features)
    return nn.OptimizedLSTMCell(self.controller_features, param_dtype=self.param_dtype,
                                parent=None).initialize_carry(rng, tuple(input_shape[:-1]) + (1,))

  @nn.compact
  def __call__(self, carry, inputs: jax.Array):
    """One step: inputs [..., I] → ``(carry, logits [..., features])``."""
    carry, h = nn.OptimizedLSTMCell(self.controller_features, param_dtype=self.param_dtype,
                                    name="controller")(carry, inputs)
    return carry, nn.Dense(self.features, param_dtype=self.param_dtype, name="output")(h)
