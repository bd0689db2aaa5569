"""STAR: partitioned normalisation, a star-topology FCN (shared weights times domain weights), an auxiliary network."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..features import Feature
from .embedding import FeatureEmbedding
from .multidomain import DomainGroups, MultiDomainBaseline
from .tower import DEFAULT_DROPOUT, DEFAULT_HIDDEN, DeepTower, check_count, check_dropout, check_widths


class PartitionedNorm(nn.Module):
    """Batch normalisation with per-domain statistics and a per-domain scale and shift.

    A row of domain d is normalised with the statistics of domain d's rows (in training: of the
    batch; in evaluation: domain d's running averages), then scaled by `weight * domain_weight[d]`
    and shifted by `bias + domain_bias[d]`. Running variances track the biased batch variance.

    Args:
        width: the feature width.
        num_domains: D.
        momentum: weight of the newest batch in the running averages.
        eps: added to the variance.

    Example:
        >>> import torch
        >>> norm = PartitionedNorm(4, num_domains=2)
        >>> norm(torch.randn(6, 4), domain=1).shape
        torch.Size([6, 4])
    """

    def __init__(self, width: int, num_domains: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.empty(width)), nn.Parameter(torch.empty(width))
        self.domain_weight = nn.Parameter(torch.empty(num_domains, width))
        self.domain_bias = nn.Parameter(torch.empty(num_domains, width))
        self.register_buffer("running_mean", torch.zeros(num_domains, width))
        self.register_buffer("running_var", torch.ones(num_domains, width))
        self.momentum, self.eps = momentum, eps
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Scales one, shifts zero, running mean zero and variance one."""
        for scale in (self.weight, self.domain_weight, self.running_var):
            scale.fill_(1.0)
        for shift in (self.bias, self.domain_bias, self.running_mean):
            shift.zero_()

    def forward(self, x: Tensor, domain: int) -> Tensor:
        if self.training:
            mean, var = x.mean(0), x.var(0, unbiased=False)  # (width,)
            with torch.no_grad():
                self.running_mean[domain].lerp_(mean, self.momentum)
                self.running_var[domain].lerp_(var, self.momentum)
        else:
            mean, var = self.running_mean[domain], self.running_var[domain]
        normalised = (x - mean) * torch.rsqrt(var + self.eps)  # (n, width)
        return normalised * (self.weight * self.domain_weight[domain]) + (self.bias + self.domain_bias[domain])


class StarFCN(nn.Module):
    """Fully connected layers whose weights for domain d are `W * W_d` and biases `b + b_d`.

    Domain weights start at one and domain biases at zero, so every domain starts as the shared network.

    Args:
        widths: input width, hidden widths, output width (1 for a logit).
        num_domains: D.
        dropout: dropout after each hidden layer (ReLU), none after the output.

    Example:
        >>> import torch
        >>> StarFCN((6, 4, 1), num_domains=3, dropout=0.0).split()[2](torch.randn(5, 6)).shape
        torch.Size([5, 1])
    """

    def __init__(self, widths: Sequence[int], num_domains: int, dropout: float) -> None:
        super().__init__()
        shapes = list(zip(widths[1:], widths[:-1]))  # (out, in) per layer
        self.shared_weights = nn.ParameterList(nn.Parameter(torch.empty(out, fan_in)) for out, fan_in in shapes)
        self.shared_biases = nn.ParameterList(nn.Parameter(torch.empty(out)) for out, _ in shapes)
        self.domain_weights = nn.ParameterList(nn.Parameter(torch.empty(num_domains, *s)) for s in shapes)
        self.domain_biases = nn.ParameterList(nn.Parameter(torch.empty(num_domains, out)) for out, _ in shapes)
        self.dropout = nn.Dropout(check_dropout(dropout))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Shared layers as nn.Linear (uniform in +-1/sqrt(in)); domain weights one, domain biases zero."""
        for weight, bias in zip(self.shared_weights, self.shared_biases):
            bound = 1.0 / math.sqrt(weight.shape[1])
            nn.init.uniform_(weight, -bound, bound)
            nn.init.uniform_(bias, -bound, bound)
        for weight, bias in zip(self.domain_weights, self.domain_biases):
            weight.fill_(1.0)
            bias.zero_()

    def split(self) -> list[Callable[[Tensor], Tensor]]:
        """One function per domain, `(n, in) -> (n, out)`; call once per forward (the weights are unbound once)."""
        weights = [w.unbind(0) for w in self.domain_weights]  # [layer][domain]
        biases = [b.unbind(0) for b in self.domain_biases]
        return [partial(self._run, domain_weights=[w[d] for w in weights], domain_biases=[b[d] for b in biases])
                for d in range(len(weights[0]))]

    def _run(self, x: Tensor, domain_weights: list[Tensor], domain_biases: list[Tensor]) -> Tensor:
        last = len(self.shared_weights) - 1
        layers = zip(self.shared_weights, self.shared_biases, domain_weights, domain_biases)
        for k, (weight, bias, domain_weight, domain_bias) in enumerate(layers):
            x = F.linear(x, weight * domain_weight, bias + domain_bias)  # (n, out)
            if k < last:
                x = self.dropout(torch.relu(x))
        return x


class STAR(MultiDomainBaseline):
    """Star Topology Adaptive Recommender: partitioned norm, star-topology FCN, plus an auxiliary network.

    Each domain's rows run the FCN with that domain's weights only. The auxiliary network sees a
    learned domain-indicator embedding and the flat embedding and adds its logit to the FCN's.

    Args:
        features: the feature spec.
        num_domains: D.
        hidden: the star FCN's hidden widths (a star-topology logit layer follows).
        dropout: dropout after each hidden layer.
        aux_hidden: the auxiliary network's hidden widths (a logit head follows).
        domain_embedding_dim: width of the domain-indicator embedding.
        domain_key: the batch column holding each row's domain id.

    Example:
        >>> import torch
        >>> from mlora_peft.features import SparseFeature
        >>> model = STAR([SparseFeature("user", 10)], num_domains=3, hidden=[8], aux_hidden=[4])
        >>> model({"user": torch.tensor([1, 2]), "domain_id": torch.tensor([0, 2])}).shape
        torch.Size([2])
    """

    paper = (
        "Sheng et al., One Model to Serve All: Star Topology Adaptive Recommender for Multi-Domain CTR Prediction, "
        "CIKM 2021"
    )
    domain_parameter_parts = ("domain_weight", "domain_bias", "domain_weights", "domain_biases", "domain_embedding")

    def __init__(
        self,
        features: Sequence[Feature],
        *,
        num_domains: int,
        hidden: Sequence[int] = DEFAULT_HIDDEN,
        dropout: float = DEFAULT_DROPOUT,
        aux_hidden: Sequence[int] = (64,),
        domain_embedding_dim: int = 8,
        domain_key: str = "domain_id",
    ) -> None:
        super().__init__(num_domains, domain_key)
        self.embedding = FeatureEmbedding(features)
        width = self.embedding.flat_dim
        self.norm = PartitionedNorm(width, num_domains)
        self.fcn = StarFCN((width, *check_widths(hidden, "hidden"), 1), num_domains, dropout)
        self.domain_embedding = nn.Embedding(num_domains, check_count(domain_embedding_dim, "domain_embedding_dim"))
        self.aux = DeepTower(width + domain_embedding_dim, aux_hidden, dropout)
        self.aux_head = nn.Linear(self.aux.out_features, 1)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        x = self.embedding.flat(batch)  # (N, in)
        ids = self.domain_ids(batch, x.shape[0])  # (N,)
        groups = DomainGroups.from_ids(ids, self.num_domains)
        fcn = self.fcn.split()
        main = groups.apply(lambda d, rows: fcn[d](self.norm(rows, d)), x)  # (N, 1)
        aux = self.aux_head(self.aux(torch.cat([x, self.domain_embedding(ids)], dim=1)))  # (N, 1)
        return (main + aux).squeeze(-1)  # (N,)
