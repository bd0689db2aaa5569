"""`load_multidomain`: sources, splits, encoding on train only, stats, and the policies for awkward data."""

import gzip
import json
import warnings

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlora_peft.data import EmptyDomainWarning, TimeSplit, load_multidomain, read_source, stratified_parts, time_parts


def _frame(rows: int = 600, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "user": rng.integers(0, 50, rows),
        "shop": rng.choice(["s1", "s2", "s3"], rows),
        "price": rng.random(rows),
        "country": rng.choice(["fr", "de", "nl"], rows, p=[0.5, 0.3, 0.2]),
        "ts": rng.permutation(rows),
        "click": (rng.random(rows) < 0.3).astype(int),
    })


def _write(frame: pd.DataFrame, path, kind: str) -> None:
    if kind == "csv":
        frame.to_csv(path, index=False)
    elif kind == "tsv":
        frame.to_csv(path, sep="\t", index=False)
    elif kind == "csv.gz":
        with gzip.open(path, "wt") as handle:
            frame.to_csv(handle, index=False)
    elif kind == "parquet":
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    elif kind == "jsonl.gz":
        with gzip.open(path, "wt") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in frame.to_dict("records"))
    elif kind == "json":
        path.write_text(json.dumps(frame.to_dict("records")))


@pytest.mark.parametrize("kind", ["csv", "tsv", "csv.gz", "parquet", "jsonl.gz", "json"])
def test_every_file_format_gives_the_same_splits(tmp_path, kind):
    frame = _frame()
    path = tmp_path / f"clicks.{kind}"
    _write(frame, path, kind)
    from_file = load_multidomain(path, label="click", domain="country", sparse=["user", "shop"], dense=["price"])
    from_frame = load_multidomain(frame, label="click", domain="country", sparse=["user", "shop"], dense=["price"])
    for name in ("train", "validation", "test"):
        assert from_file.splits[name].to_dict() == from_frame.splits[name].to_dict()


def test_datasets_objects_and_a_dict_of_files(tmp_path):
    frame = _frame()
    kwargs = dict(label="click", domain="country", sparse=["user"], dense=[])
    from_dataset = load_multidomain(datasets.Dataset.from_pandas(frame), **kwargs)
    assert from_dataset.splits["train"].to_dict() == load_multidomain(frame, **kwargs).splits["train"].to_dict()
    parts = {"train": frame[:400], "valid": frame[400:500], "test": frame[500:]}
    from_dict = load_multidomain(datasets.DatasetDict({k: datasets.Dataset.from_pandas(v) for k, v in parts.items()}),
                                 **kwargs)
    assert [from_dict.splits[n].num_rows for n in ("train", "validation", "test")] == [400, 100, 100]
    for name, part in parts.items():
        part.to_csv(tmp_path / f"{name}.csv", index=False)
    from_files = load_multidomain({n: tmp_path / f"{n}.csv" for n in parts}, **kwargs)
    assert from_files.splits["test"].to_dict() == from_dict.splits["test"].to_dict()


def test_hub_ids_go_through_datasets_load_dataset(monkeypatch):
    calls = []

    def fake_load_dataset(name, **kwargs):
        calls.append((name, kwargs))
        return datasets.DatasetDict({"train": datasets.Dataset.from_pandas(_frame()[:500]),
                                     "test": datasets.Dataset.from_pandas(_frame()[500:])})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data = load_multidomain("someone/clicks", label="click", domain="country", sparse=["user"], revision="main")
    assert calls == [("someone/clicks", {"revision": "main"})]
    assert data.splits["train"].num_rows + data.splits["validation"].num_rows == 500  # validation carved from train
    assert data.splits["test"].num_rows == 100


def test_missing_files_and_bad_options_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="No file matches"):
        read_source(tmp_path / "absent.csv")
    with pytest.raises(TypeError, match="apply to files"):
        read_source(_frame(), delimiter=";")
    with pytest.raises(ValueError, match="Unknown split names"):
        read_source({"training": _frame()})


def test_stratified_split_is_exact_per_cell_and_seeded():
    domains = np.repeat([0, 1, 2], [101, 57, 13])
    labels = np.random.default_rng(1).random(domains.size) < 0.3
    parts = stratified_parts(domains, labels, (0.6, 0.2, 0.2), seed=5)
    for d in range(3):
        for y in (False, True):
            cell = parts[(domains == d) & (labels == y)]
            for i, share in enumerate((0.6, 0.2, 0.2)):
                assert abs((cell == i).sum() - share * cell.size) <= 1
    assert np.array_equal(parts, stratified_parts(domains, labels, (0.6, 0.2, 0.2), seed=5))
    assert not np.array_equal(parts, stratified_parts(domains, labels, (0.6, 0.2, 0.2), seed=6))
    with pytest.raises(ValueError, match="summing to 1"):
        stratified_parts(domains, labels, (0.6, 0.2), seed=0)


def test_time_split_puts_the_latest_rows_in_test():
    times = pa.array([5, 1, 4, 2, 3, 9, 8, 7, 6, 10])
    parts = time_parts(times, (0.6, 0.2, 0.2), seed=0)
    assert parts.tolist() == [0, 0, 0, 0, 0, 2, 1, 1, 0, 2]
    per_domain = time_parts(times, (0.5, 0.0, 0.5), seed=0, domain_codes=np.array([0] * 5 + [1] * 5))
    assert per_domain.tolist() == [2, 0, 2, 0, 2, 2, 2, 0, 0, 2]  # round(2.5) = 2: 2 train, 3 test rows
    with pytest.raises(TypeError, match="parse strings first"):
        time_parts(pa.array(["2020-01-01"]), (0.6, 0.2, 0.2), seed=0)
    data = load_multidomain(_frame(), label="click", domain="country", sparse=["user"], split=TimeSplit("ts"))
    assert "ts" not in data.splits["train"].column_names


def test_encoding_uses_train_statistics_only():
    frame = _frame()
    train, test = frame[:500].copy(), frame[500:].copy()
    test["shop"] = "s_new"
    test["price"] = test["price"] + 10
    data = load_multidomain({"train": train, "test": test}, label="click", domain="country", sparse=["shop"],
                            dense=["price"], seed=3)
    assert data.encoder.sparse[0].values == ("s1", "s2", "s3")
    assert set(data.splits["test"]["shop"]) == {0}  # unknown in train -> 0
    train_price = data.splits["train"].to_pandas()["price"]  # standardised with its own (train) statistics
    assert abs(train_price.mean()) < 1e-5 and abs(train_price.std(ddof=0) - 1) < 1e-4
    assert data.splits["test"].to_pandas()["price"].min() > 20  # test rows were not used for the statistics


def test_inferred_features_and_stats():
    frame = _frame()
    data = load_multidomain(frame, label="click", domain="country", exclude=["ts"])
    assert [f.name for f in data.feature_spec] == ["user", "shop", "price"]
    stats = data.stats()
    assert list(stats.columns) == ["split", "domain", "rows", "positives", "ctr"]
    assert stats["rows"].sum() == len(frame) and stats["positives"].sum() == frame["click"].sum()
    per_domain = stats.groupby("domain")["rows"].sum().to_dict()
    assert per_domain == frame["country"].value_counts().to_dict()


def test_missing_columns_and_labels_are_errors():
    frame = _frame()
    with pytest.raises(ValueError, match="Missing domain column 'market'"):
        load_multidomain(frame, label="click", domain="market", sparse=["user"])
    with pytest.raises(ValueError, match="Missing sparse column 'item'"):
        load_multidomain(frame, label="click", domain="country", sparse=["item"])
    with pytest.raises(ValueError, match="neither a column nor a rule"):
        load_multidomain(frame, label="clicked", domain="country", sparse=["user"])
    with pytest.raises(ValueError, match="not binary"):
        load_multidomain(frame, label="user", domain="country", sparse=["shop"])
    frame.loc[3, "country"] = None
    with pytest.raises(ValueError, match="1 missing values"):
        load_multidomain(frame, label="click", domain="country", sparse=["user"])


def test_domain_only_in_test_is_an_error_and_empty_domains_warn():
    frame = _frame()
    train, test = frame[:500].copy(), frame[500:].copy()
    test.loc[test.index[0], "country"] = "be"
    with pytest.raises(ValueError, match=r"\['be'\] appear in the test split but not in train"):
        load_multidomain({"train": train, "test": test}, label="click", domain="country", sparse=["user"])
    frame.loc[frame.index[0], "country"] = "lu"  # one row: lands in train, absent from validation and test
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_multidomain(frame, label="click", domain="country", sparse=["user"])
    messages = [str(w.message) for w in caught if issubclass(w.category, EmptyDomainWarning)]
    assert [m[:48] for m in messages] == ["Domains ['lu'] have no rows in the validation sp",
                                          "Domains ['lu'] have no rows in the test split; t"]
    assert data.stats().query("domain == 'lu'")["rows"].tolist() == [1, 0, 0]


def test_nan_ids_become_zero_and_nan_dense_values_the_train_mean():
    frame = _frame()
    frame["user"] = frame["user"].astype(float)
    frame.loc[::7, "user"] = np.nan
    frame.loc[::5, "price"] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = load_multidomain(frame, label="click", domain="country", sparse=["user"], dense=["price"], seed=1)
    rows = pd.concat([data.splits[n].to_pandas() for n in ("train", "validation", "test")])
    assert (rows["user"] == 0).sum() == frame["user"].isna().sum()
    assert rows["price"].notna().all()


def test_provided_split_option_requires_splits():
    with pytest.raises(ValueError, match="needs train and test"):
        load_multidomain(_frame(), label="click", domain="country", sparse=["user"], split="provided")
    with pytest.raises(ValueError, match="split='random'"):
        load_multidomain(_frame(), label="click", domain="country", sparse=["user"], split="random")
