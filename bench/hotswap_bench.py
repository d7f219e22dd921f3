"""Hot-swap under load: promotion → every worker on the new version, and the throughput around it.

Two in-process workers (one consumer group) score a steady stream with a DeployedScoreStep
following tidal.models; once both have scored with version 1 for a while, the registry
promotes version 2 (a deployment record on ``tidal.models``). Reported: time from the
promotion to each worker's follower applying it and to each worker's first micro-batch scored
by v2 (first and last worker), time to the first output record carrying v2 and to the last one
still carrying v1, and output events/s in 100 ms buckets around the swap and in three windows:
the second before the promotion, promotion → every worker on v2, and the second after (a dip
longer than one micro-batch would show here).

    python bench/hotswap_bench.py [--rate 20000] [--seconds 6] [--workers 2]

``bench/run.py`` runs the same measurement as its ``hotswap`` scenario (:func:`measure`).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import orjson

RESULTS = Path(__file__).resolve().parent / "results"


def _timed_step(model: str, registry: Any):
    """A DeployedScoreStep that notes when it first scored a batch with each version."""
    from tidal.models.deployed import DeployedScoreStep

    class TimedDeployedScoreStep(DeployedScoreStep):
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            self.first_scored_at: dict[str, float] = {}  # version → wall time its first batch was scored

        def process(self, batch):
            out = super().process(batch)
            if len(out):
                for v in set(out.column("model_version").tolist()):
                    self.first_scored_at.setdefault(str(v), time.time())
            return out

    return TimedDeployedScoreStep(model, registry=registry)  # the registry: its artifacts are trusted


def _window_rate(ts_s: np.ndarray, lo: float, hi: float) -> float | None:
    if hi <= lo:
        return None
    return float(((ts_s >= lo) & (ts_s < hi)).sum() / (hi - lo))


def measure(settings, rate: int = 20_000, seconds: float = 6.0, workers: int = 2, name: str | None = None,
            max_batch: int = 2000, max_wait_ms: int = 20, join_timeout_s: float = 60.0,
            log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Run the hot-swap measurement against the cluster in ``settings``; returns the figures.

    ``seconds``: of paced input once every worker scores with v1, half before the promotion
    and half after. Topics and the model name are fresh (``name``), so an external cluster's
    ``tidal.models`` history of other models does not matter.
    """
    import lightgbm
    from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

    from tidal.broker import ensure_topics
    from tidal.quality import Schema
    from tidal.registry import KafkaPublisher, Registry
    from tidal.stream import Pipeline, Worker

    name = name or f"hotswap-{uuid.uuid4().hex[:6]}"
    model = f"{name}-model"
    rng = np.random.default_rng(0)
    X = rng.random((5000, 4))
    tmp = Path(tempfile.mkdtemp(prefix="tidal-hotswap-"))
    registry = Registry(tmp / "registry", publisher=KafkaPublisher(settings))
    for target in (X.sum(1) > 2, X[:, 0] > 0.5):
        m = lightgbm.LGBMClassifier(n_estimators=100, verbose=-1).fit(X, target.astype(int))
        registry.register(model, m, features=["a", "b", "c", "d"])
    registry.promote(model, 1)
    schema = Schema.from_dict({"a": "float", "b": "float", "c": "float", "d": "float"})

    def pipeline() -> Pipeline:
        return Pipeline(name, schema=schema, steps=[_timed_step(model, registry)], max_batch=max_batch, max_wait_ms=max_wait_ms)

    p = pipeline()
    ensure_topics(settings, p.topic_specs())
    ws = [Worker(pipeline(), settings, str(i), handle_signals=False) for i in range(workers)]
    threads = [threading.Thread(target=w.run, daemon=True) for w in ws]
    for t in threads:
        t.start()
    steps = [w.pipeline.steps[0] for w in ws]
    producer = Producer(settings.client_config({"linger.ms": 5, "log_level": 3}))
    values = [orjson.dumps(dict(zip("abcd", row))) for row in rng.random((20_000, 4)).tolist()]
    chunk = max(1, rate // 100)
    sent, promoted_at, ready_at = 0, None, None
    start = time.monotonic()
    deadline = start + join_timeout_s + seconds
    try:
        while time.monotonic() < deadline:
            for v in values[sent % len(values): sent % len(values) + chunk]:
                producer.produce(p.sources[0], v, str(sent).encode())
                sent += 1
            producer.poll(0)
            now = time.monotonic()
            if ready_at is None and all("1" in s.first_scored_at for s in steps):
                ready_at = now  # every worker has partitions and scores with v1
                log(f"all {workers} workers scoring v1 after {now - start:.1f}s; promoting v2 in {seconds / 2:g}s")
            if ready_at is not None and promoted_at is None and now - ready_at >= seconds / 2:
                promoted_at = time.time()
                registry.promote(model, 2, reason="benchmark")
            if promoted_at is not None and now - ready_at >= seconds:
                break
            time.sleep(max(0.0, start + sent / rate - time.monotonic()))
        producer.flush(30)
        if promoted_at is None:
            raise RuntimeError(f"not every worker scored with v1 within {join_timeout_s:g}s "
                               f"(workers with v1: {sum('1' in s.first_scored_at for s in steps)}/{workers})")
        settle = time.monotonic() + 10
        while time.monotonic() < settle and not all("2" in s.first_scored_at for s in steps):
            time.sleep(0.05)
        time.sleep(1.0)  # the last batches delivered
    finally:
        for w in ws:
            w.stop()
        for t in threads:
            t.join(20)
    applied = [s.follower.routing.applied_at - promoted_at if s.follower and s.follower.routing else None
               for s in steps]
    first_v2 = [s.first_scored_at["2"] - promoted_at if "2" in s.first_scored_at else None for s in steps]
    c = Consumer(settings.client_config({"group.id": "bench-read", "enable.partition.eof": True, "log_level": 3}))
    c.assign([TopicPartition(p.sink, q, 0) for q in range(p.partitions)])
    ts, v2, eof = [], [], set()
    read_deadline = time.monotonic() + 60
    while len(eof) < p.partitions and time.monotonic() < read_deadline:
        for m in c.consume(10_000, 1.0):
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    eof.add(m.partition())
                continue
            ts.append(m.timestamp()[1])
            v2.append(b'"model_version":"2"' in m.value())
    c.close()
    ts_s, v2 = np.asarray(ts, dtype=np.float64) / 1000, np.asarray(v2, dtype=bool)
    done = [x for x in first_v2 if x is not None]
    all_on_v2 = max(done) if len(done) == workers else None
    during_end = promoted_at + max(all_on_v2 or 0.0, 0.2)  # at least 200 ms, for a rate that means something
    buckets = np.bincount(((ts_s - ts_s.min()) // 0.1).astype(int)) * 10 if len(ts_s) else np.array([], int)
    swap_bucket = int((promoted_at - ts_s.min()) // 0.1) if len(ts_s) else 0
    around = buckets[max(0, swap_bucket - 10): swap_bucket + 10].tolist()
    return {
        "offered_events_per_s": rate, "workers": workers, "seconds": seconds, "events_offered": sent,
        "outputs": int(len(ts_s)), "max_batch": max_batch, "max_wait_ms": max_wait_ms,
        "promotion_to_applied_s": applied,  # each worker's follower took the deployment record
        "promotion_to_first_v2_batch_s": first_v2,  # each worker's first micro-batch scored by v2
        "promotion_to_first_worker_v2_s": min(done) if done else None,
        "promotion_to_all_workers_v2_s": all_on_v2,
        "promotion_to_first_v2_output_s": float(ts_s[v2].min() - promoted_at) if v2.any() else None,
        "promotion_to_last_v1_output_s": float(ts_s[~v2].max() - promoted_at) if (~v2).any() else None,
        "events_per_s_before": _window_rate(ts_s, promoted_at - 1.0, promoted_at),
        "events_per_s_during": _window_rate(ts_s, promoted_at, during_end),
        "during_window_s": during_end - promoted_at,
        "events_per_s_after": _window_rate(ts_s, during_end, during_end + 1.0),
        "events_per_s_100ms_buckets_around_swap": around,
        "min_bucket_around_swap": min(around) if around else None,
        "topics": [*p.sources, p.sink, p.dlq],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=int, default=20_000, help="offered events/s")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    from tidal.broker import EmbeddedBroker
    from tidal.config import KafkaSettings

    with EmbeddedBroker() as broker:
        result = measure(KafkaSettings(broker.bootstrap), args.rate, args.seconds, args.workers, log=print)
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    (RESULTS / f"{stamp}-hotswap.json").write_text(json.dumps({"date": stamp, **result}, indent=2))


if __name__ == "__main__":
    main()
