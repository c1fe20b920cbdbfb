"""Plain-numpy float64 reference implementations of the paper equations.

Written straight from the formulas in Graves, Wayne & Danihelka 2014 (NTM,
eqs. 2-9) and Santoro et al. 2016 (LRUA, §3), independently of ``memjax``: no
EPS, no log-domain tricks, explicit loops where the equation is a sum. Inputs
are converted to float64 first. Tests compare the jax functions to these on
inputs kept away from exact zero (where ``memjax``'s EPS would matter).
"""

from __future__ import annotations

import numpy as np


def _f64(x):
  return np.asarray(x, dtype=np.float64)


def cosine_similarity(memory, key):
  """K[u, v] = u·v / (|u| |v|) for every row u of memory (eq. 6)."""
  memory, key = _f64(memory), _f64(key)
  n = memory.shape[0]
  out = np.zeros(n)
  for i in range(n):
    dot = sum(memory[i, j] * key[j] for j in range(key.shape[0]))
    out[i] = dot / (np.sqrt(np.sum(memory[i] ** 2)) * np.sqrt(np.sum(key ** 2)))
  return out


def content_weights(memory, key, beta):
  """w_c[i] = exp(β K[k, M_i]) / Σ_j exp(β K[k, M_j]) (eq. 5)."""
  z = float(beta) * cosine_similarity(memory, key)
  e = np.exp(z - z.max())  # the max cancels in the ratio; keeps exp in range
  return e / e.sum()


def interpolate(w_content, w_prev, gate):
  """w_g = g w_c + (1 - g) w_prev (eq. 7)."""
  g = float(gate)
  return g * _f64(w_content) + (1.0 - g) * _f64(w_prev)


def shift(weights, shift_weights):
  """out[i] = Σ_k s[k] · w[(i - (k - K)) mod N] (eq. 8), s[k] = weight of offset k - K."""
  w, s = _f64(weights), _f64(shift_weights)
  n, width = w.shape[0], s.shape[0]
  assert width % 2 == 1
  k_max = width // 2
  out = np.zeros(n)
  for i in range(n):
    out[i] = sum(s[k] * w[(i - (k - k_max)) % n] for k in range(width))
  return out


def sharpen(weights, gamma):
  """w^γ / Σ w^γ (eq. 9)."""
  p = _f64(weights) ** float(gamma)
  return p / p.sum()


def ntm_address(memory, key, beta, gate, shift_weights, gamma, w_prev):
  """content -> interpolate -> shift -> sharpen (Fig. 2)."""
  w_c = content_weights(memory, key, beta)
  w_g = interpolate(w_c, w_prev, gate)
  w_s = shift(w_g, shift_weights)
  return sharpen(w_s, gamma)


def least_used(usage, n):
  """1.0 at the n smallest entries of usage (ties: lower index first), else 0."""
  usage = _f64(usage)
  order = sorted(range(usage.shape[0]), key=lambda i: (usage[i], i))
  out = np.zeros(usage.shape[0])
  out[order[:n]] = 1.0
  return out


def update_usage(usage, read_weights, write_weights, decay):
  """w^u_t = decay · w^u_{t-1} + Σ_h w^r_h + Σ_h w^w_h."""
  out = float(decay) * _f64(usage)
  for w in _f64(read_weights):
    out = out + w
  for w in _f64(write_weights):
    out = out + w
  return out


def lrua_write_weights(read_weights_prev, least_used_prev, alpha):
  """w^w = σ(α) w^r_{t-1} + (1 - σ(α)) w^lu_{t-1}."""
  g = 1.0 / (1.0 + np.exp(-float(alpha)))
  return g * _f64(read_weights_prev) + (1.0 - g) * _f64(least_used_prev)


def read(memory, weights):
  """r = Σ_i w[i] M[i] (eq. 2)."""
  memory, weights = _f64(memory), _f64(weights)
  out = np.zeros(memory.shape[1])
  for i in range(memory.shape[0]):
    out += weights[i] * memory[i]
  return out


def write(memory, weights, erase, add):
  """M'[i, j] = M[i, j] (1 - w[i] e[j]) + w[i] a[j] (eqs. 3-4)."""
  memory, weights, erase, add = map(_f64, (memory, weights, erase, add))
  n, m = memory.shape
  out = np.zeros((n, m))
  for i in range(n):
    for j in range(m):
      out[i, j] = memory[i, j] * (1.0 - weights[i] * erase[j]) + weights[i] * add[j]
  return out


def write_heads(memory, weights, erase, add):
  """M'[i, j] = M[i, j] Π_h (1 - w_h[i] e_h[j]) + Σ_h w_h[i] a_h[j]."""
  memory, weights, erase, add = map(_f64, (memory, weights, erase, add))
  n, m = memory.shape
  out = np.zeros((n, m))
  for i in range(n):
    for j in range(m):
      keep = 1.0
      added = 0.0
      for h in range(weights.shape[0]):
        keep *= 1.0 - weights[h, i] * erase[h, j]
        added += weights[h, i] * add[h, j]
      out[i, j] = memory[i, j] * keep + added
  return out


def lrua_write(memory, weights, keys, least_used_prev):
  """Zero the rows where least_used_prev == 1, then add Σ_h w_h k_hᵀ."""
  memory, weights, keys, lu = map(_f64, (memory, weights, keys, least_used_prev))
  out = memory.copy()
  for i in range(out.shape[0]):
    if lu[i] == 1.0:
      out[i] = 0.0
  for h in range(weights.shape[0]):
    out += np.outer(weights[h], keys[h])
  return out


def _softmax(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def lrua_step(memory, usage, read_w_prev, keys, adds, alpha, decay):
  """The paper's equations (§3), in float64 numpy, for one example.

  memory [N, M], usage [N], read_w_prev [R, N], keys [R, M] (read), adds [R, M]
  (written: a_t, or the keys for the paper-literal form), alpha [R].
  """
  memory, usage, read_w_prev, keys, adds, alpha = map(_f64, (memory, usage, read_w_prev, keys, adds,
                                                             alpha))
  n = memory.shape[0]
  r = read_w_prev.shape[0]
  order = np.argsort(usage, kind="stable")
  w_lu = np.zeros(n)
  w_lu[order[:r]] = 1.0  # the R (= number of reads) least-used slots
  g = 1.0 / (1.0 + np.exp(-alpha))
  w_w = g[:, None] * read_w_prev + (1.0 - g[:, None]) * w_lu[None]  # [R, N]
  m = memory.copy()
  m[order[0]] = 0.0  # the least-used slot is zeroed before writing
  m = m + w_w.T @ adds  # M_t(i) = M_{t-1}(i) + Σ_h w^w_h(i) a_h
  cos = (keys @ m.T) / (np.linalg.norm(keys, axis=1)[:, None] * np.linalg.norm(m, axis=1)[None])
  w_r = _softmax(cos)  # [R, N], read after write
  reads = w_r @ m  # [R, M]
  new_usage = decay * usage + w_r.sum(0) + w_w.sum(0)
  return m, new_usage, w_r, w_w, reads


# ---------------------------------------------------------------------------
# Random test inputs shared by the test files (plain numpy, float32 by default).
# "Away from zero": entries have magnitude in [0.5, 2], weightings have every
# entry >= ~0.3/N, so memjax's EPS = 1e-8 (inside norms and logs) is far below
# float32 resolution of the compared quantities.


def away_from_zero(rng, shape, dtype=np.float32):
  mag = rng.uniform(0.5, 2.0, size=shape)
  sign = rng.choice([-1.0, 1.0], size=shape)
  return (mag * sign).astype(dtype)


def distribution(rng, n, dtype=np.float32):
  p = rng.uniform(0.3, 1.0, size=n)
  return (p / p.sum()).astype(dtype)


def distributions(rng, h, n, dtype=np.float32):
  p = rng.uniform(0.3, 1.0, size=(h, n))
  return (p / p.sum(axis=1, keepdims=True)).astype(dtype)
