"""Poison pills on the real broker: no single record stops a partition, and every record is
accounted for (outputs + dead letters = inputs).

- an event of 1.5 MB (the broker takes it; its output is over the producer's limit);
- an integer of 10^23 (valid JSON, no int64);
- an event dated in the year 2100 into a window step (it must not move the watermark);
- a state value of several MB (chunked in the changelog, restored after a restart).
"""

from __future__ import annotations

import hashlib
import os
import time

import orjson
import pytest

from tidal.broker import ensure_topics
from tidal.broker.topics import TopicSpec
from tidal.features import WindowAggregate
from tidal.stream import Pipeline, Worker
from tidal.stream.hooks import WorkerHooks
from tidal.stream.schema import Schema
from tidal.stream.step import Step

from .kafka_helpers import read_all, records

pytestmark = pytest.mark.integration


def produce_big(settings, topic: str, values: list[bytes]) -> None:
    from confluent_kafka import Producer

    p = Producer(settings.client_config({"linger.ms": 5, "log_level": 3, "message.max.bytes": 4_000_000}))
    for i, v in enumerate(values):
        p.produce(topic, v, str(i).encode())
    assert p.flush(30) == 0


def headers(m) -> dict[str, bytes]:
    return dict(m.headers() or [])


@pytest.mark.parametrize("eos", [False, True], ids=["at-least-once", "exactly-once"])
def test_a_huge_record_and_a_huge_integer_go_to_the_dlq_and_the_partition_goes_on(settings, name, eos):
    schema = Schema.from_dict({"id": "int", "pad": {"type": "str", "required": False}})
    p = Pipeline(name, schema=schema, partitions=1, max_wait_ms=20, exactly_once=eos)
    ensure_topics(settings, p.topic_specs())
    big = orjson.dumps({"id": 100, "pad": "x" * 1_500_000})
    values = [orjson.dumps({"id": i}) for i in range(100)] + [big, b'{"id": 100000000000000000000000}'] + \
        [orjson.dumps({"id": i}) for i in range(101, 200)]
    produce_big(settings, f"{name}.events", values)
    worker = Worker(p, settings, hooks=WorkerHooks())
    worker.run(idle_exit_s=6)  # returns: the worker did not die on either record
    out = records(read_all(settings, f"{name}.predictions", 1, "read_committed"))
    dlq = read_all(settings, f"{name}.dlq", 1, "read_committed")
    assert sorted(r["id"] for r in out) == list(range(100)) + list(range(101, 200))
    assert len(out) + len(dlq) == len(values) == worker.stats.events_in
    reasons = {headers(m)["tidal.error.reason"]: m for m in dlq}
    assert set(reasons) == {b"too_large", b"wrong_type"}
    cut = reasons[b"too_large"]
    h = headers(cut)
    assert int(h["tidal.error.original_size"]) == len(big) and h["tidal.error.sha256"] == \
        hashlib.sha256(big).hexdigest().encode()  # the dead letter is cut to fit, and says what it was
    assert len(cut.value()) < 1_000_000 and big.startswith(cut.value())
    assert b"int" in headers(reasons[b"wrong_type"])["tidal.error.message"]


def test_an_event_from_the_future_does_not_move_the_watermark(settings, name):
    schema = Schema.from_dict({"k": "str", "ts": "int", "x": "float"})
    window = WindowAggregate("k", {"x_sum_60s": ("x", "sum")}, window_s=60, time_field="ts")
    p = Pipeline(name, schema=schema, partitions=1, max_wait_ms=20, steps=[window])
    ensure_topics(settings, p.topic_specs())
    now = int(time.time() * 1000) - 60_000
    values = [orjson.dumps({"k": "a", "ts": now + i * 100, "x": 1.0}) for i in range(50)]
    values.insert(25, orjson.dumps({"k": "a", "ts": 4_102_444_800_000, "x": 1.0}))  # 2100-01-01
    produce_big(settings, f"{name}.events", values)
    worker = Worker(p, settings, hooks=WorkerHooks())
    worker.run(idle_exit_s=6)
    out = records(read_all(settings, f"{name}.predictions", 1))
    dlq = read_all(settings, f"{name}.dlq", 1)
    assert [headers(m)["tidal.error.reason"] for m in dlq] == [b"future_event"]
    assert len(out) == 50  # none of the later events is late: the watermark never saw 2100
    buckets = [r["ts"] // 60_000 for r in out]  # tumbling minutes: a running count within each
    assert [r["x_sum_60s"] for r in out] == [float(buckets[:i + 1].count(b)) for i, b in enumerate(buckets)]


class BigState(Step):
    """Keeps a value of several MB per partition (a stand-in for a large integrity horizon)."""

    name = state_name = "big"

    def __init__(self) -> None:
        self.seen: list[str | None] = []
        self.written: str | None = None

    def process(self, batch):
        part = self.state_store.partition(int(batch.partitions[0]))
        self.seen.append(part.get("blob"))
        self.written = os.urandom(1_500_000).hex() + str(len(batch))  # ~3 MB, compresses poorly
        part.set("blob", self.written)
        return batch


def test_a_state_value_of_megabytes_is_chunked_and_restored(settings, name):
    schema = Schema.from_dict({"id": "int"})
    ensure_topics(settings, [TopicSpec(f"{name}.events", 1)])
    step = BigState()
    p = Pipeline(name, schema=schema, partitions=1, max_wait_ms=20, max_batch=10, steps=[step])
    produce_big(settings, f"{name}.events", [orjson.dumps({"id": i}) for i in range(30)])
    w = Worker(p, settings, hooks=WorkerHooks())
    w.run(idle_exit_s=5)
    last = step.written
    assert w.stats.events_in == 30 and len(last) > 3_000_000
    changelog = read_all(settings, p.changelog(step), 1)
    assert changelog and max(len(m.value() or b"") for m in changelog) <= 256 * 1024  # chunked, each fits

    again = BigState()  # a new worker: the value comes back from the changelog, whole
    p2 = Pipeline(name, schema=schema, partitions=1, max_wait_ms=20, max_batch=10, steps=[again])
    produce_big(settings, f"{name}.events", [orjson.dumps({"id": 30})])
    w2 = Worker(p2, settings, hooks=WorkerHooks())
    w2.run(idle_exit_s=5)
    assert again.seen and again.seen[0] == last


def test_a_huge_line_in_an_ingested_file_goes_to_the_dlq_and_the_rest_is_delivered(settings, name, tmp_path):
    from tidal.connect import Backoff, FileSource, PositionFile, SourceRunner

    data = tmp_path / "in"
    data.mkdir()
    big = orjson.dumps({"id": 2, "pad": "y" * 1_500_000})
    (data / "a.jsonl").write_bytes(b'{"id": 1}\n' + big + b'\n{"id": 3}\n')
    source = FileSource(data, key_field="id", ledger=tmp_path / "ledger.json", done_dir=tmp_path / "done")
    runner = SourceRunner(source, settings, f"{name}.events", position_file=PositionFile(tmp_path / "pos.json"),
                          backoff=Backoff(initial=0.05, maximum=0.2, jitter=0.0))
    runner.run(until=lambda: source.finished)  # returns: the source did not stop on the huge line
    assert sorted(orjson.loads(m.value())["id"] for m in read_all(settings, f"{name}.events", 4)) == [1, 3]
    (dead,) = read_all(settings, f"{name}.dlq", 4)
    h = headers(dead)
    assert h["tidal.error.reason"] == b"too_large" and int(h["tidal.error.original_size"]) == len(big)
    assert len(dead.value()) < 1_000_000


@pytest.fixture
def own_broker():
    """A broker of this test's own: the garbage it writes to tidal.alerts and tidal.models must
    not reach the other tests' readers of those shared topics."""
    from tidal.broker import EmbeddedBroker
    from tidal.config import KafkaSettings, env_overrides

    with EmbeddedBroker() as broker:
        yield KafkaSettings(broker.bootstrap, env_overrides())


def test_bad_records_on_tidal_topics_are_skipped_and_counted(own_broker, name):
    """A table topic, tidal.alerts and tidal.models with garbage on them: the join, status and a
    follower go on, and say how many they skipped."""
    settings = own_broker
    from tidal.broker.skipped import skipped
    from tidal.broker.topics import ALERTS_TOPIC, COMPACTED, MODELS_TOPIC
    from tidal.features import TableJoin
    from tidal.models.follower import DeploymentFollower
    from tidal.monitor.status import cluster_status

    from .kafka_helpers import produce

    table = f"{name}.customers"
    ensure_topics(settings, [TopicSpec(table, 1, COMPACTED), TopicSpec(ALERTS_TOPIC, 1), TopicSpec(MODELS_TOPIC, 1)])
    produce(settings, table, [b'{"segment": "gold"}', b"\xff not json", b"[1, 2]"], keys=[b"c1", b"c2", b"c3"])
    before = skipped(table), skipped(ALERTS_TOPIC), skipped(MODELS_TOPIC)
    produce(settings, ALERTS_TOPIC, [b"garbage", b'"a string"'], keys=[b"x", b"y"])
    produce(settings, MODELS_TOPIC, [b"{not json"], keys=[name.encode()])
    p = Pipeline(name, schema=Schema.from_dict({"customer": "str"}), partitions=1, max_wait_ms=20,
                 steps=[TableJoin(table, "customer", ["segment"])])
    ensure_topics(settings, p.topic_specs())
    produce_big(settings, f"{name}.events", [b'{"customer": "c1"}', b'{"customer": "c2"}'])
    Worker(p, settings, hooks=WorkerHooks()).run(idle_exit_s=5)
    out = records(read_all(settings, f"{name}.predictions", 1))
    assert [r["segment"] for r in out] == ["gold", None]
    assert skipped(table) - before[0] == 2
    status = cluster_status(settings)  # reads tidal.alerts and tidal.models: no exception
    assert isinstance(status["active_alerts"], list) and skipped(ALERTS_TOPIC) - before[1] >= 2
    assert skipped(MODELS_TOPIC) - before[2] >= 1
    follower = DeploymentFollower(settings, name).start()
    try:
        deadline = time.monotonic() + 20
        while not follower.refused and time.monotonic() < deadline:
            time.sleep(0.1)
        assert follower.refused and follower.routing is None  # refused, still following
        assert follower._thread.is_alive()
    finally:
        follower.stop()


def test_a_line_longer_than_the_cap_is_dead_lettered_without_reading_it_whole(settings, name, tmp_path, monkeypatch):
    from tidal.connect import Backoff, FileSource, PositionFile, SourceRunner
    from tidal.connect import file_source

    monkeypatch.setattr(file_source, "MAX_LINE_BYTES", 6 << 20)  # over one read chunk (4 MiB), quick to write
    data = tmp_path / "in"
    data.mkdir()
    (data / "a.jsonl").write_bytes(b'{"id": 1}\n{"id": 2}\n' + b"z" * (13 << 20) + b'\n{"id": 4}\n')
    source = FileSource(data, key_field="id", ledger=tmp_path / "ledger.json", done_dir=tmp_path / "done")
    SourceRunner(source, settings, f"{name}.events", position_file=PositionFile(tmp_path / "pos.json"),
                 backoff=Backoff(initial=0.05, maximum=0.2, jitter=0.0)).run(until=lambda: source.finished)
    assert sorted(orjson.loads(m.value())["id"] for m in read_all(settings, f"{name}.events", 4)) == [1, 2, 4]
    (dead,) = read_all(settings, f"{name}.dlq", 4)
    assert headers(dead)["tidal.error.reason"] == b"line_too_long" and len(dead.value()) == 4096
    assert orjson.loads(headers(dead)["tidal.connect.position"])["line"] == 3
