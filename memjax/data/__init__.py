"""Data: the Omniglot loader and on-device episode samplers."""

from __future__ import annotations

from memjax.data import episodes, omniglot
from memjax.data.episodes import (
    FewShotEpisode,
    MANNEpisode,
    encode_labels,
    label_dim,
    sample_few_shot,
    sample_mann_episodes,
)
from memjax.data.omniglot import (
    OmniglotSplit,
    download_archive,
    list_characters,
    load,
    preprocess,
    resolve_data_dir,
)

__all__ = [
    "FewShotEpisode",
    "MANNEpisode",
    "OmniglotSplit",
    "download_archive",
    "encode_labels",
    "episodes",
    "label_dim",
    "list_characters",
    "load",
    "omniglot",
    "preprocess",
    "resolve_data_dir",
    "sample_few_shot",
    "sample_mann_episodes",
]
