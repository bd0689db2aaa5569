"""The benchmark's goals as data: `GOALS` lists `Goal` records; `evaluate_goals` judges each against the cache.

A goal names its check (a key of `CHECKS`), its threshold and, where it counts backbones, how many must
meet it. The statement shown on the page is formatted from those fields, so a threshold lives in one place.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Optional

from .stats import (BACKBONES, BASELINES, Variants, best_joint, best_mlora, best_plain, fmt_diff, paired,
                    spec_of, synthetic_setting)

GOAL_STEP_BATCH = 1024
"""The batch size at which the step-ratio goal is judged (the paper's)."""


@dataclass(frozen=True)
class Goal:
    """One goal: what is claimed (`statement`, formatted with the fields), how it is checked, and its bar.

    Example:
        >>> Goal("Parameters", "adapter_share", "MLoRA adds < {threshold:.0%} per domain", 0.1).text
        'MLoRA adds < 10% per domain'
    """

    name: str  # the short name in the list of goals missed
    check: str  # a key of CHECKS
    statement: str  # formatted with threshold and needed
    threshold: float
    needed: int = 0  # backbones that must meet it (of len(BACKBONES)), where it counts backbones

    @property
    def text(self) -> str:
        return self.describe()

    def describe(self, scope: str = "") -> str:
        """The statement with its numbers (and `scope`, e.g. " (1,000 rows)", where it has one)."""
        return self.statement.format(threshold=self.threshold, needed=self.needed, backbones=len(BACKBONES),
                                     scope=scope)


@dataclass(frozen=True)
class Evidence:
    """What the goals are judged on: the cached runs, adapter shares per backbone, step ratios per device."""

    summaries: dict[str, Variants]
    shares: Optional[dict[str, float]] = None
    steps: dict = field(default_factory=dict)


@dataclass(frozen=True)
class GoalResult:
    """A goal judged on one scope (e.g. one synthetic row count): a table row and, when missed, why."""

    goal: Goal
    status: str
    evidence: str
    scope: str = ""  # e.g. " (100,000 rows)"
    missed: Optional[str] = None  # by how much, and what was tried

    @property
    def row(self) -> str:
        return f"| {self.goal.describe(self.scope)} | {self.status} | {self.evidence or '—'} |"

    @property
    def missed_line(self) -> Optional[str]:
        return None if self.missed is None else f"- **{self.goal.name}{self.scope}:** {self.missed}"


GOALS: tuple[Goal, ...] = (
    Goal("Amazon-6 gain", "amazon_gain", "Amazon-6: best MLoRA config ≥ +{threshold} WAUC and wins every seed, "
         "≥ {needed} of {backbones} backbones", 0.005, 7),
    Goal("Amazon-6 baselines", "amazon_baselines", "Amazon-6: best MLoRA beats every baseline", 0.0),
    Goal("Synthetic with a domain effect", "synthetic_effect", "Synthetic with a domain effect{scope}: joint MLoRA "
         "(config chosen on validation) wins every seed, ≥ {needed} of {backbones} backbones", 0.0, 9),
    Goal("Synthetic without a domain effect", "synthetic_no_effect", "Synthetic without a domain effect{scope}: "
         "joint MLoRA (config chosen on validation) costs ≤ {threshold} WAUC", 0.001),
    Goal("Parameters", "adapter_share", "MLoRA adds < {threshold:.0%} of the backbone's non-embedding parameters "
         "per domain (default rank)", 0.10),
    Goal("DeepFM step", "step_ratio", "A full MLoRA-DeepFM training step ≤ {threshold}x the plain step "
         f"(batch {GOAL_STEP_BATCH:,})", 1.15),
    Goal("ML-100K", "ml100k", "ML-100K: per domain split, does MLoRA win (explained per domain)", 0.0),
)
"""The goals the page reports, in order."""


def evaluate_goals(evidence: Evidence, goals: tuple[Goal, ...] = GOALS) -> list[GoalResult]:
    """Every goal judged on the evidence (a goal judged per scope gives one result per scope)."""
    return [result for goal in goals for result in CHECKS[goal.check](goal, evidence)]


def goals_section(evidence: Evidence, goals: tuple[Goal, ...] = GOALS) -> list[str]:
    """The goals table, then, for each goal not met, by how much it is missed and which MLoRA configs were run."""
    results = evaluate_goals(evidence, goals)
    out = ["| goal | status | evidence |", "|---|---|---|", *(r.row for r in results)]
    missed = [r.missed_line for r in results if r.missed_line]
    if missed:
        out += ["", "Goals not met, by how much, and what was tried: each MLoRA config run on those data sets, with "
                "how many backbones ran it (the goal's own rule, in the table, says which of them it chooses from, "
                "on validation):", "", *missed]
    return out


# ---------------------------------------------------------------------------------- the checks
def _amazon(evidence: Evidence) -> Variants:
    return next((v for v in evidence.summaries.values() if spec_of(v).family == "amazon6"
                 and spec_of(v).composition == "mixed"), {})


def _amazon_keys(evidence: Evidence) -> list[str]:
    return [k for k, v in evidence.summaries.items() if spec_of(v).family == "amazon6"]


def check_amazon_gain(goal: Goal, evidence: Evidence) -> list[GoalResult]:
    """Each backbone's best MLoRA config (on validation) against the plain backbone on Amazon-6."""
    amazon = _amazon(evidence)
    measured, met, shown, gains = 0, 0, [], {}
    for backbone in BACKBONES:
        best, plain_variant = best_mlora(amazon, backbone), next((v for v in amazon if v.is_reference
                                                                  and v.model == backbone), None)
        if best is None or plain_variant is None:
            continue
        d = paired(amazon[best], amazon[plain_variant])
        measured += 1
        met += d["mean"] >= goal.threshold and d["wins"] == d["n"]
        gains[best] = d["mean"]
        plain = best_plain(amazon, backbone)
        versus_best = "" if plain == plain_variant else \
            f" (vs the best plain config {plain.name}: {fmt_diff(paired(amazon[best], amazon[plain]))})"
        shown.append(f"{best.name}: {fmt_diff(d)}{versus_best}")
    if measured == 0:
        status = "not measured"
    elif met >= goal.needed:
        status = "met"
    elif met + (len(BACKBONES) - measured) < goal.needed:
        status = "not met"
    else:
        status = f"not measured ({measured} of {len(BACKBONES)} backbones run)"
    missed = None
    if status == "not met":
        top = max(gains, key=gains.get)
        missed = (f"{met} of {measured} backbones meet it ({goal.needed} needed). The largest mean gain is "
                  f"{top.name}'s, {gains[top]:+.4f}: {goal.threshold - gains[top]:.4f} short of +{goal.threshold}. "
                  f"Tried: {tried(evidence.summaries, _amazon_keys(evidence))}.")
    return [GoalResult(goal, f"{status} ({met}/{measured} measured backbones meet it)", "; ".join(shown),
                       missed=missed)]


def check_amazon_baselines(goal: Goal, evidence: Evidence) -> list[GoalResult]:
    """The MLP's best MLoRA config against every multi-domain baseline, seed by seed, on Amazon-6."""
    amazon = _amazon(evidence)
    best_mlp = best_mlora(amazon, "mlp")
    baselines = {v.model: v for v in amazon if v.is_baseline}
    if best_mlp is None or not baselines:
        return [GoalResult(goal, "not measured", "")]
    vs = {b: paired(amazon[best_mlp], amazon[baselines[b]]) for b in BASELINES if b in baselines}
    unbeaten = {b: d for b, d in vs.items() if not (d["wins"] == d["n"] and d["mean"] > goal.threshold)}
    missing = [b for b in BASELINES if b not in baselines]
    status = "not met" if unbeaten else f"not measured ({', '.join(missing)} not run)" if missing else "met"
    missed = None if not unbeaten else f"{best_mlp.name} does not beat every seed of " + "; ".join(
        (f"{b}: behind by {-d['mean']:.4f}" if d["mean"] <= 0 else f"{b}: ahead by {d['mean']:.4f}")
        + f", ahead in {d['wins']} of {d['n']} seeds" for b, d in unbeaten.items()) + "."
    return [GoalResult(goal, status, "; ".join(f"{best_mlp.name} − {b}: {fmt_diff(d)}" for b, d in vs.items()),
                       missed=missed)]


def _synthetic_rows(evidence: Evidence) -> list[int]:
    """Row counts of the synthetic data sets, largest first: a domain needs rows for its adapters to learn."""
    return sorted({synthetic_setting(v)["rows"] for v in evidence.summaries.values()
                   if spec_of(v).source == "synthetic"}, reverse=True)


def _synthetic_gains(evidence: Evidence, rows: int, with_effect: bool) -> tuple[list[str], dict]:
    """Keys of the mixed-batch synthetic data sets of `rows` rows (with or without an effect), and per backbone
    the (key, best joint variant on validation, paired difference) on each."""
    keys = [k for k, v in evidence.summaries.items() if spec_of(v).source == "synthetic"
            and spec_of(v).composition == "mixed" and synthetic_setting(v)["rows"] == rows
            and (synthetic_setting(v)["effect"] > 0) == with_effect]
    per_backbone = defaultdict(list)
    for key in keys:
        variants = evidence.summaries[key]
        for backbone in BACKBONES:
            best = best_joint(variants, backbone)
            plain = variants.get(best.reference) if best is not None else None
            if best is not None and plain is not None:
                per_backbone[backbone].append((key, best, paired(variants[best], plain)))
    return keys, per_backbone


def check_synthetic_effect(goal: Goal, evidence: Evidence) -> list[GoalResult]:
    """Per row count: joint MLoRA (chosen on validation) wins every seed on every data set with an effect."""
    results = []
    for rows in _synthetic_rows(evidence):
        keys, per_backbone = _synthetic_gains(evidence, rows, with_effect=True)
        ok = [b for b, ds in per_backbone.items() if all(d["wins"] == d["n"] for _, _, d in ds)]
        status = ("not measured" if not per_backbone else "met" if len(ok) >= goal.needed else
                  "not met" if len(ok) + (len(BACKBONES) - len(per_backbone)) < goal.needed else
                  f"not measured ({len(per_backbone)} of {len(BACKBONES)} backbones run)")
        missed = None
        if status == "not met":
            lost = {b: ", ".join(f"{key.removeprefix('synthetic-')} {d['n'] - d['wins']} of {d['n']}"
                                 for key, _, d in ds if d["wins"] < d["n"])
                    for b, ds in per_backbone.items() if b not in ok}
            missed = (f"{len(ok)} of {len(per_backbone)} backbones win every seed ({goal.needed} needed). Seeds lost: "
                      + "; ".join(f"{b}: {where}" for b, where in lost.items())
                      + f". Tried: {tried(evidence.summaries, keys)}.")
        results.append(GoalResult(
            goal, f"{status} ({len(ok)}/{len(per_backbone)} backbones win every seed on {', '.join(keys) or '—'})",
            "; ".join(f"{b}: " + ", ".join(fmt_diff(d) + _note(v) for _, v, d in ds) for b, ds in per_backbone.items()),
            f" ({rows:,} rows)", missed))
    return results or [GoalResult(goal, "not measured", "")]


def check_synthetic_no_effect(goal: Goal, evidence: Evidence) -> list[GoalResult]:
    """Per row count: joint MLoRA (chosen on validation) costs at most `threshold` WAUC without a domain effect."""
    results = []
    for rows in _synthetic_rows(evidence):
        keys, per_backbone = _synthetic_gains(evidence, rows, with_effect=False)
        costs = {b: min(ds, key=lambda found: found[2]["mean"]) for b, ds in per_backbone.items()}
        bad = [b for b, (_, _, d) in costs.items() if d["mean"] < -goal.threshold]
        status = ("not measured" if not costs else f"met ({', '.join(keys)})" if not bad
                  else f"not met ({', '.join(bad)})")
        missed = None if not bad else (
            f"over the {goal.threshold} allowed by " + ", ".join(
                f"{b} {-costs[b][2]['mean'] - goal.threshold:.4f} (on {costs[b][0].removeprefix('synthetic-')})"
                for b in bad) + f". Tried: {tried(evidence.summaries, keys)}.")
        results.append(GoalResult(goal, status, "; ".join(f"{b}: worst mean Δ {d['mean']:+.4f}{_note(v)}"
                                                          for b, (_, v, d) in costs.items()),
                                  f" ({rows:,} rows)", missed))
    return results or [GoalResult(goal, "not measured", "")]


def check_adapter_share(goal: Goal, evidence: Evidence) -> list[GoalResult]:
    """Adapter parameters of one domain over the backbone's non-embedding parameters, at the default rank."""
    shares = evidence.shares
    if not shares:
        return [GoalResult(goal, "not measured", "")]
    over = {b: s for b, s in shares.items() if s >= goal.threshold}
    shown = (f"largest share {max(shares.values()):.1%} ({max(shares, key=shares.get)})"
             + (f"; over: {', '.join(f'{b} {s:.1%}' for b, s in over.items())}" if over else ""))
    missed = None if not over else f"over {goal.threshold:.0%} by " + ", ".join(
        f"{b} {s - goal.threshold:.1%}" for b, s in over.items()) + "."
    return [GoalResult(goal, "met" if not over else "not met", shown, missed=missed)]


def check_step_ratio(goal: Goal, evidence: Evidence) -> list[GoalResult]:
    """The DeepFM step ratio measured at `GOAL_STEP_BATCH` rows, on every device measured."""
    measured = {device: found["rows"]["deepfm"]["ratio"] for device, found in evidence.steps.items()
                if "deepfm" in found["rows"]}
    if not measured:
        return [GoalResult(goal, "not measured", "")]
    worst = max(max(r.values()) for r in measured.values())
    shown = "; ".join(f"{device}: " + ", ".join(f"D={d}: {r:.2f}x" for d, r in ratios.items())
                      for device, ratios in measured.items())
    missed = None if worst <= goal.threshold else "; ".join(
        f"{device}: best {min(r.values()):.2f}x, worst {max(r.values()):.2f}x ({max(r.values()) - goal.threshold:.2f}x "
        "over)" for device, r in measured.items()) + (". Tried: the routed layer against a loop over the domains and "
                                                      "against every domain's term on every row (the routed-layer "
                                                      "table under Speed).")
    return [GoalResult(goal, "met" if worst <= goal.threshold else "not met", shown, missed=missed)]


def check_ml100k(goal: Goal, evidence: Evidence) -> list[GoalResult]:
    """Whether ML-100K was measured (the answer is the per-domain tables below the goals)."""
    ml = [k for k, v in evidence.summaries.items() if spec_of(v).family == "ml100k" and spec_of(v).composition == "mixed"]
    return [GoalResult(goal, "measured: see below" if ml else "not measured", ", ".join(ml))]


CHECKS: dict[str, Callable[[Goal, Evidence], list[GoalResult]]] = {
    "amazon_gain": check_amazon_gain, "amazon_baselines": check_amazon_baselines,
    "synthetic_effect": check_synthetic_effect, "synthetic_no_effect": check_synthetic_no_effect,
    "adapter_share": check_adapter_share, "step_ratio": check_step_ratio, "ml100k": check_ml100k,
}
"""Each check a `Goal.check` may name."""


def tried(summaries: dict[str, Variants], keys: list[str]) -> str:
    """The MLoRA configs run on the data sets `keys` (`+mlora/64`, `+two_stage`, `+mlora[option]`, ...), each with
    how many backbones ran it, most run first; data sets of one domain per batch are named apart."""
    parts = []
    for composition in ("mixed", "per_domain"):
        backbones_of = defaultdict(set)
        for key in keys:
            variants = summaries.get(key, {})
            if not variants or spec_of(variants).composition != composition:
                continue
            for variant in variants:
                if not variant.is_plain and variant.model in BACKBONES:
                    backbones_of[variant.config].add(variant.model)
        if backbones_of:
            configs = sorted(backbones_of.items(), key=lambda found: (-len(found[1]), found[0]))
            parts.append(("" if composition == "mixed" else "with one domain per batch, ")
                         + ", ".join(f"`{config}` ({len(found)})" for config, found in configs))
    return "; ".join(parts) or "nothing"


def _note(variant) -> str:
    """` (x+mlora/64)`: the chosen joint variant when it is not plain `x+mlora`, else nothing."""
    return "" if variant.config == "+mlora" else f" ({variant.name})"
