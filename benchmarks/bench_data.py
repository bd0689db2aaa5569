"""Benchmark the batch path: rows/s of each composition beside the training step time of a small model.

    python -m benchmarks.bench_data                      # 1M rows, 40 columns, batch 4096, one thread
    python -m benchmarks.bench_data --rows 200000 --threads 2

The table has 30 sparse id columns, 8 dense columns, `domain_id` and `label` (40 columns). The
in-memory path (`make_loader`) is timed for each composition, then the streaming path
(`StreamingBatches`) over encoded chunks; the model is an embedding + MLP over all features,
timed for one Adam step on a batch of the same size.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from mlora_peft.data import StreamingBatches, make_loader

SPARSE, DENSE, VOCAB = 30, 8, 10_000


def make_table(rows: int, domains: int, seed: int = 0) -> pa.Table:
    """An encoded table: int64 ids in [0, VOCAB), float32 dense values, domain ids and labels."""
    rng = np.random.default_rng(seed)
    columns = {f"sparse_{i}": rng.integers(0, VOCAB, rows) for i in range(SPARSE)}
    columns |= {f"dense_{i}": rng.random(rows, dtype=np.float32) for i in range(DENSE)}
    columns["domain_id"] = rng.integers(0, domains, rows)
    columns["label"] = (rng.random(rows) < 0.2).astype(np.float32)
    return pa.table(columns)


class EmbeddingMLP(nn.Module):
    """One embedding table per sparse column, concatenated with the dense values, then a ReLU MLP to a logit."""

    def __init__(self, dim: int = 8, hidden: tuple[int, ...] = (256, 128, 64)) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(VOCAB, dim) for _ in range(SPARSE))
        layers, width = [], SPARSE * dim + DENSE
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.mlp = nn.Sequential(*layers, nn.Linear(width, 1))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids = [table(batch[f"sparse_{i}"]) for i, table in enumerate(self.embeddings)]  # SPARSE x (N, dim)
        dense = torch.stack([batch[f"dense_{i}"] for i in range(DENSE)], 1)  # (N, DENSE)
        return self.mlp(torch.cat(ids + [dense], 1)).squeeze(-1)  # (N,)


def rows_per_second(batches, epochs: int) -> tuple[float, int]:
    """Iterate `epochs` epochs; returns (rows/s, rows per epoch)."""
    start, rows = time.perf_counter(), 0
    for _ in range(epochs):
        for batch in batches:
            rows += len(batch["label"])
    return rows / (time.perf_counter() - start), rows // epochs


def step_time(table: pa.Table, batch_size: int, steps: int) -> float:
    """Mean seconds per Adam step of `EmbeddingMLP` on batches from the in-memory loader."""
    model = EmbeddingMLP()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    batches = iter(make_loader(table, batch_size=batch_size, seed=1))
    timings = []
    for _ in range(steps + 1):  # the first step warms up
        batch = next(batches)
        start = time.perf_counter()
        loss = loss_fn(model(batch), batch["label"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        timings.append(time.perf_counter() - start)
    return float(np.mean(timings[1:]))


def main(rows: int, batch_size: int, domains: int, epochs: int, steps: int) -> None:
    table = make_table(rows, domains)
    print(f"{rows:,} rows x {table.num_columns} columns, batch {batch_size}, {torch.get_num_threads()} thread(s)")
    print(f"{'path':<28}{'rows/s':>14}")
    for composition in ("mixed", "per_domain", "sorted"):
        loader = make_loader(table, batch_size=batch_size, composition=composition)
        speed, seen = rows_per_second(loader, epochs)
        if seen != rows:
            raise RuntimeError(f"The {composition} loader served {seen} rows per epoch instead of {rows}.")
        print(f"{'in-memory ' + composition:<28}{speed:>14,.0f}")
    chunk_rows = 1 << 18
    chunks = lambda: (table.slice(start, chunk_rows) for start in range(0, rows, chunk_rows))  # noqa: E731
    stream = StreamingBatches(chunks, batch_size=batch_size)
    speed, _ = rows_per_second(stream, epochs)
    print(f"{'streaming mixed':<28}{speed:>14,.0f}")
    seconds = step_time(table, batch_size, steps)
    print(f"\nEmbeddingMLP training step: {seconds * 1e3:.1f} ms per batch of {batch_size} "
          f"({batch_size / seconds:,.0f} rows/s)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="Rows in the table.")
    parser.add_argument("--batch-size", type=int, default=4096, help="Rows per batch.")
    parser.add_argument("--domains", type=int, default=6, help="Number of domains.")
    parser.add_argument("--epochs", type=int, default=2, help="Epochs timed per path.")
    parser.add_argument("--steps", type=int, default=20, help="Training steps timed.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 = one core).")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    main(args.rows, args.batch_size, args.domains, args.epochs, args.steps)
