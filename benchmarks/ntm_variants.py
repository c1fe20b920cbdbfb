"""NTM copy-task train step: the speed of variants tried against the plain step.

Each variant changes how the step is differentiated or looped, not what it
computes (the test checks equal losses and gradients):

* ``plain``: the step of :mod:`benchmarks.throughput_ntm` (``nn.RNN(NTMCell)``);
* ``remat_cell``: ``nn.RNN(nn.remat(NTMCell))`` — the backward pass recomputes
  each cell step from its carry instead of reading ~60 saved per-step buffers;
* ``remat_memory``: ``jax.checkpoint`` on the addressing, read and write
  functions only (the controller's intermediates are still saved);
* ``custom_vjp``: hand-written VJPs for NTM addressing (Graves et al. eqs. 5–9)
  and the erase/add write (eqs. 3–4), saving only the small per-head vectors
  (:func:`ntm_address_vjp`, :func:`write_vjp`);
* ``unroll2``: ``nn.RNN(cell, unroll=2)``.

Timed runs of the variants alternate (plain, v1, v2, …, plain, v1, …) in one
process; the table gives median ms/step and the speed relative to ``plain``.

    python -m benchmarks.ntm_variants --batches 1,16,64 --out runs/bench_variants
"""

from __future__ import annotations

import argparse
import contextlib
import functools

from benchmarks import common, throughput_ntm
from memjax.cli import int_list

VARIANTS = ("plain", "remat_cell", "remat_memory", "custom_vjp", "unroll2")


def _rolls(w, width: int):
  import jax.numpy as jnp
  k = width // 2
  return jnp.stack([jnp.roll(w, j - k) for j in range(width)])


def _address_parts(memory, key, beta, gate, shifts, gamma, w_prev):
  import jax
  import jax.numpy as jnp
  from memjax.addressing import EPS
  n_mem = jnp.sqrt(jnp.sum(memory * memory, axis=-1) + EPS)
  n_key = jnp.sqrt(jnp.sum(key * key) + EPS)
  cos = (memory @ key) / (n_mem * n_key)
  wc = jax.nn.softmax(beta * cos)
  wg = gate * wc + (1 - gate) * w_prev
  ws = shifts @ _rolls(wg, shifts.shape[0])
  w = jax.nn.softmax(gamma * jnp.log(ws + EPS))
  return w, (n_mem, n_key, cos, wc, wg, ws, w)


def _address_bwd(res, dw):
  import jax.numpy as jnp
  from memjax.addressing import EPS
  memory, key, beta, gate, shifts, gamma, w_prev, (n_mem, n_key, cos, wc, wg, ws, w) = res
  width = shifts.shape[0]
  k = width // 2
  dz = w * (dw - jnp.sum(w * dw))                     # through softmax(γ log w̃)
  dgamma = jnp.sum(dz * jnp.log(ws + EPS))
  dws = dz * gamma / (ws + EPS)
  dshifts = _rolls(wg, width) @ dws                   # through the circular convolution
  dwg = sum(shifts[j] * jnp.roll(dws, k - j) for j in range(width))
  dgate = jnp.sum(dwg * (wc - w_prev))                # through the interpolation
  du = wc * (gate * dwg - jnp.sum(wc * gate * dwg))   # through softmax(β K)
  dcos = beta * du
  ddot = dcos / (n_mem * n_key)                       # through K = M k / (‖M_i‖ ‖k‖)
  dn_mem = -dcos * cos / n_mem
  dn_key = -jnp.sum(dcos * cos) / n_key
  dmemory = ddot[:, None] * key[None, :] + (dn_mem / n_mem)[:, None] * memory
  dkey = ddot @ memory + dn_key * key / n_key
  return dmemory, dkey, jnp.sum(du * cos), dgate, dshifts, dgamma, (1 - gate) * dwg


def _make_custom_vjps():
  import jax
  import jax.numpy as jnp

  @jax.custom_vjp
  def ntm_address_vjp(memory, key, beta, gate, shifts, gamma, w_prev):
    return _address_parts(memory, key, beta, gate, shifts, gamma, w_prev)[0]

  def address_fwd(*args):
    w, parts = _address_parts(*args)
    return w, (*args, parts)

  ntm_address_vjp.defvjp(address_fwd, _address_bwd)

  @jax.custom_vjp
  def write_vjp(memory, weights, erase, add):
    return memory * (1.0 - jnp.outer(weights, erase)) + jnp.outer(weights, add)

  def write_fwd(memory, weights, erase, add):
    return write_vjp(memory, weights, erase, add), (memory, weights, erase, add)

  def write_bwd(res, g):
    memory, weights, erase, add = res
    gm = g * memory
    return g * (1.0 - jnp.outer(weights, erase)), g @ add - gm @ erase, -(weights @ gm), weights @ g

  write_vjp.defvjp(write_fwd, write_bwd)
  return ntm_address_vjp, write_vjp


@functools.cache
def custom_vjps():
  """``(ntm_address_vjp, write_vjp)``: same signatures and values as
  :func:`memjax.addressing.ntm_address` and :func:`memjax.memory.write`."""
  return _make_custom_vjps()


@contextlib.contextmanager
def _patched(variant: str):
  """Swaps the memory functions the NTM cell calls while a step is traced."""
  import jax
  from memjax import addressing
  from memjax import memory as memory_lib
  saved = (addressing.ntm_address, memory_lib.read, memory_lib.write)
  if variant == "remat_memory":
    addressing.ntm_address, memory_lib.read, memory_lib.write = (jax.checkpoint(f) for f in saved)
  elif variant == "custom_vjp":
    addressing.ntm_address, memory_lib.write = custom_vjps()
  try:
    yield
  finally:
    addressing.ntm_address, memory_lib.read, memory_lib.write = saved


def build(variant: str, batch: int, *, max_length: int, memory_size: int, seed: int = 0):
  """``(step_fn, state, compile_s, first_loss)`` of one variant's compiled train step
  (:func:`benchmarks.throughput_ntm.build_step`, traced with the variant's functions)."""
  with _patched(variant):
    js = throughput_ntm.build_step(batch, max_length, memory_size, seed, remat=variant == "remat_cell",
                                   unroll=2 if variant == "unroll2" else 1)
  state, loss, _, _ = js.executable(js.state)
  return js.executable, state, js.compiled.total_s, float(loss)


def compare(batch: int, variants, *, rounds: int, run_s: float, max_length: int, memory_size: int) -> list[dict]:
  got = common.compare_variants(lambda v: build(v, batch, max_length=max_length, memory_size=memory_size),
                                variants, rounds=rounds, run_s=run_s)
  return [{"variant": v, "batch": batch, "ms_per_step": r["step_s"] * 1e3, "speed_vs_plain": r["speed"],
           "compile_s": r["compile_s"], "first_loss": r["first_loss"]} for v, r in got.items()]


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--quick", action="store_true", help="tiny memory, short copies, batch 2 (smoke test)")
  p.add_argument("--batches", type=int_list, default=None)
  p.add_argument("--variants", default=",".join(VARIANTS))
  p.add_argument("--rounds", type=int, default=None)
  p.add_argument("--run-seconds", type=float, default=None)
  p.add_argument("--out", default="bench_variants")
  return p


def main(argv=None) -> list[dict]:
  args = build_parser().parse_args(argv)
  variants = [v.strip() for v in args.variants.split(",") if v.strip()]
  unknown = sorted(set(variants) - set(VARIANTS))
  if unknown or variants[:1] != ["plain"]:
    raise SystemExit(f"--variants: expected 'plain' first, then any of {VARIANTS}; got {variants}")
  q = args.quick
  batches = args.batches or ([2] if q else [1, 16, 64])
  rows = []
  for b in batches:
    rows += compare(b, variants, rounds=args.rounds or (1 if q else 5), run_s=args.run_seconds or (0.05 if q else 0.5),
                    max_length=3 if q else 20, memory_size=16 if q else 128)
    common.log(f"batch {b}: " + ", ".join(f"{r['variant']} {r['speed_vs_plain']:.2f}×" for r in rows[-len(variants):]))
  common.write_variants_report(
      args.out, "ntm_variants", "NTM copy-task train step: variants vs the plain step",
      ["batch", "variant", "ms/step", "speed vs plain", "compile s", "first loss"],
      [[r["batch"], r["variant"], f"{r['ms_per_step']:.2f}", f"{r['speed_vs_plain']:.2f}×",
        f"{r['compile_s']:.1f}", f"{r['first_loss']:.6f}"] for r in rows], rows)
  return rows


if __name__ == "__main__":
  main()
