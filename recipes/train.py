"""Train a CTR model with MLoRA and report per-domain AUC.

    accelerate launch recipes/train.py                                   # recipes/configs/default.yaml
    accelerate launch recipes/train.py --config recipes/configs/tiny.yaml train.lr=3e-3 mlora.mode=two_stage

Reads top to bottom: config, Accelerator, data, model, optimiser, prepare, resume, loop with
early stopping on per-domain validation AUC, per-domain test report, save. Modes: `joint`
(backbone and adapters from scratch, the paper's main regime), `two_stage` (the shared backbone
on all domains first, then only the adapters with a fresh optimiser state, A randomly
initialised) and `none` (the plain backbone). `train.checkpoint_every=N` saves the full state
every N steps; `train.resume=true` continues from the newest complete checkpoint exactly.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import yaml
from accelerate import Accelerator, PartialState
from accelerate.utils import set_seed
from peft import get_peft_model
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

import mlora_peft
from mlora_peft.evaluation import evaluate, gain_table, plot_report, predict
from mlora_peft.metrics import domain_report
from mlora_peft import data as data_lib
from mlora_peft import models
from mlora_peft.data import MultiDomainData
from mlora_peft.data.table_encoder import DOMAIN_COLUMN
from mlora_peft.features import SparseFeature, features_to_json

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"


# ---------------------------------------------------------------------------------- config
@dataclass
class DataConfig:
    source: str = field(default="synthetic", metadata={
        "help": "synthetic (built-in, offline), movielens, amazon, or a table for load_multidomain: file(s) "
                "(CSV/TSV/parquet/JSON, gzip too) or a Hub dataset id."})
    path: Optional[str] = field(default=None, metadata={
        "help": "Folder of the movielens (u.data, ...) or amazon (<Category>.csv.gz) files."})
    num_domains: int = field(default=4, metadata={"help": "synthetic: number of domains."})
    rows: int = field(default=40_000, metadata={"help": "synthetic: rows over train, validation and test."})
    domain_effect: float = field(default=1.0, metadata={"help": "synthetic: strength of the domain-specific effect."})
    imbalance: float = field(default=1.5, metadata={"help": "synthetic: domain d's share is proportional to imbalance**-d."})
    domain: Optional[str] = field(default=None, metadata={
        "help": "movielens: gender, age or occupation; table: the domain column."})
    label: Optional[str] = field(default=None, metadata={
        "help": "movielens: rating==5 (the paper) or rating>3; table: the 0/1 label column or a rule like rating>3."})
    sparse: Optional[list[str]] = field(default=None, metadata={"help": "table: categorical columns (None: inferred)."})
    dense: Optional[list[str]] = field(default=None, metadata={"help": "table: numeric columns (None: inferred)."})
    categories: Optional[list[str]] = field(default=None, metadata={"help": "amazon: categories to load (None: all)."})
    side_features: bool = field(default=False, metadata={
        "help": "movielens: add the user's gender, age, occupation and zip and the item's first genre as features "
                "(the domain's own column left out); other sources refuse it (list columns in data.sparse instead)."})
    composition: str = field(default="mixed", metadata={
        "help": "Training batches: mixed, per_domain (one domain per batch, the paper's code) or sorted."})
    seed: int = field(default=0, metadata={"help": "Seed of the data (sampling, negatives) and its split."})


@dataclass
class ModelConfig:
    name: str = field(default="mlp", metadata={"help": "A zoo model: see mlora_peft.models.list_models()."})
    embedding_dim: int = field(default=8, metadata={"help": "Width of each id embedding."})
    embed_domain: bool = field(default=True, metadata={"help": "Embed the domain id as a feature too (the paper)."})
    hidden: list[int] = field(default_factory=lambda: [256, 128, 64], metadata={"help": "Deep tower widths."})
    dropout: float = field(default=0.5, metadata={"help": "Dropout after each hidden layer."})
    options: dict = field(default_factory=dict, metadata={
        "help": "Other keyword options of the zoo model, e.g. {cross_layers: 3} (see docs/models.md)."})


@dataclass
class MloraSettings:
    mode: str = field(default="joint", metadata={"help": "joint, two_stage or none."})
    r: Optional[int] = field(default=None, metadata={"help": "Fixed adapter rank (None: use rank_divisor)."})
    rank_divisor: Optional[int] = field(default=64, metadata={"help": "Rank = max(width // rank_divisor, 1)."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout on the adapters' input (MultiDomainLoraConfig.lora_dropout)."})
    domain_bias: bool = field(default=True, metadata={"help": "Learn a bias per domain beside the low-rank term (b_d)."})
    lr_ratio: float = field(default=1.0, metadata={
        "help": "The adapters' learning rate as a multiple of the backbone's (train.lr and its schedule), in (0, 10]: "
                "below 1 the adapters learn more slowly than the shared model in joint training."})
    keep_shared_if_better: bool = field(default=False, metadata={
        "help": "two_stage: an adapter epoch is kept only if it beats the shared stage's best validation score; if "
                "none does, the result is the shared model with its adapters still at zero. Off: the adapter "
                "stage's own best epoch, as in the paper."})


@dataclass
class TrainSettings:
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate."})
    lr_schedule: str = field(default="constant", metadata={
        "help": "Learning rate within each stage: constant, cosine (from train.lr down to train.lr * min_lr_ratio "
                "over max_epochs) or plateau (times lr_decay after each epoch without a better validation score)."})
    min_lr_ratio: float = field(default=0.0, metadata={
        "help": "cosine: the final lr as a fraction of train.lr, in [0, 1]."})
    lr_decay: float = field(default=0.5, metadata={
        "help": "plateau: multiply the lr by this, in (0, 1], after each epoch without a better validation score."})
    embedding_l2: float = field(default=0.0, metadata={
        "help": "L2 penalty on the id embeddings a batch looks up (DeepCTR's l2_reg_embedding): adds embedding_l2 * "
                "the sum of squared outputs of every nn.Embedding (a linear term's id weights too) / batch rows to "
                "the training loss, which train/loss then includes (0: off)."})
    batch_size: int = field(default=1024, metadata={"help": "Global batch size (split over processes)."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Batches per optimiser step."})
    max_epochs: int = field(default=20, metadata={"help": "Epochs per stage at most."})
    patience: int = field(default=3, metadata={"help": "Epochs without a better validation score before stopping."})
    early_stopping_metric: str = field(default="mean_auc", metadata={"help": "mean_auc or wauc (validation)."})
    seed: int = field(default=0, metadata={"help": "Seed of the initialisation, shuffling and dropout."})
    mixed_precision: str = field(default="no", metadata={"help": "no, bf16 or fp16 (accelerate)."})
    checkpoint_every: int = field(default=0, metadata={"help": "Save the full state every N steps (0: never)."})
    keep_checkpoints: int = field(default=2, metadata={"help": "How many recent checkpoints to keep."})
    resume: bool = field(default=False, metadata={"help": "Continue from the newest complete checkpoint."})


@dataclass
class HubSettings:
    push_to_hub: Optional[str] = field(default=None, metadata={
        "help": "A Hub repository id (user/name) to push the adapter to after training (None: do not push)."})
    private: Optional[bool] = field(default=None, metadata={"help": "Create the repository as private."})
    revision: Optional[str] = field(default=None, metadata={"help": "Branch to push to (None: main)."})


@dataclass
class TrainConfig:
    output_dir: str = field(default="runs/default", metadata={"help": "Where results, checkpoints and adapters go."})
    compare_with_plain: bool = field(default=True, metadata={"help": "Also train the plain backbone and show gains."})
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    mlora: MloraSettings = field(default_factory=MloraSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    hub: HubSettings = field(default_factory=HubSettings)


def load_config(path: Path, overrides: list[str]) -> TrainConfig:
    """The YAML file at `path` with dotted `key=value` overrides; unknown keys are errors."""
    values = yaml.safe_load(Path(path).read_text()) or {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"Override {item!r} is not key=value (e.g. train.lr=3e-4).")
        *parents, leaf = key.split(".")
        node = values
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
    return check_config(_build(TrainConfig, values, ""))


def check_config(cfg: "TrainConfig") -> "TrainConfig":
    """Refuse values the recipe cannot use, naming what is allowed."""
    choices = {"mlora.mode": (cfg.mlora.mode, ("joint", "two_stage", "none")),
               "train.early_stopping_metric": (cfg.train.early_stopping_metric, ("mean_auc", "wauc")),
               "data.composition": (cfg.data.composition, ("mixed", "per_domain", "sorted"))}
    choices["train.lr_schedule"] = (cfg.train.lr_schedule, ("constant", "cosine", "plateau"))
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ValueError(f"{key}={value!r} is not allowed; use one of {list(allowed)}.")
    ranges = {"train.embedding_l2": (lambda x: x >= 0, "a number >= 0 (0: off)"),
              "train.min_lr_ratio": (lambda x: 0 <= x <= 1, "a number in [0, 1]"),
              "train.lr_decay": (lambda x: 0 < x <= 1, "a number in (0, 1] (1: no decay)"),
              "mlora.lr_ratio": (lambda x: 0 < x <= 10, "a number in (0, 10] (1: the backbone's learning rate)")}
    for key, (ok, allowed) in ranges.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
            raise ValueError(f"{key}={value!r} is not allowed; use {allowed}.")
    if cfg.data.side_features and cfg.data.source != "movielens":
        raise ValueError(f"data.side_features=true needs data.source=movielens, not {cfg.data.source!r}; set "
                         "data.side_features=false (for a table, list the extra columns in data.sparse).")
    return cfg


def _build(cls, values: dict, where: str):
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"Unknown config key(s) {[where + k for k in unknown]}; allowed: {sorted(known)}.")
    kwargs = {}
    for name, value in values.items():
        default = known[name].default_factory() if known[name].default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, f"{where}{name}.")
        else:
            kwargs[name] = _as_number(value, known[name].type, where + name)
    return cls(**kwargs)


def _as_number(value, annotation: str, key: str):
    """`value` for a float or int field: YAML reads `3e-4` (no dot) as a string, so such strings are parsed."""
    wanted = {"float": float, "int": int}.get(annotation)
    if wanted is None or value is None or not isinstance(value, (str, bool)):
        return value
    try:
        if isinstance(value, bool):
            raise ValueError(value)
        return wanted(value)
    except ValueError:
        raise ValueError(f"{key}={value!r} must be {'a number' if wanted is float else 'an integer'}, "
                         f"e.g. {key}={'3e-4' if wanted is float else '8'}.") from None


# ---------------------------------------------------------------------------------- data and model
def load_data(cfg: TrainConfig) -> MultiDomainData:
    """The encoded train / validation / test splits the config names."""
    d = cfg.data
    dim = cfg.model.embedding_dim
    if d.source == "synthetic":
        return data_lib.make_synthetic(num_domains=d.num_domains, rows=d.rows, domain_effect=d.domain_effect,
                                       imbalance=d.imbalance, seed=d.seed, embedding_dim=dim)
    if d.source == "movielens":
        return data_lib.load_movielens(_required(d.path, "data.path"), domain=d.domain or "gender",
                                       label=d.label or "rating==5", seed=d.seed, embedding_dim=dim,
                                       side_features=d.side_features)
    if d.source == "amazon":
        return data_lib.load_amazon(_required(d.path, "data.path"), categories=d.categories, seed=d.seed,
                                    embedding_dim=dim)
    return data_lib.load_multidomain(d.source, label=_required(d.label, "data.label"),
                                     domain=_required(d.domain, "data.domain"), sparse=d.sparse, dense=d.dense,
                                     seed=d.seed, embedding_dim=dim)


def build_model(cfg: TrainConfig, data: MultiDomainData) -> nn.Module:
    """The zoo model, wrapped with MLoRA on its deep tower unless mode is none."""
    m = cfg.model
    features = list(data.feature_spec)
    if m.embed_domain:
        features.append(SparseFeature(DOMAIN_COLUMN, vocab_size=data.num_domains, embedding_dim=m.embedding_dim))
    options = {"hidden": m.hidden, "dropout": m.dropout, **m.options}
    if m.name in models.list_models("baselines"):
        if cfg.mlora.mode != "none":
            raise ValueError(f"model.name={m.name!r} is a multi-domain baseline: compare it with mlora.mode=none.")
        options["num_domains"] = data.num_domains
    model = models.build_model(m.name, features, **options)
    if cfg.mlora.mode == "none":
        return model
    adapter = mlora_peft.MultiDomainLoraConfig(domain_names=list(data.domain_names), r=cfg.mlora.r,
                                               rank_divisor=cfg.mlora.rank_divisor, lora_dropout=cfg.mlora.dropout,
                                               domain_bias=cfg.mlora.domain_bias, train_base=True)
    return get_peft_model(model, adapter)


# ---------------------------------------------------------------------------------- training state
STAGES = {"joint": ["joint"], "two_stage": ["shared", "adapters"], "none": ["plain"]}


class TrainingState:
    """Where training is (stage, epoch, step), the early-stopping record and the plateau lr factor; checkpointed."""

    def __init__(self) -> None:
        self.stage, self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0, 0
        self.best_score, self.waited, self.best_weights = float("-inf"), 0, {}
        self.lr_factor = 1.0  # plateau: train.lr_decay ** (epochs of this stage without improvement)
        self.best_from_shared = False  # the best so far is the shared stage's (mlora.keep_shared_if_better)

    def state_dict(self) -> dict:
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        vars(self).update(state)


def set_stage(optimizer: torch.optim.Optimizer, stage: str, lr: float, adapter_ratio: float = 1.0) -> None:
    """Which parameter group learns in `stage`: base (group 0), adapters (group 1, at `lr * adapter_ratio`) or both.

    A frozen group keeps its parameters (learning rate 0), so the model's structure, the
    optimiser and the distributed wrapper stay the same across stages and checkpoints.
    """
    adapter_lr = lr * adapter_ratio
    learning = {"joint": (lr, adapter_lr), "plain": (lr, adapter_lr), "shared": (lr, 0.0),
                "adapters": (0.0, adapter_lr)}[stage]
    for group, group_lr in zip(optimizer.param_groups, learning):
        group["lr"] = group_lr


def end_epoch(state: TrainingState, score: Optional[float], settings: TrainSettings) -> bool:
    """Count the finished epoch and update the early-stopping record (and the plateau lr factor) with its
    validation `score`; returns whether the score improved."""
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
    """
    if settings.lr_schedule != "cosine":
        return settings.lr * state.lr_factor
    step = state.epoch * steps_per_epoch + batch_index // settings.gradient_accumulation_steps
    cosine = (1 + math.cos(math.pi * step / (settings.max_epochs * steps_per_epoch))) / 2
    return settings.lr * (settings.min_lr_ratio + (1 - settings.min_lr_ratio) * cosine)


class EmbeddingL2:
    """DeepCTR's `l2_reg_embedding` for any model: an L2 penalty on the embedding rows a batch looks up.

    Forward hooks on every `nn.Embedding` of `model` (found through any PEFT or accelerate wrapper)
    sum the squares of what training-mode lookups return (eval mode adds nothing); `pop` returns
    `weight * that sum / batch_rows` and starts the next sum.

    Example:
        >>> model = nn.Sequential(nn.Embedding(10, 4))
        >>> penalty = EmbeddingL2(model, weight=1e-3)
        >>> loss = model(torch.tensor([1, 2])).sum() + penalty.pop(batch_rows=2)
    """

    def __init__(self, model: nn.Module, weight: float) -> None:
        self.weight, self.total = weight, 0.0
        self.handles = [m.register_forward_hook(self._add) for m in model.modules() if isinstance(m, nn.Embedding)]

    def _add(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if module.training:
            self.total = self.total + output.float().pow(2).sum()

    def pop(self, batch_rows: int) -> torch.Tensor:
        total, self.total = self.total, 0.0
        return self.weight * total / batch_rows


def make_optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    base = [p for n, p in model.named_parameters() if "mdlora_" not in n]
    adapters = [p for n, p in model.named_parameters() if "mdlora_" in n]
    return torch.optim.Adam([{"params": base}, {"params": adapters}], lr=lr)


def save_checkpoint(accelerator: Accelerator, out_dir: Path, state: TrainingState, keep: int) -> None:
    """`save_state` into a temporary folder renamed into place, so a kill never leaves half a checkpoint."""
    final = out_dir / "checkpoints" / f"step_{state.global_step:09d}"
    tmp = final.with_name(final.name + ".tmp")
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        os.replace(tmp, final)
        for old in complete_checkpoints(out_dir)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def complete_checkpoints(out_dir: Path) -> list[Path]:
    folder = out_dir / "checkpoints"
    return sorted(p for p in folder.glob("step_*") if not p.name.endswith(".tmp")) if folder.exists() else []


def write_json_atomic(path: Path, payload: dict) -> None:
    """Write JSON to a temporary file beside `path`, then rename it into place."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)


def make_accelerator(**kwargs) -> Accelerator:
    """An `Accelerator` that uses every launched process, CPU-only machines included.

    Launched with several processes and no GPU, accelerate would otherwise give each process the
    whole data and a model of its own; here they share one model over gloo instead.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    accelerator = Accelerator(cpu=launched > 1 and not torch.accelerator.is_available(), **kwargs)
    if accelerator.num_processes != launched:
        raise RuntimeError(f"{launched} processes were launched but accelerate set up {accelerator.num_processes}, "
                           "so each would work alone on all the data. Launch with `accelerate launch --multi_gpu` "
                           "on GPUs, or set ACCELERATE_USE_CPU=true for several CPU processes.")
    return accelerator


def train(cfg: TrainConfig, out_dir: Path, data: Optional[MultiDomainData] = None) -> dict:
    """Train one model as `cfg` says; returns the test report with config and parameter counts.

    `data`, when given, is used instead of `load_data(cfg)` (a benchmark reusing one loaded data set).
    """
    # -- Accelerator
    trackers = "tensorboard" if _has("tensorboard") else None
    accelerator = make_accelerator(mixed_precision=cfg.train.mixed_precision, log_with=trackers,
                                   project_dir=str(out_dir),
                                   gradient_accumulation_steps=cfg.train.gradient_accumulation_steps)
    set_seed(cfg.train.seed)
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    accelerator.init_trackers("mlora", config=_flat(dataclasses.asdict(cfg)))

    # -- data
    if data is None:
        with accelerator.main_process_first():
            data = load_data(cfg)
    domain_names = list(data.domain_names)
    per_process = max(cfg.train.batch_size // accelerator.num_processes, 1)
    loaders = {name: data.loader(name, batch_size=per_process, seed=cfg.train.seed,
                                 composition=cfg.data.composition if name == "train" else "mixed",
                                 num_processes=accelerator.num_processes)
               for name in ("train", "validation", "test")}
    epoch_order = loaders["train"].batch_sampler  # the shuffle is fixed by (seed, epoch): resumable

    # -- model, optimiser, prepare
    model = build_model(cfg, data)
    optimizer = make_optimizer(model, cfg.train.lr)
    model, optimizer, train_loader, valid_loader, test_loader = accelerator.prepare(
        model, optimizer, loaders["train"], loaders["validation"], loaders["test"])
    state = TrainingState()
    accelerator.register_for_checkpointing(state)
    penalty = EmbeddingL2(model, cfg.train.embedding_l2) if cfg.train.embedding_l2 else None  # no hooks at 0
    steps_per_epoch = math.ceil(len(train_loader) / cfg.train.gradient_accumulation_steps)  # optimiser steps

    # -- resume
    checkpoints = complete_checkpoints(out_dir)
    if cfg.train.resume and checkpoints:
        accelerator.load_state(str(checkpoints[-1]))
        accelerator.print(f"Resumed from {checkpoints[-1]} (stage {state.stage}, epoch {state.epoch + 1}, "
                          f"step {state.step_in_epoch} of the epoch)")

    # -- loop
    stages, loss_fn, kept_shared = STAGES[cfg.mlora.mode], nn.BCEWithLogitsLoss(), False
    log_path = out_dir / "log.jsonl"
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
                    save_checkpoint(accelerator, out_dir, state, cfg.train.keep_checkpoints)
            report = evaluate(model, valid_loader, accelerator, domain_names)
            score = report[cfg.train.early_stopping_metric]
            lr = scheduled_lr(cfg.train, state, len(train_loader) - 1, steps_per_epoch)  # the epoch's last step
            improved = end_epoch(state, score, cfg.train)
            if improved:
                state.best_from_shared = False
                state.best_weights = {k: v.detach().cpu().clone()
                                      for k, v in accelerator.unwrap_model(model).state_dict().items()}
            _log(accelerator, log_path, state, stage, None if loss is None else loss.item(), lr, report)
            accelerator.print(f"[{stage}] epoch {state.epoch}: validation {cfg.train.early_stopping_metric} "
                              f"{_fmt(score)}{' (best)' if improved else ''}")
        accelerator.unwrap_model(model).load_state_dict(state.best_weights)  # the best epoch so far
        kept_shared = stage == "adapters" and state.best_from_shared
        if kept_shared:
            accelerator.print("[adapters] no epoch beat the shared model on validation: keeping it, adapters at zero")
        carry = stage == "shared" and cfg.mlora.keep_shared_if_better  # the adapters must beat the shared best
        state.stage, state.epoch, state.step_in_epoch = state.stage + 1, 0, 0
        state.best_score = state.best_score if carry else float("-inf")
        state.best_from_shared, state.waited, state.lr_factor = carry, 0, 1.0
        optimizer.state.clear()  # a fresh optimiser state for the next stage

    # -- per-domain evaluation and save
    predictions = predict(model, test_loader, accelerator)
    report = domain_report(predictions["label"], predictions["probability"], predictions["domain_id"], domain_names)
    unwrapped = accelerator.unwrap_model(model)
    adapters = sum(p.numel() for n, p in unwrapped.named_parameters() if "mdlora_" in n)
    results = {**report, "config": dataclasses.asdict(cfg),
               "processes": accelerator.num_processes, "kept_shared_model": kept_shared,
               "params": {"backbone": sum(p.numel() for p in unwrapped.parameters()) - adapters,
                          "adapters": adapters}}
    accelerator.log({f"test/{k}": v for k, v in _flat(report).items() if isinstance(v, float)}, step=state.global_step)
    if accelerator.is_main_process:
        if cfg.mlora.mode != "none":
            extra = {"data_encoder": data.encoder, "feature_spec": features_to_json(data.feature_spec)}
            mlora_peft.save_pretrained(unwrapped, out_dir / "adapter", json_files=extra, eval_report=report,
                                       repo_id=cfg.hub.push_to_hub)
            if cfg.hub.push_to_hub:
                mlora_peft.push_to_hub(unwrapped, cfg.hub.push_to_hub, private=cfg.hub.private,
                                       revision=cfg.hub.revision, json_files=extra, eval_report=report)
        else:
            save_file({k: v.contiguous() for k, v in unwrapped.state_dict().items()}, str(out_dir / "model.safetensors"))
        save_file({k: torch.from_numpy(v) for k, v in predictions.items()}, str(out_dir / "test_predictions.safetensors"))
        write_json_atomic(out_dir / "results.json", results)
    for tracker in accelerator.trackers:  # not end_training(): the process group stays up for the next model
        tracker.finish()
    return results


def main(cfg: TrainConfig) -> dict:
    """Train the configured model (and the plain backbone beside it), print and plot the report."""
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


# ---------------------------------------------------------------------------------- small helpers
def _required(value: Optional[str], key: str) -> str:
    if value is None:
        raise ValueError(f"{key} must be set for this data source (e.g. {key}=...).")
    return value


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _flat(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


def _fmt(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _log(accelerator: Accelerator, path: Path, state: TrainingState, stage: str, loss: Optional[float], lr: float,
         report: dict) -> None:
    record = {"stage": stage, "epoch": state.epoch, "step": state.global_step, "train/loss": loss, "train/lr": lr,
              "eval/wauc": report["wauc"], "eval/mean_auc": report["mean_auc"], "eval/logloss": report["logloss"]}
    for name, row in report["per_domain"].items():
        record[f"eval/{name}/auc"], record[f"eval/{name}/logloss"] = row["auc"], row["logloss"]
    accelerator.log({k: v for k, v in record.items() if isinstance(v, float)}, step=state.global_step)
    if accelerator.is_main_process:
        with open(path, "a") as handle:
            handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="YAML config file.")
    parser.add_argument("overrides", nargs="*", help="Dotted key=value overrides, e.g. train.lr=3e-4.")
    args = parser.parse_args()
    main(load_config(args.config, args.overrides))
