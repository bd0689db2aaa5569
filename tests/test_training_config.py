"""`TrainConfig` loading: every existing config file and override, ranges and types checked before any data
is read, unknown keys refused; the recipes are thin command lines and nothing loads code by path."""

import re
import subprocess
import sys
import time

import pytest

from mlora_peft import training
from tests.test_recipe import DEFAULT, ENV, ROOT, TINY

CONFIGS = sorted(p for p in (ROOT / "recipes" / "configs").glob("*.yaml") if not p.name.startswith("accelerate"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_loads(path):
    cfg = training.load_config(path, ["data.path=/data"])
    assert cfg.train.batch_size >= 1 and cfg.mlora.mode in training.STAGES


def test_the_readme_overrides_and_text_values_are_read_as_written():
    cfg = training.load_config(DEFAULT, ["mlora.mode=two_stage", "train.lr=3e-4", "train.mixed_precision=no",
                                         "hub.push_to_hub=team/tiny", "data.path=2024", "data.label=rating>3",
                                         "model.options={cross_layers: 3}", "mlora.r=null", "overwrite=true"])
    assert (cfg.mlora.mode, cfg.train.lr, cfg.train.mixed_precision) == ("two_stage", 3e-4, "no")
    assert (cfg.hub.push_to_hub, cfg.data.path, cfg.data.label) == ("team/tiny", "2024", "rating>3")
    assert cfg.model.options == {"cross_layers": 3} and cfg.mlora.r is None and cfg.overwrite is True


@pytest.mark.parametrize("override, message", [
    ("train.batch_size=0", "train.batch_size=0 is not allowed; use an integer >= 1."),
    ("train.checkpoint_every=-1", "train.checkpoint_every=-1 is not allowed; use an integer >= 0."),
    ("train.gradient_accumulation_steps=0", "train.gradient_accumulation_steps=0 is not allowed; use an integer >= 1."),
    ("train.max_epochs=0", "train.max_epochs=0 is not allowed; use an integer >= 1."),
    ("train.patience=0", "train.patience=0 is not allowed; use an integer >= 1."),
    ("train.keep_checkpoints=0", "train.keep_checkpoints=0 is not allowed; use an integer >= 1."),
    ("train.lr=-1", "train.lr=-1 is not allowed; use a number > 0."),
    ("train.lr=.inf", "train.lr=inf is not allowed; use a number > 0."),
    ("train.seed=-3", "train.seed=-3 is not allowed; use an integer >= 0."),
    ("train.batch_size=2.5", "train.batch_size=2.5 must be an integer."),
    ("train.mixed_precision=fp8", "train.mixed_precision='fp8' is not allowed; use one of ['no', 'bf16', 'fp16']."),
    ("train.resume=maybe", "train.resume='maybe' is not allowed; use true or false."),
    ("data.rows=0", "data.rows=0 is not allowed; use an integer >= 1."),
    ("data.num_domains=0", "data.num_domains=0 is not allowed; use an integer >= 1."),
    ("data.imbalance=0", "data.imbalance=0 is not allowed; use a number > 0."),
    ("data.sparse=user", "data.sparse='user' is not allowed; use a list of strings, e.g. data.sparse=[...]."),
    ("model.embedding_dim=0", "model.embedding_dim=0 is not allowed; use an integer >= 1."),
    ("model.hidden=[32,0]", "model.hidden=[32, 0] (item 0) is not allowed; use an integer >= 1."),
    ("model.dropout=1", "model.dropout=1 is not allowed; use a number in [0, 1)."),
    ("mlora.r=0", "mlora.r=0 is not allowed; use an integer >= 1."),
    ("mlora.dropout=-0.1", "mlora.dropout=-0.1 is not allowed; use a number in [0, 1)."),
    ("mlora.r=null", None),
    ("train=5", "train=5 is not allowed: it is a section of keys; set them one by one, e.g. train.lr=..."),
    ("data=[1, 2]", "data=[1, 2] is not allowed: it is a section of keys; set them one by one, e.g. data.source=..."),
    ("train.lr.x=1", "train.lr=0.003 is not a section, so train.lr.x cannot be set; fix the config file."),
    ("compare_with_plain=3", "compare_with_plain=3 is not allowed; use true or false."),
    ("trian.lr=1", "Unknown config key(s) ['trian']"),
])
def test_bad_values_name_the_dotted_key_and_the_accepted_range(override, message):
    if message is None:  # both rank settings unset
        with pytest.raises(ValueError, match="mlora.r and mlora.rank_divisor are both null"):
            training.load_config(TINY, [override, "mlora.rank_divisor=null"])
        return
    with pytest.raises(ValueError) as raised:
        training.load_config(TINY, [override])
    assert str(raised.value).startswith(message)


def test_the_command_line_refuses_a_bad_config_before_reading_data():
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "recipes" / "train.py"), "--config", str(TINY), "train=5"],
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert done.returncode == 2 and "train=5 is not allowed: it is a section of keys" in done.stderr
    assert "resolved config" not in done.stdout and time.perf_counter() - start < 60


def test_the_command_line_refuses_a_folder_holding_another_run(tmp_path):
    (tmp_path / "log.jsonl").write_text("{}\n")
    done = subprocess.run([sys.executable, str(ROOT / "recipes" / "train.py"), "--config", str(TINY),
                           f"output_dir={tmp_path}"], capture_output=True, text=True, env=ENV, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"output_dir {tmp_path} holds another run's files (['log.jsonl'])" in done.stderr
    assert "train.resume=true" in done.stderr and "overwrite=true" in done.stderr
    assert (tmp_path / "log.jsonl").read_text() == "{}\n"


def test_recipes_are_thin_command_lines():
    for name in ("train.py", "evaluate.py"):
        text = (ROOT / "recipes" / name).read_text()
        assert len(text.splitlines()) <= 150 and "from mlora_peft.training import" in text


def test_nothing_loads_code_by_path_or_edits_sys_path():
    pattern = re.compile(r"spec_from_file_location|exec_module|sys\.path\.(insert|append)|run_path|"
                         r"SourceFileLoader|from train import|import train\b")
    found = [f"{path.relative_to(ROOT)}:{number}"
             for folder in ("recipes", "tests", "docs", "benchmarks", "mlora_peft")
             for path in sorted((ROOT / folder).rglob("*.py")) if path.name != "test_training_config.py"
             for number, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert found == []


@pytest.mark.parametrize("module", ["config", "build", "loop", "checkpoint", "run_dir", "runs", "diagnose"])
def test_training_doctests_pass(module, tmp_path, monkeypatch):
    import doctest
    import importlib

    monkeypatch.chdir(tmp_path)
    result = doctest.testmod(importlib.import_module(f"mlora_peft.training.{module}"),
                             optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
