"""Throughput of the PostgreSQL source and sink (rows/s), alone and through Kafka.

    python bench/connect_postgres_bench.py [--rows 50000] [--dsn DSN]

Without ``--dsn`` it starts a throw-away PostgreSQL (fsync off) as the tests do, and the
embedded broker for the end-to-end figures. The sink is also timed with the other way to
upsert a batch, ``executemany`` of ``INSERT ... ON CONFLICT`` in pipeline mode, to show why it
stages with ``COPY``. Prints one JSON object; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import orjson
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

TABLE = ("(id bigint PRIMARY KEY, updated_at timestamptz NOT NULL, amount numeric(10, 2), card text, "
         "score double precision, tags jsonb)")


def source_alone(dsn: str, n: int, batch: int) -> float:
    from tidal.connect import PostgresSource

    src = PostgresSource(dsn, "bench_src", "timestamp+incrementing", key_column="id", query_batch=batch,
                         poll_interval=0)
    src.open(None)
    t0, got = time.perf_counter(), 0
    while got < n:
        got += len(src.poll(batch, 0))
    src.close()
    return n / (time.perf_counter() - t0)


def sink_records(n: int, topic: str = "bench.predictions"):
    from tidal.connect import SinkRecord

    for i in range(n):
        v = {"id": i, "updated_at": "2024-01-01T00:00:00+00:00", "amount": i * 0.25, "card": f"c{i % 977}",
             "score": (i % 100) / 100, "tags": {"model": "m", "v": 3}}
        yield SinkRecord(topic, i % 4, i // 4, str(i).encode(), v, 0, orjson.dumps(v))


def sink_alone(dsn: str, n: int, batch: int) -> float:
    from tidal.connect import PostgresSink

    sink = PostgresSink(dsn, "bench_sink", "id", name="bench-alone")
    sink.open()
    recs = list(sink_records(n))
    t0 = time.perf_counter()
    for s in range(0, n, batch):
        part = recs[s:s + batch]
        rows, _ = sink.prepare(part)
        sink.write(rows, {(r.topic, r.partition): r.offset + 1 for r in part})
    sink.close()
    return n / (time.perf_counter() - t0)


def executemany_alone(dsn: str, n: int, batch: int) -> float:
    """The alternative: one INSERT ... ON CONFLICT per row, sent in pipeline mode."""
    from psycopg.types.json import Jsonb

    recs = [r.value for r in sink_records(n)]
    q = ("INSERT INTO bench_sink2 VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET "
         "updated_at = EXCLUDED.updated_at, amount = EXCLUDED.amount, card = EXCLUDED.card, "
         "score = EXCLUDED.score, tags = EXCLUDED.tags")
    with psycopg.connect(dsn, autocommit=True) as conn:
        t0 = time.perf_counter()
        for s in range(0, n, batch):
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(q, [(v["id"], v["updated_at"], v["amount"], v["card"], v["score"], Jsonb(v["tags"]))
                                    for v in recs[s:s + batch]])
        return n / (time.perf_counter() - t0)


def end_to_end(dsn: str, settings, n: int, batch: int) -> tuple[float, float]:
    from tidal.connect import PositionFile, PostgresSink, PostgresSource, SinkRunner, SourceRunner

    src = PostgresSource(dsn, "bench_src", "timestamp+incrementing", key_column="id", name="bench-e2e",
                         query_batch=batch, poll_interval=0.05)
    runner = SourceRunner(src, settings, "bench.events", batch_size=batch,
                          position_file=PositionFile(Path(tempfile.mkdtemp()) / "p.json"))
    runner.start()
    runner.step()  # the producer's first acknowledgement takes a while: not counted
    t0, got = time.perf_counter(), 0
    while got < n - batch:
        got += runner.step()
    source_rate = got / (time.perf_counter() - t0)
    runner.close()

    sink = PostgresSink(dsn, "bench_sink3", "id", name="bench-e2e")
    sr = SinkRunner(sink, settings, ["bench.events"], batch_size=batch,
                    consumer_config={"session.timeout.ms": 2000, "heartbeat.interval.ms": 500})
    sr.start()
    while sr.written == 0:
        sr.step()
    t0, first = time.perf_counter(), sr.written
    while sr.written < n:
        sr.step()
    sink_rate = (sr.written - first) / (time.perf_counter() - t0)
    sr.close()
    return source_rate, sink_rate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--dsn")
    args = ap.parse_args()
    server = None
    if args.dsn is None:
        from integration.pg_server import pg_or_skip

        server = pg_or_skip()
    dsn = args.dsn or server.dsn
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for t in ("bench_src", "bench_sink", "bench_sink2", "bench_sink3"):
                conn.execute(f"DROP TABLE IF EXISTS {t}; CREATE TABLE {t} {TABLE}")
            conn.execute("DELETE FROM tidal_sink_offsets WHERE connector LIKE 'bench%'") if conn.execute(
                "SELECT to_regclass('tidal_sink_offsets')").fetchone()[0] else None
            conn.execute("INSERT INTO bench_src SELECT i, now() - interval '1 day' + i * interval '1 ms', i * 0.25, "
                         "'c' || (i %% 977), (i %% 100) / 100.0, '{\"model\": \"m\", \"v\": 3}' "
                         "FROM generate_series(1, %s) i", (args.rows,))
            conn.execute("CREATE INDEX ON bench_src (updated_at, id)")
        out = {"rows": args.rows, "batch": args.batch,
               "source_alone_rows_s": round(source_alone(dsn, args.rows, args.batch)),
               "sink_copy_alone_rows_s": round(sink_alone(dsn, args.rows, args.batch)),
               "sink_executemany_pipeline_rows_s": round(executemany_alone(dsn, args.rows, args.batch))}
        from tidal.broker import EmbeddedBroker
        from tidal.config import KafkaSettings

        with EmbeddedBroker() as broker:
            src_rate, sink_rate = end_to_end(dsn, KafkaSettings(broker.bootstrap), args.rows, args.batch)
        out["source_to_kafka_rows_s"], out["kafka_to_sink_rows_s"] = round(src_rate), round(sink_rate)
        print(json.dumps(out, indent=1))
    finally:
        if server is not None:
            server.close()


if __name__ == "__main__":
    main()
