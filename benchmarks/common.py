"""Timing harness shared by the memjax benchmarks.

What "timing done right" means here:

* compilation is timed on its own, as ``jax.jit(f).lower(*args)`` plus
  ``.compile()``, and the timed calls go to the already-compiled executable, so
  no call in a timed sample traces or compiles;
* every sample ends with ``jax.block_until_ready`` on the outputs (JAX
  dispatches asynchronously; without it one would time the dispatch);
* warm-up calls are made and discarded before sampling (first-call allocation,
  caches, thread-pool start-up);
* a sample may hold several calls (``number``) so that it lasts long enough to
  be well above the clock's resolution; the figure reported is the **median**
  over samples with the inter-quartile range (IQR) as the spread — both robust
  to the outliers a machine shared with other jobs produces;
* the machine's peak is measured in the same run, so the achieved fractions are
  against what this machine delivered at that moment: a large float32 matmul in
  JAX (GFLOP/s) and a large array copy in JAX (GB/s).
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import gzip
import json
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

import numpy as np


@dataclasses.dataclass
class Timing:
  """Per-call wall time statistics, in seconds."""
  median: float
  q1: float
  q3: float
  samples: int
  number: int  # calls per sample

  @property
  def iqr(self) -> float:
    return self.q3 - self.q1

  def as_dict(self) -> dict:
    return {"median_s": self.median, "q1_s": self.q1, "q3_s": self.q3, "iqr_s": self.iqr,
            "samples": self.samples, "number": self.number}


def summarize(per_call_seconds: Sequence[float], number: int = 1) -> Timing:
  """Median and quartiles of per-call times."""
  xs = sorted(float(x) for x in per_call_seconds)
  if not xs:
    raise ValueError("no samples")
  if len(xs) >= 2:
    q = statistics.quantiles(xs, n=4, method="inclusive")
    q1, q3 = q[0], q[2]
  else:
    q1 = q3 = xs[0]
  return Timing(statistics.median(xs), q1, q3, len(xs), number)


def block(x):
  """``jax.block_until_ready`` for JAX outputs; identity for anything else."""
  import jax
  return jax.block_until_ready(x)


def time_fn(fn: Callable[[], Any], *, warmup: int = 2, repeats: int = 7, min_sample_s: float = 2e-3,
            max_total_s: float = 2.0, sync: Callable[[Any], Any] = block) -> Timing:
  """Times ``fn()`` (no arguments: close over them), blocking on its result.

  Args:
    fn: the call to time; its return value is passed to ``sync``.
    warmup: calls made and discarded first (at least 1; the first also sizes the samples).
    repeats: number of samples (fewer if ``max_total_s`` runs out, never fewer than 3
      unless a single call is longer than ``max_total_s``).
    min_sample_s: a sample loops ``number`` calls so that it lasts at least this long.
    max_total_s: soft time budget for the samples.
    sync: waits for the result (``jax.block_until_ready`` by default).

  Returns:
    :class:`Timing` of one call.
  """
  t_call = None
  for _ in range(max(1, warmup)):
    t0 = time.perf_counter()
    sync(fn())
    t_call = time.perf_counter() - t0
  number = max(1, int(np.ceil(min_sample_s / max(t_call, 1e-9))))
  samples = []
  start = time.perf_counter()
  for i in range(max(1, repeats)):
    t0 = time.perf_counter()
    for _ in range(number):
      out = fn()
    sync(out)
    samples.append((time.perf_counter() - t0) / number)
    if i >= 2 and time.perf_counter() - start > max_total_s:
      break
  return summarize(samples, number)


@dataclasses.dataclass
class Compiled:
  """A compiled executable and how long tracing/lowering and compiling took."""
  executable: Any
  lower_s: float
  compile_s: float

  @property
  def total_s(self) -> float:
    return self.lower_s + self.compile_s


def compile_fn(fn: Callable, *args, static_argnums=(), **jit_kwargs) -> Compiled:
  """``jax.jit(fn).lower(*args).compile()``, timed (lowering and compiling apart).

  ``fn`` may already be jitted (then it is lowered as is).
  """
  import jax
  jitted = fn if hasattr(fn, "lower") else jax.jit(fn, static_argnums=static_argnums, **jit_kwargs)
  t0 = time.perf_counter()
  lowered = jitted.lower(*args)
  t1 = time.perf_counter()
  executable = lowered.compile()
  t2 = time.perf_counter()
  return Compiled(executable, t1 - t0, t2 - t1)


def alternate(steps: dict, *, rounds: int, run_s: float) -> dict:
  """Times compiled train steps in alternating runs (a, b, …, a, b, …) in one process.

  Args:
    steps: name -> ``(step, state)`` with ``step(state) -> (state, loss, ...)``.
    rounds: alternating rounds.
    run_s: seconds per run, sized from the first step's warm-up time.

  Returns:
    name -> median seconds per step over the rounds.
  """
  import jax

  def run(step, state, n):
    t0 = time.perf_counter()
    for _ in range(n):
      state, loss, *_ = step(state)
    jax.block_until_ready(loss)
    return (time.perf_counter() - t0) / n, state

  states, warm = {}, {}
  for name, (step, state) in steps.items():  # warm-up: two steps each, untimed
    warm[name], states[name] = run(step, state, 2)
  n = max(2, int(run_s / max(next(iter(warm.values())), 1e-6)))
  times = {name: [] for name in steps}
  for _ in range(rounds):
    for name, (step, _) in steps.items():
      dt, states[name] = run(step, states[name], n)
      times[name].append(dt)
  return {name: statistics.median(t) for name, t in times.items()}


def compare_variants(build: Callable[[str], tuple], variants: Sequence[str], *, rounds: int,
                     run_s: float) -> dict[str, dict]:
  """Builds each variant and times them in alternating runs (:func:`alternate`).

  Args:
    build: variant -> ``(step, state, compile_s, first_loss)``.
    variants: names, the baseline first.
    rounds, run_s: as for :func:`alternate`.

  Returns:
    variant -> ``{"step_s", "speed", "compile_s", "first_loss"}``: median seconds
    per step, the baseline's step time over the variant's, compile seconds, the
    first step's loss.
  """
  built = {v: build(v) for v in variants}
  times = alternate({v: b[:2] for v, b in built.items()}, rounds=rounds, run_s=run_s)
  base = times[variants[0]]
  return {v: {"step_s": times[v], "speed": base / times[v], "compile_s": built[v][2],
              "first_loss": built[v][3]} for v in variants}


def write_variants_report(out: str, name: str, title: str, headers: Sequence[str],
                          cells: Sequence[Sequence[Any]], rows: list[dict], *,
                          extra_lines: Sequence[str] | None = None, extra: dict | None = None) -> str:
  """Writes ``NAME.md`` (the environment and a table of variants) and ``NAME.json`` to ``out``.

  The table's ``first loss`` column is the loss of each variant's first step (the
  same batch for every variant); ``extra_lines`` (markdown) follow the table and
  ``extra``'s keys join the JSON. Prints the markdown and returns it.
  """
  env = environment()
  text = (f"# {title}\n\n" + environment_markdown(env)
          + "\n\nMedians of alternating runs; `first loss` is the loss of the first step (the same batch for "
          "every variant).\n\n" + markdown_table(headers, cells) + "\n")
  if extra_lines:
    text += "\n" + "\n".join(extra_lines) + "\n"
  ensure_dir(out)
  write_text(os.path.join(out, f"{name}.md"), text)
  write_json(os.path.join(out, f"{name}.json"), {"env": env, "rows": rows, **(extra or {})})
  print(text)
  return text


def cost_flops(executable) -> float | None:
  """XLA's FLOP count of a compiled executable (loop bodies counted once), or None."""
  try:
    cost = executable.cost_analysis()
  except Exception:  # some backends do not implement it
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or "flops" not in cost:
    return None
  return float(cost["flops"])


# --------------------------------------------------------------------------- memjax vs a PyTorch reference


@dataclasses.dataclass
class TrainStep:
  """A compiled memjax train step ``executable(state) -> (state, loss, metrics, finite)`` and its state."""
  executable: Any
  state: Any
  compiled: Compiled
  compile_cpu_s: float  # process CPU seconds of the compile
  num_params: int

  def run(self, steps: int) -> float:
    """Runs ``steps`` train steps, blocking on each step's loss; returns seconds."""
    import jax
    t0 = time.perf_counter()
    state = self.state
    for _ in range(steps):
      state, loss, _, _ = self.executable(state)
      jax.block_until_ready(loss)
    self.state = state
    return time.perf_counter() - t0


def compile_train_step(loss_fn: Callable, params, optimizer, seed: int = 0, mesh=None, *,
                       shard_map: bool = False) -> TrainStep:
  """:func:`memjax.training.make_step` of ``loss_fn`` with ``optimizer``, compiled (timed apart).

  Args:
    loss_fn: ``(params, key) -> (loss, metrics)``.
    params: the initial parameters.
    optimizer: an optax transformation.
    seed: the step's key is ``jax.random.key(seed + 1)``.
    mesh: None (one device), or a ``"data"`` mesh (:func:`memjax.training.data_mesh`)
      to run the step data-parallel as :func:`memjax.training.fit` does (the
      state replicated; ``loss_fn`` splits its batch with ``training.shard_batch``).
    shard_map: with a mesh, every device runs ``loss_fn`` on its slice
      (``make_step(..., shard_map=True)``), as ``experiments/omniglot_mann.py`` trains.
  """
  import jax
  from memjax import training
  state = training.init_state(params, optimizer)
  if mesh is not None:
    state = training.replicate(state, mesh)
  step = training.make_step(loss_fn, optimizer, jax.random.key(seed + 1), mesh, shard_map=shard_map)
  cpu0 = time.process_time()
  compiled = compile_fn(step, state)
  cpu = time.process_time() - cpu0
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  return TrainStep(compiled.executable, state, compiled, cpu, num_params)


class TorchReference:
  """A PyTorch reference trainer (``trainer.step()`` trains one step) and its parameter count."""

  def __init__(self, trainer, num_params: int):
    self.torch = optional_torch()
    self.trainer = trainer
    self.num_params = num_params

  def run(self, steps: int, threads: int) -> float:
    """Seconds for ``steps`` steps on ``threads`` threads."""
    self.torch.set_num_threads(threads)
    t0 = time.perf_counter()
    for _ in range(steps):
      self.trainer.step()
    return time.perf_counter() - t0


def profile_step(js: TrainStep, steps: int = 3, top: int = 15) -> list[dict]:
  """Top XLA ops of a compiled train step by time, from a ``jax.profiler`` trace of ``steps`` steps.

  Each op is mapped to its HLO shape and the JAX operation it came from; ``calls_per_step``
  counts how often it ran per step (an op inside a ``lax.scan`` body runs once per
  iteration). The profiler adds its own cost per op, so the shares are the figure to read,
  not the absolute times.
  """
  import jax
  hlo = js.executable.as_text()
  js.run(1)
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d, create_perfetto_trace=True):
      js.run(steps)
    paths = glob.glob(os.path.join(d, "**", "*perfetto_trace.json.gz"), recursive=True)
    if not paths:
      return []
    with gzip.open(paths[0]) as f:
      trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  durs = collections.defaultdict(list)
  # Python frames ("$…"), the runtime's own spans, the "end: OP" markers of async ops and
  # "Wait" spans are not XLA ops.
  for e in events:
    if e.get("ph") == "X" and not e["name"].startswith(("$", "ThunkExecutor", "SlinkyThreadPool", "PjitFunction",
                                                          "CommonPjRt", "ParseArguments", "end: ", "Wait")):
      durs[e["name"]].append(e.get("dur", 0.0))
  # Median duration per call × calls per step: robust to a call that was preempted
  # (on a loaded machine one call can absorb a whole scheduler time slice).
  per_step = {name: statistics.median(d) * len(d) / steps for name, d in durs.items()}
  total = sum(per_step.values()) or 1.0
  rows = []
  for name, t in sorted(per_step.items(), key=lambda kv: -kv[1])[:top]:
    line = re.search(r"%" + re.escape(name) + r" = ([^\n]*)", hlo)
    shape = op_name = None
    if line:
      shape = line.group(1).split(" ", 1)[0]
      if shape.startswith("("):
        shape = "tuple"
      mm = re.search(r'op_name="([^"]*)"', line.group(1))
      op_name = mm.group(1) if mm else None
    rows.append({"op": name, "ms_per_step": t / 1e3, "share": t / total, "calls_per_step": len(durs[name]) / steps,
                 "shape": shape, "jax_op": op_name})
  return rows


def profile_markdown(profile: list[dict], what: str) -> list[str]:
  """Markdown lines for :func:`profile_step`'s rows under a heading naming ``what``."""
  return [f"## Profile: top XLA ops of the {what}", "",
          markdown_table(["op", "ms/step", "share", "calls/step", "shape", "from"],
                         [[r["op"], r["ms_per_step"], f"{100 * r['share']:.1f}%", r["calls_per_step"],
                           r["shape"], (r["jax_op"] or "")[-70:]] for r in profile],
                         ["l", "r", "r", "r", "l", "l"]), ""]


def _steps_for(seconds_per_step: float, target_s: float) -> int:
  return max(1, int(math.ceil(target_s / max(seconds_per_step, 1e-9))))


def median_step_s(js: TrainStep, target_s: float, rounds: int) -> float:
  """Median seconds per memjax train step: a warm-up and a sizing step, then ``rounds`` runs of ~target_s."""
  js.run(1)
  n = _steps_for(js.run(1), target_s)
  return statistics.median(js.run(n) / n for _ in range(rounds))


def compare_with_reference(js: TrainStep, reference: Callable[[], TorchReference], torch_threads: list[int], *,
                           rounds: int, target_run_s: float, per_step: int, label: str, unit: str,
                           unit_key: str, result: dict) -> dict:
  """Rates of a compiled memjax train step and of its PyTorch reference, in alternating timed runs.

  After a warm-up step of memjax, one sizing step per side (and thread count;
  torch also gets a warm-up step) is excluded; each of ``rounds`` rounds then
  times ``ceil(target_run_s / step)`` steps of memjax, then of torch at each
  thread count. Rates are ``per_step`` items (sequences, episodes) per second;
  medians over rounds, and the ratio against the fastest torch thread count.

  Args:
    js: the memjax step.
    reference: builds the torch reference (called only when ``torch_threads``).
    torch_threads: thread counts for torch; empty: memjax only.
    label, unit: for the log lines (``"[mann]"``, ``"episodes/s"``).
    unit_key: the result's rate keys are ``memjax_{unit_key}``, ``torch_{unit_key}``, ...
    result: the dict the figures are added to (and returned).
  """
  log(f"{label} compiled in {js.compiled.total_s:.1f} s (lower {js.compiled.lower_s:.1f} s, "
      f"compile {js.compiled.compile_s:.1f} s, cpu {js.compile_cpu_s:.1f} s)")
  js.run(1)  # warm-up
  tr = reference() if torch_threads else None
  jax_steps = _steps_for(js.run(1), target_run_s)
  torch_steps = {}
  for th in torch_threads if tr is not None else ():
    tr.run(1, th)  # warm-up
    torch_steps[th] = _steps_for(tr.run(1, th), target_run_s)
  jax_rates, torch_rates = [], {th: [] for th in torch_steps}
  for r in range(rounds):
    jax_rates.append(per_step * jax_steps / js.run(jax_steps))
    for th, n in torch_steps.items():
      torch_rates[th].append(per_step * n / tr.run(n, th))
    log(f"{label} round {r + 1}/{rounds}: memjax {jax_rates[-1]:.3g} {unit}"
        + "".join(f", torch({th} thr) {torch_rates[th][-1]:.3g} {unit}" for th in torch_rates))

  jax_median = statistics.median(jax_rates)
  result.update({
      f"memjax_{unit_key}": jax_median, "memjax_runs": jax_rates,
      "memjax_steps_per_run": jax_steps, "memjax_step_s": per_step / jax_median,
      "compile_s": js.compiled.total_s, "lower_s": js.compiled.lower_s, "xla_compile_s": js.compiled.compile_s,
      "compile_cpu_s": js.compile_cpu_s, "num_params_memjax": js.num_params,
  })
  if tr is not None and torch_rates:
    meds = {th: statistics.median(v) for th, v in torch_rates.items()}
    best = max(meds, key=meds.get)
    result.update({
        f"torch_{unit_key}_by_threads": meds, "torch_runs": torch_rates,
        "torch_steps_per_run": torch_steps, "torch_best_threads": best,
        f"torch_{unit_key}": meds[best], "ratio": jax_median / meds[best],
        "ratio_by_threads": {th: jax_median / v for th, v in meds.items()},
        "num_params_torch": tr.num_params,
    })
  return result


def targets_table(rows: Sequence[Sequence[Any]]) -> str:
  """The "target, measured, required, met" table of a report."""
  return markdown_table(["target", "measured", "required", "met"], rows, ["l", "r", "r", "l"])


def met(ok: bool) -> str:
  return "yes" if ok else "**no**"


def comparison_line(name: str, desc: str, m: dict, target: str, section: str) -> str:
  """One line for a report's "Other models" list: memjax episodes/s, compile, and the torch ratio."""
  line = f"{name}: {desc}: memjax {m['memjax_episodes_s']:.3g} episodes/s, compile {m['compile_s']:.1f} s"
  if "ratio" in m:
    line += (f"; PyTorch reference {m['torch_episodes_s']:.3g} episodes/s ({m['torch_best_threads']} thr): "
             f"**{m['ratio']:.1f}×** (target {target})")
  else:
    line += "; PyTorch reference skipped"
  return line + f" (see the {section} section)."


def comparison_section(title: str, intro: str, m: dict, headers: list, row: list,
                       target: list | None) -> str:
  """A report's section on one model against its PyTorch reference.

  Args:
    title: the section's heading.
    intro: what is compared (the parameter counts and rounds are appended).
    m: the model's result (:func:`compare_with_reference`, rates in episodes/s).
    headers, row: the memjax columns of the table (the torch columns and the
      ratios are appended when measured).
    target: the ``targets_table`` row of the speed-up (used when measured).
  """
  intro += f" memjax params {m['num_params_memjax']:,}"
  if "num_params_torch" in m:
    intro += f", torch params {m['num_params_torch']:,} (nn.LSTMCell has two bias vectors)"
  lines = [f"## {title}", "", intro + f". Medians over {m['rounds']} alternating rounds (warm-up excluded).", ""]
  if "ratio" in m:
    ths = sorted(m["torch_episodes_s_by_threads"])
    headers = headers + [f"torch episodes/s ({t} thr)" for t in ths] \
        + [f"memjax / torch ({t} thr)" for t in ths] + ["memjax / best torch"]
    row = row + [m["torch_episodes_s_by_threads"][t] for t in ths] \
        + [f"{m['ratio_by_threads'][t]:.1f}×" for t in ths] + [f"**{m['ratio']:.1f}×**"]
  lines += [markdown_table(headers, [row]), ""]
  if "ratio" not in m:
    lines += ["PyTorch is not installed (`pip install -e .[bench]`) or was disabled: the reference was skipped.", ""]
  lines += [f"Compile (memjax train step, timed apart): {m['compile_s']:.1f} s (trace+lower "
            f"{m['lower_s']:.1f} s, XLA compile {m['xla_compile_s']:.1f} s, process CPU "
            f"{m['compile_cpu_s']:.1f} s).", ""]
  if "ratio" in m:
    lines += [targets_table([target]), ""]
  return "\n".join(lines)


# --------------------------------------------------------------------------- machine peaks


@dataclasses.dataclass
class Peaks:
  """This machine's measured peaks (same process, same moment as the benchmark)."""
  matmul_gflops: float
  matmul_n: int
  copy_gbs: float        # the peak used for "% of copy peak": the best of the next two
  copy_into_gbs: float   # src -> a reused (donated) dst buffer
  copy_inplace_gbs: float  # x -> x (donated), read and write of the same buffer
  copy_fresh_gbs: float  # src -> a fresh output buffer allocated by the call
  copy_mib: float
  numpy_matmul_gflops: float
  numpy_copy_gbs: float

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)

  def markdown(self) -> str:
    return (f"Measured peaks: fp32 matmul {self.matmul_n}×{self.matmul_n} in JAX "
            f"**{self.matmul_gflops:.1f} GFLOP/s** (numpy {self.numpy_matmul_gflops:.1f}); "
            f"streaming a {self.copy_mib:.0f} MiB array (read + write bytes) in JAX **{self.copy_gbs:.1f} GB/s** "
            f"(best of: copy into a reused buffer {self.copy_into_gbs:.1f}, in place {self.copy_inplace_gbs:.1f}; "
            f"into a fresh output buffer each call {self.copy_fresh_gbs:.1f}; numpy copy {self.numpy_copy_gbs:.1f}).")


def measure_peaks(quick: bool = False) -> Peaks:
  """Measures fp32 matmul GFLOP/s and array-copy GB/s in JAX (and numpy, for reference).

  Matmul: ``n × n @ n × n`` (n = 2048; 1024 quick), 2n³ FLOPs. Copy: ``src + 1``
  (an identity copy may be elided by XLA) of a 256 MiB array (32 MiB quick, both
  beyond the last-level cache); bytes = one read + one write. The peak is the best
  of a copy into a donated buffer of the same shape and an in-place update of a
  donated buffer, so no call allocates; the copy into a fresh output buffer is also
  reported, since allocating (page-faulting) new memory can cost more than the
  copy itself.
  """
  import jax
  import jax.numpy as jnp
  n = 1024 if quick else 2048
  reps, budget = (5, 1.0) if quick else (9, 3.0)
  key = jax.random.key(0)
  a = jax.random.normal(key, (n, n), jnp.float32)
  b = jax.random.normal(jax.random.fold_in(key, 1), (n, n), jnp.float32)
  mm = compile_fn(lambda x, y: jnp.matmul(x, y, precision=jax.lax.Precision.HIGHEST), a, b).executable
  t_mm = time_fn(lambda: mm(a, b), warmup=2, repeats=reps, max_total_s=budget)
  matmul_gflops = 2.0 * n ** 3 / t_mm.median / 1e9

  copy_mib = 32 if quick else 256
  size = int(copy_mib * 2 ** 20 // 4)
  src = jnp.zeros((size,), jnp.float32)
  # keep_unused: jit would otherwise drop the unused dst (and its donation).
  into = jax.jit(lambda s, dst: s + 1.0, donate_argnums=1, keep_unused=True).lower(src, src).compile()
  inplace = jax.jit(lambda s: s + 1.0, donate_argnums=0).lower(src).compile()
  holder = [jnp.zeros((size,), jnp.float32), jnp.zeros((size,), jnp.float32)]

  def copy_into():
    holder[0] = into(src, holder[0])
    return holder[0]

  def copy_inplace():
    holder[1] = inplace(holder[1])
    return holder[1]

  t_cp = time_fn(copy_into, warmup=2, repeats=reps, max_total_s=budget)
  t_ip = time_fn(copy_inplace, warmup=2, repeats=reps, max_total_s=budget)
  fresh = compile_fn(lambda s: s + 1.0, src).executable
  t_fresh = time_fn(lambda: fresh(src), warmup=2, repeats=reps, max_total_s=budget)

  an, bn = np.asarray(a), np.asarray(b)
  t_nmm = time_fn(lambda: an @ bn, warmup=1, repeats=5, max_total_s=budget, sync=_noop)
  xn = np.zeros((size,), np.float32)
  yn = np.empty_like(xn)
  t_ncp = time_fn(lambda: np.add(xn, 1.0, out=yn), warmup=1, repeats=5, max_total_s=budget, sync=_noop)
  del a, b, src, holder
  nbytes = 2.0 * size * 4
  into_gbs, inplace_gbs = nbytes / t_cp.median / 1e9, nbytes / t_ip.median / 1e9
  return Peaks(matmul_gflops, n, max(into_gbs, inplace_gbs), into_gbs, inplace_gbs,
               nbytes / t_fresh.median / 1e9, copy_mib,
               2.0 * n ** 3 / t_nmm.median / 1e9, nbytes / t_ncp.median / 1e9)


def _noop(x):
  return x


# --------------------------------------------------------------------------- environment, output


def environment() -> dict:
  """Versions and machine facts to print with every result."""
  import jax
  env = {
      "python": platform.python_version(),
      "jax": jax.__version__,
      "backend": jax.default_backend(),
      "devices": [str(d) for d in jax.devices()],
      "cpu_count": os.cpu_count(),
      "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
      "numpy": np.__version__,
      "platform": platform.platform(),
      "processor": _cpu_model(),
      "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
  }
  torch = optional_torch()
  env["torch"] = torch.__version__ if torch is not None else None
  return env


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


def num_cores() -> int:
  """CPU cores this process may run on."""
  if hasattr(os, "sched_getaffinity"):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def optional_torch():
  """``torch`` if it is installed (the ``bench`` extra), else None. Imported lazily."""
  try:
    import torch
  except ImportError:
    return None
  return torch


def environment_markdown(env: dict) -> str:
  return (f"jax {env['jax']} ({env['backend']}: {', '.join(env['devices'])}), numpy {env['numpy']}, "
          f"torch {env['torch'] or 'not installed'}; {env['processor']}, {env['affinity_cpus']} cores; "
          f"1-min load average at start {env['loadavg_1m']:.1f}")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]],
                   align: Sequence[str] | None = None) -> str:
  """A GitHub-flavoured markdown table; ``align`` is 'l' or 'r' per column."""
  align = align or ["l"] + ["r"] * (len(headers) - 1)
  cells = [[_cell(v) for v in row] for row in rows]
  out = ["| " + " | ".join(headers) + " |",
         "|" + "|".join(":---" if a == "l" else "---:" for a in align) + "|"]
  out += ["| " + " | ".join(row) + " |" for row in cells]
  return "\n".join(out)


def _cell(v) -> str:
  if v is None:
    return "–"
  if isinstance(v, float):
    if not np.isfinite(v):
      return str(v)
    a = abs(v)
    if a == 0:
      return "0"
    if a >= 100:
      return f"{v:,.0f}"
    if a >= 10:
      return f"{v:.1f}"
    if a >= 0.1:
      return f"{v:.2f}"
    return f"{v:.3g}"
  return str(v)


def ensure_dir(path: str) -> str:
  os.makedirs(path, exist_ok=True)
  return path


def write_json(path: str, obj) -> None:
  with open(path, "w") as f:
    json.dump(obj, f, indent=1, default=_json_default)
    f.write("\n")


def _json_default(o):
  if isinstance(o, (np.floating, np.integer)):
    return o.item()
  if dataclasses.is_dataclass(o):
    return dataclasses.asdict(o)
  return str(o)


def write_text(path: str, text: str) -> None:
  with open(path, "w") as f:
    f.write(text)


def pyplot():
  """matplotlib.pyplot with a file-only backend."""
  import matplotlib
  matplotlib.use("Agg", force=True)
  import matplotlib.pyplot as plt
  return plt


def log(*args) -> None:
  print(*args, file=sys.stderr, flush=True)
