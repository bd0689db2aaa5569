"""Write docs/benchmarks.md and its plots from the benchmark cache (`benchmarks/benchmark.py` calls this).

    python -m benchmarks.benchmark --report-only      # the same, from the command line

Everything on the page is computed here from the cached `summary.json` files, `parameters.json`
per data set, `commands.jsonl` and the speed results in `<cache>/speed/`; the page is never
edited by hand. Differences are paired: model minus its plain backbone (baselines: minus the
plain MLP), seed by seed, over the seeds both have.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from mlora_peft import models  # noqa: E402
from mlora_peft.config import DEFAULT_RANK_DIVISOR  # noqa: E402

BACKBONES = models.list_models("backbones")
BASELINES = models.list_models("baselines")
MIN_GAIN_AMAZON, MAX_COST_NO_EFFECT, MAX_ADAPTER_SHARE, MAX_STEP_RATIO = 0.005, 0.001, 0.10, 1.15
GOAL_STEP_BATCH = 1024  # the batch size at which the step-ratio goal is judged (the paper's)
REPRODUCED_TOLERANCE = 1e-6  # a rerun within this of the cached test WAUC reproduces it


# ---------------------------------------------------------------------------------- reading the cache
def load_summaries(cache: Path) -> dict[str, dict[str, dict[int, dict]]]:
    """data key -> variant name -> seed -> summary."""
    found: dict[str, dict[str, dict[int, dict]]] = defaultdict(lambda: defaultdict(dict))
    for path in sorted(cache.glob("*/*/seed*/summary.json")):
        summary = json.loads(path.read_text())
        found[summary["data"]][summary["variant"]][summary["seed"]] = summary
    return found


def _order(key: str) -> tuple:
    family = 0 if key.startswith("amazon") else 1 if key.startswith("ml100k") else 2
    return family, "@" in key, key


# ---------------------------------------------------------------------------------- statistics
def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def paired(runs: dict[int, dict], reference: dict[int, dict], metric: str = "wauc") -> Optional[dict]:
    """Seed-by-seed differences of a test metric: mean, std, wins, n (None without common seeds)."""
    seeds = sorted(set(runs) & set(reference))
    if not seeds:
        return None
    diffs = [runs[s]["test"][metric] - reference[s]["test"][metric] for s in seeds]
    mean, std = mean_std(diffs)
    return {"mean": mean, "std": std, "wins": sum(d > 0 for d in diffs), "n": len(diffs), "diffs": diffs}


def reference_of(variant: dict[int, dict]) -> str:
    """The plain model a variant is compared with: its backbone, or the plain MLP for a baseline."""
    first = next(iter(variant.values()))
    return "mlp" if first["model"] in BASELINES else first["model"]


def is_reference(variant: dict[int, dict]) -> bool:
    """True for a plain backbone with the paper's settings (what the other variants are compared with)."""
    first = next(iter(variant.values()))
    return first["mode"] == "none" and not first.get("option") and first["model"] == reference_of(variant)


def best_mlora(variants: dict[str, dict[int, dict]], backbone: str) -> Optional[str]:
    """The MLoRA variant of `backbone` with the best mean validation mean AUC (test never looked at), over
    the seeds every candidate ran."""
    return _best_on_validation(variants, backbone, lambda mode: mode != "none")


def best_plain(variants: dict[str, dict[int, dict]], backbone: str) -> Optional[str]:
    """The plain `backbone` variant (paper settings or an option) with the best mean validation mean AUC."""
    return _best_on_validation(variants, backbone, lambda mode: mode == "none")


def best_joint(variants: dict[str, dict[int, dict]], backbone: str) -> Optional[str]:
    """The joint MLoRA variant of `backbone` with the best mean validation mean AUC among those that leave the
    backbone as the paper has it: any rank divisor, and options of MLoRA's own settings (`mlora.*`) only. The
    synthetic goals' model; an option that also changes the plain model (dropout, input_bn) is not a candidate."""
    return _best_on_validation(variants, backbone, lambda mode: mode == "joint", backbone_as_paper=True)


def _best_on_validation(variants: dict[str, dict[int, dict]], backbone: str, mode_ok,
                        backbone_as_paper: bool = False) -> Optional[str]:
    def allowed(run: dict) -> bool:
        return not backbone_as_paper or all(o.startswith("mlora.") for o in run.get("option_overrides", ()))

    candidates = [name for name, runs in variants.items()
                  if (first := next(iter(runs.values())))["model"] == backbone and mode_ok(first["mode"])
                  and allowed(first)]
    if not candidates:
        return None
    common = set.intersection(*(set(variants[n]) for n in candidates))  # seeds differ in data: compare like with like

    def validation(name: str) -> float:
        runs = variants[name]
        return statistics.fmean(runs[s]["validation"]["mean_auc"] for s in (common or runs))

    return max(candidates, key=validation)


def _fmt_diff(d: Optional[dict], digits: int = 4) -> str:
    if d is None:
        return "n/a"
    return f"{d['mean']:+.{digits}f} ± {d['std']:.{digits}f} ({d['wins']}/{d['n']})"


def _variant_sort(name: str) -> tuple:
    model = name.split("+")[0].split("[")[0]
    models_all = models.list_models()
    return (models_all.index(model) if model in models_all else 99, name)


# ---------------------------------------------------------------------------------- sections
def results_table(variants: dict[str, dict[int, dict]]) -> list[str]:
    lines = ["| model | seeds | test WAUC | test mean AUC | paired Δ WAUC (wins) | paired Δ mean AUC | epochs | s/epoch |",
             "|---|---|---|---|---|---|---|---|"]
    for name in sorted(variants, key=_variant_sort):
        runs = variants[name]
        wauc, mauc = mean_std([r["test"]["wauc"] for r in runs.values()]), \
            mean_std([r["test"]["mean_auc"] for r in runs.values()])
        ref, is_ref = reference_of(runs), is_reference(runs)
        diff = None if is_ref else paired(runs, variants.get(ref, {}))
        diff_m = None if is_ref else paired(runs, variants.get(ref, {}), "mean_auc")
        label = f"{name} (vs {ref})" if not is_ref else name
        epochs = statistics.fmean(r["epochs"] for r in runs.values())
        per_epoch = statistics.fmean(r["seconds_per_epoch"] for r in runs.values())
        lines.append(f"| {label} | {len(runs)} | {wauc[0]:.4f} ± {wauc[1]:.4f} | {mauc[0]:.4f} ± {mauc[1]:.4f} | "
                     f"{'—' if is_ref else _fmt_diff(diff)} | {'—' if is_ref else _fmt_diff(diff_m)} | "
                     f"{epochs:.1f} | {per_epoch:.1f} |")
    return lines


def per_domain_table(variants: dict[str, dict[int, dict]]) -> list[str]:
    """Plain MLP AUC per domain, then each backbone's best MLoRA and each baseline as paired Δ AUC."""
    anchor = variants.get("mlp") or next(iter(variants.values()))
    first = next(iter(anchor.values()))
    domains = first["domains"]
    columns = []  # (header, runs, reference runs)
    for backbone in BACKBONES:
        best = best_mlora(variants, backbone)
        if best is not None and backbone in variants:
            columns.append((f"{best} − {backbone}", variants[best], variants[backbone]))
    for baseline in BASELINES:
        if baseline in variants and "mlp" in variants:
            columns.append((f"{baseline} − mlp", variants[baseline], variants["mlp"]))
    header = "| domain | test rows | " + ("mlp AUC | " if "mlp" in variants else "") + \
        " | ".join(c[0] for c in columns) + " |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for domain in domains:
        rows = first["test"]["per_domain"][domain]["rows"]
        cells = [domain, f"{rows:,}"]
        if "mlp" in variants:
            cells.append(f"{statistics.fmean(_auc(r, domain) for r in variants['mlp'].values()):.4f}")
        for _, runs, ref in columns:
            seeds = sorted(set(runs) & set(ref))
            diffs = [_auc(runs[s], domain) - _auc(ref[s], domain) for s in seeds]
            mean, std = mean_std(diffs)
            cells.append(f"{mean:+.4f} ± {std:.4f} ({sum(d > 0 for d in diffs)}/{len(diffs)})")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def options_table(variants: dict[str, dict[int, dict]]) -> list[str]:
    """Each named option's paired effect on the plain and the MLoRA backbone, and MLoRA's edge with it."""
    options = sorted({r.get("option") for runs in variants.values() for r in runs.values()} - {"", None})
    lines = ["| backbone | option | plain[opt] − plain | mlora[opt] − mlora (same mode) | mlora[opt] − plain[opt] | "
             "validation mean AUC plain[opt] / mlora[opt] |", "|---|---|---|---|---|---|"]
    for backbone in BACKBONES:
        for option in options:
            kind = next((k for k in ("mlora", "two_stage") if f"{backbone}+{k}[{option}]" in variants), None)
            mlora = variants.get(f"{backbone}+{kind}[{option}]")
            plain = variants.get(f"{backbone}[{option}]", variants.get(backbone))  # mlora.* options: the plain model
            if plain is None or mlora is None:
                continue
            valid = [statistics.fmean(r["validation"]["mean_auc"] for r in v.values()) for v in (plain, mlora)]
            own_plain = f"{backbone}[{option}]" in variants
            plain_effect = _fmt_diff(paired(plain, variants.get(backbone, {}))) if own_plain else "— (MLoRA only)"
            lines.append(f"| {backbone} | {option} | {plain_effect} | "
                         f"{_fmt_diff(paired(mlora, variants.get(f'{backbone}+{kind}', {})))} | "
                         f"{_fmt_diff(paired(mlora, plain))} | {valid[0]:.4f} / {valid[1]:.4f} |")
    if len(lines) == 2:
        return []
    meaning = {r["option"]: r.get("option_overrides", []) for runs in variants.values() for r in runs.values()
               if r.get("option")}
    return [*(f"- `{o}`: " + ", ".join(f"`{x}`" for x in meaning[o]) for o in options), "", *lines]


def _auc(summary: dict, domain: str) -> float:
    value = summary["test"]["per_domain"][domain]["auc"]
    return float("nan") if value is None else value


def plot_data_set(key: str, variants: dict[str, dict[int, dict]], path: Path) -> None:
    """Left: paired Δ WAUC per model with ±1 std bars. Right: per-domain Δ AUC of each backbone's best MLoRA."""
    names = [n for n in sorted(variants, key=_variant_sort)
             if not (next(iter(variants[n].values()))["mode"] == "none"
                     and next(iter(variants[n].values()))["model"] == reference_of(variants[n]))]
    diffs = {n: paired(variants[n], variants.get(reference_of(variants[n]), {})) for n in names}
    names = [n for n in names if diffs[n] is not None]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, max(3.0, 0.35 * len(names) + 1.5)))
    ys = range(len(names))
    left.barh(list(ys), [diffs[n]["mean"] for n in names], xerr=[diffs[n]["std"] for n in names],
              color=["tab:blue" if "+" in n else "tab:gray" for n in names], capsize=3)
    left.set_yticks(list(ys), [f"{n} ({diffs[n]['wins']}/{diffs[n]['n']})" for n in names])
    left.axvline(0, color="black", linewidth=0.8)
    left.set_xlabel("paired Δ test WAUC vs plain backbone (baselines vs plain MLP)")
    left.invert_yaxis()
    first = next(iter(next(iter(variants.values())).values()))
    domains = first["domains"]
    bests = [(b, best_mlora(variants, b)) for b in BACKBONES if b in variants and best_mlora(variants, b)]
    width = 0.8 / max(len(bests), 1)
    for i, (backbone, best) in enumerate(bests):
        seeds = sorted(set(variants[best]) & set(variants[backbone]))
        gains = [statistics.fmean(_auc(variants[best][s], d) - _auc(variants[backbone][s], d) for s in seeds)
                 for d in domains]
        right.bar([j + i * width for j in range(len(domains))], gains, width, label=best)
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


def plot_summary(summaries: dict, path: Path) -> bool:
    """Paired Δ WAUC (±1 std) of each backbone's best MLoRA config, one group of bars per data set (mixed batches)."""
    keys = [k for k in sorted(summaries, key=_order) if "@" not in k]
    found = {k: {b: paired(summaries[k][best_mlora(summaries[k], b)], summaries[k][b]) for b in BACKBONES
                 if b in summaries[k] and best_mlora(summaries[k], b)} for k in keys}
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


def parameter_section(cache: Path) -> tuple[list[str], Optional[dict]]:
    """The parameter table of the first data set (Amazon-6 when run), and adapter shares per backbone."""
    files = sorted(cache.glob("*/parameters.json"), key=lambda p: _order(p.parent.name))
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
                     f"{'— (baseline)' if baseline else format(per_domain[str(DEFAULT_RANK_DIVISOR)], ',')} | " + " | ".join(cells) + " |")
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
        lines.append(f"| {r['data']} | {r['variant']} | {r['seed']} | {r['cached']['wauc']:.6f} | "
                     f"{r['rerun']['wauc']:.6f} | {r['rerun']['wauc'] - r['cached']['wauc']:+.6f} | "
                     f"{r['cached']['epochs']}, {r['rerun']['epochs']} | {r['commit'] or 'unknown'}, {r['date']} |")
    return lines + [""]


# ---------------------------------------------------------------------------------- goals and text
def goals(summaries: dict, shares: Optional[dict], steps: dict) -> list[str]:
    """The goals table, then, for each goal not met, by how much it is missed and which MLoRA configs were run."""
    found = [_amazon_goals(summaries)]
    # synthetic: judged per row count, since a domain needs enough rows for its adapters to learn
    for rows in sorted({synthetic_setting(v)["rows"] for k, v in summaries.items() if k.startswith("synthetic")},
                       reverse=True):
        found.append(_synthetic_goals(summaries, rows))
    found += [_parameter_goal(shares), _step_goal(steps)]
    ml = [k for k in summaries if k.startswith("ml100k") and "@" not in k]
    found.append(([f"| ML-100K: per domain split, does MLoRA win (explained per domain) | "
                   f"{'measured: see below' if ml else 'not measured'} | {', '.join(ml) or '—'} |"], []))
    out = ["| goal | status | evidence |", "|---|---|---|", *(row for rows, _ in found for row in rows)]
    missed = [line for _, lines in found for line in lines]
    if missed:
        out += ["", "Goals not met, by how much, and what was tried: each MLoRA config run on those data sets, with "
                "how many backbones ran it (the goal's own rule, in the table, says which of them it chooses from, "
                "on validation):", "", *missed]
    return out


def _amazon_goals(summaries: dict) -> tuple[list[str], list[str]]:
    """The two Amazon-6 goal rows (gain per backbone; beating the baselines), and a line for each one missed."""
    out, missed = [], []
    amazon = summaries.get("amazon6", {})
    measured, met, evidence, gains = 0, 0, [], {}
    for backbone in BACKBONES:
        best = best_mlora(amazon, backbone)
        if best is None or backbone not in amazon:
            continue
        d = paired(amazon[best], amazon[backbone])
        measured += 1
        met += d["mean"] >= MIN_GAIN_AMAZON and d["wins"] == d["n"]
        gains[best] = d["mean"]
        plain = best_plain(amazon, backbone)
        versus_best = "" if plain == backbone else f" (vs the best plain config {plain}: " \
            f"{_fmt_diff(paired(amazon[best], amazon[plain]))})"
        evidence.append(f"{best}: {_fmt_diff(d)}{versus_best}")
    if measured == 0:
        status = "not measured"
    elif met >= 7:
        status = "met"
    elif met + (len(BACKBONES) - measured) < 7:
        status = "not met"
    else:
        status = f"not measured ({measured} of 10 backbones run)"
    out.append(f"| Amazon-6: best MLoRA config ≥ +{MIN_GAIN_AMAZON} WAUC and wins every seed, ≥ 7 of 10 backbones | "
               f"{status} ({met}/{measured} measured backbones meet it) | {'; '.join(evidence) or '—'} |")
    if status == "not met":
        top = max(gains, key=gains.get)
        missed.append(f"- **Amazon-6 gain:** {met} of {measured} backbones meet it (7 needed). The largest mean gain "
                      f"is {top}'s, {gains[top]:+.4f}: {MIN_GAIN_AMAZON - gains[top]:.4f} short of "
                      f"+{MIN_GAIN_AMAZON}. Tried: " + _tried(summaries, ["amazon6", "amazon6@per_domain"]) + ".")
    best_mlp = best_mlora(amazon, "mlp")
    if not (best_mlp and any(b in amazon for b in BASELINES)):
        return out + ["| Amazon-6: best MLoRA beats every baseline | not measured | — |"], missed
    vs = {b: paired(amazon[best_mlp], amazon[b]) for b in BASELINES if b in amazon}
    unbeaten = {b: d for b, d in vs.items() if not (d["wins"] == d["n"] and d["mean"] > 0)}
    missing = [b for b in BASELINES if b not in amazon]
    status = "not met" if unbeaten else f"not measured ({', '.join(missing)} not run)" if missing else "met"
    out.append(f"| Amazon-6: best MLoRA beats every baseline | {status} | "
               + "; ".join(f"{best_mlp} − {b}: {_fmt_diff(d)}" for b, d in vs.items()) + " |")
    if unbeaten:
        missed.append(f"- **Amazon-6 baselines:** {best_mlp} does not beat every seed of " + "; ".join(
            (f"{b}: behind by {-d['mean']:.4f}" if d["mean"] <= 0 else f"{b}: ahead by {d['mean']:.4f}")
            + f", ahead in {d['wins']} of {d['n']} seeds" for b, d in unbeaten.items()) + ".")
    return out, missed


def _parameter_goal(shares: Optional[dict]) -> tuple[list[str], list[str]]:
    """The adapter-size goal row (per domain, at the default rank), and a line if it is missed."""
    if not shares:
        return ["| MLoRA adds < 10% of non-embedding parameters per domain | not measured | — |"], []
    over = {b: s for b, s in shares.items() if s >= MAX_ADAPTER_SHARE}
    row = (f"| MLoRA adds < {MAX_ADAPTER_SHARE:.0%} of the backbone's non-embedding parameters per domain "
           f"(default rank) | {'met' if not over else 'not met'} | largest share "
           f"{max(shares.values()):.1%} ({max(shares, key=shares.get)})"
           + (f"; over: {', '.join(f'{b} {s:.1%}' for b, s in over.items())}" if over else "") + " |")
    missed = [f"- **Parameters:** over {MAX_ADAPTER_SHARE:.0%} by "
              + ", ".join(f"{b} {s - MAX_ADAPTER_SHARE:.1%}" for b, s in over.items()) + "."] if over else []
    return [row], missed


def _step_goal(steps: dict) -> tuple[list[str], list[str]]:
    """The DeepFM step-ratio goal row (batch `GOAL_STEP_BATCH`, every device measured), and a line if it is missed."""
    measured = {device: found["rows"]["deepfm"]["ratio"] for device, found in steps.items() if "deepfm" in found["rows"]}
    if not measured:
        return [f"| A full MLoRA-DeepFM training step ≤ {MAX_STEP_RATIO}x the plain step | not measured | — |"], []
    worst = max(max(r.values()) for r in measured.values())
    row = (f"| A full MLoRA-DeepFM training step ≤ {MAX_STEP_RATIO}x the plain step (batch {GOAL_STEP_BATCH:,}) | "
           f"{'met' if worst <= MAX_STEP_RATIO else 'not met'} | "
           + "; ".join(f"{device}: " + ", ".join(f"D={d}: {r:.2f}x" for d, r in ratios.items())
                       for device, ratios in measured.items()) + " |")
    if worst <= MAX_STEP_RATIO:
        return [row], []
    return [row], ["- **DeepFM step:** " + "; ".join(
        f"{device}: best {min(r.values()):.2f}x, worst {max(r.values()):.2f}x ({max(r.values()) - MAX_STEP_RATIO:.2f}x "
        "over)" for device, r in measured.items()) + ". Tried: the routed layer against a loop over the domains and "
        "against every domain's term on every row (the routed-layer table under Speed)."]


def _tried(summaries: dict, keys: list[str]) -> str:
    """The MLoRA configs run on the data sets `keys` (`+mlora/64`, `+two_stage`, `+mlora[option]`, ...), each with
    how many backbones ran it, most run first; a data set of one domain per batch is named apart."""
    parts = []
    for composition in ("mixed", "per_domain"):
        backbones_of = defaultdict(set)
        for key in keys:
            if ("@per_domain" in key) != (composition == "per_domain"):
                continue
            for name, runs in summaries.get(key, {}).items():
                run = next(iter(runs.values()))
                if run["mode"] != "none" and run["model"] in BACKBONES:
                    backbones_of[name[len(run["model"]):]].add(run["model"])
        if backbones_of:
            configs = sorted(backbones_of.items(), key=lambda found: (-len(found[1]), found[0]))
            parts.append(("" if composition == "mixed" else "with one domain per batch, ")
                         + ", ".join(f"`{suffix}` ({len(found)})" for suffix, found in configs))
    return "; ".join(parts) or "nothing"


def synthetic_setting(variants: dict[str, dict[int, dict]]) -> dict:
    """D, domain effect, rows and batch composition of a synthetic data set, read from its runs."""
    run = next(iter(next(iter(variants.values())).values()))
    options = run["data_options"]
    return {"count": options["num_domains"], "effect": options["domain_effect"], "rows": options["rows"],
            "composition": run["composition"]}


def _synthetic_goals(summaries: dict, rows: int) -> tuple[list[str], list[str]]:
    """The two synthetic goal rows for the data sets of `rows` rows (mixed batches), and a line for each one missed."""
    out, missed = [], []
    settings = {k: synthetic_setting(v) for k, v in summaries.items() if k.startswith("synthetic") and "@" not in k}
    for with_effect in (True, False):
        keys = [k for k, s in settings.items() if s["rows"] == rows and (s["effect"] > 0) == with_effect]
        per_backbone = defaultdict(list)
        for key in keys:
            for backbone in BACKBONES:
                name = best_joint(summaries[key], backbone)
                if name is not None and backbone in summaries[key]:
                    per_backbone[backbone].append((key, name, paired(summaries[key][name], summaries[key][backbone])))
        at = f" ({rows:,} rows)"
        tried = f" Tried: {_tried(summaries, keys)}."
        if with_effect:
            ok = [b for b, ds in per_backbone.items() if all(d["wins"] == d["n"] for _, _, d in ds)]
            status = ("not measured" if not per_backbone else "met" if len(ok) >= 9 else
                      "not met" if len(ok) + (10 - len(per_backbone)) < 9 else
                      f"not measured ({len(per_backbone)} of 10 backbones run)")
            out.append(f"| Synthetic with a domain effect{at}: joint MLoRA (config chosen on validation) wins every "
                       f"seed, ≥ 9 of 10 backbones | {status} ({len(ok)}/{len(per_backbone)} backbones win every seed "
                       f"on {', '.join(keys) or '—'}) | "
                       + "; ".join(f"{b}: " + ", ".join(_named_diff(name, b, d) for _, name, d in ds)
                                   for b, ds in per_backbone.items()) + " |")
            if status == "not met":
                lost = {b: ", ".join(f"{key.removeprefix('synthetic-')} {d['n'] - d['wins']} of {d['n']}"
                                     for key, _, d in ds if d["wins"] < d["n"])
                        for b, ds in per_backbone.items() if b not in ok}
                missed.append(f"- **Synthetic with a domain effect{at}:** {len(ok)} of {len(per_backbone)} backbones "
                              "win every seed (9 needed). Seeds lost: "
                              + "; ".join(f"{b}: {where}" for b, where in lost.items()) + "." + tried)
        else:
            costs = {b: min(ds, key=lambda found: found[2]["mean"]) for b, ds in per_backbone.items()}
            bad = [b for b, (_, _, d) in costs.items() if d["mean"] < -MAX_COST_NO_EFFECT]
            status = ("not measured" if not costs else f"met ({', '.join(keys)})" if not bad
                      else f"not met ({', '.join(bad)})")
            out.append(f"| Synthetic without a domain effect{at}: joint MLoRA (config chosen on validation) costs "
                       f"≤ {MAX_COST_NO_EFFECT} WAUC | {status} | "
                       + "; ".join(f"{b}: worst mean Δ {d['mean']:+.4f}{_variant_note(name, b)}"
                                   for b, (_, name, d) in costs.items()) + " |")
            if bad:
                missed.append(f"- **Synthetic without a domain effect{at}:** over the {MAX_COST_NO_EFFECT} allowed by "
                              + ", ".join(f"{b} {-costs[b][2]['mean'] - MAX_COST_NO_EFFECT:.4f} (on "
                                          f"{costs[b][0].removeprefix('synthetic-')})" for b in bad) + "." + tried)
    return out, missed


def _variant_note(name: str, backbone: str) -> str:
    """` (x+mlora/64)`, ` (x+mlora[option])`: the chosen joint variant when it is not `x+mlora`, else nothing."""
    return "" if name == f"{backbone}+mlora" else f" ({name})"


def _named_diff(name: str, backbone: str, d: dict) -> str:
    return _fmt_diff(d) + _variant_note(name, backbone)


def synthetic_sweep(summaries: dict, oracles: dict) -> list[str]:
    """Joint MLoRA minus plain, averaged over backbones, per (rows, D, domain effect, composition).

    Beside it, the plain backbones' mean test WAUC and the generator's own (oracle) WAUC, and the
    share of the gap between them that MLoRA closes.
    """
    cells = {}
    for key, variants in summaries.items():
        if not key.startswith("synthetic"):
            continue
        backbones = [b for b in BACKBONES if f"{b}+mlora" in variants and b in variants]
        if backbones:
            setting = synthetic_setting(variants)
            diffs = [paired(variants[f"{b}+mlora"], variants[b]) for b in backbones]
            at_64 = [paired(variants[f"{b}+mlora/64"], variants[b]) for b in backbones if f"{b}+mlora/64" in variants]
            plain = statistics.fmean(statistics.fmean(r["test"]["wauc"] for r in variants[b].values())
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


def load_oracles(cache: Path) -> dict[str, dict[str, dict]]:
    """synthetic data key -> seed -> the oracle's test metrics (`benchmarks/benchmark.py` writes them)."""
    return {path.parent.name: json.loads(path.read_text()) for path in sorted(cache.glob("*/oracle.json"))}


def domain_size_story(key: str, variants: dict) -> Optional[str]:
    """Which domains the MLP's best MLoRA config helps, smallest and largest first (a generated sentence)."""
    best = best_mlora(variants, "mlp")
    if best is None or "mlp" not in variants:
        return None
    seeds = sorted(set(variants[best]) & set(variants["mlp"]))
    first = variants["mlp"][seeds[0]]
    rows = {d: first["test"]["per_domain"][d]["rows"] for d in first["domains"]}
    gains = {d: [_auc(variants[best][s], d) - _auc(variants["mlp"][s], d) for s in seeds] for d in rows}
    order = sorted(rows, key=rows.get)
    up = [d for d in order if all(g > 0 for g in gains[d])]
    down = [d for d in order if all(g < 0 for g in gains[d])]
    small, large = order[: max(len(order) // 3, 1)], order[-max(len(order) // 3, 1):]
    mean = lambda ds: statistics.fmean(statistics.fmean(gains[d]) for d in ds)  # noqa: E731
    return (f"  Per domain ({best} − mlp, {len(seeds)} seeds): higher AUC in every seed for "
            f"{', '.join(up) or 'no domain'}; lower in every seed for {', '.join(down) or 'no domain'}. "
            f"Mean Δ AUC over the smallest third of the domains by test rows {mean(small):+.4f}, over the largest "
            f"third {mean(large):+.4f}.")


def when_it_helps(summaries: dict) -> list[str]:
    """Sentences generated from the paired numbers; cautious by construction."""
    lines = []
    for key in sorted(summaries, key=_order):
        variants = summaries[key]
        found = []
        for backbone in BACKBONES:
            best = best_mlora(variants, backbone)
            if best and backbone in variants:
                found.append((backbone, best, paired(variants[best], variants[backbone])))
        if not found:
            continue
        clear = [b for b, _, d in found if d["wins"] == d["n"] and d["mean"] > 0]
        hurt = [b for b, _, d in found if d["wins"] == 0 and d["mean"] < 0]
        mean_gain = statistics.fmean(d["mean"] for _, _, d in found)
        n = max(d["n"] for _, _, d in found)
        verdict = ("helps consistently" if len(clear) == len(found) and mean_gain >= 0.001 else
                   "wins every seed, by less than 0.001 WAUC" if len(clear) == len(found) else
                   "hurts consistently" if len(hurt) == len(found) else "is mixed")
        lines.append(f"- **{key}** ({n} seed{'s' if n > 1 else ''}): MLoRA {verdict} — average paired Δ WAUC of the best config over "
                     f"{len(found)} backbone(s) {mean_gain:+.4f}; wins every seed for "
                     f"{', '.join(clear) or 'none'}; loses every seed for {', '.join(hurt) or 'none'}.")
        joint_two = [(b, paired(variants[f"{b}+two_stage"], variants[b])) for b in BACKBONES
                     if f"{b}+two_stage" in variants and b in variants]
        if joint_two:
            lines.append("  Two-stage (shared backbone, then adapters): " +
                         "; ".join(f"{b} {_fmt_diff(d)}" for b, d in joint_two) + ".")
        story = domain_size_story(key, variants)
        if story:
            lines.append(story)
    if lines:
        lines += ["", "Read these with care: with 3–5 seeds, a paired mean smaller than about twice its std (shown "
                      "beside it in the tables) is not distinguishable from zero, and wins out of seeds is the more "
                      "robust signal. \"Helps consistently\" needs every backbone to win in every seed. Nothing was "
                      "tuned on the test split (the MLoRA config is picked by validation mean AUC)."]
    return lines


# ---------------------------------------------------------------------------------- the page
def write_page(cache: Path, page: Path) -> Path:
    """Write `page` and its images (in `page.parent / "images"`) from the cache."""
    summaries, oracles = load_summaries(cache), load_oracles(cache)
    images = page.parent / "images"
    commands = [json.loads(line) for line in (cache / "commands.jsonl").read_text().splitlines()] \
        if (cache / "commands.jsonl").exists() else []
    param_lines, shares = parameter_section(cache)
    speed_lines, steps = speed_section(cache / "speed")
    total_seconds = sum(r["seconds"] for v in summaries.values() for runs in v.values() for r in runs.values())
    total_runs = sum(len(runs) for v in summaries.values() for runs in v.values())
    lines = [
        "# Benchmarks: when does MLoRA help?", "",
        "<!-- Generated by benchmarks/benchmark.py (benchmarks/benchmark_report.py) from its cache; do not edit by hand. -->",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()} "
        f"({_cpu_model()}), torch {torch.__version__}, {_cpus()} CPU cores visible"
        f"{', no GPU' if not torch.cuda.is_available() else ''}. Runs whose command names another machine ran there. "
        f"{total_runs} training runs in the cache, {total_seconds / 60:.0f} minutes of training summed over runs "
        "(runs went in parallel, on this machine and on a GPU machine where the commands say so).", "",
        "Commands that filled the cache:", "",
        *[f"- `{c['command']}` ({c['date']}, {c['threads']} torch thread(s), on {c.get('where', 'this machine')})"
          for c in commands], "",
        "## Scope of this page", "",
        *scope(summaries), "",
        "Every run is `recipes/train.py` with the paper's settings: embedding dim 8, hidden [256, 128, 64], "
        "dropout 0.5, Adam 1e-3, batch 1024, early stopping on validation mean AUC with patience 3 "
        f"(at most {_default_max_epochs()} epochs, from `recipes/configs/default.yaml`, unless an override is listed "
        "above). A seed fixes the data (user subsample, sampled "
        "negatives, per-domain 60/20/20 split) and the initialisation for every model, so differences are "
        "paired seed by seed. Metrics are on the test split: WAUC (per-domain AUC weighted by test rows) and the "
        "unweighted mean of per-domain AUCs. `x+mlora` is MLoRA joint training at rank divisor 16, `x+two_stage` the "
        f"shared backbone then the adapters only; `/4` marks another rank divisor (`/{DEFAULT_RANK_DIVISOR}` is the "
        "library's default); `x[option]` is a run with a named "
        "training option (listed under each data set), made for the plain and the MLoRA backbone alike. The "
        "\"best MLoRA config\" of a backbone is its MLoRA variant (any mode, divisor or option) with the highest mean "
        "**validation** mean AUC; the Amazon goal also shows it against the best plain config, chosen the same way. "
        "The synthetic goals are about joint MLoRA on the paper's backbone: there the divisor and the options of "
        "MLoRA's own settings (`mlora.*`) are chosen on validation, and options that also change the plain "
        "backbone are left out.",
        "",
        "## Reproducibility", "", *reproducibility_section(cache),
        "## Goals", "", *goals(summaries, shares, steps), "",
        "## When does MLoRA help?", "",
        "Synthetic data: joint MLoRA (rank divisor 16) minus the plain backbone, by rows, number of domains and strength "
        "of the domain-specific effect. Plain WAUC is the plain backbones' mean; the oracle is the generator's own "
        "click probability, the best any model can do; the share of the gap closed is the MLoRA gain over "
        "(oracle − plain). The last column is joint MLoRA at the library's default divisor 64, where it was run. "
        "The synthetic goals take, per backbone and data set, the joint config (divisor, `mlora.*` option) with the "
        "highest validation mean AUC:", "", *synthetic_sweep(summaries, oracles), "",
        *([f"![paired gains per backbone and data set](images/benchmark_summary.png)", ""]
          if plot_summary(summaries, images / "benchmark_summary.png") else []),
        "Per data set (the best MLoRA config of each backbone, chosen on validation):", "",
        *when_it_helps(summaries), "",
    ]
    for key in sorted(summaries, key=_order):
        variants = summaries[key]
        image = images / f"benchmark_{key.replace('@', '_')}.png"
        plot_data_set(key, variants, image)
        seeds = sorted({s for runs in variants.values() for s in runs})
        option_lines = options_table(variants)
        lines += [f"## {key}", "", f"Seeds {seeds}. Paired differences: mean ± std over seeds (wins / seeds).", "",
                  *results_table(variants), "", *oracle_line(key, oracles),
                  *(["Training options (`x[option]`, see `OPTIONS` in benchmarks/benchmark.py), paired:", "",
                     *option_lines, ""] if option_lines else []),
                  f"![paired gains on {key}](images/{image.name})", "",
                  "Per domain (test AUC of the plain MLP; the others as paired Δ AUC, mean ± std (wins)):", "",
                  *per_domain_table(variants), ""]
    lines += ["## Parameters", "", *param_lines, "", "## Speed", "",
              "Ratios are paired (each MLoRA timing next to a plain one), which cancels load that comes and goes; "
              "absolute milliseconds on a shared CPU do not. CPU numbers come from the machine in the header, GPU "
              "numbers from the device named in each note.", "", *speed_lines]
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text("\n".join(lines).rstrip() + "\n")
    return page


def scope(summaries: dict) -> list[str]:
    lines = []
    for key in sorted(summaries, key=_order):
        variants = summaries[key]
        seeds = sorted({s for runs in variants.values() for s in runs})
        overrides = sorted({o for runs in variants.values() for r in runs.values() for o in r["overrides"]})
        options = {k: v for runs in variants.values() for r in runs.values()
                   for k, v in (r.get("data_options") or {}).items()}
        described = ", ".join(f"{k}={v}" for k, v in options.items())
        runs = [r for v in variants.values() for r in v.values()]
        used = [m for m in models.list_models() if any(r["model"] == m for r in runs)]
        modes = [m for m in ("none", "joint", "two_stage") if any(r["mode"] == m for r in runs)]
        lines.append(f"- `{key}`" + (f" ({described})" if described else "") + f": {len(runs)} runs; models "
                     f"{', '.join(used)}; MLoRA modes {', '.join(modes)}; seeds {seeds}"
                     + (f"; overrides {', '.join(overrides)}" if overrides else "") + ".")
    ran = set(summaries)
    missing = []
    if "amazon6" not in ran:
        missing.append("Amazon-6")
    if not any(k.startswith("ml100k") for k in ran):
        missing.append("ML-100K")
    if not any(k.startswith("synthetic") for k in ran):
        missing.append("synthetic data")
    models_run = {r["model"] for v in summaries.values() for runs in v.values() for r in runs.values()}
    not_run = [m for m in models.list_models() if m not in models_run]
    if missing:
        lines.append(f"- Not run at all: {', '.join(missing)}.")
    if not_run:
        lines.append(f"- Models never run: {', '.join(not_run)}.")
    if "amazon6" in ran:
        amazon_models = {r["model"] for runs in summaries["amazon6"].values() for r in runs.values()}
        skipped = [m for m in models.list_models() if m not in amazon_models]
        if skipped:
            lines.append(f"- Not run on Amazon-6 in this budget: {', '.join(skipped)}.")
    return lines or ["- Nothing has run yet."]


def _default_max_epochs() -> int:
    import yaml

    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "recipes" / "configs" / "default.yaml").read_text())
    return config["train"]["max_epochs"]


def _cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or "unknown CPU"
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown CPU")


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
