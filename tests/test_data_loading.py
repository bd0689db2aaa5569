"""`load_multidomain`: sources, splits, encoding on train only, stats, and the policies for awkward data."""

import gzip
import json
import re
import time
import warnings

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlora_peft.data import (EmptyDomainWarning, MultiDomainEncoder, OneClassWarning, TimeSplit, load_multidomain,
                             read_source, stratified_parts, time_parts)


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


# ------------------------------------------------------------------------------------ awkward inputs (issue 17)
def test_a_numeric_column_with_one_junk_cell_is_refused_naming_the_cell(tmp_path):
    frame = _frame()
    frame["price"] = frame["price"].round(3).astype(str)
    frame.loc[7, "price"] = "n/a?"  # pyarrow reads the column as text, not as numbers with one missing value
    frame.to_csv(tmp_path / "clicks.csv", index=False)
    with pytest.raises(ValueError, match=r"Column 'price' looks numeric, but row 7 holds 'n/a\?' \(1 such cell beside "
                                         r"599 numbers\).*dense=\[\.\.\., 'price'\].*sparse=\[\.\.\., 'price'\]"):
        load_multidomain(tmp_path / "clicks.csv", label="click", domain="country", exclude=["ts"])
    train = _frame().assign(price=lambda f: f["price"].round(3).astype(str))  # numbers as text, no junk: fine here
    with pytest.raises(ValueError, match=r"row 7 of the test split holds 'n/a\?'"):
        load_multidomain({"train": train, "test": pd.read_csv(tmp_path / "clicks.csv", dtype={"price": str})},
                         label="click", domain="country", exclude=["ts"])
    with pytest.raises(TypeError, match=r"Dense column 'price' holds text that is not a number: row 7 holds 'n/a\?'"):
        load_multidomain(tmp_path / "clicks.csv", label="click", domain="country", sparse=["user"], dense=["price"])
    declared = load_multidomain(tmp_path / "clicks.csv", label="click", domain="country", sparse=["user", "price"])
    assert [f.name for f in declared.feature_spec] == ["user", "price"]  # categories, as declared


def test_a_categorical_text_column_is_still_inferred_as_sparse():
    frame = _frame().assign(zone=lambda f: np.where(f["user"] % 2, "north", "7"))  # half of the cells are numbers
    data = load_multidomain(frame, label="click", domain="country", exclude=["ts"])
    assert [(f.name, type(f).__name__) for f in data.feature_spec][-2:] == [("zone", "SparseFeature"),
                                                                          ("price", "DenseFeature")]


@pytest.mark.parametrize("label", ["click", "click==1"])
def test_the_label_column_as_domain_is_refused(label):
    with pytest.raises(ValueError, match=r"domain='click' is the label column: routing each row by its own label "
                                         r"would leak"):
        load_multidomain(_frame(), label=label, domain="click")
    with pytest.raises(ValueError, match=r"is the label column"):
        MultiDomainEncoder.fit(_frame(), label=label, domain="click", sparse=["user"])


@pytest.mark.parametrize("label, value", [("click", 0), ("ts>=0", 1)])
def test_one_class_labels_are_refused_at_load(label, value):
    frame = _frame().assign(click=0)
    with pytest.raises(ValueError, match=rf"Label '{label}' is {value} in all 360 train rows \(and in every row of "
                                         r"the data\): a CTR model needs clicks and non-clicks"):
        load_multidomain(frame, label=label, domain="country", sparse=["user"])


def test_a_one_class_domain_warns_per_split():
    frame = _frame()
    frame.loc[frame["country"] == "nl", "click"] = 0
    with pytest.warns(OneClassWarning) as caught:
        data = load_multidomain(frame, label="click", domain="country", sparse=["user"])
    messages = [str(w.message) for w in caught if issubclass(w.category, OneClassWarning)]
    assert [m.split(";")[0] for m in messages] == [f"Domains ['nl (all 0)'] hold one label class in the {s} split"
                                                  for s in ("train", "validation", "test")]
    stats = data.stats()
    assert (stats.query("domain == 'nl'")["positives"] == 0).all()  # the warning agrees with stats()


def test_feature_table_shows_the_inferred_kinds_and_train_statistics():
    frame = _frame()
    frame["user"] = frame["user"].astype("Int64")
    frame.loc[::10, "user"] = pd.NA  # missing ids -> id 0
    parts = {"train": frame[:400], "validation": frame[400:500], "test": frame[500:]}
    data = load_multidomain(parts, label="click", domain="country", exclude=["ts"], min_frequency=2)
    train = parts["train"]
    counts = train["user"].value_counts()
    kept = counts[counts >= 2]
    assert data.feature_table() == [
        {"name": "user", "kind": "sparse", "dim": 1, "vocab_size": len(kept) + 1,
         "unknown_share": pytest.approx(1 - train["user"].isin(kept.index).mean()), "mean": None, "std": None},
        {"name": "shop", "kind": "sparse", "dim": 1, "vocab_size": 4, "unknown_share": 0.0, "mean": None, "std": None},
        {"name": "price", "kind": "dense", "dim": 1, "vocab_size": None, "unknown_share": None,
         "mean": pytest.approx(train["price"].mean()), "std": pytest.approx(train["price"].std(ddof=0), rel=1e-6)},
    ]
    json.dumps(data.feature_table(), allow_nan=False)  # JSON-ready for results.json
    lines = data.feature_table_text().splitlines()
    assert lines[0].split() == ["name", "kind", "dim", "vocab_size", "unknown_share", "mean", "std"]
    assert lines[3].split()[:2] == ["price", "dense"] and lines[2].split()[:4] == ["shop", "sparse", "1", "4"]


@pytest.mark.parametrize("path, reason", [
    ("clicks.csv", "ends with the file extension '.csv'"),
    ("clicks.feather", "ends with the file extension '.feather'"),
    ("data/x.csv", "starts with the local folder 'data'"),
    ("elsewhere/x.csv", "ends with the file extension '.csv'"),
    ("data/clicks", "starts with the local folder 'data'"),
    ("./clicks", "is written as a local path"),
    ("some/where/clicks", "is written as a local path"),
])
def test_a_missing_local_looking_path_fails_at_once_without_the_hub(tmp_path, monkeypatch, path, reason):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()

    def no_hub(*args, **kwargs):
        raise AssertionError("the Hub was asked")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    with pytest.raises(FileNotFoundError, match=rf"No file matches '{re.escape(path)}'.*not tried as a Hub dataset "
                                                rf"id: it {re.escape(reason)}"):
        load_multidomain(path, label="click", domain="country")


def test_a_hub_id_that_cannot_be_loaded_offline_fails_fast_and_says_why(monkeypatch):
    import socket

    from huggingface_hub import constants

    def no_network(host, *args, **kwargs):
        raise OSError(f"test: refusing to resolve {host!r}")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    started = time.monotonic()
    with pytest.raises(FileNotFoundError, match=r"'clicks' is no local file or folder .* so it was read as a Hub "
                                                r"dataset id, and offline mode is on .*e\.g\. 'clicks\.csv'"):
        load_multidomain("clicks", label="click", domain="country")
    assert time.monotonic() - started < 5


def _truncated_gzip(path):
    _write(_frame(), path, "csv.gz")
    path.write_bytes(path.read_bytes()[:300])


@pytest.mark.parametrize("name, make, match", [
    ("clicks.csv.gz", _truncated_gzip,
     r"Cannot read .*clicks\.csv\.gz as CSV \(gz-compressed\): .*The file is truncated"),
    ("clicks.csv", lambda p: p.write_text("user,price,country,click\n"),
     r"clicks\.csv holds no data rows \(only a header: \['user', 'price', 'country', 'click'\]\)"),
    ("clicks.csv", lambda p: p.write_text(""), r"Cannot read .*clicks\.csv as CSV: .*The file is empty"),
    ("clicks.csv", lambda p: p.write_text("user,click,country\n1,0,fr\n2,1,de,extra\n"),
     r"Cannot read .*clicks\.csv as CSV: .*different number of fields than the header"),
    ("clicks.jsonl", lambda p: p.write_text('{"user": 1, "click": 0}\n{"user": 2, "cl'),
     r"Cannot read .*clicks\.jsonl as JSON: "),
])
def test_every_file_error_names_the_file_and_the_problem(tmp_path, name, make, match):
    make(tmp_path / name)
    with pytest.raises(ValueError, match=match):
        load_multidomain(tmp_path / name, label="click", domain="country")
