"""Reading a save for `mlora_peft.hub.load_domains`: which files to fetch, each domain's folder, sliced roots."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Union

from huggingface_hub import HfApi, constants
from huggingface_hub.errors import HfHubHTTPError
from torch import Tensor

from .weights import read_config
from ..tuner.config import MultiDomainLoraConfig
from .layout import CONFIG_NAME, DOMAINS_DIR, WEIGHTS_NAME, domain_folder, domain_labels
from ..tuner.model import _is_adapter_key


def _requested(domains: Optional[Sequence[str]], merge: bool) -> Optional[list[str]]:
    if domains is None:
        return None
    if isinstance(domains, str):
        raise TypeError(f"domains={domains!r} is a string; pass a list of names, e.g. domains=[{domains!r}].")
    names = list(domains)
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if not names or duplicates:
        raise ValueError(f"domains={names!r}: give at least one name, each once.")
    if merge and len(names) != 1:
        raise ValueError(f"merge=True folds exactly one domain into the weights, got domains={names!r}.")
    return names


def _fetch(source: Union[str, Path], names: Optional[list[str]], revision: Optional[str],
           api: Optional[HfApi], cache_dir: Optional[Union[str, Path]]) -> Path:
    """The local folder holding the needed files, downloading only those from the Hub."""
    local = Path(source)
    if local.is_dir():
        if revision is not None:
            raise ValueError(f"revision={revision!r} applies to Hub repositories, but {source} is a local folder.")
        return local
    if local.exists() or local.is_absolute() or str(source).startswith((".", "~")):
        raise ValueError(f"{source} is not a saved adapter folder; pass the folder save_pretrained wrote, "
                         "or a Hub repo id.")
    patterns = [f"{DOMAINS_DIR}/{domain_folder(n)}/*" for n in names] if names else [CONFIG_NAME, WEIGHTS_NAME]
    if names == []:  # the root weights only
        patterns = [WEIGHTS_NAME]
    api = api or HfApi()
    return Path(api.snapshot_download(str(source), revision=revision, allow_patterns=patterns, cache_dir=cache_dir))


def _domain_folder(folder: Path, name: str, source: Union[str, Path], revision: Optional[str],
                   api: Optional[HfApi]) -> Path:
    path = folder / DOMAINS_DIR / domain_folder(name)
    if (path / CONFIG_NAME).is_file():
        return path
    known = _known_domains(folder, source, revision, api)
    listing = f"the saved domains are {known}" if known is not None else "the saved domains could not be listed"
    raise ValueError(f"Domain {name!r} is not in {source} ({listing}). Check the name, or push that domain first.")


def _named_config(part: Path, name: str) -> MultiDomainLoraConfig:
    """The config of one domain folder, refusing a folder whose config names another domain (renamed or swapped)."""
    config = read_config(part / CONFIG_NAME)
    if config.domain_names is not None and config.domain_names != [name]:
        raise ValueError(
            f"{part / CONFIG_NAME} names domain(s) {config.domain_names}, not {name!r}: the folder "
            f"{DOMAINS_DIR}/{part.name}/ was renamed or swapped with another. Give each folder back its own "
            f"domain's files (the config's domain_names tells whose they are), or save the adapter again."
        )
    return config


def _peft_layout(folder: Path, names: list[str], source: Union[str, Path], revision: Optional[str],
                 api: Optional[HfApi]) -> bool:
    """True for a save with no `domains/` folder at all (PEFT's own `save_pretrained`/`push_to_hub`)."""
    if any((folder / DOMAINS_DIR / domain_folder(n) / CONFIG_NAME).is_file() for n in names):
        return False
    if Path(source).is_dir():
        return not (folder / DOMAINS_DIR).is_dir()
    if constants.is_offline_mode():
        return False  # the repository cannot be listed; the usual "not in" error follows
    try:
        files = (api or HfApi()).list_repo_files(str(source), revision=revision)
    except HfHubHTTPError:
        return False
    return CONFIG_NAME in files and not any(f.startswith(f"{DOMAINS_DIR}/") for f in files)


def _slice_domains(config: MultiDomainLoraConfig, tensors: dict[str, Tensor], names: list[str],
                   source: Union[str, Path]) -> tuple[MultiDomainLoraConfig, dict[str, Tensor]]:
    """The named domains' rows of a full adapter's stacks, in the order asked; shared tensors as they are."""
    labels = domain_labels(config)
    unknown = [n for n in names if n not in labels]
    if unknown:
        raise ValueError(
            f"Domains {unknown} are not in {source} (a save without {DOMAINS_DIR}/ folders, as PEFT's own "
            f"save_pretrained writes; its adapter holds {labels}). Check the names."
        )
    rows = [labels.index(n) for n in names]
    stacks = {k: v for k, v in tensors.items() if _is_adapter_key(k)}
    wrong = sorted(k for k, v in stacks.items() if v.dim() == 0 or v.shape[0] != config.num_domains)
    if wrong:
        raise ValueError(
            f"{source}: tensors {wrong[:3]} do not hold {config.num_domains} domains (the config's num_domains) "
            "in their first dimension; the weights do not belong to this config. Save the adapter again."
        )
    sliced = {k: v[rows] if k in stacks else v for k, v in tensors.items()}  # (D, ...) -> (len(names), ...)
    return dataclasses.replace(config, num_domains=len(names), domain_names=list(names)), sliced


def _known_domains(folder: Path, source: Union[str, Path], revision: Optional[str],
                   api: Optional[HfApi]) -> Optional[list[str]]:
    if Path(source).is_dir():
        return sorted(p.name for p in (folder / DOMAINS_DIR).glob("*/") if p.is_dir())
    if constants.is_offline_mode():
        return None
    try:
        entries = (api or HfApi()).list_repo_tree(str(source), path_in_repo=DOMAINS_DIR, revision=revision)
        return sorted(Path(entry.path).name for entry in entries)
    except HfHubHTTPError:  # e.g. no domains/ folder at all: the error message goes without the list
        return None


def _check_known(domains: Sequence[str], known: list[str]) -> None:
    if isinstance(domains, str):
        raise TypeError(f"domains={domains!r} is a string; pass a list of names, e.g. domains=[{domains!r}].")
    unknown = [d for d in domains if d not in known]
    if unknown or not domains:
        raise ValueError(f"domains={list(domains)!r}: unknown {unknown}; this adapter's domains are {known}.")
