"""Reading saved adapters strictly: JSON configs, safetensors weights, and their fit to a base model.

Every load path of `mlora_peft.hub` goes through these functions: configs are plain JSON whose
fields must all be known, weights are safetensors (no file can run code), and the adapter's layers, shapes
and ranks are checked against the base model before any weight is loaded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from ..tuner.config import PEFT_TYPE, MultiDomainLoraConfig
from ..tuner.model import _is_adapter_key

KEY_PREFIX = "base_model.model."
CONFIG_FIELDS = frozenset(f.name for f in fields(MultiDomainLoraConfig))
# Fields that may differ between the domains of one adapter: who they are, and save-time bookkeeping.
PER_DOMAIN_FIELDS = frozenset({"num_domains", "domain_names", "inference_mode", "peft_version"})
# Wrappers PEFT puts around a base module; a saved shared key without them names the base weight.
_WRAPPER_PARTS = (".base_layer.", ".original_module.", ".modules_to_save.")


def read_config(path: Path) -> MultiDomainLoraConfig:
    """Parse an `adapter_config.json`, refusing other PEFT methods and unknown fields.

    Args:
        path: the JSON file.

    Returns:
        The config.

    Raises:
        ValueError: the file is missing, not JSON, not an MLoRA config, or has unknown fields.

    Example:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> MultiDomainLoraConfig(domain_names=["a"], r=2).save_pretrained(folder)
        >>> read_config(folder / "adapter_config.json").domain_names
        ['a']
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path} is missing; the adapter folder is incomplete (save or download it again).") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); download it again or save the adapter again.") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, not an adapter config object.")
    if data.get("peft_type") != PEFT_TYPE:
        raise ValueError(
            f"{path} has peft_type={data.get('peft_type')!r}; mlora_peft loads MLoRA adapters "
            f"(peft_type {PEFT_TYPE!r}) only. Use peft.PeftModel.from_pretrained for other methods."
        )
    unknown = sorted(set(data) - CONFIG_FIELDS)
    if unknown:
        raise ValueError(
            f"{path} has fields this mlora_peft version does not know: {unknown}. Upgrade mlora_peft if a newer "
            "version saved it; otherwise the file was edited or comes from elsewhere."
        )
    try:
        return MultiDomainLoraConfig(**data)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from None


def read_weights(path: Path) -> dict[str, Tensor]:
    """Load a safetensors file, turning a corrupt or truncated file into a `ValueError` that says so.

    Args:
        path: the `.safetensors` file.

    Returns:
        The tensors by key.

    Raises:
        ValueError: the file is missing, corrupt or truncated.

    Example:
        >>> import tempfile, pathlib, torch
        >>> from safetensors.torch import save_file
        >>> file = pathlib.Path(tempfile.mkdtemp()) / "w.safetensors"
        >>> save_file({"a": torch.zeros(2)}, str(file))
        >>> read_weights(file)["a"].shape
        torch.Size([2])
    """
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise ValueError(f"{path} is missing; the adapter folder is incomplete (save or download it again).") from None
    except (SafetensorError, OSError) as error:
        raise ValueError(
            f"{path} is not a readable safetensors file ({error}): it is corrupt or truncated. Download it again "
            "(force_download=True, or delete it from the Hugging Face cache) or save the adapter again."
        ) from None


def combine_domains(
    configs: Sequence[MultiDomainLoraConfig], weights: Sequence[Mapping[str, Tensor]], names: Sequence[str]
) -> tuple[MultiDomainLoraConfig, dict[str, Tensor]]:
    """One adapter holding the given one-domain adapters, in order (domain i is `names[i]`).

    Args:
        configs: each domain folder's config (`num_domains=1`).
        weights: each domain folder's tensors.
        names: the domains' names.

    Returns:
        The combined config and tensors: adapter stacks concatenated, shared tensors kept once.

    Raises:
        ValueError: a folder with several domains, or domains that disagree on structure or shared weights.
    """
    first, reference = configs[0].to_dict(), weights[0]
    for name, config, tensors in zip(names, configs, weights):
        if config.num_domains != 1:
            raise ValueError(f"Folder of domain {name!r} holds {config.num_domains} domains; expected exactly one.")
        other = config.to_dict()
        differing = sorted(k for k in first if k not in PER_DOMAIN_FIELDS and other[k] != first[k])
        if differing or set(tensors) != set(reference):
            detail = f"config fields {differing}" if differing else "the saved layers"
            raise ValueError(
                f"Domain {name!r} differs from domain {names[0]!r} in {detail}; load domains saved from one adapter."
            )
        changed = [k for k in tensors if not _is_adapter_key(k) and not torch.equal(tensors[k], reference[k])]
        if changed:
            raise ValueError(
                f"Domains {names[0]!r} and {name!r} carry different shared weights ({changed[:3]}); they were saved "
                "from different base models. Load domains saved together."
            )
    stacked = {k: torch.cat([w[k] for w in weights]) if _is_adapter_key(k) else v for k, v in reference.items()}
    combined = MultiDomainLoraConfig(**{**first, "num_domains": len(names), "domain_names": list(names)})
    return combined, stacked


def check_fits(base_model: nn.Module, config: MultiDomainLoraConfig, tensors: Mapping[str, Tensor]) -> None:
    """Refuse an adapter whose layers, shapes or ranks do not fit `base_model`, before anything is loaded.

    Args:
        base_model: the plain model the adapter was trained on.
        config: the adapter's config.
        tensors: the adapter's saved tensors.

    Raises:
        TypeError: `base_model` already holds adapter layers.
        ValueError: listing the first problems (unknown layers, wrong shapes or ranks, unknown keys).
    """
    if any(isinstance(m, BaseTunerLayer) for m in base_model.modules()):
        raise TypeError("base_model already holds adapter layers; pass the plain model (a freshly built one, "
                        "or peft_model.unload()).")
    modules, state = dict(base_model.named_modules()), base_model.state_dict()
    problems = []
    for key, tensor in sorted(tensors.items()):
        if not key.startswith(KEY_PREFIX):
            problems.append(f"{key}: unexpected key (saved keys start with {KEY_PREFIX!r})")
        elif _is_adapter_key(key):
            problems += _check_adapter_tensor(key[len(KEY_PREFIX):], tuple(tensor.shape), config, modules)
        else:
            problems += _check_shared_tensor(key[len(KEY_PREFIX):], tuple(tensor.shape), state)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ValueError(
            f"The adapter does not fit this base model ({shown}). Load it onto the model it was trained on, "
            "built with the same feature spec and widths."
        )


def _check_adapter_tensor(key: str, shape: tuple, config: MultiDomainLoraConfig, modules: dict) -> list[str]:
    module_name, role = key.rsplit(".", 1)
    module = modules.get(module_name)
    if not isinstance(module, nn.Linear):
        found = "not found" if module is None else f"a {type(module).__name__}, not nn.Linear"
        return [f"layer {module_name!r} is {found} in the base model"]
    if role == "mdlora_bias" and not config.domain_bias:
        return [f"{key}: a domain bias is saved but the config has domain_bias=False"]
    rank, D = config.rank_for(module.out_features), config.num_domains
    expected = {
        "mdlora_A": (D, rank, module.in_features),
        "mdlora_B": (D, module.out_features, rank),
        "mdlora_bias": (D, module.out_features),
    }.get(role)
    if expected is None:
        return [f"{key}: unknown adapter tensor {role!r}"]
    if shape != expected:
        return [f"{key}: saved {shape}, this model needs {expected} (rank {rank}, {D} domains)"]
    return []


def _check_shared_tensor(key: str, shape: tuple, state: Mapping[str, Any]) -> list[str]:
    base_key = f".{key}"
    for part in _WRAPPER_PARTS:
        base_key = base_key.replace(part, ".")
    base_key = base_key[1:]
    if base_key not in state:
        return [f"{key}: no weight {base_key!r} in the base model"]
    if tuple(state[base_key].shape) != shape:
        return [f"{key}: saved {shape}, base model {tuple(state[base_key].shape)}"]
    return []
