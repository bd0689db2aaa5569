"""`transformers.Trainer` trains a routed `CTRModel`; its per-domain metrics match the library's evaluation."""

from __future__ import annotations

import doctest
import importlib
import json

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from peft import get_peft_model
from transformers import EvalPrediction, Trainer, TrainingArguments

import mlora_peft
from mlora_peft.data import make_synthetic
from mlora_peft.evaluation import evaluate
from mlora_peft.models import CTRConfig, CTRModel
from mlora_peft.trainer_utils import domain_metrics

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # peft calls it

STEPS, BATCH, EVAL_BATCH = 300, 32, 256


def trainer_for(model, data, out_dir, **overrides) -> Trainer:
    settings = dict(
        output_dir=str(out_dir), max_steps=STEPS, per_device_train_batch_size=BATCH, learning_rate=1e-2,
        per_device_eval_batch_size=EVAL_BATCH, logging_steps=50, save_strategy="no", report_to="none",
        use_cpu=True, disable_tqdm=True, remove_unused_columns=False, label_names=["labels", "domain_id"],
    )
    args = TrainingArguments(**{**settings, **overrides})
    return Trainer(model=model, args=args, train_dataset=data.splits["train"].with_format("torch"),
                   eval_dataset=data.splits["test"].with_format("torch"),
                   compute_metrics=domain_metrics(data.domain_names))


def routed_ctr_model(data) -> torch.nn.Module:
    base = CTRModel(CTRConfig("mlp", list(data.feature_spec), {"hidden": [32, 16], "dropout": 0.0}))
    return get_peft_model(base, mlora_peft.MultiDomainLoraConfig(domain_names=list(data.domain_names),
                                                                 train_base=True))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One Trainer run shared by the tests below (about a second of training on a CPU)."""
    torch.manual_seed(0)
    data = make_synthetic(num_domains=3, rows=6000, domain_effect=2.0, seed=0)
    trainer = trainer_for(routed_ctr_model(data), data, tmp_path_factory.mktemp("trainer"))
    before = trainer.evaluate()
    trainer.train()
    return data, trainer, before, trainer.evaluate()


def test_trainer_trains_a_routed_ctr_model_and_its_per_domain_metrics_are_the_librarys(trained):
    data, trainer, before, after = trained
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert trainer.state.global_step == STEPS and len(losses) == STEPS // 50
    assert np.mean(losses[-2:]) < np.mean(losses[:2])  # training loss falls
    assert after["eval_loss"] < before["eval_loss"]  # and so does the test loss
    assert after["eval_mean_auc"] > before["eval_mean_auc"] + 0.05

    loader = data.loader("test", batch_size=EVAL_BATCH, shuffle=False)
    report = evaluate(trainer.model, loader, Accelerator(cpu=True), data.domain_names)
    assert set(report["per_domain"]) == set(data.domain_names)
    for name, row in report["per_domain"].items():
        assert after[f"eval_{name}/auc"] == pytest.approx(row["auc"], abs=1e-6)
        assert after[f"eval_{name}/logloss"] == pytest.approx(row["logloss"], abs=1e-6)
    for key in ("wauc", "mean_auc", "logloss"):
        assert after[f"eval_{key}"] == pytest.approx(report[key], abs=1e-6)


def test_a_trainer_trained_model_saved_per_domain_loads_one_domain_with_the_same_outputs(trained, tmp_path):
    data, trainer, _, _ = trained
    model = trainer.model.eval()
    ctr_config = model.get_base_model().config
    folder = mlora_peft.save_pretrained(model, tmp_path / "adapter", json_files={"ctr_config": ctr_config.to_dict()})
    assert (folder / "domains" / "domain_1" / "adapter_model.safetensors").exists()

    torch.manual_seed(1)  # a fresh base with other weights: train_base=True saved the trained ones
    config = CTRConfig.from_dict(json.loads(mlora_peft.load_json_text(folder, "ctr_config")))
    loaded = mlora_peft.load_domains(CTRModel(config), folder, domains=["domain_1"])
    rows = data.splits["test"].filter(lambda r: r["domain_id"] == 1).with_format("torch")[:]
    with torch.no_grad():
        expected = model(**rows).logits
        got = loaded(**rows, domain_ids="domain_1").logits  # one domain, id 0 in the loaded adapter
    torch.testing.assert_close(got, expected)
    with pytest.raises(ValueError, match="out of range"):
        loaded(**rows)  # the rows' own ids name domain 1 of 3; this adapter holds one domain


def test_trainer_without_remove_unused_columns_false_names_the_fix(tmp_path):
    data = make_synthetic(num_domains=3, rows=600, seed=0)
    trainer = trainer_for(routed_ctr_model(data), data, tmp_path, remove_unused_columns=True)
    with pytest.raises(ValueError, match="remove_unused_columns=False"):
        trainer.train()


def test_metrics_without_the_domain_ids_name_the_label_names_fix():
    compute_metrics = domain_metrics(["a", "b"])
    prediction = EvalPrediction(predictions=np.zeros(4, np.float32), label_ids=np.array([0.0, 1.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match=r"label_names=\['labels', 'domain_id'\]"):
        compute_metrics(prediction)


@pytest.mark.parametrize("module", ["mlora_peft.trainer_utils", "mlora_peft.evaluation"])
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted and result.failed == 0
