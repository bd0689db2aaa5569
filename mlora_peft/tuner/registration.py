"""Registering MLoRA with PEFT, the one place that works around PEFT's closed `PeftType` enum."""

from __future__ import annotations

from .config import PEFT_TYPE, MultiDomainLoraConfig
from .model import PREFIX, MultiDomainLoraModel


def register() -> None:
    """Make PEFT's factories and loaders know MLoRA; safe to call any number of times.

    Example:
        >>> import mlora_peft
        >>> from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
        >>> mlora_peft.register()
        >>> PEFT_TYPE_TO_CONFIG_MAPPING["MULTI_DOMAIN_LORA"].__name__
        'MultiDomainLoraConfig'
    """
    # Workaround: `peft.utils.register_peft_method` only accepts names that are already members
    # of the closed `PeftType` enum, and extending an enum at run time relies on CPython
    # internals. Every PEFT lookup is a dict lookup keyed by `config.peft_type`, and `PeftType`
    # is a `str` enum, so filling the same four dicts under our plain string key is enough.
    # tests/test_registration.py checks that this still holds for the pinned peft version.
    from peft import mapping

    mapping.PEFT_TYPE_TO_CONFIG_MAPPING[PEFT_TYPE] = MultiDomainLoraConfig
    mapping.PEFT_TYPE_TO_TUNER_MAPPING[PEFT_TYPE] = MultiDomainLoraModel
    mapping.PEFT_TYPE_TO_PREFIX_MAPPING[PEFT_TYPE] = PREFIX
