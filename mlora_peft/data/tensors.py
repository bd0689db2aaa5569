"""Arrow columns as torch tensors without per-row Python work.

Encoded columns are null-free int64, float32 or fixed-size lists of float32, so each maps to a
NumPy view of its Arrow buffer and then to a tensor sharing that memory (a copy only when the
column is split into several chunks).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Optional

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from .columns import as_array


def column_tensor(column: pa.Array | pa.ChunkedArray) -> Tensor:
    """One encoded column as a tensor: `(N,)`, or `(N, dim)` for a fixed-size list column.

    Raises:
        TypeError: a column with nulls or of a non-numeric type (encode raw data first).

    Example:
        >>> column_tensor(pa.array([[1.0, 2.0]], pa.list_(pa.float32(), 2)))
        tensor([[1., 2.]])
    """
    array = as_array(column)
    if array.null_count:
        raise TypeError(f"Column of type {array.type} has {array.null_count} nulls; encode the data before batching.")
    if pa.types.is_fixed_size_list(array.type):
        width = array.type.list_size
        values = _numpy(array.flatten()).reshape(len(array), width)  # (N, dim)
    else:
        values = _numpy(array)  # (N,)
    with warnings.catch_warnings():  # Arrow buffers are read-only; batches are gathered copies, never written
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(values)


def table_tensors(table: pa.Table, columns: Optional[Sequence[str]] = None) -> dict[str, Tensor]:
    """Columns of an encoded table as tensors.

    Args:
        table: an encoded table.
        columns: the columns wanted (default: all).

    Returns:
        Column name -> tensor.

    Example:
        >>> table_tensors(pa.table({"user": [1, 2], "label": [0.0, 1.0]}))["user"]
        tensor([1, 2])
    """
    names = table.column_names if columns is None else list(columns)
    return {name: column_tensor(table.column(name)) for name in names}


def _numpy(array: pa.Array) -> np.ndarray:
    if pa.types.is_boolean(array.type):
        return array.to_numpy(zero_copy_only=False).astype(np.int64)
    if not (pa.types.is_integer(array.type) or pa.types.is_floating(array.type)):
        raise TypeError(f"Column of type {array.type} cannot become a tensor; encode the data before batching.")
    return array.to_numpy(zero_copy_only=True)
