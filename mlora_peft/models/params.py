"""Parameter counts: a model with and without its embedding tables, and MLoRA's adapters per domain."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from torch import nn

from ..tuner.config import MultiDomainLoraConfig
from ..features import Feature
from .registry import build_model, list_models


@dataclass(frozen=True)
class ParameterCount:
    """A model's parameters: all of them, and those in `nn.Embedding` tables.

    Example:
        >>> import torch
        >>> count_parameters(torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 1)))
        ParameterCount(total=45, embeddings=40)
    """

    total: int
    embeddings: int

    @property
    def without_embeddings(self) -> int:
        """Parameters outside the embedding tables (the dense part of the model)."""
        return self.total - self.embeddings


def count_parameters(model: nn.Module) -> ParameterCount:
    """Count `model`'s parameters (each shared tensor once); `embeddings` sums its `nn.Embedding` tables."""
    total = sum(p.numel() for p in model.parameters())
    tables = {id(m.weight): m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding)}
    return ParameterCount(total, sum(tables.values()))


def adapter_parameters_per_domain(
    model: nn.Module, r: Optional[int] = None, rank_divisor: Optional[int] = None, domain_bias: bool = True
) -> int:
    """MLoRA parameters one domain adds with the model's default placement (`mlora_target_modules`).

    A targeted `Linear(in, out)` of rank `k` (`MultiDomainLoraConfig.rank_for`) holds `A_d` (k x in),
    `B_d` (out x k) and, with `domain_bias`, `b_d` (out) per domain.

    Args:
        model: a zoo backbone (or any model with `mlora_target_modules` naming `nn.Linear` layers).
        r, rank_divisor, domain_bias: as in `MultiDomainLoraConfig` (neither rank option: divisor 64).

    Raises:
        ValueError: the model declares no placement, or a placement entry is not an `nn.Linear`.

    Example:
        >>> from mlora_peft.features import SparseFeature
        >>> from mlora_peft.models import build_model
        >>> adapter_parameters_per_domain(build_model("mlp", [SparseFeature("user", 9)], hidden=[32, 16]), r=2)
        224
    """
    names = getattr(model, "mlora_target_modules", None)
    if not names:
        raise ValueError(
            f"{type(model).__name__} declares no mlora_target_modules, so it has no default MLoRA placement; "
            "count a wrapped model's adapter parameters instead."
        )
    config = MultiDomainLoraConfig(num_domains=1, r=r, rank_divisor=rank_divisor, domain_bias=domain_bias)
    total = 0
    for name in names:
        layer = model.get_submodule(name)
        if not isinstance(layer, nn.Linear):
            raise ValueError(f"mlora_target_modules entry {name!r} is a {type(layer).__name__}, not an nn.Linear.")
        rank = config.rank_for(layer.out_features)
        total += rank * (layer.in_features + layer.out_features) + (layer.out_features if domain_bias else 0)
    return total


@dataclass(frozen=True)
class ModelParameters:
    """One row of `parameter_table`: a model's counts at D domains (adapter fields None for baselines)."""

    name: str
    model: ParameterCount
    adapter_per_domain: Optional[int]
    num_domains: int

    @property
    def adapters(self) -> Optional[int]:
        """MLoRA parameters over all D domains (None for a baseline)."""
        return None if self.adapter_per_domain is None else self.adapter_per_domain * self.num_domains


def parameter_table(
    features: Sequence[Feature],
    num_domains: int,
    r: Optional[int] = None,
    rank_divisor: Optional[int] = None,
) -> list[ModelParameters]:
    """Counts for every zoo model built from `features` with default options: backbones and their adapters,
    baselines at D domains.

    Args:
        features: the feature spec.
        num_domains: D (adapters count D times; baselines are built with `num_domains=D`).
        r, rank_divisor: the adapters' rank setting, as in `MultiDomainLoraConfig`.

    Returns:
        One `ModelParameters` per model, in `list_models()` order.
    """
    rows = []
    for name in list_models():
        baseline = name in list_models("baselines")
        model = build_model(name, features, **({"num_domains": num_domains} if baseline else {}))
        per_domain = None if baseline else adapter_parameters_per_domain(model, r=r, rank_divisor=rank_divisor)
        rows.append(ModelParameters(name, count_parameters(model), per_domain, num_domains))
    return rows
