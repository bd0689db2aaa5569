"""The masked multi-domain linear map: static shapes, no grouping, no wait for the device.

For rows `x_n` of domain `d_n` it computes `W x_n + b + s * B_d A_d a_n + b_d` as a few dense
products: every domain's rank-r codes in one product `a @ A_all^T` (`(N, D*r)`), the codes of the
other domains zeroed, one product back through all the stacked B (`(D*r, out)`), and the domain
bias gathered per row. The extra work grows with D * r, but every shape is known from the inputs'
shapes, so `torch.compile(fullgraph=True)`, `torch.export` and CUDA graphs see one static graph,
and a GPU never waits for the host. On the CPU it is the faster path only while D * r is tiny
(see `MASKED_MAX_CODES`); the grouped path (`routed_linear`) takes over above it.

Forward and backward are written by hand: at CTR sizes a step costs what its number of small
operations costs, and the hand-written backward needs ten products and masks per layer where
autograd's derivation of the same maths needs more.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .routed_linear import base_gradients

MASKED_MAX_CODES = 4
"""The largest `D * r` (domains times rank) for which a CPU layer takes the masked path.

Measured with `python -m benchmarks.bench_step_serving --only paths` (one thread, forward + backward on
1,024 mixed rows, the zoo tower's 32 -> 256, 256 -> 128 and 128 -> 64 layers at the default
ranks): the masked path wins at D * r = 2 and 4 (D = 2) and loses from D * r = 8 on (the
`(N, D*r) @ (D*r, out)` product costs as much as the base product once D * r nears the input
width). Off the CPU the masked path is always taken: it never waits for the device."""


def masked_linear(
    x: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    lora_A: Tensor,
    lora_B: Tensor,
    domain_bias: Optional[Tensor],
    domain_ids: Tensor,
    off_domain: Tensor,
    scaling: float,
    adapter_input: Optional[Tensor] = None,
) -> Tensor:
    """`x @ W^T + b + scaling * B_d A_d a + b_d` per row, for 2-D `x` of shape `(N, in)`.

    Args:
        x, weight, bias, lora_A, lora_B, domain_bias, scaling, adapter_input: as for
            `routed_linear.routed_linear`.
        domain_ids: `(N,)` int64 domain of each row, in [0, D).
        off_domain: `(N, D, 1)` bool, True where row n's domain is not d (`Routing.off_domain`).

    Returns:
        `(N, out)` output.
    """
    if not torch.is_grad_enabled():  # nothing to differentiate: no autograd function (25-50 us a call saved)
        return _masked_forward(x, adapter_input, weight, bias, lora_A, lora_B, domain_bias, domain_ids, off_domain,
                               scaling)[0]
    return _MaskedLinear.apply(x, adapter_input, weight, bias, lora_A, lora_B, domain_bias, domain_ids,
                               off_domain, scaling)


def _masked_forward(x: Tensor, adapter_input: Optional[Tensor], weight: Optional[Tensor], bias: Optional[Tensor],
                    lora_A: Tensor, lora_B: Tensor, domain_bias: Optional[Tensor], domain_ids: Tensor,
                    off_domain: Tensor, scaling: float) -> tuple[Tensor, tuple[Tensor, ...]]:
    """The `(N, out)` output, and what the backward reuses: the adapter input, the masked `(N, D*r)` codes
    and the `(D*r, in)` and `(D*r, out)` flattened stacks."""
    a = x if adapter_input is None else adapter_input
    domains, rank, fan_in = lora_A.shape
    A_all = lora_A.reshape(domains * rank, fan_in)  # (D*r, in), a view
    B_all = lora_B.transpose(1, 2).reshape(domains * rank, -1)  # (D*r, out)
    codes = (a @ A_all.t()).view(-1, domains, rank).masked_fill_(off_domain, 0)  # (N, D, r)
    codes = codes.view(-1, domains * rank)  # (N, D*r)
    row_bias = _row_bias(bias, domain_bias, domain_ids)  # (N, out), (1, out) or None
    if weight is None:
        out = codes @ B_all if scaling == 1.0 else torch.mm(codes, B_all).mul_(scaling)  # (N, out)
        out = out if row_bias is None else out.add_(row_bias)
    else:
        out = x @ weight.t() if row_bias is None else torch.addmm(row_bias, x, weight.t())  # (N, out)
        out.addmm_(codes, B_all, alpha=scaling)
    return out, (a, codes, A_all, B_all)


class _MaskedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, adapter_input, weight, bias, lora_A, lora_B, domain_bias, domain_ids, off_domain, scaling):
        out, (a, codes, A_all, B_all) = _masked_forward(x, adapter_input, weight, bias, lora_A, lora_B, domain_bias,
                                                        domain_ids, off_domain, scaling)
        ctx.scaling, ctx.has_adapter_input = scaling, adapter_input is not None
        ctx.save_for_backward(x, a if adapter_input is not None else None, codes, weight, A_all, B_all,
                              domain_ids, off_domain)
        ctx.domain_bias_shape = None if domain_bias is None else domain_bias.shape
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, adapter_input, codes, weight, A_all, B_all, domain_ids, off_domain = ctx.saved_tensors
        a = x if adapter_input is None else adapter_input
        need = ctx.needs_input_grad  # x, adapter_input, weight, bias, A, B, domain_bias, ...
        domains_rank, fan_in = A_all.shape
        domains = off_domain.shape[1]
        need_grad_a = need[1] or (need[0] and not ctx.has_adapter_input)
        grad_a = grad_b = grad_A = grad_B = grad_db = None
        if need[4] or need_grad_a:
            grad_codes = (grad_out @ B_all.t()).view(-1, domains, domains_rank // domains)  # (N, D, r)
            grad_codes = grad_codes.masked_fill_(off_domain, 0).view(-1, domains_rank)  # (N, D*r)
            if ctx.scaling != 1.0:
                grad_codes.mul_(ctx.scaling)
        if need[4]:
            grad_A = (grad_codes.t() @ a).view(domains, -1, fan_in)  # (D, r, in)
        if need[5]:
            grad_B = torch.mm(grad_out.t(), codes)  # (out, D*r)
            grad_B = (grad_B if ctx.scaling == 1.0 else grad_B.mul_(ctx.scaling)).view(-1, domains, domains_rank // domains)
            grad_B = grad_B.permute(1, 0, 2)  # (D, out, r)
        if need_grad_a:
            grad_a = grad_codes @ A_all  # (N, in)
        if need[6]:
            grad_db = grad_out.new_zeros(ctx.domain_bias_shape).index_add_(0, domain_ids, grad_out)  # (D, out)
            if need[3]:  # the base bias gradient is the sum of the domains' (one pass over grad_out saved)
                grad_b = grad_db.sum(0)
        grad_x, grad_a, grad_w, grad_b = base_gradients(need, grad_out, x, weight, grad_a, grad_b,
                                                        ctx.has_adapter_input)
        return grad_x, grad_a, grad_w, grad_b, grad_A, grad_B, grad_db, None, None, None


def _row_bias(bias: Optional[Tensor], domain_bias: Optional[Tensor], domain_ids: Tensor) -> Optional[Tensor]:
    """The bias each row gets: `(N, out)` base plus its domain's bias, `(1, out)` base only, or None."""
    if domain_bias is None:
        return None if bias is None else bias.unsqueeze(0)
    per_domain = domain_bias if bias is None else domain_bias + bias  # (D, out)
    return per_domain.index_select(0, domain_ids)  # (N, out)
