"""Config validation, help metadata, and the PEFT registration workaround."""

import subprocess
import sys
from dataclasses import fields

import pytest
from peft import PeftType, get_peft_model
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

import mlora_peft
from mlora_peft import MultiDomainLoraConfig, MultiDomainLoraModel
from tests.models import PlainMLP


def test_every_field_of_ours_has_help():
    ours = [f for f in fields(MultiDomainLoraConfig) if f.name in MultiDomainLoraConfig.__annotations__]
    assert len(ours) >= 12
    for f in ours:
        assert len(f.metadata.get("help", "")) > 20, f.name


@pytest.mark.parametrize("kwargs, match", [
    (dict(), r"Give num_domains=D"),
    (dict(num_domains=0), r"num_domains=0 must be an int >= 1"),
    (dict(num_domains=2.0), r"num_domains=2.0 must be an int >= 1"),
    (dict(num_domains=3, domain_names=["a", "b"]), r"num_domains=3 disagrees with the 2 domain_names"),
    (dict(domain_names=["a", "a"]), r"holds duplicates"),
    (dict(domain_names=[]), r"non-empty list"),
    (dict(num_domains=2, r=0), r"r=0 must be an int >= 1"),
    (dict(num_domains=2, rank_divisor=0), r"rank_divisor=0 must be an int >= 1"),
    (dict(num_domains=2, r=4, rank_divisor=8), r"give only one"),
    (dict(num_domains=2, lora_alpha=0.0), r"lora_alpha=0.0 must be > 0"),
    (dict(num_domains=2, lora_dropout=1.0), r"lora_dropout=1.0 must lie in \[0, 1\)"),
    (dict(num_domains=2, init_weights="orthogonal"), r"use True, False or 'gaussian'"),
    (dict(num_domains=2, domain_key=""), r"domain_key must be a non-empty string"),
])
def test_bad_config_names_the_fix(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MultiDomainLoraConfig(**kwargs)


@pytest.mark.parametrize("names, error, match", [
    ("abc", TypeError, r"domain_names='abc' is a string.*e\.g\. domain_names=\['abc'\]"),
    ({"a", "b"}, TypeError, r"must be a list of domain names"),
    ([1, 2], ValueError, r"\[1, 2\] are not.*domain_names=\['1', '2'\]"),
    (["a", ""], ValueError, r"\[''\] are not"),
])
def test_domain_names_must_be_a_list_of_strings(names, error, match):
    with pytest.raises(error, match=match):
        MultiDomainLoraConfig(domain_names=names)


def test_ranks_follow_the_papers_rule_with_divisor_64_and_scaling_one_by_default():
    config = MultiDomainLoraConfig(num_domains=2)
    assert [config.rank_for(w) for w in (256, 128, 64, 8)] == [4, 2, 1, 1]
    assert [MultiDomainLoraConfig(num_domains=2, rank_divisor=16).rank_for(w) for w in (256, 128, 64)] == [16, 8, 4]
    assert config.scaling_for(8) == 1.0
    assert MultiDomainLoraConfig(num_domains=2, r=4, lora_alpha=8).scaling_for(4) == 2.0


def test_no_matching_target_module_is_an_error():
    with pytest.raises(ValueError, match="not found in the base model"):
        get_peft_model(PlainMLP(), MultiDomainLoraConfig(num_domains=2, target_modules=["nope"]))


def test_a_non_linear_target_is_refused():
    with pytest.raises(TypeError, match="MLoRA adapts nn.Linear layers only, got ReLU"):
        get_peft_model(PlainMLP(), MultiDomainLoraConfig(num_domains=2, target_modules=["tower.1"]))


def test_model_without_linear_layers_is_an_error():
    import torch

    with pytest.raises(ValueError, match="name the layers to adapt with target_modules"):
        get_peft_model(torch.nn.Sequential(torch.nn.Linear(3, 1)), MultiDomainLoraConfig(num_domains=2))


def test_registration_uses_a_string_key_because_peft_type_is_closed():
    # The workaround in mlora_peft/registration.py: PeftType has no member for us...
    assert "MULTI_DOMAIN_LORA" not in [t.value for t in PeftType]
    # ...so peft's own helper refuses the name, which is why we fill the mappings ourselves.
    from peft.utils import register_peft_method

    with pytest.raises(ValueError, match="Unknown PEFT type"):
        register_peft_method(name="multi_domain_lora", config_cls=MultiDomainLoraConfig,
                             model_cls=MultiDomainLoraModel)
    assert PEFT_TYPE_TO_CONFIG_MAPPING["MULTI_DOMAIN_LORA"] is MultiDomainLoraConfig
    assert PEFT_TYPE_TO_TUNER_MAPPING["MULTI_DOMAIN_LORA"] is MultiDomainLoraModel
    assert PEFT_TYPE_TO_PREFIX_MAPPING["MULTI_DOMAIN_LORA"] == "mdlora_"


def test_registration_is_idempotent():
    before = (dict(PEFT_TYPE_TO_CONFIG_MAPPING), dict(PEFT_TYPE_TO_TUNER_MAPPING))
    mlora_peft.register()
    mlora_peft.register()
    assert (dict(PEFT_TYPE_TO_CONFIG_MAPPING), dict(PEFT_TYPE_TO_TUNER_MAPPING)) == before


def test_a_fresh_process_importing_the_package_can_build_and_load(tmp_path):
    script = f"""
import torch, mlora_peft
from peft import PeftConfig, PeftModel, get_peft_model
net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
get_peft_model(net, mlora_peft.MultiDomainLoraConfig(num_domains=2, r=1)).save_pretrained(r"{tmp_path}")
assert type(PeftConfig.from_pretrained(r"{tmp_path}")).__name__ == "MultiDomainLoraConfig"
fresh = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
print(type(PeftModel.from_pretrained(fresh, r"{tmp_path}").base_model).__name__)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "MultiDomainLoraModel"
