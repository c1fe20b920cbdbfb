"""A PyTorch reference MetaNet, written the way typical public implementations are.

Meta Networks (Munkhdalai & Yu 2017, ICML, arXiv:1703.00837) in eager PyTorch,
no ``torch.compile``: the meta information is computed with a Python loop over
the support examples, one ``torch.autograd.grad`` call per example, as in the
authors' Chainer code and the PyTorch ports derived from it. The equations and
the configuration are those of memjax's ``memjax.metanet.MetaNet`` (defaults
only: contrastive embedding loss, first order), so the two train steps do the
same work and can be timed against each other:

* u (embedding, slow Q, task-level fast Q*) and b (base learner, slow W,
  example-level fast W*_i): 5 blocks of 64 3×3 'SAME' convolutions, each
  h_b = maxpool_2×2(ReLU(conv(h, slow_b)) + ReLU(conv(h, fast_b))), then
  FC 64 (b: ReLU(f W_1) + ReLU(f W*_1); u: r = f Q_1 + f Q*_1, linear) and,
  for b, logits = h W_2 + h W*_2. No biases. Fast weights on all layers
  (``fast_layers='all'``) or on the FC layers only (``'fc'``);
* gradients are preprocessed as in Andrychowicz et al. (2016), k = 7:
  g ↦ (log|g|/k, sign g) if |g| ≥ e^{−k}, else (−1, e^k g);
* the meta learner m (slow Z), a coordinate-wise MLP 2→20→20→1 (one for the
  conv kernels, one for the FC matrices): W*_i = s_l · m(Z, ∇_W L_task(b(W, x'_i), y'_i)),
  s_l = sqrt(2 / fan_in) (sqrt(1 / fan_in) for the logits layer);
* the meta learner d (slow G), a coordinate-wise LSTM with 20 units
  (``nn.LSTMCell``): Q* = s_l · d(G, ∇_1..∇_T), ∇_t the gradient of the mean
  contrastive loss of chunk t (T = min(5, S) consecutive chunks of the support
  set); the read-out of the last hidden state;
* contrastive embedding loss on the pairs (x'_i, x'_{(i+1) mod S}):
  L_i = BCE(5 · cos(r_1, r_2), l_i), l_i = 1 for a same-class pair, with each
  representation divided by max(1, max|r|) (under no-grad), as memjax;
* retrieval: a = softmax_i cos(R[i], r) with the keys R[i] = u(Q, Q*, x'_i);
  W*_q = Σ_i a_i M[i];
* first order: the gradients fed to m and d are detached (``autograd.grad``
  without ``create_graph``);
* training: mean softmax cross-entropy over the queries of one episode,
  gradients clipped elementwise to ±10, Adam 1e-3.

Initialisation follows memjax (He-normal kernels, LeCun-normal hidden layers of
m and d, their output layers with std 0.01, LSTM forget bias 1). Parameter
counts agree except that ``nn.LSTMCell`` has two bias vectors (+4·20 per
LSTM).

Two places are vectorised rather than looped, as memjax does them (both only
make the reference faster, so ratios against it are conservative):

* the queries go through u and b as one batch; the retrieved conv fast
  weights are never materialised per query: conv(x, Σ_i a_i M[i]) =
  Σ_i a_i conv(x, M[i]) is one dense convolution with the S kernels stacked
  along the output channels (memjax's ``MixedWeights``);
* the coordinate-wise nets run on all coordinates of a group at once.

Images are NCHW here (PyTorch's layout), [n, C, H, W]; torch is imported by
whoever imports this module (the benchmarks import it lazily).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

GRADIENT_PREPROCESS_K = 7.0
EPS = 1e-8  # as memjax.addressing: ‖x‖ = sqrt(Σ x² + EPS)
META_OUT_INIT_STD = 0.01
FAST_LAYERS = ("all", "fc")


def preprocess_gradients(g: torch.Tensor, k: float = GRADIENT_PREPROCESS_K) -> torch.Tensor:
  """Andrychowicz et al. (2016, §3.2): [...] gradients → [..., 2].

  g ↦ (log|g| / k, sign(g)) if |g| ≥ e^{−k}, (−1, e^k · g) otherwise.
  """
  a = g.abs()
  big = a >= math.exp(-k)
  log_part = torch.where(big, torch.log(a.clamp(min=math.exp(-k))) / k, torch.full_like(g, -1.0))
  sign_part = torch.where(big, torch.sign(g), math.exp(k) * g)
  return torch.stack([log_part, sign_part], dim=-1)


# --------------------------------------------------------------------------- the conv nets u and b


def _pooled(n: int) -> int:
  return n if n == 1 else -(-n // 2)


def net_shapes(image_shape, filters: int, num_blocks: int, hidden: int, num_outputs: int | None) -> dict:
  """Parameter shapes: conv{b} [F, C_in, 3, 3] (PyTorch layout), fc1 [D, hidden],
  fc2 [hidden, num_outputs]; the same sizes as memjax's ``net_shapes``."""
  h, w, c = image_shape
  shapes = {}
  for b in range(num_blocks):
    shapes[f"conv{b}"] = (filters, c if b == 0 else filters, 3, 3)
    h, w = _pooled(h), _pooled(w)
  shapes["fc1"] = (h * w * (filters if num_blocks else c), hidden)
  if num_outputs is not None:
    shapes["fc2"] = (hidden, num_outputs)
  return shapes


def _fan_in(shape) -> int:
  return math.prod(shape[1:]) if len(shape) == 4 else shape[0]


def he_scale(name: str, shape) -> float:
  """sqrt(2 / fan_in) for ReLU layers, sqrt(1 / fan_in) for the logits layer fc2."""
  return math.sqrt((1.0 if name == "fc2" else 2.0) / _fan_in(shape))


def init_conv_net(shapes: dict) -> nn.ParameterDict:
  """He-normal kernels (LeCun-normal for fc2), no biases."""
  return nn.ParameterDict({name: nn.Parameter(he_scale(name, s) * torch.randn(s))
                           for name, s in sorted(shapes.items())})


class Mixed:
  """Retrieved fast weights of one layer, Σ_i a_i values[i], left unmixed.

  values: [S, *layer shape] (memory M); weights: [B, S] attention of each query.
  """

  def __init__(self, values: torch.Tensor, weights: torch.Tensor):
    self.values = values
    self.weights = weights


def _conv(h: torch.Tensor, kernel) -> torch.Tensor:
  """3×3 'SAME' convolution of h [B, C, H, W]; kernel [F, C, 3, 3] or :class:`Mixed`."""
  if not isinstance(kernel, Mixed):
    return F.conv2d(h, kernel, padding=1)
  s, f = kernel.values.shape[:2]
  y = F.conv2d(h, kernel.values.reshape(s * f, *kernel.values.shape[2:]), padding=1)
  y = y.reshape(h.shape[0], s, f, *y.shape[2:])
  return torch.einsum("bsfhw,bs->bfhw", y, kernel.weights)


def _max_pool(h: torch.Tensor) -> torch.Tensor:
  """2×2 stride-2 max-pool with 'SAME' padding (ceil mode); an axis of size 1 is kept."""
  k = (min(h.shape[2], 2), min(h.shape[3], 2))
  return F.max_pool2d(h, k, k, ceil_mode=True)


def _linear(h: torch.Tensor, slow, fast, name: str):
  """(h W, h W*) for one FC layer; W* plain [D, O], :class:`Mixed`, or absent."""
  fw = None if fast is None else fast.get(name)
  if fw is None:
    return h @ slow[name], None
  if isinstance(fw, Mixed):
    mixed = torch.einsum("bs,sdo->bdo", fw.weights, fw.values)  # per-query W*
    return h @ slow[name], torch.bmm(h.unsqueeze(1), mixed).squeeze(1)
  return h @ slow[name], h @ fw


def conv_features(slow, fast, x: torch.Tensor) -> torch.Tensor:
  """h_b = maxpool(ReLU(conv(h_{b−1}, slow_b)) + ReLU(conv(h_{b−1}, fast_b))); x [B, C, H, W] → [B, D]."""
  h = x
  b = 0
  while f"conv{b}" in slow:
    name = f"conv{b}"
    y = F.relu(_conv(h, slow[name]))
    fw = None if fast is None else fast.get(name)
    if fw is not None:
      y = y + F.relu(_conv(h, fw))
    h = _max_pool(y)
    b += 1
  return h.flatten(1)


def net_logits(slow, fast, x: torch.Tensor) -> torch.Tensor:
  """b(W, W*, x): h = ReLU(f W_1) + ReLU(f W*_1); logits = h W_2 + h W*_2. [B, C, H, W] → [B, N]."""
  s, f = _linear(conv_features(slow, fast, x), slow, fast, "fc1")
  h = F.relu(s) if f is None else F.relu(s) + F.relu(f)
  s, f = _linear(h, slow, fast, "fc2")
  return s if f is None else s + f


def embed(slow, fast, x: torch.Tensor) -> torch.Tensor:
  """u(Q, Q*, x): r = f Q_1 + f Q*_1 (linear). [B, C, H, W] → [B, hidden]."""
  s, f = _linear(conv_features(slow, fast, x), slow, fast, "fc1")
  return s if f is None else s + f


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
  """[A, D], [B, D] → [A, B] cosine similarities, ‖x‖ = sqrt(Σ x² + EPS) (Graves et al. eq. 6)."""
  na = torch.sqrt((a * a).sum(-1) + EPS)
  nb = torch.sqrt((b * b).sum(-1) + EPS)
  return (a @ b.T) / (na[:, None] * nb[None, :])


def _bounded(r: torch.Tensor) -> torch.Tensor:
  """r / max(1, max_i |r_i|) per row, the divisor without gradient (as memjax)."""
  return r / r.detach().abs().amax(-1, keepdim=True).clamp(min=1.0)


# --------------------------------------------------------------------------- the meta learners m and d


class CoordinateMLP(nn.Module):
  """m: a coordinate-wise MLP 2→h→h→1 (ReLU hidden layers), [P, 2] → [P]."""

  def __init__(self, hidden: int = 20):
    super().__init__()
    self.net = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                             nn.Linear(hidden, 1))
    linears = [m for m in self.net if isinstance(m, nn.Linear)]
    for i, lin in enumerate(linears):
      std = META_OUT_INIT_STD if i == len(linears) - 1 else 1.0 / math.sqrt(lin.in_features)
      nn.init.normal_(lin.weight, std=std)
      nn.init.zeros_(lin.bias)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.net(x)[..., 0]


class CoordinateLSTM(nn.Module):
  """d: a coordinate-wise LSTM over T steps, [T, P, 2] → [P] (read-out of h_T).

  i, f, g, o = σ, σ, tanh, σ of (x_t W_x + h_{t−1} W_h + b); c_t = f c_{t−1} + i g;
  h_t = o tanh(c_t); output = h_T w_out + b_out.
  """

  def __init__(self, hidden: int = 20):
    super().__init__()
    self.hidden = hidden
    self.cell = nn.LSTMCell(2, hidden)
    self.out = nn.Linear(hidden, 1)
    with torch.no_grad():
      nn.init.normal_(self.cell.weight_ih, std=1.0 / math.sqrt(2))
      nn.init.normal_(self.cell.weight_hh, std=1.0 / math.sqrt(hidden))
      self.cell.bias_ih.zero_()
      self.cell.bias_ih[hidden:2 * hidden] = 1.0  # forget gate
      self.cell.bias_hh.zero_()
      nn.init.normal_(self.out.weight, std=META_OUT_INIT_STD)
      self.out.bias.zero_()

  def forward(self, xs: torch.Tensor) -> torch.Tensor:
    h = xs.new_zeros(xs.shape[1], self.hidden)
    c = xs.new_zeros(xs.shape[1], self.hidden)
    for t in range(xs.shape[0]):  # Python loop over the T chunks
      h, c = self.cell(xs[t], (h, c))
    return self.out(h)[:, 0]


def _layer_groups(names, fast_layers: str) -> dict:
  groups = {"fc": sorted(n for n in names if n.startswith("fc"))}
  if fast_layers == "all":
    groups["conv"] = sorted(n for n in names if n.startswith("conv"))
  return {g: v for g, v in groups.items() if v}


def _generate(net: nn.Module, grads: dict, names, shapes: dict, lead: tuple = ()) -> dict:
  """Fast weights of the layers ``names`` from their gradients: ravel, preprocess,
  apply the coordinate-wise net, unravel, scale each layer by its He scale."""
  flat = torch.cat([grads[n].reshape(*lead, -1) for n in names], dim=-1)
  out = net(preprocess_gradients(flat))
  fast, i = {}, 0
  for n in names:
    size = math.prod(shapes[n])
    fast[n] = he_scale(n, shapes[n]) * out[..., i:i + size].reshape(*shapes[n])
    i += size
  return fast


# --------------------------------------------------------------------------- the model


class MetaNet(nn.Module):
  """Meta Networks for N-way classification of one episode (memjax's defaults).

  ``forward(support [S, C, H, W], support_labels [S] int64, query [Q, C, H, W]) -> logits [Q, N]``.
  """

  def __init__(self, num_classes: int = 5, image_shape=(28, 28, 1), filters: int = 64, num_blocks: int = 5,
               hidden: int = 64, meta_hidden: int = 20, num_chunks: int = 5, contrastive_scale: float = 5.0,
               fast_layers: str = "all"):
    super().__init__()
    if fast_layers not in FAST_LAYERS:
      raise ValueError(f"argument `fast_layers`: expected one of {FAST_LAYERS}, got {fast_layers!r}")
    self.num_classes = num_classes
    self.num_chunks = num_chunks
    self.contrastive_scale = contrastive_scale
    base_shapes = net_shapes(image_shape, filters, num_blocks, hidden, num_classes)
    emb_shapes = net_shapes(image_shape, filters, num_blocks, hidden, None)
    self.base = init_conv_net(base_shapes)        # W
    self.embedding = init_conv_net(emb_shapes)    # Q
    self.groups_base = _layer_groups(base_shapes, fast_layers)
    self.groups_emb = _layer_groups(emb_shapes, fast_layers)
    self.meta_example = nn.ModuleDict({g: CoordinateMLP(meta_hidden) for g in self.groups_base})  # Z
    self.meta_task = nn.ModuleDict({g: CoordinateLSTM(meta_hidden) for g in self.groups_emb})     # G

  def _shapes(self, params) -> dict:
    return {n: tuple(p.shape) for n, p in params.items()}

  def task_fast_weights(self, sx: torch.Tensor, sy: torch.Tensor) -> dict:
    """Q* = d(G, ∇_1..∇_T), ∇_t = mean over chunk t of ∇_Q L_i (contrastive pair loss).

    One ``autograd.grad`` per support pair, in a Python loop; detached (first order).
    """
    q = self.embedding
    names = list(q.keys())
    s = sx.shape[0]
    partner = [(i + 1) % s for i in range(s)]
    t = min(self.num_chunks, s)
    chunk = [(i * t) // s for i in range(s)]
    sums = [None] * t
    counts = [0] * t
    for i in range(s):
      r = _bounded(embed(q, None, sx[[i, partner[i]]]))  # [2, hidden]
      logit = self.contrastive_scale * cosine(r[:1], r[1:])[0, 0]
      loss = F.softplus(-logit) if bool(sy[i] == sy[partner[i]]) else F.softplus(logit)
      grads = torch.autograd.grad(loss, [q[n] for n in names])
      c = chunk[i]
      sums[c] = list(grads) if sums[c] is None else [a + g for a, g in zip(sums[c], grads)]
      counts[c] += 1
    chunk_grads = {n: torch.stack([sums[c][j] / counts[c] for c in range(t)]) for j, n in enumerate(names)}
    shapes = self._shapes(q)
    fast = {}
    for group, gnames in self.groups_emb.items():
      fast.update(_generate(self.meta_task[group], chunk_grads, gnames, shapes, lead=(t,)))
    return fast

  def example_fast_weights(self, sx: torch.Tensor, sy: torch.Tensor) -> dict:
    """M[i] = W*_i = m(Z, ∇_W L_task(b(W, x'_i), y'_i)), one ``autograd.grad`` per support
    example in a Python loop; returns {layer: [S, *shape]}."""
    w = self.base
    names = list(w.keys())
    shapes = self._shapes(w)
    values = {n: [] for g in self.groups_base.values() for n in g}
    for i in range(sx.shape[0]):
      loss = F.cross_entropy(net_logits(w, None, sx[i:i + 1]), sy[i:i + 1])
      grads = dict(zip(names, torch.autograd.grad(loss, [w[n] for n in names])))
      for group, gnames in self.groups_base.items():
        for n, v in _generate(self.meta_example[group], grads, gnames, shapes).items():
          values[n].append(v)
    return {n: torch.stack(v) for n, v in values.items()}

  def forward(self, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor) -> torch.Tensor:
    task_fast = self.task_fast_weights(sx, sy)
    keys = embed(self.embedding, task_fast, sx)            # R: [S, hidden]
    values = self.example_fast_weights(sx, sy)             # M: {layer: [S, ...]}
    r = embed(self.embedding, task_fast, qx)               # [Q, hidden]
    a = F.softmax(cosine(r, keys), dim=-1)                 # [Q, S]
    return net_logits(self.base, {n: Mixed(v, a) for n, v in values.items()}, qx)


def random_episode(num_classes: int = 5, num_support: int = 1, num_query: int = 10, image_shape=(28, 28, 1),
                 generator=None):
  """A synthetic N-way episode of uniform random images (NCHW):
  ``(support [N·K, C, H, W], support_labels [N·K], query [N·Q, C, H, W], query_labels [N·Q])``."""
  h, w, c = image_shape
  sy = torch.arange(num_classes).repeat_interleave(num_support)
  sy = sy[torch.randperm(sy.numel(), generator=generator)]
  sx = torch.rand(num_classes * num_support, c, h, w, generator=generator)
  qx = torch.rand(num_classes * num_query, c, h, w, generator=generator)
  qy = torch.arange(num_classes).repeat_interleave(num_query)
  return sx, sy, qx, qy


class Trainer:
  """The reference's training step: one fresh episode, forward, backward, clip ±10, Adam 1e-3."""

  def __init__(self, num_classes: int = 5, num_support: int = 1, num_query: int = 10, seed: int = 0,
               lr: float = 1e-3, clip: float = 10.0, **model_kwargs):
    torch.manual_seed(seed)
    self.num_classes, self.num_support, self.num_query = num_classes, num_support, num_query
    self.clip = clip
    self.model = MetaNet(num_classes, **model_kwargs)
    self.image_shape = tuple(model_kwargs.get("image_shape", (28, 28, 1)))
    self.opt = torch.optim.Adam(self.model.parameters(), lr=lr)
    self.generator = torch.Generator().manual_seed(seed)

  def step(self) -> float:
    sx, sy, qx, qy = random_episode(self.num_classes, self.num_support, self.num_query, self.image_shape,
                                    self.generator)
    self.opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(self.model(sx, sy, qx), qy)
    loss.backward()
    torch.nn.utils.clip_grad_value_(self.model.parameters(), self.clip)
    self.opt.step()
    return loss.item()


def num_parameters(model: nn.Module) -> int:
  return sum(p.numel() for p in model.parameters())
