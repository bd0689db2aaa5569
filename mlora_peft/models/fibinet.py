"""FiBiNET: SENET field re-weighting and bilinear field interactions, then a deep tower."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..features import Feature
from .embedding import FeatureEmbedding
from .tower import DEFAULT_DROPOUT, DEFAULT_HIDDEN, Backbone, DeepTower, check_count

BILINEAR_TYPES = ("field_all", "field_each", "field_interaction")


class SENet(nn.Module):
    """Squeeze-and-excitation over fields: `a = ReLU(W2 ReLU(W1 mean_E(e)))`, output `a_i * e_i`.

    Args:
        num_fields: F.
        reduction_ratio: the squeeze width is max(F // reduction_ratio, 1).

    Example:
        >>> import torch
        >>> SENet(num_fields=4, reduction_ratio=2)(torch.randn(3, 4, 8)).shape
        torch.Size([3, 4, 8])
    """

    def __init__(self, num_fields: int, reduction_ratio: int) -> None:
        super().__init__()
        squeezed = max(num_fields // check_count(reduction_ratio, "reduction_ratio"), 1)
        self.squeeze = nn.Linear(num_fields, squeezed, bias=False)
        self.excite = nn.Linear(squeezed, num_fields, bias=False)

    def forward(self, fields: Tensor) -> Tensor:
        summary = fields.mean(2)  # (N, F)
        weights = torch.relu(self.excite(torch.relu(self.squeeze(summary))))  # (N, F)
        return fields * weights.unsqueeze(-1)  # (N, F, E)


class Bilinear(nn.Module):
    """Bilinear interaction of every field pair i < j: `p_ij = (v_i W) * v_j`.

    Args:
        num_fields: F (at least 2).
        width: E, the width of each field vector.
        bilinear_type: "field_all" (one W), "field_each" (W_i per field i) or
            "field_interaction" (W_ij per pair).

    Raises:
        ValueError: an unknown type or fewer than two fields.

    Example:
        >>> import torch
        >>> Bilinear(num_fields=4, width=8, bilinear_type="field_each")(torch.randn(3, 4, 8)).shape
        torch.Size([3, 6, 8])
    """

    def __init__(self, num_fields: int, width: int, bilinear_type: str) -> None:
        super().__init__()
        if bilinear_type not in BILINEAR_TYPES:
            raise ValueError(f"bilinear_type={bilinear_type!r}: use one of {BILINEAR_TYPES}.")
        if num_fields < 2:
            raise ValueError(
                f"Bilinear interactions need at least two fields, the spec gives {num_fields}; add features."
            )
        pairs = num_fields * (num_fields - 1) // 2
        count = {"field_all": 1, "field_each": num_fields, "field_interaction": pairs}[bilinear_type]
        self.weight = nn.Parameter(torch.empty(count, width, width))
        self.bilinear_type = bilinear_type
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Each W uniform in +-1/sqrt(E) (as nn.Linear)."""
        bound = 1.0 / math.sqrt(self.weight.shape[1])
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, fields: Tensor) -> Tensor:
        first, second = torch.triu_indices(fields.shape[1], fields.shape[1], 1, device=fields.device)  # (P,), (P,)
        if self.bilinear_type == "field_all":
            projected = fields.index_select(1, first) @ self.weight[0]  # (N, P, E)
        elif self.bilinear_type == "field_each":
            projected = torch.einsum("nfe,feg->nfg", fields, self.weight).index_select(1, first)  # (N, P, E)
        else:
            projected = torch.einsum("npe,peg->npg", fields.index_select(1, first), self.weight)  # (N, P, E)
        return projected * fields.index_select(1, second)  # (N, P, E)


class FiBiNET(Backbone):
    """FiBiNET: bilinear interactions of the raw and the SENET-weighted fields, concatenated, then a deep tower.

    Args:
        features: the feature spec (at least two features); id features share one embedding_dim,
            dense features are projected to it.
        hidden: the deep tower's widths.
        dropout: dropout after each hidden layer.
        dropout_placement: "activation" (dropout after each hidden ReLU) or "base_output" (on each
            hidden Linear's `W x + b` only, so an MLoRA adapter's term is not dropped, as in the
            MLoRA paper's code); see `DeepTower`.
        input_norm: "none", or "batch" to batch-normalise the deep tower's input; see `DeepTower`.
        reduction_ratio: SENET's squeeze ratio.
        bilinear_type: "field_all", "field_each" or "field_interaction".

    Example:
        >>> import torch
        >>> from mlora_peft.features import SparseFeature
        >>> spec = [SparseFeature("user", 10), SparseFeature("item", 20)]
        >>> FiBiNET(spec, hidden=[8])({"user": torch.tensor([1]), "item": torch.tensor([3])}).shape
        torch.Size([1])
    """

    paper = (
        "Huang et al., FiBiNET: Combining Feature Importance and Bilinear feature Interaction for Click-Through "
        "Rate Prediction, RecSys 2019"
    )

    def __init__(
        self,
        features: Sequence[Feature],
        *,
        hidden: Sequence[int] = DEFAULT_HIDDEN,
        dropout: float = DEFAULT_DROPOUT,
        dropout_placement: str = "activation",
        input_norm: str = "none",
        reduction_ratio: int = 3,
        bilinear_type: str = "field_interaction",
    ) -> None:
        super().__init__()
        self.embedding = FeatureEmbedding(features, dense_as_field=True)
        fields, width = self.embedding.num_fields, self.embedding.field_dim
        self.senet = SENet(fields, reduction_ratio)
        self.bilinear = Bilinear(fields, width, bilinear_type)
        self.senet_bilinear = Bilinear(fields, width, bilinear_type)
        self.deep = DeepTower(fields * (fields - 1) * width, hidden, dropout, dropout_placement=dropout_placement,
                              input_norm=input_norm)
        self.head = nn.Linear(self.deep.out_features, 1)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        fields = self.embedding.fields(batch)  # (N, F, E)
        raw = self.bilinear(fields).flatten(1)  # (N, P * E)
        weighted = self.senet_bilinear(self.senet(fields)).flatten(1)  # (N, P * E)
        return self.head(self.deep(torch.cat([raw, weighted], dim=1))).squeeze(-1)  # (N,)
