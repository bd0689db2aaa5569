"""The routed multi-domain linear map as one autograd function, without a per-domain Python loop.

For rows `x_n` of domain `d_n` it computes `W x_n + b + s * B_d A_d a_n + b_d`, where `a_n` is the
adapter input (`x_n`, or `x_n` after dropout). Rows are grouped by domain once per batch
(`group_by_domain`, shared by every layer) and each low-rank product is one grouped matmul over
the segments. Forward and backward are written by hand so that the base and adapter products
share passes over `x` and the gradient (see ../shared/notes/routing-performance.md for why memory
passes, not FLOPs, set the cost).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class DomainSegments:
    """A batch's rows grouped by domain, computed once per forward and shared by every layer.

    Attributes:
        domain_ids: `(N,)` int64 domain of each row.
        order: `(N,)` permutation that sorts rows by domain (stable).
        offsets: `(D,)` int32, `offsets[d]` is the end of domain d's segment in sorted order.
        single_domain: the domain of every row when the batch holds one domain, else None.
    """

    domain_ids: Tensor
    order: Optional[Tensor]
    offsets: Optional[Tensor]
    single_domain: Optional[int]

    @property
    def num_rows(self) -> int:
        return self.domain_ids.shape[0]


def group_by_domain(domain_ids: Tensor, num_domains: int) -> DomainSegments:
    """Group rows by domain. `domain_ids` must already be validated to lie in [0, num_domains)."""
    counts = torch.bincount(domain_ids, minlength=num_domains)  # (D,)
    largest = int(counts.max()) if domain_ids.numel() else 0
    if largest == domain_ids.numel():
        single = int(domain_ids[0]) if domain_ids.numel() else 0
        return DomainSegments(domain_ids, None, None, single)
    order = torch.argsort(domain_ids, stable=True)  # (N,)
    offsets = torch.cumsum(counts, 0).to(torch.int32)  # (D,)
    return DomainSegments(domain_ids, order, offsets, None)


def routed_linear(
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    lora_A: Tensor,
    lora_B: Tensor,
    domain_bias: Optional[Tensor],
    segments: DomainSegments,
    scaling: float,
    adapter_input: Optional[Tensor] = None,
) -> Tensor:
    """`x @ W^T + b + scaling * B_d A_d a + b_d` per row, for 2-D `x` of shape `(N, in)`.

    Args:
        x: `(N, in)` layer input.
        weight, bias: the base layer's `(out, in)` weight and `(out,)` bias (or None).
        lora_A: `(D, r, in)` stacked down-projections.
        lora_B: `(D, out, r)` stacked up-projections.
        domain_bias: `(D, out)` per-domain biases, or None.
        segments: rows grouped by domain (`group_by_domain`).
        scaling: factor of the low-rank term.
        adapter_input: the input of the low-rank term when it differs from `x` (dropout).

    Returns:
        `(N, out)` output.
    """
    return _RoutedLinear.apply(x, adapter_input, weight, bias, lora_A, lora_B, domain_bias, segments, scaling)


class _RoutedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, adapter_input, weight, bias, lora_A, lora_B, domain_bias, segments, scaling):
        a = x if adapter_input is None else adapter_input
        if segments.single_domain is not None:
            d = segments.single_domain
            codes = (a @ lora_A[d].t()) * scaling  # (N, r)
            out = F.linear(x, weight, bias)  # (N, out)
            out.addmm_(codes, lora_B[d].t())
            if domain_bias is not None:
                out.add_(domain_bias[d])
        else:
            a_sorted = a.index_select(0, segments.order)  # (N, in), rows grouped by domain
            codes = _grouped_mm(a_sorted, lora_A.transpose(1, 2), segments.offsets) * scaling  # (N, r)
            delta_sorted = _grouped_mm(codes, lora_B.transpose(1, 2), segments.offsets)  # (N, out)
            out = F.linear(x, weight, bias)  # (N, out)
            out.index_add_(0, segments.order, delta_sorted)
            if domain_bias is not None:
                out.add_(domain_bias.index_select(0, segments.domain_ids))
            a = a_sorted
        ctx.segments, ctx.scaling = segments, scaling
        ctx.has_adapter_input = adapter_input is not None
        ctx.has_bias, ctx.has_domain_bias = bias is not None, domain_bias is not None
        ctx.save_for_backward(x, a, codes, weight, lora_A, lora_B)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, a, codes, weight, lora_A, lora_B = ctx.saved_tensors
        segments, scaling = ctx.segments, ctx.scaling
        need = ctx.needs_input_grad  # x, adapter_input, weight, bias, A, B, domain_bias, ...
        need_grad_a = need[1] or (need[0] and not ctx.has_adapter_input)
        grad_x = grad_a = grad_w = grad_b = grad_A = grad_B = grad_db = None
        if segments.single_domain is not None:
            d = segments.single_domain
            grad_codes = (grad_out @ lora_B[d]) * scaling  # (N, r)
            if need[4]:
                grad_A = torch.zeros_like(lora_A)
                grad_A[d] = grad_codes.t() @ a
            if need[5]:
                grad_B = torch.zeros_like(lora_B)
                grad_B[d] = grad_out.t() @ codes
            if need_grad_a:
                grad_a = grad_codes @ lora_A[d]  # (N, in)
            if need[6]:
                grad_db = torch.zeros(lora_B.shape[:2], dtype=grad_out.dtype, device=grad_out.device)
                grad_db[d] = grad_out.sum(0)
        else:
            offsets = segments.offsets
            grad_sorted = grad_out.index_select(0, segments.order)  # (N, out)
            grad_codes = _grouped_mm(grad_sorted, lora_B, offsets) * scaling  # (N, r)
            if need[4]:
                grad_A = _grouped_mm(grad_codes.t(), a, offsets)  # (D, r, in)
            if need[5]:
                grad_B = _grouped_mm(grad_sorted.t(), codes, offsets)  # (D, out, r)
            if need_grad_a:
                grad_a_sorted = _grouped_mm(grad_codes, lora_A, offsets)  # (N, in)
                grad_a = torch.empty_like(grad_a_sorted).index_copy_(0, segments.order, grad_a_sorted)
            if need[6]:
                grad_db = torch.zeros(lora_B.shape[:2], dtype=grad_out.dtype, device=grad_out.device)
                grad_db.index_add_(0, segments.domain_ids, grad_out)  # (D, out)
        if need[0]:
            grad_x = grad_out @ weight  # (N, in)
            if not ctx.has_adapter_input:
                grad_x.add_(grad_a)
                grad_a = None
        if need[2]:
            grad_w = grad_out.t() @ x  # (out, in)
        if need[3]:
            grad_b = grad_out.sum(0)
        return grad_x, grad_a, grad_w, grad_b, grad_A, grad_B, grad_db, None, None


def _grouped_mm(a: Tensor, b: Tensor, offsets: Tensor) -> Tensor:
    """Segment-wise matmul: `a` 2-D with rows (or, when `b` is 2-D, columns) split by `offsets`.

    Uses torch's grouped GEMM where this device and dtype support it, else a loop over segments.
    """
    if _grouped_mm_supported(a.device.type, a.dtype):
        return F.grouped_mm(a, b, offs=offsets)
    ends = offsets.tolist()
    starts = [0] + ends[:-1]
    if b.dim() == 3:  # a: (N, k) rows by segment, b: (D, k, m) -> (N, m)
        out = a.new_zeros(a.shape[0], b.shape[2])
        for d, (start, end) in enumerate(zip(starts, ends)):
            if end > start:
                torch.mm(a[start:end], b[d], out=out[start:end])
        return out
    # a: (k, N) columns by segment, b: (N, m) rows by segment -> (D, k, m)
    out = a.new_zeros(len(ends), a.shape[0], b.shape[1])
    for d, (start, end) in enumerate(zip(starts, ends)):
        if end > start:
            torch.mm(a[:, start:end], b[start:end], out=out[d])
    return out


_GROUPED_MM_SUPPORT: dict[tuple[str, torch.dtype], bool] = {}


def _grouped_mm_supported(device_type: str, dtype: torch.dtype) -> bool:
    """Whether `F.grouped_mm` runs here; probed once per (device type, dtype) on the CPU only.

    On CUDA it needs bfloat16, recent GPUs and aligned shapes, so the segment loop is used there.
    """
    key = (device_type, dtype)
    if key not in _GROUPED_MM_SUPPORT:
        supported = False
        if device_type == "cpu" and hasattr(F, "grouped_mm"):
            try:
                probe = F.grouped_mm(torch.ones(3, 2, dtype=dtype), torch.ones(2, 2, 1, dtype=dtype),
                                     offs=torch.tensor([1, 3], dtype=torch.int32))
                supported = bool(torch.equal(probe, torch.full((3, 1), 2.0, dtype=dtype)))
            except (RuntimeError, TypeError, NotImplementedError):
                supported = False
        _GROUPED_MM_SUPPORT[key] = supported
    return _GROUPED_MM_SUPPORT[key]
