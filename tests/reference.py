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


def low_rank_reference(
    x: Tensor,
    lora_A: Tensor,
    lora_B: Tensor,
    domain_bias: Tensor | None,
    domain_ids: Tensor,
    scaling: float,
) -> Tensor:
    """The adapter term alone, `scaling * B_d A_d x_n + b_d` for each row n of domain d = domain_ids[n]."""
    no_base = x.new_zeros(lora_B.shape[1], x.shape[1])  # (out, in): W = 0, no base bias
    return mlora_linear_reference(x, no_base, None, lora_A, lora_B, domain_bias, domain_ids, scaling)


def layer_reference(layer, x: Tensor, domain_ids: Tensor, adapter: str = "default") -> Tensor:
    """The reference applied with the weights of a `MultiDomainLoraLayer`."""
    base = layer.base_layer
    bias = layer.mdlora_bias[adapter] if adapter in layer.mdlora_bias else None
    return mlora_linear_reference(
        x, base.weight, base.bias, layer.mdlora_A[adapter], layer.mdlora_B[adapter], bias, domain_ids,
        layer.scaling[adapter],
    )


def rows_of(inputs, index: int):
    """Row `index` of a tensor or of every tensor in a batch dict, keeping the batch axis."""
    if isinstance(inputs, dict):
        return {k: v[index : index + 1] for k, v in inputs.items()}
    return inputs[index : index + 1]


def model_reference(base_model, peft_inner, inputs, domain_ids: Tensor, adapter: str = "default") -> Tensor:
    """Run `base_model` one sample at a time with each adapted Linear's weights replaced by
    `W + s B_d A_d` and `b + b_d` for that sample's domain, built from `peft_inner`'s own tensors
    (so gradients flow to them). Independent of the layer's routing code."""
    from torch.func import functional_call

    from mlora_peft import MultiDomainLoraLayer

    layers = {n: m for n, m in peft_inner.named_modules() if isinstance(m, MultiDomainLoraLayer)}
    outputs = []
    for n in range(domain_ids.shape[0]):
        d = int(domain_ids[n])
        params = {}
        for name, layer in layers.items():
            base = layer.base_layer
            params[f"{name}.weight"] = base.weight + layer.scaling[adapter] * (
                layer.mdlora_B[adapter][d] @ layer.mdlora_A[adapter][d]
            )
            bias = base.bias if base.bias is not None else torch.zeros_like(base.weight[:, 0])
            if adapter in layer.mdlora_bias:
                bias = bias + layer.mdlora_bias[adapter][d]
            params[f"{name}.bias"] = bias
        for name, param in peft_inner.named_parameters():
            clean = name.replace(".base_layer", "")
            if "mdlora_" not in name and clean not in params:
                params[clean] = param
        outputs.append(functional_call(base_model, params, (rows_of(inputs, n),)))
    return torch.cat(outputs)
