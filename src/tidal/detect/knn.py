"""k-NN conformal detector over lagged windows, in the spirit of KNN-CAD
(Burnaev & Ishimtsev 2016).

The current window of the last ``dim`` values is compared with the key's
``n_windows`` previous windows; its nonconformity is the mean squared
distance to its ``k`` nearest ones.  The score is ``1 - p`` where ``p`` is
the conformal p-value of that nonconformity against the last ``n_calib``
nonconformities of the key (ties count half); beyond the largest calibration
score the p-value decays along a log-normal tail fitted to the calibration
set, so extreme windows keep being ranked.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .base import SeriesDetector

__all__ = ["KNNDetector"]


@njit(cache=True)
def _knn_kernel(slots, x, buf, cnt, cal, cal_pos, cal_n, dim, k, min_calib, out):
    L = buf.shape[1]
    T = L - dim  # past windows compared
    C = cal.shape[1]
    best = np.empty(k)
    cur = np.empty(dim)
    for i in range(x.shape[0]):
        v = x[i]
        if math.isnan(v):
            out[i] = np.nan
            continue
        s = slots[i]
        n = cnt[s]  # values stored so far; value j sits at buf[s, j % L]
        out[i] = 0.0
        npast = n - dim + 1  # past windows available (end indices dim-1 .. n-1)
        if npast > T:
            npast = T
        if npast >= k:
            cur[dim - 1] = v
            for j in range(dim - 1):
                cur[j] = buf[s, (n - dim + 1 + j) % L]
            for j in range(k):
                best[j] = np.inf
            for w in range(npast):
                e = n - 1 - w  # window end index
                acc = 0.0
                base = e - dim + 1
                for j in range(dim):
                    d = cur[j] - buf[s, (base + j) % L]
                    acc += d * d
                    if acc >= best[k - 1]:
                        break
                if acc < best[k - 1]:
                    q = k - 1
                    while q > 0 and best[q - 1] > acc:
                        best[q] = best[q - 1]
                        q -= 1
                    best[q] = acc
            alpha = 0.0
            for j in range(k):
                alpha += best[j]
            alpha /= k
            m = cal_n[s]
            if m >= min_calib:
                gt = 0.0
                cmax = 0.0
                lm = 0.0
                l2 = 0.0
                for j in range(m):
                    c = cal[s, j]
                    if c > alpha:
                        gt += 1.0
                    elif c == alpha:
                        gt += 0.5
                    if c > cmax:
                        cmax = c
                    lc = math.log(c + 1e-300)
                    lm += lc
                    l2 += lc * lc
                pv = (gt + 1.0) / (m + 1.0)
                if gt == 0.0 and alpha > cmax:
                    # beyond the calibration set: log-normal tail, continuous at its max
                    lm /= m
                    sd = math.sqrt(max(l2 / m - lm * lm, 1e-12))
                    za = (math.log(alpha + 1e-300) - lm) / sd
                    zm = (math.log(cmax + 1e-300) - lm) / sd
                    qa = 0.5 * math.erfc(za / math.sqrt(2.0))
                    qm = 0.5 * math.erfc(zm / math.sqrt(2.0))
                    if qm > 0.0:
                        pv *= min(1.0, qa / qm)
                out[i] = 1.0 - pv
            p = cal_pos[s]
            cal[s, p] = alpha
            p += 1
            cal_pos[s] = 0 if p == C else p
            if m < C:
                cal_n[s] = m + 1
        buf[s, n % L] = v
        cnt[s] = n + 1


class KNNDetector(SeriesDetector):
    """Conformal k-NN distance of the current lagged window.

    Parameters
    ----------
    dim
        Window length (lags).
    n_windows
        Past windows compared per row (ring of ``n_windows + dim`` values).
    k
        Nearest neighbours averaged.
    n_calib
        Recent nonconformity scores in the calibration set.
    min_calib
        Calibration scores needed before non-zero scores.
    """

    def __init__(self, dim: int = 6, n_windows: int = 160, k: int = 5, n_calib: int = 100, min_calib: int = 20) -> None:
        self.dim = int(dim)
        self.n_windows = int(n_windows)
        self.k = int(k)
        self.n_calib = int(n_calib)
        self.min_calib = int(min_calib)
        super().__init__()

    def _fields(self):
        return [
            ("buf", (self.n_windows + self.dim,), np.float64, 0.0),
            ("cnt", (), np.int64, 0),
            ("cal", (self.n_calib,), np.float64, 0.0),
            ("cal_pos", (), np.int64, 0),
            ("cal_n", (), np.int64, 0),
        ]

    def _score_slots(self, slots, values, times):
        out = np.empty(values.shape[0])
        _knn_kernel(slots, values, self.buf, self.cnt, self.cal, self.cal_pos, self.cal_n, self.dim, self.k, self.min_calib, out)
        return out
