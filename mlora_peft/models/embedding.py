"""Embedding a batch dict as the feature spec says: field vectors, a flat vector, a linear term.

Every module here builds new weights from a spec, so two models built from the same spec never
share a table. Batches map each feature name to a tensor: `(N,)` int64 ids for a
`SparseFeature`, `(N,)` or `(N, dim)` floats for a `DenseFeature`, `(N, L)` int64 ids (0 =
padding) for a `SequenceFeature`. Keys the spec does not name (such as `label`) are ignored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..features import DenseFeature, Feature, SequenceFeature, SparseFeature

EMBEDDING_INIT_STD = 0.01
"""Standard deviation of the normal initialisation of every id embedding table."""


class FeatureEmbedding(nn.Module):
    """One embedding table per id feature of a spec, plus (optionally) a projection per dense feature.

    Args:
        features: the feature spec (at least one feature, names unique).
        dense_as_field: make every feature a field vector of one common width, projecting each
            dense feature to it (field-interaction models such as FM need this, and `fields`
            requires it); otherwise dense values join the flat vector as they are.

    Raises:
        ValueError: an empty spec, or `dense_as_field` with id features of different widths.

    Example:
        >>> import torch
        >>> from mlora_peft.features import DenseFeature, SparseFeature
        >>> embed = FeatureEmbedding([SparseFeature("user", 10, 4), DenseFeature("price")])
        >>> embed.flat({"user": torch.tensor([1, 2]), "price": torch.tensor([0.5, 0.1])}).shape
        torch.Size([2, 5])
    """

    def __init__(self, features: Sequence[Feature], dense_as_field: bool = False) -> None:
        super().__init__()
        self.features = _check_spec(features)
        self.dense_as_field = dense_as_field
        self.id_features = [f for f in self.features if not isinstance(f, DenseFeature)]
        self.dense_features = [f for f in self.features if isinstance(f, DenseFeature)]
        self.tables = nn.ModuleDict({
            f.name: nn.Embedding(f.vocab_size, f.embedding_dim, padding_idx=_padding_idx(f)) for f in self.id_features
        })
        self.field_dim = _common_width(self.id_features) if dense_as_field else None
        self.projections = nn.ModuleDict({
            f.name: nn.Linear(f.dim, self.field_dim, bias=False) for f in self.dense_features
        }) if dense_as_field else nn.ModuleDict()
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Normal(0, 0.01) tables with zero padding rows; default init for the dense projections."""
        for table in self.tables.values():
            nn.init.normal_(table.weight, std=EMBEDDING_INIT_STD)
            if table.padding_idx is not None:
                table.weight[table.padding_idx].zero_()
        for projection in self.projections.values():
            projection.reset_parameters()

    @property
    def num_fields(self) -> int:
        """How many field vectors `fields` returns (dense features count only with `dense_as_field`)."""
        return len(self.id_features) + (len(self.dense_features) if self.dense_as_field else 0)

    @property
    def flat_dim(self) -> int:
        """Width of the vector `flat` returns."""
        ids = sum(f.embedding_dim for f in self.id_features)
        if self.dense_as_field:
            return ids + self.field_dim * len(self.dense_features)
        return ids + sum(f.dim for f in self.dense_features)

    def fields(self, batch: Mapping[str, Tensor]) -> Tensor:
        """`(N, F, E)` one vector per feature, in spec order.

        Raises:
            ValueError: `dense_as_field` is False, or the batch lacks a feature or has the wrong
                shape for it.
        """
        if not self.dense_as_field:
            raise ValueError(
                "fields() needs field vectors of one width; build FeatureEmbedding(..., dense_as_field=True)."
            )
        return torch.stack([self._embed(f, batch) for f in self.features], dim=1)  # (N, F, E)

    def flat(self, batch: Mapping[str, Tensor]) -> Tensor:
        """`(N, flat_dim)` every feature's vector (or raw dense values) side by side, in spec order."""
        return torch.cat([self._embed(f, batch) for f in self.features], dim=1)  # (N, flat_dim)

    def _embed(self, feature: Feature, batch: Mapping[str, Tensor]) -> Tensor:
        if isinstance(feature, DenseFeature):
            values = _dense_values(feature, batch)  # (N, dim)
            return self.projections[feature.name](values) if self.dense_as_field else values  # (N, E) or (N, dim)
        table = self.tables[feature.name]
        ids = _ids(feature, batch)
        try:
            vectors = table(ids)  # (N, E) or (N, L, E)
        except IndexError:
            raise ValueError(f"Feature {feature.name!r} has ids up to {int(ids.max())}, but its table has "
                             f"{table.num_embeddings} rows (ids 0..{table.num_embeddings - 1}). Encode with the "
                             "model's own encoder; for a new domain, grow the model first "
                             "(recipes/add_domain.py, or mlora_peft.growth.grow_embeddings).") from None
        if isinstance(feature, SparseFeature):
            return vectors  # (N, E)
        return pool(vectors, ids != 0, feature.pooling)  # (N, L, E) -> (N, E)


class LinearTerm(nn.Module):
    """The first-order (wide) term: one learned weight per id, a linear map of dense values, a bias.

    Args:
        features: the feature spec; sequence features sum (or pool) their ids' weights.

    Example:
        >>> import torch
        >>> from mlora_peft.features import SparseFeature
        >>> LinearTerm([SparseFeature("user", 10)])({"user": torch.tensor([1, 2])}).shape
        torch.Size([2])
    """

    def __init__(self, features: Sequence[Feature]) -> None:
        super().__init__()
        self.features = _check_spec(features)
        self.id_features = [f for f in self.features if not isinstance(f, DenseFeature)]
        self.dense_features = [f for f in self.features if isinstance(f, DenseFeature)]
        self.weights = nn.ModuleDict({f.name: nn.Embedding(f.vocab_size, 1, padding_idx=_padding_idx(f))
                                      for f in self.id_features})
        dense_width = sum(f.dim for f in self.dense_features)
        self.dense = nn.Linear(dense_width, 1, bias=False) if dense_width else None
        self.bias = nn.Parameter(torch.zeros(1))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Id weights like the embedding tables (padding rows zero), zero bias."""
        for table in self.weights.values():
            nn.init.normal_(table.weight, std=EMBEDDING_INIT_STD)
            if table.padding_idx is not None:
                table.weight[table.padding_idx].zero_()
        if self.dense is not None:
            self.dense.reset_parameters()
        self.bias.zero_()

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        """`(N,)` the linear logit of each row."""
        terms = []
        for feature in self.id_features:
            ids = _ids(feature, batch)
            weight = self.weights[feature.name](ids)  # (N, 1) or (N, L, 1)
            terms.append(weight if isinstance(feature, SparseFeature) else pool(weight, ids != 0, feature.pooling))
        if self.dense is not None:
            dense = torch.cat([_dense_values(f, batch) for f in self.dense_features], dim=1)  # (N, dense)
            terms.append(self.dense(dense))  # (N, 1)
        return torch.cat(terms, dim=1).sum(1) + self.bias  # (N,)


def pool(vectors: Tensor, mask: Tensor, pooling: str) -> Tensor:
    """Pool `(N, L, E)` vectors over the positions where `mask` `(N, L)` is True; all-padding rows give 0.

    Raises:
        ValueError: an unknown pooling.
    """
    weights = mask.unsqueeze(-1).to(vectors.dtype)  # (N, L, 1)
    if pooling == "sum":
        return (vectors * weights).sum(1)  # (N, E)
    if pooling == "mean":
        return (vectors * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # (N, E)
    if pooling == "max":
        filled = vectors.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)  # (N, E)
        return torch.where(mask.any(1, keepdim=True), filled, torch.zeros_like(filled))
    raise ValueError(f"pooling={pooling!r}: use 'mean', 'sum' or 'max'.")


def _check_spec(features: Sequence[Feature]) -> list[Feature]:
    features = list(features)
    if not features:
        raise ValueError("The feature spec is empty; give at least one SparseFeature, DenseFeature or SequenceFeature.")
    kinds = (SparseFeature, DenseFeature, SequenceFeature)
    bad = [f for f in features if not isinstance(f, kinds)]
    if bad:
        raise TypeError(
            f"Feature spec entries must be SparseFeature, DenseFeature or SequenceFeature, got {bad[:3]!r}."
        )
    names = [f.name for f in features]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"Feature names {duplicates} appear more than once; each batch key needs one feature.")
    return features


def _padding_idx(feature: Feature) -> int | None:
    return 0 if isinstance(feature, SequenceFeature) else None


def _common_width(id_features: list[Feature]) -> int:
    widths = {f.name: f.embedding_dim for f in id_features}
    if not widths:
        raise ValueError("Field-interaction models need at least one SparseFeature or SequenceFeature.")
    if len(set(widths.values())) > 1:
        raise ValueError(
            f"Field-interaction models need one embedding_dim for every id feature, got {widths}; "
            "give every SparseFeature and SequenceFeature the same embedding_dim."
        )
    return next(iter(widths.values()))


def _column(feature: Feature, batch: Mapping[str, Tensor]) -> Tensor:
    if feature.name not in batch:
        raise ValueError(
            f"The batch has no column {feature.name!r} (it has {sorted(batch)}); add it, or build the model "
            "from a spec without that feature."
        )
    return batch[feature.name]


def _ids(feature: Feature, batch: Mapping[str, Tensor]) -> Tensor:
    ids = _column(feature, batch)
    if ids.is_floating_point() or ids.dtype == torch.bool:
        raise TypeError(f"Feature {feature.name!r} holds ids but got a {ids.dtype} tensor; pass int64 ids.")
    if isinstance(feature, SparseFeature):
        if ids.dim() == 2 and ids.shape[1] == 1:
            ids = ids.squeeze(1)  # (N, 1) -> (N,)
        if ids.dim() != 1:
            raise ValueError(f"SparseFeature {feature.name!r} wants ids of shape (N,), got {tuple(ids.shape)}.")
    elif ids.dim() != 2:
        raise ValueError(f"SequenceFeature {feature.name!r} wants ids of shape (N, L), got {tuple(ids.shape)}.")
    return ids


def _dense_values(feature: DenseFeature, batch: Mapping[str, Tensor]) -> Tensor:
    values = _column(feature, batch)
    if values.dim() == 1:
        values = values.unsqueeze(1)  # (N,) -> (N, 1)
    if values.dim() != 2 or values.shape[1] != feature.dim:
        raise ValueError(
            f"DenseFeature {feature.name!r} has dim={feature.dim}, so it wants shape (N, {feature.dim})"
            f"{' or (N,)' if feature.dim == 1 else ''}; got {tuple(values.shape)}."
        )
    return values.float()
