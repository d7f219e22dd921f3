"""Bayesian online change-point detection (Adams & MacKay 2007).

Gaussian observations with unknown mean and variance (Normal-Inverse-Gamma
prior, Student-t predictive), constant hazard, run-length distribution
truncated at ``max_run`` (longer runs share the last bin, whose statistics
cover the last ``max_run`` values).  Each key's data are standardised by the
median / MAD of a short warm-up; ``model="level"`` (default) runs on the
values, ``"diff"`` on first differences (slope and volatility changes of
random walks; blind to level shifts).

An alarm is raised when the log-odds of a recent change,
``log P(1 <= r <= recent) - log P(r > recent)``, exceeds a threshold that is
*calibrated by simulation* so that on iid Gaussian data the mean number of
samples between false alarms is ``expected_run_length`` (thresholds are
cached in memory and under ``$XDG_CACHE_HOME/tidal``).  The reported change
start is ``t - r_map + 1`` with ``r_map`` the most probable recent run
length.  Alarms fire on up-crossings of the threshold, at most once per
``min_gap`` steps; the posterior itself carries on (the new run takes over).
"""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path

import numpy as np
from numba import njit

from .base import ChangeDetector

__all__ = ["BOCPD", "BOCPDDrift", "calibrate_threshold"]


def _tables(max_run: int, kappa0: float, alpha0: float):
    r = np.arange(max_run + 1, dtype=np.float64)
    kap = kappa0 + r
    alp = alpha0 + r / 2.0
    from math import lgamma

    cst = np.array([lgamma(a + 0.5) - lgamma(a) for a in alp]) - 0.5 * np.log(2.0 * np.pi * (kap + 1.0) / kap)
    coef = kap / (2.0 * (kap + 1.0))
    return kap, alp, cst, coef


@njit(cache=True)
def _median(a):
    b = np.sort(a)
    n = b.shape[0]
    return b[n // 2] if n % 2 else 0.5 * (b[n // 2 - 1] + b[n // 2])


@njit(cache=True)
def _start(s, wb, nw, loc, scale, lp, mu, beta, nact, since, kap, cst, coef, alp, log_h, log_1h, beta0, tmp):
    """Standardise on the warm buffer and replay it into a fresh posterior."""
    k = nw[s]
    vals = wb[s, :k].copy()
    med = _median(vals)
    mad = _median(np.abs(vals - med)) * 1.4826
    if mad <= 0.0:
        sd = np.std(vals)
        mad = sd if sd > 0.0 else 1e-9 * max(1.0, abs(med))
    loc[s] = med
    scale[s] = mad
    lp[s, 0] = 0.0
    mu[s, 0] = 0.0
    beta[s, 0] = beta0
    nact[s] = 1
    since[s] = 0
    for j in range(k):
        _step(s, (vals[j] - med) / mad, lp, mu, beta, nact, kap, cst, coef, alp, log_h, log_1h, beta0, tmp)
        since[s] += 1


@njit(cache=True)
def _step(s, z, lp, mu, beta, nact, kap, cst, coef, alp, log_h, log_1h, beta0, tmp):
    R = lp.shape[1] - 1
    na = nact[s]
    mx = -np.inf
    for r in range(na):
        b = beta[s, r]
        d = z - mu[s, r]
        pred = cst[r] - 0.5 * math.log(b) - (alp[r] + 0.5) * math.log1p(d * d * coef[r] / b)
        a = lp[s, r] + pred
        tmp[r] = a
        if a > mx:
            mx = a
    tot = 0.0
    for r in range(na):
        tot += math.exp(tmp[r] - mx)
    lse = mx + math.log(tot)
    # grow runs (descending, in place); the last bin absorbs runs > R
    top = na - 1
    if na <= R:
        nact[s] = na + 1
    else:
        top = R - 1
        tmp[R - 1] = max(tmp[R - 1], tmp[R]) + math.log1p(math.exp(-abs(tmp[R - 1] - tmp[R])))
    for r in range(top, -1, -1):
        m = mu[s, r]
        k = kap[r]
        d = z - m
        mu[s, r + 1] = m + d / (k + 1.0)
        beta[s, r + 1] = beta[s, r] + k * d * d / (2.0 * (k + 1.0))
        lp[s, r + 1] = tmp[r] + log_1h - lse
    lp[s, 0] = log_h
    mu[s, 0] = 0.0
    beta[s, 0] = beta0


@njit(cache=True)
def _recent_logodds(s, lp, nact, recent):
    na = nact[s]
    m1 = -np.inf
    m2 = -np.inf
    for r in range(1, na):
        v = lp[s, r]
        if r <= recent:
            if v > m1:
                m1 = v
        elif v > m2:
            m2 = v
    a = 0.0
    b = 0.0
    for r in range(1, na):
        v = lp[s, r]
        if r <= recent:
            a += math.exp(v - m1)
        else:
            b += math.exp(v - m2)
    if b == 0.0:
        return np.inf
    return (m1 + math.log(a)) - (m2 + math.log(b))


@njit(cache=True)
def _map_recent(s, lp, nact, recent):
    best = 1
    bv = -np.inf
    for r in range(1, min(recent, nact[s] - 1) + 1):
        if lp[s, r] > bv:
            bv = lp[s, r]
            best = r
    return best


@njit(cache=True)
def _bocpd_kernel(slots, x, diff, cnt, prev, wb, nw, loc, scale, lp, mu, beta, nact, since, last_stat,
                  kap, cst, coef, alp, log_h, log_1h, beta0, recent, min_gap, thresh, out, stat):
    W = wb.shape[1]
    tmp = np.empty(lp.shape[1])
    for i in range(x.shape[0]):
        v = x[i]
        out[i] = -1
        stat[i] = np.nan
        if math.isnan(v):
            continue
        s = slots[i]
        n = cnt[s]
        cnt[s] = n + 1
        if diff:
            p = prev[s]
            prev[s] = v
            if n == 0:
                continue
            v = v - p
        if nact[s] == 0:  # collecting the warm-up
            k = nw[s]
            wb[s, k] = v
            nw[s] = k + 1
            if k + 1 == W:
                _start(s, wb, nw, loc, scale, lp, mu, beta, nact, since, kap, cst, coef, alp, log_h, log_1h, beta0, tmp)
                last_stat[s] = np.inf
            continue
        z = (v - loc[s]) / scale[s]
        if z > 1e6:
            z = 1e6
        elif z < -1e6:
            z = -1e6
        _step(s, z, lp, mu, beta, nact, kap, cst, coef, alp, log_h, log_1h, beta0, tmp)
        since[s] += 1
        lo = _recent_logodds(s, lp, nact, recent)
        prev_lo = last_stat[s]
        last_stat[s] = lo
        if since[s] < min_gap:
            continue
        stat[i] = lo
        # alarm on an up-crossing of the threshold, at most once per min_gap steps
        if lo > thresh and prev_lo <= thresh:
            r = _map_recent(s, lp, nact, recent)
            out[i] = n - r + 1
            since[s] = 0


@njit(cache=True)
def _simulate(n_runs, length, seed, phi, diff, warm, max_run, kap, cst, coef, alp, log_h, log_1h, beta0,
              recent, min_gap, grid):
    """Alarms per grid threshold on simulated stationary streams (up-crossings, dead time)."""
    np.random.seed(seed)
    G = grid.shape[0]
    alarms = np.zeros(G, dtype=np.int64)
    slots = np.zeros(1, dtype=np.int64)
    for run in range(n_runs):
        cnt = np.zeros(1, dtype=np.int64)
        prev = np.zeros(1)
        wb = np.zeros((1, warm))
        nw = np.zeros(1, dtype=np.int64)
        loc = np.zeros(1)
        scale = np.ones(1)
        lp = np.zeros((1, max_run + 1))
        mu = np.zeros((1, max_run + 1))
        beta = np.zeros((1, max_run + 1))
        nact = np.zeros(1, dtype=np.int64)
        since = np.zeros(1, dtype=np.int64)
        last_stat = np.zeros(1)
        out = np.empty(1, dtype=np.int64)
        stat = np.empty(1)
        xv = np.empty(1)
        last_alarm = np.full(G, -(1 << 40), dtype=np.int64)
        armed_at = -1
        e = 0.0
        prev_st = np.inf
        for t in range(length):
            e = phi * e + math.sqrt(1.0 - phi * phi) * np.random.standard_normal()
            xv[0] = e
            _bocpd_kernel(slots, xv, diff, cnt, prev, wb, nw, loc, scale, lp, mu, beta, nact, since, last_stat,
                          kap, cst, coef, alp, log_h, log_1h, beta0, recent, min_gap, np.inf, out, stat)
            st = stat[0]
            if math.isnan(st):
                prev_st = np.inf if armed_at < 0 else prev_st
                continue
            if armed_at < 0:
                armed_at = t
            # thresholds crossed upward this step: prev_st <= g < st
            for j in range(G):
                g = grid[j]
                if g >= st:
                    break
                if g >= prev_st and t - last_alarm[j] >= min_gap:
                    alarms[j] += 1
                    last_alarm[j] = t
            prev_st = st
    return alarms


_GRID = np.linspace(-30.0, 40.0, 701)
_CACHE_VERSION = 3


def _cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tidal" / "bocpd_thresholds.json"


@functools.lru_cache(maxsize=64)
def calibrate_threshold(
    expected_run_length: float,
    hazard: float,
    max_run: int,
    warmup: int,
    recent: int,
    min_gap: int,
    model: str,
    kappa0: float,
    alpha0: float,
    beta0: float,
    phi: float = 0.0,
) -> float:
    """Log-odds threshold giving ``expected_run_length`` samples between false
    alarms on iid (or AR(1) ``phi``) Gaussian data, by simulation (cached)."""
    key = json.dumps([_CACHE_VERSION, expected_run_length, hazard, max_run, warmup, recent, min_gap, model, kappa0, alpha0, beta0, phi])
    path = _cache_path()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if key in cached:
        return float(cached[key])
    kap, alp, cst, coef = _tables(max_run, kappa0, alpha0)
    erl = float(expected_run_length)
    exposure = int(min(max(40.0 * erl, 100_000), 2_000_000))
    n_runs = 8
    length = exposure // n_runs
    alarms = _simulate(n_runs, length, 12345, phi, model == "diff", warmup, max_run, kap, cst, coef, alp,
                       math.log(hazard), math.log1p(-hazard), beta0, recent, min_gap, _GRID)
    rate = alarms / float(n_runs * length)
    target = 1.0 / erl
    # smallest threshold whose false-alarm rate is at most the target (interpolated in log rate)
    above = np.nonzero(rate > target)[0]
    j = int(above[-1]) + 1 if above.size else 0
    j = min(j, len(_GRID) - 1)
    if 0 < j and rate[j] > 0 and alarms[j] >= 8:
        l0, l1 = math.log(rate[j - 1]), math.log(rate[j])
        w = 0.0 if l0 == l1 else (l0 - math.log(target)) / (l0 - l1)
        thr = float(_GRID[j - 1] + w * (_GRID[j] - _GRID[j - 1]))
    elif rate[j] == 0 or alarms[j] < 8:
        # too rare to observe: extrapolate log rate linearly in the threshold
        good = np.nonzero(alarms >= 8)[0]
        if good.size >= 2:
            sel = good[-min(40, good.size):]
            slope, icpt = np.polyfit(_GRID[sel], np.log(rate[sel]), 1)
            thr = float((math.log(target) - icpt) / slope) if slope < 0 else float(_GRID[j])
            thr = max(thr, float(_GRID[sel[-1]]))
        else:
            thr = float(_GRID[j])
    else:
        thr = float(_GRID[j])
    try:
        cached[key] = thr
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cached))
        tmp.replace(path)
    except OSError:
        pass
    return thr


class BOCPD(ChangeDetector):
    """Per-key BOCPD with a calibrated false-alarm rate.

    Parameters
    ----------
    expected_run_length
        Mean number of stationary (iid Gaussian) samples between false alarms.
    model
        ``"level"`` (values) or ``"diff"`` (first differences).
    hazard
        Prior probability of a change at each step.
    max_run
        Run-length truncation (memory and time are linear in it).
    warmup
        Values per key (and after each alarm) used to standardise (median/MAD).
    recent
        Run lengths counted as "a recent change" by the alarm statistic.
    min_gap
        Steps after a (re)start before alarms are allowed.
    threshold
        Log-odds alarm threshold; ``None`` calibrates it from
        ``expected_run_length``.
    kappa0, alpha0, beta0
        Normal-Inverse-Gamma prior on standardised data (mean 0).
    """

    def __init__(
        self,
        expected_run_length: float = 10_000,
        model: str = "level",
        hazard: float = 1 / 200,
        max_run: int = 300,
        warmup: int = 16,
        recent: int = 30,
        min_gap: int = 40,
        threshold: float | None = None,
        kappa0: float = 1.0,
        alpha0: float = 1.0,
        beta0: float = 1.0,
    ) -> None:
        if model not in ("diff", "level"):
            raise ValueError("model must be 'diff' or 'level'")
        self.expected_run_length = float(expected_run_length)
        self.model = model
        self.hazard = float(hazard)
        self.max_run = int(max_run)
        self.warmup = int(warmup)
        self.recent = int(recent)
        self.min_gap = max(int(min_gap), self.recent + 1)
        self.kappa0, self.alpha0, self.beta0 = float(kappa0), float(alpha0), float(beta0)
        self._kap, self._alp, self._cst, self._coef = _tables(self.max_run, self.kappa0, self.alpha0)
        if threshold is None:
            threshold = calibrate_threshold(
                self.expected_run_length, self.hazard, self.max_run, self.warmup, self.recent,
                self.min_gap, self.model, self.kappa0, self.alpha0, self.beta0,
            )
        self.threshold = float(threshold)
        self.last_logodds = np.empty(0)
        super().__init__()

    def _fields(self):
        R1, W = self.max_run + 1, self.warmup
        f, i = np.float64, np.int64
        return [
            ("cnt", (), i, 0), ("prev", (), f, 0.0), ("wb", (W,), f, 0.0), ("nw", (), i, 0),
            ("loc", (), f, 0.0), ("scale", (), f, 1.0), ("last_stat", (), f, np.inf),
            ("lp", (R1,), f, 0.0), ("mu", (R1,), f, 0.0), ("beta", (R1,), f, 0.0),
            ("nact", (), i, 0), ("since", (), i, 0),
        ]

    def _update_slots(self, slots, values, times):
        out = np.empty(values.shape[0], dtype=np.int64)
        stat = np.empty(values.shape[0])
        _bocpd_kernel(
            slots, values, self.model == "diff", self.cnt, self.prev, self.wb, self.nw,
            self.loc, self.scale, self.lp, self.mu, self.beta, self.nact, self.since, self.last_stat,
            self._kap, self._cst, self._coef, self._alp, math.log(self.hazard), math.log1p(-self.hazard),
            self.beta0, self.recent, self.min_gap, self.threshold, out, stat,
        )
        self.last_logodds = stat  # alarm log-odds per row of the last batch (NaN when not armed)
        return out


class BOCPDDrift:
    """River-style drift detector around :class:`BOCPD` (one series).

    ``update(x)`` feeds a value; ``drift_detected`` is True on the row that
    raised an alarm, and ``change_point`` holds the estimated start index of
    the new segment (0-based, in values fed).
    """

    def __init__(self, **params) -> None:
        self._det = BOCPD(**params)
        self._key = np.zeros(1, dtype=np.int64)
        self._buf = np.empty(1)
        self._drift = False
        self.change_point: int | None = None
        self.n = 0

    @property
    def drift_detected(self) -> bool:
        return self._drift

    def update(self, x: float) -> "BOCPDDrift":
        self._buf[0] = x
        cp = int(self._det.update_many(self._key, self._buf)[0])
        self.n += 1
        self._drift = cp >= 0
        if self._drift:
            self.change_point = cp
        return self
