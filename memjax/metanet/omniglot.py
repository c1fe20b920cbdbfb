"""MetaNet on Omniglot N-way 1-shot episodes (Munkhdalai & Yu 2017, §4.1): the
model of a run's configuration and the training loss.

These are the library pieces of ``experiments/omniglot_metanet.py``, shared by
the scripts that read its run directories (``experiments/metanet_attention.py``,
``experiments/metanet_conv_branch.py``, ``memjax.pretrained.export``).

Example::

  model = build_model({"num_classes": 5, "ablate": "no_task"})
  params = model.init(jax.random.key(0), method=MetaNet.init_params)
  loss_fn = episode_loss(model, train_images, batch_size=1, num_classes=5, num_query=10)
  state, history = training.fit(loss_fn, params, optimizer, num_steps=1000)
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import optax

from memjax import training
from memjax.metanet.meta_learners import meta_out_mask
from memjax.metanet.module import MetaNet

IMAGE_SIZE = 28  # the paper's 28×28 Omniglot images
NUM_SUPPORT = 1  # one-shot: support examples per class
ABLATIONS = {  # ablate -> (use_task_fast_weights, use_example_fast_weights)
    "none": (True, True),
    "slow_only": (False, False),
    "no_task": (False, True),
    "no_example": (True, False),
}
# config.json marker of a run whose fast weights are the meta learners' raw
# outputs; runs of the earlier per-layer-rescaled fast weights lack it.
FAST_WEIGHTS = "raw"
# config.json keys that every omniglot_metanet.py run records and the diagnostics read.
RUN_KEYS = ("num_classes", "ablate", "test_split", "num_query", "lr", "clip")
# Configuration keys passed to MetaNet unchanged (absent: the module's default).
_MODEL_KEYS = ("filters", "num_blocks", "hidden", "fast_layers", "embedding_loss", "second_order",
               "conv_meta_out_std")


def _get(config, key: str, default: Any = None) -> Any:
  if isinstance(config, Mapping):
    return config.get(key, default)
  return getattr(config, key, default)


def read_run_config(workdir: str) -> dict:
  """The ``config.json`` of an ``omniglot_metanet.py`` run directory.

  Raises:
    ValueError: no config.json there, a run of the earlier per-layer-rescaled
      fast weights (which this code cannot load), or one lacking ``RUN_KEYS``;
      the message names ``workdir``.
  """
  try:
    with open(os.path.join(workdir, "config.json")) as f:
      config = json.load(f)
  except FileNotFoundError:
    raise ValueError(f"no config.json in {workdir}: not an omniglot_metanet.py run directory") from None
  if config.get("fast_weights") != FAST_WEIGHTS:
    raise ValueError(f"{workdir} is a run of the earlier MetaNet (fast weights rescaled per layer); "
                     f"this code cannot load it")
  missing = [k for k in RUN_KEYS if k not in config]
  if missing:
    raise ValueError(f"{workdir}/config.json lacks {missing}: not an omniglot_metanet.py run directory")
  return config


def load_run(workdir: str) -> tuple[dict, MetaNet, training.TrainState]:
  """An ``omniglot_metanet.py`` run: its config (:func:`read_run_config`), model and last checkpoint.

  Raises:
    ValueError: see :func:`read_run_config`.
    FileNotFoundError: the run has no checkpoint.
  """
  config = read_run_config(workdir)
  model = build_model(config)
  params = model.init(jax.random.key(0), method=MetaNet.init_params)
  return config, model, training.load_checkpoint(workdir, training.init_state(params, make_optimizer(config)))


def make_optimizer(config) -> optax.GradientTransformation:
  """The optimiser of a run configuration (``experiments/omniglot_metanet.py``'s flags).

  Adam at ``lr`` (times ``lr_drop_factor`` from step ``lr_drop_steps`` on, or
  following ``lr_schedule``) after clipping (``clip``, ``clip_mode``), its
  steps on the conv meta nets' read-out layers times ``conv_meta_lr_scale``
  (absent: 1, plain Adam; see :func:`memjax.metanet.meta_learners.meta_out_lr_scale`),
  then, with ``ema_decay`` (absent or 0: none), a moving average of the
  parameters (:func:`memjax.training.with_params_ema`).

  The loss is the mean over the update's B·N·Q query terms (B episodes, N
  classes, Q queries each). ``clip_mode='summed_norm'`` clips as the authors'
  code: their loss is the sum of those terms and Chainer's
  ``GradientClipping(clip)`` scales its gradient down to L2 norm ``clip``; the
  sum's gradient is B·N·Q times the mean's, and Adam's update does not change
  when every gradient is multiplied by one constant (up to its ε), so clipping
  the mean's gradient at norm clip / (B·N·Q) takes the same steps. (Measured
  on the shipped 20-way model: the summed gradient's norm is ~51, above 10 in
  every episode, so the authors' updates see every episode's gradient at the
  same length.)

  Args:
    config: a mapping or namespace with ``lr`` and ``clip``, and optionally
      ``lr_drop_steps``, ``lr_drop_factor``, ``lr_schedule``, ``clip_mode``
      (``'component'`` or ``'summed_norm'``; then ``batch_size``,
      ``num_classes``, ``num_query``), ``conv_meta_lr_scale`` and ``ema_decay``.
  """
  lr = training.step_decay(_get(config, "lr"), _get(config, "lr_drop_steps", 0),
                           _get(config, "lr_drop_factor", 0.1), _get(config, "lr_schedule"))
  clip = _get(config, "clip")
  if _get(config, "clip_mode", "component") == "summed_norm":
    terms = _get(config, "batch_size", 1) * _get(config, "num_classes") * _get(config, "num_query")
    opt = training.make_optimizer("adam", lr, clip=clip / terms, clip_mode="global_norm")
  else:
    opt = training.make_optimizer("adam", lr, clip=clip)
  scale = _get(config, "conv_meta_lr_scale", 1.0)
  if scale != 1.0:
    opt = optax.chain(opt, optax.masked(optax.scale(scale), meta_out_mask))
  return training.with_params_ema(opt, _get(config, "ema_decay", 0.0))


def build_model(config, num_classes: int | None = None) -> MetaNet:
  """The MetaNet of a run configuration.

  With ``num_classes`` K ≠ N the same model with a K-way softmax layer of fast
  weights only (``fast_only_output=True``), to apply the N-way-trained
  variables to K-way episodes (§4.2.1, Table 4).

  Args:
    config: a mapping or namespace (a run's ``config.json`` or parsed flags)
      with ``num_classes`` (N) and optionally ``ablate`` (a key of
      :data:`ABLATIONS`), ``fast_only_output`` and the MetaNet attributes
      ``filters``, ``num_blocks``, ``hidden``, ``fast_layers``, ``conv_meta_out_std``,
      ``embedding_loss``, ``second_order``; absent ones take MetaNet's defaults.
    num_classes: K, classes of the test episodes (default N).

  Returns:
    A :class:`MetaNet` for (IMAGE_SIZE, IMAGE_SIZE, 1) images.
  """
  trained = _get(config, "num_classes")
  k = trained if num_classes is None else num_classes
  use_task, use_example = ABLATIONS[_get(config, "ablate", "none")]
  kw = {key: _get(config, key) for key in _MODEL_KEYS if _get(config, key) is not None}
  return MetaNet(num_classes=k, image_shape=(IMAGE_SIZE, IMAGE_SIZE, 1),
                 use_task_fast_weights=use_task, use_example_fast_weights=use_example,
                 fast_only_output=bool(_get(config, "fast_only_output", False)) or k != trained,
                 **kw)


def warm_start_from_run(params: dict, workdir: str, *, fresh_meta_out_scale: float = 1.0,
                        skip: Sequence[str] = ()) -> tuple[dict, list[str], list[str]]:
  """MetaNet variables started from the latest checkpoint of another run.

  Every variable the checkpoint has at the same path (and shape) is taken from
  it; the others keep their initialisation. The intended use: the full model
  (task-level fast weights Q*) started from a trained MetaNet− run, whose
  checkpoint has every variable but the task-level meta learner d
  (``meta_task``). ``fresh_meta_out_scale`` multiplies the read-out layer of
  every meta learner left as initialised, so that its fast weights start
  small and the warm-started model starts near its source's accuracy (the
  full model from the 80,000-episode MetaNet−, 100 5-way test episodes: 98.0%
  with 0.1, 85.6% with 1, the source 98.0%; from the 25,400-episode 20-way
  MetaNet−, 40 20-way test episodes: 94.2% with 0.03, 93.5% with 0.1, 69.8%
  with 0.3 (20 episodes), chance with 1, the source 94.2%).

  Args:
    params: the model's initial variables (``{"params": {...}}``).
    workdir: a run directory of ``experiments/omniglot_metanet.py`` (or one
      written by ``memjax.pretrained.restore``).
    fresh_meta_out_scale: see above (1: the initialisation unchanged).
    skip: variables kept as initialised although the checkpoint has them,
      as ``/``-joined path prefixes below ``params`` (e.g. ``"meta_example/conv"``:
      a new m_conv; see :func:`memjax.training.warm_start`).

  Returns:
    (params, taken, fresh): the variables, and the paths taken from the
    checkpoint and left as initialised.

  Raises:
    FileNotFoundError: no checkpoint in ``workdir``.
    ValueError: a shared variable of another shape (named), or a ``skip``
      prefix that names no variable.
  """
  merged, taken, fresh = training.warm_start(params, training.load_checkpoint_params(workdir),
                                             skip=[f"params/{p.strip('/')}" for p in skip])
  if fresh_meta_out_scale != 1.0:  # the read-out layers left as initialised
    read_out = [meta_out_mask(merged, group) for group in ("conv", "fc")]
    fresh_set = set(fresh)

    def rescale(path, leaf, *marks):
      return leaf * fresh_meta_out_scale if any(marks) and training.path_name(path) in fresh_set else leaf
    merged = jax.tree_util.tree_map_with_path(rescale, merged, *read_out)
  return merged, taken, fresh


def episode_loss(model: MetaNet, images: jax.Array, *, batch_size: int, num_classes: int,
                 num_query: int, num_support: int = NUM_SUPPORT, rotate: bool = True,
                 sampler: Callable | None = None) -> Callable:
  """``loss_fn(params, key) -> (loss, {"accuracy": acc})`` for :func:`memjax.training.fit`.

  Each call samples ``batch_size`` episodes from ``key`` and returns the mean
  query cross-entropy and accuracy:

    L = −1/(B·Q) Σ_episodes Σ_queries log softmax(b(W, W*_q, x_q))[y_q].

  Args:
    model: the MetaNet for ``num_classes``-way episodes.
    images: float [C, K, H, W] characters × drawers.
    batch_size: B, episodes per loss.
    num_classes: N-way.
    num_query: queries per class.
    num_support: support examples per class (1-shot).
    rotate: rotate each class by a random multiple of 90° (new classes, as
      the paper's training episodes).
    sampler: the episode sampler, :func:`memjax.data.sample_few_shot` by default.
  """
  from memjax import evaluation, training

  if sampler is None:
    from memjax.data import sample_few_shot as sampler
  sample_kw = dict(batch_size=batch_size, num_classes=num_classes, num_support=num_support,
                   num_query=num_query, rotate=rotate)

  def loss_fn(params, key):
    episodes = sampler(key, images, **sample_kw)
    if hasattr(training, "shard_batch"):
      episodes = training.shard_batch(episodes)
    loss, acc, _ = evaluation.episode_metrics(model, params, episodes)
    return loss, {"accuracy": acc}

  return loss_fn
