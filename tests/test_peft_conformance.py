"""PEFT's generic tuner checks, ported to MLoRA rows with one domain and with three mixed domains.

The checks follow PEFT's custom-model battery (`tests/test_custom_models.py` with
`tests/testing_common.py` in the PEFT repository), written again for MLoRA. Differences by
design: merging a multi-domain adapter needs a domain (`domain=`), and one adapter routes at a
time. The six behaviours where LoRA was right and MLoRA was not have a test each, marked "fix".
"""

from __future__ import annotations

import copy

import pytest
import torch
from peft import PeftConfig, PeftModel, get_peft_model
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn

from mlora_peft import MultiDomainLoraConfig, MultiDomainLoraLayer
from tests.models import MODELS

CASES = [(name, domains) for name in sorted(MODELS) for domains in (1, 3)]


def _config(domains: int, **kwargs) -> MultiDomainLoraConfig:
    return MultiDomainLoraConfig(**(dict(num_domains=domains, r=2, init_weights=False) | kwargs))


def _model(name: str, domains: int, **kwargs):
    torch.manual_seed(0)
    return get_peft_model(MODELS[name](), _config(domains, **kwargs)).eval()


def _inputs(name: str, domains: int, rows: int = 9):
    inputs = MODELS[name].example_inputs(rows, torch.Generator().manual_seed(1))
    return inputs, torch.arange(rows) % domains


def _call(model: nn.Module, inputs, ids=None):
    if ids is None:
        return model(inputs)
    return model({**inputs, "domain_id": ids}) if isinstance(inputs, dict) else model(inputs, domain_ids=ids)


def _one_domain(name: str, rows: int = 9):
    """Inputs and ids of domain 0 only, so a merged model may serve them."""
    inputs, _ = _inputs(name, 1, rows)
    return inputs, torch.zeros(rows, dtype=torch.long)


def _base_output(name: str, inputs):
    torch.manual_seed(0)
    return MODELS[name]().eval()(inputs)


@pytest.mark.parametrize("name, domains", CASES)
def test_save_and_load_round_trip(name, domains, tmp_path):
    model = _model(name, domains)
    inputs, ids = _inputs(name, domains)
    model.save_pretrained(tmp_path)
    config = PeftConfig.from_pretrained(tmp_path)
    assert isinstance(config, MultiDomainLoraConfig) and config.num_domains == domains
    torch.manual_seed(0)
    loaded = PeftModel.from_pretrained(MODELS[name](), tmp_path).eval()
    torch.testing.assert_close(_call(loaded, inputs, ids), _call(model, inputs, ids), rtol=0, atol=0)
    saved, again = get_peft_model_state_dict(model), get_peft_model_state_dict(loaded)
    assert saved.keys() == again.keys() and all("mdlora_" in key for key in saved)
    assert all(torch.equal(saved[k], again[k]) for k in saved)
    assert not any(p.requires_grad for p in loaded.parameters())  # loaded for inference by default


@pytest.mark.parametrize("name, domains", CASES)
def test_state_dict_set_and_get(name, domains):
    model, other = _model(name, domains), _model(name, domains, init_weights=True)
    inputs, ids = _inputs(name, domains)
    set_peft_model_state_dict(other, get_peft_model_state_dict(model))
    torch.testing.assert_close(_call(other, inputs, ids), _call(model, inputs, ids), rtol=0, atol=0)


@pytest.mark.parametrize("name, domains", CASES)
def test_merge_unmerge_safe_merge_unload(name, domains):
    model = _model(name, domains)
    inputs, ids = _one_domain(name)
    routed = _call(model, inputs, ids)
    domain = None if domains == 1 else 0
    model.merge_adapter(domain=domain)
    torch.testing.assert_close(_call(model, inputs, ids), routed, rtol=1e-5, atol=1e-6)
    model.unmerge_adapter()
    torch.testing.assert_close(_call(model, inputs, ids), routed, rtol=1e-5, atol=1e-6)
    safe = copy.deepcopy(model).merge_and_unload(safe_merge=True, domain=domain)
    torch.testing.assert_close(safe(inputs), routed, rtol=1e-5, atol=1e-6)
    unloaded = model.unload()
    assert not any(isinstance(m, MultiDomainLoraLayer) for m in unloaded.modules())
    torch.testing.assert_close(unloaded(inputs), _base_output(name, inputs), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, domains", CASES)
def test_fix_merge_adapter_then_merge_and_unload(name, domains):
    """Fix 1: merge, evaluate, export; PEFT warns on the second merge and does nothing."""
    model = _model(name, domains)
    inputs, ids = _one_domain(name)
    routed = _call(model, inputs, ids)
    model.merge_adapter(domain=None if domains == 1 else 0)
    with pytest.warns(UserWarning, match="already merged"):
        plain = model.merge_and_unload()
    torch.testing.assert_close(plain(inputs), routed, rtol=1e-5, atol=1e-6)


def test_merging_another_domain_while_one_is_merged_is_refused():
    model = _model("PlainMLP", 3)
    model.merge_adapter(domain=1)
    with pytest.raises(ValueError, match="Domain 1 is already merged; call unmerge_adapter"):
        model.merge_adapter(domain=2)


def test_fix_adapters_merged_one_after_another_on_other_layers():
    """Fix 2: merge_adapter(['a']) then (['b']) where the adapters adapt different layers."""
    torch.manual_seed(0)
    model = get_peft_model(MODELS["PlainMLP"](), _config(1, target_modules=["tower.0"]), adapter_name="a")
    model.add_adapter("b", _config(1, target_modules=["tower.2"]))
    inputs = MODELS["PlainMLP"].example_inputs(5)
    expected = _stacked_output(model, inputs)
    model.merge_adapter(["a"])
    model.merge_adapter(["b"])  # each layer now holds its own adapter's weights
    torch.testing.assert_close(model(inputs), expected, rtol=1e-5, atol=1e-6)


def _stacked_output(model, inputs):
    """Both adapters applied, each on its own layer: run with one active at a time, layer by layer."""
    layers = [m for m in model.modules() if isinstance(m, MultiDomainLoraLayer)]
    work = copy.deepcopy(model)
    for layer in [m for m in work.modules() if isinstance(m, MultiDomainLoraLayer)]:
        name = next(iter(layer.mdlora_A))
        layer.merge(adapter_names=[name], domain=0)
    assert len(layers) == 2
    return work(inputs)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fix_merge_into_a_bias_free_half_precision_layer(dtype):
    """Fix 3: the bias created by a merge takes the weight's dtype; forward works, also after unload."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(6, 8, bias=False), nn.ReLU(), nn.Linear(8, 1))
    model = get_peft_model(base, _config(3)).to(dtype).eval()
    x = torch.randn(4, 6, dtype=dtype)
    routed = model(x, domain_ids=2)
    model.merge_adapter(domain=2)
    layer = next(m for m in model.modules() if isinstance(m, MultiDomainLoraLayer))
    assert layer.base_layer.bias.dtype == dtype
    torch.testing.assert_close(model(x, domain_ids=2), routed, rtol=2e-2, atol=2e-2)
    model.unmerge_adapter()
    assert layer.base_layer.bias is None
    plain = model.merge_and_unload(domain=2)
    torch.testing.assert_close(plain(x), routed, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("broken", ["mdlora_A", "mdlora_bias"])
def test_fix_safe_merge_refuses_non_finite_weights_and_biases(broken):
    """Fix 4: a non-finite domain bias is caught like a non-finite weight; nothing is merged."""
    model = _model("PlainMLP", 3)
    layer = next(m for m in model.modules() if isinstance(m, MultiDomainLoraLayer))
    with torch.no_grad():
        getattr(layer, broken)["default"][1] = float("nan")
    weight = layer.base_layer.weight.clone()
    with pytest.raises(ValueError, match="non-finite"):
        model.merge_adapter(safe_merge=True, domain=1)
    assert torch.equal(layer.base_layer.weight, weight) and not layer.merged


def test_fix_deleting_the_active_adapter_routes_with_the_remaining_one():
    """Fix 5: ids are checked against the adapter that is active after the delete."""
    torch.manual_seed(0)
    model = get_peft_model(MODELS["PlainMLP"](), _config(2), adapter_name="two")
    model.add_adapter("five", _config(5))
    x = torch.randn(5, 6)
    model.set_adapter("five")
    expected = model(x, domain_ids=[4, 3, 2, 1, 0])
    model.set_adapter("two")
    model.delete_adapter("two")
    assert model.active_adapters == ["five"]
    torch.testing.assert_close(model(x, domain_ids=[4, 3, 2, 1, 0]), expected)
    with pytest.raises(ValueError, match="Domain id 5 is out of range: this adapter has 5 domains"):
        model(x, domain_ids=[5, 0, 0, 0, 0])


def test_fix_peft_type_reads_like_peft_s_enum():
    """Fix 6: code that reads `peft_type.value` works; mixed models refuse MLoRA with PEFT's own message."""
    config = _config(3)
    assert config.peft_type == "MULTI_DOMAIN_LORA" and config.peft_type.value == "MULTI_DOMAIN_LORA"
    assert config.to_dict()["peft_type"] == "MULTI_DOMAIN_LORA"
    with pytest.raises(ValueError, match="'MULTI_DOMAIN_LORA' is not compatible with the `PeftMixedModel`"):
        get_peft_model(MODELS["PlainMLP"](), config, mixed=True)


@pytest.mark.parametrize("name, domains", CASES)
def test_disable_add_set_and_delete_adapters(name, domains):
    model = _model(name, domains)
    inputs, ids = _inputs(name, domains)
    first = _call(model, inputs, ids)
    with model.disable_adapter():
        torch.testing.assert_close(_call(model, inputs, ids), _base_output(name, inputs), rtol=0, atol=0)
    torch.manual_seed(1)  # other weights than the first adapter's
    model.add_adapter("other", _config(domains))
    torch.testing.assert_close(_call(model, inputs, ids), first, rtol=0, atol=0)  # adding does not activate
    model.set_adapter("other")
    assert not torch.allclose(_call(model, inputs, ids), first)
    model.set_adapter("default")
    model.delete_adapter("other")
    assert list(model.peft_config) == ["default"]
    torch.testing.assert_close(_call(model, inputs, ids), first, rtol=0, atol=0)


@pytest.mark.parametrize("name, domains", CASES)
def test_training_moves_only_the_adapters_and_inference_mode_freezes_them(name, domains):
    model = _model(name, domains).train()
    inputs, ids = _inputs(name, domains)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    _call(model, inputs, ids).pow(2).mean().backward()
    optimizer.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all("mdlora_" in k for k in changed)
    frozen = get_peft_model(MODELS[name](), _config(domains, inference_mode=True))
    assert not any(p.requires_grad for p in frozen.parameters())


@pytest.mark.parametrize("name, domains", CASES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_forward_is_close_to_float32(name, domains, dtype):
    model = _model(name, domains)
    inputs, ids = _inputs(name, domains)
    expected = _call(model, inputs, ids)
    half_inputs = inputs.to(dtype) if isinstance(inputs, torch.Tensor) and inputs.is_floating_point() else inputs
    if isinstance(inputs, dict):
        half_inputs = {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}
    out = _call(model.to(dtype), half_inputs, ids)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), expected, rtol=5e-2, atol=5e-2)
