"""Merged weights kept between calls in inference mode, rebuilt as soon as a weight they came from changes.

In `torch.inference_mode()` a layer serves a domain with its merged weight `W + s B_d A_d` (and,
for rows sorted by domain, every domain's); building it costs about a third of a small layer's
call, so the layer keeps the last few it built. An entry is used only while

- every tensor it was built from is the same tensor, with the same storage and the same version
  counter (in-place updates, `load_state_dict`, `add_domains`, `.to()` and merging all change one);
- no optimiser has stepped since it was built: fused optimisers (`torch.optim.Adam(fused=True)`)
  update in place without bumping version counters, so a global step hook counts every step.

In-place writes through `.data` bypass all of this; call `clear_merged_weights(model)` after them.
Entries are never used while compiling, with gradients, or outside inference mode.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from typing import Any, Callable, Optional, TypeVar

from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_post_hook

MAX_ENTRIES = 32
"""Merged weights a layer keeps (least recently used dropped first): one per served domain and dtype,
plus one stack of every domain's for sorted mixed rows."""

Value = TypeVar("Value")
_optimizer_steps = 0


def _count_step(optimizer: Any, args: Any, kwargs: Any) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


register_optimizer_step_post_hook(_count_step)


class MergedWeightCache:
    """The merged weights one layer built in inference mode, keyed by what they are for.

    Thread-safe; two callers that miss at once both build the same value, and either is kept.
    A copy (`copy.deepcopy`, pickling) starts empty.
    """

    def __init__(self) -> None:
        self._entries: OrderedDict[Any, tuple[tuple, tuple, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any, sources: tuple[Optional[Tensor], ...], build: Callable[[], Value]) -> Value:
        """The value kept under `key` if `sources` are unchanged since it was built, else `build()` (kept)."""
        stamp = _stamp(sources)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] == stamp and _same_tensors(entry[1], sources):
                self._entries.move_to_end(key)
                return entry[2]
        value = build()
        refs = tuple(None if t is None else weakref.ref(t) for t in sources)
        with self._lock:
            self._entries[key] = (stamp, refs, value)
            self._entries.move_to_end(key)
            while len(self._entries) > MAX_ENTRIES:
                self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __deepcopy__(self, memo: dict) -> "MergedWeightCache":
        return MergedWeightCache()

    def __reduce__(self) -> tuple:
        return MergedWeightCache, ()


def clear_merged_weights(model: nn.Module) -> None:
    """Drop every merged weight the adapted layers of `model` keep for inference mode.

    Needed only after in-place writes through `.data` (e.g. `p.data.copy_(new)`), which no version
    counter records; every other update is noticed by itself.

    Example:
        >>> import torch, mlora_peft
        >>> from peft import get_peft_model
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
        >>> model = get_peft_model(net, mlora_peft.MultiDomainLoraConfig(num_domains=3, r=2)).eval()
        >>> x = torch.randn(5, 4)
        >>> with torch.inference_mode():
        ...     before = model(x, domain_ids=1)  # domain 1's merged weights are kept
        >>> _ = model.base_model.model[0].base_layer.weight.data.mul_(2.0)  # no version counter sees this
        >>> mlora_peft.clear_merged_weights(model)
        >>> with torch.inference_mode():
        ...     bool(torch.equal(model(x, domain_ids=1), before))
        False
    """
    for module in model.modules():
        cache = getattr(module, "_merged_weight_cache", None)
        if isinstance(cache, MergedWeightCache):
            cache.clear()


def _stamp(sources: tuple[Optional[Tensor], ...]) -> tuple:
    # Comprehensions and loops, not generators: a served call checks every adapted layer's sources.
    return _optimizer_steps, [None if t is None else (t._version, t.data_ptr(), t.get_device()) for t in sources]


def _same_tensors(refs: tuple, sources: tuple[Optional[Tensor], ...]) -> bool:
    for ref, tensor in zip(refs, sources):
        if (None if ref is None else ref()) is not tensor:
            return False
    return True
