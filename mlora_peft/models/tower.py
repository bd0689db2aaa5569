"""The deep tower every zoo model shares, the base class of the single-domain backbones, option checks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from torch import Tensor, nn
from torch.nn import functional as F

DEFAULT_HIDDEN = (256, 128, 64)
DEFAULT_DROPOUT = 0.5
DROPOUT_PLACEMENTS = ("activation", "base_output")
"""Where a tower's hidden-layer dropout acts: after the ReLU, or on the Linear's output `W x + b`."""
INPUT_NORMS = ("none", "batch")
"""What normalises a tower's input first: nothing, or batch normalisation (`nn.BatchNorm1d`)."""


class OutputDropoutLinear(nn.Linear):
    """An `nn.Linear` that drops its own output: `dropout(W x + b)`, with the dropout held as `output_dropout`.

    MLoRA's tuner layer reads `output_dropout` and drops only the base term, leaving the adapter
    term undropped: `dropout(W x + b) + s * B_d A_d x + b_d`, as the MLoRA paper's code does.
    Dropout holds no state, so the state dict is an `nn.Linear`'s.

    Args:
        in_features, out_features, bias: as for `nn.Linear`.
        dropout: probability of the output dropout (active in training mode only).

    Example:
        >>> import torch
        >>> layer = OutputDropoutLinear(4, 3, dropout=0.5).eval()
        >>> x = torch.randn(2, 4)
        >>> torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
        True
    """

    def __init__(self, in_features: int, out_features: int, dropout: float, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.output_dropout = nn.Dropout(check_dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        return self.output_dropout(F.linear(x, self.weight, self.bias))  # (..., out)


class DeepTower(nn.Sequential):
    """`Linear -> ReLU -> Dropout` for each hidden width; the layers MLoRA adapts by default.

    The linear layers sit at indices 0, 3, 6, ... (a Dropout module is kept even at p=0, so the
    names never depend on the dropout). The output head is not part of the tower.

    With `dropout_placement="base_output"` each Linear is an `OutputDropoutLinear` that drops its
    own output and the Dropout after the ReLU has p=0: the same function as "activation" for the
    plain tower (ReLU commutes with the non-negative dropout mask), the same names and state-dict
    keys, but under MLoRA only `W x + b` is dropped, not the adapter term (the paper code's
    `ReLU(dropout(W x + b) + B_d A_d x + b_d)`).

    With `input_norm="batch"` the input is batch-normalised first (`input_norm`, a
    `BatchNorm1d` registered after the layers, so their names and indices stay as they are). The
    id embeddings start tiny; normalised, the tower sees them at unit scale, which let the plain
    MLP learn the synthetic data's user-item affinity; on Amazon-6 and MovieLens-100K it lowered
    WAUC a little (docs/benchmarks.md). A training batch of one row is normalised with the
    running statistics.

    Args:
        in_features: width of the tower's input.
        hidden: the hidden widths, e.g. (256, 128, 64).
        dropout: dropout probability of each hidden layer.
        dropout_placement: "activation" (after each ReLU) or "base_output" (on each Linear's
            `W x + b`, before an MLoRA adapter's term is added).
        input_norm: "none" or "batch".

    Raises:
        ValueError: empty or non-positive widths, a dropout outside [0, 1), or an unknown
            dropout_placement or input_norm.

    Example:
        >>> tower = DeepTower(10, hidden=(8, 4), dropout=0.0)
        >>> tower.hidden_linear_names, tower.out_features
        (['0', '3'], 4)
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        dropout: float,
        *,
        dropout_placement: str = "activation",
        input_norm: str = "none",
    ) -> None:
        hidden = check_widths(hidden, "hidden")
        check_dropout(dropout)
        check_dropout_placement(dropout_placement)
        check_input_norm(input_norm)
        layers: list[nn.Module] = []
        for fan_in, width in zip((in_features, *hidden[:-1]), hidden):
            if dropout_placement == "base_output":
                layers += [OutputDropoutLinear(fan_in, width, dropout), nn.ReLU(), nn.Dropout(0.0)]
            else:
                layers += [nn.Linear(fan_in, width), nn.ReLU(), nn.Dropout(dropout)]
        super().__init__(*layers)
        self.out_features = hidden[-1]
        self.hidden_linear_names = [str(3 * i) for i in range(len(hidden))]
        self.input_norm = nn.BatchNorm1d(in_features) if input_norm == "batch" else None

    def forward(self, x: Tensor) -> Tensor:
        if self.input_norm is None:
            return super().forward(x)
        norm = self.input_norm
        if self.training and x.shape[0] == 1:  # one row has no batch statistics: use the running ones
            x = F.batch_norm(x, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps)
        else:
            x = norm(x)  # (N, in)
        for module in list(self)[:-1]:  # the norm is registered last
            x = module(x)
        return x

    def block(self, index: int, x: Tensor) -> Tensor:
        """Hidden layer `index` alone (its Linear, ReLU and Dropout): `(N, in_k) -> (N, hidden[index])`."""
        for module in list(self)[3 * index: 3 * index + 3]:
            x = module(x)
        return x


class Backbone(nn.Module):
    """Base of the single-domain backbones: a `deep` tower whose hidden layers MLoRA adapts.

    Subclasses take `(features, *, hidden, dropout, dropout_placement, ...)`, build `self.deep` (a
    `DeepTower`), and return `(N,)` logits from `forward(batch)`. `paper` cites the model's source.
    """

    paper: ClassVar[str] = ""
    mlora_rows_independent: ClassVar[bool] = True
    """Each output row depends on its own input row alone (batch statistics aside), so MLoRA may sort
    a call's rows by domain inside the call (`mlora_peft.tuner.row_order`)."""
    deep: DeepTower

    @property
    def mlora_target_modules(self) -> list[str]:
        """The paper's MLoRA placement: the deep tower's hidden linear layers (not the head)."""
        return [f"deep.{name}" for name in self.deep.hidden_linear_names]


def check_widths(widths: Sequence[int], name: str) -> tuple[int, ...]:
    """`widths` as a tuple of ints >= 1, or a `ValueError` naming option `name`."""
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence):
        raise TypeError(f"{name}={widths!r} must be a list of layer widths, e.g. {name}=[256, 128, 64].")
    widths = tuple(widths)
    if not widths or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths):
        raise ValueError(f"{name}={list(widths)!r} must be a non-empty list of ints >= 1, e.g. {name}=[256, 128, 64].")
    return widths


def check_dropout(dropout: float) -> float:
    """`dropout` if it lies in [0, 1), else a `ValueError`."""
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout={dropout!r} must be a number in [0, 1), e.g. 0.5.")
    return float(dropout)


def check_dropout_placement(placement: str) -> str:
    """`placement` if it is one of `DROPOUT_PLACEMENTS`, else a `ValueError` listing them."""
    if placement not in DROPOUT_PLACEMENTS:
        raise ValueError(
            f"dropout_placement={placement!r} is not supported; use 'activation' (dropout after each ReLU, the "
            "default) or 'base_output' (dropout on each hidden Linear's W x + b only, as the MLoRA paper's code)."
        )
    return placement


def check_input_norm(input_norm: str) -> str:
    """`input_norm` if it is one of `INPUT_NORMS`, else a `ValueError` listing them."""
    if input_norm not in INPUT_NORMS:
        raise ValueError(f"input_norm={input_norm!r} is not supported; use 'none' (the default) or 'batch' "
                         "(batch normalisation of the deep tower's input).")
    return input_norm


def check_count(value: int, name: str) -> int:
    """`value` if it is an int >= 1, else a `ValueError` naming option `name`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be an int >= 1.")
    return value
