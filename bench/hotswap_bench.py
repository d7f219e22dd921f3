"""Hot-swap under load: promotion → every worker on the new version, and the throughput around it.

Two in-process workers (one consumer group) score a steady stream with a DeployedScoreStep
following tidal.models; half-way, the registry promotes version 2. Reported: time from the
promotion to each worker's swap, time to the first output scored by v2, and output events/s
in 100 ms buckets around the swap (a dip longer than one micro-batch would show here).

    python bench/hotswap_bench.py [--rate 20000] [--seconds 6]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import lightgbm
import numpy as np
import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

from tidal.broker import EmbeddedBroker, ensure_topics
from tidal.config import KafkaSettings
from tidal.models.deployed import DeployedScoreStep
from tidal.quality import Schema
from tidal.registry import KafkaPublisher, Registry
from tidal.stream import Pipeline, Worker

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=int, default=20_000, help="offered events/s")
    ap.add_argument("--seconds", type=float, default=6.0)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    X = rng.random((5000, 4))
    tmp = Path(tempfile.mkdtemp())
    with EmbeddedBroker() as broker:
        settings = KafkaSettings(broker.bootstrap)
        registry = Registry(tmp / "registry", publisher=KafkaPublisher(settings))
        for v, target in ((1, X.sum(1) > 2), (2, X[:, 0] > 0.5)):
            m = lightgbm.LGBMClassifier(n_estimators=100, verbose=-1).fit(X, target.astype(int))
            registry.register("bench", m, features=["a", "b", "c", "d"])
        registry.promote("bench", 1)
        p = Pipeline("hotswap", schema=Schema.from_dict({"a": "float", "b": "float", "c": "float", "d": "float"}),
                     steps=[DeployedScoreStep("bench")], max_batch=2000, max_wait_ms=20)
        ensure_topics(settings, p.topic_specs())
        workers = [Worker(Pipeline(p.name, schema=p.schema, steps=[DeployedScoreStep("bench")], max_batch=2000,
                                   max_wait_ms=20), settings, str(i)) for i in range(2)]
        threads = [threading.Thread(target=w.run, daemon=True) for w in workers]
        for t in threads:
            t.start()
        producer = Producer(settings.client_config({"linger.ms": 5, "log_level": 3}))
        values = [orjson.dumps(dict(zip("abcd", row))) for row in rng.random((20_000, 4)).tolist()]
        time.sleep(6)  # group join
        chunk = args.rate // 100
        start = time.monotonic()
        sent, promoted_at = 0, None
        while time.monotonic() - start < args.seconds:
            for v in values[sent % len(values): sent % len(values) + chunk]:
                producer.produce(p.sources[0], v, str(sent).encode())
                sent += 1
            producer.poll(0)
            if promoted_at is None and time.monotonic() - start > args.seconds / 2:
                promoted_at = time.time()
                registry.promote("bench", 2, reason="benchmark")
            time.sleep(max(0.0, start + sent / args.rate - time.monotonic()))
        producer.flush()
        time.sleep(2)
        swaps = [w.pipeline.steps[0].follower.routing.applied_at - promoted_at for w in workers]
        for w in workers:
            w.stop()
        for t in threads:
            t.join(20)
        c = Consumer(settings.client_config({"group.id": "bench-read", "enable.partition.eof": True,
                                             "log_level": 3}))
        c.assign([TopicPartition(p.sink, q, 0) for q in range(4)])
        ts, versions, eof = [], [], set()
        while len(eof) < 4:
            for m in c.consume(10_000, 1.0):
                if m.error():
                    eof.add(m.partition())
                    continue
                ts.append(m.timestamp()[1])
                versions.append(b'"model_version":"2"' in m.value())
        c.close()
    ts, versions = np.array(ts), np.array(versions)
    first_v2 = (ts[versions].min() / 1000 - promoted_at) if versions.any() else None
    buckets = np.bincount(((ts - ts.min()) // 100).astype(int)) * 10  # events/s per 100 ms
    swap_bucket = int((promoted_at * 1000 - ts.min()) // 100)
    around = buckets[max(0, swap_bucket - 10): swap_bucket + 10].tolist()
    result = {"offered_events_per_s": args.rate, "events": int(len(ts)), "promotion_to_swap_s": swaps,
              "promotion_to_first_v2_output_s": first_v2,
              "events_per_s_100ms_buckets_around_swap": around,
              "min_bucket_around_swap": min(around) if around else None}
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    (RESULTS / f"{stamp}-hotswap.json").write_text(json.dumps({"date": stamp, **result}, indent=2))


if __name__ == "__main__":
    main()
