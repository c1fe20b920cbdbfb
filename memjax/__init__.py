"""memjax: memory-augmented neural networks in JAX/Flax.

* :mod:`memjax.addressing` — NTM and LRUA addressing, pure single-example functions.
* :mod:`memjax.memory` — read, erase/add write, LRUA write.
* :class:`memjax.NTMCell` — the Neural Turing Machine as a ``flax.linen`` RNN cell.
* :class:`memjax.MANNCell` — MANN with LRUA memory (Santoro et al. 2016).
* :class:`memjax.MetaNet` — Meta Networks (Munkhdalai & Yu 2017).
* :mod:`memjax.tasks` — copy, repeat copy, associative recall, built on device.
* :mod:`memjax.training` — one generic optax/orbax training loop.
* :mod:`memjax.data` — Omniglot loading and on-device episode samplers.
"""

from memjax import addressing, data, mann, memory, metanet, tasks, training
from memjax.mann import LSTMCell, MANNCell, MANNState
from memjax.metanet import MetaNet
from memjax.ntm import NTMCell, NTMState, trajectory

__version__ = "0.1.0"

__all__ = ["LSTMCell", "MANNCell", "MANNState", "MetaNet", "NTMCell", "NTMState", "addressing", "data",
           "mann", "memory", "metanet", "tasks", "training", "trajectory"]
