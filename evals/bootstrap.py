"""Bootstrap confidence intervals: of a mean, and of the paired difference between two configurations.

Paired: both configurations answered the same questions, so the difference is resampled question by question
(the same resampled indices for both), which removes the between-question variance that an unpaired comparison
would carry. Percentile intervals; a fixed seed makes every report reproducible.

Why not ``scipy.stats.bootstrap``: measured on 2 CPU cores, 2,000 resamples of a paired difference, this vectorised
numpy version takes 7.0 ms at n=96 questions and 27 ms at n=500, scipy's (``method="percentile"``, vectorized)
15.6 ms and 32 ms (BCa: 16.5 ms and 36 ms), and the intervals agree to Monte-Carlo noise (n=96:
[-0.0104, 0.0568] vs [-0.0093, 0.0576]; tests/test_eval_stats.py checks the agreement).

>>> iv = paired_bootstrap([0.0, 0.5, 1.0, 0.5], [0.5, 0.5, 1.0, 1.0], samples=1000, seed=0)
>>> round(iv.mean, 3), iv.n
(0.25, 4)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["Interval", "bootstrap_mean", "paired_bootstrap"]


@dataclass(frozen=True)
class Interval:
    """A mean with its ``level`` confidence interval over ``n`` questions (``mean`` is None when ``n`` is 0)."""

    mean: float | None
    low: float | None
    high: float | None
    n: int
    level: float = 0.95

    @property
    def excludes_zero(self) -> bool:
        """The interval lies strictly on one side of 0 (a difference that is significant at ``level``)."""
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fmt(self, digits: int = 3) -> str:
        if self.mean is None or self.low is None or self.high is None:
            return "–"
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def _interval(values: np.ndarray, samples: int, seed: int, level: float) -> Interval:
    n = len(values)
    if n == 0:
        return Interval(None, None, None, 0, level)
    mean = float(values.mean())
    if n == 1 or samples <= 0:
        return Interval(mean, mean, mean, n, level)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(samples, n))
    means = values[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return Interval(mean, float(low), float(high), n, level)


def bootstrap_mean(values: Sequence[float | None], samples: int = 2000, seed: int = 0, level: float = 0.95) -> Interval:
    """Mean of the non-None values with a percentile bootstrap interval."""
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    return _interval(arr, samples, seed, level)


def paired_bootstrap(
    a: Sequence[float | None], b: Sequence[float | None], samples: int = 2000, seed: int = 0, level: float = 0.95
) -> Interval:
    """Mean of ``b - a`` over the questions where both have a value, with a paired percentile interval."""
    if len(a) != len(b):
        raise ValueError(f"paired values differ in length ({len(a)} vs {len(b)})")
    diffs = np.asarray([y - x for x, y in zip(a, b, strict=True) if x is not None and y is not None], dtype=float)
    return _interval(diffs, samples, seed, level)
