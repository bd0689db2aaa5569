"""Factorisation-machine models: DeepFM (FM + deep tower) and NFM (bi-interaction pooling + deep tower)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from ..features import Feature
from .embedding import FeatureEmbedding, LinearTerm
from .tower import DEFAULT_DROPOUT, DEFAULT_HIDDEN, Backbone, DeepTower


def bi_interaction(fields: Tensor) -> Tensor:
    """`(N, F, E) -> (N, E)`: sum over field pairs i < j of `v_i * v_j`, as `((sum v)^2 - sum v^2) / 2`."""
    square_of_sum = fields.sum(1).pow(2)  # (N, E)
    sum_of_squares = fields.pow(2).sum(1)  # (N, E)
    return 0.5 * (square_of_sum - sum_of_squares)  # (N, E)


def fm_second_order(fields: Tensor) -> Tensor:
    """`(N, F, E) -> (N,)`: the FM pairwise term, sum over i < j of `<v_i, v_j>`."""
    return bi_interaction(fields).sum(1)  # (N,)


class DeepFM(Backbone):
    """Linear term + FM second-order term + a deep tower on the same field embeddings.

    Args:
        features: the feature spec; id features share one embedding_dim, dense features are
            projected to it.
        hidden: the deep tower's widths.
        dropout: dropout after each hidden layer.
        dropout_placement: "activation" (dropout after each hidden ReLU) or "base_output" (on each
            hidden Linear's `W x + b` only, so an MLoRA adapter's term is not dropped, as in the
            MLoRA paper's code); see `DeepTower`.
        input_norm: "none", or "batch" to batch-normalise the deep tower's input; see `DeepTower`.

    Example:
        >>> import torch
        >>> from mlora_peft.features import SparseFeature
        >>> spec = [SparseFeature("user", 10), SparseFeature("item", 20)]
        >>> DeepFM(spec, hidden=[8])({"user": torch.tensor([1]), "item": torch.tensor([3])}).shape
        torch.Size([1])
    """

    paper = "Guo et al., DeepFM: A Factorization-Machine based Neural Network for CTR Prediction, IJCAI 2017"

    def __init__(
        self,
        features: Sequence[Feature],
        *,
        hidden: Sequence[int] = DEFAULT_HIDDEN,
        dropout: float = DEFAULT_DROPOUT,
        dropout_placement: str = "activation",
        input_norm: str = "none",
    ) -> None:
        super().__init__()
        self.embedding = FeatureEmbedding(features, dense_as_field=True)
        self.linear = LinearTerm(features)
        self.deep = DeepTower(self.embedding.flat_dim, hidden, dropout, dropout_placement=dropout_placement,
                              input_norm=input_norm)
        self.head = nn.Linear(self.deep.out_features, 1)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        fields = self.embedding.fields(batch)  # (N, F, E)
        deep = self.head(self.deep(fields.flatten(1))).squeeze(-1)  # (N,)
        return self.linear(batch) + fm_second_order(fields) + deep  # (N,)


class NFM(Backbone):
    """Neural FM: linear term + a deep tower on the bi-interaction pooling of the field embeddings.

    Args:
        features: the feature spec; id features share one embedding_dim, dense features are
            projected to it.
        hidden: the deep tower's widths.
        dropout: dropout after each hidden layer (and on the pooled vector, as in the paper).
        dropout_placement: "activation" (dropout after each hidden ReLU) or "base_output" (on each
            hidden Linear's `W x + b` only, so an MLoRA adapter's term is not dropped, as in the
            MLoRA paper's code); see `DeepTower`.
        input_norm: "none", or "batch" to batch-normalise the deep tower's input; see `DeepTower`.

    Example:
        >>> import torch
        >>> from mlora_peft.features import SparseFeature
        >>> spec = [SparseFeature("user", 10), SparseFeature("item", 20)]
        >>> NFM(spec, hidden=[8])({"user": torch.tensor([1]), "item": torch.tensor([3])}).shape
        torch.Size([1])
    """

    paper = "He and Chua, Neural Factorization Machines for Sparse Predictive Analytics, SIGIR 2017"

    def __init__(
        self,
        features: Sequence[Feature],
        *,
        hidden: Sequence[int] = DEFAULT_HIDDEN,
        dropout: float = DEFAULT_DROPOUT,
        dropout_placement: str = "activation",
        input_norm: str = "none",
    ) -> None:
        super().__init__()
        self.embedding = FeatureEmbedding(features, dense_as_field=True)
        self.linear = LinearTerm(features)
        self.deep = DeepTower(self.embedding.field_dim, hidden, dropout, dropout_placement=dropout_placement,
                              input_norm=input_norm)
        self.pooled_dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.deep.out_features, 1)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        pooled = self.pooled_dropout(bi_interaction(self.embedding.fields(batch)))  # (N, E)
        return self.linear(batch) + self.head(self.deep(pooled)).squeeze(-1)  # (N,)
