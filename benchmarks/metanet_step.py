"""MetaNet train step: the previous implementation against the current one and candidate variants.

The target is an episode ≥ 2.5× faster at 5-way and at 20-way than the
implementation before the speed work, measured side by side in one run,
without changing the model's mathematics. This harness:

* builds the jitted ``jax.value_and_grad`` of the mean query cross-entropy of
  one synthetic N-way 1-shot episode (sparse binary 28×28 images, 10 queries
  per class) for each variant, from one set of variables;
* checks that every variant's loss and gradients equal the reference's
  (max relative difference per parameter leaf, float32 tolerance);
* reports XLA's work per step — FLOPs of the dots and convolutions and the
  bytes of every top-level instruction's operands and result, **with loop
  bodies multiplied by their trip counts** (``cost_analysis()`` counts a loop
  body once, which hides 4/5 of the coordinate-wise LSTM) — in total and per
  part of the model (the ``jax.named_scope`` names in :mod:`memjax.metanet`);
* times the compiled steps in alternating rounds (reference, v1, v2, …,
  reference, …) and gives median ms/step and the speed relative to the
  reference (``--no-timing`` skips it).

Variants (each computes the same function; the test checks it):

* ``reference``: :mod:`benchmarks.reference.metanet_v1`, the frozen
  implementation before the speed work (commit 83a9a9e);
* ``current``: :class:`memjax.metanet.MetaNet` as it is;
* ``untiled_meta_learners``, ``reduce_window_pool``, ``mixed_kernel_kf``,
  ``support_grads_conv``: the current step with one of the speed changes
  undone — d and m in one pass over all coordinates (d's steps under
  ``jax.checkpoint``), the max-pool as ``reduce_window``, the mixed conv
  kernel as [kh·kw·C, F], the per-support-example loss gradients (the meta
  information) through ``lax.conv`` (which ``vmap(grad)`` turns into grouped
  convolutions, ``feature_group_count`` = S, where im2col gives batched
  matmuls) — so each change's share shows side by side;
* ``im2col_all``: every convolution (support, keys, queries' slow branch) as
  patches @ kernel matmuls, sharing the query patches between the slow and the
  mixed fast branch (not adopted: no gain).

    python -m benchmarks.metanet_step --ways 5,20 --rounds 3 --out runs/bench_metanet_step
    python -m benchmarks.metanet_step --ways 5,20 --no-timing --profile   # work per part only

Run it on a quiet machine: the timed rounds of the variants alternate, so a
load that changes slowly affects them alike, but a loaded machine makes every
figure noisy.

Where the work was before the speed work (the ``reference``;
``--no-timing --profile``, JAX 0.10.2 CPU; the default model, first order,
value_and_grad of one episode, 10 queries per class; GFLOP of dots and
convolutions and GB of operands + results, loop bodies × trip count):

=========================================  ===============  ===============
part                                        5-way GFLOP / GB  20-way GFLOP / GB
=========================================  ===============  ===============
d, coordinate-wise LSTM over 148k coords     10.5 / 9.8        10.5 / 9.8
m, coordinate-wise MLP over S × 152k coords   2.0 / 1.5         7.9 / 6.0
embedding u on S + NQ images (keys)           6.5 / 0.2        26.0 / 0.9
base learner b on the NQ queries              5.2 / 0.8        23.7 / 3.3
support-loss gradients (meta information)     0.4 / 0.1         1.6 / 0.2
other (loss, grouped weight-gradient convs)   1.4 / 0.9         5.6 / 2.9
total                                        26.0 / 13.4       75.2 / 23.1
=========================================  ===============  ===============

* XLA's ``cost_analysis()`` gives 17.0 / 64.7 GFLOP because it counts the
  LSTM's 5-step loop once; with the loop counted the reference step does
  26.0 / 75.2 GFLOP.
* Before the speed work the meta learners were bound by memory traffic: d's
  [80, P] gate arrays (P = 148k) and m's [S·P, 20] activations were written
  and read at every step, forward, recomputed and backward. They now run tile
  by tile (``memjax.metanet.meta_learners.coordinatewise``: 2,048 / 8,192
  coordinates per tile, the backward pass recomputes a tile and takes its VJP
  there), so a tile's intermediates stay in cache; the "GB" column counts
  those in-cache reads and writes too, which is why it grew.
* A profile (``jax.profiler`` trace, thunks mapped to the named scopes) of
  the step before the work: d ~36%, m ~21%, the max-pool's gradient ~13%
  (XLA:CPU lowers reduce_window's gradient to a reduce-window over int32 index
  arrays), convolutions ~25%. The patch gradient of the retrieved conv fast
  weights at the small late layers was a batched matmul with a strided
  contraction (180 + 133 ms at 20-way); forming the mixed kernel as
  [F, kh·kw·C] makes it contiguous (3–10× faster in isolation).
* Measured 2026-12-02 (AMD EPYC, 2 cores, 310 GFLOP/s fp32 matmul peak in the
  same session): the tiling is most of the gain (the step with it undone runs
  at 1.18× / 2.3× instead of 1.58× / 3.2×), the reshape max-pool adds ~20% at
  20-way; the kernel layout and the im2col support gradients are within the
  ±15% run-to-run noise of the full step. The reference's own time varies by
  ±20% between runs (memory-bound; 20-way 2.9–4.1 s), so the 20-way ratio has
  read 2.1× to 3.2× in different runs.
* What is left at 5-way: d (~175 ms of ~420) runs its tile loop one kernel
  at a time (XLA:CPU's while loops execute their thunks in order; each
  elementwise kernel of a [80, 2048] tile is split over the 2 cores, so d
  alone keeps 1.85 cores busy, CPU over wall time, Intel Xeon 2026-12-07;
  two independent loops over halves of the coordinates did not overlap,
  0.97–1.0× d alone, nor did tiles of 1,024 or 4,096 beat 2,048), and the
  convolutions of u and b on the 55 images (~150 ms). Tried and dropped:
  unrolling d's 5 steps or a hand-written LSTM backward (1.5–2× slower: XLA
  fuses the straight-line code worse), a coordinate-major LSTM tile (1.5×
  slower), queries in chunks through ``lax.map`` (3× slower: inside a loop
  XLA:CPU uses its plain convolution, not YNNPACK) or unrolled (no gain), a
  9-shift convolution for the mixed kernels (1.8× slower backward).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import re
import statistics
import time
from typing import Callable

import numpy as np

from benchmarks import common
from memjax import cli

VARIANTS = ("reference", "current", "untiled_meta_learners", "reduce_window_pool", "mixed_kernel_kf",
            "support_grads_conv", "im2col_all")
QUICK_MODEL = dict(image_shape=(8, 8, 1), filters=4, num_blocks=2, hidden=8)
DEFAULT_MODEL = dict(image_shape=(28, 28, 1), filters=64, num_blocks=5, hidden=64)
# Max |g − g_ref| / max |g_ref| per parameter leaf for "the same mathematics". Float32
# sums taken in another order differ by ~1e-6 relative (the --quick model: 5e-6), but
# the meta information goes through log|g| and a branch at |g| = e^-7, which turns
# such differences in a few gradient coordinates into larger ones: on the authors'
# model at initialisation (loss ~150) the im2col variants differ by 4–5e-3.
GRAD_RTOL = 1e-2
# A variant further from the baseline than GRAD_RTOL still computes the same
# function when its float32 gradients are no further from the float64
# gradients than float32 rounding puts the baseline's own (× this slack). That
# rounding error is measured, not assumed: the baseline's float32 error vs
# float64 at the variables and at PERTURBATIONS copies of them moved by one ulp
# (×(1 ± 2⁻²³)), the largest. On the authors' model at initialisation
# (2026-12-02, AMD EPYC) it is ~2e-2 at 20-way (a one-ulp move changes the
# baseline's float32 gradients by 1.7–2.2e-2 while float64's move by ≤ 6e-5):
# the gradient preprocessing's e^7·g branch amplifies rounding in the meta
# information, so summation order alone moves a meta learner's gradient leaf by
# percents.
FLOAT64_SLACK = 1.5
PERTURBATIONS = 3


# --------------------------------------------------------------------------- variants


def _im2col_conv(x, kernel):
  from memjax.metanet import layers
  return layers._im2col_conv(x, kernel)


def _conv_hidden(slow, x):
  """b's support-loss features through ``lax.conv`` (before the im2col form)."""
  from memjax.metanet import layers
  return _relu(layers.conv_features(slow, None, x) @ slow["fc1"])


def _conv_embedding_hidden(slow, x):
  from memjax.metanet import layers
  return _relu(layers.embed(slow, None, x))


def _relu(x):
  import jax
  return jax.nn.relu(x)


def _untiled_lstm(params, xs):
  """d in one pass over all coordinates, each step under ``jax.checkpoint`` (before the tiling)."""
  from memjax.metanet import meta_learners
  return meta_learners.lstm_apply(params, xs, remat=True)


def _untiled_mlp(params, x):
  """m in one pass over all coordinates (before the tiling)."""
  from memjax.metanet import meta_learners
  return meta_learners.mlp_apply(params, x)


def _reduce_window_pool(x):
  """The max-pool as ``reduce_window`` (before the reshape form; its gradient is a select-and-scatter)."""
  import jax
  import jax.numpy as jnp
  h, w, _ = x.shape
  window = (min(h, 2), min(w, 2), 1)
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, window, "SAME")


def _conv_any_kf(x, kernel):
  """A retrieved conv fast weight mixed as [kh·kw·C, F] (before the [F, kh·kw·C] layout)."""
  from memjax.metanet import layers
  if not isinstance(kernel, layers.MixedWeights):
    return layers._conv(x, kernel)
  _, kh, kw, c, f = kernel.values.shape
  y = layers._patches(x, kh, kw) @ kernel.mix().reshape(kh * kw * c, f)
  return y.reshape(*x.shape[:2], f)


@contextlib.contextmanager
def _patched(*patches):
  """Sets ``(module, name, value)`` attributes while active, restoring them after."""
  old = [(module, name, getattr(module, name)) for module, name, _ in patches]
  for module, name, value in patches:
    setattr(module, name, value)
  try:
    yield
  finally:
    for module, name, value in old:
      setattr(module, name, value)


def variant_context(name: str):
  """(model class, context manager active while the variant is traced).

  A helper is patched in the :mod:`memjax.metanet` submodule that calls it:
  the support-loss features and the meta learner d in ``module``, the
  convolution in ``layers``.
  """
  from memjax.metanet import layers, module
  if name == "reference":
    from benchmarks.reference import metanet_v1
    return metanet_v1.MetaNet, contextlib.nullcontext()
  patches = []
  if name == "support_grads_conv":
    patches += [(module, "_hidden", _conv_hidden),
                (module, "_embedding_hidden", _conv_embedding_hidden)]
  if name == "im2col_all":
    patches += [(layers, "_conv", _im2col_conv)]
  if name == "untiled_meta_learners":
    patches += [(module, "lstm_apply_tiled", _untiled_lstm), (module, "mlp_apply_tiled", _untiled_mlp)]
  if name == "reduce_window_pool":
    patches += [(layers, "_max_pool", _reduce_window_pool)]
  if name == "mixed_kernel_kf":
    patches += [(layers, "_conv_any", _conv_any_kf)]
  if name not in VARIANTS:
    raise ValueError(f"argument `name`: expected one of {VARIANTS}, got {name!r}")
  return module.MetaNet, _patched(*patches)


# --------------------------------------------------------------------------- the step


def episode(n: int, num_query: int, image_shape, seed: int = 0):
  """A synthetic N-way 1-shot episode: sparse binary images, labels 0..N−1."""
  import jax
  import jax.numpy as jnp
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  sx = (jax.random.uniform(k1, (n, *image_shape)) < 0.2).astype(jnp.float32)
  qx = (jax.random.uniform(k2, (n * num_query, *image_shape)) < 0.2).astype(jnp.float32)
  sy = jax.random.permutation(k3, jnp.arange(n, dtype=jnp.int32))
  qy = jnp.repeat(jnp.arange(n, dtype=jnp.int32), num_query)
  return sx, sy, qx, qy


def build_step(name: str, n: int, num_query: int, model_kw: dict, params=None, seed: int = 0):
  """``(compiled value_and_grad(params) -> (loss, grads), params, common.Compiled)``."""
  import jax
  import jax.numpy as jnp
  cls, ctx = variant_context(name)
  model = cls(num_classes=n, **model_kw)
  sx, sy, qx, qy = episode(n, num_query, model_kw["image_shape"], seed)
  if params is None:
    params = model.init(jax.random.key(seed), sx, sy, qx)

  def loss(p):
    logits = model.apply(p, sx, sy, qx)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), qy[:, None], -1))

  with ctx:
    compiled = common.compile_fn(jax.value_and_grad(loss), params)
  return compiled.executable, params, compiled


def float64_loss_and_grads(name: str, n: int, num_query: int, model_kw: dict, params, seed: int = 0):
  """The variant's loss and gradients in float64 (``jax.enable_x64``), from float32 ``params``.

  The float64 step is compiled once per (variant, episode, model) and reused
  for every ``params`` of the same shapes (the one-ulp perturbations of
  :func:`float32_rounding_error` included).
  """
  import jax
  fn = _float64_step(name, n, num_query, tuple(sorted(model_kw.items())), seed)
  with jax.enable_x64(True):
    _, ctx = variant_context(name)
    with ctx:
      # numpy inputs: one jit cache entry whatever device placement the params had
      return fn(jax.tree.map(lambda a: np.asarray(a, np.float64), params))


@functools.lru_cache(maxsize=None)
def _float64_step(name: str, n: int, num_query: int, model_items: tuple, seed: int):
  """The jitted float64 ``value_and_grad`` of the variant's query loss (call it under ``jax.enable_x64``)."""
  import jax
  import jax.numpy as jnp
  model_kw = dict(model_items)
  sx, sy, qx, qy = episode(n, num_query, model_kw["image_shape"], seed)  # float32's episode
  cls, _ = variant_context(name)
  model = cls(num_classes=n, **model_kw)

  def loss(p):
    logits = model.apply(p, sx.astype(jnp.float64), sy, qx.astype(jnp.float64))
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), qy[:, None], -1))

  return jax.jit(jax.value_and_grad(loss))


def one_ulp_perturbations(params, count: int):
  """``count`` copies of ``params``, each element × (1 ± 2⁻²³), random signs (numpy: nothing to compile)."""
  import jax
  leaves, tree = jax.tree.flatten(params)
  out = []
  for c in range(count):
    rng = np.random.default_rng(1000 + c)
    out.append(jax.tree.unflatten(tree, [
        np.asarray(a, np.float32) * (1 + np.float32(2.0 ** -23) * (2 * rng.integers(0, 2, np.shape(a)) - 1)
                                     ).astype(np.float32)
        for a in leaves]))
  return out


def float32_rounding_error(step, name: str, n: int, num_query: int, model_kw: dict, params,
                           count: int = PERTURBATIONS) -> tuple[float, float]:
  """(max rel. gradient error, loss error) of ``step``'s float32 result vs float64,
  the largest over ``params`` and ``count`` one-ulp perturbations of them."""
  grad_err = loss_err = 0.0
  for p in [params, *one_ulp_perturbations(params, count)]:
    loss, grads = step(p)
    loss64, grads64 = float64_loss_and_grads(name, n, num_query, model_kw, p)
    grad_err = max(grad_err, max_rel_diff(grads, grads64))
    loss_err = max(loss_err, abs(float(loss) - float(loss64)))
  return grad_err, loss_err


def max_rel_diff(grads, ref) -> float:
  import jax
  diffs = [float(np.max(np.abs(np.asarray(g) - np.asarray(r))) / max(float(np.max(np.abs(r))), 1e-30))
           for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref))]
  return max(diffs)


# --------------------------------------------------------------------------- XLA work per part

_DT = {"f32": 4, "s32": 4, "u32": 4, "pred": 1, "f16": 2, "bf16": 2, "s8": 1, "u8": 1, "f64": 8,
       "s64": 8, "u64": 8}
_SHAPE = re.compile(r"\b(f32|s32|u32|pred|bf16|f16|s8|u8|f64|s64|u64)\[([0-9,]*)\]")
PARTS = (("d: coordinate-wise LSTM (Q*)", "meta_learner_d"),
         ("m: coordinate-wise MLP (W*_i)", "meta_learner_m"),
         ("meta information: support-loss gradients", "support_grads"),
         ("embedding u: keys r, r'", "representations"),
         ("base learner b on the queries", "base_learner"))


def _numel(dims: str) -> int:
  return int(np.prod([int(d) for d in dims.split(",") if d], dtype=np.int64))


def _part(op_name: str) -> str:
  for label, scope in PARTS:
    if f"/{scope}/" in op_name or op_name.endswith(f"/{scope}"):
      return label + (" [backward]" if "transpose(" in op_name.split(scope)[0] else "")
  return "other (loss, glue)"


def hlo_work(hlo_text: str) -> dict[str, dict[str, float]]:
  """Per part: FLOPs of dots/convolutions and bytes (operands + result) of the
  top-level instructions of an optimised HLO module; while-loop bodies are
  multiplied by their known trip counts. Bytes over-count in-place updates
  (a dynamic-update-slice counts its whole buffer)."""
  comps: dict[str, list[tuple]] = {}
  shapes: dict[tuple[str, str], str] = {}
  cur = None
  for line in hlo_text.splitlines():
    if line and not line.startswith(" ") and line.rstrip().endswith("{"):
      cur = re.match(r"^(?:ENTRY )?%?([\w.\-]+)", line).group(1)
      comps[cur] = []
      continue
    if cur is None or not line.startswith("  ") or " = " not in line:
      continue
    m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (.*?) ([\w\-]+)\((.*)$", line)
    if m:
      name, out, op, rest = m.groups()
      shapes[(cur, name)] = out
      comps[cur].append((name, out, op, rest, line))
  entry = re.search(r"^ENTRY %?([\w.\-]+)", hlo_text, re.M).group(1)

  def operands(c, rest):
    return re.findall(r"%([\w.\-]+)", rest.split("), ")[0])

  def flops_of(c, out, op, rest, line):
    args = operands(c, rest)
    out_n = sum(_numel(s) for _, s in _SHAPE.findall(out))
    if op == "dot":
      lhs = [int(d) for d in _SHAPE.findall(shapes[(c, args[0])])[0][1].split(",") if d]
      lc = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", line)
      k = int(np.prod([lhs[int(i)] for i in lc.group(1).split(",") if i])) if lc else 1
      return 2 * out_n * k
    kernel = [int(d) for d in _SHAPE.findall(shapes[(c, args[1])])[0][1].split(",") if d]
    labels = re.search(r"dim_labels=\w+_(\w+)->", line).group(1)
    return 2 * out_n * int(np.prod(kernel)) // kernel[labels.index("o")]

  def fused_flops(c):
    total = 0
    for name, out, op, rest, line in comps.get(c, []):
      if op in ("dot", "convolution"):
        total += flops_of(c, out, op, rest, line)
      for sub in re.findall(r"calls=%([\w.\-]+)", line):
        total += fused_flops(sub)
    return total

  work: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)

  def visit(c, mult):
    for name, out, op, rest, line in comps.get(c, []):
      meta = re.search(r'op_name="([^"]*)"', line)
      if meta is None:  # e.g. a library (YNNPACK) fusion: name it by what it fuses
        meta = next((m for sub in re.findall(r"calls=%([\w.\-]+)", line)
                     for *_, l in comps.get(sub, []) for m in [re.search(r'op_name="([^"]*)"', l)] if m),
                    None)
      part = _part(meta.group(1) if meta else "")
      if op == "while":
        trip = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
        visit(re.search(r"body=%?([\w.\-]+)", line).group(1), mult * (int(trip.group(1)) if trip else 1))
        continue
      if op == "call":
        for sub in re.findall(r"to_apply=%([\w.\-]+)", line):
          visit(sub, mult)
        continue
      if op == "conditional":
        for sub in re.findall(r"%([\w.\-]+)", line.split("branch_computations=")[-1].split("}")[0]):
          visit(sub, mult)
        continue
      if op in ("parameter", "constant", "get-tuple-element", "tuple", "bitcast"):
        continue
      nbytes = sum(_numel(s) * _DT[d] for d, s in _SHAPE.findall(out))
      nbytes += sum(_numel(s) * _DT[d] for a in operands(c, rest)
                    for d, s in _SHAPE.findall(shapes.get((c, a), "")))
      work[part]["bytes"] += mult * nbytes
      if op in ("dot", "convolution"):
        work[part]["flops"] += mult * flops_of(c, out, op, rest, line)
      for sub in re.findall(r"calls=%([\w.\-]+)", line):
        work[part]["flops"] += mult * fused_flops(sub)
      if "feature_group_count=" in line or any(
          "feature_group_count=" in l for sub in re.findall(r"calls=%([\w.\-]+)", line)
          for *_, l in comps.get(sub, [])):
        work[part]["grouped_convs"] += mult

  visit(entry, 1)
  return {k: dict(v) for k, v in work.items()}


def work_table(work: dict[str, dict[str, float]]) -> str:
  total_f = sum(v.get("flops", 0) for v in work.values())
  total_b = sum(v.get("bytes", 0) for v in work.values())
  rows = [[k, f"{v.get('flops', 0) / 1e9:.2f}", f"{100 * v.get('flops', 0) / total_f:.0f}%",
           f"{v.get('bytes', 0) / 1e9:.2f}", f"{100 * v.get('bytes', 0) / total_b:.0f}%",
           int(v.get("grouped_convs", 0))]
          for k, v in sorted(work.items(), key=lambda kv: -kv[1].get("bytes", 0))]
  rows.append(["total", f"{total_f / 1e9:.2f}", "", f"{total_b / 1e9:.2f}", "", ""])
  return common.markdown_table(["part", "GFLOP", "% FLOP", "GB (operands + results)", "% bytes",
                                "grouped convs"],
                               rows)


# --------------------------------------------------------------------------- timing


def alternate(executables: dict[str, Callable], params, *, rounds: int, target_run_s: float
              ) -> dict[str, list[float]]:
  """Per-call seconds of each executable, ``rounds`` alternating rounds, each of
  ``ceil(target_run_s / step)`` calls (sized from one call after a warm-up)."""
  import jax
  steps = {}
  for name, f in executables.items():
    jax.block_until_ready(f(params))  # warm-up
    t = time.perf_counter()
    jax.block_until_ready(f(params))
    steps[name] = max(1, int(np.ceil(target_run_s / max(time.perf_counter() - t, 1e-6))))
  samples = {name: [] for name in executables}
  for r in range(rounds):
    for name, f in executables.items():
      t = time.perf_counter()
      for _ in range(steps[name]):
        out = f(params)
      jax.block_until_ready(out)
      samples[name].append((time.perf_counter() - t) / steps[name])
      common.log(f"[metanet_step] round {r + 1}/{rounds} {name}: {1e3 * samples[name][-1]:.1f} ms/step")
  return samples


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--ways", type=cli.int_list, default=[5, 20], help="N, comma-separated")
  p.add_argument("--num-query", type=int, default=10, help="queries per class")
  p.add_argument("--variants", default=",".join(VARIANTS),
                 help=f"comma-separated, the first is the baseline; from {VARIANTS}")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--run-seconds", type=float, default=2.0, help="timed seconds per variant per round")
  p.add_argument("--no-timing", action="store_true", help="check equality and count work only")
  p.add_argument("--profile", action="store_true", help="print the work per part of every variant")
  p.add_argument("--quick", action="store_true", help="a tiny model (smoke test)")
  p.add_argument("--ablate", choices=["none", "no_task"], default="none",
                 help="no_task: MetaNet− (no task-level fast weights), as the trainings run")
  p.add_argument("--out", default="runs/bench_metanet_step")
  return p


def main(argv=None) -> list[dict]:
  parser = build_parser()
  args = parser.parse_args(argv)
  variants = [v for v in args.variants.split(",") if v]
  bad = [v for v in variants if v not in VARIANTS]
  if bad or not variants:
    parser.error(f"--variants: expected names from {VARIANTS}, got {bad or args.variants!r}")
  if min(args.ways) < 2:
    parser.error(f"--ways: expected ways >= 2, got {args.ways}")
  model_kw = dict(QUICK_MODEL if args.quick else DEFAULT_MODEL)
  if args.ablate == "no_task":
    model_kw["use_task_fast_weights"] = False
  common.ensure_dir(args.out)
  env = common.environment()
  rows, sections = [], []
  for n in args.ways:
    execs, works, params = {}, {}, None
    for name in variants:
      common.log(f"[metanet_step] {n}-way: compiling {name} ...")
      f, params, compiled = build_step(name, n, args.num_query, model_kw, params)
      execs[name] = f
      works[name] = hlo_work(f.as_text())
      rows.append({"ways": n, "variant": name, "compile_s": compiled.total_s})
    base = variants[0]
    ref_loss, ref_grads = execs[base](params)
    loss64, grads64 = float64_loss_and_grads(base, n, args.num_query, model_kw, params)
    base_err64, base_loss_err64 = float32_rounding_error(execs[base], base, n, args.num_query,
                                                         model_kw, params)
    for row in rows[-len(variants):]:
      loss, grads = execs[row["variant"]](params)
      work = works[row["variant"]]
      diff, err64 = max_rel_diff(grads, ref_grads), max_rel_diff(grads, grads64)
      loss_diff = abs(float(loss) - float(ref_loss))
      close = diff < GRAD_RTOL and loss_diff < 1e-4 * max(1.0, abs(float(ref_loss)))
      as_accurate = (err64 <= FLOAT64_SLACK * base_err64
                     and abs(float(loss) - float(loss64))
                     <= max(FLOAT64_SLACK * base_loss_err64, 1e-5 * abs(float(loss64))))
      row.update(loss=float(loss), loss_diff=loss_diff, grad_max_rel_diff=diff,
                 grad_rel_err_vs_float64=err64, float32_rounding_grad_rel_err=base_err64,
                 gflop=sum(v.get("flops", 0) for v in work.values()) / 1e9,
                 gbytes=sum(v.get("bytes", 0) for v in work.values()) / 1e9,
                 same_math=bool(close or as_accurate))
    if not args.no_timing:
      samples = alternate(execs, params, rounds=args.rounds, target_run_s=args.run_seconds)
      base_t = statistics.median(samples[base])
      for row in rows[-len(variants):]:
        t = statistics.median(samples[row["variant"]])
        row.update(ms_per_step=1e3 * t, speed_vs_baseline=base_t / t)
    sections.append(f"### {n}-way 1-shot, {args.num_query} queries per class\n")
    for name in (variants if args.profile else variants[:2]):
      sections.append(f"Work per part, `{name}` (loops × trip count):\n\n{work_table(works[name])}\n")
  headers = ["ways", "variant", "ms/step", f"speed vs {variants[0]}", "GFLOP", "GB", "compile s",
             "loss", "max grad rel. diff", "grad rel. err vs float64",
             f"{variants[0]}'s float32 rounding error", "same math"]
  table = common.markdown_table(headers, [[r["ways"], r["variant"], r.get("ms_per_step", "—"),
                                           r.get("speed_vs_baseline", "—"), r["gflop"], r["gbytes"],
                                           r["compile_s"], r["loss"], r["grad_max_rel_diff"],
                                           r["grad_rel_err_vs_float64"],
                                           r["float32_rounding_grad_rel_err"],
                                           "yes" if r["same_math"] else "**no**"] for r in rows])
  model = ("tiny (--quick)" if args.quick else "the authors' Omniglot model") + (
      ", MetaNet− (--ablate no_task)" if args.ablate == "no_task" else "")
  text = "\n".join([f"# MetaNet train step: variants ({model})", "", common.environment_markdown(env), "",
                    table, "", *sections])
  common.write_text(f"{args.out}/metanet_step.md", text)
  common.write_json(f"{args.out}/metanet_step.json", {"rows": rows, "env": env, "args": vars(args)})
  print(table)
  if args.profile:
    print("\n".join(sections))
  return rows


if __name__ == "__main__":
  main()
