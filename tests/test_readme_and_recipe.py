"""The README example runs as written; the training recipe's report matches an independent recomputation."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from mlora_peft.metrics import domain_report, roc_auc

ROOT = Path(__file__).resolve().parents[1]


def _load_recipe(name: str):
    """Import recipes/<name>.py as a module (recipes are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def test_readme_python_example_runs_as_written(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert blocks, "README has no python example"
    for block in blocks:
        subprocess.run([sys.executable, "-c", block], check=True, cwd=tmp_path)
    assert (tmp_path / "mlora-adapter" / "adapter_model.safetensors").exists()


@pytest.mark.parametrize("seed", range(5))
def test_auc_and_logloss_match_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.random(300), 1)  # many ties
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    report = domain_report(labels, scores.clip(0.01, 0.99), rng.integers(0, 3, 300), ["a", "b", "c"])
    assert report["logloss"] == pytest.approx(sk_log_loss(labels, scores.clip(0.01, 0.99)), abs=1e-9)


def test_single_class_domain_is_undefined_not_a_crash():
    report = domain_report(np.array([1, 1, 0, 1]), np.array([.9, .8, .2, .7]), np.array([0, 0, 1, 1]), ["a", "b"])
    assert report["per_domain"]["a"]["auc"] is None and report["undefined_auc"] == ["a"]
    assert report["wauc"] == report["mean_auc"] == 1.0


def test_wauc_is_weighted_by_test_rows():
    labels = np.array([0, 1, 0, 1, 1, 0, 0, 1])
    probs = np.array([.1, .9, .8, .2, .6, .4, .3, .7])
    domains = np.array([0, 0, 1, 1, 1, 1, 1, 1])
    report = domain_report(labels, probs, domains, ["a", "b"])
    expected = (2 * 1.0 + 6 * roc_auc_score(labels[2:], probs[2:])) / 8
    assert report["wauc"] == pytest.approx(expected)


@pytest.mark.parametrize("mode", ["joint", "two_stage", "none"])
def test_tiny_recipe_run_in_each_mode(tmp_path, mode):
    train = _load_recipe("train")
    cfg = train.load_config(ROOT / "recipes/configs/tiny.yaml", [f"output_dir={tmp_path}", f"mlora.mode={mode}",
                                                                  "train.max_epochs=2"])
    results = train.main(cfg)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["wauc"] == pytest.approx(results["wauc"])
    assert set(saved) >= {"wauc", "mean_auc", "logloss", "per_domain", "config", "params"}
    assert set(saved["per_domain"]) == {"domain_0", "domain_1", "domain_2"}
    for row in saved["per_domain"].values():
        assert set(row) == {"auc", "logloss", "rows", "positives"}
    assert saved["params"]["adapters"] > 0 if mode != "none" else saved["params"]["adapters"] == 0
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists() == (mode != "none")
    assert saved["config"]["mlora"]["mode"] == mode


def test_unknown_config_key_is_an_error():
    train = _load_recipe("train")
    with pytest.raises(ValueError, match=r"Unknown config key\(s\) \['train.learning_rate'\]"):
        train.load_config(ROOT / "recipes/configs/tiny.yaml", ["train.learning_rate=1"])
