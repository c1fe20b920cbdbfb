"""XLA:CPU compiler flags against the default, for the MANN and MetaNet train steps.

XLA_FLAGS are read once, when JAX starts its CPU backend, so each flag set runs
in its own process: rounds alternate the sets (default, set 1, …, default, …)
in fresh subprocesses, each compiling the steps and timing them (medians), and
the table gives the median over rounds and the speed relative to ``default``.
Every set's loss and gradients are compared with the default's (the same
episode and parameters): a flag that changes kernels, not the mathematics,
keeps them equal to float tolerance.

Steps timed (synthetic episodes, the configurations the experiments train):

* ``mann``: the MANN Omniglot train step at batch 16 (:func:`benchmarks.mann_step.build`,
  ``current``; LSTM 200, 4 heads, memory 128 × 40, 50 steps, Adam, clip);
  its gradients are those of ``mann.mann_loss`` on one batch;
* ``metanet5`` / ``metanet20``: MetaNet− (``--ablate no_task``, as the
  trainings run) 5-way / 20-way 1-shot, loss and gradients of one episode
  (:func:`benchmarks.metanet_step.build_step`, ``current``; 10 / 5 queries per class).

Flag sets (jaxlib 0.10; names from XLA's ``DebugOptions``):

* ``ynn_off``: ``--xla_cpu_experimental_ynn_fusion_type=`` — no YNNPACK
  kernels, every dot and convolution by XLA's own emitters / Eigen (jaxlib
  0.10's default sends single dots to YNNPACK);
* ``onednn``: ``--xla_cpu_use_onednn=true``;
* ``xnn_greedy``: ``--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY``
  (XNNPACK graph fusion of dots with their elementwise neighbours);
* ``ynn_off_xnn_greedy``: both of those;
* ``vec512``: ``--xla_cpu_prefer_vector_width=512`` (AVX-512 vectors where the
  CPU has them; XLA:CPU prefers 256-bit ones);
* ``concurrency_scheduler``: ``--xla_cpu_enable_concurrency_optimized_scheduler=true``
  (an HLO schedule meant to let independent thunks overlap);
* ``devices2``: ``--xla_force_host_platform_device_count=2`` — the CPU as 2 JAX
  devices (``--cpu-devices 2``); the MANN step is then the data-parallel one
  ``omniglot_mann.py`` trains with there (``mann_step``'s ``data_parallel``:
  each device runs the loss on half the batch, ``shard_map``), its gradients
  those of that split. (MetaNet− trains one episode per step: on one device.)

    python -m benchmarks.xla_flags --models mann,metanet5,metanet20 --rounds 3 --out runs/bench_xla_flags
    python -m benchmarks.xla_flags --models mann --sets default,devices2 --rounds 3   # --cpu-devices 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import common, metanet_step

SETS = {
    "default": "",
    "ynn_off": "--xla_cpu_experimental_ynn_fusion_type=",
    "onednn": "--xla_cpu_use_onednn=true",
    "xnn_greedy": "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
    "ynn_off_xnn_greedy": ("--xla_cpu_experimental_ynn_fusion_type= "
                           "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY"),
    "devices2": "--xla_force_host_platform_device_count=2",
    "vec512": "--xla_cpu_prefer_vector_width=512",
    "concurrency_scheduler": "--xla_cpu_enable_concurrency_optimized_scheduler=true",
}
MODELS = ("mann", "metanet5", "metanet20")
# Max |g − g_default| / max |g_default| per leaf for "the same mathematics":
# metanet_step's bound (MetaNet's log|g| preprocessing amplifies float32
# summation-order differences to ~1e-3 in a few leaves).
GRAD_RTOL = metanet_step.GRAD_RTOL
ROOT = str(Path(__file__).resolve().parents[1])


def _mann_grads(quick: bool):
  """Loss and gradients of ``mann.mann_loss`` on one synthetic batch (the step's configuration);
  under several devices, those of the data-parallel split (every device on its slice, averaged)."""
  import flax.linen as nn
  import jax
  from benchmarks import throughput_mann
  from memjax import mann, training
  cfg = throughput_mann.QUICK_CONFIG if quick else throughput_mann.CONFIG
  cell = throughput_mann.make_cell(cfg)
  x, y = throughput_mann.sample(jax.random.key(1), cfg)
  params = jax.jit(nn.RNN(cell).init)(jax.random.key(0), x)

  def loss_fn(p, key):
    xs, ys = training.shard_batch((x, y))
    return mann.mann_loss(mann.unroll(cell, p, xs), ys), {}

  mesh = training.data_mesh() if jax.device_count() > 1 else None
  (loss, _), grads = jax.jit(training._value_and_grad(loss_fn, mesh))(params, jax.random.key(0))
  return loss, grads


def worker(model: str, quick: bool, grads_path: str) -> dict:
  """Times ``model``'s step under this process's XLA_FLAGS; saves its gradients to ``grads_path``."""
  import jax
  import numpy as np
  runs, target = (2, 0.05) if quick else (5, 1.0)
  t0 = time.perf_counter()
  if model == "mann":
    from benchmarks import mann_step
    variant = "data_parallel" if jax.device_count() > 1 else "current"
    step, state, _, _ = mann_step.build(variant, 2 if quick else 16, quick=quick,
                                        **({"seq_len": 5, "image_size": 8} if quick else {}))
    t = common.time_fn(lambda: step(state)[1], warmup=1, repeats=runs, min_sample_s=target, max_total_s=1e9)
    loss, grads = _mann_grads(quick)
  else:
    n = 5 if model == "metanet5" else 20
    kw = dict(metanet_step.QUICK_MODEL if quick else metanet_step.DEFAULT_MODEL, use_task_fast_weights=False)
    ex, params, _ = metanet_step.build_step("current", n, 10 if n == 5 else 5, kw)
    t = common.time_fn(lambda: ex(params)[0], warmup=1, repeats=runs, min_sample_s=target, max_total_s=1e9)
    loss, grads = ex(params)
  leaves = jax.tree_util.tree_flatten_with_path(grads)[0]
  np.savez(grads_path, **{jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves})
  return {"ms": 1e3 * t.median, "timing": t.as_dict(), "loss": float(loss), "devices": jax.device_count(),
          "build_and_time_s": time.perf_counter() - t0}


def _run_worker(model: str, flags: str, quick: bool, grads_path: str) -> dict:
  env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip(), JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "benchmarks.xla_flags", "--worker", model, "--grads", grads_path]
  proc = subprocess.run(cmd + (["--quick"] if quick else []), cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=1800)
  lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
  if proc.returncode or not lines:
    raise RuntimeError(f"the {model} worker under XLA_FLAGS={flags!r} failed (exit {proc.returncode}):\n"
                       + proc.stderr[-3000:])
  return json.loads(lines[-1][len("RESULT "):])


def max_rel_diff(path: str, ref_path: str) -> float:
  """Largest per-leaf max |g − g_ref| / max |g_ref| between two saved gradient files
  (:func:`benchmarks.metanet_step.max_rel_diff` over their leaves)."""
  import numpy as np
  with np.load(path) as a, np.load(ref_path) as b:
    if sorted(a.files) != sorted(b.files):
      raise ValueError(f"gradient files {path} and {ref_path} hold different leaves")
    return metanet_step.max_rel_diff(dict(a), dict(b))


def main(argv=None) -> list[dict]:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--models", default="mann,metanet5", help=f"comma-separated, from {MODELS}")
  p.add_argument("--sets", default=",".join(SETS), help=f"comma-separated flag sets, 'default' first; from {list(SETS)}")
  p.add_argument("--rounds", type=int, default=3, help="alternating rounds (a fresh process per set and round)")
  p.add_argument("--quick", action="store_true", help="tiny models, one round (smoke test)")
  p.add_argument("--out", default="runs/bench_xla_flags")
  p.add_argument("--worker", choices=MODELS, help=argparse.SUPPRESS)
  p.add_argument("--grads", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.worker:
    print("RESULT " + json.dumps(worker(args.worker, args.quick, args.grads)), flush=True)
    return []
  models = [m for m in args.models.split(",") if m]
  sets = [s for s in args.sets.split(",") if s]
  if not models or set(models) - set(MODELS):
    p.error(f"--models: expected names from {MODELS}, got {args.models!r}")
  if set(sets) - set(SETS) or sets[:1] != ["default"]:
    p.error(f"--sets: expected 'default' first, then names from {list(SETS)}; got {args.sets!r}")
  if args.rounds < 1:
    p.error(f"--rounds: expected a positive count, got {args.rounds}")
  rounds = 1 if args.quick else args.rounds
  common.ensure_dir(args.out)
  got = {(m, s): [] for m in models for s in sets}
  for r in range(rounds):
    for m in models:
      for s in sets:
        grads = os.path.join(args.out, f"grads_{m}_{s}.npz")
        res = _run_worker(m, SETS[s], args.quick, grads)
        got[m, s].append(res)
        common.log(f"round {r + 1}/{rounds} {m} {s}: {res['ms']:.1f} ms")
  rows = []
  for m in models:
    base = statistics.median(x["ms"] for x in got[m, "default"])
    ref = os.path.join(args.out, f"grads_{m}_default.npz")
    for s in sets:
      ms = statistics.median(x["ms"] for x in got[m, s])
      rows.append({"model": m, "set": s, "xla_flags": SETS[s], "ms": ms, "speed_vs_default": base / ms,
                   "per_round_ms": [x["ms"] for x in got[m, s]], "loss": got[m, s][0]["loss"],
                   "devices": got[m, s][0]["devices"],
                   "grad_max_rel_diff": max_rel_diff(os.path.join(args.out, f"grads_{m}_{s}.npz"), ref)})
  common.write_variants_report(
      args.out, "xla_flags", "XLA:CPU flag sets vs the default (MANN / MetaNet− steps)",
      ["model", "set", "XLA_FLAGS", "ms/step", "speed vs default", "per-round ms", "first loss", "grad max rel diff"],
      [[r["model"], r["set"], f"`{r['xla_flags']}`" if r["xla_flags"] else "", f"{r['ms']:.1f}",
        f"{r['speed_vs_default']:.2f}×", " / ".join(f"{x:.0f}" for x in r["per_round_ms"]), f"{r['loss']:.6f}",
        f"{r['grad_max_rel_diff']:.1e}"] for r in rows], rows)
  return rows


if __name__ == "__main__":
  main()
