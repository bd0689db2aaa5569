"""Seeded train / validation / test assignments, computed with vectorised NumPy (no per-row Python).

- `stratified_parts`: within every (domain, label) cell, a random 60/20/20 (or any) split, so each
  cell's part sizes are within one row of the exact fractions (the paper's protocol).
- `time_parts`: rows ordered by a timestamp (ties broken by the seed), the earliest fraction to
  train, then validation, then test; globally (no future rows in training) or per domain.

Both return an int8 array of 0 (train), 1 (validation) or 2 (test) per row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pyarrow as pa

from .columns import ArrowColumn, as_array

SPLIT_NAMES = ("train", "validation", "test")
DEFAULT_FRACTIONS = (0.6, 0.2, 0.2)


@dataclass(frozen=True)
class TimeSplit:
    """Split on a timestamp column: the earliest rows train, the latest test.

    Attributes:
        column: a numeric, date or timestamp column.
        fractions: train / validation / test shares.
        per_domain: cut every domain at its own quantiles (each domain then appears in every
            split) instead of at global ones (no training row is later than a test row).

    Example:
        >>> TimeSplit("timestamp", (0.8, 0.1, 0.1))
        TimeSplit(column='timestamp', fractions=(0.8, 0.1, 0.1), per_domain=False)
    """

    column: str
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
    per_domain: bool = False

    def __post_init__(self) -> None:
        check_fractions(self.fractions)


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Validate three non-negative fractions with a positive train share, summing to 1.

    Raises:
        ValueError: anything else.

    Example:
        >>> check_fractions([0.8, 0.1, 0.1])
        (0.8, 0.1, 0.1)
    """
    values = tuple(float(f) for f in fractions) if isinstance(fractions, (tuple, list)) else ()
    if len(values) != 3 or min(values) < 0 or values[0] <= 0 or abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(
            f"split={fractions!r} must be three fractions (train, validation, test), train > 0, summing to 1, "
            "e.g. (0.6, 0.2, 0.2)."
        )
    return values  # type: ignore[return-value]


def stratified_parts(domain_codes: np.ndarray, labels: np.ndarray, fractions: Sequence[float], seed: int) -> np.ndarray:
    """A random split within every (domain, label) cell.

    Args:
        domain_codes: int domain codes `(N,)` (any integers).
        labels: 0/1 labels `(N,)`.
        fractions: train / validation / test shares.
        seed: the same seed and rows give the same split.

    Returns:
        int8 parts `(N,)`: 0 train, 1 validation, 2 test.

    Example:
        >>> parts = stratified_parts(np.zeros(10, int), np.r_[np.ones(5), np.zeros(5)], (0.6, 0.2, 0.2), seed=0)
        >>> np.bincount(parts).tolist()
        [6, 2, 2]
    """
    fractions = check_fractions(fractions)
    cells = _dense_codes(np.asarray(domain_codes, np.int64) * 2 + (np.asarray(labels) > 0.5))
    shuffled = np.random.default_rng(seed).permutation(cells.size)
    return _cut_groups(cells, shuffled, fractions)


def time_parts(
    timestamps: ArrowColumn, fractions: Sequence[float], seed: int, domain_codes: Optional[np.ndarray] = None
) -> np.ndarray:
    """A split by time: within each group (all rows, or each domain), earliest rows first.

    Args:
        timestamps: numeric, date or timestamp values `(N,)`, no missing values.
        fractions: train / validation / test shares.
        seed: breaks ties between equal timestamps.
        domain_codes: cut each domain separately when given.

    Returns:
        int8 parts `(N,)`.

    Raises:
        TypeError: a non-numeric, non-temporal column.
        ValueError: missing timestamps.

    Example:
        >>> time_parts(pa.array([30, 10, 20, 40, 50]), (0.6, 0.2, 0.2), seed=0).tolist()
        [0, 0, 0, 1, 2]
    """
    fractions = check_fractions(fractions)
    times = _time_values(timestamps)
    groups = np.zeros(times.size, np.int64)
    if domain_codes is not None:
        groups = _dense_codes(np.asarray(domain_codes, np.int64))
    shuffled = np.random.default_rng(seed).permutation(times.size)  # ties between equal times in random order
    in_time_order = shuffled[np.argsort(times[shuffled], kind="stable")]
    return _cut_groups(groups, in_time_order, fractions)


def _cut_groups(groups: np.ndarray, row_order: np.ndarray, fractions: tuple[float, float, float]) -> np.ndarray:
    """Group rows (keeping `row_order` inside each group); per group of n rows, the first round(f0 * n) train,
    up to round((f0 + f1) * n) validation, the rest test."""
    order = row_order[stable_argsort(groups[row_order])]
    sizes = np.bincount(groups, minlength=1)
    parts = np.empty(groups.size, np.int8)
    start = 0
    for size in sizes.tolist():  # one slice assignment per group and part
        train_end = start + round(fractions[0] * size)
        valid_end = start + round((fractions[0] + fractions[1]) * size)
        parts[order[start:train_end]] = 0
        parts[order[train_end:valid_end]] = 1
        parts[order[valid_end:start + size]] = 2
        start += size
    return parts


def _dense_codes(codes: np.ndarray) -> np.ndarray:
    """The same grouping with codes 0..G-1 (a bincount remap when the codes are small and non-negative)."""
    if codes.size and codes.min() >= 0 and codes.max() < 4 * codes.size + 1024:
        present = np.bincount(codes) > 0
        return (np.cumsum(present) - 1)[codes]
    return np.unique(codes, return_inverse=True)[1].reshape(-1)


def stable_argsort(codes: np.ndarray) -> np.ndarray:
    """Stable argsort of int codes; small non-negative ones go through int16, which NumPy radix-sorts in linear time.

    Example:
        >>> stable_argsort(np.array([2, 0, 2, 1])).tolist()
        [1, 3, 0, 2]
    """
    small = codes.size == 0 or (codes.min() >= 0 and codes.max() < np.iinfo(np.int16).max)
    return np.argsort(codes.astype(np.int16) if small else codes, kind="stable")


def _time_values(timestamps: ArrowColumn) -> np.ndarray:
    array = as_array(timestamps)
    if array.null_count:
        raise ValueError(
            f"The time column has {array.null_count} missing values; fill or drop them before a time split."
        )
    if pa.types.is_temporal(array.type):
        array = array.cast(pa.timestamp("us")) if pa.types.is_date(array.type) else array
        return array.cast(pa.int64()).to_numpy(zero_copy_only=False).astype(np.float64)
    if pa.types.is_integer(array.type) or pa.types.is_floating(array.type):
        return array.cast(pa.float64()).to_numpy(zero_copy_only=False)
    raise TypeError(
        f"The time column has type {array.type}; use numbers (e.g. unix seconds), dates or timestamps "
        "(parse strings first, e.g. with pandas.to_datetime)."
    )
