"""Saving, pushing and loading adapters with one folder per domain.

Layout of a save (PEFT's own files at the root, so `PeftModel.from_pretrained` reads it too):

    adapter_config.json           every domain (num_domains=D, domain_names)
    adapter_model.safetensors     every domain's stacks, (D, r, in), (D, out, r), (D, out)
    domains/<name>/adapter_config.json         num_domains=1, domain_names=[name]
    domains/<name>/adapter_model.safetensors   that domain's slices, (1, r, in), ... (never the shared base)
    domains/<name>/embeddings.safetensors      an onboarded domain's new embedding rows (see `growth`)
    domains/<name>/encoder_additions.json      ... and the encoder values they belong to
    <file>.json                   extra JSON files: feature spec, encoders
    README.md                     model card

A jointly trained base (`train_base=True`) is stored once, in the root weights; a domain folder
holds only its own slices, so one domain is KBs and `load_domains` reads the base from the root.
Unnamed domains are saved as `domain_<i>`. These are functions, not `PeftModel` methods: PEFT
resolves `peft_model.save_pretrained` to its own method, which writes the root files only;
`load_domains` reads such a save (no `domains/` folder) by slicing the root stacks.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import torch
from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi
from peft import PeftModel
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import save_file
from torch import Tensor, nn

from ..atomic import check_replaceable, extra_json_files, write_atomically
from .weights import KEY_PREFIX, check_fits, combine_domains, read_config, read_weights
from ..tuner.config import MultiDomainLoraConfig
from ..growth import DomainAdditions, append_rows, compose
from .reading import (
    _check_known,
    _domain_folder,
    _fetch,
    _named_config,
    _peft_layout,
    _requested,
    _slice_domains,
)
from .layout import (  # noqa: F401  (re-exported: the layout's names were first defined here)
    CARD_NAME,
    CONFIG_NAME,
    DOMAINS_DIR,
    WEIGHTS_NAME,
    _SAFE_NAME,
    domain_folder,
    domain_folders,
    domain_labels,
)
from ..tuner.model import _is_adapter_key
from .model_card import model_card

def save_pretrained(
    model: PeftModel,
    save_directory: Union[str, Path],
    *,
    adapter_name: str = "default",
    json_files: Optional[Mapping[str, Any]] = None,
    eval_report: Optional[Mapping[str, Any]] = None,
    repo_id: Optional[str] = None,
    domains: Optional[Sequence[str]] = None,
    additions: Optional[Mapping[str, DomainAdditions]] = None,
) -> Path:
    """Save the adapter with one folder per domain, atomically: a failed save leaves the previous one intact.

    Files are written into a temporary folder beside `save_directory`, which is then swapped in with
    two renames (a crash between them leaves the previous save in a `.<name>.previous-*` folder).
    Extra JSON files already in the folder (e.g. `data.save_encoder(folder)`) are kept unless
    `json_files` rewrites them.

    Args:
        model: a `PeftModel` holding an MLoRA adapter.
        save_directory: the folder to write; an existing save there is replaced.
        adapter_name: the adapter to save.
        json_files: extra files, `{name: value}` saved as `<name>.json`; a value is JSON text, a dict or
            list, or an object with `to_json()` (returning text) or `to_dict()`.
        eval_report: per-domain test metrics for the model card (`mlora_peft.metrics.domain_report`).
        repo_id: the Hub repository named in the model card's loading snippet.
        domains: write only these domains' folders into the existing save at `save_directory` (each swapped
            in atomically); the root files and other folders are not touched. None writes everything.
        additions: domain name -> its `DomainAdditions` (an onboarded domain's embedding rows and encoder
            values), written into its folder.

    Returns:
        The saved folder.

    Raises:
        TypeError: not a `PeftModel` with an MLoRA adapter, or a JSON value of an unsupported type.
        ValueError: a domain or file name unfit for a folder, or a target folder holding other files.

    Example:
        >>> import tempfile, torch, mlora_peft
        >>> from peft import get_peft_model
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
        >>> model = get_peft_model(net, mlora_peft.MultiDomainLoraConfig(domain_names=["a", "b"], r=2))
        >>> folder = mlora_peft.save_pretrained(model, tempfile.mkdtemp() + "/adapter")
        >>> sorted(p.name for p in (folder / "domains").iterdir())
        ['a', 'b']
    """
    config = _config_of(model, adapter_name)
    folders = domain_folders(config)
    tensors = get_peft_model_state_dict(model, adapter_name=adapter_name)
    labels = domain_labels(config)
    if domains is not None:
        return _save_domains(Path(save_directory), config, tensors, domains, additions or {})
    texts = {name: _json_text(name, value) for name, value in (json_files or {}).items()}
    card = model_card(config, dict(zip(labels, folders)), type(model.get_base_model()).__name__, repo_id, eval_report,
                      sorted(texts), _layer_widths(tensors))
    target = Path(save_directory)
    check_replaceable(target, keep={CONFIG_NAME, WEIGHTS_NAME, CARD_NAME, DOMAINS_DIR})

    def write(folder: Path) -> None:
        _write_adapter(folder, config, tensors)
        for index, (label, name) in enumerate(zip(labels, folders)):
            _write_domain(folder / DOMAINS_DIR / name, config, tensors, index, (additions or {}).get(label))
        for name, text in texts.items():
            (folder / f"{name}.json").write_text(text, encoding="utf-8")
        rewritten = {CONFIG_NAME, *(f"{name}.json" for name in texts)}
        for kept in extra_json_files(target, skip=rewritten):  # e.g. an encoder saved into the folder before
            shutil.copy2(kept, folder / kept.name)
        (folder / CARD_NAME).write_text(card, encoding="utf-8")

    write_atomically(target, write)
    return target


def push_to_hub(
    model: PeftModel,
    repo_id: str,
    *,
    domains: Optional[Sequence[str]] = None,
    private: Optional[bool] = None,
    revision: Optional[str] = None,
    commit_message: Optional[str] = None,
    api: Optional[HfApi] = None,
    adapter_name: str = "default",
    json_files: Optional[Mapping[str, Any]] = None,
    eval_report: Optional[Mapping[str, Any]] = None,
    additions: Optional[Mapping[str, DomainAdditions]] = None,
) -> CommitInfo:
    """Upload the whole layout, or only the named domains' folders, in one commit.

    Args:
        model: a `PeftModel` holding an MLoRA adapter.
        repo_id: the Hub repository (created when missing).
        domains: upload only `domains/<name>/` of these domains; None uploads everything.
        private: visibility of a newly created repository (None: the Hub's default).
        revision: the branch to commit to (created from the default branch when missing).
        commit_message: the commit message.
        api: the `HfApi` client to use (endpoint, token); a default `HfApi()` when None.
        adapter_name, json_files, eval_report, additions: as in `save_pretrained`.

    Returns:
        The `CommitInfo` of the commit.

    Raises:
        ValueError: an unknown domain name (the known ones are listed).

    Example:
        >>> mlora_peft.push_to_hub(model, "team/ctr-mlora", domains=["new"])  # doctest: +SKIP
    """
    config = _config_of(model, adapter_name)
    if domains is not None:
        _check_known(domains, domain_labels(config))
    api = api or HfApi()
    with tempfile.TemporaryDirectory() as scratch:
        folder = save_pretrained(model, Path(scratch) / "save", adapter_name=adapter_name, json_files=json_files,
                                 eval_report=eval_report, repo_id=repo_id, additions=additions)
        roots = [folder / DOMAINS_DIR / domain_folder(n) for n in domains] if domains is not None else [folder]
        operations = [
            CommitOperationAdd(path_in_repo=path.relative_to(folder).as_posix(), path_or_fileobj=str(path))
            for root in roots for path in sorted(root.rglob("*")) if path.is_file()
        ]
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        message = commit_message or (f"Upload MLoRA domains {list(domains)}" if domains else "Upload MLoRA adapter")
        return api.create_commit(repo_id, operations, commit_message=message, revision=revision)


def load_domains(
    base_model: nn.Module,
    repo_id_or_path: Union[str, Path],
    domains: Optional[Sequence[str]] = None,
    *,
    revision: Optional[str] = None,
    merge: bool = False,
    is_trainable: bool = False,
    api: Optional[HfApi] = None,
    cache_dir: Optional[Union[str, Path]] = None,
) -> Union[PeftModel, nn.Module]:
    """Load some (or all) domains of a saved adapter onto `base_model`, fetching only their files.

    With `domains`, only `domains/<name>/` of each is read or downloaded; the loaded adapter holds
    those domains under their names, with ids 0, 1, ... in the order given. Each folder's config must
    name its domain (a renamed or swapped folder is refused). A save without `domains/` folders
    (PEFT's own `model.save_pretrained` or `model.push_to_hub`) is read from the root adapter instead:
    the named domains' rows are sliced out of its stacks. Configs are read as
    strict JSON, weights as safetensors, and both are checked against `base_model` first.
    `base_model` is changed in place, as with `PeftModel.from_pretrained`.

    Args:
        base_model: the plain model the adapter was trained on.
        repo_id_or_path: a local save folder or a Hub repository id.
        domains: names of the domains to load (`domain_<i>` for unnamed ones); None loads every domain.
        revision: branch, tag or commit of a Hub repository.
        merge: return the plain base model with the one loaded domain folded into its weights.
        is_trainable: leave the adapter trainable (to train it further, or add domains); else eval mode.
        api: the `HfApi` client (endpoint, token) for Hub downloads; a default `HfApi()` when None.
        cache_dir: the Hugging Face cache folder to use.

    Returns:
        A routed `PeftModel`, or with `merge=True` the base model's own class.

    Raises:
        ValueError: a missing domain, a domain folder whose config names another domain, `merge` with other
            than one domain, a config that is not MLoRA or has unknown fields, a corrupt or truncated weights
            file, or an adapter that does not fit.

    Example:
        >>> model = mlora_peft.load_domains(build_model(), "team/ctr-mlora", domains=["us"])  # doctest: +SKIP
    """
    names = _requested(domains, merge)
    folder = _fetch(repo_id_or_path, names, revision, api, cache_dir)
    if names is None:
        config, tensors = read_config(folder / CONFIG_NAME), read_weights(folder / WEIGHTS_NAME)
    elif _peft_layout(folder, names, repo_id_or_path, revision, api):
        root = _fetch(repo_id_or_path, None, revision, api, cache_dir)
        config, tensors = _slice_domains(read_config(root / CONFIG_NAME), read_weights(root / WEIGHTS_NAME), names,
                                         repo_id_or_path)
    else:
        parts = [_domain_folder(folder, name, repo_id_or_path, revision, api) for name in names]
        configs = [_named_config(part, name) for part, name in zip(parts, names)]
        config, tensors = combine_domains(configs, [read_weights(p / WEIGHTS_NAME) for p in parts], names)
        if config.train_base and all(_is_adapter_key(k) for k in tensors):  # the shared base is stored once, at the root
            root = _fetch(repo_id_or_path, [], revision, api, cache_dir)
            tensors.update({k: v for k, v in read_weights(root / WEIGHTS_NAME).items() if not _is_adapter_key(k)})
        _grow_base(base_model, tensors, [DomainAdditions.read(p) for p in parts])
    if merge and config.num_domains != 1:
        raise ValueError(f"merge=True folds one domain, but the adapter has {config.num_domains}; pass domains=[name].")
    check_fits(base_model, config, tensors)
    config.inference_mode = not is_trainable
    model = PeftModel(base_model, config)
    result = set_peft_model_state_dict(model, tensors)
    if result.unexpected_keys:
        raise ValueError(f"The model has no place for saved tensors {sorted(result.unexpected_keys)[:5]}.")
    if not is_trainable:
        model.eval()
    return model.merge_and_unload(domain=0) if merge else model


def load_json_text(
    repo_id_or_path: Union[str, Path],
    name: str,
    *,
    revision: Optional[str] = None,
    api: Optional[HfApi] = None,
    cache_dir: Optional[Union[str, Path]] = None,
) -> str:
    """The text of one extra JSON file (`<name>.json`) of a save, downloading only that file.

    Args:
        repo_id_or_path: a local save folder or a Hub repository id.
        name: the file's name without `.json`, as given to `save_pretrained(json_files=...)`.
        revision, api, cache_dir: as in `load_domains`.

    Returns:
        The JSON text, checked to parse; hand it to the matching reader, e.g.
        `mlora_peft.features.features_from_json` or `MultiDomainEncoder.from_json`.

    Raises:
        ValueError: an unsafe name, or a file that is not valid JSON.

    Example:
        >>> features = features_from_json(mlora_peft.load_json_text("team/ctr-mlora", "feature_spec"))  # doctest: +SKIP
    """
    _check_safe_name(name, "JSON file name")
    local = Path(repo_id_or_path)
    if local.is_dir():
        path = local / f"{name}.json"
    else:
        api = api or HfApi()
        path = Path(api.hf_hub_download(str(repo_id_or_path), f"{name}.json", revision=revision, cache_dir=cache_dir))
    try:
        text = path.read_text(encoding="utf-8")
        json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); download it again or save again.") from None
    return text


def load_encoder(
    repo_id_or_path: Union[str, Path],
    domains: Sequence[str] = (),
    *,
    revision: Optional[str] = None,
    api: Optional[HfApi] = None,
    cache_dir: Optional[Union[str, Path]] = None,
) -> Any:
    """The saved `data_encoder.json` grown with the encoder values of onboarded `domains`, in the order given.

    Load the same `domains` with `load_domains` (after the base's own domains): ids then agree with
    the embedding rows it appended. Domains trained with the base add nothing.

    Args:
        repo_id_or_path: a local save folder or a Hub repository id.
        domains: onboarded domains whose `encoder_additions.json` to apply.
        revision, api, cache_dir: as in `load_domains`.

    Returns:
        A `MultiDomainEncoder`.

    Example:
        >>> encoder = mlora_peft.load_encoder("team/ctr-mlora", domains=["Office_Products"])  # doctest: +SKIP
    """
    from ..data import MultiDomainEncoder  # the data package imports datasets: only when asked

    encoder = MultiDomainEncoder.from_json(load_json_text(repo_id_or_path, "data_encoder", revision=revision, api=api,
                                                          cache_dir=cache_dir))
    names = _requested(domains, merge=False) if domains else []
    folder = _fetch(repo_id_or_path, names, revision, api, cache_dir) if names else None
    for name in names:
        additions = DomainAdditions.read(_domain_folder(folder, name, repo_id_or_path, revision, api))
        if additions is not None:
            encoder = encoder.with_additions(additions.encoder)
    return encoder


# ---------------------------------------------------------------------------------- writing
def _config_of(model: PeftModel, adapter_name: str) -> MultiDomainLoraConfig:
    if not isinstance(model, PeftModel):
        raise TypeError(f"Pass the PeftModel (from get_peft_model or load_domains), got {type(model).__name__}.")
    config = model.peft_config.get(adapter_name)
    if not isinstance(config, MultiDomainLoraConfig):
        raise TypeError(f"Adapter {adapter_name!r} is {type(config).__name__}, not an MLoRA adapter; "
                        f"adapters: {sorted(model.peft_config)}.")
    return config


def _domain_slices(tensors: Mapping[str, Tensor], index: int) -> dict[str, Tensor]:
    """Domain `index`'s rows of every stack, `(1, ...)`; shared tensors (a trained base) stay at the root only."""
    return {k: v[index:index + 1] for k, v in tensors.items() if _is_adapter_key(k)}


def _write_domain(folder: Path, config: MultiDomainLoraConfig, tensors: Mapping[str, Tensor], index: int,
                  additions: Optional[DomainAdditions]) -> None:
    one = dataclasses.replace(config, num_domains=1, domain_names=[domain_labels(config)[index]])
    _write_adapter(folder, one, _domain_slices(tensors, index))
    if additions is not None:
        additions.write(folder)


def _save_domains(target: Path, config: MultiDomainLoraConfig, tensors: Mapping[str, Tensor], domains: Sequence[str],
                  additions: Mapping[str, DomainAdditions]) -> Path:
    """Write only the named domains' folders into the existing save `target`, each swapped in atomically."""
    labels = domain_labels(config)
    _check_known(domains, labels)
    if not (target / CONFIG_NAME).is_file():
        raise ValueError(f"save_pretrained(domains=...) adds domain folders to an existing save, but {target} holds "
                         f"no {CONFIG_NAME}; save the whole adapter first (domains=None), or copy the base save there.")
    for name in domains:
        index = labels.index(name)
        write_atomically(target / DOMAINS_DIR / domain_folder(name),
                         lambda folder: _write_domain(folder, config, tensors, index, additions.get(name)))
    return target


def _grow_base(base_model: nn.Module, tensors: dict[str, Tensor], parts: list[Optional[DomainAdditions]]) -> None:
    """Append the onboarded domains' embedding rows to `base_model` (and to the saved shared tables, if any)."""
    found = [p for p in parts if p is not None]
    if not found:
        return
    _, rows = compose(found)
    append_rows(base_model, rows)
    for key, extra in rows.items():
        if key in tensors:
            tensors[key] = torch.cat([tensors[key], extra])  # (V, E) -> (V + n, E)


def _layer_widths(tensors: Mapping[str, Tensor]) -> dict[str, int]:
    """Each adapted layer's name and `out_features`, read from its `mdlora_B` stack `(D, out, r)`."""
    suffix = ".mdlora_B"
    return {k[len(KEY_PREFIX):-len(suffix)]: int(v.shape[1]) for k, v in tensors.items()
            if k.endswith(suffix) and k.startswith(KEY_PREFIX)}


def _write_adapter(folder: Path, config: MultiDomainLoraConfig, tensors: Mapping[str, Tensor]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    inference = dataclasses.replace(config, inference_mode=True)
    inference.save_pretrained(str(folder))
    contiguous = {k: v.detach().contiguous().clone() for k, v in tensors.items()}  # (clone: no shared storage)
    save_file(contiguous, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})


def _json_text(name: str, value: Any) -> str:
    _check_safe_name(name, "JSON file name")
    if name in {Path(CONFIG_NAME).stem}:
        raise ValueError(f"json_files name {name!r} is taken by the adapter config; pick another name.")
    if hasattr(value, "to_json"):
        value = value.to_json()
    elif hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, str):
        try:
            json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"json_files[{name!r}] is not valid JSON text ({error}).") from None
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value, indent=2)
    raise TypeError(f"json_files[{name!r}] is a {type(value).__name__}; pass JSON text, a dict or list, or an "
                    "object with to_json() or to_dict().")


def _check_safe_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name):
        raise ValueError(f"{what} {name!r} cannot name a folder or file: use letters, digits, '_', '-' and '.', "
                         "starting with a letter or digit.")


