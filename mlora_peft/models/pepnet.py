"""PEPNet: an embedding gate (EPNet) and per-layer gates (PPNet), both conditioned on the domain."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..features import Feature
from .embedding import FeatureEmbedding
from .multidomain import MultiDomainBaseline
from .tower import DEFAULT_DROPOUT, DEFAULT_HIDDEN, DeepTower, check_count

GATE_SCALE = 2.0
"""gamma in the gate `gamma * sigmoid(...)`: a gate lies in (0, 2), 1 at neutral."""


class GateUnit(nn.Module):
    """PEPNet's gate neural unit: `gamma * sigmoid(W2 ReLU(W1 x + b1) + b2)`.

    Args:
        in_features: input width.
        hidden: hidden width.
        out_features: gate width (the width of what it scales).

    Example:
        >>> import torch
        >>> GateUnit(6, 8, 4)(torch.randn(3, 6)).shape
        torch.Size([3, 4])
    """

    def __init__(self, in_features: int, hidden: int, out_features: int) -> None:
        super().__init__()
        self.inner = nn.Linear(in_features, hidden)
        self.outer = nn.Linear(hidden, out_features)

    def forward(self, x: Tensor) -> Tensor:
        return GATE_SCALE * torch.sigmoid(self.outer(torch.relu(self.inner(x))))  # (N, out)


class PEPNet(MultiDomainBaseline):
    """Parameter and embedding personalised network, one task, the domain as the personal prior.

    EPNet scales the flat embedding `e` with a gate of `[domain embedding, stop_grad(e)]`; PPNet
    scales the input of each deep-tower layer with a gate of `[domain embedding,
    stop_grad(EPNet output)]`. The paper also feeds user, item and author ids to PPNet; here
    the domain embedding is the prior (the spec's own features reach PPNet through EPNet's
    output). Only the domain embedding is per domain, so each row uses only its own domain's slice.

    Args:
        features: the feature spec.
        num_domains: D.
        hidden: the deep tower's widths (a logit head follows).
        dropout: dropout after each hidden layer.
        gate_hidden: hidden width of every gate unit.
        domain_embedding_dim: width of the domain embedding.
        domain_key: the batch column holding each row's domain id.

    Example:
        >>> import torch
        >>> from mlora_peft.features import SparseFeature
        >>> model = PEPNet([SparseFeature("user", 10)], num_domains=3, hidden=[8])
        >>> model({"user": torch.tensor([1, 2]), "domain_id": torch.tensor([0, 2])}).shape
        torch.Size([2])
    """

    paper = (
        "Chang et al., PEPNet: Parameter and Embedding Personalized Network for Infusing with Personalized Prior "
        "Information, KDD 2023"
    )
    domain_parameter_parts = ("domain_embedding",)

    def __init__(
        self,
        features: Sequence[Feature],
        *,
        num_domains: int,
        hidden: Sequence[int] = DEFAULT_HIDDEN,
        dropout: float = DEFAULT_DROPOUT,
        gate_hidden: int = 64,
        domain_embedding_dim: int = 8,
        domain_key: str = "domain_id",
    ) -> None:
        super().__init__(num_domains, domain_key)
        self.embedding = FeatureEmbedding(features)
        width = self.embedding.flat_dim
        gate_in = check_count(domain_embedding_dim, "domain_embedding_dim") + width
        check_count(gate_hidden, "gate_hidden")
        self.domain_embedding = nn.Embedding(num_domains, domain_embedding_dim)
        self.embedding_gate = GateUnit(gate_in, gate_hidden, width)
        self.deep = DeepTower(width, hidden, dropout)
        layer_inputs = [self.deep[int(name)].in_features for name in self.deep.hidden_linear_names]
        self.layer_gates = nn.ModuleList(GateUnit(gate_in, gate_hidden, w) for w in layer_inputs)
        self.head = nn.Linear(self.deep.out_features, 1)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        general = self.embedding.flat(batch)  # (N, in)
        domain = self.domain_embedding(self.domain_ids(batch, general.shape[0]))  # (N, domain_dim)
        personal = general * self.embedding_gate(torch.cat([domain, general.detach()], dim=1))  # (N, in)
        prior = torch.cat([domain, personal.detach()], dim=1)  # (N, domain_dim + in)
        h = personal
        for k, gate in enumerate(self.layer_gates):
            h = self.deep.block(k, h * gate(prior))  # (N, hidden[k])
        return self.head(h).squeeze(-1)  # (N,)
