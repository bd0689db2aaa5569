"""AliExpress search logs with the country as the domain, one file pair per country.

Countries come as folders `AliExpress_NL/train.csv`, `AliExpress_NL/test.csv`, ... .

Each file has `search_id`, 16 categorical columns `categorical_1..16`, 63 numeric ones
`numerical_1..63` and the labels `click` and `conversion`. The provided test files are kept; a
quarter of each train file becomes validation (stratified per country and label).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, Union

import pyarrow as pa

from .loading import MultiDomainData, load_multidomain
from .sources import read_files

SPARSE = tuple(f"categorical_{i}" for i in range(1, 17))
DENSE = tuple(f"numerical_{i}" for i in range(1, 64))
PathLike = Union[str, os.PathLike]


def load_aliexpress(
    path: Union[PathLike, Mapping[str, Sequence[PathLike]]],
    label: Literal["click", "conversion"] = "click",
    *,
    seed: int = 0,
    embedding_dim: int = 8,
) -> MultiDomainData:
    """AliExpress countries as domains.

    Args:
        path: a folder of `AliExpress_<CC>` folders each with `train.csv` and `test.csv`, or a
            mapping country -> (train file, test file).
        label: `"click"` or `"conversion"`.
        seed: seed of the validation carve-out.
        embedding_dim: embedding width in the feature spec.

    Returns:
        A `MultiDomainData` whose domains are the country codes (ascending).

    Raises:
        ValueError: an unknown label, or a mapping entry that is not a (train, test) pair.
        FileNotFoundError: no country folders.

    Example:
        >>> data = load_aliexpress({"NL": ("nl/train.csv", "nl/test.csv")})  # doctest: +SKIP
        >>> data.domain_names  # doctest: +SKIP
        ('NL',)
    """
    if label not in ("click", "conversion"):
        raise ValueError(f"label={label!r}; AliExpress has 'click' and 'conversion'.")
    pairs = _country_files(path)
    splits: dict[str, list[pa.Table]] = {"train": [], "test": []}
    for country, files in pairs.items():
        for name, file in zip(("train", "test"), files):
            table = read_files(file)
            splits[name].append(table.append_column("country", pa.array([country] * table.num_rows)))
    tables = {name: pa.concat_tables(parts, promote_options="permissive") for name, parts in splits.items()}
    return load_multidomain(tables, label=label, domain="country", sparse=list(SPARSE), dense=list(DENSE),
                            split="provided", seed=seed, embedding_dim=embedding_dim)


def _country_files(path: Union[PathLike, Mapping[str, Sequence[PathLike]]]) -> dict[str, tuple[PathLike, PathLike]]:
    if isinstance(path, Mapping):
        pairs = {str(country): tuple(files) for country, files in path.items()}
        bad = [country for country, files in pairs.items() if len(files) != 2]
        if bad:
            raise ValueError(f"Countries {bad} need a (train file, test file) pair.")
        return pairs
    folders = sorted(p for p in Path(path).glob("AliExpress_*") if p.is_dir())
    if not folders:
        raise FileNotFoundError(
            f"No AliExpress_<country> folders in {path}; pass a folder or a country -> files mapping."
        )
    return {f.name.split("_", 1)[1]: (f / "train.csv", f / "test.csv") for f in folders}
