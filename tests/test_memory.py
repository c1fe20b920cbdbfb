"""Correctness tests for memjax.memory (NTM eqs. 2-4, multi-head writes, LRUA write).

1. Equations: read / write / write_heads / lrua_write against an independent
   float64 numpy reference (tests/numpy_reference.py).
2. Semantics: one-hot reads and writes, erase = 1 replaces a row, zero weights
   leave memory alone, head order does not matter, one head = write, LRUA
   clears the least-used row.
3. Gradients: jax.test_util.check_grads in float64, orders 1 and 2.
4. Properties (hypothesis): finite values and gradients on zero memory,
   one-hot weights, extreme erase vectors; reads are convex combinations.
5. Bad input: wrong shapes and dtypes raise ValueError naming the argument,
   eagerly and under jax.jit.
6. vmap over heads and batch equals a Python loop.
7. The whole LRUA step (Santoro et al. 2016, §3): forward against the numpy
   reference, its hand-written backward pass against autodiff and finite
   differences.
"""

from __future__ import annotations

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
from memjax import memory as mem  # noqa: E402

F32 = dict(rtol=1e-5, atol=1e-6)

# Jitted once: one compile per shape, shared by all tests.
J = {name: jax.jit(getattr(mem, name)) for name in ["read", "write", "write_heads", "lrua_write"]}


def highest():
  return jax.default_matmul_precision("highest")


def np_(x):
  return np.asarray(x, dtype=np.float64)


def one_hot(i, n, dtype=np.float32):
  v = np.zeros(n, dtype)
  v[i] = 1.0
  return v


def erase_vec(rng, shape):
  return rng.uniform(0.0, 1.0, shape).astype(np.float32)


# ---------------------------------------------------------------------------
# 1. Equations against the numpy reference.

SHAPES = [(1, 1), (5, 3), (64, 16)]


@pytest.mark.parametrize("n,m", SHAPES)
def test_read_matches_reference(n, m):
  rng = np.random.default_rng(n + m)
  memory, w = ref.away_from_zero(rng, (n, m)), ref.distribution(rng, n)
  with highest():
    got = J["read"](memory, w)
  assert got.shape == (m,) and got.dtype == jnp.float32
  np.testing.assert_allclose(np_(got), ref.read(memory, w), **F32)


@pytest.mark.parametrize("n,m", SHAPES)
def test_write_matches_reference(n, m):
  rng = np.random.default_rng(n + m)
  memory, w = ref.away_from_zero(rng, (n, m)), ref.distribution(rng, n)
  erase, add = erase_vec(rng, m), ref.away_from_zero(rng, m)
  got = J["write"](memory, w, erase, add)
  assert got.shape == (n, m) and got.dtype == jnp.float32
  np.testing.assert_allclose(np_(got), ref.write(memory, w, erase, add), **F32)


@pytest.mark.parametrize("n,m", SHAPES)
@pytest.mark.parametrize("h", [1, 3])
def test_write_heads_matches_reference(n, m, h):
  rng = np.random.default_rng(n + m + h)
  memory, w = ref.away_from_zero(rng, (n, m)), ref.distributions(rng, h, n)
  erase, add = erase_vec(rng, (h, m)), ref.away_from_zero(rng, (h, m))
  with highest():
    got = J["write_heads"](memory, w, erase, add)
  assert got.shape == (n, m)
  np.testing.assert_allclose(np_(got), ref.write_heads(memory, w, erase, add), **F32)


@pytest.mark.parametrize("n,m", SHAPES)
@pytest.mark.parametrize("h", [1, 3])
def test_lrua_write_matches_reference(n, m, h):
  rng = np.random.default_rng(n + m + h)
  memory, w = ref.away_from_zero(rng, (n, m)), ref.distributions(rng, h, n)
  keys = ref.away_from_zero(rng, (h, m))
  for count in sorted({1, min(2, n)}):
    lu = ref.least_used(rng.uniform(size=n), count).astype(np.float32)
    with highest():
      got = J["lrua_write"](memory, w, keys, lu)
    assert got.shape == (n, m)
    np.testing.assert_allclose(np_(got), ref.lrua_write(memory, w, keys, lu), **F32)


def test_memory_matches_reference_float64():
  rng = np.random.default_rng(3)
  n, m, h = 5, 3, 2
  with jax.enable_x64(True):
    f64 = lambda x: np.asarray(x, np.float64)
    memory, w = f64(ref.away_from_zero(rng, (n, m))), f64(ref.distributions(rng, h, n))
    erase, add = f64(erase_vec(rng, (h, m))), f64(ref.away_from_zero(rng, (h, m)))
    lu = f64(one_hot(2, n))
    tol = dict(rtol=1e-12, atol=1e-12)
    outs = {
        "read": (J["read"](memory, w[0]), ref.read(memory, w[0])),
        "write": (J["write"](memory, w[0], erase[0], add[0]), ref.write(memory, w[0], erase[0], add[0])),
        "write_heads": (J["write_heads"](memory, w, erase, add), ref.write_heads(memory, w, erase, add)),
        "lrua_write": (J["lrua_write"](memory, w, add, lu), ref.lrua_write(memory, w, add, lu)),
    }
    for name, (got, want) in outs.items():
      assert got.dtype == jnp.float64, name
      np.testing.assert_allclose(got, want, **tol, err_msg=name)


# ---------------------------------------------------------------------------
# 2. Semantics.


def test_read_one_hot_returns_row_and_uniform_returns_mean():
  rng = np.random.default_rng(0)
  memory = ref.away_from_zero(rng, (5, 3))
  for i in range(5):
    np.testing.assert_allclose(np.asarray(J["read"](memory, one_hot(i, 5))), memory[i], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(J["read"](memory, np.full(5, 0.2, np.float32))),
                             memory.mean(axis=0), rtol=1e-5)


def test_write_semantics():
  rng = np.random.default_rng(1)
  n, m = 5, 3
  memory, add = ref.away_from_zero(rng, (n, m)), ref.away_from_zero(rng, m)
  ones, zeros = np.ones(m, np.float32), np.zeros(m, np.float32)
  # One-hot weight, full erase: row 2 is replaced by add, other rows untouched.
  out = np.asarray(J["write"](memory, one_hot(2, n), ones, add))
  np.testing.assert_allclose(out[2], add, rtol=1e-6)
  np.testing.assert_array_equal(np.delete(out, 2, 0), np.delete(memory, 2, 0))
  # No erase: add accumulates.
  out = np.asarray(J["write"](memory, one_hot(4, n), zeros, add))
  np.testing.assert_allclose(out[4], memory[4] + add, rtol=1e-6)
  # Zero weights: memory unchanged whatever erase and add are.
  np.testing.assert_array_equal(np.asarray(J["write"](memory, np.zeros(n, np.float32), ones, add)),
                                memory)
  # Partial erase of one column only.
  e = np.array([0.0, 1.0, 0.5], np.float32)
  out = np.asarray(J["write"](memory, one_hot(0, n), e, zeros))
  np.testing.assert_allclose(out[0], memory[0] * (1 - e), rtol=1e-6)
  # Write then read back through the same one-hot weighting returns add.
  np.testing.assert_allclose(
      np.asarray(J["read"](J["write"](memory, one_hot(3, n), ones, add), one_hot(3, n))), add,
      rtol=1e-6)


def test_write_heads_one_head_equals_write():
  rng = np.random.default_rng(2)
  n, m = 5, 3
  memory, w = ref.away_from_zero(rng, (n, m)), ref.distribution(rng, n)
  erase, add = erase_vec(rng, m), ref.away_from_zero(rng, m)
  with highest():
    np.testing.assert_allclose(np.asarray(J["write_heads"](memory, w[None], erase[None], add[None])),
                               np.asarray(J["write"](memory, w, erase, add)), **F32)


def test_write_heads_zero_heads_is_identity():
  memory = ref.away_from_zero(np.random.default_rng(0), (5, 3))
  z = np.zeros((0, 5), np.float32), np.zeros((0, 3), np.float32)
  np.testing.assert_array_equal(np.asarray(mem.write_heads(memory, z[0], z[1], z[1])), memory)


def test_write_heads_is_invariant_to_head_order():
  rng = np.random.default_rng(4)
  n, m, h = 5, 3, 3
  memory, w = ref.away_from_zero(rng, (n, m)), ref.distributions(rng, h, n)
  erase, add = erase_vec(rng, (h, m)), ref.away_from_zero(rng, (h, m))
  perm = np.array([2, 0, 1])
  with highest():
    np.testing.assert_allclose(np.asarray(J["write_heads"](memory, w, erase, add)),
                               np.asarray(J["write_heads"](memory, w[perm], erase[perm], add[perm])),
                               **F32)


def test_write_heads_with_disjoint_heads_equals_sequential_writes():
  rng = np.random.default_rng(5)
  n, m = 5, 3
  memory = ref.away_from_zero(rng, (n, m))
  w = np.stack([one_hot(1, n), 0.5 * one_hot(3, n) + 0.5 * one_hot(4, n)])
  erase, add = erase_vec(rng, (2, m)), ref.away_from_zero(rng, (2, m))
  seq = J["write"](J["write"](memory, w[0], erase[0], add[0]), w[1], erase[1], add[1])
  with highest():
    np.testing.assert_allclose(np.asarray(J["write_heads"](memory, w, erase, add)), np.asarray(seq),
                               **F32)


def test_write_heads_two_heads_full_erase_same_slot_sums_adds():
  # Both heads fully erase slot 0: erasures multiply (row cleared), adds sum.
  memory = ref.away_from_zero(np.random.default_rng(6), (5, 3))
  w = np.stack([one_hot(0, 5), one_hot(0, 5)])
  erase = np.ones((2, 3), np.float32)
  add = np.array([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]], np.float32)
  out = np.asarray(J["write_heads"](memory, w, erase, add))
  np.testing.assert_allclose(out[0], [11.0, 22.0, 33.0], rtol=1e-6)
  np.testing.assert_array_equal(out[1:], memory[1:])


def test_lrua_write_clears_least_used_row_then_adds():
  rng = np.random.default_rng(7)
  n, m = 5, 3
  memory, key = ref.away_from_zero(rng, (n, m)), ref.away_from_zero(rng, m)
  usage = np.array([0.9, 0.2, 0.5, 0.1, 0.7], np.float32)
  lu = np.asarray(A.least_used(usage, 1))
  np.testing.assert_array_equal(lu, one_hot(3, n))
  # All write weight on the cleared slot: the slot holds exactly the key.
  out = np.asarray(J["lrua_write"](memory, one_hot(3, n)[None], key[None], lu))
  np.testing.assert_allclose(out[3], key, rtol=1e-6)
  np.testing.assert_array_equal(np.delete(out, 3, 0), np.delete(memory, 3, 0))
  # Weight elsewhere: the least-used slot is zeroed, the written slot accumulates.
  out = np.asarray(J["lrua_write"](memory, one_hot(0, n)[None], key[None], lu))
  np.testing.assert_array_equal(out[3], np.zeros(m))
  np.testing.assert_allclose(out[0], memory[0] + key, rtol=1e-6)
  # Nothing cleared, zero weights: unchanged.
  out = np.asarray(J["lrua_write"](memory, np.zeros((1, n), np.float32), key[None],
                                   np.zeros(n, np.float32)))
  np.testing.assert_array_equal(out, memory)


def test_lrua_step_end_to_end():
  """One MANN step: usage -> least used -> write weights -> write -> read back."""
  rng = np.random.default_rng(8)
  n, m = 6, 4
  memory = ref.away_from_zero(rng, (n, m))
  usage_prev = np.array([0.5, 0.3, 0.05, 0.8, 0.6, 0.4], np.float32)
  rw_prev = one_hot(0, n)
  lu_prev = np.asarray(A.least_used(usage_prev, 1))
  # α → -∞: write entirely to the least-used slot (2).
  ww = np.asarray(A.lrua_write_weights(rw_prev, lu_prev, -100.0))
  np.testing.assert_allclose(ww, one_hot(2, n), atol=1e-7)
  key = ref.away_from_zero(rng, m)
  new_mem = J["lrua_write"](memory, ww[None], key[None], lu_prev)
  np.testing.assert_allclose(np.asarray(J["read"](new_mem, one_hot(2, n))), key, rtol=1e-6)
  usage = np.asarray(A.update_usage(usage_prev, rw_prev[None], ww[None], 0.95))
  np.testing.assert_allclose(usage, ref.update_usage(usage_prev, rw_prev[None], ww[None], 0.95),
                             rtol=1e-6)


# ---------------------------------------------------------------------------
# 3. check_grads in float64.


def _grad_cases():
  rng = np.random.default_rng(11)
  n, m, h = 4, 3, 2
  f = lambda x: np.asarray(x, np.float64)
  memory, w = f(ref.away_from_zero(rng, (n, m))), f(ref.distributions(rng, h, n))
  erase, add = f(erase_vec(rng, (h, m))), f(ref.away_from_zero(rng, (h, m)))
  # least_used_prev is differentiable too (the result is linear in it).
  lu = f(rng.uniform(0.1, 0.9, n))
  return {
      "read": (mem.read, (memory, w[0])),
      "write": (mem.write, (memory, w[0], erase[0], add[0])),
      "write_heads": (mem.write_heads, (memory, w, erase, add)),
      "lrua_write": (mem.lrua_write, (memory, w, add, lu)),
  }


def _combined(names):
  """One function of every case's arguments returning every case's output (one
  compile per derivative instead of one per function and derivative)."""
  cases = _grad_cases()

  def f(*flat):
    outs, i = {}, 0
    for name in names:
      fn, args = cases[name]
      outs[name] = fn(*flat[i:i + len(args)])
      i += len(args)
    return outs

  return f, tuple(jnp.asarray(a, jnp.float64) for name in names for a in cases[name][1])


def _check_each_on_failure(names, check):
  try:
    check(names)
  except AssertionError:
    for name in names:
      try:
        check([name])
      except AssertionError as e:
        raise AssertionError(f"check_grads failed for {name}:\n{e}") from None
    raise


def test_check_grads_float64_order1():
  def check(names):
    f, flat = _combined(names)
    check_grads(jax.jit(f), flat, order=1, modes=("fwd", "rev"), atol=1e-6, rtol=1e-6)

  with jax.enable_x64(True):
    f, flat = _combined(list(_grad_cases()))
    for name, out in jax.eval_shape(f, *flat).items():
      assert out.dtype == jnp.float64, name
    _check_each_on_failure(list(_grad_cases()), check)


def test_check_grads_float64_order2():
  """Hessian-vector products: check_grads (fwd and rev) of the jitted gradient
  of a scalar of every output, against finite differences of that gradient."""
  def check(names):
    f, flat = _combined(names)

    def scalar(*a):
      return sum(jnp.sum(o * jnp.linspace(-1.0, 2.0, o.size).reshape(o.shape))
                 for o in f(*a).values())

    grad = jax.jit(jax.grad(scalar, argnums=tuple(range(len(flat)))))
    check_grads(grad, flat, order=1, modes=("fwd", "rev"), atol=1e-6, rtol=1e-6)

  with jax.enable_x64(True):
    _check_each_on_failure(list(_grad_cases()), check)


def test_gradients_of_write_have_the_paper_form():
  # dM'/dadd = w (outer), dM'/derase = -M ⊙ w: spot-check at one-hot w.
  rng = np.random.default_rng(12)
  memory, add = ref.away_from_zero(rng, (4, 3)), ref.away_from_zero(rng, 3)
  e = erase_vec(rng, 3)
  w = one_hot(1, 4)
  g_add = jax.grad(lambda a: jnp.sum(mem.write(memory, w, e, a)))(add)
  np.testing.assert_allclose(np.asarray(g_add), np.ones(3), rtol=1e-6)
  g_erase = jax.grad(lambda e_: jnp.sum(mem.write(memory, w, e_, add)))(e)
  np.testing.assert_allclose(np.asarray(g_erase), -memory[1], rtol=1e-6)


# ---------------------------------------------------------------------------
# 4. Hypothesis properties.

SHAPE_SET = [(1, 1, 1), (4, 16, 3), (64, 5, 2)]  # (N, M, H): few shapes, few compiles


def _mem_losses(memory, w, erase, add, lu, c):
  return (jnp.sum(mem.read(memory, w[0]) * c[0]) + jnp.sum(mem.write(memory, w[0], erase[0], add[0]))
          + jnp.sum(mem.write_heads(memory, w, erase, add) * memory)
          + jnp.sum(mem.lrua_write(memory, w, add, lu) ** 2))


@jax.jit
def _mem_outputs(memory, w, erase, add, lu, c):
  outs = {"read": mem.read(memory, w[0]), "write": mem.write(memory, w[0], erase[0], add[0]),
          "write_heads": mem.write_heads(memory, w, erase, add),
          "lrua_write": mem.lrua_write(memory, w, add, lu)}
  return outs, jax.grad(_mem_losses, argnums=tuple(range(5)))(memory, w, erase, add, lu, c)


@st.composite
def mem_case(draw):
  n, m, h = draw(st.sampled_from(SHAPE_SET))
  rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
  memory = {"zero": np.zeros((n, m)), "normal": rng.normal(size=(n, m)),
            "large": 1e3 * rng.normal(size=(n, m))}[draw(st.sampled_from(["zero", "normal", "large"]))]
  w_mode = draw(st.sampled_from(["one_hot", "dist", "zero"]))
  w = {"one_hot": np.eye(n)[rng.integers(n, size=h)], "dist": rng.dirichlet(np.ones(n), size=h),
       "zero": np.zeros((h, n))}[w_mode]
  e_mode = draw(st.sampled_from(["zeros", "ones", "uniform", "binary"]))
  erase = {"zeros": np.zeros((h, m)), "ones": np.ones((h, m)), "uniform": rng.uniform(size=(h, m)),
           "binary": rng.integers(0, 2, size=(h, m))}[e_mode]
  add = {"zero": np.zeros((h, m)), "normal": rng.normal(size=(h, m))}[draw(st.sampled_from(["zero", "normal"]))]
  lu = np.eye(n)[rng.integers(n)]
  c = rng.normal(size=(1, m))
  f32 = lambda x: np.asarray(x, np.float32)
  return tuple(map(f32, (memory, w, erase, add, lu, c)))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mem_case())
def test_property_memory_ops_finite_match_reference_and_finite_grads(case):
  memory, w, erase, add, lu, c = case
  outs, grads = _mem_outputs(*case)
  want = {"read": ref.read(memory, w[0]), "write": ref.write(memory, w[0], erase[0], add[0]),
          "write_heads": ref.write_heads(memory, w, erase, add),
          "lrua_write": ref.lrua_write(memory, w, add, lu)}
  scale = 1.0 + np.abs(memory).max() + np.abs(add).sum()
  for name, out in outs.items():
    out = np_(out)
    assert np.all(np.isfinite(out)), name
    np.testing.assert_allclose(out, want[name], rtol=1e-5, atol=1e-5 * scale, err_msg=name)
  for arg, g in zip(["memory", "weights", "erase", "add", "least_used_prev"], grads):
    assert np.all(np.isfinite(np.asarray(g))), arg
  # A read through a distribution is a convex combination of rows.
  if np.isclose(w[0].sum(), 1.0):
    r = np_(outs["read"])
    tol = 1e-5 * scale
    assert np.all(r >= memory.min(axis=0) - tol) and np.all(r <= memory.max(axis=0) + tol)
  # Erase in [0, 1] with weights in [0, 1] only shrinks entries before the add.
  keep = np_(outs["write_heads"]) - ref.write_heads(np.zeros_like(memory), w, erase, add)
  assert np.all(np.abs(keep) <= np.abs(memory) + 1e-5 * scale)


# ---------------------------------------------------------------------------
# 5. Bad input.


def _good_args():
  n, m, h = 5, 3, 2
  z = lambda *s: np.full(s, 0.5, np.float32)
  return {
      "read": dict(memory=z(n, m), weights=z(n)),
      "write": dict(memory=z(n, m), weights=z(n), erase=z(m), add=z(m)),
      "write_heads": dict(memory=z(n, m), weights=z(h, n), erase=z(h, m), add=z(h, m)),
      "lrua_write": dict(memory=z(n, m), weights=z(h, n), adds=z(h, m), least_used_prev=z(n)),
  }


_BAD_SHAPES = [
    ("read", "memory", (5,), "axes"),
    ("read", "memory", (2, 5, 3), "vmap"),
    ("read", "weights", (4,), "[5]"),
    ("read", "weights", (1, 5), "axes"),
    ("write", "memory", (5, 3, 1), "axes"),
    ("write", "weights", (6,), "[5]"),
    ("write", "erase", (5,), "[3]"),
    ("write", "erase", (), "axes"),
    ("write", "add", (2,), "[3]"),
    ("write", "add", (1, 3), "axes"),
    ("write_heads", "memory", (15,), "axes"),
    ("write_heads", "weights", (5,), "axes"),
    ("write_heads", "weights", (2, 4), "[?, 5]"),
    ("write_heads", "erase", (3, 3), "[2, 3]"),
    ("write_heads", "erase", (2, 4), "[2, 3]"),
    ("write_heads", "add", (2, 2), "[2, 3]"),
    ("write_heads", "add", (3,), "axes"),
    ("lrua_write", "memory", (5,), "axes"),
    ("lrua_write", "weights", (2, 6), "[?, 5]"),
    ("lrua_write", "adds", (1, 3), "[2, 3]"),
    ("lrua_write", "adds", (2, 5), "[2, 3]"),
    ("lrua_write", "least_used_prev", (4,), "[5]"),
    ("lrua_write", "least_used_prev", (5, 1), "axes"),
]


def _call(fn_name, arg, value, use_jit):
  kwargs = dict(_good_args()[fn_name], **{arg: value})
  fn = getattr(mem, fn_name)
  if use_jit:
    return jax.jit(lambda kw: fn(**kw))(kwargs)
  return fn(**kwargs)


@pytest.mark.parametrize("use_jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("fn_name,arg,shape,expect", _BAD_SHAPES,
                         ids=[f"{f}-{a}-{s}" for f, a, s, _ in _BAD_SHAPES])
def test_bad_shape_raises_value_error_naming_argument(fn_name, arg, shape, expect, use_jit):
  with pytest.raises(ValueError) as exc:
    _call(fn_name, arg, np.ones(shape, np.float32), use_jit)
  msg = str(exc.value)
  assert f"`{arg}`" in msg, msg
  assert expect in msg, msg


def test_good_args_run_eagerly():
  for name, kwargs in _good_args().items():
    assert np.all(np.isfinite(np.asarray(getattr(mem, name)(**kwargs)))), name


_ARG_CASES = [(f, a) for f, kw in _good_args().items() for a in kw]


@pytest.mark.parametrize("use_jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("fn_name,arg", _ARG_CASES, ids=[f"{f}-{a}" for f, a in _ARG_CASES])
def test_complex_dtype_raises_value_error_naming_argument(fn_name, arg, use_jit):
  good = _good_args()[fn_name][arg]
  with pytest.raises(ValueError, match=f"`{arg}`"):
    _call(fn_name, arg, good.astype(np.complex64), use_jit)


@pytest.mark.parametrize("fn_name,arg", _ARG_CASES, ids=[f"{f}-{a}" for f, a in _ARG_CASES])
def test_string_array_raises_value_error_naming_argument(fn_name, arg):
  good = _good_args()[fn_name][arg]
  bad = np.full(good.shape, "x")
  with pytest.raises(ValueError, match=f"`{arg}`"):
    _call(fn_name, arg, bad, use_jit=False)
  kwargs = dict(_good_args()[fn_name], **{arg: bad})
  fn = getattr(mem, fn_name)
  with pytest.raises(ValueError, match=f"`{arg}`"):
    jax.jit(lambda: fn(**kwargs))()  # closed over: still checked at trace time


def test_python_string_raises_value_error_naming_argument():
  with pytest.raises(ValueError, match="`add`"):
    mem.write(np.ones((2, 3), np.float32), np.ones(2, np.float32), np.ones(3, np.float32), "abc")


# ---------------------------------------------------------------------------
# 6. vmap over heads and batch equals a loop.


def test_vmap_read_over_heads_and_batch_equals_loop():
  rng = np.random.default_rng(20)
  b, h, n, m = 3, 4, 5, 3
  memory = ref.away_from_zero(rng, (b, n, m))
  w = np.stack([ref.distributions(rng, h, n) for _ in range(b)])
  f = jax.jit(jax.vmap(jax.vmap(mem.read, in_axes=(None, 0))))
  with highest():
    got = np.asarray(f(memory, w))
    assert got.shape == (b, h, m)
    for i in range(b):
      for j in range(h):
        np.testing.assert_allclose(got[i, j], np.asarray(J["read"](memory[i], w[i, j])), **F32)


def test_vmap_writes_over_batch_equal_loop():
  rng = np.random.default_rng(21)
  b, h, n, m = 3, 2, 5, 3
  memory = ref.away_from_zero(rng, (b, n, m))
  w = np.stack([ref.distributions(rng, h, n) for _ in range(b)])
  erase, add = erase_vec(rng, (b, h, m)), ref.away_from_zero(rng, (b, h, m))
  lu = np.stack([one_hot(i % n, n) for i in range(b)])

  def all_writes(memory, w, erase, add, lu):
    return (mem.write(memory, w[0], erase[0], add[0]), mem.write_heads(memory, w, erase, add),
            mem.lrua_write(memory, w, add, lu))

  with highest():
    got = jax.jit(jax.vmap(all_writes))(memory, w, erase, add, lu)
    single = jax.jit(all_writes)
    for i in range(b):
      want = single(memory[i], w[i], erase[i], add[i], lu[i])
      for k, (g, wnt) in enumerate(zip(got, want)):
        assert g.shape == (b, n, m)
        np.testing.assert_allclose(np.asarray(g[i]), np.asarray(wnt), **F32, err_msg=f"out {k}")


def test_vmap_write_over_heads_sequentially_matches_reference():
  # Heads applied one after another with write (erase then add per head, the
  # module docstring's alternative to write_heads), scanned over heads.
  rng = np.random.default_rng(22)
  h, n, m = 3, 5, 3
  memory = ref.away_from_zero(rng, (n, m))
  w, erase, add = ref.distributions(rng, h, n), erase_vec(rng, (h, m)), ref.away_from_zero(rng, (h, m))

  def step(mm, x):
    return mem.write(mm, *x), None

  got, _ = jax.lax.scan(step, memory, (w, erase, add))
  want = np_(memory)
  for k in range(h):
    want = ref.write(want, w[k], erase[k], add[k])
  np.testing.assert_allclose(np_(got), want, **F32)


# ---------------------------------------------------------------------------
# 7. The LRUA step.


def test_lrua_step_matches_numpy_paper_equations():
  n, m, r = 16, 8, 3
  rng = np.random.default_rng(2)
  memory = rng.normal(size=(n, m))
  usage = rng.permutation(n) * 0.3 + rng.uniform(0, 0.1, n)  # distinct usages, no ties
  w_prev = ref._softmax(rng.normal(size=(r, n)) * 2)
  keys, adds = np.tanh(rng.normal(size=(r, m))), np.tanh(rng.normal(size=(r, m)))
  alpha = rng.normal(size=(r,))
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  with jax.default_matmul_precision("highest"):
    got = jax.jit(mem.lrua_step)(f32(memory), f32(usage), f32(w_prev), f32(keys), f32(adds), f32(alpha),
                                 jnp.float32(0.9))
  want = ref.lrua_step(memory, usage, w_prev, keys, adds, alpha, 0.9)
  for name, a, b in zip(("memory", "usage", "read_weights", "write_weights", "reads"), got, want):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=name)


def _plain_lrua_step(memory, usage, w_prev, keys, adds, alpha, decay):
  """The LRUA step in plain jax.numpy (autodiff's gradients are the reference)."""
  r = w_prev.shape[0]
  order = jnp.argsort(jax.lax.stop_gradient(usage), stable=True)
  w_lu = jnp.zeros_like(usage).at[order[:r]].set(1.0)
  clear = jnp.zeros_like(usage).at[order[0]].set(1.0)
  g = jax.nn.sigmoid(alpha)[:, None]
  w_w = g * w_prev + (1 - g) * w_lu
  m = memory * (1 - clear)[:, None] + w_w.T @ adds
  cos = (keys @ m.T) / (jnp.sqrt(jnp.sum(keys ** 2, 1) + 1e-8)[:, None] * jnp.sqrt(jnp.sum(m ** 2, 1) + 1e-8))
  w_r = jax.nn.softmax(cos, axis=-1)
  return m, decay * usage + w_r.sum(0) + w_w.sum(0), w_r, w_w, w_r @ m


def test_lrua_step_hand_written_backward_equals_autodiff():
  """lrua_step's custom VJP == autodiff of the plain equations, and == finite differences."""
  lrua_step = mem.lrua_step
  n, m, r = 16, 8, 3
  rng = np.random.default_rng(1)
  args = (jnp.asarray(rng.normal(size=(n, m)), jnp.float32),
          jnp.asarray(rng.permutation(n) * 0.3 + rng.uniform(0, 0.1, n), jnp.float32),
          jnp.asarray(ref._softmax(rng.normal(size=(r, n)) * 2), jnp.float32),
          jnp.tanh(jnp.asarray(rng.normal(size=(r, m)), jnp.float32)),
          jnp.tanh(jnp.asarray(rng.normal(size=(r, m)), jnp.float32)),
          jnp.asarray(rng.normal(size=(r,)), jnp.float32), jnp.float32(0.95))
  cot = tuple(jnp.asarray(rng.normal(size=o.shape), jnp.float32) for o in _plain_lrua_step(*args))
  with jax.default_matmul_precision("highest"):
    out, vjp = jax.vjp(lrua_step, *args)
    want_out, want_vjp = jax.vjp(_plain_lrua_step, *args)
    got, want = vjp(cot), want_vjp(cot)
  for a, b in zip(out, want_out):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  check_grads(lambda *a: lrua_step(*a, jnp.float32(0.95)), args[:6], order=1, modes=["rev"],
              atol=5e-2, rtol=5e-2, eps=1e-3)
