"""transformers integration: `CTRConfig` and `CTRModel`, so a zoo model saves, loads and pushes like any Hub model.

The config carries the model's name, its feature spec (as JSON-ready dicts) and its options;
`CTRModel(config)` builds the zoo model from them. Both are registered with `AutoConfig` and
`AutoModel` under model type "mlora_ctr" when `mlora_peft.models` is imported.

Example:
    >>> from mlora_peft.features import SparseFeature
    >>> config = CTRConfig("mlp", [SparseFeature("user", 100)], {"hidden": [16, 8]})
    >>> CTRModel(config).mlora_target_modules
    ['net.deep.0', 'net.deep.3']
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel

from ..features import Feature, features_from_json, features_to_json
from .registry import build_model

MODEL_TYPE = "mlora_ctr"


class CTRConfig(PretrainedConfig):
    """What a `CTRModel` is: a zoo model name, a feature spec and the model's options.

    Args:
        model_name: one of `mlora_peft.models.list_models()`.
        features: the feature spec, as `Feature` objects or the dicts `features_to_json` writes.
        model_kwargs: the model's keyword options (JSON values: lists, numbers, strings).
        **kwargs: passed to `PretrainedConfig`.

    Raises:
        TypeError: options that JSON cannot hold.

    Example:
        >>> from mlora_peft.features import SparseFeature
        >>> CTRConfig("star", [SparseFeature("user", 100)], {"num_domains": 3}).feature_spec()
        [SparseFeature(name='user', vocab_size=100, embedding_dim=8)]
    """

    model_type = MODEL_TYPE

    def __init__(
        self,
        model_name: str = "mlp",
        features: Optional[Sequence[Union[Feature, dict]]] = None,
        model_kwargs: Optional[Mapping[str, Any]] = None,
        **kwargs: Any,
    ) -> None:
        self.model_name = model_name
        self.features = _features_as_dicts(features or [])
        try:
            self.model_kwargs = json.loads(json.dumps(dict(model_kwargs or {})))  # tuples -> lists, as saved
        except TypeError as error:
            raise TypeError(f"model_kwargs={model_kwargs!r} must hold JSON values only ({error}).") from None
        super().__init__(**kwargs)

    def feature_spec(self) -> list[Feature]:
        """The feature spec as `Feature` objects."""
        return features_from_json(json.dumps(self.features))


class CTRModel(PreTrainedModel):
    """A zoo model as a transformers model: `save_pretrained`, `from_pretrained`, `push_to_hub`.

    `forward(batch)` is the zoo model's: a batch dict in, `(N,)` logits out. `mlora_target_modules`
    carries the zoo model's default MLoRA placement, so `get_peft_model(model,
    MultiDomainLoraConfig(num_domains=D))` adapts the deep tower's hidden layers.

    Args:
        config: a `CTRConfig`.

    Example:
        >>> import torch
        >>> from mlora_peft.features import SparseFeature
        >>> model = CTRModel(CTRConfig("deepfm", [SparseFeature("user", 100), SparseFeature("item", 50)]))
        >>> model({"user": torch.tensor([3, 4]), "item": torch.tensor([1, 2])}).shape
        torch.Size([2])
    """

    config_class = CTRConfig
    main_input_name = "batch"

    def __init__(self, config: CTRConfig) -> None:
        super().__init__(config)
        self.net = build_model(config.model_name, config.feature_spec(), **config.model_kwargs)
        self.post_init()

    @property
    def mlora_target_modules(self) -> Optional[list[str]]:
        """The zoo model's MLoRA placement, relative to this model (None for the baselines)."""
        inner = getattr(self.net, "mlora_target_modules", None)
        return None if inner is None else [f"net.{name}" for name in inner]

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        return self.net(batch)  # (N,)

    def _init_weights(self, module: nn.Module) -> None:
        """Zoo modules initialise themselves; rerun that (transformers calls this for weights not loaded)."""
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()


def _features_as_dicts(features: Sequence[Union[Feature, dict]]) -> list[dict]:
    """The spec as the checked, JSON-ready dicts `features_to_json` writes."""
    if all(isinstance(f, dict) for f in features):
        features = features_from_json(json.dumps(list(features)))
    return json.loads(features_to_json(list(features)))


def register_auto_classes() -> None:
    """Let `AutoConfig` and `AutoModel` load "mlora_ctr" checkpoints (idempotent)."""
    AutoConfig.register(MODEL_TYPE, CTRConfig, exist_ok=True)
    AutoModel.register(CTRConfig, CTRModel, exist_ok=True)
