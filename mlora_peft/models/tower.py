"""The deep tower every zoo model shares, the base class of the single-domain backbones, option checks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from torch import Tensor, nn

DEFAULT_HIDDEN = (256, 128, 64)
DEFAULT_DROPOUT = 0.5


class DeepTower(nn.Sequential):
    """`Linear -> ReLU -> Dropout` for each hidden width; the layers MLoRA adapts by default.

    The linear layers sit at indices 0, 3, 6, ... (a Dropout module is kept even at p=0, so the
    names never depend on the dropout). The output head is not part of the tower.

    Args:
        in_features: width of the tower's input.
        hidden: the hidden widths, e.g. (256, 128, 64).
        dropout: dropout probability after each hidden layer.

    Raises:
        ValueError: empty or non-positive widths, or a dropout outside [0, 1).

    Example:
        >>> tower = DeepTower(10, hidden=(8, 4), dropout=0.0)
        >>> tower.hidden_linear_names, tower.out_features
        (['0', '3'], 4)
    """

    def __init__(self, in_features: int, hidden: Sequence[int], dropout: float) -> None:
        hidden = check_widths(hidden, "hidden")
        check_dropout(dropout)
        layers: list[nn.Module] = []
        for fan_in, width in zip((in_features, *hidden[:-1]), hidden):
            layers += [nn.Linear(fan_in, width), nn.ReLU(), nn.Dropout(dropout)]
        super().__init__(*layers)
        self.out_features = hidden[-1]
        self.hidden_linear_names = [str(3 * i) for i in range(len(hidden))]

    def block(self, index: int, x: Tensor) -> Tensor:
        """Hidden layer `index` alone (its Linear, ReLU and Dropout): `(N, in_k) -> (N, hidden[index])`."""
        for module in list(self)[3 * index: 3 * index + 3]:
            x = module(x)
        return x


class Backbone(nn.Module):
    """Base of the single-domain backbones: a `deep` tower whose hidden layers MLoRA adapts.

    Subclasses take `(features, *, hidden, dropout, ...)`, build `self.deep` (a `DeepTower`), and
    return `(N,)` logits from `forward(batch)`. `paper` cites the model's source.
    """

    paper: ClassVar[str] = ""
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


def check_count(value: int, name: str) -> int:
    """`value` if it is an int >= 1, else a `ValueError` naming option `name`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be an int >= 1.")
    return value
