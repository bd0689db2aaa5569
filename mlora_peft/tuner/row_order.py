"""Sorting the rows of one model call by domain, and putting its outputs back in the caller's order.

A model whose every output row depends on its own input row alone (batch statistics aside) may
see its batch in any order. For such a model (`mlora_rows_independent = True`, as the zoo's
backbones declare) the routing hook sorts a mixed batch by domain on entry, so that each domain's
rows are one contiguous segment in every adapted layer (no gathers per layer: see
`merged_linear`), and the output hook restores the caller's order: callers see no difference but
the rounding of a different summation order.

Every tensor of the call with the batch's row count as its first dimension is reordered, inside
dicts, lists and tuples; other values pass unchanged. A model that mixes rows (an `(N, N)` input,
in-batch negatives) must not declare itself row-independent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

import torch
from torch import Tensor

ROWS_INDEPENDENT_ATTR = "mlora_rows_independent"


def rows_are_independent(model: torch.nn.Module) -> bool:
    """Whether `model` declares that its outputs may be computed on its batch rows in any order."""
    return bool(getattr(model, ROWS_INDEPENDENT_ATTR, False))


def sorted_by_domain(domain_ids: Tensor) -> bool:
    """Whether the rows' domain ids never decrease (one read of the result: meant for CPU ids)."""
    return bool((domain_ids[1:] >= domain_ids[:-1]).all())


def sort_by_domain(domain_ids: Tensor) -> Optional[tuple[Tensor, Tensor]]:
    """The ids sorted by domain and the stable order that sorts the rows so (both `(N,)`), or None when
    they already are sorted."""
    if sorted_by_domain(domain_ids):
        return None
    return tuple(torch.sort(domain_ids, stable=True))


def reorder(value: Any, index: Tensor, rows: int) -> Any:
    """`value` with every tensor of `rows` rows (first dimension) taken at `index`, in nested containers."""
    if isinstance(value, Tensor):
        return value.index_select(0, index) if value.dim() > 0 and value.shape[0] == rows else value
    if isinstance(value, Mapping):
        items = {key: reorder(item, index, rows) for key, item in value.items()}
        return items if type(value) is dict else type(value)(**items)
    if type(value) in (list, tuple):
        return type(value)(reorder(item, index, rows) for item in value)
    return value


def inverse(order: Tensor) -> Tensor:
    """The permutation that undoes `order`: `x.index_select(0, order).index_select(0, inverse(order)) == x`."""
    return torch.empty_like(order).scatter_(0, order, torch.arange(order.shape[0], device=order.device))
