"""Flat-line detector: unusually long runs of repeated values.

``q`` is the key's running frequency of a value repeating the previous one
(Laplace-smoothed; exponentially weighted after ``memory`` rows).  A run of
``k`` repeats has tail probability ``q ** k`` under independence; the score
is ``1 - q ** k`` (0 when the value changed).  Stuck sensors and dropped
feeds show up as steadily growing scores.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .base import SeriesDetector

__all__ = ["FlatlineDetector"]


@njit(cache=True)
def _flat_kernel(slots, x, cnt, prev, run, q, memory, rtol, out):
    for i in range(x.shape[0]):
        v = x[i]
        if math.isnan(v):
            out[i] = np.nan
            continue
        s = slots[i]
        n = cnt[s]
        rep = n > 0 and abs(v - prev[s]) <= rtol * max(1.0, abs(v))
        k = run[s] + 1 if rep else 0
        qs = q[s]
        out[i] = 1.0 - qs ** k if k > 0 else 0.0
        a = 1.0 / (n + 2.0) if n + 2 < memory else 1.0 / memory
        qs += a * ((1.0 if rep else 0.0) - qs)
        q[s] = qs
        run[s] = k
        prev[s] = v
        cnt[s] = n + 1


class FlatlineDetector(SeriesDetector):
    """Score runs of repeated values by their improbability.

    Parameters
    ----------
    memory
        Effective number of rows behind the repeat frequency.
    rtol
        Values within ``rtol * max(1, |x|)`` of the previous one repeat it.
    """

    def __init__(self, memory: int = 2000, rtol: float = 1e-12) -> None:
        self.memory = int(memory)
        self.rtol = float(rtol)
        super().__init__()

    def _fields(self):
        return [
            ("cnt", (), np.int64, 0),
            ("prev", (), np.float64, 0.0),
            ("run", (), np.int64, 0),
            ("q", (), np.float64, 0.5),
        ]

    def _score_slots(self, slots, values, times):
        out = np.empty(values.shape[0])
        _flat_kernel(slots, values, self.cnt, self.prev, self.run, self.q, self.memory, self.rtol, out)
        return out
