"""Reading a raw multi-domain table from files, the Hub, `datasets` objects or pandas.

`read_source` returns `{"all": table}` for one unsplit table, or `{"train": ..., "validation":
..., "test": ...}` (validation optional) when the source provides splits: a `DatasetDict`, a
Hub dataset with splits, or a dict mapping split names to files. Files are read with pyarrow
(compression such as `.gz` is detected from the name) into memory.
"""

from __future__ import annotations

import glob
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import datasets
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pa_parquet

from .columns import as_table

PathLike = Union[str, os.PathLike]
FILE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".txt": "csv", ".parquet": "parquet", ".json": "json",
                ".jsonl": "json", ".ndjson": "json"}
COMPRESSIONS = (".gz", ".bz2", ".zst", ".lz4")
SPLIT_ALIASES = {"train": "train", "validation": "validation", "valid": "validation", "val": "validation",
                 "dev": "validation", "test": "test"}
UNSPLIT = "all"


def read_source(source: Any, **load_kwargs: Any) -> dict[str, pa.Table]:
    """Raw tables from any supported source.

    Args:
        source: file path(s) or glob (CSV, TSV, parquet, JSON or JSON lines, optionally compressed),
            a dict of split name -> path(s) or table, a Hub dataset id, a `datasets.Dataset` /
            `DatasetDict`, a pandas DataFrame or a pyarrow Table.
        **load_kwargs: for files, `delimiter`, `column_names` (for files without a header),
            `encoding` and `columns` (read only these); for a Hub id, any `datasets.load_dataset`
            argument (e.g. `name`, `revision`).

    Returns:
        `{"all": table}` or split name -> table.

    Raises:
        FileNotFoundError: a path or glob that matches nothing.
        ValueError: unknown split names or file types.
        TypeError: an unsupported source, or load options that do not apply to it.

    Example:
        >>> import pandas as pd
        >>> tables = read_source(pd.DataFrame({"x": [1, 2]}))
        >>> list(tables), tables["all"].num_rows
        (['all'], 2)
    """
    if isinstance(source, (datasets.DatasetDict, datasets.IterableDatasetDict, datasets.IterableDataset)):
        if load_kwargs:
            raise TypeError(
                f"Options {sorted(load_kwargs)} apply to files and Hub ids, not to a {type(source).__name__}."
            )
        if not isinstance(source, datasets.DatasetDict):
            raise TypeError(
                "Streaming datasets cannot be split and encoded in memory; use StreamingBatches with a fitted encoder."
            )
        return _named_splits({name: as_table(ds) for name, ds in source.items()})
    if isinstance(source, Mapping):
        return _named_splits({name: _read_split(value, load_kwargs) for name, value in source.items()})
    if isinstance(source, (str, os.PathLike)) and _is_hub_id(source):
        return _read_hub(str(source), **load_kwargs)
    if isinstance(source, (str, os.PathLike)) or (
        isinstance(source, Sequence) and source and all(isinstance(p, (str, os.PathLike)) for p in source)
    ):
        return {UNSPLIT: read_files(source, **load_kwargs)}
    if load_kwargs:
        raise TypeError(f"Options {sorted(load_kwargs)} apply to files and Hub ids, not to a {type(source).__name__}.")
    return {UNSPLIT: as_table(source)}


def read_files(
    paths: Union[PathLike, Sequence[PathLike]],
    *,
    delimiter: Optional[str] = None,
    column_names: Optional[Sequence[str]] = None,
    encoding: str = "utf8",
    columns: Optional[Sequence[str]] = None,
) -> pa.Table:
    """Read and concatenate files (types unified across files).

    Args:
        paths: one path, a glob, or a list of them.
        delimiter: field separator for text tables (default `,`; `\\t` for `.tsv`).
        column_names: names for files without a header row.
        encoding: text encoding of CSV/TSV files.
        columns: keep only these columns.

    Raises:
        FileNotFoundError: nothing matches a path or glob.
        ValueError: an unknown file type.

    Example:
        >>> read_files("data/part-*.csv.gz").num_rows  # doctest: +SKIP
        1000000
    """
    files = _expand(paths)
    tables = [_read_file(f, delimiter, column_names, encoding, columns) for f in files]
    return pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]


def file_format(path: PathLike) -> str:
    """`csv`, `tsv`, `parquet` or `json` from the file name (a compression suffix is skipped).

    Raises:
        ValueError: an unknown suffix.

    Example:
        >>> file_format("reviews_Books_5.json.gz")
        'json'
    """
    suffixes = [s.lower() for s in Path(path).suffixes]
    while suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes.pop()
    if not suffixes or suffixes[-1] not in FILE_FORMATS:
        raise ValueError(
            f"Cannot tell the format of {str(path)!r}; use one of {sorted(FILE_FORMATS)} (optionally .gz)."
        )
    return FILE_FORMATS[suffixes[-1]]


def _read_file(path: Path, delimiter, column_names, encoding, columns) -> pa.Table:
    kind = file_format(path)
    if kind in ("csv", "tsv"):
        table = pa_csv.read_csv(
            path,
            read_options=pa_csv.ReadOptions(column_names=list(column_names) if column_names else None,
                                            encoding=encoding, block_size=1 << 24),
            parse_options=pa_csv.ParseOptions(delimiter=delimiter or ("\t" if kind == "tsv" else ",")),
            convert_options=pa_csv.ConvertOptions(include_columns=list(columns) if columns else None),
        )
    elif kind == "parquet":
        table = pa_parquet.read_table(path, columns=list(columns) if columns else None)
    else:
        table = _read_json(path)
        table = table.select(list(columns)) if columns else table
    return table


def _read_split(value: Any, load_kwargs: dict[str, Any]) -> pa.Table:
    """One split given as path(s) or as an in-memory table."""
    is_paths = isinstance(value, (str, os.PathLike)) or (
        isinstance(value, Sequence) and value and all(isinstance(p, (str, os.PathLike)) for p in value)
    )
    return read_files(value, **load_kwargs) if is_paths else as_table(value)


def _read_json(path: Path) -> pa.Table:
    """JSON lines with pyarrow; a file holding one JSON array falls back to the json module."""
    with pa.input_stream(str(path), compression="detect") as stream:
        data = stream.read()
    if data.lstrip()[:1] == b"[":
        return pa.Table.from_pylist(json.loads(data))
    return pa_json.read_json(io.BytesIO(data), read_options=pa_json.ReadOptions(block_size=1 << 24))


def _expand(paths: Union[PathLike, Sequence[PathLike]]) -> list[Path]:
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    files: list[Path] = []
    for item in items:
        matches = sorted(glob.glob(str(item))) if glob.has_magic(str(item)) else [str(item)]
        if not matches or not Path(matches[0]).is_file():
            raise FileNotFoundError(f"No file matches {str(item)!r}; check the path (relative to {os.getcwd()}).")
        files += [Path(m) for m in matches]
    return files


def _is_hub_id(source: PathLike) -> bool:
    """A string that is not a local path, has no file suffix or glob, and looks like `name` or `owner/name`."""
    text = str(source)
    if isinstance(source, os.PathLike) or Path(text).exists() or glob.has_magic(text):
        return False
    has_suffix = any(s.lower() in FILE_FORMATS or s.lower() in COMPRESSIONS for s in Path(text).suffixes)
    return not has_suffix and text.count("/") <= 1 and not text.startswith((".", "/", "~"))


def _read_hub(dataset_id: str, **load_kwargs: Any) -> dict[str, pa.Table]:
    loaded = datasets.load_dataset(dataset_id, **load_kwargs)
    if isinstance(loaded, datasets.DatasetDict):
        return _named_splits({name: as_table(ds) for name, ds in loaded.items()})
    return {UNSPLIT: as_table(loaded)}


def _named_splits(tables: dict[str, pa.Table]) -> dict[str, pa.Table]:
    unknown = sorted(name for name in tables if name not in SPLIT_ALIASES)
    if unknown:
        raise ValueError(f"Unknown split names {unknown}; use train, validation (or valid/val/dev) and test.")
    named = {SPLIT_ALIASES[name]: table for name, table in tables.items()}
    if len(named) != len(tables):
        raise ValueError(f"Split names {sorted(tables)} name the same split twice; give each split once.")
    return named
