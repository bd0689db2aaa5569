"""`TrainConfig`: the training settings, loaded from YAML with dotted overrides and checked before any data is read.

Every field carries `help` (the single source of docs/reference/config.md) and, when it is a number,
the range it accepts. `load_config` refuses unknown keys, values of the wrong type (a section given
a number included) and numbers out of range, naming the dotted key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Optional, Union

import yaml

from .presets import PRESETS, preset_rank_divisor


@dataclass(frozen=True)
class Range:
    """The numbers a field accepts: `low`/`high` bounds (None: unbounded), open or closed.

    Example:
        >>> Range(0, 1, low_open=True).describe("float")
        'a number in (0, 1]'
        >>> 0 in Range(0, 1, low_open=True)
        False
    """

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or not (value > self.high or (self.high_open and value == self.high))

    def describe(self, kind: str) -> str:
        """The range in words, e.g. 'an integer >= 1' or 'a number in [0, 1)'."""
        noun = "an integer" if kind == "int" else "a number"
        if self.low is not None and self.high is not None:
            return f"{noun} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{noun} {'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"{noun} {'<' if self.high_open else '<='} {self.high:g}"
        return noun


POSITIVE_INT = Range(1)
COUNT = Range(0)
POSITIVE = Range(0, low_open=True)
PROBABILITY = Range(0, 1, high_open=True)  # dropout


def _field(default: Any, help: str, allowed: Optional[Range] = None, choices: Optional[tuple] = None) -> Any:
    metadata: dict[str, Any] = {"help": help}
    if allowed is not None:
        metadata["range"] = allowed
    if choices is not None:
        metadata["choices"] = choices
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class DataConfig:
    """Which data to train on (`data.*` keys)."""

    source: str = _field("synthetic", (
        "synthetic (built-in, offline), movielens, amazon, or a table for load_multidomain: file(s) "
        "(CSV/TSV/parquet/JSON, gzip too) or a Hub dataset id."))
    path: Optional[str] = _field(None, "Folder of the movielens (u.data, ...) or amazon (<Category>.csv.gz) files.")
    num_domains: int = _field(4, "synthetic: number of domains.", POSITIVE_INT)
    rows: int = _field(40_000, "synthetic: rows over train, validation and test.", POSITIVE_INT)
    domain_effect: float = _field(1.0, "synthetic: strength of the domain-specific effect.", Range(0))
    imbalance: float = _field(1.5, "synthetic: domain d's share is proportional to imbalance**-d.", POSITIVE)
    domain: Optional[str] = _field(None, "movielens: gender, age or occupation; table: the domain column.")
    label: Optional[str] = _field(None, (
        "movielens: rating==5 (the paper) or rating>3; table: the 0/1 label column or a rule like rating>3."))
    sparse: Optional[list[str]] = _field(None, "table: categorical columns (None: inferred).")
    dense: Optional[list[str]] = _field(None, "table: numeric columns (None: inferred).")
    categories: Optional[list[str]] = _field(None, "amazon: categories to load (None: all).")
    user_fraction: float = _field(1.0, (
        "amazon: keep a seeded random share of the users (each user kept or dropped in every category alike)."),
        Range(0, 1, low_open=True))
    side_features: bool = _field(False, (
        "movielens: add the user's gender, age, occupation and zip and the item's first genre as features "
        "(the domain's own column left out); other sources refuse it (list columns in data.sparse instead)."))
    composition: str = _field("mixed", (
        "Training batches: mixed, per_domain (one domain per batch, the paper's code), sorted, or sequential "
        "(one domain per batch, a full pass over each domain before the next, domains in a random order each "
        "epoch)."), choices=("mixed", "per_domain", "sorted", "sequential"))
    seed: int = _field(0, "Seed of the data (sampling, negatives) and its split.", COUNT)


@dataclass
class ModelConfig:
    """Which backbone to build (`model.*` keys)."""

    name: str = _field("mlp", "A zoo model: see mlora_peft.models.list_models().")
    embedding_dim: int = _field(8, "Width of each id embedding.", POSITIVE_INT)
    embed_domain: bool = _field(True, "Embed the domain id as a feature too (the paper).")
    hidden: list[int] = _field([256, 128, 64], "Deep tower widths.", POSITIVE_INT)
    dropout: float = _field(0.5, "Dropout after each hidden layer.", PROBABILITY)
    options: dict = _field({}, "Other keyword options of the zoo model, e.g. {cross_layers: 3} (see docs/models.md).")


@dataclass
class MloraSettings:
    """The adapters and how they train (`mlora.*` keys)."""

    mode: str = _field("joint", "joint, two_stage or none.", choices=("joint", "two_stage", "none"))
    r: Optional[int] = _field(None, "Fixed adapter rank (None: use rank_divisor).", POSITIVE_INT)
    rank_divisor: Optional[int] = _field(64, "Rank = max(width // rank_divisor, 1).", POSITIVE_INT)
    rank_divisor_preset: str = _field("none", (
        "Use the paper's own rank divisor for this backbone instead of rank_divisor: paper (the paper's data set "
        "that data.source stands for: amazon, movielens or taobao), or amazon6, movielens, taobao10 by name; "
        "none keeps rank_divisor (see mlora_peft/training/presets.py)."), choices=PRESETS)
    dropout: float = _field(0.0, "Dropout on the adapters' input (MultiDomainLoraConfig.lora_dropout).", PROBABILITY)
    domain_bias: bool = _field(True, "Learn a bias per domain beside the low-rank term (b_d).")
    lr_ratio: float = _field(1.0, (
        "The adapters' learning rate as a multiple of the backbone's (train.lr and its schedule), in (0, 10]: "
        "below 1 the adapters learn more slowly than the shared model in joint training."), Range(0, 10, low_open=True))
    keep_shared_if_better: bool = _field(False, (
        "two_stage: an adapter epoch is kept only if it beats the shared stage's best validation score; if "
        "none does, the result is the shared model with its adapters still at zero. Off: the adapter "
        "stage's own best epoch, as in the paper."))


@dataclass
class TrainSettings:
    """Optimisation, early stopping and checkpoints (`train.*` keys)."""

    lr: float = _field(1e-3, "Adam learning rate.", POSITIVE)
    lr_schedule: str = _field("constant", (
        "Learning rate within each stage: constant, cosine (from train.lr down to train.lr * min_lr_ratio "
        "over max_epochs) or plateau (times lr_decay after each epoch without a better validation score)."),
        choices=("constant", "cosine", "plateau"))
    min_lr_ratio: float = _field(0.0, "cosine: the final lr as a fraction of train.lr, in [0, 1].", Range(0, 1))
    lr_decay: float = _field(0.5, (
        "plateau: multiply the lr by this, in (0, 1], after each epoch without a better validation score."),
        Range(0, 1, low_open=True))
    embedding_l2: float = _field(0.0, (
        "L2 penalty on the id embeddings a batch looks up (DeepCTR's l2_reg_embedding): adds embedding_l2 * "
        "the sum of squared outputs of every nn.Embedding (a linear term's id weights too) / batch rows to "
        "the training loss, which train/loss then includes (0: off). train.embedding_l2_scope=table penalises "
        "whole tables instead."), Range(0))
    embedding_l2_scope: str = _field("lookup", (
        "embedding_l2 on lookup (the rows a batch looks up, divided by batch rows) or table (every row of every "
        "embedding table, each step, not divided: DeepCTR's Keras embeddings_regularizer and DeepCTR-Torch's "
        "add_regularization_weight)."), choices=("lookup", "table"))
    batch_size: int = _field(1024, "Global batch size (split over processes).", POSITIVE_INT)
    gradient_accumulation_steps: int = _field(1, "Batches per optimiser step.", POSITIVE_INT)
    max_epochs: int = _field(20, "Epochs per stage at most.", POSITIVE_INT)
    patience: int = _field(3, "Epochs without a better validation score before stopping.", POSITIVE_INT)
    early_stopping_metric: str = _field("mean_auc", "mean_auc or wauc (validation).", choices=("mean_auc", "wauc"))
    seed: int = _field(0, "Seed of the initialisation, shuffling and dropout.", COUNT)
    mixed_precision: str = _field("no", "no, bf16 or fp16 (accelerate).", choices=("no", "bf16", "fp16"))
    checkpoint_every: int = _field(0, "Save the full state every N steps (0: never).", COUNT)
    keep_checkpoints: int = _field(2, "How many recent checkpoints to keep.", POSITIVE_INT)
    resume: bool = _field(False, (
        "Continue the run in output_dir from its newest complete checkpoint (refused if the data, model or "
        "mlora settings differ from the checkpoint's)."))


@dataclass
class HubSettings:
    """Pushing the adapter to the Hugging Face Hub (`hub.*` keys)."""

    push_to_hub: Optional[str] = _field(None, (
        "A Hub repository id (user/name) to push the adapter to after training (None: do not push)."))
    private: Optional[bool] = _field(None, "Create the repository as private.")
    revision: Optional[str] = _field(None, "Branch to push to (None: main).")


@dataclass
class TrainConfig:
    """Everything a training run reads: top-level keys plus one section per dataclass above.

    Example:
        >>> cfg = TrainConfig()
        >>> cfg.train.lr, cfg.mlora.mode
        (0.001, 'joint')
        >>> check_config(cfg).output_dir
        'runs/default'
    """

    output_dir: str = _field("runs/default", "Where results, checkpoints and adapters go.")
    overwrite: bool = _field(False, (
        "Clear output_dir first if it holds another run's files (otherwise such a folder is refused, "
        "unless train.resume=true continues that run)."))
    compare_with_plain: bool = _field(True, "Also train the plain backbone and show gains.")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    mlora: MloraSettings = field(default_factory=MloraSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    hub: HubSettings = field(default_factory=HubSettings)


SECTIONS = {f.name: f.default_factory for f in dataclasses.fields(TrainConfig)
            if f.default_factory is not dataclasses.MISSING}


def load_config(path: Union[str, Path], overrides: list[str] = ()) -> TrainConfig:
    """The YAML file at `path` with dotted `key=value` overrides, checked.

    Args:
        path: a YAML file such as `recipes/configs/default.yaml`.
        overrides: `key=value` strings, dots for sections (`train.lr=3e-4`); values are read as YAML.

    Returns:
        The checked config.

    Raises:
        ValueError: an override that is not key=value, an unknown key, a value of the wrong type or out
            of range (the message names the dotted key and what is allowed).

    Example:
        >>> import tempfile, pathlib
        >>> file = pathlib.Path(tempfile.mkdtemp()) / "c.yaml"
        >>> _ = file.write_text("train:\\n  lr: 0.01\\n")
        >>> load_config(file, ["train.batch_size=64", "mlora.mode=two_stage"]).train.batch_size
        64
        >>> load_config(file, ["train.batch_size=0"])
        Traceback (most recent call last):
        ...
        ValueError: train.batch_size=0 is not allowed; use an integer >= 1.
    """
    values = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path} holds a YAML {type(values).__name__}, not a mapping of config keys.")
    return from_dict(apply_overrides(values, overrides))


def apply_overrides(values: dict, overrides: Sequence[str]) -> dict:
    """`values` (nested plain config values, changed in place) with dotted `key=value` overrides; returns it.

    Raises:
        ValueError: an override that is not key=value, or one that sets a key under a value that is no section.

    Example:
        >>> apply_overrides({"train": {"lr": 0.1}}, ["train.lr=3e-4", "model.name=wdl"])
        {'train': {'lr': '3e-4'}, 'model': {'name': 'wdl'}}
    """
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"Override {item!r} is not key=value (e.g. train.lr=3e-4).")
        *parents, leaf = key.split(".")
        node = values
        for depth, part in enumerate(parents):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"{'.'.join(parents[:depth + 1])}={child!r} is not a section, so {key} cannot "
                                 "be set; fix the config file.")
            node = child
        node[leaf] = raw if _is_text_field(parents, leaf, raw) else yaml.safe_load(raw)
    return values


def from_dict(values: dict) -> TrainConfig:
    """A checked `TrainConfig` from nested plain values (a parsed YAML file, or `dataclasses.asdict`).

    Raises:
        ValueError: as `load_config`.
    """
    return check_config(_build(TrainConfig, values, ""))


def check_config(cfg: TrainConfig) -> TrainConfig:
    """Refuse values the training code cannot use, naming the key and what is allowed; returns `cfg`.

    Raises:
        ValueError: a value of the wrong type, out of range, not among the choices, or an inconsistent pair.
    """
    for section in (None, *SECTIONS):
        holder = cfg if section is None else getattr(cfg, section)
        for f in dataclasses.fields(holder):
            if section is None and f.name in SECTIONS:
                continue
            key = f.name if section is None else f"{section}.{f.name}"
            _check_value(getattr(holder, f.name), f, key)
    if cfg.data.side_features and cfg.data.source != "movielens":
        raise ValueError(f"data.side_features=true needs data.source=movielens, not {cfg.data.source!r}; set "
                         "data.side_features=false (for a table, list the extra columns in data.sparse).")
    if cfg.data.user_fraction != 1.0 and cfg.data.source != "amazon":
        raise ValueError(f"data.user_fraction={cfg.data.user_fraction:g} needs data.source=amazon, not "
                         f"{cfg.data.source!r}; set data.user_fraction=1.")
    if cfg.mlora.r is None and cfg.mlora.rank_divisor is None and cfg.mlora.rank_divisor_preset == "none":
        raise ValueError("mlora.r and mlora.rank_divisor are both null; set one, e.g. mlora.rank_divisor=64.")
    if cfg.mlora.rank_divisor_preset != "none":
        if cfg.mlora.r is not None:
            raise ValueError(f"mlora.r={cfg.mlora.r} and mlora.rank_divisor_preset={cfg.mlora.rank_divisor_preset} "
                             "both set the rank; set mlora.r=null or mlora.rank_divisor_preset=none.")
        if cfg.mlora.mode != "none":
            preset_rank_divisor(cfg.mlora.rank_divisor_preset, cfg.model.name, cfg.data.source)
    return cfg


def rank_divisor_of(cfg: TrainConfig) -> Optional[int]:
    """The rank divisor the adapters use: the preset's (`mlora.rank_divisor_preset`), else `mlora.rank_divisor`."""
    preset = preset_rank_divisor(cfg.mlora.rank_divisor_preset, cfg.model.name, cfg.data.source)
    return cfg.mlora.rank_divisor if preset is None else preset


def _is_text_field(parents: list[str], leaf: str, raw: str) -> bool:
    """Whether an override sets a text field, whose value is kept as written (`train.mixed_precision=no`)."""
    if len(parents) > 1 or (parents and parents[0] not in SECTIONS):
        return False
    cls = type(SECTIONS[parents[0]]()) if parents else TrainConfig
    found = {f.name: f for f in dataclasses.fields(cls)}.get(leaf)
    return found is not None and found.type in ("str", "Optional[str]") and (
        found.type == "str" or raw.strip() not in ("null", "None", "~", ""))


def _build(cls: type, values: Any, where: str) -> Any:
    if not isinstance(values, dict):
        example = next(f.name for f in dataclasses.fields(cls))
        raise ValueError(f"{where.rstrip('.') or 'The config'}={values!r} is not allowed: it is a section of keys; "
                         f"set them one by one, e.g. {where}{example}=...")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"Unknown config key(s) {[where + str(k) for k in unknown]}; allowed: {sorted(known)}.")
    kwargs = {}
    for name, value in values.items():
        if name in SECTIONS and cls is TrainConfig:
            kwargs[name] = _build(type(SECTIONS[name]()), {} if value is None else value, f"{name}.")
        else:
            kwargs[name] = _coerce(value, known[name].type, where + name)
    return cls(**kwargs)


def _coerce(value: Any, annotation: str, key: str) -> Any:
    """`value` checked against the field's type; YAML reads `3e-4` (no dot) as a string, so such strings are parsed."""
    optional = annotation.startswith("Optional[")
    inner = annotation[len("Optional["):-1] if optional else annotation
    if value is None:
        if optional:
            return None
        raise ValueError(f"{key}=null is not allowed; it needs {_kind(inner)}.")
    if inner in ("int", "float"):
        return _number(value, inner, key)
    if inner.startswith("list["):
        element = inner[len("list["):-1]
        if not isinstance(value, list):
            raise ValueError(f"{key}={value!r} is not allowed; use a list of {_kind(element).split(' ', 1)[1]}s, e.g. {key}=[...].")
        return [_coerce(item, element, f"{key}[{i}]") for i, item in enumerate(value)]
    wanted = {"str": str, "bool": bool, "dict": dict}[inner]
    if not isinstance(value, wanted):
        raise ValueError(f"{key}={value!r} is not allowed; use {_kind(inner)}.")
    return value


def _number(value: Any, kind: str, key: str) -> Union[int, float]:
    if isinstance(value, str):
        try:
            value = float(value) if kind == "float" else int(value)
        except ValueError:
            raise ValueError(f"{key}={value!r} must be {'a number' if kind == 'float' else 'an integer'}, "
                             f"e.g. {key.split('[')[0]}={'3e-4' if kind == 'float' else '8'}.") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind == "int" and isinstance(value, float)):
        raise ValueError(f"{key}={value!r} must be {'a number' if kind == 'float' else 'an integer'}.")
    return float(value) if kind == "float" else value


def _kind(annotation: str) -> str:
    return {"str": "a string", "bool": "true or false", "dict": "a mapping such as {key: value}",
            "int": "an integer", "float": "a number"}.get(annotation, annotation)


def _check_value(value: Any, f: dataclasses.Field, key: str) -> None:
    kind = f.type.replace("Optional[", "").replace("list[", "").rstrip("]")
    allowed, choices = f.metadata.get("range"), f.metadata.get("choices")
    if choices is not None and value not in choices:
        raise ValueError(f"{key}={value!r} is not allowed; use one of {list(choices)}.")
    if allowed is None or value is None:
        return
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, bool) or not isinstance(item, (int, float)) or item not in allowed:
            shown = value if not isinstance(value, list) else f"{value!r} (item {item!r})"
            raise ValueError(f"{key}={shown if isinstance(value, list) else _show(value)} is not allowed; "
                             f"use {allowed.describe(kind)}.")


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) and math.isfinite(value) else repr(value)
