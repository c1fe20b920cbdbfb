"""Microbenchmarks of memjax's addressing and memory kernels, against plain numpy.

Kernels: ``content_weights``, ``ntm_address``, ``memory.read``, ``memory.write``
and the LRUA pieces ``least_used``, ``update_usage``, ``lrua_write_weights``,
``memory.lrua_write``, each written for one example in memjax, here
``jax.vmap``-ed over a batch axis and jitted. Grid: memory slots
N ∈ {128, 1024, 16384}, slot width M ∈ {20, 64}, batch B ∈ {1, 16, 256}. The
LRUA pieces use 4 heads (Santoro et al. 2016: 4 read heads, n = 4 least-used
slots, one write per head).

For every cell it reports µs per call (median over samples, with the IQR),
achieved GB/s (bytes of inputs + outputs, counted by hand: each array read
once, the output written once) and GFLOP/s (the equation's arithmetic, counted
by hand; see ``KERNELS``), each also as a percentage of this machine's peaks
measured in the same run (a large fp32 matmul's GFLOP/s in JAX; a large array
copy's GB/s in JAX), and the time of a plain-numpy implementation of the same
batched kernel in the same run (ratio = numpy time / jax time: > 1 means JAX is
faster). Each numpy implementation is checked against the JAX output once per
cell.

    python -m benchmarks.addressing --out bench_out          # full grid (~5-10 min)
    python -m benchmarks.addressing --quick --out /tmp/b      # seconds

Writes ``addressing.md`` (the table), ``addressing.json`` (every number) and
``addressing.png`` (µs/call against N) to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
import time
from typing import Callable

import numpy as np

from benchmarks import common

HEADS = 4          # LRUA heads (reads = writes = 4, least-used n = 4)
SHIFT_WIDTH = 3    # 2K + 1 with K = 1
EPS = 1e-8         # as memjax.addressing.EPS
FULL_GRID = dict(n=(128, 1024, 16384), m=(20, 64), b=(1, 16, 256))
QUICK_GRID = dict(n=(128,), m=(20,), b=(4,))


# --------------------------------------------------------------------------- numpy baselines
# Batched (leading axis B), vectorised numpy: the baseline a careful numpy user would write.


def _np_softmax(z):
  z = z - z.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def np_content_weights(memory, key, beta):
  dot = np.matmul(memory, key[:, :, None])[:, :, 0]
  norms = np.sqrt(np.einsum("bnm,bnm->bn", memory, memory) + EPS) * \
      np.sqrt(np.einsum("bm,bm->b", key, key) + EPS)[:, None]
  return _np_softmax(beta[:, None] * dot / norms)


def np_ntm_address(memory, key, beta, gate, shift_weights, gamma, w_prev):
  wc = np_content_weights(memory, key, beta)
  wg = gate[:, None] * wc + (1.0 - gate[:, None]) * w_prev
  k_max = shift_weights.shape[1] // 2
  ws = sum(shift_weights[:, k:k + 1] * np.roll(wg, k - k_max, axis=1)
           for k in range(shift_weights.shape[1]))
  return _np_softmax(gamma[:, None] * np.log(ws + EPS))


def np_read(memory, weights):
  return np.matmul(weights[:, None, :], memory)[:, 0, :]


def np_write(memory, weights, erase, add):
  w = weights[:, :, None]
  return memory * (1.0 - w * erase[:, None, :]) + w * add[:, None, :]


def np_least_used(usage, n=HEADS):
  idx = np.argpartition(usage, n - 1, axis=-1)[:, :n]
  out = np.zeros_like(usage)
  np.put_along_axis(out, idx, 1.0, axis=-1)
  return out


def np_update_usage(usage, read_weights, write_weights, decay):
  return decay[:, None] * usage + read_weights.sum(axis=1) + write_weights.sum(axis=1)


def np_lrua_write_weights(read_weights_prev, least_used_prev, alpha):
  g = (1.0 / (1.0 + np.exp(-alpha)))[:, None]
  return g * read_weights_prev + (1.0 - g) * least_used_prev


def np_lrua_write(memory, weights, keys, least_used_prev):
  return memory * (1.0 - least_used_prev)[:, :, None] + np.matmul(weights.transpose(0, 2, 1), keys)


# --------------------------------------------------------------------------- kernels


@dataclasses.dataclass(frozen=True)
class Kernel:
  """One kernel: memjax function (one example), numpy baseline (batched), inputs, counts.

  ``bytes_per_example(n, m)`` and ``flops_per_example(n, m)`` are hand counts for one
  example: float32 bytes of every input read once plus the output written once; and
  the arithmetic of the equation (add, multiply, divide, sqrt, exp, log each 1 FLOP;
  a length-k dot product 2k). ``flops_per_example`` is None for ``least_used``, a
  selection (comparisons), not arithmetic.
  """
  name: str
  np_fn: Callable
  make_args: Callable
  bytes_per_example: Callable[[int, int], float]
  flops_per_example: Callable[[int, int], float] | None
  equation: str


def _dist(rng, *shape):
  x = rng.random(shape, dtype=np.float32) + 0.1
  return x / x.sum(axis=-1, keepdims=True)


def _args_content(rng, b, n, m):
  return (rng.standard_normal((b, n, m), dtype=np.float32), rng.standard_normal((b, m), dtype=np.float32),
          rng.random(b, dtype=np.float32) * 10)


def _args_address(rng, b, n, m):
  mem, key, beta = _args_content(rng, b, n, m)
  return (mem, key, beta, rng.random(b, dtype=np.float32), _dist(rng, b, SHIFT_WIDTH),
          1.0 + 2.0 * rng.random(b, dtype=np.float32), _dist(rng, b, n))


def _args_read(rng, b, n, m):
  return rng.standard_normal((b, n, m), dtype=np.float32), _dist(rng, b, n)


def _args_write(rng, b, n, m):
  return (rng.standard_normal((b, n, m), dtype=np.float32), _dist(rng, b, n), rng.random((b, m), dtype=np.float32),
          rng.standard_normal((b, m), dtype=np.float32))


def _args_least_used(rng, b, n, m):
  return (rng.random((b, n), dtype=np.float32) * 5,)


def _args_update_usage(rng, b, n, m):
  return (rng.random((b, n), dtype=np.float32), _dist(rng, b, HEADS, n), _dist(rng, b, HEADS, n),
          np.full((b,), 0.95, np.float32))


def _args_lrua_weights(rng, b, n, m):
  return _dist(rng, b, n), np_least_used(rng.random((b, n), dtype=np.float32)), rng.standard_normal(b, dtype=np.float32)


def _args_lrua_write(rng, b, n, m):
  return (rng.standard_normal((b, n, m), dtype=np.float32), _dist(rng, b, HEADS, n),
          rng.standard_normal((b, HEADS, m), dtype=np.float32), np_least_used(rng.random((b, n), dtype=np.float32)))


def _jax_fns():
  from memjax import addressing, memory
  return {
      "content_weights": lambda: addressing.content_weights,
      "ntm_address": lambda: addressing.ntm_address,
      "read": lambda: memory.read,
      "write": lambda: memory.write,
      "least_used": lambda: functools.partial(addressing.least_used, n=HEADS),
      "update_usage": lambda: addressing.update_usage,
      "lrua_write_weights": lambda: addressing.lrua_write_weights,
      "lrua_write": lambda: memory.lrua_write,
  }


F32 = 4.0
H = HEADS
S = SHIFT_WIDTH
# content: cosine 2NM (dot) + 2NM (row norms) + 2M (key norm) + 3N (sqrt, product, divide);
# β·K N; softmax 5N (max, subtract, exp, sum, divide).
_CONTENT_FLOPS = lambda n, m: 4 * n * m + 2 * m + 9 * n
KERNELS = [
    Kernel("content_weights", np_content_weights, _args_content,
           lambda n, m: F32 * (n * m + m + 1 + n), _CONTENT_FLOPS,
           "softmax(β·cos(k, M_i)) (eq. 5-6)"),
    # + interpolation 3N, shift 2·S·N, sharpening 8N (add, log, multiply, softmax 5N).
    Kernel("ntm_address", np_ntm_address, _args_address,
           lambda n, m: F32 * (n * m + m + 3 + S + 2 * n), lambda n, m: _CONTENT_FLOPS(n, m) + 11 * n + 2 * S * n,
           "eq. 5-9 (content, gate, shift, sharpen)"),
    Kernel("read", np_read, _args_read,
           lambda n, m: F32 * (n * m + n + m), lambda n, m: 2 * n * m, "r = wᵀM (eq. 2)"),
    # w eᵀ NM, 1 − · NM, M ⊙ · NM, w aᵀ NM, + NM.
    Kernel("write", np_write, _args_write,
           lambda n, m: F32 * (2 * n * m + n + 2 * m), lambda n, m: 5 * n * m, "M ⊙ (1 − weᵀ) + waᵀ (eq. 3-4)"),
    Kernel("least_used", np_least_used, _args_least_used,
           lambda n, m: F32 * 2 * n, None, f"indicator of the {H} smallest usages (top_k)"),
    # decay·u N, Σ over H reads (H−1)N, Σ over H writes (H−1)N, two adds 2N.
    Kernel("update_usage", np_update_usage, _args_update_usage,
           lambda n, m: F32 * (n * (2 + 2 * H) + 1), lambda n, m: (2 * H + 1) * n,
           f"γu + Σ w^r + Σ w^w ({H}+{H} heads)"),
    Kernel("lrua_write_weights", np_lrua_write_weights, _args_lrua_weights,
           lambda n, m: F32 * (3 * n + 1), lambda n, m: 3 * n + 2, "σ(α)w^r + (1 − σ(α))w^lu"),
    # (1 − lu) N, M ⊙ · NM, Wᵀ K 2H·NM, + NM.
    Kernel("lrua_write", np_lrua_write, _args_lrua_write,
           lambda n, m: F32 * (2 * n * m + H * n + H * m + n), lambda n, m: (2 * H + 2) * n * m + n,
           f"M ⊙ (1 − lu) + Σ_h w_h k_hᵀ ({H} heads)"),
]


# --------------------------------------------------------------------------- benchmark


def bench_cell(kernel: Kernel, jax_fn, b: int, n: int, m: int, *, rng, repeats: int, budget_s: float,
               check: bool = True) -> dict:
  """Times one kernel at one (B, N, M): compile, JAX call, numpy call; checks they agree."""
  import jax
  host_args = kernel.make_args(rng, b, n, m)
  dev_args = [jax.device_put(a) for a in host_args]
  compiled = common.compile_fn(jax.vmap(jax_fn), *dev_args)
  exe = compiled.executable
  t_jax = common.time_fn(lambda: exe(*dev_args), warmup=2, repeats=repeats, max_total_s=budget_s)
  t_np = common.time_fn(lambda: kernel.np_fn(*host_args), warmup=1, repeats=repeats, max_total_s=budget_s,
                        sync=lambda x: x)
  max_err = None
  if check:
    got = np.asarray(exe(*dev_args))
    want = kernel.np_fn(*host_args)
    max_err = float(np.max(np.abs(got - want) / (1e-3 + np.abs(want))))
  nbytes = b * kernel.bytes_per_example(n, m)
  flops = None if kernel.flops_per_example is None else b * kernel.flops_per_example(n, m)
  del dev_args
  return {
      "kernel": kernel.name, "B": b, "N": n, "M": m,
      "compile_s": compiled.total_s, "jax": t_jax.as_dict(), "numpy": t_np.as_dict(),
      "us": t_jax.median * 1e6, "iqr_us": t_jax.iqr * 1e6, "numpy_us": t_np.median * 1e6,
      "bytes": nbytes, "flops": flops,
      "gbs": nbytes / t_jax.median / 1e9,
      "gflops": None if flops is None else flops / t_jax.median / 1e9,
      "numpy_over_jax": t_np.median / t_jax.median,
      "max_rel_err": max_err,
  }


def build_table(results: list[dict], peaks: common.Peaks) -> str:
  headers = ["kernel", "B", "N", "M", "µs/call", "IQR µs", "GB/s", "% copy peak", "GFLOP/s",
             "% matmul peak", "numpy µs", "numpy/jax", "compile ms"]
  rows = []
  for r in results:
    rows.append([r["kernel"], r["B"], r["N"], r["M"], r["us"], r["iqr_us"], r["gbs"],
                 100 * r["gbs"] / peaks.copy_gbs, r["gflops"],
                 None if r["gflops"] is None else 100 * r["gflops"] / peaks.matmul_gflops,
                 r["numpy_us"], r["numpy_over_jax"], 1e3 * r["compile_s"]])
  return common.markdown_table(headers, rows, ["l"] + ["r"] * (len(headers) - 1))


def plot(results: list[dict], path: str) -> None:
  plt = common.pyplot()
  names = [k.name for k in KERNELS if any(r["kernel"] == k.name for r in results)]  # those measured (--kernels)
  fig, axes = plt.subplots(2, 4, figsize=(18, 8), sharex=True)
  bs = sorted({r["B"] for r in results})
  ms = sorted({r["M"] for r in results if r["M"] is not None}) + [None]
  colors = dict(zip(bs, plt.cm.viridis(np.linspace(0.1, 0.85, len(bs)))))
  for ax, name in zip(axes.flat, names):
    for b in bs:
      for j, m in enumerate(ms):
        rs = sorted((r for r in results if r["kernel"] == name and r["B"] == b and r["M"] == m),
                    key=lambda r: r["N"])
        if not rs:
          continue
        ls = "-" if m is None or j == len(ms) - 2 else "--"
        ax.plot([r["N"] for r in rs], [r["us"] for r in rs], ls, marker="o", color=colors[b],
                label=f"jax B={b}" + (f" M={m}" if m else ""))
        ax.plot([r["N"] for r in rs], [r["numpy_us"] for r in rs], ls, marker="x", color=colors[b],
                alpha=0.35, label=f"numpy B={b}" + (f" M={m}" if m else ""))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_title(name)
    ax.set_xlabel("memory slots N")
    ax.set_ylabel("µs / call")
    ax.grid(True, which="both", alpha=0.3)
  handles, labels = axes.flat[0].get_legend_handles_labels()
  if labels:
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=8)
  fig.suptitle("memjax kernels (vmapped over B, jitted; o) vs numpy (x, faint): median µs per call")
  fig.tight_layout(rect=(0, 0.08, 1, 0.96))
  fig.savefig(path, dpi=110)
  plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--quick", action="store_true", help="tiny grid, few repeats (seconds)")
  p.add_argument("--out", default="bench_out", help="directory for addressing.md/.json/.png")
  p.add_argument("--kernels", default=None, help="comma-separated subset of kernels")
  p.add_argument("--repeats", type=int, default=None, help="samples per measurement (default 15; quick 3)")
  p.add_argument("--max-bytes", type=float, default=2 ** 31,
                 help="skip cells whose [B, N, M] memory exceeds this many bytes")
  p.add_argument("--no-check", action="store_true", help="skip the jax-vs-numpy agreement check")
  p.add_argument("--seed", type=int, default=0)
  return p


def main(argv=None) -> dict:
  args = build_parser().parse_args(argv)
  import jax
  grid = QUICK_GRID if args.quick else FULL_GRID
  repeats = args.repeats or (3 if args.quick else 15)
  budget = 0.05 if args.quick else 0.6
  kernels = KERNELS
  if args.kernels:
    wanted = args.kernels.split(",")
    unknown = set(wanted) - {k.name for k in KERNELS}
    if unknown:
      raise SystemExit(f"unknown kernels {sorted(unknown)}; choose from {[k.name for k in KERNELS]}")
    kernels = [k for k in KERNELS if k.name in wanted]
  out = common.ensure_dir(args.out)
  env = common.environment()
  common.log("addressing benchmark:", common.environment_markdown(env))
  t_start = time.perf_counter()
  peaks = common.measure_peaks(quick=args.quick)
  common.log(peaks.markdown())
  fns = _jax_fns()
  rng = np.random.default_rng(args.seed)
  results, skipped = [], []
  for kernel in kernels:
    jax_fn = fns[kernel.name]()
    for n in grid["n"]:
      for m in grid["m"]:
        if kernel.name in ("least_used", "update_usage", "lrua_write_weights") and m != grid["m"][0]:
          continue  # these kernels do not touch the memory: M does not enter
        for b in grid["b"]:
          if b * n * m * 4 > args.max_bytes:
            skipped.append((kernel.name, b, n, m))
            continue
          r = bench_cell(kernel, jax_fn, b, n, m, rng=rng, repeats=repeats, budget_s=budget,
                         check=not args.no_check)
          if kernel.name in ("least_used", "update_usage", "lrua_write_weights"):
            r["M"] = None
          results.append(r)
          common.log(f"  {kernel.name:18s} B={b:4d} N={n:6d} M={m:3d}: {r['us']:10.1f} µs "
                     f"(numpy {r['numpy_us']:10.1f} µs) {r['gbs']:7.2f} GB/s")
      jax.clear_caches()
  elapsed = time.perf_counter() - t_start
  table = build_table(results, peaks)
  worst = max((r["max_rel_err"] for r in results if r["max_rel_err"] is not None), default=None)
  header = ["# memjax addressing/memory kernels vs numpy", "",
            common.environment_markdown(env), "", peaks.markdown(), "",
            "µs/call: median over samples (IQR beside it), compile excluded (timed apart: `compile ms`). "
            "GB/s and GFLOP/s from hand counts of input+output bytes and of the equation's FLOPs "
            "(least_used is a selection: no FLOPs). numpy/jax > 1: JAX faster. "
            f"LRUA pieces use {HEADS} heads; M does not enter least_used/update_usage/lrua_write_weights.",
            ""]
  if worst is not None:
    header += [f"Largest relative difference jax vs numpy over all cells: {worst:.2e}.", ""]
  if skipped:
    header += [f"Skipped {len(skipped)} cells over --max-bytes={args.max_bytes:.0f}: {skipped}.", ""]
  text = "\n".join(header) + table + f"\n\nTotal benchmark time {elapsed:.0f} s.\n"
  print(text)
  common.write_text(os.path.join(out, "addressing.md"), text)
  common.write_json(os.path.join(out, "addressing.json"),
                    {"environment": env, "peaks": peaks.as_dict(), "results": results, "skipped": skipped,
                     "elapsed_s": elapsed, "args": vars(args)})
  plot(results, os.path.join(out, "addressing.png"))
  return {"results": results, "peaks": peaks, "table": table, "out": out}


if __name__ == "__main__":
  main(sys.argv[1:])
