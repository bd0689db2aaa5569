"""The routed multi-domain linear map as one autograd function, without a per-domain Python loop.

For rows `x_n` of domain `d_n` it computes `W x_n + b + s * B_d A_d a_n + b_d`, where `a_n` is the
adapter input (`x_n`, or `x_n` after dropout). Once per batch (`group_by_domain`, shared by every
layer) the rows are laid out in equal-sized blocks, each holding rows of one domain and then
padding, so every low-rank product is one batched matmul (`bmm`, which every device and dtype
supports). A one-domain batch is one block holding every row, with no gathers. Forward and
backward are written by hand; the costs that matter on CPU (see
../shared/notes/routing-performance.md) shaped them:

- one `bmm` per product, not a matmul per domain: at D = 100 the per-call overhead of a segment
  loop (or of `F.grouped_mm`, which loops on CPU) outweighs the padding;
- the rank-r codes are kept as `(r, rows)`, the layout in which the skinny products run fastest;
- the adapter term is computed first and the big base product accumulates into it (`addmm_`),
  which avoids an extra pass over a fresh `(N, out)` or `(N, in)` buffer;
- on a GPU, the step is bound by launches and waits: the grouping waits for the device once,
  and with few, long blocks the weight gradients are split into shorter products (`_long_bmm`).

With `weight=None` there is no base product: the function computes the routed low-rank term
alone (plus `bias`, if given), for callers that treat `W x + b` themselves (dropout on the base
output, `OutputDropoutLinear`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor


SPLIT_ROWS = 256  # the shortest chunk of a block that a weight-gradient product is split into (`_long_bmm`)


@dataclass(frozen=True)
class DomainSegments:
    """A batch's rows grouped by domain, computed once per forward and shared by every layer.

    Build it with `group_by_domain`; a one-domain batch only needs `domain_ids` and `single_domain`.

    Attributes:
        domain_ids: `(N,)` int64 domain of each row.
        order: `(N,)` permutation that sorts rows by domain (stable).
        offsets: `(D,)` int32, `offsets[d]` is the end of domain d's segment in sorted order.
        single_domain: the domain of every row when the batch holds one domain, else None.
        block_size: rows per block `M`; each block holds rows of one domain, then padding.
        block_domain: `(num_blocks,)` the domain of each block, or None when block d is domain d's.
        row_of_slot: `(num_blocks * M,)` the row held in each slot (row 0 in padding slots).
        slot_of_row: `(N,)` the slot holding each row.
        padding: `(num_blocks * M,)` True for the padding slots.
    """

    domain_ids: Tensor
    order: Optional[Tensor]
    offsets: Optional[Tensor]
    single_domain: Optional[int]
    block_size: int = 0
    block_domain: Optional[Tensor] = None
    row_of_slot: Optional[Tensor] = None
    slot_of_row: Optional[Tensor] = None
    padding: Optional[Tensor] = None

    @property
    def num_rows(self) -> int:
        return self.domain_ids.shape[0]


def group_by_domain(domain_ids: Tensor, num_domains: int) -> DomainSegments:
    """Group rows by domain. `domain_ids` must already be validated to lie in [0, num_domains).

    Rows are laid out in blocks of `M` slots. When one block per domain (of the largest domain's
    size) holds at most twice the batch, block d is domain d's; otherwise `M` is capped at twice
    the mean count of the domains present and a big domain spans several blocks, so the slots
    never exceed twice the batch (2.5 times when blocks of over 1,024 rows are rounded up to a
    multiple of `SPLIT_ROWS`).
    """
    rows = domain_ids.numel()
    counts = torch.bincount(domain_ids, minlength=num_domains)  # (D,)
    per_domain = counts.tolist()  # the one wait for the device: every size below is decided from it
    largest = max(per_domain, default=0)
    if largest == rows:
        single = per_domain.index(rows) if rows else 0
        return DomainSegments(domain_ids, None, None, single)
    order = torch.argsort(domain_ids, stable=True)  # (N,)
    ends = torch.cumsum(counts, 0)  # (D,)
    if num_domains * largest <= 2 * rows:
        size, blocks, block_domain = largest, torch.ones_like(counts), None
        if size >= 4 * SPLIT_ROWS:  # a multiple of SPLIT_ROWS, so the weight gradients can split it
            size = -(-size // SPLIT_ROWS) * SPLIT_ROWS
        num_blocks = num_domains
    else:
        size = min(largest, -(-2 * rows // sum(1 for count in per_domain if count)))
        blocks = (counts + size - 1) // size  # (D,) blocks per domain
        num_blocks = sum(-(-count // size) for count in per_domain)
        block_domain = torch.repeat_interleave(torch.arange(num_domains, device=counts.device), blocks,
                                               output_size=num_blocks)  # (nb,)
    first_slot = (torch.cumsum(blocks, 0) - blocks) * size  # (D,)
    sorted_ids = domain_ids.index_select(0, order)  # (N,)
    rank = torch.arange(rows, device=counts.device) - (ends - counts).index_select(0, sorted_ids)  # (N,)
    slot_of_sorted = first_slot.index_select(0, sorted_ids) + rank  # (N,)
    slots = num_blocks * size
    return DomainSegments(
        domain_ids,
        order,
        ends.to(torch.int32),
        None,
        block_size=size,
        block_domain=block_domain,
        row_of_slot=order.new_zeros(slots).scatter_(0, slot_of_sorted, order),  # (slots,)
        slot_of_row=torch.empty_like(order).scatter_(0, order, slot_of_sorted),  # (N,)
        padding=torch.ones(slots, dtype=torch.bool, device=order.device).scatter_(0, slot_of_sorted, False),
    )


def routed_linear(
    x: Tensor,
    weight: Optional[Tensor],
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
        weight, bias: the base layer's `(out, in)` weight and `(out,)` bias (or None); weight None
            skips the base product `W x`, leaving `b + scaling * B_d A_d a + b_d`.
        lora_A: `(D, r, in)` stacked down-projections.
        lora_B: `(D, out, r)` stacked up-projections.
        domain_bias: `(D, out)` per-domain biases, or None.
        segments: rows grouped by domain (`group_by_domain`).
        scaling: factor of the low-rank term.
        adapter_input: the input of the low-rank term when it differs from `x` (dropout).

    Returns:
        `(N, out)` output.
    """
    if not torch.is_grad_enabled():  # nothing to differentiate: no autograd function (25-50 us a call saved)
        return _routed_forward(x, adapter_input, weight, bias, lora_A, lora_B, domain_bias, segments, scaling)[0]
    return _RoutedLinear.apply(x, adapter_input, weight, bias, lora_A, lora_B, domain_bias, segments, scaling)


def _routed_forward(x: Tensor, adapter_input: Optional[Tensor], weight: Optional[Tensor], bias: Optional[Tensor],
                    lora_A: Tensor, lora_B: Tensor, domain_bias: Optional[Tensor], segments: DomainSegments,
                    scaling: float) -> tuple[Tensor, tuple[Tensor, ...]]:
    """The `(N, out)` output, and the block tensors the backward reuses: `(a_blk, codes_t, A_blk, B_blk)`."""
    a_blk = _to_slots(x if adapter_input is None else adapter_input, segments)  # (nb, M, in)
    A_blk = _per_block(lora_A, segments)  # (nb, r, in)
    B_blk = _per_block(lora_B, segments)  # (nb, out, r)
    codes_t = _mask_padding(_scale(_bmm(A_blk, a_blk.transpose(1, 2)), scaling), segments)  # (nb, r, M)
    slot_bias = _slot_bias(bias, domain_bias, segments)  # (nb, 1, out) or None
    delta = _bmm(codes_t.transpose(1, 2), B_blk.transpose(1, 2), slot_bias)  # (nb, M, out)
    out = _from_slots(delta, segments)  # (N, out)
    if weight is not None:
        out = out.addmm_(x, weight.t())  # (N, out)
    return out, (a_blk, codes_t, A_blk, B_blk)


class _RoutedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, adapter_input, weight, bias, lora_A, lora_B, domain_bias, segments, scaling):
        out, (a_blk, codes_t, A_blk, B_blk) = _routed_forward(x, adapter_input, weight, bias, lora_A, lora_B,
                                                              domain_bias, segments, scaling)
        ctx.segments, ctx.scaling, ctx.num_domains = segments, scaling, lora_A.shape[0]
        ctx.has_adapter_input = adapter_input is not None
        ctx.save_for_backward(x, a_blk, codes_t, weight, A_blk, B_blk)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, a_blk, codes_t, weight, A_blk, B_blk = ctx.saved_tensors
        segments, num_domains = ctx.segments, ctx.num_domains
        need = ctx.needs_input_grad  # x, adapter_input, weight, bias, A, B, domain_bias, ...
        need_grad_a = need[1] or (need[0] and not ctx.has_adapter_input)
        grad_a = grad_b = grad_A = grad_B = grad_db = None
        g_blk = _to_slots(grad_out, segments)  # (nb, M, out)
        if need[4] or need_grad_a:
            grad_codes_t = _scale(_bmm(B_blk.transpose(1, 2), g_blk.transpose(1, 2)), ctx.scaling)  # (nb, r, M)
            grad_codes_t = _mask_padding(grad_codes_t, segments)
        if need[4]:
            grad_A = _sum_blocks(_long_bmm(grad_codes_t, a_blk), segments, num_domains)  # (D, r, in)
        if need[5]:
            grad_B = _sum_blocks(_long_bmm(codes_t, g_blk).transpose(1, 2), segments, num_domains)
        if need_grad_a:
            grad_a = _from_slots(_bmm(grad_codes_t.transpose(1, 2), A_blk), segments)  # (N, in)
        if need[6]:
            block_sums = _bmm(_real_slots(segments, g_blk), g_blk)  # (nb, 1, out)
            grad_db = _sum_blocks(block_sums, segments, num_domains).squeeze(1)  # (D, out)
            if need[3]:  # the base bias gradient is the sum of the domains' (one pass over grad_out saved)
                grad_b = grad_db.sum(0)  # (out,)
        grad_x, grad_a, grad_w, grad_b = base_gradients(need, grad_out, x, weight, grad_a, grad_b,
                                                        ctx.has_adapter_input)
        return grad_x, grad_a, grad_w, grad_b, grad_A, grad_B, grad_db, None, None


def base_gradients(need: tuple, grad_out: Tensor, x: Tensor, weight: Optional[Tensor], grad_a: Optional[Tensor],
                   grad_b: Optional[Tensor], has_adapter_input: bool) -> tuple:
    """The gradients of `x`, the adapter input, `W` and `b`, given the adapter input's gradient `grad_a`.

    `need` is `ctx.needs_input_grad` in the order (x, adapter_input, weight, bias, ...). Without a
    separate adapter input, x's gradient is the adapter term's plus `grad_out @ W`, accumulated
    into `grad_a` (one fewer pass over an `(N, in)` buffer).
    """
    grad_x = grad_w = None
    if need[0] and weight is None:  # no base product: x reaches the output only as the adapter input
        grad_x, grad_a = (None, grad_a) if has_adapter_input else (grad_a, None)
    elif need[0] and has_adapter_input:
        grad_x = grad_out @ weight  # (N, in)
    elif need[0]:
        grad_x, grad_a = grad_a.addmm_(grad_out, weight), None  # the big product accumulates into grad_a
    if need[2]:
        grad_w = grad_out.t() @ x  # (out, in)
    if need[3] and grad_b is None:
        grad_b = grad_out.sum(0)
    return grad_x, grad_a, grad_w, grad_b


def _bmm(a: Tensor, b: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """Batched `a @ b (+ bias)` over blocks; one block uses a plain matmul, which is faster on CPU."""
    if a.shape[0] == 1:
        return (torch.mm(a[0], b[0]) if bias is None else torch.addmm(bias[0], a[0], b[0])).unsqueeze(0)
    return torch.bmm(a, b) if bias is None else torch.baddbmm(bias, a, b)


def _scale(product: Tensor, scaling: float) -> Tensor:
    """`product * scaling` in place; no call when the factor is 1 (the paper's MLoRA has no scaling)."""
    return product if scaling == 1.0 else product.mul_(scaling)


def _long_bmm(a: Tensor, b: Tensor) -> Tensor:
    """`a @ b` for `(nb, k, M)` and `(nb, M, n)` blocks with long M and small k, n (the weight gradients).

    With few blocks (D = 2 at large batches) one product per block leaves a GPU mostly idle (about
    3x slower on an H200 at 65,536 rows), so M is cut into chunks of at least `SPLIT_ROWS` rows that
    run as more, shorter products, then summed. CPU training steps measured within noise of one
    product per block.
    """
    blocks, k, slots = a.shape
    chunks = 1
    while blocks * chunks < 256 and slots % (2 * chunks) == 0 and slots // (2 * chunks) >= SPLIT_ROWS:
        chunks *= 2
    if chunks == 1:
        return _bmm(a, b)
    rows = slots // chunks
    a = a.view(blocks, k, chunks, rows).transpose(1, 2).reshape(blocks * chunks, k, rows)
    return torch.bmm(a, b.reshape(blocks * chunks, rows, b.shape[2])).view(blocks, chunks, k, -1).sum(1)


def _per_block(stacked: Tensor, segments: DomainSegments) -> Tensor:
    """`(D, ...)` per-domain weights as `(nb, ...)` per-block weights (the same tensor when block d is domain d's)."""
    if segments.single_domain is not None:
        return stacked.narrow(0, segments.single_domain, 1)
    return stacked if segments.block_domain is None else stacked.index_select(0, segments.block_domain)


def _sum_blocks(per_block: Tensor, segments: DomainSegments, num_domains: int) -> Tensor:
    """`(nb, ...)` per-block gradients summed into the `(D, ...)` gradient of the stacked weight."""
    if segments.single_domain is None and segments.block_domain is None:
        return per_block
    total = per_block.new_zeros(num_domains, *per_block.shape[1:])
    if segments.single_domain is not None:
        return total.index_copy_(0, segments.domain_ids[:1], per_block)
    return total.index_add_(0, segments.block_domain, per_block)


def _to_slots(rows: Tensor, segments: DomainSegments) -> Tensor:
    """`(N, k)` rows laid out in blocks: `(nb, M, k)`, padding slots holding row 0."""
    if segments.single_domain is not None:
        return rows.reshape(1, *rows.shape)
    return rows.index_select(0, segments.row_of_slot).view(-1, segments.block_size, rows.shape[1])


def _from_slots(blocks: Tensor, segments: DomainSegments) -> Tensor:
    """`(nb, M, k)` blocks back to `(N, k)` rows in the batch's order."""
    if segments.single_domain is not None:
        return blocks[0]
    return blocks.view(-1, blocks.shape[2]).index_select(0, segments.slot_of_row)


def _mask_padding(by_slot: Tensor, segments: DomainSegments) -> Tensor:
    """Zero the padding slots of `(nb, k, M)`, in place (where, not multiply, so NaN rows cannot leak)."""
    if segments.padding is None:
        return by_slot
    return by_slot.masked_fill_(segments.padding.view(by_slot.shape[0], 1, -1), 0)


def _real_slots(segments: DomainSegments, like: Tensor) -> Tensor:
    """`(nb, 1, M)` ones at the slots holding rows, zeros at the padding, in `like`'s dtype."""
    if segments.padding is None:
        return like.new_ones(1, 1, like.shape[1])
    return (~segments.padding).to(like.dtype).view(like.shape[0], 1, -1)


def _slot_bias(bias: Optional[Tensor], domain_bias: Optional[Tensor], segments: DomainSegments) -> Optional[Tensor]:
    """`(nb, 1, out)` the base plus domain bias of each block, or None when there is neither."""
    if domain_bias is None:
        return None if bias is None else bias.view(1, 1, -1)
    per_block = _per_block(domain_bias, segments)  # (nb, out)
    return (per_block if bias is None else per_block + bias).unsqueeze(1)
