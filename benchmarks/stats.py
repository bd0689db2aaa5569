"""Reading the benchmark cache and the paired statistics the page is built from.

Differences are paired: a model minus its reference (`Variant.reference`), seed by seed, over the seeds
both have. Every choice of a "best" config is made on validation mean AUC; test is never looked at.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Callable, Optional

from mlora_peft import models

from .records import RunRecord, Runs, Variant

BACKBONES = models.list_models("backbones")
BASELINES = models.list_models("baselines")

Variants = dict[Variant, Runs]
"""One data set's runs: variant -> seed -> record."""


def load_records(cache: Path) -> dict[str, Variants]:
    """data key -> variant -> seed -> `RunRecord`, from every `summary.json` in the cache."""
    found: dict[str, Variants] = defaultdict(lambda: defaultdict(dict))
    for path in sorted(cache.glob("*/*/seed*/summary.json")):
        run = RunRecord.from_json(json.loads(path.read_text()))
        found[run.data.key][run.variant][run.seed] = run
    return found


def spec_of(variants: Variants):
    """The `DataSpec` of a data set's runs."""
    return first_run(variants).data


def first_run(variants: Variants) -> RunRecord:
    return next(iter(next(iter(variants.values())).values()))


def page_order(variants: Variants) -> tuple:
    """Amazon first, then ML-100K, then synthetic; mixed batches before other compositions."""
    spec = spec_of(variants)
    return ("amazon6", "ml100k", "synthetic").index(spec.family), spec.composition != "mixed", spec.key


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def paired(runs: Runs, reference: Runs, metric: str = "wauc") -> Optional[dict]:
    """Seed-by-seed differences of a test metric: mean, std, wins, n (None without common seeds)."""
    seeds = sorted(set(runs) & set(reference))
    if not seeds:
        return None
    diffs = [runs[s].test[metric] - reference[s].test[metric] for s in seeds]
    mean, std = mean_std(diffs)
    return {"mean": mean, "std": std, "wins": sum(d > 0 for d in diffs), "n": len(diffs), "diffs": diffs}


def best_mlora(variants: Variants, backbone: str) -> Optional[Variant]:
    """The MLoRA variant of `backbone` with the best mean validation mean AUC (any mode, divisor or option)."""
    return _best_on_validation(variants, lambda v: v.model == backbone and not v.is_plain)


def best_plain(variants: Variants, backbone: str) -> Optional[Variant]:
    """The plain `backbone` variant (paper settings or an option) with the best mean validation mean AUC."""
    return _best_on_validation(variants, lambda v: v.model == backbone and v.is_plain)


def best_joint(variants: Variants, backbone: str) -> Optional[Variant]:
    """The joint MLoRA variant of `backbone` with the best validation mean AUC among those that keep the paper's
    backbone: any rank divisor, and options of MLoRA's own settings (`mlora.*`) only. The synthetic goals' model."""
    return _best_on_validation(variants, lambda v: v.model == backbone and v.mode == "joint" and v.keeps_backbone)


def _best_on_validation(variants: Variants, allowed: Callable[[Variant], bool]) -> Optional[Variant]:
    candidates = [v for v in variants if allowed(v)]
    if not candidates:
        return None
    common = set.intersection(*(set(variants[v]) for v in candidates))  # seeds differ in data: like with like

    def validation(variant: Variant) -> float:
        runs = variants[variant]
        return statistics.fmean(runs[s].validation["mean_auc"] for s in (common or runs))

    return max(candidates, key=validation)


def sort_key(variant: Variant) -> tuple:
    """Zoo order of the model, then the label."""
    zoo = models.list_models()
    return zoo.index(variant.model) if variant.model in zoo else 99, variant.name


def fmt_diff(d: Optional[dict], digits: int = 4) -> str:
    if d is None:
        return "n/a"
    return f"{d['mean']:+.{digits}f} ± {d['std']:.{digits}f} ({d['wins']}/{d['n']})"


def synthetic_setting(variants: Variants) -> dict:
    """D, domain effect, rows and batch composition of a synthetic data set, read from its spec."""
    spec = spec_of(variants)
    options = spec.options
    return {"count": options["num_domains"], "effect": options["domain_effect"], "rows": options["rows"],
            "composition": spec.composition}
