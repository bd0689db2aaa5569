"""Taobao cloud-theme clicks (Tianchi data set 9716) with themes as domains (Taobao-10/20/30).

Files in one folder: `theme_click_log.csv` (`user_id, theme_id, item_id, leaf_cate_id,
cate_level1_id, clk_cnt, reach_time`), optionally `theme_item_pool.csv` (`theme_id, item_id`,
the candidate items of each theme) and `user_embedding.csv` / `item_embedding.csv` (`user_id` or
`item_id`, then `emb`: space-separated floats).

Protocol (as in MAMDR's preprocessing): when the embedding files exist, clicks of users or items
without an embedding are dropped; the domains are the first N themes by first appearance in the
click log; every click is a positive; negatives are sampled per theme from its item pool (the
clicked items when there is no pool file) as in `with_sampled_negatives`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Union

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from .loading import MultiDomainData, SplitSpec, load_multidomain
from .negatives import DEFAULT_RATIO_RANGE, with_sampled_negatives
from .splits import DEFAULT_FRACTIONS

CLICK_FILE, POOL_FILE = "theme_click_log.csv", "theme_item_pool.csv"
USER_EMBEDDING_FILE, ITEM_EMBEDDING_FILE = "user_embedding.csv", "item_embedding.csv"


def load_taobao(
    path: Union[str, os.PathLike],
    num_themes: int = 10,
    *,
    seed: int = 0,
    ratio_range: Sequence[float] = DEFAULT_RATIO_RANGE,
    split: SplitSpec = DEFAULT_FRACTIONS,
    with_embeddings: bool = False,
    embedding_dim: int = 8,
) -> MultiDomainData:
    """Taobao-N: the first `num_themes` themes as domains; features user and item ids.

    Args:
        path: the folder with the Tianchi files.
        num_themes: N (10, 20 and 30 in MAMDR and MLoRA).
        seed: fixes the negatives and the split.
        ratio_range: r's range; each theme gets about #clicks / r negatives.
        split: per-domain stratified fractions (60/20/20 by default).
        with_embeddings: add the provided user and item embeddings as dense features
            `user_emb` and `item_emb` (needs the embedding files).
        embedding_dim: embedding width of the id features in the feature spec.

    Returns:
        A `MultiDomainData`; domain names are theme ids, in order of first appearance.

    Raises:
        FileNotFoundError: a missing click log, or missing embedding files with `with_embeddings`.
        ValueError: `num_themes` below 1 or above the themes available.

    Example:
        >>> data = load_taobao("raw_data", num_themes=10)  # doctest: +SKIP
        >>> data.num_domains  # doctest: +SKIP
        10
    """
    rows, _ = taobao_interactions(path, num_themes, seed=seed, ratio_range=ratio_range,
                                  with_embeddings=with_embeddings)
    themes = pc.unique(rows.column("theme")).to_pylist()  # positives come first, in theme order
    dense = ["user_emb", "item_emb"] if with_embeddings else []
    return load_multidomain(rows, label="label", domain="theme", sparse=["user", "item"], dense=dense, split=split,
                            seed=seed, domain_order=themes, embedding_dim=embedding_dim)


def taobao_interactions(
    path: Union[str, os.PathLike],
    num_themes: int = 10,
    *,
    seed: int = 0,
    ratio_range: Sequence[float] = DEFAULT_RATIO_RANGE,
    with_embeddings: bool = False,
) -> tuple[pa.Table, dict[int, float]]:
    """The raw rows `load_taobao` encodes, before splitting and encoding.

    Args:
        path, num_themes, seed, ratio_range, with_embeddings: as in `load_taobao`.

    Returns:
        (table with user, item, theme, label and, with embeddings, user_emb and item_emb;
        theme -> r).

    Raises:
        FileNotFoundError: a missing click log, or missing embedding files with `with_embeddings`.

    Example:
        >>> rows, ratios = taobao_interactions("raw_data", num_themes=10)  # doctest: +SKIP
        >>> len(ratios)  # doctest: +SKIP
        10
    """
    folder = Path(path)
    if not (folder / CLICK_FILE).is_file():
        raise FileNotFoundError(f"{folder / CLICK_FILE} is missing; pass the folder with the Tianchi 9716 files.")
    clicks = pa_csv.read_csv(folder / CLICK_FILE, convert_options=pa_csv.ConvertOptions(
        include_columns=["user_id", "theme_id", "item_id"]))
    embeddings = _embeddings(folder, required=with_embeddings)
    if embeddings is not None:
        (user_ids, _), (item_ids, _) = embeddings
        clicks = clicks.filter(pc.and_(pc.is_in(clicks.column("user_id"), value_set=user_ids),
                                       pc.is_in(clicks.column("item_id"), value_set=item_ids)))
    themes = first_themes(clicks.column("theme_id"), num_themes)
    theme_type = clicks.schema.field("theme_id").type
    clicks = clicks.filter(pc.is_in(clicks.column("theme_id"), value_set=pa.array(themes, theme_type)))
    positives = pa.table({"user": clicks.column("user_id"), "item": clicks.column("item_id"),
                          "theme": clicks.column("theme_id")})
    pools = _pools(folder, themes, None if embeddings is None else embeddings[1][0])
    rows, ratios = with_sampled_negatives(positives, user="user", item="item", domain="theme", seed=seed,
                                          ratio_range=ratio_range, item_pools=pools)
    if with_embeddings:
        for column, (ids, vectors) in zip(("user", "item"), embeddings):
            rows = rows.append_column(f"{column}_emb", vectors.take(pc.index_in(rows.column(column), value_set=ids)))
    return rows, ratios


def first_themes(theme_ids: Union[pa.Array, pa.ChunkedArray], count: int) -> list:
    """The first `count` distinct theme ids in order of first appearance.

    Args:
        theme_ids: the click log's theme column.
        count: how many themes.

    Returns:
        A list of theme ids.

    Raises:
        ValueError: `count` below 1 or above the number of themes.

    Example:
        >>> first_themes(pa.array([7, 3, 7, 9]), 2)
        [7, 3]
    """
    distinct = pc.unique(theme_ids).to_pylist()  # Arrow keeps first-appearance order
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= len(distinct):
        raise ValueError(f"num_themes={count!r} must be an int in [1, {len(distinct)}] (themes in the click log).")
    return distinct[:count]


def _pools(folder: Path, themes: list, embedded_items: Optional[pa.Array]) -> Optional[dict]:
    """Theme -> candidate items from the pool file (items with embeddings only, when known)."""
    if not (folder / POOL_FILE).is_file():
        return None
    columns = pa_csv.ConvertOptions(include_columns=["theme_id", "item_id"])
    pool = pa_csv.read_csv(folder / POOL_FILE, convert_options=columns)
    if embedded_items is not None:
        pool = pool.filter(pc.is_in(pool.column("item_id"), value_set=embedded_items))
    theme_column = pool.column("theme_id").to_numpy()
    items = pool.column("item_id").to_numpy()
    return {theme: items[theme_column == theme] for theme in themes}


def _embeddings(folder: Path, required: bool) -> Optional[tuple[tuple[pa.Array, pa.Array], ...]]:
    """((user ids, user vectors), (item ids, item vectors)), or None when the files are absent."""
    files = [folder / USER_EMBEDDING_FILE, folder / ITEM_EMBEDDING_FILE]
    if not all(f.is_file() for f in files):
        if required:
            raise FileNotFoundError(
                f"with_embeddings=True needs {USER_EMBEDDING_FILE} and {ITEM_EMBEDDING_FILE} in {folder}."
            )
        return None
    return tuple(_read_embedding(f) for f in files)


def _read_embedding(file: Path) -> tuple[pa.Array, pa.Array]:
    table = pa_csv.read_csv(file, convert_options=pa_csv.ConvertOptions(column_types={"emb": pa.string()}))
    parts = pc.split_pattern(pc.utf8_trim_whitespace(table.column("emb").combine_chunks()), " ")
    lengths = pc.list_value_length(parts).to_numpy(zero_copy_only=False)
    if lengths.size and (lengths != lengths[0]).any():
        raise ValueError(f"{file} has embeddings of different lengths ({sorted(set(lengths.tolist()))[:5]}).")
    width = int(lengths[0]) if lengths.size else 0
    values = pc.list_flatten(parts).cast(pa.float32())
    return table.column(0).combine_chunks(), pa.FixedSizeListArray.from_arrays(values, width)
