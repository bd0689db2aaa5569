"""Deep & Cross networks: DCN (vector cross layers) and DCNv2 (matrix cross layers), each beside a deep tower."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..features import Feature
from .embedding import FeatureEmbedding
from .tower import DEFAULT_DROPOUT, DEFAULT_HIDDEN, Backbone, DeepTower, check_count


def cross_layer(x0: Tensor, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """DCN: `x0 * (x . w) + b + x` for `(N, d)` inputs and `(d,)` weight and bias."""
    return x0 * (x @ weight).unsqueeze(-1) + bias + x  # (N, d)


def cross_layer_v2(x0: Tensor, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """DCNv2: `x0 * (W x + b) + x` for `(N, d)` inputs, a `(d, d)` weight and a `(d,)` bias."""
    return x0 * (x @ weight.t() + bias) + x  # (N, d)


class CrossNetwork(nn.Module):
    """`num_layers` cross layers; `matrix=False` is DCN's rank-one form, `matrix=True` DCNv2's full matrix.

    Args:
        width: the input width d.
        num_layers: how many cross layers.
        matrix: use `(d, d)` weights (DCNv2) instead of `(d,)` vectors (DCN).

    Example:
        >>> import torch
        >>> CrossNetwork(6, num_layers=2)(torch.randn(3, 6)).shape
        torch.Size([3, 6])
    """

    def __init__(self, width: int, num_layers: int, matrix: bool = False) -> None:
        super().__init__()
        check_count(num_layers, "cross_layers")
        shape = (num_layers, width, width) if matrix else (num_layers, width)
        self.weights = nn.Parameter(torch.empty(shape))
        self.biases = nn.Parameter(torch.empty(num_layers, width))
        self.matrix = matrix
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Weights uniform in +-1/sqrt(d) (as nn.Linear), biases zero."""
        bound = 1.0 / math.sqrt(self.biases.shape[1])
        nn.init.uniform_(self.weights, -bound, bound)
        self.biases.zero_()

    def forward(self, x0: Tensor) -> Tensor:
        layer = cross_layer_v2 if self.matrix else cross_layer
        x = x0
        for weight, bias in zip(self.weights, self.biases):
            x = layer(x0, x, weight, bias)  # (N, d)
        return x


class DCN(Backbone):
    """Deep & Cross Network: a cross network and a deep tower side by side on the flat embedding.

    Args:
        features: the feature spec.
        hidden: the deep tower's widths.
        dropout: dropout after each hidden layer.
        dropout_placement: "activation" (dropout after each hidden ReLU) or "base_output" (on each
            hidden Linear's `W x + b` only, so an MLoRA adapter's term is not dropped, as in the
            MLoRA paper's code); see `DeepTower`.
        input_norm: "none", or "batch" to batch-normalise the deep tower's input; see `DeepTower`.
        cross_layers: how many cross layers.

    Example:
        >>> import torch
        >>> from mlora_peft.features import SparseFeature
        >>> DCN([SparseFeature("user", 10)], hidden=[8])({"user": torch.tensor([1, 2])}).shape
        torch.Size([2])
    """

    paper = "Wang et al., Deep & Cross Network for Ad Click Predictions, ADKDD 2017"
    matrix_cross = False

    def __init__(
        self,
        features: Sequence[Feature],
        *,
        hidden: Sequence[int] = DEFAULT_HIDDEN,
        dropout: float = DEFAULT_DROPOUT,
        dropout_placement: str = "activation",
        input_norm: str = "none",
        cross_layers: int = 3,
    ) -> None:
        super().__init__()
        self.embedding = FeatureEmbedding(features)
        width = self.embedding.flat_dim
        self.cross = CrossNetwork(width, cross_layers, matrix=self.matrix_cross)
        self.deep = DeepTower(width, hidden, dropout, dropout_placement=dropout_placement,
                              input_norm=input_norm)
        self.head = nn.Linear(width + self.deep.out_features, 1)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        x0 = self.embedding.flat(batch)  # (N, d)
        both = torch.cat([self.cross(x0), self.deep(x0)], dim=1)  # (N, d + hidden[-1])
        return self.head(both).squeeze(-1)  # (N,)


class DCNv2(DCN):
    """DCN V2: DCN with full-matrix cross layers `x0 * (W x + b) + x` (the parallel structure).

    Args:
        features: the feature spec.
        hidden: the deep tower's widths.
        dropout: dropout after each hidden layer.
        dropout_placement: "activation" (dropout after each hidden ReLU) or "base_output" (on each
            hidden Linear's `W x + b` only, so an MLoRA adapter's term is not dropped, as in the
            MLoRA paper's code); see `DeepTower`.
        input_norm: "none", or "batch" to batch-normalise the deep tower's input; see `DeepTower`.
        cross_layers: how many cross layers.

    Example:
        >>> import torch
        >>> from mlora_peft.features import SparseFeature
        >>> DCNv2([SparseFeature("user", 10)], hidden=[8])({"user": torch.tensor([1, 2])}).shape
        torch.Size([2])
    """

    paper = (
        "Wang et al., DCN V2: Improved Deep & Cross Network and Practical Lessons for Web-scale Learning to Rank "
        "Systems, WWW 2021"
    )
    matrix_cross = True
