"""Slow, obvious references: one sample at a time, straight from the MLoRA formula."""

from __future__ import annotations

import torch
from torch import Tensor


def mlora_linear_reference(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    lora_A: Tensor,
    lora_B: Tensor,
    domain_bias: Tensor | None,
    domain_ids: Tensor,
    scaling: float,
) -> Tensor:
    """`W x_n + b + scaling * B_d A_d x_n + b_d` for each row n of domain d = domain_ids[n]."""
    rows = []
    for n in range(x.shape[0]):
        d = int(domain_ids[n])
        h = weight @ x[n] + scaling * (lora_B[d] @ (lora_A[d] @ x[n]))
        if bias is not None:
            h = h + bias
        if domain_bias is not None:
            h = h + domain_bias[d]
        rows.append(h)
    return torch.stack(rows)


def layer_reference(layer, x: Tensor, domain_ids: Tensor, adapter: str = "default") -> Tensor:
    """The reference applied with the weights of a `MultiDomainLoraLayer`."""
    base = layer.base_layer
    bias = layer.mdlora_bias[adapter] if adapter in layer.mdlora_bias else None
    return mlora_linear_reference(
        x, base.weight, base.bias, layer.mdlora_A[adapter], layer.mdlora_B[adapter], bias, domain_ids,
        layer.scaling[adapter],
    )
