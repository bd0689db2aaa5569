"""Merging one domain for serving, and growing an adapter with new domains."""

import copy

import pytest
import torch
from peft import get_peft_model

from mlora_peft import MultiDomainLoraConfig, MultiDomainLoraLayer
from tests.models import MODELS, DictModel, PlainMLP


def _adapted(name="PlainMLP", **kwargs):
    config = dict(domain_names=["a", "b", "c"], r=2, init_weights=False) | kwargs
    return get_peft_model(MODELS[name](), MultiDomainLoraConfig(**config))


def _call(model, inputs, ids=None):
    if ids is None:
        return model(inputs)
    if isinstance(inputs, dict):
        return model({**inputs, "domain_id": ids})
    return model(inputs, domain_ids=ids)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("domain", [0, 2, "b"])
def test_merge_and_unload_equals_routing_to_that_domain(name, domain):
    model = _adapted(name)
    inputs = MODELS[name].example_inputs(12)
    index = model.domain_index(domain)
    routed = _call(model, inputs, torch.full((12,), index))
    merged = model.merge_and_unload(domain=domain)
    assert type(merged) is MODELS[name]
    assert not any(isinstance(m, MultiDomainLoraLayer) for m in merged.modules())
    assert not any("mdlora" in n for n, _ in merged.named_parameters())
    assert not merged._forward_pre_hooks and not merged._forward_hooks
    assert not hasattr(merged, "peft_config")
    torch.testing.assert_close(_call(merged, inputs), routed, atol=1e-5, rtol=1e-5)


def test_merge_without_domain_on_a_multi_domain_adapter_is_refused():
    with pytest.raises(ValueError, match=r"say which one to merge, e.g. merge_and_unload\(domain=0\)"):
        _adapted().merge_and_unload()


def test_merge_of_an_unknown_domain_is_refused():
    with pytest.raises(ValueError, match=r"Unknown domain 'q'"):
        _adapted().merge_adapter(domain="q")
    with pytest.raises(ValueError, match=r"domain=7 is not one of the 3 domains"):
        _adapted().merge_adapter(domain=7)


def test_merged_model_refuses_other_domains_and_unmerge_restores():
    model = _adapted()
    x = torch.randn(8, 6)
    ids = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    before = model(x, domain_ids=ids)
    model.merge_adapter(domain=1)
    with pytest.raises(ValueError, match=r"Domain 1 is merged into the weights, but the batch holds domains \[0, 1, 2\]"):
        model(x, domain_ids=ids)
    model.unmerge_adapter()
    torch.testing.assert_close(model(x, domain_ids=ids), before)


def test_merged_domain_matches_routing_while_merged():
    model = _adapted()
    x = torch.randn(8, 6)
    routed = model(x, domain_ids=2)
    model.merge_adapter(domain=2)
    torch.testing.assert_close(model(x, domain_ids=2), routed, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(x), routed, atol=1e-5, rtol=1e-5)


def test_merge_into_a_bias_free_linear():
    class NoBias(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.hidden = torch.nn.Linear(4, 6, bias=False)
            self.head = torch.nn.Linear(6, 1)

        def forward(self, x):
            return self.head(torch.relu(self.hidden(x)))

    model = get_peft_model(NoBias(), MultiDomainLoraConfig(num_domains=2, r=2, init_weights=False))
    x = torch.randn(5, 4)
    routed = model(x, domain_ids=1)
    model.merge_adapter(domain=1)
    torch.testing.assert_close(model(x), routed, atol=1e-5, rtol=1e-5)
    model.unmerge_adapter()
    assert model.base_model.model.hidden.base_layer.bias is None
    merged = model.merge_and_unload(domain=1)
    torch.testing.assert_close(merged(x), routed, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("new", [["d", "e"], 2])
def test_add_domains_keeps_old_domains_bit_identical_and_new_ones_start_shared(new):
    named = not isinstance(new, int)
    model = _adapted(init_weights=False) if named else _adapted(domain_names=None, num_domains=3)
    x = torch.randn(9, 6)
    old_ids = torch.tensor([0, 1, 2] * 3)
    before = model(x, domain_ids=old_ids)
    stacks_before = {n: p.detach().clone() for n, p in model.named_parameters() if "mdlora_" in n}
    shared = copy.deepcopy(model).unload()(x)
    model.add_domains(new)
    config = model.peft_config["default"]
    assert config.num_domains == 5
    assert config.domain_names == (["a", "b", "c", "d", "e"] if named else None)
    for n, p in model.named_parameters():
        if "mdlora_" in n:
            assert p.shape[0] == 5 and p.requires_grad
            assert torch.equal(p[:3], stacks_before[n])
    assert torch.equal(model(x, domain_ids=old_ids), before)
    torch.testing.assert_close(model(x, domain_ids=torch.tensor([3, 4] * 4 + [3])), shared)
    # the new domains train
    model(x, domain_ids=torch.full((9,), 4)).sum().backward()
    grads = [p.grad for n, p in model.named_parameters() if "mdlora_B" in n]
    assert all(g[4].abs().sum() > 0 and g[:4].abs().sum() == 0 for g in grads)


def test_add_domains_is_saved_with_the_new_count(tmp_path):
    from peft import PeftModel

    model = _adapted()
    model.add_domains(["d"])
    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(PlainMLP(), tmp_path)
    assert reloaded.peft_config["default"].domain_names == ["a", "b", "c", "d"]


@pytest.mark.parametrize("new, error, match", [
    (0, ValueError, "add at least one domain"),
    (2, ValueError, "pass the new names"),
    (["a"], ValueError, r"\['a'\] are already domains of this adapter"),
    (["n", "n"], ValueError, r"holds duplicates \['n'\]"),
    ([], ValueError, r"non-empty list of non-empty strings"),
    ([1, 2], ValueError, r"add_domains\(\[1, 2\]\) must be a non-empty list of non-empty strings"),
    (["d", None], ValueError, r"\[None\] are not"),
    ("cd", TypeError, r"add_domains\('cd'\) is a string.*add_domains\(\['cd'\]\)"),
])
def test_add_domains_bad_input_leaves_the_adapter_unchanged(new, error, match):
    model = _adapted()
    with pytest.raises(error, match=match):
        model.add_domains(new)
    assert model.peft_config["default"].domain_names == ["a", "b", "c"]
    assert all(p.shape[0] == 3 for n, p in model.named_parameters() if "mdlora_" in n)


def test_add_domains_string_on_unnamed_adapter_is_a_type_error():
    with pytest.raises(TypeError, match="is a string"):
        _adapted(domain_names=None, num_domains=2).add_domains("cd")


def test_add_domains_names_on_unnamed_adapter_is_refused():
    with pytest.raises(ValueError, match="pass a count"):
        _adapted(domain_names=None, num_domains=2).add_domains(["x"])


def test_dict_model_merge_keeps_domain_key_harmless():
    model = _adapted("DictModel")
    batch = DictModel.example_inputs(4)
    routed = model({**batch, "domain_id": torch.full((4,), 1)})
    merged = model.merge_and_unload(domain=1)
    torch.testing.assert_close(merged({**batch, "domain_id": torch.full((4,), 1)}), routed, atol=1e-5, rtol=1e-5)
