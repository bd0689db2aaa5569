"""The page's plots, from the cached records (`benchmarks/stats.py`)."""

from __future__ import annotations

import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .records import Variant  # noqa: E402
from .stats import BACKBONES, Variants, best_mlora, first_run, page_order, paired, sort_key  # noqa: E402


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
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_summary(summaries: dict[str, Variants], path: Path) -> bool:
    """Paired Δ WAUC (±1 std) of each backbone's best MLoRA config, one group of bars per data set (mixed batches).

    Returns:
        Whether there was anything to plot (nothing is written otherwise).
    """
    keys = [k for k in sorted(summaries, key=lambda k: page_order(summaries[k])) if first_run(summaries[k]).data.composition == "mixed"]
    found = {k: {b: paired(summaries[k][best_mlora(summaries[k], b)], summaries[k][Variant(b)]) for b in BACKBONES
                 if Variant(b) in summaries[k] and best_mlora(summaries[k], b)} for k in keys}
    found = {k: v for k, v in found.items() if v}
    if not found:
        return False
    fig, ax = plt.subplots(figsize=(13, 4.5))
    width = 0.8 / len(BACKBONES)
    for i, backbone in enumerate(BACKBONES):
        xs = [j + i * width for j, k in enumerate(found) if backbone in found[k]]
        ds = [found[k][backbone] for k in found if backbone in found[k]]
        if ds:
            ax.bar(xs, [d["mean"] for d in ds], width, yerr=[d["std"] for d in ds], capsize=1.5, label=backbone,
                   error_kw={"linewidth": 0.6})
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(found))], list(found), rotation=20, ha="right", fontsize=8)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_yscale("symlog", linthresh=0.002)  # linear within ±0.002, logarithmic beyond: small and large gains both show
    ax.set_ylabel("paired Δ test WAUC, best MLoRA − plain (symlog)")
    ax.legend(ncol=5, fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True
