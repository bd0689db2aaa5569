"""Zoo models by name: `build_model(name, features, **options)`, `list_models()`, `model_options(name)`."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, Literal

from torch import nn

from ..features import Feature
from .autoint import AutoInt
from .cin import XDeepFM
from .cross import DCN, DCNv2
from .fibinet import FiBiNET
from .fm import NFM, DeepFM
from .mlp import MLP, WDL
from .mmoe import MMoE
from .multidomain import MultiDomainBaseline
from .pepnet import PEPNet
from .ple import PLE
from .pnn import PNN
from .shared_bottom import SharedBottom
from .star import STAR

MODELS: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "wdl": WDL,
    "nfm": NFM,
    "deepfm": DeepFM,
    "dcn": DCN,
    "dcnv2": DCNv2,
    "xdeepfm": XDeepFM,
    "autoint": AutoInt,
    "fibinet": FiBiNET,
    "pnn": PNN,
    "shared_bottom": SharedBottom,
    "mmoe": MMoE,
    "ple": PLE,
    "star": STAR,
    "pepnet": PEPNet,
}
"""Every zoo model by name: the single-domain backbones first, then the multi-domain baselines."""

REQUIRED = object()
"""Marks an option without a default in `model_options` (a baseline's `num_domains`)."""


def list_models(kind: Literal["all", "backbones", "baselines"] = "all") -> list[str]:
    """The zoo's model names: all of them, the single-domain backbones, or the multi-domain baselines.

    Raises:
        ValueError: an unknown `kind`.

    Example:
        >>> list_models("baselines")
        ['shared_bottom', 'mmoe', 'ple', 'star', 'pepnet']
    """
    if kind == "all":
        return list(MODELS)
    if kind not in ("backbones", "baselines"):
        raise ValueError(f"kind={kind!r}: use 'all', 'backbones' or 'baselines'.")
    baseline = kind == "baselines"
    return [name for name, cls in MODELS.items() if issubclass(cls, MultiDomainBaseline) == baseline]


def model_class(name: str) -> type[nn.Module]:
    """The class registered as `name`.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}; choose one of {list(MODELS)}.")
    return MODELS[name]


def model_options(name: str) -> dict[str, Any]:
    """The keyword options of model `name` with their defaults (`REQUIRED` for those without one)."""
    parameters = inspect.signature(model_class(name).__init__).parameters.values()
    return {p.name: (REQUIRED if p.default is inspect.Parameter.empty else p.default)
            for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}


def build_model(name: str, features: Sequence[Feature], **options: Any) -> nn.Module:
    """A fresh zoo model: `MODELS[name](features, **options)`, with new weights every call.

    Args:
        name: one of `list_models()`.
        features: the feature spec.
        **options: the model's keyword options (`model_options(name)`), e.g. `hidden=[256, 128, 64]`,
            `dropout=0.5`; the baselines require `num_domains`.

    Returns:
        An `nn.Module` whose `forward(batch)` returns `(N,)` logits.

    Raises:
        ValueError: an unknown name.
        TypeError: an option the model does not take, or a missing required one (the message
            lists the model's options).

    Example:
        >>> from mlora_peft.features import SparseFeature
        >>> model = build_model("mlp", [SparseFeature("user", 100)], hidden=[256, 128, 64], dropout=0.5)
        >>> model.mlora_target_modules
        ['deep.0', 'deep.3', 'deep.6']
    """
    allowed = model_options(name)
    unknown = sorted(set(options) - set(allowed))
    missing = sorted(k for k, default in allowed.items() if default is REQUIRED and k not in options)
    if unknown or missing:
        listing = ", ".join(k if v is REQUIRED else f"{k}={v!r}" for k, v in allowed.items())
        problem = f"does not take {unknown}" if unknown else f"needs {missing}"
        raise TypeError(f"Model {name!r} {problem}; its options are: {listing}.")
    return MODELS[name](features, **options)
