"""MANN training throughput, against a PyTorch reference.

Santoro et al. 2016, LRUA, the Omniglot configuration: LSTM controller 200, 4
read heads, memory 128 × 40, usage decay 0.95, inputs a 20×20 image flattened
(400) + the previous step's 5-way one-hot label, 5 logits from [h_t, r_t];
batch 16 episodes of 50 steps, softmax cross-entropy over all steps; Adam 1e-3
with components clipped to ±10 on both sides.

* memjax: the jitted train step of ``nn.RNN(MANNCell)`` (one ``lax.scan``),
  synthetic episodes (uniform images and labels) drawn on device inside the step;
* reference: :mod:`benchmarks.reference.mann_torch`, eager PyTorch with an
  ``nn.LSTMCell`` controller and a Python loop over the 50 time steps, the same
  equations (content-only cosine reads; LRUA writes w^w = σ(α) w^r_{t−1} +
  (1 − σ(α)) w^lu_{t−1} after zeroing the least-used slot; usage
  w^u_t = γ w^u_{t−1} + Σ w^r + Σ w^w), episodes drawn on the host.

Alternating timed runs (:func:`benchmarks.common.compare_with_reference`);
episodes/s, the ratio against the faster torch thread count (target: memjax ≥
10× at batch 16) and the memjax compile time apart. ``--quick`` uses a tiny
MANN (memory 16×8, LSTM 16, 1 head, 8×8 images, 5-step episodes, batch 2).
"""

from __future__ import annotations

from benchmarks import common

# memjax.mann.MANNCell's defaults, batch 16 episodes of 50 steps, 20×20 images.
CONFIG = dict(batch=16, seq_len=50, num_classes=5, image_size=20, controller=200, read_heads=4,
              memory_size=128, word_size=40, usage_decay=0.95)
QUICK_CONFIG = dict(CONFIG, batch=2, seq_len=5, image_size=8, controller=16, read_heads=1,
                    memory_size=16, word_size=8)
TARGET_RATIO = 10.0
TARGET_BATCH = 16


def episodes(key, batch: int, seq_len: int, num_classes: int, image_size: int):
  """Synthetic episodes: ``(inputs [B, T, S² + K], labels [B, T])``, x_t = [image_t, onehot(y_{t−1})].

  Images uniform in [0, 1), labels uniform over the K classes; the one-hot label
  of step t − 1 is appended to image t (zeros at t = 0), the paper's (x_t, y_{t−1}).
  """
  import jax
  import jax.numpy as jnp
  k_img, k_lab = jax.random.split(key)
  images = jax.random.uniform(k_img, (batch, seq_len, image_size * image_size))
  labels = jax.random.randint(k_lab, (batch, seq_len), 0, num_classes)
  prev = jnp.pad(jax.nn.one_hot(labels, num_classes)[:, :-1], ((0, 0), (1, 0), (0, 0)))
  return jnp.concatenate([images, prev], axis=-1), labels


def sample(key, cfg: dict):
  """:func:`episodes` of configuration ``cfg`` (:data:`CONFIG`'s keys), jitted: one compile instead of
  one per eager op, the same bits."""
  import jax
  shape = (cfg["batch"], cfg["seq_len"], cfg["num_classes"], cfg["image_size"])
  return jax.jit(episodes, static_argnums=(1, 2, 3, 4))(key, *shape)


def make_cell(cfg: dict):
  """The ``MANNCell`` of configuration ``cfg`` (:data:`CONFIG`'s keys)."""
  from memjax import mann
  return mann.MANNCell(features=cfg["num_classes"], memory_size=cfg["memory_size"], word_size=cfg["word_size"],
                       num_read_heads=cfg["read_heads"], controller_features=cfg["controller"],
                       usage_decay=cfg["usage_decay"])


def build_step(cfg: dict = CONFIG, seed: int = 0, *, unroll: bool = True, mesh=None,
               shard_map: bool = True) -> common.TrainStep:
  """The memjax MANN (LRUA) Omniglot-shaped train step, compiled (compile timed apart).

  ``mann.unroll(MANNCell)`` (``nn.RNN``'s logits with the input projection and
  the output layer outside the scan, as the Omniglot experiment trains; with
  ``unroll=False``, ``nn.RNN(MANNCell)`` itself) over B synthetic
  :func:`episodes` of T steps drawn on device inside the step,
  ``mann.mann_loss`` (softmax cross-entropy averaged over B·T), Adam 1e-3 after
  clipping every gradient component to ±10 (``training.make_step``). With a
  ``mesh`` the batch is split over its devices (``training.shard_batch``), each
  running the loss on its slice (``shard_map``; False: XLA partitions the step), as
  ``experiments/omniglot_mann.py`` does under several devices.
  """
  import flax.linen as nn
  import jax
  from memjax import mann, training

  cell = make_cell(cfg)
  model = nn.RNN(cell)
  apply = (lambda p, x: mann.unroll(cell, p, x)) if unroll else model.apply
  shape = (cfg["batch"], cfg["seq_len"], cfg["num_classes"], cfg["image_size"])
  x, _ = sample(jax.random.key(seed), cfg)
  params = jax.jit(model.init)(jax.random.key(seed), x)  # jitted: the same bits as eagerly, ~3 s sooner

  def loss_fn(p, key):
    inputs, labels = training.shard_batch(episodes(key, *shape))
    return mann.mann_loss(apply(p, inputs), labels), {}

  return common.compile_train_step(loss_fn, params, training.make_optimizer("adam", 1e-3, clip=10.0), seed,
                                   mesh=mesh, shard_map=shard_map)


def torch_reference(cfg: dict = CONFIG, seed: int = 0) -> common.TorchReference:
  """The eager PyTorch MANN reference trainer (:mod:`benchmarks.reference.mann_torch`)."""
  from benchmarks.reference import mann_torch
  trainer = mann_torch.Trainer(cfg["batch"], cfg["seq_len"], cfg["num_classes"], cfg["image_size"],
                               seed=seed, controller_size=cfg["controller"],
                               memory_size=cfg["memory_size"], word_size=cfg["word_size"],
                               read_heads=cfg["read_heads"], usage_decay=cfg["usage_decay"])
  return common.TorchReference(trainer, mann_torch.num_parameters(trainer.model))


def describe(cfg: dict) -> str:
  s = cfg["image_size"]
  return (f"batch {cfg['batch']}, {cfg['num_classes']}-way episodes of {cfg['seq_len']} steps, {s}×{s} images, "
          f"LSTM {cfg['controller']}, {cfg['read_heads']} read head{'s' if cfg['read_heads'] != 1 else ''}, "
          f"memory {cfg['memory_size']}×{cfg['word_size']}, usage decay {cfg['usage_decay']}")


def throughput(cfg: dict, *, rounds: int, target_run_s: float, torch_threads: list[int], seed: int = 0) -> dict:
  """Episodes/s of the memjax and the PyTorch MANN train steps, alternating timed runs
  (one step trains on ``batch`` episodes)."""
  common.log(f"[mann] compiling memjax step ({describe(cfg)}) ...")
  js = build_step(cfg, seed=seed)
  return common.compare_with_reference(
      js, lambda: torch_reference(cfg, seed=seed), torch_threads, rounds=rounds, target_run_s=target_run_s,
      per_step=cfg["batch"], label="[mann]", unit="episodes/s", unit_key="episodes_s",
      result={"model": "mann", "config": dict(cfg), "rounds": rounds, "batch": cfg["batch"],
              "seq_len": cfg["seq_len"]})


def summary(m: dict) -> str:
  """One line for the report's "Other models" list."""
  return common.comparison_line("mann", describe(m["config"]), m,
                                f"≥ {TARGET_RATIO:.0f}× at batch {TARGET_BATCH}", "MANN")


def markdown(m: dict) -> str:
  """The report's MANN section."""
  target = None
  if "ratio" in m:
    if m["batch"] == TARGET_BATCH:
      name, met = f"MANN speed-up vs torch at batch {TARGET_BATCH}", common.met(m["ratio"] >= TARGET_RATIO)
    else:  # e.g. --quick: a different model and batch, so the target does not apply
      name, met = f"MANN speed-up vs torch (batch {m['batch']}; target is at batch {TARGET_BATCH})", "n/a"
    target = [name, f"{m['ratio']:.1f}×", f"≥ {TARGET_RATIO:.0f}×", met]
  return common.comparison_section(
      "MANN (Santoro et al. 2016, LRUA): train step vs an eager PyTorch reference",
      f"{describe(m['config'])}; content-only reads, LRUA writes; synthetic episodes (uniform images and "
      f"labels, previous one-hot label appended), softmax cross-entropy over all steps, Adam 1e-3, clip ±10. "
      f"memjax: the jitted `training.make_step` of `nn.RNN(MANNCell)` (episodes drawn on device); reference: "
      f"`benchmarks/reference/mann_torch.py` (eager, `nn.LSTMCell`, a Python loop over the time steps).", m,
      ["batch", "memjax episodes/s", "memjax ms/step"], [m["batch"], m["memjax_episodes_s"], 1e3 * m["memjax_step_s"]],
      target)


def run(*, quick: bool, rounds: int, run_s: float, torch_threads: list[int], seed: int) -> dict:
  """memjax.mann vs :mod:`benchmarks.reference.mann_torch` (quick: a tiny MANN)."""
  return throughput(QUICK_CONFIG if quick else CONFIG, rounds=rounds, target_run_s=run_s,
                    torch_threads=torch_threads, seed=seed)
