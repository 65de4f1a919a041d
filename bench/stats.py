"""Summaries of repeated runs: percentiles, the median with its min–max spread, and ratios of
runs paired by round (A_i ÷ B_i from the same interleaved round)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0–100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Spread:
    """The median of n runs and the lowest and highest of them."""

    median: float
    low: float
    high: float
    n: int

    def text(self, digits: int = 2, unit: str = "") -> str:
        """"1.23 (1.10–1.31)" with the unit after each figure's group."""
        if self.n == 0 or math.isnan(self.median):
            return "n/a"
        fmt = f"{{:.{digits}f}}"
        return (f"{fmt.format(self.median)}{unit} "
                f"({fmt.format(self.low)}–{fmt.format(self.high)})")


def spread(values: Sequence[float]) -> Spread:
    finite = [value for value in values if not math.isnan(value)]
    if not finite:
        return Spread(math.nan, math.nan, math.nan, 0)
    return Spread(statistics.median(finite), min(finite), max(finite), len(finite))


def paired_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> Spread:
    """Per-round ratios a_i ÷ b_i of runs from the same round, summarised as a Spread."""
    if len(numerators) != len(denominators):
        raise ValueError("paired runs must have the same count")
    return spread([a / b if b else math.nan for a, b in zip(numerators, denominators, strict=True)])
