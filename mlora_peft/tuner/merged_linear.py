"""The merged multi-domain linear map: rows sorted by domain, one grouped product with per-domain weights.

For rows sorted by domain (domain d owns the rows `offsets[d-1]:offsets[d]`) it computes
`W_d x + b + b_d` with the merged weights `W_d = W + s * B_d A_d`, built for the call, in one
grouped matrix product (`torch.nn.functional.grouped_mm`): the FLOPs of the plain layer plus
`D * out * in` for the merged weights (in inference mode the layer keeps them between calls and
calls `grouped_linear` alone). The backward takes the per-domain weight
gradients `G_d = g_d^T x_d` from one grouped product (together they cost what the plain `W`
gradient costs), then `dW = sum_d G_d`, `dA_d = s B_d^T G_d`, `dB_d = s G_d A_d^T`: the adapter
gradients never make a pass over the rows. At CTR sizes this is the cheapest path while the merged
weights are smaller than the rows (`fits_merged_path`); it needs float32 on the CPU, widths
that are multiples of 4 and a trainable (or gradient-free) base weight.

Rows of one domain need no grouping: they are multiplied by that domain's `merged_weights` with
torch's own operations.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.nn import functional as F


def merged_path_supports(x: Tensor) -> bool:
    """Whether rows `x` may take the merged path at all: float32 on the CPU, in eager mode (low
    precision would round the small `s B_d A_d` away in the merged weights)."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and not torch.compiler.is_compiling()


def grouped_mm_supports(fan_in: int, fan_out: int) -> bool:
    """Whether this torch has the grouped product (torch >= 2.9) for a `fan_in -> fan_out` layer: its
    widths must be multiples of 4, so that every row starts on a 16-byte boundary."""
    return hasattr(F, "grouped_mm") and fan_in % 4 == 0 and fan_out % 4 == 0


def fits_merged_path(num_domains: int, fan_in: int, fan_out: int, rows: int) -> bool:
    """Whether a layer's merged weights (`D * out * in` numbers) are no more than its rows' inputs and
    outputs (`N * (in + out)`): where the merged path pays.

    Measured with `python -m benchmarks.bench_step_serving --only paths` (one thread, forward +
    backward, the zoo tower's 32 -> 256, 256 -> 128 and 128 -> 64 layers, 1,024 rows): the merged
    path wins up to a ratio of about 1 and loses beyond it (at D = 100 it costs 4-7x the plain
    layer, the grouped path 2.3-3.2x). Forward only it wins a little further, but in a whole served
    model the sort that feeds it did not pay at 256 rows and D = 10, so the bound is the same.
    """
    return num_domains * fan_in * fan_out <= rows * (fan_in + fan_out)


SEGMENT_BIAS_MAX_DOMAINS = 16
"""Up to this many domains the merged path adds each domain's bias to its slice of rows; above it, it
gathers the bias per row (one buffer of the output's size, but no operation per domain)."""


def merged_linear(
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    lora_A: Tensor,
    lora_B: Tensor,
    domain_bias: Optional[Tensor],
    offsets: Tensor,
    row_domains: Tensor,
    scaling: float,
) -> Tensor:
    """`x @ (W + s B_d A_d)^T + b + b_d` for `(N, in)` rows sorted by domain.

    Args:
        x: `(N, in)` rows, those of domain d at `offsets[d-1]:offsets[d]`.
        weight, bias: the base `(out, in)` weight and `(out,)` bias (or None).
        lora_A, lora_B, domain_bias: `(D, r, in)`, `(D, out, r)` and `(D, out)` (or None) stacks.
        offsets: `(D,)` int32 end row of each domain, the last equal to N.
        row_domains: `(N,)` int64 domain of each row.
        scaling: factor of the low-rank term.

    Returns:
        `(N, out)` output.
    """
    return _MergedLinear.apply(x, weight, bias, lora_A, lora_B, domain_bias, offsets, row_domains, scaling)


def merged_weights(weight: Tensor, bias: Optional[Tensor], lora_A: Tensor, lora_B: Tensor,
                   domain_bias: Optional[Tensor], domain: Optional[int], scaling: float) -> tuple[Tensor, Optional[Tensor]]:
    """`W + s B_d A_d` and `b + b_d` of domain `domain`, `(out, in)` and `(out,)`; for domain None, every
    domain's, stacked `(D, out, in)` and `(D, out)` (the bias `(out,)` when there is no domain bias).

    In torch's own operations: multiplying one domain's rows by its merged weight lets autograd derive
    the adapter gradients from the `(out, in)` weight gradient (measured faster than a hand-written
    function)."""
    if domain is not None:
        lora_A, lora_B = lora_A[domain], lora_B[domain]  # (r, in), (out, r)
        domain_bias = None if domain_bias is None else domain_bias[domain]  # (out,)
        merged = torch.addmm(weight, lora_B, lora_A, alpha=scaling)  # (out, in)
    else:
        merged = torch.baddbmm(weight.unsqueeze(0), lora_B, lora_A, alpha=scaling)  # (D, out, in)
    return merged, (bias if domain_bias is None else domain_bias if bias is None else bias + domain_bias)


def grouped_linear(x: Tensor, weights: Tensor, biases: Optional[Tensor], offsets: Tensor, row_domains: Tensor) -> Tensor:
    """`x @ W_d^T + c_d` for `(N, in)` rows sorted by domain, given every domain's `(D, out, in)` weights
    and the `(out,)` or `(D, out)` biases (or None): one grouped product."""
    out = F.grouped_mm(x.contiguous(), weights.transpose(1, 2), offs=offsets)  # (N, out)
    _add_bias(out, biases, offsets, row_domains)
    return out


class _MergedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, lora_A, lora_B, domain_bias, offsets, row_domains, scaling):
        x = x.contiguous()
        weights, biases = merged_weights(weight, bias, lora_A, lora_B, domain_bias, None, scaling)  # (D, out, in)
        out = grouped_linear(x, weights, biases, offsets, row_domains)  # (N, out)
        ctx.scaling = scaling
        ctx.has_bias, ctx.has_domain_bias = bias is not None, domain_bias is not None
        ctx.save_for_backward(x, weights, lora_A, lora_B, offsets, row_domains)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weights, lora_A, lora_B, offsets, row_domains = ctx.saved_tensors
        grad_out = grad_out.contiguous()  # e.g. the expanded gradient of a sum
        need = ctx.needs_input_grad  # x, weight, bias, A, B, domain_bias, ...
        grad_x = grad_w = grad_b = grad_A = grad_B = grad_db = None
        if need[0]:
            grad_x = F.grouped_mm(grad_out, weights, offs=offsets)  # (N, in)
        if need[1] or need[3] or need[4]:
            per_domain = F.grouped_mm(grad_out.t(), x, offs=offsets)  # (D, out, in): G_d = g_d^T x_d
            if need[1]:
                grad_w = per_domain.sum(0)
            if need[3]:
                grad_A = _scaled(torch.bmm(lora_B.transpose(1, 2), per_domain), ctx.scaling)  # (D, r, in)
            if need[4]:
                grad_B = _scaled(torch.bmm(per_domain, lora_A.transpose(1, 2)), ctx.scaling)  # (D, out, r)
        if need[2] or need[5]:
            sums = grad_out.new_zeros(lora_B.shape[0], grad_out.shape[1]).index_add_(0, row_domains, grad_out)
            grad_db = sums if need[5] and ctx.has_domain_bias else None
            grad_b = sums.sum(0) if need[2] and ctx.has_bias else None
        return grad_x, grad_w, grad_b, grad_A, grad_B, grad_db, None, None, None


def _add_bias(out: Tensor, bias: Optional[Tensor], offsets: Tensor, row_domains: Tensor) -> None:
    """Add to `out`, in place, the `(out,)` bias of every row or the `(K, out)` bias of each row's domain.

    Up to `SEGMENT_BIAS_MAX_DOMAINS` domains, each domain's bias is added to its slice of rows (one
    pass over `out`, no `(N, out)` buffer); above it, gathered per row first (fewer operations).
    """
    if bias is None:
        return
    if bias.dim() == 1:
        out.add_(bias)
    elif bias.shape[0] <= SEGMENT_BIAS_MAX_DOMAINS:
        start = 0
        for domain, end in enumerate(offsets.tolist()):
            if end > start:
                out[start:end].add_(bias[domain])
            start = end
    else:
        out.add_(bias.index_select(0, row_domains))


def _scaled(product: Tensor, scaling: float) -> Tensor:
    return product if scaling == 1.0 else product.mul_(scaling)
