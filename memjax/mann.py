"""Memory-augmented neural network with LRUA (Santoro et al. 2016) as a Flax RNN cell.

Santoro, Bartunov, Botvinick, Wierstra & Lillicrap 2016, *Meta-Learning with
Memory-Augmented Neural Networks* (ICML), §3. ``MANNCell`` owns the
parameterised parts — an LSTM controller, the map from its output to every
head's key and write gate, and the output layer — and calls the pure
single-example functions of :mod:`memjax.addressing` and :mod:`memjax.memory`
for the rest. The memory logic is written once, for one example, vmapped over
the heads and over the flattened batch axes.

One step, for input x_t and the previous state (R heads, N slots of width M):

1. controller input [x_t, r_{t−1}] (all R previous read vectors), LSTM output h_t;
2. per head h: key k_{h,t} = tanh(W_k h_t + b_k) ∈ [−1, 1]^M and a scalar write
   gate logit α_h = W_α h_t + b_α;
3. least-used weights from the previous usage, with n = R (the paper's "n set
   to the number of reads"): w^lu_{t−1} = least_used(w^u_{t−1}, R);
4. write weights per head (paper eq. for w^w):
   w^w_{h,t} = σ(α_h) w^r_{h,t−1} + (1 − σ(α_h)) w^lu_{t−1};
5. LRUA write: the single least-used slot, least_used(w^u_{t−1}, 1), is set to
   zero, then M_t(i) = M_{t−1}(i) + Σ_h w^w_{h,t}(i) k_{h,t};
6. content-only reads from the *new* memory, no key strength β (paper eq. for
   w^r): w^r_{h,t}(i) = softmax_i(K(k_{h,t}, M_t(i))), K = cosine similarity;
   r_{h,t} = Σ_i w^r_{h,t}(i) M_t(i);
7. usage: w^u_t = γ w^u_{t−1} + Σ_h w^r_{h,t} + Σ_h w^w_{h,t} (γ = usage_decay);
8. output logits = linear([h_t, r_{1..R,t}]).

Choices the paper leaves open, and why:

* Keys are tanh (bounded): the same key is written to memory and used for
  reading, so bounding it bounds the memory's growth; cosine addressing does
  not care about its scale.
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
(``nn.RNN(LSTMCell(features=5))``); :func:`mann_loss`; and
:func:`per_instance_accuracy` (accuracy at the k-th presentation of a class, the
paper's Tables 1–2).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from memjax import _checks, addressing
from memjax import memory as memory_lib

MEMORY_INIT_CONSTANT = 1e-6
LABEL_MODES = ("onehot", "string")
STRING_LENGTH = 5   # characters per string label (Santoro et al. 2016, Table 2)
STRING_SYMBOLS = 5  # letters per character
DEFAULT_INSTANCES = (1, 2, 3, 4, 5, 10)


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


def lrua_step(memory: jax.Array, usage: jax.Array, read_weights_prev: jax.Array, keys: jax.Array,
              alpha: jax.Array, decay: jax.Array
              ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
  """One LRUA memory step for one example (Santoro et al. 2016, §3).

  w^lu_{t−1} = least_used(w^u_{t−1}, n=R);
  w^w_{h,t} = σ(α_h) w^r_{h,t−1} + (1 − σ(α_h)) w^lu_{t−1};
  M_t = LRUA write of M_{t−1} (least_used(w^u_{t−1}, 1) zeroed, then
  + Σ_h w^w_{h,t} k_hᵀ);
  w^r_{h,t} = softmax(cosine(k_h, M_t)); r_{h,t} = w^r_{h,t} M_t;
  w^u_t = γ w^u_{t−1} + Σ_h w^r_{h,t} + Σ_h w^w_{h,t}.

  Args:
    memory: [N, M] memory M_{t−1}.
    usage: [N] usage w^u_{t−1}.
    read_weights_prev: [R, N] read weightings w^r_{t−1}.
    keys: [R, M] keys k_t, one per head (used for writing and reading).
    alpha: [R] write-gate logits α.
    decay: [] usage decay γ.

  Returns:
    ``(memory [N, M], usage [N], read_weights [R, N], write_weights [R, N],
    reads [R, M])`` at step t.
  """
  r = read_weights_prev.shape[0]
  least_used = addressing.least_used(usage, r)  # [N], R ones
  clear = addressing.least_used(usage, 1)  # [N], one 1
  write_w = jax.vmap(addressing.lrua_write_weights, in_axes=(0, None, 0))(
      read_weights_prev, least_used, alpha)  # [R, N]
  new_memory = memory_lib.lrua_write(memory, write_w, keys, clear)
  read_w = jax.vmap(lambda k: jax.nn.softmax(addressing.cosine_similarity(new_memory, k)))(keys)
  reads = jax.vmap(memory_lib.read, in_axes=(None, 0))(new_memory, read_w)
  new_usage = addressing.update_usage(usage, read_w, write_w, decay)
  return new_memory, new_usage, read_w, write_w, reads


class MANNCell(nn.RNNCellBase):
  """MANN with least-recently-used access (Santoro et al. 2016), for ``flax.linen.RNN``.

  Attributes:
    features: size of the output logits (5 for 5-way one-hot labels, 25 for
      5-character string labels).
    memory_size: N, number of memory slots (128 in the paper).
    word_size: M, width of a slot (40).
    num_read_heads: R, the number of read heads (4); each head also writes
      its key through LRUA.
    controller_features: LSTM controller width (200).
    usage_decay: γ in the usage update (0.95).
    return_state: when True the cell outputs ``(logits, state)`` at every step,
      so ``nn.RNN`` returns the state trajectory (see :func:`trajectory`).
  """
  features: int
  memory_size: int = 128
  word_size: int = 40
  num_read_heads: int = 4
  controller_features: int = 200
  usage_decay: float = 0.95
  return_state: bool = False
  param_dtype: Any = jnp.float32

  def _validate(self):
    for name in ("features", "memory_size", "word_size", "num_read_heads", "controller_features"):
      _checks.check_positive_int(name, getattr(self, name))
    if self.num_read_heads > self.memory_size:
      raise ValueError(f"argument `num_read_heads`: expected at most memory_size="
                       f"{self.memory_size} heads (initial read weightings sit at distinct slots), "
                       f"got {self.num_read_heads}")
    decay = self.usage_decay
    if isinstance(decay, bool) or not isinstance(decay, (int, float, np.floating)) or not 0 <= decay <= 1:
      raise ValueError(f"argument `usage_decay`: expected a number in [0, 1], got {decay!r}")

  @property
  def num_feature_axes(self) -> int:
    return 1

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
    ctrl = nn.OptimizedLSTMCell(self.controller_features, param_dtype=self.param_dtype,
                                parent=None).initialize_carry(rng, batch + (1,))
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
    self._validate()
    n, m, r = self.memory_size, self.word_size, self.num_read_heads
    inputs = _checks.as_float_array("inputs", inputs)
    if inputs.ndim < 1:
      raise ValueError(f"argument `inputs`: expected shape [..., features_in], got {list(inputs.shape)}")
    batch = inputs.shape[:-1]
    expected = {"memory": batch + (n, m), "usage": batch + (n,), "read_weights": batch + (r, n),
                "write_weights": batch + (r, n), "reads": batch + (r, m)}
    for name, shape in expected.items():
      got = getattr(carry, name).shape
      if tuple(got) != shape:
        raise ValueError(f"argument `carry.{name}`: expected shape {list(shape)} "
                         f"(inputs batch axes {list(batch)}), got {list(got)}")

    # 1. Controller on [x_t, r_{t−1}].
    ctrl_in = jnp.concatenate([inputs, carry.reads.reshape(batch + (r * m,))], axis=-1)
    ctrl_state, h = nn.OptimizedLSTMCell(self.controller_features, param_dtype=self.param_dtype,
                                         name="controller")(carry.controller, ctrl_in)

    # 2. Per head: key k (tanh) [M] and write-gate logit α [].
    heads = nn.Dense(r * (m + 1), param_dtype=self.param_dtype, name="heads")(h)
    heads = heads.reshape(batch + (r, m + 1))
    keys = jnp.tanh(heads[..., :m])
    alpha = heads[..., m]

    # 3-7. LRUA on one example, vmapped over the flattened batch axes.
    flat = lambda x, tail: x.reshape((-1,) + tail)
    step = jax.vmap(lrua_step, in_axes=(0, 0, 0, 0, 0, None))
    new_mem, usage, read_w, write_w, reads = step(
        flat(carry.memory, (n, m)), flat(carry.usage, (n,)), flat(carry.read_weights, (r, n)),
        flat(keys, (r, m)), flat(alpha, (r,)), jnp.asarray(self.usage_decay, self.param_dtype))
    unflat = lambda x: x.reshape(batch + x.shape[1:])
    new_mem, usage, read_w, write_w, reads = map(unflat, (new_mem, usage, read_w, write_w, reads))

    # 8. Output.
    out_in = jnp.concatenate([h, reads.reshape(batch + (r * m,))], axis=-1)
    logits = nn.Dense(self.features, param_dtype=self.param_dtype, name="output")(out_in)
    new_carry = MANNState(ctrl_state, new_mem, usage, read_w, write_w, reads, carry.step + 1)
    if self.return_state:
      return new_carry, (logits, new_carry)
    return new_carry, logits


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


def trajectory(cell: MANNCell, variables, inputs: jax.Array, *,
               initial_carry: MANNState | None = None) -> tuple[jax.Array, MANNState]:
  """Runs ``nn.RNN(cell)`` and returns the logits and the state at every step.

  Args:
    cell: the :class:`MANNCell` the variables were created for (inside ``nn.RNN``).
    variables: variables of ``nn.RNN(cell)``.
    inputs: [..., T, I] inputs (time on the second-to-last axis).
    initial_carry: optional initial state.

  Returns:
    ``(logits [..., T, features], states)``; every leaf of ``states`` has a
    time axis after the batch axes, e.g. ``states.read_weights`` [..., T, R, N].
  """
  model = nn.RNN(cell.clone(return_state=True))
  return model.apply(variables, inputs, initial_carry=initial_carry)


def _check_label_mode(label_mode: str) -> None:
  if label_mode not in LABEL_MODES:
    raise ValueError(f"argument `label_mode`: expected one of {LABEL_MODES}, got {label_mode!r}")


def _string_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """[..., T, 25] logits → [..., T, 5, 5] (character, letter)."""
  if logits.shape[-1] != STRING_LENGTH * STRING_SYMBOLS:
    raise ValueError(f"argument `logits`: expected {STRING_LENGTH * STRING_SYMBOLS} features for "
                     f"string labels, got shape {list(logits.shape)}")
  if targets.shape != logits.shape[:-1] + (STRING_LENGTH,):
    raise ValueError(f"argument `targets`: expected shape {list(logits.shape[:-1]) + [STRING_LENGTH]} "
                     f"for string labels, got {list(targets.shape)}")
  return logits.reshape(logits.shape[:-1] + (STRING_LENGTH, STRING_SYMBOLS))


def _check_onehot(logits: jax.Array, targets: jax.Array) -> None:
  if targets.shape != logits.shape[:-1]:
    raise ValueError(f"argument `targets`: expected shape {list(logits.shape[:-1])} (logits "
                     f"{list(logits.shape)} without the class axis), got {list(targets.shape)}")


def mann_loss(logits: jax.Array, targets: jax.Array, label_mode: str = "onehot") -> jax.Array:
  """Cross-entropy of MANN predictions (Santoro et al. 2016, §4.1).

  ``'onehot'``: softmax cross-entropy, L = −mean_{b,t} log p(y_t | ...).
  ``'string'``: five independent 5-way softmaxes, one per character of the
  label; L = −mean_{b,t} Σ_{c=1..5} log p(y_t[c] | ...), the negative
  log-likelihood of the whole string (chance: 5 ln 5 ≈ 8.05).

  Args:
    logits: [..., T, C] (one-hot) or [..., T, 25] (string) logits.
    targets: int [..., T] in 0..C−1 (one-hot) or int [..., T, 5] in 0..4 (string).
    label_mode: ``'onehot'`` or ``'string'``.

  Returns:
    [] mean loss over every leading axis.
  """
  _check_label_mode(label_mode)
  logits = _checks.as_float_array("logits", logits)
  targets = jnp.asarray(targets)
  if label_mode == "onehot":
    _check_onehot(logits, targets)
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1))
  logp = jax.nn.log_softmax(_string_logits(logits, targets))  # [..., T, 5, 5]
  nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]  # [..., T, 5]
  return jnp.mean(jnp.sum(nll, axis=-1))


def correct_predictions(logits: jax.Array, targets: jax.Array, label_mode: str = "onehot") -> jax.Array:
  """bool [..., T]: the arg-max prediction equals the label (string: all 5 characters)."""
  _check_label_mode(label_mode)
  logits = _checks.as_float_array("logits", logits)
  targets = jnp.asarray(targets)
  if label_mode == "onehot":
    _check_onehot(logits, targets)
    return jnp.argmax(logits, axis=-1) == targets
  pred = jnp.argmax(_string_logits(logits, targets), axis=-1)  # [..., T, 5]
  return jnp.all(pred == targets, axis=-1)


def per_instance_counts(logits: jax.Array, targets: jax.Array, instance: jax.Array,
                        label_mode: str = "onehot",
                        instances: Sequence[int] = DEFAULT_INSTANCES) -> tuple[jax.Array, jax.Array]:
  """Correct predictions and presentations at the k-th presentation of a class.

  Args:
    logits: [..., T, C] or [..., T, 25] logits.
    targets: int [..., T] or [..., T, 5] labels.
    instance: int [..., T] presentations of the step's class *before* step t
      (0 on the first; :class:`memjax.data.MANNEpisode`'s ``instance``).
    label_mode: ``'onehot'`` or ``'string'``.
    instances: the 1-based presentations k to score (paper: 1, 2, 3, 4, 5, 10).

  Returns:
    ``(correct [K], total [K])`` float32 counts over every leading axis and
    time, K = len(instances).
  """
  ok = correct_predictions(logits, targets, label_mode)  # [..., T]
  instance = jnp.asarray(instance)
  if instance.shape != ok.shape:
    raise ValueError(f"argument `instance`: expected shape {list(ok.shape)}, got {list(instance.shape)}")
  ks = jnp.asarray([_checks.check_positive_int("instances", k) for k in instances]) - 1  # 0-based
  at = instance[..., None] == ks  # [..., T, K]
  axes = tuple(range(at.ndim - 1))
  correct = jnp.sum(at & ok[..., None], axis=axes).astype(jnp.float32)
  total = jnp.sum(at, axis=axes).astype(jnp.float32)
  return correct, total


def per_instance_accuracy(logits: jax.Array, targets: jax.Array, instance: jax.Array,
                          label_mode: str = "onehot",
                          instances: Sequence[int] = DEFAULT_INSTANCES) -> jax.Array:
  """Accuracy at the k-th presentation of a class (Santoro et al. 2016, Tables 1–2).

  acc_k = #{(b, t): instance[b, t] = k − 1 and prediction correct} /
  #{(b, t): instance[b, t] = k − 1}. A string prediction is correct only when
  all 5 characters are.

  Args:
    logits: [..., T, C] (one-hot) or [..., T, 25] (string) logits.
    targets: int [..., T] or [..., T, 5] labels.
    instance: int [..., T], 0-based presentation count (0 = first time).
    label_mode: ``'onehot'`` or ``'string'``.
    instances: 1-based presentations to score.

  Returns:
    [K] accuracies in [0, 1], NaN for a k that never occurs.
  """
  correct, total = per_instance_counts(logits, targets, instance, label_mode, instances)
  return jnp.where(total > 0, correct / jnp.maximum(total, 1.0), jnp.nan)
