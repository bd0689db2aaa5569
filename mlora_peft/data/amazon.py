"""Amazon review 5-core categories as domains, with sampled negatives (the MLoRA / MAMDR recipe).

Reads, per category, either the official JSON-lines file (`reviews_<Category>_5.json[.gz]`,
one review per line with `reviewerID` and `asin`; 2018 files are named `<Category>_5.json.gz`)
or an interaction CSV (`<Category>.csv[.gz]` with `reviewerID, asin, ...`; a
`<Category>_with_time.csv[.gz]` is used only when the plain CSV is absent). Every review is a
positive; negatives follow `with_sampled_negatives`. Users are shared across categories.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Union

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json

from .loading import MultiDomainData, SplitSpec, load_multidomain
from .negatives import DEFAULT_RATIO_RANGE, with_sampled_negatives
from .splits import DEFAULT_FRACTIONS

_PATTERNS = (  # (regex on the file name, priority: lower wins for the same category); first match counts
    (re.compile(r"^(?P<category>.+?)_with_time\.csv(\.gz)?$"), 1),
    (re.compile(r"^(?P<category>.+?)\.csv(\.gz)?$"), 0),
    (re.compile(r"^reviews_(?P<category>.+?)_5\.json(\.gz)?$"), 0),
    (re.compile(r"^(?P<category>.+?)_5\.json(\.gz)?$"), 0),
)
_ID_SCHEMA = pa.schema([("reviewerID", pa.string()), ("asin", pa.string())])


def amazon_files(path: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]) -> dict[str, Path]:
    """Category name -> file, from a folder or a list of files.

    Raises:
        FileNotFoundError: no Amazon file found.

    Example:
        >>> amazon_files(["reviews_Musical_Instruments_5.json.gz", "Office_Products.csv.gz"])  # doctest: +SKIP
        {'Musical_Instruments': PosixPath('reviews_Musical_Instruments_5.json.gz'), 'Office_Products': ...}
    """
    files = sorted(Path(path).iterdir()) if isinstance(path, (str, os.PathLike)) else [Path(p) for p in path]
    found: dict[str, tuple[int, Path]] = {}
    for file in files:
        match = _match(file.name)
        if match is not None:
            category, priority = match
            if category not in found or priority < found[category][0]:
                found[category] = (priority, file)
    if not found:
        raise FileNotFoundError(
            f"No Amazon review files in {path}; expected <Category>.csv.gz or reviews_<Category>_5.json.gz."
        )
    return {category: file for category, (_, file) in sorted(found.items())}


def read_amazon(path: Union[str, os.PathLike, Sequence], categories: Optional[Sequence[str]] = None) -> pa.Table:
    """Positive interactions: `user` (reviewerID), `item` (asin) and `category`, one row per review.

    Args:
        path: a folder of category files, or a list of files.
        categories: categories to read (default: every one found).

    Returns:
        A pyarrow Table in category order.

    Raises:
        ValueError: a requested category without a file.

    Example:
        >>> read_amazon("../shared/data/amazon-2014-5core", ["Office_Products"]).num_rows  # doctest: +SKIP
        53258
    """
    files = amazon_files(path)
    wanted = list(files) if categories is None else list(categories)
    missing = [c for c in wanted if c not in files]
    if missing:
        raise ValueError(f"No file for categories {missing}; found {sorted(files)}.")
    tables = []
    for category in wanted:
        ids = _read_ids(files[category])
        tables.append(pa.table({"user": ids.column("reviewerID"), "item": ids.column("asin"),
                                "category": pa.array([category] * ids.num_rows)}))
    return pa.concat_tables(tables)


def load_amazon(
    path: Union[str, os.PathLike, Sequence],
    categories: Optional[Sequence[str]] = None,
    *,
    seed: int = 0,
    ratio_range: Sequence[float] = DEFAULT_RATIO_RANGE,
    split: SplitSpec = DEFAULT_FRACTIONS,
    embedding_dim: int = 8,
    user_fraction: float = 1.0,
) -> MultiDomainData:
    """Amazon categories as domains; features user and item ids.

    Args:
        path: a folder of category files, or a list of files.
        categories: the categories to use (default: every one found), e.g. `["Office_Products"]`.
        seed: fixes the negatives and the split.
        ratio_range: r's range; each category gets about #positives / r negatives.
        split: per-domain stratified fractions (60/20/20 by default).
        embedding_dim: embedding width in the feature spec.
        user_fraction: keep the interactions of a seeded random share of the users (see `subsample_users`).

    Returns:
        A `MultiDomainData` whose domains are the category names in ascending order.

    Example:
        >>> data = load_amazon("../shared/data/amazon-2014-5core")  # doctest: +SKIP
        >>> len(data.domain_names)  # doctest: +SKIP
        6
    """
    interactions, _ = amazon_interactions(path, categories, seed=seed, ratio_range=ratio_range,
                                          user_fraction=user_fraction)
    return load_multidomain(interactions, label="label", domain="category", sparse=["user", "item"], dense=[],
                            split=split, seed=seed, embedding_dim=embedding_dim)


def amazon_interactions(
    path: Union[str, os.PathLike, Sequence],
    categories: Optional[Sequence[str]] = None,
    *,
    seed: int = 0,
    ratio_range: Sequence[float] = DEFAULT_RATIO_RANGE,
    user_fraction: float = 1.0,
) -> tuple[pa.Table, dict[str, float]]:
    """The raw rows `load_amazon` encodes, before splitting and encoding.

    Args:
        path: a folder of category files, or a list of files.
        categories: categories to use (default: every one found).
        seed: fixes r per category and the sampled items.
        ratio_range: r's range.
        user_fraction: keep a seeded random share of the users (see `subsample_users`).

    Returns:
        (table with user, item, category and label; category -> r).

    Example:
        >>> rows, ratios = amazon_interactions("../shared/data/amazon-2014-5core")  # doctest: +SKIP
        >>> sorted(ratios)[:2]  # doctest: +SKIP
        ['Musical_Instruments', 'Office_Products']
    """
    positives = subsample_users(read_amazon(path, categories), user_fraction, seed)
    return with_sampled_negatives(positives, user="user", item="item", domain="category", seed=seed,
                                  ratio_range=ratio_range)


def subsample_users(positives: pa.Table, fraction: float, seed: int, user: str = "user") -> pa.Table:
    """The interactions of a seeded random `fraction` of the users (all of them when fraction >= 1).

    A user is kept or dropped by the seed and the user's id alone (each id gets its own draw from
    `(seed, hash of the id)`), so a user kept in one category's file is kept in every other category's
    file too, whichever files are read together.

    Example:
        >>> table = pa.table({"user": [f"u{i}" for i in range(1000)]})
        >>> 250 < subsample_users(table, 0.3, seed=0).num_rows < 350
        True
    """
    if fraction >= 1:
        return positives
    users = pc.unique(positives.column(user)).to_pylist()
    keep = [u for u in users if _draw(u, seed) < fraction]
    return positives.filter(pc.is_in(positives.column(user), value_set=pa.array(keep, pa.string())))


def _draw(value: str, seed: int) -> float:
    digest = hashlib.blake2b(f"{seed}:{value}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2 ** 64


def _match(name: str) -> Optional[tuple[str, int]]:
    for pattern, priority in _PATTERNS:
        match = pattern.match(name)
        if match is not None:
            return match["category"], priority
    return None


def _read_ids(file: Path) -> pa.Table:
    if ".json" in file.suffixes:
        options = pa_json.ParseOptions(explicit_schema=_ID_SCHEMA, unexpected_field_behavior="ignore")
        with pa.input_stream(str(file), compression="detect") as stream:
            return pa_json.read_json(stream, parse_options=options).select(["reviewerID", "asin"])
    options = pa_csv.ConvertOptions(include_columns=["reviewerID", "asin"],
                                    column_types={"reviewerID": pa.string(), "asin": pa.string()})
    return pa_csv.read_csv(file, convert_options=options)
