"""`input_norm="batch"`: the zoo towers' batch-normalised input, checked against an explicit formula."""

import pytest
import torch
from peft import get_peft_model

from mlora_peft import MultiDomainLoraConfig
from mlora_peft.models import DeepTower, build_model, list_models
from tests.test_models import DOMAINS, TINY_SPEC, options, tiny_batch


def test_the_tower_normalises_its_input_with_the_batch_statistics_then_runs_its_layers():
    torch.manual_seed(0)
    tower = DeepTower(5, (4, 3), 0.0, input_norm="batch")
    with torch.no_grad():
        tower.input_norm.weight.uniform_(0.5, 2.0)
        tower.input_norm.bias.uniform_(-1.0, 1.0)
    x = torch.randn(16, 5) * 7 + 3
    expected = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + tower.input_norm.eps)
    expected = expected * tower.input_norm.weight + tower.input_norm.bias
    for index in (0, 3):
        expected = torch.relu(expected @ tower[index].weight.T + tower[index].bias)
    torch.testing.assert_close(tower(x), expected)
    assert tower.hidden_linear_names == ["0", "3"] and isinstance(tower[-1], torch.nn.BatchNorm1d)


def test_one_training_row_uses_the_running_statistics_instead_of_failing():
    tower = DeepTower(5, (4,), 0.0, input_norm="batch")
    tower(torch.randn(32, 5) * 4 + 2)  # moves the running statistics
    row = torch.randn(1, 5)
    trained = tower(row)
    torch.testing.assert_close(trained, tower.eval()(row))


@pytest.mark.parametrize("name", list_models("backbones"))
def test_every_backbone_takes_it_and_mlora_still_adapts_the_same_layers(name):
    plain = build_model(name, TINY_SPEC, **options(name))
    normed = build_model(name, TINY_SPEC, **options(name), input_norm="batch")
    assert normed.mlora_target_modules == plain.mlora_target_modules
    assert set(plain.state_dict()) < set(normed.state_dict())
    assert {k for k in normed.state_dict() if k not in plain.state_dict()} == {
        f"deep.input_norm.{part}" for part in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    adapted = get_peft_model(normed, MultiDomainLoraConfig(num_domains=DOMAINS, r=2))
    batch = tiny_batch(6)
    assert adapted(batch).shape == (6,)


def test_an_unknown_norm_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"input_norm='layer'.*'none'.*'batch'"):
        build_model("mlp", TINY_SPEC, input_norm="layer")
