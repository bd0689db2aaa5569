"""What the benchmark runs and what a run leaves: typed records, serialised as JSON, never parsed from names.

`DataSpec` is one data set, `Variant` one model (backbone or baseline, MLoRA mode, rank divisor, named
option) and `RunRecord` one finished (data, variant, seed) run, written as `summary.json`. A variant's
`name` (`mlp+mlora/64[opt]`) is a label for tables and folders only: the report reads the fields.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Collection
from typing import Any, Optional

from mlora_peft import models
from mlora_peft.atomic import write_text_atomic

POPULARITY, ORACLE = "popularity", "oracle"
"""Model names of the two no-training scores: each row's id popularity, and (synthetic data) the generator's own
click probability, the best any model can do."""

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
    "emb_l2_table": ("train.embedding_l2=1e-5", "train.embedding_l2_scope=table"),
    "paper_divisor": ("mlora.rank_divisor_preset=paper",),
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

    model: str  # a zoo model, or POPULARITY
    mode: str = "none"  # none, joint, two_stage, or finetune (the plain backbone fine-tuned per domain)
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
        divisor = "" if not self.is_mlora or self.rank_divisor == DEFAULT_DIVISOR else f"/{self.rank_divisor}"
        return kind + divisor + (f"[{self.option}]" if self.option else "")

    @property
    def folder(self) -> str:
        return self.name.replace("/", "_r")

    @property
    def is_baseline(self) -> bool:
        return self.model in models.list_models("baselines")

    @property
    def is_popularity(self) -> bool:
        """The no-training popularity score (`mlora_peft.training.diagnose.popularity_reports`)."""
        return self.model == POPULARITY

    @property
    def is_oracle(self) -> bool:
        return self.model == ORACLE

    @property
    def is_mlora(self) -> bool:
        return self.mode in ("joint", "two_stage")

    @property
    def is_finetune(self) -> bool:
        """The plain backbone's best weights fine-tuned on each domain alone: the headroom's upper bound."""
        return self.mode == "finetune"

    @property
    def is_plain(self) -> bool:
        """A plain model (no MLoRA), with or without an option."""
        return self.mode == "none"

    @property
    def reference(self) -> Variant:
        """The plain model this one is compared with: its backbone, or the plain MLP for a baseline."""
        return Variant("mlp" if self.is_baseline or self.is_popularity or self.is_oracle else self.model)

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


# ---------------------------------------------------------------------------------- the committed store
RECORDS_SUFFIX = ".jsonl"
COMMANDS = "commands.jsonl"
"""The commands behind the records, one JSON line each, in `<folder>/commands.jsonl`."""


def record_line(record: RunRecord) -> str:
    """One record as one JSON line, keys sorted, so the same run always writes the same bytes."""
    return json.dumps(record.to_json(), sort_keys=True, separators=(",", ":"))


def write_records(folder: Path, records: list[RunRecord]) -> list[Path]:
    """Merge `records` into `<folder>/<data key>.jsonl` (one run per line, sorted); a run already there is replaced.

    Each file is written to a temporary file and renamed, so an interrupted write leaves the old file.
    Returns the files written.
    """
    by_key: dict[str, dict[tuple, RunRecord]] = {}
    for record in records:  # only these data sets' files are read and written (another run may own others)
        by_key.setdefault(record.data.key, {})
    for record in [*read_records(folder, by_key), *records]:
        by_key[record.data.key][(record.variant, record.seed)] = record
    written = []
    for key, runs in sorted(by_key.items()):
        lines = [record_line(runs[k]) for k in sorted(runs)]
        written.append(write_text_atomic(folder / f"{key}{RECORDS_SUFFIX}", "\n".join(lines) + "\n"))
    return written


def read_records(folder: Path, keys: Optional[Collection[str]] = None) -> list[RunRecord]:
    """Every record in `<folder>/*.jsonl` (or in the files of the data `keys` only), in file and line order.

    Raises:
        ValueError: a line that is not a record, naming the file and line.
    """
    found = []
    for path in sorted(folder.glob(f"*{RECORDS_SUFFIX}")) if folder.is_dir() else []:
        if path.name == COMMANDS or (keys is not None and path.name[: -len(RECORDS_SUFFIX)] not in keys):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            try:
                found.append(RunRecord.from_json(json.loads(line)))
            except (ValueError, TypeError, KeyError) as error:
                raise ValueError(f"{path}:{number} is not a benchmark run record ({error}); restore the file "
                                 "from git or delete the line.") from error
    return found
