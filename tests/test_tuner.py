"""The tuner on three model shapes: routed outputs and gradients against the per-sample reference."""

import copy

import pytest
import torch
from peft import PeftModel, get_peft_model

import mlora_peft
from mlora_peft import MultiDomainLoraConfig, MultiDomainLoraLayer
from tests.models import MODELS
from tests.reference import model_reference

MODEL_NAMES = sorted(MODELS)
CONFIGS = [  # config kwargs covering fixed rank, width-derived rank, scaling and no domain bias
    dict(num_domains=4, r=2, init_weights=False),
    dict(num_domains=3, rank_divisor=4, lora_alpha=3.0, init_weights=False),
    dict(domain_names=["a", "b", "c"], r=1, domain_bias=False, init_weights=False),
]


def build(name: str, **config_kwargs):
    base = MODELS[name]()
    reference_copy = copy.deepcopy(base)
    model = get_peft_model(base, MultiDomainLoraConfig(**config_kwargs))
    return model, reference_copy


def call(model, inputs, ids):
    if isinstance(inputs, dict):
        return model({**inputs, "domain_id": ids})
    return model(inputs, domain_ids=ids)


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("config_kwargs", CONFIGS)
def test_mixed_batch_outputs_and_gradients_match_reference(name, config_kwargs):
    model, reference_copy = build(name, **config_kwargs)
    inputs = MODELS[name].example_inputs(24)
    domains = model.peft_config["default"].num_domains
    ids = torch.randint(0, domains, (24,))
    out = call(model, inputs, ids)
    expected = model_reference(reference_copy, model.base_model.model, inputs, ids)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)

    upstream = torch.randn_like(out)
    params = [p for n, p in model.named_parameters() if p.requires_grad]
    assert params and all("mdlora_" in n for n, p in model.named_parameters() if p.requires_grad)
    got = torch.autograd.grad(out, params, upstream)
    want = torch.autograd.grad(expected, params, upstream)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_a_sample_only_updates_its_own_domain(name):
    model, _ = build(name, num_domains=4, r=2, init_weights=False)
    inputs = MODELS[name].example_inputs(10)
    ids = torch.tensor([0, 2] * 5)
    call(model, inputs, ids).sum().backward()
    for layer in (m for m in model.modules() if isinstance(m, MultiDomainLoraLayer)):
        for stack in (layer.mdlora_A["default"], layer.mdlora_B["default"], layer.mdlora_bias["default"]):
            assert stack.grad[[1, 3]].abs().max() == 0
            assert stack.grad[[0, 2]].abs().amax(dim=tuple(range(1, stack.dim()))).min() > 0


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_fresh_adapter_leaves_outputs_unchanged(name):
    model, reference_copy = build(name, num_domains=5)
    inputs = MODELS[name].example_inputs(8)
    ids = torch.randint(0, 5, (8,))
    torch.testing.assert_close(call(model, inputs, ids), reference_copy(inputs))


def test_default_targets_skip_output_heads_and_rank_follows_width():
    model, _ = build("NestedModel", num_domains=2, rank_divisor=4)
    layers = {n.removeprefix("base_model.model."): m for n, m in model.named_modules()
              if isinstance(m, MultiDomainLoraLayer)}
    assert set(layers) == {"blocks.0.inner.0", "blocks.0.inner.2", "blocks.1.inner.0", "blocks.1.inner.2", "proj"}
    assert layers["blocks.0.inner.0"].rank["default"] == 16 // 4
    assert layers["proj"].rank["default"] == 8 // 4


def test_default_rank_divisor_is_64_and_scaling_is_one():
    model, _ = build("PlainMLP", num_domains=2)
    ranks = sorted(m.rank["default"] for m in model.modules() if isinstance(m, MultiDomainLoraLayer))
    assert ranks == [1, 1]  # max(16 // 64, 1) and max(8 // 64, 1)
    wide = get_peft_model(torch.nn.Sequential(torch.nn.Linear(4, 256)), MultiDomainLoraConfig(num_domains=2,
                                                                                            target_modules=["0"]))
    assert wide.base_model.model[0].rank["default"] == 256 // 64
    assert all(m.scaling["default"] == 1.0 for m in model.modules() if isinstance(m, MultiDomainLoraLayer))


@pytest.mark.parametrize("targets, expected", [
    (["tower.0"], {"tower.0"}),
    (r"tower\.[02]", {"tower.0", "tower.2"}),
    ("all-linear", {"tower.0", "tower.2", "head"}),
])
def test_target_modules_by_name_regex_and_all_linear(targets, expected):
    model, _ = build("PlainMLP", num_domains=2, r=1, target_modules=targets)
    found = {n.removeprefix("base_model.model.") for n, m in model.named_modules()
             if isinstance(m, MultiDomainLoraLayer)}
    assert found == expected


def test_exclude_modules_and_modules_to_save():
    model, _ = build("PlainMLP", num_domains=2, r=1, exclude_modules=["tower.2"], modules_to_save=["head"])
    found = {n.removeprefix("base_model.model.") for n, m in model.named_modules()
             if isinstance(m, MultiDomainLoraLayer)}
    assert found == {"tower.0"}
    assert all(p.requires_grad for n, p in model.named_parameters() if "head.modules_to_save" in n)


def test_a_model_declaring_its_targets_is_honoured():
    base = MODELS["PlainMLP"]()
    base.mlora_target_modules = ["tower.2"]
    model = get_peft_model(base, MultiDomainLoraConfig(num_domains=2, r=1))
    found = [n for n, m in model.named_modules() if isinstance(m, MultiDomainLoraLayer)]
    assert found == ["base_model.model.tower.2"]


def test_joint_training_trains_base_and_adapters_and_default_freezes_base():
    frozen, _ = build("PlainMLP", num_domains=2, r=1)
    joint, _ = build("PlainMLP", num_domains=2, r=1, train_base=True)
    assert {n for n, p in frozen.named_parameters() if p.requires_grad} == {
        n for n, p in frozen.named_parameters() if "mdlora_" in n}
    assert all(p.requires_grad for p in joint.parameters())
    optimizer = torch.optim.Adam(joint.parameters(), lr=1e-2)
    before = {n: p.detach().clone() for n, p in joint.named_parameters()}
    x = torch.randn(16, 6)
    loss = joint(x, domain_ids=torch.randint(0, 2, (16,))).pow(2).mean()
    loss.backward()
    optimizer.step()
    changed = {n for n, p in joint.named_parameters() if not torch.equal(p, before[n])}
    assert any("base_layer" in n for n in changed) and any("mdlora_B" in n for n in changed)  # A moves from step 2: B starts at 0


def test_bfloat16_and_autocast_run_close_to_float32():
    model, _ = build("PlainMLP", num_domains=3, r=2, init_weights=False)
    x, ids = torch.randn(32, 6), torch.randint(0, 3, (32,))
    full = model(x, domain_ids=ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model(x, domain_ids=ids)
    assert mixed.dtype == torch.bfloat16
    torch.testing.assert_close(mixed.float(), full, atol=0.05, rtol=0.05)
    half = copy.deepcopy(model).to(torch.bfloat16)
    out = half(x.bfloat16(), domain_ids=ids)
    out.float().sum().backward()
    torch.testing.assert_close(out.float(), full, atol=0.05, rtol=0.05)


def test_lora_dropout_only_in_training_mode():
    model, _ = build("PlainMLP", num_domains=2, r=2, lora_dropout=0.5, init_weights=False)
    x, ids = torch.randn(64, 6), torch.randint(0, 2, (64,))
    model.eval()
    first, second = model(x, domain_ids=ids), model(x, domain_ids=ids)
    torch.testing.assert_close(first, second)
    model.train()
    assert not torch.allclose(model(x, domain_ids=ids), first)


def test_deepcopy_routes_itself():
    model, reference_copy = build("PlainMLP", num_domains=3, r=2, init_weights=False)
    clone = copy.deepcopy(model)
    x, ids = torch.randn(8, 6), torch.randint(0, 3, (8,))
    torch.testing.assert_close(clone(x, domain_ids=ids), model(x, domain_ids=ids))


def test_peft_model_from_pretrained_is_a_peft_model(tmp_path):
    model, reference_copy = build("PlainMLP", num_domains=2, r=1, init_weights=False)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(reference_copy, tmp_path)
    assert isinstance(loaded.base_model, mlora_peft.MultiDomainLoraModel)


def test_disable_adapter_and_unload_give_the_base_model():
    model, reference_copy = build("PlainMLP", num_domains=3, r=2, init_weights=False)
    x, ids = torch.randn(8, 6), torch.randint(0, 3, (8,))
    with model.disable_adapter():
        torch.testing.assert_close(model(x, domain_ids=ids), reference_copy(x))
    assert not torch.allclose(model(x, domain_ids=ids), reference_copy(x))
    plain = model.unload()
    assert not plain._forward_pre_hooks and not any(isinstance(m, MultiDomainLoraLayer) for m in plain.modules())
    torch.testing.assert_close(plain(x), reference_copy(x))


def test_second_adapter_routes_with_its_own_domains_and_two_active_are_refused():
    model, _ = build("PlainMLP", num_domains=2, r=2, init_weights=False)
    model.add_adapter("markets", MultiDomainLoraConfig(domain_names=["de", "fr", "it"], r=1, init_weights=False))
    x = torch.randn(6, 6)
    first = model(x, domain_ids=[0, 1, 0, 1, 0, 1])
    model.set_adapter("markets")
    second = model(x, domain_ids=["de", "fr", "it", "it", "fr", "de"])
    assert not torch.allclose(first, second)
    with pytest.raises(ValueError, match="Domain id 2 is out of range: this adapter has 2 domains"):
        model.set_adapter("default")
        model(x, domain_ids=[2] * 6)
    model.base_model.set_adapter(["default", "markets"])
    with pytest.raises(ValueError, match=r"one adapter at a time.*set_adapter"):
        model(x, domain_ids=0)
