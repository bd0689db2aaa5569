"""Batches from data larger than memory: chunks read one at a time, shuffled within a chunk.

`StreamingBatches` is a torch `IterableDataset` that yields ready batches (dicts of tensors); use
it with `DataLoader(stream, batch_size=None)`. Chunks come from a callable (called once per epoch,
e.g. `lambda: stream_synthetic(...)`), a `datasets.Dataset` (memory-mapped from disk; read in
slices, slice order shuffled each epoch) or a `datasets.IterableDataset` (streamed from the Hub or
files). Raw chunks are encoded with a fitted `MultiDomainEncoder` when one is given.

Rows are shuffled within each chunk, and rows left over at the end of a chunk carry into the
next, so every batch but the last (per domain, for `"per_domain"`) is full. With several
DataLoader workers, worker w reads chunks w, w + W, ... . Under `accelerator.prepare`, accelerate
reads the stream on the main process and hands each process whole batches (dispatching, its
default for iterable datasets); `gather_for_metrics` then drops the few padding rows it adds at
the very end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Optional, Union

import datasets
import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from .batching import COMPOSITIONS, Composition, RowBatch, TensorColumns
from .columns import as_table
from .splits import stable_argsort
from .table_encoder import DOMAIN_COLUMN, MultiDomainEncoder

Columns = dict[str, Tensor]
ChunkSource = Union[Callable[[], Iterable[Any]], datasets.Dataset, datasets.IterableDataset]


class StreamingBatches(torch.utils.data.IterableDataset):
    """Batches of tensors from a chunked source, in one of the three compositions.

    Args:
        chunks: a callable returning an iterable of tables (pyarrow, pandas, dict of columns), a
            `datasets.Dataset` or a `datasets.IterableDataset`.
        batch_size: rows per batch.
        encoder: encodes raw chunks; None when the chunks are already encoded.
        composition: `"mixed"`, `"per_domain"` or `"sorted"`.
        shuffle: shuffle rows within chunks (and slice order of a `datasets.Dataset`) each epoch.
        seed: shuffling seed (combined with the epoch).
        columns: columns to serve (default: all encoded columns).
        chunk_rows: rows per slice when reading a `datasets.Dataset` or `IterableDataset`.

    Example:
        >>> from mlora_peft.data import make_synthetic, stream_synthetic
        >>> encoder = make_synthetic(rows=3000).encoder
        >>> stream = StreamingBatches(lambda: stream_synthetic(rows=5000, chunk_rows=2000), batch_size=1024,
        ...                           encoder=encoder)
        >>> [len(batch["label"]) for batch in stream]
        [1024, 1024, 1024, 1024, 904]
    """

    def __init__(
        self,
        chunks: ChunkSource,
        *,
        batch_size: int,
        encoder: Optional[MultiDomainEncoder] = None,
        composition: Composition = "mixed",
        shuffle: bool = True,
        seed: int = 0,
        columns: Optional[Sequence[str]] = None,
        chunk_rows: int = 1 << 18,
    ) -> None:
        if composition not in COMPOSITIONS or composition == "sequential":
            allowed = tuple(c for c in COMPOSITIONS if c != "sequential")
            raise ValueError(f"composition={composition!r} is not one of {allowed} (a stream cannot make a full pass "
                             "over one domain before the next; use make_loader for 'sequential').")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be an int >= 1.")
        if not (callable(chunks) or isinstance(chunks, (datasets.Dataset, datasets.IterableDataset))):
            raise TypeError(
                f"chunks of type {type(chunks).__name__}: pass a callable returning chunks (so each epoch can "
                "re-read them), a datasets.Dataset or a datasets.IterableDataset."
            )
        if columns is not None and composition != "mixed" and DOMAIN_COLUMN not in columns:
            raise ValueError(f"composition={composition!r} needs the {DOMAIN_COLUMN!r} column; add it to columns.")
        self.chunks, self.batch_size, self.encoder = chunks, batch_size, encoder
        self.composition, self.shuffle, self.seed = composition, shuffle, seed
        self.columns, self.chunk_rows = columns, chunk_rows
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use `epoch`'s shuffle next (iterating also advances the epoch by one)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[Columns]:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        carry: Optional[pa.Table] = None
        for chunk in self._worker_chunks(rng):
            table = self.encoder.transform(chunk) if self.encoder is not None else as_table(chunk)
            table = table if carry is None else pa.concat_tables([carry, table])
            data = TensorColumns(table, self.columns)
            batches, leftover = self._plan(data, rng, last=False)
            yield from (data.__getitems__(RowBatch(rows)) for rows in batches)
            carry = table.take(leftover.numpy()) if len(leftover) else None
        if carry is not None:
            data = TensorColumns(carry, self.columns)
            yield from (data.__getitems__(RowBatch(rows)) for rows in self._plan(data, rng, last=True)[0])

    def _worker_chunks(self, rng: np.random.Generator) -> Iterator[Any]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        for index, chunk in enumerate(self._chunks(rng)):
            if index % workers == worker:
                yield chunk

    def _chunks(self, rng: np.random.Generator) -> Iterator[Any]:
        if isinstance(self.chunks, datasets.Dataset):
            starts = np.arange(0, len(self.chunks), self.chunk_rows)
            for start in rng.permutation(starts) if self.shuffle else starts:
                yield self.chunks.with_format("arrow")[int(start): int(start) + self.chunk_rows]
        elif isinstance(self.chunks, datasets.IterableDataset):
            yield from self.chunks.with_format("arrow").iter(batch_size=self.chunk_rows)
        else:
            yield from self.chunks()

    def _plan(self, data: TensorColumns, rng: np.random.Generator, last: bool) -> tuple[list[Tensor], Tensor]:
        """Row batches of one chunk and the rows left for the next; with `last`, the leftovers become batches too."""
        total = len(data)
        order = rng.permutation(total) if self.shuffle else np.arange(total)
        domain = data.column(DOMAIN_COLUMN).numpy() if self.composition != "mixed" else None
        if self.composition == "per_domain":
            order = order[stable_argsort(domain[order])]
            counts = np.bincount(domain, minlength=1)
            groups = np.split(order, np.cumsum(counts)[:-1])
        else:
            groups = [order]
        batches, leftover = [], []
        for group in groups:
            full = group.size - group.size % self.batch_size
            batches += [group[start: start + self.batch_size] for start in range(0, full, self.batch_size)]
            rest = group[full:]
            (batches if last and rest.size else leftover).append(rest)
        if self.shuffle and len(groups) > 1:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        if self.composition == "sorted":
            batches = [rows[np.argsort(domain[rows], kind="stable")] for rows in batches]
        remaining = np.concatenate(leftover) if leftover else np.empty(0, np.int64)
        return [torch.from_numpy(np.ascontiguousarray(rows)) for rows in batches], torch.from_numpy(remaining)
