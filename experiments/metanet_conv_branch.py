"""Whether a trained MetaNet's conv layers use their fast weights: an ablation on test episodes.

Every MetaNet layer outputs ReLU(slow) + ReLU(fast) (layer augmentation, §3.3).
The conv layers' fast weights come from the conv meta learner m_conv; when its
output is negative for every gradient it can see, the fast kernels are negative,
their inputs (images, ReLU outputs) non-negative, and ReLU(fast) = 0: the branch
adds nothing and passes no gradient back, so m_conv stops training. This prints,
for the checkpoint in ``--workdir`` (written by ``omniglot_metanet.py``, whose
``config.json`` it reuses):

* the range of m_conv's output over gradients from e^-12 to e^3 of both signs
  (after the log/sign preprocessing);
* the test accuracy on the final test's episodes (``eval_key(2)``) as trained,
  with m_conv's output forced to 0 (no conv fast weights) and with its output
  bias set to ``--bias``, and how many episodes' accuracies differ from the
  model's own. "0 differ" for the forced-0 model: the conv fast weights are inert.

    python experiments/metanet_conv_branch.py --data-dir PATH/TO/omniglot --workdir runs/metanet_5way
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from memjax import cli, evaluation, training
from memjax.data import sample_few_shot
from memjax.metanet import meta_learners
from memjax.metanet.omniglot import IMAGE_SIZE, NUM_SUPPORT, load_run


def with_conv_output(params, bias: float | None, weight_scale: float):
  """``params`` with m_conv's output layer replaced: bias ``bias`` (None: kept), weights × ``weight_scale``."""
  conv = dict(params["params"]["meta_example"]["conv"])
  w, b = meta_learners.read_out_names(conv)
  if bias is not None:
    conv[b] = jnp.full_like(conv[b], bias)
  conv[w] = conv[w] * weight_scale
  meta = dict(params["params"]["meta_example"], conv=conv)
  return {**params, "params": {**params["params"], "meta_example": meta}}


def conv_output_range(params) -> tuple[float, float]:
  """min, max of m_conv over ±e^u, u uniform in [-12, 3] (20,000 gradient values)."""
  rng = np.random.default_rng(0)
  g = rng.choice([-1.0, 1.0], 20_000) * np.exp(rng.uniform(-12, 3, 20_000))
  out = meta_learners.mlp_apply(params["params"]["meta_example"]["conv"],
                                meta_learners.preprocess_gradients(jnp.asarray(g, jnp.float32)))
  return float(out.min()), float(out.max())


def main(argv=None) -> dict:
  p = cli.parser(__doc__)
  cli.add_run_dir_flags(p, "omniglot_metanet.py")
  p.add_argument("--bias", type=float, default=0.02, help="m_conv output bias of the third evaluation")
  args = p.parse_args(argv)
  try:
    config, model, state = load_run(args.workdir)
  except (ValueError, FileNotFoundError) as e:
    p.error(str(e))
  if "conv" not in state.params["params"].get("meta_example", {}):
    p.error(f"the run in {args.workdir} has no conv fast weights "
            f"(--ablate {config['ablate']}, --fast-layers {config.get('fast_layers')})")
  images = jnp.asarray(cli.load_omniglot(p, args.data_dir, config["test_split"],
                                         image_size=IMAGE_SIZE)[0])
  evaluate = evaluation.few_shot_evaluator(model, images, num_classes=config["num_classes"],
                                           num_query=config["num_query"], num_support=NUM_SUPPORT,
                                           rotate=False,
                                           sampler=functools.partial(
                                               sample_few_shot, invert=config.get("invert_images", False)))
  low, high = conv_output_range(state.params)
  variants = {"as trained": state.params, "conv fast weights 0": with_conv_output(state.params, 0.0, 0.0),
              f"m_conv bias {args.bias:g}": with_conv_output(state.params, args.bias, 1.0)}
  acc = {k: np.asarray(evaluate(v, args.episodes, training.eval_key(2))) for k, v in variants.items()}
  base = acc["as trained"]
  res = {"workdir": args.workdir, "step": int(state.step), "episodes": args.episodes,
         "conv_output_range": [low, high],
         "accuracy": {k: 100 * float(a.mean()) for k, a in acc.items()},
         "episodes_differing": {k: int(np.sum(a != base)) for k, a in acc.items()}}
  print(f"{config['num_classes']}-way, step {res['step']}: m_conv output in [{low:.4g}, {high:.4g}]")
  for k in acc:
    print(f"  {k:24s} {res['accuracy'][k]:6.2f}%  ({res['episodes_differing'][k]} of {args.episodes} "
          f"episodes differ from the model as trained)")
  return res


if __name__ == "__main__":
  cli.run(main)
