"""The guides' code runs as written: docs/guides/new-domain.md against a loopback Hub, docs/guides/serving.md,
docs/guides/trainer.md, docs/guides/diagnose.md."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.hub_server import HubServer

ROOT = Path(__file__).resolve().parents[1]


def _guide_code(name: str) -> str:
    return "\n".join(re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "guides" / name).read_text(), flags=re.S))


def test_new_domain_guide_runs_and_touches_only_the_new_domain(tmp_path):
    """A fresh process whose HF_ENDPOINT, token and cache point at the loopback Hub, as a user would set them."""
    with HubServer() as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_loopback_test_token",
               "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1"}
        subprocess.run([sys.executable, "-c", _guide_code("new-domain.md")], check=True, cwd=tmp_path, env=env)
    creation, first, launch = hub.repos["team/ctr-mlora"].commits.values()
    podcasts = ["domains/podcasts/adapter_config.json", "domains/podcasts/adapter_model.safetensors"]
    assert sorted(p for p in launch if first.get(p) != launch[p]) == podcasts  # one commit, only the new folder
    assert set(first) <= set(launch)
    assert sorted(hub.downloads()) == ["adapter_config.json", "adapter_model.safetensors", *podcasts]


def test_diagnose_guide_runs_and_writes_its_files(tmp_path, monkeypatch):
    (tmp_path / "recipes" / "configs").mkdir(parents=True)
    shutil.copy(ROOT / "recipes" / "configs" / "tiny.yaml", tmp_path / "recipes" / "configs")
    monkeypatch.chdir(tmp_path)
    exec(compile(_guide_code("diagnose.md"), "docs/guides/diagnose.md", "exec"), {"__name__": "diagnose_guide"})
    assert {p.name for p in (tmp_path / "runs" / "diagnose-tiny").iterdir()} >= {
        "diagnosis.json", "diagnosis.png", "shared", "mlora"}


def test_serving_guide_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(_guide_code("serving.md"), "docs/guides/serving.md", "exec"), {"__name__": "serving_guide"})


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # peft calls it
def test_trainer_guide_runs_and_reports_every_domain(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "trainer_guide"}
    exec(compile(_guide_code("trainer.md"), "docs/guides/trainer.md", "exec"), namespace)
    metrics, data, trainer = namespace["metrics"], namespace["data"], namespace["trainer"]
    assert trainer.state.global_step == namespace["args"].max_steps
    assert {f"test_{name}/auc" for name in data.domain_names} <= set(metrics)
    assert metrics["test_mean_auc"] > 0.6  # learnt something: an untrained model scores about 0.5
    assert sorted(p.name for p in (tmp_path / "ctr-adapter" / "domains").iterdir()) == list(data.domain_names)
