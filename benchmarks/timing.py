"""Timing a run against its baseline in paired rounds, and the spread of the ratios with a verdict that respects it.

Each round times the baseline just before the run, which cancels load that comes and goes on a
shared machine; what is left shows in the spread of the rounds' ratios.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, NamedTuple, Optional

import torch


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


def paired_ratio(baseline: Callable[[], None], run: Callable[[], None], rounds: int, calls: int,
                 device: str = "cpu") -> tuple[float, float]:
    """Best baseline milliseconds per call and the median of `run / baseline` over paired rounds.

    Each round times the baseline just before the run, which cancels load that comes and goes.
    """
    best_ms, ratios = paired_ratios(baseline, run, rounds, calls, device)
    return best_ms, statistics.median(ratios)


def paired_ratios(baseline: Callable[[], None], run: Callable[[], None], rounds: int, calls: int,
                  device: str = "cpu") -> tuple[float, list[float]]:
    """Best baseline milliseconds per call and the `run / baseline` ratio of every paired round."""
    for fn in (baseline, run):
        fn(), fn()  # warm up
    ratios, best = [], float("inf")
    for _ in range(rounds):
        base_s = seconds_per_call(baseline, calls, device)
        ratios.append(seconds_per_call(run, calls, device) / base_s)
        best = min(best, base_s)
    return best * 1e3, ratios


def seconds_per_call(run: Callable[[], None], calls: int, device: str = "cpu") -> float:
    """Seconds per call of `run`, over `calls` calls, waiting for the device before and after."""
    sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        run()
    sync(device)
    return (time.perf_counter() - start) / calls


def sync(device: str) -> None:
    """Wait for a CUDA device to finish its queued work (nothing to do on the CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
