"""What the per-record calls on a worker's main thread cost: produce, delivery reports, decoding.

    python bench/client_costs.py [--records 300000] [--batch 5000] [--repeat 2]

The throughput floor of a worker is the Python it runs per event while holding the GIL. This
times, on an embedded broker and the suite's events (the events' own key, 4 partitions,
tidal's producer settings), the calls that cannot be vectorised away, in µs per record of
**main-thread CPU** (``time.thread_time``: what holds the GIL) and of wall time:

- ``produce`` one call per record, with a Python delivery callback per record (tidal's
  at-least-once path), without one, and with ``delivery.report.only.error``;
- ``produce_batch`` (confluent-kafka ≥ 2.13), which needs one dict per record, also one call
  per partition with the partitions computed here as librdkafka's ``consistent_random`` does
  (CRC32 of the key), so librdkafka enqueues each partition's records at once;
- decoding with msgspec: one call per record (tidal) against one call on the batch joined
  into a JSON array, then the columns with one ``np.fromiter`` per field.

Each variant produces the same records to a topic of its own; rows alternate over
``--repeat`` rounds, and the numbers are only comparable within one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import zlib
from operator import attrgetter
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
os.environ.setdefault("TIDAL_HOME", tempfile.mkdtemp(prefix="tidal-bench-home-"))

import numpy as np  # noqa: E402

PARTITIONS = 4
PRODUCER = {"enable.idempotence": True, "linger.ms": 2, "batch.size": 1_000_000, "compression.type": "lz4",
            "queue.buffering.max.messages": 1_000_000, "queue.buffering.max.kbytes": 2_097_151, "log_level": 3}


def produce_round(bootstrap: str, topic: str, mode: str, values: list[bytes], keys: list[bytes], total: int
                  ) -> tuple[float, float, int]:
    """Produce ``total`` records in batches of ``len(values)``; (main-thread µs, wall µs) per record."""
    from confluent_kafka import Producer

    conf = {"bootstrap.servers": bootstrap, **PRODUCER}
    if mode == "produce, errors-only reports":
        conf["delivery.report.only.error"] = True
    p = Producer(conf)
    acks = [0]

    def ack(err, msg) -> None:  # what tidal's per-record report does: count, note an error
        acks[0] += 1

    b = len(values)
    cb = None if "no callback" in mode else ack  # errors-only: the callback runs for failures only
    parts = np.fromiter(map(zlib.crc32, keys), np.uint32, b) % PARTITIONS  # consistent_random, for keyed records
    order = np.argsort(parts, kind="stable")
    bounds = np.searchsorted(parts[order], np.arange(PARTITIONS + 1)).tolist()
    t0, c0 = time.perf_counter(), time.thread_time()
    for _ in range(total // b):
        if mode == "produce_batch per partition + callback":
            ids = order.tolist()
            for q in range(PARTITIONS):
                msgs = [{"value": values[i], "key": keys[i]} for i in ids[bounds[q]:bounds[q + 1]]]
                if msgs:
                    queued = p.produce_batch(topic, msgs, partition=q, on_delivery=cb)
                    assert queued == len(msgs), f"produce_batch queued {queued} of {len(msgs)}"
        elif mode.startswith("produce_batch"):
            msgs = [{"value": v, "key": k} for v, k in zip(values, keys)]
            if cb is None:
                queued = p.produce_batch(topic, msgs)
            else:
                queued = p.produce_batch(topic, msgs, on_delivery=cb)
            assert queued == b, f"produce_batch queued {queued} of {b}"
        else:
            produce = p.produce
            for v, k in zip(values, keys):
                produce(topic, v, k, -1, cb)
        p.poll(0)
        while len(p) > 3 * b:  # at most a few batches in flight, as the worker keeps them
            p.poll(0.001)
    left = p.flush(60)
    assert left == 0, f"{left} records not acknowledged"
    n = (total // b) * b
    return (time.thread_time() - c0) / n * 1e6, (time.perf_counter() - t0) / n * 1e6, acks[0]


def decode_costs(values: list[bytes], repeat: int = 30) -> dict[str, float]:
    """Best-of-``repeat`` µs per record of each decoding variant (no Kafka: pure CPU)."""
    from benchlib.events import SCHEMA

    one, many = SCHEMA.one_decoder.raw, SCHEMA.batch_decoder.decode
    rows = list(map(one, values))
    names = [f.name for f in SCHEMA.fields if f.type in ("float", "int")]
    n = len(values)

    def best(f) -> float:
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            f()
            times.append(time.perf_counter() - t0)
        return min(times) / n * 1e6

    return {
        "decode: msgspec, one call per record (tidal)": best(lambda: list(map(one, values))),
        "decode: msgspec, one call on the joined array": best(lambda: many(b"[" + b",".join(values) + b"]")),
        f"columns: np.fromiter per field ({len(names)} numeric)":
            best(lambda: [np.fromiter(map(attrgetter(c), rows), np.float64, n) for c in names]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=300_000)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()

    from benchlib.events import make_events
    from tidal.broker import EmbeddedBroker, ensure_topics
    from tidal.broker.topics import TopicSpec
    from tidal.config import KafkaSettings

    events = make_events(args.batch)
    modes = ["produce + callback", "produce, no callback", "produce, errors-only reports",
             "produce_batch + callback", "produce_batch, no callback", "produce_batch per partition + callback"]
    results: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
    with EmbeddedBroker() as broker:
        settings = KafkaSettings(broker.bootstrap)
        topics = {(m, r): f"costs-{i}-{r}" for i, m in enumerate(modes) for r in range(args.repeat)}
        ensure_topics(settings, [TopicSpec(t, PARTITIONS) for t in topics.values()])
        for r in range(args.repeat):
            for m in modes:
                main_us, wall_us, acks = produce_round(broker.bootstrap, topics[(m, r)], m, events.values,
                                                       events.keys, args.records)
                results[m].append((main_us, wall_us))
                print(f"  round {r + 1} {m:30s} main thread {main_us:5.2f} µs/record, wall {wall_us:5.2f}, "
                      f"callbacks run {acks:,}", flush=True)
    print(f"\n{args.records:,} records per row, batches of {args.batch:,}; median of {args.repeat} rounds")
    print(f"{'call':52s} {'main-thread µs':>15s} {'wall µs':>8s}")
    for m, rows in results.items():
        print(f"{m:52s} {statistics.median(r[0] for r in rows):15.2f} {statistics.median(r[1] for r in rows):8.2f}")
    for label, us in decode_costs(events.values).items():
        print(f"{label:52s} {us:15.2f} {'':>8s}")


if __name__ == "__main__":
    main()
