"""The page's Markdown tables and generated sentences, from the cached records (`benchmarks/stats.py`)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Optional

from mlora_peft import models
from mlora_peft.tuner.config import DEFAULT_RANK_DIVISOR

from .goals import GOAL_STEP_BATCH
from .records import Variant
from .stats import (BACKBONES, BASELINES, Variants, best_mlora, fmt_diff, mean_std, page_order, paired,
                    sort_key, spec_of, synthetic_setting)

REPRODUCED_TOLERANCE = 1e-6
"""A rerun within this of the cached test WAUC reproduces it."""


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
            mlora = next((v for v in variants if v.model == backbone and v.option == option and not v.is_plain), None)
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


def parameter_section(cache: Path, order: dict[str, tuple]) -> tuple[list[str], Optional[dict]]:
    """The parameter table of the first data set (Amazon-6 when run), and adapter shares per backbone."""
    files = sorted(cache.glob("*/parameters.json"), key=lambda p: order.get(p.parent.name, (9, p.parent.name)))
    if not files:
        return ["Not measured (no run in the cache)."], None
    rows = json.loads(files[0].read_text())["rows"]
    key = files[0].parent.name
    divisors = list(next(r for r in rows if r["model"] == "mlp")["adapter_per_domain"])
    lines = [f"Counted on `{key}` features (its sparse and dense columns and the domain id; embedding dim 8, "
             f"D = {rows[0]['num_domains']}). MLoRA's rank for a layer of width w is max(w // divisor, 1); "
             f"the library's default divisor is {DEFAULT_RANK_DIVISOR}. Shares are adapter parameters of one domain "
             "over the backbone's parameters outside the embedding tables.", "",
             f"| model | all parameters | without embeddings | adapters per domain (divisor {DEFAULT_RANK_DIVISOR}) | "
             + " | ".join(f"share, divisor {d}" for d in divisors) + " |",
             "|---|---|---|---|" + "---|" * len(divisors)]
    shares = {}
    for row in rows:
        per_domain = row["adapter_per_domain"]
        baseline = per_domain[divisors[0]] is None
        if not baseline:
            shares[row["model"]] = per_domain[str(DEFAULT_RANK_DIVISOR)] / row["without_embeddings"]
        cells = ["—" if baseline else f"{per_domain[d] / row['without_embeddings']:.1%}" for d in divisors]
        lines.append(f"| {row['model']} | {row['total']:,} | {row['without_embeddings']:,} | "
                     f"{'— (baseline)' if baseline else format(per_domain[str(DEFAULT_RANK_DIVISOR)], ',')} | "
                     + " | ".join(cells) + " |")
    return lines, shares


def speed_section(speed_dir: Path) -> tuple[list[str], dict]:
    """Speed tables; returns them and the step ratios measured at `GOAL_STEP_BATCH` rows, per device."""
    lines: list[str] = []
    routing = _read(speed_dir / "routing.json")
    if routing:
        lines += ["### Routed layer (`benchmarks/bench_routing.py`)", "", routing["note"], "",
                  "| batch | weights | plain ms | routed | loop | every |", "|---|---|---|---|---|---|"]
        for row in routing["rows"]:
            cells = [("skipped" if row[a] is None else f"{row[a]:.2f}x") for a in ("routed", "loop", "every")]
            lines.append(f"| {row['batch']} | {row['weights']} | {row['plain_ms']:.2f} | " + " | ".join(cells) + " |")
        lines.append("")
    steps = {}
    for path in sorted(speed_dir.glob("steps*.json")):
        found = _read(path)
        batch = found.get("batch", GOAL_STEP_BATCH)
        if batch == GOAL_STEP_BATCH:
            steps[found.get("device", "cpu")] = found
        counts = found["domain_counts"]
        lines += [f"### One full training step, MLoRA / plain, {found.get('device', 'cpu')}, batch {batch:,} "
                  "(`benchmarks/bench_speed.py`)", "", found["note"], "",
                  "| backbone | plain ms | " + " | ".join(f"D={d}" for d in counts) + " |",
                  "|---|---|" + "---|" * len(counts)]
        for name, row in found["rows"].items():
            lines.append(f"| {name} | {row['plain_ms']:.1f} | " + " | ".join(f"{row['ratio'][str(d)]:.2f}x"
                                                                             for d in counts) + " |")
        lines.append("")
    data = _read(speed_dir / "data.json")
    if data:
        lines += ["### Data path (`benchmarks/bench_data.py`)", "", data["note"], "", "| path | rows/s |", "|---|---|"]
        lines += [f"| {path} | {speed:,.0f} |" for path, speed in data["rows_per_second"].items()]
        lines.append("")
    for path in sorted(speed_dir.glob("scale*.json")):
        scale = _read(path)
        gpu = scale.get("peak_gpu_mib")
        lines += [f"### Scale run (streamed synthetic data), {scale.get('device', 'cpu')}", "", scale["note"], "",
                  "| domains | rows | batch | seconds | rows/s | train loss (last 50 steps) | peak RSS | peak GPU memory |",
                  "|---|---|---|---|---|---|---|---|",
                  f"| {scale['num_domains']:,} | {scale['rows']:,} | {scale['batch_size']:,} | {scale['seconds']:.0f} | "
                  f"{scale['rows_per_second']:,.0f} | {scale['final_loss']:.4f} | {scale['peak_rss_mib']:,.0f} MiB | "
                  f"{'—' if gpu is None else f'{gpu:,.0f} MiB'} |", ""]
    if not lines:
        lines = ["Not measured (no speed results in the cache).", ""]
    return lines, steps


def _read(path: Path) -> Optional[dict]:
    return json.loads(path.read_text()) if path.exists() else None


def reproducibility_section(cache: Path) -> list[str]:
    """Cached runs trained again from scratch (`benchmark.py --reproduce`): how far their test metrics moved."""
    records = _read(cache / "reproduced.json")
    if not records:
        return ["Not checked yet: `python -m benchmarks.benchmark --reproduce N --data ...` trains N cached runs "
                "again from scratch and compares.", ""]
    moved = [abs(r["rerun"]["wauc"] - r["cached"]["wauc"]) for r in records]
    same = sum(m <= REPRODUCED_TOLERANCE for m in moved)
    lines = [f"{len(records)} cached runs, a seeded sample (`python -m benchmarks.benchmark --reproduce N`), were trained "
             f"again from scratch with the code of the commit shown: {same} of {len(records)} reproduce the cached "
             f"test WAUC within {REPRODUCED_TOLERANCE:g}; the largest difference is {max(moved):.2g}."
             + ("" if same == len(records) else " A run that differs was not reproduced bit for bit: the code changed "
                "since, or it was trained on another machine (the commands above say where)."), "",
             "| data | model | seed | cached test WAUC | again | difference | epochs (cached, again) | commit, date |",
             "|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['data']} | {Variant.from_json(r['variant']).name} | {r['seed']} | {r['cached']['wauc']:.6f} | "
                     f"{r['rerun']['wauc']:.6f} | {r['rerun']['wauc'] - r['cached']['wauc']:+.6f} | "
                     f"{r['cached']['epochs']}, {r['rerun']['epochs']} | {r['commit'] or 'unknown'}, {r['date']} |")
    return lines + [""]


def synthetic_sweep(summaries: dict[str, Variants], oracles: dict) -> list[str]:
    """Joint MLoRA minus plain, averaged over backbones, per (rows, D, domain effect, composition).

    Beside it, the plain backbones' mean test WAUC and the generator's own (oracle) WAUC, and the
    share of the gap between them that MLoRA closes.
    """
    cells = {}
    for key, variants in summaries.items():
        if spec_of(variants).source != "synthetic":
            continue
        backbones = [b for b in BACKBONES if Variant(b, "joint") in variants and Variant(b) in variants]
        if backbones:
            setting = synthetic_setting(variants)
            diffs = [paired(variants[Variant(b, "joint")], variants[Variant(b)]) for b in backbones]
            at_64 = [paired(variants[Variant(b, "joint", 64)], variants[Variant(b)]) for b in backbones
                     if Variant(b, "joint", 64) in variants]
            plain = statistics.fmean(statistics.fmean(r.test["wauc"] for r in variants[Variant(b)].values())
                                     for b in backbones)
            oracle = [o["wauc"] for o in oracles.get(key, {}).values()]
            cells[(setting["rows"], setting["count"], setting["effect"], setting["composition"])] = \
                (diffs, at_64, plain, statistics.fmean(oracle) if oracle else None)
    if not cells:
        return []
    lines = ["| rows | D | domain effect | batches | backbones | mean paired Δ WAUC over backbones "
             "| backbones winning every seed | backbones losing every seed | plain WAUC | oracle WAUC "
             "| share of the gap closed | mean Δ at divisor 64 (backbones, winning every seed) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (rows, count, effect, composition), (diffs, at_64, plain, oracle) in sorted(cells.items()):
        gain = statistics.fmean(d["mean"] for d in diffs)
        closed = "—" if oracle is None else f"{gain / (oracle - plain):+.1%}"
        divisor_64 = "—" if not at_64 else (f"{statistics.fmean(d['mean'] for d in at_64):+.4f} ({len(at_64)}, "
                                            f"{sum(d['wins'] == d['n'] for d in at_64)})")
        lines.append(f"| {rows:,} | {count} | {effect:g} | {composition} | {len(diffs)} | {gain:+.4f} | "
                     f"{sum(d['wins'] == d['n'] for d in diffs)} | {sum(d['wins'] == 0 for d in diffs)} | "
                     f"{plain:.4f} | {'—' if oracle is None else f'{oracle:.4f}'} | {closed} | {divisor_64} |")
    return lines


def oracle_line(key: str, oracles: dict) -> list[str]:
    """A data set's ceiling: the test WAUC of the generator's own click probability (synthetic data only)."""
    found = oracles.get(key)
    if not found:
        return []
    wauc = mean_std([o["wauc"] for o in found.values()])
    return [f"The generator's own click probability (the oracle, `synthetic_click_probability`) scores test WAUC "
            f"{wauc[0]:.4f} ± {wauc[1]:.4f} on seeds {sorted(int(s) for s in found)}: no model can do better "
            "in expectation.", ""]


def domain_size_story(variants: Variants) -> Optional[str]:
    """Which domains the MLP's best MLoRA config helps, smallest and largest first (a generated sentence)."""
    best, mlp = best_mlora(variants, "mlp"), variants.get(Variant("mlp"))
    if best is None or mlp is None:
        return None
    seeds = sorted(set(variants[best]) & set(mlp))
    first = mlp[seeds[0]]
    rows = {d: first.test["per_domain"][d]["rows"] for d in first.domains}
    gains = {d: [variants[best][s].auc(d) - mlp[s].auc(d) for s in seeds] for d in rows}
    order = sorted(rows, key=rows.get)
    up = [d for d in order if all(g > 0 for g in gains[d])]
    down = [d for d in order if all(g < 0 for g in gains[d])]
    small, large = order[: max(len(order) // 3, 1)], order[-max(len(order) // 3, 1):]
    mean = lambda ds: statistics.fmean(statistics.fmean(gains[d]) for d in ds)  # noqa: E731
    return (f"  Per domain ({best.name} − mlp, {len(seeds)} seeds): higher AUC in every seed for "
            f"{', '.join(up) or 'no domain'}; lower in every seed for {', '.join(down) or 'no domain'}. "
            f"Mean Δ AUC over the smallest third of the domains by test rows {mean(small):+.4f}, over the largest "
            f"third {mean(large):+.4f}.")


def when_it_helps(summaries: dict[str, Variants]) -> list[str]:
    """Sentences generated from the paired numbers; cautious by construction."""
    lines = []
    for key in sorted(summaries, key=lambda k: page_order(summaries[k])):
        variants = summaries[key]
        found = []
        for backbone in BACKBONES:
            best = best_mlora(variants, backbone)
            if best and Variant(backbone) in variants:
                found.append((backbone, best, paired(variants[best], variants[Variant(backbone)])))
        if not found:
            continue
        clear = [b for b, _, d in found if d["wins"] == d["n"] and d["mean"] > 0]
        hurt = [b for b, _, d in found if d["wins"] == 0 and d["mean"] < 0]
        mean_gain = statistics.fmean(d["mean"] for _, _, d in found)
        n = max(d["n"] for _, _, d in found)
        verdict = ("helps consistently" if len(clear) == len(found) and mean_gain >= 0.001 else
                   "wins every seed, by less than 0.001 WAUC" if len(clear) == len(found) else
                   "hurts consistently" if len(hurt) == len(found) else "is mixed")
        lines.append(f"- **{key}** ({n} seed{'s' if n > 1 else ''}): MLoRA {verdict} — average paired Δ WAUC of the "
                     f"best config over {len(found)} backbone(s) {mean_gain:+.4f}; wins every seed for "
                     f"{', '.join(clear) or 'none'}; loses every seed for {', '.join(hurt) or 'none'}.")
        joint_two = [(b, paired(variants[Variant(b, "two_stage")], variants[Variant(b)])) for b in BACKBONES
                     if Variant(b, "two_stage") in variants and Variant(b) in variants]
        if joint_two:
            lines.append("  Two-stage (shared backbone, then adapters): " +
                         "; ".join(f"{b} {fmt_diff(d)}" for b, d in joint_two) + ".")
        story = domain_size_story(variants)
        if story:
            lines.append(story)
    if lines:
        lines += ["", "Read these with care: with 3–5 seeds, a paired mean smaller than about twice its std (shown "
                      "beside it in the tables) is not distinguishable from zero, and wins out of seeds is the more "
                      "robust signal. \"Helps consistently\" needs every backbone to win in every seed. Nothing was "
                      "tuned on the test split (the MLoRA config is picked by validation mean AUC)."]
    return lines


def scope(summaries: dict[str, Variants]) -> list[str]:
    """What ran: per data set, its options, runs, models, modes and seeds; then what never ran."""
    lines = []
    for key in sorted(summaries, key=lambda k: page_order(summaries[k])):
        variants = summaries[key]
        seeds = sorted({s for runs in variants.values() for s in runs})
        overrides = sorted({o for runs in variants.values() for r in runs.values() for o in r.overrides})
        described = ", ".join(f"{k}={v}" for k, v in spec_of(variants).options.items())
        runs = [r for v in variants.values() for r in v.values()]
        used = [m for m in models.list_models() if any(r.variant.model == m for r in runs)]
        modes = [m for m in ("none", "joint", "two_stage") if any(r.variant.mode == m for r in runs)]
        lines.append(f"- `{key}`" + (f" ({described})" if described else "") + f": {len(runs)} runs; models "
                     f"{', '.join(used)}; MLoRA modes {', '.join(modes)}; seeds {seeds}"
                     + (f"; overrides {', '.join(overrides)}" if overrides else "") + ".")
    families = {spec_of(v).family for v in summaries.values()}
    missing = [title for family, title in (("amazon6", "Amazon-6"), ("ml100k", "ML-100K"),
                                           ("synthetic", "synthetic data")) if family not in families]
    models_run = {v.model for variants in summaries.values() for v in variants}
    not_run = [m for m in models.list_models() if m not in models_run]
    if missing:
        lines.append(f"- Not run at all: {', '.join(missing)}.")
    if not_run:
        lines.append(f"- Models never run: {', '.join(not_run)}.")
    amazon = [v for v in summaries.values() if spec_of(v).family == "amazon6" and spec_of(v).composition == "mixed"]
    if amazon:
        skipped = [m for m in models.list_models() if m not in {v.model for v in amazon[0]}]
        if skipped:
            lines.append(f"- Not run on Amazon-6 in this budget: {', '.join(skipped)}.")
    return lines or ["- Nothing has run yet."]
