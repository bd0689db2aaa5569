"""Acceptance on real data: onboard an Amazon 2014 category onto a model trained on the other five.

Trains MLoRA-MLP on five categories (30% of the users), onboards Office_Products with
`training.onboard`, and compares its test AUC with a single-domain model (trained by the
onboarding on the same split) and a joint model trained on all six categories (the same rows: the
five categories' splits of the base run plus Office_Products' split of the onboarding). Set
MLORA_ACCEPTANCE_DIR to keep the runs (a finished run there is reused, not trained again).
"""

import dataclasses
import json
import os
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from safetensors.torch import load_file

from mlora_peft import training
from mlora_peft.data import amazon_interactions, load_multidomain, raw_splits
from mlora_peft.data.splits import DEFAULT_FRACTIONS
from mlora_peft.growth import DomainAdditions
from mlora_peft.training.onboard import new_domain_splits

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "amazon-2014-5core"
NEW = "Office_Products"
_COLUMNS = dict(label="label", domain="category", sparse=["user", "item"], dense=[])
SETTINGS = ["data.source=amazon", "data.user_fraction=0.3", "train.max_epochs=8", "train.patience=2",
            "compare_with_plain=false"]

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not DATA.is_dir(), reason=f"needs the Amazon 2014 data at {DATA}")]


def _train_once(cfg: training.TrainConfig, folder: Path, data=None) -> dict:
    if not (folder / "results.json").exists():
        training.train(dataclasses.replace(cfg, output_dir=str(folder), overwrite=True), folder, data=data)
    return json.loads((folder / "results.json").read_text())


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_onboarded_amazon_category_matches_joint_training_and_leaves_the_others_untouched(tmp_path):
    work = Path(os.environ.get("MLORA_ACCEPTANCE_DIR", tmp_path))
    new_folder = work / "new_category"
    new_folder.mkdir(parents=True, exist_ok=True)
    if not (new_folder / f"{NEW}.csv.gz").exists():
        (new_folder / f"{NEW}.csv.gz").symlink_to(DATA / f"{NEW}.csv.gz")
    old = sorted(c.name.split(".")[0] for c in DATA.glob("*.csv.gz") if "_with_time" not in c.name and NEW not in c.name)
    old.append("Musical_Instruments")
    config = ROOT / "recipes" / "configs" / "amazon6.yaml"
    base_cfg = training.load_config(config, [*SETTINGS, f"data.path={DATA}", f"data.categories=[{', '.join(sorted(old))}]"])
    _train_once(base_cfg, work / "base")

    # -- onboard: the five others' files and outputs must not move
    before_files = _snapshot(work / "base" / "adapter")
    cfg, before, encoder = training.rebuild_model(work / "base")
    base_raw = _base_splits(base_cfg)
    data = load_multidomain(base_raw, **_COLUMNS, split="provided", encoder=encoder)
    old_test = data.splits["test"].with_format("torch")[:]
    with torch.no_grad():
        expected = before.eval()(old_test)
    out = work / "onboarded"
    if not (out / "results.json").exists():
        training.onboard(work / "base", out, [f"data.path={new_folder}", "compare_with_plain=true", "overwrite=true"])
    results = json.loads((out / "results.json").read_text())
    assert _snapshot(work / "base" / "adapter") == before_files
    assert {k: v for k, v in _snapshot(out / "adapter").items() if not k.startswith(f"domains/{NEW}/")} == before_files
    _, after, grown = training.rebuild_model(out)
    with torch.no_grad():
        torch.testing.assert_close(after.eval()(old_test), expected, rtol=0, atol=0)

    # -- the published folder: the domain's slices and its own new rows, no base weight
    folder = out / "adapter" / "domains" / NEW
    slices = load_file(str(folder / "adapter_model.safetensors"))
    assert all("mdlora_" in key and value.shape[0] == 1 for key, value in slices.items())
    additions = DomainAdditions.read(folder)
    assert set(additions.rows) == {f"base_model.model.embedding.tables.{f}.weight" for f in ("user", "item", "domain_id")}
    assert len(additions.values("item")) == grown.sparse[1].vocab_size - encoder.sparse[1].vocab_size

    # -- the joint model on all six: the same rows (the base run's five splits plus the onboarding's)
    new_raw = new_domain_splits(training.onboard_config(cfg, out, [f"data.path={new_folder}"]), encoder)
    joint_data = load_multidomain({s: pa.concat_tables([base_raw[s], new_raw[s]]) for s in base_raw}, **_COLUMNS,
                                  split="provided")
    joint = _train_once(dataclasses.replace(base_cfg, data=dataclasses.replace(base_cfg.data, categories=None)),
                        work / "joint6", data=joint_data)

    onboarded, single = results["per_domain"][NEW]["auc"], results["single_domain"]["mean_auc"]
    table = {"onboarded": onboarded, "single_domain": single, "joint_six": joint["per_domain"][NEW]["auc"],
             "shared_no_adapter": results["shared_model"]["per_domain"][NEW]["auc"], "seconds": results["seconds"],
             "folder_bytes": results["folder_bytes"]}
    (work / "acceptance.json").write_text(json.dumps(table, indent=1))
    print(json.dumps(table, indent=1))
    assert onboarded >= single
    assert onboarded >= table["joint_six"] - 0.01


def _base_splits(cfg: training.TrainConfig) -> dict:
    """The base run's raw splits, read and split as `load_amazon` does for it."""
    rows, _ = amazon_interactions(cfg.data.path, cfg.data.categories, seed=cfg.data.seed,
                                  user_fraction=cfg.data.user_fraction)
    return raw_splits(rows, **_COLUMNS, split=DEFAULT_FRACTIONS, seed=cfg.data.seed)
