"""Amazon 5-core categories as domains with the MLoRA / MAMDR negative-sampling protocol."""

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from mlora_peft.data import amazon_interactions, load_amazon, read_amazon, sample_negatives, with_sampled_negatives
from mlora_peft.data.amazon import amazon_files

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
AMAZON = SHARED / "amazon-2014-5core"
needs_amazon = pytest.mark.skipif(not (AMAZON / "Office_Products.csv.gz").is_file(),
                                  reason=f"Amazon 5-core files not found at {AMAZON} (shared data folder absent)")
PUBLISHED = {"Musical_Instruments": 10_261, "Office_Products": 53_258, "Pet_Supplies": 157_836,
             "Tools_and_Home_Improvement": 134_476, "Toys_and_Games": 167_597, "Video_Games": 231_780}


def _keys(table: pa.Table, users: pa.Array, items: pa.Array) -> np.ndarray:
    """(category, user, item) of each row as one int64, from shared dictionaries."""
    user = pc.index_in(table.column("user"), value_set=users).to_numpy(zero_copy_only=False).astype(np.int64)
    item = pc.index_in(table.column("item"), value_set=items).to_numpy(zero_copy_only=False).astype(np.int64)
    return user * len(items) + item  # items are disjoint across categories, so the category is implied


def _check_protocol(rows: pa.Table, ratios: dict) -> None:
    positives = rows.filter(pc.equal(rows.column("label"), 1.0))
    negatives = rows.filter(pc.equal(rows.column("label"), 0.0))
    users, items = pc.unique(rows.column("user")), pc.unique(rows.column("item"))
    assert not np.isin(_keys(negatives, users, items), _keys(positives, users, items)).any()
    negative_keys = _keys(negatives, users, items)
    assert np.unique(negative_keys).size == negative_keys.size  # no repeated negative for a user
    for category, ratio in ratios.items():
        assert 0.2 <= ratio <= 0.5
        pos = pc.sum(pc.equal(positives.column("category"), category)).as_py()
        neg = pc.sum(pc.equal(negatives.column("category"), category)).as_py()
        assert 2 <= neg / pos <= 5 and abs(neg / pos - 1 / ratio) < 0.05


@needs_amazon
def test_six_categories_are_found_with_published_interaction_counts():
    assert sorted(amazon_files(AMAZON)) == sorted(PUBLISHED)  # the _with_time copy of Office is not a 7th domain
    categories = read_amazon(AMAZON).column("category").to_numpy(zero_copy_only=False)
    assert dict(zip(*np.unique(categories, return_counts=True))) == PUBLISHED


@needs_amazon
def test_two_categories_follow_the_negative_protocol():
    rows, ratios = amazon_interactions(AMAZON, ["Musical_Instruments", "Office_Products"], seed=0)
    _check_protocol(rows, ratios)


@needs_amazon
def test_six_categories_load_as_six_domains_with_the_negative_protocol():
    rows, ratios = amazon_interactions(AMAZON, seed=0)
    _check_protocol(rows, ratios)
    data = load_amazon(AMAZON, seed=0)
    assert data.domain_names == tuple(sorted(PUBLISHED))
    stats = data.stats().groupby("domain")[["rows", "positives"]].sum()
    assert stats["positives"].to_dict() == PUBLISHED
    assert stats["rows"].sum() == rows.num_rows


@needs_amazon
def test_negatives_are_seeded():
    first, ratios = amazon_interactions(AMAZON, ["Musical_Instruments"], seed=3)
    second, _ = amazon_interactions(AMAZON, ["Musical_Instruments"], seed=3)
    other, _ = amazon_interactions(AMAZON, ["Musical_Instruments"], seed=4)
    assert first.equals(second) and not first.equals(other)
    _check_protocol(first, ratios)


def _review(user: str, item: str, time: int) -> dict:
    return {"reviewerID": user, "asin": item, "reviewerName": "A \"quoted\" name", "helpful": [0, 1],
            "reviewText": "Fine, works.\nTwo lines.", "overall": 4.0, "summary": "ok", "unixReviewTime": time,
            "reviewTime": "02 28, 2014"}


def test_official_json_lines_and_interaction_csvs(tmp_path):
    reviews = [_review(f"U{u}", f"B{i:04d}", 1393545600 + i) for u in range(6) for i in range(10 * u, 10 * u + 5)]
    with gzip.open(tmp_path / "reviews_Digital_Music_5.json.gz", "wt") as handle:
        handle.writelines(json.dumps(review) + "\n" for review in reviews)
    (tmp_path / "Baby.csv").write_text("reviewerID,asin,seq_pos\n" + "".join(
        f"U{u},C{i:03d},{k}\n" for u in range(8) for k, i in enumerate(range(10 * u, 10 * u + 6))))
    (tmp_path / "Baby_with_time.csv").write_text("reviewerID,asin,unixReviewTime\nU0,C999,1\n")
    (tmp_path / "Beauty_with_time.csv").write_text("reviewerID,asin,unixReviewTime\nU0,D001,1\nU1,D002,2\n")
    (tmp_path / "notes.txt").write_text("not data")
    files = amazon_files(tmp_path)
    assert {c: f.name for c, f in files.items()} == {"Baby": "Baby.csv", "Beauty": "Beauty_with_time.csv",
                                                     "Digital_Music": "reviews_Digital_Music_5.json.gz"}
    table = read_amazon(tmp_path, ["Digital_Music", "Baby"])
    assert table.num_rows == 30 + 48 and table.column_names == ["user", "item", "category"]
    data = load_amazon(tmp_path, ["Digital_Music", "Baby"], seed=1)
    assert data.domain_names == ("Baby", "Digital_Music")
    assert data.stats().groupby("domain")["positives"].sum().to_dict() == {"Baby": 48, "Digital_Music": 30}
    rows, ratios = amazon_interactions(tmp_path, ["Digital_Music", "Baby"], seed=1)
    _check_protocol(rows, ratios)
    with pytest.raises(ValueError, match=r"No file for categories \['Garden'\]"):
        read_amazon(tmp_path, ["Garden"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="No Amazon review files"):
        amazon_files(tmp_path / "empty")


def test_sample_negatives_exact_fallback_when_the_pool_is_nearly_exhausted():
    rng = np.random.default_rng(0)
    users = np.array([0, 0, 0, 1])  # user 0 liked 3 of 5 items: only 2 remain, and it asks for 10
    items = np.array([0, 1, 2, 4])
    owner, chosen = sample_negatives(users, items, 5, np.array([10, 2]), rng)
    assert sorted(chosen[owner == 0].tolist()) == [3, 4]
    assert 4 not in chosen[owner == 1].tolist() and len(set(chosen[owner == 1].tolist())) == 2
    with pytest.raises(ValueError, match="ratio_range"):
        with_sampled_negatives(pa.table({"u": [1], "i": [1], "d": [1]}), user="u", item="i", domain="d",
                               ratio_range=(0.5, 0.2))
