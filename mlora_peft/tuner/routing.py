"""Carrying per-sample domain ids from a model call to its adapted layers, per call.

Ids come, in order of precedence, from the `domain_ids=` keyword (consumed), from
`batch[domain_key]` when the first argument is a dict or from the keyword `domain_key=` (both left
in place), or from an enclosing `domain_context(ids)`. A forward pre-hook on the adapted model
validates them once per call into a `Routing` and makes it the call's routing; a forward hook
ends it. Nothing is stored on the layers: a layer reads the routing of the call it runs in.

Eager calls keep the routing in a `contextvars.ContextVar`, so threads and asyncio tasks that
share one model each see their own. `torch.compile` cannot trace a ContextVar; while dynamo
traces, the routing travels on a plain stack instead, which the traced graph turns into an input
of the compiled program (a compiled graph is a pure function of its inputs). Activation
checkpointing recomputes a block after the call has ended: `checkpoint_context_fn` carries the
call's routing into that recompute.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from .merged_linear import fits_merged_path
from .routed_linear import DomainSegments, group_by_domain
from .row_order import inverse, reorder, rows_are_independent, sort_by_domain, sorted_by_domain

DomainIds = Union[Tensor, int, str, Sequence[int], Sequence[str]]
"""What a caller may pass as domain ids: an int tensor `(N,)` / `(N, 1)`, an int or 0-d tensor
(one domain for the whole batch), a domain name, or a sequence of ints or names."""

DOMAIN_IDS_KWARG = "domain_ids"
_context_ids: contextvars.ContextVar[Optional[DomainIds]] = contextvars.ContextVar("mlora_domain_ids", default=None)
_active: contextvars.ContextVar[tuple["Routing", ...]] = contextvars.ContextVar("mlora_routing", default=())
MERGED_LAYER_SHAPE = "_mdlora_merged_layer_shape"
"""Attribute of an adapted model: `(in, out)` of its adapted layer that takes the merged path from the
fewest rows on (least `in * out / (in + out)`); sorting a call's rows pays once that layer fits."""
_traced: list["Routing"] = []  # the stack while dynamo traces; empty again once each traced call ends


class Routing:
    """The validated domain ids of one call, and what the layers derive from them, computed once.

    Attributes:
        domain_ids: `(N,)` int64 domain of each row (expanded from one id for a one-domain call).
        num_domains: D, the adapter's domain count the ids were checked against.
        single_domain: the domain of every row when the call is known to hold one, else None.
    """

    def __init__(self, domain_ids: Tensor, num_domains: int, single_domain: Optional[int],
                 rows_sorted: Optional[bool] = None, order: Optional[Tensor] = None) -> None:
        self.domain_ids = domain_ids
        self.num_domains = num_domains
        self.single_domain = single_domain
        self.order = order  # when the call's rows were sorted by domain: the batch row of each sorted row
        self._rows_sorted = rows_sorted  # None: not known yet
        self._derived: dict[Any, Any] = {}  # per call, so no lock: one call runs in one thread at a time

    @property
    def num_rows(self) -> int:
        return self.domain_ids.shape[0]

    def segments(self) -> DomainSegments:
        """The rows grouped by domain for the grouped path (`routed_linear`), computed once per call."""
        if "segments" not in self._derived:
            if self.single_domain is not None:
                self._derived["segments"] = DomainSegments(self.domain_ids, None, None, self.single_domain)
            else:
                self._derived["segments"] = group_by_domain(self.domain_ids, self.num_domains)
        return self._derived["segments"]

    def sorted_offsets(self) -> Optional[Tensor]:
        """`(D,)` int32 end row of each domain when the rows are sorted by domain (CPU ids), else None."""
        if "offsets" not in self._derived:
            ids = self.domain_ids
            if self._rows_sorted is None:
                self._rows_sorted = ids.device.type == "cpu" and sorted_by_domain(ids)
            counts = torch.bincount(ids, minlength=self.num_domains) if self._rows_sorted else None
            self._derived["offsets"] = None if counts is None else counts.cumsum(0).to(torch.int32)
        return self._derived["offsets"]

    def off_domain(self, num_domains: int) -> Tensor:
        """`(N, D, 1)` bool, True where a row's domain is not d: the mask of the masked path."""
        key = ("off", num_domains)
        if key not in self._derived:
            domains = torch.arange(num_domains, device=self.domain_ids.device)
            self._derived[key] = (self.domain_ids.unsqueeze(1) != domains).unsqueeze(2)  # (N, D, 1)
        return self._derived[key]

    def on(self, device: torch.device) -> "Routing":
        """This routing with its ids on `device` (the layer's input may sit on another device)."""
        if self.domain_ids.device == device:
            return self
        key = ("on", device)
        if key not in self._derived:
            self._derived[key] = Routing(self.domain_ids.to(device), self.num_domains, self.single_domain,
                                         self._rows_sorted)
        return self._derived[key]

    def repeated(self, rows: int) -> "Routing":
        """This routing for a layer input with `rows // num_rows` rows per sample (`(N, L, in)` flattened)."""
        per_sample = rows // self.num_rows
        if per_sample * self.num_rows != rows:
            raise ValueError(
                f"The layer input has {rows} rows but {self.num_rows} domain ids were given; pass one id per "
                "sample of the batch (ids of shape (N,) for inputs of shape (N, ..., features))."
            )
        if torch.compiler.is_compiling():  # traced sizes are symbolic: nothing to key a cache on
            return Routing(self.domain_ids.repeat_interleave(per_sample), self.num_domains, self.single_domain)
        key = ("repeated", rows)
        if key not in self._derived:
            ids = self.domain_ids.repeat_interleave(per_sample)  # (N * L,)
            self._derived[key] = Routing(ids, self.num_domains, self.single_domain, self._rows_sorted)
        return self._derived[key]


@contextmanager
def domain_context(domain_ids: DomainIds) -> Iterator[None]:
    """Route every adapted-model call inside the block with `domain_ids`.

    The ids belong to the current thread or asyncio task only.

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


def checkpoint_context_fn() -> tuple[Any, Any]:
    """Carry the current call's routing into activation checkpointing's recompute.

    Pass it as `torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False,
    context_fn=mlora_peft.checkpoint_context_fn)`, or through transformers'
    `gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False,
    "context_fn": mlora_peft.checkpoint_context_fn})`. The recompute runs in backward, after the
    call has ended (and on a GPU in autograd's own threads), so it cannot find the ids otherwise.

    Returns:
        The `(forward, recompute)` context managers `torch.utils.checkpoint` expects.

    Example:
        >>> import torch, mlora_peft
        >>> from peft import get_peft_model
        >>> from torch.utils.checkpoint import checkpoint
        >>> class Net(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.block = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU())
        ...         self.head = torch.nn.Linear(8, 1)
        ...     def forward(self, x):
        ...         h = checkpoint(self.block, x, use_reentrant=False, context_fn=mlora_peft.checkpoint_context_fn)
        ...         return self.head(h)
        >>> config = mlora_peft.MultiDomainLoraConfig(num_domains=3, r=2, train_base=True)
        >>> model = get_peft_model(Net(), config)
        >>> model(torch.randn(2, 4), domain_ids=[0, 2]).sum().backward()
    """
    routing = current_routing()
    return nullcontext(), (nullcontext() if routing is None else routed(routing))


@contextmanager
def routed(routing: Routing) -> Iterator[None]:
    """Make `routing` the routing of the calls inside the block (checkpoint recomputes, export)."""
    _push(routing)
    try:
        yield
    finally:
        _pop()


def _push(routing: Optional[Routing]) -> None:
    if torch.compiler.is_compiling():
        _traced.append(routing)
    else:
        _active.set((*_active.get(), routing))


def _pop() -> None:
    if torch.compiler.is_compiling():
        if _traced:
            _traced.pop()
    else:
        stack = _active.get()
        _active.set(stack[:-1])


def current_routing() -> Optional[Routing]:
    """The routing of the innermost adapted-model call running in this thread or task, or None."""
    if torch.compiler.is_compiling():
        return _traced[-1] if _traced else None
    stack = _active.get()
    return stack[-1] if stack else None


def context_routing(num_domains: int, domain_names: Optional[Sequence[str]], device: Optional[torch.device],
                    rows: int) -> Optional[Routing]:
    """A routing from an enclosing `domain_context`, for a layer called outside an adapted model."""
    raw = _context_ids.get()
    return None if raw is None else make_routing(raw, num_domains, domain_names, device, rows)


def to_domain_tensor(domain_ids: DomainIds, domain_names: Optional[Sequence[str]] = None) -> Tensor:
    """`domain_ids` as an int64 tensor: shape `(N,)`, or `()` for a one-domain batch (range not checked).

    Raises:
        TypeError: float or bool ids, or an unsupported type.
        ValueError: unknown names, or a tensor of more than one column.
    """
    if isinstance(domain_ids, str) or (
        isinstance(domain_ids, Sequence) and domain_ids and all(isinstance(n, str) for n in domain_ids)
    ):
        names = [domain_ids] if isinstance(domain_ids, str) else list(domain_ids)
        indices = [_name_to_index(n, domain_names) for n in names]
        return torch.tensor(indices[0] if isinstance(domain_ids, str) else indices, dtype=torch.long)
    if isinstance(domain_ids, bool):
        raise TypeError(f"Domain id {domain_ids!r} is a bool; pass an int domain index.")
    if isinstance(domain_ids, int):
        return torch.tensor(domain_ids, dtype=torch.long)
    if isinstance(domain_ids, Tensor):
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
    return ids if ids.dtype == torch.long else ids.long()


def make_routing(raw: DomainIds, num_domains: int, domain_names: Optional[Sequence[str]],
                 device: Optional[torch.device], rows: Optional[int]) -> Routing:
    """Validate the ids of a call of `rows` rows (None: unknown) into its `Routing`.

    On the CPU the range check also tells whether the call holds one domain (the ids' minimum and
    maximum). On other devices the check is queued on the device (`torch._assert_async`) and the
    host never waits; while compiling nothing is checked, so keep compiled ids in range.

    Raises:
        TypeError, ValueError: as `to_domain_tensor`; ids out of [0, num_domains); a count of ids
            that differs from the rows.
    """
    ids = to_domain_tensor(raw, domain_names)
    if device is not None and ids.device != device:
        ids = ids.to(device)
    if ids.dim() == 0:
        single = _checked_single(ids, num_domains)
        return Routing(ids.expand(1 if rows is None else rows), num_domains, single)
    if rows is not None and ids.shape[0] != rows:
        raise ValueError(
            f"Got {ids.shape[0]} domain ids for a batch of {rows} rows; pass one id per row "
            "(or a single int for a one-domain batch)."
        )
    if torch.compiler.is_compiling() or not ids.numel():
        return Routing(ids, num_domains, None)
    if ids.device.type != "cpu":
        torch._assert_async(((ids >= 0) & (ids < num_domains)).all(),
                            f"a domain id is out of range: this adapter has {num_domains} domains")
        return Routing(ids, num_domains, None)
    low, high = (int(extreme) for extreme in torch.aminmax(ids))
    _check_range(low, high, num_domains)
    return Routing(ids, num_domains, low if low == high else None)


def _checked_single(ids: Tensor, num_domains: int) -> Optional[int]:
    if torch.compiler.is_compiling():
        return None
    value = int(ids)
    _check_range(value, value, num_domains)
    return value


def _check_range(low: int, high: int, num_domains: int) -> None:
    if low < 0 or high >= num_domains:
        bad = low if low < 0 else high
        raise ValueError(
            f"Domain id {bad} is out of range: this adapter has {num_domains} domains (ids 0..{num_domains - 1}). "
            "Check the domain encoding, or grow the adapter with add_domains()."
        )


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


def first_tensor(args: tuple, kwargs: dict, domain_key: str) -> Optional[Tensor]:
    """The call's first input tensor with a batch axis (looking inside a dict), not the domain ids."""
    candidates = list(args) + [v for k, v in kwargs.items() if k != domain_key]
    for value in candidates:
        if isinstance(value, Mapping):
            candidates.extend(v for k, v in value.items() if k != domain_key)
        elif isinstance(value, Tensor) and value.dim() > 0:
            return value
    return None


def route(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Forward pre-hook of an adapted model: validate the call's ids and make them its routing.

    A module-level function that reads only `module`, so a deep copy of the model routes itself.
    Its cost does not depend on the number of modules in the model.
    """
    config = module._mdlora_routing_config
    raw = find_domain_ids(args, kwargs, config.domain_key)
    routing = None
    if raw is not None:
        first = first_tensor(args, kwargs, config.domain_key)
        device, rows = (None, None) if first is None else (first.device, first.shape[0])
        routing = make_routing(raw, config.num_domains, config.domain_names, device, rows)
        if _sorting_pays(module, routing, rows):
            sorted_rows = sort_by_domain(routing.domain_ids)
            if sorted_rows is None:
                routing = Routing(routing.domain_ids, routing.num_domains, None, rows_sorted=True)
            else:
                sorted_ids, order = sorted_rows
                args, kwargs = reorder(args, order, rows), reorder(kwargs, order, rows)
                routing = Routing(sorted_ids, routing.num_domains, None, rows_sorted=True, order=order)
    _push(routing)
    return args, kwargs


def end_routing(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
    """Forward hook (also called when the forward raises): end the call's routing; give rows sorted
    on entry back in the caller's order."""
    routing = current_routing()
    _pop()
    if output is None or routing is None or routing.order is None:
        return None
    return reorder(output, inverse(routing.order), routing.num_rows)


def _sorting_pays(module: nn.Module, routing: Routing, rows: Optional[int]) -> bool:
    """Whether to sort a call's rows by domain: a mixed CPU batch, a row-independent model, and at
    least one adapted layer that then takes the merged path (`merged_linear.fits_merged_path`)."""
    if routing.single_domain is not None or rows is None or routing.domain_ids.device.type != "cpu":
        return False
    if torch.compiler.is_compiling() or not rows_are_independent(module):
        return False
    shape = getattr(module, MERGED_LAYER_SHAPE, None)
    return shape is not None and fits_merged_path(routing.num_domains, *shape, rows)
