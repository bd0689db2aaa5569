"""The README model card written beside a saved multi-domain adapter."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

from huggingface_hub import ModelCardData

from ..tuner.config import DEFAULT_RANK_DIVISOR, MultiDomainLoraConfig

TAGS = ["peft", "mlora", "multi-domain-lora", "ctr-prediction", "recommendation"]


def model_card(
    config: MultiDomainLoraConfig,
    folders: Mapping[str, str],
    base_class: str,
    repo_id: Optional[str] = None,
    eval_report: Optional[Mapping[str, Any]] = None,
    json_files: Sequence[str] = (),
    layers: Optional[Mapping[str, int]] = None,
) -> str:
    """The model card text: YAML metadata, a domains table, and how to load one domain.

    Args:
        config: the adapter's config (its `base_model_name_or_path` goes into the metadata when set).
        folders: each domain's name mapped to its folder under `domains/`, in index order.
        base_class: the class name of the base model.
        repo_id: the Hub repository, used in the loading snippet (a placeholder when None).
        eval_report: `mlora_peft.metrics.domain_report` output; its `per_domain[name]` `rows` and `auc`
            fill the table.
        json_files: names of the extra JSON files saved beside the adapter (feature spec, encoders).
        layers: each adapted layer's name mapped to its `out_features`; the card lists each layer's
            rank as `config.rank_for(out_features)` computes it.

    Returns:
        The README text.

    Example:
        >>> card = model_card(MultiDomainLoraConfig(domain_names=["a"]), {"a": "a"}, "DeepFM", layers={"mlp.0": 256})
        >>> "library_name: peft" in card and "| 0 | a |" in card and "| `mlp.0` | 256 | 4 |" in card
        True
    """
    base = config.base_model_name_or_path
    metadata = ModelCardData(library_name="peft", base_model=base, tags=TAGS).to_yaml()
    repo = repo_id or "<repo_id>"
    per_domain = (eval_report or {}).get("per_domain", {})
    rows = [_domain_row(i, name, folder, per_domain.get(name, {})) for i, (name, folder) in enumerate(folders.items())]
    first = next(iter(folders))
    rank = _rank_rule(config)
    layer_rows = "\n".join(f"| `{name}` | {out} | {config.rank_for(out)} |" for name, out in (layers or {}).items())
    targets = config.target_modules if isinstance(config.target_modules, str) else sorted(config.target_modules or [])
    extras = "".join(f"- `{name}.json`\n" for name in json_files) or "- none\n"
    return f"""---
{metadata}
---

# Multi-domain low-rank adapter (MLoRA)

An MLoRA adapter (Yang et al., RecSys 2024, "MLoRA: Multi-Domain Low-Rank Adaptive Network for CTR
Prediction") for the base model `{base or base_class}` (class `{base_class}`): one shared CTR model
plus a small low-rank adapter and bias per domain, saved with the `mlora-peft` library as a PEFT
method (`peft_type: MULTI_DOMAIN_LORA`).

## Domains

| id | domain | folder | rows | test AUC |
|---:|--------|--------|-----:|---------:|
{chr(10).join(rows)}

Each domain folder holds that domain alone (`adapter_config.json` with `num_domains: 1`, and
`adapter_model.safetensors` with its slices), so it can be fetched and released on its own. The
root `adapter_model.safetensors` holds every domain.

## Adapter

- rank: {rank}; scale {"1.0" if config.lora_alpha is None else f"lora_alpha / r = {config.lora_alpha} / r"},
  per-domain bias: {config.domain_bias}, base weights trained: {config.train_base}
- adapted layers: {targets}
- domain ids are read from `domain_ids=` or the batch key `{config.domain_key}`

| layer | out_features | rank |
|-------|-------------:|-----:|
{layer_rows}

## Load one domain

```python
import mlora_peft  # registers the MULTI_DOMAIN_LORA method with PEFT

base_model = ...  # build the base model (e.g. from feature_spec.json)
model = mlora_peft.load_domains(base_model, "{repo}", domains=["{first}"])
plain = mlora_peft.load_domains(base_model, "{repo}", domains=["{first}"], merge=True)  # no routing left
```

With PEFT alone: `PeftModel.from_pretrained(base_model, "{repo}", subfolder="domains/{folders[first]}")`.
Loading needs no remote code: configs are JSON and weights are safetensors.

## Extra files

{extras}"""


def _rank_rule(config: MultiDomainLoraConfig) -> str:
    """The rank rule in words, with the divisor the config really uses."""
    if config.r is not None:
        return f"r = {config.r} in every layer"
    divisor = config.rank_divisor or DEFAULT_RANK_DIVISOR
    source = f"rank_divisor={divisor}" if config.rank_divisor else f"the default rank_divisor, {divisor}"
    return f"max(out_features // {divisor}, 1) per layer ({source})"


def _domain_row(index: int, name: str, folder: str, metrics: Mapping[str, Any]) -> str:
    rows = metrics.get("rows")
    auc = metrics.get("auc")
    rows_text = "" if rows is None else str(int(rows))
    auc_text = "" if auc is None else f"{float(auc):.4f}"
    return f"| {index} | {name} | `domains/{folder}/` | {rows_text} | {auc_text} |"
