"""Synthetic multi-domain CTR data with a known, tunable domain-specific effect.

Each row has a user id, an item id, a dense price and a domain. The click logit is a shared part
(user and item biases, a user-item affinity, a price slope) plus, scaled by `domain_effect`, a
domain-specific part: per-domain user taste, item appeal, price slope and offset. With `domain_effect=0` the
domains differ only in size; the larger the effect, the more per-domain adapters can help.
"""

from __future__ import annotations

import datasets
import numpy as np


def make_synthetic_ctr(
    num_domains: int = 3,
    rows: int = 30_000,
    users: int = 500,
    items: int = 300,
    domain_effect: float = 1.0,
    imbalance: float = 1.0,
    seed: int = 0,
    split: tuple[float, float, float] = (0.6, 0.2, 0.2),
) -> datasets.DatasetDict:
    """A seeded `DatasetDict` with train / validation / test splits, stratified by domain.

    Args:
        num_domains: number of domains D.
        rows: total rows over all splits.
        users, items: id vocabulary sizes.
        domain_effect: weight of the domain-specific part of the click logit (0 = none).
        imbalance: domain d gets a share proportional to imbalance ** -d (1.0 = equal sizes).
        seed: fixes ids, effects, labels and the split.
        split: train / validation / test fractions.

    Returns:
        Splits with int64 columns `user`, `item`, `domain_id`, float32 `price` and `label`.

    Example:
        >>> data = make_synthetic_ctr(num_domains=2, rows=1000, seed=1)
        >>> sorted(data), data["train"].column_names
        (['test', 'train', 'validation'], ['user', 'item', 'price', 'domain_id', 'label'])
    """
    if num_domains < 1 or rows < 10 * num_domains:
        raise ValueError(f"Need num_domains >= 1 and rows >= 10 per domain, got {num_domains} and {rows}.")
    if abs(sum(split) - 1.0) > 1e-9 or min(split) <= 0:
        raise ValueError(f"split={split} must be three positive fractions summing to 1.")
    rng = np.random.default_rng(seed)
    dim = 2
    user_bias, item_bias = rng.normal(size=users), rng.normal(size=items)
    user_vec, item_vec = rng.normal(size=(users, dim)), rng.normal(size=(items, dim))
    # the domain-specific part: per-domain user taste, item appeal, price slope and offset
    domain_user, domain_item = rng.normal(size=(num_domains, users)), rng.normal(size=(num_domains, items))
    domain_price = rng.normal(scale=2.0, size=num_domains)
    domain_offset = rng.normal(scale=0.5, size=num_domains)

    share = imbalance ** -np.arange(num_domains, dtype=np.float64)
    domain = rng.choice(num_domains, size=rows, p=share / share.sum())
    user = rng.integers(0, users, size=rows)
    item = rng.integers(0, items, size=rows)
    price = rng.random(rows).astype(np.float32)
    shared = user_bias[user] + item_bias[item] + (user_vec[user] * item_vec[item]).sum(1) - price
    specific = domain_user[domain, user] + domain_item[domain, item] + domain_price[domain] * (price - 0.5)
    logit = shared + domain_effect * (specific + domain_offset[domain]) - 1.0
    label = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.float32)

    part = _split_within_domains(domain, split, rng)
    columns = {"user": user, "item": item, "price": price, "domain_id": domain, "label": label}
    return datasets.DatasetDict({
        name: datasets.Dataset.from_dict({k: v[part == i] for k, v in columns.items()})
        for i, name in enumerate(("train", "validation", "test"))
    })


def _split_within_domains(domain: np.ndarray, split: tuple[float, float, float], rng) -> np.ndarray:
    """0/1/2 (train/validation/test) per row, with the fractions held within every domain."""
    part = np.empty(domain.size, dtype=np.int64)
    for d in np.unique(domain):
        rows = rng.permutation(np.flatnonzero(domain == d))
        train_end = int(round(split[0] * rows.size))
        valid_end = train_end + int(round(split[1] * rows.size))
        part[rows[:train_end]], part[rows[train_end:valid_end]], part[rows[valid_end:]] = 0, 1, 2
    return part
