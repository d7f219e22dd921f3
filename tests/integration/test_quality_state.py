"""Quality statistics survive a restart: imputation learned before it is used after it."""

from __future__ import annotations

import threading

import orjson
import pytest

from tidal.broker import ensure_topics
from tidal.quality import Schema
from tidal.quality.impute import ImputeStep
from tidal.stream import Pipeline, Worker

from .kafka_helpers import produce, read_all, records

pytestmark = pytest.mark.integration

SCHEMA = Schema.from_dict({"id": "int", "x": {"type": "float", "required": False}})


def run(settings, name: str, upto: int) -> None:
    step = ImputeStep({"x": "mean"})
    step.snapshot_every_s = 0.0  # every batch, for the test
    p = Pipeline(name, schema=SCHEMA, steps=[step], max_batch=100)
    w = Worker(p, settings)
    w.on_batch = lambda w, _b: w.stop() if w.stats.events_in >= upto else None
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive()


def test_imputation_statistics_survive_a_restart(settings, name):
    ensure_topics(settings, Pipeline(name).topic_specs())
    keys = [b"one-key"] * 400  # one partition, in order
    produce(settings, f"{name}.events", [orjson.dumps({"id": i, "x": 10.0}) for i in range(300)], keys[:300])
    run(settings, name, 300)  # learns mean(x) = 10, then stops
    produce(settings, f"{name}.events", [orjson.dumps({"id": 300 + i}) for i in range(100)], keys[300:])
    run(settings, name, 100)  # a new worker: x is missing, the restored statistics fill it
    out = {r["id"]: r for r in records(read_all(settings, f"{name}.predictions", 4))}
    assert len(out) == 400
    assert {out[i]["x"] for i in range(300, 400)} == {10.0}
