"""The PostgreSQL source and sink against a real PostgreSQL server and the real broker.

Exact counts both ways: every row becomes exactly one event (three polling modes, rows added
while running, kill -9 of ``tidal ingest postgres``, the database down for seconds), and every
record exactly one upsert (repeated keys, tombstones, refused rows in the dead-letter topic,
kill -9 of ``tidal sink postgres``, the database down). A trigger logs every row the sink
applies, so a record written twice would show even where an upsert hides it.
"""

from __future__ import annotations

import hashlib
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import orjson
import pytest

from tidal.connect import (Backoff, ConnectorMetrics, PositionFile, PostgresSink, PostgresSource, SinkRunner,
                           SourceRunner)

from .kafka_helpers import produce, read_all, tidal_process
from .pg_server import pg_or_skip

pytestmark = pytest.mark.integration

psycopg = pytest.importorskip("psycopg")

FAST = dict(initial=0.05, maximum=0.2, jitter=0.0)
# The embedded broker holds a group join for about half the session timeout.
QUICK_GROUP = {"session.timeout.ms": 2000, "heartbeat.interval.ms": 500}


@pytest.fixture(scope="module")
def pg():
    server = pg_or_skip()
    yield server
    server.close()


def q(pg, statement: str, params=None) -> list[tuple]:
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []


def tidal(settings, *args: str) -> subprocess.Popen:
    return tidal_process(settings, *args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def labels(name: str, direction: str) -> dict:
    return {"connector": name, "connector_type": "postgres", "direction": direction}


def wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def in_thread(runner) -> threading.Thread:
    t = threading.Thread(target=runner.run, daemon=True)
    t.start()
    return t


def events(settings, topic: str) -> list:
    return read_all(settings, topic, 4)


# -- source -------------------------------------------------------------------------------
def make_orders(pg, table: str) -> None:
    q(pg, f"CREATE TABLE {table} (id bigint PRIMARY KEY, updated_at timestamptz NOT NULL, amount numeric(10, 2), "
          "day date, ref uuid, raw bytea, tags jsonb, note text)")


def add_orders(pg, table: str, ids: range, group: int = 3) -> None:
    """Rows share timestamps ``group`` at a time (timestamp mode must not split them)."""
    q(pg, f"INSERT INTO {table} SELECT i, timestamptz '2024-01-01 00:00:00+00' + (i / %s::int) * interval '1 second', "
          "i * 1.25, date '2024-03-01' + i, md5(i::text)::uuid, int4send(i::int), jsonb_build_object('i', i), "
          "'n' || i FROM generate_series(%s::int, %s::int) i", (group, ids.start, ids.stop - 1))


MODES = ["incrementing", "timestamp", "timestamp+incrementing"]


def test_source_delivers_every_row_once_in_each_mode(pg, settings, name, tmp_path):
    """The three modes side by side (one table each), rows added while they run."""
    runs = {}
    for k, mode in enumerate(MODES):
        c = f"{name}m{k}"
        make_orders(pg, f"{c}_orders")
        add_orders(pg, f"{c}_orders", range(1, 41))
        add_orders(pg, f"{c}_orders", range(41, 51), group=100)  # one timestamp for 12 rows: more than a query's 7
        q(pg, f"INSERT INTO {c}_orders (id, updated_at, amount) VALUES "
              "(51, timestamptz '2024-01-01 00:00:30+00', 'NaN'), "  # no JSON number: dead letter
              "(52, now() + interval '1 hour', 1)")  # ahead of the clock: not yet in the timestamp modes
        source = PostgresSource(pg.dsn, f"{c}_orders", mode, key_column="id", name=c, query_batch=7,
                                poll_interval=0.05)
        metrics = ConnectorMetrics(c, "postgres", "source")
        runner = SourceRunner(source, settings, f"{c}.events", position_file=PositionFile(tmp_path / f"{k}.json"),
                              metrics=metrics, backoff=Backoff(**FAST))
        expected = [i for i in range(1, 53) if i != 51 and not (i == 52 and mode != "incrementing")]
        runs[mode] = (c, runner, expected, in_thread(runner))

    def done(mode: str, n: int) -> bool:
        c, runner, _, _ = runs[mode]
        return runner.metrics.registry.get_sample_value("tidal_connector_records_total", labels(c, "source")) >= n

    for mode, (c, _, expected, _) in runs.items():
        wait(lambda: done(mode, 20), 30, f"{mode}: the first rows")
        add_orders(pg, f"{c}_orders", range(100, 110))  # inserted while running (timestamps after the others)
        expected += list(range(100, 110))
    for mode, (_, _, expected, _) in runs.items():
        wait(lambda: done(mode, len(expected)), 30, f"{mode}: every row")
    time.sleep(0.2)  # a duplicate, if any, would be produced now
    for c, runner, expected, t in runs.values():
        runner.stop()
        t.join(10)

    for mode, (c, _, expected, _) in runs.items():
        got = events(settings, f"{c}.events")
        by_id = {}
        for m in got:
            v = orjson.loads(m.value())
            assert m.key() == str(v["id"]).encode()
            by_id[v["id"]] = v
        assert Counter(orjson.loads(m.value())["id"] for m in got) == Counter(expected), mode  # each row once
        assert by_id[7] == {"id": 7, "updated_at": "2024-01-01T00:00:02+00:00", "amount": 8.75, "day": "2024-03-08",
                            "ref": str(uuid.UUID(hashlib.md5(b"7").hexdigest())), "raw": "AAAABw==",
                            "tags": {"i": 7}, "note": "n7"}
        dead = events(settings, f"{c}.dlq")
        assert len(dead) == 1 and dict(dead[0].headers())["tidal.error.reason"] == b"unconvertible", mode
        assert b"NaN" in dict(dead[0].headers())["tidal.error.message"]


def test_source_kill_9_then_restart_delivers_every_row_once(pg, settings, name, tmp_path):
    table, n = f"{name}_orders", 3000
    make_orders(pg, table)
    pos = tmp_path / "pos.json"
    args = ["ingest", "postgres", "--dsn", pg.dsn, "--table", table, "--topic", f"{name}.events", "--key-column", "id",
            "--name", name, "--query-batch", "20", "--poll-interval", "0.05", "--position-file", str(pos)]
    proc = tidal(settings, *args)
    wait(pos.exists, 60, "the source to start")
    inserted = threading.Event()

    def insert() -> None:  # rows keep arriving, so the kill lands mid-stream
        for start in range(1, n + 1, 50):
            add_orders(pg, table, range(start, start + 50))
            time.sleep(0.01)
        inserted.set()
    threading.Thread(target=insert, daemon=True).start()
    at = lambda: (PositionFile(pos).load()[0] or {}).get("id", 0)  # noqa: E731
    wait(lambda: at() >= 600, 60, "600 rows delivered")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert at() < n, "the kill should land mid-stream"
    assert inserted.wait(30)

    again = tidal(settings, *args, "--idle-exit", "1")
    assert again.wait(90) == 0, again.stderr.read().decode()[-2000:]
    ids = Counter(orjson.loads(m.value())["id"] for m in events(settings, f"{name}.events"))
    assert ids == Counter(range(1, n + 1))


def test_source_backs_off_while_postgres_is_down_and_resumes(pg, settings, name, tmp_path):
    table = f"{name}_orders"
    make_orders(pg, table)
    add_orders(pg, table, range(1, 501))
    source = PostgresSource(pg.dsn, table, "timestamp+incrementing", key_column="id", name=name, query_batch=25,
                            poll_interval=0.05, connect_timeout=1)
    metrics = ConnectorMetrics(name, "postgres", "source")
    runner = SourceRunner(source, settings, f"{name}.events", position_file=PositionFile(tmp_path / "p.json"),
                          metrics=metrics, backoff=Backoff(**FAST), batch_size=25)
    lab = labels(name, "source")
    count = lambda: metrics.registry.get_sample_value("tidal_connector_records_total", lab)  # noqa: E731
    t = in_thread(runner)
    wait(lambda: count() >= 100, 30, "the first rows")
    pg.stop()
    wait(lambda: metrics.registry.get_sample_value("tidal_connector_up", lab) == 0, 10, "tidal_connector_up 0")
    stalled = count()
    time.sleep(2)
    assert count() == stalled < 500
    pg.start()
    add_orders(pg, table, range(501, 601))
    wait(lambda: count() >= 600, 30, "every row after the outage")
    time.sleep(0.2)
    runner.stop()
    t.join(10)
    assert metrics.registry.get_sample_value("tidal_connector_up", lab) == 1
    assert metrics.registry.get_sample_value("tidal_connector_errors_total", {**lab, "kind": "unavailable"}) >= 1
    ids = Counter(orjson.loads(m.value())["id"] for m in events(settings, f"{name}.events"))
    assert ids == Counter(range(1, 601))


# -- sink ---------------------------------------------------------------------------------
def make_predictions(pg, table: str) -> None:
    """The sink's table, plus a log of every row it inserts or updates (a trigger)."""
    q(pg, f"CREATE TABLE {table} (id bigint PRIMARY KEY, score double precision CHECK (score BETWEEN 0 AND 1), "
          f"label text, extra jsonb); CREATE TABLE {table}_log (id bigint); "
          f"CREATE FUNCTION {table}_f() RETURNS trigger LANGUAGE plpgsql AS "
          f"$$ BEGIN INSERT INTO {table}_log VALUES (NEW.id); RETURN NEW; END $$; "
          f"CREATE TRIGGER {table}_t AFTER INSERT OR UPDATE ON {table} FOR EACH ROW EXECUTE FUNCTION {table}_f()")


def offsets_in_table(pg, name: str) -> dict:
    try:
        rows = q(pg, "SELECT topic, partition, next_offset FROM tidal_sink_offsets WHERE connector = %s", (name,))
    except psycopg.errors.UndefinedTable:  # no sink has connected yet
        return {}
    return {(t, p): o for t, p, o in rows}


def topic_ends(settings, topic: str) -> dict:
    ends: dict = {}
    for m in read_all(settings, topic, 4):
        ends[(topic, m.partition())] = m.offset() + 1
    return ends


def test_sink_upserts_deletes_and_dead_letters(pg, settings, name):
    table, topic = f"{name}_preds", f"{name}.predictions"
    make_predictions(pg, table)
    values = [orjson.dumps({"id": i % 100, "score": i / 1000, "label": f"l{i}", "model": "m1"}) for i in range(300)]
    keys = [str(i % 100).encode() for i in range(300)]
    values += [None] * 10  # tombstones: keys 0..9 are deleted
    keys += [str(k).encode() for k in range(10)]
    values += [b"not json", orjson.dumps({"score": 0.1}), orjson.dumps({"id": 1001, "score": 5}),
               orjson.dumps({"id": 1002, "score": "high"}), orjson.dumps({"id": 1003, "score": {"a": 1}})]
    keys += [b"1000", b"x", b"1001", b"1002", b"1003"]
    produce(settings, topic, values, keys)
    sink = PostgresSink(pg.dsn, table, "id", extra_column="extra", name=name)
    runner = SinkRunner(sink, settings, [topic], dlq=f"{name}.dlq", batch_size=64, backoff=Backoff(**FAST),
                        consumer_config=QUICK_GROUP)
    runner.run(idle_exit_s=1.0)

    rows = {i: (s, lab, x) for i, s, lab, x in q(pg, f"SELECT id, score, label, extra FROM {table}")}
    assert rows == {k: ((200 + k) / 1000, f"l{200 + k}", {"model": "m1"}) for k in range(10, 100)}
    reasons = Counter(dict(m.headers())["tidal.error.reason"] for m in events(settings, f"{name}.dlq"))
    assert reasons == {b"decode_error": 1, b"missing_key": 1, b"check_violation": 1,
                       b"invalid_text_representation": 1, b"bad_type": 1}
    assert offsets_in_table(pg, name) == topic_ends(settings, topic)
    assert sink.stored_offsets(list(topic_ends(settings, topic))) == topic_ends(settings, topic)


def produce_slowly(settings, topic: str, ids: range, chunk: int = 100, pause: float = 0.02) -> threading.Thread:
    def run() -> None:
        for start in range(ids.start, ids.stop, chunk):
            batch = range(start, min(start + chunk, ids.stop))
            produce(settings, topic, [orjson.dumps({"id": i, "score": 0.5, "label": str(i)}) for i in batch],
                    [str(i).encode() for i in batch])
            time.sleep(pause)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def applied(pg, table: str) -> Counter:
    return Counter(i for i, in q(pg, f"SELECT id FROM {table}_log"))


def test_sink_kill_9_then_restart_writes_every_record_once(pg, settings, name):
    table, topic, n = f"{name}_preds", f"{name}.predictions", 4000
    make_predictions(pg, table)
    from tidal.broker import TopicSpec, ensure_topics

    ensure_topics(settings, [TopicSpec(topic, 4)])
    proc = tidal(settings, "sink", "postgres", "--dsn", pg.dsn, "--table", table, "--topic", topic, "--key-field",
                 "id", "--name", name, "--batch-size", "100", "--group", f"{name}-a")
    producer = produce_slowly(settings, topic, range(n))
    written = lambda: sum(offsets_in_table(pg, name).values())  # noqa: E731
    wait(lambda: written() >= 800, 60, "800 records written")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert written() < n, "the kill should land mid-stream"
    producer.join(30)

    # The restart (in-process, to skip a second slow group join) uses a new consumer group, which
    # has no Kafka offsets at all: only the table's say where to resume.
    sink = PostgresSink(pg.dsn, table, "id", name=name)
    SinkRunner(sink, settings, [topic], group=f"{name}-b", batch_size=100, backoff=Backoff(**FAST),
               consumer_config=QUICK_GROUP).run(idle_exit_s=1.0)
    assert q(pg, f"SELECT count(*) FROM {table}") == [(n,)]
    assert applied(pg, table) == Counter(range(n))  # each record applied exactly once
    assert offsets_in_table(pg, name) == topic_ends(settings, topic)


def test_sink_while_postgres_is_down_loses_and_repeats_nothing(pg, settings, name):
    table, topic, n = f"{name}_preds", f"{name}.predictions", 2000
    make_predictions(pg, table)
    produce(settings, topic, [orjson.dumps({"id": i, "score": 0.25}) for i in range(n)],
            [str(i).encode() for i in range(n)])
    metrics = ConnectorMetrics(name, "postgres", "sink")
    sink = PostgresSink(pg.dsn, table, "id", name=name, connect_timeout=1)
    runner = SinkRunner(sink, settings, [topic], dlq=f"{name}.dlq", batch_size=50, metrics=metrics,
                        backoff=Backoff(**FAST), consumer_config=QUICK_GROUP)
    t = threading.Thread(target=runner.run, kwargs={"idle_exit_s": 1.5}, daemon=True)
    t.start()
    wait(lambda: sum(offsets_in_table(pg, name).values()) >= 300, 60, "300 records written")
    pg.stop()
    lab = labels(name, "sink")
    wait(lambda: metrics.registry.get_sample_value("tidal_connector_up", lab) == 0, 10, "tidal_connector_up 0")
    time.sleep(2)
    pg.start()
    t.join(60)
    assert not t.is_alive()
    assert q(pg, f"SELECT count(*) FROM {table}") == [(n,)]
    assert applied(pg, table) == Counter(range(n))
    assert offsets_in_table(pg, name) == topic_ends(settings, topic)
    assert metrics.registry.get_sample_value("tidal_connector_up", lab) == 1


def test_sink_creates_a_missing_table_from_the_first_records(pg):
    from tidal.connect import SinkRecord

    table = f"t{uuid.uuid4().hex[:8]}_auto"
    sink = PostgresSink(pg.dsn, table, "id", create_table=True, extra_column="rest", name=table)
    sink.open()
    recs = [SinkRecord("p", 0, i, None, {"id": i, "score": i / 2, "ok": True, "tags": ["a"]}, 0, b"") for i in range(3)]
    rows, refused = sink.prepare(recs)
    sink.write(rows, {("p", 0): 3})
    types = dict(q(pg, "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s", (table,)))
    assert types == {"id": "bigint", "score": "double precision", "ok": "boolean", "tags": "jsonb", "rest": "jsonb"}
    assert q(pg, f"SELECT id, score, tags, rest FROM {table} ORDER BY id") == [
        (0, 0.0, ["a"], None), (1, 0.5, ["a"], None), (2, 1.0, ["a"], None)]
    assert sink.stored_offsets([("p", 0)]) == {("p", 0): 3}
    sink.close()
