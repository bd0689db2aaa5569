"""Shared-Bottom: one shared bottom network, then a tower per domain."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor

from ..features import Feature
from .embedding import FeatureEmbedding
from .multidomain import MultiDomainBaseline, StackedMLP
from .tower import DEFAULT_DROPOUT, DeepTower, check_widths


class SharedBottom(MultiDomainBaseline):
    """A shared ReLU bottom on the flat embedding, then domain d's tower and head for the rows of domain d.

    Args:
        features: the feature spec.
        num_domains: D, the number of towers.
        hidden: the shared bottom's widths.
        dropout: dropout after each hidden layer.
        tower_hidden: each domain tower's hidden widths (a logit head follows).
        domain_key: the batch column holding each row's domain id.

    Example:
        >>> import torch
        >>> from mlora_peft.features import SparseFeature
        >>> model = SharedBottom([SparseFeature("user", 10)], num_domains=3, hidden=[8], tower_hidden=[4])
        >>> model({"user": torch.tensor([1, 2]), "domain_id": torch.tensor([0, 2])}).shape
        torch.Size([2])
    """

    paper = "Caruana, Multitask Learning, Machine Learning 1997"
    domain_parameter_parts = ("towers",)

    def __init__(
        self,
        features: Sequence[Feature],
        *,
        num_domains: int,
        hidden: Sequence[int] = (256, 128),
        dropout: float = DEFAULT_DROPOUT,
        tower_hidden: Sequence[int] = (64,),
        domain_key: str = "domain_id",
    ) -> None:
        super().__init__(num_domains, domain_key)
        self.embedding = FeatureEmbedding(features)
        self.bottom = DeepTower(self.embedding.flat_dim, hidden, dropout)
        widths = (self.bottom.out_features, *check_widths(tower_hidden, "tower_hidden"), 1)
        self.towers = StackedMLP(widths, (num_domains,), dropout, activate_last=False)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        shared = self.bottom(self.embedding.flat(batch))  # (N, hidden[-1])
        groups, towers = self.domain_groups(batch, shared.shape[0]), self.towers.split()
        return groups.apply(lambda d, rows: towers[d](rows), shared).squeeze(-1)  # (N,)
