"""Drift detection quality: detection delay on known change points, false alarms on stationary streams.

Reported as River's drift evaluation reports them (detection rate, median delay, false alarms),
with the change points of DESIGN.md's reference figures:

- **concept drift**, River's detectors with their defaults, 30 seeds, change at sample 10,000:
  a 1σ mean shift (ADWIN, Page-Hinkley, KSWIN) and an error rate rising 0.1 → 0.3 (DDM, EDDM,
  HDDM_A, HDDM_W, FHDDM, ADWIN); false alarms per 100,000 stationary values;
- **tidal's default** (``ConceptDriftMonitor()``: ADWIN, alerting only when errors rise) on
  stationary error streams at several error rates, and its delay on error rates rising;
- **data drift** (``DataDriftMonitor`` defaults: 5,000-row reference, 1,000-row windows, Evidently's
  tests, dataset drift at ≥ 50% of 10 numeric + 2 categorical columns): delay (to the end of the
  first window flagged, per changed column and for the dataset) on mean shifts of 6 columns and
  on a category mix change of one, dataset-level and per-column false alarms per 100,000
  stationary rows, and the sketch update rate.

    python bench/drift_bench.py [--quick] [--seeds 30]

Writes bench/results/<date>-drift.json and prints a table. Floor: tidal's defaults raise ≤ 1
false alarm per 100,000 stationary events (concept and data drift alike).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from tidal.drift import ConceptDriftMonitor, DataDriftMonitor, make_detector

RESULTS = Path(__file__).resolve().parent / "results"
CHANGE = 10_000
FLOOR_FALSE_ALARMS = 1.0  # per 100k stationary events, tidal's defaults


def _run_detector(name: str, values: list[float]) -> list[int]:
    d = make_detector(name)
    hits = []
    for i, v in enumerate(values):
        d.update(v)
        if d.drift_detected:
            hits.append(i)
    return hits


def _change_point(name: str, kind: str, seeds: int, n: int = 2 * CHANGE) -> dict:
    delays, false_alarms, missed = [], 0, 0
    for s in range(seeds):
        rng = np.random.default_rng(1000 + s)
        if kind == "mean_shift":
            x = np.r_[rng.normal(0, 1, CHANGE), rng.normal(1, 1, n - CHANGE)]
        else:
            x = np.r_[rng.random(CHANGE) < 0.1, rng.random(n - CHANGE) < 0.3].astype(float)
        hits = _run_detector(name, x.tolist())
        false_alarms += sum(h < CHANGE for h in hits)
        after = [h for h in hits if h >= CHANGE]
        if after:
            delays.append(after[0] - CHANGE)
        else:
            missed += 1
    return {"detector": name, "stream": kind, "seeds": seeds, "detected": seeds - missed,
            "median_delay": float(np.median(delays)) if delays else None,
            "false_alarms_per_10k": false_alarms / seeds}


def _stationary(name: str, kind: str, n: int, runs: int) -> dict:
    total = 0
    t0 = time.perf_counter()
    for s in range(runs):
        rng = np.random.default_rng(2000 + s)
        x = rng.normal(size=n) if kind == "normal" else (rng.random(n) < float(kind)).astype(float)
        total += len(_run_detector(name, x.tolist()))
    rate = runs * n / (time.perf_counter() - t0)
    return {"detector": name, "stream": kind, "events": runs * n,
            "false_alarms_per_100k": total * 100_000 / (runs * n), "values_per_s": round(rate)}


def _tidal_default(n: int, runs: int) -> list[dict]:
    """ConceptDriftMonitor() as DriftStep uses it: ADWIN, an alert only when the errors rose."""
    out = []
    for p in (0.02, 0.1, 0.3):
        alarms = 0
        for s in range(runs):
            rng = np.random.default_rng(3000 + s)
            errors = (rng.random(n) < p).astype(float)
            mon = ConceptDriftMonitor()
            for lo in range(0, n, 5000):  # micro-batches, as in a worker
                alarms += sum(d.direction == "up" for d in mon.update(errors[lo:lo + 5000]))
        out.append({"stream": f"error rate {p}", "events": runs * n,
                    "false_alarms_per_100k": alarms * 100_000 / (runs * n)})
    return out


def _tidal_default_delay(seeds: int) -> list[dict]:
    out = []
    for before, after in ((0.05, 0.15), (0.1, 0.3), (0.05, 0.4)):
        delays = []
        for s in range(seeds):
            rng = np.random.default_rng(4000 + s)
            errors = np.r_[rng.random(CHANGE) < before, rng.random(CHANGE) < after].astype(float)
            mon = ConceptDriftMonitor()
            hits = [d.row + lo for lo in range(0, 2 * CHANGE, 5000)
                    for d in mon.update(errors[lo:lo + 5000]) if d.direction == "up"]
            after_hits = [h for h in hits if h >= CHANGE]
            if after_hits:
                delays.append(after_hits[0] - CHANGE)
        out.append({"stream": f"error rate {before} → {after}", "seeds": seeds, "detected": len(delays),
                    "median_delay": float(np.median(delays)) if delays else None})
    return out


def _columns(rng: np.random.Generator, n: int, shift: float = 0.0, shifted: int = 0, mix: bool = False) -> dict:
    cols = {f"x{i}": rng.normal(shift if i < shifted else 0.0, 1.0, n) for i in range(10)}
    p = [0.2, 0.3, 0.5] if mix else [0.5, 0.3, 0.2]
    cols["c0"] = rng.choice(np.array(["a", "b", "c"], dtype=object), n, p=p)
    cols["c1"] = rng.choice(np.array(["u", "v", "w", "z"], dtype=object), n, p=[0.4, 0.3, 0.2, 0.1])
    return cols


FEATURES = [f"x{i}" for i in range(10)] + ["c0", "c1"]


def _data_change(seeds: int, shift: float, shifted: int, mix: bool, change: int = 20_000) -> dict:
    """Rows from the change to the end of the first window flagged: per changed column and for the dataset."""
    changed = [f"x{i}" for i in range(shifted)] + (["c0"] if mix else [])
    col_delays, set_delays, false_alarms = [], [], 0
    for s in range(seeds):
        rng = np.random.default_rng(5000 + s)
        mon = DataDriftMonitor(FEATURES, ["c0", "c1"])
        reports = []
        for part in (_columns(rng, change), _columns(rng, 20_000, shift, shifted, mix)):
            for lo in range(0, len(part["x0"]), 5000):
                reports += mon.update({k: v[lo:lo + 5000] for k, v in part.items()})
        false_alarms += sum(r.dataset_drift for r in reports if r.last_row < change)
        later = [r for r in reports if r.last_row >= change]
        col = next((r.last_row for r in later if any(r.features[c].drifted for c in changed)), None)
        ds = next((r.last_row for r in later if r.dataset_drift), None)
        if col is not None:
            col_delays.append(col - change + 1)
        if ds is not None:
            set_delays.append(ds - change + 1)
    what = (f"{shifted} of 10 numeric columns +{shift}σ" if shifted else "") + (" + category mix" if mix else "")
    med = lambda d: float(np.median(d)) if d else None  # noqa: E731
    return {"change": what.strip(" +"), "seeds": seeds, "columns_detected": len(col_delays),
            "median_column_delay_rows": med(col_delays), "dataset_detected": len(set_delays),
            "median_dataset_delay_rows": med(set_delays), "dataset_false_alarms_before": false_alarms}


def _data_stationary(rows: int, runs: int, reference: int = 5000) -> dict:
    dataset, columns, windows, elapsed = 0, 0, 0, 0.0
    for s in range(runs):
        rng = np.random.default_rng(6000 + s)
        mon = DataDriftMonitor(FEATURES, ["c0", "c1"], reference_size=reference)
        data = _columns(rng, rows + reference)
        t0 = time.perf_counter()
        for lo in range(0, rows + reference, 5000):
            for r in mon.update({k: v[lo:lo + 5000] for k, v in data.items()}):
                windows += 1
                dataset += r.dataset_drift
                columns += len(r.drifted_features)
        elapsed += time.perf_counter() - t0
    return {"reference_rows": reference, "rows": runs * rows, "windows": windows,
            "dataset_false_alarms_per_100k": dataset * 100_000 / (runs * rows),
            "column_false_alarms_per_100k_per_column": columns * 100_000 / (runs * rows) / len(FEATURES),
            "rows_per_s_12_columns": round(runs * (rows + reference) / elapsed)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer seeds and shorter streams")
    ap.add_argument("--seeds", type=int, default=None)
    args = ap.parse_args()
    seeds = args.seeds or (5 if args.quick else 30)
    stat_runs = 1 if args.quick else 5
    t_all = time.monotonic()

    river = []
    for name in ("adwin", "page_hinkley", "kswin"):
        river.append(_change_point(name, "mean_shift", seeds if name != "kswin" else min(seeds, 5)))
    for name in ("ddm", "eddm", "hddm_a", "hddm_w", "fhddm", "adwin"):
        river.append(_change_point(name, "error_rate", seeds))
    stationary = []
    for name in ("adwin", "page_hinkley", "kswin"):
        stationary.append(_stationary(name, "normal", 100_000, 1 if name == "kswin" else stat_runs))
    for name in ("ddm", "eddm", "hddm_a", "hddm_w", "fhddm", "adwin"):
        stationary.append(_stationary(name, "0.1", 100_000, stat_runs))
    default_fa = _tidal_default(100_000, stat_runs * 2)
    default_delay = _tidal_default_delay(seeds)
    ds = max(3, seeds // 3)
    data_changes = [_data_change(ds, 1.0, 6, False), _data_change(ds, 0.5, 6, False), _data_change(ds, 0.2, 6, False),
                    _data_change(ds, 0.1, 6, False), _data_change(ds, 0.0, 0, True)]
    data_stationary = [_data_stationary(100_000, stat_runs), _data_stationary(100_000, 1, reference=1000)]

    worst = max([r["false_alarms_per_100k"] for r in default_fa]
                + [data_stationary[0]["dataset_false_alarms_per_100k"]])
    result = {
        "benchmark": "drift", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": __import__("os").cpu_count()},
        "seeds": seeds, "change_at": CHANGE,
        "river_detectors_change_point": river, "river_detectors_stationary": stationary,
        "tidal_default_concept_false_alarms": default_fa, "tidal_default_concept_delay": default_delay,
        "data_drift_change_point": data_changes, "data_drift_stationary": data_stationary,
        "floor": {"false_alarms_per_100k_max": FLOOR_FALSE_ALARMS, "worst_tidal_default": worst,
                  "met": worst <= FLOOR_FALSE_ALARMS},
        "elapsed_s": round(time.monotonic() - t_all, 1),
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{datetime.now(timezone.utc).date().isoformat()}-drift.json"
    path.write_text(json.dumps(result, indent=2))
    _print(result, path)


def _fmt(v, digits=1):
    return "—" if v is None else f"{v:,.{digits}f}" if isinstance(v, float) else f"{v:,}"


def _print(r: dict, path: Path) -> None:
    print(f"\nRiver detectors, defaults, change at {CHANGE:,} ({r['seeds']} seeds; KSWIN fewer: it is slow)")
    print(f"{'detector':<14}{'stream':<24}{'detected':>10}{'median delay':>14}{'false alarms/10k':>18}")
    for x in r["river_detectors_change_point"]:
        stream = "1σ mean shift" if x["stream"] == "mean_shift" else "error 0.1 → 0.3"
        print(f"{x['detector']:<14}{stream:<24}{x['detected']:>5}/{x['seeds']:<4}{_fmt(x['median_delay']):>14}"
              f"{_fmt(x['false_alarms_per_10k'], 2):>18}")
    print("\nRiver detectors, defaults, stationary streams")
    print(f"{'detector':<14}{'stream':<24}{'events':>10}{'false alarms/100k':>20}{'values/s':>12}")
    for x in r["river_detectors_stationary"]:
        stream = "N(0,1)" if x["stream"] == "normal" else f"errors at {x['stream']}"
        print(f"{x['detector']:<14}{stream:<24}{x['events']:>10,}{_fmt(x['false_alarms_per_100k'], 2):>20}"
              f"{x['values_per_s']:>12,}")
    print("\ntidal's default concept-drift detector (ADWIN, alerts on rising errors)")
    for x in r["tidal_default_concept_false_alarms"]:
        print(f"  stationary {x['stream']:<28} {x['events']:>9,} events  false alarms/100k "
              f"{_fmt(x['false_alarms_per_100k'], 2)}")
    for x in r["tidal_default_concept_delay"]:
        print(f"  {x['stream']:<39} detected {x['detected']}/{x['seeds']}  median delay {_fmt(x['median_delay'])}")
    print("\nData drift, tidal's defaults (5,000-row reference, 1,000-row windows, dataset drift ≥ 50% of 12 columns)")
    print(f"  {'change at row 20,000':<36}{'column drift':>22}{'dataset drift':>24}")
    for x in r["data_drift_change_point"]:
        col = _fmt(x["median_column_delay_rows"], 0)
        print(f"  {x['change']:<36}{x['columns_detected']:>4}/{x['seeds']} after {col:>6}"
              f"{x['dataset_detected']:>6}/{x['seeds']} after {_fmt(x['median_dataset_delay_rows'], 0):>6} rows"
              f"  (false alarms before: {x['dataset_false_alarms_before']})")
    for x in r["data_drift_stationary"]:
        print(f"  stationary, reference {x['reference_rows']:>5,}: {x['rows']:>9,} rows  dataset false alarms/100k "
              f"{_fmt(x['dataset_false_alarms_per_100k'], 2)}  "
              f"per column {_fmt(x['column_false_alarms_per_100k_per_column'], 2)}"
              f"  sketch update {x['rows_per_s_12_columns']:,} rows/s")
    f = r["floor"]
    print(f"\nfloor: ≤ {f['false_alarms_per_100k_max']:g} false alarm per 100k with defaults: worst "
          f"{f['worst_tidal_default']:.2f} → {'met' if f['met'] else 'NOT met'}")
    print(f"written to {path} ({r['elapsed_s']} s)")


if __name__ == "__main__":
    main()
