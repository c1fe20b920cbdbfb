"""MetaNet training throughput, against a PyTorch reference.

Munkhdalai & Yu 2017, the authors' Omniglot model: 28×28×1 inputs, 5 conv
blocks of 64 3×3 filters, FC 64, FC N, fast weights on all layers, contrastive
embedding loss, first order.

* memjax: the jitted train step (``jax.value_and_grad`` + optax Adam 1e-3 with
  components clipped to ±10, :func:`memjax.training.make_step`) of
  ``MetaNet(num_classes=5)`` on one synthetic 5-way 1-shot episode with 10
  queries per class (uniform random images, drawn on device inside the step);
* reference: :mod:`benchmarks.reference.metanet_torch`, eager PyTorch with a
  Python loop over the support examples, one ``torch.autograd.grad`` per
  example for the meta information, the same equations, shapes and optimiser.

Alternating timed runs (:func:`benchmarks.common.compare_with_reference`);
episodes/s, the ratio against the faster torch thread count (target: memjax ≥
5×) and the memjax compile time apart. ``--quick`` uses a small MetaNet (8×8
images, 1 block of 8 filters, FC 16) so that it takes seconds.
"""

from __future__ import annotations

from benchmarks import common

# The authors' Omniglot model (memjax.metanet.MetaNet's defaults), 5-way 1-shot, 10 queries per class.
CONFIG = dict(num_classes=5, num_support=1, num_query=10, image_shape=(28, 28, 1), filters=64,
              num_blocks=5, hidden=64)
QUICK_CONFIG = dict(CONFIG, image_shape=(8, 8, 1), filters=8, num_blocks=1, hidden=16)
TARGET_RATIO = 5.0


def _model_kwargs(cfg: dict) -> dict:
  """The network's shape, for memjax's MetaNet and the torch reference alike."""
  return {k: cfg[k] for k in ("image_shape", "filters", "num_blocks", "hidden")}


def build_step(cfg: dict = CONFIG, seed: int = 0) -> common.TrainStep:
  """The memjax MetaNet train step (compile timed apart).

  ``jax.value_and_grad`` of the mean query cross-entropy of one synthetic N-way
  K-shot episode (uniform random images [N·K, H, W, C] support, [N·Q, H, W, C]
  query, drawn on device inside the step from the step's key), then Adam 1e-3
  after clipping every gradient component to ±10 (``training.make_step``).
  """
  import jax
  import jax.numpy as jnp
  from memjax import training
  from memjax.metanet import MetaNet

  n, k, q = cfg["num_classes"], cfg["num_support"], cfg["num_query"]
  shape = tuple(cfg["image_shape"])
  # The torch reference has only the contrastive embedding loss: the same here, so both do the same work.
  model = MetaNet(num_classes=n, embedding_loss="contrastive", **_model_kwargs(cfg))

  def episode(key):
    k_s, k_q, k_l = jax.random.split(key, 3)
    support = jax.random.uniform(k_s, (n * k, *shape))
    support_labels = jax.random.permutation(k_l, jnp.repeat(jnp.arange(n, dtype=jnp.int32), k))
    query = jax.random.uniform(k_q, (n * q, *shape))
    query_labels = jnp.repeat(jnp.arange(n, dtype=jnp.int32), q)
    return support, support_labels, query, query_labels

  sx, sy, qx, _ = episode(jax.random.key(seed))
  params = model.init(jax.random.key(seed), sx, sy, qx)

  def loss_fn(p, key):
    sx, sy, qx, qy = episode(key)
    logits = model.apply(p, sx, sy, qx)  # [N·Q, N]
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), qy[:, None], -1)), {}

  return common.compile_train_step(loss_fn, params, training.make_optimizer("adam", 1e-3, clip=10.0), seed)


def torch_reference(cfg: dict = CONFIG, seed: int = 0) -> common.TorchReference:
  """The eager PyTorch MetaNet reference trainer (:mod:`benchmarks.reference.metanet_torch`)."""
  from benchmarks.reference import metanet_torch
  trainer = metanet_torch.Trainer(cfg["num_classes"], cfg["num_support"], cfg["num_query"], seed=seed,
                                  **_model_kwargs(cfg))
  return common.TorchReference(trainer, metanet_torch.num_parameters(trainer.model))


def describe(cfg: dict) -> str:
  h, w, c = cfg["image_shape"]
  return (f"{cfg['num_classes']}-way {cfg['num_support']}-shot, {cfg['num_query']} queries per class, "
          f"{h}×{w}×{c} images, {cfg['num_blocks']} conv blocks of {cfg['filters']} filters, FC {cfg['hidden']}")


def throughput(cfg: dict, *, rounds: int, target_run_s: float, torch_threads: list[int], seed: int = 0) -> dict:
  """Episodes/s of the memjax and the PyTorch MetaNet train steps, alternating timed runs."""
  common.log(f"[metanet] compiling memjax step ({describe(cfg)}) ...")
  js = build_step(cfg, seed=seed)
  return common.compare_with_reference(
      js, lambda: torch_reference(cfg, seed=seed), torch_threads, rounds=rounds, target_run_s=target_run_s,
      per_step=1, label="[metanet]", unit="episodes/s", unit_key="episodes_s",
      result={"model": "metanet", "config": dict(cfg), "rounds": rounds})


def summary(m: dict) -> str:
  """One line for the report's "Other models" list."""
  return common.comparison_line("metanet", describe(m["config"]), m, f"≥ {TARGET_RATIO:.0f}×", "MetaNet")


def markdown(m: dict) -> str:
  """The report's MetaNet section."""
  target = None
  if "ratio" in m:
    target = ["MetaNet speed-up vs torch", f"{m['ratio']:.1f}×", f"≥ {TARGET_RATIO:.0f}×",
              common.met(m["ratio"] >= TARGET_RATIO)]
  return common.comparison_section(
      "MetaNet (Munkhdalai & Yu 2017): train step vs an eager PyTorch reference",
      f"{describe(m['config'])}; fast weights on all layers, contrastive embedding loss, first order; "
      f"one episode per update, mean query cross-entropy, Adam 1e-3, clip ±10. memjax: the jitted "
      f"`training.make_step` (episode drawn on device); reference: "
      f"`benchmarks/reference/metanet_torch.py` (eager, a Python loop over the support examples with one "
      f"`torch.autograd.grad` each).", m,
      ["memjax episodes/s", "memjax s/episode"], [m["memjax_episodes_s"], m["memjax_step_s"]], target)


def run(*, quick: bool, rounds: int, run_s: float, torch_threads: list[int], seed: int) -> dict:
  """memjax.metanet vs :mod:`benchmarks.reference.metanet_torch` (quick: a small model)."""
  return throughput(QUICK_CONFIG if quick else CONFIG, rounds=rounds, target_run_s=run_s,
                    torch_threads=torch_threads, seed=seed)
