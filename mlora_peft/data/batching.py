"""Fast batches of an encoded split: index gathers on column tensors, planned per epoch in NumPy.

`TensorColumns` holds each column as one tensor built from the Arrow buffer; `DomainBatchSampler`
plans an epoch's batches as index tensors; the `DataLoader` from `make_loader` gathers every
column with one indexing op per batch. No step touches single rows in Python.

Compositions:
- `"mixed"` (default): rows shuffled across domains.
- `"per_domain"`: every batch holds one domain (the MLoRA paper's protocol); batch order is shuffled.
- `"sorted"`: mixed batches with rows sorted by domain inside each batch, so routing sees one
  contiguous segment per domain.
- `"sequential"`: one domain per batch, and every batch of a domain before the next domain's, the domains
  in a random order each epoch (a full pass over one domain, then the next: the paper's protocol option).

Processes: under `accelerate`'s `prepare`, process p takes batches p, p + P, ... . Two layouts:
- training (`even_batches=False`, the default when shuffling): the batch count is made a multiple
  of P by splitting the largest batches in two, so accelerate never pads and every row is seen
  exactly once per epoch. P is `num_processes`, or (when None) the `torch.distributed` world size
  at iteration time, as in `torch.utils.data.DistributedSampler`.
- evaluation (`even_batches=True`, the default without shuffling): batches of exactly
  `batch_size` rows but the last, the layout accelerate expects: it pads the last step with
  repeated rows so that every process gathers tensors of one shape, and `gather_for_metrics`
  drops the padding. Only `"mixed"` and `"sorted"` batches have this layout.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Literal, Optional, Union

import numpy as np
import torch
from torch import Tensor

from .columns import as_table
from .splits import stable_argsort
from .table_encoder import DOMAIN_COLUMN
from .tensors import table_tensors

Composition = Literal["mixed", "per_domain", "sorted", "sequential"]
COMPOSITIONS = ("mixed", "per_domain", "sorted", "sequential")
ONE_DOMAIN_PER_BATCH = ("per_domain", "sequential")


class RowBatch:
    """Row indices of one batch as an int64 tensor, passed whole to `TensorColumns.__getitems__`.

    A plain object rather than a list so that the indices never become Python ints; `len()` is the
    row count. Iterating it and adding a list (what accelerate does to pad the last evaluation
    step, at most P batches per epoch) work like a list of ints.

    Example:
        >>> batch = RowBatch(torch.tensor([4, 2])) + [7]
        >>> len(batch), list(batch)
        (3, [4, 2, 7])
    """

    __slots__ = ("rows",)

    def __init__(self, rows: Tensor) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return int(self.rows.numel())

    def __iter__(self) -> Iterator[int]:
        return iter(self.rows.tolist())

    def __add__(self, other: Union[RowBatch, Sequence[int]]) -> RowBatch:
        extra = other.rows if isinstance(other, RowBatch) else torch.as_tensor(list(other), dtype=torch.long)
        return RowBatch(torch.cat([self.rows, extra]))

    def __repr__(self) -> str:
        return f"RowBatch({len(self)} rows)"


class TensorColumns(torch.utils.data.Dataset):
    """An encoded split as tensors; a batch is gathered with one index op per column dtype.

    One-value columns of the same dtype are stacked row-major into one `(N, C)` matrix, so a
    batch of random rows costs one gather per dtype (each row's ids sit together in memory) and
    one transpose; every returned column is a contiguous `(B,)` tensor. Multi-value (dense
    `dim > 1`) columns are gathered on their own.

    Args:
        split: an encoded `datasets.Dataset` or pyarrow Table (no nulls).
        columns: columns to serve (default: all).

    Example:
        >>> import pyarrow as pa
        >>> data = TensorColumns(pa.table({"user": [3, 1, 2], "label": [1.0, 0.0, 1.0]}))
        >>> data.__getitems__(RowBatch(torch.tensor([2, 0])))["user"]
        tensor([2, 3])
    """

    def __init__(self, split: Any, columns: Optional[Sequence[str]] = None) -> None:
        tensors = table_tensors(as_table(split), columns)
        lengths = {len(t) for t in tensors.values()}
        if len(lengths) > 1:
            raise ValueError(f"Columns have different lengths {sorted(lengths)}; pass one table.")
        self.num_rows = lengths.pop() if lengths else 0
        self.names = list(tensors)
        flat = [n for n in self.names if tensors[n].dim() == 1]
        self._stacks = [  # (names, (N, C) matrix) per dtype of the one-value columns
            (names, torch.stack([tensors[n] for n in names], 1))
            for dtype in dict.fromkeys(tensors[n].dtype for n in flat)
            for names in [[n for n in flat if tensors[n].dtype == dtype]]
        ]
        self._wide = {n: tensors[n] for n in self.names if tensors[n].dim() > 1}

    def column(self, name: str) -> Tensor:
        """All rows of one column (a view)."""
        for names, matrix in self._stacks:
            if name in names:
                return matrix[:, names.index(name)]
        return self._wide[name]

    def __len__(self) -> int:
        return self.num_rows

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {name: self.column(name)[index] for name in self.names}

    def __getitems__(self, indices: Union[RowBatch, Tensor, Sequence[int]]) -> dict[str, Tensor]:
        if isinstance(indices, RowBatch):
            rows = indices.rows
        elif isinstance(indices, Sequence) and len(indices) == 1 and isinstance(indices[0], RowBatch):
            rows = indices[0].rows
        else:
            rows = torch.as_tensor(indices, dtype=torch.long)
        batch = {}
        for names, matrix in self._stacks:
            gathered = matrix.index_select(0, rows).t().contiguous()  # (C, B)
            batch.update(zip(names, gathered))
        batch.update((name, values.index_select(0, rows)) for name, values in self._wide.items())
        return {name: batch[name] for name in self.names}


class DomainBatchSampler(torch.utils.data.Sampler):
    """Plans each epoch's batches (as `RowBatch`es) for one of the three compositions.

    Args:
        domain_ids: int domain id per row `(N,)`.
        rows_per_batch: rows per batch (the last batch of a domain or epoch may be smaller).
        composition: `"mixed"`, `"per_domain"` or `"sorted"`.
        shuffle: reshuffle every epoch (seeded by `seed` and the epoch number).
        seed: base seed; every process must use the same one.
        num_processes: P, the number of processes sharing the batches (None: the
            `torch.distributed` world size, or 1); without `even_batches` the batch count is made
            a multiple of P.
        drop_last: drop incomplete batches (then rows may be skipped).
        even_batches: full batches but the last, for accelerate's evaluation padding (see the
            module docstring); default: True when not shuffling.

    Raises:
        ValueError: a bad composition or batch size, `even_batches` with `"per_domain"`, or
            fewer rows than processes.

    Example:
        >>> sampler = DomainBatchSampler(torch.tensor([0, 1, 0, 1, 1]), 2, composition="per_domain", shuffle=False,
        ...                              even_batches=False)
        >>> [b.rows.tolist() for b in sampler]
        [[0, 2], [1, 3], [4]]
    """

    def __init__(
        self,
        domain_ids: Union[Tensor, np.ndarray],
        rows_per_batch: int,
        *,
        composition: Composition = "mixed",
        shuffle: bool = True,
        seed: int = 0,
        num_processes: Optional[int] = None,
        drop_last: bool = False,
        even_batches: Optional[bool] = None,
    ) -> None:
        even_batches = not shuffle if even_batches is None else even_batches
        if even_batches and composition in ONE_DOMAIN_PER_BATCH:
            raise ValueError(
                f"even_batches=True (the default without shuffling) needs full batches, which {composition!r} cannot "
                "give; evaluate with composition='mixed' or 'sorted' (metrics are per domain anyway)."
            )
        if composition not in COMPOSITIONS:
            raise ValueError(f"composition={composition!r} is not one of {COMPOSITIONS}.")
        if isinstance(rows_per_batch, bool) or not isinstance(rows_per_batch, int) or rows_per_batch < 1:
            raise ValueError(f"batch_size={rows_per_batch!r} must be an int >= 1.")
        if num_processes is not None and (not isinstance(num_processes, int) or num_processes < 1):
            raise ValueError(f"num_processes={num_processes!r} must be an int >= 1 or None (auto).")
        self.domain_ids = np.asarray(domain_ids, dtype=np.int64)
        self.rows_per_batch = rows_per_batch
        self.composition, self.shuffle, self.seed = composition, shuffle, seed
        self.num_processes, self.drop_last, self.even_batches = num_processes, drop_last, even_batches
        if even_batches:  # accelerate reads `batch_size` to pad evenly and to count the padding rows it adds
            self.batch_size = rows_per_batch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use `epoch`'s shuffle next (iterating also advances the epoch by one)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self._bounds(self._layout()))

    def __iter__(self) -> Iterator[RowBatch]:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        order, bounds = self._plan(rng)
        for start, stop in self._bounds(bounds):
            rows = order[start:stop]
            if self.composition == "sorted":
                rows = rows[np.argsort(self.domain_ids[rows], kind="stable")]
            yield RowBatch(torch.from_numpy(np.ascontiguousarray(rows)))

    def _plan(self, rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """Row order and the (start, stop) bounds of each batch in it."""
        total = self.domain_ids.size
        order = rng.permutation(total) if self.shuffle else np.arange(total)
        bounds = self._layout()
        if self.composition == "per_domain":  # group by domain, keeping the shuffled order inside each domain
            order = order[stable_argsort(self.domain_ids[order])]
            if self.shuffle:
                bounds = [bounds[i] for i in rng.permutation(len(bounds))]
        elif self.composition == "sequential":
            order = order[stable_argsort(self.domain_ids[order])]
            if self.shuffle:  # whole domains in a random order, each domain's batches together
                by_domain = _per_domain_bounds(self.domain_ids, self.rows_per_batch)
                bounds = [b for d in rng.permutation(len(by_domain)) for b in by_domain[d]]
        return order, bounds

    def _layout(self) -> list[tuple[int, int]]:
        """Batch bounds before shuffling: consecutive chunks, or chunks within each domain's segment."""
        if self.composition not in ONE_DOMAIN_PER_BATCH:
            return _chunks(0, self.domain_ids.size, self.rows_per_batch)
        return [b for bounds in _per_domain_bounds(self.domain_ids, self.rows_per_batch) for b in bounds]

    def _bounds(self, bounds: list[tuple[int, int]]) -> list[tuple[int, int]]:
        if self.even_batches:
            return [(a, b) for a, b in bounds if b - a == self.rows_per_batch] if self.drop_last else bounds
        return _balance(bounds, self._processes(), self.drop_last)

    def _processes(self) -> int:
        if self.num_processes is not None:
            return self.num_processes
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        return torch.distributed.get_world_size() if distributed else 1


def make_loader(
    split: Any,
    *,
    batch_size: int,
    composition: Composition = "mixed",
    shuffle: bool = True,
    seed: int = 0,
    num_processes: Optional[int] = None,
    drop_last: bool = False,
    even_batches: Optional[bool] = None,
    columns: Optional[Sequence[str]] = None,
    domain_column: str = DOMAIN_COLUMN,
    **loader_kwargs: Any,
) -> torch.utils.data.DataLoader:
    """A `DataLoader` of dicts of column tensors over an encoded split.

    Args:
        split: an encoded `datasets.Dataset` or pyarrow Table.
        batch_size: rows per batch (per process under accelerate).
        composition: `"mixed"`, `"per_domain"`, `"sorted"` or `"sequential"` (see the module docstring).
        shuffle: reshuffle each epoch (use False for evaluation).
        seed: shuffling seed, the same on every process.
        num_processes: processes sharing the loader (None: the torch.distributed world size).
        drop_last: drop incomplete batches.
        even_batches: the evaluation layout (see the module docstring); default: True when not shuffling.
        columns: columns to serve (default: all).
        domain_column: the int domain id column used for composition.
        **loader_kwargs: other `DataLoader` arguments (`num_workers`, `pin_memory`, ...).

    Returns:
        A loader to pass to `accelerator.prepare` (or to iterate directly).

    Example:
        >>> import pyarrow as pa
        >>> table = pa.table({"user": list(range(10)), "domain_id": [0, 1] * 5, "label": [1.0] * 10})
        >>> loader = make_loader(table, batch_size=4, composition="per_domain", shuffle=False, even_batches=False)
        >>> [len(batch["user"]) for batch in loader]
        [4, 1, 4, 1]
    """
    data = TensorColumns(split, columns)
    if domain_column not in data.names:
        raise ValueError(f"No {domain_column!r} column to compose batches by; the split has {sorted(data.names)}.")
    sampler = DomainBatchSampler(data.column(domain_column).numpy(), batch_size, composition=composition,
                                 shuffle=shuffle, seed=seed, num_processes=num_processes, drop_last=drop_last,
                                 even_batches=even_batches)
    return torch.utils.data.DataLoader(data, batch_sampler=sampler, collate_fn=_as_batch, **loader_kwargs)


def _as_batch(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """`TensorColumns.__getitems__` already returns a batch dict; nothing to collate."""
    return batch


def _per_domain_bounds(domain_ids: np.ndarray, size: int) -> list[list[tuple[int, int]]]:
    """Per domain id, the bounds of its batches in the rows grouped by domain (ascending ids)."""
    counts = np.bincount(domain_ids, minlength=1)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    return [_chunks(start, start + count, size) for start, count in zip(starts.tolist(), counts.tolist())]


def _chunks(start: int, stop: int, size: int) -> list[tuple[int, int]]:
    return [(s, min(s + size, stop)) for s in range(start, stop, size)]


def _balance(bounds: list[tuple[int, int]], processes: int, drop_last: bool) -> list[tuple[int, int]]:
    """Make the batch count a multiple of `processes`: split the largest batches, or (drop_last) drop batches."""
    if drop_last:
        full = max((b - a for a, b in bounds), default=0)
        kept = [(a, b) for a, b in bounds if b - a == full]
        return kept[: len(kept) - len(kept) % processes]
    bounds = list(bounds)
    rows = sum(b - a for a, b in bounds)
    if processes > 1 and rows < processes:
        raise ValueError(f"The split has {rows} rows, fewer than the {processes} processes sharing it.")
    while len(bounds) % processes:
        largest = max(range(len(bounds)), key=lambda i: bounds[i][1] - bounds[i][0])
        start, stop = bounds[largest]
        middle = (start + stop + 1) // 2
        bounds[largest: largest + 1] = [(start, middle), (middle, stop)]
    return bounds
