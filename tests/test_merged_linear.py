"""The merged path (rows sorted by domain, per-domain merged weights) and the row sorting of
row-independent models, against the per-row reference and the unsorted paths."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model

import mlora_peft.tuner.layer
from mlora_peft import MultiDomainLoraConfig, MultiDomainLoraLayer
from mlora_peft.tuner.merged_linear import fits_merged_path, merged_linear, merged_weights
from mlora_peft.tuner.routing import Routing, current_routing
from tests.concurrency import call_from_threads
from tests.models import ZOO_DOMAINS, zoo_batch, zoo_deepfm_pair
from tests.reference import mlora_linear_reference, model_reference

CASES = [  # (rows, in, out, rank, domains, pattern)
    (40, 8, 12, 2, 4, "sorted"),
    (30, 4, 8, 3, 7, "sorted"),  # domains with no rows
    (25, 12, 4, 1, 1, "sorted"),  # one domain stack
    (90, 4, 8, 1, 20, "sorted"),  # more domains than SEGMENT_BIAS_MAX_DOMAINS: the bias gathered per row
    (33, 8, 4, 2, 5, "one"),  # a one-domain call: that domain's slices, one product
]


def _inputs(rows, fan_in, fan_out, rank, domains, pattern, with_bias=True, base_trains=True):
    generator = torch.Generator().manual_seed(rows + domains)
    params = dict(
        x=torch.randn(rows, fan_in, generator=generator),
        weight=torch.randn(fan_out, fan_in, generator=generator),
        bias=torch.randn(fan_out, generator=generator) if with_bias else None,
        lora_A=torch.randn(domains, rank, fan_in, generator=generator),
        lora_B=torch.randn(domains, fan_out, rank, generator=generator),
        domain_bias=torch.randn(domains, fan_out, generator=generator) if with_bias else None,
    )
    for name, tensor in params.items():
        if tensor is not None:
            tensor.requires_grad_(base_trains or name not in ("weight", "bias"))
    if pattern == "one":
        ids = torch.full((rows,), domains - 2)
    else:
        ids = torch.sort(torch.randint(0, domains, (rows,), generator=generator)).values
        ids[ids == 2] = 1  # leave domain 2 empty where there is one
    return params, ids


def _merged(params, ids, pattern, scaling):
    if pattern == "one":
        weight, bias = merged_weights(params["weight"], params["bias"], params["lora_A"], params["lora_B"],
                                      params["domain_bias"], int(ids[0]), scaling)
        return torch.nn.functional.linear(params["x"], weight, bias)
    offsets = torch.bincount(ids, minlength=params["lora_A"].shape[0]).cumsum(0).to(torch.int32)
    return merged_linear(params["x"], params["weight"], params["bias"], params["lora_A"], params["lora_B"],
                         params["domain_bias"], offsets, ids, scaling)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("base_trains", [True, False])
def test_merged_path_matches_the_per_row_reference(case, with_bias, base_trains):
    params, ids = _inputs(*case, with_bias=with_bias, base_trains=base_trains)
    out = _merged(params, ids, case[-1], scaling=0.5)
    wide = {k: None if v is None else v.double() for k, v in params.items()}
    expected = mlora_linear_reference(**wide, domain_ids=ids, scaling=0.5)
    torch.testing.assert_close(out, expected.float(), rtol=1e-4, atol=1e-4)
    upstream = torch.randn_like(out)
    names = [k for k, v in params.items() if v is not None and v.requires_grad]
    got = torch.autograd.grad(out, [params[k] for k in names], upstream)
    want = torch.autograd.grad(expected, [wide[k] for k in names], upstream.double())
    for name, g, w in zip(names, got, want):
        torch.testing.assert_close(g, w.float(), rtol=1e-4, atol=1e-4, msg=lambda m: f"gradient of {name}: {m}")


def test_merged_path_takes_strided_rows_and_the_expanded_gradient_of_a_sum():
    params, ids = _inputs(20, 8, 8, 2, 3, "sorted")
    params["x"] = torch.randn(20, 16)[:, ::2].requires_grad_()  # rows 16 numbers apart
    _merged(params, ids, "sorted", 1.0).sum().backward()  # the upstream gradient is an expanded view
    wide = {k: v.detach().double().requires_grad_() for k, v in params.items()}
    mlora_linear_reference(**wide, domain_ids=ids, scaling=1.0).sum().backward()
    for name in params:
        torch.testing.assert_close(params[name].grad, wide[name].grad.float(), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------ path choice
def _layer(fan_in=8, fan_out=8, domains=4, train_base=True):
    config = MultiDomainLoraConfig(num_domains=domains, r=2, train_base=train_base)
    layer = MultiDomainLoraLayer(torch.nn.Linear(fan_in, fan_out), "default", config)
    layer.base_layer.requires_grad_(train_base)
    return layer


def _takes_merged(layer, x, routing):
    return mlora_peft.tuner.layer.uses_merged_path(x, layer.base_layer.weight, routing)


def test_the_merged_path_is_taken_where_it_pays_and_applies():
    x, layer = torch.randn(64, 8), _layer()
    sorted_ids, mixed_ids = torch.arange(64) // 16, torch.arange(64) % 4
    assert _takes_merged(layer, x, Routing(sorted_ids, 4, None))
    assert not _takes_merged(layer, x, Routing(mixed_ids, 4, None))  # unsorted rows: the grouped path
    assert _takes_merged(layer, x, Routing(torch.full((64,), 2), 4, 2))  # one domain
    assert not _takes_merged(layer, x.double(), Routing(sorted_ids, 4, None))  # float32 only
    assert not _takes_merged(_layer(6, 8), torch.randn(64, 6), Routing(sorted_ids, 4, None))  # widths of 4s
    assert _takes_merged(_layer(6, 8), torch.randn(64, 6), Routing(torch.full((64,), 2), 4, 2))
    frozen = _layer(train_base=False)
    assert not _takes_merged(frozen, x, Routing(sorted_ids, 4, None))  # G_d would be extra work
    with torch.no_grad():
        assert _takes_merged(frozen, x, Routing(sorted_ids, 4, None))
    many = _layer(domains=40)
    assert not _takes_merged(many, x, Routing(torch.arange(64) * 40 // 64, 40, None))  # weights >> rows


def test_fits_merged_path_compares_merged_weights_with_rows():
    assert fits_merged_path(10, 32, 256, 1024)  # 81,920 weights for 294,912 row numbers
    assert fits_merged_path(12, 256, 128, 1024)  # 393,216 each: the bound
    assert not fits_merged_path(13, 256, 128, 1024) and not fits_merged_path(100, 256, 128, 1024)


# ------------------------------------------------------------------------------- row-sorted models
DOMAINS = ZOO_DOMAINS


def _gradients(model, batch):
    model.zero_grad()
    out = model(batch)
    out.pow(2).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_a_zoo_model_sorts_a_mixed_batch_and_answers_in_the_callers_order():
    plain, model = zoo_deepfm_pair()
    batch = zoo_batch(64)
    original = {k: v.clone() for k, v in batch.items()}
    seen = []
    layer = next(m for m in model.modules() if isinstance(m, MultiDomainLoraLayer))
    layer.register_forward_pre_hook(lambda module, args: seen.append(current_routing()))
    out, grads = _gradients(model, batch)
    assert seen[0].order is not None and bool((seen[0].domain_ids.diff() >= 0).all())  # sorted inside the call
    assert all(torch.equal(batch[k], original[k]) for k in batch)  # the caller's batch is untouched
    expected = model_reference(plain, model.base_model.model, batch, batch["domain_id"])
    torch.testing.assert_close(out, expected.detach(), rtol=1e-5, atol=1e-5)

    model.base_model.model.mlora_rows_independent = False  # the same call without sorting
    seen.clear()
    unsorted_out, unsorted_grads = _gradients(model, batch)
    assert seen[0].order is None
    torch.testing.assert_close(out, unsorted_out, rtol=1e-5, atol=1e-5)
    assert grads.keys() == unsorted_grads.keys() and any("mdlora_A" in n for n in grads)
    for name, want in unsorted_grads.items():
        torch.testing.assert_close(grads[name], want, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")


def test_outputs_in_containers_are_put_back_in_order():
    class RowModel(torch.nn.Module):
        mlora_rows_independent = True

        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(8, 4)

        def forward(self, x, label):
            logits = self.layer(x)
            return {"logits": logits, "pair": (logits[:, 0], label), "loss": logits.sum()}

    torch.manual_seed(0)
    model = get_peft_model(RowModel(), MultiDomainLoraConfig(num_domains=2, r=1, init_weights=False))
    x, label = torch.randn(40, 8), torch.arange(40.0)
    ids = torch.arange(40) % 2
    out = model(x, label=label, domain_ids=ids)
    assert out["pair"][1].equal(label)  # a row-wise input, sorted inside, comes back in the caller's order
    rows = torch.cat([model(x[i:i + 1], label=label[i:i + 1], domain_ids=ids[i:i + 1])["logits"] for i in range(40)])
    torch.testing.assert_close(out["logits"], rows)
    torch.testing.assert_close(out["pair"][0], rows[:, 0])
    torch.testing.assert_close(out["loss"], rows.sum())


def test_threads_share_a_row_sorting_model():
    _, model = zoo_deepfm_pair()
    model.eval()
    batches = [zoo_batch(20 + i % 50, seed=i) for i in range(160)]
    with torch.no_grad():
        expected = [model(b) for b in batches]

    def call(i):
        with torch.no_grad():
            return model(batches[i])

    for got, want in zip(call_from_threads(call, len(batches)), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_sorted_ids_take_the_merged_path_through_a_sequence_model():
    """Ids already sorted (as the `sorted` composition delivers them) reach the merged path in any model,
    also for layers applied to `(N, L, width)` inputs; values and gradients match the per-row reference."""
    from tests.models import NestedModel

    torch.manual_seed(0)
    config = MultiDomainLoraConfig(num_domains=DOMAINS, r=2, init_weights=False, train_base=True)
    model = get_peft_model(NestedModel(), config)
    tokens = NestedModel.example_inputs(30, torch.Generator().manual_seed(1))
    ids = torch.arange(30) * DOMAINS // 30  # sorted
    taken = []
    original = mlora_peft.tuner.layer.merged_linear
    mlora_peft.tuner.layer.merged_linear = lambda *a: taken.append(a[0].shape) or original(*a)
    try:
        out = model(tokens, domain_ids=ids)
    finally:
        mlora_peft.tuner.layer.merged_linear = original
    assert (150, 8) in taken  # the (N, L, 8) projection, as 30 * 5 rows
    want = model_reference(NestedModel(), model.base_model.model, tokens, ids)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    params = [p for p in model.parameters() if p.requires_grad]
    upstream = torch.randn_like(out)
    for got, expected in zip(torch.autograd.grad(out, params, upstream), torch.autograd.grad(want, params, upstream)):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
