"""Synthetic multi-domain CTR data with a known, tunable domain-specific effect.

The generative model (unchanged from `mlora_peft.synthetic.make_synthetic_ctr`, draw for draw, so
results stay comparable): each row has a user, an item, a price in [0, 1) and a domain. The
click logit is a shared part (user and item biases, a user-item affinity, a price slope) plus,
scaled by `domain_effect`, a domain-specific part (per-domain user taste, item appeal, price slope
and offset). Domain d's share of rows is proportional to `imbalance ** -d`.

`make_synthetic` returns split and encoded data (small by default: the embedded example data
set); `stream_synthetic` yields raw chunks of the same model for scale tests with tens of
millions of rows, without holding them in memory; `synthetic_click_probability` gives the
generator's own click probability of any such rows, the ceiling a model can reach.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pyarrow as pa

from .loading import MultiDomainData, load_multidomain
from .splits import DEFAULT_FRACTIONS

_AFFINITY_DIM = 2


@dataclass(frozen=True)
class _Model:
    """The drawn parameters of the generative model."""

    user_bias: np.ndarray  # (users,)
    item_bias: np.ndarray  # (items,)
    user_vec: np.ndarray  # (users, 2)
    item_vec: np.ndarray  # (items, 2)
    domain_user: np.ndarray  # (D, users)
    domain_item: np.ndarray  # (D, items)
    domain_price: np.ndarray  # (D,)
    domain_offset: np.ndarray  # (D,)


def make_synthetic(
    num_domains: int = 3,
    rows: int = 30_000,
    users: int = 500,
    items: int = 300,
    domain_effect: float = 1.0,
    imbalance: float = 1.0,
    seed: int = 0,
    split: Sequence[float] = DEFAULT_FRACTIONS,
    embedding_dim: int = 8,
) -> MultiDomainData:
    """Seeded synthetic data, split per domain (stratified by label) and encoded.

    Args:
        num_domains: number of domains D.
        rows: rows over all splits.
        users, items: id vocabulary sizes.
        domain_effect: weight of the domain-specific part of the click logit (0 = none).
        imbalance: domain d's share is proportional to `imbalance ** -d` (1.0 = equal sizes).
        seed: fixes the model, the rows and the split.
        split: train / validation / test fractions.
        embedding_dim: embedding width in the feature spec.

    Returns:
        A `MultiDomainData`: sparse `user`, `item`, dense `price`; domains `domain_0`, `domain_1`, ...

    Raises:
        ValueError: fewer than 10 rows per domain or a bad split.

    Example:
        >>> data = make_synthetic(num_domains=2, rows=1000, seed=1)
        >>> data.domain_names, data.splits["train"].column_names
        (('domain_0', 'domain_1'), ['user', 'item', 'price', 'domain_id', 'label'])
    """
    table = synthetic_table(num_domains, rows, users, items, domain_effect, imbalance, seed)
    present = sorted(set(table.column("domain").to_pylist()))
    return load_multidomain(table, label="label", domain="domain", sparse=["user", "item"], dense=["price"],
                            split=split, seed=seed, domain_order=present,
                            domain_names=[f"domain_{d}" for d in present], embedding_dim=embedding_dim)


def synthetic_table(
    num_domains: int = 3,
    rows: int = 30_000,
    users: int = 500,
    items: int = 300,
    domain_effect: float = 1.0,
    imbalance: float = 1.0,
    seed: int = 0,
) -> pa.Table:
    """The raw rows of `make_synthetic`: int64 `user`, `item`, `domain`, float32 `price` and `label`.

    Args:
        num_domains, rows, users, items, domain_effect, imbalance, seed: as in `make_synthetic`.

    Returns:
        A pyarrow Table of `rows` rows.

    Raises:
        ValueError: fewer than 10 rows per domain.

    Example:
        >>> synthetic_table(num_domains=2, rows=100).column_names
        ['user', 'item', 'price', 'domain', 'label']
    """
    _check_sizes(num_domains, rows)
    rng = np.random.default_rng(seed)
    model = _draw_model(rng, num_domains, users, items)
    return _draw_rows(rng, model, rows, domain_effect, imbalance)


def stream_synthetic(
    num_domains: int = 3,
    rows: int = 10_000_000,
    users: int = 500,
    items: int = 300,
    domain_effect: float = 1.0,
    imbalance: float = 1.0,
    seed: int = 0,
    chunk_rows: int = 1_000_000,
    first_chunk: int = 0,
    num_chunks: Optional[int] = None,
) -> Iterator[pa.Table]:
    """Raw chunks of the same model (same parameters as `synthetic_table` for the seed), `chunk_rows` each.

    Chunk k's rows are drawn from a generator seeded with `(seed, k)`, so any range of chunks can
    be produced independently (e.g. one range per process) and the stream is reproducible.

    Args:
        num_domains, users, items, domain_effect, imbalance, seed: as in `make_synthetic`.
        rows: total rows of the whole stream.
        chunk_rows: rows per chunk (the last chunk may be smaller).
        first_chunk: index of the first chunk to produce.
        num_chunks: how many chunks to produce (default: up to the end).

    Yields:
        pyarrow Tables with the columns of `synthetic_table`.

    Example:
        >>> sum(chunk.num_rows for chunk in stream_synthetic(rows=25_000, chunk_rows=10_000))
        25000
    """
    _check_sizes(num_domains, rows)
    model = _draw_model(np.random.default_rng(seed), num_domains, users, items)
    total_chunks = -(-rows // chunk_rows)
    last = total_chunks if num_chunks is None else min(total_chunks, first_chunk + num_chunks)
    for index in range(first_chunk, last):
        size = min(chunk_rows, rows - index * chunk_rows)
        yield _draw_rows(np.random.default_rng([seed, index]), model, size, domain_effect, imbalance)


def _draw_model(rng: np.random.Generator, num_domains: int, users: int, items: int) -> _Model:
    user_bias, item_bias = rng.normal(size=users), rng.normal(size=items)
    user_vec, item_vec = rng.normal(size=(users, _AFFINITY_DIM)), rng.normal(size=(items, _AFFINITY_DIM))
    domain_user, domain_item = rng.normal(size=(num_domains, users)), rng.normal(size=(num_domains, items))
    domain_price = rng.normal(scale=2.0, size=num_domains)
    domain_offset = rng.normal(scale=0.5, size=num_domains)
    return _Model(user_bias, item_bias, user_vec, item_vec, domain_user, domain_item, domain_price, domain_offset)


def _draw_rows(rng: np.random.Generator, model: _Model, rows: int, domain_effect: float, imbalance: float) -> pa.Table:
    num_domains, users = model.domain_user.shape
    items = model.item_bias.size
    share = imbalance ** -np.arange(num_domains, dtype=np.float64)
    domain = rng.choice(num_domains, size=rows, p=share / share.sum())
    user = rng.integers(0, users, size=rows)
    item = rng.integers(0, items, size=rows)
    price = rng.random(rows).astype(np.float32)
    label = (rng.random(rows) < _click_probability(model, user, item, price, domain, domain_effect)).astype(np.float32)
    return pa.table({"user": user, "item": item, "price": price, "domain": domain, "label": label})


def _click_probability(model: _Model, user: np.ndarray, item: np.ndarray, price: np.ndarray, domain: np.ndarray,
                       domain_effect: float) -> np.ndarray:
    shared = (model.user_bias[user] + model.item_bias[item] + (model.user_vec[user] * model.item_vec[item]).sum(1)
              - price)
    specific = (model.domain_user[domain, user] + model.domain_item[domain, item]
                + model.domain_price[domain] * (price - 0.5))
    logit = shared + domain_effect * (specific + model.domain_offset[domain]) - 1.0
    return 1 / (1 + np.exp(-logit))


def synthetic_click_probability(
    table: pa.Table,
    num_domains: int = 3,
    users: int = 500,
    items: int = 300,
    domain_effect: float = 1.0,
    seed: int = 0,
) -> np.ndarray:
    """The generator's own click probability of each row of `table`: the Bayes-optimal score.

    No model can rank the rows better in expectation, so its AUC on a split is the ceiling for
    any model trained on that data.

    Args:
        table: rows of `synthetic_table` / `stream_synthetic` (the columns `user`, `item`, `price`, `domain`).
        num_domains, users, items, domain_effect, seed: the arguments the rows were drawn with.

    Returns:
        float64 probabilities `(N,)`.

    Example:
        >>> rows = synthetic_table(num_domains=2, rows=100, seed=3)
        >>> p = synthetic_click_probability(rows, num_domains=2, seed=3)
        >>> p.shape, bool(((p > 0) & (p < 1)).all())
        ((100,), True)
    """
    model = _draw_model(np.random.default_rng(seed), num_domains, users, items)
    columns = [table.column(name).to_numpy() for name in ("user", "item", "price", "domain")]
    return _click_probability(model, *columns, domain_effect)


def _check_sizes(num_domains: int, rows: int) -> None:
    if num_domains < 1 or rows < 10 * num_domains:
        raise ValueError(
            f"Need num_domains >= 1 and rows >= 10 per domain, got num_domains={num_domains}, rows={rows}."
        )
