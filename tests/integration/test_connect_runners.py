"""The connector runners against the real broker, with in-memory sources and sinks.

What every connector inherits: resume without loss or duplicates after a crash between the
acknowledgement and the saved position, dead letters with reasons, back-off while the
outside system is down, offsets committed only after the sink wrote.
"""

from __future__ import annotations

from collections import Counter

import orjson
import pytest

from tidal.connect import (Backoff, BadRecord, ConnectorMetrics, PositionFile, RecordsRejected, Sink,
                           SinkRunner, Source, SourceRecord, SourceRunner, Unavailable)

from .kafka_helpers import produce, read_all

pytestmark = pytest.mark.integration

FAST = dict(initial=0.05, maximum=0.2, jitter=0.0)


class ListSource(Source):
    """Rows 0..n-1; row i is bad when i % 97 == 5; down for the polls listed in ``down_at``."""

    kind = "memory"

    def __init__(self, name: str, n: int, down_at: set[int] = frozenset()) -> None:
        self.name, self.n, self.down_at, self.polls, self.next = name, n, set(down_at), 0, 0

    def open(self, position):
        self.next = 0 if position is None else position + 1

    def poll(self, max_records, timeout):
        self.polls += 1
        if self.polls in self.down_at:
            raise Unavailable("connection refused")
        out = []
        for i in range(self.next, min(self.n, self.next + min(max_records, 100))):
            if i % 97 == 5:
                out.append(BadRecord(b"garbage", "parse_error", f"row {i} is garbage", position=i))
            else:
                out.append(SourceRecord(orjson.dumps({"i": i}), str(i).encode(), position=i))
        self.next += len(out)
        return out


def values(settings, topic):
    return [orjson.loads(m.value())["i"] for m in read_all(settings, topic, 4)]


def test_source_resumes_without_loss_or_duplicates_after_a_crash_before_the_save(settings, name, tmp_path):
    pos = PositionFile(tmp_path / "pos.json")
    topic = f"{name}.events"
    first = SourceRunner(ListSource(name, 1000), settings, topic, position_file=pos, backoff=Backoff(**FAST))
    first.start()
    for _ in range(3):
        first.step()  # 300 rows delivered and saved
    # A crash between Kafka's acknowledgement and the save: deliver 200 more, never save.
    first.source.open(first.position)
    crashed = [r for _ in range(2) for r in first.source.poll(100, 0)]
    first._deliver(crashed)
    first._producer.flush(10)
    assert pos.load()[0] == 299

    again = SourceRunner(ListSource(name, 1000), settings, topic, position_file=pos, backoff=Backoff(**FAST))
    again.run(idle_exit_s=0.5)
    got = values(settings, topic)
    bad = [i for i in range(1000) if i % 97 == 5]
    assert sorted(got) == [i for i in range(1000) if i % 97 != 5]  # every row once
    assert again.skipped == 200
    dead = read_all(settings, f"{name}.dlq", 4)
    assert sorted(int(dict(m.headers())["tidal.connect.position"]) for m in dead) == bad
    assert {dict(m.headers())["tidal.error.reason"] for m in dead} == {b"parse_error"}
    assert pos.load()[0] == 999


def test_source_backs_off_while_the_system_is_down_and_resumes(settings, name, tmp_path):
    metrics = ConnectorMetrics(name, "memory", "source")
    runner = SourceRunner(ListSource(name, 400, down_at={2, 3, 4}), settings, f"{name}.events",
                          position_file=PositionFile(tmp_path / "p.json"), metrics=metrics, backoff=Backoff(**FAST))
    runner.run(idle_exit_s=0.5)
    assert sorted(values(settings, f"{name}.events")) == [i for i in range(400) if i % 97 != 5]
    labels = {"connector": name, "connector_type": "memory", "direction": "source"}
    assert metrics.registry.get_sample_value("tidal_connector_errors_total", {**labels, "kind": "unavailable"}) == 3
    assert metrics.registry.get_sample_value("tidal_connector_up", labels) == 1
    assert metrics.registry.get_sample_value("tidal_connector_records_total", labels) == sum(i % 97 != 5 for i in range(400))


class ListSink(Sink):
    """Keeps rows in a list; refuses odd ``i`` divisible by 7; down for the writes in ``down_at``."""

    kind = "memory"

    def __init__(self, name: str, down_at: set[int] = frozenset()) -> None:
        self.name, self.rows, self.down_at, self.writes = name, [], set(down_at), 0

    def prepare(self, records):
        rows, refused = [], []
        for r in records:
            if not isinstance(r.value, dict) or "i" not in r.value:
                refused.append((r, "missing_field", "no field i"))
            else:
                rows.append(r.value["i"])
        return rows, refused

    def write(self, rows, offsets):
        self.writes += 1
        if self.writes in self.down_at:
            raise Unavailable("server closed the connection")
        rejected = [(k, "constraint", f"{i} violates check") for k, i in enumerate(rows) if i % 14 == 7]
        if rejected:
            raise RecordsRejected(rejected)
        self.rows.extend(rows)


def test_sink_writes_each_record_and_dead_letters_what_it_cannot(settings, name):
    topic = f"{name}.predictions"
    good = [orjson.dumps({"i": i}) for i in range(300)]
    produce(settings, topic, good + [b"not json", orjson.dumps({"j": 1})])
    sink = ListSink(name, down_at={1, 2})
    metrics = ConnectorMetrics(name, "memory", "sink")
    runner = SinkRunner(sink, settings, [topic], dlq=f"{name}.dlq", metrics=metrics, backoff=Backoff(**FAST))
    runner.run(idle_exit_s=1.0, until=lambda: len(sink.rows) >= 300 - 21)
    assert Counter(sink.rows) == Counter(i for i in range(300) if i % 14 != 7)
    reasons = Counter(dict(m.headers())["tidal.error.reason"] for m in read_all(settings, f"{name}.dlq", 4))
    assert reasons == {b"constraint": 21, b"decode_error": 1, b"missing_field": 1}
    labels = {"connector": name, "connector_type": "memory", "direction": "sink"}
    assert metrics.registry.get_sample_value("tidal_connector_errors_total", {**labels, "kind": "unavailable"}) == 2

    # Offsets were committed after the writes: a new runner of the group has nothing left.
    again = ListSink(name)
    SinkRunner(again, settings, [topic], dlq=f"{name}.dlq", backoff=Backoff(**FAST)).run(idle_exit_s=1.5)
    assert again.rows == []
