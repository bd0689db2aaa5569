"""xDeepFM: a compressed interaction network (CIN), a linear term and a deep tower."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..features import Feature
from .embedding import FeatureEmbedding, LinearTerm
from .tower import DEFAULT_DROPOUT, DEFAULT_HIDDEN, Backbone, DeepTower, check_widths


def cin_layer(x0: Tensor, x: Tensor, weight: Tensor) -> Tensor:
    """`X_next[n, h, :] = sum_ij W[h, i, j] * x[n, i, :] * x0[n, j, :]`.

    Args:
        x0: `(N, m, E)` the field embeddings.
        x: `(N, H, E)` the previous layer's feature maps.
        weight: `(H_next, H, m)`.

    Returns:
        `(N, H_next, E)`.
    """
    outer = x.unsqueeze(2) * x0.unsqueeze(1)  # (N, H, m, E)
    return torch.einsum("hij,nijd->nhd", weight, outer)  # (N, H_next, E)


class CIN(nn.Module):
    """Compressed interaction network: feature maps of growing order, each sum-pooled over the embedding axis.

    Args:
        num_fields: m, the number of field embeddings.
        layer_sizes: H_k, the feature maps of each layer.

    Example:
        >>> import torch
        >>> CIN(num_fields=3, layer_sizes=[4, 2])(torch.randn(5, 3, 8)).shape
        torch.Size([5, 6])
    """

    def __init__(self, num_fields: int, layer_sizes: Sequence[int]) -> None:
        super().__init__()
        sizes = check_widths(layer_sizes, "cin_layers")
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(size, previous, num_fields)) for previous, size in zip((num_fields, *sizes), sizes)
        )
        self.out_features = sum(sizes)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Each weight uniform in +-1/sqrt(H * m), as a 1x1 convolution over H * m channels."""
        for weight in self.weights:
            bound = 1.0 / math.sqrt(weight.shape[1] * weight.shape[2])
            nn.init.uniform_(weight, -bound, bound)

    def forward(self, x0: Tensor) -> Tensor:
        pooled, x = [], x0
        for weight in self.weights:
            x = cin_layer(x0, x, weight)  # (N, H_k, E)
            pooled.append(x.sum(2))  # (N, H_k)
        return torch.cat(pooled, dim=1)  # (N, sum H_k)


class XDeepFM(Backbone):
    """xDeepFM: linear term + CIN logit + deep tower logit, all on the same field embeddings.

    Args:
        features: the feature spec; id features share one embedding_dim, dense features are
            projected to it.
        hidden: the deep tower's widths.
        dropout: dropout after each hidden layer.
        dropout_placement: "activation" (dropout after each hidden ReLU) or "base_output" (on each
            hidden Linear's `W x + b` only, so an MLoRA adapter's term is not dropped, as in the
            MLoRA paper's code); see `DeepTower`.
        input_norm: "none", or "batch" to batch-normalise the deep tower's input; see `DeepTower`.
        cin_layers: the CIN's feature maps per layer.

    Example:
        >>> import torch
        >>> from mlora_peft.features import SparseFeature
        >>> spec = [SparseFeature("user", 10), SparseFeature("item", 20)]
        >>> XDeepFM(spec, hidden=[8], cin_layers=[4])({"user": torch.tensor([1]), "item": torch.tensor([3])}).shape
        torch.Size([1])
    """

    paper = (
        "Lian et al., xDeepFM: Combining Explicit and Implicit Feature Interactions for Recommender Systems, KDD 2018"
    )

    def __init__(
        self,
        features: Sequence[Feature],
        *,
        hidden: Sequence[int] = DEFAULT_HIDDEN,
        dropout: float = DEFAULT_DROPOUT,
        dropout_placement: str = "activation",
        input_norm: str = "none",
        cin_layers: Sequence[int] = (128, 128),
    ) -> None:
        super().__init__()
        self.embedding = FeatureEmbedding(features, dense_as_field=True)
        self.linear = LinearTerm(features)
        self.cin = CIN(self.embedding.num_fields, cin_layers)
        self.cin_head = nn.Linear(self.cin.out_features, 1)
        self.deep = DeepTower(self.embedding.flat_dim, hidden, dropout, dropout_placement=dropout_placement,
                              input_norm=input_norm)
        self.head = nn.Linear(self.deep.out_features, 1)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        fields = self.embedding.fields(batch)  # (N, F, E)
        cin = self.cin_head(self.cin(fields)).squeeze(-1)  # (N,)
        deep = self.head(self.deep(fields.flatten(1))).squeeze(-1)  # (N,)
        return self.linear(batch) + cin + deep  # (N,)
