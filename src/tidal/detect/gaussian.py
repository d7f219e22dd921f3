"""Windowed Gaussian baseline.

The score of ``x`` is ``erf(|z| / sqrt(2))`` (two-sided Gaussian mass), with
``z`` the value against the mean and standard deviation of the key's last
``window`` values (exact sliding window, ring buffer per key).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .base import SeriesDetector

__all__ = ["GaussianDetector"]


@njit(cache=True)
def _gaussian_kernel(slots, x, ring, pos, cnt, mean, m2, min_n, out):
    W = ring.shape[1]
    for i in range(x.shape[0]):
        v = x[i]
        if math.isnan(v):
            out[i] = np.nan
            continue
        s = slots[i]
        n = cnt[s]
        m = mean[s]
        if n >= min_n:
            k = n if n < W else W
            var = m2[s] / (k - 1)
            sd = math.sqrt(var) if var > 0.0 else 0.0
            floor = 1e-9 * max(1.0, abs(m))
            z = abs(v - m) / max(sd, floor)
            out[i] = math.erf(z / math.sqrt(2.0))
        else:
            out[i] = 0.0
        p = pos[s]
        if n < W:
            d = v - m
            m += d / (n + 1)
            m2[s] += d * (v - m)
        else:
            old = ring[s, p]
            m_new = m + (v - old) / W
            m2[s] += (v - old) * (v - m_new + old - m)
            m = m_new
        ring[s, p] = v
        p += 1
        if p == W:
            p = 0
        if n + 1 >= W and p == 0:  # exact recompute once per window: no drift
            acc = 0.0
            for j in range(W):
                acc += ring[s, j]
            m = acc / W
            acc = 0.0
            for j in range(W):
                d = ring[s, j] - m
                acc += d * d
            m2[s] = acc
        if m2[s] < 0.0:
            m2[s] = 0.0
        mean[s] = m
        pos[s] = p
        cnt[s] = n + 1


class GaussianDetector(SeriesDetector):
    """z-score of each value against its key's last ``window`` values.

    Parameters
    ----------
    window
        Values kept per key (ring buffer).
    min_n
        Values seen before scores are emitted (0 until then).
    """

    def __init__(self, window: int = 256, min_n: int = 16) -> None:
        self.window = int(window)
        self.min_n = max(2, int(min_n))
        super().__init__()

    def _fields(self):
        return [
            ("ring", (self.window,), np.float64, 0.0),
            ("pos", (), np.int64, 0),
            ("cnt", (), np.int64, 0),
            ("mean", (), np.float64, 0.0),
            ("m2", (), np.float64, 0.0),
        ]

    def _score_slots(self, slots, values, times):
        out = np.empty(values.shape[0])
        _gaussian_kernel(slots, values, self.ring, self.pos, self.cnt, self.mean, self.m2, self.min_n, out)
        return out
