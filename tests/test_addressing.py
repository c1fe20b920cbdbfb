"""Correctness tests for memjax.addressing (NTM eqs. 5-9, LRUA §3).

1. Equations: every function against an independent float64 numpy reference
   (tests/numpy_reference.py) on random inputs kept away from exact zero.
2. Semantics: shift direction and wrap-around, sharpen γ=1, huge-β focus,
   least_used tie rule and zero gradient, gate endpoints.
3. Gradients: jax.test_util.check_grads in float64 (order 2, fwd + rev).
4. Properties (hypothesis): finite, non-negative, normalised outputs and finite
   gradients for extreme β, γ, zero memory / keys and one-hot w_prev.
5. Bad input: wrong shapes and dtypes raise ValueError naming the argument,
   eagerly and under jax.jit.
6. vmap over heads and batch equals a Python loop.
"""

from __future__ import annotations

import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy_reference as ref  # noqa: E402

from memjax import addressing as A  # noqa: E402

F32 = dict(rtol=1e-5, atol=1e-6)


def highest():
  return jax.default_matmul_precision("highest")


def x64():
  return jax.enable_x64(True)


def np_(x):
  return np.asarray(x, dtype=np.float64)


SHAPES = [(1, 1), (5, 3), (64, 16)]

# Jitted once per function: one compile per shape, shared by all tests (eager
# op-by-op dispatch compiles every primitive separately and is slower here).
J = {name: jax.jit(getattr(A, name)) for name in [
    "cosine_similarity", "content_weights", "interpolate", "shift", "sharpen", "ntm_address",
    "update_usage", "lrua_write_weights"]}
J["least_used"] = jax.jit(A.least_used, static_argnums=1)


# ---------------------------------------------------------------------------
# 1. Equations against the numpy reference.


@pytest.mark.parametrize("n,m", SHAPES)
def test_cosine_similarity_matches_reference(n, m):
  rng = np.random.default_rng(n * 100 + m)
  memory, key = ref.away_from_zero(rng, (n, m)), ref.away_from_zero(rng, m)
  with highest():
    got = J["cosine_similarity"](memory, key)
  assert got.shape == (n,) and got.dtype == jnp.float32
  np.testing.assert_allclose(np_(got), ref.cosine_similarity(memory, key), **F32)


@pytest.mark.parametrize("n,m", SHAPES)
def test_content_weights_matches_reference(n, m):
  rng = np.random.default_rng(n * 100 + m)
  memory, key = ref.away_from_zero(rng, (n, m)), ref.away_from_zero(rng, m)
  for beta in [0.0, 1.0, 7.5, 20.0]:
    with highest():
      got = J["content_weights"](memory, key, np.float32(beta))
    assert got.shape == (n,)
    np.testing.assert_allclose(np_(got), ref.content_weights(memory, key, beta), **F32,
                               err_msg=f"beta={beta}")


@pytest.mark.parametrize("n", [1, 5, 64])
def test_interpolate_matches_reference(n):
  rng = np.random.default_rng(n)
  wc, wp = ref.distribution(rng, n), ref.distribution(rng, n)
  for gate in [0.0, 0.3, 1.0]:
    got = J["interpolate"](wc, wp, np.float32(gate))
    np.testing.assert_allclose(np_(got), ref.interpolate(wc, wp, gate), **F32)


@pytest.mark.parametrize("n,k", [(1, 0), (1, 1), (2, 3), (5, 0), (5, 1), (64, 3)])
def test_shift_matches_reference(n, k):
  rng = np.random.default_rng(10 * n + k)
  w, s = ref.distribution(rng, n), ref.distribution(rng, 2 * k + 1)
  with highest():
    got = J["shift"](w, s)
  assert got.shape == (n,)
  np.testing.assert_allclose(np_(got), ref.shift(w, s), **F32)
  # The equation is bilinear; it holds for arbitrary real inputs too.
  w, s = ref.away_from_zero(rng, n), ref.away_from_zero(rng, 2 * k + 1)
  with highest():
    got = J["shift"](w, s)
  np.testing.assert_allclose(np_(got), ref.shift(w, s), **F32)


@pytest.mark.parametrize("n", [1, 5, 64])
def test_sharpen_matches_reference(n):
  rng = np.random.default_rng(n)
  w = ref.distribution(rng, n)
  for gamma in [1.0, 2.5, 6.0]:
    got = J["sharpen"](w, np.float32(gamma))
    np.testing.assert_allclose(np_(got), ref.sharpen(w, gamma), rtol=2e-5, atol=1e-7,
                               err_msg=f"gamma={gamma}")


@pytest.mark.parametrize("n,m,k", [(1, 1, 1), (5, 3, 0), (5, 3, 1), (64, 16, 2)])
def test_ntm_address_matches_reference(n, m, k):
  rng = np.random.default_rng(n * 100 + m * 10 + k)
  memory, key = ref.away_from_zero(rng, (n, m)), ref.away_from_zero(rng, m)
  s, wp = ref.distribution(rng, 2 * k + 1), ref.distribution(rng, n)
  for beta, gate, gamma in [(3.0, 0.6, 2.0), (0.0, 1.0, 1.0), (10.0, 0.0, 4.0)]:
    with highest():
      got = J["ntm_address"](memory, key, np.float32(beta), np.float32(gate), s,
                             np.float32(gamma), wp)
    assert got.shape == (n,)
    want = ref.ntm_address(memory, key, beta, gate, s, gamma, wp)
    np.testing.assert_allclose(np_(got), want, rtol=2e-5, atol=1e-7)


def test_addressing_matches_reference_float64():
  """Same equations in float64: only EPS = 1e-8 separates memjax from the paper."""
  rng = np.random.default_rng(42)
  n, m, k = 5, 3, 1
  with x64():
    memory = ref.away_from_zero(rng, (n, m), np.float64)
    key = ref.away_from_zero(rng, m, np.float64)
    s, wp = ref.distribution(rng, 2 * k + 1, np.float64), ref.distribution(rng, n, np.float64)
    tol = dict(rtol=1e-6, atol=1e-9)
    got = J["cosine_similarity"](memory, key)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, ref.cosine_similarity(memory, key), **tol)
    np.testing.assert_allclose(J["content_weights"](memory, key, 4.0),
                               ref.content_weights(memory, key, 4.0), **tol)
    np.testing.assert_allclose(J["shift"](wp, s), ref.shift(wp, s), rtol=1e-12)
    np.testing.assert_allclose(J["sharpen"](wp, 3.0), ref.sharpen(wp, 3.0), **tol)
    got = J["ntm_address"](memory, key, 2.0, 0.7, s, 1.5, wp)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, ref.ntm_address(memory, key, 2.0, 0.7, s, 1.5, wp), **tol)


@pytest.mark.parametrize("n,counts", [(1, [1]), (5, [1, 3, 5]), (64, [4, 64])])
def test_least_used_matches_reference(n, counts):
  rng = np.random.default_rng(n)
  usage = rng.uniform(0.0, 3.0, n).astype(np.float32)
  for count in counts:
    got = J["least_used"](usage, count)
    assert got.shape == (n,) and got.dtype == jnp.float32
    np.testing.assert_array_equal(np_(got), ref.least_used(usage, count))


@pytest.mark.parametrize("n,r,w", [(1, 1, 1), (5, 2, 1), (64, 4, 3), (5, 0, 2)])
def test_update_usage_matches_reference(n, r, w):
  rng = np.random.default_rng(n + r + w)
  usage = rng.uniform(0.0, 3.0, n).astype(np.float32)
  rw, ww = ref.distributions(rng, r, n), ref.distributions(rng, w, n)
  for decay in [0.0, 0.95, 1.0]:
    got = J["update_usage"](usage, rw, ww, np.float32(decay))
    assert got.shape == (n,)
    np.testing.assert_allclose(np_(got), ref.update_usage(usage, rw, ww, decay), **F32)


@pytest.mark.parametrize("n", [1, 5, 64])
def test_lrua_write_weights_matches_reference(n):
  rng = np.random.default_rng(n)
  wr = ref.distribution(rng, n)
  lu = ref.least_used(rng.uniform(size=n), 1).astype(np.float32)
  for alpha in [-30.0, -1.5, 0.0, 2.0, 30.0]:
    got = J["lrua_write_weights"](wr, lu, np.float32(alpha))
    np.testing.assert_allclose(np_(got), ref.lrua_write_weights(wr, lu, alpha), **F32)


# ---------------------------------------------------------------------------
# 2. Semantics.


def one_hot(i, n, dtype=np.float32):
  v = np.zeros(n, dtype)
  v[i] = 1.0
  return v


@pytest.mark.parametrize("n", [1, 2, 5])
@pytest.mark.parametrize("k", [1, 2])
def test_shift_plus_one_moves_focus_forward_and_wraps(n, k):
  s_plus = one_hot(k + 1, 2 * k + 1)  # offset +1
  s_minus = one_hot(k - 1, 2 * k + 1)  # offset -1
  s_zero = one_hot(k, 2 * k + 1)  # offset 0
  for i in range(n):
    w = one_hot(i, n)
    np.testing.assert_array_equal(np.asarray(J["shift"](w, s_plus)), one_hot((i + 1) % n, n))
    np.testing.assert_array_equal(np.asarray(J["shift"](w, s_minus)), one_hot((i - 1) % n, n))
    np.testing.assert_array_equal(np.asarray(J["shift"](w, s_zero)), w)


def test_shift_last_slot_wraps_to_first():
  n = 6
  out = np.asarray(J["shift"](one_hot(n - 1, n), np.array([0.0, 0.0, 1.0], np.float32)))
  assert out[0] == 1.0 and out.sum() == 1.0


def test_shift_offsets_larger_than_memory_wrap_modulo_n():
  # N = 2, K = 3: offset +3 is offset +1 mod 2; offset -2 is the identity.
  s = one_hot(3 + 3, 7)
  np.testing.assert_array_equal(np.asarray(J["shift"](one_hot(0, 2), s)), one_hot(1, 2))
  s = one_hot(3 - 2, 7)
  np.testing.assert_array_equal(np.asarray(J["shift"](one_hot(1, 2), s)), one_hot(1, 2))


def test_shift_mixed_offsets_split_mass():
  # Half on -1, half on +1 from slot 0 of 5: 0.5 at slot 4, 0.5 at slot 1.
  out = np.asarray(J["shift"](one_hot(0, 5), np.array([0.5, 0.0, 0.5], np.float32)))
  np.testing.assert_allclose(out, [0.0, 0.5, 0.0, 0.0, 0.5])


def test_shift_preserves_total_mass():
  rng = np.random.default_rng(3)
  w, s = ref.distribution(rng, 11), ref.distribution(rng, 5)
  assert float(jnp.sum(J["shift"](w, s))) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("n", [1, 4, 64])
def test_sharpen_gamma_one_is_identity_on_distribution(n):
  w = ref.distribution(np.random.default_rng(n), n)
  np.testing.assert_allclose(np.asarray(J["sharpen"](w, 1.0)), w, rtol=1e-5)


def test_sharpen_large_gamma_focuses_on_max_and_keeps_ties_equal():
  w = np.array([0.1, 0.35, 0.2, 0.35], np.float32)
  out = np.asarray(J["sharpen"](w, 50.0))
  np.testing.assert_allclose(out, [0.0, 0.5, 0.0, 0.5], atol=1e-6)


def test_sharpen_is_scale_invariant():
  w = ref.distribution(np.random.default_rng(1), 6)
  np.testing.assert_allclose(np.asarray(J["sharpen"](3.0 * w, 2.0)),
                             np.asarray(J["sharpen"](w, 2.0)), rtol=1e-5)


def test_cosine_similarity_semantics():
  rng = np.random.default_rng(0)
  memory = ref.away_from_zero(rng, (4, 5))
  # A row against itself is 1, against its negation -1, invariant to key scale.
  np.testing.assert_allclose(float(J["cosine_similarity"](memory, memory[2])[2]), 1.0, rtol=1e-6)
  np.testing.assert_allclose(float(J["cosine_similarity"](memory, -memory[2])[2]), -1.0, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(J["cosine_similarity"](memory, 7.0 * memory[1])),
                             np.asarray(J["cosine_similarity"](memory, memory[1])), rtol=1e-5)
  # Zero key or zero row -> 0.
  np.testing.assert_array_equal(np.asarray(J["cosine_similarity"](memory, np.zeros(5, np.float32))),
                                np.zeros(4))
  memory[3] = 0.0
  assert float(J["cosine_similarity"](memory, memory[0])[3]) == 0.0


@pytest.mark.parametrize("target", [0, 3, 9])
def test_content_weights_huge_beta_focuses_on_most_similar_row(target):
  rng = np.random.default_rng(target)
  memory = rng.normal(size=(10, 8)).astype(np.float32)
  key = memory[target] + 0.01 * rng.normal(size=8).astype(np.float32)
  cos = ref.cosine_similarity(memory, key)
  assert np.argmax(cos) == target
  w = np.asarray(J["content_weights"](memory, key, 1e4))
  assert np.argmax(w) == target
  assert w[target] == pytest.approx(1.0, abs=1e-5)


def test_content_weights_beta_zero_or_zero_key_is_uniform():
  rng = np.random.default_rng(0)
  memory = rng.normal(size=(7, 3)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(J["content_weights"](memory, memory[0], 0.0)),
                             np.full(7, 1 / 7), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(J["content_weights"](memory, np.zeros(3, np.float32), 1e4)),
                             np.full(7, 1 / 7), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(J["content_weights"](np.zeros((7, 3), np.float32), memory[0], 1e4)),
                             np.full(7, 1 / 7), rtol=1e-6)


def test_interpolate_gate_endpoints():
  rng = np.random.default_rng(0)
  wc, wp = ref.distribution(rng, 6), ref.distribution(rng, 6)
  np.testing.assert_array_equal(np.asarray(J["interpolate"](wc, wp, 1.0)), wc)
  np.testing.assert_array_equal(np.asarray(J["interpolate"](wc, wp, 0.0)), wp)


def test_ntm_address_pure_location_step_moves_previous_focus():
  # Gate 0 ignores content; shift +1 moves the one-hot previous focus forward.
  rng = np.random.default_rng(0)
  n = 8
  memory, key = ref.away_from_zero(rng, (n, 4)), ref.away_from_zero(rng, 4)
  for i in (0, n - 1):
    out = np.asarray(J["ntm_address"](memory, key, 5.0, 0.0, np.array([0.0, 0.0, 1.0], np.float32),
                                   1.0, one_hot(i, n)))
    np.testing.assert_allclose(out, one_hot((i + 1) % n, n), atol=1e-6)


def test_ntm_address_pure_content_with_huge_beta_focuses_on_matching_row():
  rng = np.random.default_rng(1)
  memory = rng.normal(size=(12, 6)).astype(np.float32)
  out = np.asarray(J["ntm_address"](memory, memory[5], 1e4, 1.0, np.array([0.0, 1.0, 0.0], np.float32),
                                 50.0, one_hot(0, 12)))
  np.testing.assert_allclose(out, one_hot(5, 12), atol=1e-6)


def test_least_used_ties_resolve_to_lower_index():
  np.testing.assert_array_equal(np.asarray(J["least_used"](np.array([1.0, 0.0, 0.0, 0.0, 2.0]), 2)),
                                [0, 1, 1, 0, 0])
  np.testing.assert_array_equal(np.asarray(J["least_used"](np.zeros(6, np.float32), 3)),
                                [1, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(np.asarray(J["least_used"](np.array([3.0, 3.0, 1.0, 3.0]), 2)),
                                [1, 0, 1, 0])
  np.testing.assert_array_equal(np.asarray(J["least_used"](np.array([0.5, 0.2, 0.5, 0.2]), 1)),
                                [0, 1, 0, 0])


def test_least_used_signed_zero_is_a_tie():
  # 0.0 == -0.0, so this is a tie and must go to index 0.
  np.testing.assert_array_equal(np.asarray(A.least_used(np.array([0.0, -0.0, 1.0], np.float32), 1)),
                                [1, 0, 0])


@settings(deadline=None, max_examples=60)
@given(usage=st.lists(st.one_of(st.sampled_from([0.0, -0.0, 0.5, 1.0]), st.floats(0.0, 3.0, width=32)),
                      min_size=1, max_size=40), n=st.integers(1, 40))
def test_property_least_used_matches_reference_both_algorithms(usage, n):
  """Either algorithm (repeated argmin for n ≤ 8, lax.top_k above) marks the n slots first in
  the order (usage, index), −0.0 tying with 0.0."""
  usage = np.asarray(usage, np.float32)
  n = min(n, len(usage))
  np.testing.assert_array_equal(np.asarray(J["least_used"](usage, n)), ref.least_used(usage, n))


def test_least_used_has_zero_gradient():
  usage = np.array([0.3, 0.1, 0.7, 0.2], np.float32)
  c = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
  g = jax.grad(lambda u: jnp.sum(A.least_used(u, 2) * c))(usage)
  np.testing.assert_array_equal(np.asarray(g), np.zeros(4))
  _, t = jax.jvp(lambda u: A.least_used(u, 2), (usage,), (np.ones(4, np.float32),))
  np.testing.assert_array_equal(np.asarray(t), np.zeros(4))


def test_least_used_under_jit_with_static_n():
  f = jax.jit(A.least_used, static_argnums=1)
  np.testing.assert_array_equal(np.asarray(f(np.array([2.0, 1.0, 3.0], np.float32), 1)), [0, 1, 0])


def test_update_usage_and_lrua_write_weights_semantics():
  usage = np.array([1.0, 2.0, 0.0], np.float32)
  rw = np.array([[0.5, 0.5, 0.0]], np.float32)
  ww = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], np.float32)
  np.testing.assert_allclose(np.asarray(J["update_usage"](usage, rw, ww, 0.5)), [2.0, 1.5, 1.0])
  wr, lu = np.array([0.2, 0.8, 0.0], np.float32), np.array([0.0, 0.0, 1.0], np.float32)
  np.testing.assert_allclose(np.asarray(J["lrua_write_weights"](wr, lu, 0.0)), [0.1, 0.4, 0.5])
  np.testing.assert_allclose(np.asarray(J["lrua_write_weights"](wr, lu, 100.0)), wr, atol=1e-7)
  np.testing.assert_allclose(np.asarray(J["lrua_write_weights"](wr, lu, -100.0)), lu, atol=1e-7)


# ---------------------------------------------------------------------------
# 3. check_grads in float64.


def _grad_cases():
  """(name, fn, args) with args in float64, created inside the x64 context."""
  rng = np.random.default_rng(7)
  n, m, k = 5, 3, 1
  f = lambda x: np.asarray(x, np.float64)
  memory, key = f(ref.away_from_zero(rng, (n, m))), f(ref.away_from_zero(rng, m))
  wc, wp = f(ref.distribution(rng, n)), f(ref.distribution(rng, n))
  s = f(ref.distribution(rng, 2 * k + 1))
  rw, ww = f(ref.distributions(rng, 2, n)), f(ref.distributions(rng, 1, n))
  lu = f(one_hot(2, n))
  return {
      "cosine_similarity": (A.cosine_similarity, (memory, key)),
      "cosine_similarity_zero_key": (A.cosine_similarity, (memory, np.zeros(m))),
      "content_weights": (A.content_weights, (memory, key, f(2.5))),
      "interpolate": (A.interpolate, (wc, wp, f(0.3))),
      "shift": (A.shift, (wc, s)),
      "sharpen": (A.sharpen, (wc, f(2.0))),
      "ntm_address": (A.ntm_address, (memory, key, f(2.0), f(0.6), s, f(1.7), wp)),
      "update_usage": (A.update_usage, (wc, rw, ww, f(0.95))),
      "lrua_write_weights": (A.lrua_write_weights, (wc, lu, f(0.4))),
  }


def _combined(names):
  """One jitted function of every case's arguments returning every case's output.

  Checking all functions through one program compiles each derivative once
  instead of once per function (compiles dominate this file's run time).
  """
  cases = _grad_cases()
  fns = [cases[name][0] for name in names]
  sizes = [len(cases[name][1]) for name in names]

  def f(*flat):
    outs, i = {}, 0
    for name, fn, size in zip(names, fns, sizes):
      outs[name] = fn(*flat[i:i + size])
      i += size
    return outs

  flat = tuple(jnp.asarray(a, jnp.float64) for name in names for a in cases[name][1])
  return f, flat


def _check_each_on_failure(names, check):
  """Runs ``check`` on all ``names`` at once; on failure, names the culprit."""
  try:
    check(names)
  except AssertionError:
    for name in names:
      try:
        check([name])
      except AssertionError as e:
        raise AssertionError(f"check_grads failed for {name}:\n{e}") from None
    raise


def test_check_grads_float64_order1_every_function():
  def check(names):
    f, flat = _combined(names)
    # eps = 1e-7: at a zero key the norm sqrt(|k|² + EPS) bends on a 1e-4
    # scale, so the finite-difference step must stay well below it.
    check_grads(jax.jit(f), flat, order=1, modes=("fwd", "rev"), atol=1e-5, rtol=1e-5, eps=1e-7)

  with x64():
    f, flat = _combined(list(_grad_cases()))
    for name, out in jax.eval_shape(f, *flat).items():
      assert out.dtype == jnp.float64, name
    _check_each_on_failure(list(_grad_cases()), check)


def test_check_grads_float64_order2_nonlinear_functions():
  """Second derivatives: check_grads (fwd and rev) on the jitted gradient of a
  scalar of the outputs, i.e. Hessian-vector products against finite
  differences of the gradient. (check_grads(order=2) on the functions
  themselves re-traces nested transforms of a jitted function and is several
  times slower; it covers the same Hessian.) The other functions are
  (bi)linear, so order 1 covers them.
  """
  def check(names):
    f, flat = _combined(names)

    def scalar(*a):
      return sum(jnp.sum(o * jnp.linspace(-1.0, 2.0, o.size).reshape(o.shape))
                 for o in f(*a).values())

    grad = jax.jit(jax.grad(scalar, argnums=tuple(range(len(flat)))))
    check_grads(grad, flat, order=1, modes=("fwd", "rev"), atol=1e-5, rtol=1e-5)

  with x64():
    # ntm_address is their composition (checked at order 1 above).
    _check_each_on_failure(["cosine_similarity", "content_weights", "sharpen", "lrua_write_weights"],
                           check)


# ---------------------------------------------------------------------------
# 4. Hypothesis properties: finite, non-negative, normalised; finite gradients.

# Shapes (N, M, K) come from a small set so the jitted function compiles a
# handful of times; everything else (β, γ, gate, values, zero / one-hot modes)
# is drawn freely.
SHAPE_SET = [(1, 1, 0), (4, 16, 3), (64, 5, 1)]
PROP = settings(max_examples=30, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
ARG_NAMES = ["memory", "key", "beta", "gate", "shift_weights", "gamma", "w_prev"]


def _losses(memory, key, beta, gate, s, gamma, wp, c):
  """A scalar of every stage and of the full chain."""
  wc = A.content_weights(memory, key, beta)
  wg = A.interpolate(wc, wp, gate)
  ws = A.shift(wg, s)
  full = A.ntm_address(memory, key, beta, gate, s, gamma, wp)  # = sharpen(ws, gamma)
  return {"cosine": jnp.sum(A.cosine_similarity(memory, key) * c), "content": jnp.sum(wc * c),
          "interpolate": jnp.sum(wg * c), "shift": jnp.sum(ws * c),
          "sharpen_w_prev": jnp.sum(A.sharpen(wp, gamma) * c), "ntm_address": jnp.sum(full * c)}


def _total_loss(*args):
  # A NaN or inf in any stage's gradient survives the sum (inf - inf = NaN), so
  # one reverse pass checks them all; a failure is then attributed per stage.
  return sum(_losses(*args).values())


@jax.jit
def _property_outputs(memory, key, beta, gate, s, gamma, wp, c):
  wc = A.content_weights(memory, key, beta)
  wg = A.interpolate(wc, wp, gate)
  ws = A.shift(wg, s)
  weightings = {"content": wc, "interpolate": wg, "shift": ws,
                "sharpen_w_prev": A.sharpen(wp, gamma),
                "ntm_address": A.ntm_address(memory, key, beta, gate, s, gamma, wp)}
  grads = jax.grad(_total_loss, argnums=tuple(range(7)))(memory, key, beta, gate, s, gamma, wp, c)
  return A.cosine_similarity(memory, key), weightings, grads


@st.composite
def ntm_case(draw):
  n, m, k = draw(st.sampled_from(SHAPE_SET))
  rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
  mem_mode = draw(st.sampled_from(["zero", "normal", "some_zero_rows", "tiny", "equal_rows"]))
  memory = rng.normal(size=(n, m))
  if mem_mode == "zero":
    memory[:] = 0.0
  elif mem_mode == "some_zero_rows":
    memory[rng.random(n) < 0.5] = 0.0
  elif mem_mode == "tiny":
    memory *= 1e-6
  elif mem_mode == "equal_rows":
    memory[:] = memory[0]
  key_mode = draw(st.sampled_from(["zero", "normal", "row", "tiny"]))
  key = {"zero": np.zeros(m), "normal": rng.normal(size=m),
         "row": memory[rng.integers(n)].copy(), "tiny": 1e-6 * rng.normal(size=m)}[key_mode]
  beta = draw(st.one_of(st.sampled_from([0.0, 1e4]), st.floats(0.0, 1e4)))
  gamma = draw(st.one_of(st.sampled_from([1.0, 50.0]), st.floats(1.0, 50.0)))
  gate = draw(st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0)))
  if draw(st.booleans()):
    s = one_hot(rng.integers(2 * k + 1), 2 * k + 1, np.float64)
  else:
    s = rng.dirichlet(np.ones(2 * k + 1))
  wp_mode = draw(st.sampled_from(["one_hot", "dist", "uniform"]))
  wp = {"one_hot": one_hot(rng.integers(n), n, np.float64), "dist": rng.dirichlet(np.ones(n)),
        "uniform": np.full(n, 1.0 / n)}[wp_mode]
  c = rng.normal(size=n)
  f32 = lambda x: np.asarray(x, np.float32)
  return tuple(map(f32, (memory, key, beta, gate, s, gamma, wp, c)))


def _assert_distribution(w, what="", atol=1e-5):
  w = np.asarray(w, np.float64)
  assert np.all(np.isfinite(w)), (what, w)
  assert np.all(w >= 0.0), (what, w)
  assert abs(w.sum() - 1.0) < atol, (what, w.sum())


@PROP
@given(ntm_case())
def test_property_addressing_finite_normalised_and_finite_grads(case):
  cos, weightings, grads = _property_outputs(*case)
  n = case[0].shape[0]
  cos = np.asarray(cos)
  assert np.all(np.isfinite(cos)) and np.all(np.abs(cos) <= 1.0 + 1e-5), cos
  for stage, w in weightings.items():
    assert w.shape == (n,)
    _assert_distribution(w, stage)
  if not all(np.all(np.isfinite(np.asarray(g))) for g in grads):
    jac = jax.jacrev(_losses, argnums=tuple(range(7)))(*case)  # attribute (failure path only)
    bad = [(stage, arg) for stage, per_arg in jac.items() for arg, g in zip(ARG_NAMES, per_arg)
           if not np.all(np.isfinite(np.asarray(g)))]
    raise AssertionError(f"non-finite gradients (stage, argument): {bad}")


@jax.jit
def _lrua_outputs(usage, rw, ww, decay, alpha, c):
  def loss(usage, rw, ww, decay, alpha):
    u = A.update_usage(usage, rw, ww, decay)
    lu = A.least_used(u, 1)
    return jnp.sum(A.lrua_write_weights(rw[0], lu, alpha) * c) + jnp.sum(u * c)
  u = A.update_usage(usage, rw, ww, decay)
  lu = A.least_used(u, 1)
  return u, lu, A.lrua_write_weights(rw[0], lu, alpha), jax.grad(loss, argnums=(0, 1, 2, 3, 4))(
      usage, rw, ww, decay, alpha)


@PROP
@given(nr=st.sampled_from([(1, 1), (5, 3), (64, 2)]), seed=st.integers(0, 2**32 - 1),
       decay=st.floats(0.0, 1.0), alpha=st.one_of(st.sampled_from([-50.0, 50.0]), st.floats(-50.0, 50.0)),
       one_hot_reads=st.booleans(), zero_usage=st.booleans())
def test_property_lrua_chain(nr, seed, decay, alpha, one_hot_reads, zero_usage):
  n, r = nr
  rng = np.random.default_rng(seed)
  usage = np.zeros(n) if zero_usage else rng.uniform(0, 5, n)
  rw = np.eye(n)[rng.integers(n, size=r)] if one_hot_reads else rng.dirichlet(np.ones(n), size=r)
  ww = rng.dirichlet(np.ones(n), size=1)
  c = rng.normal(size=n)
  f32 = lambda x: np.asarray(x, np.float32)
  u, lu, w, grads = _lrua_outputs(*map(f32, (usage, rw, ww, decay, alpha, c)))
  u, lu = np.asarray(u), np.asarray(lu)
  assert np.all(np.isfinite(u)) and np.all(u >= 0)
  np.testing.assert_array_equal(lu, ref.least_used(u, 1))
  _assert_distribution(w)
  for g in grads:
    assert np.all(np.isfinite(np.asarray(g)))


@settings(max_examples=30, deadline=None)
@given(usage=st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0]), min_size=5, max_size=5),
       n=st.integers(1, 5))
def test_property_least_used_matches_reference_with_many_ties(usage, n):
  usage = np.asarray(usage, np.float32)
  np.testing.assert_array_equal(np.asarray(J["least_used"](usage, n)), ref.least_used(usage, n))


# ---------------------------------------------------------------------------
# 5. Bad input: ValueError naming the argument, eagerly and under jit.


def _good_args():
  n, m = 5, 3
  z = lambda *s: np.full(s, 0.5, np.float32)
  return {
      "cosine_similarity": (A.cosine_similarity, dict(memory=z(n, m), key=z(m))),
      "content_weights": (A.content_weights, dict(memory=z(n, m), key=z(m), beta=z())),
      "interpolate": (A.interpolate, dict(w_content=z(n), w_prev=z(n), gate=z())),
      "shift": (A.shift, dict(weights=z(n), shift_weights=z(3))),
      "sharpen": (A.sharpen, dict(weights=z(n), gamma=z())),
      "ntm_address": (A.ntm_address, dict(memory=z(n, m), key=z(m), beta=z(), gate=z(),
                                          shift_weights=z(3), gamma=z(), w_prev=z(n))),
      "least_used": (functools.partial(A.least_used, n=1), dict(usage=z(n))),
      "update_usage": (A.update_usage, dict(usage=z(n), read_weights=z(2, n), write_weights=z(1, n),
                                            decay=z())),
      "lrua_write_weights": (A.lrua_write_weights, dict(read_weights_prev=z(n), least_used_prev=z(n),
                                                        alpha=z())),
  }


# (function, argument, bad value, substring the message must contain besides the name)
_BAD_SHAPES = [
    ("cosine_similarity", "memory", np.ones((5,), np.float32), "axes"),
    ("cosine_similarity", "memory", np.ones((2, 5, 3), np.float32), "vmap"),
    ("cosine_similarity", "key", np.ones((4,), np.float32), "[3]"),
    ("cosine_similarity", "key", np.ones((1, 3), np.float32), "axes"),
    ("content_weights", "key", np.ones((2,), np.float32), "[3]"),
    ("content_weights", "beta", np.ones((1,), np.float32), "scalar"),
    ("interpolate", "w_content", np.ones((5, 1), np.float32), "axes"),
    ("interpolate", "w_prev", np.ones((4,), np.float32), "[5]"),
    ("interpolate", "gate", np.ones((5,), np.float32), "scalar"),
    ("shift", "weights", np.ones((5, 5), np.float32), "axes"),
    ("shift", "shift_weights", np.ones((4,), np.float32), "2K+1"),
    ("shift", "shift_weights", np.ones((0,), np.float32), "2K+1"),
    ("shift", "shift_weights", np.ones((3, 1), np.float32), "axes"),
    ("sharpen", "weights", np.ones((), np.float32), "axes"),
    ("sharpen", "gamma", np.ones((5,), np.float32), "scalar"),
    ("ntm_address", "memory", np.ones((5,), np.float32), "axes"),
    ("ntm_address", "key", np.ones((4,), np.float32), "[3]"),
    ("ntm_address", "beta", np.ones((2,), np.float32), "scalar"),
    ("ntm_address", "gate", np.ones((2,), np.float32), "scalar"),
    ("ntm_address", "shift_weights", np.ones((2,), np.float32), "2K+1"),
    ("ntm_address", "gamma", np.ones((1, 1), np.float32), "scalar"),
    ("ntm_address", "w_prev", np.ones((6,), np.float32), "[5]"),
    ("least_used", "usage", np.ones((5, 2), np.float32), "axes"),
    ("update_usage", "usage", np.ones((5, 1), np.float32), "axes"),
    ("update_usage", "read_weights", np.ones((2, 4), np.float32), "[?, 5]"),
    ("update_usage", "read_weights", np.ones((5,), np.float32), "axes"),
    ("update_usage", "write_weights", np.ones((1, 6), np.float32), "[?, 5]"),
    ("update_usage", "decay", np.ones((5,), np.float32), "scalar"),
    ("lrua_write_weights", "read_weights_prev", np.ones((5, 1), np.float32), "axes"),
    ("lrua_write_weights", "least_used_prev", np.ones((4,), np.float32), "[5]"),
    ("lrua_write_weights", "alpha", np.ones((1,), np.float32), "scalar"),
]


def _call_with(fn_name, arg, value, use_jit):
  fn, kwargs = _good_args()[fn_name]
  kwargs = dict(kwargs, **{arg: value})
  if use_jit:
    return jax.jit(lambda kw: fn(**kw))(kwargs)
  return fn(**kwargs)


@pytest.mark.parametrize("use_jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("fn_name,arg,value,expect", _BAD_SHAPES,
                         ids=[f"{f}-{a}-{v.shape}" for f, a, v, _ in _BAD_SHAPES])
def test_bad_shape_raises_value_error_naming_argument(fn_name, arg, value, expect, use_jit):
  with pytest.raises(ValueError) as exc:
    _call_with(fn_name, arg, value, use_jit)
  msg = str(exc.value)
  assert f"`{arg}`" in msg, msg
  assert expect in msg, msg


def test_good_args_run_eagerly():
  for name, (fn, kwargs) in _good_args().items():
    assert np.all(np.isfinite(np.asarray(fn(**kwargs)))), name


_ARG_CASES = [(f, a) for f, (_, kw) in _good_args().items() for a in kw]


@pytest.mark.parametrize("use_jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("fn_name,arg", _ARG_CASES, ids=[f"{f}-{a}" for f, a in _ARG_CASES])
def test_complex_dtype_raises_value_error_naming_argument(fn_name, arg, use_jit):
  good = _good_args()[fn_name][1][arg]
  with pytest.raises(ValueError, match=f"`{arg}`"):
    _call_with(fn_name, arg, good.astype(np.complex64), use_jit)


@pytest.mark.parametrize("fn_name,arg", _ARG_CASES, ids=[f"{f}-{a}" for f, a in _ARG_CASES])
def test_numpy_string_array_raises_value_error_naming_argument(fn_name, arg):
  good = _good_args()[fn_name][1][arg]
  bad = np.full(good.shape, "x")
  with pytest.raises(ValueError, match=f"`{arg}`"):
    _call_with(fn_name, arg, bad, use_jit=False)
  # Under jit a string cannot be a traced argument; closing over it must still
  # hit memjax's check at trace time.
  fn, kwargs = _good_args()[fn_name]
  kwargs = dict(kwargs, **{arg: bad})
  with pytest.raises(ValueError, match=f"`{arg}`"):
    jax.jit(lambda: fn(**kwargs))()


@pytest.mark.parametrize("bad", ["abc", ["v", "w", "x", "y", "z"]], ids=["str", "list_of_str"])
def test_python_string_raises_value_error_naming_argument(bad):
  with pytest.raises(ValueError, match="`weights`"):
    A.sharpen(bad, 1.0)


def test_none_raises_value_error_naming_argument():
  with pytest.raises(ValueError, match="`gamma`"):
    A.sharpen(np.ones(3, np.float32), None)


def test_integer_and_bool_inputs_are_accepted_as_float():
  # The checks promote ints/bools to float32 rather than rejecting them.
  out = A.sharpen(np.array([1, 3], np.int32), 1)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out), [0.25, 0.75], rtol=1e-6)


@pytest.mark.parametrize("bad_n", [0, -1, 1.0, True, 6, "1", None])
def test_least_used_bad_n_raises_value_error(bad_n):
  with pytest.raises(ValueError, match="`n`"):
    A.least_used(np.zeros(5, np.float32), bad_n)


# ---------------------------------------------------------------------------
# 6. vmap over heads and batch equals a loop.


def test_vmap_ntm_address_over_heads_and_batch_equals_loop():
  rng = np.random.default_rng(0)
  b, h, n, m, k = 3, 2, 6, 4, 1
  memory = ref.away_from_zero(rng, (b, n, m))
  key = ref.away_from_zero(rng, (b, h, m))
  beta = rng.uniform(0, 10, (b, h)).astype(np.float32)
  gate = rng.uniform(0, 1, (b, h)).astype(np.float32)
  s = np.stack([ref.distributions(rng, h, 2 * k + 1) for _ in range(b)])
  gamma = rng.uniform(1, 5, (b, h)).astype(np.float32)
  wp = np.stack([ref.distributions(rng, h, n) for _ in range(b)])
  heads = jax.vmap(A.ntm_address, in_axes=(None, 0, 0, 0, 0, 0, 0))
  batched = jax.jit(jax.vmap(heads))
  with highest():
    got = np.asarray(batched(memory, key, beta, gate, s, gamma, wp))
    assert got.shape == (b, h, n)
    for i in range(b):
      for j in range(h):
        want = J["ntm_address"](memory[i], key[i, j], beta[i, j], gate[i, j], s[i, j], gamma[i, j], wp[i, j])
        np.testing.assert_allclose(got[i, j], np.asarray(want), rtol=1e-5, atol=1e-7)


def _all_stages(memory, key, w, w2, s, usage, rw, ww, scal):
  return (A.cosine_similarity(memory, key), A.content_weights(memory, key, scal),
          A.interpolate(w, w2, scal / 4), A.shift(w, s), A.sharpen(w, scal),
          A.least_used(usage, 2), A.update_usage(usage, rw, ww, scal / 4),
          A.lrua_write_weights(w, w2, scal))


def test_vmap_stages_and_lrua_over_batch_equal_loop():
  rng = np.random.default_rng(1)
  b, n, m, r = 4, 7, 3, 2
  memory, key = ref.away_from_zero(rng, (b, n, m)), ref.away_from_zero(rng, (b, m))
  w, s = ref.distributions(rng, b, n), ref.distributions(rng, b, 3)
  usage = rng.uniform(0, 3, (b, n)).astype(np.float32)
  rw = np.stack([ref.distributions(rng, r, n) for _ in range(b)])
  ww = np.stack([ref.distributions(rng, 1, n) for _ in range(b)])
  scal = rng.uniform(0.5, 2, b).astype(np.float32)
  args = (memory, key, w, w[::-1].copy(), s, usage, rw, ww, scal)
  with highest():
    got = jax.jit(jax.vmap(_all_stages))(*args)
    single = jax.jit(_all_stages)
    for i in range(b):
      want = single(*(a[i] for a in args))
      for j, (g, wnt) in enumerate(zip(got, want)):
        assert g.shape == (b,) + wnt.shape
        np.testing.assert_allclose(np.asarray(g[i]), np.asarray(wnt), rtol=1e-5, atol=1e-7,
                                   err_msg=f"output {j}, example {i}")
