"""Taobao cloud themes (Tianchi 9716) from small files in the exact raw format."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlora_peft.data import load_taobao, taobao_interactions
from mlora_peft.features import DenseFeature

THEMES = (905, 17, 333)  # in order of first appearance in the click log


def _write_raw(folder: Path, embeddings: bool = True) -> pd.DataFrame:
    """theme_click_log.csv, theme_item_pool.csv and (optionally) the embedding files, as Tianchi ships them."""
    rng = np.random.default_rng(0)
    pools = {theme: np.arange(1000 * (k + 1), 1000 * (k + 1) + 60) for k, theme in enumerate(THEMES)}
    clicks = []
    for step in range(240):
        theme = THEMES[min(step // 60, 2)] if step < 180 else THEMES[step % 3]
        clicks.append({"user_id": int(rng.integers(1, 21)), "theme_id": theme, "item_id": int(rng.choice(pools[theme])),
                       "leaf_cate_id": int(rng.integers(1, 9)), "cate_level1_id": int(rng.integers(1, 4)),
                       "clk_cnt": 1, "reach_time": 20181207000000 + step})
    frame = pd.DataFrame(clicks)
    frame.to_csv(folder / "theme_click_log.csv", index=False)
    pd.DataFrame([{"theme_id": t, "item_id": i} for t, items in pools.items() for i in items]).to_csv(
        folder / "theme_item_pool.csv", index=False)
    if embeddings:
        vector = lambda: " ".join(f"{v:.4f}" for v in rng.normal(size=4))  # noqa: E731
        pd.DataFrame({"user_id": range(1, 20), "emb": [vector() for _ in range(1, 20)]}).to_csv(  # user 20: none
            folder / "user_embedding.csv", index=False)
        items = np.concatenate(list(pools.values()))
        pd.DataFrame({"item_id": items, "emb": [vector() for _ in items]}).to_csv(folder / "item_embedding.csv",
                                                                                  index=False)
    return frame


def test_first_themes_protocol_and_negatives(tmp_path):
    clicks = _write_raw(tmp_path)
    rows, ratios = taobao_interactions(tmp_path, num_themes=2, seed=0)
    frame = rows.to_pandas()
    kept = clicks[(clicks["user_id"] != 20) & clicks["theme_id"].isin(THEMES[:2])]  # user 20 has no embedding
    assert (frame["label"] == 1).sum() == len(kept)
    assert set(frame["theme"]) == set(THEMES[:2]) and set(ratios) == set(THEMES[:2])
    negatives, positives = frame[frame["label"] == 0], frame[frame["label"] == 1]
    clash = negatives.merge(positives, on=["user", "item", "theme"])
    assert clash.empty
    for theme in THEMES[:2]:
        pool = set(range(1000 * (THEMES.index(theme) + 1), 1000 * (THEMES.index(theme) + 1) + 60))
        assert set(negatives.loc[negatives["theme"] == theme, "item"]) <= pool
    data = load_taobao(tmp_path, num_themes=2, seed=0)
    assert data.domain_names == ("905", "17")
    assert data.stats()["rows"].sum() == len(frame)


def test_embeddings_as_dense_features_and_errors(tmp_path):
    _write_raw(tmp_path)
    data = load_taobao(tmp_path, num_themes=3, with_embeddings=True)
    assert data.feature_spec[2:] == [DenseFeature("user_emb", 4), DenseFeature("item_emb", 4)]
    assert data.splits["train"].with_format("numpy")[:3]["item_emb"].shape == (3, 4)
    with pytest.raises(ValueError, match=r"num_themes=4 must be an int in \[1, 3\]"):
        load_taobao(tmp_path, num_themes=4)
    bare = tmp_path / "bare"
    bare.mkdir()
    _write_raw(bare, embeddings=False)
    assert load_taobao(bare, num_themes=1).num_domains == 1  # no embedding files: no filtering
    with pytest.raises(FileNotFoundError, match="with_embeddings=True needs"):
        load_taobao(bare, with_embeddings=True)
    with pytest.raises(FileNotFoundError, match="theme_click_log.csv is missing"):
        load_taobao(tmp_path / "nowhere")
