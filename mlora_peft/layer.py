"""`MultiDomainLoraLayer`: a linear layer with one low-rank adapter and bias per domain.

Each adapter's domains are stacked in one tensor per role: `mdlora_A[name]` is `(D, r, in)`,
`mdlora_B[name]` is `(D, out, r)` and `mdlora_bias[name]` is `(D, out)`. The layer never looks
at the batch: the model hands it the rows grouped by domain (`set_routing`) before each forward.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any, Optional

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import Tensor, nn
from torch.nn import functional as F

from .config import MultiDomainLoraConfig
from .routed_linear import DomainSegments, group_by_domain, routed_linear


class MultiDomainLoraLayer(nn.Module, BaseTunerLayer):
    """Wraps an `nn.Linear`; computes `W x + b + scaling * B_d A_d dropout(x) + b_d` for domain d.

    A base layer with an `output_dropout` module (`mlora_peft.models.OutputDropoutLinear`, which
    returns `output_dropout(W x + b)`) keeps that dropout on its own term in training:
    `output_dropout(W x + b) + scaling * B_d A_d dropout(x) + b_d`; the adapter term is not dropped.

    Example:
        >>> import torch
        >>> from mlora_peft import MultiDomainLoraConfig
        >>> from mlora_peft.layer import MultiDomainLoraLayer
        >>> layer = MultiDomainLoraLayer(torch.nn.Linear(4, 2), "default", MultiDomainLoraConfig(num_domains=3, r=2))
        >>> layer.set_routing(torch.tensor([0, 2, 1]))
        >>> layer(torch.randn(3, 4)).shape
        torch.Size([3, 2])
    """

    adapter_layer_names = ("mdlora_A", "mdlora_B", "mdlora_bias")
    other_param_names = ("rank", "scaling", "num_domains", "mdlora_dropout")

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: MultiDomainLoraConfig) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(
                f"MLoRA adapts nn.Linear layers only, got {type(base_layer).__name__}; "
                "leave this module out of target_modules."
            )
        self.base_layer = base_layer
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.mdlora_A = nn.ParameterDict()
        self.mdlora_B = nn.ParameterDict()
        self.mdlora_bias = nn.ParameterDict()
        self.mdlora_dropout = nn.ModuleDict()
        self.rank: dict[str, int] = {}
        self.scaling: dict[str, float] = {}
        self.num_domains: dict[str, int] = {}
        self.merged_domain: Optional[int] = None
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self._routing: Optional[DomainSegments] = None
        self._created_bias = False
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    # ----------------------------------------------------------------------------- adapters
    def update_layer(self, adapter_name: str, config: MultiDomainLoraConfig) -> None:
        """Create (or replace) the stacks of adapter `adapter_name` as the config says."""
        rank, domains = config.rank_for(self.out_features), config.num_domains
        self.rank[adapter_name] = rank
        self.scaling[adapter_name] = config.scaling_for(rank)
        self.num_domains[adapter_name] = domains
        self.mdlora_A[adapter_name] = nn.Parameter(torch.empty(domains, rank, self.in_features))
        self.mdlora_B[adapter_name] = nn.Parameter(torch.empty(domains, self.out_features, rank))
        if config.domain_bias:
            self.mdlora_bias[adapter_name] = nn.Parameter(torch.empty(domains, self.out_features))
        p = config.lora_dropout
        self.mdlora_dropout[adapter_name] = nn.Dropout(p) if p > 0 else nn.Identity()
        self._init_domains(adapter_name, range(domains), config.init_weights)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters)

    @torch.no_grad()
    def _init_domains(self, adapter_name: str, domains: range, init_weights: bool | str) -> None:
        """Initialise the given domains' slices: A random, B and b_d zero unless init_weights is False."""
        A, B = self.mdlora_A[adapter_name], self.mdlora_B[adapter_name]
        bias = self.mdlora_bias[adapter_name] if adapter_name in self.mdlora_bias else None
        for d in domains:
            if init_weights == "gaussian":
                nn.init.normal_(A[d], std=1.0 / self.rank[adapter_name])
            else:
                nn.init.kaiming_uniform_(A[d], a=math.sqrt(5))
            if init_weights is False:
                nn.init.normal_(B[d], std=0.1)
                if bias is not None:
                    nn.init.normal_(bias[d], std=0.1)
            else:
                B[d].zero_()
                if bias is not None:
                    bias[d].zero_()

    def add_domains(self, adapter_name: str, count: int, init_weights: bool | str = True) -> None:
        """Append `count` fresh domains to adapter `adapter_name`; existing slices are kept bit for bit."""
        old = self.num_domains[adapter_name]
        for params in (self.mdlora_A, self.mdlora_B, self.mdlora_bias):
            if adapter_name in params:
                stack = params[adapter_name]
                extra = stack.new_empty((count, *stack.shape[1:]))
                grown = nn.Parameter(torch.cat([stack.detach(), extra]), requires_grad=stack.requires_grad)
                params[adapter_name] = grown
        self.num_domains[adapter_name] = old + count
        self._init_domains(adapter_name, range(old, old + count), init_weights)

    # ----------------------------------------------------------------------------- routing
    def set_routing(self, domain_ids: Optional[Tensor | DomainSegments]) -> None:
        """Give the layer the domain of each row of its next inputs (None clears it).

        While `torch.export` traces, a tensor of ids is kept as it is: grouping rows by domain
        needs data-dependent shapes, so each row gathers its own domain's weights instead.
        """
        if isinstance(domain_ids, Tensor):
            if torch.compiler.is_exporting():
                self._routing = domain_ids.reshape(-1)  # (N,)
                return
            domains = max(self.num_domains.values())
            domain_ids = group_by_domain(domain_ids, domains)
        self._routing = domain_ids

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if self.merged:
            self._check_merged_domain()
            return self.base_layer(x, *args, **kwargs)
        active = [a for a in self.active_adapters if a in self.mdlora_A]
        if not active:
            return self.base_layer(x, *args, **kwargs)
        if len(active) > 1:
            raise ValueError(
                f"MLoRA routes through one adapter at a time, but {active} are active; "
                "call model.set_adapter(name) to pick one."
            )
        name = active[0]
        if isinstance(self._routing, Tensor):  # set while exporting: per-row gathers
            return self._gathered_forward(x, name, self._routing)
        segments = self._segments_for(x, name)
        flat = x.reshape(-1, self.in_features)  # (N * L, in) for inputs of shape (N, ..., in)
        if flat.shape[0] != segments.num_rows:
            segments = _repeat_segments(segments, flat.shape[0], self.num_domains[name])
        out = self._adapter_forward(flat, name, segments)  # (N * L, out)
        return out.reshape(*x.shape[:-1], self.out_features)

    def _adapter_forward(self, x: Tensor, name: str, segments: DomainSegments) -> Tensor:
        device_type = x.device.type
        autocast = torch.is_autocast_enabled(device_type)
        dtype = torch.get_autocast_dtype(device_type) if autocast else x.dtype
        base = self.base_layer
        tensors = [base.weight, base.bias, self.mdlora_A[name], self.mdlora_B[name], self.mdlora_bias.get(name)]
        weight, bias, A, B, domain_bias = [_cast(t, dtype) for t in tensors]
        x = _cast(x, dtype)
        dropout = self.mdlora_dropout[name]
        adapter_input = dropout(x) if self.training and isinstance(dropout, nn.Dropout) else None
        output_dropout = self._active_output_dropout()
        with torch.autocast(device_type, enabled=False) if autocast else contextlib.nullcontext():
            if output_dropout is None:
                return routed_linear(x, weight, bias, A, B, domain_bias, segments, self.scaling[name], adapter_input)
            low_rank = routed_linear(x, None, None, A, B, domain_bias, segments, self.scaling[name], adapter_input)
            return output_dropout(F.linear(x, weight, bias)) + low_rank  # (N, out)

    def _gathered_forward(self, x: Tensor, name: str, domain_ids: Tensor) -> Tensor:
        """The export-friendly path: every row gathers its domain's `A_d`, `B_d`, `b_d` (no grouping)."""
        rows_per_id = (domain_ids.shape[0],) + (1,) * (x.dim() - 2)
        ids = domain_ids.view(rows_per_id).expand(x.shape[:-1]).reshape(-1)  # (N * L,)
        flat = x.reshape(-1, self.in_features)  # (N * L, in)
        dropout = self.mdlora_dropout[name]
        base = self.base_layer
        domain_bias = self.mdlora_bias[name] if name in self.mdlora_bias else None
        output_dropout = self._active_output_dropout()
        weight, bias = (base.weight, base.bias) if output_dropout is None else (None, None)
        out = gathered_linear(flat, weight, bias, self.mdlora_A[name], self.mdlora_B[name], domain_bias,
                              ids, self.scaling[name], dropout(flat))  # (N * L, out)
        if output_dropout is not None:
            out = output_dropout(F.linear(flat, base.weight, base.bias)) + out  # (N * L, out)
        return out.reshape(*x.shape[:-1], self.out_features)

    def _active_output_dropout(self) -> Optional[nn.Dropout]:
        """The base layer's `output_dropout` when it acts (training, p > 0): it then drops `W x + b` only."""
        dropout = getattr(self.base_layer, "output_dropout", None)
        if self.training and isinstance(dropout, nn.Dropout) and dropout.p > 0:
            return dropout
        return None

    def _segments_for(self, x: Tensor, adapter_name: str) -> DomainSegments:
        if self._routing is not None:
            return self._routing
        if self.num_domains[adapter_name] == 1:
            return DomainSegments(torch.zeros(x.shape[0], dtype=torch.long, device=x.device), None, None, 0)
        raise ValueError(
            f"This model has {self.num_domains[adapter_name]} domains but no domain ids were given: call "
            "model(..., domain_ids=ids), put ids under the config's domain_key in the batch dict, or use "
            "`with mlora_peft.domain_context(ids):`."
        )

    def _check_merged_domain(self) -> None:
        routing = self._routing
        if routing is None:
            return
        if routing.single_domain == self.merged_domain:
            return
        present = sorted(set(routing.domain_ids.unique().tolist()))
        raise ValueError(
            f"Domain {self.merged_domain} is merged into the weights, but the batch holds domains {present}; "
            "call unmerge_adapter() first, or send only that domain's rows."
        )

    # ----------------------------------------------------------------------------- merging
    def delta_weight(self, adapter_name: str, domain: int) -> tuple[Tensor, Optional[Tensor]]:
        """Domain `domain`'s `(out, in)` weight update `scaling * B_d A_d` and `(out,)` bias update."""
        A, B = self.mdlora_A[adapter_name][domain], self.mdlora_B[adapter_name][domain]
        delta = (B.float() @ A.float()) * self.scaling[adapter_name]  # (out, in)
        bias = self.mdlora_bias[adapter_name][domain] if adapter_name in self.mdlora_bias else None
        return delta, bias

    @torch.no_grad()
    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None, domain: int = 0) -> None:
        """Fold domain `domain` of the active (or given) adapters into the base weight and bias."""
        names = [a for a in (adapter_names or self.active_adapters) if a in self.mdlora_A]
        if self.merged:
            raise ValueError(f"Domain {self.merged_domain} is already merged; call unmerge_adapter() first.")
        base = self.get_base_layer()
        for name in names:
            if not 0 <= domain < self.num_domains[name]:
                raise ValueError(f"domain={domain} is out of range for {self.num_domains[name]} domains.")
            delta, bias = self.delta_weight(name, domain)
            new_weight = base.weight.data + delta.to(base.weight.dtype)
            if safe_merge and not torch.isfinite(new_weight).all():
                raise ValueError(f"Merging domain {domain} of adapter {name!r} gives non-finite weights.")
            base.weight.data = new_weight
            if bias is not None:
                if base.bias is None:
                    base.bias = nn.Parameter(torch.zeros_like(bias), requires_grad=False)
                    self._created_bias = True
                base.bias.data = base.bias.data + bias.to(base.bias.dtype)
            self.merged_adapters.append(name)
        self.merged_domain = domain

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the merged domain again."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.")
            return
        base = self.get_base_layer()
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            delta, bias = self.delta_weight(name, self.merged_domain)
            base.weight.data = base.weight.data - delta.to(base.weight.dtype)
            if bias is not None:
                base.bias.data = base.bias.data - bias.to(base.bias.dtype)
        if self._created_bias:
            base.bias = None
            self._created_bias = False
        self.merged_domain = None

    def __repr__(self) -> str:
        return "mdlora." + super().__repr__()


def _cast(tensor: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    """`tensor` in `dtype` (None stays None); no call at all when it already is, which saves time per step."""
    return tensor if tensor is None or tensor.dtype == dtype else tensor.to(dtype)


def _repeat_segments(segments: DomainSegments, rows: int, num_domains: int) -> DomainSegments:
    """Segments for an input with several rows per sample (e.g. `(N, L, in)` flattened to `(N*L, in)`)."""
    per_sample = rows // segments.num_rows
    if per_sample * segments.num_rows != rows:
        raise ValueError(
            f"The layer input has {rows} rows but {segments.num_rows} domain ids were given; pass one id per "
            "sample of the batch (ids of shape (N,) for inputs of shape (N, ..., features))."
        )
    if segments.single_domain is not None:
        ids = segments.domain_ids[:1].expand(rows)
        return DomainSegments(ids, None, None, segments.single_domain)
    return group_by_domain(segments.domain_ids.repeat_interleave(per_sample), num_domains)


def gathered_linear(
    x: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    lora_A: Tensor,
    lora_B: Tensor,
    domain_bias: Optional[Tensor],
    domain_ids: Tensor,
    scaling: float,
    adapter_input: Tensor,
) -> Tensor:
    """`x @ W^T + b + scaling * B_d A_d a + b_d` per row, gathering each row's weights.

    Same result as `routed_linear`, with no data-dependent shapes, so `torch.export` can trace it;
    it holds an `(N, r, in)` and an `(N, out, r)` copy of the gathered weights, fine for inference.

    Args:
        x: `(N, in)` layer input; `adapter_input` is the input of the low-rank term (x after dropout).
        weight, bias: the base layer's `(out, in)` weight and `(out,)` bias (or None); weight None
            skips the base product `W x`, as in `routed_linear`.
        lora_A, lora_B, domain_bias: the `(D, r, in)`, `(D, out, r)` and `(D, out)` (or None) stacks.
        domain_ids: `(N,)` int64 domain of each row, in [0, D).
        scaling: factor of the low-rank term.

    Returns:
        `(N, out)` output.
    """
    dtype = x.dtype
    A = lora_A.to(dtype).index_select(0, domain_ids)  # (N, r, in)
    B = lora_B.to(dtype).index_select(0, domain_ids)  # (N, out, r)
    codes = torch.bmm(A, adapter_input.unsqueeze(-1)) * scaling  # (N, r, 1)
    out = torch.bmm(B, codes).squeeze(-1)  # (N, out)
    bias = None if bias is None else bias.to(dtype)
    if weight is not None:
        out = F.linear(x, weight.to(dtype), bias) + out  # (N, out)
    elif bias is not None:
        out = out + bias  # (N, out)
    if domain_bias is not None:
        out = out + domain_bias.to(dtype).index_select(0, domain_ids)  # (N, out)
    return out
