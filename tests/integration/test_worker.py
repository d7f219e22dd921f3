"""A worker on the real embedded broker: exact counts, DLQ reasons, failing steps."""

from __future__ import annotations


import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from tidal.broker import ensure_topics
from tidal.models import ScoreStep, load_model
from tidal.quality import Schema
from tidal.stream import Pipeline, Worker

from .kafka_helpers import produce, read_all, records, run_until

pytestmark = pytest.mark.integration

SCHEMA = Schema.from_dict({"id": "int", "x": "float", "y": "float"})


def test_produce_score_consume_exact_counts(settings, name, toy_model):
    p = Pipeline(name, schema=SCHEMA, steps=[ScoreStep(load_model(toy_model))], max_batch=500)
    ensure_topics(settings, p.topic_specs())
    values = [orjson.dumps({"id": i, "x": (i % 10) / 10, "y": (i % 7) / 7}) for i in range(3000)]
    produce(settings, p.sources[0], values)

    worker = Worker(p, settings)
    run_until(worker, 3000)

    out = records(read_all(settings, p.sink, 4))
    assert len(out) == 3000
    assert sorted(r["id"] for r in out) == list(range(3000))  # each event exactly once
    assert read_all(settings, p.dlq, 1) == []
    for r in out[:50]:
        assert r["model"] == "toy" and r["model_version"] == "1"
        assert r["decision"] == (r["score"] >= 0.5)
        assert (r["score"] >= 0.5) == (r["x"] + r["y"] > 1) or abs(r["x"] + r["y"] - 1) < 0.15
        assert r["source_topic"] == p.sources[0] and 0 <= r["source_partition"] < 4
    positions = {(r["source_partition"], r["source_offset"]) for r in out}
    assert len(positions) == 3000
    assert worker.stats.outputs == 3000 and worker.stats.commits >= 1


def test_max_wait_0_takes_what_has_arrived_and_commits_it_all(settings, name, toy_model):
    """``max_wait_ms: 0``: no wait to fill a batch, yet a backlog still goes in batches, and
    the group's committed offsets cover every event once the worker stops."""
    p = Pipeline(name, schema=SCHEMA, steps=[ScoreStep(load_model(toy_model))], max_batch=500, max_wait_ms=0)
    ensure_topics(settings, p.topic_specs())
    produce(settings, p.sources[0], [orjson.dumps({"id": i, "x": 0.5, "y": 0.1}) for i in range(3000)])

    worker = Worker(p, settings)
    run_until(worker, 3000)

    out = records(read_all(settings, p.sink, 4))
    assert sorted(r["id"] for r in out) == list(range(3000))
    assert worker.stats.batches < 300  # the fetched backlog is taken in batches, not one by one
    c = Consumer(settings.client_config({"group.id": p.group, "log_level": 3}))
    committed = c.committed([TopicPartition(p.sources[0], i) for i in range(4)], timeout=10)
    c.close()
    assert sum(tp.offset for tp in committed) == 3000


def test_commits_are_paced_yet_cover_every_event_at_shutdown(settings, name, toy_model):
    """Batches of a few events each (events trickling in, ``max_wait_ms: 0``) are not committed
    one by one: with ``commit_interval_s`` the worker commits far less often than it batches,
    and its last commit on shutdown still covers every event."""
    import threading
    import time

    p = Pipeline(name, schema=SCHEMA, steps=[ScoreStep(load_model(toy_model))], max_batch=500, partitions=1)
    ensure_topics(settings, p.topic_specs())
    worker = Worker(p, settings, commit_interval_s=30)
    t = threading.Thread(target=worker.run, daemon=True)
    t.start()

    def wait(n: int) -> None:
        deadline = time.monotonic() + 60
        while worker.stats.events_in < n and time.monotonic() < deadline:
            time.sleep(0.02)

    produce(settings, p.sources[0], [orjson.dumps({"id": 0, "x": 0.5, "y": 0.1})])
    wait(1)  # the group has formed and the first batch is committed (the first commit is not paced)
    time.sleep(0.5)
    batches, commits = worker.stats.batches, worker.stats.commits
    for i in range(20):  # 20 small bursts, each its own batch
        produce(settings, p.sources[0], [orjson.dumps({"id": 1 + i * 5 + j, "x": 0.5, "y": 0.1}) for j in range(5)])
        wait(2 + i * 5)
    wait(101)
    batches, commits = worker.stats.batches - batches, worker.stats.commits - commits
    worker.stop()
    t.join(30)
    assert worker.stats.events_in == 101 and batches >= 10
    assert commits == 0  # within the 30 s interval: no commit per batch
    c = Consumer(settings.client_config({"group.id": p.group, "log_level": 3}))
    committed = c.committed([TopicPartition(p.sources[0], 0)], timeout=10)
    c.close()
    assert committed[0].offset == 101  # the shutdown commit covers every event


def test_malformed_records_go_to_dlq_with_reasons(settings, name, toy_model):
    p = Pipeline(name, schema=SCHEMA, steps=[ScoreStep(load_model(toy_model))])
    ensure_topics(settings, p.topic_specs())
    good = [orjson.dumps({"id": i, "x": 0.1, "y": 0.2}) for i in range(200)]
    bad = [b'{"id": 1000, "x": 0.1', b'{"id": 1001, "x": 0.5}', b'{"id": 1002, "x": "high", "y": 1}', b"\xff\xfe",
           b"[1, 2]"]
    produce(settings, p.sources[0], good[:100] + bad + good[100:])

    worker = Worker(p, settings)
    run_until(worker, 205)

    out = records(read_all(settings, p.sink, 4))
    dlq = read_all(settings, p.dlq, 1)
    assert len(out) == 200 and len(dlq) == 5
    by_value = {m.value(): dict(m.headers()) for m in dlq}
    assert set(by_value) == set(bad)  # original bytes, untouched
    reasons = {v: h["tidal.error.reason"].decode() for v, h in by_value.items()}
    assert reasons == {bad[0]: "invalid_json", bad[1]: "missing_field", bad[2]: "wrong_type",
                       bad[3]: "invalid_json", bad[4]: "wrong_type"}
    headers = by_value[bad[1]]
    assert headers["tidal.source.topic"].decode() == p.sources[0]
    assert int(headers["tidal.source.offset"]) >= 0
    assert b"y" in headers["tidal.error.message"]
    assert dict(worker.stats.dlq) == {"invalid_json": 2, "missing_field": 1, "wrong_type": 2}


def test_failing_step_sends_its_batch_to_dlq_and_pipeline_goes_on(settings, name):
    def explode_on_13(batch):
        if 13 in batch.column("id").tolist():
            raise RuntimeError("model crashed")
        return batch.with_column("ok", [True] * len(batch))

    p = Pipeline(name, schema=SCHEMA, max_batch=10).then(explode_on_13, name="fragile")
    ensure_topics(settings, p.topic_specs())
    produce(settings, p.sources[0], [orjson.dumps({"id": i, "x": 0.0, "y": 0.0}) for i in range(100)],
            keys=[b"same-key"] * 100)  # one partition, in order: batches of 10

    worker = Worker(p, settings)
    run_until(worker, 100)

    out = records(read_all(settings, p.sink, 4))
    dlq = read_all(settings, p.dlq, 1)
    failed_ids = sorted(orjson.loads(m.value())["id"] for m in dlq)
    assert 13 in failed_ids and 0 < len(failed_ids) <= 10
    assert len(out) + len(dlq) == 100
    assert {r["id"] for r in out}.isdisjoint(failed_ids)
    h = dict(dlq[0].headers())
    assert h["tidal.error.reason"] == b"step_error" and h["tidal.error.step"] == b"fragile"
    assert b"model crashed" in h["tidal.error.message"]
