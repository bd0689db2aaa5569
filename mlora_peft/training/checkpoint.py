"""Checkpoints as safetensors + JSON, written and read by our own small functions: no executable formats.

accelerate's `save_state` writes optimiser, RNG and registered custom state in torch's own format,
and `load_state` reads registered state back in a mode that can run code stored in the file, so a
checkpoint folder from someone else could run code on resume. Here a checkpoint folder `checkpoints/step_<N>/` holds:

- `model.safetensors`, `best_weights.safetensors`: the model and the best epoch's weights;
- `optimizer.safetensors` + `optimizer.json`: the optimiser's tensors and the rest of its state
  (`optimizer_<rank>.*` per process under FSDP, whose optimiser state is sharded);
- `rng_<rank>.safetensors` + `rng_<rank>.json`: each process's torch, CUDA, numpy and Python RNG states;
- `state.json`: the `TrainingState` (stage, epoch, step, early stopping, the plateau lr factor, which
  is the learning-rate schedule's whole state), the run id and the resolved config;
- `manifest.json`, written last: each file's size and SHA-256.

A checkpoint is written into `step_<N>.tmp/` and renamed into place, so a kill never leaves half of
one. On resume a checkpoint whose files do not match its manifest (truncated, corrupt) is skipped
with a warning, and the previous complete one is used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import shutil
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from safetensors.torch import save_file
from torch import Tensor, nn

from ..atomic import write_text_atomic
from ..hub.weights import read_weights

FORMAT_VERSION = 1
CHECKPOINTS = "checkpoints"
MANIFEST = "manifest.json"
COMPARED_SECTIONS = ("data", "model", "mlora")  # a resume with other values here is refused


class CheckpointError(ValueError):
    """A checkpoint folder that is incomplete, corrupt or not ours: resume skips it."""


@dataclass
class TrainingState:
    """Where training is and what early stopping and the lr schedule remember; saved in `state.json`.

    Example:
        >>> state = TrainingState(epoch=2, best_score=0.7)
        >>> TrainingState.from_json(state.to_json()).epoch
        2
    """

    stage: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_score: float = float("-inf")
    waited: int = 0
    lr_factor: float = 1.0  # plateau: train.lr_decay ** (epochs of this stage without improvement)
    best_from_shared: bool = False  # the best so far is the shared stage's (mlora.keep_shared_if_better)
    logged_epochs: int = 0  # records in log.jsonl: a resume drops the ones written after the checkpoint
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)  # which run wrote a checkpoint
    best_weights: dict[str, Tensor] = field(default_factory=dict, repr=False)  # best_weights.safetensors

    def to_json(self) -> dict:
        """Every field but `best_weights`, as JSON values (-inf as None)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "best_weights"}
        values["best_score"] = None if values["best_score"] == float("-inf") else values["best_score"]
        return values

    @classmethod
    def from_json(cls, values: dict) -> TrainingState:
        """The state `to_json` wrote (without `best_weights`)."""
        known = {f.name for f in dataclasses.fields(cls)} - {"best_weights"}
        if set(values) != known:
            raise CheckpointError(f"state.json has fields {sorted(values)}, expected {sorted(known)}.")
        values = dict(values)
        values["best_score"] = float("-inf") if values["best_score"] is None else values["best_score"]
        return cls(**values)


# ---------------------------------------------------------------------------------- files
def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to a temporary file beside `path`, then rename it into place.

    Example:
        >>> import tempfile, pathlib
        >>> file = pathlib.Path(tempfile.mkdtemp()) / "a.json"
        >>> write_json_atomic(file, {"a": 1})
        >>> read_json(file)
        {'a': 1}
    """
    write_text_atomic(path, json.dumps(payload, indent=2))


def save_tensors_atomic(path: Path, tensors: dict[str, Tensor]) -> None:
    """Write tensors as safetensors to a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    """Parse a JSON file; a missing or unparsable file is a `CheckpointError`."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} is missing or not valid JSON ({error}).") from None


def read_tensors(path: Path) -> dict[str, Tensor]:
    """Load a safetensors file; a missing, truncated or corrupt file is a `CheckpointError`."""
    try:
        return read_weights(path)
    except ValueError as error:
        raise CheckpointError(str(error)) from None


# ---------------------------------------------------------------------------------- RNG and optimiser
def rng_state() -> tuple[dict[str, Tensor], dict]:
    """This process's RNG states: torch (and CUDA) as tensors, numpy and Python `random` as JSON values."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    values = {"python": [version, list(internal), gauss],
              "numpy": [kind, keys.tolist(), int(position), int(has_gauss), float(cached)]}
    return tensors, values


def set_rng_state(tensors: dict[str, Tensor], values: dict) -> None:
    """Restore what `rng_state` returned."""
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[f"cuda.{i}"] for i in range(len([k for k in tensors if k.startswith("cuda.")]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = values["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = values["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict]:
    """The optimiser's `state_dict` split into tensors (`state.<param>.<name>`) and JSON for the rest.

    Example:
        >>> model = nn.Linear(2, 1)
        >>> optimizer = torch.optim.Adam(model.parameters())
        >>> model(torch.ones(1, 2)).sum().backward(); optimizer.step()
        >>> tensors, values = optimizer_state(optimizer)
        >>> sorted(tensors)[:2], values["param_groups"][0]["betas"]
        (['state.0.exp_avg', 'state.0.exp_avg_sq'], [0.9, 0.999])
    """
    saved = optimizer.state_dict()
    tensors, state = {}, {}
    for param, entries in saved["state"].items():
        state[str(param)] = {}
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"state.{param}.{name}"] = value
                state[str(param)][name] = {"tensor": f"state.{param}.{name}"}
            else:
                state[str(param)][name] = {"value": value}
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in group.items()} for group in saved["param_groups"]]
    return tensors, {"state": state, "param_groups": groups}


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor], values: dict) -> None:
    """Load what `optimizer_state` returned; lists that the optimiser holds as tuples (Adam's betas) become tuples."""
    current = optimizer.state_dict()["param_groups"]
    if len(current) != len(values["param_groups"]):
        raise CheckpointError(f"the optimiser has {len(current)} parameter groups, the checkpoint "
                              f"{len(values['param_groups'])}.")
    groups = [{k: tuple(v) if isinstance(now.get(k), tuple) else v for k, v in saved.items()}
              for now, saved in zip(current, values["param_groups"])]
    state = {int(param): {name: tensors[entry["tensor"]] if "tensor" in entry else entry["value"]
                          for name, entry in entries.items()}
             for param, entries in values["state"].items()}
    optimizer.load_state_dict({"state": state, "param_groups": groups})


# ---------------------------------------------------------------------------------- save
def save_checkpoint(accelerator: Accelerator, out_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    state: TrainingState, config: dict, keep: int) -> Path:
    """Write the full training state into `out_dir/checkpoints/step_<N>/`, then drop this run's oldest ones.

    Every process calls it. The folder is filled as `step_<N>.tmp` and renamed once complete.

    Args:
        accelerator: the run's accelerator.
        out_dir: the run's output folder.
        model: the prepared model.
        optimizer: the prepared optimiser.
        state: the training state (its `run_id` marks the checkpoint as this run's).
        config: the resolved config (`dataclasses.asdict(cfg)`), compared on resume.
        keep: how many of this run's checkpoints to keep.

    Returns:
        The checkpoint folder.
    """
    final = Path(out_dir) / CHECKPOINTS / f"step_{state.global_step:09d}"
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    weights = accelerator.get_state_dict(model)  # every process joins (FSDP gathers the full weights)
    rank, sharded = accelerator.process_index, accelerator.distributed_type == DistributedType.FSDP
    tensors, values = rng_state()
    save_tensors_atomic(tmp / f"rng_{rank}.safetensors", tensors)
    write_json_atomic(tmp / f"rng_{rank}.json", values)
    if sharded or accelerator.is_main_process:
        tensors, values = optimizer_state(optimizer)
        name = f"optimizer_{rank}" if sharded else "optimizer"
        save_tensors_atomic(tmp / f"{name}.safetensors", tensors)
        write_json_atomic(tmp / f"{name}.json", values)
    if accelerator.is_main_process:
        save_tensors_atomic(tmp / "model.safetensors", weights)
        save_tensors_atomic(tmp / "best_weights.safetensors", state.best_weights)
        scaler = accelerator.scaler.state_dict() if accelerator.scaler is not None else None
        write_json_atomic(tmp / "state.json", {"format_version": FORMAT_VERSION, "state": state.to_json(),
                                               "processes": accelerator.num_processes, "sharded": sharded,
                                               "scaler": scaler, "config": config})
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json_atomic(tmp / MANIFEST, {p.name: _fingerprint(p) for p in sorted(tmp.iterdir())})
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        rotate_checkpoints(out_dir, state.run_id, keep)
    accelerator.wait_for_everyone()
    return final


def complete_checkpoints(out_dir: Path) -> list[Path]:
    """The renamed-into-place checkpoint folders of `out_dir`, oldest first (whoever wrote them)."""
    folder = Path(out_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))


def rotate_checkpoints(out_dir: Path, run_id: str, keep: int) -> list[Path]:
    """Delete this run's checkpoints but the newest `keep`; other runs' folders are left alone.

    Returns:
        The deleted folders.
    """
    ours = [p for p in complete_checkpoints(out_dir) if _run_id(p) == run_id]
    for old in ours[:-keep]:
        shutil.rmtree(old)
    return ours[:-keep]


# ---------------------------------------------------------------------------------- load
def load_checkpoint(accelerator: Accelerator, folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    config: dict) -> TrainingState:
    """Read a checkpoint folder completely, check it, then load it into `model`, `optimizer` and the RNGs.

    Only JSON and safetensors files named in its manifest are read; no file can run code.

    Raises:
        CheckpointError: a file is missing, truncated or corrupt, or the folder is not one of ours.
        ValueError: the checkpoint's data, model or mlora settings differ from `config` (named).
    """
    folder = Path(folder)
    manifest = read_json(folder / MANIFEST)
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{folder / MANIFEST} is not a file list.")
    for name, expected in manifest.items():
        if Path(name).name != name or _fingerprint(folder / name) != expected:
            raise CheckpointError(f"{folder / name} does not match the manifest (truncated or changed).")
    meta = read_json(folder / "state.json")
    fields = {"format_version", "state", "processes", "sharded", "scaler", "config"}
    if not isinstance(meta, dict) or set(meta) != fields or meta["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"{folder / 'state.json'} is not a format-{FORMAT_VERSION} training state.")
    refuse_changed_config(meta["config"], config, folder)
    state = TrainingState.from_json(meta["state"])
    rank, sharded = accelerator.process_index, meta["sharded"]
    if sharded and meta["processes"] != accelerator.num_processes:
        raise ValueError(f"{folder} holds optimiser state sharded over {meta['processes']} processes; resume it "
                         f"with {meta['processes']} processes, not {accelerator.num_processes}.")
    weights = read_tensors(folder / "model.safetensors")
    state.best_weights = read_tensors(folder / "best_weights.safetensors")
    name = f"optimizer_{rank}" if sharded else "optimizer"
    optimizer_tensors, optimizer_values = read_tensors(folder / f"{name}.safetensors"), read_json(folder / f"{name}.json")
    rng = folder / f"rng_{rank}.json"
    rng_tensors, rng_values = (read_tensors(rng.with_suffix(".safetensors")), read_json(rng)) if rng.exists() else (None, None)

    accelerator.unwrap_model(model).load_state_dict(weights)  # everything read and checked: now load
    load_optimizer_state(optimizer, optimizer_tensors, optimizer_values)
    if meta["scaler"] is not None and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(meta["scaler"])
    if rng_values is not None:
        set_rng_state(rng_tensors, rng_values)
    else:
        warnings.warn(f"{folder} has no RNG state for process {rank}; it continues with its current RNG state.",
                      stacklevel=2)
    return state


def load_latest_checkpoint(accelerator: Accelerator, out_dir: Path, model: nn.Module,
                           optimizer: torch.optim.Optimizer, config: dict) -> Optional[tuple[Path, TrainingState]]:
    """Load the newest checkpoint of `out_dir` that is complete, skipping broken ones with a warning.

    Returns:
        The folder and the training state, or None when `out_dir` has no usable checkpoint.

    Raises:
        ValueError: the newest readable checkpoint was written with other data, model or mlora settings.
    """
    for folder in reversed(complete_checkpoints(out_dir)):
        try:
            return folder, load_checkpoint(accelerator, folder, model, optimizer, config)
        except CheckpointError as error:
            warnings.warn(f"Skipping checkpoint {folder}: {error} Trying the previous one.", stacklevel=2)
    return None


def refuse_changed_config(saved: dict, current: dict, folder: Path) -> None:
    """Raise a `ValueError` naming the data, model and mlora keys whose values differ between the two configs."""
    differing = [f"{key} ({flatten(saved).get(key)!r} in the checkpoint, {flatten(current).get(key)!r} now)"
                 for key in sorted(set(flatten(saved)) | set(flatten(current)))
                 if key.split(".")[0] in COMPARED_SECTIONS and flatten(saved).get(key) != flatten(current).get(key)]
    if differing:
        raise ValueError(f"train.resume=true refused: {folder} was written with other settings: "
                         f"{'; '.join(differing)}. Resume with the checkpoint's settings, or start a new run "
                         "(overwrite=true, or another output_dir).")


# ---------------------------------------------------------------------------------- helpers
def _fingerprint(path: Path) -> dict:
    try:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}
    except OSError:
        return {}


def _run_id(folder: Path) -> Optional[str]:
    try:
        return read_json(folder / "state.json")["state"]["run_id"]
    except (CheckpointError, KeyError, TypeError):
        return None


def flatten(values: dict, separator: str = ".", prefix: str = "") -> dict:
    """Nested dicts as one dict keyed by joined paths: `{"a": {"b": 1}}` -> `{"a.b": 1}`."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, separator, f"{prefix}{key}{separator}"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
