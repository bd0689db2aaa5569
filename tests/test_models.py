"""The model zoo, one parametrised table over every model: forward, backward, seeding, learning, MLoRA placement."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest
import torch
from peft import get_peft_model

import mlora_peft.models
from mlora_peft import MultiDomainLoraConfig, MultiDomainLoraLayer
from mlora_peft.features import DenseFeature, SequenceFeature, SparseFeature
from mlora_peft.models import build_model, list_models, model_options
from mlora_peft.data import synthetic_table

DOMAINS = 3
TINY_SPEC = [
    SparseFeature("user", 30, 4),
    SparseFeature("item", 40, 4),
    DenseFeature("price"),
    DenseFeature("stats", dim=2),
    SequenceFeature("history", 40, max_length=5, embedding_dim=4, pooling="max"),
    SparseFeature("domain_id", DOMAINS, 4),  # the paper embeds the domain id as a feature too
]
SYNTHETIC_SPEC = [SparseFeature("user", 500, 8), SparseFeature("item", 300, 8), DenseFeature("price"),
                  SparseFeature("domain_id", DOMAINS, 8)]
HIDDEN = (32, 16)
SMALL = {  # per-model options that keep the tiny models tiny (one table, no per-model code paths)
    "xdeepfm": dict(cin_layers=(8, 8)),
    "autoint": dict(attention_layers=2, head_dim=4),
    "shared_bottom": dict(tower_hidden=(8,)),
    "mmoe": dict(tower_hidden=(8,), num_experts=3),
    "ple": dict(tower_hidden=(8,)),
    "star": dict(aux_hidden=(8,)),
    "pepnet": dict(gate_hidden=8),
}
BACKBONES, BASELINES = list_models("backbones"), list_models("baselines")


def options(name: str, dropout: float = 0.1) -> dict:
    domains = {"num_domains": DOMAINS} if "num_domains" in model_options(name) else {}
    return dict(hidden=HIDDEN, dropout=dropout, **domains, **SMALL.get(name, {}))


def tiny_batch(rows: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    history = torch.randint(0, 40, (rows, 5), generator=g)
    history[0] = 0  # a row with an empty history
    return {
        "user": torch.randint(0, 30, (rows,), generator=g),
        "item": torch.randint(0, 40, (rows,), generator=g),
        "price": torch.rand(rows, generator=g),
        "stats": torch.rand(rows, 2, generator=g),
        "history": history,
        "domain_id": torch.randint(0, DOMAINS, (rows,), generator=g),
    }


@pytest.fixture(scope="module")
def synthetic() -> dict:
    table = synthetic_table(num_domains=DOMAINS, rows=3000, users=500, items=300, domain_effect=1.5, imbalance=1.0,
                            seed=0)  # raw ids: users < 500, items < 300, as SYNTHETIC_SPEC says
    return {("domain_id" if name == "domain" else name): torch.tensor(table.column(name).to_numpy())
            for name in table.column_names}


def test_names():
    assert list_models() == ["mlp", "wdl", "nfm", "deepfm", "dcn", "dcnv2", "xdeepfm", "autoint", "fibinet", "pnn",
                             "shared_bottom", "mmoe", "ple", "star", "pepnet"]
    assert list_models("backbones") + list_models("baselines") == list_models()


@pytest.mark.parametrize("name", list_models())
def test_forward_and_backward(name):
    model = build_model(name, TINY_SPEC, **options(name))
    out = model(tiny_batch(12))
    assert out.shape == (12,) and torch.isfinite(out).all()
    torch.nn.functional.binary_cross_entropy_with_logits(out, torch.rand(12).round()).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


@pytest.mark.parametrize("name", list_models())
def test_seeded_builds_and_calls_are_identical_and_share_nothing(name):
    torch.manual_seed(7)
    first = build_model(name, TINY_SPEC, **options(name))
    torch.manual_seed(7)
    second = build_model(name, TINY_SPEC, **options(name))
    for (key, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=key)
    assert not {p.data_ptr() for p in first.parameters()} & {p.data_ptr() for p in second.parameters()}
    batch = tiny_batch(10)
    torch.manual_seed(3)
    out_first = first(batch)  # training mode: dropout draws from the seeded generator
    torch.manual_seed(3)
    torch.testing.assert_close(out_first, second(batch), rtol=0, atol=0)


def train(model, data: dict, steps: int, lr: float, rows: int = 256) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        pick = torch.randint(0, data["label"].shape[0], (rows,), generator=g)
        batch = {k: v[pick] for k, v in data.items()}
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), batch["label"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@torch.no_grad()
def eval_loss(model, data: dict) -> float:
    model.eval()
    return torch.nn.functional.binary_cross_entropy_with_logits(model(data), data["label"]).item()


@pytest.mark.parametrize("name", list_models())
def test_loss_falls_on_a_synthetic_multi_domain_task(name, synthetic):
    model = build_model(name, SYNTHETIC_SPEC, **options(name))
    rate = synthetic["label"].mean()
    constant = -(rate * rate.log() + (1 - rate) * (1 - rate).log()).item()  # best constant prediction
    before = eval_loss(model, synthetic)
    train(model, synthetic, steps=60, lr=1e-2)
    after = eval_loss(model, synthetic)
    assert after < before - 0.05 and after < constant - 0.05, (before, after, constant)


@pytest.mark.parametrize("name", BACKBONES)
def test_default_mlora_placement_is_the_deep_towers_hidden_layers_and_trains(name, synthetic):
    model = build_model(name, SYNTHETIC_SPEC, **options(name, dropout=0.0))
    peft_model = get_peft_model(model, MultiDomainLoraConfig(num_domains=DOMAINS))
    adapted = [n.removeprefix("base_model.model.") for n, m in peft_model.named_modules()
               if isinstance(m, MultiDomainLoraLayer)]
    assert adapted == [f"deep.{3 * i}" for i in range(len(HIDDEN))]
    assert [m.out_features for m in peft_model.modules() if isinstance(m, MultiDomainLoraLayer)] == list(HIDDEN)

    before = eval_loss(peft_model, synthetic)  # routed by batch["domain_id"]
    frozen = {n: p.detach().clone() for n, p in peft_model.named_parameters() if not p.requires_grad}
    train(peft_model, synthetic, steps=25, lr=3e-2)
    assert eval_loss(peft_model, synthetic) < before - 0.005
    for n, p in peft_model.named_parameters():
        if n in frozen:
            torch.testing.assert_close(p, frozen[n], rtol=0, atol=0)
    for layer in (m for m in peft_model.modules() if isinstance(m, MultiDomainLoraLayer)):
        assert layer.mdlora_B["default"].abs().amax(dim=(1, 2)).min() > 0  # every domain's B left zero


def test_unknown_names_and_options_list_what_is_allowed():
    with pytest.raises(ValueError, match="choose one of .*'mlp'.*'pepnet'"):
        build_model("dien", TINY_SPEC)
    with pytest.raises(TypeError, match=r"does not take \['hiden'\]; its options are: hidden=.*dropout="):
        build_model("mlp", TINY_SPEC, hiden=[8])
    with pytest.raises(TypeError, match=r"needs \['num_domains'\].*num_domains, hidden="):
        build_model("mmoe", TINY_SPEC)
    with pytest.raises(ValueError, match=r"hidden=\[\] must be a non-empty list"):
        build_model("mlp", TINY_SPEC, hidden=[])
    with pytest.raises(ValueError, match="dropout=1.5"):
        build_model("dcn", TINY_SPEC, dropout=1.5)


def test_batch_errors_name_the_column_and_the_fix():
    model = build_model("deepfm", TINY_SPEC, hidden=[4])
    batch = tiny_batch(4)
    with pytest.raises(ValueError, match="no column 'user'"):
        model({k: v for k, v in batch.items() if k != "user"})
    with pytest.raises(TypeError, match="pass int64 ids"):
        model({**batch, "item": batch["item"].float()})
    with pytest.raises(ValueError, match=r"dim=2, so it wants shape \(N, 2\)"):
        model({**batch, "stats": batch["price"]})
    with pytest.raises(ValueError, match="one embedding_dim for every id feature"):
        build_model("fibinet", [SparseFeature("user", 5, 4), SparseFeature("item", 5, 8)])


@pytest.mark.parametrize("module", ["mlora_peft.models", *(f"mlora_peft.models.{m.name}"
                                    for m in pkgutil.iter_modules(mlora_peft.models.__path__))])
def test_docstring_examples_run(module):
    assert doctest.testmod(importlib.import_module(module)).failed == 0
