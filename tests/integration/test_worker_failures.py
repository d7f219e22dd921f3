"""The worker's failure paths on the real broker: a refused record, units committed in order,
an aborted transaction (rewind *and* state rollback), and the broker going away mid-stream."""

from __future__ import annotations

import threading
import time
from collections import Counter

import orjson
import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from tidal.broker import EmbeddedBroker, ensure_topics
from tidal.broker.topics import TopicSpec
from tidal.config import KafkaSettings
from tidal.features import WindowAggregate
from tidal.stream import DeliveryFailed, Pipeline, Worker
from tidal.stream.hooks import WorkerHooks
from tidal.stream.schema import Schema

from .kafka_helpers import produce, read_all, records

pytestmark = pytest.mark.integration

SCHEMA = Schema.from_dict({"id": "int", "k": "str"})


def events(n: int, start: int = 0) -> tuple[list[bytes], list[bytes]]:
    values = [orjson.dumps({"id": i, "k": f"k{i % 7}"}) for i in range(start, start + n)]
    return values, [f"k{i % 7}".encode() for i in range(start, start + n)]


def committed(settings, group: str, topic: str, partitions: int) -> dict[int, int]:
    c = Consumer(settings.client_config({"group.id": group, "log_level": 3}))
    try:
        return {tp.partition: tp.offset for tp in c.committed([TopicPartition(topic, p) for p in range(partitions)],
                                                              timeout=10)}
    finally:
        c.close()


def test_a_refused_record_stops_the_worker_with_a_clear_error_and_commits_nothing(settings, name):
    p = Pipeline(name, schema=SCHEMA, sink="bad$topic", partitions=1, max_wait_ms=20)  # the broker refuses it
    ensure_topics(settings, [TopicSpec(f"{name}.events", 1)])
    # One event: the first record a fresh producer sends to a topic is refused by the broker (an
    # acknowledgement error); records after it may be refused by the client, which by then has
    # the topic's metadata, and those go to the DLQ instead (produce_error).
    produce(settings, f"{name}.events", *events(1))
    worker = Worker(p, settings, hooks=WorkerHooks(), max_redeliveries=2)
    with pytest.raises(DeliveryFailed, match="not acknowledged, offsets not committed.*Invalid topic.*3 tries"):
        worker.run(idle_exit_s=10)
    assert committed(settings, p.group, f"{name}.events", 1) == {0: -1001}  # nothing committed: re-read on restart


class CommitLog(Worker):
    """Records every commit and how many units were in flight after each batch."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.commits: list[dict] = []
        self.most_in_flight = 0

    def _commit(self, offsets) -> None:
        self.commits.append(dict(offsets))
        super()._commit(offsets)

    def _process(self, msgs) -> None:
        super()._process(msgs)
        self.most_in_flight = max(self.most_in_flight, len(self._inflight))


def test_units_in_flight_are_committed_in_order(settings, name):
    n = 3000
    p = Pipeline(name, schema=SCHEMA, partitions=2, max_batch=50, max_wait_ms=0)
    ensure_topics(settings, p.topic_specs())
    produce(settings, f"{name}.events", *events(n))
    worker = CommitLog(p, settings, hooks=WorkerHooks(), max_in_flight=4)
    worker.run(idle_exit_s=3)
    assert worker.most_in_flight > 1  # batches really overlapped their delivery
    assert worker.most_in_flight <= 4
    last: dict = {}
    for offsets in worker.commits:  # every commit moves each partition forward, never back
        for tp, o in offsets.items():
            assert o > last.get(tp, -1), (tp, o, last.get(tp))
            last[tp] = o
    assert sum(last.values()) == n
    assert sum(committed(settings, p.group, f"{name}.events", 2).values()) == n
    assert sorted(r["id"] for r in records(read_all(settings, p.sink, 2))) == list(range(n))


class AbortsOnce(Worker):
    """Slips a record the broker refuses into the ``at``-th transaction: it aborts, once."""

    def __init__(self, *a, at: int = 3, **kw) -> None:
        super().__init__(*a, **kw)
        self.at, self.units = at, 0

    def _produce(self, unit, cb) -> None:
        super()._produce(unit, cb)
        if unit.offsets:
            self.units += 1
            if self.units == self.at:
                try:  # the broker refuses it, and the transaction's commit fails: it must abort
                    self.producer.produce("bad$topic", b"refused")
                except KafkaException as exc:  # the client knew the topic is bad and refused it at once:
                    # the same abortable failure, raised where the worker produces
                    raise KafkaException(KafkaError(exc.args[0].code(), exc.args[0].str(),
                                                    txn_requires_abort=True)) from exc


def test_an_aborted_transaction_rewinds_and_rolls_state_back(settings, name):
    n = 1400
    window = WindowAggregate("k", {"n": ["id", "count"], "total": ["id", "sum"]}, window_s=10**9)
    p = Pipeline(name, schema=SCHEMA, steps=[window], partitions=2, max_batch=100, max_wait_ms=20,
                 exactly_once=True)
    ensure_topics(settings, p.topic_specs())
    values, keys = events(n)
    produce(settings, f"{name}.events", values, keys)  # keyed: a key's events stay in order
    worker = AbortsOnce(p, settings, hooks=WorkerHooks(), at=3)
    worker.run(idle_exit_s=4)
    assert worker.stats.aborted == 1

    # The embedded broker shows aborted records to read_committed readers too (a known quirk):
    # those are the first copy of the ids the aborted unit held; the replay comes after them.
    out = records(read_all(settings, p.sink, 2, isolation="read_committed"))
    copies = Counter(r["id"] for r in out)
    assert set(copies) == set(range(n))  # no gap
    assert sum(c - 1 for c in copies.values()) <= 100  # at most the aborted unit, once (0 if none was sent)
    final = {r["id"]: r for r in out}  # the last copy of each id: the replay
    count, total = Counter(), Counter()
    for i in range(n):  # the truth: a running count and sum per key, each event counted once
        count[i % 7] += 1
        total[i % 7] += i
        assert (final[i]["n"], final[i]["total"]) == (count[i % 7], total[i % 7]), i  # no double count


def test_the_broker_going_away_mid_stream_loses_nothing_acknowledged(tmp_path, name):
    """Run in a child process: librdkafka 2.12 crashed the process (SIGSEGV, in one of its own
    threads, with no Python frame) during this outage in 1 of 3 to 6 runs; with 2.16 (what tidal
    now requires) 14 runs in a row passed. Should a crash come back, it marks this test xfail with
    that reason instead of killing the whole suite; any other failure fails it."""
    import os
    import subprocess
    import sys

    if os.environ.get("TIDAL_OUTAGE_CHILD"):
        _broker_going_away(name)
        return
    node = f"{__file__}::test_the_broker_going_away_mid_stream_loses_nothing_acknowledged"
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", node],
                       env={**os.environ, "TIDAL_OUTAGE_CHILD": "1"}, capture_output=True, text=True, timeout=170)
    if r.returncode in (-11, 139):
        pytest.xfail("the worker process segfaulted inside librdkafka during the broker outage (known, open)")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def _broker_going_away(name: str) -> None:
    with EmbeddedBroker() as broker:
        settings = KafkaSettings(broker.bootstrap, {"session.timeout.ms": "3000", "heartbeat.interval.ms": "500"})
        p = Pipeline(name, schema=SCHEMA, partitions=1, max_batch=50, max_wait_ms=20,
                     producer_config={"message.timeout.ms": 5000})  # notice the outage within seconds
        slow = p.then(lambda b: (time.sleep(0.02), b)[1], name="slow")
        ensure_topics(settings, slow.topic_specs())
        produce(settings, f"{name}.events", *events(2000))
        worker = Worker(slow, settings, hooks=WorkerHooks())
        errors: list[BaseException] = []

        def run() -> None:
            try:
                worker.run()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and worker.stats.events_in < 300:
            time.sleep(0.05)
        broker.stop()  # mid-stream: batches in flight, unacknowledged
        time.sleep(2)
        broker.start()  # same port, empty (in-memory storage)
        ensure_topics(settings, slow.topic_specs())
        values, keys = events(500, start=10_000)
        produce(settings, f"{name}.events", values, keys)  # what is acknowledged after the outage
        deadline = time.monotonic() + 90
        got: set[int] = set()
        while time.monotonic() < deadline and not errors and not set(range(10_000, 10_500)) <= got:
            got = {r["id"] for r in records(read_all(settings, p.sink, 1))}
            time.sleep(0.5)
        worker.stop()
        t.join(30)
        assert not errors, errors
        assert set(range(10_000, 10_500)) <= got  # the worker came back and processed every new event
