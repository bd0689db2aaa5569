"""Reading a finished training run back: its config, its model and its data, encoded as in training."""

from __future__ import annotations

from pathlib import Path
from typing import Union

import yaml
from accelerate import Accelerator
from peft import PeftModel
from torch import nn

from ..hub.weights import read_config, read_weights
from ..data import ENCODER_FILE, MultiDomainData, MultiDomainEncoder
from ..data.table_encoder import DOMAIN_COLUMN
from ..evaluation import evaluate
from ..features import SparseFeature, features_from_json, features_to_json
from ..growth import DomainAdditions
from ..hub import CONFIG_NAME, DOMAINS_DIR, load_domains, load_encoder
from .build import build_backbone, load_data, model_features
from .config import TrainConfig, from_dict

SPEC_FILE = "feature_spec.json"


def rebuild_model(run_dir: Union[str, Path], is_trainable: bool = False) -> tuple[TrainConfig, nn.Module, MultiDomainEncoder]:
    """The trained model of a run folder, from its files alone: no data is read.

    `config.yaml` gives the architecture (widths, dropout, ranks), `feature_spec.json` every feature
    the model embeds (`domain_id` included), the adapter folder the weights; domains onboarded later
    (`recipes/add_domain.py`) are loaded after the base's own, their embedding rows appended and their
    values added to the encoder, so the returned encoder's ids are the model's.

    Args:
        run_dir: the `output_dir` of a training run, or of an onboarding (`add_domain.py`).
        is_trainable: leave the adapter trainable (to onboard another domain); else eval mode.

    Returns:
        `(config, model, encoder)`.

    Raises:
        FileNotFoundError: no `config.yaml`, or no saved encoder or feature spec.
    """
    run_dir = Path(run_dir)
    cfg = _read_config(run_dir)
    saved = run_dir if cfg.mlora.mode == "none" else run_dir / "adapter"
    for name in (ENCODER_FILE, SPEC_FILE):
        if not (saved / name).exists():
            raise FileNotFoundError(f"{saved / name} not found: the run saved no {name} (train it again with this "
                                    "version to rebuild it from its folder).")
    encoder = MultiDomainEncoder.load(saved)
    features = features_from_json((saved / SPEC_FILE).read_text())
    if cfg.model.embed_domain and DOMAIN_COLUMN not in {f.name for f in features}:  # saved before the spec held it
        features.append(SparseFeature(DOMAIN_COLUMN, len(encoder.domain_names), cfg.model.embedding_dim))
    plain = build_backbone(cfg, features, len(encoder.domain_names))
    if cfg.mlora.mode == "none":
        plain.load_state_dict(read_weights(run_dir / "model.safetensors"))
        return cfg, plain.train(is_trainable), encoder
    onboarded = onboarded_domains(saved)
    if not onboarded:
        return cfg, PeftModel.from_pretrained(plain, saved, is_trainable=is_trainable), encoder
    names = list(encoder.domain_names) + onboarded
    model = load_domains(plain, saved, domains=names, is_trainable=is_trainable)
    return cfg, model, load_encoder(saved, domains=onboarded)


def onboarded_domains(adapter_dir: Path) -> list[str]:
    """The domains of a save added after its base was trained (folders with encoder additions), in id order."""
    found = []
    for folder in sorted((Path(adapter_dir) / DOMAINS_DIR).glob("*/")):
        additions = DomainAdditions.read(folder)
        if additions is not None:
            found.append((additions.encoder["domain_id"], read_config(folder / CONFIG_NAME).domain_names[0]))
    return [name for _, name in sorted(found)]


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
        ValueError: the saved feature spec does not match, a built-in source changed since training, or the
            folder holds onboarded domains (see `rebuild_model`).
    """
    cfg, model, encoder = rebuild_model(run_dir)
    if cfg.mlora.mode != "none" and onboarded_domains(Path(run_dir) / "adapter"):
        raise ValueError(f"{run_dir} holds domains onboarded by recipes/add_domain.py, whose data its config.yaml does "
                         "not describe alone; read their test report in its results.json, evaluate the base run's "
                         "domains on the base run's folder, or get the model with rebuild_model(run_dir).")
    data = load_data(cfg, encoder=encoder)
    spec = (run_dir if cfg.mlora.mode == "none" else Path(run_dir) / "adapter") / SPEC_FILE
    if spec.read_text() not in (features_to_json(data.feature_spec), features_to_json(model_features(cfg, data))):
        raise ValueError(f"{spec} does not match the feature spec of the run's {ENCODER_FILE}; the run's files were "
                         "edited. Train again or restore them.")
    return cfg, model, data


def _read_config(run_dir: Path) -> TrainConfig:
    config_path = run_dir / "config.yaml"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found: pass the output_dir of a finished training run.")
    return from_dict(yaml.safe_load(config_path.read_text()))


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
