"""Reading and writing an external memory, for one example and one head.

Shapes: memory ``[N, M]`` (N slots of width M), weightings ``[N]``, vectors
``[M]``. No batch or heads axis: ``jax.vmap`` adds them. Several write heads are
applied one after another with :func:`write` (erase then add per head, as in
Graves et al. 2014 §3.2) or all at once with :func:`write_heads`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from memjax import _checks


def read(memory: jax.Array, weights: jax.Array) -> jax.Array:
  """Read vector (Graves et al. 2014, eq. 2).

  r = Σ_i w[i] · M[i].

  Args:
    memory: [N, M] memory.
    weights: [N] read weighting.

  Returns:
    [M] read vector.
  """
  memory = _checks.check_shape("memory", memory, (None, None))
  weights = _checks.check_shape("weights", weights, (memory.shape[0],))
  return weights @ memory


def write(memory: jax.Array, weights: jax.Array, erase: jax.Array, add: jax.Array) -> jax.Array:
  """Erase then add (Graves et al. 2014, eqs. 3-4).

  M' = M ⊙ (1 − w eᵀ) + w aᵀ.

  Args:
    memory: [N, M] memory.
    weights: [N] write weighting.
    erase: [M] erase vector, entries in [0, 1].
    add: [M] add vector.

  Returns:
    [N, M] new memory.
  """
  memory = _checks.check_shape("memory", memory, (None, None))
  n, m = memory.shape
  weights = _checks.check_shape("weights", weights, (n,))
  erase = _checks.check_shape("erase", erase, (m,))
  add = _checks.check_shape("add", add, (m,))
  return memory * (1.0 - jnp.outer(weights, erase)) + jnp.outer(weights, add)


def write_heads(memory: jax.Array, weights: jax.Array, erase: jax.Array, add: jax.Array) -> jax.Array:
  """Several write heads at once (Graves et al. 2014, §3.2, "multiple write heads").

  M' = M ⊙ Π_h (1 − w_h e_hᵀ) + Σ_h w_h a_hᵀ. The erasures multiply, so their
  order does not matter; the adds are summed. For one head this is :func:`write`.

  Args:
    memory: [N, M] memory.
    weights: [H, N] write weightings.
    erase: [H, M] erase vectors.
    add: [H, M] add vectors.

  Returns:
    [N, M] new memory.
  """
  memory = _checks.check_shape("memory", memory, (None, None))
  n, m = memory.shape
  weights = _checks.check_shape("weights", weights, (None, n))
  h = weights.shape[0]
  erase = _checks.check_shape("erase", erase, (h, m))
  add = _checks.check_shape("add", add, (h, m))
  keep = jnp.prod(1.0 - weights[:, :, None] * erase[:, None, :], axis=0)
  return memory * keep + weights.T @ add


def lrua_write(memory: jax.Array, weights: jax.Array, adds: jax.Array,
               least_used_prev: jax.Array) -> jax.Array:
  """LRUA write (Santoro et al. 2016, §3).

  Before writing, the least-used slot from the previous step is set to zero;
  then M_t[i] = M_{t−1}[i] + Σ_h w^w_{h,t}[i] a_{h,t}.

  Args:
    memory: [N, M] memory M_{t−1}.
    weights: [H, N] write weightings w^w_t, one row per head.
    adds: [H, M] the vectors written, one per head: the add vectors a_t (as
      snowkylin/ntm and tristandeleu/ntm-one-shot) or the paper's keys k_t.
    least_used_prev: [N] indicator of the slots to clear (from
      :func:`memjax.addressing.least_used` on the previous usage, with n = 1 in
      the paper).

  Returns:
    [N, M] new memory.
  """
  memory = _checks.check_shape("memory", memory, (None, None))
  n, m = memory.shape
  weights = _checks.check_shape("weights", weights, (None, n))
  adds = _checks.check_shape("adds", adds, (weights.shape[0], m))
  least_used_prev = _checks.check_shape("least_used_prev", least_used_prev, (n,))
  cleared = memory * (1.0 - least_used_prev)[:, None]
  return cleared + weights.T @ adds
