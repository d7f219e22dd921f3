"""Generated labelled series for streaming anomaly detection (deterministic by seed).

Bases (5-minute sampling, epoch-second timestamps, a daily period of 288 points):

- ``seasonal``: a business-day shape (low at night, a morning ramp, a noon peak, an evening
  decline) plus a weaker weekly factor, AR(1) noise;
- ``trend``: a linear trend with weak daily seasonality, AR(1) noise;
- ``walk``: a Gaussian random walk plus observation noise;
- ``noisy``: a level with heavy-tailed (Student t, 3 dof) noise.

Three noise levels (``sigma`` as a share of the daily amplitude, or of the walk step).
Anomaly kinds (label = the anomaly's start index): ``spike``, ``dip`` (1-3 points, 3.5-7 sigma),
``level_shift`` (2-5 sigma, permanent), ``frequency`` (the daily shape runs 1.6-2.5x faster for
1-2 days; seasonal bases), ``contextual`` (a noon level at ~3 a.m. for 1-3 h; seasonal base),
``ramp`` (a slow trend change reaching 4-8 sigma over 300-900 points), ``variance`` (noise 3-5x
for 200-600 points), ``flatline`` (the sensor repeats its last value for 100-400 points).

Each series has 2,000-8,000 points and 1-4 anomalies, placed after the first 15% (NAB's
probation) and at least two anomaly windows plus the anomaly's duration apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DAY = 288  # points per day at 5-minute sampling
STEP_S = 300.0
T0 = 1_767_571_200.0  # 2026-01-05 00:00 UTC, a Monday
BASES = ("seasonal", "trend", "walk", "noisy")
NOISE = {"low": 0.04, "mid": 0.12, "high": 0.25}
KINDS = ("spike", "dip", "level_shift", "frequency", "contextual", "ramp", "variance", "flatline")
SEASONAL_ONLY = {"frequency", "contextual"}


@dataclass
class LabelledSeries:
    name: str
    base: str
    noise: str
    seed: int
    values: np.ndarray
    times: np.ndarray
    labels: list[int]
    kinds: list[str] = field(default_factory=list)


def _shape(phase: np.ndarray) -> np.ndarray:
    """Daily business shape in [0, 1] from the phase in days (fraction of the day)."""
    h = (phase % 1.0) * 24.0
    day = np.exp(-0.5 * ((h - 12.5) / 3.2) ** 2)       # noon peak
    morning = 0.35 * np.exp(-0.5 * ((h - 9.0) / 1.2) ** 2)
    evening = 0.25 * np.exp(-0.5 * ((h - 19.0) / 1.8) ** 2)
    return np.clip(day + morning + evening, 0.0, None) / 1.2


def _ar1(rng, n, phi=0.6):
    e = rng.normal(0.0, 1.0, n)
    out = np.empty(n)
    acc = 0.0
    s = np.sqrt(1 - phi * phi)
    for i in range(n):
        acc = phi * acc + s * e[i]
        out[i] = acc
    return out


def generate(seed: int, base: str, noise: str, n: int | None = None, kinds: list[str] | None = None,
             n_anomalies: int | None = None) -> LabelledSeries:
    rng = np.random.default_rng([seed, BASES.index(base), list(NOISE).index(noise)])
    n = int(n or rng.integers(2000, 8001))
    t = T0 + STEP_S * np.arange(n) + DAY * STEP_S * int(rng.integers(0, 7))
    day_phase = ((t - T0) / (DAY * STEP_S))
    amp = float(rng.uniform(5.0, 50.0))
    level = float(rng.uniform(-20.0, 200.0))
    sig_share = NOISE[noise] * rng.uniform(0.8, 1.25)
    seasonal = base in ("seasonal", "trend")

    if base == "seasonal":
        weekday = ((np.floor(day_phase) % 7) < 5).astype(float)
        clean = level + amp * _shape(day_phase) * (0.6 + 0.4 * weekday)
        sigma = sig_share * amp
        noise_v = sigma * _ar1(rng, n)
    elif base == "trend":
        slope = rng.choice([-1, 1]) * rng.uniform(0.5, 3.0) * amp / n
        clean = level + slope * np.arange(n) + 0.3 * amp * _shape(day_phase)
        sigma = sig_share * amp
        noise_v = sigma * _ar1(rng, n)
    elif base == "walk":
        step = amp / 40.0
        clean = level + np.cumsum(rng.normal(0.0, step, n))
        sigma = step * (1.0 + 10.0 * sig_share)
        noise_v = sigma * rng.normal(0.0, 1.0, n)
    else:  # noisy
        sigma = sig_share * amp
        clean = np.full(n, level)
        noise_v = sigma * rng.standard_t(3, n) / np.sqrt(3.0)

    k = int(n_anomalies or rng.integers(1, 5))
    pool = [x for x in KINDS if seasonal or x not in SEASONAL_ONLY]
    if base == "trend":
        pool = [x for x in pool if x != "contextual"]  # the weak seasonality makes it invisible
    chosen = list(kinds) if kinds else [str(rng.choice(pool)) for _ in range(k)]
    k = len(chosen)
    win = max(1, int(0.1 * n / k))
    durations = {"spike": 3, "dip": 3, "level_shift": 1, "frequency": 2 * DAY, "contextual": 36,
                 "ramp": 900, "variance": 600, "flatline": 400}
    # positions: after probation, spaced by the windows and durations
    starts: list[int] = []
    lo = int(0.15 * n) + win
    for kind in chosen:
        room = n - win - durations[kind] - lo
        if room <= 0:
            break
        need = (k - len(starts)) - 1
        hi = lo + max(1, room // (need + 1))
        s = int(rng.integers(lo, max(lo + 1, hi)))
        if kind == "contextual":  # move to ~3 a.m. (hours 2-4) on a weekday
            s0 = s
            while s < n - 50 and not (2.0 <= (day_phase[s] % 1.0) * 24 < 4.0):
                s += 1
            if s >= n - 50:
                s = s0
        starts.append(s)
        lo = s + durations[kind] + 2 * win
    chosen = chosen[:len(starts)]

    x = clean + noise_v
    for kind, s in zip(chosen, starts):
        sgn = 1.0 if kind != "dip" else -1.0
        if kind in ("spike", "dip"):
            m = int(rng.integers(1, 4))
            sgn = sgn if kind == "dip" else float(rng.choice([1.0, 1.0, -1.0]))
            x[s:s + m] += sgn * rng.uniform(3.5, 7.0) * sigma
        elif kind == "level_shift":
            x[s:] += float(rng.choice([-1, 1])) * rng.uniform(2.0, 5.0) * sigma
        elif kind == "frequency":
            d = int(rng.integers(DAY, 2 * DAY + 1))
            f = rng.uniform(1.6, 2.5)
            ph = day_phase[s] + f * (day_phase[s:s + d] - day_phase[s])
            x[s:s + d] += amp * (_shape(ph) - _shape(day_phase[s:s + d])) * (0.6 if base == "seasonal" else 0.3)
        elif kind == "contextual":
            d = int(rng.integers(12, 37))
            noon = amp * (_shape(np.full(d, 0.52)) - _shape(day_phase[s:s + d]))
            x[s:s + d] += noon * rng.uniform(0.5, 0.8)
        elif kind == "ramp":
            d = int(rng.integers(300, 901))
            tot = float(rng.choice([-1, 1])) * rng.uniform(4.0, 8.0) * sigma
            r = np.clip((np.arange(n - s)) / d, 0.0, 1.0) * tot
            x[s:] += r
        elif kind == "variance":
            d = int(rng.integers(200, 601))
            x[s:s + d] += (rng.uniform(3.0, 5.0) - 1.0) * noise_v[s:s + d]
        elif kind == "flatline":
            d = int(rng.integers(100, 401))
            x[s:s + d] = x[s - 1]
    name = f"{base}-{noise}-s{seed}"
    return LabelledSeries(name, base, noise, seed, x.astype(np.float64), t, [int(s) for s in starts], chosen)


def suite(seeds=(0, 1, 2, 3, 4), bases=BASES, noises=tuple(NOISE)) -> list[LabelledSeries]:
    """The generated corpus: one series per (seed, base, noise)."""
    return [generate(s, b, z) for s in seeds for b in bases for z in noises]


def quick_suite() -> list[LabelledSeries]:
    return suite(seeds=(0,), bases=BASES, noises=("low", "mid", "high"))


def representative() -> LabelledSeries:
    """A seasonal series with four kinds, for the per-detector charts."""
    return generate(7, "seasonal", "mid", n=6000, kinds=["spike", "contextual", "level_shift", "flatline"])
