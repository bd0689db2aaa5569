"""Routing travels with each call: threads, asyncio, activation checkpointing, torch.compile, both paths."""

from __future__ import annotations

import asyncio
import copy

import pytest
import torch
from peft import get_peft_model
from torch import nn
from torch.utils.checkpoint import checkpoint

import mlora_peft
import mlora_peft.tuner.layer
from mlora_peft import MultiDomainLoraConfig, MultiDomainLoraLayer
from mlora_peft.models import DeepTower
from mlora_peft.tuner.routing import current_routing
from tests.concurrency import call_from_threads
from tests.models import PlainMLP
from tests.reference import model_reference

DOMAINS = 4


def adapted_mlp(**kwargs):
    config = dict(num_domains=DOMAINS, r=2, init_weights=False) | kwargs
    return get_peft_model(PlainMLP(), MultiDomainLoraConfig(**config))


# ------------------------------------------------------------------------------------ threads, asyncio
def test_threads_sharing_one_model_get_their_own_outputs():
    model = adapted_mlp().eval()
    generator = torch.Generator().manual_seed(0)
    calls = []
    for i in range(600):  # mixed batches, one-domain batches (merged weights), sizes that differ
        rows = 1 + i % 13
        ids = torch.full((rows,), i % DOMAINS) if i % 5 == 0 else torch.randint(0, DOMAINS, (rows,), generator=generator)
        calls.append((torch.randn(rows, 6, generator=generator), ids))
    with torch.no_grad():
        expected = [model(x, domain_ids=ids) for x, ids in calls]

    def call(i: int) -> torch.Tensor:
        x, ids = calls[i]
        with torch.no_grad():
            if i % 2:
                return model(x, domain_ids=ids)
            with mlora_peft.domain_context(ids):
                return model(x)

    results = call_from_threads(call, len(calls), threads=4)  # 4 x 150
    for got, want in zip(results, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert current_routing() is None


def test_asyncio_tasks_keep_their_own_domain_context():
    model = adapted_mlp().eval()
    x = torch.randn(5, 6)
    expected = {d: model(x, domain_ids=d) for d in range(DOMAINS)}

    async def task(domain: int) -> list[torch.Tensor]:
        outputs = []
        with mlora_peft.domain_context(domain):
            for _ in range(3):
                await asyncio.sleep(0)  # the other tasks run in between, each with its own context
                outputs.append(model(x))
        return outputs

    async def main() -> list[list[torch.Tensor]]:
        return await asyncio.gather(*(task(d) for d in range(DOMAINS)))

    for domain, outputs in enumerate(asyncio.run(main())):
        for out in outputs:
            torch.testing.assert_close(out, expected[domain], rtol=0, atol=0)


def test_a_failing_call_leaves_no_routing_behind():
    model = adapted_mlp()
    with pytest.raises(RuntimeError):
        model(torch.randn(3, 5), domain_ids=[0, 1, 2])  # wrong width: the forward raises inside
    assert current_routing() is None
    with pytest.raises(ValueError, match="no domain ids were given"):
        model(torch.randn(3, 6))


# ------------------------------------------------------------------------------ activation checkpointing
class UserBlockModel(nn.Module):
    """A user model whose adapted block may run under `torch.utils.checkpoint`."""

    def __init__(self, checkpointing: dict | None) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU())
        self.head = nn.Linear(8, 1)
        self.checkpointing = checkpointing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.block(x) if self.checkpointing is None else checkpoint(self.block, x, **self.checkpointing)
        return self.head(h).squeeze(-1)


class TowerModel(nn.Module):
    """The zoo's DeepTower, each hidden block optionally checkpointed (`DeepTower.block`)."""

    def __init__(self, checkpointing: dict | None) -> None:
        super().__init__()
        self.tower = DeepTower(6, (16, 8), dropout=0.0)
        self.head = nn.Linear(8, 1)
        self.checkpointing = checkpointing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index in range(2):
            if self.checkpointing is None:
                x = self.tower.block(index, x)
            else:
                x = checkpoint(self.tower.block, index, x, **self.checkpointing)
        return self.head(x).squeeze(-1)


def _adapted(model_cls, checkpointing: dict | None):
    torch.manual_seed(0)  # the same weights with and without checkpointing
    config = MultiDomainLoraConfig(num_domains=DOMAINS, r=2, init_weights=False, train_base=True)
    return get_peft_model(model_cls(checkpointing), config)


def _gradients(model, x, ids):
    model.zero_grad()
    model(x, domain_ids=ids).sum().backward()
    return {name: param.grad.clone() for name, param in model.named_parameters()}


@pytest.mark.parametrize("model_cls", [UserBlockModel, TowerModel])
def test_checkpointed_blocks_give_the_gradients_of_no_checkpointing(model_cls):
    x, ids = torch.randn(12, 6), torch.tensor([0, 3, 1, 2] * 3)
    with_context = dict(use_reentrant=False, context_fn=mlora_peft.checkpoint_context_fn)
    expected = _gradients(_adapted(model_cls, None), x, ids)
    got = _gradients(_adapted(model_cls, with_context), x, ids)
    assert got.keys() == expected.keys() and any("mdlora_A" in name for name in got)
    for name, want in expected.items():
        torch.testing.assert_close(got[name], want, rtol=0, atol=1e-6, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("model_cls", [UserBlockModel, TowerModel])
@pytest.mark.parametrize("use_reentrant", [False, True])
def test_checkpointing_without_the_context_fn_names_the_fix(model_cls, use_reentrant):
    model = _adapted(model_cls, dict(use_reentrant=use_reentrant))
    x = torch.randn(8, 6, requires_grad=use_reentrant)  # reentrant checkpointing needs an input that needs grad
    out = model(x, domain_ids=torch.tensor([0, 1, 2, 3] * 2)).sum()
    with pytest.raises(ValueError, match=r"use_reentrant=False, context_fn=mlora_peft.checkpoint_context_fn"):
        out.backward()


def test_context_fn_outside_a_routed_call_is_harmless():
    forward_context, recompute_context = mlora_peft.checkpoint_context_fn()
    with forward_context, recompute_context:
        assert current_routing() is None


# ------------------------------------------------------------------------------------- torch.compile
def test_compiled_fullgraph_forward_and_backward_equal_eager():
    torch._dynamo.reset()
    model = adapted_mlp(train_base=True)
    x, ids = torch.randn(10, 6), torch.tensor([0, 1, 2, 3, 3, 1, 0, 2, 2, 1])
    eager = _gradients(model, x, ids)
    eager_out = model(x, domain_ids=ids)
    compiled = torch.compile(model, fullgraph=True)
    model.zero_grad()
    out = compiled(x, domain_ids=ids)
    out.sum().backward()
    torch.testing.assert_close(out, eager_out, rtol=0, atol=1e-5)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, eager[name], rtol=0, atol=1e-5, msg=lambda m: f"{name}: {m}")
    flipped = ids.flip(0)  # other ids, same graph: the ids are an input of the compiled program
    torch.testing.assert_close(compiled(x, domain_ids=flipped), model(x, domain_ids=flipped), rtol=0, atol=1e-5)
    assert current_routing() is None


# ----------------------------------------------------------------------- both paths against the reference
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("domain_bias", [True, False])
def test_both_paths_match_the_per_row_reference(masked, dtype, domain_bias, monkeypatch):
    monkeypatch.setattr(mlora_peft.tuner.layer, "uses_masked_path", lambda device, codes: masked)
    torch.manual_seed(0)
    model = adapted_mlp(train_base=True, domain_bias=domain_bias, lora_alpha=3.0)
    reference_base = copy.deepcopy(model.base_model.model)
    model, reference_base = model.to(dtype), reference_base.to(dtype)
    x, ids = torch.randn(23, 6, dtype=dtype), torch.randint(0, DOMAINS, (23,))
    out = model(x, domain_ids=ids)
    want = model_reference(PlainMLP().to(dtype), model.base_model.model, x, ids)
    tolerance = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out, want, **tolerance)
    params = [p for p in model.parameters() if p.requires_grad]
    upstream = torch.randn_like(out)
    for got, expected in zip(torch.autograd.grad(out, params, upstream), torch.autograd.grad(want, params, upstream)):
        torch.testing.assert_close(got, expected, **tolerance)


def test_masked_path_keeps_a_broken_domain_out_of_the_other_rows(monkeypatch):
    monkeypatch.setattr(mlora_peft.tuner.layer, "uses_masked_path", lambda device, codes: True)
    model = adapted_mlp()
    layer = next(m for m in model.modules() if isinstance(m, MultiDomainLoraLayer))
    with torch.no_grad():
        layer.mdlora_A["default"][3] = float("nan")
        layer.mdlora_bias["default"][3] = float("inf")
    out = model(torch.randn(6, 6), domain_ids=[0, 1, 2, 0, 1, 3])
    assert torch.isfinite(out[:5]).all() and not torch.isfinite(out[5])


# ------------------------------------------------------------------------------ serving from merged weights
def test_one_domain_inference_follows_weight_updates():
    model = adapted_mlp(train_base=True)
    x = torch.randn(7, 6)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(2):
        model.eval()
        with torch.inference_mode():
            served = model(x, domain_ids=2)  # the merged-weight path
        torch.testing.assert_close(served, model(x, domain_ids=torch.full((7,), 2)).detach())
        model.train()
        model(x, domain_ids=torch.tensor([2, 1, 2, 0, 3, 2, 1])).sum().backward()
        optimizer.step()  # in-place updates: the cache must notice
        optimizer.zero_grad()
    model.eval()
    with torch.no_grad():
        before = model(x, domain_ids=1)
        model.load_state_dict({k: v + 0.1 for k, v in model.state_dict().items()})
        torch.testing.assert_close(model(x, domain_ids=1), model(x, domain_ids=torch.full((7,), 1)))
        assert not torch.equal(before, model(x, domain_ids=1))
        layer = next(m for m in model.modules() if isinstance(m, MultiDomainLoraLayer))
        layer.mdlora_B["default"].data.add_(1.0)  # a write through .data bumps no version counter
        torch.testing.assert_close(model(x, domain_ids=1), model(x, domain_ids=torch.full((7,), 1)))


def test_a_call_walks_no_modules(monkeypatch):
    """The routing's per-call cost does not grow with the model: nothing walks the module tree."""
    model = adapted_mlp().eval()
    x = torch.randn(4, 6)
    walks = []
    for method in ("modules", "named_modules"):
        original = getattr(nn.Module, method)
        monkeypatch.setattr(nn.Module, method, lambda self, *a, _o=original, _m=method, **k: walks.append(_m) or _o(self, *a, **k))
    model(x, domain_ids=[0, 1, 2, 3])
    with torch.inference_mode():
        model(x, domain_ids=2)
    assert walks == []


@pytest.mark.parametrize("rows", [6, 40])  # blocks one per domain (merged weights) and capped blocks
def test_mixed_inference_equals_the_routed_training_path(rows):
    from tests.models import NestedModel

    for base in (PlainMLP(), NestedModel()):
        model = get_peft_model(base, MultiDomainLoraConfig(num_domains=DOMAINS, r=2, init_weights=False)).eval()
        inputs = type(base).example_inputs(rows, torch.Generator().manual_seed(rows))
        ids = torch.arange(rows) % DOMAINS if rows < 40 else torch.tensor([0] * 30 + [1, 2, 3] * 3 + [3])
        routed = model(inputs, domain_ids=ids)  # gradients enabled: the training paths
        with torch.inference_mode():
            served = model(inputs, domain_ids=ids)
        torch.testing.assert_close(served, routed.detach(), rtol=1e-5, atol=1e-6)
