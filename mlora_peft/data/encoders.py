"""Column encoders fitted on the train split and saved as plain JSON.

- `CategoricalEncoder`: raw ids -> int64 in [0, vocab_size); 0 means unknown or missing, known
  values get 1, 2, ... in ascending value order (numbers numerically, strings by code point);
  `grow` appends a new domain's unseen values after them, so old ids never change.
- `DenseEncoder`: numbers -> float32, missing values filled with the train mean, then
  standardised (default), min-max scaled or left as they are, per dimension.
- `DomainEncoder`: domain values of any type -> contiguous ids 0..D-1 in ascending value order,
  or in an order the caller gives. A missing or unseen domain is an error, never id 0: routing a
  row to another domain's adapter would be silent and wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .columns import ArrowColumn, IdKind, id_kind, normalise_ids, numeric_matrix

Normalization = Literal["standard", "minmax", "none"]
NORMALIZATIONS = ("standard", "minmax", "none")
_ARROW_TYPES = {"int": pa.int64(), "str": pa.large_string()}


@dataclass(frozen=True)
class CategoricalEncoder:
    """Vocabulary of one categorical column.

    Attributes:
        name: column name.
        kind: `"int"` or `"str"`, the id type the vocabulary holds.
        values: known values in ascending order; value `values[i]` gets id `i + 1`.

    Example:
        >>> enc = CategoricalEncoder.fit(pa.array(["b", "a", "b", None]), "city")
        >>> enc.values, enc.transform(pa.array(["a", "b", "z", None])).tolist()
        (('a', 'b'), [1, 2, 0, 0])
    """

    name: str
    kind: IdKind
    values: tuple

    @classmethod
    def fit(cls, column: ArrowColumn, name: str, min_frequency: int = 1) -> CategoricalEncoder:
        """Build the vocabulary from the values seen at least `min_frequency` times.

        Raises:
            ValueError: `min_frequency` below 1.
        """
        if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
            raise ValueError(f"min_frequency={min_frequency!r} must be an int >= 1 (1 keeps every value).")
        ids = normalise_ids(column, name)
        counts = pc.value_counts(ids.drop_null())
        kept = counts.field("values").filter(pc.greater_equal(counts.field("counts"), min_frequency))
        kept = kept.take(pc.sort_indices(kept))
        return cls(name, id_kind(ids), tuple(kept.to_pylist()))

    @property
    def vocab_size(self) -> int:
        """Number of ids including 0 (unknown or missing)."""
        return len(self.values) + 1

    def transform(self, column: ArrowColumn) -> np.ndarray:
        """int64 ids `(N,)`: 1.. for known values, 0 for unknown and missing ones."""
        ids = normalise_ids(column, self.name, self.kind)
        position = pc.index_in(ids, value_set=self._value_set())
        return pc.fill_null(pc.add(position.cast(pa.int64()), 1), 0).to_numpy(zero_copy_only=False)

    def grow(self, column: ArrowColumn, min_frequency: int = 1) -> CategoricalEncoder:
        """The vocabulary with the unseen values of `column` appended (ascending), old ids unchanged.

        Example:
            >>> enc = CategoricalEncoder.fit(pa.array(["b", "a"]), "city").grow(pa.array(["c", "a", "0"]))
            >>> enc.values, enc.transform(pa.array(["a", "b", "0", "c"])).tolist()
            (('a', 'b', '0', 'c'), [1, 2, 3, 4])
        """
        ids = normalise_ids(column, self.name, self.kind)
        seen = CategoricalEncoder.fit(ids, self.name, min_frequency).values
        known = set(self.values)
        return CategoricalEncoder(self.name, self.kind, self.values + tuple(v for v in seen if v not in known))

    def _value_set(self) -> pa.Array:
        return pa.array(self.values, type=_ARROW_TYPES[self.kind])

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "values": list(self.values)}

    @classmethod
    def from_dict(cls, name: str, state: dict[str, Any]) -> CategoricalEncoder:
        return cls(name, _check_kind(state["kind"], name), tuple(state["values"]))


@dataclass(frozen=True)
class DenseEncoder:
    """Fill and scale statistics of one numeric column, per dimension.

    Attributes:
        name: column name.
        dim: values per row (1 for a scalar column).
        normalize: `"standard"` ((x - mean) / std), `"minmax"` ((x - min) / (max - min)) or `"none"`.
        fill: per-dimension train means, used for missing values before scaling.
        shift, scale: the affine map, `(x - shift) / scale`.

    Example:
        >>> enc = DenseEncoder.fit(pa.array([1.0, 3.0, None]), "price")
        >>> enc.transform(pa.array([1.0, 3.0, None])).ravel().tolist()
        [-1.0, 1.0, 0.0]
    """

    name: str
    dim: int
    normalize: Normalization
    fill: tuple
    shift: tuple
    scale: tuple

    @classmethod
    def fit(cls, column: ArrowColumn, name: str, normalize: Normalization = "standard") -> DenseEncoder:
        """Statistics from the train values (NaN and nulls ignored; an all-missing column gets 0 / 1).

        Raises:
            ValueError: an unknown `normalize`.
            TypeError: a non-numeric column.
        """
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize={normalize!r} is not one of {NORMALIZATIONS}.")
        values = numeric_matrix(column, name)  # (N, dim)
        fill, low, high, spread = _nan_stats(values)
        if normalize == "standard":
            shift, scale = fill, np.where(spread > 0, spread, 1.0)
        elif normalize == "minmax":
            shift, scale = low, np.where(high > low, high - low, 1.0)
        else:
            shift, scale = np.zeros_like(fill), np.ones_like(fill)
        as_tuple = lambda a: tuple(float(x) for x in a)  # noqa: E731
        return cls(name, values.shape[1], normalize, as_tuple(fill), as_tuple(shift), as_tuple(scale))

    def transform(self, column: ArrowColumn) -> np.ndarray:
        """float32 `(N, dim)`, filled and scaled with the train statistics.

        Raises:
            ValueError: the column has a different number of values per row than at fitting time.
        """
        values = numeric_matrix(column, self.name)  # (N, dim)
        if values.shape[1] != self.dim and len(values):
            raise ValueError(
                f"Dense column {self.name!r} has {values.shape[1]} values per row; it was fitted with {self.dim}."
            )
        values = np.where(np.isnan(values), np.asarray(self.fill), values)
        return ((values - np.asarray(self.shift)) / np.asarray(self.scale)).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"dim": self.dim, "normalize": self.normalize, "fill": list(self.fill),
                "shift": list(self.shift), "scale": list(self.scale)}

    @classmethod
    def from_dict(cls, name: str, state: dict[str, Any]) -> DenseEncoder:
        return cls(name, int(state["dim"]), state["normalize"], tuple(state["fill"]), tuple(state["shift"]),
                   tuple(state["scale"]))


@dataclass(frozen=True)
class DomainEncoder:
    """Domain values -> contiguous ids 0..D-1.

    Attributes:
        column: the raw domain column's name.
        kind: `"int"` or `"str"`.
        values: the raw value of each domain id, in id order.
        names: display names (`str(value)` unless given), the routing names of the adapters.

    Example:
        >>> enc = DomainEncoder.fit(pa.array(["M", "F", "M"]), "gender")
        >>> enc.names, enc.transform(pa.array(["F", "M"])).tolist()
        (('F', 'M'), [0, 1])
    """

    column: str
    kind: IdKind
    values: tuple
    names: tuple

    @classmethod
    def fit(cls, column: ArrowColumn, name: str, order: Optional[Sequence] = None,
            names: Optional[Sequence[str]] = None) -> DomainEncoder:
        """Domains seen in `column`, sorted ascending, or in `order` when given.

        Args:
            column: the train split's domain column.
            name: the column's name.
            order: every domain value, in the id order wanted (e.g. age buckets youngest first).
            names: display names matching `order` (default `str(value)`).

        Raises:
            ValueError: missing domain values, a seen value absent from `order`, a value in
                `order` without rows, duplicates, or `names` of the wrong length.
        """
        ids = domain_values(column, name)
        seen = pc.unique(ids)
        if order is None:
            ordered = seen.take(pc.sort_indices(seen))
        else:
            ordered = normalise_ids(pa.array(list(order)), name, id_kind(ids))
            if len(pc.unique(ordered)) != len(ordered):
                raise ValueError(f"domain_order={list(order)!r} lists a domain twice; list each once.")
            _check_same_domains(seen, ordered, name)
        values = tuple(ordered.to_pylist())
        labels = tuple(str(v) for v in values) if names is None else tuple(names)
        if len(labels) != len(values) or len(set(labels)) != len(labels):
            raise ValueError(f"domain names {list(labels)!r} must be {len(values)} distinct strings, one per domain.")
        return cls(name, id_kind(ids), values, labels)

    def grow(self, column: ArrowColumn, names: Optional[Sequence[str]] = None) -> DomainEncoder:
        """The domains with those of `column` appended (ascending), old ids unchanged.

        Args:
            column: the new data's train domain column; it must hold only new domains.
            names: display names of the new domains, in ascending value order (default `str(value)`).

        Raises:
            ValueError: `column` holds a domain the encoder knows (train it with the model instead), or
                names that are taken or of the wrong length.

        Example:
            >>> enc = DomainEncoder.fit(pa.array(["M", "F"]), "gender").grow(pa.array(["X"]))
            >>> enc.names, enc.transform(pa.array(["X", "F"])).tolist()
            (('F', 'M', 'X'), [2, 0])
        """
        new = DomainEncoder.fit(normalise_ids(column, self.column, self.kind), self.column, names=names)
        known = [n for v, n in zip(new.values, new.names) if v in set(self.values) or n in set(self.names)]
        if known:
            raise ValueError(f"Domains {known} are already in the model ({list(self.names)}); onboarding adds "
                             "new domains only: drop their rows from the new data, or train the model again.")
        return DomainEncoder(self.column, self.kind, self.values + new.values, self.names + new.names)

    def transform(self, column: ArrowColumn) -> np.ndarray:
        """int64 domain ids `(N,)`.

        Raises:
            ValueError: a missing domain value, or a domain that was not seen at fitting time.
        """
        ids = domain_values(column, self.column, self.kind)
        position = pc.index_in(ids, value_set=pa.array(self.values, type=_ARROW_TYPES[self.kind]))
        if position.null_count:
            unseen = pc.value_counts(ids.filter(pc.is_null(position))).to_pylist()
            listed = ", ".join(f"{item['values']!r} ({item['counts']} rows)" for item in unseen[:5])
            raise ValueError(
                f"Domain column {self.column!r} holds domains unseen in training: {listed}. Known domains: "
                f"{list(self.names)}. Map these rows to a known domain, drop them, or onboard the new "
                "domain: encoder.grow(new_train_rows) keeps every old id and model.add_domains adds its adapter "
                "(recipes/add_domain.py does both, and grows the embedding tables)."
            )
        return position.cast(pa.int64()).to_numpy(zero_copy_only=False)

    def to_dict(self) -> dict[str, Any]:
        return {"column": self.column, "kind": self.kind, "values": list(self.values), "names": list(self.names)}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> DomainEncoder:
        return cls(state["column"], _check_kind(state["kind"], state["column"]), tuple(state["values"]),
                   tuple(state["names"]))


def domain_codes(column: ArrowColumn, name: str) -> np.ndarray:
    """Provisional int64 codes `(N,)` grouping equal domain values (first-appearance order), for splitting.

    Args:
        column: raw domain values.
        name: column name, for error messages.

    Returns:
        int64 codes `(N,)`.

    Raises:
        ValueError: missing domain values.

    Example:
        >>> domain_codes(pa.array(["nl", "fr", "nl"]), "country").tolist()
        [0, 1, 0]
    """
    return pc.dictionary_encode(domain_values(column, name)).indices.cast(pa.int64()).to_numpy(zero_copy_only=False)


def domain_values(column: ArrowColumn, name: str, kind: Optional[IdKind] = None) -> pa.Array:
    """Normalised domain values (see `normalise_ids`).

    Args:
        column: raw domain values.
        name: column name, for error messages.
        kind: target id kind (default: from the column).

    Returns:
        An int64 or large_string Arrow array without nulls.

    Raises:
        ValueError: missing values.

    Example:
        >>> domain_values(pa.array([2.0, 1.0]), "scenario").to_pylist()
        [2, 1]
    """
    ids = normalise_ids(column, name, kind)
    if ids.null_count:
        raise ValueError(
            f"Domain column {name!r} has {ids.null_count} missing values; every row needs a domain. "
            "Fill them (e.g. with an 'unknown' domain) or drop those rows."
        )
    return ids


def _check_same_domains(seen: pa.Array, ordered: pa.Array, name: str) -> None:
    extra = pc.filter(seen, pc.invert(pc.is_in(seen, value_set=ordered))).to_pylist()
    absent = pc.filter(ordered, pc.invert(pc.is_in(ordered, value_set=seen))).to_pylist()
    if extra:
        raise ValueError(f"Domains {extra} of column {name!r} are missing from domain_order; list every domain.")
    if absent:
        raise ValueError(
            f"domain_order lists {absent}, which have no training rows in column {name!r}; "
            "remove them (an adapter cannot be trained without rows)."
        )


def _nan_stats(values: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-column mean, min, max and std ignoring NaN; all-NaN columns get 0, 0, 0, 0."""
    present = ~np.isnan(values)
    count = present.sum(0)
    safe = np.where(present, values, 0.0)
    mean = safe.sum(0) / np.maximum(count, 1)
    spread = np.sqrt((np.where(present, values - mean, 0.0) ** 2).sum(0) / np.maximum(count, 1))
    low = np.where(count > 0, np.where(present, values, np.inf).min(0, initial=np.inf), 0.0)
    high = np.where(count > 0, np.where(present, values, -np.inf).max(0, initial=-np.inf), 0.0)
    return mean, low, high, spread


def _check_kind(kind: str, name: str) -> IdKind:
    if kind not in _ARROW_TYPES:
        raise ValueError(f"Encoder of {name!r} has kind {kind!r}; expected one of {sorted(_ARROW_TYPES)}.")
    return kind
