"""transformers integration: `CTRConfig` and `CTRModel`, so a zoo model saves, loads, pushes and trains like a Hub model.

The config carries the model's name, its feature spec (as JSON-ready dicts) and its options;
`CTRModel(config)` builds the zoo model from them. Both are registered with `AutoConfig` and
`AutoModel` under model type "mlora_ctr" when `mlora_peft.models` is imported. `CTRModel` takes
the features as one dict or as keywords (as `transformers.Trainer` passes them) and returns a
`CTROutput` (`loss` when `labels` are given, `logits` always); the zoo models inside stay plain
modules returning logits.

Example:
    >>> from mlora_peft.features import SparseFeature
    >>> config = CTRConfig("mlp", [SparseFeature("user", 100)], {"hidden": [16, 8]})
    >>> CTRModel(config).mlora_target_modules
    ['net.deep.0', 'net.deep.3']
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

from torch import Tensor, nn
from torch.nn.functional import binary_cross_entropy_with_logits
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

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


@dataclass
class CTROutput(ModelOutput):
    """What `CTRModel` returns, a transformers `ModelOutput` (read it as `output.logits`).

    Args:
        loss: mean binary cross-entropy of `logits` against the labels; None when no labels were given.
        logits: click logits, shape `(N,)`; `torch.sigmoid(logits)` is the click probability.

    Example:
        >>> import torch
        >>> output = CTROutput(logits=torch.tensor([0.0, 2.0]))
        >>> output.loss is None, output.to_tuple()
        (True, (tensor([0., 2.]),))
    """

    loss: Optional[Tensor] = None
    logits: Optional[Tensor] = None


class CTRModel(PreTrainedModel):
    """A zoo model as a transformers model: `save_pretrained`, `from_pretrained`, `push_to_hub`, `Trainer`.

    `forward` takes the features as one batch dict, `model(batch)`, or as keywords,
    `model(**batch)` (how `transformers.Trainer` calls a model), plus optional `labels`, and returns
    a `CTROutput`: `logits` `(N,)` always, `loss` (binary cross-entropy with logits) when labels are
    given. Columns the zoo model does not read (a label, the domain ids) may ride along.
    `mlora_target_modules` carries the zoo model's default MLoRA placement, so
    `get_peft_model(model, MultiDomainLoraConfig(num_domains=D))` adapts the deep tower's hidden
    layers, and each call is routed by its `domain_id` column (the config's `domain_key`).

    Args:
        config: a `CTRConfig`.

    Example:
        >>> import torch
        >>> from mlora_peft.features import SparseFeature
        >>> model = CTRModel(CTRConfig("deepfm", [SparseFeature("user", 100), SparseFeature("item", 50)]))
        >>> model({"user": torch.tensor([3, 4]), "item": torch.tensor([1, 2])}).logits.shape
        torch.Size([2])
        >>> out = model(user=torch.tensor([3, 4]), item=torch.tensor([1, 2]), labels=torch.tensor([1.0, 0.0]))
        >>> out.loss.shape, out.logits.shape
        (torch.Size([]), torch.Size([2]))
    """

    config_class = CTRConfig
    main_input_name = "batch"
    accepts_loss_kwargs = False  # the loss is a mean over rows: Trainer must not pass num_items_in_batch

    def __init__(self, config: CTRConfig) -> None:
        super().__init__(config)
        self.net = build_model(config.model_name, config.feature_spec(), **config.model_kwargs)
        self.post_init()

    @property
    def mlora_target_modules(self) -> Optional[list[str]]:
        """The zoo model's MLoRA placement, relative to this model (None for the baselines)."""
        inner = getattr(self.net, "mlora_target_modules", None)
        return None if inner is None else [f"net.{name}" for name in inner]

    def forward(
        self, batch: Optional[Mapping[str, Tensor]] = None, labels: Optional[Tensor] = None, **features: Tensor
    ) -> CTROutput:
        """Logits of a batch, and the loss when `labels` are given.

        Args:
            batch: the feature tensors as one dict; leave it out to pass them as keywords instead.
            labels: click labels `(N,)` (0/1, any dtype); the loss is their mean BCE with the logits.
            **features: the feature tensors as keywords, e.g. `user=ids, item=ids, domain_id=ids`.

        Returns:
            A `CTROutput` with `logits` `(N,)` and `loss` (a scalar, or None without labels).

        Raises:
            TypeError: features given both as a dict and as keywords.
            ValueError: a feature of the spec missing from the inputs, or labels of another size than the batch.
        """
        inputs = self._inputs(batch, features)
        logits = self.net(inputs)  # (N,)
        loss = None if labels is None else _click_loss(logits, labels)
        return CTROutput(loss=loss, logits=logits)

    def _inputs(self, batch: Optional[Mapping[str, Tensor]], features: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
        """The one feature dict, whichever way it came; checks the spec's features are all there."""
        if batch is not None and features:
            raise TypeError(
                f"CTRModel got a batch dict and keyword features {sorted(features)}; pass the features one way: "
                "model(batch) or model(**batch)."
            )
        inputs = batch if batch is not None else features
        missing = [f["name"] for f in self.config.features if f["name"] not in inputs]
        if missing:
            raise ValueError(
                f"CTRModel's inputs lack the features {missing} (it got {sorted(inputs)}). Pass every feature "
                "of the spec. Under transformers.Trainer, set TrainingArguments(remove_unused_columns=False): "
                "forward takes the features as **features, so Trainer would drop their columns."
            )
        return inputs

    def _init_weights(self, module: nn.Module) -> None:
        """Zoo modules initialise themselves; rerun that (transformers calls this for weights not loaded)."""
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()


def _click_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean binary cross-entropy with logits; labels of any dtype, shape `(N,)` or `(N, 1)`."""
    if labels.numel() != logits.numel():
        raise ValueError(f"Got {labels.numel()} labels for a batch of {logits.numel()} rows; pass one label per row.")
    return binary_cross_entropy_with_logits(logits, labels.reshape(logits.shape).to(logits.dtype))  # ()


def _features_as_dicts(features: Sequence[Union[Feature, dict]]) -> list[dict]:
    """The spec as the checked, JSON-ready dicts `features_to_json` writes."""
    if all(isinstance(f, dict) for f in features):
        features = features_from_json(json.dumps(list(features)))
    return json.loads(features_to_json(list(features)))


def register_auto_classes() -> None:
    """Let `AutoConfig` and `AutoModel` load "mlora_ctr" checkpoints (idempotent)."""
    AutoConfig.register(MODEL_TYPE, CTRConfig, exist_ok=True)
    AutoModel.register(CTRConfig, CTRModel, exist_ok=True)
