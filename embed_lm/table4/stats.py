"""Error bars for Table 4: how sure is a row's difference from the default row? (used by embed_lm/table4/report.py)

Two sources of noise, two intervals, both at `level` (95 %) and both of (row - reference):

* over seeds (training noise): the row and its reference trained with the same seeds s = 1..S; the differences
  d_s = row_s - reference_s give mean(d) +- t_{S-1, (1+level)/2} * sd(d) / sqrt(S) (Student's t; S >= 2).
* over queries (test-set noise): a paired bootstrap. Each query's score (mean over seeds) under the row and under
  the reference, x_q and y_q, q = 1..Q; resample the Q queries with replacement, take mean(x) - mean(y) each time;
  the percentile interval of those means (scipy.stats.bootstrap, paired).

A row agrees or disagrees with the paper only where every interval it has excludes 0 (on the same side); otherwise
"no significant difference". Run: python -m embed_lm.report table4 <sweep>.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int          # seeds (over seeds) or queries (bootstrap)
    kind: str       # "seeds" | "queries"

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        return f"{self.mean:+.2f} [{self.low:+.2f}, {self.high:+.2f}]"


def mean_sd(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof 1; None for a single value)."""
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), (float(arr.std(ddof=1)) if arr.size > 1 else None)


def seed_interval(differences: list[float], level: float = LEVEL) -> Interval | None:
    """Student-t interval of the mean of per-seed paired differences; None with fewer than 2 seeds."""
    d = np.asarray(differences, dtype=float)
    if d.size < 2:
        return None
    mean, se = float(d.mean()), float(d.std(ddof=1)) / math.sqrt(d.size)
    half = float(stats.t.ppf((1 + level) / 2, df=d.size - 1)) * se
    return Interval(mean, mean - half, mean + half, int(d.size), "seeds")


def paired_bootstrap(row: np.ndarray, reference: np.ndarray, level: float = LEVEL, n_resamples: int = 10_000,
                     seed: int = 0) -> Interval:
    """Percentile interval of mean(row) - mean(reference) over queries resampled with replacement, the same
    resample for both (paired): row, reference (Q,) scores of the same queries in the same order."""
    x, y = np.asarray(row, dtype=float), np.asarray(reference, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or x.size < 2:
        raise ValueError(f"paired_bootstrap needs two equal-length 1-d score arrays (>= 2 queries), got {x.shape} "
                         f"and {y.shape}")
    mean = float(x.mean() - y.mean())
    if np.allclose(x - y, x[0] - y[0]):  # every query moved by the same amount: no spread to resample
        return Interval(mean, mean, mean, int(x.size), "queries")
    res = stats.bootstrap((x, y), lambda a, b, axis=-1: a.mean(axis=axis) - b.mean(axis=axis), paired=True,
                          vectorized=True, n_resamples=n_resamples, confidence_level=level, method="percentile",
                          random_state=np.random.default_rng(seed))
    return Interval(mean, float(res.confidence_interval.low), float(res.confidence_interval.high), int(x.size),
                    "queries")


def verdict(intervals: list[Interval | None], paper_delta: float | None) -> str:
    """'agrees' / 'disagrees' with the sign of the paper's delta when every available interval excludes 0 on the
    same side; 'no significant difference' otherwise; 'n/a' without an interval or a paper delta."""
    found = [i for i in intervals if i is not None]
    if not found or paper_delta is None:
        return "n/a"
    if not all(i.excludes_zero() for i in found) or len({i.mean > 0 for i in found}) > 1:
        return "no significant difference"
    return "agrees" if (found[0].mean > 0) == (paper_delta > 0) else "disagrees"
