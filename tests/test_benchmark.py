"""The benchmark (benchmarks/benchmark.py): cached runs are reused, an interrupted run restarts, every run is
recorded in benchmarks/results/, and the page comes from those records alone."""

import importlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.records import DataSpec, RunRecord, Variant, read_records, write_records
from mlora_peft import MultiDomainLoraLayer
from mlora_peft.metrics import roc_auc

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def benchmark():
    from benchmarks import benchmark

    return benchmark


def _tiny_args(tmp_path: Path) -> list[str]:
    return ["--quick", "--data", "synthetic", "--synthetic-rows", "600", "--models", "mlp", "--modes", "joint",
            "--seeds", "0", "--threads", "1", "--cache", str(tmp_path / "cache"),
            "--results", str(tmp_path / "results"), "--page", str(tmp_path / "docs" / "benchmarks.md"),
            "--override", "model.hidden=[16]", "--override", "train.batch_size=128",
            "--override", "train.max_epochs=2"]


def _count_training(benchmark, monkeypatch) -> list:
    calls = []
    real = benchmark.training.train

    def counting(cfg, out_dir, data=None):
        calls.append(out_dir)
        return real(cfg, out_dir, data=data)

    monkeypatch.setattr(benchmark.training, "train", counting)
    return calls


def test_quick_run_caches_continues_and_writes_the_page_from_the_records(benchmark, tmp_path, monkeypatch):
    args = _tiny_args(tmp_path)
    calls = _count_training(benchmark, monkeypatch)
    page = benchmark.main(args)
    summaries = sorted((tmp_path / "cache").glob("*/*/seed*/summary.json"))
    assert len(calls) == len(summaries) == 4  # 2 synthetic data sets x (mlp, mlp+mlora) x 1 seed
    first = json.loads(summaries[0].read_text())
    assert set(first) >= {"test", "validation", "epochs", "seconds", "params", "seed", "variant"}
    assert 1 <= first["epochs"] <= 2 and first["seconds"] > 0
    records = read_records(tmp_path / "results")  # every run recorded, one JSON line each, a file per data set
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == [
        "commands.jsonl", "synthetic-D3-effect0-0.6k.jsonl", "synthetic-D3-effect1-0.6k.jsonl"]
    in_cache = [json.loads(p.read_text()) for p in summaries]
    assert len(records) == 4 and all(r.to_json() in in_cache for r in records)

    calls.clear()  # everything cached: nothing trains again
    benchmark.main(args)
    assert calls == []

    interrupted = summaries[0].parent  # a run killed before its summary: its folder stays, without summary.json
    summaries[0].unlink()
    (interrupted / "log.jsonl").write_text('{"partial": true}\n')
    benchmark.main(args)
    assert calls == [interrupted]
    assert json.loads(summaries[0].read_text())["test"] == first["test"]  # same seed, same data, same result

    text = page.read_text()
    assert "do not edit by hand" in text and "## Detail: synthetic-D3-effect1-0.6k" in text
    for key in ("synthetic-D3-effect0-0.6k", "synthetic-D3-effect1-0.6k"):
        assert (page.parent / "images" / f"benchmark_{key}.png").exists()
    runs = [r for r in records if r.data.key == "synthetic-D3-effect1-0.6k" and r.variant == Variant("mlp")]
    assert f"| mlp | 1 | {runs[0].test['wauc']:.4f} ±" in text

    shutil.rmtree(tmp_path / "cache")  # the page needs the records only
    results = tmp_path / "results" / "synthetic-D3-effect1-0.6k.jsonl"
    edited = [json.loads(line) for line in results.read_text().splitlines()]
    edited[0]["test"]["wauc"] = 0.123456
    results.write_text("".join(json.dumps(r) + "\n" for r in edited))
    benchmark.main([*args, "--report-only"])
    assert "0.1235" in page.read_text()
    assert calls == [interrupted]


def test_headroom_adds_popularity_the_oracle_and_a_finetune_that_starts_from_the_plain_runs_weights(
        benchmark, tmp_path, monkeypatch):
    """With no fine-tuning epoch beating it, `mlp+finetune` must score exactly what the plain run's weights score."""
    diagnose = importlib.import_module("mlora_peft.training.diagnose")  # the module (the package exports a function)
    monkeypatch.setattr(diagnose, "_finetune_domain", lambda *args, **kwargs: None)
    benchmark.main([*_tiny_args(tmp_path), "--data", "synthetic-D3-effect1", "--headroom"])
    runs = {r.variant.name: r for r in read_records(tmp_path / "results")}
    assert sorted(runs) == ["mlp", "mlp+finetune", "mlp+mlora", "oracle", "popularity"]
    assert runs["mlp+finetune"].test == runs["mlp"].test
    assert runs["popularity"].epochs == runs["oracle"].epochs == 0
    assert runs["oracle"].test["wauc"] > runs["mlp"].test["wauc"]  # the generator's own probability


def test_records_merge_by_run_and_a_broken_line_is_named(tmp_path):
    spec = DataSpec("d", "d", "synthetic")
    first = [RunRecord(spec, Variant("mlp"), seed, ["a"], {"wauc": 0.7}, {}, 1, 1.0) for seed in (1, 0)]
    write_records(tmp_path, first)
    again = RunRecord(spec, Variant("mlp"), 1, ["a"], {"wauc": 0.8}, {}, 1, 1.0)
    write_records(tmp_path, [again])
    assert [(r.seed, r.test["wauc"]) for r in read_records(tmp_path)] == [(0, 0.7), (1, 0.8)]  # sorted, replaced
    assert [p.name for p in tmp_path.iterdir()] == ["d.jsonl"]  # no temporary file left
    with open(tmp_path / "d.jsonl", "a") as handle:
        handle.write("{not json\n")
    with pytest.raises(ValueError, match="d.jsonl:3 is not a benchmark run record"):
        read_records(tmp_path)


def _made_up_records() -> list[RunRecord]:
    spec = DataSpec("ml100k-gender", "ML-100K by gender", "movielens", {"domain": "gender"})
    found = []
    for seed in (0, 1):
        for variant, wauc in ((Variant("popularity"), 0.70), (Variant("mlp"), 0.78), (Variant("mlp", "joint"), 0.781),
                              (Variant("mlp", "finetune"), 0.782)):
            per_domain = {"F": {"auc": wauc, "rows": 5}, "M": {"auc": wauc, "rows": 7}}
            found.append(RunRecord(spec, variant, seed, ["F", "M"], {"wauc": wauc + 0.001 * seed, "mean_auc": wauc,
                                   "per_domain": per_domain}, {"mean_auc": wauc}, 3, 1.0))
    return found


def test_the_page_answers_first_and_is_the_same_bytes_from_a_copy_of_the_records(tmp_path):
    """A slice of the committed records (made-up ones while none are committed): the headline table, the bullets
    and the figure sit within the first 40 lines; a second folder with the same records writes the same bytes."""
    from benchmarks.benchmark import RESULTS
    from benchmarks.benchmark_report import write_page

    records = [r for r in read_records(RESULTS) if r.data.key.startswith(("amazon6", "ml100k-gender"))]
    pages = []
    for name in ("one", "two"):
        write_records(tmp_path / name / "results", records or _made_up_records())
        pages.append(write_page(tmp_path / name / "results", tmp_path / name / "docs" / "benchmarks.md").read_bytes())
    assert pages[0] == pages[1]
    text = pages[0].decode()
    lines = text.splitlines()
    first_table = next(i for i, line in enumerate(lines) if line.startswith("| data | backbone | popularity"))
    assert first_table < 40 and "**When does MLoRA help?**" in lines[:40]
    assert any(line.startswith("![") for line in lines[:40])
    assert str(tmp_path) not in text and "/tmp/" not in text and "this machine" not in text


def test_the_committed_page_is_what_the_committed_records_write(tmp_path):
    from benchmarks.benchmark import RESULTS
    from benchmarks.benchmark_report import write_page

    if not list(RESULTS.glob("*.jsonl")):
        pytest.skip("no benchmark records are committed yet (benchmarks/results/)")
    written = write_page(RESULTS, tmp_path / "benchmarks.md")
    assert written.read_text() == (ROOT / "docs" / "benchmarks.md").read_text(), (
        "docs/benchmarks.md is not what benchmarks/results/ writes: run python -m benchmarks.benchmark --report-only")


def test_reproduce_trains_recorded_runs_again_and_the_page_reports_how_far_they_moved(benchmark, tmp_path, monkeypatch):
    args = _tiny_args(tmp_path)
    benchmark.main([*args, "--data", "synthetic-D3-effect1"])
    results = tmp_path / "results" / "synthetic-D3-effect1-0.6k.jsonl"
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(lines) == 2  # mlp and mlp+mlora
    lines[0]["test"]["wauc"] += 0.01  # as if the code had changed since this run
    results.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in lines))
    before = results.read_text()
    calls = _count_training(benchmark, monkeypatch)

    page = benchmark.main([*args, "--data", "synthetic-D3-effect1", "--reproduce", "5"])
    assert len(calls) == 2 and all(tmp_path / "cache" not in Path(c).parents for c in calls)  # trained apart
    assert results.read_text() == before  # the records are not touched
    records = json.loads((tmp_path / "results" / "reproduced.json").read_text())
    assert sorted((r["data"], Variant.from_json(r["variant"]).name, r["seed"]) for r in records) == [
        ("synthetic-D3-effect1-0.6k", "mlp", 0), ("synthetic-D3-effect1-0.6k", "mlp+mlora", 0)]
    moved = sorted(r["rerun"]["wauc"] - r["cached"]["wauc"] for r in records)
    assert moved[0] == pytest.approx(-0.01, abs=1e-9) and moved[1] == 0.0  # same seed, same code: same numbers
    assert "1 of 2 recorded runs trained again from scratch reproduce their test WAUC within 1e-06" in page.read_text()

    with pytest.raises(ValueError, match="No recorded runs of \\['amazon6'\\] left to reproduce"):
        benchmark.main([*args, "--data", "amazon6", "--reproduce", "1"])
    with pytest.raises(ValueError, match="left to reproduce"):  # both were reproduced already
        benchmark.main([*args, "--data", "synthetic-D3-effect1", "--reproduce", "1"])


def test_options_run_on_the_plain_and_the_mlora_backbone_and_are_paired_on_the_page(benchmark, tmp_path, monkeypatch):
    monkeypatch.setitem(benchmark.OPTIONS, "slow_lr", ("train.lr=0.0003",))
    args = [*_tiny_args(tmp_path), "--data", "synthetic-D3-effect1", "--options", "slow_lr"]
    page = benchmark.main(args)
    cache = tmp_path / "cache" / "synthetic-D3-effect1-0.6k"
    assert sorted(p.name for p in cache.iterdir() if p.is_dir()) == ["mlp", "mlp+mlora", "mlp+mlora[slow_lr]",
                                                                      "mlp[slow_lr]"]
    runs = {p.parent.parent.name: json.loads(p.read_text()) for p in cache.glob("*/seed0/summary.json")}
    assert runs["mlp[slow_lr]"]["variant"] == {"model": "mlp", "mode": "none", "rank_divisor": 16, "option": "slow_lr"}
    assert "lr: 0.0003" in (cache / "mlp+mlora[slow_lr]" / "seed0" / "config.yaml").read_text()
    assert "lr: 0.001" in (cache / "mlp+mlora" / "seed0" / "config.yaml").read_text()
    expected = runs["mlp+mlora[slow_lr]"]["test"]["wauc"] - runs["mlp[slow_lr]"]["test"]["wauc"]
    row = next(line for line in page.read_text().splitlines() if line.startswith("| mlp | slow_lr |"))
    assert f"{expected:+.4f} ± 0.0000" in row.split("|")[5]
    assert "- `slow_lr`: `train.lr=0.0003`" in page.read_text()
    with pytest.raises(ValueError, match="--options"):
        benchmark.main([*args[:-1], "no_such_option"])


def test_a_cached_run_with_other_settings_is_refused_not_reused(benchmark, tmp_path):
    args = [*_tiny_args(tmp_path), "--data", "synthetic-D3-effect1"]
    benchmark.main(args)
    with pytest.raises(ValueError, match="other settings.*overrides"):
        benchmark.main([*args, "--override", "train.lr=0.01"])
    summary = tmp_path / "cache" / "synthetic-D3-effect1-0.6k" / "mlp" / "seed0" / "summary.json"
    edited = json.loads(summary.read_text())
    edited["data"]["options"]["domain_effect"] = 0.5  # as if the folder held a run of other data
    summary.write_text(json.dumps(edited))
    with pytest.raises(ValueError, match="other settings.*data options"):
        benchmark.main(args)


def test_an_option_of_another_mode_runs_with_that_mode(benchmark):
    """`keep_shared` only changes two-stage training: it adds `mlp+two_stage[keep_shared]` and no plain run."""
    found = {v.name: v for v in benchmark.variants(["mlp"], ["joint"], [16], ("keep_shared",))}
    assert sorted(found) == ["mlp", "mlp+mlora", "mlp+two_stage[keep_shared]"]
    chosen = found["mlp+two_stage[keep_shared]"]
    assert (chosen.mode, chosen.overrides) == ("two_stage", ("mlora.keep_shared_if_better=true",))


def test_the_synthetic_oracle_scores_the_very_test_rows_the_models_are_scored_on(benchmark):
    from mlora_peft.data import make_synthetic

    options = {"num_domains": 3, "rows": 3000, "domain_effect": 1.0, "imbalance": 2.0}
    trained_on = make_synthetic(num_domains=3, rows=3000, domain_effect=1.0, imbalance=2.0, seed=4).splits["test"]
    with_oracle = benchmark.synthetic_with_oracle(options, seed=4).splits["test"]
    for column in ("label", "domain_id"):
        assert np.array_equal(np.asarray(trained_on[column]), np.asarray(with_oracle[column]))
    standardised, raw = np.asarray(trained_on["price"]), np.asarray(with_oracle["price"])
    assert np.corrcoef(standardised, raw)[0, 1] > 0.999999  # the same rows, in the same order
    oracle = benchmark.synthetic_oracle(options, seed=4)["test"]
    by_hand = [roc_auc(np.asarray(with_oracle["label"])[mask], np.asarray(with_oracle["oracle"])[mask])
               for mask in (np.asarray(with_oracle["domain_id"]) == d for d in range(3))]
    sizes = np.bincount(np.asarray(with_oracle["domain_id"]), minlength=3)
    assert oracle["wauc"] == pytest.approx(float(np.dot(by_hand, sizes) / sizes.sum()))


def test_step_and_serving_benchmark_compares_equal_models():
    """bench_step_serving times MLoRA against the same DeepFM: fresh adapters leave the outputs unchanged."""
    from peft.tuners.lora import LoraLayer

    from benchmarks.bench_step_serving import deepfm_pair, make_batch, peft_lora_like

    plain, adapted = deepfm_pair(10, "cpu")
    lora = peft_lora_like(adapted, 10, "cpu")
    batch = make_batch(64, 10, "cpu")
    plain.eval(), adapted.eval(), lora.eval()
    with torch.inference_mode():
        torch.testing.assert_close(adapted(batch), plain(batch))
        torch.testing.assert_close(lora(batch), plain(batch))
        one_domain = make_batch(64, 10, "cpu", one_domain=True)
        torch.testing.assert_close(adapted(one_domain), plain(one_domain))
    lora_ranks = {name: m.r["default"] for name, m in lora.named_modules() if isinstance(m, LoraLayer)}
    mlora_ranks = {name: m.rank["default"] for name, m in adapted.named_modules()
                   if isinstance(m, MultiDomainLoraLayer)}
    assert lora_ranks == mlora_ranks and len(lora_ranks) == 3  # the same layers, at the same ranks
    assert all(p.requires_grad for p in lora.parameters())  # its base trains too, as in the MLoRA step


def test_the_page_shows_commands_without_the_folders_of_the_machine_that_ran_them():
    from benchmarks.benchmark_report import public_command

    command = ("python -m benchmarks.benchmark --page /srv/p.md --data ml100k --cache=/srv/cache "
               "--results /srv/r --out runs/benchmark/speed --seeds 0,1")
    assert public_command(command) == "python -m benchmarks.benchmark --data ml100k --out runs/benchmark/speed --seeds 0,1"


def test_speed_verdict_needs_three_rounds_in_four():
    """A target is met or missed only beyond the rounds' quartiles; in between the benchmark says so."""
    from benchmarks.timing import Spread

    spread = Spread.of([1.4, 1.0, 1.2, 1.3, 1.1])  # quartiles by hand: 1.05, 1.2, 1.35
    assert spread == pytest.approx(Spread(median=1.2, low=1.05, high=1.35))
    assert str(spread) == "1.20x (1.05-1.35)"
    assert spread.verdict(1.4).endswith("met")
    assert spread.verdict(1.0).endswith("MISSED")
    assert spread.verdict(1.2).endswith("within noise")
    assert spread.verdict(None) == ""
