"""Zoo models as transformers models: save / from_pretrained, Auto classes, and MLoRA adapters on top via PEFT."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers import AutoConfig, AutoModel

from mlora_peft import MultiDomainLoraConfig, MultiDomainLoraLayer
from mlora_peft.features import features_to_json
from mlora_peft.models import CTRConfig, CTRModel, CTROutput, list_models
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
    torch.testing.assert_close(loaded(batch).logits, model(batch).logits)


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
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch).logits, labels)  # routed by domain_id
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    model.eval()
    expected = model(batch).logits
    model.save_pretrained(tmp_path / "adapter")

    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == str(tmp_path / "base")
    base_again = AutoModel.from_pretrained(saved["base_model_name_or_path"])
    reloaded = PeftModel.from_pretrained(base_again, tmp_path / "adapter")
    reloaded.eval()
    torch.testing.assert_close(reloaded(batch).logits, expected)


def test_config_errors_name_the_problem():
    with pytest.raises(TypeError, match="must hold JSON values"):
        CTRConfig("mlp", TINY_SPEC, {"hidden": {1, 2}})
    with pytest.raises(ValueError, match="Unknown model 'dien'"):
        CTRModel(CTRConfig("dien", TINY_SPEC))
    with pytest.raises(ValueError, match="Unknown feature type"):
        CTRConfig("mlp", [{"type": "ImageFeature", "name": "photo"}])


def test_forward_takes_a_dict_or_keywords_and_returns_the_loss_with_labels():
    model = hf_model("deepfm").eval()
    batch, labels = tiny_batch(16), torch.rand(16).round()
    from_dict, from_keywords = model(batch), model(**batch, labels=labels.long())  # int labels are fine
    assert isinstance(from_dict, CTROutput) and from_dict.loss is None and from_dict.logits.shape == (16,)
    torch.testing.assert_close(from_keywords.logits, from_dict.logits, rtol=0, atol=0)
    logits = from_dict.logits.double()
    reference = -(labels * torch.log(torch.sigmoid(logits)) + (1 - labels) * torch.log(1 - torch.sigmoid(logits)))
    torch.testing.assert_close(from_keywords.loss.double(), reference.mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model(batch, labels=labels[:, None]).loss, from_keywords.loss)  # (N, 1) labels


def test_keyword_calls_are_routed_by_the_domain_column():
    model = get_peft_model(hf_model("mlp"), MultiDomainLoraConfig(num_domains=DOMAINS, init_weights=False)).eval()
    batch = tiny_batch(12)
    by_column = model(**batch).logits
    torch.testing.assert_close(by_column, model(batch).logits, rtol=0, atol=0)
    torch.testing.assert_close(by_column, model(**batch, domain_ids=batch["domain_id"]).logits, rtol=0, atol=0)
    assert not torch.allclose(by_column, model(**batch, domain_ids=(batch["domain_id"] + 1) % DOMAINS).logits)
    ids_only_in_the_batch = get_peft_model(CTRModel(CTRConfig("mlp", TINY_SPEC[:2])), MultiDomainLoraConfig(num_domains=3))
    with pytest.raises(ValueError, match="no domain ids were given"):
        ids_only_in_the_batch(user=batch["user"], item=batch["item"])


def test_forward_errors_name_the_fix():
    model = hf_model("mlp")
    batch = tiny_batch(4)
    with pytest.raises(TypeError, match=r"one way: model\(batch\) or model\(\*\*batch\)"):
        model(batch, user=batch["user"])
    with pytest.raises(ValueError, match=r"lack the features \['user', 'item'.*remove_unused_columns=False"):
        model(domain_id=batch["domain_id"], labels=torch.ones(4))
    with pytest.raises(ValueError, match="Got 3 labels for a batch of 4 rows"):
        model(batch, labels=torch.ones(3))
