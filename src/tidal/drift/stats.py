"""Drift statistics on histograms, with Evidently's defaults and thresholds.

Every function takes bin counts (numpy), never rows, so a window of any size costs the same.
Which test decides, as Evidently chooses by default (:func:`default_test`):

============  ===========================  ==================================  ===========
column        reference ≤ 1,000 rows       reference > 1,000 rows              any size
============  ===========================  ==================================  ===========
numeric       Kolmogorov-Smirnov p < 0.05  Wasserstein / reference std ≥ 0.1   PSI ≥ 0.1
categorical   chi-squared p < 0.05         Jensen-Shannon distance ≥ 0.1       PSI ≥ 0.1
============  ===========================  ==================================  ===========

PSI is always reported (30 bins, bands: < 0.1 none, 0.1–0.2 moderate, ≥ 0.2 significant).

>>> ref = np.array([10, 20, 30, 40.0]); cur = np.array([40, 30, 20, 10.0])
>>> round(psi(ref, cur), 4), psi_band(psi(ref, cur))
(0.9129, 'significant')
>>> round(jensen_shannon(ref, cur), 4)
0.3263
>>> drifted("wasserstein", 0.12), drifted("ks", 0.2)
(True, False)
"""

from __future__ import annotations

import numpy as np
from scipy import stats as _stats

__all__ = ["THRESHOLDS", "PSI_BANDS", "SMALL_REFERENCE", "default_test", "drifted", "psi", "psi_band", "ks_test",
           "wasserstein_norm", "chi_squared", "jensen_shannon"]

#: test → threshold; p-value tests drift below it, distances at or above it (Evidently's defaults).
THRESHOLDS = {"ks": 0.05, "chisquare": 0.05, "wasserstein": 0.1, "jensenshannon": 0.1, "psi": 0.1}
P_VALUE_TESTS = frozenset({"ks", "chisquare"})
PSI_BANDS = (0.1, 0.2)
SMALL_REFERENCE = 1000  # Evidently: p-value tests up to this many reference rows, distances above
_FLOOR = 0.0001  # Evidently replaces empty bins' shares with this before PSI


def default_test(kind: str, reference_rows: int) -> str:
    """The test Evidently uses by default for a ``numeric`` or ``categorical`` column."""
    small = reference_rows <= SMALL_REFERENCE
    if kind == "numeric":
        return "ks" if small else "wasserstein"
    return "chisquare" if small else "jensenshannon"


def drifted(test: str, value: float, threshold: float | None = None) -> bool:
    """Whether ``value`` of ``test`` means drift (p-values below, distances at or above the threshold)."""
    t = THRESHOLDS[test] if threshold is None else threshold
    return bool(value < t) if test in P_VALUE_TESTS else bool(value >= t)


def _shares(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total > 0 else np.zeros(len(counts))


def psi(reference: np.ndarray, current: np.ndarray) -> float:
    """Population stability index of two histograms over the same bins (empty bins → 0.0001)."""
    r = _shares(np.asarray(reference, np.float64))
    c = _shares(np.asarray(current, np.float64))
    r = np.where(r == 0, _FLOOR, r)
    c = np.where(c == 0, _FLOOR, c)
    return float(np.sum((r - c) * np.log(r / c)))


def psi_band(value: float) -> str:
    """``none`` (< 0.1), ``moderate`` (0.1–0.2) or ``significant`` (≥ 0.2)."""
    return "none" if value < PSI_BANDS[0] else "moderate" if value < PSI_BANDS[1] else "significant"


def ks_test(ref_cdf: np.ndarray, cur_cdf: np.ndarray, ref_below: np.ndarray, cur_below: np.ndarray,
            n: int, m: int, p_value: bool = True) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov (statistic, p-value) from both CDFs at the reference's edges.

    ``*_cdf[j]`` is P(X ≤ e_j) and ``*_below[j]`` is P(X < e_j); between two edges the
    reference's CDF is flat when the edges are all its values, so the largest gap lies at or
    just below an edge and the statistic is exact. The p-value is the Kolmogorov distribution at
    the effective size n·m/(n+m), as scipy's asymptotic two-sample test (NaN with ``p_value=False``).
    """
    if n == 0 or m == 0:
        return 0.0, 1.0
    d = float(max(np.max(np.abs(ref_cdf - cur_cdf), initial=0.0),
                  np.max(np.abs(ref_below - cur_below), initial=0.0)))
    d = min(d, 1.0)
    if not p_value:
        return d, float("nan")
    en = n * m / (n + m)
    p = float(_stats.kstwo.sf(d, max(int(round(en)), 1)))
    return d, min(max(p, 0.0), 1.0)


def wasserstein_norm(edges: np.ndarray, ref_cdf: np.ndarray, cur_cdf: np.ndarray, ref_below: np.ndarray,
                     cur_below: np.ndarray, below: float, above: float, ref_std: float) -> float:
    """Wasserstein-1 distance divided by the reference's std (Evidently's ``wasserstein`` test).

    Between two edges the gap between the CDFs goes linearly from its value at the left edge
    to its value just below the right one (exact when both samples are discrete on the edges);
    outside the reference's range the current window's mass adds exactly ``below`` =
    E[(e_0 − X)⁺] and ``above`` = E[(X − e_last)⁺], which the sketch tracks.
    """
    inner = 0.0
    if len(edges) > 1:
        w = np.diff(edges)
        lo = (ref_cdf - cur_cdf)[:-1]
        hi = (ref_below - cur_below)[1:]
        absum = np.abs(lo) + np.abs(hi)
        same = lo * hi >= 0
        safe = np.where(absum > 0, absum, 1.0)
        area = np.where(same, w * absum / 2, w * (lo * lo + hi * hi) / (2 * safe))
        inner = float(area.sum())
    return (inner + below + above) / max(ref_std, 0.001)


def chi_squared(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """Evidently's chi-squared goodness of fit: current counts against reference shares (stat, p)."""
    ref = np.asarray(reference, np.float64)
    cur = np.asarray(current, np.float64)
    m = cur.sum()
    if m == 0 or ref.sum() == 0:
        return 0.0, 1.0
    expected = ref * (m / ref.sum())
    if np.any((expected == 0) & (cur > 0)):  # a category the reference never had
        return float("inf"), 0.0
    keep = expected > 0
    stat, p = _stats.chisquare(cur[keep], expected[keep])
    return float(stat), float(p)


def jensen_shannon(reference: np.ndarray, current: np.ndarray) -> float:
    """Jensen-Shannon distance (natural log, as scipy and Evidently) between two histograms."""
    r = _shares(np.asarray(reference, np.float64))
    c = _shares(np.asarray(current, np.float64))
    mid = (r + c) / 2

    def kl(p: np.ndarray) -> float:
        nz = p > 0
        return float(np.sum(p[nz] * np.log(p[nz] / mid[nz])))

    return float(np.sqrt(max((kl(r) + kl(c)) / 2, 0.0)))
