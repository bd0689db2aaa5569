"""Feature specs: typed, frozen descriptions of a CTR model's inputs, saved and loaded as JSON.

A spec says what a batch dict holds: `SparseFeature` (one id per row, `(N,)` int64),
`DenseFeature` (`(N,)` or `(N, dim)` float32) and `SequenceFeature` (`(N, L)` int64 ids, 0 =
padding, pooled to one vector). Specs are plain values: building a model from a spec creates
new weights every time, so two models never share an embedding table by accident.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Literal, Union

POOLINGS = ("mean", "sum", "max")


@dataclass(frozen=True)
class SparseFeature:
    """A categorical column: ids in [0, vocab_size), 0 reserved for unknown or missing.

    Example:
        >>> SparseFeature("user", vocab_size=944, embedding_dim=8)
        SparseFeature(name='user', vocab_size=944, embedding_dim=8)
    """

    name: str
    vocab_size: int
    embedding_dim: int = 8

    def __post_init__(self) -> None:
        _check_name(self.name)
        _check_positive(self, "vocab_size", "embedding_dim")


@dataclass(frozen=True)
class DenseFeature:
    """A numeric column of `dim` values per row (already filled and normalised)."""

    name: str
    dim: int = 1

    def __post_init__(self) -> None:
        _check_name(self.name)
        _check_positive(self, "dim")


@dataclass(frozen=True)
class SequenceFeature:
    """A multi-valued column: up to `max_length` ids per row, 0 = padding, pooled to one vector."""

    name: str
    vocab_size: int
    max_length: int
    embedding_dim: int = 8
    pooling: Literal["mean", "sum", "max"] = "mean"

    def __post_init__(self) -> None:
        _check_name(self.name)
        _check_positive(self, "vocab_size", "max_length", "embedding_dim")
        if self.pooling not in POOLINGS:
            raise ValueError(f"SequenceFeature {self.name!r}: pooling={self.pooling!r}; use one of {POOLINGS}.")


Feature = Union[SparseFeature, DenseFeature, SequenceFeature]
_KINDS = {cls.__name__: cls for cls in (SparseFeature, DenseFeature, SequenceFeature)}


def features_to_json(features: list[Feature]) -> str:
    """A JSON list of `{"type": ..., **fields}` objects, one per feature."""
    _check_unique(features)
    return json.dumps([{"type": type(f).__name__, **asdict(f)} for f in features], indent=2)


def features_from_json(text: str) -> list[Feature]:
    """Inverse of `features_to_json`; refuses unknown feature types and fields."""
    features = []
    for item in json.loads(text):
        kind = item.pop("type", None)
        if kind not in _KINDS:
            raise ValueError(f"Unknown feature type {kind!r} in feature spec; known: {sorted(_KINDS)}.")
        try:
            features.append(_KINDS[kind](**item))
        except TypeError as error:
            raise ValueError(f"Bad {kind} entry {item}: {error}.") from None
    _check_unique(features)
    return features


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"Feature name {name!r} must be a non-empty string (the batch dict key).")


def _check_positive(feature, *names: str) -> None:
    for name in names:
        value = getattr(feature, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{type(feature).__name__} {feature.name!r}: {name}={value!r} must be an int >= 1.")


def _check_unique(features: list[Feature]) -> None:
    names = [f.name for f in features]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"Feature names {duplicates} appear more than once; each batch key needs one feature.")
