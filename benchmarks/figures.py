"""The page's plots, from the run records (`benchmarks/stats.py`)."""

from __future__ import annotations

import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .records import Variant  # noqa: E402
from .stats import BACKBONES, Variants, backbone_effects, best_mlora, first_run, paired, sort_key  # noqa: E402


def plot_data_set(key: str, variants: Variants, path: Path) -> None:
    """Left: paired Δ WAUC per model with ±1 std bars. Right: per-domain Δ AUC of each backbone's best MLoRA."""
    shown = [v for v in sorted(variants, key=sort_key) if not v.is_reference]
    diffs = {v: paired(variants[v], variants.get(v.reference, {})) for v in shown}
    shown = [v for v in shown if diffs[v] is not None]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, max(3.0, 0.35 * len(shown) + 1.5)))
    ys = range(len(shown))
    left.barh(list(ys), [diffs[v]["mean"] for v in shown], xerr=[diffs[v]["std"] for v in shown],
              color=["tab:gray" if v.is_plain else "tab:blue" for v in shown], capsize=3)
    left.set_yticks(list(ys), [f"{v.name} ({diffs[v]['wins']}/{diffs[v]['n']})" for v in shown])
    left.axvline(0, color="black", linewidth=0.8)
    left.set_xlabel("paired Δ test WAUC vs plain backbone (baselines vs plain MLP)")
    left.invert_yaxis()
    domains = first_run(variants).domains
    bests = [(b, best_mlora(variants, b)) for b in BACKBONES if Variant(b) in variants and best_mlora(variants, b)]
    width = 0.8 / max(len(bests), 1)
    for i, (backbone, best) in enumerate(bests):
        plain = variants[Variant(backbone)]
        seeds = sorted(set(variants[best]) & set(plain))
        gains = [statistics.fmean(variants[best][s].auc(d) - plain[s].auc(d) for s in seeds) for d in domains]
        right.bar([j + i * width for j in range(len(domains))], gains, width, label=best.name)
    right.set_xticks([j + 0.4 - width / 2 for j in range(len(domains))], [d[:14] for d in domains],
                     rotation=45 if len(domains) > 4 else 0, ha="right" if len(domains) > 4 else "center", fontsize=7)
    right.axhline(0, color="black", linewidth=0.8)
    right.set_ylabel("mean paired Δ test AUC")
    right.set_title("per domain: best MLoRA config − plain backbone", fontsize=9)
    if bests:
        right.legend(fontsize=7)
    fig.suptitle(key)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)


def plot_headline(summaries: dict[str, Variants], keys: list[str], path: Path) -> bool:
    """Per (data set, backbone): paired Δ test WAUC of the best MLoRA config and the per-domain fine-tuning
    headroom, each ±1 std over seeds. Returns whether there was anything to plot (nothing is written otherwise)."""
    rows = [(f"{key} · {effect.backbone}", effect.gain, effect.headroom)  # (label, Δ MLoRA, headroom)
            for key in keys for effect in backbone_effects(summaries[key])]
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.4))
    ys = list(range(len(rows)))
    for offset, index, label, color in ((-0.2, 1, "best MLoRA − backbone", "tab:blue"),
                                        (0.2, 2, "per-domain fine-tune − backbone (headroom)", "tab:orange")):
        found = [(y, row[index]) for y, row in zip(ys, rows) if row[index] is not None]
        ax.barh([y + offset for y, _ in found], [d["mean"] for _, d in found], 0.4,
                xerr=[d["std"] for _, d in found], color=color, capsize=2, label=label)
    ax.set_yticks(ys, [row[0] for row in rows], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xscale("symlog", linthresh=0.002)  # linear within ±0.002: real-data differences stay visible
    ax.set_xlabel("paired Δ test WAUC, mean ± std over seeds (symlog)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)
    return True
