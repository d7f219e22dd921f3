"""Where a tidal worker's time goes per micro-batch, stage by stage, and what proposed changes save.

    python bench/profile_stages.py [--events 100000] [--batches 200,5000] [--repeat 3]

Consumes the suite's events from an embedded broker into real ``confluent_kafka.Message``
batches of each size (``assign()``, no group), then times the worker's own calls on them:
decode (``decode_messages``), features (``LoadedModel.features_matrix``), predict
(``LoadedModel.predict``), lineage (``with_source``), encode (``encode_outputs``) and deliver
(produce every output with tidal's producer settings, then ``flush`` until acknowledged).
Each stage is reported in µs per event and ms per batch (median over batches).

The ``proposed`` rows time replacements for the slow stages, written here in bench/ and
only applied inside this script (src/ is not touched): LightGBM with ``num_threads=1``,
vectorised ``next_offsets``, column extraction with ``np.fromiter``, category codes with
``map(dict.get)``, ``encode_outputs`` on memoryview heads, and deliver without the
per-batch flush wait (what a pipelined commit would leave on the batch's path).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from itertools import repeat
from operator import attrgetter
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
os.environ.setdefault("TIDAL_HOME", tempfile.mkdtemp(prefix="tidal-bench-home-"))

import numpy as np  # noqa: E402


def next_offsets_vectorised(topics, partitions: np.ndarray, offsets: np.ndarray) -> dict:
    """Same result as tidal.stream.decode.next_offsets; one pass per distinct topic in numpy."""
    out = {}
    if len(topics) and topics[0] == topics[-1] and topics.count(topics[0]) == len(topics):
        groups = {topics[0]: slice(None)}
    else:
        arr = np.asarray(topics, dtype=object)
        groups = {t: arr == t for t in set(topics)}
    for t, sel in groups.items():
        p, o = partitions[sel], offsets[sel]
        for q in np.unique(p).tolist():
            out[(t, q)] = int(o[p == q].max()) + 1
    return out


def features_fast(batch, features, codes) -> np.ndarray:
    """feature_matrix with one np.fromiter per numeric column and map(dict.get) for categories."""
    rows = batch.rows
    n = len(rows)
    X = np.empty((n, len(features)), dtype=np.float64)
    for j, f in enumerate(features):
        values = map(attrgetter(f), rows)
        table = codes.get(f)
        if table is not None:
            X[:, j] = np.fromiter(map(table.get, values, repeat(np.nan)), np.float64, n)
        else:
            X[:, j] = np.fromiter(values, np.float64, n)
    return X


def encode_memoryview(batch) -> list[bytes]:
    """encode_outputs' fast path with zero-copy heads (the input JSON minus its closing brace)."""
    import orjson

    from tidal.stream.encode import column_fragments

    heads = [memoryview(v)[:-1] for v in batch.values]  # inputs here end with '}'
    frags = []
    for name in batch.outputs:
        prefix = b"," + orjson.dumps(name) + b":"
        frags.append([prefix + cell for cell in column_fragments(batch.columns[name])])
    return list(map(b"".join, zip(heads, *frags, repeat(b"}"))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--batches", default="200,5000")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

    from benchlib.events import CATEGORICAL, FEATURES, SCHEMA, make_events, train_model
    from benchlib.kafka import fill
    from tidal.broker import EmbeddedBroker, TopicSpec, ensure_topics
    from tidal.config import KafkaSettings
    from tidal.models import load_model
    from tidal.models.artifact import category_codes
    from tidal.stream.decode import decode_messages, next_offsets
    from tidal.stream.encode import encode_outputs
    from tidal.stream.pipeline import with_source

    work = Path(tempfile.mkdtemp(prefix="tidal-stages-"))
    events = make_events(args.events)
    model_paths = train_model(events, work, n_train=min(50_000, args.events))
    model = load_model(model_paths["artifact"])
    codes = category_codes(CATEGORICAL)
    with EmbeddedBroker() as broker:
        settings = KafkaSettings(broker.bootstrap)
        fill(settings, "stages.events", events.keys, events.values)
        ensure_topics(settings, [TopicSpec("stages.out", 4)])
        c = Consumer(settings.client_config({"group.id": "stages", "enable.partition.eof": True, "log_level": 3}))
        c.assign([TopicPartition("stages.events", p, 0) for p in range(4)])
        msgs, eof = [], set()
        while len(eof) < 4:
            for m in c.consume(10_000, 0.5):
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        eof.add(m.partition())
                    continue
                msgs.append(m)
        c.close()
        producer = Producer(settings.client_config({
            "enable.idempotence": True, "linger.ms": 5, "batch.size": 1_000_000, "compression.type": "lz4",
            "queue.buffering.max.messages": 2_000_000, "queue.buffering.max.kbytes": 2_097_151, "log_level": 3}))
        threads1 = lambda X: model.model.predict(X, num_threads=1)  # noqa: E731

        print(f"{len(msgs):,} messages consumed; load average {os.getloadavg()[0]:.2f}; times are medians per batch")
        for size in [int(x) for x in args.batches.split(",")]:
            chunks = [msgs[i:i + size] for i in range(0, len(msgs) - size + 1, size)][: max(1, 40_000 // size)]
            stages: dict[str, list[float]] = {}

            def timed(name, fn, *a):
                t0 = time.perf_counter()
                out = fn(*a)
                stages.setdefault(name, []).append(time.perf_counter() - t0)
                return out

            for _ in range(args.repeat):
                for chunk in chunks:
                    batch, offsets = timed("decode (decode_messages)", decode_messages, chunk, SCHEMA)
                    timed("  of which next_offsets", next_offsets, batch.topics, batch.partitions, batch.offsets)
                    timed("  proposed: next_offsets vectorised", next_offsets_vectorised, batch.topics,
                          batch.partitions, batch.offsets)
                    X = timed("features (feature_matrix)", model.features_matrix, batch.column)
                    batch.columns.clear()
                    X2 = timed("  proposed: features via fromiter", features_fast, batch, FEATURES, codes)
                    assert np.allclose(X, X2, equal_nan=True)
                    scores = timed("predict (LightGBM, default threads)", model.predict, X)
                    timed("  proposed: predict num_threads=1", threads1, X)
                    batch.with_column("score", scores)
                    batch.with_column("decision", scores >= 0.35)
                    batch.with_column("model", np.full(len(batch), model.name, dtype=object))
                    batch.with_column("model_version", np.full(len(batch), model.version, dtype=object))
                    timed("lineage (with_source)", with_source, batch)
                    outputs = timed("encode (encode_outputs)", encode_outputs, batch)
                    out2 = timed("  proposed: encode, memoryview heads", encode_memoryview, batch)
                    assert out2 == outputs
                    t0 = time.perf_counter()
                    list(map(producer.produce, repeat("stages.out"), outputs, batch.keys))
                    t1 = time.perf_counter()
                    producer.flush(30)
                    t2 = time.perf_counter()
                    stages.setdefault("deliver: produce calls", []).append(t1 - t0)
                    stages.setdefault("deliver: flush wait (acks)", []).append(t2 - t1)
            print(f"\nmax_batch {size:,}: {len(chunks)} batches × {args.repeat}")
            print(f"  {'stage':<42} {'µs/event':>9} {'ms/batch':>9}")
            total = 0.0
            for name, ts in stages.items():
                med = statistics.median(ts)
                if not name.startswith(" "):
                    total += med
                print(f"  {name:<42} {med / size * 1e6:>9.2f} {med * 1e3:>9.2f}")
            print(f"  {'total (current code)':<42} {total / size * 1e6:>9.2f} {total * 1e3:>9.2f}"
                  f"   → at most {size / total:,.0f} events/s from these stages alone")


if __name__ == "__main__":
    main()
