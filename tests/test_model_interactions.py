"""Interaction layers of the zoo against slow, obvious references (loops straight from the papers' formulas)."""

from __future__ import annotations

import itertools

import pytest
import torch

from mlora_peft.models.autoint import InteractingLayer
from mlora_peft.models.cin import CIN
from mlora_peft.models.cross import CrossNetwork
from mlora_peft.models.embedding import pool
from mlora_peft.models.fibinet import BILINEAR_TYPES, Bilinear, SENet
from mlora_peft.models.fm import bi_interaction, fm_second_order
from mlora_peft.models.pnn import inner_products

ROWS, FIELDS, WIDTH = 3, 4, 5


def fields(seed: int = 0) -> torch.Tensor:
    return torch.randn(ROWS, FIELDS, WIDTH, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------------------------- FM, PNN
def test_fm_second_order_by_hand():
    v = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])  # one row, three fields of width 2
    # <v1,v2> + <v1,v3> + <v2,v3> = 11 + 17 + 39
    assert fm_second_order(v).tolist() == [67.0]


def test_fm_terms_equal_the_explicit_pairwise_sum():
    v = fields()
    pairwise = torch.stack([
        sum(v[n, i] * v[n, j] for i, j in itertools.combinations(range(FIELDS), 2)) for n in range(ROWS)
    ])  # (N, E)
    torch.testing.assert_close(bi_interaction(v), pairwise)
    torch.testing.assert_close(fm_second_order(v), pairwise.sum(1))


def test_pnn_inner_products_in_pair_order():
    v = fields()
    expected = torch.tensor([[float(v[n, i] @ v[n, j]) for i, j in itertools.combinations(range(FIELDS), 2)]
                             for n in range(ROWS)], dtype=v.dtype)
    torch.testing.assert_close(inner_products(v), expected)


# ------------------------------------------------------------------------------------- cross layers
@pytest.mark.parametrize("matrix", [False, True])
def test_cross_network_follows_the_dcn_and_dcnv2_formulas(matrix):
    width = 6
    net = CrossNetwork(width, num_layers=2, matrix=matrix).double()
    with torch.no_grad():
        net.biases.normal_()
    x0 = torch.randn(ROWS, width, dtype=torch.float64)
    rows = []
    for n in range(ROWS):
        x = x0[n]
        for w, b in zip(net.weights, net.biases):
            if matrix:  # DCNv2: x0 * (W x + b) + x
                x = x0[n] * (w @ x + b) + x
            else:  # DCN: x0 x^T w + b + x
                x = torch.outer(x0[n], x) @ w + b + x
        rows.append(x)
    torch.testing.assert_close(net(x0), torch.stack(rows))


# ------------------------------------------------------------------------------------- CIN
def test_cin_equals_the_triple_loop():
    v = fields()
    cin = CIN(FIELDS, layer_sizes=[3, 2]).double()
    expected = torch.zeros(ROWS, 5, dtype=v.dtype)
    for n in range(ROWS):
        x, column = v[n], 0
        for w in cin.weights:
            nxt = torch.zeros(w.shape[0], WIDTH, dtype=v.dtype)
            for h in range(w.shape[0]):
                for i in range(w.shape[1]):
                    for j in range(FIELDS):
                        nxt[h] += w[h, i, j] * x[i] * v[n, j]
            expected[n, column: column + w.shape[0]] = nxt.sum(1)  # sum pooling over the embedding axis
            x, column = nxt, column + w.shape[0]
    torch.testing.assert_close(cin(v), expected)


# ------------------------------------------------------------------------------------- FiBiNET
def test_senet_reweights_fields_as_the_loop_does():
    v = fields()
    senet = SENet(FIELDS, reduction_ratio=2).double()
    w1, w2 = senet.squeeze.weight, senet.excite.weight  # (F/r, F), (F, F/r)
    for n in range(ROWS):
        z = torch.stack([v[n, f].mean() for f in range(FIELDS)])
        a = torch.relu(w2 @ torch.relu(w1 @ z))
        expected = torch.stack([a[f] * v[n, f] for f in range(FIELDS)])
        torch.testing.assert_close(senet(v)[n], expected)


@pytest.mark.parametrize("bilinear_type", BILINEAR_TYPES)
def test_bilinear_interaction_equals_the_pair_loop(bilinear_type):
    v = fields()
    layer = Bilinear(FIELDS, WIDTH, bilinear_type).double()
    for n in range(ROWS):
        expected = []
        for p, (i, j) in enumerate(itertools.combinations(range(FIELDS), 2)):
            index = {"field_all": 0, "field_each": i, "field_interaction": p}[bilinear_type]
            expected.append((v[n, i] @ layer.weight[index]) * v[n, j])
        torch.testing.assert_close(layer(v)[n], torch.stack(expected))


# ------------------------------------------------------------------------------------- AutoInt
def test_autoint_attention_equals_the_loop_over_heads_and_fields():
    heads, head_dim = 2, 3
    layer = InteractingLayer(WIDTH, num_heads=heads, head_dim=head_dim).double()
    v = fields()
    out = layer(v)
    for n, m in itertools.product(range(ROWS), range(FIELDS)):
        per_head = []
        for h in range(heads):
            rows = slice(h * head_dim, (h + 1) * head_dim)
            q, k, val = layer.query[rows], layer.key[rows], layer.value[rows]
            scores = torch.stack([(q @ v[n, m]) @ (k @ v[n, f]) for f in range(FIELDS)])
            alpha = torch.exp(scores) / torch.exp(scores).sum()
            per_head.append(sum(alpha[f] * (val @ v[n, f]) for f in range(FIELDS)))
        expected = torch.relu(torch.cat(per_head) + layer.residual @ v[n, m])
        torch.testing.assert_close(out[n, m], expected)


# ------------------------------------------------------------------------------------- pooling
@pytest.mark.parametrize("pooling", ["mean", "sum", "max"])
def test_sequence_pooling_skips_padding(pooling):
    vectors = torch.randn(3, 4, 2, dtype=torch.float64)
    mask = torch.tensor([[True, True, False, False], [False, False, False, False], [True, True, True, True]])
    reduce = {"mean": lambda x: x.mean(0), "sum": lambda x: x.sum(0), "max": lambda x: x.max(0).values}[pooling]
    expected = torch.stack([reduce(vectors[n][mask[n]]) if mask[n].any() else torch.zeros(2, dtype=torch.float64)
                            for n in range(3)])
    torch.testing.assert_close(pool(vectors, mask, pooling), expected)
