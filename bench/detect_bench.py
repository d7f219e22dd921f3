"""Evaluation harness for streaming anomaly and change-point detection (no Kafka: in memory).

- **NAB-style score** (Lavin & Ahmad 2015; ``bench/detectlib/nab.py``) per profile (standard,
  reward_low_FP, reward_low_FN) on a generated labelled suite (``bench/detectlib/series.py``:
  seasonal / trending / random-walk / heavy-tailed bases x 3 noise levels x seeds; spikes, dips,
  level shifts, frequency changes, contextual, ramps, variance changes, flat-lines), one threshold
  per detector and profile over the whole corpus;
- **TCPD F1 (margin 5) and covering** (van den Burg & Williams 2020; ``bench/detectlib/tcpd.py``)
  on River's bundled real change-point series with their annotators (``river.drift.datasets``);
- **events/s** of ``score_many`` on a univariate per-key stream (1,000 keys interleaved, batches
  of 5,000 rows; one process, one core) and **state bytes per key**.

Detectors: tidal's series detectors (``tidal.detect``: each name and ``<name>+likelihood``) and
change detectors (``default``, ``bocpd``), imported lazily and skipped when missing; baselines
in the same run: tidal's point detectors (``AnomalyStep`` iforest / hst / robust on the value),
River's HalfSpaceTrees (MinMaxScaler, score then learn), River's ADWIN / PageHinkley / KSWIN
(defaults; alarms as change points and as anomaly flags of score 1), a windowed Gaussian written
here, and a detector that never fires.

    PYTHONPATH=src:. python bench/detect_bench.py [--quick] [--only NAME,...] [--no-plots]

Writes bench/results/<date>-detect.json (or <date>-quick-detect.json), a markdown table
(<date>-detect.md, also printed) and bench/results/detect/<detector>.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import sys
import time
from collections import deque
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.detectlib import changepoints, nab, series, tcpd  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
BATCH = 1000  # rows per call when scoring one series


# --- detectors ------------------------------------------------------------------------------
class Never:
    name = "never"

    def score_many(self, keys, values, times=None):
        return np.zeros(len(values))

    def update_many(self, keys, values, times=None):
        return np.full(len(values), -1, dtype=np.int64)

    def state_nbytes_per_key(self):
        return 0


class WindowedGaussian:
    """Causal z-score against the mean / std of the previous ``window`` values of the key;
    score = P(|Z| < |z|) = erf(|z| / sqrt 2). Independent of tidal's."""

    def __init__(self, window: int = 500, min_n: int = 30):
        self.window, self.min_n = window, min_n
        self.state: dict = {}

    def score_many(self, keys, values, times=None):
        out = np.zeros(len(values))
        st, W, m = self.state, self.window, self.min_n
        erf = math.erf
        for i, (k, x) in enumerate(zip(keys.tolist(), values.tolist())):
            s = st.get(k)
            if s is None:
                s = st[k] = [deque(), 0.0, 0.0]
            buf = s[0]
            n = len(buf)
            if n >= m:
                mean = s[1] / n
                var = max(s[2] / n - mean * mean, 1e-12)
                out[i] = erf(abs(x - mean) / math.sqrt(2.0 * var))
            buf.append(x)
            s[1] += x
            s[2] += x * x
            if n + 1 > W:
                y = buf.popleft()
                s[1] -= y
                s[2] -= y * y
        return out

    def state_nbytes_per_key(self):
        return self.window * 8 + 2 * 8 + 200


class RiverHST:
    """River's HalfSpaceTrees (defaults) behind a MinMaxScaler, per key: score_one then learn_one."""

    def __init__(self):
        self.models: dict = {}

    def _model(self, k):
        m = self.models.get(k)
        if m is None:
            from river import anomaly, preprocessing
            m = self.models[k] = preprocessing.MinMaxScaler() | anomaly.HalfSpaceTrees()
        return m

    def score_many(self, keys, values, times=None):
        out = np.empty(len(values))
        for i, (k, x) in enumerate(zip(keys.tolist(), values.tolist())):
            m = self._model(k)
            d = {"x": x}
            out[i] = m.score_one(d)
            m.learn_one(d)
        return out

    def state_nbytes_per_key(self):
        k = next(iter(self.models), None)
        return len(pickle.dumps(self.models[k])) if k is not None else None


class RiverDrift:
    """A River drift detector (defaults) per key on the raw values: an alarm is a change point at
    the alarm's index, and an anomaly flag of score 1."""

    def __init__(self, kind: str):
        self.kind = kind
        self.models: dict = {}
        self.n: dict = {}

    def _model(self, k):
        m = self.models.get(k)
        if m is None:
            from river import drift
            m = self.models[k] = getattr(drift, self.kind)()
            self.n[k] = 0
        return m

    def update_many(self, keys, values, times=None):
        out = np.full(len(values), -1, dtype=np.int64)
        for i, (k, x) in enumerate(zip(keys.tolist(), values.tolist())):
            m = self._model(k)
            m.update(x)
            if m.drift_detected:
                out[i] = self.n[k]
            self.n[k] += 1
        return out

    def score_many(self, keys, values, times=None):
        return (self.update_many(keys, values, times) >= 0).astype(np.float64)

    def state_nbytes_per_key(self):
        k = next(iter(self.models), None)
        return len(pickle.dumps(self.models[k])) if k is not None else None


class PointStep:
    """tidal's point detector (``tidal.quality.anomaly.AnomalyStep``) on the single value feature,
    through ``process`` on batches; the score is its ``anomaly_score`` column. Global model
    (keys ignored), except ``robust`` which is per key."""

    def __init__(self, detector: str):
        from tidal.quality.anomaly import AnomalyStep
        self.detector = detector
        kw = {"key": "key"} if detector == "robust" else {}
        self.step = AnomalyStep(["value"], detector=detector, warmup=500, **kw)

    def score_many(self, keys, values, times=None):
        from tidal.stream.batch import Batch
        rows = [{"key": str(k), "value": float(v)} for k, v in zip(keys.tolist(), values.tolist())]
        out = self.step.process(Batch.from_rows(rows))
        return np.nan_to_num(np.asarray(out.column("anomaly_score"), dtype=np.float64), nan=0.0)

    def state_nbytes_per_key(self):
        return None


def tidal_series_names() -> list[str]:
    try:
        from tidal.detect import SERIES_DETECTORS
    except Exception as e:  # noqa: BLE001
        print(f"tidal.detect not importable ({e}); tidal series detectors skipped")
        return []
    names = [n for n in ("gaussian", "context", "knn", "seasonal", "flatline", "default") if n in SERIES_DETECTORS]
    names += [n for n in SERIES_DETECTORS if n not in names]
    return names + [f"{n}+likelihood" for n in names if n != "default"]


def tidal_change_names() -> list[str]:
    try:
        from tidal.detect import CHANGE_DETECTORS
    except Exception:  # noqa: BLE001
        return []
    return [n for n in ("default", "bocpd") if n in CHANGE_DETECTORS] + \
        [n for n in CHANGE_DETECTORS if n not in ("default", "bocpd")]


def series_factories() -> dict:
    """Anomaly detectors: label -> (factory, kind)."""
    f: dict = {}
    for n in tidal_series_names():
        def mk(n=n):
            from tidal.detect import make_detector
            return make_detector(n)
        f[f"tidal:{n}"] = (mk, "tidal")
    for d in ("iforest", "hst", "robust"):
        f[f"point:{d}"] = (lambda d=d: PointStep(d), "point")
    f["river:HalfSpaceTrees"] = (RiverHST, "baseline")
    for d in ("ADWIN", "PageHinkley", "KSWIN"):
        f[f"river:{d}"] = (lambda d=d: RiverDrift(d), "baseline")
    f["windowed-gaussian"] = (WindowedGaussian, "baseline")
    f["never"] = (Never, "baseline")
    return f


def change_factories() -> dict:
    f: dict = {}
    for n in tidal_change_names():
        def mk(n=n):
            from tidal.detect import make_change_detector
            return make_change_detector(n)
        f[f"tidal-cp:{n}"] = mk
    for d in ("ADWIN", "PageHinkley", "KSWIN"):
        f[f"river:{d}"] = lambda d=d: RiverDrift(d)
    f["never"] = Never
    return f


# --- runs -----------------------------------------------------------------------------------
def score_series(factory, s) -> np.ndarray:
    det = factory()
    keys = np.zeros(len(s.values), dtype=np.int64)
    out = np.empty(len(s.values))
    for i in range(0, len(s.values), BATCH):
        sl = slice(i, i + BATCH)
        out[sl] = det.score_many(keys[sl], s.values[sl], None if s.times is None else s.times[sl])
    return out


def real_eval(sf: dict, cf: dict, nab_res: dict, log) -> dict:
    """The few real labelled series that offline pip packages ship (``bench/detectlib/realdata.py``;
    skipped when the packages are missing). Anomaly series: NAB standard score at the threshold
    each detector got on the generated suite (transferred, not re-optimised on the real series),
    plus whether any alarm fell in the label window. Change series: TCPD F1 / cover (margin 5)."""
    from bench.detectlib import realdata
    out: dict = {"anomaly": {}, "change": {}}
    an, ch = realdata.anomaly_series(), None
    miss = realdata.missing()
    ch = realdata.change_series()
    miss += realdata.missing()
    out["missing"] = miss
    if miss:
        log(f"  real data missing: {miss}")
    for s in an:
        c = nab.Series.build(len(s.values), s.labels)
        per: dict = {}
        for lab, (fac, kind) in sf.items():
            r = nab_res.get(lab, {})
            if "standard" not in r:
                continue
            th = r["standard"]["threshold"]
            try:
                sc = score_series(fac, s)
            except Exception as e:  # noqa: BLE001
                per[lab] = {"error": f"{type(e).__name__}: {e}"}
                continue
            det = sc >= th
            det[:c.prob] = False
            hit = any(bool(det[a:b + 1].any()) for a, b in c.wins)
            fp = int(det.sum() - sum(det[a:b + 1].sum() for a, b in c.wins))
            per[lab] = {"nab_standard": round(nab.normalised([c], [sc], th, nab.PROFILES["standard"]), 1),
                        "threshold": th, "hit": hit, "alarms_outside_windows": fp}
            if lab == "tidal:default":  # also at the series step's own flag threshold
                per[lab]["nab_standard_at_0.999"] = round(nab.normalised([c], [sc], 0.999, nab.PROFILES["standard"]), 1)
        out["anomaly"][s.name] = {"source": s.source, "n": len(s.values), "labels": s.labels, "detectors": per}
        log(f"  {s.name}: " + ", ".join(f"{k} hit={v.get('hit')} fp={v.get('alarms_outside_windows')}"
                                         for k, v in per.items() if k.startswith("tidal:default") or k == "windowed-gaussian"))
    for lab, fac in cf.items():
        per = {}
        for s in ch:
            det = fac()
            keys = np.zeros(len(s.values), dtype=np.int64)
            pred = sorted({int(x) for x in det.update_many(keys, s.values, None) if x >= 0})
            per[s.name] = {"f1": tcpd.f_measure({"0": s.change_points}, pred, 5, n=len(s.values)),
                           "cover": tcpd.covering({"0": s.change_points}, pred, len(s.values)), "n_cp": len(pred)}
        if per:
            out["change"][lab] = {"f1": float(np.mean([v["f1"] for v in per.values()])),
                                  "cover": float(np.mean([v["cover"] for v in per.values()])), "series": per}
            log(f"  real change {lab}: F1 {out['change'][lab]['f1']:.3f}")
    return out


def nab_eval(factories: dict, suite: list, log) -> tuple[dict, dict]:
    corpus = [nab.Series.build(len(s.values), s.labels) for s in suite]
    res, all_scores = {}, {}
    for label, (fac, kind) in factories.items():
        t0 = time.perf_counter()
        try:
            scores = [score_series(fac, s) for s in suite]
        except Exception as e:  # noqa: BLE001
            log(f"  {label}: failed ({type(e).__name__}: {e})")
            res[label] = {"error": f"{type(e).__name__}: {e}"}
            continue
        el = time.perf_counter() - t0
        r = {"kind": kind, "seconds": round(el, 2)}
        for pname, prof in nab.PROFILES.items():
            r[pname] = nab.optimise(corpus, scores, prof)
        # detection rate per anomaly kind at the standard threshold
        th = r["standard"]["threshold"]
        per_kind: dict = {}
        for s, c, sc in zip(suite, corpus, scores):
            det = np.asarray(sc) >= th
            det[:c.prob] = False
            for (a, b), k in zip(c.wins, s.kinds):
                hit = bool(det[a:b + 1].any())
                h, n = per_kind.get(k, (0, 0))
                per_kind[k] = (h + hit, n + 1)
        r["hits_by_kind"] = {k: f"{h}/{n}" for k, (h, n) in sorted(per_kind.items())}
        res[label] = r
        all_scores[label] = scores
        log(f"  {label}: standard {r['standard']['score']:.1f}  low_FP {r['reward_low_FP']['score']:.1f}  "
            f"low_FN {r['reward_low_FN']['score']:.1f}  ({el:.1f} s)")
    return res, all_scores


def tcpd_eval(factories: dict, cps: list, log) -> dict:
    res = {}
    for label, fac in factories.items():
        per = {}
        try:
            for s in cps:
                det = fac()
                keys = np.zeros(len(s.values), dtype=np.int64)
                out = det.update_many(keys, s.values, None)
                pred = sorted({int(x) for x in out if x >= 0})
                per[s.name] = {"f1": tcpd.f_measure(s.annotations, pred, 5, n=len(s.values)),
                               "cover": tcpd.covering(s.annotations, pred, len(s.values)),
                               "n_cp": len(pred)}
        except Exception as e:  # noqa: BLE001
            log(f"  {label}: failed ({type(e).__name__}: {e})")
            res[label] = {"error": f"{type(e).__name__}: {e}"}
            continue
        res[label] = {"f1": float(np.mean([v["f1"] for v in per.values()])),
                      "cover": float(np.mean([v["cover"] for v in per.values()])), "series": per}
        log(f"  {label}: F1 {res[label]['f1']:.3f}  cover {res[label]['cover']:.3f}")
    return res


def throughput(factory, n_keys: int, per_key: int, batch: int = 5000, budget_s: float = 6.0) -> dict:
    """events/s of score_many (or update_many) on ``n_keys`` interleaved keys, batches of ``batch``;
    stops after ``budget_s`` seconds (slow per-record baselines)."""
    rng = np.random.default_rng(0)
    n = n_keys * per_key
    keys = np.tile(np.arange(n_keys, dtype=np.int64), per_key)
    t = series.T0 + series.STEP_S * np.repeat(np.arange(per_key, dtype=np.float64), n_keys)
    ph = (t - series.T0) / (series.DAY * series.STEP_S)
    vals = 10 + 5 * series._shape(ph) + rng.normal(0, 0.5, n) + rng.normal(0, 3, n_keys)[keys]
    det = factory()
    call = det.score_many if hasattr(det, "score_many") else det.update_many
    call(keys[:batch], vals[:batch], t[:batch])  # warm-up (numba compile), not timed
    done, el = 0, 0.0
    for i in range(batch, n, batch):
        t0 = time.perf_counter()
        call(keys[i:i + batch], vals[i:i + batch], t[i:i + batch])
        el += time.perf_counter() - t0
        done += min(batch, n - i)
        if el > budget_s:
            break
    nb = det.state_nbytes_per_key() if hasattr(det, "state_nbytes_per_key") else None
    return {"events_per_s": round(done / el) if el else None, "events": done, "seconds": round(el, 3),
            "state_bytes_per_key": nb}


def state_10k(factory) -> dict:
    """Memory of 10,000 keys after 50 values each: the detector's own accounting."""
    det = factory()
    n_keys, per = 10_000, 50
    keys = np.tile(np.arange(n_keys, dtype=np.int64), per)
    vals = np.random.default_rng(1).normal(0, 1, n_keys * per)
    t = series.T0 + series.STEP_S * np.repeat(np.arange(per, dtype=np.float64), n_keys)
    for i in range(0, len(keys), 50_000):
        det.score_many(keys[i:i + 50_000], vals[i:i + 50_000], t[i:i + 50_000])
    per_key = det.state_nbytes_per_key()
    mem = det.memory_nbytes() if hasattr(det, "memory_nbytes") else None
    return {"state_bytes_per_key": per_key, "total_bytes_10k": per_key * n_keys,
            "memory_nbytes_10k": mem}


# --- plots ----------------------------------------------------------------------------------
def plot(label: str, s, scores: np.ndarray, threshold: float, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = nab.Series.build(len(s.values), s.labels)
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(12, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    x = np.arange(len(s.values))
    a1.plot(x, s.values, lw=0.6, color="#333")
    for (lo, hi), k in zip(c.wins, s.kinds):
        for a in (a1, a2):
            a.axvspan(lo, hi, color="#f4a582", alpha=0.35, lw=0)
        a1.text(lo, a1.get_ylim()[1] if False else np.nanmax(s.values), k, fontsize=8, va="bottom")
    for a in (a1, a2):
        a.axvspan(0, c.prob, color="#cccccc", alpha=0.3, lw=0)
    det = np.flatnonzero((scores >= threshold) & (x >= c.prob))
    a1.scatter(det, s.values[det], s=12, color="#b2182b", zorder=3, label="alarm (standard threshold)")
    a1.legend(loc="upper left", fontsize=8)
    a1.set_title(f"{label} on {s.name} (windows: label windows; grey: probation)", fontsize=10)
    a2.plot(x, scores, lw=0.6, color="#2166ac")
    if np.isfinite(threshold):
        a2.axhline(threshold, color="#b2182b", lw=0.8, ls="--", label=f"threshold {threshold:.4g}")
        a2.legend(loc="upper left", fontsize=8)
    a2.set_ylabel("score")
    a2.set_xlabel("index (5-min steps)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --- report ---------------------------------------------------------------------------------
def fmt(x, nd=1):
    return "–" if x is None else (f"{x:,.{nd}f}" if isinstance(x, float) else f"{x:,}")


def table(out: dict) -> str:
    nabr, cp, tp = out["nab"], out["tcpd"], out["throughput"]
    lines = ["| detector | NAB standard | NAB low FP | NAB low FN | TCPD F1 | TCPD cover | events/s | state B/key |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    labels = list(nabr) + [k for k in cp if k not in nabr]
    for lab in labels:
        r = nabr.get(lab, {})
        c = cp.get(lab, {})
        t = tp.get(lab, {})
        ok = "error" not in r and r
        lines.append("| " + " | ".join([
            lab,
            fmt(r["standard"]["score"]) if ok else "–",
            fmt(r["reward_low_FP"]["score"]) if ok else "–",
            fmt(r["reward_low_FN"]["score"]) if ok else "–",
            fmt(c.get("f1"), 3) if "f1" in c else "–",
            fmt(c.get("cover"), 3) if "cover" in c else "–",
            fmt(t.get("events_per_s")),
            fmt(t.get("state_bytes_per_key")),
        ]) + " |")
    return "\n".join(lines)


def real_table(real: dict) -> str:
    if "error" in real:
        return f"real series: skipped ({real['error']})"
    lines = []
    for name, r in real.get("anomaly", {}).items():
        lines += [f"Real anomaly series {name} ({r['n']} points, labels at {r['labels']}; threshold from the generated suite):", "",
                  "| detector | NAB standard | hit | alarms outside windows |", "|---|---:|---|---:|"]
        for lab, v in r["detectors"].items():
            if "error" not in v:
                lines.append(f"| {lab} | {v['nab_standard']:.1f} | {v['hit']} | {v['alarms_outside_windows']} |")
        lines.append("")
    if real.get("change"):
        names = list(next(iter(real["change"].values()))["series"])
        lines += [f"Real change series ({', '.join(names)}), TCPD margin 5:", "",
                  "| detector | F1 | cover | " + " | ".join(f"{n} CPs found" for n in names) + " |",
                  "|---|---:|---:|" + "---:|" * len(names)]
        for lab, v in real["change"].items():
            lines.append(f"| {lab} | {v['f1']:.3f} | {v['cover']:.3f} | "
                         + " | ".join(str(v["series"][n]["n_cp"]) for n in names) + " |")
    if real.get("missing"):
        lines.append(f"\nmissing: {real['missing']}")
    return "\n".join(lines)


def checks(out: dict) -> list[tuple[str, bool | None, str]]:
    nabr, cp, tp = out["nab"], out["tcpd"], out["throughput"]
    res = []

    def std(lab):
        r = nabr.get(lab)
        return r["standard"]["score"] if r and "standard" in r else None

    d, g = std("tidal:default"), std("windowed-gaussian")
    points = [std(k) for k in nabr if k.startswith("point:") and std(k) is not None]
    bp = max(points) if points else None
    if d is None or g is None or bp is None:
        res.append(("(a) default NAB >= 2x windowed Gaussian and >= best point + 20", None, "missing"))
    else:
        res.append(("(a) default NAB >= 2x windowed Gaussian and >= best point + 20",
                    d >= 2 * g and d >= bp + 20, f"default {d:.1f}, gaussian {g:.1f}, best point {bp:.1f}"))
    f = cp.get("tidal-cp:default", {}).get("f1")
    nv, ad = cp.get("never", {}).get("f1"), cp.get("river:ADWIN", {}).get("f1")
    if f is None or nv is None or ad is None:
        res.append(("(b) default change F1 >= never + 0.15 and > ADWIN", None, "missing"))
    else:
        res.append(("(b) default change F1 >= never + 0.15 and > ADWIN", f >= nv + 0.15 and f > ad,
                    f"default {f:.3f}, never {nv:.3f}, ADWIN {ad:.3f}"))
    e = tp.get("tidal:default", {}).get("events_per_s")
    res.append(("(c) default >= 50,000 events/s", None if e is None else e >= 50_000, f"{fmt(e)} events/s"))
    m = out.get("state_10k", {}).get("tidal:default")
    if not m:
        res.append(("(d) 10,000 keys state < 200 MB", None, "missing"))
    else:
        tot = max(m["total_bytes_10k"], m["memory_nbytes_10k"] or 0)
        res.append(("(d) 10,000 keys state < 200 MB", tot < 200e6, f"{tot / 1e6:.1f} MB"))
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="12 generated series, short throughput runs")
    ap.add_argument("--only", default="", help="comma-separated detector labels (substring match)")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--out", default=None, help="results file (default bench/results/<date>[-quick]-detect.json)")
    args = ap.parse_args(argv)
    log = lambda m: print(m, flush=True)  # noqa: E731
    t_start = time.perf_counter()
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    stem = f"{date}-quick-detect" if args.quick else f"{date}-detect"

    suite = series.quick_suite() if args.quick else series.suite()
    only = [x for x in args.only.split(",") if x]
    sel = lambda labels: {k: v for k, v in labels.items() if not only or any(o in k for o in only)}  # noqa: E731
    sf, cf = sel(series_factories()), sel(change_factories())

    log(f"NAB on {len(suite)} generated series ({sum(len(s.values) for s in suite):,} points)")
    nab_res, all_scores = nab_eval(sf, suite, log)
    cps = changepoints.load()
    log(f"TCPD on River's {len(cps)} change-point series")
    cp_res = tcpd_eval(cf, cps, log)

    log("throughput (1,000 keys interleaved, batches of 5,000)")
    per_key = 20 if args.quick else 100
    tp: dict = {}
    for lab, (fac, kind) in sf.items():
        if "error" in nab_res.get(lab, {}):
            continue
        budget = 2.0 if args.quick else (8.0 if kind == "tidal" else 4.0)
        try:
            tp[lab] = throughput(fac, 1000, per_key, budget_s=budget)
        except Exception as e:  # noqa: BLE001
            tp[lab] = {"error": f"{type(e).__name__}: {e}"}
        log(f"  {lab}: {tp[lab]}")
    for lab, fac in cf.items():
        if lab.startswith("tidal-cp:"):
            tp[lab] = throughput(fac, 1000, per_key, budget_s=2.0 if args.quick else 8.0)
            log(f"  {lab}: {tp[lab]}")
    log("real labelled series (offline packages)")
    try:
        real = real_eval(sf, cf, nab_res, log)
    except Exception as e:  # noqa: BLE001
        real = {"error": f"{type(e).__name__}: {e}"}
        log(f"  real data skipped: {real['error']}")
    st10: dict = {}
    for lab, (fac, kind) in sf.items():
        if kind == "tidal" and lab == "tidal:default":
            st10[lab] = state_10k(fac)
            log(f"  10k keys {lab}: {st10[lab]}")

    plots = {}
    if not args.no_plots:
        rep = series.representative()
        for lab, (fac, kind) in sf.items():
            if lab not in nab_res or "error" in nab_res[lab]:
                continue
            sc = score_series(fac, rep)
            p = RESULTS / "detect" / (lab.replace(":", "-").replace("+", "_") + ".png")
            plot(lab, rep, sc, nab_res[lab]["standard"]["threshold"], p)
            plots[lab] = str(p.relative_to(RESULTS.parent.parent))

    from bench.benchlib.machine import describe
    out = {
        "benchmark": "detect", "date": date, "quick": args.quick,
        "machine": describe(),
        "method": {
            "nab": {"window_share": nab.WINDOW_SHARE, "probation": nab.PROBATION, "profiles": nab.PROFILES,
                    "threshold": "one per detector and profile over the corpus (grid + score quantiles)"},
            "tcpd": {"margin": 5, "series": {s.name: {"column": s.column, "n": len(s.values),
                                                      "annotators": len(s.annotations)} for s in cps}},
            "throughput": {"keys": 1000, "values_per_key": per_key, "batch": 5000, "cores": 1},
            "suite": {"series": len(suite), "points": int(sum(len(s.values) for s in suite)),
                      "anomalies": int(sum(len(s.labels) for s in suite))},
        },
        "nab": nab_res, "tcpd": cp_res, "real": real, "throughput": tp, "state_10k": st10, "plots": plots,
    }
    out["checks"] = [{"check": c, "pass": p, "detail": d} for c, p, d in checks(out)]
    out["seconds"] = round(time.perf_counter() - t_start, 1)
    md = table(out)
    lines = [md, "", real_table(real), ""] + [f"{'PASS' if c['pass'] else ('FAIL' if c['pass'] is False else 'SKIP')} {c['check']}: {c['detail']}"
                        for c in out["checks"]]
    text = "\n".join(lines)
    print("\n" + text)
    RESULTS.mkdir(exist_ok=True)
    path = Path(args.out) if args.out else RESULTS / f"{stem}.json"
    path.write_text(json.dumps(out, indent=2, default=float) + "\n")
    path.with_suffix(".md").write_text(f"# detect benchmark {date}{' (quick)' if args.quick else ''}\n\n{text}\n")
    print(f"\nwrote {path} ({out['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
