"""When does MLoRA help? Paired runs on real and synthetic data, written up as docs/benchmarks.md.

    python -m benchmarks.benchmark --quick --headroom                    # a smoke run in minutes
    python -m benchmarks.benchmark --data amazon6 --models mlp,deepfm --modes joint --headroom --seeds 0,1,2
    python -m benchmarks.benchmark --data amazon6-users30 --user-fraction 0.3 --compositions mixed,sequential \
        --models mlp --modes joint --options emb_l2_table --seeds 0,1,2,3,4   # the paper's protocol, paired
    python -m benchmarks.benchmark --report-only                         # the page again, from the records
    python -m benchmarks.benchmark --reproduce 10 --data amazon6,ml100k  # retrain 10 recorded runs, compare

Every run is `recipes/train.py`'s `train()` with the paper's settings (embedding 8, hidden
[256, 128, 64], dropout 0.5, Adam 1e-3, batch 1024, early stopping on validation mean AUC,
patience 3). A seed fixes the data (user subsample, negatives, split) and the initialisation for
every model, so differences between models are paired. `--headroom` adds two no-training scores
(item popularity; on synthetic data the generator's own probability) and each plain backbone
fine-tuned per domain from its best weights (`x+finetune`, the headroom's upper bound).

Each finished run is recorded as one JSON line in `benchmarks/results/<data key>.jsonl` (committed: the
page is generated from these records alone, `benchmarks/benchmark_report.py`); the work folder
(`--cache`, git-ignored) keeps a `summary.json` per run, so an interrupted command continues where it
stopped, and the plain runs' weights that `x+finetune` starts from.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from mlora_peft import data as data_lib
from mlora_peft.tuner.config import DEFAULT_RANK_DIVISOR
from mlora_peft import models
from mlora_peft.data import MultiDomainData
from mlora_peft.metrics import domain_report
from mlora_peft import training
from mlora_peft.hub.weights import read_weights
from mlora_peft.training import write_json_atomic
from mlora_peft.training.diagnose import finetune_reports, popularity_reports

from benchmarks import benchmark_report
from benchmarks.records import (COMMANDS, DEFAULT_DIVISOR, OPTION_MODES, OPTIONS, ORACLE, POPULARITY, DataSpec,
                                RunRecord, Variant, read_records, write_records)

ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = ROOT.parent / "shared" / "data"
SUMMARY = "summary.json"
DEFAULT_SYNTHETIC_ROWS = 100_000
"""Synthetic rows per data set. The domain effect is a per-domain taste of each of 500 users and 300
items; at D=10, 100,000 rows give a domain 6,000 training rows on average (12 per user), where 20,000 gave
about 2 per user, too few to learn such an effect (the page shows both)."""


DEFAULT_CONFIG = ROOT / "recipes" / "configs" / "default.yaml"  # the recipe's settings, the paper's
RESULTS = ROOT / "benchmarks" / "results"  # committed: the page is generated from these records alone


# ---------------------------------------------------------------------------------- what runs
def variants(names: list[str], modes: list[str], divisors: list[int], options: tuple[str, ...] = (),
             headroom: bool = False) -> list[Variant]:
    """Plain, MLoRA (each mode and divisor) per backbone; baselines once each; plain runs first.

    Each option adds the plain backbone and its joint MLoRA (default divisor) with that option
    (two-stage for an option of `OPTION_MODES`); an option of MLoRA's settings alone (`mlora.*`) adds
    only the latter, since the plain model would not change. `headroom` adds the popularity score
    (once) and each backbone fine-tuned per domain from its plain run (`x+finetune`).
    """
    found = [Variant(POPULARITY)] if headroom else []  # (plan adds the oracle on synthetic data)
    for name in names:
        found.append(Variant(name))
        if name in models.list_models("baselines"):
            continue
        if headroom:
            found.append(Variant(name, "finetune"))
        found += [Variant(name, mode, divisor) for mode in modes for divisor in divisors]
        for option in options:
            if not Variant(name, option=option).keeps_backbone:  # a plain model with mlora.* options is the plain one
                found.append(Variant(name, option=option))
            found.append(Variant(name, OPTION_MODES.get(option, "joint"), option=option))
    return found


def synthetic_specs(domain_counts: list[int], effects: list[float], rows: int, compositions: list[str]
                    ) -> list[DataSpec]:
    """Synthetic data with 10x imbalance between the largest and the smallest domain.

    The key names the row count (`synthetic-D10-effect1-100k`), since how much data each domain has
    decides whether its adapters can learn anything; runs with other row counts sit side by side.
    """
    specs = []
    for count in domain_counts:
        imbalance = 10 ** (1 / (count - 1)) if count > 1 else 1.0
        for effect in effects:
            for composition in compositions:
                suffix = "" if composition == "mixed" else f"@{composition}"
                specs.append(DataSpec(
                    f"synthetic-D{count}-effect{effect:g}-{rows / 1000:g}k{suffix}",
                    f"Synthetic, D={count}, domain effect {effect:g}, {rows:,} rows, {composition} batches",
                    "synthetic", {"num_domains": count, "rows": rows, "domain_effect": effect,
                                  "imbalance": round(imbalance, 4)}, composition))
    return specs


def real_specs(user_fraction: float, compositions: list[str], movielens_domains: list[str],
               movielens_features: tuple[str, ...] = ("ids",)) -> list[DataSpec]:
    """Amazon-6 and ML-100K per domain split; `side` features add ML-100K's user and item attributes."""
    specs = []
    for composition in compositions:
        suffix = "" if composition == "mixed" else f"@{composition}"
        pct = f"{user_fraction:.0%} of users" if user_fraction < 1 else "all users"
        users = f"-users{user_fraction * 100:g}" if user_fraction < 1 else ""  # another data set: its own key
        specs.append(DataSpec(f"amazon6{users}{suffix}", f"Amazon-6 (2014 5-core), {pct}, {composition} batches",
                              "amazon", {"user_fraction": user_fraction}, composition))
        for domain in movielens_domains:
            for features in movielens_features:
                side = features == "side"
                specs.append(DataSpec(
                    f"ml100k-{domain}{'-side' if side else ''}{suffix}",
                    f"ML-100K by {domain}, {'ids and side features' if side else 'ids'}, {composition} batches",
                    "movielens", {"domain": domain, "side_features": side}, composition))
    return specs


# ---------------------------------------------------------------------------------- data
class DataCache:
    """Loaded data per (data key without composition, seed), and the raw Amazon positives, kept in process."""

    def __init__(self, data_root: Path, embedding_dim: int) -> None:
        self.data_root, self.embedding_dim = data_root, embedding_dim
        self.loaded: dict[tuple[str, int], MultiDomainData] = {}
        self.amazon_positives: Optional[pa.Table] = None

    def get(self, spec: DataSpec, seed: int) -> MultiDomainData:
        key = (spec.data_key, seed)
        if key not in self.loaded:
            self.loaded.clear()  # one data set in memory at a time
            self.loaded[key] = self._load(spec, seed)
        return self.loaded[key]

    def _load(self, spec: DataSpec, seed: int) -> MultiDomainData:
        o, dim = spec.options, self.embedding_dim
        if spec.source == "synthetic":
            return data_lib.make_synthetic(num_domains=o["num_domains"], rows=o["rows"],
                                           domain_effect=o["domain_effect"], imbalance=o["imbalance"], seed=seed,
                                           embedding_dim=dim)
        if spec.source == "movielens":
            return data_lib.load_movielens(self.data_root / "ml-100k", domain=o["domain"], label="rating==5",
                                           seed=seed, embedding_dim=dim, side_features=o.get("side_features", False))
        if spec.source == "amazon":
            if self.amazon_positives is None:
                self.amazon_positives = data_lib.read_amazon(self.data_root / "amazon-2014-5core")
            positives = subsample_users(self.amazon_positives, o["user_fraction"], seed)
            rows, _ = data_lib.with_sampled_negatives(positives, user="user", item="item", domain="category",
                                                      seed=seed)
            return data_lib.load_multidomain(rows, label="label", domain="category", sparse=["user", "item"],
                                             dense=[], seed=seed, embedding_dim=dim)
        raise ValueError(f"source={spec.source!r}; use synthetic, movielens or amazon.")


def subsample_users(positives: pa.Table, fraction: float, seed: int) -> pa.Table:
    """The interactions of a seeded random `fraction` of the users (all of them when fraction >= 1)."""
    if fraction >= 1:
        return positives
    users = pc.unique(positives.column("user"))
    users = users.take(pc.sort_indices(users))  # a fixed order, so the seed alone decides who is kept
    keep = np.random.default_rng([seed, 7]).random(len(users)) < fraction
    return positives.filter(pc.is_in(positives.column("user"), value_set=users.filter(pa.array(keep))))


def synthetic_oracle(options: dict, seed: int) -> dict[str, dict]:
    """The `domain_report` of validation and test of the generator's own click probability (`oracle`).

    It scores the benchmark's very split of `make_synthetic`: the best any model can do there.
    """
    data = synthetic_with_oracle(options, seed)
    return {split: domain_report(*(np.asarray(data.splits[split][c]) for c in ("label", "oracle", "domain_id")),
                                 data.domain_names) for split in ("validation", "test")}


def synthetic_with_oracle(options: dict, seed: int) -> MultiDomainData:
    """The rows and split of `make_synthetic` for these options and seed, with raw `price` and an `oracle` column."""
    settings = dict(num_domains=options["num_domains"], domain_effect=options["domain_effect"], seed=seed)
    table = data_lib.synthetic_table(rows=options["rows"], imbalance=options["imbalance"], **settings)
    table = table.append_column("oracle", pa.array(data_lib.synthetic_click_probability(table, **settings)))
    present = sorted(set(table.column("domain").to_pylist()))
    return data_lib.load_multidomain(table, label="label", domain="domain", sparse=["user"], dense=["price", "oracle"],
                                     normalize="none", seed=seed, domain_order=present,
                                     domain_names=[f"domain_{d}" for d in present])


# ---------------------------------------------------------------------------------- one run
def run_one(spec: DataSpec, variant: Variant, seed: int, cache: Path, data_cache: DataCache,
            overrides: list[str]) -> RunRecord:
    """Train (or read from the cache) one (data, model, seed) run; returns its record."""
    run_dir = cache / spec.key / variant.folder / f"seed{seed}"
    summary_path = run_dir / SUMMARY
    if summary_path.exists():
        return check_cached(RunRecord.from_json(json.loads(summary_path.read_text())), spec, variant, overrides,
                            summary_path)
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an interrupted run starts over (its log would be appended to)
    if variant.is_finetune:  # its plain run first, whose weights it starts from
        run_one(spec, Variant(variant.model), seed, cache, data_cache, overrides)
    data = data_cache.get(spec, seed)
    start = time.perf_counter()
    if variant.is_popularity or variant.is_oracle:
        reports = popularity_reports(data)[1] if variant.is_popularity else synthetic_oracle(spec.options, seed)
        results, params, epochs, best_epoch = reports["test"], {}, 0, 0
    elif variant.is_finetune:
        reports = finetune(spec, variant, seed, cache, data, data_cache, overrides)
        results, params, epochs, best_epoch = reports["test"], {}, 0, 0
    else:
        cfg = run_config(spec, variant, seed, run_dir, data_cache, overrides)
        results = training.train(cfg, run_dir, data=data)
        log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
        last_stage = [r for r in log if r["stage"] == log[-1]["stage"]]
        best = max(last_stage, key=lambda r: -1.0 if r["eval/mean_auc"] is None else r["eval/mean_auc"])
        reports = {"validation": {"mean_auc": best["eval/mean_auc"], "wauc": best["eval/wauc"]}}
        params, epochs, best_epoch = results["params"], len(log), best["epoch"]
    record = RunRecord(
        data=spec, variant=variant, seed=seed, domains=list(data.domain_names),
        test={k: results[k] for k in ("wauc", "mean_auc", "logloss", "per_domain")},
        validation={"mean_auc": reports["validation"]["mean_auc"], "wauc": reports["validation"]["wauc"],
                    "best_epoch": best_epoch},
        epochs=epochs, seconds=time.perf_counter() - start, params=params, overrides=list(overrides),
        option_overrides=list(variant.overrides))
    keep = ("model.safetensors",) if variant.is_plain and not variant.option else ()  # a fine-tune starts there
    for heavy in ("model.safetensors", "adapter", "test_predictions.safetensors"):
        target = run_dir / heavy  # the record keeps what the page needs; weights would fill the disk
        if heavy not in keep:
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    write_json_atomic(summary_path, record.to_json())
    return record


def run_config(spec: DataSpec, variant: Variant, seed: int, run_dir: Path, data_cache: DataCache,
               overrides: list[str]) -> training.TrainConfig:
    """The recipe's config of one trained run: the paper's settings, this data, seed, model and option."""
    return training.load_config(DEFAULT_CONFIG, [
        f"output_dir={run_dir}", "compare_with_plain=false", f"data.source={spec.source}",
        f"data.composition={spec.composition}", f"data.seed={seed}", f"train.seed={seed}",
        f"model.name={variant.model}", f"model.embedding_dim={data_cache.embedding_dim}",
        f"mlora.mode={variant.mode}", f"mlora.rank_divisor={variant.rank_divisor}", *variant.overrides, *overrides])


def finetune(spec: DataSpec, variant: Variant, seed: int, cache: Path, data: MultiDomainData, data_cache: DataCache,
             overrides: list[str]) -> dict[str, dict]:
    """`x+finetune`: the plain run's best weights fine-tuned on each domain alone; its validation and test reports.

    A plain run cached before its weights were kept is trained again beside it (same seed, same result).
    """
    plain = Variant(variant.model)
    plain_dir = cache / spec.key / plain.folder / f"seed{seed}"
    weights = plain_dir / "model.safetensors"
    cfg = run_config(spec, plain, seed, plain_dir / "weights", data_cache, overrides)
    if not weights.exists():
        training.train(dataclasses.replace(cfg, overwrite=True), plain_dir / "weights", data=data)
        weights = plain_dir / "weights" / "model.safetensors"
    shared = training.build_model(cfg, data)
    shared.load_state_dict(read_weights(weights))
    return finetune_reports(cfg, data, shared)


def check_cached(record: RunRecord, spec: DataSpec, variant: Variant, overrides: list[str], path: Path) -> RunRecord:
    """`record` if it was run with these settings; a `ValueError` naming the difference otherwise.

    The cache folder is named by data set, variant and seed only, so a run with other rows, user
    fraction, overrides or a redefined option must not be taken for this one.
    """
    def settings(options: dict) -> dict:
        return {k: v for k, v in options.items() if v is not False}  # a flag added later defaults to False

    cached = {"data options": settings(record.data.options), "overrides": record.overrides,
              "option overrides": record.option_overrides, "variant": record.variant}
    wanted = {"data options": settings(spec.options), "overrides": list(overrides),
              "option overrides": list(variant.overrides), "variant": variant}
    differ = [k for k in cached if cached[k] != wanted[k]]
    if differ:
        raise ValueError(f"{path} was run with other settings ({'; '.join(f'{k}: {cached[k]} there, {wanted[k]} now' for k in differ)}); "
                         "rerun with the same arguments, or give this run another --cache folder.")
    return record


def run_all(specs: list[DataSpec], chosen: dict[str, list[Variant]], seeds: list[int], cache: Path,
            data_cache: DataCache, overrides: list[str], on_run: Optional[Callable[[RunRecord], None]] = None) -> int:
    """Every (data, variant, seed) in order: data set, then variant, then seed. Returns runs trained."""
    trained = 0
    for spec in specs:
        for seed in seeds:  # seed-major inside a data set keeps one loaded data set at a time
            for variant in chosen[spec.key]:
                fresh = not (cache / spec.key / variant.folder / f"seed{seed}" / SUMMARY).exists()
                record = run_one(spec, variant, seed, cache, data_cache, overrides)
                trained += fresh
                if fresh:
                    print(f"{spec.key:<28} {variant.name:<24} seed {seed}: test WAUC {record.test['wauc']:.4f} "
                          f"({record.epochs} epochs, {record.seconds:.0f} s)", flush=True)
                if on_run is not None:
                    on_run(record)
    return trained


# ---------------------------------------------------------------------------------- reproducing the cache
REPRODUCED = "reproduced.json"


def reproduce(results: Path, wanted: list[str], count: int, data_cache: DataCache, sample_seed: int = 0) -> list[dict]:
    """Train `count` recorded runs again from scratch and record how far their test metrics moved.

    The runs are a seeded sample of the records (`<results>/*.jsonl`) of the data keys (or prefixes) in
    `wanted` that were not reproduced before; each is trained with the settings its record names, in a
    temporary folder, with the current code. The outcomes are appended to `<results>/reproduced.json`,
    which the page's appendix reports.
    """
    path = results / REPRODUCED
    earlier = json.loads(path.read_text()) if path.exists() else []
    done = {(r["data"], Variant.from_json(r["variant"]), r["seed"]) for r in earlier}
    candidates = [r for r in read_records(results) if selected(r.data.key, wanted)
                  and (r.data.key, r.variant, r.seed) not in done]
    if not candidates:
        raise ValueError(f"No recorded runs of {wanted} left to reproduce in {results} (runs not reproduced "
                         "before); name data keys that the records hold.")
    picked = np.random.default_rng(sample_seed).choice(len(candidates), size=min(count, len(candidates)),
                                                        replace=False)
    records, commit = [], _commit()
    with tempfile.TemporaryDirectory() as scratch:
        for index in sorted(picked):
            cached = candidates[index]
            check_option(cached)
            rerun = run_one(cached.data, cached.variant, cached.seed, Path(scratch), data_cache, cached.overrides)
            records.append({"data": cached.data.key, "variant": cached.variant.to_json(), "seed": cached.seed,
                            "cached": {k: cached.test[k] for k in ("wauc", "mean_auc")} | {"epochs": cached.epochs},
                            "rerun": {k: rerun.test[k] for k in ("wauc", "mean_auc")} | {"epochs": rerun.epochs},
                            "date": time.strftime("%Y-%m-%d", time.gmtime()), "commit": commit,
                            "threads": torch.get_num_threads()})
            print(f"reproduced {cached.data.key} {cached.variant.name} seed {cached.seed}: test WAUC "
                  f"{cached.test['wauc']:.6f} cached, {rerun.test['wauc']:.6f} now", flush=True)
    write_json_atomic(path, earlier + records)
    return records


def selected(key: str, wanted: list[str]) -> bool:
    """Whether the data key `key` is one of the keys or prefixes in `wanted` (`--data`)."""
    return any(key == w or key.startswith(w) for w in wanted)


def check_option(record: RunRecord) -> None:
    """Refuse to retrain a cached run whose option no longer means the overrides it was run with."""
    if list(record.variant.overrides) != record.option_overrides:
        raise ValueError(f"Option {record.variant.option!r} now means {list(record.variant.overrides)}, but "
                         f"{record.variant.name} ran with {record.option_overrides}; restore the option in OPTIONS.")


def _commit() -> Optional[str]:
    """The git commit of the code that runs (None outside a git checkout)."""
    try:
        found = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    except OSError:  # no git on this machine
        return None
    return found.stdout.strip() if found.returncode == 0 else None


# ---------------------------------------------------------------------------------- command line
def plan(args: argparse.Namespace) -> tuple[list[DataSpec], dict[str, list[Variant]]]:
    """The data sets and, per data set, the variants the arguments select."""
    backbones = models.list_models("backbones")
    quick = args.quick
    rows = args.synthetic_rows or (4000 if quick else DEFAULT_SYNTHETIC_ROWS)
    compositions = args.compositions.split(",")
    specs = synthetic_specs([int(d) for d in args.synthetic_domains.split(",")],
                            [float(e) for e in args.synthetic_effects.split(",")], rows, compositions)
    features = tuple(args.movielens_features.split(","))
    unknown_features = sorted(set(features) - {"ids", "side"})
    if unknown_features:
        raise ValueError(f"--movielens-features {unknown_features} unknown; use ids, side or ids,side.")
    specs += real_specs(args.user_fraction, compositions, args.movielens_domains.split(","), features)
    wanted = args.data.split(",")
    specs = [s for s in specs if selected(s.key, wanted)]
    names = args.models.split(",") if args.models else (["mlp", "deepfm"] if quick else models.list_models())
    unknown = sorted(set(names) - set(models.list_models()))
    if unknown:
        raise ValueError(f"--models {unknown} unknown; choose from {models.list_models()}.")
    modes = args.modes.split(",")
    options = tuple(o for o in args.options.split(",") if o)
    unknown_options = sorted(set(options) - set(OPTIONS))
    if unknown_options:
        raise ValueError(f"--options {unknown_options} unknown; choose from {sorted(OPTIONS)}.")
    divisors = [int(d) for d in args.rank_divisors.split(",")]
    chosen = {}
    for spec in specs:
        found = variants(names, modes, divisors, options, args.headroom)
        if spec.composition != "mixed":  # the composition comparison: plain and joint MLoRA only
            found = [v for v in found if v.mode in ("none", "joint") and not v.is_baseline and not v.option
                     and v.rank_divisor == DEFAULT_DIVISOR and not v.is_popularity]
        if args.headroom and spec.source == "synthetic" and spec.composition == "mixed":
            found.insert(0, Variant(ORACLE))
        chosen[spec.key] = [v for v in found if v.model in backbones or v.is_baseline or v.is_popularity
                            or v.is_oracle]
    return specs, chosen


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: small synthetic data (D=3), ML-100K by gender, mlp and deepfm, mixed batches, 2 seeds, 4 epochs")
    parser.add_argument("--data", default=None,
                        help="comma-separated data keys or prefixes (synthetic, amazon6, ml100k-gender, ...; "
                             "default: all, or synthetic,ml100k-gender with --quick)")
    parser.add_argument("--models", default=None, help="comma-separated zoo models (default: all 15)")
    parser.add_argument("--modes", default="joint,two_stage", help="MLoRA modes beside the plain backbone")
    parser.add_argument("--rank-divisors", default=None,
                        help=f"MLoRA rank divisors to compare on validation (default: {DEFAULT_DIVISOR}, the variants named x+mlora, "
                             f"and the library's default, x+mlora/{DEFAULT_RANK_DIVISOR}; {DEFAULT_DIVISOR} alone with --quick)")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default 0-4, or 0,1 with --quick)")
    parser.add_argument("--synthetic-domains", default="3,10,30", help="synthetic D values")
    parser.add_argument("--synthetic-effects", default="0,0.5,1", help="synthetic domain_effect values")
    parser.add_argument("--synthetic-rows", type=int, default=None, help=f"synthetic rows (default {DEFAULT_SYNTHETIC_ROWS:,}; 4,000 with --quick)")
    parser.add_argument("--movielens-domains", default="gender,age,occupation,genre_group",
                        help="ML-100K domain splits (user side: gender, age, occupation; item side: genre_group)")
    parser.add_argument("--movielens-features", default="ids",
                        help="ML-100K features: ids (the paper's), side (plus user and item attributes), or ids,side")
    parser.add_argument("--options", default="",
                        help=f"named training options, each run on the plain and the MLoRA backbone: {', '.join(OPTIONS)}")
    parser.add_argument("--user-fraction", type=float, default=1.0, help="Amazon-6: share of users kept (per seed)")
    parser.add_argument("--compositions", default="mixed,per_domain",
                        help="training batch compositions (mixed, per_domain, sequential)")
    parser.add_argument("--headroom", action="store_true",
                        help="also score the popularity baseline and fine-tune each plain backbone per domain "
                             "(x+finetune), the headroom a per-domain module could reach")
    parser.add_argument("--override", action="append", default=[],
                        help="extra train.py key=value override for every run (recorded in the page)")
    parser.add_argument("--cache", type=Path, default=ROOT / "runs" / "benchmark",
                        help="work folder: a summary per finished run (so a rerun continues), plain weights")
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="the committed run records (one JSON line per run, per data set) the page is made from")
    parser.add_argument("--page", type=Path, default=ROOT / "docs" / "benchmarks.md", help="the page to write")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--report-only", action="store_true", help="only rewrite the page from the records")
    parser.add_argument("--reproduce", type=int, default=0, metavar="N",
                        help="train N recorded runs of --data again from scratch (a seeded sample), record how far "
                             "their test metrics moved in <results>/reproduced.json, then write the page")
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT, help="folder with ml-100k/ and amazon-2014-5core/")
    args = parser.parse_args(argv)
    if args.data is None:
        args.data = "synthetic,ml100k-gender" if args.quick else "synthetic,ml100k,amazon6"
    if args.seeds is None:
        args.seeds = "0,1" if args.quick else "0,1,2,3,4"
    if args.rank_divisors is None:
        args.rank_divisors = str(DEFAULT_DIVISOR) if args.quick else f"{DEFAULT_DIVISOR},{DEFAULT_RANK_DIVISOR}"
    if args.quick:
        args.override = ["train.max_epochs=4", *args.override]
        if args.synthetic_domains == "3,10,30":
            args.synthetic_domains = "3"
        if args.synthetic_effects == "0,0.5,1":
            args.synthetic_effects = "0,1"
        if args.compositions == "mixed,per_domain":
            args.compositions = "mixed"
    return args


def main(argv: Optional[list[str]] = None) -> Path:
    """Run what the arguments select (skipping cached runs), record them, then write the page. Returns the page."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python -m benchmarks.benchmark " + shlex.join(sys.argv[1:] if argv is None else argv)
    if args.reproduce:
        reproduce(args.results, args.data.split(","), args.reproduce, DataCache(args.data_root, embedding_dim=8))
    elif not args.report_only:
        specs, chosen = plan(args)
        seeds = [int(s) for s in args.seeds.split(",")]
        record_command(args.results, command, args.threads)
        run_all(specs, chosen, seeds, args.cache, DataCache(args.data_root, embedding_dim=8), args.override,
                on_run=lambda record: write_records(args.results, [record]))
    return benchmark_report.write_page(args.results, args.page)


def record_command(results: Path, command: str, threads: int) -> None:
    """Append the command (local folders left out) to `<results>/commands.jsonl`, which the page's appendix lists."""
    line = json.dumps({"command": benchmark_report.public_command(command), "threads": threads,
                       "date": time.strftime("%Y-%m-%d", time.gmtime())}, sort_keys=True)
    results.mkdir(parents=True, exist_ok=True)
    with open(results / COMMANDS, "a") as handle:
        handle.write(line + "\n")


if __name__ == "__main__":
    main()
