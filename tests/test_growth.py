"""Growing for a new domain: encoder vocabularies (old ids kept), embedding tables, row-masked training."""

import pandas as pd
import pytest
import torch
from torch import nn

from mlora_peft.data import MultiDomainEncoder
from mlora_peft.features import SparseFeature
from mlora_peft.growth import compose, feature_tables, grow_embeddings, train_rows_from
from mlora_peft.models import build_model

OLD = pd.DataFrame({"user": ["u1", "u2", "u3", "u2"], "item": [10, 11, 12, 10], "price": [1.0, 2.0, 3.0, 4.0],
                    "shop": ["de", "fr", "de", "fr"], "click": [0, 1, 1, 0]})
NL = pd.DataFrame({"user": ["u2", "u9", "u7", None], "item": [20, 21, 20, 10], "price": [100.0, 0.0, None, 1.0],
                   "shop": "nl", "click": [1, 0, 1, 0]})
BE = pd.DataFrame({"user": ["u9", "u5"], "item": [30, 21], "price": [2.0, 2.0], "shop": "be", "click": [1, 0]})


def _encoder() -> MultiDomainEncoder:
    return MultiDomainEncoder.fit(OLD, label="click", domain="shop", sparse=["user", "item"], dense=["price"])


def test_encoder_growth_keeps_every_old_id_and_gives_unseen_values_new_ids():
    base = _encoder()
    grown = base.grow(NL)
    old = base.transform(OLD)
    assert grown.transform(OLD).to_pydict() == old.to_pydict()  # every old id, and the dense scaling, unchanged
    assert grown.domain_names == ("de", "fr", "nl")
    assert grown.sparse[0].values == ("u1", "u2", "u3", "u7", "u9")  # unseen users appended, ascending
    assert grown.sparse[1].values == (10, 11, 12, 20, 21)
    encoded = grown.transform(NL).to_pydict()
    assert encoded["user"] == [2, 5, 4, 0] and encoded["item"] == [4, 5, 4, 1] and encoded["domain_id"] == [2] * 4
    assert grown.dense == base.dense  # the numeric statistics stay those of training
    assert MultiDomainEncoder.from_json(grown.to_json()) == grown
    with pytest.raises(ValueError, match=r"Domains \['de'\] are already in the model"):
        base.grow(OLD.head(1))


def test_a_second_growth_with_another_domain_composes():
    base = _encoder()
    twice = base.grow(NL).grow(BE)
    assert twice.domain_names == ("de", "fr", "nl", "be")
    assert twice.sparse[0].values == ("u1", "u2", "u3", "u7", "u9", "u5")  # u9 keeps the id NL gave it
    assert twice.transform(NL).to_pydict() == base.grow(NL).transform(NL).to_pydict()
    # each domain's additions, relative to the base, applied in order give the same encoder
    nl, be = twice.additions(base, NL), twice.additions(base, BE)
    assert nl["sparse"]["user"] == ["u7", "u9"] and be["sparse"]["user"] == ["u9", "u5"]
    assert base.with_additions(nl).with_additions(be) == twice
    assert base.with_additions(be).transform(BE).to_pydict()["user"] == [4, 5]  # BE alone: self-contained
    with pytest.raises(ValueError, match=r"not a growth of the given base encoder"):
        base.additions(twice)


def test_grown_tables_keep_old_rows_and_start_new_ones_at_the_mean():
    torch.manual_seed(0)
    model = build_model("wdl", [SparseFeature("user", 4, 3), SparseFeature("domain_id", 2, 3)], hidden=[4])
    before = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, nn.Embedding)}
    old_sizes = grow_embeddings(model, {"user": 6, "domain_id": 3}, skip_rows={"domain_id": 0})
    assert old_sizes == {"embedding.tables.user": 4, "embedding.tables.domain_id": 2, "wide.weights.user": 4,
                         "wide.weights.domain_id": 2}
    for name, table in feature_tables(model, "user").items():
        assert torch.equal(table.weight[:4], before[name])
        torch.testing.assert_close(table.weight[4:], before[name][1:].mean(0).expand(2, -1))  # row 0: unknown
    for name, table in feature_tables(model, "domain_id").items():
        torch.testing.assert_close(table.weight[2], before[name].mean(0))
    assert model({"user": torch.tensor([5, 1]), "domain_id": torch.tensor([2, 0])}).shape == (2,)


def test_row_masked_training_keeps_old_rows_bit_identical_through_adam():
    torch.manual_seed(0)
    model = build_model("mlp", [SparseFeature("user", 5, 3)], hidden=[4])
    old_sizes = grow_embeddings(model, {"user": 8})
    for param in model.parameters():
        param.requires_grad_(False)
    handle = train_rows_from(model, old_sizes)
    table = model.embedding.tables.user.weight
    before = table.detach().clone()
    optimizer = torch.optim.Adam([table], lr=0.1)
    for _ in range(3):  # batches mix old and new ids
        optimizer.zero_grad()
        model({"user": torch.tensor([1, 2, 5, 6, 7, 4])}).square().mean().backward()
        optimizer.step()
    assert torch.equal(table[:5], before[:5]) and not torch.equal(table[5:], before[5:])
    state = optimizer.state[table]
    assert not state["exp_avg"][:5].any() and not state["exp_avg_sq"][:5].any()  # Adam's state stays zero there
    handle.remove()
    assert not table.requires_grad


def test_compose_keeps_each_value_once():
    from mlora_peft.growth import DomainAdditions

    key = "base_model.model.embedding.tables.user.weight"
    first = DomainAdditions({"domain": {"values": ["a"], "names": ["a"]}, "sparse": {"user": ["x", "y"]}},
                            {key: torch.tensor([[1.0], [2.0]])}, {key: "user"})
    second = DomainAdditions({"domain": {"values": ["b"], "names": ["b"]}, "sparse": {"user": ["y", "z"]}},
                             {key: torch.tensor([[2.0], [3.0]])}, {key: "user"})
    _, rows = compose([first, second])
    assert rows[key].flatten().tolist() == [1.0, 2.0, 3.0]
