"""What the data-quality chain costs: a tidal pipeline with and without it, through Kafka.

Same 10-field flow records (JSON; ~4% dirty: values with units, ISO-8601 / epoch-second
timestamps, odd-case protocols, missing values, numbers as text, out-of-range values,
duplicates), same broker, same 4 partitions, one worker each:

- **baseline**: decode + schema type checks (msgspec) → outputs (no steps);
- **quality**: the same + the full chain — validation and normalisation (timestamps, units,
  numeric strings, case, ranges, enums), imputation (median, mean, most frequent),
  outliers (robust z global, IQR per host), integrity (duplicate ids, per-host sequences).

Each scenario drains the same pre-produced backlog with its own consumer group, alternated
``--repeats`` times; events/s counts from the first batch to the last (start-up excluded),
and the best run of each is kept. The floor: quality keeps ≥ 50% of the baseline's events/s.
Also reported: each part's cost in µs per event, in memory (no Kafka).

    python bench/quality_bench.py [--events 200000] [--repeats 2] [--quick]

Writes bench/results/<date>-quality.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import orjson

from tidal.broker import EmbeddedBroker, TopicSpec, ensure_topics, produce_all
from tidal.config import KafkaSettings
from tidal.quality import Schema
from tidal.quality.base import as_quality, flush
from tidal.quality.chain import QualityChain
from tidal.stream import Pipeline, Worker
from tidal.stream.decode import decode_values
from tidal.stream.encode import encode_outputs

RESULTS = Path(__file__).resolve().parent / "results"
PARTITIONS = 4
SCHEMA = {
    "event_id": "str",
    "ts": {"type": "int", "timestamp": True},
    "host": "str",
    "port": {"type": "int", "min": 0, "max": 65535},
    "proto": {"type": "str", "enum": ["tcp", "udp", "icmp"], "trim": True, "case": "lower", "policy": {"enum": "flag"}},
    "bytes": {"type": "float", "required": False, "min": 0, "unit": "B", "policy": {"range": "reject"}},
    "packets": {"type": "int", "required": False, "min": 1, "coerce": True, "policy": {"type": "fix", "range": "fix"}},
    "duration": {"type": "float", "required": False, "min": 0, "policy": {"range": "fix"}},
    "seq": "int",
    "score": {"type": "float", "min": 0, "max": 1, "policy": {"range": "flag"}},
}
CHAIN = {
    "validate": {},
    "impute": {"bytes": "median", "packets": "mean", "duration": "median", "proto": "most_frequent"},
    "outliers": {"bytes": {"method": "mad", "policy": "flag"},
                 "duration": {"method": "iqr", "policy": "clip", "key": "host", "window": 128}},
    "integrity": {"id": "event_id", "sequence": {"key": "host", "field": "seq"}},
}


def make_events(n: int, seed: int = 3) -> tuple[list[bytes], list[bytes]]:
    """``n`` flow records with ~4% dirty values and ~0.3% duplicates; keyed by host."""
    rng = np.random.default_rng(seed)
    hosts = [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(500)]
    h = rng.integers(0, len(hosts), n)
    seq = np.zeros(n, dtype=np.int64)
    counts = np.zeros(len(hosts), dtype=np.int64)
    for i, x in enumerate(h.tolist()):  # per-host sequence numbers
        counts[x] += 1
        seq[i] = counts[x]
    nbytes = np.round(np.exp(rng.normal(8.5, 1.5, n)), 1)
    cols = zip(range(n), (1_767_225_600_000 + np.arange(n)).tolist(), h.tolist(), rng.integers(1, 65535, n).tolist(),
               rng.choice(["tcp", "udp", "icmp"], n, p=[0.8, 0.18, 0.02]).tolist(), nbytes.tolist(),
               np.maximum(1, nbytes // 900).astype(int).tolist(), np.round(rng.exponential(1.0, n), 4).tolist(),
               seq.tolist(), np.round(rng.random(n), 4).tolist())
    dirty = rng.random(n) < 0.04
    kinds = rng.integers(0, 8, n)
    keys, values = [], []
    for (i, ts, hi, port, proto, b, pk, du, sq, sc), d, k in zip(cols, dirty.tolist(), kinds.tolist()):
        rec = {"event_id": f"e{i}", "ts": ts, "host": hosts[hi], "port": port, "proto": proto, "bytes": b,
               "packets": pk, "duration": du, "seq": sq, "score": sc}
        if d:
            if k == 0:
                rec["bytes"] = f"{b / 1000:.3f} KB"
            elif k == 1:
                rec["ts"] = datetime.fromtimestamp(ts / 1000, timezone.utc).isoformat()
            elif k == 2:
                rec["ts"] = ts / 1000
            elif k == 3:
                rec["proto"] = f" {proto.upper()}"
            elif k == 4:
                del rec[("bytes", "packets", "duration")[i % 3]]
            elif k == 5:
                rec["packets"] = str(pk) if i % 2 else "n/a"
            elif k == 6:
                rec["duration"] = -1.0
            else:
                rec["score"] = 1.5
        keys.append(hosts[hi].encode())
        values.append(orjson.dumps(rec))
    for i in np.flatnonzero(rng.random(n) < 0.003).tolist():  # duplicates, shortly after, same key
        j = min(n - 1, i + 20)
        values[j], keys[j] = values[i], keys[i]
    return keys, values


def fill(settings: KafkaSettings, topic: str, keys: list[bytes], values: list[bytes]) -> None:
    from confluent_kafka import Producer

    ensure_topics(settings, [TopicSpec(topic, PARTITIONS)])
    p = Producer(settings.client_config({"linger.ms": 20, "batch.size": 1_000_000, "log_level": 3,
                                         "queue.buffering.max.messages": 1_000_000}))
    produce_all(p, topic, values, keys)
    p.flush(60)


def run_worker(settings: KafkaSettings, topic: str, n: int, quality: bool) -> dict:
    name = f"qbench{uuid.uuid4().hex[:6]}"
    chain = QualityChain.from_dict(CHAIN) if quality else None
    p = Pipeline(name, sources=[topic], schema=Schema.from_dict(SCHEMA), steps=[chain] if chain else [],
                 group=f"bench-{name}", max_batch=5000)
    ensure_topics(settings, [TopicSpec(p.sink, PARTITIONS), TopicSpec(p.dlq, 1)])
    w = Worker(p, settings, lag_interval_s=5.0)
    w.on_batch = lambda w, _b: w.stop() if w.stats.events_in >= n else None
    t_start = time.time()
    stats = w.run()
    out = {"events_per_s": stats.events_in / (stats.last_event_at - stats.first_event_at),
           "startup_s": round(stats.first_event_at - t_start, 2), "events_in": stats.events_in,
           "outputs": stats.outputs, "dlq": dict(stats.dlq)}
    if chain is not None:
        s = chain.summary()
        out["dropped"] = s["dropped"]
        out["violations"] = s["violations"]
        out["accounted"] = stats.events_in == stats.outputs + sum(stats.dlq.values()) + sum(s["dropped"].values())
    return out


def part_costs(values: list[bytes], n: int) -> dict[str, float]:
    """µs per event of decoding, each chain part, the record rewrite and encoding, in memory."""
    schema = Schema.from_dict(SCHEMA)
    chain = QualityChain.from_dict(CHAIN)
    t: dict[str, float] = {"decode": 0.0, **{s.name: 0.0 for s in chain.steps}, "rewrite": 0.0, "encode": 0.0}
    for lo in range(0, n, 5000):
        t0 = time.perf_counter()
        b = as_quality(decode_values(values[lo:lo + 5000], schema))
        t["decode"] += time.perf_counter() - t0
        for step in chain.steps:
            t0 = time.perf_counter()
            b = step.apply(b)
            t[step.name] += time.perf_counter() - t0
        t0 = time.perf_counter()
        flush(b)
        t["rewrite"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        encode_outputs(b)
        t["encode"] += time.perf_counter() - t0
    return {k: round(v * 1e6 / n, 2) for k, v in t.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="50,000 events, one repeat")
    args = ap.parse_args()
    n, repeats = (50_000, 1) if args.quick else (args.events, args.repeats)
    keys, values = make_events(n)
    costs = part_costs(values, min(n, 100_000))
    runs: dict[str, list[dict]] = {"baseline": [], "quality": []}
    with EmbeddedBroker() as broker:
        settings = KafkaSettings(broker.bootstrap)
        topic = f"qbench-{uuid.uuid4().hex[:6]}.events"
        fill(settings, topic, keys, values)
        for _ in range(repeats):
            for scenario in ("baseline", "quality"):
                runs[scenario].append(run_worker(settings, topic, n, scenario == "quality"))
                print(f"  {scenario}: {runs[scenario][-1]['events_per_s']:,.0f} events/s", flush=True)
    best = {k: max(v, key=lambda r: r["events_per_s"]) for k, v in runs.items()}
    ratio = best["quality"]["events_per_s"] / best["baseline"]["events_per_s"]
    pairs = [round(q["events_per_s"] / b["events_per_s"], 3) for b, q in zip(runs["baseline"], runs["quality"])]
    result = {
        "date": datetime.now().strftime("%Y-%m-%d"), "events": n, "repeats": repeats,
        "machine": {"cpus": __import__("os").cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "fields": 10, "schema": SCHEMA, "chain": CHAIN,
        "results": {"baseline (decode + schema, no steps)": best["baseline"],
                    "quality (validate + normalise + impute + outliers + integrity)": best["quality"]},
        "all_runs": {k: [round(r["events_per_s"]) for r in v] for k, v in runs.items()},
        "ratio": round(ratio, 3), "floor": 0.5, "floor_met": ratio >= 0.5,
        "ratio_per_repeat": pairs,  # quality / baseline of the runs made back to back: the noise
        "floor_met_every_repeat": min(pairs) >= 0.5,
        "part_costs_us_per_event": costs,
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{result['date']}-quality.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(f"{'scenario':<66} {'events/s':>10} {'ratio':>7}")
    for label, r in result["results"].items():
        print(f"{label:<66} {r['events_per_s']:>10,.0f} {r['events_per_s'] / best['baseline']['events_per_s']:>7.2f}")
    print(f"\nfloor ≥ 0.50 of baseline: {'met' if result['floor_met'] else 'NOT met'} ({ratio:.2f}; "
          f"per repeat {', '.join(f'{r:.2f}' for r in pairs)}); "
          f"every event accounted for: {best['quality'].get('accounted')}")
    print("in memory, µs per event: " + ", ".join(f"{k} {v}" for k, v in costs.items()))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
