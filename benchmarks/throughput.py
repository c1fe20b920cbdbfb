"""Training throughput of memjax models, against a PyTorch reference.

NTM on the copy task (Graves et al. 2014 configuration: LSTM controller 100,
1 read + 1 write head, memory 128 × 20, 8-bit vectors, lengths 1-20, T = 41
padded steps; centred RMSProp with components clipped to ±10):

* memjax: the jitted train step of :func:`memjax.training.make_step` with the
  copy loss; the batch is generated on device inside the step from the step's key;
* reference: :mod:`benchmarks.reference.ntm_torch`, eager PyTorch with a Python
  loop over time steps (the way typical public implementations are written),
  the same model, task, loss and optimiser; batch generated on the host each step.

At batch 1, 16 and 64 it alternates timed runs in one process (memjax, torch,
memjax, torch, ...) and reports medians of sequences/s and their ratio. PyTorch
runs with ``torch.set_num_threads(cores)`` and, on a multi-core machine, also
with 1 thread; the ratio is taken against the faster of the two (on a machine
shared with other jobs a multi-threaded eager PyTorch can be several times
slower than a single-threaded one).

It also reports

* the memjax compile time, measured apart (``step.lower(state).compile()``;
  wall and process-CPU seconds), at max_length 20 and 80 (T = 41 and 161): one
  ``lax.scan`` body, so it should not depend on the length;
* the FLOPs of one memjax train step. XLA's ``cost_analysis()`` counts the body
  of a scan/while loop once, whatever its trip count, so the whole step's count
  is corrected with the count of one cell step, forward and backward, compiled on
  its own: ``F = F_step + (T − 1) · F_cell``. It is cross-checked against a hand
  count of the equations (forward per step and example, × 3 for forward +
  backward, + the optimiser), and the achieved GFLOP/s at batch 64 is given as a
  fraction of the fp32 matmul peak measured in the same run;
* how the memjax step time scales with the sequence length T and the memory
  size N (PNG).

MetaNet (``--models metanet``; Munkhdalai & Yu 2017, the authors' Omniglot
model: 28×28×1 inputs, 5 conv blocks of 64 3×3 filters, FC 64, FC N, fast
weights on all layers, contrastive embedding loss, first order):

* memjax: the jitted train step (``jax.value_and_grad`` + optax Adam 1e-3 with
  components clipped to ±10, :func:`memjax.training.make_step`) of
  ``MetaNet(num_classes=5)`` on one synthetic 5-way 1-shot episode with 10
  queries per class (uniform random images, drawn on device inside the step);
* reference: :mod:`benchmarks.reference.metanet_torch`, eager PyTorch with a
  Python loop over the support examples, one ``torch.autograd.grad`` per
  example for the meta information, the same equations, shapes and optimiser.

It alternates timed runs (memjax, torch at each thread count, ...), reports
medians of episodes/s and their ratio against the faster torch thread count
(target: memjax ≥ 5×), and the memjax compile time apart. ``--quick`` uses a
small MetaNet (8×8 images, 2 blocks of 8 filters, FC 16) so that it takes seconds.

MANN (``--models mann``; Santoro et al. 2016, LRUA, the Omniglot configuration:
LSTM controller 200, 4 read heads, memory 128 × 40, usage decay 0.95, inputs a
20×20 image flattened (400) + the previous step's 5-way one-hot label, 5 logits
from [h_t, r_t]; batch 16 episodes of 50 steps, softmax cross-entropy over all
steps; Adam 1e-3 with components clipped to ±10 on both sides):

* memjax: the jitted train step of ``nn.RNN(MANNCell)`` (one ``lax.scan``),
  synthetic episodes (uniform images and labels) drawn on device inside the step;
* reference: :mod:`benchmarks.reference.mann_torch`, eager PyTorch with an
  ``nn.LSTMCell`` controller and a Python loop over the 50 time steps, the same
  equations (content-only cosine reads; LRUA writes w^w = σ(α) w^r_{t−1} +
  (1 − σ(α)) w^lu_{t−1} after zeroing the least-used slot; usage
  w^u_t = γ w^u_{t−1} + Σ w^r + Σ w^w), episodes drawn on the host.

Alternating timed runs as for MetaNet; episodes/s, the ratio against the faster
torch thread count (target: memjax ≥ 10× at batch 16) and the memjax compile
time apart. ``--quick`` uses a tiny MANN (memory 16×8, LSTM 16, 1 head, 8×8
images, 5-step episodes, batch 2).

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
import collections
import dataclasses
import gzip
import glob
import importlib.util
import json
import math
import os
import re
import statistics
import sys
import tempfile
import time
from typing import Any

import numpy as np

from benchmarks import common

# Targets this benchmark reports against (see the module docstring).
TARGET_RATIO = {1: 40.0, 16: 20.0}
TARGET_PEAK_FRACTION = 0.15   # at batch 64
TARGET_PEAK_BATCH = 64
TARGET_COMPILE_S = 5.0

NTM_CONFIG = dict(num_inputs=9, num_outputs=8, controller=100, memory_size=128, word_size=20,
                  read_heads=1, write_heads=1, shift_range=1)

# MetaNet: the authors' Omniglot model (memjax.metanet.MetaNet's defaults), 5-way
# 1-shot, 10 queries per class; --quick uses a small one so that it takes seconds.
METANET_CONFIG = dict(num_classes=5, num_support=1, num_query=10, image_shape=(28, 28, 1), filters=64,
                      num_blocks=5, hidden=64)
METANET_QUICK_CONFIG = dict(METANET_CONFIG, image_shape=(8, 8, 1), filters=8, num_blocks=1, hidden=16)
TARGET_METANET_RATIO = 5.0

# MANN: Santoro et al. 2016's Omniglot configuration (memjax.mann.MANNCell's
# defaults), batch 16 episodes of 50 steps, 20×20 images; --quick: a tiny one.
MANN_CONFIG = dict(batch=16, seq_len=50, num_classes=5, image_size=20, controller=200, read_heads=4,
                   memory_size=128, word_size=40, usage_decay=0.95)
MANN_QUICK_CONFIG = dict(MANN_CONFIG, batch=2, seq_len=5, image_size=8, controller=16, read_heads=1,
                         memory_size=16, word_size=8)
TARGET_MANN_RATIO = 10.0
TARGET_MANN_BATCH = 16


# --------------------------------------------------------------------------- memjax NTM


class _Stepped:
  """``run(steps)`` for a compiled step ``executable(state) -> (state, loss, ...)``."""
  executable: Any
  state: Any

  def run(self, steps: int) -> float:
    """Runs ``steps`` train steps, blocking on each step's loss; returns seconds."""
    import jax
    t0 = time.perf_counter()
    state = self.state
    for _ in range(steps):
      state, loss, _, _ = self.executable(state)
      jax.block_until_ready(loss)
    self.state = state
    return time.perf_counter() - t0


@dataclasses.dataclass
class JaxStep(_Stepped):
  """A compiled memjax train step and its state."""
  executable: Any
  state: Any
  compiled: common.Compiled
  compile_cpu_s: float
  batch: int
  max_length: int
  memory_size: int
  seq_len: int
  num_params: int
  step_fn: Any  # the jitted step (for lowering again)
  cell: Any
  params: Any


def build_ntm_step(batch: int, max_length: int = 20, memory_size: int = 128, seed: int = 0) -> JaxStep:
  """The memjax NTM copy-task train step, compiled (compile timed apart)."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from memjax import tasks, training
  from memjax.ntm import NTMCell

  cell = NTMCell(features=NTM_CONFIG["num_outputs"], memory_size=memory_size,
                 word_size=NTM_CONFIG["word_size"], controller_features=NTM_CONFIG["controller"])
  model = nn.RNN(cell)
  seq_len = tasks.copy_length(max_length)
  params = model.init(jax.random.key(seed), jnp.zeros((batch, seq_len, NTM_CONFIG["num_inputs"])))

  def loss_fn(p, key):
    b = tasks.copy(key, batch, max_length=max_length)
    return tasks.sequence_loss(model.apply(p, b.inputs), b)

  opt = training.make_optimizer("rmsprop")
  state = training.init_state(params, opt)
  step = training.make_step(loss_fn, opt, jax.random.key(seed + 1))
  cpu0 = time.process_time()
  compiled = common.compile_fn(step, state)
  cpu = time.process_time() - cpu0
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  return JaxStep(compiled.executable, state, compiled, cpu, batch, max_length, memory_size, seq_len,
                 n_params, step, cell, params)


def cell_step_flops(js: JaxStep) -> float | None:
  """XLA's FLOPs of one NTM cell step, forward and backward (vjp), at the step's batch."""
  import jax
  import jax.numpy as jnp
  cell = js.cell
  p = {"params": js.params["params"]["cell"]}
  carry = cell.initialize_carry(jax.random.key(0), (js.batch, NTM_CONFIG["num_inputs"]))
  x = jnp.zeros((js.batch, NTM_CONFIG["num_inputs"]))

  def fwd_bwd(p, carry, x):
    (new_carry, y), vjp = jax.vjp(lambda p, c: cell.apply(p, c, x), p, carry)
    return vjp((new_carry, jnp.ones_like(y)))

  compiled = common.compile_fn(fwd_bwd, p, carry, x)
  return common.cost_flops(compiled.executable)


def ntm_hand_flops(batch: int, seq_len: int, memory_size: int = 128, num_params: int = 62_260,
                   cfg: dict = NTM_CONFIG) -> dict:
  """Hand count of one NTM copy train step's FLOPs.

  Forward, per time step and example (C controller, I inputs, N × M memory, R/W
  read/write heads, K shift range, O outputs):

  * LSTM: 2·(I + R·M)·4C + 2·C·4C (the input and recurrent matmuls) + 4C (bias)
    + 10C (3 sigmoids, 2 tanh, c = f·c + i·g, h = o·tanh c);
  * head parameters: 2·C·(R+W)(M + 3 + 2K+1) + 2·C·2WM (matmuls) + biases +
    ~(R+W)(2K+1+4) + 2WM nonlinearities;
  * addressing per head (eq. 5-9): 4NM + 2M + 9N (content) + 3N (gate)
    + 2(2K+1)N (shift) + 8N (sharpen);
  * read 2NM per read head; erase/add write 5NM per write head;
  * output 2·(C + R·M)·O + O; loss ~4·O.

  Training ≈ 3 × forward (the backward pass of a matmul costs two matmuls), times
  T steps and B examples, plus ~15 FLOPs per parameter for clipping and centred
  RMSProp with momentum.
  """
  c, i, n, m = cfg["controller"], cfg["num_inputs"], memory_size, cfg["word_size"]
  r, w, k, o = cfg["read_heads"], cfg["write_heads"], cfg["shift_range"], cfg["num_outputs"]
  s = 2 * k + 1
  lstm = 2 * (i + r * m) * 4 * c + 2 * c * 4 * c + 4 * c + 10 * c
  heads = 2 * c * (r + w) * (m + 3 + s) + (r + w) * (m + 3 + s) + 2 * c * 2 * w * m + 2 * w * m \
      + (r + w) * (s + 4) + 2 * w * m
  address = (r + w) * (4 * n * m + 2 * m + 9 * n + 3 * n + 2 * s * n + 8 * n)
  memory = r * 2 * n * m + w * 5 * n * m
  out = 2 * (c + r * m) * o + o + 4 * o
  fwd = lstm + heads + address + memory + out
  total = 3.0 * fwd * seq_len * batch + 15.0 * num_params
  return {"forward_per_step_example": fwd, "lstm": lstm, "heads": heads, "addressing": address,
          "read_write": memory, "output": out, "train_step": total}


# --------------------------------------------------------------------------- torch reference


class _TorchTimed:
  """``run(steps, threads)``: seconds for ``steps`` steps of ``self.trainer`` on ``threads`` threads."""

  def run(self, steps: int, threads: int) -> float:
    self.torch.set_num_threads(threads)
    t0 = time.perf_counter()
    for _ in range(steps):
      self.trainer.step()
    return time.perf_counter() - t0


class TorchRunner(_TorchTimed):
  """The PyTorch reference trainer at one batch size (None when torch is missing)."""

  def __init__(self, batch: int, max_length: int = 20, seed: int = 0):
    from benchmarks.reference import ntm_torch
    self.torch = common.optional_torch()
    self.trainer = ntm_torch.Trainer(batch, max_length, seed=seed)
    self.num_params = ntm_torch.num_parameters(self.trainer.model)


# --------------------------------------------------------------------------- model hooks


def _module_exists(name: str) -> bool:
  try:
    return importlib.util.find_spec(name) is not None
  except (ImportError, ValueError):
    return False


def _compile_adam_step(loss_fn, params, seed: int) -> tuple:
  """``training.make_step`` with Adam 1e-3, clip ±10, compiled (timed apart).

  Returns (executable, state, common.Compiled, compile process-CPU seconds, parameter count).
  """
  import jax

  from memjax import training
  opt = training.make_optimizer("adam", 1e-3, clip=10.0)
  state = training.init_state(params, opt)
  step = training.make_step(loss_fn, opt, jax.random.key(seed + 1))
  cpu0 = time.process_time()
  compiled = common.compile_fn(step, state)
  cpu = time.process_time() - cpu0
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  return compiled.executable, state, compiled, cpu, n_params


@dataclasses.dataclass
class MANNStep(_Stepped):
  """A compiled memjax MANN train step and its state."""
  executable: Any
  state: Any
  compiled: common.Compiled
  compile_cpu_s: float
  num_params: int


def _mann_inputs(jax, jnp, key, cfg: dict):
  """Synthetic episodes on device: ``(inputs [B, T, S² + K], labels [B, T])``, x_t = [image_t, onehot(y_{t−1})]."""
  b, t, k, s = cfg["batch"], cfg["seq_len"], cfg["num_classes"], cfg["image_size"]
  k_img, k_lab = jax.random.split(key)
  images = jax.random.uniform(k_img, (b, t, s * s))
  labels = jax.random.randint(k_lab, (b, t), 0, k)
  prev = jnp.pad(jax.nn.one_hot(labels, k)[:, :-1], ((0, 0), (1, 0), (0, 0)))
  return jnp.concatenate([images, prev], axis=-1), labels


def build_mann_step(cfg: dict = MANN_CONFIG, seed: int = 0) -> MANNStep:
  """The memjax MANN (LRUA) Omniglot-shaped train step, compiled (compile timed apart).

  ``mann.unroll(MANNCell)`` (``nn.RNN``'s logits with the input projection and
  the output layer outside the scan, as the Omniglot experiment trains) over B
  synthetic episodes of T steps drawn on device
  inside the step (uniform S×S images flattened, uniform labels, the previous
  step's one-hot label appended, as the paper's (x_t, y_{t−1}) inputs),
  ``mann.mann_loss`` (softmax cross-entropy averaged over B·T), Adam 1e-3 after
  clipping every gradient component to ±10 (``training.make_step``).
  """
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from memjax import mann

  cell = mann.MANNCell(features=cfg["num_classes"], memory_size=cfg["memory_size"], word_size=cfg["word_size"],
                       num_read_heads=cfg["read_heads"], controller_features=cfg["controller"],
                       usage_decay=cfg["usage_decay"])
  model = nn.RNN(cell)
  x, _ = _mann_inputs(jax, jnp, jax.random.key(seed), cfg)
  params = model.init(jax.random.key(seed), x)

  def loss_fn(p, key):
    inputs, labels = _mann_inputs(jax, jnp, key, cfg)
    return mann.mann_loss(mann.unroll(cell, p, inputs), labels), {}

  return MANNStep(*_compile_adam_step(loss_fn, params, seed))


class MANNTorchRunner(_TorchTimed):
  """The eager PyTorch MANN reference trainer (:mod:`benchmarks.reference.mann_torch`)."""

  def __init__(self, cfg: dict = MANN_CONFIG, seed: int = 0):
    from benchmarks.reference import mann_torch
    self.torch = common.optional_torch()
    self.trainer = mann_torch.Trainer(cfg["batch"], cfg["seq_len"], cfg["num_classes"], cfg["image_size"],
                                      seed=seed, controller_size=cfg["controller"],
                                      memory_size=cfg["memory_size"], word_size=cfg["word_size"],
                                      read_heads=cfg["read_heads"], usage_decay=cfg["usage_decay"])
    self.num_params = mann_torch.num_parameters(self.trainer.model)


def mann_throughput(cfg: dict, *, rounds: int, target_run_s: float, torch_threads: list[int],
                    seed: int = 0) -> dict:
  """Episodes/s of the memjax and the PyTorch MANN train steps, alternating timed runs.

  One warm-up step and one sizing step per side (and per torch thread count) are
  excluded; each of ``rounds`` rounds then times ``ceil(target_run_s / step)``
  steps of memjax, then of torch at each thread count. Medians over rounds; one
  step trains on ``batch`` episodes.
  """
  common.log(f"[mann] compiling memjax step ({_mann_desc(cfg)}) ...")
  js = build_mann_step(cfg, seed=seed)
  common.log(f"[mann] compiled in {js.compiled.total_s:.1f} s (lower {js.compiled.lower_s:.1f} s, "
             f"compile {js.compiled.compile_s:.1f} s, cpu {js.compile_cpu_s:.1f} s)")
  js.run(1)  # warm-up
  tr = MANNTorchRunner(cfg, seed=seed) if torch_threads else None
  timing = _alternate(js, tr, torch_threads, rounds=rounds, target_run_s=target_run_s, per_step=cfg["batch"],
                      label="[mann]", unit="episodes/s")
  res = {"model": "mann", "config": dict(cfg), "rounds": rounds, "batch": cfg["batch"], "seq_len": cfg["seq_len"]}
  res = _rates_result(res, js, tr, timing, "episodes_s")
  res["memjax_step_s"] = cfg["batch"] / res["memjax_episodes_s"]
  return res


def _mann_desc(cfg: dict) -> str:
  s = cfg["image_size"]
  return (f"batch {cfg['batch']}, {cfg['num_classes']}-way episodes of {cfg['seq_len']} steps, {s}×{s} images, "
          f"LSTM {cfg['controller']}, {cfg['read_heads']} read head{'s' if cfg['read_heads'] != 1 else ''}, memory {cfg['memory_size']}×{cfg['word_size']}, "
          f"usage decay {cfg['usage_decay']}")


def _comparison_line(name: str, desc: str, m: dict, target: str, section: str) -> str:
  """One line for the "Other models" list: memjax episodes/s, compile, and the torch ratio."""
  line = f"{name}: {desc}: memjax {m['memjax_episodes_s']:.3g} episodes/s, compile {m['compile_s']:.1f} s"
  if "ratio" in m:
    line += (f"; PyTorch reference {m['torch_episodes_s']:.3g} episodes/s ({m['torch_best_threads']} thr): "
             f"**{m['ratio']:.1f}×** (target {target})")
  else:
    line += "; PyTorch reference skipped"
  return line + f" (see the {section} section)."


def mann_summary(m: dict) -> str:
  """One line for the "Other models" list."""
  return _comparison_line("mann", _mann_desc(m["config"]), m,
                          f"≥ {TARGET_MANN_RATIO:.0f}× at batch {TARGET_MANN_BATCH}", "MANN")


def _params_and_rounds(m: dict) -> str:
  """Parameter counts of both sides and the number of rounds, for a section's intro."""
  text = f"memjax params {m['num_params_memjax']:,}"
  if "num_params_torch" in m:
    text += f", torch params {m['num_params_torch']:,} (nn.LSTMCell has two bias vectors)"
  return text + f". Medians over {m['rounds']} alternating rounds (warm-up excluded)."


def _episodes_table_and_compile(m: dict, headers: list, row: list) -> list[str]:
  """The episodes/s table (torch columns and ratios when measured) and the compile line."""
  if "ratio" in m:
    ths = sorted(m["torch_episodes_s_by_threads"])
    headers = headers + [f"torch episodes/s ({t} thr)" for t in ths] \
        + [f"memjax / torch ({t} thr)" for t in ths] + ["memjax / best torch"]
    row = row + [m["torch_episodes_s_by_threads"][t] for t in ths] \
        + [f"{m['ratio_by_threads'][t]:.1f}×" for t in ths] + [f"**{m['ratio']:.1f}×**"]
  lines = [common.markdown_table(headers, [row]), ""]
  if "ratio" not in m:
    lines += ["PyTorch is not installed (`pip install -e .[bench]`) or was disabled: the reference was skipped.", ""]
  return lines + [f"Compile (memjax train step, timed apart): {m['compile_s']:.1f} s (trace+lower "
                  f"{m['lower_s']:.1f} s, XLA compile {m['xla_compile_s']:.1f} s, process CPU "
                  f"{m['compile_cpu_s']:.1f} s).", ""]


def mann_markdown(m: dict) -> str:
  """The report's MANN section."""
  lines = ["## MANN (Santoro et al. 2016, LRUA): train step vs an eager PyTorch reference", "",
           f"{_mann_desc(m['config'])}; content-only reads, LRUA writes; synthetic episodes (uniform images and "
           f"labels, previous one-hot label appended), softmax cross-entropy over all steps, Adam 1e-3, clip ±10. "
           f"memjax: the jitted `training.make_step` of `nn.RNN(MANNCell)` (episodes drawn on device); reference: "
           f"`benchmarks/reference/mann_torch.py` (eager, `nn.LSTMCell`, a Python loop over the time steps). "
           + _params_and_rounds(m), ""]
  headers = ["batch", "memjax episodes/s", "memjax ms/step"]
  row = [m["batch"], m["memjax_episodes_s"], 1e3 * m["memjax_step_s"]]
  lines += _episodes_table_and_compile(m, headers, row)
  if "ratio" in m:
    if m["batch"] == TARGET_MANN_BATCH:
      name, met = f"MANN speed-up vs torch at batch {TARGET_MANN_BATCH}", "yes" if m["ratio"] >= TARGET_MANN_RATIO \
          else "**no**"
    else:  # e.g. --quick: a different model and batch, so the target does not apply
      name, met = f"MANN speed-up vs torch (batch {m['batch']}; target is at batch {TARGET_MANN_BATCH})", "n/a"
    lines += [_fmt_targets([[name, f"{m['ratio']:.1f}×", f"≥ {TARGET_MANN_RATIO:.0f}×", met]]), ""]
  return "\n".join(lines)


def mann_hook(args, *, quick: bool, rounds: int, run_s: float, torch_threads: list[int]
              ) -> tuple[str, dict | None]:
  """memjax.mann vs :mod:`benchmarks.reference.mann_torch` (quick: a tiny MANN)."""
  if not _module_exists("memjax.mann"):
    return "mann: not benchmarked (memjax.mann does not exist).", None
  cfg = MANN_QUICK_CONFIG if quick else MANN_CONFIG
  res = mann_throughput(cfg, rounds=rounds, target_run_s=run_s, torch_threads=torch_threads, seed=args.seed)
  return mann_summary(res), res


@dataclasses.dataclass
class MetaNetStep(_Stepped):
  """A compiled memjax MetaNet train step and its state."""
  executable: Any
  state: Any
  compiled: common.Compiled
  compile_cpu_s: float
  num_params: int


def _metanet_model_kwargs(cfg: dict) -> dict:
  # The torch reference uses the contrastive embedding loss: the same here, so both do the same work.
  return {**{k: cfg[k] for k in ("image_shape", "filters", "num_blocks", "hidden")},
          "embedding_loss": "contrastive"}


def build_metanet_step(cfg: dict = METANET_CONFIG, seed: int = 0) -> MetaNetStep:
  """The memjax MetaNet train step (compile timed apart).

  ``jax.value_and_grad`` of the mean query cross-entropy of one synthetic N-way
  K-shot episode (uniform random images [N·K, H, W, C] support, [N·Q, H, W, C]
  query, drawn on device inside the step from the step's key), then Adam 1e-3
  after clipping every gradient component to ±10 (``training.make_step``).
  """
  import jax
  import jax.numpy as jnp
  from memjax.metanet import MetaNet

  n, k, q = cfg["num_classes"], cfg["num_support"], cfg["num_query"]
  shape = tuple(cfg["image_shape"])
  model = MetaNet(num_classes=n, **_metanet_model_kwargs(cfg))

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

  return MetaNetStep(*_compile_adam_step(loss_fn, params, seed))


class MetaNetTorchRunner(_TorchTimed):
  """The eager PyTorch MetaNet reference trainer (:mod:`benchmarks.reference.metanet_torch`)."""

  def __init__(self, cfg: dict = METANET_CONFIG, seed: int = 0):
    from benchmarks.reference import metanet_torch
    self.torch = common.optional_torch()
    self.trainer = metanet_torch.Trainer(cfg["num_classes"], cfg["num_support"], cfg["num_query"], seed=seed,
                                         **_metanet_model_kwargs(cfg))
    self.num_params = metanet_torch.num_parameters(self.trainer.model)


def metanet_throughput(cfg: dict, *, rounds: int, target_run_s: float, torch_threads: list[int],
                       seed: int = 0) -> dict:
  """Episodes/s of the memjax and the PyTorch MetaNet train steps, alternating timed runs.

  One warm-up step and one sizing step per side (and per torch thread count) are
  excluded; each of ``rounds`` rounds then times ``ceil(target_run_s / step)``
  steps of memjax, then of torch at each thread count. Medians over rounds.
  """
  common.log(f"[metanet] compiling memjax step ({_metanet_desc(cfg)}) ...")
  js = build_metanet_step(cfg, seed=seed)
  common.log(f"[metanet] compiled in {js.compiled.total_s:.1f} s (lower {js.compiled.lower_s:.1f} s, "
             f"compile {js.compiled.compile_s:.1f} s, cpu {js.compile_cpu_s:.1f} s)")
  js.run(1)  # warm-up
  tr = MetaNetTorchRunner(cfg, seed=seed) if torch_threads else None
  timing = _alternate(js, tr, torch_threads, rounds=rounds, target_run_s=target_run_s, per_step=1,
                      label="[metanet]", unit="episodes/s")
  res = {"model": "metanet", "config": dict(cfg), "rounds": rounds}
  return _rates_result(res, js, tr, timing, "episodes_s")


def _metanet_desc(cfg: dict) -> str:
  h, w, c = cfg["image_shape"]
  return (f"{cfg['num_classes']}-way {cfg['num_support']}-shot, {cfg['num_query']} queries per class, "
          f"{h}×{w}×{c} images, {cfg['num_blocks']} conv blocks of {cfg['filters']} filters, FC {cfg['hidden']}")


def metanet_summary(m: dict) -> str:
  """One line for the "Other models" list."""
  return _comparison_line("metanet", _metanet_desc(m["config"]), m, f"≥ {TARGET_METANET_RATIO:.0f}×",
                          "MetaNet")


def metanet_markdown(m: dict) -> str:
  """The report's MetaNet section."""
  lines = ["## MetaNet (Munkhdalai & Yu 2017): train step vs an eager PyTorch reference", "",
           f"{_metanet_desc(m['config'])}; fast weights on all layers, contrastive embedding loss, first order; "
           f"one episode per update, mean query cross-entropy, Adam 1e-3, clip ±10. memjax: the jitted "
           f"`training.make_step` (episode drawn on device); reference: "
           f"`benchmarks/reference/metanet_torch.py` (eager, a Python loop over the support examples with one "
           f"`torch.autograd.grad` each). " + _params_and_rounds(m), ""]
  headers = ["memjax episodes/s", "memjax s/episode"]
  row = [m["memjax_episodes_s"], m["memjax_step_s"]]
  lines += _episodes_table_and_compile(m, headers, row)
  if "ratio" in m:
    lines += [_fmt_targets([["MetaNet speed-up vs torch", f"{m['ratio']:.1f}×", f"≥ {TARGET_METANET_RATIO:.0f}×",
                             "yes" if m["ratio"] >= TARGET_METANET_RATIO else "**no**"]]), ""]
  return "\n".join(lines)


def metanet_hook(args, *, quick: bool, rounds: int, run_s: float, torch_threads: list[int]
                 ) -> tuple[str, dict | None]:
  """memjax.metanet vs :mod:`benchmarks.reference.metanet_torch` (quick: a small model)."""
  if not _module_exists("memjax.metanet"):
    return "metanet: not benchmarked (memjax.metanet does not exist).", None
  cfg = METANET_QUICK_CONFIG if quick else METANET_CONFIG
  res = metanet_throughput(cfg, rounds=rounds, target_run_s=run_s, torch_threads=torch_threads, seed=args.seed)
  return metanet_summary(res), res


# --------------------------------------------------------------------------- measurement


def _steps_for(seconds_per_step: float, target_s: float) -> int:
  return max(1, int(math.ceil(target_s / max(seconds_per_step, 1e-9))))


def _alternate(js, tr, torch_threads: list[int], *, rounds: int, target_run_s: float, per_step: int,
               label: str, unit: str) -> dict:
  """Alternating timed runs: memjax, then torch at each thread count, ``rounds`` times.

  One sizing step per side (and thread count; torch also gets a warm-up step)
  is excluded; each run times ``ceil(target_run_s / step)`` steps. Rates are
  ``per_step`` items (sequences, episodes) per second.
  """
  jax_steps = _steps_for(js.run(1), target_run_s)
  torch_steps = {}
  for th in torch_threads if tr is not None else ():
    tr.run(1, th)  # warm-up
    torch_steps[th] = _steps_for(tr.run(1, th), target_run_s)
  jax_rates, torch_rates = [], {th: [] for th in torch_steps}
  for r in range(rounds):
    jax_rates.append(per_step * jax_steps / js.run(jax_steps))
    for th, n in torch_steps.items():
      torch_rates[th].append(per_step * n / tr.run(n, th))
    common.log(f"{label} round {r + 1}/{rounds}: memjax {jax_rates[-1]:.3g} {unit}"
               + "".join(f", torch({th} thr) {torch_rates[th][-1]:.3g} {unit}" for th in torch_rates))
  return {"jax_rates": jax_rates, "jax_steps": jax_steps, "torch_rates": torch_rates,
          "torch_steps": torch_steps}


def _rates_result(res: dict, js, tr, timing: dict, unit_key: str) -> dict:
  """Adds medians, runs, compile times and (with torch) the ratios to ``res``."""
  jax_median = statistics.median(timing["jax_rates"])
  res.update({
      f"memjax_{unit_key}": jax_median, "memjax_runs": timing["jax_rates"],
      "memjax_steps_per_run": timing["jax_steps"], "memjax_step_s": 1.0 / jax_median,
      "compile_s": js.compiled.total_s, "lower_s": js.compiled.lower_s, "xla_compile_s": js.compiled.compile_s,
      "compile_cpu_s": js.compile_cpu_s, "num_params_memjax": js.num_params,
  })
  if tr is not None and timing["torch_rates"]:
    meds = {th: statistics.median(v) for th, v in timing["torch_rates"].items()}
    best = max(meds, key=meds.get)
    res.update({
        f"torch_{unit_key}_by_threads": meds, "torch_runs": timing["torch_rates"],
        "torch_steps_per_run": timing["torch_steps"], "torch_best_threads": best,
        f"torch_{unit_key}": meds[best], "ratio": jax_median / meds[best],
        "ratio_by_threads": {th: jax_median / v for th, v in meds.items()},
        "num_params_torch": tr.num_params,
    })
  return res


def throughput_at(batch: int, *, max_length: int, rounds: int, target_run_s: float, torch_threads: list[int],
                  seed: int) -> dict:
  """Alternating timed runs of memjax and torch at one batch size."""
  common.log(f"[batch {batch}] compiling memjax step ...")
  js = build_ntm_step(batch, max_length, seed=seed)
  common.log(f"[batch {batch}] compiled in {js.compiled.total_s:.1f} s "
             f"(lower {js.compiled.lower_s:.1f} s, compile {js.compiled.compile_s:.1f} s, cpu {js.compile_cpu_s:.1f} s)")
  js.run(1)  # warm-up
  tr = TorchRunner(batch, max_length, seed=seed) if torch_threads else None
  timing = _alternate(js, tr, torch_threads, rounds=rounds, target_run_s=target_run_s, per_step=batch,
                      label=f"[batch {batch}]", unit="seq/s")
  res = {"batch": batch, "max_length": max_length, "seq_len": js.seq_len}
  res = _rates_result(res, js, tr, timing, "seq_s")
  res["memjax_step_s"] = batch / res["memjax_seq_s"]
  res["_jaxstep"] = js
  return res


def flop_analysis(js: JaxStep, step_s: float, peaks: common.Peaks) -> dict:
  """XLA FLOPs of the step (trip-count corrected) vs the hand count; achieved fraction of peak."""
  f_step = common.cost_flops(js.executable)
  f_cell = cell_step_flops(js)
  hand = ntm_hand_flops(js.batch, js.seq_len, js.memory_size, js.num_params)
  out = {"batch": js.batch, "seq_len": js.seq_len, "xla_step_flops_raw": f_step, "xla_cell_flops": f_cell,
         "hand": hand}
  if f_step is not None and f_cell is not None:
    total = f_step + (js.seq_len - 1) * f_cell
    out["xla_step_flops"] = total
    out["xla_over_hand"] = total / hand["train_step"]
    out["gflops"] = total / step_s / 1e9
  else:
    out["xla_step_flops"] = None
    out["gflops"] = hand["train_step"] / step_s / 1e9
  out["hand_gflops"] = hand["train_step"] / step_s / 1e9
  out["peak_fraction"] = out["gflops"] / peaks.matmul_gflops
  out["hand_peak_fraction"] = out["hand_gflops"] / peaks.matmul_gflops
  return out


def time_step(js: JaxStep, target_s: float, rounds: int) -> float:
  """Median seconds per memjax train step."""
  js.run(1)
  n = _steps_for(js.run(1), target_s)
  return statistics.median(js.run(n) / n for _ in range(rounds))


def warm_cache_compile(batch: int, max_length: int, seed: int) -> dict | None:
  """Compile time of the memjax step with a warm JAX persistent compilation cache.

  Compiles once into an empty temporary cache directory (a miss that fills it),
  clears the in-memory caches, and compiles again (a hit). Run last: it changes
  the process's compilation-cache settings (restored afterwards).
  """
  import jax
  try:
    from jax.experimental import compilation_cache as cc
  except ImportError:  # pragma: no cover
    cc = None
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes")
  try:
    old = {n: getattr(jax.config, n) for n in names}
  except AttributeError:
    return None
  try:
    with tempfile.TemporaryDirectory() as d:
      jax.config.update(names[0], d)
      jax.config.update(names[1], 0.0)
      jax.config.update(names[2], 0)
      miss = build_ntm_step(batch, max_length, seed=seed)
      jax.clear_caches()
      hit = build_ntm_step(batch, max_length, seed=seed)
      files = len(os.listdir(d))
  finally:
    for n, v in old.items():
      jax.config.update(n, v)
    if cc is not None and hasattr(cc, "reset_cache"):
      cc.reset_cache()
  if files == 0:
    return None
  return {"batch": batch, "max_length": max_length, "miss_compile_s": miss.compiled.total_s,
          "hit_compile_s": hit.compiled.total_s, "hit_lower_s": hit.compiled.lower_s,
          "hit_xla_s": hit.compiled.compile_s, "hit_cpu_s": hit.compile_cpu_s}


# --------------------------------------------------------------------------- profiling


def profile_step(js: JaxStep, steps: int = 3, top: int = 15) -> list[dict]:
  """Top XLA ops of the memjax train step by time, from a jax.profiler trace.

  Each op is mapped to its HLO shape and the JAX operation it came from.
  """
  import jax
  hlo = js.executable.as_text()
  js.run(1)
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d, create_perfetto_trace=True):
      js.run(steps)
    paths = glob.glob(os.path.join(d, "**", "*perfetto_trace.json.gz"), recursive=True)
    if not paths:
      return []
    with gzip.open(paths[0]) as f:
      trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  durs = collections.defaultdict(list)
  for e in events:
    if e.get("ph") == "X" and not e["name"].startswith(("$", "ThunkExecutor", "SlinkyThreadPool", "PjitFunction",
                                                          "CommonPjRt", "ParseArguments")):
      durs[e["name"]].append(e.get("dur", 0.0))
  # Median duration per call × calls per step: robust to a call that was preempted
  # (on a loaded machine one call can absorb a whole scheduler time slice).
  per_step = {name: statistics.median(d) * len(d) / steps for name, d in durs.items()}
  total = sum(per_step.values()) or 1.0
  rows = []
  for name, t in sorted(per_step.items(), key=lambda kv: -kv[1])[:top]:
    line = re.search(r"%" + re.escape(name) + r" = ([^\n]*)", hlo)
    shape = op_name = None
    if line:
      shape = line.group(1).split(" ", 1)[0]
      if shape.startswith("("):
        shape = "tuple"
      mm = re.search(r'op_name="([^"]*)"', line.group(1))
      op_name = mm.group(1) if mm else None
    rows.append({"op": name, "ms_per_step": t / 1e3, "share": t / total, "calls_per_step": len(durs[name]) / steps,
                 "shape": shape, "jax_op": op_name})
  return rows


# --------------------------------------------------------------------------- output


def plot(results: dict, path: str) -> None:
  plt = common.pyplot()
  panels = [k for k in ("batches", "scaling_T", "scaling_N") if results.get(k)]
  fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(6 * max(1, len(panels)), 4.5), squeeze=False)
  for ax, key in zip(axes[0], panels):
    if key == "batches":
      rows = results["batches"]
      xs = np.arange(len(rows))
      ax.bar(xs - 0.2, [r["memjax_seq_s"] for r in rows], 0.4, label="memjax (jit)")
      if all("torch_seq_s" in r for r in rows):
        ax.bar(xs + 0.2, [r["torch_seq_s"] for r in rows], 0.4, label="PyTorch reference (best threads)")
        for x, r in zip(xs, rows):
          ax.text(x, r["memjax_seq_s"], f"{r['ratio']:.0f}×", ha="center", va="bottom")
      ax.set_xticks(xs, [str(r["batch"]) for r in rows])
      ax.set_yscale("log")
      ax.set_xlabel("batch")
      ax.set_ylabel("sequences / s")
      ax.set_title(f"NTM copy train step (T={rows[0]['seq_len']})")
      ax.legend(loc="lower right", fontsize=8)
    else:
      rows = results[key]
      var = "seq_len" if key == "scaling_T" else "memory_size"
      xs = [r[var] for r in rows]
      ys = [1e3 * r["step_s"] for r in rows]
      ax.plot(xs, ys, "o-", label="memjax step time")
      if len(xs) >= 2:
        a, b = np.polyfit(xs, ys, 1)
        grid = np.linspace(0, max(xs), 50)
        ax.plot(grid, a * grid + b, ":", color="gray", label=f"fit {a:.3g}·x + {b:.3g} ms")
      ax2 = ax.twinx()
      ax2.plot(xs, [r["hand_flops"] / 1e9 for r in rows], "s--", color="tab:red", alpha=0.6,
               label="hand-count GFLOP/step")
      ax2.set_ylabel("GFLOP / step (hand count)", color="tab:red")
      ax.set_xlabel("padded sequence length T" if key == "scaling_T" else "memory slots N (M = 20)")
      ax.set_ylabel("ms / train step")
      ax.set_title(f"memjax NTM step cost vs {'T' if key == 'scaling_T' else 'N'} (batch {rows[0]['batch']})")
      ax.set_ylim(bottom=0)
      ax2.set_ylim(bottom=0)
      ax.legend(loc="upper left", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _fmt_targets(rows):
  return common.markdown_table(["target", "measured", "required", "met"], rows, ["l", "r", "r", "l"])


def report(res: dict, env: dict, peaks: common.Peaks) -> str:
  lines = ["# memjax training throughput: NTM copy task vs a PyTorch reference", "",
           common.environment_markdown(env), "", peaks.markdown(), ""]
  b = res["batches"]
  has_torch = all("torch_seq_s" in r for r in b)
  lines += [f"NTM: LSTM 100, 1 read + 1 write head, memory 128×20, copy lengths 1–{b[0]['max_length']} "
            f"(T = {b[0]['seq_len']}), centred RMSProp, clip ±10. memjax params {b[0]['num_params_memjax']:,}"
            + (f", torch params {b[0]['num_params_torch']:,} (nn.LSTMCell has two bias vectors)" if has_torch else "")
            + ". Medians over alternating runs.", ""]
  headers = ["batch", "memjax seq/s", "memjax ms/step"]
  if has_torch:
    ths = sorted(b[0]["torch_seq_s_by_threads"])
    headers += [f"torch seq/s ({t} thr)" for t in ths] + [f"memjax / torch ({t} thr)" for t in ths] \
        + ["memjax / best torch"]
  rows = []
  for r in b:
    row = [r["batch"], r["memjax_seq_s"], 1e3 * r["memjax_step_s"]]
    if has_torch:
      row += [r["torch_seq_s_by_threads"][t] for t in ths] \
          + [f"{r['ratio_by_threads'][t]:.1f}×" for t in ths] + [f"**{r['ratio']:.1f}×**"]
    rows.append(row)
  lines += [common.markdown_table(headers, rows), ""]
  if not has_torch:
    lines += ["PyTorch is not installed (`pip install -e .[bench]`): the reference was skipped.", ""]

  comp = res["compile"]
  lines += ["## Compile time (memjax train step; `step.lower(state).compile()`, timed apart)", ""]
  crow = [[c["max_length"], c["seq_len"], c["batch"], c["compile_s"], c["lower_s"], c["xla_compile_s"],
           c["compile_cpu_s"]] for c in comp]
  lines += [common.markdown_table(["max_length", "T", "batch", "total s", "trace+lower s", "XLA compile s",
                                   "process CPU s"], crow), ""]

  wc = res.get("warm_cache")
  if wc:
    lines += [f"With a warm JAX persistent compilation cache (`jax_compilation_cache_dir`), the same step "
              f"(batch {wc['batch']}, max_length {wc['max_length']}) takes {wc['hit_compile_s']:.1f} s "
              f"(trace+lower {wc['hit_lower_s']:.1f} s, cache load {wc['hit_xla_s']:.1f} s) instead of "
              f"{wc['miss_compile_s']:.1f} s.", ""]

  fl = res["flops"]
  h = fl["hand"]
  lines += [f"## FLOPs (batch {fl['batch']}, T = {fl['seq_len']})", "",
            f"- XLA `cost_analysis()` of the whole step: {fl['xla_step_flops_raw'] or float('nan'):.4g} FLOPs "
            "(scan bodies counted once).",
            f"- one cell step, forward + backward, compiled alone: {fl['xla_cell_flops'] or float('nan'):.4g} FLOPs; "
            f"corrected step = raw + (T − 1) × cell = **{fl['xla_step_flops'] or float('nan'):.4g} FLOPs**.",
            f"- hand count: forward {h['forward_per_step_example']:,.0f} FLOPs per step and example "
            f"(LSTM {h['lstm']:,}, head params {h['heads']:,}, addressing {h['addressing']:,}, read/write "
            f"{h['read_write']:,}, output {h['output']:,}); train step ≈ 3 × fwd × T × B + 15 × params = "
            f"**{h['train_step']:.4g} FLOPs**" + (f" (XLA / hand = {fl['xla_over_hand']:.2f})." if fl.get('xla_over_hand') else "."),
            f"- achieved: {fl['gflops']:.2f} GFLOP/s (XLA count; hand count {fl['hand_gflops']:.2f}) = "
            f"**{100 * fl['peak_fraction']:.1f}%** of the measured matmul peak ({peaks.matmul_gflops:.1f} GFLOP/s).",
            ""]
  if res.get("raw_flops_by_length"):
    lines += ["XLA raw counts by length (loop bodies once, so nearly flat in T): " +
              ", ".join(f"T={t}: {f:.4g}" for t, f in res["raw_flops_by_length"]) + ".", ""]

  # Targets.
  trows = []
  for r in b:
    if r["batch"] in TARGET_RATIO and has_torch:
      need = TARGET_RATIO[r["batch"]]
      trows.append([f"speed-up vs torch at batch {r['batch']}", f"{r['ratio']:.1f}×", f"≥ {need:.0f}×",
                    "yes" if r["ratio"] >= need else "**no**"])
  if fl["batch"] == TARGET_PEAK_BATCH:
    trows.append([f"fraction of matmul peak at batch {TARGET_PEAK_BATCH}", f"{100 * fl['peak_fraction']:.1f}%",
                  f"≥ {100 * TARGET_PEAK_FRACTION:.0f}%",
                  "yes" if fl["peak_fraction"] >= TARGET_PEAK_FRACTION else "**no**"])
  for c in comp:
    trows.append([f"compile at max_length {c['max_length']}", f"{c['compile_s']:.1f} s",
                  f"≤ {TARGET_COMPILE_S:.0f} s", "yes" if c["compile_s"] <= TARGET_COMPILE_S else "**no**"])
  if len(comp) >= 2:
    spread = max(c["compile_s"] for c in comp) / min(c["compile_s"] for c in comp)
    trows.append(["compile independent of length", f"max/min {spread:.2f}", "≈ 1 (≤ 1.25)",
                  "yes" if spread <= 1.25 else "**no**"])
  lines += ["## Targets", "", _fmt_targets(trows), ""]

  for key, var in (("scaling_T", "seq_len"), ("scaling_N", "memory_size")):
    if res.get(key):
      rows = [[r[var], r["batch"], 1e3 * r["step_s"], r["hand_flops"] / 1e9, r["hand_flops"] / r["step_s"] / 1e9]
              for r in res[key]]
      lines += [f"## Scaling with {'T' if var == 'seq_len' else 'N'} (memjax)", "",
                common.markdown_table([var, "batch", "ms/step", "GFLOP/step (hand)", "GFLOP/s"], rows), ""]
  if res.get("profile"):
    p = res["profile"]
    lines += [f"## Profile: top XLA ops of the memjax step at batch {res['profile_batch']}", "",
              common.markdown_table(["op", "ms/step", "share", "calls/step", "shape", "from"],
                                    [[r["op"], r["ms_per_step"], f"{100 * r['share']:.1f}%", r["calls_per_step"],
                                      r["shape"], (r["jax_op"] or "")[-70:]] for r in p],
                                    ["l", "r", "r", "r", "l", "l"]), ""]
  lines += ["## Other models", ""] + [f"- {m}" for m in res["other_models"]] + [""]
  if res.get("mann"):
    lines += [mann_markdown(res["mann"])]
  if res.get("metanet"):
    lines += [metanet_markdown(res["metanet"])]
  lines += [f"Total benchmark time {res['elapsed_s']:.0f} s.", ""]
  return "\n".join(lines)


# --------------------------------------------------------------------------- main


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


def _int_list(text):
  return [int(v) for v in text.split(",") if v]


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--quick", action="store_true", help="one small batch, short runs, no sweeps (smoke test)")
  p.add_argument("--out", default="bench_out", help="directory for throughput.md/.json/.png")
  p.add_argument("--models", default="ntm",
                 help="comma-separated: ntm, mann, metanet (each vs its PyTorch reference)")
  p.add_argument("--batches", type=_int_list, default=None, help="default 1,16,64 (quick: 2)")
  p.add_argument("--max-length", type=int, default=None, help="copy max length (default 20; quick 5)")
  p.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 3; quick 2)")
  p.add_argument("--run-seconds", type=float, default=None, help="target length of one timed run (default 1.5)")
  p.add_argument("--torch-threads", type=_int_list, default=None,
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
  unknown = set(models) - {"ntm", "mann", "metanet"}
  if unknown:
    raise SystemExit(f"unknown models {sorted(unknown)}; choose from ntm, mann, metanet")
  quick = args.quick
  batches = args.batches or ([2] if quick else [1, 16, 64])
  max_length = args.max_length or (5 if quick else 20)
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
  other, other_results = [], []
  mann_res = None
  if "mann" in models:
    line, mann_res = mann_hook(args, quick=quick, rounds=rounds, run_s=run_s, torch_threads=torch_threads)
    other.append(line)
    if mann_res:
      other_results.append(mann_res)
  else:
    other.append("mann: not requested (`--models ntm,mann` runs it against its PyTorch reference).")
  metanet_res = None
  if "metanet" in models:
    line, metanet_res = metanet_hook(args, quick=quick, rounds=rounds, run_s=run_s, torch_threads=torch_threads)
    other.append(line)
  else:
    other.append("metanet: not requested (`--models ntm,metanet` runs it against its PyTorch reference).")
  for line in other:
    common.log(line)

  res: dict = {"other_models": other, "other_results": other_results, "args": vars(args), "environment": env}
  if metanet_res is not None:
    res["metanet"] = metanet_res
  if mann_res is not None:
    res["mann"] = mann_res
  if "ntm" not in models:
    res["elapsed_s"] = time.perf_counter() - t_start
    text = "\n".join(["# memjax training throughput", "", common.environment_markdown(env), "",
                      "## Other models", ""] + [f"- {m}" for m in other] + [""])
    if mann_res is not None:
      text += "\n" + mann_markdown(mann_res)
    if metanet_res is not None:
      text += "\n" + metanet_markdown(metanet_res)
    print(text)
    common.write_json(os.path.join(out, "throughput.json"), res)
    common.write_text(os.path.join(out, "throughput.md"), text)
    return res

  peaks = common.measure_peaks(quick=quick)
  common.log(peaks.markdown())
  res["peaks"] = peaks.as_dict()
  batch_results = [throughput_at(b, max_length=max_length, rounds=rounds, target_run_s=run_s,
                                 torch_threads=torch_threads, seed=args.seed) for b in batches]
  steps = {r["batch"]: r.pop("_jaxstep") for r in batch_results}
  res["batches"] = batch_results

  # Compile time vs length (one scan body: should not depend on T).
  cb = 16 if 16 in steps else batches[0]
  comp = [{"max_length": max_length, "seq_len": steps[cb].seq_len, "batch": cb,
           "compile_s": steps[cb].compiled.total_s, "lower_s": steps[cb].compiled.lower_s,
           "xla_compile_s": steps[cb].compiled.compile_s, "compile_cpu_s": steps[cb].compile_cpu_s}]
  long_step = None
  if not quick:
    long_len = 4 * max_length
    common.log(f"compiling memjax step at max_length {long_len} (batch {cb}) ...")
    long_step = build_ntm_step(cb, long_len, seed=args.seed)
    comp.append({"max_length": long_len, "seq_len": long_step.seq_len, "batch": cb,
                 "compile_s": long_step.compiled.total_s, "lower_s": long_step.compiled.lower_s,
                 "xla_compile_s": long_step.compiled.compile_s, "compile_cpu_s": long_step.compile_cpu_s})
    res["raw_flops_by_length"] = [(steps[cb].seq_len, common.cost_flops(steps[cb].executable)),
                                  (long_step.seq_len, common.cost_flops(long_step.executable))]
  res["compile"] = comp
  for c in comp:
    common.log(f"compile at max_length {c['max_length']} (T={c['seq_len']}): {c['compile_s']:.1f} s "
               f"(cpu {c['compile_cpu_s']:.1f} s)")

  # FLOPs and fraction of peak at the largest batch (64 in the full run).
  fb = TARGET_PEAK_BATCH if TARGET_PEAK_BATCH in steps else max(steps)
  step_s = next(r["memjax_step_s"] for r in batch_results if r["batch"] == fb)
  res["flops"] = flop_analysis(steps[fb], step_s, peaks)
  common.log(f"FLOPs at batch {fb}: XLA {res['flops']['xla_step_flops'] or float('nan'):.4g}, hand "
             f"{res['flops']['hand']['train_step']:.4g}; {res['flops']['gflops']:.2f} GFLOP/s = "
             f"{100 * res['flops']['peak_fraction']:.1f}% of matmul peak")

  # Scaling with T and N (memjax), at batch cb.
  if not quick and not args.no_scaling:
    sb = cb
    res["scaling_T"], res["scaling_N"] = [], []
    by_len = {max_length: steps[cb]}
    if long_step is not None:
      by_len[long_step.max_length] = long_step
    for L in sorted({max_length // 2, max_length, 2 * max_length, 4 * max_length}):
      js = by_len.get(L) or build_ntm_step(sb, L, seed=args.seed)
      s = time_step(js, run_s, rounds)
      hf = ntm_hand_flops(sb, js.seq_len, 128, js.num_params)["train_step"]
      res["scaling_T"].append({"seq_len": js.seq_len, "max_length": L, "batch": sb, "step_s": s, "hand_flops": hf,
                               "compile_s": js.compiled.total_s})
      common.log(f"  T={js.seq_len}: {1e3 * s:.1f} ms/step")
      if L != max_length:
        by_len.pop(L, None)
    for n in (32, 128, 512, 2048):
      js = steps[cb] if n == 128 else build_ntm_step(sb, max_length, memory_size=n, seed=args.seed)
      s = time_step(js, run_s, rounds)
      hf = ntm_hand_flops(sb, js.seq_len, n, js.num_params)["train_step"]
      res["scaling_N"].append({"memory_size": n, "seq_len": js.seq_len, "batch": sb, "step_s": s,
                               "hand_flops": hf, "compile_s": js.compiled.total_s})
      common.log(f"  N={n}: {1e3 * s:.1f} ms/step")

  if args.profile is not None:
    pb = args.profile
    js = steps.get(pb) or build_ntm_step(pb, max_length, seed=args.seed)
    res["profile"] = profile_step(js)
    res["profile_batch"] = pb

  if not quick:
    common.log("compiling with a warm persistent compilation cache ...")
    res["warm_cache"] = warm_cache_compile(cb, max_length, args.seed)

  res["elapsed_s"] = time.perf_counter() - t_start
  text = report(res, env, peaks)
  print(text)
  common.write_text(os.path.join(out, "throughput.md"), text)
  common.write_json(os.path.join(out, "throughput.json"), res)
  plot(res, os.path.join(out, "throughput.png"))
  return res


if __name__ == "__main__":
  main(sys.argv[1:])
