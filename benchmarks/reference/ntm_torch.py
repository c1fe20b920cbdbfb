"""A PyTorch reference NTM, written the way typical public implementations are.

Modelled on loudinthecloud/pytorch-ntm (and the many implementations derived
from it): eager PyTorch, an ``nn.LSTMCell`` controller, separate linear maps
for the read and the write head, and a Python loop over time steps that calls
the cell once per step. The model and the training step are the same as
memjax's ``NTMCell`` on the copy task, so the two can be timed against each
other:

* controller input [x_t, r_{t−1}]; LSTM with 100 units;
* per head, from h_t: key k (linear), β = softplus, g = σ, s = softmax over the
  3 shifts −1, 0, +1, γ = 1 + softplus; the write head also emits erase e = σ
  and add a = tanh (Graves et al. 2014 eqs. 5-9);
* both heads address M_{t−1}; the read head reads from M_{t−1}; then the write
  head erases and adds (eqs. 2-4);
* logits = linear([h_t, r_t]);
* memory 128 × 20 initialised to 1e-6, initial weightings one-hot at slot 0,
  initial read vector M_0[0] (as memjax);
* loss: sigmoid cross-entropy summed over the 8 channels, averaged over the
  scored steps; centred RMSProp (decay 0.95, momentum 0.9, lr 1e-4) after
  clipping every gradient component to ±10.

One deliberate departure from pytorch-ntm: its circular shift loops over the
batch in Python (``for b in range(batch_size): conv1d(...)``); here the shift
is vectorised over the batch (three ``torch.roll`` s). That only makes the
reference faster at batch > 1, so ratios against it are conservative.

torch is imported by whoever imports this module; the benchmarks import it
lazily and skip the reference when torch is not installed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-8


class NTMHead(nn.Module):
  """One addressing head (read or write); parameters from the controller output."""

  def __init__(self, controller_size: int, word_size: int, shift_range: int = 1, write: bool = False):
    super().__init__()
    self.m = word_size
    self.k = shift_range
    self.write = write
    # [key M, β, g, s 2K+1, γ] (+ [erase M, add M] for a write head).
    self.addr_size = word_size + 3 + (2 * shift_range + 1)
    out = self.addr_size + (2 * word_size if write else 0)
    self.fc = nn.Linear(controller_size, out)
    nn.init.xavier_uniform_(self.fc.weight, gain=1.4)
    nn.init.normal_(self.fc.bias, std=0.01)

  def params(self, h):
    o = self.fc(h)
    m = self.m
    key = o[:, :m]
    beta = F.softplus(o[:, m])
    gate = torch.sigmoid(o[:, m + 1])
    gamma = 1.0 + F.softplus(o[:, m + 2])
    shift = F.softmax(o[:, m + 3:self.addr_size], dim=1)
    if self.write:
      erase = torch.sigmoid(o[:, self.addr_size:self.addr_size + m])
      add = torch.tanh(o[:, self.addr_size + m:])
      return key, beta, gate, shift, gamma, erase, add
    return key, beta, gate, shift, gamma

  def address(self, memory, key, beta, gate, shift, gamma, w_prev):
    """Graves et al. 2014 eqs. 5-9; memory [B, N, M], w_prev [B, N] -> [B, N]."""
    # Content (eq. 5-6): cosine similarity of the key with every row.
    dot = torch.bmm(memory, key.unsqueeze(2)).squeeze(2)
    norms = torch.sqrt((memory * memory).sum(2) + EPS) * torch.sqrt((key * key).sum(1, keepdim=True) + EPS)
    wc = F.softmax(beta.unsqueeze(1) * dot / norms, dim=1)
    # Interpolation (eq. 7).
    g = gate.unsqueeze(1)
    wg = g * wc + (1 - g) * w_prev
    # Circular shift (eq. 8): shift[:, j] weights offset j - K.
    ws = sum(shift[:, j:j + 1] * torch.roll(wg, j - self.k, dims=1) for j in range(2 * self.k + 1))
    # Sharpening (eq. 9).
    w = (ws + EPS) ** gamma.unsqueeze(1)
    return w / w.sum(1, keepdim=True)


class NTM(nn.Module):
  """NTM with an LSTM controller, one read head and one write head."""

  def __init__(self, num_inputs: int = 9, num_outputs: int = 8, controller_size: int = 100,
               memory_size: int = 128, word_size: int = 20, shift_range: int = 1):
    super().__init__()
    self.n, self.m, self.c = memory_size, word_size, controller_size
    self.controller = nn.LSTMCell(num_inputs + word_size, controller_size)
    self.read_head = NTMHead(controller_size, word_size, shift_range, write=False)
    self.write_head = NTMHead(controller_size, word_size, shift_range, write=True)
    self.fc = nn.Linear(controller_size + word_size, num_outputs)

  def init_state(self, batch_size: int):
    memory = torch.full((batch_size, self.n, self.m), 1e-6)
    one_hot = torch.zeros(batch_size, self.n)
    one_hot[:, 0] = 1.0
    h = torch.zeros(batch_size, self.c)
    c = torch.zeros(batch_size, self.c)
    return (h, c), memory, one_hot.clone(), one_hot.clone(), memory[:, 0].clone()

  def step(self, x, state):
    (h, c), memory, w_read, w_write, read = state
    h, c = self.controller(torch.cat([x, read], dim=1), (h, c))
    k, beta, g, s, gamma = self.read_head.params(h)
    kw, betaw, gw, sw, gammaw, erase, add = self.write_head.params(h)
    # Both heads address M_{t-1}; read from M_{t-1}; then write.
    w_read = self.read_head.address(memory, k, beta, g, s, gamma, w_read)
    w_write = self.write_head.address(memory, kw, betaw, gw, sw, gammaw, w_write)
    read = torch.bmm(w_read.unsqueeze(1), memory).squeeze(1)
    memory = memory * (1 - w_write.unsqueeze(2) * erase.unsqueeze(1)) + \
        w_write.unsqueeze(2) * add.unsqueeze(1)
    logits = self.fc(torch.cat([h, read], dim=1))
    return logits, ((h, c), memory, w_read, w_write, read)

  def forward(self, inputs):
    """inputs [B, T, I] -> logits [B, T, O], a Python loop over time."""
    state = self.init_state(inputs.shape[0])
    outs = []
    for t in range(inputs.shape[1]):
      y, state = self.step(inputs[:, t], state)
      outs.append(y)
    return torch.stack(outs, dim=1)


def copy_batch(batch_size: int, max_length: int = 20, num_bits: int = 8, generator=None):
  """The copy task as memjax.tasks.copy builds it: T = 2L_max + 1, lengths 1..L_max.

  Returns ``(inputs [B, T, bits+1], targets [B, T, bits], mask [B, T])``.
  """
  t_max = 2 * max_length + 1
  lengths = torch.randint(1, max_length + 1, (batch_size,), generator=generator)
  bits = torch.randint(0, 2, (batch_size, max_length, num_bits), generator=generator).float()
  t = torch.arange(t_max).unsqueeze(0)
  L = lengths.unsqueeze(1)
  in_seq = (t < L).float()
  src = bits[:, torch.clamp(torch.arange(t_max), max=max_length - 1)]
  inputs = torch.cat([src * in_seq.unsqueeze(2), (t == L).float().unsqueeze(2)], dim=2)
  out = ((t > L) & (t <= 2 * L)).float()
  idx = torch.clamp(t - L - 1, 0, max_length - 1)  # [B, T]
  targets = torch.gather(bits, 1, idx.unsqueeze(2).expand(-1, -1, num_bits)) * out.unsqueeze(2)
  return inputs, targets, out


def sequence_loss(logits, targets, mask):
  bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(2)
  return (bce * mask).sum() / mask.sum().clamp(min=1.0)


class Trainer:
  """The reference's training step: fresh copy batch, forward, backward, clip ±10, centred RMSProp."""

  def __init__(self, batch_size: int, max_length: int = 20, seed: int = 0, **model_kwargs):
    torch.manual_seed(seed)
    self.batch_size = batch_size
    self.max_length = max_length
    self.model = NTM(**model_kwargs)
    self.opt = torch.optim.RMSprop(self.model.parameters(), lr=1e-4, alpha=0.95, momentum=0.9,
                                   centered=True, eps=1e-8)
    self.generator = torch.Generator().manual_seed(seed)

  def step(self) -> float:
    inputs, targets, mask = copy_batch(self.batch_size, self.max_length, generator=self.generator)
    self.opt.zero_grad(set_to_none=True)
    loss = sequence_loss(self.model(inputs), targets, mask)
    loss.backward()
    torch.nn.utils.clip_grad_value_(self.model.parameters(), 10.0)
    self.opt.step()
    return loss.item()


def num_parameters(model: nn.Module) -> int:
  return sum(p.numel() for p in model.parameters())
