"""Meta Networks (Munkhdalai & Yu 2017, ICML, arXiv:1703.00837) as a Flax module.

MetaNet classifies the queries of one N-way episode from its labelled support
set. It has four parts, each written here as a pure function of an explicit
parameter pytree, so that meta information can be computed with ``jax.grad``
inside the forward pass:

* the embedding function u (the paper's dynamic representation learning
  function): a conv net with slow weights Q and task-level fast weights Q*;
* the base learner b: a conv net with slow weights W and example-level fast
  weights W*_i, one set per support example;
* the meta learner d (slow weights G), a coordinate-wise LSTM that turns the
  embedding loss gradients of the support set into Q*;
* the meta learner m (slow weights Z), a coordinate-wise MLP 2→20→20→1 that
  turns each support example's base-learner loss gradient into W*_i.

One forward pass (the paper's Algorithm 1, one-shot supervised learning)::

  for chunk t = 1..T of the support set:                        (meta info of u)
    ∇_t = ∇_Q L_emb(u(Q, ·), chunk t)
  Q* = d(G, ∇_1..∇_T)                                            (task-level)
  for every support example i:                                  (meta info of b)
    ∇_i = ∇_W L_task(b(W, x'_i), y'_i)
    W*_i = m(Z, ∇_i);  M[i] = W*_i                               (value memory)
    r'_i = u(Q, Q*, x'_i);  R[i] = r'_i                          (key memory)
  for every query x:
    r = u(Q, Q*, x)
    a = softmax_i cos(R[i], r)                                   (attention)
    W* = Σ_i a_i M[i]                                            (retrieval)
    logits = b(W, W*, x)
  loss = Σ_queries L_task(logits, y)

Gradients are fed to d and m preprocessed as in Andrychowicz et al. (2016),
k = 7 (:func:`memjax.metanet.meta_learners.preprocess_gradients`),
coordinate-wise: every parameter is one "example" of the small meta nets,
with weights shared across coordinates (one net for the conv kernels and one
for the FC matrices, as in the authors' code). Per-example gradients are
``jax.vmap(jax.grad(loss))`` over the support set — no Python loop over
examples.

Layer augmentation (§3.3): every layer outputs ReLU(slow branch) + ReLU(fast
branch); the logits layer outputs slow + fast, and so does the embedding's
representation layer (FC-64, linear as in the authors' code, so that cosine
similarities can be negative).

First order by default: the meta information (the gradients) is put under
``jax.lax.stop_gradient``, as in the paper, so training does not differentiate
through ``jax.grad``; ``second_order=True`` differentiates through it
(Hessian-vector products).

Choices where the paper leaves room, or where this differs (the defaults follow
the authors' Omniglot model — 28×28×1 inputs, 5 conv blocks of 64 3×3 filters,
ReLU and 2×2 max-pooling, then FC 64 and FC N, no biases — with fast weights on
*all* layers of both nets, as the authors' "MetaNetFull"):

* Representation loss (``embedding_loss``). ``'auto'`` (default) is the
  paper's choice (§3.1) and the authors' code: when the support set has one
  example per class (S = N, 1-shot) it is ``'cross_entropy'``, the softmax
  cross-entropy of the embedding net's own FC-N classifier head on
  ReLU(u(Q, x'_i)); otherwise ``'contrastive'``. ``'contrastive'`` is the
  paper's pair loss L_i = loss_emb(u(Q, x'_{1,i}), u(Q, x'_{2,i}), l_i),
  l_i = 1 for a same-class pair: the pairs are (x'_i, x'_{(i+1) mod S}) of the
  (shuffled) support set, and loss_emb is binary cross-entropy on
  s · cos(r_1, r_2), s = ``contrastive_scale`` (in 1-shot episodes every pair
  is a negative pair).
* Chunks. The support pairs (or examples) are split into T = ``num_chunks``
  consecutive chunks (T = 5 as in the authors' code, at most S); ∇_t is the
  gradient of the chunk's mean loss; d runs over ∇_1..∇_T and Q* is its output
  at the last step.
* Scale of the fast weights. The fast weights are the meta learners' raw
  outputs, W*_i = m(∇_i) and Q* = d(∇_1..∇_T), as in the authors' code (no
  per-layer rescaling). The output layers of m and d that emit FC fast weights
  start as Chainer's default ``Linear`` (LeCun normal, std 1/√20), as the
  authors'; those that emit conv fast weights start small
  (std ``_CONV_META_OUT_STD`` = 1e-3): a coordinate-wise net maps the many
  near-zero gradient coordinates of a kernel to nearly the same value c, and a
  3×3×64 kernel of constant c multiplies a non-negative input by ~576 c per
  layer, so with Chainer's init the five blocks' activations explode at the
  start of training (logits ×300 at initialisation, measured). At
  initialisation the fast part of the logits then spreads over the classes
  about as much as the slow part (tested), instead of ~1000× less. With plain
  Adam at lr 1e-3 that small read-out moves by its own std per update: in the
  shipped models m_conv's outputs turned negative for every gradient within
  the first updates, and the conv fast weights are inert (ReLU of negative
  kernels on non-negative inputs). ``conv_meta_out_std`` sets that std, and
  ``meta_learners.meta_out_mask`` / ``meta_out_lr_scale`` scale that layer's
  steps (``--conv-meta-out-std`` / ``--conv-meta-lr-scale`` of
  ``experiments/omniglot_metanet.py``; README, "Known limitation").
* N-way training, K-way testing (§4.2.1, Table 4; ``fast_only_output``). With
  ``fast_only_output=True`` the base learner's softmax layer is parameterised
  by fast weights only: logits = h W*_{fc2}, and any slow ``fc2`` weights in the
  variables are ignored, so a model trained on N-way episodes is applied to
  K-way episodes by building it with ``num_classes=K``. The meta information
  of that layer is its support-loss gradient at its slow weights, which are
  zero: ∇_i = h_i ⊗ (softmax(0) − e_{y'_i}) = h_i ⊗ (1/K − e_{y'_i}). Through a
  zero layer the layers below would get zero gradients, so their meta
  information is taken with the layer set to V = Σ_i h_i ⊗ (e_{y'_i} − 1/K)
  (one gradient step from zero on the support set's summed loss, under
  stop_gradient); the embedding net's cross-entropy head (used only by the
  representation loss) is replaced by the same V of its own features.
* ``fast_layers='fc'`` restricts fast weights to the FC layers of both nets.
  Measured on 2 shared CPU cores, one 5-way episode (50 queries) per update
  takes ~5–6 s with ``'all'`` and ~1.2 s with ``'fc'``; with ``'all'`` about
  40% of it is d, the LSTM over the embedding net's 148k conv coordinates.
* A query's retrieved conv fast weights are never materialised per query
  (:class:`memjax.metanet.layers.MixedWeights`): XLA turns per-example
  kernels into grouped convolutions, whose gradient is ~20× slower on CPU.
* With ``use_example_fast_weights=False`` the base learner has no route to the
  support set, and its output is the slow network's: the embedding net (and
  its task-level fast weights) then does not affect the logits.

Example::

  model = MetaNet(num_classes=5)
  params = model.init(key, support, support_labels, query)
  logits = model.apply(params, support, support_labels, query)   # [Q, 5]
  # the 5-way-trained variables on a 20-way episode (fast-only softmax layer)
  MetaNet(num_classes=20, fast_only_output=True).apply(params, s20, l20, q20)  # [Q, 20]
  # a batch of episodes: vmap at the call site
  jax.vmap(model.apply, in_axes=(None, 0, 0, 0))(params, S, SL, QX)

The package's parts, each function with its shapes and paper equation:

* :mod:`memjax.metanet.layers` — the conv nets u and b as pure functions
  (layer augmentation, :class:`~memjax.metanet.layers.MixedWeights`);
* :mod:`memjax.metanet.meta_learners` — the meta information (per-example
  support gradients), gradient preprocessing, the coordinate-wise MLP m and
  LSTM d, fast-weight generation;
* :mod:`memjax.metanet.memory` — the example-level memory read, softmax of
  cosine similarities;
* :mod:`memjax.metanet.module` — the :class:`MetaNet` Flax module;
* :mod:`memjax.metanet.omniglot` — a run configuration's model
  (:func:`build_model`) and the training loss on sampled episodes
  (:func:`episode_loss`).
"""

from memjax.metanet.module import EMBEDDING_LOSSES, FAST_LAYERS, MetaNet
from memjax.metanet.omniglot import ABLATIONS, build_model, episode_loss

__all__ = ["ABLATIONS", "EMBEDDING_LOSSES", "FAST_LAYERS", "MetaNet", "build_model", "episode_loss"]
