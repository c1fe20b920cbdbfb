"""NTM copy-task training throughput, against a PyTorch reference.

Graves et al. 2014's configuration: LSTM controller 100, 1 read + 1 write
head, memory 128 × 20, 8-bit vectors, lengths 1-20, T = 41 padded steps;
centred RMSProp with components clipped to ±10.

* memjax: the jitted train step of :func:`memjax.training.make_step` with the
  copy loss; the batch is generated on device inside the step from the step's key;
* reference: :mod:`benchmarks.reference.ntm_torch`, eager PyTorch with a Python
  loop over time steps (the way typical public implementations are written),
  the same model, task, loss and optimiser; batch generated on the host each step.

At batch 1, 16 and 64 it alternates timed runs in one process (memjax, torch,
memjax, torch, ...) and reports medians of sequences/s and their ratio
(:func:`benchmarks.common.compare_with_reference`).

It also reports

* the memjax compile time, measured apart (``step.lower(state).compile()``;
  wall and process-CPU seconds), at max_length 20 and 80 (T = 41 and 161): one
  ``lax.scan`` body, so it should not depend on the length;
* the FLOPs of one memjax train step. XLA's ``cost_analysis()`` counts the body
  of a scan/while loop once, whatever its trip count, so the whole step's count
  is corrected with the count of one cell step, forward and backward, compiled on
  its own: ``F = F_step + (T − 1) · F_cell``. It is cross-checked against a hand
  count of the equations (forward per step and example, × 3 for forward +
  backward, + the optimiser), and the achieved GFLOP/s at batch 64 is given as a
  fraction of the fp32 matmul peak measured in the same run;
* how the memjax step time scales with the sequence length T and the memory
  size N (PNG);
* with ``--profile BATCH``, the top XLA ops of the step from a profiler trace;
* the compile time with a warm JAX persistent compilation cache.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Any

import numpy as np

from benchmarks import common

# Targets this benchmark reports against.
TARGET_RATIO = {1: 40.0, 16: 20.0}
TARGET_PEAK_FRACTION = 0.15   # at batch 64
TARGET_PEAK_BATCH = 64
TARGET_COMPILE_S = 5.0

CONFIG = dict(num_inputs=9, num_outputs=8, controller=100, memory_size=128, word_size=20,
              read_heads=1, write_heads=1, shift_range=1)


@dataclasses.dataclass
class NTMStep(common.TrainStep):
  """A compiled memjax NTM copy-task train step, its state and its model."""
  batch: int
  max_length: int
  memory_size: int
  seq_len: int
  cell: Any
  params: Any


def build_step(batch: int, max_length: int = 20, memory_size: int = 128, seed: int = 0, *,
               remat: bool = False, unroll: int = 1) -> NTMStep:
  """The memjax NTM copy-task train step, compiled (compile timed apart).

  ``nn.RNN(NTMCell)`` (``nn.remat(NTMCell)`` with ``remat``; ``unroll`` time
  steps per scan iteration) on ``tasks.copy`` batches drawn on device inside the
  step, ``tasks.sequence_loss``, the paper's centred RMSProp.
  """
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from memjax import tasks, training
  from memjax.ntm import NTMCell

  cell = (nn.remat(NTMCell) if remat else NTMCell)(
      features=CONFIG["num_outputs"], memory_size=memory_size, word_size=CONFIG["word_size"],
      controller_features=CONFIG["controller"])
  model = nn.RNN(cell, unroll=unroll)
  seq_len = tasks.copy_length(max_length)
  # jitted: one compile instead of one per eager op (the same bits)
  params = jax.jit(model.init)(jax.random.key(seed), jnp.zeros((batch, seq_len, CONFIG["num_inputs"])))

  def loss_fn(p, key):
    b = tasks.copy(key, batch, max_length=max_length)
    return tasks.sequence_loss(model.apply(p, b.inputs), b)

  ts = common.compile_train_step(loss_fn, params, training.make_optimizer("rmsprop"), seed)
  return NTMStep(**vars(ts), batch=batch, max_length=max_length, memory_size=memory_size, seq_len=seq_len,
                 cell=cell, params=params)


def torch_reference(batch: int, max_length: int = 20, seed: int = 0) -> common.TorchReference:
  """The PyTorch reference trainer at one batch size."""
  from benchmarks.reference import ntm_torch
  trainer = ntm_torch.Trainer(batch, max_length, seed=seed)
  return common.TorchReference(trainer, ntm_torch.num_parameters(trainer.model))


def cell_step_flops(js: NTMStep) -> float | None:
  """XLA's FLOPs of one NTM cell step, forward and backward (vjp), at the step's batch."""
  import jax
  import jax.numpy as jnp
  cell = js.cell
  p = {"params": js.params["params"]["cell"]}
  carry = cell.initialize_carry(jax.random.key(0), (js.batch, CONFIG["num_inputs"]))
  x = jnp.zeros((js.batch, CONFIG["num_inputs"]))

  def fwd_bwd(p, carry, x):
    (new_carry, y), vjp = jax.vjp(lambda p, c: cell.apply(p, c, x), p, carry)
    return vjp((new_carry, jnp.ones_like(y)))

  compiled = common.compile_fn(fwd_bwd, p, carry, x)
  return common.cost_flops(compiled.executable)


def hand_flops(batch: int, seq_len: int, memory_size: int = 128, num_params: int = 62_260,
               cfg: dict = CONFIG) -> dict:
  """Hand count of one NTM copy train step's FLOPs.

  Forward, per time step and example (C controller, I inputs, N × M memory, R/W
  read/write heads, K shift range, O outputs):

  * LSTM: 2·(I + R·M)·4C + 2·C·4C (the input and recurrent matmuls) + 4C (bias)
    + 10C (3 sigmoids, 2 tanh, c = f·c + i·g, h = o·tanh c);
  * head parameters: 2·C·(R+W)(M + 3 + 2K+1) + 2·C·2WM (matmuls) + biases +
    ~(R+W)(2K+1+4) + 2WM nonlinearities;
  * addressing per head (eq. 5-9): 4NM + 2M + 9N (content) + 3N (gate)
    + 2(2K+1)N (shift) + 8N (sharpen);
  * read 2NM per read head; erase/add write 5NM per write head;
  * output 2·(C + R·M)·O + O; loss ~4·O.

  Training ≈ 3 × forward (the backward pass of a matmul costs two matmuls), times
  T steps and B examples, plus ~15 FLOPs per parameter for clipping and centred
  RMSProp with momentum.
  """
  c, i, n, m = cfg["controller"], cfg["num_inputs"], memory_size, cfg["word_size"]
  r, w, k, o = cfg["read_heads"], cfg["write_heads"], cfg["shift_range"], cfg["num_outputs"]
  s = 2 * k + 1
  lstm = 2 * (i + r * m) * 4 * c + 2 * c * 4 * c + 4 * c + 10 * c
  heads = 2 * c * (r + w) * (m + 3 + s) + (r + w) * (m + 3 + s) + 2 * c * 2 * w * m + 2 * w * m \
      + (r + w) * (s + 4) + 2 * w * m
  address = (r + w) * (4 * n * m + 2 * m + 9 * n + 3 * n + 2 * s * n + 8 * n)
  memory = r * 2 * n * m + w * 5 * n * m
  out = 2 * (c + r * m) * o + o + 4 * o
  fwd = lstm + heads + address + memory + out
  total = 3.0 * fwd * seq_len * batch + 15.0 * num_params
  return {"forward_per_step_example": fwd, "lstm": lstm, "heads": heads, "addressing": address,
          "read_write": memory, "output": out, "train_step": total}


# --------------------------------------------------------------------------- measurement


def throughput_at(batch: int, *, max_length: int, rounds: int, target_run_s: float, torch_threads: list[int],
                  seed: int) -> dict:
  """Sequences/s of memjax and torch at one batch size, alternating timed runs.

  The result holds the compiled step under ``"_jaxstep"``.
  """
  common.log(f"[batch {batch}] compiling memjax step ...")
  js = build_step(batch, max_length, seed=seed)
  res = common.compare_with_reference(
      js, lambda: torch_reference(batch, max_length, seed=seed), torch_threads, rounds=rounds,
      target_run_s=target_run_s, per_step=batch, label=f"[batch {batch}]", unit="seq/s", unit_key="seq_s",
      result={"batch": batch, "max_length": max_length, "seq_len": js.seq_len})
  res["_jaxstep"] = js
  return res


def flop_analysis(js: NTMStep, step_s: float, peaks: common.Peaks) -> dict:
  """XLA FLOPs of the step (trip-count corrected) vs the hand count; achieved fraction of peak."""
  f_step = common.cost_flops(js.executable)
  f_cell = cell_step_flops(js)
  hand = hand_flops(js.batch, js.seq_len, js.memory_size, js.num_params)
  out = {"batch": js.batch, "seq_len": js.seq_len, "xla_step_flops_raw": f_step, "xla_cell_flops": f_cell,
         "hand": hand}
  if f_step is not None and f_cell is not None:
    total = f_step + (js.seq_len - 1) * f_cell
    out["xla_step_flops"] = total
    out["xla_over_hand"] = total / hand["train_step"]
    out["gflops"] = total / step_s / 1e9
  else:
    out["xla_step_flops"] = None
    out["gflops"] = hand["train_step"] / step_s / 1e9
  out["hand_gflops"] = hand["train_step"] / step_s / 1e9
  out["peak_fraction"] = out["gflops"] / peaks.matmul_gflops
  out["hand_peak_fraction"] = out["hand_gflops"] / peaks.matmul_gflops
  return out


def warm_cache_compile(batch: int, max_length: int, seed: int) -> dict | None:
  """Compile time of the memjax step with a warm JAX persistent compilation cache.

  Compiles once into an empty temporary cache directory (a miss that fills it),
  clears the in-memory caches, and compiles again (a hit). Run last: it changes
  the process's compilation-cache settings (restored afterwards, and the
  cache reset). None when nothing was written to the cache.
  """
  import jax
  from jax.experimental.compilation_cache import compilation_cache as cc
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes")
  old = {n: getattr(jax.config, n) for n in names}
  try:
    with tempfile.TemporaryDirectory() as d:
      jax.config.update(names[0], d)
      jax.config.update(names[1], 0.0)
      jax.config.update(names[2], 0)
      miss = build_step(batch, max_length, seed=seed)
      jax.clear_caches()
      hit = build_step(batch, max_length, seed=seed)
      files = len(os.listdir(d))
  finally:
    for n, v in old.items():
      jax.config.update(n, v)
    cc.reset_cache()
  if files == 0:
    return None
  return {"batch": batch, "max_length": max_length, "miss_compile_s": miss.compiled.total_s,
          "hit_compile_s": hit.compiled.total_s, "hit_lower_s": hit.compiled.lower_s,
          "hit_xla_s": hit.compiled.compile_s, "hit_cpu_s": hit.compile_cpu_s}


def _compile_row(js: NTMStep) -> dict:
  return {"max_length": js.max_length, "seq_len": js.seq_len, "batch": js.batch,
          "compile_s": js.compiled.total_s, "lower_s": js.compiled.lower_s,
          "xla_compile_s": js.compiled.compile_s, "compile_cpu_s": js.compile_cpu_s}


def measure(*, quick: bool, batches: list[int], max_length: int, rounds: int, run_s: float,
            torch_threads: list[int], scaling: bool, profile: int | None, seed: int) -> tuple[dict, common.Peaks]:
  """The whole NTM benchmark: the machine's peaks, the batches against torch,
  compile time vs length, FLOPs, the T and N sweeps, a profile, the warm-cache
  compile (quick: the peaks, the batches and the FLOPs only).

  Returns the results (``peaks``, ``batches``, ``compile``, ``flops``, ...) and the peaks.
  """
  res: dict = {}
  peaks = common.measure_peaks(quick=quick)
  common.log(peaks.markdown())
  res["peaks"] = peaks.as_dict()
  batch_results = [throughput_at(b, max_length=max_length, rounds=rounds, target_run_s=run_s,
                                 torch_threads=torch_threads, seed=seed) for b in batches]
  steps = {r["batch"]: r.pop("_jaxstep") for r in batch_results}
  res["batches"] = batch_results

  # Compile time vs length (one scan body: should not depend on T).
  cb = 16 if 16 in steps else batches[0]
  comp = [_compile_row(steps[cb])]
  long_step = None
  if not quick:
    long_len = 4 * max_length
    common.log(f"compiling memjax step at max_length {long_len} (batch {cb}) ...")
    long_step = build_step(cb, long_len, seed=seed)
    comp.append(_compile_row(long_step))
    res["raw_flops_by_length"] = [(steps[cb].seq_len, common.cost_flops(steps[cb].executable)),
                                  (long_step.seq_len, common.cost_flops(long_step.executable))]
  res["compile"] = comp
  for c in comp:
    common.log(f"compile at max_length {c['max_length']} (T={c['seq_len']}): {c['compile_s']:.1f} s "
               f"(cpu {c['compile_cpu_s']:.1f} s)")

  # FLOPs and fraction of peak at the largest batch (64 in the full run).
  fb = TARGET_PEAK_BATCH if TARGET_PEAK_BATCH in steps else max(steps)
  step_s = next(r["memjax_step_s"] for r in batch_results if r["batch"] == fb)
  res["flops"] = flop_analysis(steps[fb], step_s, peaks)
  common.log(f"FLOPs at batch {fb}: XLA {res['flops']['xla_step_flops'] or float('nan'):.4g}, hand "
             f"{res['flops']['hand']['train_step']:.4g}; {res['flops']['gflops']:.2f} GFLOP/s = "
             f"{100 * res['flops']['peak_fraction']:.1f}% of matmul peak")

  # Scaling with T and N (memjax), at batch cb.
  if not quick and scaling:
    res["scaling_T"], res["scaling_N"] = [], []
    by_len = {max_length: steps[cb]}
    if long_step is not None:
      by_len[long_step.max_length] = long_step
    for L in sorted({max_length // 2, max_length, 2 * max_length, 4 * max_length}):
      js = by_len.get(L) or build_step(cb, L, seed=seed)
      s = common.median_step_s(js, run_s, rounds)
      hf = hand_flops(cb, js.seq_len, 128, js.num_params)["train_step"]
      res["scaling_T"].append({"seq_len": js.seq_len, "max_length": L, "batch": cb, "step_s": s, "hand_flops": hf,
                               "compile_s": js.compiled.total_s})
      common.log(f"  T={js.seq_len}: {1e3 * s:.1f} ms/step")
      if L != max_length:
        by_len.pop(L, None)
    for n in (32, 128, 512, 2048):
      js = steps[cb] if n == 128 else build_step(cb, max_length, memory_size=n, seed=seed)
      s = common.median_step_s(js, run_s, rounds)
      hf = hand_flops(cb, js.seq_len, n, js.num_params)["train_step"]
      res["scaling_N"].append({"memory_size": n, "seq_len": js.seq_len, "batch": cb, "step_s": s,
                               "hand_flops": hf, "compile_s": js.compiled.total_s})
      common.log(f"  N={n}: {1e3 * s:.1f} ms/step")

  if profile is not None:
    js = steps.get(profile) or build_step(profile, max_length, seed=seed)
    res["profile"] = common.profile_step(js)
    res["profile_batch"] = profile

  if not quick:
    common.log("compiling with a warm persistent compilation cache ...")
    res["warm_cache"] = warm_cache_compile(cb, max_length, seed)
  return res, peaks


# --------------------------------------------------------------------------- output


def plot(results: dict, path: str) -> None:
  plt = common.pyplot()
  panels = [k for k in ("batches", "scaling_T", "scaling_N") if results.get(k)]
  fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(6 * max(1, len(panels)), 4.5), squeeze=False)
  for ax, key in zip(axes[0], panels):
    if key == "batches":
      rows = results["batches"]
      xs = np.arange(len(rows))
      ax.bar(xs - 0.2, [r["memjax_seq_s"] for r in rows], 0.4, label="memjax (jit)")
      if all("torch_seq_s" in r for r in rows):
        ax.bar(xs + 0.2, [r["torch_seq_s"] for r in rows], 0.4, label="PyTorch reference (best threads)")
        for x, r in zip(xs, rows):
          ax.text(x, r["memjax_seq_s"], f"{r['ratio']:.0f}×", ha="center", va="bottom")
      ax.set_xticks(xs, [str(r["batch"]) for r in rows])
      ax.set_yscale("log")
      ax.set_xlabel("batch")
      ax.set_ylabel("sequences / s")
      ax.set_title(f"NTM copy train step (T={rows[0]['seq_len']})")
      ax.legend(loc="lower right", fontsize=8)
    else:
      rows = results[key]
      var = "seq_len" if key == "scaling_T" else "memory_size"
      xs = [r[var] for r in rows]
      ys = [1e3 * r["step_s"] for r in rows]
      ax.plot(xs, ys, "o-", label="memjax step time")
      if len(xs) >= 2:
        a, b = np.polyfit(xs, ys, 1)
        grid = np.linspace(0, max(xs), 50)
        ax.plot(grid, a * grid + b, ":", color="gray", label=f"fit {a:.3g}·x + {b:.3g} ms")
      ax2 = ax.twinx()
      ax2.plot(xs, [r["hand_flops"] / 1e9 for r in rows], "s--", color="tab:red", alpha=0.6,
               label="hand-count GFLOP/step")
      ax2.set_ylabel("GFLOP / step (hand count)", color="tab:red")
      ax.set_xlabel("padded sequence length T" if key == "scaling_T" else "memory slots N (M = 20)")
      ax.set_ylabel("ms / train step")
      ax.set_title(f"memjax NTM step cost vs {'T' if key == 'scaling_T' else 'N'} (batch {rows[0]['batch']})")
      ax.set_ylim(bottom=0)
      ax2.set_ylim(bottom=0)
      ax.legend(loc="upper left", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def markdown_lines(res: dict, env: dict, peaks: common.Peaks) -> list[str]:
  """The report's NTM part: its title, the machine, the batches, compile, FLOPs, targets, sweeps, profile."""
  lines = ["# memjax training throughput: NTM copy task vs a PyTorch reference", "",
           common.environment_markdown(env), "", peaks.markdown(), ""]
  b = res["batches"]
  has_torch = all("torch_seq_s" in r for r in b)
  lines += [f"NTM: LSTM 100, 1 read + 1 write head, memory 128×20, copy lengths 1–{b[0]['max_length']} "
            f"(T = {b[0]['seq_len']}), centred RMSProp, clip ±10. memjax params {b[0]['num_params_memjax']:,}"
            + (f", torch params {b[0]['num_params_torch']:,} (nn.LSTMCell has two bias vectors)" if has_torch else "")
            + ". Medians over alternating runs.", ""]
  headers = ["batch", "memjax seq/s", "memjax ms/step"]
  if has_torch:
    ths = sorted(b[0]["torch_seq_s_by_threads"])
    headers += [f"torch seq/s ({t} thr)" for t in ths] + [f"memjax / torch ({t} thr)" for t in ths] \
        + ["memjax / best torch"]
  rows = []
  for r in b:
    row = [r["batch"], r["memjax_seq_s"], 1e3 * r["memjax_step_s"]]
    if has_torch:
      row += [r["torch_seq_s_by_threads"][t] for t in ths] \
          + [f"{r['ratio_by_threads'][t]:.1f}×" for t in ths] + [f"**{r['ratio']:.1f}×**"]
    rows.append(row)
  lines += [common.markdown_table(headers, rows), ""]
  if not has_torch:
    lines += ["PyTorch is not installed (`pip install -e .[bench]`): the reference was skipped.", ""]

  comp = res["compile"]
  lines += ["## Compile time (memjax train step; `step.lower(state).compile()`, timed apart)", ""]
  crow = [[c["max_length"], c["seq_len"], c["batch"], c["compile_s"], c["lower_s"], c["xla_compile_s"],
           c["compile_cpu_s"]] for c in comp]
  lines += [common.markdown_table(["max_length", "T", "batch", "total s", "trace+lower s", "XLA compile s",
                                   "process CPU s"], crow), ""]

  wc = res.get("warm_cache")
  if wc:
    lines += [f"With a warm JAX persistent compilation cache (`jax_compilation_cache_dir`), the same step "
              f"(batch {wc['batch']}, max_length {wc['max_length']}) takes {wc['hit_compile_s']:.1f} s "
              f"(trace+lower {wc['hit_lower_s']:.1f} s, cache load {wc['hit_xla_s']:.1f} s) instead of "
              f"{wc['miss_compile_s']:.1f} s.", ""]

  fl = res["flops"]
  h = fl["hand"]
  lines += [f"## FLOPs (batch {fl['batch']}, T = {fl['seq_len']})", "",
            f"- XLA `cost_analysis()` of the whole step: {fl['xla_step_flops_raw'] or float('nan'):.4g} FLOPs "
            "(scan bodies counted once).",
            f"- one cell step, forward + backward, compiled alone: {fl['xla_cell_flops'] or float('nan'):.4g} FLOPs; "
            f"corrected step = raw + (T − 1) × cell = **{fl['xla_step_flops'] or float('nan'):.4g} FLOPs**.",
            f"- hand count: forward {h['forward_per_step_example']:,.0f} FLOPs per step and example "
            f"(LSTM {h['lstm']:,}, head params {h['heads']:,}, addressing {h['addressing']:,}, read/write "
            f"{h['read_write']:,}, output {h['output']:,}); train step ≈ 3 × fwd × T × B + 15 × params = "
            f"**{h['train_step']:.4g} FLOPs**" + (f" (XLA / hand = {fl['xla_over_hand']:.2f})." if fl.get('xla_over_hand') else "."),
            f"- achieved: {fl['gflops']:.2f} GFLOP/s (XLA count; hand count {fl['hand_gflops']:.2f}) = "
            f"**{100 * fl['peak_fraction']:.1f}%** of the measured matmul peak ({peaks.matmul_gflops:.1f} GFLOP/s).",
            ""]
  if res.get("raw_flops_by_length"):
    lines += ["XLA raw counts by length (loop bodies once, so nearly flat in T): " +
              ", ".join(f"T={t}: {f:.4g}" for t, f in res["raw_flops_by_length"]) + ".", ""]

  trows = []
  for r in b:
    if r["batch"] in TARGET_RATIO and has_torch:
      need = TARGET_RATIO[r["batch"]]
      trows.append([f"speed-up vs torch at batch {r['batch']}", f"{r['ratio']:.1f}×", f"≥ {need:.0f}×",
                    common.met(r["ratio"] >= need)])
  if fl["batch"] == TARGET_PEAK_BATCH:
    trows.append([f"fraction of matmul peak at batch {TARGET_PEAK_BATCH}", f"{100 * fl['peak_fraction']:.1f}%",
                  f"≥ {100 * TARGET_PEAK_FRACTION:.0f}%", common.met(fl["peak_fraction"] >= TARGET_PEAK_FRACTION)])
  for c in comp:
    trows.append([f"compile at max_length {c['max_length']}", f"{c['compile_s']:.1f} s",
                  f"≤ {TARGET_COMPILE_S:.0f} s", common.met(c["compile_s"] <= TARGET_COMPILE_S)])
  if len(comp) >= 2:
    spread = max(c["compile_s"] for c in comp) / min(c["compile_s"] for c in comp)
    trows.append(["compile independent of length", f"max/min {spread:.2f}", "≈ 1 (≤ 1.25)", common.met(spread <= 1.25)])
  lines += ["## Targets", "", common.targets_table(trows), ""]

  for key, var in (("scaling_T", "seq_len"), ("scaling_N", "memory_size")):
    if res.get(key):
      rows = [[r[var], r["batch"], 1e3 * r["step_s"], r["hand_flops"] / 1e9, r["hand_flops"] / r["step_s"] / 1e9]
              for r in res[key]]
      lines += [f"## Scaling with {'T' if var == 'seq_len' else 'N'} (memjax)", "",
                common.markdown_table([var, "batch", "ms/step", "GFLOP/step (hand)", "GFLOP/s"], rows), ""]
  if res.get("profile"):
    lines += common.profile_markdown(res["profile"], f"memjax step at batch {res['profile_batch']}")
  return lines
