"""Is there domain-specific headroom for MLoRA to recover? Four models on one split, one verdict.

`diagnose(cfg)` fits, on the data `cfg` names:

1. popularity: each row scored by the training click rate of one id's value (smoothed towards the
   overall rate); the id feature is the one with the best validation WAUC. No training.
2. shared: the plain backbone on all domains (`mlora.mode=none`), early-stopped on validation.
3. per_domain_finetune: the shared model's best weights fine-tuned on each domain alone, each early-stopped
   on that domain's validation AUC, starting from the shared model's own score (so a domain with nothing
   to gain keeps the shared model). It estimates what a per-domain module could reach at most.
4. mlora: MLoRA as `cfg.mlora` says (`mode: none` is read as joint), early-stopped on validation.

Every choice (the popularity feature, every epoch kept) is made on validation; the verdict is read on test:
headroom = WAUC(per_domain_finetune) - WAUC(shared). There is headroom when it exceeds `threshold`
(default 0.002) and is consistent: the domains where fine-tuning lowers test AUC hold under half the test rows.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import torch
import yaml
from accelerate import PartialState
from torch import nn
from tqdm.auto import tqdm

from ..hub.weights import read_weights
from ..data import MultiDomainData
from ..data.batching import make_loader
from ..data.columns import as_table
from ..evaluation import logits_of, save_figure
from ..features import SparseFeature
from ..metrics import domain_report, roc_auc
from . import build
from .checkpoint import write_json_atomic
from .config import TrainConfig
from . import loop
from .run_dir import check_output_dir

HEADROOM_THRESHOLD = 0.002
"""Test WAUC that per-domain fine-tuning must gain over the shared model to count as headroom."""

MODELS = ("popularity", "shared", "per_domain_finetune", "mlora")
"""The four models of a diagnosis, in the order they are fitted and shown."""

SMOOTHING = 20.0
"""Popularity: pseudo-rows at the overall click rate added to each id value's training rows."""


@dataclass(frozen=True)
class ModelScores:
    """One model's scores: test WAUC and mean AUC, test AUC per domain, and validation WAUC.

    Example:
        >>> scores = ModelScores.from_report({"wauc": 0.7, "mean_auc": 0.7, "per_domain": {"a": {"auc": 0.7}}})
        >>> scores.per_domain, scores.to_json()["wauc"]
        ({'a': 0.7}, 0.7)
    """

    wauc: Optional[float]
    mean_auc: Optional[float]
    per_domain: dict[str, Optional[float]]
    validation_wauc: Optional[float] = None

    @classmethod
    def from_report(cls, test: dict, validation_wauc: Optional[float] = None) -> ModelScores:
        """From a `domain_report` of the test split."""
        return cls(test["wauc"], test["mean_auc"], {n: row["auc"] for n, row in test["per_domain"].items()},
                   validation_wauc)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Diagnosis:
    """What `diagnose` found: the four models' scores, the headroom and the verdict.

    Attributes:
        scores: `ModelScores` per model name (`MODELS`).
        test_rows: test rows per domain.
        headroom: test WAUC of per_domain_finetune minus shared.
        mlora_gain: test WAUC of mlora minus shared.
        losing_share: share of test rows in domains where fine-tuning lowers the test AUC.
        has_headroom: `headroom > threshold` and `losing_share < 0.5`.
        threshold: the headroom threshold used.
        popularity_feature: the id feature the popularity baseline scores by.
        seconds: wall time of the whole diagnosis.

    Example:
        >>> s = ModelScores(0.7, 0.7, {"a": 0.7})
        >>> d = Diagnosis({m: s for m in MODELS}, {"a": 10}, 0.0, 0.0, 0.0, False, 0.002, "item", 1.0)
        >>> d.verdict.startswith("no headroom")
        True
    """

    scores: dict[str, ModelScores]
    test_rows: dict[str, int]
    headroom: Optional[float]
    mlora_gain: Optional[float]
    losing_share: float
    has_headroom: bool
    threshold: float
    popularity_feature: str
    seconds: float

    @property
    def verdict(self) -> str:
        """One line: the headroom and how much of it MLoRA recovers, or why MLoRA is not expected to help."""
        h, g = _signed(self.headroom), _signed(self.mlora_gain)
        if self.has_headroom:
            share = f", {self.mlora_gain / self.headroom:.0%} of it" if self.mlora_gain is not None else ""
            line = f"domain-specific headroom {h} WAUC over the shared model; MLoRA recovers {g}{share}"
        elif self.headroom is not None and self.headroom > self.threshold:
            line = (f"no consistent headroom: per-domain fine-tuning gains {h} WAUC but loses AUC on domains holding "
                    f"{self.losing_share:.0%} of the test rows; MLoRA is not expected to help (it gives {g})")
        else:
            line = (f"no headroom: per-domain fine-tuning does not beat the shared model by more than "
                    f"{self.threshold:g} WAUC ({h}); MLoRA is not expected to help (it gives {g})")
        shared, popular = self.scores["shared"].wauc, self.scores["popularity"].wauc
        if shared is not None and popular is not None and shared <= popular:
            line += f"; note: the shared model is not above the popularity baseline ({popular:.4f})"
        return line

    def to_json(self) -> dict:
        """`diagnosis.json`: one entry per model (WAUC, mean AUC, per-domain AUCs), headroom, verdict."""
        return {**{name: self.scores[name].to_json() for name in MODELS}, "headroom": self.headroom,
                "mlora_gain": self.mlora_gain, "has_headroom": self.has_headroom, "verdict": self.verdict,
                "threshold": self.threshold, "losing_share": self.losing_share,
                "popularity_feature": self.popularity_feature, "test_rows": self.test_rows, "seconds": self.seconds}

    def table(self) -> str:
        """Per-domain test AUC of the four models, with fine-tuning's and MLoRA's gains over the shared model."""
        header = (f"{'domain':<18}{'rows':>8}{'popular':>9}{'shared':>9}{'finetune':>9}{'gain':>9}"
                  f"{'mlora':>9}{'gain':>9}")
        lines = [header]
        s = self.scores
        for name, rows in self.test_rows.items():
            lines.append(_row(name, str(rows), [s[m].per_domain.get(name) for m in MODELS]))
        lines.append(_row("WAUC", "", [s[m].wauc for m in MODELS]))
        lines.append(_row("mean AUC", "", [s[m].mean_auc for m in MODELS]))
        lines.append(_row("validation WAUC", "", [s[m].validation_wauc for m in MODELS]))
        return "\n".join(lines)


def diagnose(cfg: TrainConfig, threshold: float = HEADROOM_THRESHOLD, progress: bool = True) -> Diagnosis:
    """Fit popularity, shared, per-domain fine-tuned and MLoRA models on `cfg`'s data; judge the headroom.

    Writes into `cfg.output_dir`: `config.yaml`, `shared/` and `mlora/` (training runs, as `train` writes
    them), `diagnosis.json` (`Diagnosis.to_json`) and `diagnosis.png`. Runs in one process.

    Args:
        cfg: a checked config (the `data`, `model` and `train` sections as for training; `mlora` for the
            MLoRA model, mode none read as joint).
        threshold: the test WAUC gain of per-domain fine-tuning over the shared model that counts as headroom.
        progress: show a progress bar over the steps (popularity, shared, each domain's fine-tuning, MLoRA).

    Returns:
        The `Diagnosis`.

    Raises:
        OutputDirError: `cfg.output_dir` holds another run and `cfg.overwrite` is false.
        ValueError: the config's own errors (`load_data`, `build_model`).
    """
    start = time.perf_counter()
    out_dir = Path(cfg.output_dir)
    if check_output_dir(out_dir, resume=False, overwrite=cfg.overwrite):
        _clear(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    data = build.load_data(cfg)
    bar = tqdm(total=3 + data.num_domains, desc="popularity", disable=not progress)

    popular_feature, popular = popularity_scores(data)
    bar.update()
    bar.set_description("shared model")
    plain = dataclasses.replace(cfg, mlora=dataclasses.replace(cfg.mlora, mode="none"), overwrite=True)
    shared_test = loop.train(plain, out_dir / "shared", data=data)
    shared = build.build_model(plain, data)
    shared.load_state_dict(read_weights(out_dir / "shared" / "model.safetensors"))
    bar.update()
    finetuned = finetune_per_domain(cfg, data, shared, on_domain=lambda name: (
        bar.set_description(f"fine-tune {name}"), bar.update()))
    bar.set_description("mlora")
    joint = dataclasses.replace(cfg, mlora=dataclasses.replace(
        cfg.mlora, mode="joint" if cfg.mlora.mode == "none" else cfg.mlora.mode), overwrite=True)
    mlora_test = loop.train(joint, out_dir / "mlora", data=data)
    bar.update()
    bar.close()

    scores = {"popularity": popular, "shared": ModelScores.from_report(shared_test, _best_validation(
        out_dir / "shared", cfg)), "per_domain_finetune": finetuned,
        "mlora": ModelScores.from_report(mlora_test, _best_validation(out_dir / "mlora", cfg))}
    diagnosis = judge(scores, {n: row["rows"] for n, row in shared_test["per_domain"].items()}, threshold,
                      popular_feature, time.perf_counter() - start)
    write_json_atomic(out_dir / "diagnosis.json", diagnosis.to_json())
    plot_diagnosis(diagnosis, out_dir / "diagnosis.png")
    return diagnosis


def judge(scores: dict[str, ModelScores], test_rows: dict[str, int], threshold: float = HEADROOM_THRESHOLD,
          popularity_feature: str = "", seconds: float = 0.0) -> Diagnosis:
    """The `Diagnosis` of four models' test scores: headroom, MLoRA's gain, consistency.

    Example:
        >>> shared = ModelScores(0.70, 0.70, {"a": 0.70, "b": 0.70})
        >>> tuned = ModelScores(0.72, 0.72, {"a": 0.74, "b": 0.69})
        >>> d = judge({"popularity": shared, "shared": shared, "per_domain_finetune": tuned, "mlora": tuned},
        ...           {"a": 60, "b": 40})
        >>> round(d.headroom, 3), d.losing_share, d.has_headroom
        (0.02, 0.4, True)
    """
    shared, tuned, mlora = (scores[m] for m in ("shared", "per_domain_finetune", "mlora"))
    headroom, gain = _diff(tuned.wauc, shared.wauc), _diff(mlora.wauc, shared.wauc)
    losing = sum(rows for name, rows in test_rows.items()
                 if (_diff(tuned.per_domain.get(name), shared.per_domain.get(name)) or 0.0) < 0)
    losing_share = losing / max(sum(test_rows.values()), 1)
    has_headroom = headroom is not None and headroom > threshold and losing_share < 0.5
    return Diagnosis(scores, dict(test_rows), headroom, gain, losing_share, has_headroom, threshold,
                     popularity_feature, seconds)


# ---------------------------------------------------------------------------------- popularity
def popularity_scores(data: MultiDomainData, smoothing: float = SMOOTHING) -> tuple[str, ModelScores]:
    """The popularity baseline: per id value, its smoothed training click rate; the id chosen on validation.

    Returns:
        The id feature's name and its scores.

    Example:
        >>> from mlora_peft.data import make_synthetic
        >>> name, scores = popularity_scores(make_synthetic(num_domains=2, rows=2000, seed=0))
        >>> name in ("user", "item"), 0.5 < scores.wauc < 1
        (True, True)
    """
    name, reports = popularity_reports(data, smoothing)
    return name, ModelScores.from_report(reports["test"], reports["validation"]["wauc"])


def popularity_reports(data: MultiDomainData, smoothing: float = SMOOTHING) -> tuple[str, dict[str, dict]]:
    """`popularity_scores` in full: the id feature's name and the `domain_report` of validation and test."""
    tables = {split: as_table(data.splits[split]) for split in ("train", "validation", "test")}
    ids = [f.name for f in data.feature_spec if isinstance(f, SparseFeature)]
    if not ids:
        raise ValueError("The data has no id (sparse) feature to score popularity by; list one in data.sparse.")
    best = None
    for name in ids:
        rate = _click_rates(tables["train"], name, smoothing)
        valid = _report(tables["validation"], rate[_column(tables["validation"], name)], data.domain_names)
        if best is None or (valid["wauc"] or 0.0) > (best[1]["wauc"] or 0.0):
            best = (name, valid, rate)
    name, valid, rate = best
    return name, {"validation": valid,
                  "test": _report(tables["test"], rate[_column(tables["test"], name)], data.domain_names)}


def _click_rates(train_rows: pa.Table, name: str, smoothing: float) -> np.ndarray:
    """`(clicks + smoothing * overall rate) / (rows + smoothing)` per id value (index = id)."""
    ids, labels = _column(train_rows, name), _column(train_rows, "label")
    size = int(ids.max()) + 1 if ids.size else 1
    clicks, rows = np.bincount(ids, weights=labels, minlength=size), np.bincount(ids, minlength=size)
    overall = labels.mean() if labels.size else 0.5
    return np.append((clicks + smoothing * overall) / (rows + smoothing), overall)  # unseen ids: overall rate


def _column(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy()


# ---------------------------------------------------------------------------------- per-domain fine-tuning
def finetune_per_domain(cfg: TrainConfig, data: MultiDomainData, shared: nn.Module, on_domain=None) -> ModelScores:
    """The shared model fine-tuned on each domain alone; each domain's epochs chosen on its validation AUC.

    Every domain starts from the shared model's weights with a fresh Adam (`train.lr`) and trains on
    its own training rows for at most `train.max_epochs` epochs, stopping after `train.patience` epochs
    without a better validation AUC; the best epoch, or the shared model itself when no epoch beats it,
    predicts the domain's test rows.

    Args:
        cfg: the config (`train` section: lr, batch size, epochs, patience, embedding_l2, seed).
        data: the data the shared model was trained on.
        shared: the shared model (not changed).
        on_domain: called with each domain's name when it is done (a progress bar).

    Returns:
        The fine-tuned models' scores, test and validation predictions combined over domains.
    """
    reports = finetune_reports(cfg, data, shared, on_domain)
    return ModelScores.from_report(reports["test"], reports["validation"]["wauc"])


def finetune_reports(cfg: TrainConfig, data: MultiDomainData, shared: nn.Module, on_domain=None) -> dict[str, dict]:
    """`finetune_per_domain` in full: the `domain_report` of validation and test."""
    device = PartialState().device
    weights = {k: v.detach().clone() for k, v in shared.state_dict().items()}
    model = shared.to(device)
    tables = {split: as_table(data.splits[split]) for split in ("train", "validation", "test")}
    domains = {split: _column(t, "domain_id") for split, t in tables.items()}
    predicted = {split: _probabilities(model, tables[split], cfg.train.batch_size, device)
                 for split in ("validation", "test")}
    for index, name in enumerate(data.domain_names):
        rows = {split: np.flatnonzero(ids == index) for split, ids in domains.items()}
        if all(len(r) for r in rows.values()):
            model.load_state_dict(weights)
            best = _finetune_domain(cfg, model, {s: tables[s].take(r) for s, r in rows.items()},
                                    predicted["validation"][rows["validation"]], device)
            if best is not None:
                model.load_state_dict(best)
                for split in ("validation", "test"):
                    predicted[split][rows[split]] = _probabilities(model, tables[split].take(rows[split]),
                                                                   cfg.train.batch_size, device)
        if on_domain is not None:
            on_domain(name)
    model.load_state_dict(weights)
    shared.to("cpu")
    return {split: _report(tables[split], predicted[split], data.domain_names) for split in ("validation", "test")}


def _finetune_domain(cfg: TrainConfig, model: nn.Module, tables: dict[str, pa.Table], shared_valid: np.ndarray,
                     device: torch.device) -> Optional[dict]:
    """Fine-tune `model` on one domain's rows; the best state by validation AUC, None if none beats the shared one."""
    settings = cfg.train
    valid_labels = _column(tables["validation"], "label")
    best_score, best, waited = roc_auc(valid_labels, shared_valid), None, 0
    best_score = -1.0 if best_score is None else best_score
    loader = make_loader(tables["train"], batch_size=settings.batch_size, shuffle=True, seed=settings.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    penalty = build.EmbeddingL2(model, settings.embedding_l2, settings.embedding_l2_scope) if settings.embedding_l2 else None
    loss_fn = nn.BCEWithLogitsLoss()
    for epoch in range(settings.max_epochs):
        loader.batch_sampler.set_epoch(epoch)
        model.train()
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = loss_fn(logits_of(model(batch)), batch["label"])
            if penalty is not None:
                loss = loss + penalty.pop(len(batch["label"]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        score = roc_auc(valid_labels, _probabilities(model, tables["validation"], settings.batch_size, device))
        if score is not None and score > best_score:
            best_score, best, waited = score, {k: v.detach().clone() for k, v in model.state_dict().items()}, 0
        else:
            waited += 1
            if waited >= settings.patience:
                break
    if penalty is not None:
        for handle in penalty.handles:
            handle.remove()
    return best


@torch.no_grad()
def _probabilities(model: nn.Module, rows: pa.Table, batch_size: int, device: torch.device) -> np.ndarray:
    model.eval()
    loader = make_loader(rows, batch_size=batch_size, shuffle=False)
    found = [torch.sigmoid(logits_of(model({k: v.to(device) for k, v in b.items()})).float()).cpu() for b in loader]
    return torch.cat(found).numpy().astype(np.float64) if found else np.empty(0)


def _report(rows: pa.Table, probabilities: np.ndarray, domain_names) -> dict:
    return domain_report(_column(rows, "label"), probabilities, _column(rows, "domain_id"), domain_names)


# ---------------------------------------------------------------------------------- output
def plot_diagnosis(diagnosis: Diagnosis, path: Path) -> None:
    """Save a PNG: per-domain test AUC of the four models, and fine-tuning's and MLoRA's gains over shared."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(diagnosis.test_rows)
    s, x = diagnosis.scores, np.arange(len(names))
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(6.0, 0.5 * len(names) + 4) * 2, 4))
    for offset, model in enumerate(MODELS):
        aucs = [s[model].per_domain.get(n) or np.nan for n in names]
        left.bar(x + (offset - 1.5) * 0.2, aucs, 0.2, label=model)
    finite = [v for m in MODELS for v in s[m].per_domain.values() if v is not None]
    left.set_ylim(min(finite + [0.5]) - 0.02, min(1.0, max(finite + [0.5]) + 0.02))
    left.set_title("Per-domain test AUC")
    left.legend(loc="lower right", fontsize=8)
    for offset, model in enumerate(("per_domain_finetune", "mlora")):
        gains = [_diff(s[model].per_domain.get(n), s["shared"].per_domain.get(n)) for n in names]
        right.bar(x + (offset - 0.5) * 0.35, [np.nan if g is None else g for g in gains], 0.35,
                  label=f"{model} - shared")
    right.axhline(0, color="black", linewidth=0.8)
    right.set_title(f"Gain over shared (headroom {_signed(diagnosis.headroom)} WAUC)")
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.set_xticks(x, names, rotation=45, ha="right")
    fig.tight_layout()
    save_figure(fig, path)


def _best_validation(run_dir: Path, cfg: TrainConfig) -> Optional[float]:
    """Validation WAUC of the epoch a finished run kept (its last stage's best by the stopping metric)."""
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    last = [r for r in log if r["stage"] == log[-1]["stage"]]
    metric = f"eval/{cfg.train.early_stopping_metric}"
    return max(last, key=lambda r: -1.0 if r[metric] is None else r[metric])["eval/wauc"] if last else None


def _clear(out_dir: Path) -> None:
    for entry in out_dir.iterdir():
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def _row(name: str, rows: str, aucs: list) -> str:
    popular, shared, tuned, mlora = aucs
    cells = [_fmt(popular), _fmt(shared), _fmt(tuned), _signed(_diff(tuned, shared)), _fmt(mlora),
             _signed(_diff(mlora, shared))]
    return f"{name:<18}{rows:>8}" + "".join(f"{c:>9}" for c in cells)


def _diff(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None else a - b


def _fmt(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _signed(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:+.4f}"
