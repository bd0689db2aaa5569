"""Training end to end through `mlora_peft.training`, and the recipes as command lines: every mode, resume
after SIGKILL, and two processes."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.numpy import load_file
from sklearn.metrics import log_loss, roc_auc_score

import mlora_peft
from mlora_peft import training

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "configs" / "tiny.yaml"
DEFAULT = ROOT / "recipes" / "configs" / "default.yaml"
# A recipe run as a subprocess imports the same mlora_peft as this test (not another installed copy).
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(mlora_peft.__file__).parents[1]),
                                                    os.environ.get("PYTHONPATH", "")])}


def _check_against_sklearn(run_dir: Path) -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    predictions = load_file(str(run_dir / "test_predictions.safetensors"))
    labels, probs, domains = predictions["label"], predictions["probability"], predictions["domain_id"]
    total = 0.0
    for index, (name, row) in enumerate(results["per_domain"].items()):
        mask = domains == index
        assert row["rows"] == mask.sum() and row["positives"] == labels[mask].sum()
        assert row["auc"] == pytest.approx(roc_auc_score(labels[mask], probs[mask]), abs=1e-9)
        assert row["logloss"] == pytest.approx(log_loss(labels[mask], probs[mask]), abs=1e-5)
        total += row["auc"] * row["rows"]
    assert results["wauc"] == pytest.approx(total / len(labels), abs=1e-9)
    assert results["logloss"] == pytest.approx(log_loss(labels, probs), abs=1e-5)
    return results


@pytest.mark.parametrize("mode", ["joint", "two_stage", "none"])
def test_each_mode_writes_a_report_that_sklearn_confirms(tmp_path, mode):
    cfg = training.load_config(TINY, [f"output_dir={tmp_path}", f"mlora.mode={mode}", "train.max_epochs=2"])
    returned = training.run(cfg)
    results = _check_against_sklearn(tmp_path)
    assert results["wauc"] == pytest.approx(returned["wauc"])
    assert set(results) >= {"wauc", "mean_auc", "logloss", "per_domain", "config", "params"}
    for row in results["per_domain"].values():
        assert set(row) == {"auc", "logloss", "rows", "positives"}
    assert results["config"]["mlora"]["mode"] == mode
    assert (results["params"]["adapters"] > 0) == (mode != "none")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists() == (mode != "none")
    assert (tmp_path / "per_domain_auc.png").read_bytes()[:4] == b"\x89PNG"
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert {"eval/domain_0/auc", "eval/wauc", "train/loss"} <= set(logged[0])


def test_two_stage_first_stage_is_the_plain_model(tmp_path):
    """Stage 1 trains the shared model exactly as the plain run does (adapters are inert)."""
    cfg = training.load_config(TINY, [f"output_dir={tmp_path}", "mlora.mode=two_stage", "train.max_epochs=2",
                                   "compare_with_plain=true"])
    training.run(cfg)
    staged = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines() if '"shared"' in x]
    plain = [json.loads(x) for x in (tmp_path / "plain" / "log.jsonl").read_text().splitlines()]
    assert [r["eval/wauc"] for r in staged] == pytest.approx([r["eval/wauc"] for r in plain], abs=1e-6)


def test_unknown_config_key_is_an_error():
    with pytest.raises(ValueError, match=r"Unknown config key\(s\) \['train.learning_rate'\]"):
        training.load_config(TINY, ["train.learning_rate=1"])


def _launch(args: list[str], processes: int = 1, script: str = "train") -> list[str]:
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes),
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    if processes > 1:
        launcher += ["--multi_gpu", "--main_process_port", str(_free_port())]
    if script != "train":
        return launcher + [str(ROOT / "recipes" / f"{script}.py"), *args]
    return launcher + [str(ROOT / "recipes" / "train.py"), "--config", str(TINY), "compare_with_plain=false", *args]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_resume_after_sigkill_ends_with_the_same_results(tmp_path):
    common = ["mlora.mode=two_stage", "train.max_epochs=3", "train.checkpoint_every=4", "train.batch_size=128"]
    subprocess.run(_launch([f"output_dir={tmp_path / 'whole'}", *common]), check=True, capture_output=True, env=ENV)

    killed = tmp_path / "killed"
    process = subprocess.Popen(_launch([f"output_dir={killed}", *common]), start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.time() + 120
    while not list((killed / "checkpoints").glob("step_000000012")) and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "results.json").exists(), "the run finished before it could be killed"
    subprocess.run(_launch([f"output_dir={killed}", *common, "train.resume=true"]), check=True, capture_output=True, env=ENV)

    whole = json.loads((tmp_path / "whole" / "results.json").read_text())
    resumed = json.loads((killed / "results.json").read_text())
    assert resumed["wauc"] == whole["wauc"] and resumed["logloss"] == whole["logloss"]
    assert resumed["per_domain"] == whole["per_domain"]


def _even_split() -> tuple[int, int]:
    """A data size and a batch size (even, >= 64) that divides its train split: no uneven last batch."""
    for total in range(3000, 3100):
        rows = training.load_data(training.load_config(TINY, [f"data.rows={total}"])).splits["train"].num_rows
        batch = next((b for b in range(256, 63, -4) if rows % b == 0), None)
        if batch:
            return total, batch
    raise AssertionError("no data size in 3000..3099 has an even batch size")


def test_two_processes_match_one(tmp_path):
    total, batch = _even_split()
    common = ["mlora.mode=joint", "train.max_epochs=2", f"train.batch_size={batch}", f"data.rows={total}",
              "compare_with_plain=true"]  # two models in one launch: the process group outlives the first
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(_launch([f"output_dir={one}", *common]), check=True, capture_output=True, env=ENV)
    run = subprocess.run(_launch([f"output_dir={two}", *common], processes=2), capture_output=True, text=True, timeout=600,
                         env=ENV)
    assert run.returncode == 0, run.stderr[-3000:]
    for model in (".", "plain"):
        a, b = (json.loads((d / model / "results.json").read_text()) for d in (one, two))
        assert (a["processes"], b["processes"]) == (1, 2)  # two processes that share the data, not two lone runs
        assert b["wauc"] == pytest.approx(a["wauc"], abs=1e-4)
        for name in a["per_domain"]:
            assert b["per_domain"][name]["auc"] == pytest.approx(a["per_domain"][name]["auc"], abs=1e-4)
            assert b["per_domain"][name]["rows"] == a["per_domain"][name]["rows"]
    b = json.loads((two / "results.json").read_text())

    evaluated = subprocess.run(_launch([str(two)], processes=2, script="evaluate"), capture_output=True, text=True,
                               timeout=300, env=ENV)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    wauc_lines = [line.split() for line in evaluated.stdout.splitlines() if line.startswith("WAUC")]
    assert len(wauc_lines) == 1, evaluated.stdout
    assert float(wauc_lines[0][1]) == pytest.approx(b["wauc"], abs=1e-4)  # printed once


@pytest.mark.slow
def test_fsdp_config_on_two_cpu_processes_matches_one_process(tmp_path):
    """recipes/configs/accelerate_fsdp.yaml launched on 2 CPU processes ends like 1 process on the same global batch.

    accelerate engages FSDP on GPUs only; on CPUs it runs the config as data parallel and the recipe says so.
    """
    total, batch = _even_split()
    common = ["mlora.mode=joint", "train.max_epochs=2", f"train.batch_size={batch}", f"data.rows={total}"]
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(_launch([f"output_dir={one}", *common]), check=True, capture_output=True, env=ENV)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(ROOT / "recipes" / "configs" / "accelerate_fsdp.yaml"), "--num_processes", "2",
              "--main_process_port", str(_free_port()), str(ROOT / "recipes" / "train.py"), "--config", str(TINY),
              "compare_with_plain=false", f"output_dir={two}", *common]
    done = subprocess.run(launch, capture_output=True, text=True, timeout=600,
                          env={**ENV, "ACCELERATE_USE_CPU": "true"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "engages FSDP on GPUs only" in done.stderr
    a, b = (json.loads((d / "results.json").read_text()) for d in (one, two))
    assert (a["processes"], b["processes"], b["distributed_type"]) == (1, 2, "MULTI_CPU")
    assert b["wauc"] == pytest.approx(a["wauc"], abs=1e-6)
    for name, row in a["per_domain"].items():
        assert b["per_domain"][name]["auc"] == pytest.approx(row["auc"], abs=1e-6)


@pytest.mark.parametrize("mode", ["joint", "none"])
def test_evaluate_reproduces_the_saved_report(tmp_path, mode):
    subprocess.run(_launch([f"output_dir={tmp_path}", f"mlora.mode={mode}", "train.max_epochs=1"]), check=True,
                   capture_output=True, env=ENV)
    from accelerate import Accelerator

    report = training.evaluate_run(tmp_path, "test", Accelerator())
    saved = json.loads((tmp_path / "results.json").read_text())
    assert report["wauc"] == pytest.approx(saved["wauc"], abs=1e-7)
    for name, row in saved["per_domain"].items():
        assert report["per_domain"][name]["auc"] == pytest.approx(row["auc"], abs=1e-7)


def test_push_to_hub_after_training_uploads_the_per_domain_layout(tmp_path):
    from tests.hub_server import HubServer

    with HubServer() as hub:
        env = {**ENV, "HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_loopback_test_token",
               "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1"}
        subprocess.run(_launch([f"output_dir={tmp_path / 'run'}", "train.max_epochs=1", "hub.push_to_hub=team/tiny"]),
                       check=True, capture_output=True, env=env)
    pushed = list(hub.repos["team/tiny"].commits.values())[-1]
    assert {"adapter_config.json", "adapter_model.safetensors", "data_encoder.json", "feature_spec.json",
            "README.md", "domains/domain_0/adapter_model.safetensors"} <= set(pushed)
    saved = tmp_path / "run" / "adapter"
    assert pushed["domains/domain_1/adapter_model.safetensors"] == (
        saved / "domains" / "domain_1" / "adapter_model.safetensors").read_bytes()


SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.mark.parametrize("name, domains", [("movielens_gender", 2), ("movielens_age", 7)])
def test_paper_protocol_configs_load_their_data(name, domains):
    if not (SHARED_DATA / "ml-100k" / "u.data").exists():
        pytest.skip(f"MovieLens-100K is not at {SHARED_DATA / 'ml-100k'} (the shared data folder)")
    cfg = training.load_config(ROOT / "recipes" / "configs" / f"{name}.yaml", [f"data.path={SHARED_DATA / 'ml-100k'}"])
    data = training.load_data(cfg)
    assert data.num_domains == domains
    assert sum(data.splits[s].num_rows for s in data.splits) == 100_000


def test_amazon6_config_parses():
    cfg = training.load_config(ROOT / "recipes" / "configs" / "amazon6.yaml", [])
    assert (cfg.data.source, cfg.model.name, cfg.mlora.mode) == ("amazon", "mlp", "joint")


def test_gradient_accumulation_equals_the_full_batch(tmp_path):
    """Two accumulated half batches give the full batch's step (tiny.yaml has no dropout)."""
    total, batch = _even_split()
    common = [f"data.rows={total}", "train.max_epochs=2", "compare_with_plain=false"]
    full = training.run(training.load_config(TINY, [*common, f"output_dir={tmp_path / 'full'}", f"train.batch_size={batch}"]))
    halves = training.run(training.load_config(TINY, [*common, f"output_dir={tmp_path / 'acc'}",
                                                 f"train.batch_size={batch // 2}",
                                                 "train.gradient_accumulation_steps=2"]))
    # float32 sums run in another order over two halves; two epochs carry that to ~2e-5 (a wrong
    # accumulation scale moves these by orders of magnitude more)
    assert halves["wauc"] == pytest.approx(full["wauc"], abs=1e-4)
    assert halves["logloss"] == pytest.approx(full["logloss"], abs=1e-4)


@pytest.mark.parametrize("composition", ["per_domain", "sorted"])
def test_batch_compositions_train(tmp_path, composition):
    results = training.run(training.load_config(TINY, [f"output_dir={tmp_path}", f"data.composition={composition}",
                                                  "train.max_epochs=2"]))
    assert results["config"]["data"]["composition"] == composition
    assert results["wauc"] > 0.5


@pytest.mark.parametrize("override, match", [
    ("mlora.mode=stage2", r"mlora.mode='stage2' is not allowed; use one of \['joint', 'two_stage', 'none'\]"),
    ("train.early_stopping_metric=auc", r"train.early_stopping_metric='auc' is not allowed"),
    ("data.composition=random", r"data.composition='random' is not allowed"),
])
def test_bad_config_values_name_the_allowed_ones(override, match):
    with pytest.raises(ValueError, match=match):
        training.load_config(TINY, [override])
