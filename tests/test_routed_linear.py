"""The fused routed linear function against the per-sample reference, values and gradients."""

import pytest
import torch

from mlora_peft.tuner.masked_linear import masked_linear
from mlora_peft.tuner.routed_linear import group_by_domain, routed_linear
from mlora_peft.tuner.routing import Routing
from tests.reference import low_rank_reference, mlora_linear_reference

CASES = [  # (rows, in, out, rank, domains, ids pattern)
    (37, 6, 5, 3, 4, "mixed"),
    (64, 16, 8, 2, 10, "mixed"),
    (20, 5, 7, 1, 3, "single"),
    (30, 4, 3, 2, 50, "mixed"),  # more domains than present
    (1, 3, 2, 1, 2, "mixed"),
    (64, 6, 5, 2, 10, "skewed"),  # one domain holds most rows: it spans several blocks
    (90, 4, 3, 2, 300, "mixed"),  # more domains than rows
    (2100, 3, 2, 2, 2, "mixed"),  # blocks of over 1,024 rows: padded to 256-row chunks, weight gradients split
]


def _inputs(rows, fan_in, fan_out, rank, domains, pattern, with_bias=True):
    params = dict(
        x=torch.randn(rows, fan_in, dtype=torch.float64),
        weight=torch.randn(fan_out, fan_in, dtype=torch.float64),
        bias=torch.randn(fan_out, dtype=torch.float64) if with_bias else None,
        lora_A=torch.randn(domains, rank, fan_in, dtype=torch.float64),
        lora_B=torch.randn(domains, fan_out, rank, dtype=torch.float64),
        domain_bias=torch.randn(domains, fan_out, dtype=torch.float64) if with_bias else None,
    )
    for tensor in params.values():
        if tensor is not None:
            tensor.requires_grad_(True)
    ids = torch.randint(0, domains, (rows,))
    if pattern == "single":
        ids = torch.full((rows,), domains - 1)
    elif pattern == "skewed":
        ids = torch.where(torch.rand(rows) < 0.85, torch.zeros_like(ids), ids)
    return params, ids


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_matches_per_sample_reference_values_and_gradients(case, with_bias):
    params, ids = _inputs(*case, with_bias=with_bias)
    scaling = 0.5
    out = routed_linear(**params, segments=group_by_domain(ids, case[4]), scaling=scaling)
    expected = mlora_linear_reference(**params, domain_ids=ids, scaling=scaling)
    torch.testing.assert_close(out, expected)
    upstream = torch.randn_like(out)
    names = [k for k, v in params.items() if v is not None]
    got = torch.autograd.grad(out, [params[k] for k in names], upstream)
    want = torch.autograd.grad(expected, [params[k] for k in names], upstream)
    for name, g, w in zip(names, got, want):
        torch.testing.assert_close(g, w, msg=lambda m: f"gradient of {name}: {m}")


def test_separate_adapter_input_gets_its_own_gradient():
    params, ids = _inputs(12, 4, 3, 2, 3, "mixed")
    adapter_input = torch.randn(12, 4, dtype=torch.float64, requires_grad=True)
    out = routed_linear(**params, segments=group_by_domain(ids, 3), scaling=1.0, adapter_input=adapter_input)
    x, w, b = params["x"], params["weight"], params["bias"]
    low_rank = mlora_linear_reference(adapter_input, torch.zeros_like(w), None, params["lora_A"], params["lora_B"],
                                      params["domain_bias"], ids, 1.0)
    expected = x @ w.t() + b + low_rank
    torch.testing.assert_close(out, expected)
    g_out = torch.randn_like(out)
    got = torch.autograd.grad(out, [x, adapter_input], g_out)
    want = torch.autograd.grad(expected, [x, adapter_input], g_out)
    torch.testing.assert_close(got, want)


def test_frozen_base_gets_no_gradient_and_gradcheck_passes():
    params, ids = _inputs(9, 3, 2, 2, 3, "mixed")
    params["weight"].requires_grad_(False)
    params["bias"].requires_grad_(False)
    segments = group_by_domain(ids, 3)
    inputs = [params[k] for k in ("x", "weight", "bias", "lora_A", "lora_B", "domain_bias")]
    assert torch.autograd.gradcheck(lambda *t: routed_linear(*t, segments=segments, scaling=0.7), inputs)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_without_weight_is_the_low_rank_term_alone(case, with_bias):
    params, ids = _inputs(*case, with_bias=with_bias)
    x, A, B, db = params["x"], params["lora_A"], params["lora_B"], params["domain_bias"]
    out = routed_linear(x, None, None, A, B, db, segments=group_by_domain(ids, case[4]), scaling=0.5)
    expected = low_rank_reference(x, A, B, db, ids, 0.5)
    torch.testing.assert_close(out, expected)
    upstream = torch.randn_like(out)
    inputs = [t for t in (x, A, B, db) if t is not None]
    for got, want in zip(torch.autograd.grad(out, inputs, upstream), torch.autograd.grad(expected, inputs, upstream)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("pattern", ["mixed", "single", "skewed"])
@pytest.mark.parametrize("separate_adapter_input", [False, True])
def test_without_weight_gradcheck_passes(pattern, separate_adapter_input):
    params, ids = _inputs(16, 3, 2, 2, 3, pattern)
    segments = group_by_domain(ids, 3)
    x, A, B, db = params["x"], params["lora_A"], params["lora_B"], params["domain_bias"]
    if separate_adapter_input:  # x then feeds nothing: its gradient is zero
        a = torch.randn_like(x).requires_grad_(True)
        fn = lambda x, a, A, B, db: routed_linear(x, None, None, A, B, db, segments, 0.7, adapter_input=a)  # noqa: E731
        assert torch.autograd.gradcheck(fn, [x, a, A, B, db])
    else:
        fn = lambda x, A, B, db: routed_linear(x, None, None, A, B, db, segments, 0.7)  # noqa: E731
        assert torch.autograd.gradcheck(fn, [x, A, B, db])


def test_grouping_is_stable_and_flags_single_domain():
    segments = group_by_domain(torch.tensor([2, 0, 2, 1, 0]), 4)
    assert segments.order.tolist() == [1, 4, 3, 0, 2]
    assert segments.offsets.tolist() == [2, 3, 5, 5]
    assert group_by_domain(torch.tensor([3, 3, 3]), 4).single_domain == 3


@pytest.mark.parametrize("base", ["weight and bias", "bias only", "neither"])
@pytest.mark.parametrize("separate_adapter_input", [False, True])
@pytest.mark.parametrize("domain_bias", [True, False])
def test_masked_path_gradcheck_passes(base, separate_adapter_input, domain_bias):
    params, ids = _inputs(11, 3, 2, 2, 3, "mixed")
    weight = params["weight"] if base == "weight and bias" else None
    bias = None if base == "neither" else params["bias"]
    db = params["domain_bias"] if domain_bias else None
    off_domain = Routing(ids, 3, None).off_domain(3)
    a = torch.randn_like(params["x"]).requires_grad_(True) if separate_adapter_input else None

    def fn(x, weight, bias, A, B, db, a):
        return masked_linear(x, weight, bias, A, B, db, ids, off_domain, 0.7, adapter_input=a)

    inputs = (params["x"], weight, bias, params["lora_A"], params["lora_B"], db, a)
    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("path", ["grouped", "masked"])
@pytest.mark.parametrize("case", CASES[:7])
@pytest.mark.parametrize("grad_mode", ["no_grad", "inference_mode"])
def test_forward_without_gradients_matches_per_sample_reference(path, case, grad_mode):
    """Without gradients the paths skip their autograd function; the output is the same maths."""
    params, ids = _inputs(*case)
    a = torch.randn_like(params["x"])  # a separate adapter input (dropout in training) takes the same route
    with torch.no_grad() if grad_mode == "no_grad" else torch.inference_mode():
        if path == "grouped":
            out = routed_linear(**params, segments=group_by_domain(ids, case[4]), scaling=0.5, adapter_input=a)
        else:
            out = masked_linear(**params, domain_ids=ids, off_domain=Routing(ids, case[4], None).off_domain(case[4]),
                                scaling=0.5, adapter_input=a)
    assert not out.requires_grad
    with torch.no_grad():
        base = params["x"] @ params["weight"].t() + params["bias"]
        expected = base + low_rank_reference(a, params["lora_A"], params["lora_B"], params["domain_bias"], ids, 0.5)
    torch.testing.assert_close(out, expected)
