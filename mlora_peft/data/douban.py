"""Douban ratings with the product line (`book`, `movie`, `music`) in column `domain` as the domain."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Union

from .loading import MultiDomainData, SplitSpec, load_multidomain
from .sources import read_files
from .splits import DEFAULT_FRACTIONS

SPARSE = ("user_id", "item_id", "living_place")


def load_douban(
    path: Union[str, os.PathLike, Sequence],
    label: str = "rating",
    *,
    split: SplitSpec = DEFAULT_FRACTIONS,
    seed: int = 0,
    embedding_dim: int = 8,
) -> MultiDomainData:
    """Douban from CSV file(s) with `user_id, item_id, rating, domain, living_place, ...`.

    Args:
        path: CSV file(s).
        label: a 0/1 column, or a rule such as `"rating>=4"` when ratings are 1-5.
        split: per-domain stratified fractions or a `TimeSplit`.
        seed: split seed.
        embedding_dim: embedding width in the feature spec.

    Returns:
        A `MultiDomainData` with domains book, movie and music (those present).

    Example:
        >>> load_douban("../shared/data/samples/douban_sample.csv").domain_names  # doctest: +SKIP
        ('book', 'movie', 'music')
    """
    table = read_files(path)
    return load_multidomain(table, label=label, domain="domain", sparse=[c for c in SPARSE if c in table.column_names],
                            dense=[], split=split, seed=seed, embedding_dim=embedding_dim)
