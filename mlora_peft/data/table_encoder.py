"""`MultiDomainEncoder`: every column encoder of a data set, fitted on train and saved as one JSON file.

An encoded table has one int64 column per sparse feature, one float32 column (or fixed-size
list for `dim > 1`) per dense feature, the int64 `domain_id` and, when the raw rows carry the
label column, the float32 `label`. Saving writes `data_encoder.json` next to the adapters; loading
it in another process encodes new raw rows identically. JSON only: no file can run code.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import pyarrow as pa
from torch import Tensor

from ..features import DenseFeature, Feature, SparseFeature
from .columns import ArrowColumn, as_table, normalise_ids, require_columns
from .encoders import CategoricalEncoder, DenseEncoder, DomainEncoder, Normalization
from .labels import LabelRule
from .tensors import table_tensors

ENCODER_FILE = "data_encoder.json"
DOMAIN_COLUMN = "domain_id"
LABEL_COLUMN = "label"
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class MultiDomainEncoder:
    """The label rule, the domain encoder and one encoder per feature column.

    Example:
        >>> import pandas as pd
        >>> train = pd.DataFrame({"user": [3, 5, 5], "price": [1.0, 2.0, 3.0], "country": ["fr", "de", "fr"],
        ...                       "click": [0, 1, 1]})
        >>> enc = MultiDomainEncoder.fit(train, label="click", domain="country", sparse=["user"], dense=["price"])
        >>> enc.domain_names, enc.transform(train).column_names
        (('de', 'fr'), ['user', 'price', 'domain_id', 'label'])
        >>> enc.encode([{"user": 5, "price": 2.5, "country": "de"}])["domain_id"]
        tensor([0])
    """

    label: LabelRule
    domain: DomainEncoder
    sparse: tuple[CategoricalEncoder, ...]
    dense: tuple[DenseEncoder, ...]

    @classmethod
    def fit(
        cls,
        train: Any,
        *,
        label: Union[str, LabelRule],
        domain: str,
        sparse: Sequence[str] = (),
        dense: Sequence[str] = (),
        min_frequency: int = 1,
        normalize: Normalization = "standard",
        domain_order: Optional[Sequence] = None,
        domain_names: Optional[Sequence[str]] = None,
    ) -> MultiDomainEncoder:
        """Fit every encoder on the train rows.

        Args:
            train: the train split (anything `as_table` accepts).
            label: a 0/1 column, a rule such as `"rating>=4"`, or a `LabelRule`.
            domain: the domain column.
            sparse: categorical columns (vocabularies built here).
            dense: numeric columns (fill and scale statistics computed here).
            min_frequency: values seen fewer times share id 0 with unknown ones.
            normalize: `"standard"`, `"minmax"` or `"none"` for every dense column.
            domain_order: domain values in the id order wanted (default: ascending values).
            domain_names: display names for `domain_order` (default: `str(value)`).

        Raises:
            ValueError: missing columns, `domain` naming the label column, a feature named like an output
                column, or any column encoder's error.
        """
        table = as_table(train)
        rule = label if isinstance(label, LabelRule) else LabelRule.parse(label, table.column_names)
        check_roles(rule.column, domain, list(sparse), list(dense))
        require_columns(table.column_names, {"domain": [domain], "sparse": list(sparse), "dense": list(dense)})
        return cls(
            label=rule,
            domain=DomainEncoder.fit(table.column(domain), domain, domain_order, domain_names),
            sparse=tuple(CategoricalEncoder.fit(table.column(n), n, min_frequency) for n in sparse),
            dense=tuple(DenseEncoder.fit(table.column(n), n, normalize) for n in dense),
        )

    @property
    def domain_names(self) -> tuple[str, ...]:
        """Domain names in id order."""
        return self.domain.names

    def grow(self, train: Any, *, min_frequency: int = 1,
             domain_names: Optional[Sequence[str]] = None) -> MultiDomainEncoder:
        """This encoder extended with new domains' train rows: unseen values get new ids, old ids stay.

        Every categorical column appends the values of `train` it does not know (ascending), the
        domain encoder appends the new domains, and the label rule and the dense statistics stay those
        of the original training data (the model was trained on that scaling).

        Args:
            train: the new domains' train split (anything `as_table` accepts); only new domains.
            min_frequency: new values seen fewer times map to 0 (unknown), as at fitting.
            domain_names: display names of the new domains (default `str(value)`).

        Raises:
            ValueError: missing columns, or a domain the encoder already knows.

        Example:
            >>> import pandas as pd
            >>> old = pd.DataFrame({"user": [1, 2], "shop": ["a", "b"], "click": [0, 1]})
            >>> enc = MultiDomainEncoder.fit(old, label="click", domain="shop", sparse=["user"])
            >>> grown = enc.grow(pd.DataFrame({"user": [2, 9], "shop": ["c", "c"], "click": [1, 0]}))
            >>> grown.domain_names, grown.transform(pd.DataFrame({"user": [1, 2, 9], "shop": "c"}))["user"].to_pylist()
            (('a', 'b', 'c'), [1, 2, 3])
        """
        table = as_table(train)
        require_columns(table.column_names, {"domain": [self.domain.column], "sparse": [e.name for e in self.sparse]})
        return dataclasses.replace(
            self, domain=self.domain.grow(table.column(self.domain.column), domain_names),
            sparse=tuple(e.grow(table.column(e.name), min_frequency) for e in self.sparse))

    def additions(self, base: MultiDomainEncoder, rows: Any = None) -> dict[str, Any]:
        """The values this encoder (grown from `base`) adds, as JSON-ready `{"domain": ..., "sparse": ...}`.

        Args:
            base: the encoder this one was grown from (directly or over several growths).
            rows: only the added values these raw rows hold (one domain's train rows), and their domains.

        Raises:
            ValueError: this encoder is not a growth of `base` (another label, columns, or renumbered ids).
        """
        self._check_grown_from(base)
        table = None if rows is None else as_table(rows)

        def added(old: tuple, new: tuple, column: ArrowColumn = None, kind: str = "str") -> list:
            extra = list(new[len(old):])  # a growth appends: the first len(old) values are the base's
            if column is None:
                return extra
            present = set(normalise_ids(column, "values", kind).to_pylist())
            return [v for v in extra if v in present]

        domain_rows = None if table is None else table.column(self.domain.column)
        values = added(base.domain.values, self.domain.values, domain_rows, self.domain.kind)
        names = [self.domain.names[self.domain.values.index(v)] for v in values]
        return {"format_version": _FORMAT_VERSION, "domain": {"values": values, "names": names},
                "sparse": {e.name: added(b.values, e.values, None if table is None else table.column(e.name), e.kind)
                           for b, e in zip(base.sparse, self.sparse)}}

    def with_additions(self, additions: dict[str, Any]) -> MultiDomainEncoder:
        """This encoder with `additions` (from `additions()`) appended; values it already holds are kept as they are.

        Raises:
            ValueError: additions of another format or for columns this encoder lacks.
        """
        if additions.get("format_version") != _FORMAT_VERSION or set(additions["sparse"]) != {e.name for e in self.sparse}:
            raise ValueError(f"Encoder additions for columns {sorted(additions.get('sparse', {}))} do not fit this "
                             f"encoder (columns {[e.name for e in self.sparse]}); load them onto the encoder of the "
                             "model they were trained with.")
        known = set(self.domain.values)
        new = [(v, n) for v, n in zip(additions["domain"]["values"], additions["domain"]["names"]) if v not in known]
        domain = dataclasses.replace(self.domain, values=self.domain.values + tuple(v for v, _ in new),
                                     names=self.domain.names + tuple(n for _, n in new))
        sparse = tuple(dataclasses.replace(e, values=e.values + _unseen(additions["sparse"][e.name], e.values))
                       for e in self.sparse)
        return dataclasses.replace(self, domain=domain, sparse=sparse)

    def _check_grown_from(self, base: MultiDomainEncoder) -> None:
        same = (self.label == base.label and self.dense == base.dense and self.domain.column == base.domain.column
                and [(e.name, e.kind) for e in self.sparse] == [(e.name, e.kind) for e in base.sparse]
                and self.domain.values[:len(base.domain.values)] == base.domain.values
                and all(e.values[:len(b.values)] == b.values for b, e in zip(base.sparse, self.sparse)))
        if not same:
            raise ValueError("This encoder is not a growth of the given base encoder (other columns, label, scaling "
                             "or renumbered ids); pass the encoder the model was first trained with.")

    def feature_spec(self, embedding_dim: int = 8) -> list[Feature]:
        """The zoo's feature specs: one `SparseFeature` per categorical column, one `DenseFeature` per numeric one.

        The domain is not in the spec: it arrives as `domain_id` for routing. A backbone that also
        embeds it adds `SparseFeature("domain_id", vocab_size=len(domain_names))`.
        """
        return [SparseFeature(e.name, e.vocab_size, embedding_dim) for e in self.sparse] + [
            DenseFeature(e.name, e.dim) for e in self.dense
        ]

    def transform(self, rows: Any, *, with_label: Optional[bool] = None) -> pa.Table:
        """Encode raw rows with the fitted encoders.

        Args:
            rows: raw rows (anything `as_table` accepts) holding the feature and domain columns.
            with_label: add the `label` column; default: when the rows hold the label column.

        Returns:
            A table with the sparse, dense, `domain_id` and (optionally) `label` columns.

        Raises:
            ValueError: missing columns, an unseen or missing domain, a bad label.
        """
        table = as_table(rows)
        with_label = self.label.column in table.column_names if with_label is None else with_label
        require_columns(table.column_names, {
            "domain": [self.domain.column], "sparse": [e.name for e in self.sparse],
            "dense": [e.name for e in self.dense], "label": [self.label.column] if with_label else [],
        })
        columns: dict[str, pa.Array] = {e.name: pa.array(e.transform(table.column(e.name))) for e in self.sparse}
        for encoder in self.dense:
            values = encoder.transform(table.column(encoder.name))  # (N, dim)
            columns[encoder.name] = _dense_array(values)
        columns[DOMAIN_COLUMN] = pa.array(self.domain.transform(table.column(self.domain.column)))
        if with_label:
            columns[LABEL_COLUMN] = pa.array(self.label.apply(table.column(self.label.column)))
        return pa.table(columns)

    def encode(self, rows: Any) -> dict[str, Tensor]:
        """Raw rows -> a model-ready batch of tensors (the label only when the rows hold it)."""
        return table_tensors(self.transform(rows))

    def to_json(self) -> str:
        """The encoder as a JSON document."""
        return json.dumps({
            "format_version": _FORMAT_VERSION,
            "label": self.label.to_dict(),
            "domain": self.domain.to_dict(),
            "sparse": {e.name: e.to_dict() for e in self.sparse},
            "dense": {e.name: e.to_dict() for e in self.dense},
        }, indent=1)

    @classmethod
    def from_json(cls, text: str) -> MultiDomainEncoder:
        """Inverse of `to_json`.

        Raises:
            ValueError: a document of another format version.
        """
        state = json.loads(text)
        if state.get("format_version") != _FORMAT_VERSION:
            raise ValueError(
                f"Encoder format_version {state.get('format_version')!r}; this library reads {_FORMAT_VERSION}."
            )
        return cls(
            label=LabelRule.from_dict(state["label"]),
            domain=DomainEncoder.from_dict(state["domain"]),
            sparse=tuple(CategoricalEncoder.from_dict(n, s) for n, s in state["sparse"].items()),
            dense=tuple(DenseEncoder.from_dict(n, s) for n, s in state["dense"].items()),
        )

    def save(self, directory: Union[str, Path]) -> Path:
        """Write `data_encoder.json` into `directory` (created if needed) and return its path."""
        path = Path(directory) / ENCODER_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json())
        return path

    @classmethod
    def load(cls, directory: Union[str, Path]) -> MultiDomainEncoder:
        """Read `data_encoder.json` from `directory` (or from the file path itself).

        Raises:
            FileNotFoundError: no encoder file there.
        """
        path = Path(directory)
        path = path / ENCODER_FILE if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"No {ENCODER_FILE} at {path}; save one with MultiDomainEncoder.save(directory).")
        return cls.from_json(path.read_text())


def _unseen(values: list, known: tuple) -> tuple:
    """`values` not in `known`, in order."""
    seen = set(known)
    return tuple(v for v in values if v not in seen)


def _dense_array(values: np.ndarray) -> pa.Array:
    """float32 `(N,)` column for dim 1, a fixed-size list column otherwise."""
    if values.shape[1] == 1:
        return pa.array(values[:, 0])
    return pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), values.shape[1])


def check_roles(label: str, domain: str, sparse: list[str], dense: list[str]) -> None:
    """Refuse a domain column that is the label column, and features listed twice or named like the outputs.

    Raises:
        ValueError: naming the clash and the fix.
    """
    if domain == label:
        raise ValueError(
            f"domain={domain!r} is the label column: routing each row by its own label would leak the label "
            "into the model (each domain's adapter would learn its domain's label). Pass the column that names "
            "each row's domain (e.g. a country, scenario or category column)."
        )
    features = sparse + dense
    duplicated = sorted({n for n in features if features.count(n) > 1})
    reserved = sorted(set(features) & {DOMAIN_COLUMN, LABEL_COLUMN, label, domain})
    if duplicated or reserved:
        raise ValueError(
            f"Feature columns {duplicated + reserved} are listed twice or clash with the label/domain columns "
            f"({label!r}, {domain!r}) or the outputs {DOMAIN_COLUMN!r}/{LABEL_COLUMN!r}; list each feature once "
            "and rename clashing columns."
        )
