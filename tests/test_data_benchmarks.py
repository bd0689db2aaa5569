"""Loaders of the CSV benchmarks on the real samples: Ali-CCP, KuaiRand, Douban and AliExpress."""

from pathlib import Path

import pytest

from mlora_peft.data import load_ali_ccp, load_aliexpress, load_douban, load_kuairand
from mlora_peft.features import DenseFeature

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "samples"
pytestmark = pytest.mark.skipif(not SAMPLES.is_dir(),
                                reason=f"data samples not found at {SAMPLES} (shared data folder absent)")


def test_ali_ccp_keeps_the_provided_splits(tmp_path):
    data = load_ali_ccp(SAMPLES, file_glob="ali_ccp_{split}_sample.csv")
    stats = data.stats()
    assert stats["rows"].tolist() == [100, 50, 50]  # the sample holds scenario 1 only
    assert stats["positives"].tolist() == [7, 3, 2]
    names = [f.name for f in data.feature_spec]
    assert "301" not in names and "click" not in names and "purchase" not in names
    assert all(isinstance(f, DenseFeature) for f in data.feature_spec if f.name.startswith("D"))
    purchase = load_ali_ccp(SAMPLES, "purchase", file_glob="ali_ccp_{split}_sample.csv")
    assert purchase.stats()["positives"].sum() <= stats["positives"].sum()
    with pytest.raises(FileNotFoundError, match=r"No Ali-CCP CSV matches \['\*train\*.csv\*'"):
        load_ali_ccp(tmp_path)
    with pytest.raises(ValueError, match="label='conversion'"):
        load_ali_ccp(SAMPLES, "conversion")


def test_kuairand_single_tab_and_no_leaky_columns():
    data = load_kuairand(SAMPLES / "kuairand_sample.csv")
    assert data.domain_names == ("1",)
    assert data.stats()["rows"].tolist() == [120, 40, 40]
    names = {f.name for f in data.feature_spec}
    assert {"user_id", "video_id", "duration_ms"} <= names and not names & {"play_time_ms", "profile_stay_time"}


def test_douban_three_domains():
    data = load_douban(SAMPLES / "douban_sample.csv")
    assert data.domain_names == ("book", "movie", "music")
    assert data.stats().groupby("domain")["rows"].sum().to_dict() == {"book": 364, "movie": 2299, "music": 337}


def test_aliexpress_countries_from_file_pairs(tmp_path):
    pair = (SAMPLES / "aliexpress_train_sample.csv", SAMPLES / "aliexpress_test_sample.csv")
    data = load_aliexpress({"NL": pair, "ES": pair}, label="conversion")
    assert data.domain_names == ("ES", "NL")
    rows = data.stats().groupby("split")["rows"].sum()
    assert rows["test"] == 40 and rows["train"] + rows["validation"] == 200 and abs(rows["validation"] - 50) <= 2
    assert len(data.feature_spec) == 16 + 63
    folder = tmp_path / "AliExpress_FR"
    folder.mkdir()
    for name, source in zip(("train.csv", "test.csv"), pair):
        (folder / name).write_bytes(source.read_bytes())
    assert load_aliexpress(tmp_path).domain_names == ("FR",)
    with pytest.raises(FileNotFoundError, match="AliExpress_<country>"):
        load_aliexpress(tmp_path / "AliExpress_FR")
