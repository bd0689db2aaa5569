"""Exporting adapted models for serving: one merged domain, or every domain with ids as an input.

`export_merged` folds one domain into a copy of the base weights and exports the plain model.
`export_routed` exports the multi-domain model with the per-row domain ids as an input. The usual
routing may group rows by domain, which needs data-dependent shapes; while `torch.export` traces,
each adapted layer takes the masked path instead (`masked_linear`: static shapes).
`export_onnx` writes either program as ONNX when the `onnx` and `onnxscript` packages are present.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

import torch
from peft import PeftModel
from torch import Tensor, nn
from torch.export import Dim, ExportedProgram, ShapesCollection

from .tuner.layer import MultiDomainLoraLayer
from .tuner.routing import Routing, routed


class RoutedForExport(nn.Module):
    """The adapted model as a module whose forward takes the domain ids as an input.

    Calls `model(*args, domain_ids=ids, **kwargs)` of a `PeftModel` without the routing hooks (their
    checks read tensor values); ids are used as given, so keep them in [0, num_domains).

    Example:
        >>> import torch, mlora_peft
        >>> from peft import get_peft_model
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
        >>> model = get_peft_model(net, mlora_peft.MultiDomainLoraConfig(num_domains=3, r=2))
        >>> RoutedForExport(model)(torch.randn(2, 4), domain_ids=torch.tensor([0, 2])).shape
        torch.Size([2, 1])
    """

    def __init__(self, model: PeftModel) -> None:
        super().__init__()
        if not isinstance(model, PeftModel):
            raise TypeError(f"RoutedForExport wraps a PeftModel with an MLoRA adapter, got {type(model).__name__}.")
        self.model = model.get_base_model()
        if not any(isinstance(m, MultiDomainLoraLayer) for m in self.model.modules()):
            raise ValueError("The model holds no MLoRA layer; export it with torch.export.export directly.")
        self.num_domains = model.base_model.routing_config.num_domains

    def forward(self, *args: Any, domain_ids: Tensor, **kwargs: Any) -> Any:
        ids = domain_ids.reshape(-1)  # (N,)
        with routed(Routing(ids, self.num_domains, None)):
            return self.model.forward(*args, **kwargs)  # .forward: the routing hooks are bypassed on purpose


def export_routed(
    model: PeftModel,
    args: tuple,
    domain_ids: Tensor,
    kwargs: Optional[Mapping[str, Any]] = None,
    dynamic_batch: bool = True,
) -> ExportedProgram:
    """Export the multi-domain model; the program takes the inputs plus `domain_ids=` (an `(N,)` int64 tensor).

    Args:
        model: a `PeftModel` with an MLoRA adapter, in eval mode.
        args: example positional inputs (a tuple), e.g. `(features,)`.
        domain_ids: example `(N,)` int64 domain ids, one per row of the batch.
        kwargs: example keyword inputs, if the model takes any.
        dynamic_batch: let the batch size (dimension 0 of every input tensor) vary; use N >= 2 rows.

    Returns:
        The `torch.export.ExportedProgram`; call `program.module()(*args, domain_ids=ids)`.

    Raises:
        TypeError: `model` is not a `PeftModel`, or `domain_ids` is not an int64 tensor.
        ValueError: the model is in training mode.

    Example:
        >>> import torch, mlora_peft
        >>> from peft import get_peft_model
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
        >>> model = get_peft_model(net, mlora_peft.MultiDomainLoraConfig(num_domains=3, r=2)).eval()
        >>> program = export_routed(model, (torch.randn(4, 4),), torch.tensor([0, 1, 2, 1]))
        >>> program.module()(torch.randn(3, 4), domain_ids=torch.tensor([2, 2, 0])).shape
        torch.Size([3, 1])
    """
    if not isinstance(domain_ids, Tensor) or domain_ids.dtype != torch.long:
        raise TypeError(f"domain_ids must be an int64 tensor of shape (N,), got {_describe(domain_ids)}.")
    _check_eval(model)
    wrapper = RoutedForExport(model)
    kwargs = {**(kwargs or {}), "domain_ids": domain_ids.reshape(-1)}
    return _export(wrapper, tuple(args), kwargs, dynamic_batch)


def export_merged(
    model: PeftModel,
    domain: Union[int, str],
    args: tuple,
    kwargs: Optional[Mapping[str, Any]] = None,
    dynamic_batch: bool = True,
) -> ExportedProgram:
    """Export the plain model with domain `domain` folded into (a copy of) its weights.

    Args:
        model: a `PeftModel` with an MLoRA adapter, in eval mode; it is left unchanged.
        domain: the domain to serve, by index or name.
        args: example positional inputs (a tuple).
        kwargs: example keyword inputs, if the model takes any.
        dynamic_batch: let the batch size (dimension 0 of every input tensor) vary; use N >= 2 rows.

    Returns:
        The `torch.export.ExportedProgram` of the merged model; it takes the model's own inputs.

    Raises:
        TypeError: `model` is not a `PeftModel`.
        ValueError: an unknown domain, or the model is in training mode.

    Example:
        >>> import torch, mlora_peft
        >>> from peft import get_peft_model
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
        >>> model = get_peft_model(net, mlora_peft.MultiDomainLoraConfig(domain_names=["a", "b"], r=2)).eval()
        >>> export_merged(model, "b", (torch.randn(4, 4),)).module()(torch.randn(3, 4)).shape
        torch.Size([3, 1])
    """
    if not isinstance(model, PeftModel):
        raise TypeError(f"export_merged takes a PeftModel with an MLoRA adapter, got {type(model).__name__}.")
    _check_eval(model)
    merged = copy.deepcopy(model).merge_and_unload(domain=domain)
    return _export(merged, tuple(args), dict(kwargs or {}), dynamic_batch)


def export_onnx(program: ExportedProgram, path: Union[str, Path]) -> Path:
    """Write an exported program (from `export_routed` or `export_merged`) as an ONNX file.

    Args:
        program: the exported program.
        path: the `.onnx` file to write.

    Returns:
        The path written.

    Raises:
        ImportError: the `onnx` or `onnxscript` package is missing (`pip install onnx onnxscript`).
    """
    import importlib.util

    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(f"ONNX export needs {missing}; install them with `pip install onnx onnxscript`.")
    path = Path(path)
    torch.onnx.export(program, f=str(path), dynamo=True)
    return path


def _export(module: nn.Module, args: tuple, kwargs: dict, dynamic_batch: bool) -> ExportedProgram:
    dynamic_shapes = _batch_dims(module, args, kwargs) if dynamic_batch else None
    return torch.export.export(module, args, kwargs, dynamic_shapes=dynamic_shapes)


def _batch_dims(module: nn.Module, args: tuple, kwargs: dict) -> Any:
    """Mark dimension 0 of every input tensor as the (shared, dynamic) batch size."""
    shapes = ShapesCollection()
    batch = Dim("batch")
    for tensor in torch.utils._pytree.tree_leaves((args, kwargs)):
        if isinstance(tensor, Tensor) and tensor.dim() > 0:
            shapes[tensor] = {0: batch}
    return shapes.dynamic_shapes(module, args, kwargs)


def _check_eval(model: nn.Module) -> None:
    if model.training:
        raise ValueError("Export serves inference: call model.eval() first (dropout would be traced otherwise).")


def _describe(value: Any) -> str:
    return f"a {value.dtype} tensor" if isinstance(value, Tensor) else type(value).__name__
