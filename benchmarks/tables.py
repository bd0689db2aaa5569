"""The page's Markdown tables, from the run records (`benchmarks/stats.py` groups and pairs them)."""

from __future__ import annotations

import statistics
from typing import Optional

from .records import DEFAULT_DIVISOR, ORACLE, POPULARITY, Variant
from .stats import (BACKBONES, BASELINES, Variants, backbone_effects, best_baseline, best_mlora, fmt_diff, mean_of,
                    mean_std, paired, sort_key)

REPRODUCED_TOLERANCE = 1e-6
"""A rerun within this of the recorded test WAUC reproduces it."""

HEADLINE_HEADER = ["| data | backbone | popularity | best baseline | backbone | backbone + best MLoRA | "
                   "Δ MLoRA (wins) | headroom (wins) |", "|---|---|---|---|---|---|---|---|"]
"""Columns of the headline tables: test WAUC means over seeds; Δ and headroom paired by seed."""


def headline_rows(label: str, variants: Variants, ceiling: Optional[Variant] = None) -> list[str]:
    """One row per backbone of a data set: popularity, best baseline, backbone, its best MLoRA, Δ, headroom.

    The best MLoRA config and the best baseline are chosen on validation mean AUC; the headroom is the
    backbone fine-tuned on each domain alone (`x+finetune`) minus the backbone. `ceiling` (the oracle)
    takes the baseline's column.
    """
    baseline = ceiling if ceiling in variants else None if ceiling else best_baseline(variants)
    rows = []
    for effect in backbone_effects(variants):
        best = effect.best
        cells = [label, effect.backbone, _mean(variants, Variant(POPULARITY)),
                 "—" if baseline is None else _mean(variants, baseline) + ("" if ceiling else f" ({baseline.name})"),
                 _mean(variants, Variant(effect.backbone)),
                 "—" if best is None else f"{_mean(variants, best)} ({best.config.lstrip('+')})",
                 fmt_diff(effect.gain, missing="—"), fmt_diff(effect.headroom, missing="—")]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


SYNTHETIC_HEADER = [HEADLINE_HEADER[0].replace("best baseline", "oracle"), HEADLINE_HEADER[1]]
"""`HEADLINE_HEADER` with the oracle (the generator's own click probability) for the best baseline."""


def synthetic_rows(label: str, variants: Variants) -> list[str]:
    """`headline_rows` under `SYNTHETIC_HEADER`: the oracle's test WAUC in the baseline's column."""
    return headline_rows(label, variants, ceiling=Variant(ORACLE))


def _mean(variants: Variants, variant: Variant) -> str:
    value = mean_of(variants, variant)
    return "—" if value is None else f"{value:.4f}"


def composition_rows(label: str, variants: Variants, mixed: Variants) -> list[str]:
    """Each model trained with another batch composition minus the same model on mixed batches, paired."""
    return [f"| {label} | {v.name} | {fmt_diff(paired(variants[v], mixed[v]))} |"
            for v in sorted(variants, key=sort_key) if v in mixed]


def divisor_rows(label: str, variants: Variants) -> list[str]:
    """Joint MLoRA at each other rank divisor minus joint MLoRA at the benchmark's divisor, paired."""
    return [f"| {label} | {v.name} − {Variant(v.model, v.mode).name} | "
            f"{fmt_diff(paired(variants[v], variants[Variant(v.model, v.mode)]))} |"
            for v in sorted(variants, key=sort_key) if v.is_mlora and not v.option
            and v.rank_divisor != DEFAULT_DIVISOR and Variant(v.model, v.mode) in variants]


def reproduced_lines(records: list[dict]) -> list[str]:
    """Recorded runs trained again from scratch (`benchmark.py --reproduce`): how far their test metrics moved."""
    if not records:
        return ["Not checked yet: `python -m benchmarks.benchmark --reproduce N --data ...` trains N recorded runs "
                "again from scratch and compares."]
    moved = [abs(r["rerun"]["wauc"] - r["cached"]["wauc"]) for r in records]
    same = sum(m <= REPRODUCED_TOLERANCE for m in moved)
    lines = [f"{same} of {len(records)} recorded runs trained again from scratch reproduce their test WAUC within "
             f"{REPRODUCED_TOLERANCE:g} (largest difference {max(moved):.2g}).", "",
             "| data | model | seed | recorded test WAUC | again | epochs (recorded, again) | commit, date |",
             "|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['data']} | {Variant.from_json(r['variant']).name} | {r['seed']} | {r['cached']['wauc']:.6f} "
                     f"| {r['rerun']['wauc']:.6f} | {r['cached']['epochs']}, {r['rerun']['epochs']} | "
                     f"{r['commit'] or 'unknown'}, {r['date']} |")
    return lines


def results_table(variants: Variants) -> list[str]:
    """Every variant's test WAUC and mean AUC, and its paired difference with its reference."""
    lines = ["| model | seeds | test WAUC | test mean AUC | paired Δ WAUC (wins) | paired Δ mean AUC | epochs | s/epoch |",
             "|---|---|---|---|---|---|---|---|"]
    for variant in sorted(variants, key=sort_key):
        runs = variants[variant]
        wauc = mean_std([r.test["wauc"] for r in runs.values()])
        mauc = mean_std([r.test["mean_auc"] for r in runs.values()])
        reference = variants.get(variant.reference, {})
        diff = None if variant.is_reference else paired(runs, reference)
        diff_m = None if variant.is_reference else paired(runs, reference, "mean_auc")
        label = variant.name if variant.is_reference else f"{variant.name} (vs {variant.reference.name})"
        epochs = statistics.fmean(r.epochs for r in runs.values())
        per_epoch = statistics.fmean(r.seconds_per_epoch for r in runs.values())
        lines.append(f"| {label} | {len(runs)} | {wauc[0]:.4f} ± {wauc[1]:.4f} | {mauc[0]:.4f} ± {mauc[1]:.4f} | "
                     f"{'—' if variant.is_reference else fmt_diff(diff)} | "
                     f"{'—' if variant.is_reference else fmt_diff(diff_m)} | {epochs:.1f} | {per_epoch:.1f} |")
    return lines


def per_domain_table(variants: Variants) -> list[str]:
    """Plain MLP AUC per domain, then each backbone's best MLoRA and each baseline as paired Δ AUC."""
    mlp = variants.get(Variant("mlp"))
    first = next(iter((mlp or next(iter(variants.values()))).values()))
    columns = []  # (header, runs, reference runs)
    for backbone in BACKBONES:
        best = best_mlora(variants, backbone)
        if best is not None and Variant(backbone) in variants:
            columns.append((f"{best.name} − {backbone}", variants[best], variants[Variant(backbone)]))
        if Variant(backbone, "finetune") in variants and Variant(backbone) in variants:
            columns.append((f"{backbone}+finetune − {backbone}", variants[Variant(backbone, "finetune")],
                            variants[Variant(backbone)]))
    for baseline in BASELINES:
        if Variant(baseline) in variants and mlp:
            columns.append((f"{baseline} − mlp", variants[Variant(baseline)], mlp))
    header = "| domain | test rows | " + ("mlp AUC | " if mlp else "") + " | ".join(c[0] for c in columns) + " |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for domain in first.domains:
        cells = [domain, f"{first.test['per_domain'][domain]['rows']:,}"]
        if mlp:
            cells.append(f"{statistics.fmean(r.auc(domain) for r in mlp.values()):.4f}")
        for _, runs, reference in columns:
            diffs = [runs[s].auc(domain) - reference[s].auc(domain) for s in sorted(set(runs) & set(reference))]
            mean, std = mean_std(diffs)
            cells.append(f"{mean:+.4f} ± {std:.4f} ({sum(d > 0 for d in diffs)}/{len(diffs)})")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def options_table(variants: Variants) -> list[str]:
    """Each named option's paired effect on the plain and the MLoRA backbone, and MLoRA's edge with it."""
    options = sorted({v.option for v in variants} - {""})
    lines = ["| backbone | option | plain[opt] − plain | mlora[opt] − mlora (same mode) | mlora[opt] − plain[opt] | "
             "validation mean AUC plain[opt] / mlora[opt] |", "|---|---|---|---|---|---|"]
    for backbone in BACKBONES:
        for option in options:
            mlora = next((v for v in variants if v.model == backbone and v.option == option and v.is_mlora), None)
            own_plain = Variant(backbone, option=option)
            plain = variants.get(own_plain, variants.get(Variant(backbone)))  # mlora.* options: the plain model
            if plain is None or mlora is None:
                continue
            valid = [statistics.fmean(r.validation["mean_auc"] for r in v.values()) for v in (plain, variants[mlora])]
            same_mode = Variant(backbone, mlora.mode, mlora.rank_divisor)
            plain_effect = (fmt_diff(paired(plain, variants.get(Variant(backbone), {}))) if own_plain in variants
                            else "— (MLoRA only)")
            lines.append(f"| {backbone} | {option} | {plain_effect} | "
                         f"{fmt_diff(paired(variants[mlora], variants.get(same_mode, {})))} | "
                         f"{fmt_diff(paired(variants[mlora], plain))} | {valid[0]:.4f} / {valid[1]:.4f} |")
    if len(lines) == 2:
        return []
    meaning = {r.variant.option: r.option_overrides for runs in variants.values() for r in runs.values()
               if r.variant.option}
    return [*(f"- `{o}`: " + ", ".join(f"`{x}`" for x in meaning[o]) for o in options), "", *lines]
