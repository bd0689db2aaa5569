"""Arrow column helpers shared by the encoders, splitters and loaders.

Ids are normalised to one of two Arrow types, int64 or large_string, so that a vocabulary built
from one file matches the same ids read from another (a CSV gives int64, a pandas frame with
missing values gives float64, a JSON file may give strings). Missing values stay null; a NaN
in a float column counts as missing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, Optional, Union

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ArrowColumn = Union[pa.Array, pa.ChunkedArray]
IdKind = Literal["int", "str"]
_NUMBER_TEXT = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"


def as_array(column: ArrowColumn) -> pa.Array:
    """One contiguous Arrow array (chunks combined, dictionaries decoded).

    Example:
        >>> as_array(pa.chunked_array([[1], [2]])).to_pylist()
        [1, 2]
    """
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    return array


def id_kind(column: ArrowColumn) -> IdKind:
    """`"int"` for integer, boolean and float columns (floats must hold whole numbers), `"str"` for everything else.

    Example:
        >>> id_kind(pa.array([1.0, None])), id_kind(pa.array(["a"]))
        ('int', 'str')
    """
    type_ = as_array(column).type
    if pa.types.is_integer(type_) or pa.types.is_boolean(type_) or pa.types.is_floating(type_):
        return "int"
    return "str"


def normalise_ids(column: ArrowColumn, name: str, kind: IdKind | None = None) -> pa.Array:
    """Ids as int64 (`kind="int"`) or large_string (`kind="str"`); nulls and NaN become null.

    Args:
        column: raw id column.
        name: column name, for error messages.
        kind: target kind; `None` picks it from the column (see `id_kind`).

    Returns:
        An int64 or large_string Arrow array of the same length.

    Raises:
        TypeError: a float column with non-integer values, or strings that are not integers
            when `kind="int"`.

    Example:
        >>> normalise_ids(pa.array([1.0, None, float("nan")]), "user").to_pylist()
        [1, None, None]
    """
    array = as_array(column)
    kind = kind or id_kind(array)
    if pa.types.is_floating(array.type):
        array = pc.if_else(pc.is_nan(array), pa.scalar(None, array.type), array)
        valid = array.drop_null()
        if len(valid) and not pc.all(pc.equal(pc.floor(valid), valid)).as_py():
            raise TypeError(
                f"Id column {name!r} holds non-integer floats (e.g. {_first_fraction(valid)}); "
                "list it as a dense feature, or cast it to int or str before loading."
            )
        array = array.cast(pa.int64())
    if kind == "str":
        return array.cast(pa.large_string())
    if pa.types.is_integer(array.type) or pa.types.is_boolean(array.type):
        return array.cast(pa.int64())
    try:
        return array.cast(pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise TypeError(
            f"Column {name!r} holds {array.type} values such as {array.drop_null()[:3].to_pylist()}, but its "
            "encoder was fitted on integer ids; pass the same id type as at fitting time."
        ) from None


def numeric_matrix(column: ArrowColumn, name: str) -> np.ndarray:
    """A numeric (or fixed-length list) column as float64 `(N, dim)`, missing values as NaN.

    Args:
        column: numbers, or lists of numbers of one length.
        name: column name, for error messages.

    Returns:
        float64 array `(N, dim)`.

    Raises:
        TypeError: a non-numeric column, or list values of varying length.

    Example:
        >>> numeric_matrix(pa.array([[1, 2], None]), "emb").tolist()
        [[1.0, 2.0], [nan, nan]]
    """
    array = as_array(column)
    if pa.types.is_list(array.type) or pa.types.is_large_list(array.type) or pa.types.is_fixed_size_list(array.type):
        lengths = pc.list_value_length(array).drop_null()
        width = int(pc.max(lengths).as_py() or 0)
        if len(lengths) and pc.min(lengths).as_py() != width:
            raise TypeError(f"Dense column {name!r} holds lists of different lengths; every row needs {width} values.")
        rows = pc.fill_null(array, pa.scalar([None] * width, array.type)) if array.null_count else array
        flat = _float_values(pc.list_flatten(rows), name)
        return flat.reshape(len(array), width)
    return _float_values(array, name).reshape(len(array), 1)


@dataclass(frozen=True)
class NonNumericCells:
    """The cells of a text column that are not numbers (missing cells aside).

    Attributes:
        count: how many such cells.
        numbers: how many cells are numbers written as text.
        row: the first such cell's row (counting from 0, a file's header excluded).
        value: that cell's text.
    """

    count: int
    numbers: int
    row: int
    value: str

    @property
    def looks_numeric(self) -> bool:
        """Most cells are numbers: the others are likely junk in a numeric column."""
        return self.numbers > self.count

    def describe(self, where: str = "") -> str:
        """E.g. `row 4 holds 'n/a?' (1 such cell beside 199 numbers)`; `where` follows the row number."""
        return f"row {self.row}{where} holds {self.value!r} ({self.count} such cell{'s' * (self.count != 1)} beside " \
               f"{self.numbers} numbers)"


def dense_text_error(name: str, cells: NonNumericCells, where: str = "") -> TypeError:
    """The error for a dense column with text cells that are not numbers, naming the first one."""
    return TypeError(
        f"Dense column {name!r} holds text that is not a number: {cells.describe(where)}. Fix or blank those "
        "cells (a blank cell gets the train mean), or list the column under sparse=... if it holds categories."
    )


def non_numeric_cells(column: ArrowColumn) -> Optional[NonNumericCells]:
    """The cells of a text column that do not parse as numbers; None for other columns or when every cell does.

    Example:
        >>> non_numeric_cells(pa.array(["1.5", None, "n/a?", "2"]))
        NonNumericCells(count=1, numbers=2, row=2, value='n/a?')
    """
    array = as_array(column)
    if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
        return None
    is_number = pc.match_substring_regex(array, _NUMBER_TEXT)
    bad = pc.invert(pc.fill_null(is_number, True))  # missing cells are not junk
    count = pc.sum(bad).as_py() or 0
    if not count:
        return None
    row = pc.index(bad, True).as_py()
    numbers = pc.sum(pc.fill_null(is_number, False)).as_py() or 0
    return NonNumericCells(int(count), int(numbers), int(row), str(array[row].as_py()))


def require_columns(available: Iterable[str], wanted: dict[str, list[str]]) -> None:
    """Raise one ValueError listing every wanted column that is missing.

    Args:
        available: the table's column names.
        wanted: role -> column names, e.g. `{"label": ["click"], "sparse": ["user", "item"]}`.

    Raises:
        ValueError: some wanted columns are absent; the message lists them and the available ones.

    Example:
        >>> require_columns(["user", "click"], {"label": ["click"], "sparse": ["user"]})  # no error
    """
    present = set(available)
    missing = [f"{role} column {name!r}" for role, names in wanted.items() for name in names if name not in present]
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        columns = sorted(present)
        listed = f"{columns[:30]}" + (f" and {len(columns) - 30} more" if len(columns) > 30 else "")
        raise ValueError(
            f"Missing {shown}; the data has columns {listed}. "
            "Fix the column name or rename the column before loading."
        )


def _float_values(array: pa.Array, name: str) -> np.ndarray:
    cells = non_numeric_cells(array)
    if cells is not None and cells.looks_numeric:
        raise dense_text_error(name, cells)
    if cells is None and (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
        raise TypeError(f"Dense column {name!r} holds numbers written as text; cast it to float before loading.")
    if not (pa.types.is_integer(array.type) or pa.types.is_floating(array.type) or pa.types.is_boolean(array.type)):
        raise TypeError(
            f"Dense column {name!r} has type {array.type}; dense features must be numeric. "
            "List it under sparse=... if it holds categories."
        )
    return array.cast(pa.float64()).to_numpy(zero_copy_only=False)


def _first_fraction(values: pa.Array) -> float:
    numbers = values.to_numpy(zero_copy_only=False)
    return float(numbers[numbers != np.floor(numbers)][0])


def as_table(rows: Any) -> pa.Table:
    """A `pa.Table` from a table, a `datasets.Dataset`, a pandas DataFrame, a dict of columns or a list of row dicts.

    Raises:
        TypeError: any other type.

    Example:
        >>> as_table([{"user": 1, "click": 0}]).column_names
        ['user', 'click']
    """
    if isinstance(rows, pa.Table):
        return rows
    if isinstance(rows, pa.RecordBatch):
        return pa.Table.from_batches([rows])
    if isinstance(rows, datasets.Dataset):
        return rows.with_format("arrow")[:]
    if hasattr(rows, "to_numpy") and hasattr(rows, "columns"):  # pandas.DataFrame
        return pa.Table.from_pandas(rows, preserve_index=False)
    if isinstance(rows, dict):
        return pa.table({name: np.asarray(values) if not isinstance(values, (list, pa.Array)) else values
                         for name, values in rows.items()})
    if isinstance(rows, list) and all(isinstance(row, dict) for row in rows):
        return pa.Table.from_pylist(rows)
    raise TypeError(
        f"Rows of type {type(rows).__name__} are not supported; pass a pyarrow Table, datasets.Dataset, "
        "pandas DataFrame, dict of columns or list of row dicts."
    )
