"""The PEFT method itself, laid out as PEFT lays out its tuners (`peft/tuners/<name>/`).

- `config`: `MultiDomainLoraConfig`;
- `layer`: `MultiDomainLoraLayer`, the adapted linear layer;
- `model`: `MultiDomainLoraModel`, the tuner that injects layers and routes calls;
- `routing`: per-call domain ids, from a model call to its layers;
- `routed_linear` and `masked_linear`: the two ways a layer computes a mixed batch;
- `registration`: the one place that registers the method with PEFT.
"""

from .config import MultiDomainLoraConfig
from .layer import MultiDomainLoraLayer
from .model import MultiDomainLoraModel
from .registration import register
from .routing import checkpoint_context_fn, domain_context

__all__ = [
    "MultiDomainLoraConfig",
    "MultiDomainLoraLayer",
    "MultiDomainLoraModel",
    "checkpoint_context_fn",
    "domain_context",
    "register",
]
