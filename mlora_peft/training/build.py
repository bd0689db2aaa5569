"""Building a run's pieces from a `TrainConfig`: the data, the model, the optimiser and the `Accelerator`."""

from __future__ import annotations

import os
import warnings
from typing import Optional

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from peft import get_peft_model
from torch import nn

from .. import data as data_lib
from .. import models
from ..tuner.config import MultiDomainLoraConfig
from ..data import MultiDomainData, MultiDomainEncoder
from ..data.table_encoder import DOMAIN_COLUMN
from ..features import Feature, SparseFeature
from .config import TrainConfig, rank_divisor_of

BUILT_IN_SOURCES = ("synthetic", "movielens", "amazon")


def load_data(cfg: TrainConfig, encoder: Optional[MultiDomainEncoder] = None) -> MultiDomainData:
    """The encoded train / validation / test splits the config names.

    Args:
        cfg: the config (its `data` section and `model.embedding_dim`).
        encoder: a fitted encoder saved by training (`data_encoder.json`) to encode a table source with
            instead of fitting a new one: values it has not seen map to the unknown id, as in training.
            Built-in sources are generated or read the same way each time; their freshly fitted
            encoder must equal `encoder`.

    Returns:
        The data, with `.splits`, `.domain_names`, `.feature_spec` and `.encoder`.

    Raises:
        ValueError: a required key (data.path, data.label, data.domain) is unset, or a built-in source
            now encodes differently from `encoder`.

    Example:
        >>> from mlora_peft.training import TrainConfig
        >>> cfg = TrainConfig()
        >>> cfg.data.rows, cfg.data.num_domains = 1000, 2
        >>> load_data(cfg).domain_names
        ('domain_0', 'domain_1')
    """
    d, dim = cfg.data, cfg.model.embedding_dim
    if d.source == "synthetic":
        data = data_lib.make_synthetic(num_domains=d.num_domains, rows=d.rows, domain_effect=d.domain_effect,
                                       imbalance=d.imbalance, seed=d.seed, embedding_dim=dim)
    elif d.source == "movielens":
        data = data_lib.load_movielens(_required(d.path, "data.path"), domain=d.domain or "gender",
                                       label=d.label or "rating==5", seed=d.seed, embedding_dim=dim,
                                       side_features=d.side_features)
    elif d.source == "amazon":
        data = data_lib.load_amazon(_required(d.path, "data.path"), categories=d.categories, seed=d.seed,
                                    embedding_dim=dim, user_fraction=d.user_fraction)
    else:
        return data_lib.load_multidomain(d.source, label=_required(d.label, "data.label"),
                                         domain=_required(d.domain, "data.domain"), sparse=d.sparse, dense=d.dense,
                                         seed=d.seed, embedding_dim=dim, encoder=encoder)
    if encoder is not None and data.encoder.to_json() != encoder.to_json():
        raise ValueError(f"data.source={d.source!r} now encodes differently from the run's saved data_encoder.json "
                         "(the files changed since training); evaluate on the data the run was trained on.")
    return data


def build_model(cfg: TrainConfig, data: MultiDomainData) -> nn.Module:
    """The zoo model the config names, wrapped with MLoRA on its deep tower unless `mlora.mode` is none.

    Raises:
        ValueError: a multi-domain baseline with an MLoRA mode, or the zoo's own errors.

    Example:
        >>> from mlora_peft.training import TrainConfig
        >>> cfg = TrainConfig()
        >>> cfg.data.rows = 1000
        >>> model = build_model(cfg, load_data(cfg))
        >>> type(model).__name__
        'PeftModel'
    """
    model = build_backbone(cfg, model_features(cfg, data), data.num_domains)
    if cfg.mlora.mode == "none":
        return model
    adapter = MultiDomainLoraConfig(domain_names=list(data.domain_names), r=cfg.mlora.r,
                                    rank_divisor=rank_divisor_of(cfg), lora_dropout=cfg.mlora.dropout,
                                    domain_bias=cfg.mlora.domain_bias, train_base=True)
    return get_peft_model(model, adapter)


def model_features(cfg: TrainConfig, data: MultiDomainData) -> list[Feature]:
    """Every feature the model embeds: the data's, plus `domain_id` when `model.embed_domain` (saved as the run's spec).

    Example:
        >>> from mlora_peft.training import TrainConfig
        >>> cfg = TrainConfig()
        >>> cfg.data.rows = 1000
        >>> [f.name for f in model_features(cfg, load_data(cfg))][-1]
        'domain_id'
    """
    features = list(data.feature_spec)
    if cfg.model.embed_domain:
        features.append(SparseFeature(DOMAIN_COLUMN, vocab_size=data.num_domains, embedding_dim=cfg.model.embedding_dim))
    return features


def build_backbone(cfg: TrainConfig, features: list[Feature], num_domains: int) -> nn.Module:
    """The plain zoo model of `cfg.model` on `features` (a run's saved `feature_spec.json` rebuilds it alone).

    Raises:
        ValueError: a multi-domain baseline with an MLoRA mode, or the zoo's own errors.
    """
    m = cfg.model
    options = {"hidden": m.hidden, "dropout": m.dropout, **m.options}
    if m.name in models.list_models("baselines"):
        if cfg.mlora.mode != "none":
            raise ValueError(f"model.name={m.name!r} is a multi-domain baseline: compare it with mlora.mode=none.")
        options["num_domains"] = num_domains
    return models.build_model(m.name, features, **options)


def make_optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam with two parameter groups: the backbone (group 0) and the adapters (group 1, names with `mdlora_`).

    Example:
        >>> make_optimizer(nn.Linear(2, 1), lr=1e-3).param_groups[1]["params"]
        []
    """
    base = [p for n, p in model.named_parameters() if "mdlora_" not in n]
    adapters = [p for n, p in model.named_parameters() if "mdlora_" in n]
    return torch.optim.Adam([{"params": base}, {"params": adapters}], lr=lr)


def make_accelerator(**kwargs) -> Accelerator:
    """An `Accelerator` that uses every launched process, CPU-only machines included.

    Launched with several processes and no GPU, accelerate would otherwise give each process the
    whole data and a model of its own; here they share one model over gloo instead. accelerate
    engages FSDP on GPUs only: an FSDP config launched on CPUs runs as data parallel (every process
    holds the whole model), with a warning saying so.

    Args:
        **kwargs: passed to `Accelerator`.

    Raises:
        RuntimeError: accelerate set up fewer processes than were launched.

    Example:
        >>> make_accelerator().num_processes
        1
    """
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    accelerator = Accelerator(cpu=launched > 1 and not torch.accelerator.is_available(), **kwargs)
    if accelerator.num_processes != launched:
        raise RuntimeError(f"{launched} processes were launched but accelerate set up {accelerator.num_processes}, "
                           "so each would work alone on all the data. Launch with `accelerate launch --multi_gpu` "
                           "on GPUs, or set ACCELERATE_USE_CPU=true for several CPU processes.")
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and (
            accelerator.distributed_type != DistributedType.FSDP):
        warnings.warn(f"An FSDP config was launched, but accelerate set up {accelerator.distributed_type.value}: it "
                      "engages FSDP on GPUs only, so here every process holds the whole model (data parallel).",
                      stacklevel=2)
    return accelerator


class EmbeddingL2:
    """DeepCTR's `l2_reg_embedding` for any model: an L2 penalty on the embedding rows a batch looks up, or on
    whole tables.

    scope "lookup": forward hooks on every `nn.Embedding` of `model` (found through any PEFT or accelerate
    wrapper) sum the squares of what training-mode lookups return (eval mode adds nothing); `pop` returns
    `weight * that sum / batch_rows` and starts the next sum. scope "table": `pop` returns `weight * the sum
    of squares of every embedding table, all rows` each training step, whatever the batch looked up: what
    DeepCTR's Keras `embeddings_regularizer=l2(...)` and DeepCTR-Torch's `add_regularization_weight` add.

    Example:
        >>> model = nn.Sequential(nn.Embedding(10, 4))
        >>> penalty = EmbeddingL2(model, weight=1e-3)
        >>> loss = model(torch.tensor([1, 2])).sum() + penalty.pop(batch_rows=2)
        >>> whole = EmbeddingL2(model, 1e-3, "table")
        >>> torch.equal(whole.pop(batch_rows=2), 1e-3 * model[0].weight.pow(2).sum())
        True
    """

    def __init__(self, model: nn.Module, weight: float, scope: str = "lookup") -> None:
        if scope not in ("lookup", "table"):
            raise ValueError(f"scope={scope!r} is not allowed; use 'lookup' (rows a batch looks up) or 'table'.")
        self.weight, self.total, self.scope = weight, 0.0, scope
        self.tables = [m for m in model.modules() if isinstance(m, nn.Embedding)]
        self.handles = [m.register_forward_hook(self._add) for m in self.tables] if scope == "lookup" else []

    def _add(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if module.training:
            self.total = self.total + output.float().pow(2).sum()

    def pop(self, batch_rows: int) -> torch.Tensor:
        """The penalty of this step: `weight * sum / batch_rows` (lookup, then a new sum) or `weight * sum of
        every table's squares` (table)."""
        if self.scope == "table":
            return self.weight * sum(m.weight.float().pow(2).sum() for m in self.tables)
        total, self.total = self.total, 0.0
        return self.weight * total / batch_rows


def _required(value: Optional[str], key: str) -> str:
    if value is None:
        raise ValueError(f"{key} must be set for this data source (e.g. {key}=...).")
    return value
