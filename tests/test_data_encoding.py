"""Column encoders, label rules and the JSON round trip of `MultiDomainEncoder`."""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from mlora_peft.data import (
    CategoricalEncoder,
    DenseEncoder,
    DomainEncoder,
    LabelRule,
    MultiDomainEncoder,
)
from mlora_peft.features import DenseFeature, SparseFeature


def _train_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "user": [10, 11, 11, 12, 12, 12],
        "city": ["b", "a", None, "b", "c", "b"],
        "price": [1.0, 2.0, np.nan, 4.0, 5.0, 6.0],
        "country": ["fr", "de", "fr", "us", "de", "fr"],
        "rating": [5, 3, 4, 5, 1, 2],
    })


def test_categorical_vocabulary_is_sorted_and_zero_means_unknown_or_missing():
    enc = CategoricalEncoder.fit(pa.array(["b", "a", None, "b", "c"]), "city")
    assert enc.values == ("a", "b", "c") and enc.vocab_size == 4
    assert enc.transform(pa.array(["c", "a", "zzz", None])).tolist() == [3, 1, 0, 0]


def test_categorical_min_frequency_sends_rare_values_to_zero():
    enc = CategoricalEncoder.fit(pa.array([1, 1, 2, 3, 3, 3]), "user", min_frequency=2)
    assert enc.values == (1, 3)
    assert enc.transform(pa.array([1, 2, 3])).tolist() == [1, 0, 2]
    with pytest.raises(ValueError, match="min_frequency=0"):
        CategoricalEncoder.fit(pa.array([1]), "user", min_frequency=0)


def test_nan_ids_in_float_columns_are_missing_and_non_integer_floats_are_refused():
    enc = CategoricalEncoder.fit(pa.array([3.0, np.nan, 5.0]), "user")  # pandas turns int ids with NaN into floats
    assert enc.kind == "int" and enc.values == (3, 5)
    assert enc.transform(pa.array([5, 3, None])).tolist() == [2, 1, 0]
    with pytest.raises(TypeError, match="non-integer floats"):
        CategoricalEncoder.fit(pa.array([0.5, 1.0]), "score")


def test_ids_read_as_another_type_at_inference_still_match():
    by_int = CategoricalEncoder.fit(pa.array([7, 8]), "user")
    assert by_int.transform(pa.array(["8", "7"])).tolist() == [2, 1]
    with pytest.raises(TypeError, match="fitted on integer ids"):
        by_int.transform(pa.array(["x"]))
    by_str = CategoricalEncoder.fit(pa.array(["7", "8"]), "user")
    assert by_str.transform(pa.array([8, 9])).tolist() == [2, 0]


def test_dense_encoder_fills_with_train_mean_then_standardises():
    enc = DenseEncoder.fit(pa.array([1.0, 3.0, None, float("nan")]), "price")
    out = enc.transform(pa.array([1.0, 3.0, None, 2.0]))
    np.testing.assert_allclose(out.ravel(), [-1.0, 1.0, 0.0, 0.0])
    assert out.dtype == np.float32


@pytest.mark.parametrize("normalize, expected", [("minmax", [0.0, 1.0, 0.5]), ("none", [1.0, 3.0, 2.0])])
def test_dense_encoder_other_normalisations(normalize, expected):
    enc = DenseEncoder.fit(pa.array([1.0, 3.0]), "price", normalize)
    np.testing.assert_allclose(enc.transform(pa.array([1.0, 3.0, None])).ravel(), expected)


def test_dense_encoder_handles_vectors_and_constant_columns():
    vectors = pa.array([[1.0, 5.0], [3.0, 5.0]], pa.list_(pa.float32(), 2))
    enc = DenseEncoder.fit(vectors, "emb")
    assert enc.dim == 2
    np.testing.assert_allclose(enc.transform(vectors), [[-1.0, 0.0], [1.0, 0.0]])
    with pytest.raises(TypeError, match="must be numeric"):
        DenseEncoder.fit(pa.array(["a"]), "name")
    with pytest.raises(ValueError, match="normalize='zscore'"):
        DenseEncoder.fit(pa.array([1.0]), "price", "zscore")


def test_domain_encoder_orders_values_and_refuses_unseen_or_missing_domains():
    assert DomainEncoder.fit(pa.array([10, 2, 2]), "scenario").names == ("2", "10")  # numeric, not string, order
    enc = DomainEncoder.fit(pa.array(["M", "F"]), "gender")
    assert enc.transform(pa.array(["M", "F", "M"])).tolist() == [1, 0, 1]
    with pytest.raises(ValueError, match=r"unseen in training: 'X' \(2 rows\).*add_domains"):
        enc.transform(pa.array(["X", "M", "X"]))
    with pytest.raises(ValueError, match="1 missing values"):
        enc.transform(pa.array(["M", None]))


def test_domain_encoder_custom_order_and_names():
    enc = DomainEncoder.fit(pa.array(["old", "young"]), "age", order=["young", "old"], names=["<30", "30+"])
    assert enc.names == ("<30", "30+") and enc.transform(pa.array(["old"])).tolist() == [1]
    with pytest.raises(ValueError, match="missing from domain_order"):
        DomainEncoder.fit(pa.array(["a", "b"]), "d", order=["a"])
    with pytest.raises(ValueError, match="no training rows"):
        DomainEncoder.fit(pa.array(["a"]), "d", order=["a", "b"])


@pytest.mark.parametrize("text, expected", [
    ("rating==5", [1, 0, 0, 1, 0, 0]), ("rating>3", [1, 0, 1, 1, 0, 0]), ("rating >= 4", [1, 0, 1, 1, 0, 0]),
    ("rating<2", [0, 0, 0, 0, 1, 0]), ("rating!=5", [0, 1, 1, 0, 1, 1]), ("rating<=2.5", [0, 0, 0, 0, 1, 1]),
])
def test_label_rules(text, expected):
    frame = _train_frame()
    rule = LabelRule.parse(text, frame.columns)
    assert rule.apply(pa.array(frame["rating"])).tolist() == expected


def test_label_errors_name_the_fix():
    with pytest.raises(ValueError, match=r"not binary.*label='rating>=4'"):
        LabelRule.parse("rating", ["rating"]).apply(pa.array([1, 5]))
    with pytest.raises(ValueError, match="neither a column nor a rule"):
        LabelRule.parse("stars>3", ["rating"])
    with pytest.raises(ValueError, match="2 missing values"):
        LabelRule.parse("click", ["click"]).apply(pa.array([1.0, None, float("nan")]))
    assert LabelRule.parse("click", ["click"]).apply(pa.array([True, False])).tolist() == [1.0, 0.0]


def test_table_encoder_outputs_spec_and_types():
    enc = MultiDomainEncoder.fit(_train_frame(), label="rating>=4", domain="country", sparse=["user", "city"],
                                 dense=["price"])
    table = enc.transform(_train_frame())
    assert table.column_names == ["user", "city", "price", "domain_id", "label"]
    assert [str(t) for t in table.schema.types] == ["int64", "int64", "float", "int64", "float"]
    assert enc.feature_spec(embedding_dim=4) == [SparseFeature("user", 4, 4), SparseFeature("city", 4, 4),
                                                 DenseFeature("price", 1)]
    assert enc.domain_names == ("de", "fr", "us")


def test_table_encoder_rejects_clashing_or_missing_columns():
    with pytest.raises(ValueError, match="clash"):
        MultiDomainEncoder.fit(_train_frame(), label="rating>3", domain="country", sparse=["country"])
    with pytest.raises(ValueError, match="Missing sparse column 'shop'"):
        MultiDomainEncoder.fit(_train_frame(), label="rating>3", domain="country", sparse=["shop"])


def test_json_round_trip_encodes_new_raw_rows_identically(tmp_path):
    enc = MultiDomainEncoder.fit(_train_frame(), label="rating==5", domain="country", sparse=["user", "city"],
                                 dense=["price"], min_frequency=1)
    path = enc.save(tmp_path / "adapter")
    assert path.name == "data_encoder.json" and json.loads(path.read_text())["format_version"] == 1
    loaded = MultiDomainEncoder.load(tmp_path / "adapter")
    assert loaded == enc
    new_rows = [{"user": 12, "city": "zzz", "price": None, "country": "us"}, {"user": 99, "city": "a", "price": 2.0,
                                                                              "country": "de"}]
    first, second = enc.encode(new_rows), loaded.encode(new_rows)
    assert list(first) == ["user", "city", "price", "domain_id"]  # no label in inference rows
    for name in first:
        assert first[name].tolist() == second[name].tolist()
    assert first["user"].tolist() == [3, 0] and first["city"].tolist() == [0, 1]
    with pytest.raises(FileNotFoundError, match="data_encoder.json"):
        MultiDomainEncoder.load(tmp_path / "elsewhere")
