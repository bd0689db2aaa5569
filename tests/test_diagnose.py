"""The headroom diagnostic (`mlora_peft.training.diagnose`, `recipes/diagnose.py`): a domain effect shows as
headroom, none shows as none, and every model is chosen on validation."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mlora_peft
from mlora_peft import training
from mlora_peft.data import make_synthetic
from mlora_peft.metrics import domain_report
from mlora_peft.training.diagnose import MODELS, ModelScores, judge, popularity_scores

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "configs" / "tiny.yaml"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(mlora_peft.__file__).parents[1]),
                                                    os.environ.get("PYTHONPATH", "")])}
# Enough rows (20,000 over 3 domains) for per-domain fine-tuning to find a domain effect of 1 in seconds.
SETTINGS = ["data.rows=20000", "train.max_epochs=20"]


def _diagnose(tmp_path: Path, *overrides: str) -> training.Diagnosis:
    cfg = training.load_config(TINY, [f"output_dir={tmp_path}", *SETTINGS, *overrides])
    return training.diagnose(cfg, progress=False)


def test_a_domain_effect_shows_as_headroom_that_mlora_recovers(tmp_path):
    diagnosis = _diagnose(tmp_path, "data.domain_effect=1")
    assert diagnosis.has_headroom and diagnosis.headroom > 2 * training.HEADROOM_THRESHOLD
    assert diagnosis.verdict.startswith("domain-specific headroom")
    assert diagnosis.mlora_gain > training.HEADROOM_THRESHOLD
    assert diagnosis.scores["shared"].wauc > diagnosis.scores["popularity"].wauc


def test_no_domain_effect_shows_no_headroom(tmp_path):
    diagnosis = _diagnose(tmp_path, "data.domain_effect=0")
    assert not diagnosis.has_headroom and abs(diagnosis.headroom) < training.HEADROOM_THRESHOLD
    assert diagnosis.verdict.startswith("no headroom") and "MLoRA is not expected to help" in diagnosis.verdict


def test_recipe_writes_the_json_figure_and_prints_the_verdict(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "recipes" / "diagnose.py"), "--config", str(TINY),
                           f"output_dir={tmp_path}", "train.max_epochs=2"],
                          capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads((tmp_path / "diagnosis.json").read_text())
    assert {*MODELS, "headroom", "verdict"} <= set(found)
    for model in MODELS:
        assert set(found[model]["per_domain"]) == {"domain_0", "domain_1", "domain_2"}
        assert 0.0 < found[model]["wauc"] < 1.0
    assert found["headroom"] == pytest.approx(found["per_domain_finetune"]["wauc"] - found["shared"]["wauc"])
    assert found["verdict"] in done.stdout
    assert (tmp_path / "diagnosis.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "shared" / "results.json").exists() and (tmp_path / "mlora" / "results.json").exists()
    again = subprocess.run([sys.executable, str(ROOT / "recipes" / "diagnose.py"), "--config", str(TINY),
                            f"output_dir={tmp_path}"], capture_output=True, text=True, env=ENV, timeout=600)
    assert again.returncode == 2 and "overwrite=true" in again.stderr  # a finished diagnosis is not overwritten


def test_shared_model_epochs_are_chosen_on_validation_and_fine_tuning_never_loses_on_validation(tmp_path):
    diagnosis = _diagnose(tmp_path, "data.domain_effect=0.5")
    log = [json.loads(line) for line in (tmp_path / "shared" / "log.jsonl").read_text().splitlines()]
    assert diagnosis.scores["shared"].validation_wauc == max(log, key=lambda r: r["eval/mean_auc"])["eval/wauc"]
    # each domain keeps the shared model unless an epoch beats it on that domain's validation rows
    assert diagnosis.scores["per_domain_finetune"].validation_wauc >= diagnosis.scores["shared"].validation_wauc


def test_popularity_picks_its_id_on_validation():
    data = make_synthetic(num_domains=2, rows=3000, seed=0)
    name, scores = popularity_scores(data)
    splits = {s: {c: np.asarray(data.splits[s][c]) for c in ("user", "item", "label", "domain_id")}
              for s in ("train", "validation", "test")}
    train, overall = splits["train"], splits["train"]["label"].mean()
    found = {}
    for feature in ("user", "item"):  # the reference: smoothed training click rate per id value, by hand
        rate = {v: (train["label"][train[feature] == v].sum() + 20 * overall) / ((train[feature] == v).sum() + 20)
                for v in np.unique(train[feature])}
        found[feature] = {s: domain_report(rows["label"], np.array([rate.get(v, overall) for v in rows[feature]]),
                                           rows["domain_id"], data.domain_names)["wauc"]
                          for s, rows in splits.items() if s != "train"}
    assert name == max(found, key=lambda f: found[f]["validation"])
    assert scores.wauc == pytest.approx(found[name]["test"]) and scores.validation_wauc == pytest.approx(
        found[name]["validation"])


def test_headroom_that_loses_on_most_rows_is_not_consistent():
    shared = ModelScores(0.70, 0.70, {"a": 0.70, "b": 0.70})
    tuned = ModelScores(0.705, 0.72, {"a": 0.80, "b": 0.69})
    diagnosis = judge({"popularity": shared, "shared": shared, "per_domain_finetune": tuned, "mlora": shared},
                      {"a": 10, "b": 90})
    assert diagnosis.headroom > diagnosis.threshold and not diagnosis.has_headroom
    assert diagnosis.verdict.startswith("no consistent headroom")
