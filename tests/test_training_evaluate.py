"""Evaluating a saved run encodes the data with the run's saved encoder, not one fitted again."""

import numpy as np
import pandas as pd
import pytest
from accelerate import Accelerator

from mlora_peft import training
from mlora_peft.data import MultiDomainEncoder
from tests.test_recipe import TINY


def _table(seed: int = 0, rows: int = 1200) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 40, rows)
    domains = rng.integers(0, 3, rows)
    clicks = (rng.random(rows) < 0.2 + 0.4 * (users % 3 == domains)).astype(int)
    return pd.DataFrame({"user": [f"u{u:02d}" for u in users], "item": rng.integers(0, 30, rows),
                         "country": np.array(["de", "fr", "it"])[domains], "click": clicks})


@pytest.mark.parametrize("mode", ["joint", "none"])
def test_evaluation_ids_do_not_shift_when_the_file_changes(tmp_path, mode):
    csv = tmp_path / "clicks.csv"
    _table().to_csv(csv, index=False)
    run = tmp_path / "run"
    training.train(training.load_config(TINY, [
        f"output_dir={run}", f"data.source={csv}", "data.label=click", "data.domain=country",
        "data.sparse=[user, item]", "data.dense=[]", f"mlora.mode={mode}", "train.max_epochs=1"]), run)
    saved = MultiDomainEncoder.load(run / ("adapter" if mode != "none" else ""))
    before = saved.transform(pd.DataFrame({"user": ["u05", "u17"], "item": [3, 4], "country": ["de", "fr"]}))

    edited = _table()
    edited["user"] = edited["user"].replace({"u00": "u99"})  # same vocabulary size, one value renamed
    edited.to_csv(csv, index=False)
    cfg, model, data = training.load_run(run)
    assert data.encoder == saved
    ids = np.asarray(data.splits["test"]["user"])
    refit = training.load_data(cfg)  # what evaluating used to do: fit again on the file
    assert not np.array_equal(np.asarray(refit.splits["test"]["user"]), ids), "the edit shifts a refitted vocabulary"
    after = data.encoder.transform(pd.DataFrame({"user": ["u05", "u17", "u99"], "item": [3, 4, 4],
                                                 "country": ["de", "fr", "fr"]}))
    assert after.column("user").to_pylist()[:2] == before.column("user").to_pylist()  # the same ids as in training
    assert after.column("user").to_pylist()[2] == 0  # unseen at training: the unknown id, as in training
    report = training.evaluate_run(run, "test", Accelerator())
    assert set(report["per_domain"]) == {"de", "fr", "it"}
