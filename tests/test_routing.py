"""Every way of passing domain ids, and a clear error for every bad one."""

import pytest
import torch
from peft import get_peft_model

import mlora_peft
from mlora_peft import MultiDomainLoraConfig
from tests.models import DictModel, PlainMLP


@pytest.fixture
def mlp():
    return get_peft_model(PlainMLP(), MultiDomainLoraConfig(domain_names=["x", "y", "z"], r=2, init_weights=False))


@pytest.fixture
def x():
    return torch.randn(6, 6)


IDS = [0, 2, 1, 1, 0, 2]


def _rows_one_at_a_time(model, x, ids):
    return torch.cat([model(x[i : i + 1], domain_ids=torch.tensor([d])) for i, d in enumerate(ids)])


@pytest.mark.parametrize("form", [
    torch.tensor(IDS), torch.tensor(IDS).unsqueeze(1), torch.tensor(IDS, dtype=torch.int32), IDS,
    ["x", "z", "y", "y", "x", "z"],
])
def test_every_id_form_routes_the_same(mlp, x, form):
    torch.testing.assert_close(mlp(x, domain_ids=form), _rows_one_at_a_time(mlp, x, IDS))


@pytest.mark.parametrize("form", [2, torch.tensor(2), "z"])
def test_one_domain_batch_from_scalar_or_name(mlp, x, form):
    torch.testing.assert_close(mlp(x, domain_ids=form), mlp(x, domain_ids=torch.full((6,), 2)))


def test_domain_context_routes_plain_calls(mlp, x):
    with mlora_peft.domain_context(torch.tensor(IDS)):
        inside = mlp(x)
    torch.testing.assert_close(inside, mlp(x, domain_ids=IDS))
    with pytest.raises(ValueError, match="no domain ids were given"):
        mlp(x)


def test_ids_are_forgotten_after_each_call(mlp, x):
    mlp(x, domain_ids=IDS)
    with pytest.raises(ValueError, match="no domain ids were given"):
        mlp(x)


def test_batch_dict_key_routes_and_stays_in_the_batch():
    model = get_peft_model(DictModel(), MultiDomainLoraConfig(num_domains=3, r=2, init_weights=False))
    batch = DictModel.example_inputs(6)
    batch["domain_id"] = torch.tensor(IDS)
    out = model(batch)
    assert "domain_id" in batch
    torch.testing.assert_close(out, model({k: v for k, v in batch.items() if k != "domain_id"}, domain_ids=IDS))
    # an explicit domain_ids= wins over the batch key
    torch.testing.assert_close(model(batch, domain_ids=2), model({**batch, "domain_id": torch.full((6,), 2)}))


def test_custom_domain_key():
    model = get_peft_model(DictModel(), MultiDomainLoraConfig(num_domains=3, r=2, domain_key="scenario",
                                                              init_weights=False))
    batch = DictModel.example_inputs(6)
    out = model({**batch, "scenario": torch.tensor(IDS)})
    torch.testing.assert_close(out, model(batch, domain_ids=IDS))


def test_inner_model_called_directly_also_routes(mlp, x):
    inner = mlp.get_base_model()
    torch.testing.assert_close(inner(x, domain_ids=IDS), mlp(x, domain_ids=IDS))


def test_single_domain_adapter_needs_no_ids(x):
    model = get_peft_model(PlainMLP(), MultiDomainLoraConfig(num_domains=1, r=2, init_weights=False))
    torch.testing.assert_close(model(x), model(x, domain_ids=0))


@pytest.mark.parametrize("ids, error, match", [
    (torch.tensor([0, 1, 3, 0, 0, 0]), ValueError, r"Domain id 3 is out of range: this adapter has 3 domains"),
    (torch.tensor([0, -1, 0, 0, 0, 0]), ValueError, r"Domain id -1 is out of range"),
    (torch.tensor([0.0, 1.0, 0, 0, 0, 0]), TypeError, r"must be integers, got a torch.float32 tensor"),
    (torch.tensor([True] * 6), TypeError, r"must be integers, got a torch.bool tensor"),
    (torch.tensor([0, 1, 2]), ValueError, r"Got 3 domain ids for a batch of 6 rows"),
    (torch.zeros(6, 2, dtype=torch.long), ValueError, r"shape \(N,\) or \(N, 1\)"),
    (["x", "w", "x", "x", "x", "x"], ValueError, r"Unknown domain 'w'; known domains: \['x', 'y', 'z'\]"),
    ([0, 1.5], TypeError, r"all ints or all names"),
    (object(), TypeError, r"not supported"),
])
def test_bad_ids_raise_naming_value_and_fix(mlp, x, ids, error, match):
    with pytest.raises(error, match=match):
        mlp(x, domain_ids=ids)


def test_missing_ids_with_several_domains_name_the_three_ways(mlp, x):
    with pytest.raises(ValueError, match=r"domain_ids=ids.*domain_key.*domain_context"):
        mlp(x)


def test_names_without_domain_names_are_refused(x):
    model = get_peft_model(PlainMLP(), MultiDomainLoraConfig(num_domains=2, r=1))
    with pytest.raises(ValueError, match="has no domain_names"):
        model(x, domain_ids="x")


def test_dict_batch_row_count_is_read_from_the_features_not_the_ids():
    model = get_peft_model(DictModel(), MultiDomainLoraConfig(num_domains=3, r=2, init_weights=False))
    batch = {"domain_id": torch.tensor([0, 1, 2, 1]), **DictModel.example_inputs(8)}  # the ids come first
    with pytest.raises(ValueError, match="Got 4 domain ids for a batch of 8 rows"):
        model(batch)
