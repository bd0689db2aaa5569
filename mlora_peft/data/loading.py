"""`load_multidomain`: a raw table in, encoded train / validation / test splits out.

Steps: read the source; compute labels (a non-binary column without a rule is an error); split
(provided splits, a per-domain label-stratified random split, or a time split); fit the encoders
on train only; check every validation/test domain was seen in train; encode every split.

Policies for awkward data (each tested):
- a domain in validation/test but not in train: ValueError (it would have no trained adapter);
- a domain with no rows in validation or test: `EmptyDomainWarning` (its metrics there are undefined);
- missing or NaN ids in sparse columns: id 0, like unknown values; missing dense values: the train mean;
- missing labels or domains: ValueError;
- the domain column is the label column: ValueError (routing by the label leaks it into the model);
- one label class in the train split: ValueError; a domain with one class in a split: `OneClassWarning`;
- an inferred feature column of numbers with a few non-numeric cells: ValueError naming a cell (declare it).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
from datasets.fingerprint import generate_random_fingerprint
from datasets.table import InMemoryTable

from ..features import Feature
from .batching import Composition, make_loader
from .columns import dense_text_error, id_kind, non_numeric_cells, normalise_ids, require_columns
from .encoders import Normalization, domain_codes, domain_values
from .labels import LabelRule
from .sources import UNSPLIT, read_source
from .splits import DEFAULT_FRACTIONS, SPLIT_NAMES, TimeSplit, check_fractions, stratified_parts, time_parts
from .summary import feature_rows, format_rows
from .table_encoder import DOMAIN_COLUMN, LABEL_COLUMN, MultiDomainEncoder, check_roles

SplitSpec = Union[None, str, Sequence[float], TimeSplit]
VALIDATION_FROM_TRAIN = 0.25
"""Share of provided train rows moved to validation when a source has only train and test (80/20 -> 60/20/20)."""


class OneClassWarning(UserWarning):
    """A domain's rows in one split hold a single label class: its AUC there is undefined.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore", OneClassWarning)  # e.g. a domain without clicks in a small sample
    """


class EmptyDomainWarning(UserWarning):
    """A domain has no rows in the validation or test split.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("error", EmptyDomainWarning)  # treat empty domains as errors here
    """


@dataclass(frozen=True)
class MultiDomainData:
    """Encoded splits plus the encoder that produced them.

    Attributes:
        splits: `DatasetDict` with train / validation / test; columns: the sparse features (int64),
            dense features (float32), `domain_id` (int64) and `label` (float32, 0/1).
        encoder: the fitted `MultiDomainEncoder` (save it next to the adapters).
        embedding_dim: embedding width written into `feature_spec`.

    Example:
        >>> import pandas as pd
        >>> frame = pd.DataFrame({"user": range(40), "country": ["fr", "de"] * 20, "click": [0, 1, 1, 0] * 10})
        >>> data = load_multidomain(frame, label="click", domain="country", sparse=["user"], seed=0)
        >>> data.domain_names, data.splits["train"].num_rows
        (('de', 'fr'), 24)
    """

    splits: datasets.DatasetDict
    encoder: MultiDomainEncoder
    embedding_dim: int = 8

    @property
    def domain_names(self) -> tuple[str, ...]:
        """Domain names in `domain_id` order."""
        return self.encoder.domain_names

    @property
    def num_domains(self) -> int:
        return len(self.encoder.domain_names)

    @property
    def feature_spec(self) -> list[Feature]:
        """Sparse and dense feature specs for building a backbone (the domain is routed, not listed)."""
        return self.encoder.feature_spec(self.embedding_dim)

    def stats(self) -> pd.DataFrame:
        """Rows, positives and CTR per split and domain (one row each, domains in id order)."""
        records = []
        for split_name, split in self.splits.items():
            columns = split.with_format("numpy", columns=[DOMAIN_COLUMN, LABEL_COLUMN])[:]
            rows = np.bincount(columns[DOMAIN_COLUMN], minlength=self.num_domains)
            positives = np.bincount(columns[DOMAIN_COLUMN], weights=columns[LABEL_COLUMN], minlength=self.num_domains)
            for domain, name in enumerate(self.domain_names):
                ctr = positives[domain] / rows[domain] if rows[domain] else float("nan")
                records.append({"split": split_name, "domain": name, "rows": int(rows[domain]),
                                "positives": int(positives[domain]), "ctr": float(ctr)})
        return pd.DataFrame.from_records(records)

    def feature_table(self) -> list[dict[str, Any]]:
        """The features as inferred and fitted: name, kind (sparse/dense), vocabulary size or train mean/std.

        JSON-ready rows (None where a key does not apply), for a run log or `results.json`; see
        `mlora_peft.data.summary.feature_rows` for every key. `feature_table_text()` prints them.

        Example:
            >>> import pandas as pd
            >>> frame = pd.DataFrame({"user": [1, 2] * 20, "price": [1.0, 3.0] * 20, "country": ["fr", "de"] * 20,
            ...                       "click": [0, 1, 1, 0] * 10})
            >>> row = load_multidomain(frame, label="click", domain="country", seed=0).feature_table()[1]
            >>> row["name"], row["kind"], row["mean"], row["std"]
            ('price', 'dense', 2.0, 1.0)
        """
        return feature_rows(self.encoder, self.splits["train"])

    def feature_table_text(self) -> str:
        """`feature_table()` as an aligned text table, one line per feature."""
        return format_rows(self.feature_table())

    def loader(
        self,
        split: str = "train",
        *,
        batch_size: int = 1024,
        composition: Composition = "mixed",
        shuffle: Optional[bool] = None,
        seed: int = 0,
        num_processes: Optional[int] = None,
        **loader_kwargs: Any,
    ) -> Any:
        """A `DataLoader` over one split (see `make_loader`); shuffles the train split by default."""
        return make_loader(self.splits[split], batch_size=batch_size, composition=composition,
                           shuffle=split == "train" if shuffle is None else shuffle, seed=seed,
                           num_processes=num_processes, **loader_kwargs)

    def save_encoder(self, directory: Union[str, Path]) -> Path:
        """Write the encoder as JSON into `directory` (e.g. the adapter folder); returns the file path."""
        return self.encoder.save(directory)


def load_multidomain(
    source: Any,
    *,
    label: str,
    domain: str,
    sparse: Optional[Sequence[str]] = None,
    dense: Optional[Sequence[str]] = None,
    split: SplitSpec = None,
    seed: int = 0,
    min_frequency: int = 1,
    normalize: Normalization = "standard",
    domain_order: Optional[Sequence] = None,
    domain_names: Optional[Sequence[str]] = None,
    exclude: Sequence[str] = (),
    embedding_dim: int = 8,
    encoder: Optional[MultiDomainEncoder] = None,
    **load_kwargs: Any,
) -> MultiDomainData:
    """Load, split and encode a multi-domain CTR table.

    Args:
        source: file path(s) or glob (CSV/TSV/parquet/JSON(L), `.gz` too), a dict of split name ->
            path(s) or table, a Hub dataset id, a `datasets.Dataset`/`DatasetDict`, a pandas
            DataFrame or a pyarrow Table.
        label: a 0/1 column, or a rule such as `"rating==5"` or `"rating>3"`.
        domain: the column naming each row's domain (any type).
        sparse: categorical feature columns. When both `sparse` and `dense` are None, every other
            column (minus `exclude`) is used: integer, string and bool columns as sparse, floats as dense.
        dense: numeric feature columns.
        split: None (the source's splits if it has them, else `(0.6, 0.2, 0.2)`), `"provided"`,
            three fractions for a per-domain split stratified by label, or a `TimeSplit`.
        seed: seed of the split (and of carving validation out of a provided train split).
        min_frequency: ids seen fewer times in train map to 0 (unknown).
        normalize: scaling of dense columns: `"standard"`, `"minmax"` or `"none"`.
        domain_order: domain values in the id order wanted (default: ascending values).
        domain_names: display names matching `domain_order` (default: `str(value)`).
        exclude: columns never used as features when inferring them.
        embedding_dim: embedding width in `feature_spec`.
        encoder: an encoder fitted before (e.g. `MultiDomainEncoder.load(adapter_dir)`) to encode with
            instead of fitting one on train: values it has not seen map to the unknown id.
        **load_kwargs: reading options (see `read_source`).

    Returns:
        A `MultiDomainData` with `.splits`, `.domain_names`, `.feature_spec`, `.stats()` and `.encoder`.

    Raises:
        ValueError: missing columns, a non-binary label without a rule, missing labels or
            domains, `domain` naming the label column, one label class in the train split, an
            inferred numeric column with non-numeric cells, a bad split, or a validation/test
            domain absent from train.
        FileNotFoundError: a missing file, or a Hub id that could not be loaded.
        EmptyDomainWarning: (a warning) a domain without validation or test rows.
        OneClassWarning: (a warning) a domain whose rows in a split hold one label class.

    Example:
        >>> data = load_multidomain("clicks.csv.gz", label="click", domain="country",
        ...                         sparse=["user", "item"], dense=["price"])  # doctest: +SKIP
        >>> data.stats().head(2)  # doctest: +SKIP
           split domain  rows  positives       ctr
        0  train     de  1200        240  0.200000
        1  train     fr  3600        612  0.170000
    """
    if encoder is not None and sparse is None and dense is None:  # the encoder's columns, not inferred ones
        sparse, dense = [e.name for e in encoder.sparse], [e.name for e in encoder.dense]
    raw, rule, sparse, dense = _read_and_split(source, label, domain, sparse, dense, split, seed, exclude, load_kwargs)
    if domain_order is not None:
        domain_order, domain_names = _train_order(raw, domain, list(domain_order), domain_names)
    if encoder is None:
        encoder = MultiDomainEncoder.fit(raw["train"], label=rule, domain=domain, sparse=sparse, dense=dense,
                                         min_frequency=min_frequency, normalize=normalize,
                                         domain_order=domain_order, domain_names=domain_names)
    _check_domains(encoder, raw)
    splits = datasets.DatasetDict({
        name: datasets.Dataset(InMemoryTable(encoder.transform(raw[name], with_label=True)),
                               fingerprint=generate_random_fingerprint())  # hashing every row would be slow
        for name in SPLIT_NAMES
    })
    _check_label_classes(splits, encoder.domain_names, rule)
    return MultiDomainData(splits, encoder, embedding_dim)


def raw_splits(
    source: Any,
    *,
    label: str,
    domain: str,
    sparse: Optional[Sequence[str]] = None,
    dense: Optional[Sequence[str]] = None,
    split: SplitSpec = None,
    seed: int = 0,
    exclude: Sequence[str] = (),
    **load_kwargs: Any,
) -> dict[str, pa.Table]:
    """The raw train / validation / test tables `load_multidomain` would encode (same arguments, same split).

    Use it to grow a fitted encoder with new domains' train rows (`MultiDomainEncoder.grow`), then
    encode the splits with `load_multidomain(splits, ..., split="provided", encoder=grown)`.

    Example:
        >>> import pandas as pd
        >>> frame = pd.DataFrame({"user": range(40), "country": ["fr", "de"] * 20, "click": [0, 1, 1, 0] * 10})
        >>> {name: t.num_rows for name, t in raw_splits(frame, label="click", domain="country").items()}
        {'train': 24, 'validation': 8, 'test': 8}
    """
    return _read_and_split(source, label, domain, sparse, dense, split, seed, exclude, load_kwargs)[0]


def _read_and_split(source: Any, label: str, domain: str, sparse, dense, split: SplitSpec, seed: int,
                    exclude: Sequence[str], load_kwargs: dict) -> tuple[dict[str, pa.Table], LabelRule, list, list]:
    tables = read_source(source, **load_kwargs)
    first = next(iter(tables.values()))
    rule = LabelRule.parse(label, first.column_names)
    check_roles(rule.column, domain, [], [])
    time_column = [split.column] if isinstance(split, TimeSplit) else []
    inferred = sparse is None and dense is None
    sparse, dense = _feature_columns(first, rule.column, domain, sparse, dense, [*exclude, *time_column])
    for name, table in tables.items():
        require_columns(table.column_names, {"label": [rule.column], "domain": [domain], "sparse": sparse,
                                             "dense": dense, "time": time_column})
        _check_text_cells(table, sparse if inferred else [], dense, name)
    return _split(tables, rule, domain, split, seed), rule, sparse, dense


def _check_text_cells(table: pa.Table, inferred_sparse: list[str], dense: list[str], split: str) -> None:
    """Refuse text cells that are not numbers in a dense column, or in a mostly numeric column inferred as sparse."""
    where = "" if split == UNSPLIT else f" of the {split} split"
    for name in dense:
        cells = non_numeric_cells(table.column(name))
        if cells is not None:
            raise dense_text_error(name, cells, where)
    for name in inferred_sparse:
        cells = non_numeric_cells(table.column(name))
        if cells is not None and cells.looks_numeric:
            raise ValueError(
                f"Column {name!r} looks numeric, but {cells.describe(where)}, so it "
                f"would become a categorical feature (one id per distinct value). Fix or blank those cells "
                f"(blank cells get the train mean), or declare the features yourself: "
                f"load_multidomain(..., sparse=[...], dense=[..., {name!r}]) for numbers once the cells are fixed, "
                f"or sparse=[..., {name!r}] for categories. Listing sparse= or dense= turns inference off."
            )


def _label_hint(rule: LabelRule) -> str:
    if rule.op is None:
        return (f"Check that {rule.column!r} is the click column and holds both classes, or pass a rule on a "
                "numeric column, e.g. label='rating>=4'.")
    return f"Check the rule against the values of {rule.column!r} (is the threshold {rule.threshold:g} right?)."


def _check_label_classes(splits: datasets.DatasetDict, domain_names: Sequence[str], rule: LabelRule) -> None:
    """Refuse a train split with one label class; warn for each split's domains with one class."""
    columns = {name: split.with_format("numpy", columns=[DOMAIN_COLUMN, LABEL_COLUMN])[:]
               for name, split in splits.items()}
    train = columns["train"][LABEL_COLUMN]
    if train.size and train.min() == train.max():
        everywhere = all((c[LABEL_COLUMN] == train[0]).all() for c in columns.values())
        raise ValueError(
            f"Label {str(rule)!r} is {train[0]:g} in all {train.size} train rows"
            f"{' (and in every row of the data)' if everywhere else ''}: a CTR model needs clicks and "
            f"non-clicks to learn from, and AUC is undefined with one class. {_label_hint(rule)}"
        )
    for split_name, split in columns.items():
        rows = np.bincount(split[DOMAIN_COLUMN], minlength=len(domain_names))
        positives = np.bincount(split[DOMAIN_COLUMN], weights=split[LABEL_COLUMN], minlength=len(domain_names))
        one_class = [f"{name} (all {0 if p == 0 else 1})" for name, n, p in zip(domain_names, rows, positives)
                     if n and p in (0, n)]
        if one_class:
            warnings.warn(
                f"Domains {one_class} hold one label class in the {split_name} split; their AUC there is undefined "
                "(reported as None). Use more data for them or merge them with a related domain.",
                OneClassWarning, stacklevel=3,
            )


def _feature_columns(table: pa.Table, label: str, domain: str, sparse, dense, exclude) -> tuple[list, list]:
    if sparse is not None or dense is not None:
        return list(sparse or []), list(dense or [])
    skip = {label, domain, *exclude}
    candidates = [n for n in table.column_names if n not in skip]
    inferred_dense = [n for n in candidates if pa.types.is_floating(table.schema.field(n).type)]
    inferred_sparse = [n for n in candidates if n not in inferred_dense and
                       (id_kind(table.column(n)) == "int" or pa.types.is_string(table.schema.field(n).type)
                        or pa.types.is_large_string(table.schema.field(n).type))]
    return inferred_sparse, inferred_dense


def _split(
    tables: dict[str, pa.Table], rule: LabelRule, domain: str, split: SplitSpec, seed: int
) -> dict[str, pa.Table]:
    provided = UNSPLIT not in tables
    if split is None:
        split = "provided" if provided else DEFAULT_FRACTIONS
    if isinstance(split, str):
        if split != "provided":
            raise ValueError(f"split={split!r}: use None, 'provided', three fractions or a TimeSplit.")
        return _provided(tables, rule, domain, seed)
    whole = pa.concat_tables(list(tables.values()), promote_options="permissive")
    codes = domain_codes(whole.column(domain), domain)
    if isinstance(split, TimeSplit):
        parts = time_parts(whole.column(split.column), split.fractions, seed, codes if split.per_domain else None)
    else:
        parts = stratified_parts(codes, rule.apply(whole.column(rule.column)), check_fractions(split), seed)
    return {name: whole.take(np.flatnonzero(parts == i)) for i, name in enumerate(SPLIT_NAMES)}


def _provided(tables: dict[str, pa.Table], rule: LabelRule, domain: str, seed: int) -> dict[str, pa.Table]:
    if UNSPLIT in tables or "train" not in tables or "test" not in tables:
        raise ValueError(
            f"split='provided' needs train and test splits in the source; it has {sorted(tables)}. "
            "Pass split=(0.6, 0.2, 0.2) to split the rows instead."
        )
    for table in tables.values():
        rule.apply(table.column(rule.column))  # fail early on bad labels in any split
    if "validation" in tables:
        return dict(tables)
    train = tables["train"]
    share = (1 - VALIDATION_FROM_TRAIN, VALIDATION_FROM_TRAIN, 0.0)
    parts = stratified_parts(domain_codes(train.column(domain), domain), rule.apply(train.column(rule.column)),
                             share, seed)
    return {"train": train.take(np.flatnonzero(parts == 0)), "validation": train.take(np.flatnonzero(parts == 1)),
            "test": tables["test"]}


def _train_order(raw: dict[str, pa.Table], domain: str, order: list, names: Optional[Sequence[str]]) -> tuple:
    """Drop from `order` (and `names`) the domains that have rows, but none in train; `_check_domains` reports them."""
    kind = id_kind(raw["train"].column(domain))
    values = [set(domain_values(raw[n].column(domain), domain, kind).unique().to_pylist()) for n in SPLIT_NAMES]
    wanted = normalise_ids(pa.array(order), domain, kind).to_pylist()
    keep = [i for i, v in enumerate(wanted) if v in values[0] or not any(v in s for s in values)]
    return [order[i] for i in keep], None if names is None else [list(names)[i] for i in keep]


def _check_domains(encoder: MultiDomainEncoder, raw: dict[str, pa.Table]) -> None:
    known = set(encoder.domain.values)
    kind = encoder.domain.kind
    for name in SPLIT_NAMES[1:]:
        column = raw[name].column(encoder.domain.column)
        values = set(domain_values(column, encoder.domain.column, kind).unique().to_pylist())
        unseen = sorted(values - known, key=str)
        if unseen:
            raise ValueError(
                f"Domains {unseen[:5]} appear in the {name} split but not in train, so they would have no "
                "trained adapter. Drop those rows, or use a random split (split=(0.6, 0.2, 0.2)) so every domain "
                "has training rows."
            )
        empty = [n for v, n in zip(encoder.domain.values, encoder.domain.names) if v not in values]
        if empty:
            warnings.warn(
                f"Domains {empty} have no rows in the {name} split; their metrics there are undefined. "
                "Use more data for them or merge them with a related domain.",
                EmptyDomainWarning, stacklevel=3,
            )

