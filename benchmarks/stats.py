"""Grouping the benchmark's run records and the paired statistics the page is built from.

Differences are paired: a model minus its reference (`Variant.reference`), seed by seed, over the seeds
both have. Every choice of a "best" config is made on validation mean AUC; test is never looked at.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Optional

from mlora_peft import models

from .records import RunRecord, Runs, Variant

BACKBONES = models.list_models("backbones")
BASELINES = models.list_models("baselines")

Variants = dict[Variant, Runs]
"""One data set's runs: variant -> seed -> record."""


def group_records(records: list[RunRecord]) -> dict[str, Variants]:
    """data key -> variant -> seed -> `RunRecord`."""
    found: dict[str, Variants] = defaultdict(lambda: defaultdict(dict))
    for run in records:
        found[run.data.key][run.variant][run.seed] = run
    return found


def spec_of(variants: Variants):
    """The `DataSpec` of a data set's runs."""
    return first_run(variants).data


def first_run(variants: Variants) -> RunRecord:
    return next(iter(next(iter(variants.values())).values()))


MOVIELENS_SPLITS = ("gender", "age", "occupation", "genre_group")
"""ML-100K's domain splits in page order: the paper's three user splits, then the item-side one."""


def page_order(variants: Variants) -> tuple:
    """Amazon first, then ML-100K (by split), then synthetic; mixed batches before other compositions."""
    spec = spec_of(variants)
    split = spec.options.get("domain") if spec.source == "movielens" else None
    return (("amazon6", "ml100k", "synthetic").index(spec.family), spec.composition != "mixed",
            MOVIELENS_SPLITS.index(split) if split in MOVIELENS_SPLITS else 0, spec.key)


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
    """The MLoRA variant of `backbone` with the best mean validation mean AUC: any mode or divisor, and options
    of MLoRA's own settings (`mlora.*`) only, so that it differs from the plain backbone by the adapters alone."""
    return _best_on_validation(variants, lambda v: v.model == backbone and v.is_mlora and v.keeps_backbone)


@dataclass(frozen=True)
class BackboneEffect:
    """What MLoRA and per-domain fine-tuning do to one backbone on one data set."""

    backbone: str
    best: Optional[Variant]  # its best MLoRA config (`best_mlora`), None when none ran
    gain: Optional[dict]  # `paired` Δ of `best` over the backbone
    headroom: Optional[dict]  # `paired` Δ of the backbone fine-tuned per domain (`x+finetune`) over the backbone


def backbone_effects(variants: Variants) -> list[BackboneEffect]:
    """One `BackboneEffect` per backbone whose plain run is recorded, in `BACKBONES` order."""
    found = []
    for backbone in [b for b in BACKBONES if Variant(b) in variants]:
        plain, best, tuned = Variant(backbone), best_mlora(variants, backbone), Variant(backbone, "finetune")
        found.append(BackboneEffect(backbone, best, None if best is None else paired(variants[best], variants[plain]),
                                    paired(variants[tuned], variants[plain]) if tuned in variants else None))
    return found


def best_plain(variants: Variants, backbone: str) -> Optional[Variant]:
    """The plain `backbone` variant (paper settings or an option) with the best mean validation mean AUC."""
    return _best_on_validation(variants, lambda v: v.model == backbone and v.is_plain)


def best_baseline(variants: Variants) -> Optional[Variant]:
    """The multi-domain baseline (shared-bottom, MMoE, STAR, ...) with the best mean validation mean AUC."""
    return _best_on_validation(variants, lambda v: v.is_baseline)


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


def fmt_diff(d: Optional[dict], digits: int = 4, missing: str = "n/a") -> str:
    """A paired difference as `mean ± std (wins/n)`; `missing` when there was nothing to pair."""
    if d is None:
        return missing
    return f"{d['mean']:+.{digits}f} ± {d['std']:.{digits}f} ({d['wins']}/{d['n']})"


def mean_of(variants: Variants, variant: Variant, metric: str = "wauc") -> Optional[float]:
    """Mean test `metric` of a variant over its seeds (None when it did not run)."""
    runs = variants.get(variant)
    return statistics.fmean(r.test[metric] for r in runs.values()) if runs else None
