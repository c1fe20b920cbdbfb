"""Compare two MetaNet runs on the same test episodes: the paired difference.

Two runs' final tests (``results.json``, or ``results_eval.json`` from
``--eval-only``) meet the same episodes when their test protocol is the same
(N-way, queries per class, test split, number of episodes: every test draws from
the fixed key ``memjax.training.eval_key(2)``). The difference of their means is
then best judged per episode, d_e = acc_b[e] − acc_a[e], whose 95% half-width is
far smaller than either run's own (:func:`memjax.evaluation.paired_ci95`)::

    python experiments/compare_results.py runs/a/results.json runs/b/results_eval.json

Runs scored with different protocols (e.g. trained with other ``--num-query``) are
refused, naming the field; score one again with ``omniglot_metanet.py --eval-only
--num-query Q`` first.
"""

from __future__ import annotations

import argparse
import json

from memjax.evaluation import paired_ci95

# The fields that fix which test episodes a run's final test met.
PROTOCOL = ("num_classes", "num_support", "num_query_per_class", "test_split", "eval_episodes")


def load(parser: argparse.ArgumentParser, path: str) -> dict:
  try:
    with open(path) as f:
      results = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    parser.error(f"{path}: not a readable results JSON ({e})")
  if not isinstance(results, dict) or results.get("test_episode_accuracies") is None:
    parser.error(f"{path}: no per-episode test accuracies (results written before they were "
                 f"recorded, or an interrupted run); score the run again with "
                 f"omniglot_metanet.py --eval-only")
  return results


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("a", help="results JSON of run A (the reference)")
  parser.add_argument("b", help="results JSON of run B")
  args = parser.parse_args(argv)
  a, b = load(parser, args.a), load(parser, args.b)
  differ = [k for k in PROTOCOL if a.get(k) != b.get(k)]
  if differ:
    parser.error("the two tests met different episodes: " + ", ".join(
        f"{k} {a.get(k)!r} vs {b.get(k)!r}" for k in differ))
  diff, half = paired_ci95(a["test_episode_accuracies"], b["test_episode_accuracies"])
  out = {"a": a["test_accuracy"], "b": b["test_accuracy"], "difference": diff, "ci95": half,
         "episodes": a["eval_episodes"]}
  print(f"A {out['a']:.2f}%  B {out['b']:.2f}%  B − A {diff:+.2f} ± {half:.2f} points "
        f"(95%, paired over the same {out['episodes']} episodes)")
  return out


if __name__ == "__main__":
  main()
