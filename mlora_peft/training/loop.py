"""The training loop: stages (joint, two_stage, none), early stopping on validation, per-domain test report.

`train` trains one model into one output folder; `run` is what `recipes/train.py` does: the configured
model, then the plain backbone beside it, a printed gain table and a plot.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from pathlib import Path
from typing import Optional, Union

import torch
import yaml
from accelerate import PartialState
from accelerate.utils import set_seed
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from ..data import MultiDomainData
from ..evaluation import evaluate, gain_table, plot_report, predict
from ..features import features_to_json
from ..hub import push_to_hub, save_pretrained
from ..metrics import domain_report
from . import build
from .checkpoint import TrainingState, flatten, load_latest_checkpoint, save_checkpoint, write_json_atomic
from .config import TrainConfig, TrainSettings
from .run_dir import LogFile, prepare_output_dir

STAGES = {"joint": ["joint"], "two_stage": ["shared", "adapters"], "none": ["plain"]}
"""The stages each `mlora.mode` trains, in order; each stage early-stops on its own."""


def set_stage(optimizer: torch.optim.Optimizer, stage: str, lr: float, adapter_ratio: float = 1.0) -> None:
    """Which parameter group learns in `stage`: base (group 0), adapters (group 1, at `lr * adapter_ratio`) or both.

    A frozen group keeps its parameters (learning rate 0), so the model's structure, the
    optimiser and the distributed wrapper stay the same across stages and checkpoints.

    Example:
        >>> optimizer = build.make_optimizer(nn.Linear(2, 1), lr=1.0)
        >>> set_stage(optimizer, "shared", lr=0.1)
        >>> [group["lr"] for group in optimizer.param_groups]
        [0.1, 0.0]
    """
    adapter_lr = lr * adapter_ratio
    learning = {"joint": (lr, adapter_lr), "plain": (lr, adapter_lr), "shared": (lr, 0.0),
                "adapters": (0.0, adapter_lr)}[stage]
    for group, group_lr in zip(optimizer.param_groups, learning):
        group["lr"] = group_lr


def end_epoch(state: TrainingState, score: Optional[float], settings: TrainSettings) -> bool:
    """Count the finished epoch and update the early-stopping record (and the plateau lr factor).

    Args:
        state: the training state, updated in place.
        score: the epoch's validation score (None: undefined, never an improvement).
        settings: the `train` section.

    Returns:
        Whether the score improved.

    Example:
        >>> state = TrainingState()
        >>> end_epoch(state, 0.7, TrainSettings()), end_epoch(state, 0.6, TrainSettings()), state.waited
        (True, False, 1)
    """
    state.epoch, state.step_in_epoch = state.epoch + 1, 0
    improved = score is not None and score > state.best_score
    if improved:
        state.best_score, state.waited = score, 0
    else:
        state.waited += 1
        if settings.lr_schedule == "plateau":
            state.lr_factor *= settings.lr_decay
    return improved


def scheduled_lr(settings: TrainSettings, state: TrainingState, batch_index: int, steps_per_epoch: int) -> float:
    """The learning rate of the optimiser step that the epoch's batch `batch_index` (0-based) belongs to.

    cosine: `lr * (m + (1 - m) * (1 + cos(pi * k / K)) / 2)` at the stage's step k of K = max_epochs *
    steps_per_epoch (m = min_lr_ratio), as `CosineAnnealingLR`; a function of the checkpointed epoch and
    batch, so resuming continues it exactly. constant, plateau: `lr * state.lr_factor` (1 for constant).

    Example:
        >>> scheduled_lr(TrainSettings(lr=0.1, lr_schedule="cosine", max_epochs=2), TrainingState(epoch=1), 0, 1)
        0.05
    """
    if settings.lr_schedule != "cosine":
        return settings.lr * state.lr_factor
    step = state.epoch * steps_per_epoch + batch_index // settings.gradient_accumulation_steps
    cosine = (1 + math.cos(math.pi * step / (settings.max_epochs * steps_per_epoch))) / 2
    return settings.lr * (settings.min_lr_ratio + (1 - settings.min_lr_ratio) * cosine)


def next_stage(state: TrainingState, carry_best: bool) -> None:
    """Move `state` to the next stage's first epoch, with a fresh early-stopping record and lr factor.

    Args:
        state: the training state, updated in place.
        carry_best: keep the best score (`mlora.keep_shared_if_better` after the shared stage: the
            adapters must beat it), marked as the shared stage's.

    Example:
        >>> state = TrainingState(epoch=3, best_score=0.7, waited=2)
        >>> next_stage(state, carry_best=False)
        >>> state.stage, state.epoch, state.best_score, state.waited
        (1, 0, -inf, 0)
    """
    state.stage, state.epoch, state.step_in_epoch = state.stage + 1, 0, 0
    state.best_score = state.best_score if carry_best else float("-inf")
    state.best_from_shared, state.waited, state.lr_factor = carry_best, 0, 1.0


def train(cfg: TrainConfig, out_dir: Optional[Union[str, Path]] = None,
          data: Optional[MultiDomainData] = None) -> dict:
    """Train one model as `cfg` says, into `out_dir`; returns the test report with config and parameter counts.

    Writes `config.yaml`, `log.jsonl` (one record per epoch), checkpoints (`train.checkpoint_every`),
    the adapter (or `model.safetensors` for mode none) with `data_encoder.json` and `feature_spec.json`,
    `test_predictions.safetensors` and `results.json`.

    Args:
        cfg: a checked config.
        out_dir: the run's folder (default: `cfg.output_dir`). A folder holding another run's files is
            refused unless `cfg.train.resume` continues it or `cfg.overwrite` clears it.
        data: loaded data to use instead of `load_data(cfg)` (a benchmark reusing one data set).

    Returns:
        The per-domain test report plus `config`, `processes`, `kept_shared_model` and `params`.

    Raises:
        ValueError: a refused output folder, or a resume whose checkpoint has other data/model/mlora settings.
    """
    out_dir = Path(cfg.output_dir if out_dir is None else out_dir)
    trackers = "tensorboard" if importlib.util.find_spec("tensorboard") is not None else None
    accelerator = build.make_accelerator(mixed_precision=cfg.train.mixed_precision, log_with=trackers,
                                         project_dir=str(out_dir),
                                         gradient_accumulation_steps=cfg.train.gradient_accumulation_steps)
    prepare_output_dir(accelerator, out_dir, resume=cfg.train.resume, overwrite=cfg.overwrite)
    set_seed(cfg.train.seed)
    resolved = dataclasses.asdict(cfg)
    if accelerator.is_main_process:
        (out_dir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    accelerator.init_trackers("mlora", config=_tracker_values(resolved))

    # -- data
    if data is None:
        with accelerator.main_process_first():
            data = build.load_data(cfg)
    domain_names = list(data.domain_names)
    per_process = max(cfg.train.batch_size // accelerator.num_processes, 1)
    loaders = {name: data.loader(name, batch_size=per_process, seed=cfg.train.seed,
                                 composition=cfg.data.composition if name == "train" else "mixed",
                                 num_processes=accelerator.num_processes)
               for name in ("train", "validation", "test")}
    epoch_order = loaders["train"].batch_sampler  # the shuffle is fixed by (seed, epoch): resumable

    # -- model, optimiser, prepare
    model = build.build_model(cfg, data)
    optimizer = build.make_optimizer(model, cfg.train.lr)
    model, optimizer, train_loader, valid_loader, test_loader = accelerator.prepare(
        model, optimizer, loaders["train"], loaders["validation"], loaders["test"])
    penalty = (build.EmbeddingL2(model, cfg.train.embedding_l2, cfg.train.embedding_l2_scope)
               if cfg.train.embedding_l2 else None)  # no hooks at 0
    steps_per_epoch = math.ceil(len(train_loader) / cfg.train.gradient_accumulation_steps)  # optimiser steps

    # -- resume
    state = TrainingState()
    resumed = load_latest_checkpoint(accelerator, out_dir, model, optimizer, resolved) if cfg.train.resume else None
    if resumed is not None:
        folder, state = resumed
        accelerator.print(f"Resumed from {folder} (stage {state.stage}, epoch {state.epoch + 1}, "
                          f"step {state.step_in_epoch} of the epoch)")
    log = LogFile(out_dir / "log.jsonl", accelerator, keep=state.logged_epochs)

    # -- loop
    stages, loss_fn, kept_shared = STAGES[cfg.mlora.mode], nn.BCEWithLogitsLoss(), False
    while state.stage < len(stages):
        stage = stages[state.stage]
        while state.epoch < cfg.train.max_epochs and state.waited < cfg.train.patience:
            epoch_order.set_epoch(state.epoch)
            model.train()
            batches = accelerator.skip_first_batches(train_loader, state.step_in_epoch)
            bar = tqdm(batches, desc=f"{stage} epoch {state.epoch + 1}", initial=state.step_in_epoch,
                       total=len(train_loader), leave=False,
                       disable=None if accelerator.is_local_main_process else True)  # None: off when not a TTY
            loss = None  # stays None when a resumed epoch has no batch left
            for batch in bar:
                with accelerator.accumulate(model):
                    loss = loss_fn(model(batch), batch["label"])
                    if penalty is not None:
                        loss = loss + penalty.pop(len(batch["label"]))
                    accelerator.backward(loss)
                    set_stage(optimizer, stage, scheduled_lr(cfg.train, state, state.step_in_epoch, steps_per_epoch),
                              cfg.mlora.lr_ratio)
                    optimizer.step()
                    optimizer.zero_grad()
                state.step_in_epoch, state.global_step = state.step_in_epoch + 1, state.global_step + 1
                bar.set_postfix(loss=f"{loss.item():.4f}")
                if cfg.train.checkpoint_every and state.global_step % cfg.train.checkpoint_every == 0:
                    save_checkpoint(accelerator, out_dir, model, optimizer, state, resolved,
                                    cfg.train.keep_checkpoints)
            report = evaluate(model, valid_loader, accelerator, domain_names)
            score = report[cfg.train.early_stopping_metric]
            lr = scheduled_lr(cfg.train, state, len(train_loader) - 1, steps_per_epoch)  # the epoch's last step
            improved = end_epoch(state, score, cfg.train)
            if improved:
                state.best_from_shared = False
                state.best_weights = {k: v.detach().cpu().clone()
                                      for k, v in accelerator.unwrap_model(model).state_dict().items()}
            log.write(state, stage, None if loss is None else loss.item(), lr, report)
            accelerator.print(f"[{stage}] epoch {state.epoch}: validation {cfg.train.early_stopping_metric} "
                              f"{_fmt(score)}{' (best)' if improved else ''}")
        accelerator.unwrap_model(model).load_state_dict(state.best_weights)  # the best epoch so far
        kept_shared = stage == "adapters" and state.best_from_shared
        if kept_shared:
            accelerator.print("[adapters] no epoch beat the shared model on validation: keeping it, adapters at zero")
        next_stage(state, carry_best=stage == "shared" and cfg.mlora.keep_shared_if_better)
        optimizer.state.clear()  # a fresh optimiser state for the next stage

    # -- per-domain evaluation and save
    predictions = predict(model, test_loader, accelerator)
    report = domain_report(predictions["label"], predictions["probability"], predictions["domain_id"], domain_names)
    weights = accelerator.get_state_dict(model)  # every process joins (FSDP gathers the full weights)
    unwrapped = accelerator.unwrap_model(model)
    adapters = sum(p.numel() for n, p in unwrapped.named_parameters() if "mdlora_" in n)
    results = {**report, "config": resolved, "processes": accelerator.num_processes,
               "distributed_type": accelerator.distributed_type.value, "kept_shared_model": kept_shared,
               "params": {"backbone": sum(p.numel() for p in unwrapped.parameters()) - adapters,
                          "adapters": adapters}}
    accelerator.log({f"test/{k}": v for k, v in _tracker_values(report).items() if isinstance(v, float)}, step=state.global_step)
    if accelerator.is_main_process:
        _save_model(cfg, unwrapped, weights, data, report, out_dir)
        save_file({k: torch.from_numpy(v) for k, v in predictions.items()}, str(out_dir / "test_predictions.safetensors"))
        write_json_atomic(out_dir / "results.json", results)
    for tracker in accelerator.trackers:  # not end_training(): the process group stays up for the next model
        tracker.finish()
    return results


def run(cfg: TrainConfig) -> dict:
    """The recipe: train the configured model (and the plain backbone beside it), print and plot the report.

    Args:
        cfg: a checked config; the plain backbone goes to `<output_dir>/plain` when `compare_with_plain`.

    Returns:
        The configured model's results (as `train`).
    """
    print(yaml.safe_dump({"resolved config": dataclasses.asdict(cfg)}, sort_keys=False))
    out_dir = Path(cfg.output_dir)
    results = train(cfg, out_dir)
    plain = None
    if cfg.compare_with_plain and cfg.mlora.mode != "none":
        plain_cfg = dataclasses.replace(cfg, mlora=dataclasses.replace(cfg.mlora, mode="none"))
        plain = train(plain_cfg, out_dir / "plain")
    if PartialState().is_main_process:
        plot_report(results, out_dir / "per_domain_auc.png", baseline=plain)
        print(f"\nTest, mode {cfg.mlora.mode}:\n" + gain_table(results, plain))
        print(f"\nSaved {out_dir / 'results.json'} and {out_dir / 'per_domain_auc.png'}")
    PartialState().destroy_process_group()
    return results


def _save_model(cfg: TrainConfig, unwrapped: nn.Module, weights: dict, data: MultiDomainData, report: dict,
                out_dir: Path) -> None:
    """The adapter (per-domain layout, pushed when asked) or the plain model, with the encoder and feature spec."""
    extra = {"data_encoder": data.encoder, "feature_spec": features_to_json(build.model_features(cfg, data))}
    if cfg.mlora.mode != "none":
        save_pretrained(unwrapped, out_dir / "adapter", json_files=extra, eval_report=report,
                        repo_id=cfg.hub.push_to_hub)
        if cfg.hub.push_to_hub:
            push_to_hub(unwrapped, cfg.hub.push_to_hub, private=cfg.hub.private, revision=cfg.hub.revision,
                        json_files=extra, eval_report=report)
        return
    save_file({k: v.contiguous() for k, v in weights.items()}, str(out_dir / "model.safetensors"))
    data.save_encoder(out_dir)
    (out_dir / "feature_spec.json").write_text(extra["feature_spec"])


def _tracker_values(values: dict) -> dict:
    """Nested values as trackers take them: one level, keys joined by "/", non-scalars as text."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flatten(values, "/").items()}


def _fmt(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.4f}"
