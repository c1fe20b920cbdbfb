"""A shipped MANN evaluated with other memory sizes at test time: is its memory the limit?

The MANN's parameters do not depend on the number of memory slots N (the
memory is state, not a parameter), so a model trained with N = 128 can be run
with any N ≥ its number of heads. This diagnostic loads a shipped model
(:mod:`memjax.pretrained`) with ``memory_size`` overridden and evaluates it on
the same test episodes as ``python -m memjax.reproduce`` (same evaluator, same
key), one row per size.

Why: the 15-way string model's 10th-instance accuracy sits below its 3rd,
where the paper's keeps rising. An episode has 150 steps and each step's LRUA
write lands on the R = 4 least-used slots (w^lu with n = R, Santoro et al.
2016 §3), so a 128-slot memory turns over every ~32 steps. If late instances
gain with more slots the turnover is (part of) the limit; the early instances
show the cost of a memory the model was not trained with (more empty slots
share the read attention).

    python -m benchmarks.mann_memory_size --data-dir D                 # the string model, N = 64..512
    python -m benchmarks.mann_memory_size --data-dir D --name mann-omniglot-5way --sizes 128,256

Writes ``mann_memory_size.json`` into ``--out``. The sizes are a diagnostic of a
trained model, not a different model: the paper's N is 128.
"""

from __future__ import annotations

import types

import numpy as np

from memjax import cli, pretrained, reproduce

from . import common

#: Bucket edges of "steps since the class was last shown" (see :func:`bucket_accuracy`).
GAP_EDGES = (1, 8, 16, 32, 64, 149)


def _sizes(text: str) -> list[int]:
  try:
    sizes = [int(s) for s in text.split(",")]
  except ValueError:
    raise ValueError(f"expected comma-separated integers, got {text!r}") from None
  if not sizes or min(sizes) < 1:
    raise ValueError(f"expected positive memory sizes, got {text!r}")
  return sizes


def steps_since_last(targets: np.ndarray) -> np.ndarray:
  """int [B, T]: steps since the class of step t was last shown (0 on its first presentation).

  ``targets``: [B, T] class labels or [B, T, 5] string labels (a class is its string).
  """
  targets = np.asarray(targets)
  if targets.ndim == 3:
    targets = (targets * 5 ** np.arange(targets.shape[-1])).sum(-1)
  t = np.arange(targets.shape[1])
  # Earlier steps t' < t of the same class; the latest of them is the last presentation.
  earlier = (targets[:, :, None] == targets[:, None, :]) & (t[None, :] < t[:, None])
  last = np.where(earlier, t, -1).max(-1)
  return np.where(last >= 0, t - last, 0)


def bucket_accuracy(correct: np.ndarray, values: np.ndarray, mask: np.ndarray, edges) -> dict:
  """Accuracy (%) and count of the steps in ``mask``, by bucket of ``values``.

  ``edges`` = (lo, hi₁, hi₂, …): buckets lo..hi₁, hi₁+1..hi₂, … (inclusive).
  """
  out, lo = {}, edges[0]
  for hi in edges[1:]:
    sel = mask & (values >= lo) & (values <= hi)
    out[f"{lo}-{hi}"] = {"accuracy": 100 * float(correct[sel].mean()) if sel.any() else None,
                         "count": int(sel.sum())}
    lo = hi + 1
  return out


def _gap_rows(pre, data_dir, episodes: int) -> dict:
  """Accuracy of the repeat presentations by steps since their class was last
  shown (``by_gap``) and by position in the episode (``by_step``, thirds), on
  ``episodes`` test episodes drawn in one batch with the evaluation key
  (:func:`memjax.training.eval_key`; not the evaluator's chunks, so not a
  subset of its episodes)."""
  import jax

  from memjax import data, mann, training
  from memjax.tasks import omniglot

  cfg = pre.config["run_config"]
  label_mode = cfg.get("label_mode", "onehot")
  images = reproduce._images(cfg.get("test_split", "test"), int(cfg.get("image_size", 20)), data_dir)
  ep = data.sample_mann_episodes(jax.random.fold_in(training.eval_key(), 0), images, batch_size=episodes,
                                 num_classes=int(cfg["num_classes"]),
                                 samples_per_class=int(cfg.get("samples_per_class", 10)),
                                 label_mode=label_mode, rotate=True)
  logits = jax.jit(lambda p, x: mann.unroll(pre.model.cell, p, x))(pre.variables, ep.inputs)
  correct = np.asarray(omniglot.correct_predictions(logits, ep.targets, label_mode))
  gaps = steps_since_last(np.asarray(ep.targets))
  t = correct.shape[1]
  steps = np.broadcast_to(np.arange(t), correct.shape)
  thirds = (0, t // 3 - 1, 2 * t // 3 - 1, t - 1)
  return {"by_gap": bucket_accuracy(correct, gaps, gaps > 0, GAP_EDGES),
          "by_step": bucket_accuracy(correct, steps, gaps > 0, thirds)}


def evaluate(name: str, sizes: list[int], data_dir, episodes: int) -> list[dict]:
  """Per-instance test accuracy (%) of the shipped ``name`` at each memory size.

  Returns one ``{"memory_size", "accuracy": {instance: %}, "test_loss", "episodes",
  "by_gap"}`` per size, in order; ``by_gap`` and ``by_step`` (:func:`bucket_accuracy`,
  on ≤ 200 episodes drawn with the same key) are the accuracy of repeat
  presentations by the number of steps since their class was last shown and by
  their step in the episode.
  """
  args = types.SimpleNamespace(data_dir=data_dir, episodes=episodes, quick=False)
  rows = []
  for n in sizes:
    pre = pretrained.load(name, memory_size=n)
    out = reproduce._eval_mann(pre, args)
    rows.append({"memory_size": n, "accuracy": out["measured"], "test_loss": out["test_loss"],
                 "episodes": out["episodes"], **_gap_rows(pre, data_dir, min(episodes, 200))})
  return rows


def main(argv=None) -> dict:
  p = cli.parser(__doc__)
  p.add_argument("--name", default="mann-omniglot-15way-string",
                 help="a shipped MANN (memjax.pretrained.available())")
  p.add_argument("--data-dir", default=None, help="folder with the Omniglot zips (default: memjax's data dir)")
  p.add_argument("--sizes", default="64,128,256,512", help="memory sizes N to evaluate, comma-separated")
  p.add_argument("--episodes", type=int, default=1000, help="test episodes per size")
  p.add_argument("--out", default="results", help="folder for mann_memory_size.json")
  args = p.parse_args(argv)
  mann_names = [n for n in pretrained.available() if n.startswith("mann-")]
  if args.name not in mann_names:
    p.error(f"--name {args.name!r}: expected one of the shipped MANNs {mann_names}")
  try:
    sizes = _sizes(args.sizes)
  except ValueError as e:
    p.error(f"--sizes: {e}")
  if args.episodes < 1:
    p.error(f"--episodes: expected a positive number of episodes, got {args.episodes}")
  heads = pretrained.load(args.name).model.cell.num_read_heads
  if min(sizes) < heads:
    p.error(f"--sizes: expected every size ≥ the model's {heads} heads, got {args.sizes!r}")
  try:
    rows = evaluate(args.name, sizes, args.data_dir, args.episodes)
  except reproduce.ReproduceError as e:
    p.error(str(e))
  result = {"name": args.name, "rows": rows, "environment": common.environment()}
  common.write_json(f"{common.ensure_dir(args.out)}/mann_memory_size.json", result)
  cols = list(rows[0]["accuracy"])
  print(f"{args.name}: test accuracy (%) by instance with N memory slots at test ({rows[0]['episodes']} "
        "episodes each; trained with N = 128)")
  print("      N " + "".join(f"{c:>7}" for c in cols) + "   loss")
  for r in rows:
    print(f"  {r['memory_size']:5d} " + "".join(f"{r['accuracy'][c]:7.1f}" for c in cols)
          + f"  {r['test_loss']:.3f}")
  for key, what in (("by_gap", "steps since the class was last shown"), ("by_step", "step in the episode")):
    print(f"accuracy (%) of repeat presentations by {what} (≤ 200 episodes; count in brackets):")
    names = list(rows[0][key])
    print("      N " + "".join(f"{g:>14}" for g in names))
    for r in rows:
      print(f"  {r['memory_size']:5d} " + "".join(
          ("     -" if r[key][g]["accuracy"] is None else f"{r[key][g]['accuracy']:6.1f}")
          + f" ({r[key][g]['count']:5d})" for g in names))
  return result


if __name__ == "__main__":
  main()
