"""Merged weights kept between calls in inference mode: reused while the weights are unchanged, rebuilt
after every kind of update, bounded, thread-safe, and never used outside inference mode."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from peft import get_peft_model

import mlora_peft
import mlora_peft.tuner.layer
from mlora_peft import MultiDomainLoraConfig, MultiDomainLoraLayer
from mlora_peft.tuner.weight_cache import MAX_ENTRIES
from tests.concurrency import call_from_threads
from tests.models import ZOO_DOMAINS, zoo_batch, zoo_deepfm_pair
from tests.reference import model_reference

DOMAINS = ZOO_DOMAINS


def _zoo_pair():
    plain, model = zoo_deepfm_pair()
    return plain, model.eval()


def _served(model, batch):
    with torch.inference_mode():
        return model(batch).clone()


def _expected(plain, model, batch):
    with torch.no_grad():
        return model_reference(plain, model.base_model.model, batch, batch["domain_id"])


def _layers(model):
    return [m for m in model.modules() if isinstance(m, MultiDomainLoraLayer)]


def _count_builds(monkeypatch):
    builds = []
    merge = mlora_peft.tuner.layer.merged_weights
    monkeypatch.setattr(mlora_peft.tuner.layer, "merged_weights", lambda *args: builds.append(args[5]) or merge(*args))
    return builds


def _optimizer_step(model, **options):
    params = [p for p in model.parameters() if p.requires_grad]
    for param in params:
        param.grad = torch.full_like(param, 0.5)
    torch.optim.Adam(params, lr=0.1, **options).step()


def _grow(model):
    model.base_model.add_domains(1)
    with torch.no_grad():
        for layer in _layers(model):  # make the kept domains' slices differ from before, so a stale entry shows
            layer.mdlora_B["default"].add_(0.25)


UPDATES = {
    "fused Adam (no version bump)": lambda model: _optimizer_step(model, fused=True),
    "for-each Adam": lambda model: _optimizer_step(model, foreach=True),
    "in-place write without gradients": lambda model: [
        layer.mdlora_bias["default"].add_(1.0) for layer in _layers(model)],
    "load_state_dict": lambda model: model.load_state_dict(
        {k: v + 0.5 if "mdlora_A" in k else v for k, v in model.state_dict().items()}),
    "a parameter's storage replaced": lambda model: [
        setattr(layer.base_layer.weight, "data", layer.base_layer.weight.data * 2) for layer in _layers(model)],
    "add_domains": _grow,
}


@pytest.mark.parametrize("update", list(UPDATES))
def test_served_weights_are_reused_until_a_weight_changes(update, monkeypatch):
    plain, model = _zoo_pair()
    builds = _count_builds(monkeypatch)
    batch = zoo_batch(12, domain=1)
    torch.testing.assert_close(_served(model, batch), _expected(plain, model, batch))
    built = len(builds)
    assert built == len(_layers(model))  # one merged weight per layer
    _served(model, batch)
    assert len(builds) == built  # the second request reuses them

    with torch.no_grad():
        UPDATES[update](model)
    torch.testing.assert_close(_served(model, batch), _expected(plain, model, batch))
    assert len(builds) == 2 * built


def test_writes_through_data_need_clear_merged_weights():
    plain, model = _zoo_pair()
    batch = zoo_batch(12, domain=2)
    before = _served(model, batch)
    for layer in _layers(model):
        layer.mdlora_B["default"].data.mul_(3.0)  # no version counter sees this write
    torch.testing.assert_close(_served(model, batch), before)  # the documented limit
    mlora_peft.clear_merged_weights(model)
    torch.testing.assert_close(_served(model, batch), _expected(plain, model, batch))


def test_sorted_mixed_rows_use_every_domains_kept_weights(monkeypatch):
    plain, model = _zoo_pair()
    builds = _count_builds(monkeypatch)
    batch = zoo_batch(64)
    torch.testing.assert_close(_served(model, batch), _expected(plain, model, batch))
    assert None in builds  # a stack of every domain's weights, for the layer that takes the merged path
    stacks = builds.count(None)
    _served(model, zoo_batch(64, seed=1))
    assert builds.count(None) == stacks


def test_only_inference_mode_keeps_weights_and_a_layer_keeps_a_bounded_number():
    layer = MultiDomainLoraLayer(torch.nn.Linear(8, 4), "default",
                                 MultiDomainLoraConfig(num_domains=MAX_ENTRIES + 8, r=2, init_weights=False)).eval()
    x = torch.randn(5, 8)
    with torch.no_grad(), mlora_peft.domain_context(3):
        layer(x)
    assert len(layer._merged_weight_cache) == 0
    with torch.inference_mode():
        for domain in range(MAX_ENTRIES + 8):
            with mlora_peft.domain_context(domain):
                layer(x)
    assert len(layer._merged_weight_cache) == MAX_ENTRIES


def test_threads_serve_one_domain_requests_from_shared_kept_weights():
    plain, model = _zoo_pair()
    batches = [zoo_batch(8 + i % 5, domain=i % DOMAINS, seed=i) for i in range(120)]
    expected = [_expected(plain, model, b) for b in batches]
    results = call_from_threads(lambda i: _served(model, batches[i]), len(batches))
    for got, want in zip(results, expected):
        torch.testing.assert_close(got, want)


def test_a_copy_starts_empty_and_serves_its_own_weights():
    plain, model = _zoo_pair()
    batch = zoo_batch(10, domain=0)
    before = _served(model, batch)
    torch.save(model, io.BytesIO())  # a model holding kept weights (and their lock) can still be written
    twin = copy.deepcopy(model)
    assert all(len(layer._merged_weight_cache) == 0 for layer in _layers(twin))
    with torch.no_grad():
        for layer in _layers(twin):
            layer.mdlora_bias["default"].add_(1.0)
    assert not torch.allclose(_served(twin, batch), before)
    torch.testing.assert_close(_served(model, batch), before)


def test_deleting_an_adapter_frees_the_weights_kept_for_it():
    _, model = _zoo_pair()
    model.add_adapter("other", MultiDomainLoraConfig(num_domains=DOMAINS, r=2, init_weights=False))
    model.set_adapter("other")
    _served(model, zoo_batch(8, domain=1))
    assert all(len(layer._merged_weight_cache) == 1 for layer in _layers(model))
    model.set_adapter("default")
    model.delete_adapter("other")
    assert all(len(layer._merged_weight_cache) == 0 for layer in _layers(model))


def test_a_compiled_model_in_inference_mode_keeps_nothing_and_equals_eager():
    from tests.models import PlainMLP

    torch.manual_seed(0)
    model = get_peft_model(PlainMLP(), MultiDomainLoraConfig(num_domains=DOMAINS, r=2, init_weights=False)).eval()
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(8, 6)
    for ids in (torch.full((8,), 1), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])):
        mlora_peft.clear_merged_weights(model)  # the eager call of the round before kept some
        with torch.inference_mode():
            got = compiled(x, domain_ids=ids)
            assert all(len(layer._merged_weight_cache) == 0 for layer in _layers(model))
            torch.testing.assert_close(got, model(x, domain_ids=ids), rtol=1e-5, atol=1e-5)
