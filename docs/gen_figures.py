"""Draw docs/images/architecture.png: the MLoRA layer and the per-sample routing of a mixed batch.

    python docs/gen_figures.py               # rewrite the figure
    python docs/gen_figures.py --out x.png   # write it elsewhere (used by the tests)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

OUT = Path(__file__).with_name("images") / "architecture.png"
DOMAINS = [("books", "tab:blue"), ("movies", "tab:orange"), ("music", "tab:green")]
BATCH = [0, 2, 1, 1, 0, 2]  # the domain of each row of a mixed batch


def _box(ax, x: float, y: float, w: float, h: float, text: str, color: str, size: int = 10) -> None:
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02", facecolor=color, edgecolor="black",
                                linewidth=0.8, alpha=0.9))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size)


def _arrow(ax, start: tuple, end: tuple, color: str = "black", width: float = 1.0) -> None:
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=10, color=color, linewidth=width))


def draw(path: Path) -> Path:
    """Draw the figure into `path` (PNG) and return it."""
    fig, ax = plt.subplots(figsize=(11, 5.2))
    ax.set_xlim(0, 11)
    ax.set_ylim(0, 5.6)
    ax.axis("off")

    # a mixed batch: one row per sample, coloured by its domain
    ax.text(0.9, 5.25, "mixed batch x\n(rows from 3 domains)", ha="center", va="center", fontsize=10)
    row_y = [4.3 - 0.55 * i for i in range(len(BATCH))]
    for y, d in zip(row_y, BATCH):
        _box(ax, 0.3, y, 1.2, 0.38, f"x  ({DOMAINS[d][0]})", DOMAINS[d][1], size=8)

    # the shared layer
    _box(ax, 3.2, 4.2, 2.2, 0.8, "shared  W x + b\n(every row)", "lightgrey")
    for y in row_y:
        _arrow(ax, (1.55, y + 0.19), (3.15, 4.6), color="grey", width=0.5)

    # per-domain adapters: each row reaches only its own domain's A_d, B_d, b_d
    adapter_y = [2.7, 1.6, 0.5]
    for (name, color), y in zip(DOMAINS, adapter_y):
        _box(ax, 3.2, y, 2.2, 0.8, f"{name}:  B_d A_d x + b_d\nA_d (r x in), B_d (out x r)", color, size=9)
    for y, d in zip(row_y, BATCH):
        _arrow(ax, (1.55, y + 0.19), (3.15, adapter_y[d] + 0.4), color=DOMAINS[d][1], width=1.2)

    # the sum
    _box(ax, 6.4, 2.2, 1.9, 1.0, "h = W x + b\n+ B_d A_d x + b_d", "white", size=11)
    _arrow(ax, (5.45, 4.6), (6.9, 3.25))
    for y in adapter_y:
        _arrow(ax, (5.45, y + 0.4), (6.35, 2.7))
    _arrow(ax, (8.35, 2.7), (9.0, 2.7))
    ax.text(9.05, 2.7, "next layer\n(same routing)", ha="left", va="center", fontsize=10)

    ax.text(5.5, 0.05, "Rows are grouped by domain once per batch (domain_ids=, batch['domain_id'] or "
            "domain_context); every adapted layer reuses the grouping.\nB_d and b_d start at zero, so a fresh "
            "adapter leaves the model's output unchanged.", ha="center", va="bottom", fontsize=8.5)
    ax.set_title("MLoRA: one shared linear layer, one low-rank adapter and bias per domain, routed per sample",
                 fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT, help="Where to write the PNG.")
    print(draw(parser.parse_args().out))
