"""Seasonal-profile detector: robust residual against hour-of-day and
hour-of-week profiles.

The forecast is ``level + profile(t)`` where ``level`` is a slow
exponentially weighted mean of the deseasonalised value (time constant
``level_days``) and ``profile`` the EW mean deviation per hour-of-week bin
(used once the bin has ``min_bin`` visits) or else per hour-of-day bin, read by
linear interpolation between the two nearest bin centres.  The
residual is scored against an EW mean absolute residual of the same bin
(floored by a fraction of the global one): ``erf(|r| / (1.25 * mad) / sqrt 2)``.

Without times (or with non-finite times) the profiles are off and the
detector is an EW Gaussian on the level residual.  Sampling periods of a day
or more fall into the same hour bin, so day-of-week effects remain.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .base import SeriesDetector

__all__ = ["SeasonalDetector"]


@njit(cache=True)
def _seasonal_kernel(slots, x, t, cnt, level, gmad, last_t, dt_ew, pd, md, nd, pw, mw, nw,
                     level_days, profile_days, min_bin, warmup, out):
    for i in range(x.shape[0]):
        v = x[i]
        if math.isnan(v):
            out[i] = np.nan
            continue
        s = slots[i]
        n = cnt[s]
        ti = t[i]
        has_t = not math.isnan(ti)
        # sampling interval (EW of positive gaps)
        dt = dt_ew[s]
        if has_t and not math.isnan(last_t[s]):
            g = ti - last_t[s]
            if g > 0.0:
                dt = g if dt <= 0.0 else 0.9 * dt + 0.1 * g
                dt_ew[s] = dt
        if has_t:
            last_t[s] = ti
        # bin positions (bin centres at h + 0.5; linear interpolation between neighbours)
        use_t = has_t and dt > 0.0 and dt < 86400.0 * 7
        d0 = d1 = w0 = w1 = 0
        fd = fw = 0.0
        if use_t:
            qw = ((ti / 3600.0 + 72.0) % 168.0) - 0.5  # epoch 0 was a Thursday; bin 0 = Monday 00h
            fl = math.floor(qw)
            fw = qw - fl
            w0 = int(fl) % 168
            w1 = (w0 + 1) % 168
            qd = (qw + 0.5) % 24.0 - 0.5
            fl = math.floor(qd)
            fd = qd - fl
            d0 = int(fl) % 24
            d1 = (d0 + 1) % 24
        prof = 0.0
        mad = 0.0
        if use_t and min(nw[s, w0], nw[s, w1]) >= min_bin:
            prof = (1.0 - fw) * pw[s, w0] + fw * pw[s, w1]
            mad = (1.0 - fw) * mw[s, w0] + fw * mw[s, w1]
        elif use_t and min(nd[s, d0], nd[s, d1]) >= min_bin:
            prof = (1.0 - fd) * pd[s, d0] + fd * pd[s, d1]
            mad = (1.0 - fd) * md[s, d0] + fd * md[s, d1]
        lv = level[s]
        r = v - lv - prof
        g_m = gmad[s]
        if n >= warmup:
            scale = max(mad, 0.5 * g_m)
            scale = max(scale, 1e-9 * max(1.0, abs(lv)))
            z = abs(r) / (1.2533 * scale)
            out[i] = math.erf(z / math.sqrt(2.0))
        else:
            out[i] = 0.0
        # learn: rates from the sampling interval (per-row fallback without times)
        if dt > 0.0:
            a_l = 1.0 - math.exp(-dt / (level_days * 86400.0))
            per_visit = max(1.0, 3600.0 / dt)  # rows per bin visit
            a_p = min(0.5, 1.0 / (profile_days * per_visit))
        else:
            a_l = 1.0 / 288.0
            a_p = 0.0
        if n == 0:
            lv = v
        else:
            a = max(a_l, 1.0 / (n + 1)) if n < 50 else a_l
            lv += a * (v - prof - lv)
        level[s] = lv
        ar = abs(r)
        a_g = 1.0 / (n + 1) if n < 200 else 0.005
        gmad[s] = g_m + a_g * (ar - g_m) if n > 0 else 0.0
        if use_t:
            dev = v - lv
            # daily profile
            pdi = (1.0 - fd) * pd[s, d0] + fd * pd[s, d1]
            err = dev - pdi
            for b, wgt in ((d0, 1.0 - fd), (d1, fd)):
                c = nd[s, b]
                a = max(1.0 / (c + 1), a_p) * wgt
                if c == 0:
                    md[s, b] = g_m
                    pd[s, b] = dev
                else:
                    pd[s, b] += a * err
                    md[s, b] += a * (abs(err) - md[s, b])
                if wgt >= 0.5:
                    nd[s, b] = c + 1
            # weekly profile (starts from the daily one)
            pwi = (1.0 - fw) * pw[s, w0] + fw * pw[s, w1]
            err = dev - pwi
            for b, wgt in ((w0, 1.0 - fw), (w1, fw)):
                c = nw[s, b]
                a = max(1.0 / (c + 1), min(0.5, 7.0 * a_p)) * wgt
                if c == 0:
                    db = b % 24
                    pw[s, b] = pd[s, db]
                    mw[s, b] = md[s, db]
                else:
                    pw[s, b] += a * err
                    mw[s, b] += a * (abs(err) - mw[s, b])
                if wgt >= 0.5:
                    nw[s, b] = c + 1
        cnt[s] = n + 1


class SeasonalDetector(SeriesDetector):
    """Residual against daily / weekly profiles (needs ``times`` in epoch s).

    Parameters
    ----------
    level_days
        Time constant of the level (days).
    profile_days
        Approximate memory of each profile bin, in visits per day.
    min_bin
        Rows a bin needs before its profile is used.
    warmup
        Rows per key before scores are emitted.
    """

    def __init__(self, level_days: float = 1.0, profile_days: float = 3.0, min_bin: int = 3, warmup: int = 32) -> None:
        self.level_days = float(level_days)
        self.profile_days = float(profile_days)
        self.min_bin = int(min_bin)
        self.warmup = int(warmup)
        super().__init__()

    def _fields(self):
        f64, i32 = np.float64, np.int32
        return [
            ("cnt", (), np.int64, 0),
            ("level", (), f64, 0.0),
            ("gmad", (), f64, 0.0),
            ("last_t", (), f64, np.nan),
            ("dt_ew", (), f64, 0.0),
            ("pd", (24,), f64, 0.0),
            ("md", (24,), f64, 0.0),
            ("nd", (24,), i32, 0),
            ("pw", (168,), np.float32, 0.0),
            ("mw", (168,), np.float32, 0.0),
            ("nw", (168,), i32, 0),
        ]

    def _score_slots(self, slots, values, times):
        out = np.empty(values.shape[0])
        _seasonal_kernel(
            slots, values, times, self.cnt, self.level, self.gmad, self.last_t, self.dt_ew,
            self.pd, self.md, self.nd, self.pw, self.mw, self.nw,
            self.level_days, self.profile_days, self.min_bin, self.warmup, out,
        )
        return out
