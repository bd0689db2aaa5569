"""Reading a finished training run back: its config, its model and its data, encoded as in training."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Union

import yaml
from accelerate import Accelerator
from peft import PeftModel
from torch import nn

from ..checkpoint import read_weights
from ..data import ENCODER_FILE, MultiDomainData, MultiDomainEncoder
from ..evaluation import evaluate
from ..features import features_to_json
from .build import build_model, load_data
from .config import TrainConfig, from_dict


def load_run(run_dir: Union[str, Path]) -> tuple[TrainConfig, nn.Module, MultiDomainData]:
    """The config, the trained model and the data of a saved run.

    The data is encoded with the run's saved `data_encoder.json` (beside the adapter, or beside
    `model.safetensors` for a plain run), not an encoder fitted again on the data found now: a value
    unseen at training maps to the unknown id, exactly as in training, and ids never shift. The saved
    `feature_spec.json` must match the spec the encoder gives.

    Args:
        run_dir: the `output_dir` of a finished run.

    Returns:
        `(config, model, data)`.

    Raises:
        FileNotFoundError: no `config.yaml`, or the run saved no encoder.
        ValueError: the saved feature spec does not match, or a built-in source changed since training.
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found: pass the output_dir of a finished training run.")
    cfg = from_dict(yaml.safe_load(config_path.read_text()))
    saved = run_dir if cfg.mlora.mode == "none" else run_dir / "adapter"
    if not (saved / ENCODER_FILE).exists():
        raise FileNotFoundError(f"{saved / ENCODER_FILE} not found: the run saved no data encoder (train it again "
                                "with this version to evaluate it on its own encoding).")
    data = load_data(cfg, encoder=MultiDomainEncoder.load(saved))
    spec = saved / "feature_spec.json"
    if spec.exists() and spec.read_text() != features_to_json(data.feature_spec):
        raise ValueError(f"{spec} does not match the feature spec of {saved / ENCODER_FILE}; the run's files were "
                         "edited. Train again or restore them.")
    if cfg.mlora.mode == "none":
        model = build_model(cfg, data)
        model.load_state_dict(read_weights(run_dir / "model.safetensors"))
    else:
        plain_cfg = dataclasses.replace(cfg, mlora=dataclasses.replace(cfg.mlora, mode="none"))
        model = PeftModel.from_pretrained(build_model(plain_cfg, data), saved)
    return cfg, model, data


def evaluate_run(run_dir: Union[str, Path], split: str, accelerator: Accelerator) -> dict:
    """The per-domain report of a saved run on one split of its data (see `load_run`).

    Raises:
        ValueError: `split` is not one of the data's splits.
    """
    cfg, model, data = load_run(run_dir)
    if split not in data.splits:
        raise ValueError(f"split={split!r} is not in the run's data; choose one of {sorted(data.splits)}.")
    loader = data.loader(split, batch_size=max(cfg.train.batch_size // accelerator.num_processes, 1),
                         num_processes=accelerator.num_processes)
    model = accelerator.prepare_model(model, evaluation_mode=True)  # no DDP wrapper: nothing here trains
    loader = accelerator.prepare_data_loader(loader)
    return evaluate(model, loader, accelerator, list(data.domain_names))
