"""PLE: progressive layered extraction with per-domain and shared experts at every level."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Optional

import torch
from torch import Tensor, nn

from ..features import Feature
from .embedding import FeatureEmbedding
from .multidomain import DomainGroups, MultiDomainBaseline, StackedMLP, mix_experts
from .tower import DEFAULT_DROPOUT, check_count, check_widths


class ExtractionLevel(nn.Module):
    """One PLE level: S shared experts, K experts and a gate per domain, and (below the top) a shared gate.

    Args:
        in_features: width of the level's inputs.
        hidden: each expert's widths.
        num_domains: D.
        specific_experts: K, experts per domain.
        shared_experts: S.
        dropout: dropout after each expert layer.
        top: the last level (no shared gate: nothing above reads the shared path).

    Example:
        >>> import torch
        >>> level = ExtractionLevel(6, (4,), 3, specific_experts=1, shared_experts=2, dropout=0.0, top=False)
        >>> groups = DomainGroups.from_ids(torch.tensor([0, 2, 2, 1, 0]), num_domains=3)
        >>> own, shared = level(torch.randn(5, 6), torch.randn(5, 6), groups)
        >>> own.shape, shared.shape
        (torch.Size([5, 4]), torch.Size([5, 4]))
    """

    def __init__(self, in_features: int, hidden: Sequence[int], num_domains: int, specific_experts: int,
                 shared_experts: int, dropout: float, top: bool) -> None:
        super().__init__()
        widths = (in_features, *hidden)
        self.shared = StackedMLP(widths, (shared_experts,), dropout, activate_last=True)
        self.specific = StackedMLP(widths, (num_domains, specific_experts), dropout, activate_last=True)
        self.gates = StackedMLP((in_features, specific_experts + shared_experts), (num_domains,), 0.0, False)
        self.shared_gate = None if top else nn.Linear(in_features, specific_experts + shared_experts)

    def forward(self, own: Tensor, shared: Tensor, groups: DomainGroups) -> tuple[Tensor, Optional[Tensor]]:
        """The next level's inputs: the domain path and the shared path, `(N, in)` each -> `(N, H)` each.

        The shared experts run on the whole batch; each domain's experts and gate on its rows only.
        """
        shared_experts = self.shared(shared).transpose(0, 1)  # (S, N, H) -> (N, S, H)
        specific, gates = self.specific.split(), self.gates.split()

        def domain_part(domain: int, own_rows: Tensor, shared_rows: Tensor) -> Tensor:
            experts = torch.cat([specific[domain](own_rows).transpose(0, 1), shared_rows], dim=1)  # (n, K + S, H)
            mixed = mix_experts(gates[domain](own_rows), experts)  # (n, H)
            return torch.cat([mixed.unsqueeze(1), experts], dim=1)  # (n, 1 + K + S, H)

        parts = groups.apply(domain_part, own, shared_experts)  # (N, 1 + K + S, H)
        own_next, experts = parts[:, 0], parts[:, 1:]  # (N, H), (N, K + S, H)
        if self.shared_gate is None:
            return own_next, None
        return own_next, mix_experts(self.shared_gate(shared), experts)  # (N, H), (N, H)


class PLE(MultiDomainBaseline):
    """Progressive layered extraction (customised gate control), one "task" per domain.

    A row runs the shared experts and its own domain's experts, gates and tower only. The
    original multi-task PLE lets the shared gate of a lower level mix every task's experts; as a
    row here belongs to one domain, its shared gate mixes the shared experts and that domain's.

    Args:
        features: the feature spec.
        num_domains: D.
        hidden: each expert's widths (the same at every level).
        dropout: dropout after each hidden layer.
        num_levels: how many extraction levels.
        specific_experts: experts per domain per level.
        shared_experts: shared experts per level.
        tower_hidden: each domain tower's hidden widths (a logit head follows).
        domain_key: the batch column holding each row's domain id.

    Example:
        >>> import torch
        >>> from mlora_peft.features import SparseFeature
        >>> model = PLE([SparseFeature("user", 10)], num_domains=3, hidden=[8], tower_hidden=[4])
        >>> model({"user": torch.tensor([1, 2]), "domain_id": torch.tensor([0, 2])}).shape
        torch.Size([2])
    """

    paper = (
        "Tang et al., Progressive Layered Extraction (PLE): A Novel Multi-Task Learning (MTL) Model for "
        "Personalized Recommendations, RecSys 2020"
    )
    domain_parameter_parts = ("specific", "gates", "towers")

    def __init__(
        self,
        features: Sequence[Feature],
        *,
        num_domains: int,
        hidden: Sequence[int] = (256, 128),
        dropout: float = DEFAULT_DROPOUT,
        num_levels: int = 2,
        specific_experts: int = 1,
        shared_experts: int = 2,
        tower_hidden: Sequence[int] = (64,),
        domain_key: str = "domain_id",
    ) -> None:
        super().__init__(num_domains, domain_key)
        self.embedding = FeatureEmbedding(features)
        hidden, levels = check_widths(hidden, "hidden"), check_count(num_levels, "num_levels")
        counts = (check_count(specific_experts, "specific_experts"), check_count(shared_experts, "shared_experts"))
        self.levels = nn.ModuleList(
            ExtractionLevel(self.embedding.flat_dim if k == 0 else hidden[-1], hidden, num_domains, *counts,
                            dropout=dropout, top=k == levels - 1)
            for k in range(levels)
        )
        tower_widths = (hidden[-1], *check_widths(tower_hidden, "tower_hidden"), 1)
        self.towers = StackedMLP(tower_widths, (num_domains,), dropout, activate_last=False)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        x = self.embedding.flat(batch)  # (N, in)
        groups, towers = self.domain_groups(batch, x.shape[0]), self.towers.split()
        own, shared = x, x
        for level in self.levels:
            own, shared = level(own, shared, groups)  # (N, H)
        return groups.apply(lambda d, rows: towers[d](rows), own).squeeze(-1)  # (N,)
