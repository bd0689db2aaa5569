"""Onboarding a new domain onto a trained run: grow the vocabularies, train only what is new, ship only what is new.

`recipes/add_domain.py` is a thin command line over `onboard`, which:

1. rebuilds the run's model and encoder from its folder alone (`rebuild_model`);
2. reads the new domain's data with the run's data settings (`data.*` overrides: for an Amazon run,
   `data.path=FOLDER` holding the new category's file) and splits it as training does;
3. grows the encoder with the new train rows (new ids appended, old ids and dense statistics kept),
   then the model: new adapter slices, new embedding rows (the mean of the trained rows), a new
   `domain_id` row;
4. trains only those, every other row's gradient masked to zero (Adam without weight decay: the
   other domains stay bit-identical, which is checked), early stopping on the new domain's
   validation AUC;
5. reports its test AUC beside the shared model's (the grown model before training: no adapter for
   the domain, mean rows) and a single-domain model trained from scratch on the same split;
6. saves `OUT/adapter` (the run's save, copied as it is, plus `domains/<new>/`) and pushes only the
   new domain's folder.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
import warnings
from pathlib import Path
from typing import Union

import pyarrow as pa
import pyarrow.compute as pc
import torch
import yaml
from accelerate import PartialState
from torch import nn

from ..data import EmptyDomainWarning, MultiDomainData, MultiDomainEncoder, amazon_interactions, load_multidomain
from ..data import raw_splits as split_raw
from ..data.splits import DEFAULT_FRACTIONS
from ..data.table_encoder import DOMAIN_COLUMN, LABEL_COLUMN
from ..evaluation import evaluate, logits_of
from ..growth import domain_additions, grow_embeddings, train_rows_from
from ..hub import push_to_hub, save_pretrained
from .build import EmbeddingL2, make_accelerator
from .checkpoint import TrainingState, write_json_atomic
from .config import TrainConfig, apply_overrides, from_dict
from .loop import end_epoch, train
from .run_dir import prepare_output_dir
from .runs import rebuild_model

ONBOARDING_SOURCES = "amazon, or a table (file(s) or a Hub dataset id)"


def onboard(run_dir: Union[str, Path], output_dir: Union[str, Path], overrides: list[str] = ()) -> dict:
    """Add the domains of new data to a trained run, training only what is new; returns the results.

    Args:
        run_dir: a training run's `output_dir` (or an earlier onboarding's).
        output_dir: where the results, the single-domain baseline and the grown adapter go.
        overrides: dotted `key=value` settings over the run's config: `data.*` describe the new data
            (`data.path` and `data.categories` start empty), `train.*` the onboarding's training,
            `hub.push_to_hub` where to push the new domain's folder, `compare_with_plain` the baseline.

    Returns:
        `results.json`'s content: train.py's schema for the new domains, plus `shared_model`,
        `single_domain`, `onboarded_from`, `seconds` and `folder_bytes`.

    Raises:
        ValueError: a data source that cannot hold a new domain, new data holding a known domain, or bad
            overrides (named).
        OutputDirError: `output_dir` holds another run.
    """
    started = time.perf_counter()
    run_dir, out_dir = Path(run_dir), Path(output_dir)
    base_cfg, model, encoder = rebuild_model(run_dir, is_trainable=True)
    if base_cfg.mlora.mode == "none":
        raise ValueError(f"{run_dir} holds a plain model (mlora.mode=none): it has no adapter to add a domain to. "
                         "Onboard onto an MLoRA run (mlora.mode=joint or two_stage).")
    cfg = onboard_config(base_cfg, out_dir, overrides)
    accelerator = make_accelerator(mixed_precision=cfg.train.mixed_precision)
    prepare_output_dir(accelerator, out_dir, resume=False, overwrite=cfg.overwrite)
    torch.manual_seed(cfg.train.seed)
    if accelerator.is_main_process:
        (out_dir / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))

    # -- data: split as training does, grow the encoder on the new train rows
    raw = new_domain_splits(cfg, encoder)
    grown = encoder.grow(raw["train"])
    new_names = list(grown.domain_names[len(encoder.domain_names):])
    data = encode_splits(raw, grown, cfg)
    accelerator.print(f"New domain(s) {new_names}: {data.splits['train'].num_rows} train rows; "
                      + ", ".join(f"{e.name} +{e.vocab_size - o.vocab_size} ids" for o, e in zip(encoder.sparse,
                                                                                                 grown.sparse)))

    # -- model: grow, freeze all but the new rows and slices
    old_sizes = grow_model(model, grown, cfg.model.embed_domain)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()}
    freeze = model.base_model.freeze_domains_except(new_names)
    train_rows_from(model, old_sizes, freeze)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.train.lr)  # no decay
    names = list(grown.domain_names)
    per_process = max(cfg.train.batch_size // accelerator.num_processes, 1)
    loaders = {s: data.loader(s, batch_size=per_process, seed=cfg.train.seed, num_processes=accelerator.num_processes)
               for s in ("train", "validation", "test")}
    epoch_order = loaders["train"].batch_sampler  # the shuffle is fixed by (seed, epoch)
    model, optimizer, *prepared = accelerator.prepare(model, optimizer, *loaders.values())
    loaders = dict(zip(loaders, prepared))
    shared = evaluate(model, loaders["test"], accelerator, names)  # before training: no adapter for the new domain
    fit_new_domains(model, optimizer, loaders, epoch_order, names, cfg, accelerator)
    freeze.remove()
    report = evaluate(model, loaders["test"], accelerator, names)
    unwrapped = accelerator.unwrap_model(model)
    check_unchanged(unwrapped, frozen, old_sizes, len(encoder.domain_names))
    seconds = time.perf_counter() - started

    # -- the single-domain baseline: a plain model from scratch on the same split
    single = None
    if cfg.compare_with_plain:
        single_cfg = dataclasses.replace(cfg, mlora=dataclasses.replace(cfg.mlora, mode="none"))
        single = train(single_cfg, out_dir / "single_domain", data=encode_splits(raw, grown, cfg, fit=True))

    # -- ship only what is new
    base_encoder = MultiDomainEncoder.load(run_dir / "adapter")  # the top-level base: additions are relative to it
    additions = {name: domain_additions(unwrapped, grown, base_encoder, name, _rows_of(raw["train"], grown, name),
                                        old_sizes) for name in new_names}
    results = {**report, "config": dataclasses.asdict(cfg), "onboarded_from": str(run_dir), "new_domains": new_names,
               "shared_model": shared, "single_domain": single and {k: single[k] for k in ("per_domain", "mean_auc")},
               "seconds": round(seconds, 1), "old_domains_unchanged": True}
    if accelerator.is_main_process:
        adapter = out_dir / "adapter"
        shutil.copytree(run_dir / "adapter", adapter)  # the base and the other domains, byte for byte
        save_pretrained(unwrapped, adapter, domains=new_names, additions=additions)
        if cfg.hub.push_to_hub:
            push_to_hub(unwrapped, cfg.hub.push_to_hub, domains=new_names, additions=additions, private=cfg.hub.private,
                        revision=cfg.hub.revision, commit_message=f"Onboard {new_names}")
        results["folder_bytes"] = {"root": _bytes(adapter, recursive=False),
                                   **{n: _bytes(adapter / "domains" / n) for n in new_names}}
        write_json_atomic(out_dir / "results.json", results)
        accelerator.print(summary(results))
    PartialState().destroy_process_group()
    return results


def onboard_config(run_cfg: TrainConfig, output_dir: Path, overrides: list[str]) -> TrainConfig:
    """The run's config with `output_dir`, empty `data.path`/`data.categories` and no push, then `overrides`.

    Raises:
        ValueError: bad overrides, a source that cannot bring a new domain, or an Amazon run without `data.path`.
    """
    values = dataclasses.asdict(run_cfg)
    values.update(output_dir=str(output_dir), overwrite=False)
    values["data"].update(path=None, categories=None)
    values["hub"].update(push_to_hub=None, revision=None)
    cfg = from_dict(apply_overrides(values, list(overrides)))
    if cfg.data.source in ("synthetic", "movielens"):
        raise ValueError(f"data.source={cfg.data.source!r} cannot bring a new domain; onboard from {ONBOARDING_SOURCES} "
                         "(e.g. data.source=new_domain.csv).")
    if cfg.data.source == "amazon" and cfg.data.path is None:
        raise ValueError("An Amazon run onboards a category from a folder: pass data.path=FOLDER holding its file "
                         "(e.g. Office_Products.csv.gz), or data.categories=[...] to pick some of its files.")
    return cfg


def new_domain_splits(cfg: TrainConfig, encoder: MultiDomainEncoder) -> dict[str, pa.Table]:
    """The new data's raw train / validation / test rows, read and split as training reads and splits."""
    d = cfg.data
    if d.source == "amazon":
        rows, _ = amazon_interactions(d.path, d.categories, seed=d.seed, user_fraction=d.user_fraction)
        return split_raw(rows, label="label", domain="category", sparse=["user", "item"], dense=[],
                         split=DEFAULT_FRACTIONS, seed=d.seed)
    return split_raw(d.source, label=str(encoder.label), domain=encoder.domain.column,
                     sparse=[e.name for e in encoder.sparse], dense=[e.name for e in encoder.dense], seed=d.seed)


def encode_splits(raw: dict[str, pa.Table], encoder: MultiDomainEncoder, cfg: TrainConfig,
                  fit: bool = False) -> MultiDomainData:
    """`raw` encoded with `encoder`, or with `fit` by a new encoder on its columns fitted on its train split
    (the single-domain model's)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyDomainWarning)  # the old domains have no rows in the new data
        return load_multidomain(raw, label=str(encoder.label), domain=encoder.domain.column,
                                sparse=[e.name for e in encoder.sparse], dense=[e.name for e in encoder.dense],
                                split="provided", seed=cfg.data.seed, embedding_dim=cfg.model.embedding_dim,
                                encoder=None if fit else encoder)


def grow_model(model: nn.Module, encoder: MultiDomainEncoder, embed_domain: bool) -> dict[str, int]:
    """Add the encoder's new domains to the adapter and grow every embedding table to its vocabulary.

    Returns:
        Module name -> the table's old number of rows (`grow_embeddings`).
    """
    known = model.base_model.routing_config.domain_names
    model.base_model.add_domains([n for n in encoder.domain_names if n not in known])
    sizes = {e.name: e.vocab_size for e in encoder.sparse}
    if embed_domain:
        sizes[DOMAIN_COLUMN] = len(encoder.domain_names)
    return grow_embeddings(model, sizes, skip_rows={DOMAIN_COLUMN: 0})


def fit_new_domains(model: nn.Module, optimizer: torch.optim.Optimizer, loaders: dict, epoch_order,
                    domain_names: list[str], cfg: TrainConfig, accelerator) -> TrainingState:
    """Train with early stopping on validation (`train.early_stopping_metric` over the new domains); keeps the best epoch.

    A constant learning rate (`train.lr`; the run's schedule is not replayed) and Adam without
    weight decay, with `train.embedding_l2` when set; batch norms keep their statistics.
    """
    state, loss_fn = TrainingState(), nn.BCEWithLogitsLoss()
    penalty = EmbeddingL2(model, cfg.train.embedding_l2) if cfg.train.embedding_l2 else None  # old rows: masked
    best = None
    while state.epoch < cfg.train.max_epochs and state.waited < cfg.train.patience:
        model.train()
        for module in model.modules():  # frozen statistics: a batch norm would move the other domains
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        epoch_order.set_epoch(state.epoch)  # the shuffle of each epoch, as in training
        for batch in loaders["train"]:
            loss = loss_fn(logits_of(model(batch)), batch[LABEL_COLUMN])
            if penalty is not None:
                loss = loss + penalty.pop(len(batch[LABEL_COLUMN]))
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
        report = evaluate(model, loaders["validation"], accelerator, domain_names)
        score = report[cfg.train.early_stopping_metric]
        improved = end_epoch(state, score, cfg.train)
        if improved:
            best = {k: v.detach().clone() for k, v in accelerator.unwrap_model(model).state_dict().items()}
        accelerator.print(f"[onboard] epoch {state.epoch}: loss {loss.item():.4f}, validation "
                          f"{cfg.train.early_stopping_metric} {score:.4f}{' (best)' if improved else ''}")
    if best is not None:
        accelerator.unwrap_model(model).load_state_dict(best)
    return state


def check_unchanged(model: nn.Module, before: dict[str, torch.Tensor], old_sizes: dict[str, int], old_domains: int) -> None:
    """Raise if any weight of the old domains moved: base weights, old adapter slices, old embedding rows.

    Raises:
        RuntimeError: naming the first weight that moved (an optimiser with weight decay, or a batch norm).
    """
    grown = {f"{name}.weight": rows for name, rows in old_sizes.items()}
    for name, param in model.named_parameters():
        old = before[name]
        if name in grown:
            old, after = old[:grown[name]], param.detach()[:grown[name]]  # (old rows, E)
        elif "mdlora_" in name:
            old, after = old[:old_domains], param.detach()[:old_domains]
        else:
            after = param.detach()
        if not torch.equal(old, after):
            raise RuntimeError(f"{name} changed while onboarding; the other domains must stay bit-identical. Use Adam "
                               "or SGD without weight decay, and no batch statistics in training mode.")


def summary(results: dict) -> str:
    """The new domains' test AUC: onboarded, the shared model without an adapter, the single-domain model."""
    lines = [f"Onboarded in {results['seconds']:.0f} s. Test AUC of the new domain(s):",
             f"{'domain':<24}{'onboarded':>11}{'shared':>9}{'single-domain':>15}"]
    for name in results["new_domains"]:
        single = (results["single_domain"] or {}).get("per_domain", {})
        cells = [results["per_domain"][name]["auc"], results["shared_model"]["per_domain"][name]["auc"],
                 next(iter(single.values()))["auc"] if single else None]
        lines.append(f"{name:<24}" + "".join(f"{'-' if v is None else f'{v:.4f}':>{w}}" for v, w in zip(cells, (11, 9, 15))))
    sizes = results.get("folder_bytes", {})
    lines += [f"{'folder ' + k:<24}{v / 1024:>10.1f} KB" for k, v in sizes.items()]
    return "\n".join(lines)


def _rows_of(train: pa.Table, encoder: MultiDomainEncoder, name: str) -> pa.Table:
    value = encoder.domain.values[list(encoder.domain_names).index(name)]
    column = train.column(encoder.domain.column)
    return train.filter(pc.equal(column.cast(pa.string()) if encoder.domain.kind == "str" else column, value))


def _bytes(folder: Path, recursive: bool = True) -> int:
    files = folder.rglob("*") if recursive else folder.iterdir()
    return sum(p.stat().st_size for p in files if p.is_file())
