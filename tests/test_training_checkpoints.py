"""Checkpoints of `mlora_peft.training`: safetensors + JSON only, never unpickled, refused when the settings
changed, skipped with a warning when broken; one run per output folder; the log holds each epoch once."""

import json
import pickle
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from torch import nn

from mlora_peft import training
from mlora_peft.training import checkpoint as ckpt
from tests.test_recipe import ROOT, TINY

COMMON = ["mlora.mode=two_stage", "train.max_epochs=2", "train.patience=2", "train.batch_size=256",
          "train.checkpoint_every=5", "train.keep_checkpoints=100", "data.rows=1500"]
MARKER_NAME = "payload_ran"


class Payload:
    """Unpickling this writes a marker file: proof that a loader executed code from a checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def _train(folder: Path, *extra: str) -> dict:
    return training.train(training.load_config(TINY, [*COMMON, f"output_dir={folder}", *extra]), folder)


def _log(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> Path:
    """An uninterrupted two-stage run that kept every checkpoint."""
    folder = tmp_path_factory.mktemp("whole") / "run"
    _train(folder)
    return folder


def _interrupted(whole: Path, tmp_path: Path, keep: int) -> Path:
    """A copy of `whole` as a SIGKILL leaves it after its first `keep` checkpoints (full log, no results)."""
    folder = tmp_path / "killed"
    shutil.copytree(whole, folder)
    (folder / "results.json").unlink()
    for late in training.complete_checkpoints(folder)[keep:]:
        shutil.rmtree(late)
    return folder


def _same_results(a: Path, b: Path) -> None:
    first, second = (json.loads((d / "results.json").read_text()) for d in (a, b))
    assert second["per_domain"] == first["per_domain"] and second["wauc"] == first["wauc"]


# ---------------------------------------------------------------------------------- no pickle
def test_checkpoints_hold_only_safetensors_and_json(whole):
    folders = training.complete_checkpoints(whole)
    assert len(folders) >= 3
    for folder in folders:
        names = {p.name for p in folder.iterdir()}
        assert {"model.safetensors", "best_weights.safetensors", "optimizer.safetensors", "optimizer.json",
                "rng_0.safetensors", "rng_0.json", "state.json", "manifest.json"} == names


def test_a_payload_planted_in_a_checkpoint_never_runs(whole, tmp_path, monkeypatch):
    """accelerate's load_state unpickled custom_checkpoint_0.pkl (weights_only=False): a planted payload ran."""
    killed = _interrupted(whole, tmp_path, keep=3)
    marker = tmp_path / MARKER_NAME
    payload = pickle.dumps(Payload(marker))
    newest = training.complete_checkpoints(killed)[-1]
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin", "scheduler.bin",
                 "pytorch_model.bin", "model.bin"):
        (newest / name).write_bytes(payload)  # what accelerate's load_state would read
    older = training.complete_checkpoints(killed)[-2]
    for file in list(older.iterdir()):
        file.write_bytes(payload)  # every file of an older checkpoint replaced by a payload

    def refuse(*args, **kwargs):
        raise AssertionError("a resume unpickled something")

    for module, name in [(pickle, "load"), (pickle, "loads"), (torch, "load")]:
        monkeypatch.setattr(module, name, refuse)
    _train(killed, "train.resume=true")
    assert not marker.exists()
    _same_results(whole, killed)

    for folder in training.complete_checkpoints(killed)[-2:]:  # every file of the newest ones: still nothing runs
        for file in list(folder.iterdir()):
            file.write_bytes(payload)
    with pytest.warns(UserWarning, match="Skipping checkpoint"):
        _train(killed, "train.resume=true")
    assert not marker.exists()


def test_no_pickle_torch_load_or_registered_state_in_the_package_or_recipes():
    pattern = re.compile(r"\bpickle\b|torch\.load\b|weights_only\s*=\s*False|register_for_checkpointing")
    found = [f"{path.relative_to(ROOT)}:{number}"
             for folder in ("mlora_peft", "recipes") for path in sorted((ROOT / folder).rglob("*.py"))
             for number, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert found == []


# ---------------------------------------------------------------------------------- refusals and fallback
def test_resume_with_other_data_or_model_settings_is_refused_naming_the_keys(whole, tmp_path):
    killed = _interrupted(whole, tmp_path, keep=2)
    with pytest.raises(ValueError, match=r"train.resume=true refused: .*step_000000010 was written with other "
                                         r"settings: data.rows \(1500 in the checkpoint, 1200 now\); "
                                         r"model.hidden \(\[32, 16\] in the checkpoint, \[32\] now\)"):
        _train(killed, "train.resume=true", "data.rows=1200", "model.hidden=[32]")


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(whole, tmp_path):
    killed = _interrupted(whole, tmp_path, keep=3)
    newest = training.complete_checkpoints(killed)[-1]
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.warns(UserWarning, match=r"Skipping checkpoint .*step_000000015.*model.safetensors does not match"):
        _train(killed, "train.resume=true")
    _same_results(whole, killed)
    assert _log(killed) == _log(whole)


def test_resume_drops_the_log_records_written_after_the_checkpoint(whole, tmp_path):
    """A killed run had logged epochs past its last checkpoint: the log holds each epoch once after the resume."""
    killed = _interrupted(whole, tmp_path, keep=1)
    assert len(_log(killed)) > json.loads((training.complete_checkpoints(killed)[-1] / "state.json").read_text())[
        "state"]["logged_epochs"]
    _train(killed, "train.resume=true")
    assert _log(killed) == _log(whole)
    _same_results(whole, killed)


# ---------------------------------------------------------------------------------- one run per folder
def test_a_folder_holding_another_run_is_refused_naming_the_choices(whole, tmp_path):
    folder = tmp_path / "taken"
    shutil.copytree(whole, folder)
    with pytest.raises(ValueError, match=rf"output_dir {re.escape(str(folder))} holds another run's files .*"
                                         r"train.resume=true .* overwrite=true"):
        _train(folder)
    _train(folder, "overwrite=true", "train.checkpoint_every=0")
    assert not (folder / "checkpoints").exists()  # cleared first: nothing of the other run is left
    assert _log(folder) == _log(whole)


def test_overwrite_does_not_clear_a_folder_without_a_run(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds no training run"):
        training.check_output_dir(tmp_path, resume=False, overwrite=True)
    assert (tmp_path / "notes.txt").exists()


def test_rotation_deletes_only_this_runs_checkpoints(tmp_path):
    for step, run_id in [(1, "other"), (2, "mine"), (3, "mine"), (4, "other"), (5, "mine")]:
        folder = tmp_path / "checkpoints" / f"step_{step:09d}"
        folder.mkdir(parents=True)
        (folder / "state.json").write_text(json.dumps({"state": {"run_id": run_id}}))
    deleted = training.rotate_checkpoints(tmp_path, "mine", keep=1)
    assert [p.name for p in deleted] == ["step_000000002", "step_000000003"]
    assert [p.name for p in training.complete_checkpoints(tmp_path)] == [
        "step_000000001", "step_000000004", "step_000000005"]


# ---------------------------------------------------------------------------------- state round trips
def test_optimizer_state_round_trips_through_safetensors_and_json():
    model = nn.Linear(3, 2)
    optimizer = training.make_optimizer(model, lr=0.1)
    for _ in range(2):
        model(torch.randn(4, 3)).sum().backward()
        optimizer.step()
    tensors, values = ckpt.optimizer_state(optimizer)
    values = json.loads(json.dumps(values))
    other = training.make_optimizer(nn.Linear(3, 2), lr=0.5)
    ckpt.load_optimizer_state(other, tensors, values)
    saved, loaded = optimizer.state_dict(), other.state_dict()
    assert loaded["param_groups"] == saved["param_groups"]
    for param, entries in saved["state"].items():
        for name, value in entries.items():
            torch.testing.assert_close(loaded["state"][param][name], value)


def test_rng_states_round_trip_through_safetensors_and_json():
    tensors, values = ckpt.rng_state()
    values = json.loads(json.dumps(values))
    expected = (torch.rand(3), np.random.rand(3), random.random())
    ckpt.set_rng_state(tensors, values)
    again = (torch.rand(3), np.random.rand(3), random.random())
    torch.testing.assert_close(again[0], expected[0])
    assert np.array_equal(again[1], expected[1]) and again[2] == expected[2]


def test_a_manifest_mismatch_is_a_checkpoint_error(whole, tmp_path):
    folder = tmp_path / "one"
    shutil.copytree(training.complete_checkpoints(whole)[0], folder)
    (folder / "state.json").write_text((folder / "state.json").read_text().replace('"stage": 0', '"stage": 1'))
    cfg = training.load_config(TINY, [*COMMON])
    data = training.load_data(cfg)
    model = training.build_model(cfg, data)
    with pytest.raises(training.CheckpointError, match="state.json does not match the manifest"):
        training.load_checkpoint(Accelerator(), folder, model, training.make_optimizer(model, 0.1), {})
