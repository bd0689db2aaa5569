"""Training options of mlora_peft.training: embedding L2, learning rate schedules, MovieLens side features."""

import copy
import dataclasses
import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from mlora_peft import training
from mlora_peft.training import build as training_build
from tests.test_recipe import DEFAULT, ROOT, TINY


def _log(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def _record_lrs(monkeypatch) -> list[list[float]]:
    """Patch the recipe's optimiser so that every real step records its param groups' learning rates."""
    steps, make = [], training_build.make_optimizer

    def recording(model, lr):
        optimizer = make(model, lr)
        optimizer.register_step_pre_hook(lambda opt, args, kwargs: steps.append([g["lr"] for g in opt.param_groups]))
        return optimizer

    monkeypatch.setattr(training_build, "make_optimizer", recording)
    return steps


def _cosine_reference(lr: float, min_ratio: float, total_steps: int) -> list[float]:
    """PyTorch's CosineAnnealingLR over `total_steps` steps, eta_min = lr * min_ratio."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=lr * min_ratio)
    lrs = []
    for _ in range(total_steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


# ---------------------------------------------------------------------------------- embedding L2
@pytest.mark.parametrize("name", ["mlp", "deepfm"])  # deepfm adds the linear term's (vocab, 1) tables
def test_embedding_penalty_equals_the_looked_up_rows(name):
    cfg = training.load_config(TINY, ["data.rows=600", f"model.name={name}"])
    data = training.load_data(cfg)
    model = training.build_model(cfg, data)  # PEFT-wrapped
    batch = next(iter(data.loader("train", batch_size=64, seed=0)))
    penalty = training.EmbeddingL2(model, weight=0.3)
    tables = {n: m for n, m in model.named_modules() if isinstance(m, nn.Embedding)}
    assert len(penalty.handles) == len(tables) == (6 if name == "deepfm" else 3)

    model.train()
    model(batch)
    by_hand = sum(m.weight[batch[n.rsplit(".", 1)[1]]].pow(2).sum() for n, m in tables.items())  # table[ids]
    torch.testing.assert_close(penalty.pop(batch_rows=64), 0.3 * by_hand / 64)
    assert penalty.pop(batch_rows=64) == 0.0  # pop starts a new sum

    model.eval()
    model(batch)
    assert penalty.pop(batch_rows=64) == 0.0  # evaluation lookups are not penalised


def test_embedding_l2_step_adds_the_penalty_gradient_to_looked_up_rows(tmp_path, monkeypatch):
    """One SGD step of the recipe: the rows move by the extra -lr * l2 * 2 * count(id) * row / B, others not at all."""
    lr, l2 = 0.1, 0.5
    monkeypatch.setattr(training_build, "make_optimizer", lambda model, lr: torch.optim.SGD(
        [{"params": list(model.parameters())}, {"params": []}], lr=lr))
    inits, build = [], training.build_model

    def build_and_keep_the_init(cfg, data):
        model = build(cfg, data)
        inits.append(copy.deepcopy(model.state_dict()))
        return model

    monkeypatch.setattr(training_build, "build_model", build_and_keep_the_init)
    common = ["data.rows=600", "mlora.mode=none", "train.max_epochs=1", "train.batch_size=100000", f"train.lr={lr}"]
    steps = {}
    for weight in (0.0, l2):
        run = tmp_path / str(weight)
        cfg = training.load_config(TINY, [*common, f"output_dir={run}", f"train.embedding_l2={weight}"])
        training.train(cfg, run)
        assert _log(run)[0]["step"] == 1  # the whole split is one batch: one step
        steps[weight] = load_file(str(run / "model.safetensors"))
    init = inits[0]
    batch = next(iter(training.load_data(cfg).loader("train", batch_size=100000, seed=0)))
    rows = len(batch["label"])
    for key, start in init.items():
        difference = steps[l2][key] - steps[0.0][key]
        if key.endswith(".weight") and ".tables." in key:
            counts = torch.bincount(batch[key.split(".")[-2]], minlength=start.shape[0]).float()  # (vocab,)
            expected = -lr * l2 * 2 * counts[:, None] * start / rows  # d/de of l2 * sum(e[ids]**2) / B
            torch.testing.assert_close(difference, expected, atol=1e-7, rtol=1e-4)
            assert (difference[counts == 0] == 0).all()  # rows not looked up are not regularised
        else:
            torch.testing.assert_close(difference, torch.zeros_like(difference), atol=1e-7, rtol=0)


def test_table_scope_penalises_every_row_of_every_table_each_step(tmp_path, monkeypatch):
    """train.embedding_l2_scope=table: one SGD step moves every embedding row by -lr * l2 * 2 * row (DeepCTR)."""
    lr, l2 = 0.1, 0.5
    monkeypatch.setattr(training_build, "make_optimizer", lambda model, lr: torch.optim.SGD(
        [{"params": list(model.parameters())}, {"params": []}], lr=lr))
    common = ["data.rows=600", "mlora.mode=none", "train.max_epochs=1", "train.batch_size=100000", f"train.lr={lr}"]
    steps = {}
    for weight in (0.0, l2):
        run = tmp_path / str(weight)
        cfg = training.load_config(TINY, [*common, f"output_dir={run}", f"train.embedding_l2={weight}",
                                          "train.embedding_l2_scope=table"])
        training.train(cfg, run)
        steps[weight] = load_file(str(run / "model.safetensors"))
    batch = next(iter(training.load_data(cfg).loader("train", batch_size=100000, seed=0)))
    tables = [k for k in steps[0.0] if k.endswith(".weight") and ".tables." in k]
    assert tables
    for key in steps[0.0]:
        difference = steps[l2][key] - steps[0.0][key]
        if key in tables:
            init = steps[0.0][key]  # a row no batch looks up keeps its init in the unpenalised step
            unseen = torch.bincount(batch[key.split(".")[-2]], minlength=init.shape[0]) == 0
            torch.testing.assert_close(difference[unseen], -lr * l2 * 2 * init[unseen], atol=1e-7, rtol=1e-4)
            assert (difference[~unseen] != 0).all()  # looked-up rows are penalised too
        else:
            torch.testing.assert_close(difference, torch.zeros_like(difference), atol=1e-7, rtol=0)


def test_embedding_l2_zero_registers_no_hooks(tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr(training_build, "EmbeddingL2", lambda *args: built.append(args))
    training.train(training.load_config(TINY, [f"output_dir={tmp_path}", "data.rows=600", "train.max_epochs=1"]), tmp_path)
    assert built == []


# ---------------------------------------------------------------------------------- learning rate schedules
@pytest.mark.parametrize("accumulation, batches", [(1, 5), (2, 5), (3, 6)])
def test_cosine_lr_of_every_batch_follows_cosine_annealing(accumulation, batches):
    settings = training.TrainSettings(lr=0.01, lr_schedule="cosine", min_lr_ratio=0.1, max_epochs=4,
                                   gradient_accumulation_steps=accumulation)
    steps_per_epoch = math.ceil(batches / accumulation)
    reference = _cosine_reference(0.01, 0.1, 4 * steps_per_epoch)
    state = training.TrainingState()
    for epoch in range(4):
        state.epoch = epoch
        for batch_index in range(batches):
            step = epoch * steps_per_epoch + batch_index // accumulation
            assert training.scheduled_lr(settings, state, batch_index, steps_per_epoch) == pytest.approx(
                reference[step], rel=1e-12)


def test_plateau_decays_after_each_epoch_without_improvement():
    settings = training.TrainSettings(lr=0.01, lr_schedule="plateau", lr_decay=0.5)
    state = training.TrainingState()
    lrs, waited = [], []
    for score in [0.60, 0.70, 0.65, 0.70, 0.80, None, 0.79, 0.81]:  # equal is not better; None never is
        training.end_epoch(state, score, settings)
        lrs.append(training.scheduled_lr(settings, state, 0, 1))
        waited.append(state.waited)
    assert lrs == pytest.approx([0.01, 0.01, 0.005, 0.0025, 0.0025, 0.00125, 0.000625, 0.000625])
    assert waited == [0, 0, 1, 2, 0, 1, 2, 0]
    constant, settings = training.TrainingState(), dataclasses.replace(settings, lr_schedule="constant")
    for score in [0.6, 0.5, 0.4]:
        training.end_epoch(constant, score, settings)
    assert training.scheduled_lr(settings, constant, 0, 1) == 0.01


@pytest.mark.parametrize("adapter_ratio", [1.0, 0.25])  # mlora.lr_ratio scales the adapters' group only
def test_two_stage_cosine_restarts_per_stage_and_keeps_frozen_groups_at_zero(tmp_path, monkeypatch,
                                                                             adapter_ratio):
    steps = _record_lrs(monkeypatch)
    cfg = training.load_config(TINY, [f"output_dir={tmp_path}", "mlora.mode=two_stage", "train.max_epochs=3",
                                   "train.patience=10", "train.batch_size=128", "train.gradient_accumulation_steps=2",
                                   "train.lr_schedule=cosine", "train.min_lr_ratio=0.2",
                                   f"mlora.lr_ratio={adapter_ratio}"])
    training.train(cfg, tmp_path)
    logged = _log(tmp_path)
    batches = logged[0]["step"]  # batches in an epoch
    per_epoch = math.ceil(batches / 2)  # optimiser steps in an epoch (the last one may take one batch)
    reference = _cosine_reference(cfg.train.lr, 0.2, 3 * per_epoch)
    shared, adapters = steps[:3 * per_epoch], steps[3 * per_epoch:]
    assert len(adapters) == 3 * per_epoch
    assert [lrs[1] for lrs in shared] == [0.0] * len(shared)  # adapters frozen in the shared stage
    assert [lrs[0] for lrs in adapters] == [0.0] * len(adapters)  # the backbone frozen in the adapter stage
    assert [lrs[0] for lrs in shared] == pytest.approx(reference, rel=1e-12)
    assert [lrs[1] for lrs in adapters] == pytest.approx([adapter_ratio * lr for lr in reference], rel=1e-12)
    last_of_each_epoch = [reference[(e + 1) * per_epoch - 1] for e in range(3)]
    assert [r["train/lr"] for r in logged] == pytest.approx(last_of_each_epoch * 2, rel=1e-12)
    assert [r["stage"] for r in logged] == ["shared"] * 3 + ["adapters"] * 3


def test_plateau_lr_in_the_log_follows_the_validation_scores(tmp_path):
    cfg = training.load_config(TINY, [f"output_dir={tmp_path}", "train.max_epochs=8", "train.patience=8",
                                   "train.lr=0.05", "train.lr_schedule=plateau", "train.lr_decay=0.3"])
    training.train(cfg, tmp_path)
    logged, best, factor = _log(tmp_path), float("-inf"), 1.0
    for record in logged:
        assert record["train/lr"] == pytest.approx(0.05 * factor, rel=1e-12)  # the lr this epoch trained with
        if record["eval/mean_auc"] > best:
            best = record["eval/mean_auc"]
        else:
            factor *= 0.3
    assert factor < 1, "no epoch failed to improve: the test does not exercise the decay"


def test_adapter_lr_ratio_scales_the_first_adam_step_of_the_adapters_only(tmp_path, monkeypatch):
    """Adam's first step is lr * g / (|g| + eps): at ratio 0.25 the adapters move a quarter as far, the backbone alike."""
    built, build = [], training.build_model

    def build_and_keep(cfg, data):
        model = build(cfg, data)
        built.append((model, copy.deepcopy(model.state_dict())))
        return model

    monkeypatch.setattr(training_build, "build_model", build_and_keep)
    common = ["data.rows=600", "mlora.mode=joint", "train.max_epochs=1", "train.batch_size=100000", "train.lr=0.01",
              "compare_with_plain=false"]
    moved = {}
    for ratio in (1.0, 0.25):
        run = tmp_path / str(ratio)
        training.train(training.load_config(TINY, [*common, f"output_dir={run}", f"mlora.lr_ratio={ratio}"]), run)
        assert _log(run)[0]["step"] == 1  # the whole split is one batch: one step
        model, init = built[-1]
        moved[ratio] = {k: v.detach() - init[k] for k, v in model.state_dict().items()}
    adapter_keys = [k for k in moved[1.0] if "mdlora_" in k]
    assert adapter_keys and any(moved[1.0][k].abs().max() > 0 for k in adapter_keys)
    for key, full in moved[1.0].items():
        expected = 0.25 * full if "mdlora_" in key else full
        torch.testing.assert_close(moved[0.25][key], expected, atol=1e-8, rtol=1e-4)


# ---------------------------------------------------------------------------------- exact resume
@pytest.mark.parametrize("schedule", ["cosine", "plateau"])
def test_resume_with_a_schedule_is_exact(tmp_path, schedule):
    """Resuming from a mid-run checkpoint (all a SIGKILL leaves) ends exactly like the uninterrupted run."""
    common = ["mlora.mode=two_stage", "train.max_epochs=4", "train.patience=4", "train.batch_size=256",
              "train.lr=0.05", f"train.lr_schedule={schedule}", "train.lr_decay=0.3", "train.min_lr_ratio=0.1",
              "train.embedding_l2=0.01", "train.checkpoint_every=3", "train.keep_checkpoints=100"]
    whole = tmp_path / "whole"
    training.train(training.load_config(TINY, [*common, f"output_dir={whole}"]), whole)
    logged = _log(whole)
    total, batches = logged[-1]["step"], logged[0]["step"]
    step = max(s for s in range(3, total, 3) if s % batches)  # mid-way through the second stage's last epoch
    assert step > total - batches and (whole / "checkpoints" / f"step_{step:09d}").exists()
    if schedule == "plateau":
        assert logged[-1]["train/lr"] < 0.05, "no decay before the checkpoint: the test would not check it"

    resumed = tmp_path / "resumed"
    shutil.copytree(whole / "checkpoints" / f"step_{step:09d}", resumed / "checkpoints" / f"step_{step:09d}")
    training.train(training.load_config(TINY, [*common, f"output_dir={resumed}", "train.resume=true"]), resumed)
    a, b = (json.loads((d / "results.json").read_text()) for d in (whole, resumed))
    assert b["per_domain"] == a["per_domain"] and b["wauc"] == a["wauc"] and b["logloss"] == a["logloss"]
    tail = _log(resumed)
    assert tail == logged[-len(tail):]  # the same epochs after the checkpoint, learning rates included


# ---------------------------------------------------------------------------------- side features and bad values
def test_side_features_reach_the_movielens_loader(monkeypatch):
    seen = {}
    monkeypatch.setattr(training_build.data_lib, "load_movielens", lambda path, **kwargs: seen.update(kwargs) or "data")
    cfg = training.load_config(TINY, ["data.source=movielens", "data.path=/nowhere", "data.side_features=true"])
    assert training.load_data(cfg) == "data" and seen["side_features"] is True
    training.load_data(training.load_config(TINY, ["data.source=movielens", "data.path=/nowhere"]))
    assert seen["side_features"] is False


def test_side_features_add_the_user_and_item_columns():
    ml100k = ROOT.parent / "shared" / "data" / "ml-100k"
    if not (ml100k / "u.data").exists():
        pytest.skip(f"MovieLens-100K is not at {ml100k} (the shared data folder)")
    config = ROOT / "recipes" / "configs" / "movielens_age.yaml"
    names = {flag: [f.name for f in training.load_data(training.load_config(
        config, [f"data.path={ml100k}", f"data.side_features={flag}"])).feature_spec] for flag in ("false", "true")}
    assert names == {"false": ["user", "item"], "true": ["user", "item", "gender", "occupation", "zip", "genre"]}


@pytest.mark.parametrize("override, match", [
    ("train.lr_schedule=linear", r"train.lr_schedule='linear' is not allowed; use one of \['constant', 'cosine', "
                                 r"'plateau'\]"),
    ("train.embedding_l2=-0.1", r"train.embedding_l2=-0.1 is not allowed; use a number >= 0"),
    ("train.embedding_l2=abc", r"train.embedding_l2='abc' must be a number"),
    ("train.min_lr_ratio=1.5", r"train.min_lr_ratio=1.5 is not allowed; use a number in \[0, 1\]"),
    ("train.min_lr_ratio=-0.1", r"train.min_lr_ratio=-0.1 is not allowed"),
    ("train.lr_decay=0", r"train.lr_decay=0 is not allowed; use a number in \(0, 1\]"),
    ("train.lr_decay=1.5", r"train.lr_decay=1.5 is not allowed"),
    ("mlora.lr_ratio=0", r"mlora.lr_ratio=0 is not allowed; use a number in \(0, 10\]"),
    ("mlora.lr_ratio=20", r"mlora.lr_ratio=20 is not allowed"),
    ("data.side_features=true", r"data.side_features=true needs data.source=movielens, not 'synthetic'"),
])
def test_bad_option_values_name_the_key_and_the_allowed_ones(override, match):
    with pytest.raises(ValueError, match=match):
        training.load_config(TINY, [override])


def test_numbers_written_without_a_dot_are_numbers_and_words_are_refused():
    cfg = training.load_config(DEFAULT, ["train.lr=3e-4", "train.embedding_l2=1e-5", "train.max_epochs=7"])
    assert cfg.train.lr == 3e-4 and cfg.train.embedding_l2 == 1e-5 and cfg.train.max_epochs == 7
    with pytest.raises(ValueError, match="train.lr='fast' must be a number"):
        training.load_config(DEFAULT, ["train.lr=fast"])
    with pytest.raises(ValueError, match="train.max_epochs='many' must be an integer"):
        training.load_config(DEFAULT, ["train.max_epochs=many"])


def test_resume_from_a_checkpoint_on_an_epochs_last_batch(tmp_path):
    """The resumed epoch has no batch left: it is evaluated and logged (without a loss), then training goes on."""
    common = ["mlora.mode=joint", "train.max_epochs=3", "train.patience=3", "train.batch_size=256",
              "train.checkpoint_every=1", "train.keep_checkpoints=100"]
    whole = tmp_path / "whole"
    training.train(training.load_config(TINY, [*common, f"output_dir={whole}"]), whole)
    logged = _log(whole)
    batches = logged[0]["step"]
    resumed = tmp_path / "resumed"
    name = f"step_{batches:09d}"  # saved after the first epoch's last batch, before its evaluation
    shutil.copytree(whole / "checkpoints" / name, resumed / "checkpoints" / name)
    training.train(training.load_config(TINY, [*common, f"output_dir={resumed}", "train.resume=true"]), resumed)
    tail = _log(resumed)
    assert tail[0]["train/loss"] is None and tail[0]["eval/wauc"] == logged[0]["eval/wauc"]
    assert tail[1:] == logged[1:]
    a, b = (json.loads((d / "results.json").read_text()) for d in (whole, resumed))
    assert b["wauc"] == a["wauc"] and b["per_domain"] == a["per_domain"]


@pytest.mark.parametrize("dropout,domain_bias", [(0.0, True), (0.3, False)])
def test_mlora_dropout_and_domain_bias_reach_the_adapter(dropout, domain_bias):
    cfg = training.load_config(TINY, [f"mlora.dropout={dropout}", f"mlora.domain_bias={str(domain_bias).lower()}"])
    model = training.build_model(cfg, training.load_data(cfg))
    adapter = model.peft_config["default"]
    assert adapter.lora_dropout == dropout and adapter.domain_bias is domain_bias
    names = [n for n, _ in model.named_parameters()]
    assert any("mdlora_bias" in n for n in names) is domain_bias
    layers = [m for m in model.modules() if hasattr(m, "mdlora_dropout")]
    assert layers and all(isinstance(m.mdlora_dropout["default"], nn.Dropout) == (dropout > 0) for m in layers)


# ---------------------------------------------------------------------------------- two-stage selection
@pytest.mark.parametrize("keep", [False, True])
def test_two_stage_result_is_the_best_validation_epoch_it_may_choose(tmp_path, keep):
    """Off: the adapter stage's best epoch, even below the shared model. On (`mlora.keep_shared_if_better`): the
    best epoch of both stages, here the shared one, with the saved adapters still at zero."""
    cfg = training.load_config(TINY, [f"output_dir={tmp_path}", "mlora.mode=two_stage", "train.max_epochs=3",
                                   "data.domain_effect=0", "mlora.r=16", "train.lr=0.1", "mlora.lr_ratio=10",
                                   f"mlora.keep_shared_if_better={str(keep).lower()}"])
    results = training.train(cfg, tmp_path)
    assert results["kept_shared_model"] == keep
    logged = _log(tmp_path)
    shared_best = max(r["eval/mean_auc"] for r in logged if r["stage"] == "shared")
    adapters_best = max(r["eval/mean_auc"] for r in logged if r["stage"] == "adapters")
    assert shared_best > adapters_best, "the adapters beat the shared model: the test would not check the choice"

    from accelerate import Accelerator

    chosen = training.evaluate_run(tmp_path, "validation", Accelerator())["mean_auc"]
    assert chosen == pytest.approx(shared_best if keep else adapters_best, abs=1e-7)
    adapters = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    up = [v for k, v in adapters.items() if "mdlora_B" in k or "mdlora_bias" in k]
    assert up and all(bool((v == 0).all()) == keep for v in up)
