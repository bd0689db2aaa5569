"""Train a CTR model with MLoRA and report per-domain AUC.

    accelerate launch recipes/train.py                                   # recipes/configs/default.yaml
    accelerate launch recipes/train.py --config recipes/configs/tiny.yaml train.lr=3e-3 mlora.mode=two_stage

Reads top to bottom: config, Accelerator, data, model, optimiser, loop with early stopping on
mean per-domain validation AUC, per-domain test report, save. Modes: `joint` (backbone and
adapters from scratch, the paper's main regime), `two_stage` (shared backbone first, then only
the adapters, with A randomly initialised) and `none` (the plain backbone).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import set_seed
from peft import get_peft_model
from torch import nn

import mlora_peft
from mlora_peft.metrics import domain_report
from mlora_peft.synthetic import make_synthetic_ctr

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"


# ---------------------------------------------------------------------------------- config
@dataclass
class DataConfig:
    num_domains: int = field(default=4, metadata={"help": "Number of synthetic domains."})
    rows: int = field(default=40_000, metadata={"help": "Rows over train, validation and test."})
    domain_effect: float = field(default=1.0, metadata={"help": "Strength of the domain-specific click effect."})
    imbalance: float = field(default=1.5, metadata={"help": "Domain d's share is proportional to imbalance**-d."})
    seed: int = field(default=0, metadata={"help": "Seed of the data and its split."})


@dataclass
class ModelConfig:
    embedding_dim: int = field(default=8, metadata={"help": "Width of each id embedding."})
    hidden: list[int] = field(default_factory=lambda: [256, 128, 64], metadata={"help": "Deep tower widths."})
    dropout: float = field(default=0.5, metadata={"help": "Dropout after each hidden layer."})


@dataclass
class MloraSettings:
    mode: str = field(default="joint", metadata={"help": "joint, two_stage or none."})
    r: Optional[int] = field(default=None, metadata={"help": "Fixed adapter rank (None: use rank_divisor)."})
    rank_divisor: Optional[int] = field(default=16, metadata={"help": "Rank = max(width // rank_divisor, 1)."})


@dataclass
class TrainSettings:
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate."})
    batch_size: int = field(default=1024, metadata={"help": "Global batch size (split over processes)."})
    max_epochs: int = field(default=20, metadata={"help": "Epochs per stage at most."})
    patience: int = field(default=3, metadata={"help": "Epochs without a better validation mean AUC."})
    seed: int = field(default=0, metadata={"help": "Seed of the initialisation and shuffling."})
    mixed_precision: str = field(default="no", metadata={"help": "no, bf16 or fp16 (accelerate)."})


@dataclass
class TrainConfig:
    output_dir: str = field(default="runs/default", metadata={"help": "Where results and adapters go."})
    compare_with_plain: bool = field(default=True, metadata={"help": "Also train the plain backbone."})
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    mlora: MloraSettings = field(default_factory=MloraSettings)
    train: TrainSettings = field(default_factory=TrainSettings)


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
    return _build(TrainConfig, values, "")


def _build(cls, values: dict, where: str):
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"Unknown config key(s) {[where + k for k in unknown]}; allowed: {sorted(known)}.")
    kwargs = {}
    for name, value in values.items():
        default = known[name].default_factory() if known[name].default_factory is not dataclasses.MISSING else None
        kwargs[name] = _build(type(default), value, f"{where}{name}.") if dataclasses.is_dataclass(default) else value
    return cls(**kwargs)


# ---------------------------------------------------------------------------------- data and model
class ColumnDataset(torch.utils.data.Dataset):
    """Columns as tensors; a batch of indices is gathered in one step (no per-row Python)."""

    def __init__(self, split) -> None:
        self.columns = {k: v for k, v in split.with_format("torch")[:].items()}

    def __len__(self) -> int:
        return len(self.columns["label"])

    def __getitem__(self, index: int) -> dict:
        return {k: v[index] for k, v in self.columns.items()}

    def __getitems__(self, indices: list[int]) -> dict:
        index = torch.as_tensor(indices)
        return {k: v[index] for k, v in self.columns.items()}


class IdMLP(nn.Module):
    """User, item and domain embeddings plus the dense price, then a ReLU tower and a logit head."""

    def __init__(self, users: int, items: int, domains: int, cfg: ModelConfig) -> None:
        super().__init__()
        dim = cfg.embedding_dim
        self.user, self.item, self.domain = nn.Embedding(users, dim), nn.Embedding(items, dim), nn.Embedding(domains, dim)
        layers, width = [], 3 * dim + 1
        for hidden in cfg.hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(cfg.dropout)]
            width = hidden
        self.tower = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1)
        self.mlora_target_modules = [f"tower.{3 * i}" for i in range(len(cfg.hidden))]  # the paper's placement

    def forward(self, batch: dict) -> torch.Tensor:
        features = [self.user(batch["user"]), self.item(batch["item"]), self.domain(batch["domain_id"]),
                    batch["price"].unsqueeze(-1)]
        return self.head(self.tower(torch.cat(features, -1))).squeeze(-1)  # (N,) logits


# ---------------------------------------------------------------------------------- training
def fit(model, loaders, accelerator, cfg: TrainConfig, domain_names, tag: str):
    """Adam + BCE with early stopping on mean validation AUC; returns the best model (unwrapped)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.train.lr)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, loaders["train"])
    loss_fn = nn.BCEWithLogitsLoss()
    best, best_state, waited = -math.inf, None, 0
    for epoch in range(cfg.train.max_epochs):
        model.train()
        total, seen = 0.0, 0
        for batch in train_loader:
            loss = loss_fn(model(batch), batch["label"])
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            total, seen = total + loss.item() * len(batch["label"]), seen + len(batch["label"])
        report = evaluate(model, loaders["validation"], accelerator, domain_names)
        score = report["mean_auc"] if report["mean_auc"] is not None else -math.inf
        accelerator.print(f"[{tag}] epoch {epoch + 1}: train loss {total / max(seen, 1):.4f}, "
                          f"validation mean AUC {score:.4f}, WAUC {report['wauc']:.4f}")
        if score > best:
            best, waited = score, 0
            best_state = copy.deepcopy(accelerator.unwrap_model(model).state_dict())
        else:
            waited += 1
            if waited >= cfg.train.patience:
                break
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.load_state_dict(best_state)
    return unwrapped


@torch.no_grad()
def evaluate(model, loader, accelerator, domain_names) -> dict:
    """Per-domain report over a loader, with predictions gathered from every process."""
    model.eval()
    labels, probs, domains = [], [], []
    for batch in loader:
        logits = model(batch)
        gathered = accelerator.gather_for_metrics((batch["label"], torch.sigmoid(logits.float()), batch["domain_id"]))
        for store, value in zip((labels, probs, domains), gathered):
            store.append(value.cpu())
    return domain_report(torch.cat(labels).numpy(), torch.cat(probs).numpy(), torch.cat(domains).numpy(), domain_names)


def build_and_train(mode: str, data, loaders, accelerator, cfg: TrainConfig, domain_names):
    """Train one model in `mode` (joint, two_stage or none) and return it."""
    set_seed(cfg.train.seed)
    backbone = IdMLP(int(max(data["train"]["user"])) + 1, int(max(data["train"]["item"])) + 1,
                     len(domain_names), cfg.model)
    adapter = dict(domain_names=domain_names, r=cfg.mlora.r, rank_divisor=cfg.mlora.rank_divisor)
    if mode == "none":
        return fit(backbone, loaders, accelerator, cfg, domain_names, "plain")
    if mode == "joint":
        model = get_peft_model(backbone, mlora_peft.MultiDomainLoraConfig(**adapter, train_base=True))
        return fit(model, loaders, accelerator, cfg, domain_names, "mlora joint")
    if mode == "two_stage":
        shared = fit(backbone, loaders, accelerator, cfg, domain_names, "stage 1: shared")
        model = get_peft_model(shared, mlora_peft.MultiDomainLoraConfig(**adapter))
        return fit(model, loaders, accelerator, cfg, domain_names, "stage 2: adapters")
    raise ValueError(f"mlora.mode={mode!r}: use joint, two_stage or none.")


def write_json_atomic(path: Path, payload: dict) -> None:
    """Write JSON to a temporary file beside `path`, then rename it into place."""
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        json.dump(payload, handle, indent=2)
    os.replace(handle.name, path)


def format_table(report: dict, plain: Optional[dict]) -> str:
    """Per-domain rows, AUC and (when a plain run is given) the gain over it."""
    lines = [f"{'domain':<10}{'rows':>8}{'pos':>7}{'AUC':>9}" + (f"{'plain':>9}{'gain':>9}" if plain else "")]
    for name, row in report["per_domain"].items():
        auc = "n/a" if row["auc"] is None else f"{row['auc']:.4f}"
        line = f"{name:<10}{row['rows']:>8}{row['positives']:>7}{auc:>9}"
        if plain:
            base = plain["per_domain"][name]["auc"]
            gain = "n/a" if None in (base, row["auc"]) else f"{row['auc'] - base:+.4f}"
            line += f"{'n/a' if base is None else f'{base:.4f}':>9}{gain:>9}"
        lines.append(line)
    total = f"{'WAUC':<25}{report['wauc']:>9.4f}"
    if plain:
        total += f"{plain['wauc']:>9.4f}{report['wauc'] - plain['wauc']:>+9.4f}"
    return "\n".join(lines + [total])


def main(cfg: TrainConfig) -> dict:
    accelerator = Accelerator(mixed_precision=cfg.train.mixed_precision)
    accelerator.print(yaml.safe_dump({"resolved config": dataclasses.asdict(cfg)}, sort_keys=False))
    out_dir = Path(cfg.output_dir)
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)

    data = make_synthetic_ctr(**dataclasses.asdict(cfg.data))
    domain_names = [f"domain_{d}" for d in range(cfg.data.num_domains)]
    per_process = max(cfg.train.batch_size // accelerator.num_processes, 1)
    loaders = {
        name: torch.utils.data.DataLoader(ColumnDataset(split), batch_size=per_process, shuffle=name == "train",
                                          collate_fn=lambda batch: batch)
        for name, split in data.items()
    }
    loaders["validation"], loaders["test"] = accelerator.prepare(loaders["validation"], loaders["test"])

    model = build_and_train(cfg.mlora.mode, data, loaders, accelerator, cfg, domain_names)
    report = evaluate(model, loaders["test"], accelerator, domain_names)
    plain_report = None
    if cfg.compare_with_plain and cfg.mlora.mode != "none":
        plain = build_and_train("none", data, loaders, accelerator, cfg, domain_names)
        plain_report = evaluate(plain, loaders["test"], accelerator, domain_names)

    adapters = sum(p.numel() for n, p in model.named_parameters() if "mdlora_" in n)
    results = {**report, "config": dataclasses.asdict(cfg),
               "params": {"backbone": sum(p.numel() for p in model.parameters()) - adapters, "adapters": adapters}}
    if plain_report is not None:
        results["plain"] = plain_report
    if accelerator.is_main_process:
        if cfg.mlora.mode != "none":
            model.save_pretrained(out_dir / "adapter")
        write_json_atomic(out_dir / "results.json", results)
        accelerator.print(f"\nTest, mode {cfg.mlora.mode}:\n" + format_table(report, plain_report))
        accelerator.print(f"\nSaved {out_dir / 'results.json'}")
    accelerator.end_training()
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="YAML config file.")
    parser.add_argument("overrides", nargs="*", help="Dotted key=value overrides, e.g. train.lr=3e-4.")
    args = parser.parse_args()
    main(load_config(args.config, args.overrides))
