"""Pretrained memjax models: the trained weights behind the README's results tables.

    >>> import jax
    >>> from memjax import pretrained, tasks
    >>> "ntm-copy" in pretrained.available()
    True
    >>> model, variables, config = pretrained.load("ntm-copy")
    >>> model.apply(variables, tasks.copy(jax.random.key(0), 4).inputs).shape
    (4, 41, 8)

Each model is two files inside the package (``memjax/pretrained/models/``):
``NAME.npz`` — its variables as float32 arrays under ``"/"``-joined paths — and
``NAME.json`` — how to build the Flax module (class and attributes), the sha256
of the ``.npz`` (checked on every load), and what it reproduces: the paper's
table and row, the data split, image size, number of classes, the training
command, steps/episodes trained, the measured results, the date and the
hardware. :func:`available` lists only what is on disk; directories in
``$MEMJAX_PRETRAINED_PATH`` (``os.pathsep``-separated) are searched before the
package's, e.g. for models exported with :mod:`memjax.pretrained.export`.

Calling conventions:

* ``ntm-copy``: ``flax.linen.RNN(NTMCell(...))``; inputs ``[B, T, 9]`` as
  :func:`memjax.tasks.copy` builds them; logits ``[B, T, 8]``.
* ``mann-omniglot-5way``, ``lstm-omniglot-5way``, ``mann-omniglot-15way-string``:
  ``flax.linen.RNN(cell)``; inputs ``[B, T, image_size² + label_dim]`` (the
  flattened image and the previous step's encoded label, as
  :func:`memjax.data.sample_mann_episodes` builds them).
* ``metanet-omniglot-5way``, ``metanet-omniglot-20way``,
  ``metanet-omniglot-standard-20way``: a :class:`memjax.MetaNet`;
  ``model.apply(variables, support [S, 28, 28, 1], support_labels [S], query [Q, 28, 28, 1])``
  → ``[Q, N]``; ``load(name, num_classes=K)`` for K-way episodes.

Export a trained run into this format with
``python -m memjax.pretrained.export --workdir runs/X --name NAME --table TABLE``;
turn a model back into a run that its experiment's ``--resume`` continues with
``python -m memjax.pretrained.restore --name NAME --workdir runs/Y``.
"""

from memjax.pretrained._registry import (
    PATH_ENV,
    PACKAGE_DIR,
    Pretrained,
    PretrainedFileError,
    available,
    build_module,
    load,
    load_file,
    module_spec,
    path_of,
    record,
    save,
    search_path,
)

__all__ = [
    "PACKAGE_DIR",
    "PATH_ENV",
    "Pretrained",
    "PretrainedFileError",
    "available",
    "build_module",
    "load",
    "load_file",
    "module_spec",
    "path_of",
    "record",
    "save",
    "search_path",
]
