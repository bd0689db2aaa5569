"""`MultiDomainLoraModel`: the PEFT tuner that injects MLoRA layers and routes domains."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .config import MultiDomainLoraConfig
from .layer import MultiDomainLoraLayer
from .merged_linear import grouped_mm_supports
from .routing import MERGED_LAYER_SHAPE, end_routing, route
from .weight_cache import clear_merged_weights

PREFIX = "mdlora_"
_HOOK_HANDLES = "_mdlora_hook_handles"


class MultiDomainLoraModel(BaseTuner):
    """Adds one low-rank adapter per domain to the linear layers of any `nn.Module`.

    Built by `peft.get_peft_model(model, MultiDomainLoraConfig(...))` once `mlora_peft` is
    imported. Calls route each row to its domain's adapter (see `mlora_peft.tuner.routing`).

    Example:
        >>> import torch, mlora_peft
        >>> from peft import get_peft_model
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
        >>> model = get_peft_model(net, mlora_peft.MultiDomainLoraConfig(num_domains=3, r=2))
        >>> model(torch.randn(5, 4), domain_ids=torch.tensor([0, 1, 2, 1, 0])).shape
        torch.Size([5, 1])
    """

    prefix: str = PREFIX
    tuner_layer_cls = MultiDomainLoraLayer
    target_module_mapping: dict = {}

    # ------------------------------------------------------------------------------ injection
    def _prepare_adapter_config(self, peft_config: MultiDomainLoraConfig, model_config: dict) -> MultiDomainLoraConfig:
        if peft_config.target_modules is None:
            peft_config.target_modules = default_target_modules(self.model, peft_config)
        return peft_config

    def _create_and_replace(
        self,
        peft_config: MultiDomainLoraConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        parameter_name: Optional[str] = None,
    ) -> None:
        if isinstance(target, MultiDomainLoraLayer):
            target.update_layer(adapter_name, peft_config)
            return
        new_module = MultiDomainLoraLayer(target, adapter_name, peft_config)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)  # an added, inactive adapter does not train
        self._replace_module(parent, target_name, new_module, target)

    def _post_injection_hook(self, model: nn.Module, config: MultiDomainLoraConfig, adapter_name: str) -> None:
        if adapter_name in self.active_adapters:
            model._mdlora_routing_config = config
        shapes = [(m.in_features, m.out_features) for m in model.modules()
                  if isinstance(m, MultiDomainLoraLayer) and grouped_mm_supports(m.in_features, m.out_features)]
        if shapes:
            setattr(model, MERGED_LAYER_SHAPE, min(shapes, key=lambda s: s[0] * s[1] / (s[0] + s[1])))
        if not getattr(model, _HOOK_HANDLES, None):
            setattr(model, _HOOK_HANDLES, [
                model.register_forward_pre_hook(route, with_kwargs=True),
                model.register_forward_hook(end_routing, with_kwargs=True, always_call=True),
            ])

    def _mark_only_adapters_as_trainable(self, model: nn.Module) -> None:
        super()._mark_only_adapters_as_trainable(model)
        for name in self.active_adapters:
            config = self.peft_config[name]
            if config.train_base and not config.inference_mode:
                for param in model.parameters():
                    param.requires_grad_(True)

    def set_adapter(self, adapter_name: Union[str, list[str]], inference_mode: bool = False) -> None:
        super().set_adapter(adapter_name, inference_mode=inference_mode)
        self.model._mdlora_routing_config = self.peft_config[self.active_adapters[0]]

    def delete_adapter(self, adapter_name: str) -> None:
        """Delete an adapter; calls then route with the domains of the adapter that is active after it."""
        super().delete_adapter(adapter_name)
        clear_merged_weights(self.model)  # frees the deleted adapter's merged weights kept for inference mode
        remaining = [name for name in self.active_adapters if name in self.peft_config]
        if remaining:
            self.model._mdlora_routing_config = self.peft_config[remaining[0]]

    # ------------------------------------------------------------------------------ domains
    @property
    def routing_config(self) -> MultiDomainLoraConfig:
        """The config of the active adapter, whose domains the calls are routed to."""
        return self.peft_config[self.active_adapters[0]]

    def domain_index(self, domain: Union[int, str], adapter_name: Optional[str] = None) -> int:
        """The index of `domain` (an index or a name) in the active (or given) adapter, range-checked."""
        config = self.peft_config[adapter_name] if adapter_name is not None else self.routing_config
        index = config.domain_index(domain) if isinstance(domain, str) else domain
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < config.num_domains:
            raise ValueError(f"domain={domain!r} is not one of the {config.num_domains} domains (0..{config.num_domains - 1}).")
        return index

    def add_domains(self, new_domains: Union[int, Sequence[str]], adapter_name: Optional[str] = None) -> None:
        """Grow every layer's stacks with fresh domains that start equal to the shared model.

        Args:
            new_domains: how many domains to add, or their names (required when the adapter has names).
            adapter_name: the adapter to grow; the active one by default.

        Raises:
            TypeError: a string instead of a list of names (`add_domains(["new"])`, not `add_domains("new")`).
            ValueError: a count below 1, names for an unnamed adapter (or the reverse), or names that are not
                non-empty unique strings or are already used (the checks of the config's `domain_names`).
        """
        name = adapter_name or self.active_adapters[0]
        config = self.peft_config[name]
        if isinstance(new_domains, int) and not isinstance(new_domains, bool):
            if new_domains < 1:
                raise ValueError(f"add_domains({new_domains}): add at least one domain.")
            if config.domain_names is not None:
                raise ValueError("This adapter names its domains; pass the new names, e.g. add_domains(['new']).")
            count, names = new_domains, None
        else:
            if config.domain_names is None and not isinstance(new_domains, (str, bytes)):
                raise ValueError("This adapter has no domain_names; pass a count, e.g. add_domains(2).")
            names = config.check_new_domains(new_domains)
            count = len(names)
        for module in self.model.modules():
            if isinstance(module, MultiDomainLoraLayer) and name in module.mdlora_A:
                module.add_domains(name, count, config.init_weights if config.init_weights != False else True)  # noqa: E712
        config.num_domains += count
        if names is not None:
            config.domain_names = config.domain_names + names

    def freeze_domains_except(
        self, domains: Sequence[Union[int, str]], adapter_name: Optional[str] = None
    ) -> "DomainFreeze":
        """Train only `domains` of an adapter: other domains' slices get zero gradients, all else is frozen.

        The stacks are single Parameters, so a gradient hook zeroes the other domains' rows, and every
        parameter outside the adapter's stacks (base model, `modules_to_save`, other adapters) stops
        requiring gradients. With an optimiser whose step is zero for a zero gradient (SGD, Adam, or
        AdamW with `weight_decay=0`), the other domains stay bit-identical; decoupled weight decay would
        still shrink them. Call `add_domains` first: it replaces the stacks.

        Args:
            domains: the domains to train, by index or name.
            adapter_name: the adapter; the active one by default.

        Returns:
            A handle whose `remove()` lifts the freeze and restores every `requires_grad` flag.

        Raises:
            ValueError: an unknown domain, or no domain given.

        Example:
            >>> import torch, mlora_peft
            >>> from peft import get_peft_model
            >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
            >>> model = get_peft_model(net, mlora_peft.MultiDomainLoraConfig(domain_names=["a", "b"], r=2))
            >>> handle = model.freeze_domains_except(["b"])
            >>> handle.remove()
        """
        name = adapter_name or self.active_adapters[0]
        if isinstance(domains, (str, int)) or not domains:
            raise ValueError(f"freeze_domains_except({domains!r}): pass a non-empty list, e.g. ['new'].")
        indices = sorted({self.domain_index(d, name) for d in domains})
        handle = DomainFreeze()
        for param_name, param in self.model.named_parameters():
            trainable = _is_adapter_key(param_name) and param_name.endswith(f".{name}")
            handle.flags.append((param, param.requires_grad))
            param.requires_grad_(trainable)
            if trainable:
                mask = torch.zeros(param.shape[0], *[1] * (param.dim() - 1), dtype=param.dtype, device=param.device)
                mask[indices] = 1  # (D, 1, ...) keeps the trained domains' rows
                handle.hooks.append(param.register_hook(mask.mul))
        return handle

    # ------------------------------------------------------------------------------ merging
    def merge_adapter(self, adapter_names: Optional[list[str]] = None, safe_merge: bool = False,
                      domain: Union[int, str, None] = None) -> None:
        """Fold one domain's adapter and bias into the base weights (undo with `unmerge_adapter`).

        While merged, a batch holding any other domain is refused. With `domain=None` on a model
        already merged, the merged domain is kept (merge, evaluate, then `merge_and_unload()` works).
        """
        merged = {m.merged_domain for m in self.model.modules() if isinstance(m, MultiDomainLoraLayer) and m.merged}
        index = merged.pop() if domain is None and len(merged) == 1 else self._domain_to_merge(domain)
        for module in self.model.modules():
            if isinstance(module, MultiDomainLoraLayer):
                module.merge(safe_merge=safe_merge, adapter_names=adapter_names, domain=index)

    def merge_and_unload(self, progressbar: bool = False, safe_merge: bool = False,
                         adapter_names: Optional[list[str]] = None, domain: Union[int, str, None] = None) -> nn.Module:
        """Return the original model with domain `domain` folded into its weights, hooks removed."""
        self.merge_adapter(adapter_names=adapter_names, safe_merge=safe_merge, domain=domain)
        return self._unload_and_optionally_merge(merge=False, progressbar=progressbar)

    def _unload_and_optionally_merge(self, merge: bool = True, progressbar: bool = False,
                                     safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> nn.Module:
        if merge and not any(m.merged for m in self.model.modules() if isinstance(m, MultiDomainLoraLayer)):
            self.merge_adapter(adapter_names=adapter_names, safe_merge=safe_merge)
        model = super()._unload_and_optionally_merge(merge=False, progressbar=progressbar)
        for handle in getattr(model, _HOOK_HANDLES, []):
            handle.remove()
        for attr in (_HOOK_HANDLES, "_mdlora_routing_config", MERGED_LAYER_SHAPE):
            if hasattr(model, attr):
                delattr(model, attr)
        return model

    def _domain_to_merge(self, domain: Union[int, str, None]) -> int:
        if domain is None:
            if self.routing_config.num_domains > 1:
                raise ValueError(
                    f"This adapter has {self.routing_config.num_domains} domains; say which one to merge, "
                    "e.g. merge_and_unload(domain=0) or domain='name'."
                )
            return 0
        return self.domain_index(domain)

    # ------------------------------------------------------------------------------ saving
    @classmethod
    def _get_adapter_state_dict(cls, model, config, adapter_name, state_dict, unwanted_adapter_names):
        """Adapter tensors, plus every base weight when `train_base` (joint training changed them)."""
        adapters = super()._get_adapter_state_dict(model, config, adapter_name, state_dict, unwanted_adapter_names)
        if not getattr(config, "train_base", False):
            return adapters
        return {**{k: v for k, v in state_dict.items() if not _is_adapter_key(k)}, **adapters}

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model, config, adapter_name, state_dict):
        """Map saved keys to the model and refuse missing or mis-shaped adapter tensors."""
        remapped = super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)
        expected = {k: v.shape for k, v in model.state_dict().items()
                    if _is_adapter_key(k) and k.endswith(f".{adapter_name}")}
        missing = sorted(k for k in expected if k not in remapped)
        wrong = [f"{k}: saved {tuple(remapped[k].shape)}, model {tuple(shape)}"
                 for k, shape in expected.items() if k in remapped and remapped[k].shape != shape]
        if missing or wrong:
            details = "; ".join(wrong[:3] + [f"{k}: not in the saved adapter" for k in missing[:3]])
            raise ValueError(
                f"The saved adapter does not fit this model ({len(wrong)} shape mismatches, {len(missing)} "
                f"missing tensors; {details}). Load it onto the base model it was trained with, with the "
                "adapter_config.json saved beside it."
            )
        return remapped


@dataclass
class DomainFreeze:
    """What `freeze_domains_except` changed: gradient hooks and the previous `requires_grad` flags."""

    hooks: list[RemovableHandle] = field(default_factory=list)
    flags: list[tuple[Tensor, bool]] = field(default_factory=list)

    def remove(self) -> None:
        """Remove the gradient hooks and restore every parameter's `requires_grad` flag."""
        for hook in self.hooks:
            hook.remove()
        for param, flag in self.flags:
            param.requires_grad_(flag)
        self.hooks, self.flags = [], []


def _is_adapter_key(key: str) -> bool:
    return any(f".{part}." in f".{key}." for part in MultiDomainLoraLayer.adapter_layer_names)


def default_target_modules(model: nn.Module, config: MultiDomainLoraConfig) -> Union[set[str], str]:
    """Where MLoRA goes when `target_modules` is None.

    The model's own `mlora_target_modules` attribute (the zoo's deep-tower layers) when present,
    else every `nn.Linear` except output heads (`out_features == 1`) and layers already inside an
    adapter.
    """
    declared = getattr(model, "mlora_target_modules", None)
    if declared is not None:
        return declared if isinstance(declared, str) else set(declared)
    inside_adapters = {name for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)}
    names = {
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and module.out_features != 1
        and not any(name.startswith(f"{outer}.") for outer in inside_adapters)
    }
    names |= {name for name in inside_adapters if isinstance(model.get_submodule(name), MultiDomainLoraLayer)
              and model.get_submodule(name).out_features != 1}
    if not names:
        raise ValueError(
            "MultiDomainLoraConfig found no nn.Linear with more than one output in this model; "
            "name the layers to adapt with target_modules=[...]."
        )
    return names

