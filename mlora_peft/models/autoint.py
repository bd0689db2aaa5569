"""AutoInt+: multi-head self-attention over the field embeddings, beside a deep tower."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..features import Feature
from .embedding import FeatureEmbedding
from .tower import DEFAULT_DROPOUT, DEFAULT_HIDDEN, Backbone, DeepTower, check_count


def field_attention(
    fields: Tensor, query: Tensor, key: Tensor, value: Tensor, residual: Tensor, num_heads: int
) -> Tensor:
    """One AutoInt interacting layer: `ReLU(concat_h softmax(Q_h K_h^T) V_h + W_res e)` per field.

    Args:
        fields: `(N, F, E)` the layer's input.
        query, key, value, residual: `(H * d, E)` projection weights (no biases).
        num_heads: H; each head has d = rows // H dimensions.

    Returns:
        `(N, F, H * d)`.
    """
    rows, fields_count = fields.shape[0], fields.shape[1]

    def split_heads(weight: Tensor) -> Tensor:
        return (fields @ weight.t()).view(rows, fields_count, num_heads, -1).transpose(1, 2)  # (N, H, F, d)

    q, k, v = split_heads(query), split_heads(key), split_heads(value)
    scores = torch.softmax(q @ k.transpose(-1, -2), dim=-1)  # (N, H, F, F)
    heads = (scores @ v).transpose(1, 2).reshape(rows, fields_count, -1)  # (N, F, H * d)
    return torch.relu(heads + fields @ residual.t())  # (N, F, H * d)


class InteractingLayer(nn.Module):
    """AutoInt's interacting layer: query, key, value and residual projections of each field.

    Args:
        in_features: the input width of each field vector.
        num_heads: attention heads H.
        head_dim: d, the width of each head.

    Example:
        >>> import torch
        >>> InteractingLayer(8, num_heads=2, head_dim=4)(torch.randn(3, 5, 8)).shape
        torch.Size([3, 5, 8])
    """

    def __init__(self, in_features: int, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads = check_count(num_heads, "num_heads")
        out = num_heads * check_count(head_dim, "head_dim")
        self.query, self.key, self.value, self.residual = (
            nn.Parameter(torch.empty(out, in_features)) for _ in range(4)
        )
        self.out_features = out
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Every projection uniform in +-1/sqrt(in) (as nn.Linear)."""
        bound = 1.0 / math.sqrt(self.query.shape[1])
        for weight in (self.query, self.key, self.value, self.residual):
            nn.init.uniform_(weight, -bound, bound)

    def forward(self, fields: Tensor) -> Tensor:
        return field_attention(fields, self.query, self.key, self.value, self.residual, self.num_heads)


class AutoInt(Backbone):
    """AutoInt+: stacked interacting layers and a deep tower on the field embeddings, one logit head.

    The paper's AutoInt+ variant; the deep tower is what MLoRA adapts.

    Args:
        features: the feature spec; id features share one embedding_dim, dense features are
            projected to it.
        hidden: the deep tower's widths.
        dropout: dropout after each hidden layer.
        dropout_placement: "activation" (dropout after each hidden ReLU) or "base_output" (on each
            hidden Linear's `W x + b` only, so an MLoRA adapter's term is not dropped, as in the
            MLoRA paper's code); see `DeepTower`.
        input_norm: "none", or "batch" to batch-normalise the deep tower's input; see `DeepTower`.
        attention_layers: how many interacting layers.
        num_heads: attention heads per layer.
        head_dim: width of each head.

    Example:
        >>> import torch
        >>> from mlora_peft.features import SparseFeature
        >>> spec = [SparseFeature("user", 10), SparseFeature("item", 20)]
        >>> AutoInt(spec, hidden=[8], head_dim=4)({"user": torch.tensor([1]), "item": torch.tensor([3])}).shape
        torch.Size([1])
    """

    paper = "Song et al., AutoInt: Automatic Feature Interaction Learning via Self-Attentive Neural Networks, CIKM 2019"

    def __init__(
        self,
        features: Sequence[Feature],
        *,
        hidden: Sequence[int] = DEFAULT_HIDDEN,
        dropout: float = DEFAULT_DROPOUT,
        dropout_placement: str = "activation",
        input_norm: str = "none",
        attention_layers: int = 3,
        num_heads: int = 2,
        head_dim: int = 16,
    ) -> None:
        super().__init__()
        self.embedding = FeatureEmbedding(features, dense_as_field=True)
        widths = [self.embedding.field_dim]
        layers = []
        for _ in range(check_count(attention_layers, "attention_layers")):
            layers.append(InteractingLayer(widths[-1], num_heads, head_dim))
            widths.append(layers[-1].out_features)
        self.attention = nn.Sequential(*layers)
        self.deep = DeepTower(self.embedding.flat_dim, hidden, dropout, dropout_placement=dropout_placement,
                              input_norm=input_norm)
        self.head = nn.Linear(self.embedding.num_fields * widths[-1] + self.deep.out_features, 1)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        fields = self.embedding.fields(batch)  # (N, F, E)
        attended = self.attention(fields).flatten(1)  # (N, F * H * d)
        both = torch.cat([attended, self.deep(fields.flatten(1))], dim=1)  # (N, F * H * d + hidden[-1])
        return self.head(both).squeeze(-1)  # (N,)
