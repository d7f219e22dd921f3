"""Scoring throughput on the embedded broker: tidal against the limits and the per-message loop.

Same events (the fraud demo's transactions: JSON, 10 numeric + 1 categorical feature), same
LightGBM model (100 trees), same broker, 4 partitions. Each scenario drains the same
pre-produced backlog; events/s counts from the first consumed event to the last output
acknowledged, so start-up (group join) is reported separately.

    python bench/score_throughput.py [--events 300000] [--quick]

Writes bench/results/<date>-score.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import lightgbm
import numpy as np
from confluent_kafka import Consumer, Producer

from tidal.broker import EmbeddedBroker, TopicSpec, ensure_topics
from tidal.config import KafkaSettings
from tidal.demos.fraud_data import CATEGORIES, FEATURES, SCHEMA, generate
from tidal.models import ScoreStep, load_model, save_model
from tidal.models.artifact import category_codes, feature_matrix
from tidal.stream import Pipeline, Worker
from tidal.stream.decode import decode_values

RESULTS = Path(__file__).resolve().parent / "results"
PARTITIONS = 4


def train(values: list[bytes], labels: np.ndarray, folder: Path):
    batch = decode_values(values, SCHEMA)  # the pipeline's own decoder: malformed rows drop out
    X = feature_matrix(batch.column, FEATURES, category_codes({"merchant_category": CATEGORIES}))
    y = labels[batch.offsets]
    model = lightgbm.LGBMClassifier(n_estimators=100, num_leaves=31, verbose=-1)
    model.fit(X, y, categorical_feature=[FEATURES.index("merchant_category")])
    save_model(model, folder, "fraud", 1, FEATURES, categories={"merchant_category": CATEGORIES})
    return model.booster_, X


def fill(settings: KafkaSettings, topic: str, keys: list[bytes], values: list[bytes]) -> None:
    ensure_topics(settings, [TopicSpec(topic, PARTITIONS)])
    p = Producer(settings.client_config({"linger.ms": 20, "batch.size": 1_000_000, "compression.type": "lz4",
                                         "log_level": 3}))
    for k, v in zip(keys, values):
        while True:
            try:
                p.produce(topic, v, k)
                break
            except BufferError:
                p.poll(0.05)
    p.flush()


def consumer(settings: KafkaSettings, topic: str) -> Consumer:
    c = Consumer(settings.client_config({"group.id": f"bench-{uuid.uuid4().hex[:8]}", "auto.offset.reset": "earliest",
                                         "enable.auto.commit": False, "log_level": 3}))
    c.subscribe([topic])
    return c


def passthrough(settings: KafkaSettings, topic: str, n: int) -> dict:
    """Limit: consume → produce with the batch API, no decoding, no model."""
    out = f"{topic}.passthrough"
    ensure_topics(settings, [TopicSpec(out, PARTITIONS)])
    c = consumer(settings, topic)
    p = Producer(settings.client_config({"linger.ms": 5, "batch.size": 1_000_000, "compression.type": "lz4",
                                         "queue.buffering.max.messages": 2_000_000, "log_level": 3}))
    t_start, seen, first = time.perf_counter(), 0, None
    while seen < n:
        msgs = c.consume(5000, 0.1)
        if not msgs:
            continue
        first = first or time.perf_counter()
        for m in msgs:
            p.produce(out, m.value(), m.key())
        p.poll(0)
        seen += len(msgs)
    p.flush()
    end = time.perf_counter()
    c.close()
    return {"events_per_s": n / (end - first), "startup_s": first - t_start}


def model_only(booster, X: np.ndarray, n: int) -> dict:
    """Limit: the model's own batched predict on in-memory arrays (batches of 5,000), no Kafka."""
    reps = max(1, n // len(X))
    t0 = time.perf_counter()
    for _ in range(reps):
        for i in range(0, len(X), 5000):
            booster.predict(X[i:i + 5000])
    return {"events_per_s": reps * len(X) / (time.perf_counter() - t0)}


def tidal_worker(settings: KafkaSettings, topic: str, n: int, model_dir: Path) -> dict:
    """tidal: decode + schema validation + LightGBM on each micro-batch, at-least-once delivery."""
    name = f"bench{uuid.uuid4().hex[:6]}"
    p = Pipeline(name, sources=[topic], schema=SCHEMA, steps=[ScoreStep(load_model(model_dir))],
                 group=f"bench-{name}", max_batch=5000)
    ensure_topics(settings, [TopicSpec(p.sink, PARTITIONS), TopicSpec(p.dlq, 1)])
    w = Worker(p, settings)
    w.on_batch = lambda w, _b: w.stop() if w.stats.events_in >= n else None
    t_start = time.time()
    stats = w.run()
    return {"events_per_s": stats.events_in / (stats.last_event_at - stats.first_event_at),
            "startup_s": stats.first_event_at - t_start, "dlq": sum(stats.dlq.values())}


def per_message(settings: KafkaSettings, topic: str, n: int, model) -> dict:
    """The tutorial loop: poll() one message, json.loads, one predict per event, produce."""
    out = f"{topic}.permessage"
    ensure_topics(settings, [TopicSpec(out, PARTITIONS)])
    c = consumer(settings, topic)
    p = Producer(settings.client_config({"linger.ms": 5, "log_level": 3}))
    codes = category_codes({"merchant_category": CATEGORIES})["merchant_category"]
    t_start, seen, first = time.perf_counter(), 0, None
    deadline = None
    while seen < n:
        m = c.poll(0.1)
        if m is None or m.error():
            continue
        first = first or time.perf_counter()
        deadline = deadline or first + 20  # the slow loop gets 20 s; its rate is steady long before
        seen += 1
        try:
            r = json.loads(m.value())
            x = [[codes.get(r[f], np.nan) if f == "merchant_category" else float(r[f]) for f in FEATURES]]
            r["score"] = float(model.predict(np.array(x))[0])
            p.produce(out, json.dumps(r).encode(), m.key())
        except (ValueError, KeyError, TypeError):
            pass
        p.poll(0)
        if time.perf_counter() > deadline:
            break
    p.flush()
    end = time.perf_counter()
    c.close()
    return {"events_per_s": seen / (end - first), "startup_s": first - t_start, "events": seen}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--quick", action="store_true", help="100k events")
    args = ap.parse_args()
    n = 100_000 if args.quick else args.events
    gen = generate(n, seed=11)
    work = RESULTS / ".work"
    booster, X = train(gen.values[:30_000], gen.labels[:30_000], work / f"model-{uuid.uuid4().hex[:6]}")
    results = {}
    with EmbeddedBroker() as broker:
        settings = KafkaSettings(broker.bootstrap)
        topic = "bench.events"
        fill(settings, topic, gen.keys, gen.values)
        results["passthrough (confluent-kafka batch API, no model)"] = passthrough(settings, topic, n)
        results["model only (LightGBM batched predict, no Kafka)"] = model_only(booster, X, n)
        results["tidal, 1 worker (decode + validate + LightGBM)"] = tidal_worker(
            settings, topic, n, next(work.glob("model-*")))
        results["per-message loop (poll, predict one, produce)"] = per_message(settings, topic, n, booster)
    tidal_rate = results["tidal, 1 worker (decode + validate + LightGBM)"]["events_per_s"]
    print(f"\n{'scenario':<56} {'events/s':>10} {'vs tidal':>9}")
    for k, v in results.items():
        v["ratio_to_tidal"] = round(v["events_per_s"] / tidal_rate, 3)
        print(f"{k:<56} {v['events_per_s']:>10,.0f} {v['ratio_to_tidal']:>8.2f}x")
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    out = RESULTS / f"{stamp}-score.json"
    out.write_text(json.dumps({"date": stamp, "events": n, "machine": {"cpus": __import__("os").cpu_count(),
                               "platform": platform.platform(), "python": platform.python_version()},
                               "results": results}, indent=2))
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
