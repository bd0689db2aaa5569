"""Parameter counts against wrapped models, and docs/models.md against its generator."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import get_peft_model

from mlora_peft import MultiDomainLoraConfig
from mlora_peft.models import (
    adapter_parameters_per_domain,
    build_model,
    count_parameters,
    list_models,
    parameter_table,
)
from tests.test_docs import run_generator
from tests.test_models import DOMAINS, TINY_SPEC, options

RANKS = [dict(r=2), dict(rank_divisor=4), dict()]


@pytest.mark.parametrize("name", list_models("backbones"))
@pytest.mark.parametrize("rank", RANKS)
def test_adapter_count_equals_the_wrapped_models_adapter_parameters(name, rank):
    model = build_model(name, TINY_SPEC, **options(name))
    wrapped = get_peft_model(copy.deepcopy(model), MultiDomainLoraConfig(num_domains=DOMAINS, **rank))
    adapter = sum(p.numel() for n, p in wrapped.named_parameters() if "mdlora_" in n)
    assert adapter == DOMAINS * adapter_parameters_per_domain(model, **rank)


def test_counts_split_embedding_tables_from_dense_parameters():
    model = build_model("wdl", TINY_SPEC, **options("wdl"))
    tables = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    count = count_parameters(model)
    assert count.total == sum(p.numel() for p in model.parameters())
    assert count.embeddings == tables and count.without_embeddings == count.total - tables


@pytest.mark.parametrize("name", list_models("baselines"))
def test_baseline_counts_grow_by_one_domains_share_per_domain(name):
    sizes = [count_parameters(build_model(name, TINY_SPEC, **{**options(name), "num_domains": d})).total
             for d in (3, 4, 5)]
    assert sizes[2] - sizes[1] == sizes[1] - sizes[0] > 0


def test_parameter_table_covers_every_model():
    rows = parameter_table(TINY_SPEC, num_domains=4, r=2)
    assert [row.name for row in rows] == list_models()
    for row in rows:
        assert (row.adapters is None) == (row.name in list_models("baselines"))
    with pytest.raises(ValueError, match="declares no mlora_target_modules"):
        adapter_parameters_per_domain(build_model("star", TINY_SPEC, num_domains=3))


def test_models_page_is_up_to_date():
    checked = run_generator("gen_models_page.py", "--check")
    assert checked.returncode == 0, f"run: python docs/gen_models_page.py\n{checked.stdout}{checked.stderr[-2000:]}"
