"""Tasks: what a model is asked to do and how it is scored.

* :mod:`memjax.tasks.algorithmic` — copy, repeat copy, associative recall
  (Graves et al. 2014), built on device from a PRNG key;
* :mod:`memjax.tasks.omniglot` — the one-shot Omniglot task of Santoro et al.
  2016: label formats, the loss and per-instance accuracy.
"""

from memjax.tasks.algorithmic import (
    Batch,
    associative_recall,
    associative_recall_length,
    copy,
    copy_length,
    repeat_copy,
    repeat_copy_length,
    sequence_loss,
)
from memjax.tasks import algorithmic, omniglot

# name -> (sampler, number of input channels given num_bits, number of target channels)
TASKS = {
    "copy": (copy, lambda bits: bits + 1, lambda bits: bits),
    "repeat_copy": (repeat_copy, lambda bits: bits + 2, lambda bits: bits + 1),
    "associative_recall": (associative_recall, lambda bits: bits + 2, lambda bits: bits),
}

__all__ = ["Batch", "TASKS", "algorithmic", "associative_recall", "associative_recall_length", "copy",
           "copy_length", "omniglot", "repeat_copy", "repeat_copy_length", "sequence_loss"]
