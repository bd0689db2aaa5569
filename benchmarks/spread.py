"""The spread of a speed ratio over paired timing rounds, and a verdict against a target that respects it."""

from __future__ import annotations

import statistics
from typing import NamedTuple, Optional


class Spread(NamedTuple):
    """The paired rounds' ratios: their median and quartiles (a round's ratio moves with the machine's load)."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, ratios: list[float]) -> "Spread":
        low, median, high = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        return cls(median, low, high)

    def __str__(self) -> str:
        return f"{self.median:.2f}x ({self.low:.2f}-{self.high:.2f})"

    def verdict(self, target: Optional[float]) -> str:
        """Against `target`: met by three rounds in four, missed by three in four, or within the noise."""
        if target is None:
            return ""
        outcome = "met" if self.high <= target else "MISSED" if self.low > target else "within noise"
        return f"  target <= {target}x: {outcome}"
