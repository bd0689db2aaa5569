"""The PEFT method itself, laid out as PEFT lays out its tuners (`peft/tuners/<name>/`).

- `config`: `MultiDomainLoraConfig`;
- `layer`: `MultiDomainLoraLayer`, the adapted linear layer;
- `model`: `MultiDomainLoraModel`, the tuner that injects layers and routes calls;
- `routing`: per-call domain ids, from a model call to its layers;
- `routed_linear`, `masked_linear` and `merged_linear`: the three ways a layer computes a mixed batch;
- `row_order`: sorting a call's rows by domain, and back;
- `weight_cache`: merged weights kept between calls in inference mode;
- `registration`: the one place that registers the method with PEFT.
"""

from .config import MultiDomainLoraConfig
from .layer import MultiDomainLoraLayer
from .model import MultiDomainLoraModel
from .registration import register
from .routing import checkpoint_context_fn, domain_context
from .weight_cache import clear_merged_weights

__all__ = [
    "MultiDomainLoraConfig",
    "MultiDomainLoraLayer",
    "MultiDomainLoraModel",
    "checkpoint_context_fn",
    "clear_merged_weights",
    "domain_context",
    "register",
]
