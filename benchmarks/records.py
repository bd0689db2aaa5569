"""What the benchmark runs and what a run leaves: typed records, serialised as JSON, never parsed from names.

`DataSpec` is one data set, `Variant` one model (backbone or baseline, MLoRA mode, rank divisor, named
option) and `RunRecord` one finished (data, variant, seed) run, written as `summary.json`. A variant's
`name` (`mlp+mlora/64[opt]`) is a label for tables and folders only: the report reads the fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from mlora_peft import models

DEFAULT_DIVISOR = 16
"""The rank divisor the benchmark's `x+mlora` runs use (others are labelled `/divisor`)."""

OPTIONS: dict[str, tuple[str, ...]] = {
    "emb_l2_0.1": ("train.embedding_l2=0.1",),
    "emb_l2_1": ("train.embedding_l2=1",),
    "emb_l2_10": ("train.embedding_l2=10",),
    "plateau": ("train.lr_schedule=plateau", "train.lr_decay=0.3", "train.patience=4"),
    "cosine": ("train.lr_schedule=cosine", "train.max_epochs=8", "train.min_lr_ratio=0.05"),
    "paper_dropout": ("model.options.dropout_placement=base_output",),
    "adapter_dropout": ("mlora.dropout=0.3",),
    "no_domain_bias": ("mlora.domain_bias=false",),
    "keep_shared": ("mlora.keep_shared_if_better=true",),
    "adapter_lr_0.1": ("mlora.lr_ratio=0.1",),
    "adapter_lr_0.3": ("mlora.lr_ratio=0.3",),
    "dropout_0.1": ("model.dropout=0.1",),
    "no_dropout": ("model.dropout=0",),
    "input_bn": ("model.options.input_norm=batch",),
}
"""Named training options a variant may add (`--options`), each a list of train.py overrides. A plain
backbone runs with the option too, so the option's effect on the plain and the MLoRA model is paired."""

OPTION_MODES: dict[str, str] = {"keep_shared": "two_stage"}
"""The MLoRA mode an option runs with, where it is not joint (`x+two_stage[option]`)."""


@dataclass(frozen=True)
class DataSpec:
    """One benchmark data set: how to load it for a seed, and the training batch composition.

    Example:
        >>> spec = DataSpec("ml100k-age", "ML-100K by age", "movielens", {"domain": "age"})
        >>> DataSpec.from_json(spec.to_json()) == spec, spec.family
        (True, 'ml100k')
    """

    key: str  # cache folder and table name
    title: str
    source: str  # synthetic, movielens or amazon
    options: dict = field(default_factory=dict)
    composition: str = "mixed"

    @property
    def family(self) -> str:
        """amazon6, ml100k or synthetic: the page's grouping."""
        return {"amazon": "amazon6", "movielens": "ml100k"}.get(self.source, self.source)

    @property
    def data_key(self) -> str:
        """The key of the same data without the composition: one loaded data set serves both."""
        return self.key if self.composition == "mixed" else self.key[: -len(f"@{self.composition}")]

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, values: dict) -> DataSpec:
        return cls(**values)


@dataclass(frozen=True, order=True)
class Variant:
    """One model: a zoo backbone or baseline, the MLoRA mode and rank divisor, and a named option.

    Example:
        >>> Variant("mlp", "joint", 64, "plateau").name
        'mlp+mlora/64[plateau]'
        >>> Variant("mlp").is_plain, Variant("mlp", "joint").config
        (True, '+mlora')
    """

    model: str
    mode: str = "none"  # none, joint or two_stage
    rank_divisor: int = DEFAULT_DIVISOR
    option: str = ""  # a key of OPTIONS, or "" for the paper's settings

    @property
    def name(self) -> str:
        """The label shown in tables (`mlp`, `mlp+mlora`, `mlp+two_stage/64`, `mlp[option]`); never parsed."""
        return self.model + self.config

    @property
    def config(self) -> str:
        """The label without the model: `+mlora/64[option]` (empty for the plain model with the paper's settings)."""
        kind = "" if self.mode == "none" else "+mlora" if self.mode == "joint" else f"+{self.mode}"
        divisor = "" if self.mode == "none" or self.rank_divisor == DEFAULT_DIVISOR else f"/{self.rank_divisor}"
        return kind + divisor + (f"[{self.option}]" if self.option else "")

    @property
    def folder(self) -> str:
        return self.name.replace("/", "_r")

    @property
    def is_baseline(self) -> bool:
        return self.model in models.list_models("baselines")

    @property
    def is_plain(self) -> bool:
        """A plain model (no MLoRA), with or without an option."""
        return self.mode == "none"

    @property
    def reference(self) -> Variant:
        """The plain model this one is compared with: its backbone, or the plain MLP for a baseline."""
        return Variant("mlp" if self.is_baseline else self.model)

    @property
    def is_reference(self) -> bool:
        """A plain backbone with the paper's settings (what the other variants are compared with)."""
        return self == self.reference

    @property
    def overrides(self) -> tuple[str, ...]:
        return OPTIONS[self.option] if self.option else ()

    @property
    def keeps_backbone(self) -> bool:
        """Whether the backbone is the paper's: no option, or an option of MLoRA's own settings (`mlora.*`)."""
        return all(o.startswith("mlora.") for o in self.overrides)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, values: dict) -> Variant:
        return cls(**values)


@dataclass(frozen=True)
class RunRecord:
    """One finished (data, variant, seed) run: what it ran with and its scores; `summary.json` in the cache.

    `option_overrides` records what the option meant when the run was trained, so a run whose option was
    redefined since is refused rather than mislabelled.

    Example:
        >>> run = RunRecord(DataSpec("d", "d", "synthetic"), Variant("mlp"), 0, ["a"], {"wauc": 0.7}, {}, 3, 1.0)
        >>> RunRecord.from_json(run.to_json()) == run
        True
    """

    data: DataSpec
    variant: Variant
    seed: int
    domains: list[str]
    test: dict  # wauc, mean_auc, logloss, per_domain (auc, logloss, rows, positives)
    validation: dict  # the kept epoch's mean_auc, wauc, best_epoch
    epochs: int
    seconds: float
    params: dict = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    option_overrides: list[str] = field(default_factory=list)

    @property
    def seconds_per_epoch(self) -> float:
        return self.seconds / max(self.epochs, 1)

    def auc(self, domain: str) -> float:
        """Test AUC of one domain (NaN when undefined)."""
        value = self.test["per_domain"][domain]["auc"]
        return float("nan") if value is None else value

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "data": self.data.to_json(), "variant": self.variant.to_json()}

    @classmethod
    def from_json(cls, values: dict) -> RunRecord:
        return cls(**{**values, "data": DataSpec.from_json(values["data"]),
                      "variant": Variant.from_json(values["variant"])})


Runs = dict[int, RunRecord]
"""One variant's runs on one data set, by seed."""
