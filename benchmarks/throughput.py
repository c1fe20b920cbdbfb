"""Training throughput of memjax models, against a PyTorch reference.

One module per model, over the shared harness of :mod:`benchmarks.common`
(compile timed apart, ``block_until_ready`` on every step, warm-up excluded,
alternating timed runs in one process, medians, side-by-side ratios):

* ``ntm`` (default), :mod:`benchmarks.throughput_ntm`: the copy task (Graves et
  al. 2014) at batch 1, 16 and 64, sequences/s against
  :mod:`benchmarks.reference.ntm_torch`; compile time vs length, FLOPs (XLA and
  a hand count) as a fraction of the measured matmul peak, T and N sweeps (PNG);
* ``mann``, :mod:`benchmarks.throughput_mann`: Santoro et al. 2016's LRUA
  Omniglot step, episodes/s against :mod:`benchmarks.reference.mann_torch`;
* ``metanet``, :mod:`benchmarks.throughput_metanet`: Munkhdalai & Yu 2017's
  Omniglot model, episodes/s against :mod:`benchmarks.reference.metanet_torch`.

PyTorch runs with ``torch.set_num_threads(cores)`` and, on a multi-core machine,
also with 1 thread; each ratio is taken against the faster of the two (on a
machine shared with other jobs a multi-threaded eager PyTorch can be several
times slower than a single-threaded one). Without torch (the ``bench`` extra)
the reference is skipped.

    python -m benchmarks.throughput --out bench_out               # full (~10 min)
    python -m benchmarks.throughput --quick --out /tmp/b          # smoke run
    python -m benchmarks.throughput --profile 64                  # + top XLA ops at batch 64
    python -m benchmarks.throughput --models metanet --out /tmp/m # MetaNet only
    python -m benchmarks.throughput --models mann --out /tmp/m    # MANN only

Writes ``throughput.md``, ``throughput.json`` and ``throughput.png`` to ``--out``
(with ``ntm`` in ``--models``; otherwise the markdown and JSON only).
``--models`` takes ``ntm`` (default), ``mann`` and ``metanet`` (comma-separated).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from benchmarks import common, throughput_mann, throughput_metanet, throughput_ntm
from memjax.cli import int_list

# The models reported in the "Other models" list, each a module with
# ``run(...) -> result``, ``summary(result)`` and ``markdown(result)``.
OTHER_MODELS = {"mann": throughput_mann, "metanet": throughput_metanet}


def torch_threads_for(torch, *, quick: bool, requested: list[int] | None, cores: int) -> list[int]:
  """Thread counts the torch reference runs with: none without torch; ``requested``;
  else the machine's cores and also 1 (quick: 1 only, to stay short)."""
  if torch is None:
    return []
  if requested:
    return list(requested)
  if quick:
    return [1]
  return [cores, 1] if cores > 1 else [1]


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--quick", action="store_true", help="one small batch, short runs, no sweeps (smoke test)")
  p.add_argument("--out", default="bench_out", help="directory for throughput.md/.json/.png")
  p.add_argument("--models", default="ntm",
                 help="comma-separated: ntm, mann, metanet (each vs its PyTorch reference)")
  p.add_argument("--batches", type=int_list, default=None, help="default 1,16,64 (quick: 2)")
  p.add_argument("--max-length", type=int, default=None, help="copy max length (default 20; quick 5)")
  p.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 3; quick 2)")
  p.add_argument("--run-seconds", type=float, default=None, help="target length of one timed run (default 1.5)")
  p.add_argument("--torch-threads", type=int_list, default=None,
                 help="thread counts for the torch reference (default: cores, and 1 if cores > 1)")
  p.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
  p.add_argument("--no-scaling", action="store_true", help="skip the T and N sweeps")
  p.add_argument("--profile", type=int, default=None, metavar="BATCH",
                 help="also profile the memjax step at this batch and list the top XLA ops")
  p.add_argument("--seed", type=int, default=0)
  return p


def main(argv=None) -> dict:
  args = build_parser().parse_args(argv)
  models = [m for m in args.models.split(",") if m]
  unknown = set(models) - {"ntm", *OTHER_MODELS}
  if unknown:
    raise SystemExit(f"unknown models {sorted(unknown)}; choose from ntm, mann, metanet")
  quick = args.quick
  rounds = args.rounds or (2 if quick else 3)
  run_s = args.run_seconds or (0.05 if quick else 1.5)
  torch = None if args.no_torch else common.optional_torch()
  torch_threads = torch_threads_for(torch, quick=quick, requested=args.torch_threads, cores=common.num_cores())
  out = common.ensure_dir(args.out)
  env = common.environment()
  common.log("throughput benchmark:", common.environment_markdown(env))
  if torch is None and not args.no_torch:
    common.log("PyTorch not installed: skipping the reference (pip install -e .[bench]).")
  t_start = time.perf_counter()

  res: dict = {"other_models": [], "other_results": [], "args": vars(args), "environment": env}
  for name, module in OTHER_MODELS.items():
    if name in models:
      res[name] = module.run(quick=quick, rounds=rounds, run_s=run_s, torch_threads=torch_threads, seed=args.seed)
      res["other_models"].append(module.summary(res[name]))
      res["other_results"].append(res[name])
    else:
      res["other_models"].append(f"{name}: not requested (`--models ntm,{name}` runs it against its PyTorch "
                                 "reference).")
  for line in res["other_models"]:
    common.log(line)

  if "ntm" in models:
    ntm, peaks = throughput_ntm.measure(
        quick=quick, batches=args.batches or ([2] if quick else [1, 16, 64]),
        max_length=args.max_length or (5 if quick else 20), rounds=rounds, run_s=run_s,
        torch_threads=torch_threads, scaling=not args.no_scaling, profile=args.profile, seed=args.seed)
    res.update(ntm)
    lines = throughput_ntm.markdown_lines(res, env, peaks)
  else:
    lines = ["# memjax training throughput", "", common.environment_markdown(env), ""]
  res["elapsed_s"] = time.perf_counter() - t_start
  lines += ["## Other models", ""] + [f"- {m}" for m in res["other_models"]] + [""]
  lines += [module.markdown(res[name]) for name, module in OTHER_MODELS.items() if name in res]
  if "ntm" in models:
    lines += [f"Total benchmark time {res['elapsed_s']:.0f} s.", ""]
  text = "\n".join(lines)
  print(text)
  common.write_text(os.path.join(out, "throughput.md"), text)
  common.write_json(os.path.join(out, "throughput.json"), res)
  if "ntm" in models:
    throughput_ntm.plot(res, os.path.join(out, "throughput.png"))
  return res


if __name__ == "__main__":
  main(sys.argv[1:])
