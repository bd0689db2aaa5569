"""Evaluating a model per domain under accelerate, and showing the report as a table and a plot."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor, nn

from .metrics import domain_report


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable[dict], accelerator) -> dict[str, np.ndarray]:
    """Labels, click probabilities and domain ids of every row, gathered from all processes.

    `gather_for_metrics` drops the rows accelerate repeats to even out the last batch. The model
    returns `(N,)` logits, or an output with a `logits` field (`CTRModel`'s `CTROutput`).
    """
    was_training = model.training
    model.eval()
    columns: dict[str, list] = {"label": [], "probability": [], "domain_id": []}
    for batch in loader:
        probability = torch.sigmoid(logits_of(model(batch)).float())
        gathered = accelerator.gather_for_metrics((batch["label"], probability, batch["domain_id"]))
        for key, value in zip(columns, gathered):
            columns[key].append(value.cpu())
    model.train(was_training)
    return {k: torch.cat(v).numpy() if v else np.empty(0) for k, v in columns.items()}


def logits_of(output: Any) -> Tensor:
    """The logits of a model call: the tensor itself, or `output.logits` (a transformers `ModelOutput`).

    Example:
        >>> import torch
        >>> from mlora_peft.models import CTROutput
        >>> logits_of(torch.zeros(2)), logits_of(CTROutput(logits=torch.ones(2)))
        (tensor([0., 0.]), tensor([1., 1.]))
    """
    return getattr(output, "logits", output)


def evaluate(model: nn.Module, loader: Iterable[dict], accelerator, domain_names: Sequence[str]) -> dict:
    """The per-domain report (`mlora_peft.metrics.domain_report`) of `model` on `loader`."""
    rows = predict(model, loader, accelerator)
    return domain_report(rows["label"], rows["probability"], rows["domain_id"], domain_names)


def gain_table(report: dict, baseline: Optional[dict] = None, baseline_name: str = "plain") -> str:
    """Per-domain rows, positives and AUC, with the baseline's AUC and the gain when given.

    Example:
        >>> r = {"per_domain": {"a": {"auc": 0.7, "rows": 10, "positives": 3}}, "wauc": 0.7, "mean_auc": 0.7}
        >>> print(gain_table(r))
        domain            rows     pos      AUC
        a                   10       3   0.7000
        WAUC                             0.7000
        mean AUC                         0.7000
    """
    header = f"{'domain':<16}{'rows':>6}{'pos':>8}{'AUC':>9}"
    if baseline:
        header += f"{baseline_name:>9}{'gain':>9}"
    lines = [header]
    for name, row in report["per_domain"].items():
        line = f"{name:<16}{row['rows']:>6}{row['positives']:>8}{_fmt(row['auc']):>9}"
        if baseline:
            other = baseline["per_domain"].get(name, {}).get("auc")
            line += f"{_fmt(other):>9}{_fmt(_diff(row['auc'], other), signed=True):>9}"
        lines.append(line + ("  (one class: AUC undefined)" if row["auc"] is None else ""))
    for key, label in (("wauc", "WAUC"), ("mean_auc", "mean AUC")):
        line = f"{label:<30}{_fmt(report[key]):>9}"
        if baseline:
            line += f"{_fmt(baseline[key]):>9}{_fmt(_diff(report[key], baseline[key]), signed=True):>9}"
        lines.append(line)
    return "\n".join(lines)


def plot_report(report: dict, path: Path, baseline: Optional[dict] = None, title: str = "Per-domain test AUC") -> None:
    """Save a PNG bar chart of per-domain AUC (and of the gain over `baseline` when given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, row in report["per_domain"].items() if row["auc"] is not None]
    aucs = [report["per_domain"][n]["auc"] for n in names]
    panels = 2 if baseline else 1
    fig, axes = plt.subplots(1, panels, figsize=(max(5, 0.6 * len(names) + 3) * panels, 4), squeeze=False)
    axes[0][0].bar(names, aucs, color="tab:blue", label="model")
    if baseline:
        base = [baseline["per_domain"].get(n, {}).get("auc") or np.nan for n in names]
        axes[0][0].plot(names, base, "o", color="tab:orange", label="baseline")
        gains = np.array(aucs) - np.array(base)
        axes[0][1].bar(names, gains, color=["tab:green" if g >= 0 else "tab:red" for g in gains])
        axes[0][1].axhline(0, color="black", linewidth=0.8)
        axes[0][1].set_title("AUC gain over the baseline")
    low = min(aucs + [0.5]) - 0.02
    axes[0][0].set_ylim(low, min(1.0, max(aucs + [0.5]) + 0.02))
    axes[0][0].set_title(f"{title} (WAUC {_fmt(report['wauc'])})")
    axes[0][0].legend(loc="lower right")
    for ax in axes[0]:
        ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    save_figure(fig, path)


def save_figure(fig: Any, path: Path) -> None:
    """Write a matplotlib figure to `path` through a temporary file (never half-written), then close it."""
    import matplotlib.pyplot as plt

    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def _fmt(value: Optional[float], signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _diff(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None else a - b
