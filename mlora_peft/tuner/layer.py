"""`MultiDomainLoraLayer`: a linear layer with one low-rank adapter and bias per domain.

Each adapter's domains are stacked in one tensor per role: `mdlora_A[name]` is `(D, r, in)`,
`mdlora_B[name]` is `(D, out, r)` and `mdlora_bias[name]` is `(D, out)`. The layer never looks
at the batch and keeps nothing of a call: it reads the routing of the call it runs in
(`mlora_peft.tuner.routing.current_routing`), so threads, asyncio tasks and checkpoint recomputes can
share one layer.
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
from .masked_linear import MASKED_MAX_CODES, masked_linear
from .merged_linear import (fits_merged_path, grouped_linear, grouped_mm_supports, merged_linear,
                            merged_path_supports, merged_weights)
from .routed_linear import routed_linear
from .routing import Routing, context_routing, current_routing
from .weight_cache import MergedWeightCache


class MultiDomainLoraLayer(nn.Module, BaseTunerLayer):
    """Wraps an `nn.Linear`; computes `W x + b + scaling * B_d A_d dropout(x) + b_d` for domain d.

    A base layer with an `output_dropout` module (`mlora_peft.models.OutputDropoutLinear`, which
    returns `output_dropout(W x + b)`) keeps that dropout on its own term in training:
    `output_dropout(W x + b) + scaling * B_d A_d dropout(x) + b_d`; the adapter term is not dropped.

    Example:
        >>> import torch, mlora_peft
        >>> from mlora_peft import MultiDomainLoraConfig
        >>> from mlora_peft.tuner.layer import MultiDomainLoraLayer
        >>> layer = MultiDomainLoraLayer(torch.nn.Linear(4, 2), "default", MultiDomainLoraConfig(num_domains=3, r=2))
        >>> with mlora_peft.domain_context(torch.tensor([0, 2, 1])):
        ...     layer(torch.randn(3, 4)).shape
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
        self._created_bias = False
        self._active_adapter = adapter_name
        self._merged_weight_cache = MergedWeightCache()  # inference mode only; see `_merged_weights`
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

    # ----------------------------------------------------------------------------- forward
    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        name = self._adapter_to_route()
        if name is None:
            return self.base_layer(x, *args, **kwargs)
        flat = x if x.dim() == 2 else x.reshape(-1, self.in_features)  # (N * L, in) for inputs (N, ..., in)
        routing = self._routing_for(flat, name)
        if routing.single_domain is not None and not self.training and not torch.is_grad_enabled():
            device = x.device  # serving one domain: its merged weights, no ids needed
            dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else x.dtype
            weight, bias = self._merged_weights(name, routing.single_domain, dtype)
            out = F.linear(_cast(flat, dtype), weight, bias)  # (N * L, out): the plain layer's cost
        else:
            if flat.shape[0] != routing.num_rows:
                routing = routing.repeated(flat.shape[0])
            out = self._adapter_forward(flat, name, routing.on(x.device))  # (N * L, out)
        return out if x.dim() == 2 else out.reshape(*x.shape[:-1], self.out_features)

    def _adapter_to_route(self) -> Optional[str]:
        """The adapter this forward routes through, or None when the base layer alone answers."""
        if self._disable_adapters:
            if self.merged_adapters:
                self.unmerge()
            return None
        if self.merged_adapters:
            self._check_merged_domain(current_routing())
            return None
        stacks = self._modules["mdlora_A"]._parameters  # read directly: every call of every layer pays this
        active = self._active_adapter
        if isinstance(active, str):
            return active if active in stacks else None
        active = [a for a in active if a in stacks]
        if len(active) > 1:
            raise ValueError(
                f"MLoRA routes through one adapter at a time, but {active} are active; "
                "call model.set_adapter(name) to pick one."
            )
        return active[0] if active else None

    def _routing_for(self, x: Tensor, adapter_name: str) -> Routing:
        """The routing of the call this forward runs in; a bare layer reads an enclosing `domain_context`."""
        domains = self.num_domains[adapter_name]
        routing = current_routing() or context_routing(domains, None, x.device, x.shape[0])
        if routing is not None:
            if routing.num_domains != domains:
                raise ValueError(
                    f"The call was routed over {routing.num_domains} domains, but adapter {adapter_name!r} has "
                    f"{domains}; route with the active adapter's domains (model.set_adapter(name))."
                )
            return routing
        if domains == 1:
            return Routing(torch.zeros(x.shape[0], dtype=torch.long, device=x.device), 1, 0)
        in_backward = torch._C._current_graph_task_id() != -1  # a checkpointed block recomputed in backward
        raise ValueError(
            f"This model has {domains} domains but no domain ids were given"
            + (" to the activation-checkpointing recompute: call torch.utils.checkpoint.checkpoint(..., "
               "use_reentrant=False, context_fn=mlora_peft.checkpoint_context_fn) so it routes like the "
               "forward (reentrant checkpointing cannot carry the ids)." if in_backward else
               ": call model(..., domain_ids=ids), put ids under the config's domain_key in the batch dict, "
               "or use `with mlora_peft.domain_context(ids):`.")
        )

    def _adapter_forward(self, x: Tensor, name: str, routing: Routing) -> Tensor:
        device_type = x.device.type
        autocast = torch.is_autocast_enabled(device_type)
        dtype = torch.get_autocast_dtype(device_type) if autocast else x.dtype
        x = _aligned(_cast(x, dtype))
        dropout = self.mdlora_dropout[name]
        adapter_input = dropout(x) if self.training and isinstance(dropout, nn.Dropout) else None
        output_dropout = self._active_output_dropout()
        with torch.autocast(device_type, enabled=False) if autocast else contextlib.nullcontext():
            base = self.base_layer
            tensors = [base.weight, base.bias, *self._adapter_stacks(name)]
            weight, bias, A, B, domain_bias = [_cast(t, dtype) for t in tensors]
            if output_dropout is not None:
                low_rank = self._routed(x, None, None, A, B, domain_bias, routing, name, adapter_input)
                return output_dropout(F.linear(x, weight, bias)) + low_rank  # (N, out)
            return self._routed(x, weight, bias, A, B, domain_bias, routing, name, adapter_input)

    def _routed(self, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], A: Tensor, B: Tensor,
                domain_bias: Optional[Tensor], routing: Routing, name: str, adapter_input: Optional[Tensor]) -> Tensor:
        """The routed map by the path that suits the call: merged (see `uses_merged_path`), grouped or
        masked (see `uses_masked_path`)."""
        scaling = self.scaling[name]
        if adapter_input is None and uses_merged_path(x, weight, routing):
            d = routing.single_domain
            if d is not None:
                return F.linear(x, *merged_weights(weight, bias, A, B, domain_bias, d, scaling))
            if torch.is_inference_mode_enabled():  # every domain's merged weights, kept between calls
                return grouped_linear(x, *self._merged_weights(name, None, x.dtype), routing.sorted_offsets(),
                                      routing.domain_ids)
            return merged_linear(x, weight, bias, A, B, domain_bias, routing.sorted_offsets(), routing.domain_ids,
                                 scaling)
        if routing.single_domain is None and uses_masked_path(x.device, A.shape[0] * A.shape[1]):
            return masked_linear(x, weight, bias, A, B, domain_bias, routing.domain_ids,
                                 routing.off_domain(A.shape[0]), scaling, adapter_input)
        return routed_linear(x, weight, bias, A, B, domain_bias, routing.segments(), scaling, adapter_input)

    def _merged_weights(self, name: str, domain: Optional[int], dtype: torch.dtype) -> tuple[Tensor, Optional[Tensor]]:
        """Domain `domain`'s merged `W + s B_d A_d` `(out, in)` and `b + b_d` `(out,)`; for domain None,
        every domain's, stacked `(D, out, in)` and `(D, out)`.

        Built for the call; in inference mode kept in the layer's `MergedWeightCache` until a weight
        it came from changes (an update by any optimiser, fused or not, an in-place write, a reload).
        """
        base = self._modules["base_layer"]._parameters
        sources = (base["weight"], base.get("bias"), *self._adapter_stacks(name))

        def build() -> tuple[Tensor, Optional[Tensor]]:
            return merged_weights(*(_cast(t, dtype) for t in sources), domain, self.scaling[name])

        if not torch.is_inference_mode_enabled() or torch.compiler.is_compiling():
            return build()
        return self._merged_weight_cache.get((name, domain, dtype), sources, build)

    def _adapter_stacks(self, name: str) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        """The `(D, r, in)`, `(D, out, r)` and `(D, out)` (or None) stacks of adapter `name`.

        Read straight from the modules' parameter storage (no `nn.Module.__getattr__`): a served call
        pays every lookup, in every layer."""
        modules = self._modules
        return (modules["mdlora_A"]._parameters[name], modules["mdlora_B"]._parameters[name],
                modules["mdlora_bias"]._parameters.get(name))

    def _active_output_dropout(self) -> Optional[nn.Dropout]:
        """The base layer's `output_dropout` when it acts (training, p > 0): it then drops `W x + b` only."""
        dropout = getattr(self.base_layer, "output_dropout", None)
        if self.training and isinstance(dropout, nn.Dropout) and dropout.p > 0:
            return dropout
        return None

    def _check_merged_domain(self, routing: Optional[Routing]) -> None:
        if routing is None or routing.single_domain == self.merged_domain:
            return
        present = sorted(set(routing.domain_ids.unique().tolist()))
        if present == [self.merged_domain]:
            return
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
        """Fold domain `domain` of the active (or given) adapters into the base weight and bias.

        Adapters already merged are skipped with a warning, as PEFT does; another domain than the one
        merged is refused (a layer holds one domain's weights at a time).

        Raises:
            ValueError: another domain is merged, `domain` is out of range, or `safe_merge` finds a
                non-finite weight or bias.
        """
        names = [a for a in (adapter_names or self.active_adapters) if a in self.mdlora_A]
        if self.merged and domain != self.merged_domain:
            raise ValueError(
                f"Domain {self.merged_domain} is already merged; call unmerge_adapter() before merging domain {domain}."
            )
        if already := [n for n in names if n in self.merged_adapters]:
            warnings.warn(f"Adapters {already} are already merged (domain {domain}); nothing to do for them.")
        base = self.get_base_layer()
        for name in (n for n in names if n not in self.merged_adapters):
            if not 0 <= domain < self.num_domains[name]:
                raise ValueError(f"domain={domain} is out of range for {self.num_domains[name]} domains.")
            delta, bias = self.delta_weight(name, domain)
            new_weight = base.weight.data + delta.to(base.weight.dtype)
            new_bias = None if bias is None else (0 if base.bias is None else base.bias.data) + bias.to(base.weight.dtype)
            if safe_merge and not all(torch.isfinite(t).all() for t in (new_weight, new_bias) if t is not None):
                raise ValueError(f"Merging domain {domain} of adapter {name!r} gives non-finite weights or biases; "
                                 "the adapter is left unmerged.")
            base.weight.data = new_weight
            if new_bias is not None:
                if base.bias is None:  # created in the weight's dtype, and removed again by unmerge()
                    base.bias = nn.Parameter(torch.zeros_like(new_bias), requires_grad=False)
                    self._created_bias = True
                base.bias.data = new_bias.to(base.bias.dtype)
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


def _aligned(x: Tensor) -> Tensor:
    """`x`, copied when its memory does not start on a 64-byte boundary (e.g. read from a safetensors file).

    CPU matrix kernels may sum in another order for unaligned inputs, so outputs would depend on
    where the input's memory starts; inputs torch allocates are aligned and pass through free.
    """
    if x.device.type != "cpu" or torch.compiler.is_compiling() or x.data_ptr() % 64 == 0:
        return x
    return x.clone()


def _cast(tensor: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    """`tensor` in `dtype` (None stays None); no call at all when it already is, which saves time per step."""
    return tensor if tensor is None or tensor.dtype == dtype else tensor.to(dtype)


def uses_merged_path(x: Tensor, weight: Optional[Tensor], routing: Routing) -> bool:
    """Whether the call takes the merged path (`merged_linear`): float32 CPU rows, a base weight that
    trains (or no gradients at all, so the per-domain weight gradients are no extra work), and rows
    of one domain, or sorted by domain with merged weights no larger than the rows
    (`fits_merged_path`)."""
    if weight is None or not merged_path_supports(x) or (torch.is_grad_enabled() and not weight.requires_grad):
        return False
    if routing.single_domain is not None:
        return True
    fan_out, fan_in = weight.shape
    return (grouped_mm_supports(fan_in, fan_out) and fits_merged_path(routing.num_domains, fan_in, fan_out, x.shape[0])
            and routing.sorted_offsets() is not None)


def uses_masked_path(device: torch.device, codes: int) -> bool:
    """Whether a mixed batch takes the masked path: always while compiling or exporting (static shapes)
    and off the CPU (no wait for the device); on the CPU while D * r is at most `MASKED_MAX_CODES`."""
    if torch.compiler.is_compiling() or torch.compiler.is_exporting() or device.type != "cpu":
        return True
    return codes <= MASKED_MAX_CODES

