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

- **in a worker** (:func:`measure_in_worker`, what ``bench/run.py``'s ``drift`` scenario runs):
  a tidal worker with ``DriftStep`` (tidal's defaults) reads a paced stream of labelled,
  scored events in which, at a known event, the error rate rises and some features shift;
  reported: events and seconds from the first drifted event to each alarm on ``tidal.alerts``
  (concept drift and data drift), and the alarms raised before it (false alarms).

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


def _stream_events(n: int, change_at: int, seed: int, error_before: float, error_after: float,
                   shift: float, shifted: int) -> list[bytes]:
    """JSON records: event_id, the 12 columns of :func:`_columns`, a 0/1 ``decision`` and ``label`` that
    disagree at ``error_before`` before event ``change_at`` and at ``error_after`` from it on, where
    ``shifted`` numeric columns also move by ``shift`` σ."""
    import orjson

    rng = np.random.default_rng(seed)
    parts = [_columns(rng, change_at), _columns(rng, n - change_at, shift, shifted)]
    cols = {k: np.r_[parts[0][k], parts[1][k]] for k in parts[0]}
    decision = rng.random(n) < 0.3
    wrong = rng.random(n) < np.where(np.arange(n) < change_at, error_before, error_after)
    label = decision ^ wrong
    names = list(cols)
    out = []
    for i in range(n):
        rec = {"event_id": i, **{k: cols[k][i] for k in names}, "decision": int(decision[i]), "label": int(label[i])}
        out.append(orjson.dumps(rec, option=orjson.OPT_SERIALIZE_NUMPY))
    return out


def measure_in_worker(settings, rate: int = 10_000, events: int = 40_000, change_at: int = 20_000,
                      name: str | None = None, error_before: float = 0.1, error_after: float = 0.3,
                      shift: float = 0.5, shifted: int = 6, seed: int = 7, max_batch: int = 5000,
                      max_wait_ms: int = 50, join_timeout_s: float = 60.0,
                      log=lambda s: None) -> dict:
    """Drift-detection delay through a worker: DriftStep (defaults) on a paced stream with a known change.

    One in-process worker reads a fresh 1-partition topic (so the detector sees the events in
    event_id order); the producer offers ``rate`` events/s. At event ``change_at`` the model's
    error rate goes ``error_before`` → ``error_after`` (concept drift) and ``shifted`` of the 10
    numeric features move by ``shift`` σ (data drift). The alarms are read back from the step's
    alerts topic (fresh, instead of ``tidal.alerts``): each names the event it fired on.
    """
    import threading
    import uuid

    import orjson
    from confluent_kafka import Producer

    from tidal.broker import ensure_topics
    from tidal.drift import DriftStep
    from tidal.quality import Schema
    from tidal.stream import Pipeline, Worker

    name = name or f"drift-{uuid.uuid4().hex[:6]}"
    alerts = f"{name}.alerts"
    schema = Schema.from_dict({"event_id": "int", **{f"x{i}": "float" for i in range(10)}, "c0": "str", "c1": "str",
                               "decision": "int", "label": "int"})
    step = DriftStep(FEATURES, ["c0", "c1"], by=None, model="bench", alerts_topic=alerts)
    p = Pipeline(name, schema=schema, steps=[step], partitions=1, max_batch=max_batch, max_wait_ms=max_wait_ms)
    ensure_topics(settings, p.topic_specs())
    values = _stream_events(events, change_at, seed, error_before, error_after, shift, shifted)
    w = Worker(p, settings, "0", handle_signals=False)
    assigned = threading.Event()
    on_assign = w._on_assign

    def _assigned(consumer, partitions):  # the worker owns the partition: the stream may start
        on_assign(consumer, partitions)
        assigned.set()

    w._on_assign = _assigned
    thread = threading.Thread(target=w.run, daemon=True)
    thread.start()
    producer = Producer(settings.client_config({"linger.ms": 5, "log_level": 3}))
    t0 = time.monotonic()
    if not assigned.wait(join_timeout_s):
        w.stop()
        raise RuntimeError(f"the drift worker got no partition within {join_timeout_s:g}s")
    log(f"drift worker joined after {time.monotonic() - t0:.1f}s; offering {events:,} events at {rate:,}/s, "
        f"change at event {change_at:,}")
    chunk = max(1, rate // 100)
    start = time.monotonic()
    produced_at = {}
    try:
        for lo in range(0, events, chunk):
            if lo <= change_at < lo + chunk:
                produced_at["change"] = time.time()  # the chunk holding the first drifted event goes out now
            for i in range(lo, min(events, lo + chunk)):
                producer.produce(p.sources[0], values[i], b"%d" % i)
            producer.poll(0)
            time.sleep(max(0.0, start + (lo + chunk) / rate - time.monotonic()))
        producer.flush(30)
        produced_at["end"] = time.time()
        settle = time.monotonic() + 30
        while time.monotonic() < settle and w.stats.events_in < events:
            time.sleep(0.05)
        time.sleep(1.0)  # the last batch's alerts delivered
    finally:
        w.stop()
        thread.join(20)
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    c = Consumer(settings.client_config({"group.id": "bench-read", "enable.partition.eof": True, "log_level": 3}))
    c.assign([TopicPartition(alerts, 0, 0)])
    records, deadline = [], time.monotonic() + 30
    while time.monotonic() < deadline:
        batch = c.consume(1000, 0.5)
        if any(m.error() and m.error().code() == KafkaError._PARTITION_EOF for m in batch):
            records += [(m.timestamp()[1] / 1000, orjson.loads(m.value())) for m in batch if not m.error()]
            break
        records += [(m.timestamp()[1] / 1000, orjson.loads(m.value())) for m in batch if not m.error()]
    c.close()
    t_change = produced_at["change"]
    out = {"offered_events_per_s": rate, "events": events, "events_in": w.stats.events_in, "change_at": change_at,
           "error_rate": [error_before, error_after], "data_shift": f"{shifted} of 10 numeric columns +{shift:g}σ",
           "detector": "ADWIN on the errors, alerting when they rise; data drift: a 5,000-row reference, "
                       "1,000-row windows, dataset drift at ≥ 50% of 12 columns",
           "max_batch": max_batch, "max_wait_ms": max_wait_ms, "alerts": len(records),
           "topics": [*p.sources, p.sink, p.dlq, alerts]}
    for kind in ("concept_drift", "data_drift"):
        firing = sorted(((a["at"]["event_id"], a["time"], ts) for ts, a in records
                         if a.get("type") == kind and a.get("state") == "firing"), key=lambda x: x[0])
        before = [f for f in firing if f[0] < change_at]
        after = [f for f in firing if f[0] >= change_at]
        first = after[0] if after else None
        out[kind] = {
            "false_alarms_before_change": len(before),
            "false_alarms_at_events": [f[0] for f in before],
            "detected": first is not None,
            "delay_events": first[0] - change_at if first else None,
            "delay_s": first[1] - t_change if first else None,  # first drifted event produced → alarm raised
            "delay_to_alert_produced_s": first[2] - t_change if first else None,
        }
    return out


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
