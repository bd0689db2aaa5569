"""MMoE: shared experts, and for each domain a softmax gate over them and a tower."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor

from ..features import Feature
from .embedding import FeatureEmbedding
from .multidomain import MultiDomainBaseline, StackedMLP, mix_experts
from .tower import DEFAULT_DROPOUT, check_count, check_widths


class MMoE(MultiDomainBaseline):
    """Multi-gate mixture of experts with one gate and one tower per domain.

    Every row goes through all experts (the gates mix them), but only through its own domain's
    gate and tower.

    Args:
        features: the feature spec.
        num_domains: D, the number of gates and towers.
        hidden: each expert's widths.
        dropout: dropout after each hidden layer.
        num_experts: how many shared experts.
        tower_hidden: each domain tower's hidden widths (a logit head follows).
        domain_key: the batch column holding each row's domain id.

    Example:
        >>> import torch
        >>> from mlora_peft.features import SparseFeature
        >>> model = MMoE([SparseFeature("user", 10)], num_domains=3, hidden=[8], tower_hidden=[4])
        >>> model({"user": torch.tensor([1, 2]), "domain_id": torch.tensor([0, 2])}).shape
        torch.Size([2])
    """

    paper = (
        "Ma et al., Modeling Task Relationships in Multi-task Learning with Multi-gate Mixture-of-Experts, KDD 2018"
    )
    domain_parameter_parts = ("gates", "towers")

    def __init__(
        self,
        features: Sequence[Feature],
        *,
        num_domains: int,
        hidden: Sequence[int] = (256, 128),
        dropout: float = DEFAULT_DROPOUT,
        num_experts: int = 4,
        tower_hidden: Sequence[int] = (64,),
        domain_key: str = "domain_id",
    ) -> None:
        super().__init__(num_domains, domain_key)
        self.embedding = FeatureEmbedding(features)
        width, hidden = self.embedding.flat_dim, check_widths(hidden, "hidden")
        experts = check_count(num_experts, "num_experts")
        self.experts = StackedMLP((width, *hidden), (experts,), dropout, activate_last=True)
        self.gates = StackedMLP((width, experts), (num_domains,), 0.0, activate_last=False)
        tower_widths = (hidden[-1], *check_widths(tower_hidden, "tower_hidden"), 1)
        self.towers = StackedMLP(tower_widths, (num_domains,), dropout, activate_last=False)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        x = self.embedding.flat(batch)  # (N, in)
        experts = self.experts(x).transpose(0, 1)  # (E, N, H) -> (N, E, H)
        gates, towers = self.gates.split(), self.towers.split()

        def domain_logits(domain: int, x: Tensor, experts: Tensor) -> Tensor:
            return towers[domain](mix_experts(gates[domain](x), experts))  # (n, H) -> (n, 1)

        return self.domain_groups(batch, x.shape[0]).apply(domain_logits, x, experts).squeeze(-1)  # (N,)
