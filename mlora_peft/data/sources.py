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
import re
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
_FILE_EXTENSION = re.compile(r"\.[A-Za-z][A-Za-z0-9]{0,7}$")
"""A trailing `.csv`, `.gz`, `.feather`: a name ending so is a file, never a Hub id."""


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

    A string names a local file unless it has neither a file extension nor a path separator (beyond
    one `/`, between an owner and a name whose owner is not a local folder): `clicks` and `team/clicks`
    are tried as Hub dataset ids, while a missing `clicks.csv`, `data/clicks` (with a local `data/`)
    or `./clicks` is a `FileNotFoundError` at once, without asking the Hub.

    Raises:
        FileNotFoundError: a local-looking path or glob that matches nothing, or a Hub id that could not
            be loaded (not found, or the Hub unreachable or offline); the message says which it was.
        ValueError: unknown split names or file types, an empty or unreadable file (named, with the reason).
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
        return _read_hub(str(source), **load_kwargs)  # a missing local path never gets here (see _local_reason)
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
        ValueError: an unknown file type; a file that cannot be parsed (truncated, corrupt, not of its
            type) or holds no data rows; the message names the file.

    Example:
        >>> read_files("data/part-*.csv.gz").num_rows  # doctest: +SKIP
        1000000
    """
    files = _expand(paths)
    tables = [_read_file(f, delimiter, column_names, encoding, columns) for f in files]
    table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
    if table.num_rows == 0:
        shown = ", ".join(str(f) for f in files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
        raise ValueError(
            f"{shown} {'holds' if len(files) == 1 else 'hold'} no data rows (only a header: "
            f"{table.column_names[:8]}). Check that the file was written completely, or point to the file with the data."
        )
    return table


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
    """One file as a table; a parse or decompression failure becomes a ValueError naming the file and why."""
    kind = file_format(path)
    try:
        return _parse_file(path, kind, delimiter, column_names, encoding, columns)
    except (OSError, ValueError, pa.ArrowException) as error:  # ArrowInvalid is a ValueError, ArrowIOError an OSError
        raise ValueError(f"Cannot read {path} as {_described(path, kind)}: {_reason(error)}") from error


def _described(path: Path, kind: str) -> str:
    compressed = [s for s in Path(path).suffixes if s.lower() in COMPRESSIONS]
    return f"{kind.upper()} ({compressed[-1][1:]}-compressed)" if compressed else kind.upper()


def _reason(error: BaseException) -> str:
    """pyarrow's message plus what it most likely means for the file."""
    text = str(error).strip() or type(error).__name__
    lowered = text.lower()
    if any(word in lowered for word in ("truncated", "compressed", "gzip", "invalid deflate", "incorrect header")):
        return f"{text}. The file is truncated or not really compressed: download or write it again."
    if "empty" in lowered:
        return f"{text}. The file is empty: write it again, or point to the file with the data."
    if "expected" in lowered and "columns" in lowered:
        return f"{text}. A row has a different number of fields than the header: fix that row, or pass delimiter=..."
    if isinstance(error, UnicodeDecodeError) or "utf8" in lowered or "utf-8" in lowered:
        return f"{text}. The text is not UTF-8: pass encoding=..., e.g. encoding='latin-1'."
    return f"{text}. Check that the file is complete and of the type its name says."


def _parse_file(path: Path, kind: str, delimiter, column_names, encoding, columns) -> pa.Table:
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
            folder = bool(matches) and Path(matches[0]).is_dir()
            reason = _local_reason(item)
            hub = f" It was not tried as a Hub dataset id: it {reason}." if reason and not folder else ""
            raise FileNotFoundError(
                f"No file matches {str(item)!r}{' (it is a folder)' if folder else ''}; check the path "
                f"(relative to {os.getcwd()}).{hub}"
            )
        files += [Path(m) for m in matches]
    return files


def _local_reason(source: PathLike) -> Optional[str]:
    """Why `source` names a local path rather than a Hub dataset id, or None when it could be either."""
    text = str(source)
    if isinstance(source, os.PathLike):
        return "is a Path object"
    if glob.has_magic(text):
        return "is a glob pattern"
    if text.startswith((".", "/", "~")) or "\\" in text or text.count("/") > 1:
        return "is written as a local path"
    if "/" in text and Path(text).parent.is_dir():
        return f"starts with the local folder {str(Path(text).parent)!r}"
    if _FILE_EXTENSION.search(text):
        return f"ends with the file extension {_FILE_EXTENSION.search(text).group(0)!r}"
    return None


def _is_hub_id(source: PathLike) -> bool:
    """A string that is not an existing local path and does not look like one (see `_local_reason`)."""
    return not Path(str(source)).exists() and _local_reason(source) is None


def _read_hub(dataset_id: str, **load_kwargs: Any) -> dict[str, pa.Table]:
    try:
        loaded = datasets.load_dataset(dataset_id, **load_kwargs)
    except (ConnectionError, FileNotFoundError) as error:  # DatasetNotFoundError is a FileNotFoundError
        offline = datasets.config.HF_HUB_OFFLINE
        why = ("offline mode is on (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) and it is not in the cache" if offline
               else "the Hub could not be reached" if isinstance(error, ConnectionError) else "the Hub has no such dataset")
        raise FileNotFoundError(
            f"{dataset_id!r} is no local file or folder (relative to {os.getcwd()}), so it was read as a Hub dataset "
            f"id, and {why} ({type(error).__name__}: {error}). For a local file, give its path with the extension, "
            f"e.g. {dataset_id + '.csv'!r}; for a Hub dataset, check the id"
            + (", or download it once online." if offline else ".")
        ) from error
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
