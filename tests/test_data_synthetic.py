"""The synthetic generator: seeded, imbalanced, encoded and streamable, with figures recorded from its first version."""

import numpy as np
import pytest

from mlora_peft.data import make_synthetic, stream_synthetic, synthetic_click_probability, synthetic_table
from mlora_peft.metrics import roc_auc

COLUMNS = ["user", "item", "price", "domain_id", "label"]
SETTINGS = dict(num_domains=4, rows=4000, imbalance=1.5, domain_effect=2.0, seed=3)


def test_rows_match_figures_recorded_from_the_original_generator():
    table = synthetic_table(**SETTINGS).to_pandas()
    per_domain = table.groupby("domain")
    assert per_domain.size().tolist() == [1686, 1099, 739, 476]
    assert per_domain["label"].sum().astype(int).tolist() == [613, 460, 264, 252]
    assert (int(table["user"].sum()), int(table["item"].sum())) == (979268, 590712)
    assert float(table["price"].sum()) == pytest.approx(1990.722, abs=1e-3)


def test_make_synthetic_is_seeded_imbalanced_and_encoded():
    data = make_synthetic(num_domains=3, rows=6000, imbalance=2.0, seed=1)
    again = make_synthetic(num_domains=3, rows=6000, imbalance=2.0, seed=1)
    assert data.splits["train"].to_dict() == again.splits["train"].to_dict()
    rows = data.stats().groupby("domain")["rows"].sum()
    assert rows["domain_0"] > 1.6 * rows["domain_1"] > 2.5 * rows["domain_2"]
    assert data.splits["train"].column_names == COLUMNS
    assert [f.name for f in data.feature_spec] == ["user", "item", "price"]
    with pytest.raises(ValueError, match="rows >= 10 per domain"):
        make_synthetic(num_domains=5, rows=20)


def test_domain_effect_changes_click_rates_between_domains():
    flat = synthetic_table(num_domains=4, rows=40_000, domain_effect=0.0, seed=0).to_pandas()
    strong = synthetic_table(num_domains=4, rows=40_000, domain_effect=2.0, seed=0).to_pandas()
    assert flat.groupby("domain")["label"].mean().std() < strong.groupby("domain")["label"].mean().std()


def test_stream_is_chunked_reproducible_and_uses_the_same_model():
    chunks = list(stream_synthetic(num_domains=3, rows=25_000, chunk_rows=10_000, seed=2))
    assert [c.num_rows for c in chunks] == [10_000, 10_000, 5_000]
    middle = next(stream_synthetic(num_domains=3, rows=25_000, chunk_rows=10_000, seed=2, first_chunk=1, num_chunks=1))
    assert middle.equals(chunks[1])
    streamed = np.concatenate([c.column("label").to_numpy() for c in chunks]).mean()
    in_memory = synthetic_table(num_domains=3, rows=25_000, seed=2).column("label").to_numpy().mean()
    assert abs(streamed - in_memory) < 0.02  # same parameters, different row draws


def test_click_probability_is_the_generators_own_and_calibrated_on_fresh_rows():
    table = synthetic_table(num_domains=4, rows=200_000, domain_effect=1.0, seed=5)
    probability = synthetic_click_probability(table, num_domains=4, domain_effect=1.0, seed=5)
    labels = table.column("label").to_numpy()
    bins = np.quantile(probability, np.linspace(0, 1, 11))
    which = np.clip(np.searchsorted(bins, probability, side="right") - 1, 0, 9)
    for b in range(10):  # 20,000 rows a bin: the click rate matches the mean probability within ~4 standard errors
        assert abs(labels[which == b].mean() - probability[which == b].mean()) < 0.015
    other_seed = synthetic_click_probability(table, num_domains=4, domain_effect=1.0, seed=6)
    no_effect = synthetic_click_probability(table, num_domains=4, domain_effect=0.0, seed=5)
    assert roc_auc(labels, probability) > max(roc_auc(labels, other_seed), roc_auc(labels, no_effect)) + 0.05
