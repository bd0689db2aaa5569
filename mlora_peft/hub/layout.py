"""The names of a save's files and folders: one folder per domain under `domains/`."""

from __future__ import annotations

import re

from ..tuner.config import MultiDomainLoraConfig

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
CARD_NAME = "README.md"
DOMAINS_DIR = "domains"
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def domain_labels(config: MultiDomainLoraConfig) -> list[str]:
    """Each domain's name, or `domain_<i>` when the adapter has no names.

    Example:
        >>> domain_labels(MultiDomainLoraConfig(num_domains=2))
        ['domain_0', 'domain_1']
    """
    return list(config.domain_names or [f"domain_{i}" for i in range(config.num_domains)])


def domain_folder(name: str) -> str:
    """The folder of domain `name` under `domains/`: the name, with every character other than a
    letter, digit, `_`, `-` or `.` replaced by `_`, and a leading `d` when it would not start with a
    letter or digit (the domain's real name stays in that folder's adapter_config.json).

    Example:
        >>> domain_folder("music"), domain_folder("K-12 student"), domain_folder("<18"), domain_folder("56+")
        ('music', 'K-12_student', 'd_18', '56_')
    """
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    return slug if slug[:1].isalnum() else f"d{slug}"


def domain_folders(config: MultiDomainLoraConfig) -> list[str]:
    """The folder name of each domain under `domains/` (see `domain_folder`), refusing two that coincide.

    Example:
        >>> domain_folders(MultiDomainLoraConfig(domain_names=["<18", "18-24"]))
        ['d_18', '18-24']
    """
    labels = domain_labels(config)
    folders = [domain_folder(label) for label in labels]
    clashes = sorted({f for f in folders if folders.count(f) > 1})
    if clashes:
        names = [label for label, folder in zip(labels, folders) if folder in clashes]
        raise ValueError(f"Domains {names} would share the folder(s) {clashes} under domains/; rename one of them "
                         "in the config's domain_names.")
    return folders
