"""Enrichment from a compacted table topic: loaded before the first batch, followed as it changes."""

from __future__ import annotations

import threading
import time

import orjson
import pytest

from tidal.broker import TopicSpec, ensure_topics
from tidal.broker.topics import COMPACTED
from tidal.features import TableJoin
from tidal.quality import Schema
from tidal.stream import Pipeline, Worker

from .kafka_helpers import produce, read_all, records

pytestmark = pytest.mark.integration


def test_events_join_the_latest_profile(settings, name):
    table = f"{name}.customers"
    ensure_topics(settings, [TopicSpec(table, 2, COMPACTED)])
    produce(settings, table, [orjson.dumps({"segment": "basic", "tenure": i}) for i in range(100)],
            keys=[f"c{i}".encode() for i in range(100)])
    produce(settings, table, [orjson.dumps({"segment": "gold", "tenure": 999}), None],
            keys=[b"c7", b"c8"])  # an update and a tombstone
    p = Pipeline(name, schema=Schema.from_dict({"id": "int", "customer": "str"}),
                 steps=[TableJoin(table, "customer", ["segment", "tenure"], prefix="cust_")])
    ensure_topics(settings, p.topic_specs())
    produce(settings, p.sources[0], [orjson.dumps({"id": i, "customer": f"c{i}"}) for i in range(120)])
    worker = Worker(p, settings)
    t = threading.Thread(target=worker.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and worker.stats.events_in < 120:
        time.sleep(0.1)
    produce(settings, table, [orjson.dumps({"segment": "new", "tenure": 0})], keys=[b"c200"])
    time.sleep(1.0)  # the table follows its topic
    produce(settings, p.sources[0], [orjson.dumps({"id": 200, "customer": "c200"})])
    while time.monotonic() < deadline and worker.stats.events_in < 121:
        time.sleep(0.1)
    worker.stop()
    t.join(20)
    out = {r["id"]: r for r in records(read_all(settings, p.sink, 4))}
    assert len(out) == 121
    assert out[3]["cust_segment"] == "basic" and out[3]["cust_tenure"] == 3
    assert out[7]["cust_segment"] == "gold" and out[7]["cust_tenure"] == 999
    assert out[8]["cust_segment"] is None and out[110]["cust_tenure"] is None  # deleted / unknown
    assert out[200]["cust_segment"] == "new"
