"""Saving and loading: safetensors only, every config field, identical outputs in a fresh process."""

import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from peft import PeftConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

from mlora_peft import MultiDomainLoraConfig
from tests.models import MODELS, PlainMLP

REPO_ROOT = Path(__file__).resolve().parents[1]

FRESH_PROCESS = """
import sys, torch, mlora_peft
from peft import PeftModel
from safetensors.torch import load_file, save_file
from tests.models import MODELS
for case in sys.argv[1:]:
    name, folder = case.split("=", 1)
    base = MODELS[name]()
    base.load_state_dict(load_file(f"{folder}/base.safetensors"))
    model = PeftModel.from_pretrained(base, f"{folder}/adapter")
    inputs = load_file(f"{folder}/inputs.safetensors")
    ids = inputs.pop("domain_id")
    x = inputs.pop("x") if "x" in inputs else inputs
    save_file({"out": model(x, domain_ids=ids)}, f"{folder}/out.safetensors")
"""


def _save_case(folder: Path, name: str, train_base: bool):
    """Save a base model, an adapter trained on it, inputs; return the in-process outputs."""
    folder.mkdir()
    base = MODELS[name]()
    save_file(base.state_dict(), str(folder / "base.safetensors"))
    model = get_peft_model(base, MultiDomainLoraConfig(num_domains=3, r=2, init_weights=False,
                                                       train_base=train_base))
    if train_base:  # joint training moved the base weights away from base.safetensors
        with torch.no_grad():
            for param in model.parameters():
                param.add_(0.01 * torch.randn_like(param))
    model.eval()
    model.save_pretrained(folder / "adapter")
    inputs, ids = MODELS[name].example_inputs(16), torch.randint(0, 3, (16,))
    tensors = dict(inputs) if isinstance(inputs, dict) else {"x": inputs}
    save_file({**tensors, "domain_id": ids}, str(folder / "inputs.safetensors"))
    return model(inputs, domain_ids=ids)


def test_reload_in_a_fresh_process_gives_identical_outputs(tmp_path):
    cases = {f"{name}-{train_base}": (name, train_base) for name in sorted(MODELS) for train_base in (False, True)}
    expected = {key: _save_case(tmp_path / key, *case) for key, case in cases.items()}
    args = [f"{name}={tmp_path / key}" for key, (name, _) in cases.items()]
    subprocess.run([sys.executable, "-c", FRESH_PROCESS, *args], check=True, cwd=REPO_ROOT)
    for key in cases:
        reloaded = load_file(str(tmp_path / key / "out.safetensors"))["out"]
        torch.testing.assert_close(reloaded, expected[key], atol=0, rtol=0, msg=lambda m: f"{key}: {m}")


def test_weights_are_safetensors_only_with_stacked_keys(tmp_path):
    model = get_peft_model(PlainMLP(), MultiDomainLoraConfig(num_domains=3, r=2))
    model.save_pretrained(tmp_path)
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.pt"))
    tensors = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert tensors["base_model.model.tower.0.mdlora_A"].shape == (3, 2, 6)
    assert tensors["base_model.model.tower.0.mdlora_B"].shape == (3, 16, 2)
    assert tensors["base_model.model.tower.0.mdlora_bias"].shape == (3, 16)
    assert not any("base_layer" in k for k in tensors)  # frozen base: adapters only


def test_adapter_config_round_trips_every_field(tmp_path):
    config = MultiDomainLoraConfig(
        domain_names=["f", "m"], rank_divisor=4, lora_alpha=2.0, domain_bias=False, lora_dropout=0.1,
        init_weights="gaussian", train_base=True, target_modules=["tower.0", "tower.2"],
        exclude_modules=["head"], modules_to_save=["head2"], domain_key="gender",
    )
    config.save_pretrained(tmp_path)
    loaded = PeftConfig.from_pretrained(tmp_path)
    assert type(loaded) is MultiDomainLoraConfig
    for f in fields(MultiDomainLoraConfig):
        assert getattr(loaded, f.name) == getattr(config, f.name), f.name
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "MULTI_DOMAIN_LORA" and saved["domain_names"] == ["f", "m"]


def test_loading_onto_a_model_of_other_widths_is_refused(tmp_path):
    get_peft_model(PlainMLP(hidden=(16, 8)), MultiDomainLoraConfig(num_domains=2, r=2)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"does not fit this model .*tower.0.mdlora_B.default: saved \(2, 16, 2\)"):
        PeftModel.from_pretrained(PlainMLP(hidden=(12, 8)), tmp_path)


def test_loading_an_adapter_with_other_domains_is_refused(tmp_path):
    small = get_peft_model(PlainMLP(), MultiDomainLoraConfig(num_domains=2, r=2))
    small.save_pretrained(tmp_path)
    big = get_peft_model(PlainMLP(), MultiDomainLoraConfig(num_domains=5, r=2))
    with pytest.raises(ValueError, match=r"saved \(2, 2, 6\), model \(5, 2, 6\)"):
        big.load_adapter(tmp_path, adapter_name="default")
