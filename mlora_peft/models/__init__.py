"""The CTR model zoo: the MLoRA paper's backbones and the multi-domain baselines, by name.

Every model is a plain `nn.Module` built as `build_model(name, features, **options)`; its
`forward(batch)` takes a dict of feature tensors and returns `(N,)` logits. The backbones declare
`mlora_target_modules` (their deep tower's hidden layers), which `MultiDomainLoraConfig` uses when
`target_modules` is not given. The baselines take `num_domains` and read each row's domain from
`batch["domain_id"]`. `CTRConfig` / `CTRModel` make any of them a transformers model, whose
forward returns a `CTROutput` (`loss`, `logits`) and trains under `transformers.Trainer`.

Example:
    >>> import torch
    >>> from mlora_peft.features import SparseFeature
    >>> from mlora_peft.models import build_model
    >>> model = build_model("deepfm", [SparseFeature("user", 100), SparseFeature("domain_id", 3)])
    >>> model({"user": torch.tensor([5, 7]), "domain_id": torch.tensor([0, 2])}).shape
    torch.Size([2])
"""

from .embedding import FeatureEmbedding, LinearTerm
from .hf import CTRConfig, CTRModel, CTROutput, register_auto_classes
from .multidomain import MultiDomainBaseline
from .params import ParameterCount, adapter_parameters_per_domain, count_parameters, parameter_table
from .registry import MODELS, build_model, list_models, model_class, model_options
from .tower import Backbone, DeepTower, OutputDropoutLinear

register_auto_classes()

__all__ = [
    "MODELS",
    "Backbone",
    "CTRConfig",
    "CTRModel",
    "CTROutput",
    "DeepTower",
    "FeatureEmbedding",
    "LinearTerm",
    "MultiDomainBaseline",
    "OutputDropoutLinear",
    "ParameterCount",
    "adapter_parameters_per_domain",
    "build_model",
    "count_parameters",
    "list_models",
    "model_class",
    "model_options",
    "parameter_table",
    "register_auto_classes",
]
