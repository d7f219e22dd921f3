"""Stateful features: windowed aggregates through Kafka, and restoring state from a changelog.

1. A pipeline with three windowed aggregates (sum, count, mean over 10-minute tumbling
   windows) over 10,000 keys drains a backlog: events/s, with changelog writes and commits.
2. A changelog holding ``--entries`` keys is restored into a fresh store: seconds.
3. ``--backend rocksdb`` only: a warm restart. The store keeps its databases in a state folder
   (``state_dir``); ``--tail`` more changelog records are written, and a new store over the same
   folder replays only those from its checkpoint: records replayed and seconds, vs the cold
   restore of part 2.

``--backend rocksdb`` keeps the state (all parts) in RocksDB instead of memory.

    python bench/features_bench.py [--events 300000] [--entries 1000000] [--backend memory|rocksdb] [--tail 10000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import orjson
from confluent_kafka import Producer

from tidal.broker import EmbeddedBroker, TopicSpec, ensure_topics
from tidal.broker.produce import produce_all
from tidal.broker.topics import COMPACTED
from tidal.config import KafkaSettings
from tidal.features import WindowAggregate
from tidal.quality import Schema
from tidal.stream import Pipeline, Worker
from tidal.stream.state import StateStore, restore_partitions

RESULTS = Path(__file__).resolve().parent / "results"


def fill(settings: KafkaSettings, topic: str, values, keys, partition=None) -> None:
    p = Producer(settings.client_config({"linger.ms": 20, "batch.size": 1_000_000, "compression.type": "lz4",
                                         "log_level": 3}))
    produce_all(p, topic, values, keys, partition)
    p.flush()


def windows(settings: KafkaSettings, n: int, backend: str = "memory") -> dict:
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 10_000, n)
    ts = np.sort(rng.integers(0, 3_600_000, n))
    p = Pipeline("featbench", schema=Schema.from_dict({"k": "str", "x": "float", "t": "int"}), max_batch=5000,
                 steps=[WindowAggregate("k", {"x_sum_10m": ("x", "sum"), "x_n_10m": ("x", "count"),
                                              "x_mean_10m": ("x", "mean")}, window_s=600, time_field="t",
                                              state_backend=backend)])
    ensure_topics(settings, p.topic_specs())
    fill(settings, p.sources[0], [orjson.dumps({"k": f"k{k}", "x": float(x), "t": int(t)})
                                  for k, x, t in zip(keys.tolist(), rng.random(n).tolist(), ts.tolist())],
         [b"k%d" % k for k in keys.tolist()])
    w = Worker(p, settings)
    seen = {}

    def on_batch(w: Worker, _b) -> None:
        if w.stats.events_in >= n:
            seen["state_entries"] = w.stores[0].size()
            w.stop()

    w.on_batch = on_batch
    stats = w.run()
    return {"events": n, "keys": 10_000, "events_per_s": stats.events_in / (stats.last_event_at - stats.first_event_at),
            "state_entries": seen.get("state_entries")}


def restore(settings: KafkaSettings, entries: int, backend: str = "memory", tail: int = 10_000) -> dict:
    topic = "featbench.restore.changelog"
    ensure_topics(settings, [TopicSpec(topic, 1, COMPACTED)])
    value = orjson.dumps({"o": 1, "v": {"0": {"x": [3, 1.5, 0.9, 0.2, 0.8, 0.5]}}})
    fill(settings, topic, (value for _ in range(entries)), (b"key-%d" % i for i in range(entries)), 0)
    state_dir = tempfile.mkdtemp(prefix="featbench-state-") if backend == "rocksdb" else None
    store = StateStore("restore", topic, backend=backend, state_dir=state_dir)
    t0 = time.perf_counter()
    applied = restore_partitions(settings, store, {0: 10}, timeout=600)
    took = time.perf_counter() - t0
    assert store.size() == entries
    store.close()
    out = {"entries": entries, "applied": applied, "restore_s": took, "entries_per_s": applied / took}
    if state_dir is not None:  # a warm restart: the tail written since the checkpoint, onto the kept databases
        fill(settings, topic, (value for _ in range(tail)), (b"key-%d" % i for i in range(entries, entries + tail)), 0)
        store = StateStore("restore", topic, backend=backend, state_dir=state_dir)
        t0 = time.perf_counter()
        warm = restore_partitions(settings, store, {0: 10}, timeout=600)
        warm_s = time.perf_counter() - t0
        assert store.last_restore["warm"] == [0] and store.size() == entries + tail
        store.close()
        import shutil

        shutil.rmtree(state_dir, ignore_errors=True)
        out.update(warm_tail=tail, warm_replayed=warm, warm_restore_s=warm_s, cold_restore_s=took)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--backend", choices=["memory", "rocksdb"], default="memory")
    ap.add_argument("--tail", type=int, default=10_000, help="rocksdb: changelog records written before the warm restart")
    args = ap.parse_args()
    with EmbeddedBroker() as broker:
        settings = KafkaSettings(broker.bootstrap)
        result = {"backend": args.backend, "windows": windows(settings, args.events, args.backend),
                  "restore": restore(settings, args.entries, args.backend, args.tail)}
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    suffix = "" if args.backend == "memory" else f"-{args.backend}"
    (RESULTS / f"{stamp}-features{suffix}.json").write_text(json.dumps({"date": stamp, **result}, indent=2))


if __name__ == "__main__":
    main()
