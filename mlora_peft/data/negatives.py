"""Sampled negatives for implicit-feedback domains (the MLoRA / MAMDR recipe).

Every interaction is a positive. For each domain, draw r ~ U[low, high] (default [0.2, 0.5]);
each user then gets round(#positives / r) negatives (2 to 5 per positive), drawn without
replacement from the domain's item pool, never one of the user's positives in that domain.
Sampling is vectorised rejection sampling over (user, item) keys, seeded and reproducible.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .columns import normalise_ids

DEFAULT_RATIO_RANGE = (0.2, 0.5)
_MAX_ROUNDS = 50


def with_sampled_negatives(
    positives: pa.Table,
    *,
    user: str,
    item: str,
    domain: str,
    seed: int = 0,
    ratio_range: Sequence[float] = DEFAULT_RATIO_RANGE,
    item_pools: Optional[Mapping[Any, Sequence]] = None,
    label: str = "label",
) -> tuple[pa.Table, dict[Any, float]]:
    """Positives (label 1) followed by sampled negatives (label 0), domain by domain.

    Args:
        positives: interactions with the user, item and domain columns (other columns are dropped).
        user, item, domain: column names.
        seed: fixes the per-domain ratios and the sampled items.
        ratio_range: the range of r; a domain gets about #positives / r negatives.
        item_pools: domain value -> candidate items (default: the items with positives in that domain).
        label: name of the label column added.

    Returns:
        The table (user, item, domain, label) and the r drawn per domain value.

    Raises:
        ValueError: a bad ratio range.

    Example:
        >>> table = pa.table({"u": ["a", "a", "b"], "i": [1, 2, 3], "d": ["x", "x", "x"]})
        >>> rows, ratios = with_sampled_negatives(table, user="u", item="i", domain="d", ratio_range=(0.5, 0.5))
        >>> rows.num_rows, rows.column("label").to_pylist()[:3]
        (6, [1.0, 1.0, 1.0])
    """
    low, high = (float(r) for r in ratio_range)
    if not 0 < low <= high <= 1:
        raise ValueError(
            f"ratio_range={tuple(ratio_range)!r} must satisfy 0 < low <= high <= 1 (r = positives / negatives)."
        )
    rng = np.random.default_rng(seed)
    positives = positives.select([user, item, domain])
    domains = pc.unique(positives.column(domain))
    domains = domains.take(pc.sort_indices(domains))
    parts, ratios = [positives.append_column(label, pa.array(np.ones(positives.num_rows, np.float32)))], {}
    for value in domains.to_pylist():
        rows = positives.filter(pc.equal(positives.column(domain), pa.scalar(value, domains.type)))
        pool = _pool(rows.column(item), None if item_pools is None else item_pools.get(value))
        ratios[value] = float(rng.uniform(low, high))
        users, neg_items = _domain_negatives(rows.column(user), rows.column(item), pool, ratios[value], rng)
        parts.append(pa.table({
            user: users, item: neg_items.cast(rows.schema.field(item).type),
            domain: pa.array([value] * len(users), domains.type), label: pa.array(np.zeros(len(users), np.float32)),
        }))
    return pa.concat_tables(parts), ratios


def sample_negatives(
    user_codes: np.ndarray, item_codes: np.ndarray, num_items: int, counts: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """For every user u, `counts[u]` distinct items in [0, num_items) that u has no positive for.

    Args:
        user_codes: user code per positive `(P,)`, in [0, U).
        item_codes: item code per positive `(P,)`, in [0, num_items) (-1: outside the pool, ignored).
        num_items: pool size.
        counts: negatives wanted per user `(U,)`, capped at the items the user has no positive for.
        rng: random generator.

    Returns:
        user codes and item codes of the negatives, grouped by user.

    Example:
        >>> owner, items = sample_negatives(np.array([0, 0]), np.array([0, 1]), 3, np.array([5]),
        ...                                 np.random.default_rng(0))
        >>> owner.tolist(), items.tolist()  # only item 2 is free for user 0
        ([0], [2])
    """
    known = item_codes >= 0
    positive_keys = np.unique(user_codes[known].astype(np.int64) * num_items + item_codes[known])
    free = num_items - np.bincount(positive_keys // num_items, minlength=counts.size)
    owner = np.repeat(np.arange(counts.size), np.minimum(counts, free))
    chosen = np.full(owner.size, -1, np.int64)
    taken = np.empty(0, np.int64)  # sorted keys already sampled
    pending = np.arange(owner.size)
    for _ in range(_MAX_ROUNDS):
        if not pending.size:
            break
        candidates = rng.integers(0, num_items, pending.size)
        keys = owner[pending] * num_items + candidates
        first = np.zeros(keys.size, bool)
        first[np.unique(keys, return_index=True)[1]] = True
        ok = first & ~_contains(positive_keys, keys) & ~_contains(taken, keys)
        chosen[pending[ok]] = candidates[ok]
        taken = np.sort(np.concatenate([taken, keys[ok]]), kind="stable")
        pending = pending[~ok]
    for user in np.unique(owner[pending]):  # users needing nearly their whole free pool: sample exactly
        slots = pending[owner[pending] == user]
        used = np.concatenate([positive_keys[positive_keys // num_items == user], taken[taken // num_items == user]])
        options = np.setdiff1d(np.arange(num_items), used % num_items)
        chosen[slots] = rng.choice(options, size=slots.size, replace=False)
    return owner, chosen


def _domain_negatives(users: pa.ChunkedArray, items: pa.ChunkedArray, pool: pa.Array, ratio: float,
                      rng: np.random.Generator) -> tuple[pa.Array, pa.Array]:
    encoded = pc.dictionary_encode(users.combine_chunks())
    user_codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    item_codes = pc.fill_null(pc.index_in(normalise_ids(items, "item"), value_set=pool), -1)
    positives_per_user = np.bincount(user_codes, minlength=len(encoded.dictionary))
    counts = np.rint(positives_per_user / ratio).astype(np.int64)
    owner, chosen = sample_negatives(user_codes, item_codes.to_numpy(zero_copy_only=False).astype(np.int64),
                                     len(pool), counts, rng)
    return encoded.dictionary.take(pa.array(owner)), pool.take(pa.array(chosen))


def _pool(items: pa.ChunkedArray, given: Optional[Sequence]) -> pa.Array:
    ids = normalise_ids(items, "item")
    values = ids.unique() if given is None else normalise_ids(pa.array(list(given)), "item", "str" if
                                                               pa.types.is_large_string(ids.type) else "int").unique()
    return values.drop_null().take(pc.sort_indices(values.drop_null()))


def _contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    position = np.searchsorted(sorted_keys, keys)
    inside = position < sorted_keys.size
    found = np.zeros(keys.size, bool)
    found[inside] = sorted_keys[position[inside]] == keys[inside]
    return found
