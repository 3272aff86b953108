"""Summaries over seeds for the tables: mean, sample standard deviation and a 95 % t-interval of the mean, and the
same for paired differences (two methods run with the same seeds).

For values ``x_1 … x_n``: ``mean``, ``std`` (``ddof = 1``), and ``mean ± t_{0.975, n-1} · std / √n``; with one
value the standard deviation and the interval are undefined (NaN). A paired difference of A and B is the summary
of ``A(s) − B(s)`` over the seeds ``s`` both have: the seed fixes what the two runs share, so the interval is
about the difference itself rather than about two noisy means.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Summary:
    mean: float
    std: float
    n: int
    ci95_low: float
    ci95_high: float

    @property
    def excludes_zero(self) -> bool:
        """The 95 % interval lies entirely above or below 0 (False when it is undefined)."""
        return bool(self.ci95_low > 0 or self.ci95_high < 0)

    def scaled(self, factor: float) -> "Summary":
        return Summary(self.mean * factor, self.std * factor, self.n, self.ci95_low * factor, self.ci95_high * factor)


def summarize(values: Sequence[float]) -> Summary:
    """Mean, sample std and the 95 % t-interval of the mean of ``values`` (at least one)."""
    v = np.asarray(values, np.float64)
    if v.ndim != 1 or len(v) == 0:
        raise ValueError(f"values: expected a non-empty 1-D sequence, got shape {v.shape}")
    n = len(v)
    mean = float(v.mean())
    if n == 1:
        return Summary(mean, math.nan, 1, math.nan, math.nan)
    from scipy.stats import t

    std = float(v.std(ddof=1))
    half = float(t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return Summary(mean, std, n, mean - half, mean + half)


def paired(a: Mapping[int, float], b: Mapping[int, float]) -> tuple[Summary, list[int]]:
    """Summary of ``a[s] − b[s]`` over the seeds in both (and those seeds); a one-line ``ValueError`` when none."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError(f"a and b: expected runs with common seeds, got seeds {sorted(a)} and {sorted(b)}")
    return summarize([a[s] - b[s] for s in seeds]), seeds


def mean_std(s: Summary, digits: int = 1) -> str:
    """``mean ± std`` (just the mean with one value), as the Markdown tables print it."""
    if s.n < 2:
        return f"{s.mean:.{digits}f}"
    return f"{s.mean:.{digits}f} ± {s.std:.{digits}f}"


def interval(s: Summary, digits: int = 1) -> str:
    """``[low, high]`` of the 95 % interval, with a ``*`` when it excludes 0 ("n/a" with one value)."""
    if s.n < 2:
        return "n/a (1 seed)"
    return f"[{s.ci95_low:+.{digits}f}, {s.ci95_high:+.{digits}f}]" + (" *" if s.excludes_zero else "")


__all__ = ["Summary", "interval", "mean_std", "paired", "summarize"]
