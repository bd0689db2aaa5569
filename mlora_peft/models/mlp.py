"""MLP and Wide & Deep: a deep tower on the concatenated embeddings, with a wide linear term for WDL."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from ..features import Feature
from .embedding import FeatureEmbedding, LinearTerm
from .tower import DEFAULT_DROPOUT, DEFAULT_HIDDEN, Backbone, DeepTower


class MLP(Backbone):
    """Embeddings side by side, a ReLU tower, a logit head.

    Args:
        features: the feature spec (embedding widths may differ; dense values join as they are).
        hidden: the deep tower's widths.
        dropout: dropout after each hidden layer.
        dropout_placement: "activation" (dropout after each hidden ReLU) or "base_output" (on each
            hidden Linear's `W x + b` only, so an MLoRA adapter's term is not dropped, as in the
            MLoRA paper's code); see `DeepTower`.
        input_norm: "none", or "batch" to batch-normalise the deep tower's input; see `DeepTower`.

    Example:
        >>> import torch
        >>> from mlora_peft.features import SparseFeature
        >>> model = MLP([SparseFeature("user", 10)], hidden=[8, 4])
        >>> model({"user": torch.tensor([1, 2, 3])}).shape, model.mlora_target_modules
        (torch.Size([3]), ['deep.0', 'deep.3'])
    """

    paper = "Covington et al., Deep Neural Networks for YouTube Recommendations, RecSys 2016"

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
        self.embedding = FeatureEmbedding(features)
        self.deep = DeepTower(self.embedding.flat_dim, hidden, dropout, dropout_placement=dropout_placement,
                              input_norm=input_norm)
        self.head = nn.Linear(self.deep.out_features, 1)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        return self.head(self.deep(self.embedding.flat(batch))).squeeze(-1)  # (N,)


class WDL(Backbone):
    """Wide & Deep: the MLP's logit plus a wide linear term over the raw features.

    Args:
        features: the feature spec.
        hidden: the deep tower's widths.
        dropout: dropout after each hidden layer.
        dropout_placement: "activation" (dropout after each hidden ReLU) or "base_output" (on each
            hidden Linear's `W x + b` only, so an MLoRA adapter's term is not dropped, as in the
            MLoRA paper's code); see `DeepTower`.
        input_norm: "none", or "batch" to batch-normalise the deep tower's input; see `DeepTower`.

    Example:
        >>> import torch
        >>> from mlora_peft.features import SparseFeature
        >>> WDL([SparseFeature("user", 10)], hidden=[8])({"user": torch.tensor([1, 2])}).shape
        torch.Size([2])
    """

    paper = "Cheng et al., Wide & Deep Learning for Recommender Systems, DLRS@RecSys 2016"

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
        self.embedding = FeatureEmbedding(features)
        self.wide = LinearTerm(features)
        self.deep = DeepTower(self.embedding.flat_dim, hidden, dropout, dropout_placement=dropout_placement,
                              input_norm=input_norm)
        self.head = nn.Linear(self.deep.out_features, 1)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        deep = self.head(self.deep(self.embedding.flat(batch))).squeeze(-1)  # (N,)
        return self.wide(batch) + deep  # (N,)
