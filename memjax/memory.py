"""Reading and writing an external memory, for one example and one head.

Shapes: memory ``[N, M]`` (N slots of width M), weightings ``[N]``, vectors
``[M]``. No batch or heads axis: ``jax.vmap`` adds them. Several write heads are
applied one after another with :func:`write` (erase then add per head, as in
Graves et al. 2014 §3.2) or all at once with :func:`write_heads`. The MANN's
whole least-recently-used-access step (Santoro et al. 2016, §3: write weights,
LRUA write, content reads, usage) is :func:`lrua_step`, for one example and
all its heads, with a hand-written backward pass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from memjax import _checks, addressing


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


def lrua_step(memory: jax.Array, usage: jax.Array, read_weights_prev: jax.Array, keys: jax.Array,
              adds: jax.Array, alpha: jax.Array, decay: jax.Array
              ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
  """One LRUA memory step for one example (Santoro et al. 2016, §3).

  w^lu_{t−1} = least_used(w^u_{t−1}, n=R);
  w^w_{h,t} = σ(α_h) w^r_{h,t−1} + (1 − σ(α_h)) w^lu_{t−1};
  M_t = LRUA write of M_{t−1} (least_used(w^u_{t−1}, 1) zeroed, then
  + Σ_h w^w_{h,t} a_hᵀ);
  w^r_{h,t} = softmax(cosine(k_h, M_t)); r_{h,t} = w^r_{h,t} M_t;
  w^u_t = γ w^u_{t−1} + Σ_h w^r_{h,t} + Σ_h w^w_{h,t}.

  Args:
    memory: [N, M] memory M_{t−1}.
    usage: [N] usage w^u_{t−1}.
    read_weights_prev: [R, N] read weightings w^r_{t−1}.
    keys: [R, M] read keys k_t, one per head.
    adds: [R, M] vectors written, one per head: the add vectors a_t
      (``write='add'``) or the keys themselves (``write='key'``).
    alpha: [R] write-gate logits α.
    decay: [] usage decay γ.

  Returns:
    ``(memory [N, M], usage [N], read_weights [R, N], write_weights [R, N],
    reads [R, M])`` at step t.
  """
  r = read_weights_prev.shape[0]
  least_used = addressing.least_used(usage, r)  # [N], R ones
  clear = addressing.least_used(usage, 1)  # [N], one 1
  return _lrua_update(memory, usage, read_weights_prev, keys, adds, alpha, decay, least_used, clear)


def _lrua_forward(memory, usage, read_weights_prev, keys, adds, alpha, decay, least_used, clear):
  """The LRUA equations after the least-used slots are known; returns the step's
  outputs and the intermediates its backward pass needs."""
  write_w = jax.vmap(addressing.lrua_write_weights, in_axes=(0, None, 0))(
      read_weights_prev, least_used, alpha)  # [R, N]
  new_memory = lrua_write(memory, write_w, adds, clear)  # [N, M]
  norm_m = addressing._norm(new_memory)  # [N]
  norm_k = addressing._norm(keys)  # [R]
  cos = (keys @ new_memory.T) / (norm_k[:, None] * norm_m[None, :])  # [R, N], Graves eq. 6
  read_w = jax.nn.softmax(cos, axis=-1)
  reads = read_w @ new_memory  # [R, M]
  new_usage = addressing.update_usage(usage, read_w, write_w, decay)
  return (new_memory, new_usage, read_w, write_w, reads), (norm_m, norm_k, cos)


@jax.custom_vjp
def _lrua_update(memory, usage, read_weights_prev, keys, adds, alpha, decay, least_used, clear):
  """:func:`lrua_step` given the least-used indicators, with a hand-written
  backward pass (fewer, larger kernels than autodiff's; tested equal to it)."""
  return _lrua_forward(memory, usage, read_weights_prev, keys, adds, alpha, decay, least_used, clear)[0]


def _lrua_update_fwd(memory, usage, read_weights_prev, keys, adds, alpha, decay, least_used, clear):
  out, (norm_m, norm_k, cos) = _lrua_forward(memory, usage, read_weights_prev, keys, adds, alpha, decay,
                                             least_used, clear)
  new_memory, _, read_w, write_w, _ = out
  return out, (usage, read_weights_prev, keys, adds, alpha, decay, least_used, clear,
               new_memory, read_w, write_w, norm_m, norm_k, cos)


def _lrua_update_bwd(res, cotangents):
  (usage, w_prev, keys, adds, alpha, decay, least_used, clear,
   mem, read_w, write_w, norm_m, norm_k, cos) = res
  d_mem, d_usage, d_read_w, d_write_w, d_reads = cotangents
  # w^u_t = γ w^u_{t−1} + Σ_h w^r_h + Σ_h w^w_h.
  d_read_w = d_read_w + d_usage[None, :] + d_reads @ mem.T  # r = w^r M_t
  d_write_w = d_write_w + d_usage[None, :]
  d_mem = d_mem + read_w.T @ d_reads
  # w^r = softmax(cos), cos = k·M / (‖k‖ ‖M‖).
  d_cos = read_w * (d_read_w - jnp.sum(d_read_w * read_w, axis=-1, keepdims=True))
  d_dot = d_cos / (norm_k[:, None] * norm_m[None, :])
  d_cos_cos = d_cos * cos
  d_keys = d_dot @ mem - (jnp.sum(d_cos_cos, axis=1) / norm_k ** 2)[:, None] * keys
  d_mem = d_mem + d_dot.T @ keys - (jnp.sum(d_cos_cos, axis=0) / norm_m ** 2)[:, None] * mem
  # M_t = M_{t−1} ⊙ (1 − clear) + Σ_h w^w_h a_hᵀ.
  d_write_w = d_write_w + adds @ d_mem.T
  d_adds = write_w @ d_mem
  d_memory = d_mem * (1.0 - clear)[:, None]
  # w^w_h = σ(α_h) w^r_{h,t−1} + (1 − σ(α_h)) w^lu.
  g = jax.nn.sigmoid(alpha)
  d_alpha = jnp.sum(d_write_w * (w_prev - least_used[None, :]), axis=1) * g * (1.0 - g)
  d_w_prev = g[:, None] * d_write_w
  return (d_memory, decay * d_usage, d_w_prev, d_keys, d_adds, d_alpha, jnp.sum(d_usage * usage),
          jnp.zeros_like(least_used), jnp.zeros_like(clear))


_lrua_update.defvjp(_lrua_update_fwd, _lrua_update_bwd)
