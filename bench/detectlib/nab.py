"""NAB-style scoring of streaming anomaly detectors, after Lavin & Ahmad (2015), "Evaluating
Real-time Anomaly Detection Algorithms - the Numenta Anomaly Benchmark". Written from the paper.

- One anomaly window per label, centred on it; the windows of a series share 10% of its length
  (``floor(0.1 * n / n_labels)`` points each), clipped to the series and to the previous window.
- Probationary period: the first 15% of each series; detections there are ignored.
- In a window only the earliest detection counts: ``A_TP * sigma(y)``, ``y`` = relative position
  (-1 at the window start ... 0 at its end), ``sigma(y) = 2 / (1 + exp(5y)) - 1``.
- A window without detection: ``-A_FN``.
- A detection outside every window: ``A_FP * sigma(y)`` with ``y`` the distance from the end of the
  preceding window in window lengths (-> ``-A_FP`` far away); before any window, ``-A_FP``.
- Raw score summed over series; normalised ``100 (S - S_null) / (S_perfect - S_null)`` with
  ``S_null`` the detector that never fires and ``S_perfect`` one detection at each window start.
- One threshold per detector and profile over the whole corpus (``optimise``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PROFILES = {
    "standard": {"tp": 1.0, "fp": 0.11, "fn": 1.0},
    "reward_low_FP": {"tp": 1.0, "fp": 0.22, "fn": 1.0},
    "reward_low_FN": {"tp": 1.0, "fp": 0.11, "fn": 2.0},
}
PROBATION = 0.15
WINDOW_SHARE = 0.10


def sigma(y):
    """Scaled sigmoid: ~0.987 at y=-1, 0 at y=0, -> -1 as y grows."""
    return 2.0 / (1.0 + np.exp(5.0 * np.asarray(y, dtype=np.float64))) - 1.0


def windows(n: int, labels) -> list[tuple[int, int]]:
    """Inclusive ``(start, end)`` windows centred on each label, clipped to ``[0, n-1]`` and so that
    they never overlap (a window starts after the previous one ends)."""
    labels = sorted(int(x) for x in labels)
    if not labels:
        return []
    length = max(1, int(WINDOW_SHARE * n / len(labels)))
    out: list[tuple[int, int]] = []
    for lab in labels:
        s = max(0, lab - length // 2)
        e = min(n - 1, lab - length // 2 + length - 1)
        if out and s <= out[-1][1]:
            s = out[-1][1] + 1
        if s <= e:
            out.append((s, e))
    return out


def probation(n: int) -> int:
    return int(PROBATION * n)


@dataclass
class Series:
    """What the scorer needs of one series: its length, windows and probation, and per point the
    weight a false positive there would get (NaN inside windows / probation)."""
    n: int
    wins: list[tuple[int, int]]
    prob: int
    fp_sigma: np.ndarray  # sigma-based FP factor (<= 0) per point; NaN where not a FP candidate

    @classmethod
    def build(cls, n: int, labels) -> "Series":
        wins = windows(n, labels)
        prob = probation(n)
        fp = np.full(n, -1.0)
        inside = np.zeros(n, dtype=bool)
        for i, (s, e) in enumerate(wins):
            inside[s:e + 1] = True
            nxt = wins[i + 1][0] if i + 1 < len(wins) else n
            length = e - s + 1
            idx = np.arange(e + 1, nxt)
            fp[e + 1:nxt] = sigma((idx - e) / length)
        fp[inside] = np.nan
        fp[:prob] = np.nan
        return cls(n, wins, prob, fp)


def series_score(ser: Series, scores: np.ndarray, threshold: float, profile: dict) -> dict:
    """Raw NAB score of one series at one threshold (detection: ``score >= threshold``)."""
    det = np.asarray(scores, dtype=np.float64) >= threshold
    det[:ser.prob] = False
    tp = fn = 0
    total = 0.0
    for s, e in ser.wins:
        hit = np.flatnonzero(det[s:e + 1])
        if hit.size:
            total += profile["tp"] * float(sigma(_y(np.array([hit[0]]), e - s + 1))[0])
            tp += 1
        else:
            total -= profile["fn"]
            fn += 1
    fpmask = det & ~np.isnan(ser.fp_sigma)
    fpw = ser.fp_sigma[fpmask]
    total += profile["fp"] * float(fpw.sum())
    return {"score": total, "tp": tp, "fn": fn, "fp": int(fpmask.sum())}


def _y(pos: np.ndarray, length: int) -> np.ndarray:
    """Relative position in a window of ``length`` points: -1 at its first point, 0 at its last."""
    if length <= 1:
        return np.full(np.shape(pos), -1.0)
    return (np.asarray(pos, dtype=np.float64) - (length - 1)) / (length - 1)


def null_and_perfect(corpus: list[Series], profile: dict) -> tuple[float, float]:
    nw = sum(len(s.wins) for s in corpus)
    return -profile["fn"] * nw, profile["tp"] * float(sigma(-1.0)) * nw


def curve(corpus: list[Series], scores_list: list[np.ndarray], thresholds: np.ndarray, profile: dict):
    """Raw corpus score at each threshold (vectorised): returns (score, tp, fn, fp) arrays."""
    th = np.asarray(thresholds, dtype=np.float64)
    total = np.zeros(th.size)
    tp = np.zeros(th.size, dtype=np.int64)
    fp = np.zeros(th.size, dtype=np.int64)
    nw = 0
    for ser, sc in zip(corpus, scores_list):
        sc = np.nan_to_num(np.asarray(sc, dtype=np.float64), nan=-np.inf)
        for s, e in ser.wins:
            nw += 1
            lo = max(s, ser.prob)
            if lo > e:
                continue
            w = sc[lo:e + 1]
            cm = np.maximum.accumulate(w)
            first = np.searchsorted(cm, th, side="left")  # first index with cummax >= t
            hit = first < w.size
            pos = first[hit] + (lo - s)
            total[hit] += profile["tp"] * sigma(_y(pos, e - s + 1))
            tp += hit
        ok = ~np.isnan(ser.fp_sigma)
        vals, wts = sc[ok], ser.fp_sigma[ok]
        order = np.argsort(vals)
        vals, wts = vals[order], wts[order]
        suffix = np.concatenate([np.cumsum(wts[::-1])[::-1], [0.0]])
        k = np.searchsorted(vals, th, side="left")  # points with value >= t are vals[k:]
        total += profile["fp"] * suffix[k]
        fp += vals.size - k
    fn_total = nw - tp
    total -= profile["fn"] * fn_total
    return total, tp, fn_total, fp


def candidate_thresholds(scores_list: list[np.ndarray], n_quantiles: int = 400) -> np.ndarray:
    allv = np.concatenate([np.asarray(s, dtype=np.float64) for s in scores_list]) if scores_list else np.zeros(0)
    allv = allv[np.isfinite(allv)]
    grid = [np.linspace(0.0, 1.0, 201)]
    if allv.size:
        grid.append(np.quantile(allv, np.linspace(0.0, 1.0, n_quantiles + 1)))
        top = np.unique(allv)[-200:]  # the rare highest scores matter most
        grid.append(top)
    grid.append([np.inf])
    return np.unique(np.concatenate(grid))


def optimise(corpus: list[Series], scores_list: list[np.ndarray], profile: dict,
             thresholds: np.ndarray | None = None) -> dict:
    """Best single threshold over the whole corpus for one profile; normalised score."""
    th = candidate_thresholds(scores_list) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    total, tp, fn, fp = curve(corpus, scores_list, th, profile)
    i = int(np.argmax(total))
    null, perfect = null_and_perfect(corpus, profile)
    norm = 100.0 * (total[i] - null) / (perfect - null) if perfect != null else 0.0
    return {"score": float(norm), "raw": float(total[i]), "threshold": float(th[i]),
            "tp": int(tp[i]), "fn": int(fn[i]), "fp": int(fp[i]), "null": null, "perfect": perfect}


def normalised(corpus: list[Series], scores_list: list[np.ndarray], threshold: float, profile: dict) -> float:
    """Normalised score at a fixed threshold (slow path, per series; used by tests to check ``curve``)."""
    raw = sum(series_score(s, sc, threshold, profile)["score"] for s, sc in zip(corpus, scores_list))
    null, perfect = null_and_perfect(corpus, profile)
    return 100.0 * (raw - null) / (perfect - null)
