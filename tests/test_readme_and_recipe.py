"""The README example runs as written; per-domain metrics match scikit-learn."""

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
