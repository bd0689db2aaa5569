"""Carrying per-sample domain ids from a model call to its adapted layers.

Ids come, in order of precedence, from the `domain_ids=` keyword (consumed), from
`batch[domain_key]` when the first argument is a dict (left in place), or from an enclosing
`domain_context(ids)`. They are validated and grouped by domain once per forward; a forward
pre-hook on the adapted model hands the grouping to every `MultiDomainLoraLayer`.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from .routed_linear import DomainSegments, group_by_domain

DomainIds = Union[Tensor, int, str, Sequence[int], Sequence[str]]
"""What a caller may pass as domain ids: an int tensor `(N,)` / `(N, 1)`, an int or 0-d tensor
(one domain for the whole batch), a domain name, or a sequence of ints or names."""

DOMAIN_IDS_KWARG = "domain_ids"
_context_ids: contextvars.ContextVar[Optional[DomainIds]] = contextvars.ContextVar("mlora_domain_ids", default=None)


@contextmanager
def domain_context(domain_ids: DomainIds) -> Iterator[None]:
    """Route every adapted-model call inside the block with `domain_ids`.

    Example:
        >>> import torch, mlora_peft
        >>> from peft import get_peft_model
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
        >>> model = get_peft_model(net, mlora_peft.MultiDomainLoraConfig(num_domains=3, r=2))
        >>> with mlora_peft.domain_context(torch.tensor([0, 2])):
        ...     model(torch.randn(2, 4)).shape
        torch.Size([2, 1])
    """
    token = _context_ids.set(domain_ids)
    try:
        yield
    finally:
        _context_ids.reset(token)


def to_domain_tensor(
    domain_ids: DomainIds,
    num_domains: int,
    domain_names: Optional[Sequence[str]] = None,
    device: Optional[torch.device] = None,
) -> Tensor:
    """Validate `domain_ids` and return them as int64: shape `(N,)`, or `()` for a one-domain batch.

    Raises:
        TypeError: float or bool ids, or an unsupported type.
        ValueError: unknown names, ids out of [0, num_domains), or a tensor of more than one column.
    """
    if isinstance(domain_ids, str) or (
        isinstance(domain_ids, Sequence) and domain_ids and all(isinstance(n, str) for n in domain_ids)
    ):
        names = [domain_ids] if isinstance(domain_ids, str) else list(domain_ids)
        indices = [_name_to_index(n, domain_names) for n in names]
        ids = torch.tensor(indices[0] if isinstance(domain_ids, str) else indices, dtype=torch.long)
    elif isinstance(domain_ids, bool):
        raise TypeError(f"Domain id {domain_ids!r} is a bool; pass an int domain index.")
    elif isinstance(domain_ids, int):
        ids = torch.tensor(domain_ids, dtype=torch.long)
    elif isinstance(domain_ids, Tensor):
        ids = domain_ids
    elif isinstance(domain_ids, Sequence):
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in domain_ids):
            raise TypeError(f"Domain ids must be all ints or all names, got {list(domain_ids)[:8]!r}.")
        ids = torch.tensor(list(domain_ids), dtype=torch.long)
    else:
        raise TypeError(
            f"Domain ids of type {type(domain_ids).__name__} are not supported; pass an int tensor of shape "
            "(N,), an int, a domain name, or a list of ints or names."
        )
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(
            f"Domain ids must be integers, got a {ids.dtype} tensor; convert with ids.long() after checking "
            "that the values are whole domain indices."
        )
    if ids.dim() == 2 and ids.shape[1] == 1:
        ids = ids.squeeze(1)  # (N, 1) -> (N,)
    if ids.dim() > 1:
        raise ValueError(f"Domain ids must have shape (N,) or (N, 1), got {tuple(ids.shape)}.")
    ids = ids.to(device=device, dtype=torch.long)
    if ids.numel():
        low, high = torch.stack(torch.aminmax(ids)).tolist()  # one wait for the device, not two
        if low < 0 or high >= num_domains:
            bad = low if low < 0 else high
            raise ValueError(
                f"Domain id {bad} is out of range: this adapter has {num_domains} domains (ids 0..{num_domains - 1}). "
                "Check the domain encoding, or grow the adapter with add_domains()."
            )
    return ids


def _name_to_index(name: str, domain_names: Optional[Sequence[str]]) -> int:
    if domain_names is None:
        raise ValueError(
            f"Domain name {name!r} given, but the adapter has no domain_names; pass integer ids or build "
            "the config with domain_names=[...]."
        )
    try:
        return list(domain_names).index(name)
    except ValueError:
        raise ValueError(f"Unknown domain {name!r}; known domains: {list(domain_names)}.") from None


def find_domain_ids(args: tuple, kwargs: dict, domain_key: str) -> Optional[DomainIds]:
    """The ids of a call: `domain_ids=` (popped from kwargs) > `args[0][domain_key]` or the keyword
    `domain_key=` (left in place, as `transformers.Trainer` passes features) > `domain_context`."""
    explicit = kwargs.pop(DOMAIN_IDS_KWARG, None)
    if explicit is not None:
        return explicit
    if args and isinstance(args[0], Mapping) and domain_key in args[0]:
        return args[0][domain_key]
    if kwargs.get(domain_key) is not None:
        return kwargs[domain_key]
    return _context_ids.get()


def batch_size_of(args: tuple, kwargs: dict) -> Optional[int]:
    """The leading dimension of the first tensor in the call, looking inside a dict first argument."""
    candidates = list(args) + list(kwargs.values())
    for value in candidates:
        if isinstance(value, Mapping):
            candidates.extend(value.values())
        elif isinstance(value, Tensor) and value.dim() > 0:
            return value.shape[0]
    return None


def route(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Forward pre-hook of an adapted model: group the call's rows by domain and tell every layer.

    A module-level function that reads only `module`, so a deep copy of the model routes itself.
    """
    from .layer import MultiDomainLoraLayer

    config = module._mdlora_routing_config
    raw = find_domain_ids(args, kwargs, config.domain_key)
    layers = [m for m in module.modules() if isinstance(m, MultiDomainLoraLayer)]
    segments = None if raw is None else _segments(raw, config, args, kwargs, layers)
    for layer in layers:
        layer.set_routing(segments)
    return args, kwargs


def clear_routing(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
    """Forward hook: forget the ids after the call so no later call reuses them."""
    from .layer import MultiDomainLoraLayer

    for layer in module.modules():
        if isinstance(layer, MultiDomainLoraLayer):
            layer.set_routing(None)


def _segments(raw: DomainIds, config: Any, args: tuple, kwargs: dict, layers: list) -> DomainSegments:
    device = layers[0].base_layer.weight.device if layers else None
    ids = to_domain_tensor(raw, config.num_domains, config.domain_names, device)
    rows = batch_size_of(args, kwargs)
    if ids.dim() == 0:
        rows = 1 if rows is None else rows
        return DomainSegments(ids.expand(rows), None, None, int(ids))
    if rows is not None and ids.shape[0] != rows:
        raise ValueError(
            f"Got {ids.shape[0]} domain ids for a batch of {rows} rows; pass one id per row "
            "(or a single int for a one-domain batch)."
        )
    return group_by_domain(ids, config.num_domains)
