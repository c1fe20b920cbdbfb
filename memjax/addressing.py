"""Attention over memory slots for one example: NTM and LRUA addressing.

Every function here works on a single example and a single head: an ``[N, M]``
memory (N slots of width M), an ``[M]`` key, 0-d scalars, ``[N]`` weightings.
There is no batch axis and no heads axis; call sites add both with
``jax.vmap``. Each docstring names the paper equation it implements:

* Graves, Wayne & Danihelka 2014, *Neural Turing Machines* (arXiv:1410.5401),
  §3.3, eqs. 5-9: content addressing, interpolation, circular shift, sharpening.
* Santoro et al. 2016, *Meta-Learning with Memory-Augmented Neural Networks*
  (ICML), §3, least-recently-used access (LRUA): usage, least-used weights,
  write weights.

All outputs and all gradients are finite for zero memory, zero keys,
β up to 1e4, γ up to 50 and one-hot previous weightings: norms are
``sqrt(x + EPS)`` and sharpening is ``softmax(γ · log(w + EPS))``, so there is
no ``sqrt(0)``, ``log(0)`` or ``0/0`` anywhere.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from memjax import _checks

# One epsilon for the whole module. It sits inside every square root (norms) and
# every logarithm (sharpening), which keeps values and gradients finite at exactly
# zero: d sqrt(x + EPS)/dx <= 1 / (2 sqrt(EPS)) = 5e3 and log(EPS) = -18.4.
# 1e-8 is small enough that the functions match the papers' exact equations to
# float32 precision wherever a weight is above ~1e-5 and a memory row's squared
# norm above ~1e-6, yet large enough not to underflow in float32.
EPS = 1e-8


def _norm(x: jax.Array, axis: int = -1) -> jax.Array:
  return jnp.sqrt(jnp.sum(x * x, axis=axis) + EPS)


def cosine_similarity(memory: jax.Array, key: jax.Array) -> jax.Array:
  """Cosine similarity between a key and every memory row (Graves et al. eq. 6).

  K[u, v] = u · v / (‖u‖ ‖v‖), with ‖x‖ = sqrt(Σ x² + EPS).

  Args:
    memory: [N, M] memory matrix.
    key: [M] key.

  Returns:
    [N] similarities in [-1, 1]; 0 for a zero key or a zero row.
  """
  memory = _checks.check_shape("memory", memory, (None, None))
  key = _checks.check_shape("key", key, (memory.shape[1],))
  return (memory @ key) / (_norm(memory) * _norm(key))


def content_weights(memory: jax.Array, key: jax.Array, beta: jax.Array) -> jax.Array:
  """Content-based addressing (Graves et al. 2014, eq. 5).

  w_c[i] = exp(β K[k, M_i]) / Σ_j exp(β K[k, M_j]).

  Args:
    memory: [N, M] memory matrix.
    key: [M] key emitted by a head.
    beta: [] key strength, β ≥ 0.

  Returns:
    [N] weighting, softmax over slots of β · cosine(key, memory[i]).
  """
  beta = _checks.check_scalar("beta", beta)
  return jax.nn.softmax(beta * cosine_similarity(memory, key))


def interpolate(w_content: jax.Array, w_prev: jax.Array, gate: jax.Array) -> jax.Array:
  """Interpolation gate (Graves et al. 2014, eq. 7).

  w_g = g · w_c + (1 − g) · w_{t−1}.

  Args:
    w_content: [N] content weighting w_c.
    w_prev: [N] the head's weighting at the previous step.
    gate: [] interpolation gate g ∈ [0, 1].

  Returns:
    [N] gated weighting.
  """
  w_content = _checks.check_shape("w_content", w_content, (None,))
  w_prev = _checks.check_shape("w_prev", w_prev, w_content.shape)
  gate = _checks.check_scalar("gate", gate)
  return gate * w_content + (1.0 - gate) * w_prev


def shift(weights: jax.Array, shift_weights: jax.Array) -> jax.Array:
  """Circular convolution with a shift distribution (Graves et al. 2014, eq. 8).

  out[i] = Σ_k s[k] · w[(i − (k − K)) mod N]: ``shift_weights[k]`` is the weight
  of offset k − K, so all mass on offset +1 moves a focus at slot i to slot i + 1
  (and slot N − 1 wraps to slot 0).

  Args:
    weights: [N] weighting w_g.
    shift_weights: [2K+1] distribution over offsets −K..K.

  Returns:
    [N] shifted weighting.
  """
  weights = _checks.check_shape("weights", weights, (None,))
  shift_weights = _checks.check_shape("shift_weights", shift_weights, (None,))
  width = shift_weights.shape[0]
  if width % 2 != 1:
    raise ValueError(f"argument `shift_weights`: expected shape [2K+1] (odd length), got {[width]}")
  k_max = width // 2
  # jnp.roll(w, d)[i] = w[(i - d) mod N]; a static roll per offset keeps this a
  # handful of slices, which vectorises cleanly under vmap (no gathers).
  rolled = jnp.stack([jnp.roll(weights, k - k_max) for k in range(width)])  # [2K+1, N]
  return shift_weights @ rolled


def sharpen(weights: jax.Array, gamma: jax.Array) -> jax.Array:
  """Sharpening (Graves et al. 2014, eq. 9).

  w[i] = w̃[i]^γ / Σ_j w̃[j]^γ, computed as softmax(γ · log(w̃ + EPS)).

  Args:
    weights: [N] non-negative weighting w̃.
    gamma: [] sharpening exponent γ ≥ 1.

  Returns:
    [N] sharpened weighting (a distribution).
  """
  weights = _checks.check_shape("weights", weights, (None,))
  gamma = _checks.check_scalar("gamma", gamma)
  return jax.nn.softmax(gamma * jnp.log(weights + EPS))


def ntm_address(memory: jax.Array, key: jax.Array, beta: jax.Array, gate: jax.Array,
                shift_weights: jax.Array, gamma: jax.Array, w_prev: jax.Array) -> jax.Array:
  """Full NTM addressing (Graves et al. 2014, Figure 2, eqs. 5-9).

  content → interpolation → circular shift → sharpening.

  Args:
    memory: [N, M] memory matrix.
    key: [M] key.
    beta: [] key strength β ≥ 0.
    gate: [] interpolation gate g ∈ [0, 1].
    shift_weights: [2K+1] shift distribution.
    gamma: [] sharpening γ ≥ 1.
    w_prev: [N] the head's previous weighting.

  Returns:
    [N] the head's new weighting.
  """
  w_c = content_weights(memory, key, beta)
  w_g = interpolate(w_c, w_prev, gate)
  w_s = shift(w_g, shift_weights)
  return sharpen(w_s, gamma)


_ARGMIN_MAX_N = 8
"""``least_used`` picks up to this many slots by repeated argmin, more by ``lax.top_k``."""


def least_used(usage: jax.Array, n: int) -> jax.Array:
  """Least-used weights (Santoro et al. 2016, §3, w^lu).

  w^lu[i] = 1 if usage[i] is among the n smallest entries of usage, else 0.
  Ties go to the lower index. The result is piecewise constant in ``usage``, so
  its gradient is zero.

  For n ≤ 8 (the paper's n is the number of read heads, 4) the slots are picked
  by n successive argmins, O(n·N) reductions that XLA's SPMD partitioner splits
  along any batch axis; ``lax.top_k`` (used for larger n) is a custom call it
  does not split, so under a data-parallel mesh every LRUA step would all-gather
  the batch's usage (``tests/test_data_parallel.py``).

  Args:
    usage: [N] usage weights w^u (finite).
    n: static number of slots to mark (the paper uses the number of reads).

  Returns:
    [N] 0/1 indicator of the n least-used slots.
  """
  usage = _checks.check_shape("usage", usage, (None,))
  n = _checks.check_positive_int("n", n)
  size = usage.shape[0]
  if n > size:
    raise ValueError(f"argument `n`: expected at most N={size} slots, got {n}")
  usage = jax.lax.stop_gradient(usage)
  if n > _ARGMIN_MAX_N:
    # lax.top_k returns equal elements lower index first, which gives the tie rule;
    # it orders -0.0 before +0.0, so both zeros are made +0.0 first.
    _, idx = jax.lax.top_k(-jnp.where(usage == 0, 0.0, usage), n)
    return jnp.sum(jax.nn.one_hot(idx, size, dtype=usage.dtype), axis=0)
  # argmin returns the first of equal minima (−0.0 == +0.0 there): the tie rule.
  picked = jnp.zeros(size, bool)
  for _ in range(n):
    picked = picked | (jnp.arange(size) == jnp.argmin(jnp.where(picked, jnp.inf, usage)))
  return picked.astype(usage.dtype)


def update_usage(usage: jax.Array, read_weights: jax.Array, write_weights: jax.Array,
                 decay: jax.Array) -> jax.Array:
  """Usage update (Santoro et al. 2016, §3).

  w^u_t = γ · w^u_{t−1} + Σ_heads w^r_t + Σ_heads w^w_t.

  Args:
    usage: [N] previous usage w^u_{t−1}.
    read_weights: [R, N] this step's read weightings.
    write_weights: [W, N] this step's write weightings.
    decay: [] usage decay γ ∈ [0, 1] (0.95 in the paper).

  Returns:
    [N] new usage.
  """
  usage = _checks.check_shape("usage", usage, (None,))
  n = usage.shape[0]
  read_weights = _checks.check_shape("read_weights", read_weights, (None, n))
  write_weights = _checks.check_shape("write_weights", write_weights, (None, n))
  decay = _checks.check_scalar("decay", decay)
  return decay * usage + jnp.sum(read_weights, axis=0) + jnp.sum(write_weights, axis=0)


def lrua_write_weights(read_weights_prev: jax.Array, least_used_prev: jax.Array,
                       alpha: jax.Array) -> jax.Array:
  """LRUA write weights (Santoro et al. 2016, §3).

  w^w_t = σ(α) · w^r_{t−1} + (1 − σ(α)) · w^lu_{t−1}.

  Args:
    read_weights_prev: [N] a head's read weighting at the previous step.
    least_used_prev: [N] least-used weights from the previous step's usage.
    alpha: [] learnable gate logit α.

  Returns:
    [N] write weighting.
  """
  read_weights_prev = _checks.check_shape("read_weights_prev", read_weights_prev, (None,))
  least_used_prev = _checks.check_shape("least_used_prev", least_used_prev, read_weights_prev.shape)
  alpha = _checks.check_scalar("alpha", alpha)
  g = jax.nn.sigmoid(alpha)
  return g * read_weights_prev + (1.0 - g) * least_used_prev
