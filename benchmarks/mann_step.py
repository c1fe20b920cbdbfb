"""MANN Omniglot train step: the current step against the previous one, side by side.

The step is Santoro et al. 2016's configuration (LSTM 200, 4 heads, memory
128 × 40, 5-way episodes of 50 steps, 20×20 images, Adam 1e-3, clip ±10) on
synthetic episodes. Variants compute the same loss and gradients
(``tests/test_mann.py`` checks both against autodiff and ``nn.RNN``):

* ``previous``: ``nn.RNN(MANNCell)`` with autodiff through the LRUA step — the
  train step before ``memjax.mann.unroll`` and the hand-written LRUA backward;
* ``unroll``: :func:`memjax.mann.unroll` (the controller's input projection and
  the output layer as single matmuls outside the ``lax.scan``), autodiff LRUA;
* ``custom_vjp``: ``nn.RNN(MANNCell)`` with the hand-written LRUA backward;
* ``current``: both — what ``experiments/omniglot_mann.py`` trains with;
* ``data_parallel``: ``current`` with the batch split over ``--devices`` host
  CPU devices (``--xla_force_host_platform_device_count``, the state
  replicated, every device running the loss on its slice under ``shard_map``,
  gradients all-reduced), as ``omniglot_mann.py`` runs when JAX sees several
  devices. Whether splitting the 2 cores into 2 devices beats XLA:CPU's own
  intra-op threads on one is what it measures;
* ``data_parallel_xla``: the same split left to XLA's SPMD partitioner
  (``training.shard_batch`` marks the batch; ``make_step``'s default).

Timed runs alternate (previous, unroll, …, previous, …) in one process; the
table gives median ms/step, episodes/s and the speed relative to ``previous``.

    python -m benchmarks.mann_step --batches 16,64 --out runs/bench_mann_step
    python -m benchmarks.mann_step --batches 8,16 --variants previous,current --profile 16   # + where the time goes
"""

from __future__ import annotations

import argparse
import contextlib
import os

from benchmarks import common, throughput_mann
from memjax.cli import int_list

VARIANTS = ("previous", "unroll", "custom_vjp", "current", "data_parallel", "data_parallel_xla")


@contextlib.contextmanager
def _autodiff_lrua(enabled: bool):
  """While tracing: differentiate the LRUA step by autodiff instead of its custom VJP."""
  from memjax import memory
  custom = memory._lrua_update
  if enabled:
    memory._lrua_update = lambda *a: memory._lrua_forward(*a)[0]
  try:
    yield
  finally:
    memory._lrua_update = custom


def _config(batch: int, *, seq_len: int = 50, classes: int = 5, image_size: int = 20, quick: bool = False) -> dict:
  """:data:`benchmarks.throughput_mann.CONFIG` at this batch (quick: memory 16 × 8, 2 heads, LSTM 16)."""
  cfg = dict(throughput_mann.CONFIG, batch=batch, seq_len=seq_len, num_classes=classes, image_size=image_size)
  if quick:
    cfg.update(memory_size=16, word_size=8, read_heads=2, controller=16)
  return cfg


def build(variant: str, batch: int, *, seq_len: int = 50, classes: int = 5, image_size: int = 20,
          quick: bool = False, seed: int = 0):
  """Compiled Adam step of one variant: ``(step(state) -> (state, loss), state, compile_s, first_loss)``
  (:func:`benchmarks.throughput_mann.build_step`; quick: memory 16 × 8, 2 heads, LSTM 16)."""
  cfg = _config(batch, seq_len=seq_len, classes=classes, image_size=image_size, quick=quick)
  mesh = None
  if variant.startswith("data_parallel"):
    from memjax import training
    mesh = training.data_mesh()
  with _autodiff_lrua(variant in ("previous", "unroll")):
    js = throughput_mann.build_step(cfg, seed, unroll=variant not in ("previous", "custom_vjp"), mesh=mesh,
                                    shard_map=variant == "data_parallel")
  state, loss, _, _ = js.executable(js.state)
  return js.executable, state, js.compiled.total_s, float(loss)


def profile(batch: int, *, quick: bool, steps: int = 3, top: int = 15) -> list[dict]:
  """Top XLA ops of the ``current`` step at ``batch`` (:func:`benchmarks.common.profile_step`)."""
  return common.profile_step(throughput_mann.build_step(_config(batch, quick=quick)), steps=steps, top=top)


def compare(batch: int, variants, *, rounds: int, run_s: float, quick: bool) -> list[dict]:
  got = common.compare_variants(lambda v: build(v, batch, quick=quick), variants, rounds=rounds, run_s=run_s)
  return [{"variant": v, "batch": batch, "ms_per_step": r["step_s"] * 1e3, "episodes_per_s": batch / r["step_s"],
           "speed_vs_previous": r["speed"], "compile_s": r["compile_s"], "first_loss": r["first_loss"]}
          for v, r in got.items()]


def main(argv=None) -> list[dict]:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--quick", action="store_true", help="a tiny MANN, batch 2 (smoke test)")
  p.add_argument("--batches", type=int_list, default=None,
                 help="comma-separated batch sizes (default 16,64; quick: 2)")
  p.add_argument("--variants", default=",".join(VARIANTS), help=f"'previous' first, then any of {VARIANTS}")
  p.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 7; quick: 1)")
  p.add_argument("--run-seconds", type=float, default=None, help="seconds per timed run (default 1; quick: 0.05)")
  p.add_argument("--devices", type=int, default=2,
                 help="host CPU devices for the data_parallel variant (default 2; sets "
                      "--xla_force_host_platform_device_count unless XLA_FLAGS already does)")
  p.add_argument("--profile", type=int, default=None, metavar="BATCH",
                 help="also list the top XLA ops of the current step at this batch (a jax.profiler trace)")
  p.add_argument("--out", default="runs/bench_mann_step")
  args = p.parse_args(argv)
  variants = [v.strip() for v in args.variants.split(",") if v.strip()]
  if args.profile is not None and args.profile < 1:
    p.error(f"--profile: expected a positive batch size, got {args.profile}")
  if sorted(set(variants) - set(VARIANTS)) or variants[:1] != ["previous"]:
    p.error(f"--variants: expected 'previous' first, then any of {VARIANTS}; got {variants}")
  q = args.quick
  batches = args.batches or ([2] if q else [16, 64])
  if any(v.startswith("data_parallel") for v in variants):
    if args.devices < 2:
      p.error(f"--devices: expected at least 2 for the data_parallel variant, got {args.devices}")
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:  # read when JAX first starts its CPU backend
      os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={args.devices}".strip()
    import jax
    n = jax.device_count()
    if n < 2:
      p.error("--variants data_parallel: JAX sees 1 device (its backend started before the flag could be set); "
              f"run with XLA_FLAGS=--xla_force_host_platform_device_count={args.devices}")
    if any(b % n for b in batches):
      p.error(f"--batches: every batch must divide over the {n} devices for data_parallel, got {batches}")
  rows = []
  for b in batches:
    rows += compare(b, variants, rounds=args.rounds or (1 if q else 7), run_s=args.run_seconds or (0.05 if q else 1.0),
                    quick=q)
    common.log(f"batch {b}: " + ", ".join(f"{r['variant']} {r['speed_vs_previous']:.2f}×"
                                         for r in rows[-len(variants):]))
  extra = extra_lines = None
  if args.profile is not None:
    prof = profile(args.profile, quick=q)
    extra = {"profile": prof, "profile_batch": args.profile}
    extra_lines = common.profile_markdown(prof, f"current step at batch {args.profile}")
  common.write_variants_report(
      args.out, "mann_step", "MANN Omniglot train step: current vs previous",
      ["batch", "variant", "ms/step", "episodes/s", "speed vs previous", "compile s", "first loss"],
      [[r["batch"], r["variant"], f"{r['ms_per_step']:.1f}", f"{r['episodes_per_s']:.0f}",
        f"{r['speed_vs_previous']:.2f}×", f"{r['compile_s']:.1f}", f"{r['first_loss']:.6f}"] for r in rows], rows,
      extra_lines=extra_lines,
      extra=extra)
  return rows


if __name__ == "__main__":
  main()
