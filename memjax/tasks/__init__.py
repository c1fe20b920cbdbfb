"""Tasks: algorithmic sequence tasks of Graves et al. 2014 (copy, repeat copy, associative recall)."""

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

# name -> (sampler, number of input channels given num_bits, number of target channels)
TASKS = {
    "copy": (copy, lambda bits: bits + 1, lambda bits: bits),
    "repeat_copy": (repeat_copy, lambda bits: bits + 2, lambda bits: bits + 1),
    "associative_recall": (associative_recall, lambda bits: bits + 2, lambda bits: bits),
}

__all__ = ["Batch", "TASKS", "associative_recall", "associative_recall_length", "copy", "copy_length",
           "repeat_copy", "repeat_copy_length",
           "sequence_loss"]
