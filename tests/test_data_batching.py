"""Batches: every row once per epoch in each composition, sharding as accelerate does it, streaming."""

import datasets
import numpy as np
import pyarrow as pa
import pytest
import torch
from accelerate.data_loader import BatchSamplerShard

from mlora_peft.data import (
    DomainBatchSampler,
    StreamingBatches,
    TensorColumns,
    make_loader,
    make_synthetic,
    stream_synthetic,
)

COMPOSITIONS = ("mixed", "per_domain", "sorted", "sequential")


def _table(rows: int = 1001, domains: int = 3, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({
        "row": np.arange(rows),
        "user": rng.integers(0, 20, rows),
        "price": rng.random(rows, dtype=np.float32),
        "emb": pa.FixedSizeListArray.from_arrays(pa.array(rng.random(2 * rows, dtype=np.float32)), 2),
        "domain_id": rng.choice(domains, rows, p=np.arange(1, domains + 1) / np.arange(1, domains + 1).sum()),
        "label": (rng.random(rows) < 0.3).astype(np.float32),
    })


def _check_composition(batch: dict, composition: str) -> None:
    domains = batch["domain_id"]
    if composition in ("per_domain", "sequential"):
        assert domains.unique().numel() == 1
    if composition == "sorted":
        assert bool((domains[1:] >= domains[:-1]).all())


@pytest.mark.parametrize("composition", COMPOSITIONS)
def test_every_row_once_per_epoch_with_consistent_columns(composition):
    table = _table()
    loader = make_loader(table, batch_size=64, composition=composition, seed=3)
    epochs = []
    for _ in range(2):
        rows = []
        for batch in loader:
            _check_composition(batch, composition)
            assert batch["user"].dtype == torch.int64 and batch["price"].dtype == torch.float32
            assert batch["emb"].shape == (len(batch["row"]), 2)
            original = table.take(pa.array(batch["row"].numpy()))
            assert batch["user"].tolist() == original.column("user").to_pylist()
            assert batch["domain_id"].tolist() == original.column("domain_id").to_pylist()
            rows.append(batch["row"])
        order = torch.cat(rows)
        assert sorted(order.tolist()) == list(range(table.num_rows))
        epochs.append(order)
    assert not torch.equal(epochs[0], epochs[1])  # reshuffled each epoch
    assert len(loader) == len(list(loader))


def test_sequential_passes_over_one_domain_before_the_next_in_a_new_order_each_epoch():
    loader = make_loader(_table(domains=4), batch_size=32, composition="sequential", seed=0)
    orders = []
    for _ in range(6):
        domains = [int(batch["domain_id"][0]) for batch in loader]
        runs = [d for i, d in enumerate(domains) if i == 0 or d != domains[i - 1]]
        assert sorted(runs) == [0, 1, 2, 3]  # each domain is one unbroken run of batches
        orders.append(tuple(runs))
    assert len(set(orders)) > 1  # the domains come in another order in some epoch
    in_order = [int(b["domain_id"][0]) for b in make_loader(_table(domains=4), batch_size=32, composition="sequential",
                                                            shuffle=False, even_batches=False)]
    assert in_order == sorted(in_order)


def test_same_seed_same_batches_and_no_shuffle_keeps_order():
    table = _table()
    first = [b["row"] for b in make_loader(table, batch_size=100, seed=7)]
    second = [b["row"] for b in make_loader(table, batch_size=100, seed=7)]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    ordered = torch.cat([b["row"] for b in make_loader(table, batch_size=100, shuffle=False)])
    assert ordered.tolist() == list(range(table.num_rows))


@pytest.mark.parametrize("composition", COMPOSITIONS)
@pytest.mark.parametrize("processes", [2, 3])
def test_accelerate_sharding_sees_every_row_once(composition, processes):
    """accelerate wraps the batch sampler in BatchSamplerShard; the shards must cover the rows without padding."""
    domain_ids = _table().column("domain_id").to_numpy()
    sampler = DomainBatchSampler(domain_ids, 50, composition=composition, seed=1, num_processes=processes)
    assert len(sampler) % processes == 0
    seen = []
    for rank in range(processes):
        sampler.set_epoch(4)
        shard = list(BatchSamplerShard(sampler, num_processes=processes, process_index=rank))
        assert len(shard) == len(sampler) // processes
        seen += [batch.rows for batch in shard]
    assert sorted(torch.cat(seen).tolist()) == list(range(domain_ids.size))


@pytest.mark.parametrize("rows", [1001, 1000, 30])
def test_evaluation_layout_lets_gather_for_metrics_drop_accelerates_padding(rows):
    """Unshuffled loaders keep full batches; accelerate pads the last step and counts the padding from batch_size."""
    processes, size = 2, 50
    sampler = DomainBatchSampler(np.zeros(rows, int), size, shuffle=False)
    shards = [list(BatchSamplerShard(sampler, num_processes=processes, process_index=r)) for r in range(processes)]
    assert len(shards[0]) == len(shards[1])
    gathered = []
    for step in zip(*shards):
        assert len({len(batch) for batch in step}) == 1  # one shape per step: all_gather works
        gathered.append([index for batch in step for index in batch])
    remainder = rows % (size * processes)  # what accelerate's gather_for_metrics keeps of the last step
    if remainder:
        gathered[-1] = gathered[-1][:remainder]
    assert sorted(i for step in gathered for i in step) == list(range(rows))
    with pytest.raises(ValueError, match="evaluate with composition='mixed'"):
        DomainBatchSampler(np.zeros(4, int), 2, composition="per_domain", shuffle=False)


def test_drop_last_keeps_only_full_batches():
    sampler = DomainBatchSampler(np.zeros(105, int), 10, drop_last=True, num_processes=4)
    assert [len(b) for b in sampler] == [10] * 8
    assert [len(b) for b in DomainBatchSampler(np.zeros(25, int), 10, shuffle=False, drop_last=True)] == [10, 10]


def test_sampler_and_loader_errors():
    with pytest.raises(ValueError, match="composition='domain'"):
        DomainBatchSampler(np.zeros(4, int), 2, composition="domain")
    with pytest.raises(ValueError, match="batch_size=0"):
        DomainBatchSampler(np.zeros(4, int), 0)
    with pytest.raises(ValueError, match="fewer than the 4 processes"):
        list(DomainBatchSampler(np.zeros(3, int), 2, num_processes=4))
    with pytest.raises(ValueError, match="No 'domain_id' column"):
        make_loader(pa.table({"x": [1]}), batch_size=1)
    with pytest.raises(TypeError, match="encode the data"):
        TensorColumns(pa.table({"city": ["a"]}))
    with pytest.raises(ValueError, match="full batches, which 'sequential' cannot"):
        DomainBatchSampler(np.zeros(3, int), 2, composition="sequential", shuffle=False)
    with pytest.raises(ValueError, match="use make_loader for 'sequential'"):
        StreamingBatches(lambda: iter([]), batch_size=2, composition="sequential")


def test_loader_from_multidomain_data_and_dataloader_workers():
    data = make_synthetic(num_domains=3, rows=2000, seed=2)
    loader = data.loader("train", batch_size=128, composition="per_domain", num_workers=1)
    total = sum(len(b["label"]) for b in loader)
    assert total == data.splits["train"].num_rows
    assert set(next(iter(data.loader("test", batch_size=8)))) == {"user", "item", "price", "domain_id", "label"}


@pytest.mark.parametrize("composition", [c for c in COMPOSITIONS if c != "sequential"])
def test_streaming_yields_every_row_once(composition):
    table = _table(rows=2500)
    chunks = lambda: (table.slice(start, 700) for start in range(0, table.num_rows, 700))  # noqa: E731
    stream = StreamingBatches(chunks, batch_size=128, composition=composition, seed=1)
    batches = list(stream)
    for batch in batches:
        _check_composition(batch, composition)
    sizes = [len(b["row"]) for b in batches]
    if composition != "per_domain":
        assert sizes[:-1] == [128] * (len(sizes) - 1)  # rows carry over between chunks: only the last is short
    else:
        assert sum(size < 128 for size in sizes) <= 3  # at most one short batch per domain
    epoch = torch.cat([b["row"] for b in batches])
    assert sorted(epoch.tolist()) == list(range(table.num_rows))
    again = torch.cat([b["row"] for b in stream])
    assert not torch.equal(epoch, again)


def test_streaming_from_datasets_objects_and_raw_chunks_with_an_encoder():
    table = _table(rows=900)
    dataset = datasets.Dataset(datasets.table.InMemoryTable(table))
    from_dataset = torch.cat([b["row"] for b in StreamingBatches(dataset, batch_size=100, chunk_rows=256)])
    assert sorted(from_dataset.tolist()) == list(range(900))
    iterable = dataset.to_iterable_dataset(num_shards=3)
    from_iterable = torch.cat([b["row"] for b in StreamingBatches(iterable, batch_size=100, chunk_rows=256)])
    assert sorted(from_iterable.tolist()) == list(range(900))
    encoder = make_synthetic(rows=3000, seed=0).encoder
    stream = StreamingBatches(lambda: stream_synthetic(rows=5000, chunk_rows=1500, seed=0), batch_size=512,
                              encoder=encoder, composition="per_domain")
    batches = list(stream)
    assert sum(len(b["label"]) for b in batches) == 5000
    assert set(batches[0]) == {"user", "item", "price", "domain_id", "label"}
    with pytest.raises(TypeError, match="pass a callable"):
        StreamingBatches([table], batch_size=10)


def test_streaming_workers_split_the_chunks():
    table = _table(rows=1200)
    chunks = lambda: (table.slice(start, 300) for start in range(0, 1200, 300))  # noqa: E731
    loader = torch.utils.data.DataLoader(StreamingBatches(chunks, batch_size=100), batch_size=None, num_workers=2)
    rows = torch.cat([b["row"] for b in loader])
    assert sorted(rows.tolist()) == list(range(1200))
