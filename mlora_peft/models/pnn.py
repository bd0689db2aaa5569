"""PNN (the inner-product variant, IPNN): field embeddings and their pairwise inner products feed a deep tower."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..features import Feature
from .embedding import FeatureEmbedding
from .tower import DEFAULT_DROPOUT, DEFAULT_HIDDEN, Backbone, DeepTower


def inner_products(fields: Tensor) -> Tensor:
    """`(N, F, E) -> (N, F(F-1)/2)`: `<v_i, v_j>` for every pair i < j, in row-major pair order."""
    first, second = torch.triu_indices(fields.shape[1], fields.shape[1], 1, device=fields.device)  # (P,), (P,)
    return (fields.index_select(1, first) * fields.index_select(1, second)).sum(-1)  # (N, P)


class PNN(Backbone):
    """Inner-product PNN: the product layer `[z, p]` (flat embeddings and pairwise inner products), then a tower.

    The paper's product layer is a linear map of `z` and `p` followed by ReLU: that is the deep
    tower's first hidden layer here, so MLoRA adapts it too.

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
        >>> PNN(spec, hidden=[8])({"user": torch.tensor([1]), "item": torch.tensor([3])}).shape
        torch.Size([1])
    """

    paper = "Qu et al., Product-based Neural Networks for User Response Prediction, ICDM 2016"

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
        fields = self.embedding.num_fields
        width = self.embedding.flat_dim + fields * (fields - 1) // 2  # [z, p]
        self.deep = DeepTower(width, hidden, dropout, dropout_placement=dropout_placement,
                              input_norm=input_norm)
        self.head = nn.Linear(self.deep.out_features, 1)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        fields = self.embedding.fields(batch)  # (N, F, E)
        product = torch.cat([fields.flatten(1), inner_products(fields)], dim=1)  # (N, F * E + P)
        return self.head(self.deep(product)).squeeze(-1)  # (N,)
