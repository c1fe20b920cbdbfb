"""A PyTorch reference MANN with LRUA, written the way typical public implementations are.

Santoro, Bartunov, Botvinick, Wierstra & Lillicrap 2016, *Meta-Learning with
Memory-Augmented Neural Networks* (ICML), §3, in eager PyTorch, no
``torch.compile``: an ``nn.LSTMCell`` controller, linear maps from the
controller output to every head's key, add vector and write gate, and a Python loop over
the time steps of an episode that calls the cell once per step. The equations
and the configuration are those of memjax's ``memjax.mann.MANNCell`` and
``mann_loss`` (one-hot labels), so the two train steps do the same work and
can be timed against each other. Shapes: B episodes, R heads, N × M memory,
C controller units, I inputs.

One step, for x_t [B, I] and the previous state:

1. controller: (h_t, c_t) = LSTM([x_t, r_{1..R,t−1}], (h_{t−1}, c_{t−1})), h_t [B, C];
2. per head: key k_{h,t} = tanh(W_k h_t + b_k) ∈ [−1, 1]^M, add vector
   a_{h,t} = tanh(W_a h_t + b_a) and write-gate logit α_h = W_α h_t + b_α;
3. least-used weights from the previous usage, n = R:
   w^lu_{t−1}(i) = 1 if w^u_{t−1}(i) is among the R smallest, else 0
   (ties to the lower index: a stable sort);
4. write weights: w^w_{h,t} = σ(α_h) w^r_{h,t−1} + (1 − σ(α_h)) w^lu_{t−1};
5. LRUA write: the single least-used slot (n = 1) of w^u_{t−1} is set to
   zero, then M_t = M_{t−1} + Σ_h w^w_{h,t} a_{h,t}ᵀ;
6. content-only reads from M_t: w^r_{h,t}(i) = softmax_i(K(k_{h,t}, M_t(i))),
   K(u, v) = u·v / (‖u‖ ‖v‖), ‖x‖ = sqrt(Σ x² + 1e-8); r_{h,t} = Σ_i w^r_{h,t}(i) M_t(i);
7. usage: w^u_t = γ w^u_{t−1} + Σ_h w^r_{h,t} + Σ_h w^w_{h,t}, γ = 0.95;
8. logits = W_o [h_t, r_{1..R,t}] + b_o.

Initial state as memjax: memory 1e-6 everywhere, usage 0, head h's read
weighting one-hot at slot h, read vectors 1e-6, LSTM state zero.

Training (one step): a fresh batch of B synthetic episodes of T = 50 steps
drawn on the host (uniform random 20×20 "images" flattened to 400, labels
uniform in 0..4, input x_t = [image_t, onehot(y_{t−1})] with a zero label at
t = 0), softmax cross-entropy averaged over every step of every episode, every
gradient component clipped to ±10, Adam 1e-3.

Parameter count: the same shapes as memjax (LSTM 200, heads 200 → 4·40 + 4·40 + 4, output
360 → 5) except that ``nn.LSTMCell`` has two bias vectors (b_ih and b_hh), so
the reference has 4·C more parameters (+800 at C = 200). Initialisation is
PyTorch's default (it does not change the work done).

Vectorised where typical implementations loop, so ratios against it are
conservative: the heads and the episodes of a batch are processed together
(``torch.bmm``), only the time loop is in Python.

torch is imported by whoever imports this module; the benchmarks import it
lazily and skip the reference when torch is not installed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-8  # as memjax.addressing: ‖x‖ = sqrt(Σ x² + EPS)
MEMORY_INIT_CONSTANT = 1e-6


class MANN(nn.Module):
  """MANN with an LSTM controller and R LRUA heads (each reads with a key k and writes an add vector a).

  Args:
    num_inputs: I, the input width (400 pixels + 5 label bits for Omniglot).
    num_classes: size of the output logits (5).
    controller_size: C, LSTM units (200).
    memory_size: N, memory slots (128).
    word_size: M, slot width (40).
    read_heads: R, heads (4).
    usage_decay: γ (0.95).
  """

  def __init__(self, num_inputs: int = 405, num_classes: int = 5, controller_size: int = 200,
               memory_size: int = 128, word_size: int = 40, read_heads: int = 4, usage_decay: float = 0.95):
    super().__init__()
    if read_heads > memory_size:
      raise ValueError(f"read_heads={read_heads} > memory_size={memory_size}")
    self.n, self.m, self.r, self.c = memory_size, word_size, read_heads, controller_size
    self.gamma = usage_decay
    self.controller = nn.LSTMCell(num_inputs + read_heads * word_size, controller_size)
    self.key = nn.Linear(controller_size, read_heads * word_size)   # k per head
    self.add = nn.Linear(controller_size, read_heads * word_size)   # a per head
    self.gate = nn.Linear(controller_size, read_heads)              # α per head
    self.out = nn.Linear(controller_size + read_heads * word_size, num_classes)

  def init_state(self, batch_size: int):
    """``((h, c) [B, C] each, memory [B, N, M], usage [B, N], read weights [B, R, N], reads [B, R, M])``."""
    b, n, m, r = batch_size, self.n, self.m, self.r
    memory = torch.full((b, n, m), MEMORY_INIT_CONSTANT)
    usage = torch.zeros(b, n)
    w_read = torch.eye(r, n).unsqueeze(0).expand(b, r, n).clone()
    reads = torch.full((b, r, m), MEMORY_INIT_CONSTANT)
    return (torch.zeros(b, self.c), torch.zeros(b, self.c)), memory, usage, w_read, reads

  def step(self, x, state):
    """One time step: x [B, I] → (logits [B, classes], new state); equations 1-8 above."""
    (h, c), memory, usage, w_read, reads = state
    b, m, r = x.shape[0], self.m, self.r
    # 1. Controller on [x_t, r_{t−1}].
    h, c = self.controller(torch.cat([x, reads.reshape(b, r * m)], dim=1), (h, c))
    # 2. Keys, add vectors and write gates.
    keys = torch.tanh(self.key(h)).view(b, r, m)       # [B, R, M]
    adds = torch.tanh(self.add(h)).view(b, r, m)       # [B, R, M]
    alpha = self.gate(h)                               # [B, R]
    # 3. Least-used slots of w^u_{t−1} (no gradient through the indices).
    order = torch.argsort(usage, dim=1, stable=True)   # [B, N], least used first
    w_lu = torch.zeros_like(usage).scatter_(1, order[:, :r], 1.0)      # n = R
    clear = torch.zeros_like(usage).scatter_(1, order[:, :1], 1.0)     # n = 1
    # 4. Write weights.
    g = torch.sigmoid(alpha).unsqueeze(2)              # [B, R, 1]
    w_write = g * w_read + (1.0 - g) * w_lu.unsqueeze(1)  # [B, R, N]
    # 5. Clear the least-used slot, then add every head's add vector.
    memory = memory * (1.0 - clear).unsqueeze(2) + torch.bmm(w_write.transpose(1, 2), adds)  # [B, N, M]
    # 6. Content-only reads from M_t (cosine similarity, no key strength).
    dot = torch.bmm(keys, memory.transpose(1, 2))      # [B, R, N]
    norms = torch.sqrt((keys * keys).sum(2, keepdim=True) + EPS) * \
        torch.sqrt((memory * memory).sum(2) + EPS).unsqueeze(1)
    w_read = F.softmax(dot / norms, dim=2)             # [B, R, N]
    reads = torch.bmm(w_read, memory)                  # [B, R, M]
    # 7. Usage.
    usage = self.gamma * usage + w_read.sum(1) + w_write.sum(1)
    # 8. Output.
    logits = self.out(torch.cat([h, reads.reshape(b, r * m)], dim=1))
    return logits, ((h, c), memory, usage, w_read, reads)

  def forward(self, inputs):
    """inputs [B, T, I] → logits [B, T, classes], a Python loop over time."""
    state = self.init_state(inputs.shape[0])
    outs = []
    for t in range(inputs.shape[1]):
      y, state = self.step(inputs[:, t], state)
      outs.append(y)
    return torch.stack(outs, dim=1)


def random_episodes(batch_size: int, seq_len: int = 50, num_classes: int = 5, image_size: int = 20,
                    generator=None):
  """Synthetic episodes as the memjax benchmark draws them: uniform images, uniform labels.

  Returns ``(inputs [B, T, S² + classes], labels [B, T])`` with
  inputs[:, t] = [image_t (flattened S × S), onehot(y_{t−1})] (zeros at t = 0).
  """
  images = torch.rand(batch_size, seq_len, image_size * image_size, generator=generator)
  labels = torch.randint(0, num_classes, (batch_size, seq_len), generator=generator)
  prev = F.one_hot(labels, num_classes).float()
  prev = torch.cat([torch.zeros(batch_size, 1, num_classes), prev[:, :-1]], dim=1)
  return torch.cat([images, prev], dim=2), labels


def mann_loss(logits, labels):
  """Softmax cross-entropy averaged over episodes and steps: logits [B, T, K], labels [B, T] → []."""
  return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


class Trainer:
  """The reference's training step: fresh episodes, forward, backward, clip ±10, Adam 1e-3."""

  def __init__(self, batch_size: int = 16, seq_len: int = 50, num_classes: int = 5, image_size: int = 20,
               seed: int = 0, lr: float = 1e-3, clip: float = 10.0, **model_kwargs):
    torch.manual_seed(seed)
    self.batch_size, self.seq_len, self.num_classes, self.image_size = batch_size, seq_len, num_classes, image_size
    self.clip = clip
    self.model = MANN(num_inputs=image_size * image_size + num_classes, num_classes=num_classes, **model_kwargs)
    self.opt = torch.optim.Adam(self.model.parameters(), lr=lr)
    self.generator = torch.Generator().manual_seed(seed)

  def step(self) -> float:
    inputs, labels = random_episodes(self.batch_size, self.seq_len, self.num_classes, self.image_size,
                                     self.generator)
    self.opt.zero_grad(set_to_none=True)
    loss = mann_loss(self.model(inputs), labels)
    loss.backward()
    torch.nn.utils.clip_grad_value_(self.model.parameters(), self.clip)
    self.opt.step()
    return loss.item()


def load_flax_params(model: MANN, params) -> None:
  """Copies ``nn.RNN(MANNCell)`` parameters (``variables['params']['cell']``) into ``model``.

  Flax's OptimizedLSTMCell has input kernels ``i{i,f,g,o}`` [I', C] without bias
  and recurrent kernels ``h{i,f,g,o}`` [C, C] with bias; nn.LSTMCell stacks the
  gates in the order i, f, g, o, so b_ih = 0 and b_hh = the flax bias.
  """
  import numpy as np
  t = lambda a: torch.tensor(np.array(a), dtype=torch.float32)
  ctrl = params["controller"]
  with torch.no_grad():
    model.controller.weight_ih.copy_(torch.cat([t(ctrl[f"i{g}"]["kernel"]).T for g in "ifgo"]))
    model.controller.weight_hh.copy_(torch.cat([t(ctrl[f"h{g}"]["kernel"]).T for g in "ifgo"]))
    model.controller.bias_ih.zero_()
    model.controller.bias_hh.copy_(torch.cat([t(ctrl[f"h{g}"]["bias"]) for g in "ifgo"]))
    for name in ("key", "add", "gate"):
      getattr(model, name).weight.copy_(t(params[name]["kernel"]).T)
      getattr(model, name).bias.copy_(t(params[name]["bias"]))
    model.out.weight.copy_(t(params["output"]["kernel"]).T)
    model.out.bias.copy_(t(params["output"]["bias"]))


def num_parameters(model: nn.Module) -> int:
  return sum(p.numel() for p in model.parameters())
