"""Anomaly likelihood post-processing (Ahmad et al. 2017, HTM/NAB).

Raw scores ``u`` (read as ``1 - p``) become surprisals ``-log(1 - u)``, so the
tail stays resolved, and are smoothed by a short moving average; the long-run distribution
of that average is tracked by an exponentially weighted mean and variance
(cumulative while fewer than ``long_window`` values have been seen).  The
likelihood is ``L = 1 - Q((short_mean - mean) / std)`` and the score returned
is its log-scaled form ``log(1 - L) / log(1e-10)`` clipped to [0, 1], so 0.5
means a tail probability of 1e-5.  Scores are 0 during ``probation``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .base import SeriesDetector

__all__ = ["AnomalyLikelihood", "likelihood_kernel"]

_LOG_EPS = math.log(1e-10)


@njit(cache=True)
def likelihood_kernel(slots, raw, sring, spos, ssum, cnt, mean, var, long_window, probation, min_std, out):
    S = sring.shape[1]
    for i in range(raw.shape[0]):
        r = raw[i]
        if math.isnan(r):
            out[i] = np.nan
            continue
        # surprisal of the raw score read as 1 - p (Exp(1) for uniform p)
        r = -math.log1p(-min(max(r, 0.0), 1.0 - 1e-12))
        s = slots[i]
        n = cnt[s]
        p = spos[s]
        k = n if n < S else S
        acc = ssum[s] + r - (sring[s, p] if n >= S else 0.0)
        sring[s, p] = r
        p += 1
        if p == S:
            p = 0
            # exact re-sum once per wrap (no floating drift)
            acc = 0.0
            for j in range(S):
                acc += sring[s, j]
        spos[s] = p
        ssum[s] = acc
        short = acc / (k + 1 if k < S else S)
        m = mean[s]
        if n >= probation:
            sd = math.sqrt(var[s])
            if sd < min_std:
                sd = min_std
            z = (short - m) / sd
            tail = 0.5 * math.erfc(z / math.sqrt(2.0))  # Q(z) = 1 - L
            sc = math.log(tail + 1e-12) / _LOG_EPS
            out[i] = 0.0 if sc < 0.0 else (1.0 if sc > 1.0 else sc)
        else:
            out[i] = 0.0
        a = 1.0 / (n + 1) if n + 1 < long_window else 1.0 / long_window
        d = short - m
        m += a * d
        var[s] = (1.0 - a) * (var[s] + a * d * d)
        mean[s] = m
        cnt[s] = n + 1


class AnomalyLikelihood(SeriesDetector):
    """Wrap a detector and return the log anomaly likelihood of its scores.

    Parameters
    ----------
    inner
        The raw scorer.
    short_window
        Moving average of recent raw scores (HTM's 10).
    long_window
        Effective memory of the raw-score distribution (EW mean/variance).
    probation
        Rows per key that score 0 while the distribution is learned.
    min_std
        Floor on the raw-score standard deviation.
    """

    def __init__(
        self,
        inner: SeriesDetector,
        short_window: int = 10,
        long_window: int = 2000,
        probation: int = 150,
        min_std: float = 0.05,
    ) -> None:
        self.inner = inner
        self.short_window = int(short_window)
        self.long_window = int(long_window)
        self.probation = int(probation)
        self.min_std = float(min_std)
        super().__init__()

    def _fields(self):
        return [
            ("lk_sring", (self.short_window,), np.float64, 0.0),
            ("lk_spos", (), np.int64, 0),
            ("lk_ssum", (), np.float64, 0.0),
            ("lk_cnt", (), np.int64, 0),
            ("lk_mean", (), np.float64, 0.0),
            ("lk_var", (), np.float64, 0.0),
        ]

    def _children(self):
        return [self.inner]

    def _score_slots(self, slots, values, times):
        raw = self.inner._score_slots(slots, values, times)
        out = np.empty(raw.shape[0])
        likelihood_kernel(
            slots, raw, self.lk_sring, self.lk_spos, self.lk_ssum, self.lk_cnt, self.lk_mean,
            self.lk_var, self.long_window, self.probation, self.min_std, out,
        )
        return out
