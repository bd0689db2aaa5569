"""Building blocks of the multi-domain baselines: grouping rows by domain, stacked MLPs, the common base.

Per-domain parts (towers, gates, experts) run once per domain present in the batch, on that
domain's rows only: rows are sorted by domain once, split into segments, and each segment goes
through its own domain's weights. The cost grows with the batch, not with D times the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import ClassVar, Optional

import torch
from torch import Tensor, nn

from ..tuner.routing import make_routing
from .tower import check_count, check_dropout


@dataclass(frozen=True)
class DomainGroups:
    """A batch's rows grouped by domain.

    Attributes:
        domains: the domains present, in increasing order.
        sizes: how many rows each of them holds.
        order: `(N,)` permutation sorting rows by domain, or None when one domain holds every row.
        inverse: `(N,)` the inverse permutation of `order` (None with it).

    Example:
        >>> import torch
        >>> groups = DomainGroups.from_ids(torch.tensor([2, 0, 2]), num_domains=3)
        >>> groups.domains, groups.sizes
        ([0, 2], [1, 2])
        >>> groups.apply(lambda d, x: x * d, torch.ones(3, 1)).squeeze(1).tolist()
        [2.0, 0.0, 2.0]
    """

    domains: list[int]
    sizes: list[int]
    order: Optional[Tensor]
    inverse: Optional[Tensor]

    @classmethod
    def from_ids(cls, domain_ids: Tensor, num_domains: int) -> "DomainGroups":
        """Group `(N,)` ids that already lie in [0, num_domains)."""
        counts = torch.bincount(domain_ids, minlength=num_domains).tolist()  # D ints (one host sync)
        present = [d for d, count in enumerate(counts) if count] or [0]
        if len(present) == 1:
            return cls(present, [domain_ids.numel()], None, None)
        order = torch.argsort(domain_ids, stable=True)  # (N,)
        inverse = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=order.device))
        return cls(present, [counts[d] for d in present], order, inverse)

    def apply(self, per_domain: Callable[..., Tensor], *rows: Tensor) -> Tensor:
        """`per_domain(d, *segments)` on each domain's rows of every `(N, ...)` tensor, put back in batch order."""
        if self.order is None:
            return per_domain(self.domains[0], *rows)
        segments = [r.index_select(0, self.order).split(self.sizes) for r in rows]
        outputs = [per_domain(d, *(s[i] for s in segments)) for i, d in enumerate(self.domains)]
        return torch.cat(outputs).index_select(0, self.inverse)  # (N, ...) in batch order


class StackedMLP(nn.Module):
    """Independent MLPs with weights stacked over leading axes (experts, domains, or both).

    Layer `k` holds `(*copies, out, in)` weights and `(*copies, out)` biases. `forward(x)` runs
    every copy at once (`(N, in) -> (*copies, N, out)`, e.g. all experts); `split()` gives one
    function per index of the first axis (e.g. each domain's tower), to run on that domain's rows.

    Args:
        widths: input width then each layer's width, e.g. (in, 64, 1).
        copies: the leading axes, e.g. (num_domains,) or (num_domains, experts).
        dropout: dropout after each activated layer.
        activate_last: apply ReLU and dropout after the last layer too (False for a logit head).

    Example:
        >>> import torch
        >>> towers = StackedMLP((6, 4, 1), copies=(3,), dropout=0.0, activate_last=False)
        >>> towers.split()[2](torch.randn(5, 6)).shape, towers(torch.randn(5, 6)).shape
        (torch.Size([5, 1]), torch.Size([3, 5, 1]))
    """

    def __init__(self, widths: Sequence[int], copies: tuple[int, ...], dropout: float, activate_last: bool) -> None:
        super().__init__()
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(*copies, out, fan_in)) for fan_in, out in zip(widths[:-1], widths[1:])
        )
        self.biases = nn.ParameterList(nn.Parameter(torch.empty(*copies, out)) for out in widths[1:])
        self.dropout = nn.Dropout(check_dropout(dropout))
        self.activate_last = activate_last
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Every copy initialised as an nn.Linear: uniform in +-1/sqrt(in)."""
        for weight, bias in zip(self.weights, self.biases):
            bound = 1.0 / math.sqrt(weight.shape[-1])
            nn.init.uniform_(weight, -bound, bound)
            nn.init.uniform_(bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        return self._run(x, list(zip(self.weights, self.biases)))  # (*copies, N, out)

    def split(self) -> list[Callable[[Tensor], Tensor]]:
        """One function per index `i` of the first axis, running copy `i`: `(n, in) -> (*copies[1:], n, out)`.

        Call it once per forward: the weights are unbound once, so the backward pass writes each
        stacked gradient once instead of once per domain.
        """
        per_layer = [list(zip(w.unbind(0), b.unbind(0))) for w, b in zip(self.weights, self.biases)]  # [k][i]
        return [partial(self._run, layers=[layer[i] for layer in per_layer]) for i in range(len(per_layer[0]))]

    def _run(self, x: Tensor, layers: list[tuple[Tensor, Tensor]]) -> Tensor:
        for k, (weight, bias) in enumerate(layers):
            x = x @ weight.transpose(-1, -2) + bias.unsqueeze(-2)  # (..., n, out)
            if k < len(layers) - 1 or self.activate_last:
                x = self.dropout(torch.relu(x))
        return x


def mix_experts(gate_logits: Tensor, experts: Tensor) -> Tensor:
    """`(n, E)` gate logits and `(n, E, H)` expert outputs -> `(n, H)` softmax-weighted sum."""
    weights = torch.softmax(gate_logits, dim=-1).unsqueeze(-1)  # (n, E, 1)
    return (weights * experts).sum(1)  # (n, H)


class MultiDomainBaseline(nn.Module):
    """Base of the multi-domain baselines: domain ids from `batch[domain_key]`, per-domain parameters.

    Subclasses take `(features, *, num_domains, hidden, dropout, domain_key, ...)` and return
    `(N,)` logits from `forward(batch)`. `domain_parameter_parts` names the modules or parameters
    whose weights have the domain as first axis (a row of domain d uses only slice d of them).
    """

    paper: ClassVar[str] = ""
    domain_parameter_parts: ClassVar[tuple[str, ...]] = ()

    def __init__(self, num_domains: int, domain_key: str) -> None:
        super().__init__()
        self.num_domains = check_count(num_domains, "num_domains")
        if not isinstance(domain_key, str) or not domain_key:
            raise ValueError(f"domain_key={domain_key!r} must name the batch column of domain ids, e.g. 'domain_id'.")
        self.domain_key = domain_key

    def domain_ids(self, batch: Mapping[str, Tensor], rows: int) -> Tensor:
        """`(rows,)` int64 domain ids from `batch[domain_key]` (one int or 0-d tensor means every row).

        Raises:
            ValueError: the column is missing, has the wrong length, or holds ids outside [0, D).
        """
        if self.domain_key not in batch:
            raise ValueError(
                f"The batch has no {self.domain_key!r} column (it has {sorted(batch)}); multi-domain models read "
                "each row's domain from it. Add it, or build the model with domain_key='<your column>'."
            )
        raw = batch[self.domain_key]
        device = raw.device if isinstance(raw, Tensor) else None
        return make_routing(raw, self.num_domains, None, device, rows).domain_ids  # (rows,)

    def domain_groups(self, batch: Mapping[str, Tensor], rows: int) -> DomainGroups:
        """The batch's rows grouped by their domain."""
        return DomainGroups.from_ids(self.domain_ids(batch, rows), self.num_domains)

    def domain_parameters(self) -> dict[str, nn.Parameter]:
        """The parameters indexed by domain on their first axis, by name."""
        return {name: param for name, param in self.named_parameters()
                if set(name.split(".")) & set(self.domain_parameter_parts)}
