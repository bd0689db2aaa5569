"""The inferred feature table: each feature's kind and what the encoder learnt of it on train.

`MultiDomainData.feature_table()` returns it as JSON-ready rows (for a run log or `results.json`),
`MultiDomainData.feature_table_text()` as an aligned text table. It shows at a glance a numeric
column taken as categorical (a vocabulary as large as its distinct prices) or an id column taken as
numbers.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import datasets
import numpy as np

from .table_encoder import MultiDomainEncoder

COLUMNS = ("name", "kind", "dim", "vocab_size", "unknown_share", "mean", "std")
"""The keys of every row, in order."""


def feature_rows(encoder: MultiDomainEncoder, train: datasets.Dataset) -> list[dict[str, Any]]:
    """One row per feature, sparse ones first, in the order of `feature_spec`.

    Args:
        encoder: the fitted encoder.
        train: the encoded train split.

    Returns:
        Dicts with the keys of `COLUMNS`. Sparse features: `vocab_size` (0 included) and
        `unknown_share`, the share of train rows with id 0 (missing, or rarer than `min_frequency`).
        Dense features: `mean` and `std` of the train values in their raw units, after missing values
        were filled with the mean (a list per dimension when `dim > 1`). Keys that do not apply are None.
    """
    names = [e.name for e in encoder.sparse] + [e.name for e in encoder.dense]
    columns = train.with_format("numpy", columns=names)[:] if names and train.num_rows else {}
    rows = []
    for enc in encoder.sparse:
        ids = columns.get(enc.name)
        unknown = float(np.mean(ids == 0)) if ids is not None else None
        rows.append(_row(enc.name, "sparse", 1, vocab_size=enc.vocab_size, unknown_share=unknown))
    for enc in encoder.dense:
        values = columns.get(enc.name)
        mean = std = None
        if values is not None:
            raw = np.asarray(values, dtype=np.float64).reshape(len(values), enc.dim) * enc.scale + enc.shift  # (N, dim)
            mean, std = _per_dim(raw.mean(0)), _per_dim(raw.std(0))
        rows.append(_row(enc.name, "dense", enc.dim, mean=mean, std=std))
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    """An aligned text table of `feature_rows` output, one line per feature (blank where a key does not apply)."""
    cells = [list(COLUMNS)] + [[_text(row[key]) for key in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))).rstrip()
             for line in cells]
    return "\n".join(lines)


def _row(name: str, kind: str, dim: int, **values: Any) -> dict[str, Any]:
    return {key: values.get(key) for key in COLUMNS} | {"name": name, "kind": kind, "dim": dim}


def _per_dim(values: np.ndarray) -> Union[float, list[float]]:
    return float(values[0]) if values.size == 1 else [float(v) for v in values]


def _text(value: Optional[Any]) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return "[" + ", ".join(f"{v:.4g}" for v in value[:3]) + (", ...]" if len(value) > 3 else "]")
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
