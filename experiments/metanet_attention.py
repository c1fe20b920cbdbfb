"""How sharply a trained MetaNet retrieves fast weights: attention statistics on test episodes.

For every query of N-way 1-shot test episodes, MetaNet reads its example-level
fast weights as W* = Σ_i a_i W*_i with a = softmax_i cos(r'_i, r) over the N
support examples (§3.2). This prints, for the checkpoint in ``--workdir``
(written by ``omniglot_metanet.py``, whose ``config.json`` it reuses):

* the mean attention on the support example of the query's own class, beside
  uniform attention (1/N) and a reference point: e/(e + (N−1)e^{−1/(N−1)}),
  what it is when the N keys sit at the vertices of a regular simplex (as far
  apart as N unit vectors can be) and each query on its class's key — 46.6%
  for N = 5, 13.1% for N = 20;
* how often that example gets the largest attention (retrieval accuracy).

A nearly flat attention does not by itself make N-way classification fail:
the authors use the same plain softmax of cosines and report 97.0% at 20-way.
The retrieved W* is then mostly other classes' fast weights, but the
own-class example's share still moves the logits in its class's favour, and
that label information survives even when the attention is close to uniform.
Near-chance 20-way runs of an earlier version came from the scale of the fast
weights (rescaled per layer, their logits spread ~0.002 and the loss sat at
ln 20) and from short training, not from the softmax.

    python experiments/metanet_attention.py --data-dir PATH/TO/omniglot --workdir runs/metanet_20way
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from memjax import cli, evaluation
from memjax.data import sample_few_shot
from memjax.metanet.omniglot import IMAGE_SIZE, NUM_SUPPORT, load_run


def simplex_attention(n: int) -> float:
  """Own-key attention of a softmax of cosines over n ≥ 2 keys at a regular simplex's vertices."""
  return math.e / (math.e + (n - 1) * math.exp(-1.0 / (n - 1)))


def main(argv=None) -> dict:
  p = cli.parser(__doc__)
  cli.add_run_dir_flags(p, "omniglot_metanet.py")
  args = p.parse_args(argv)
  try:
    config, model, state = load_run(args.workdir)
  except (ValueError, FileNotFoundError) as e:
    p.error(str(e))
  if not model.use_example_fast_weights:
    p.error(f"the run in {args.workdir} has no example-level fast weights (--ablate {config['ablate']})")
  n = config["num_classes"]
  images = jnp.asarray(cli.load_omniglot(p, args.data_dir, config["test_split"],
                                         image_size=IMAGE_SIZE)[0])
  # Test episodes are not rotated (as omniglot_metanet.py's evaluation).
  kw = dict(num_classes=n, num_support=NUM_SUPPORT, num_query=config["num_query"], rotate=False,
            invert=config.get("invert_images", False))

  @jax.jit
  def stats(params, key):
    ep = sample_few_shot(key, images, batch_size=1, **kw)
    sx, sy, qx, qy = ep.support[0], ep.support_labels[0], ep.query[0], ep.query_labels[0]
    a = model.apply(params, sx, sy, qx, method=model.attention)  # [Q, S]
    own = qy[:, None] == sy[None, :]
    return jnp.sum(a * own, axis=1), (sy[jnp.argmax(a, axis=1)] == qy)

  own, hit = zip(*[stats(state.params, jax.random.fold_in(jax.random.key(evaluation.EVAL_KEY), 10_000 + i))
                   for i in range(args.episodes)])
  own, hit = np.concatenate(own), np.concatenate(hit)
  res = {"workdir": args.workdir, "step": int(state.step), "num_classes": n, "episodes": args.episodes,
         "mean_own_class_attention": float(own.mean()), "uniform": 1.0 / n, "simplex": simplex_attention(n),
         "retrieval_accuracy": float(hit.mean())}
  print(f"{n}-way, step {res['step']}, {args.episodes} test episodes: attention on the own-class support "
        f"example {100 * res['mean_own_class_attention']:.1f}% (uniform {100 / n:.1f}%, keys on a "
        f"simplex {100 * res['simplex']:.1f}%); it gets the largest attention for {100 * res['retrieval_accuracy']:.1f}% "
        f"of queries")
  return res


if __name__ == "__main__":
  cli.run(main)
