"""Onboarding a new domain onto a trained run: rebuild from the folder, grow, train only what is new, ship only it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from huggingface_hub import HfApi
from safetensors.torch import load_file

import mlora_peft
from mlora_peft import training
from mlora_peft.data import MultiDomainEncoder
from mlora_peft.growth import DomainAdditions
from tests.test_recipe import TINY

ROOT = Path(__file__).resolve().parents[1]
# A recipe run as a subprocess imports the same mlora_peft as this test (not another installed copy).
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(mlora_peft.__file__).parents[1]),
                                                    os.environ.get("PYTHONPATH", "")])}


def _table(domains, seed=0, rows=1500, users=60, items=40):
    """Clicks that depend on the user, the item and the domain; each domain has its own items."""
    rng = np.random.default_rng(seed)
    domain = rng.integers(0, len(domains), rows)
    user = rng.integers(0, users, rows)
    item = rng.integers(0, items, rows)
    logit = np.sin(user * 1.3) + np.cos(item * 0.7 + domain) - 0.5
    clicks = (rng.random(rows) < 1 / (1 + np.exp(-2 * logit))).astype(int)
    names = np.array(domains)[domain]
    return pd.DataFrame({"user": [f"u{u}" for u in user], "item": [f"{d}-{i}" for d, i in zip(names, item)],
                         "shop": names, "click": clicks})


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onboard")
    _table(["de", "fr", "it"]).to_csv(folder / "old.csv", index=False)
    new = _table(["nl"], seed=1, users=90)  # users u60..u89 are unseen, every item is new
    new.to_csv(folder / "nl.csv", index=False)
    run = folder / "run"
    subprocess.run([sys.executable, str(ROOT / "recipes" / "train.py"), "--config", str(TINY), f"output_dir={run}",
                    f"data.source={folder / 'old.csv'}", "data.label=click", "data.domain=shop",
                    "data.sparse=[user, item]", "data.dense=[]", "train.max_epochs=2"],
                   check=True, capture_output=True, env=ENV)
    return folder, run


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _old_rows(run: Path, encoder: MultiDomainEncoder) -> dict:
    raw = pd.read_csv(run.parent / "old.csv")
    return encoder.encode(raw)


def test_a_recipe_trained_run_folder_alone_rebuilds_the_model(trained_run):
    folder, run = trained_run
    spec = json.loads((run / "adapter" / "feature_spec.json").read_text())
    assert [f["name"] for f in spec] == ["user", "item", "domain_id"]  # every feature the model embeds
    cfg, model, data = training.load_run(run)
    _, rebuilt, encoder = training.rebuild_model(run)  # no data read
    assert encoder == data.encoder
    batch = data.splits["test"].with_format("torch")[:]
    model.eval(), rebuilt.eval()
    predictions = load_file(str(run / "test_predictions.safetensors"))["probability"]  # written by training
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(batch), model(batch), rtol=0, atol=0)
        torch.testing.assert_close(torch.sigmoid(rebuilt(batch)).float(), predictions.float(), rtol=0, atol=1e-6)


def test_onboarding_trains_only_what_is_new_and_ships_only_it(trained_run, tmp_path):
    folder, run = trained_run
    _, before, encoder = training.rebuild_model(run)
    old = _old_rows(run, encoder)
    with torch.no_grad():
        expected = before.eval()(old)
    files = _snapshot(run / "adapter")
    out = tmp_path / "nl"
    results = training.onboard(run, out, [f"data.source={folder / 'nl.csv'}", "train.max_epochs=4", "train.lr=0.01",
                                          "compare_with_plain=true"])
    assert results["new_domains"] == ["nl"] and results["per_domain"]["nl"]["auc"] > 0.6
    assert results["per_domain"]["nl"]["auc"] > results["shared_model"]["per_domain"]["nl"]["auc"]
    # the run's files and every old domain's outputs are bit-identical
    assert _snapshot(run / "adapter") == files
    copied = _snapshot(out / "adapter")
    assert {k: v for k, v in copied.items() if not k.startswith("domains/nl/")} == files
    _, after, grown = training.rebuild_model(out)
    assert grown.domain_names == ("de", "fr", "it", "nl")
    with pytest.raises(ValueError, match=r"holds domains onboarded by recipes/add_domain.py"):
        training.load_run(out)  # its config.yaml describes the new data only
    with torch.no_grad():
        torch.testing.assert_close(after.eval()(old), expected, rtol=0, atol=0)
    # the new folder: its slices, its rows and encoder values, no base weight
    shipped = sorted(p.name for p in (out / "adapter" / "domains" / "nl").iterdir())
    assert shipped == ["adapter_config.json", "adapter_model.safetensors", "embeddings.safetensors",
                       "encoder_additions.json"]
    slices = load_file(str(out / "adapter" / "domains" / "nl" / "adapter_model.safetensors"))
    assert slices and all("mdlora_" in key and value.shape[0] == 1 for key, value in slices.items())
    additions = DomainAdditions.read(out / "adapter" / "domains" / "nl")
    assert len(additions.values("item")) == 40 and set(additions.values("user")) >= {f"u{u}" for u in range(60, 90)} - {
        u for u in set(encoder.sparse[0].values)}
    assert additions.encoder["domain_id"] == 3
    # serving one domain: the base plus that folder gives the onboarded model's outputs
    raw = pd.read_csv(folder / "nl.csv").head(50)
    batch = grown.encode(raw)
    served_encoder = mlora_peft.load_encoder(out / "adapter", domains=["nl"])
    assert served_encoder == grown
    cfg = training.load_config(run / "config.yaml")
    base_spec = mlora_peft.features.features_from_json((run / "adapter" / "feature_spec.json").read_text())
    served = mlora_peft.load_domains(training.build_backbone(cfg, base_spec, 3), out / "adapter", domains=["nl"],
                                     merge=True)
    with torch.no_grad():
        torch.testing.assert_close(served(served_encoder.encode(raw)), after(batch), rtol=1e-5, atol=1e-5)


def test_onboarding_refuses_a_known_domain_and_a_source_without_domains(trained_run, tmp_path):
    folder, run = trained_run
    with pytest.raises(ValueError, match=r"Domains \['de', 'fr', 'it'\] are already in the model"):
        training.onboard(run, tmp_path / "again", [f"data.source={folder / 'old.csv'}"])
    with pytest.raises(ValueError, match=r"data.source='synthetic' cannot bring a new domain"):
        training.onboard(run, tmp_path / "synthetic", ["data.source=synthetic"])


def test_ids_past_a_table_name_the_fix(trained_run):
    """Issue 20: domain_id=3 on a three-domain backbone was a bare IndexError."""
    cfg, model, encoder = training.rebuild_model(trained_run[1])
    spec = mlora_peft.features.features_from_json((trained_run[1] / "adapter" / "feature_spec.json").read_text())
    backbone = training.build_backbone(cfg, spec, num_domains=3)
    batch = encoder.encode(pd.DataFrame({"user": ["u1"], "item": ["de-1"], "shop": ["de"]}))
    with pytest.raises(ValueError, match=r"'domain_id' has ids up to 3, but its table has 3 rows.*recipes/add_domain.py"):
        backbone({**batch, "domain_id": torch.tensor([3])})


@pytest.mark.slow
def test_add_domain_recipe_pushes_only_the_new_folder(trained_run, tmp_path):
    """The command line on a loopback Hub: one commit adds domains/nl/ and nothing else, with no base weight."""
    from tests.hub_server import HubServer

    folder, run = trained_run
    _, model, _ = training.rebuild_model(run)
    with HubServer() as hub:
        env = {**ENV, "HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_loopback_test_token", "HF_HOME": str(tmp_path / "hf"),
               "HF_HUB_DISABLE_TELEMETRY": "1"}
        api = HfApi(endpoint=hub.url, token="hf_loopback_test_token")
        mlora_peft.push_to_hub(model, "team/ctr", api=api)
        done = subprocess.run([sys.executable, str(ROOT / "recipes" / "add_domain.py"), f"from={run}",
                               f"output_dir={tmp_path / 'out'}", f"data.source={folder / 'nl.csv'}",
                               "train.max_epochs=2", "hub.push_to_hub=team/ctr"],
                              capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr
        creation, first, launch = hub.repos["team/ctr"].commits.values()
    assert "Test AUC of the new domain" in done.stdout
    assert json.loads((tmp_path / "out" / "results.json").read_text())["per_domain"]["nl"]["auc"] is not None
    assert sorted(p for p in launch if first.get(p) != launch[p]) == [
        f"domains/nl/{name}" for name in ("adapter_config.json", "adapter_model.safetensors", "embeddings.safetensors",
                                          "encoder_additions.json")]
