"""Zoo models as transformers models: save / from_pretrained, Auto classes, and MLoRA adapters on top via PEFT."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers import AutoConfig, AutoModel

from mlora_peft import MultiDomainLoraConfig, MultiDomainLoraLayer
from mlora_peft.features import features_to_json
from mlora_peft.models import CTRConfig, CTRModel, list_models
from tests.test_models import DOMAINS, HIDDEN, TINY_SPEC, options, tiny_batch

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # peft calls it


def hf_model(name: str) -> CTRModel:
    return CTRModel(CTRConfig(name, TINY_SPEC, options(name, dropout=0.0)))


@pytest.mark.parametrize("name", list_models())
def test_save_pretrained_then_auto_model_gives_the_same_model(name, tmp_path):
    model = hf_model(name).eval()
    model.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, CTRConfig) and config.model_name == name
    assert features_to_json(config.feature_spec()) == features_to_json(TINY_SPEC)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, CTRModel)
    saved, restored = model.state_dict(), loaded.state_dict()
    assert saved.keys() == restored.keys()
    for key in saved:
        torch.testing.assert_close(restored[key], saved[key], rtol=0, atol=0, msg=key)
    batch = tiny_batch(8)
    torch.testing.assert_close(loaded(batch), model(batch))


@pytest.mark.parametrize("name", ["mlp", "deepfm", "autoint"])
def test_mlora_on_a_hub_style_zoo_model_trains_saves_and_reloads(name, tmp_path):
    hf_model(name).save_pretrained(tmp_path / "base")
    base = CTRModel.from_pretrained(tmp_path / "base")
    model = get_peft_model(base, MultiDomainLoraConfig(num_domains=DOMAINS))
    adapted = [n for n, m in model.named_modules() if isinstance(m, MultiDomainLoraLayer)]
    assert adapted == [f"base_model.model.net.deep.{3 * i}" for i in range(len(HIDDEN))]

    batch, labels = tiny_batch(48), torch.rand(48).round()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), labels)  # routed by domain_id
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    model.eval()
    expected = model(batch)
    model.save_pretrained(tmp_path / "adapter")

    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == str(tmp_path / "base")
    base_again = AutoModel.from_pretrained(saved["base_model_name_or_path"])
    reloaded = PeftModel.from_pretrained(base_again, tmp_path / "adapter")
    reloaded.eval()
    torch.testing.assert_close(reloaded(batch), expected)


def test_config_errors_name_the_problem():
    with pytest.raises(TypeError, match="must hold JSON values"):
        CTRConfig("mlp", TINY_SPEC, {"hidden": {1, 2}})
    with pytest.raises(ValueError, match="Unknown model 'dien'"):
        CTRModel(CTRConfig("dien", TINY_SPEC))
    with pytest.raises(ValueError, match="Unknown feature type"):
        CTRConfig("mlp", [{"type": "ImageFeature", "name": "photo"}])
