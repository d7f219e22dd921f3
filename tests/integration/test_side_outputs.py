"""Side outputs travel with the batch: a stateful step's alerts reach tidal.alerts through the
worker's producer, in at-least-once and in exactly-once mode (the README's example step)."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from tidal.broker import ensure_topics
from tidal.broker.topics import ALERTS_TOPIC
from tidal.stream import Pipeline, Step, Worker
from tidal.stream.hooks import WorkerHooks
from tidal.stream.schema import Schema

from .kafka_helpers import produce, read_all, records

pytestmark = pytest.mark.integration


class BigSpenders(Step):
    """Running spend per card (state); an alert when a card passes ``limit`` (side output)."""

    name = state_name = "big_spenders"
    side_outputs = ("tidal.alerts",)

    def __init__(self, limit: float) -> None:
        self.limit = limit

    def process(self, batch):
        cards, amounts = batch.column("card").tolist(), batch.column("amount").tolist()
        totals = np.empty(len(batch))
        for i, (card, amount, p) in enumerate(zip(cards, amounts, batch.partitions.tolist())):
            part = self.state_store.partition(p)  # per source partition, restored on assignment
            before = part.get(card, 0.0)
            part.set(card, before + amount)
            totals[i] = before + amount
            if before < self.limit <= before + amount:
                self.ctx.alert("big_spender", f"big_spender:{card}", "firing", f"{card} spent {before + amount:.0f}",
                               card=card, total=before + amount)
        return batch.with_column("card_total", totals)


@pytest.mark.parametrize("exactly_once", [False, True])
def test_a_steps_alerts_are_produced_by_the_worker(settings, name, exactly_once):
    p = Pipeline(name, schema=Schema.from_dict({"card": "str", "amount": "float"}), partitions=2,
                 steps=[BigSpenders(limit=1000)], exactly_once=exactly_once, max_wait_ms=20)
    assert ALERTS_TOPIC in {s.name for s in p.topic_specs()}
    ensure_topics(settings, p.topic_specs())
    cards = [f"{name}-c{i % 10}" for i in range(500)]
    produce(settings, f"{name}.events", [orjson.dumps({"card": c, "amount": 30.0}) for c in cards],
            [c.encode() for c in cards])
    worker = Worker(p, settings, hooks=WorkerHooks())
    stats = worker.run(idle_exit_s=3)
    assert stats.side_outputs == 10  # one alert per card: each spends 50 × 30
    out = records(read_all(settings, p.sink, 2, "read_committed"))
    assert len(out) == 500 and max(r["card_total"] for r in out) == 1500.0
    alerts = [orjson.loads(m.value()) for m in read_all(settings, ALERTS_TOPIC, 1, "read_committed")]
    mine = [a for a in alerts if a["pipeline"] == name]
    assert sorted(a["card"] for a in mine) == sorted({*cards})
    assert all(a["type"] == "big_spender" and a["state"] == "firing" and a["total"] == 1020.0 for a in mine)


class Oversized(Step):
    """One side record per event, the one of event 3 over the producer's ``message.max.bytes``:
    the client refuses it at ``produce()``, before any broker sees it."""

    name = "oversized"
    side_outputs = ("{pipeline}.audit",)

    def process(self, batch):
        topic = self.ctx.topics[0]
        for i in batch.column("id").tolist():
            self.ctx.emit(topic, b"x" * (2_000_000 if i == 3 else 10), str(i))
        return batch


@pytest.mark.parametrize("exactly_once", [False, True])
def test_a_record_the_client_refuses_goes_to_the_dlq_and_the_rest_is_delivered(settings, name, exactly_once):
    p = Pipeline(name, schema=Schema.from_dict({"id": "int"}), partitions=1, steps=[Oversized()],
                 exactly_once=exactly_once, max_wait_ms=20)
    ensure_topics(settings, p.topic_specs())
    produce(settings, f"{name}.events", [orjson.dumps({"id": i}) for i in range(10)])
    stats = Worker(p, settings, hooks=WorkerHooks()).run(idle_exit_s=3)
    assert stats.events_in == 10
    iso = "read_committed"
    assert sorted(r["id"] for r in records(read_all(settings, p.sink, 1, iso))) == list(range(10))
    audit = read_all(settings, f"{name}.audit", 1, iso)
    assert sorted(int(m.key()) for m in audit) == [i for i in range(10) if i != 3]
    dead = read_all(settings, p.dlq, 1, iso)
    assert len(dead) == 1
    h = dict(dead[0].headers())
    assert h["tidal.error.reason"] == b"produce_error" and h["tidal.error.step"] == b"produce"
    assert f"producing to {name}.audit".encode() in h["tidal.error.message"]
    assert h["tidal.error.original_size"] == b"2000000" and h["tidal.error.truncated"] == b"true"
    assert dead[0].key() == b"3" and 0 < len(dead[0].value()) < 2_000_000
