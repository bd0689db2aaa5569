"""Multi-domain baselines: each row uses only its own domain's towers and gates, and grouping keeps batch order."""

from __future__ import annotations

import pytest
import torch

from mlora_peft.models import build_model, list_models
from mlora_peft.models.multidomain import DomainGroups
from tests.test_models import TINY_SPEC, options, tiny_batch

BASELINES = list_models("baselines")


def baseline(name: str):
    torch.manual_seed(0)
    model = build_model(name, TINY_SPEC, **options(name, dropout=0.0))
    with torch.no_grad():  # move the per-domain parts off their (often symmetric) initial values
        for param in model.domain_parameters().values():
            param.add_(0.1 * torch.randn_like(param))
    return model


def mixed_batch(rows: int = 12) -> dict:
    batch = tiny_batch(rows)
    batch["domain_id"] = torch.arange(rows) % 3  # every domain present
    return batch


@pytest.mark.parametrize("name", BASELINES)
def test_a_row_depends_only_on_its_own_domains_parameters(name):
    model = baseline(name).eval()
    batch = mixed_batch()
    params = model.domain_parameters()
    assert params and all(p.shape[0] == 3 for p in params.values())
    before = model(batch)
    for domain in range(3):
        rows = batch["domain_id"] == domain
        with torch.no_grad():
            saved = {n: p.clone() for n, p in params.items()}
            for p in params.values():
                others = torch.arange(3) != domain
                p[others] += torch.randn_like(p[others])
            torch.testing.assert_close(model(batch)[rows], before[rows], rtol=0, atol=0)
            for p in params.values():
                p[domain] += torch.randn_like(p[domain])
            assert not torch.allclose(model(batch)[rows], before[rows])
            for n, p in params.items():
                p.copy_(saved[n])


@pytest.mark.parametrize("name", BASELINES)
def test_in_training_a_row_ignores_the_rows_of_other_domains(name):
    model = baseline(name).train()  # dropout is 0; STAR's partitioned norm uses per-domain batch statistics
    batch = mixed_batch()
    before = model(batch)
    changed = {k: v.clone() for k, v in batch.items()}
    other = batch["domain_id"] != 0
    changed["user"][other] = (changed["user"][other] + 7) % 30
    changed["price"][other] = changed["price"][other] + 3.0
    rows = batch["domain_id"] == 0
    torch.testing.assert_close(model(changed)[rows], before[rows])


@pytest.mark.parametrize("name", BASELINES)
def test_grouped_batch_equals_rows_run_one_at_a_time(name):
    model = baseline(name).eval()
    batch = mixed_batch(9)
    batch["domain_id"] = torch.tensor([2, 0, 2, 1, 1, 0, 2, 2, 0])
    one_by_one = torch.cat([model({k: v[n: n + 1] for k, v in batch.items()}) for n in range(9)])
    torch.testing.assert_close(model(batch), one_by_one)


def test_domain_groups_call_each_present_domain_once_on_its_rows():
    calls = []

    def per_domain(domain, x):
        calls.append((domain, x.squeeze(1).tolist()))
        return x * 10 + domain

    ids = torch.tensor([3, 1, 3, 3, 1])
    x = torch.arange(5.0).unsqueeze(1)
    out = DomainGroups.from_ids(ids, num_domains=5).apply(per_domain, x)
    assert calls == [(1, [1.0, 4.0]), (3, [0.0, 2.0, 3.0])]
    assert out.squeeze(1).tolist() == [3.0, 11.0, 23.0, 33.0, 41.0]


def test_domain_id_errors_and_single_domain_batches():
    model = build_model("mmoe", TINY_SPEC[:-1], num_domains=3).eval()  # domain ids route but are not embedded
    batch = mixed_batch(4)
    with pytest.raises(ValueError, match="no 'domain_id' column.*domain_key="):
        model({k: v for k, v in batch.items() if k != "domain_id"})
    with pytest.raises(ValueError, match="out of range"):
        model({**batch, "domain_id": torch.tensor([0, 1, 2, 3])})
    one_domain = model({**batch, "domain_id": torch.full((4,), 1)})
    torch.testing.assert_close(model({**batch, "domain_id": 1}), one_domain)
    with pytest.raises(ValueError, match="num_domains=0 must be an int >= 1"):
        build_model("star", TINY_SPEC, num_domains=0)
