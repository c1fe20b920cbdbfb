"""Time to accuracy of an Omniglot MANN run: training minutes until each paper figure is reached.

Users compare training recipes by the wall-clock time a run needs to reach the
paper's accuracies, not by episodes. ``experiments/omniglot_mann.py`` records,
with every evaluation on the test characters, ``train_seconds``: the training
wall time so far (compilation included, evaluations excluded, resumed
invocations added up). This script reads a run's ``metrics.jsonl`` and reports,
for each instance of the paper's row, the first evaluation at or above the
paper's figure (minutes of training and episodes), and where the run stands at
its last evaluation.

    # the recipe in README, then:
    python experiments/omniglot_mann.py --data-dir D --optimizer adam --lr 1e-3 \\
        --workdir runs/mann_onehot --eval-every 400 --checkpoint-every 200
    python -m benchmarks.time_to_accuracy --workdir runs/mann_onehot

Writes ``time_to_accuracy.json`` into the workdir. A figure that was not
reached is reported as such (``null``), never extrapolated. Evaluations are
every ``--eval-every`` steps, so each time is an upper bound at that
resolution. The CPU and its load change these times; the run's
``results.json`` records both.
"""

from __future__ import annotations

import json
import os

from memjax import cli

INSTANCE_NAMES = ("1st", "2nd", "3rd", "4th", "5th", "10th")


def _paper_row(config: dict) -> list[float] | None:
  # Santoro et al. 2016 (%), instances 1/2/3/4/5/10; the experiment holds the table.
  from memjax.pretrained.export import load_experiment  # noqa: PLC0415

  paper = load_experiment("omniglot_mann").PAPER
  return paper.get((config.get("model"), config.get("label_mode"), config.get("num_classes")))


def time_to_accuracy(records: list[dict], paper: list[float], batch_size: int) -> dict:
  """For each instance, the first evaluation with accuracy ≥ the paper's figure.

  Args:
    records: metrics lines; those with ``eval_acc_*`` and ``train_seconds`` count.
    paper: the paper's accuracies (%) at instances 1, 2, 3, 4, 5, 10.
    batch_size: episodes per step.

  Returns:
    ``{"reached": {name: {"minutes", "episodes", "accuracy"} or None}, "last": {...}}``.
  """
  evals = [r for r in records if "eval_acc_1st" in r and "train_seconds" in r]
  reached = {}
  for name, target in zip(INSTANCE_NAMES, paper):
    key = f"eval_acc_{name}"
    hit = next((r for r in evals if key in r and 100 * r[key] >= target), None)
    reached[name] = None if hit is None else {
        "minutes": hit["train_seconds"] / 60, "episodes": hit["step"] * batch_size,
        "accuracy": 100 * hit[key], "paper": target}
  last = evals[-1] if evals else None
  return {
      "reached": reached,
      "all_reached_minutes": (max(v["minutes"] for v in reached.values())
                              if reached and all(reached.values()) else None),
      "last": None if last is None else {
          "minutes": last["train_seconds"] / 60, "episodes": last["step"] * batch_size,
          "accuracy": {n: 100 * last[f"eval_acc_{n}"] for n in INSTANCE_NAMES if f"eval_acc_{n}" in last}},
  }


def main(argv=None) -> dict:
  p = cli.parser(__doc__)
  p.add_argument("--workdir", required=True, help="a run folder of experiments/omniglot_mann.py")
  args = p.parse_args(argv)
  paths = {n: os.path.join(args.workdir, n) for n in ("config.json", "metrics.jsonl")}
  for path in paths.values():
    if not os.path.exists(path):
      p.error(f"--workdir {args.workdir!r}: {os.path.basename(path)} not found (not a run folder of "
              "experiments/omniglot_mann.py?)")
  with open(paths["config.json"]) as f:
    config = json.load(f)
  with open(paths["metrics.jsonl"]) as f:
    records = [json.loads(line) for line in f if line.strip()]
  paper = _paper_row(config)
  if paper is None:
    p.error(f"no paper row for model={config.get('model')!r}, label_mode={config.get('label_mode')!r}, "
            f"num_classes={config.get('num_classes')}")
  out = time_to_accuracy(records, paper, config["batch_size"])
  out["config"] = config
  tmp = os.path.join(args.workdir, "time_to_accuracy.json.tmp")
  with open(tmp, "w") as f:
    json.dump(out, f, indent=1)
  os.replace(tmp, os.path.join(args.workdir, "time_to_accuracy.json"))
  print(f"{config['model'].upper()} {config['num_classes']}-way {config['label_mode']}: training minutes "
        "to reach the paper's accuracy")
  print("  instance   paper   minutes   episodes")
  for name, target in zip(INSTANCE_NAMES, paper):
    r = out["reached"][name]
    print(f"  {name:>8} {target:6.1f}  " + (f"{r['minutes']:8.1f} {r['episodes']:10,d}" if r else
                                           "   not reached"))
  if out["last"]:
    last = out["last"]
    accs = " ".join(f"{n}={a:.1f}" for n, a in last["accuracy"].items())
    print(f"  last evaluation: {last['minutes']:.1f} min, {last['episodes']:,d} episodes: {accs}")
  return out


if __name__ == "__main__":
  main()
