"""`dropout_placement="base_output"`: the MLoRA paper code's dropout on `W x + b` only, not on the adapter term."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import get_peft_model

import mlora_peft
import mlora_peft.tuner.layer
from mlora_peft import MultiDomainLoraConfig, MultiDomainLoraLayer
from mlora_peft.models import CTRConfig, CTRModel, DeepTower, OutputDropoutLinear, build_model, list_models
from tests.reference import low_rank_reference, mlora_linear_reference
from tests.test_models import TINY_SPEC, options, tiny_batch

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # peft calls it

P = 0.5
DOMAINS = 3


def adapted_tower(placement: str, dropout: float = P, seed: int = 0):
    """A two-layer tower wrapped by MLoRA with random (non-zero) adapters, the same weights for a given seed."""
    torch.manual_seed(seed)
    tower = DeepTower(6, (8, 4), dropout, dropout_placement=placement)
    config = MultiDomainLoraConfig(num_domains=DOMAINS, r=2, init_weights=False)
    return get_peft_model(tower, config)


def adapter_layer(model, name: str = "0") -> MultiDomainLoraLayer:
    return model.base_model.model.get_submodule(name)


def test_base_output_tower_layout_keeps_names_and_keys():
    activation, base_output = DeepTower(6, (8, 4), P), DeepTower(6, (8, 4), P, dropout_placement="base_output")
    assert activation.state_dict().keys() == base_output.state_dict().keys()
    assert base_output.hidden_linear_names == ["0", "3"]
    assert all(isinstance(base_output[i], OutputDropoutLinear) and base_output[i].output_dropout.p == P for i in (0, 3))
    assert all(base_output[i].p == 0.0 for i in (2, 5))  # the Dropout slots after the ReLUs are kept, at p=0
    assert all(type(activation[i]) is torch.nn.Linear and activation[i + 2].p == P for i in (0, 3))


def test_training_drops_the_base_output_and_never_the_adapter_term():
    model = adapted_tower("base_output").train()
    layer = adapter_layer(model)
    assert isinstance(layer.base_layer, OutputDropoutLinear)
    x, ids = torch.randn(200, 6), torch.arange(200) % DOMAINS
    with torch.no_grad(), mlora_peft.domain_context(ids):
        out = layer(x)  # pre-ReLU output of the tower's first layer
        base = x @ layer.base_layer.weight.t() + layer.base_layer.bias
        low_rank = low_rank_reference(x, layer.mdlora_A["default"], layer.mdlora_B["default"],
                                      layer.mdlora_bias["default"], ids, layer.scaling["default"])
    remainder = out - low_rank
    dropped = remainder.abs() < 1e-6
    torch.testing.assert_close(remainder[~dropped], base[~dropped] / (1 - P))
    assert base[dropped].abs().min() > 1e-6  # a zero remainder is a dropped base term, not a zero one
    assert 0.3 < dropped.float().mean() < 0.7  # about p of the base entries are dropped
    torch.testing.assert_close(out[dropped], low_rank[dropped])  # there the adapter term is all that is left


def test_training_values_and_gradients_match_the_reference_with_the_same_mask():
    model = adapted_tower("base_output").train()
    layer = adapter_layer(model)
    for param in layer.base_layer.parameters():  # train the base too (joint training): its gradients are checked
        param.requires_grad_(True)
    x, ids = torch.randn(30, 6, requires_grad=True), torch.tensor([0, 2, 1] * 10)
    torch.manual_seed(5)
    with mlora_peft.domain_context(ids):
        out = layer(x)
    torch.manual_seed(5)  # the same draw again: the dropout mask of an (N, out) tensor
    mask = torch.nn.functional.dropout(torch.ones(30, 8), P, training=True)  # 0 or 1/(1-p)
    base_layer = layer.base_layer
    expected = mask * (x @ base_layer.weight.t() + base_layer.bias) + low_rank_reference(
        x, layer.mdlora_A["default"], layer.mdlora_B["default"], layer.mdlora_bias["default"], ids,
        layer.scaling["default"])
    torch.testing.assert_close(out, expected)
    inputs = [x, base_layer.weight, base_layer.bias, *(stack["default"] for stack in
                                                        (layer.mdlora_A, layer.mdlora_B, layer.mdlora_bias))]
    upstream = torch.randn_like(out)
    for got, want in zip(torch.autograd.grad(out, inputs, upstream), torch.autograd.grad(expected, inputs, upstream)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("masked", [True, False])
def test_both_routing_paths_place_the_dropout_the_same_way(masked, monkeypatch):
    monkeypatch.setattr(mlora_peft.tuner.layer, "uses_masked_path", lambda device, codes: masked)
    layer = adapter_layer(adapted_tower("base_output").train())
    x, ids = torch.randn(30, 6), torch.tensor([0, 2, 1] * 10)
    torch.manual_seed(5)
    with mlora_peft.domain_context(ids):
        out = layer(x)
    torch.manual_seed(5)
    mask = torch.nn.functional.dropout(torch.ones(30, 8), P, training=True)  # 0 or 1/(1-p)
    low_rank = low_rank_reference(x, layer.mdlora_A["default"], layer.mdlora_B["default"],
                                  layer.mdlora_bias["default"], ids, layer.scaling["default"])
    torch.testing.assert_close(out, mask * (x @ layer.base_layer.weight.t() + layer.base_layer.bias) + low_rank)


def test_a_sample_only_updates_its_own_domain():
    model = adapted_tower("base_output").train()
    x, ids = torch.randn(10, 6), torch.tensor([0, 2] * 5)
    model(x, domain_ids=ids).sum().backward()
    layers = [m for m in model.modules() if isinstance(m, MultiDomainLoraLayer)]
    assert len(layers) == 2
    for layer in layers:
        for stack in (layer.mdlora_A["default"], layer.mdlora_B["default"], layer.mdlora_bias["default"]):
            assert stack.grad[1].abs().max() == 0
            assert stack.grad[[0, 2]].abs().amax(dim=tuple(range(1, stack.dim()))).min() > 0


def test_eval_output_is_the_same_for_both_placements_and_the_reference():
    activation, base_output = adapted_tower("activation").eval(), adapted_tower("base_output").eval()
    for a, b in zip(activation.state_dict().values(), base_output.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    x, ids = torch.randn(40, 6), torch.randint(0, DOMAINS, (40,))
    expected = activation(x, domain_ids=ids)
    torch.testing.assert_close(base_output(x, domain_ids=ids), expected, rtol=0, atol=0)
    layer = adapter_layer(base_output)
    first = mlora_linear_reference(x, layer.base_layer.weight, layer.base_layer.bias, layer.mdlora_A["default"],
                                   layer.mdlora_B["default"], layer.mdlora_bias["default"], ids,
                                   layer.scaling["default"])
    with mlora_peft.domain_context(ids):
        torch.testing.assert_close(layer(x), first)


def test_zero_dropout_in_training_is_the_plain_routed_path():
    activation = adapted_tower("activation", dropout=0.0).train()
    base_output = adapted_tower("base_output", dropout=0.0).train()
    x, ids = torch.randn(16, 6), torch.randint(0, DOMAINS, (16,))
    torch.testing.assert_close(base_output(x, domain_ids=ids), activation(x, domain_ids=ids), rtol=0, atol=0)


def test_merge_and_unload_keeps_an_output_dropout_layer_that_drops_only_in_training():
    model = adapted_tower("base_output").eval()
    x = torch.randn(12, 6)
    routed = model(x, domain_ids=torch.full((12,), 2))
    merged = copy.deepcopy(model).merge_and_unload(domain=2)
    assert isinstance(merged[0], OutputDropoutLinear) and isinstance(merged[3], OutputDropoutLinear)
    torch.testing.assert_close(merged(x), routed)
    assert not torch.allclose(merged.train()(x), routed)  # the merged layer still drops its output in training


@pytest.mark.parametrize("name", list_models("backbones"))
def test_plain_backbone_is_the_same_model_under_both_placements(name):
    built = {}
    for placement in ("activation", "base_output"):
        torch.manual_seed(7)
        built[placement] = build_model(name, TINY_SPEC, **options(name, dropout=0.3), dropout_placement=placement)
    activation, base_output = built["activation"], built["base_output"]
    assert activation.state_dict().keys() == base_output.state_dict().keys()
    for key, value in activation.state_dict().items():
        torch.testing.assert_close(base_output.state_dict()[key], value, rtol=0, atol=0, msg=key)
    assert all(isinstance(base_output.get_submodule(n), OutputDropoutLinear) for n in base_output.mlora_target_modules)
    batch = tiny_batch(16)
    torch.testing.assert_close(base_output.eval()(batch), activation.eval()(batch), rtol=0, atol=0)
    peft_model = get_peft_model(base_output, MultiDomainLoraConfig(num_domains=3))  # the subclass is a valid target
    adapted = [m for m in peft_model.modules() if isinstance(m, MultiDomainLoraLayer)]
    assert len(adapted) == len(base_output.mlora_target_modules)


def test_ctr_model_round_trip_keeps_the_placement(tmp_path):
    model = CTRModel(CTRConfig("deepfm", TINY_SPEC, {"hidden": [8, 4], "dropout_placement": "base_output"})).eval()
    model.save_pretrained(tmp_path)
    loaded = CTRModel.from_pretrained(tmp_path).eval()
    assert loaded.config.model_kwargs["dropout_placement"] == "base_output"
    assert all(isinstance(loaded.get_submodule(n), OutputDropoutLinear) for n in loaded.mlora_target_modules)
    batch = tiny_batch(8)
    torch.testing.assert_close(loaded(batch).logits, model(batch).logits, rtol=0, atol=0)


def test_unknown_placement_names_the_allowed_values():
    with pytest.raises(ValueError, match=r"dropout_placement='after_relu'.*'activation'.*'base_output'"):
        build_model("mlp", TINY_SPEC, dropout_placement="after_relu")
    with pytest.raises(ValueError, match=r"dropout_placement=None.*'activation'.*'base_output'"):
        DeepTower(4, (2,), 0.1, dropout_placement=None)
