"""Growing a trained model for new domains: embedding rows for new ids, row-masked training, per-domain files.

A new domain brings ids its model never saw (items of a new category, most of its users) and a
new `domain_id`. `grow_embeddings` appends rows to every table of those features (old rows
untouched, new ones start at the mean of the trained rows); `train_rows_from` lets only the new
rows learn, by masking the gradient per row, so with Adam (no weight decay) every old row stays
bit-identical, its optimiser state included. A domain's new rows and encoder values travel in its
own folder (`DomainAdditions`): `domains/<name>/embeddings.safetensors` and
`domains/<name>/encoder_additions.json`; `load_domains` appends them to the base model's tables.

Tables are found by name: every `nn.Embedding` whose module name ends with `.<feature>` (the
zoo's `embedding.tables.<feature>` and `wide.weights.<feature>`).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from .hub.weights import read_weights
from .tuner.model import DomainFreeze

EMBEDDINGS_FILE = "embeddings.safetensors"
ADDITIONS_FILE = "encoder_additions.json"


def feature_tables(model: nn.Module, feature: str) -> dict[str, nn.Embedding]:
    """Every embedding table of `feature` in `model`, by module name (`...tables.user`, `...weights.user`).

    Example:
        >>> from mlora_peft.models import build_model
        >>> from mlora_peft.features import SparseFeature
        >>> sorted(feature_tables(build_model("wdl", [SparseFeature("user", 5)], hidden=[4]), "user"))
        ['embedding.tables.user', 'wide.weights.user']
    """
    return {name: module for name, module in model.named_modules()
            if isinstance(module, nn.Embedding) and name.rsplit(".", 1)[-1] == feature}


@torch.no_grad()
def grow_embeddings(model: nn.Module, vocab_sizes: Mapping[str, int],
                    skip_rows: Optional[Mapping[str, int]] = None) -> dict[str, int]:
    """Append rows to the tables of each feature up to `vocab_sizes[feature]`, in place; old rows stay as they are.

    New rows start at the mean of the trained rows (rows from `skip_rows[feature]` on, default 1:
    row 0 is the unknown id, which training never looks up).

    Args:
        model: the model (a `PeftModel` or a plain backbone).
        vocab_sizes: feature -> the new number of rows.
        skip_rows: feature -> how many leading rows to leave out of the mean (0 for `domain_id`).

    Returns:
        Module name -> its old number of rows, for `train_rows_from`.

    Raises:
        ValueError: a feature without a table, or a size below the table's current one.

    Example:
        >>> table = nn.Sequential()
        >>> table.add_module("user", nn.Embedding(3, 2))
        >>> grow_embeddings(table, {"user": 5}), table.user.weight.shape
        ({'user': 3}, torch.Size([5, 2]))
    """
    old_sizes = {}
    for feature, size in vocab_sizes.items():
        tables = feature_tables(model, feature)
        if not tables:
            raise ValueError(f"The model has no embedding table for feature {feature!r} (an nn.Embedding named "
                             f"'...{feature}'); grow only the features it embeds.")
        for name, table in tables.items():
            if size < table.num_embeddings:
                raise ValueError(f"{name} has {table.num_embeddings} rows; it cannot shrink to {size}.")
            old_sizes[name] = table.num_embeddings
            start = min((skip_rows or {}).get(feature, 1), table.num_embeddings - 1)
            mean = table.weight[start:].mean(0, keepdim=True)  # (1, E)
            grown = torch.cat([table.weight, mean.expand(size - table.num_embeddings, -1)])  # (size, E)
            table.weight = nn.Parameter(grown, requires_grad=table.weight.requires_grad)
            table.num_embeddings = size
    return old_sizes


def train_rows_from(model: nn.Module, old_sizes: Mapping[str, int], handle: Optional[DomainFreeze] = None) -> DomainFreeze:
    """Let the rows past `old_sizes[name]` of each named table learn, with every older row's gradient masked to zero.

    Args:
        model: the model whose tables `grow_embeddings` grew.
        old_sizes: module name -> first new row (what `grow_embeddings` returned).
        handle: a `freeze_domains_except` handle to add to (its `remove()` then undoes both).

    Returns:
        The handle; `remove()` drops the masks and restores `requires_grad`.

    Example:
        >>> table = nn.Sequential()
        >>> table.add_module("user", nn.Embedding(4, 2))
        >>> handle = train_rows_from(table, {"user": 3})
        >>> table(torch.tensor([0, 3])).sum().backward()
        >>> table.user.weight.grad[:, 0].tolist()
        [0.0, 0.0, 0.0, 1.0]
    """
    handle = handle if handle is not None else DomainFreeze()
    modules = dict(model.named_modules())
    for name, first_new in old_sizes.items():
        weight = modules[name].weight
        mask = torch.zeros(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)  # (V, 1)
        mask[first_new:] = 1
        handle.flags.append((weight, weight.requires_grad))
        weight.requires_grad_(True)
        handle.hooks.append(weight.register_hook(mask.mul))
    return handle


@dataclass
class DomainAdditions:
    """What one onboarded domain adds to the base: encoder values and their embedding rows.

    Attributes:
        encoder: `MultiDomainEncoder.additions(...)` of the domain (its domain value and name, and the
            new values of each categorical column), plus `"domain_id"`: its id when it was trained.
        rows: saved key of each grown table weight (`base_model.model.embedding.tables.user.weight`) ->
            the rows of the added values, `(n_added, E)`, in the order the encoder lists them.
        features: saved key -> the feature whose values the rows follow (`user`, `domain_id`).
    """

    encoder: dict[str, Any]
    rows: dict[str, Tensor]
    features: dict[str, str]

    def write(self, folder: Path) -> None:
        """Write `encoder_additions.json` and `embeddings.safetensors` into `folder`."""
        document = {**self.encoder, "tables": self.features}
        (folder / ADDITIONS_FILE).write_text(json.dumps(document, indent=1), encoding="utf-8")
        save_file({k: v.detach().contiguous().clone() for k, v in self.rows.items()}, str(folder / EMBEDDINGS_FILE),
                  metadata={"format": "pt"})

    @classmethod
    def read(cls, folder: Path) -> Optional[DomainAdditions]:
        """The additions saved in a domain folder, or None when it has none (a domain trained with the base).

        Raises:
            ValueError: unreadable files, or rows that do not match the listed values.
        """
        path = folder / ADDITIONS_FILE
        if not path.is_file():
            return None
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path} is not valid JSON ({error}); download or save the domain again.") from None
        features = document.pop("tables", None)
        if not isinstance(features, dict):
            raise ValueError(f"{path} lists no tables; it was not written by this library. Save the domain again.")
        additions = cls(document, read_weights(folder / EMBEDDINGS_FILE), features)
        for key, feature in features.items():
            if key not in additions.rows or len(additions.rows[key]) != len(additions.values(feature)):
                raise ValueError(f"{folder / EMBEDDINGS_FILE} does not hold one row of {key} per added {feature} "
                                 "value; the folder's files do not belong together. Save the domain again.")
        return additions

    def values(self, feature: str) -> list:
        """The values added to `feature` (`domain_id`: the domain values)."""
        return self.encoder["domain"]["values"] if feature == DOMAIN_FEATURE else self.encoder["sparse"][feature]


DOMAIN_FEATURE = "domain_id"


def domain_additions(model: nn.Module, encoder: Any, base_encoder: Any, domain: str, rows: Any,
                     old_sizes: Mapping[str, int], key_prefix: str = "base_model.model.") -> DomainAdditions:
    """The additions of one new domain: values of `rows` (its train rows) unknown to `base_encoder`, and their rows.

    Args:
        model: the grown model (a `PeftModel`); its table weights are read.
        encoder: the grown `MultiDomainEncoder` the model was trained with.
        base_encoder: the encoder of the shared base (the top-level `data_encoder.json`).
        domain: the domain's name.
        rows: the domain's raw train rows.
        old_sizes: the grown tables (module names, as `grow_embeddings` returned them, relative to `model`).
        key_prefix: how a module name of `model` becomes a saved key.
    """
    added = encoder.additions(base_encoder, rows)
    added["domain_id"] = list(encoder.domain_names).index(domain)
    modules = dict(model.named_modules())
    ids = {e.name: {v: i + 1 for i, v in enumerate(e.values)} for e in encoder.sparse}
    ids[DOMAIN_FEATURE] = {v: i for i, v in enumerate(encoder.domain.values)}
    features, tensors = {}, {}
    for name in old_sizes:
        feature = name.rsplit(".", 1)[-1]
        values = added["domain"]["values"] if feature == DOMAIN_FEATURE else added["sparse"][feature]
        index = torch.tensor([ids[feature][v] for v in values], dtype=torch.long)
        key = _saved_key(name, key_prefix)
        features[key], tensors[key] = feature, modules[name].weight.detach()[index].cpu()  # (n_added, E)
    return DomainAdditions(added, tensors, features)


def compose(parts: Sequence[DomainAdditions]) -> tuple[list[dict[str, Any]], dict[str, Tensor]]:
    """Several domains' additions in order: each value once (the first domain holding it keeps its row).

    Returns:
        The encoder additions to apply in order (`MultiDomainEncoder.with_additions`), and saved key ->
        the rows to append to that table, `(n, E)`.
    """
    seen: dict[str, set] = {}
    rows: dict[str, list[Tensor]] = {}
    for part in parts:
        for key, feature in part.features.items():
            done = seen.setdefault(key, set())
            keep = [i for i, v in enumerate(part.values(feature)) if v not in done]
            shared = [i for i, v in enumerate(part.values(feature)) if v in done]
            if shared and key in rows and not _rows_agree(part, key, feature, shared, parts):
                warnings.warn(f"Domains loaded together added the same {feature} values with different {key} rows; "
                              "the first domain's rows are kept (onboard the later domain from a model holding the "
                              "earlier one to share them exactly).", stacklevel=3)
            rows.setdefault(key, []).append(part.rows[key][keep])
            done.update(part.values(feature))
    return [p.encoder for p in parts], {k: torch.cat(v) for k, v in rows.items()}


@torch.no_grad()
def append_rows(model: nn.Module, rows: Mapping[str, Tensor], key_prefix: str = "base_model.model.") -> None:
    """Append `rows[key]` to the table each saved key names, in place (how `load_domains` grows a base model).

    Raises:
        ValueError: a key naming no embedding table of `model`, or rows of another width.
    """
    modules = dict(model.named_modules())
    for key, extra in rows.items():
        name = key[len(key_prefix):-len(".weight")] if key.startswith(key_prefix) else key[:-len(".weight")]
        table = modules.get(name)
        if not isinstance(table, nn.Embedding) or table.embedding_dim != extra.shape[1]:
            raise ValueError(f"Saved embedding rows {key} {tuple(extra.shape)} fit no table of this base model "
                             f"({name!r} is {table!r}); build the base model from the run's feature spec.")
        grown = torch.cat([table.weight, extra.to(table.weight)])  # (V + n, E)
        table.weight = nn.Parameter(grown, requires_grad=table.weight.requires_grad)
        table.num_embeddings = grown.shape[0]


def _saved_key(module_name: str, key_prefix: str) -> str:
    """`base_model.model.embedding.tables.user` (in a `PeftModel`) or `embedding.tables.user` -> the saved weight key."""
    return f"{key_prefix}{module_name.removeprefix('base_model.model.')}.weight"


def _rows_agree(part: DomainAdditions, key: str, feature: str, shared: list[int], parts: Sequence[DomainAdditions]) -> bool:
    earlier = {}
    for other in parts:
        if other is part:
            break
        for i, v in enumerate(other.values(feature)):
            earlier.setdefault(v, other.rows[key][i])
    values = part.values(feature)
    return all(torch.equal(part.rows[key][i], earlier[values[i]]) for i in shared if values[i] in earlier)
