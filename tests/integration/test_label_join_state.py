"""The label join keeps its waiting predictions in the state store: a worker killed with
kill -9 after committing them, restarted, still joins every label that arrives in the horizon."""

from __future__ import annotations

import signal
import time

import orjson
import pytest
import yaml
from confluent_kafka import Consumer, TopicPartition

from tidal.broker import ensure_topics
from tidal.stream import from_dict

from .kafka_helpers import produce, read_all, records
from .test_delivery import start

pytestmark = pytest.mark.integration

N = 600


def committed(settings, group: str, topic: str, partitions: int) -> int:
    c = Consumer(settings.client_config({"group.id": group, "log_level": 3}))
    try:
        return sum(max(0, tp.offset) for tp in c.committed([TopicPartition(topic, p) for p in range(partitions)],
                                                          timeout=10))
    finally:
        c.close()


def test_waiting_predictions_survive_kill_9(settings, name, tmp_path):
    preds, labels = f"{name}.predictions", f"{name}.labels"
    spec = {"pipeline": f"{name}.monitor", "sources": [preds, labels], "sink": f"{name}.joined", "partitions": 2,
            "steps": [{"python": "tidal.learn.labels:LabelJoinStep", "args": {"labels_topic": labels}}],
            "batch": {"max_batch": 100, "max_wait_ms": 20}}
    path = tmp_path / "monitor.yaml"
    path.write_text(yaml.safe_dump(spec))
    ensure_topics(settings, from_dict(spec).topic_specs())
    produce(settings, preds, [orjson.dumps({"event_id": f"e{i}", "score": i / N}) for i in range(N)])
    worker = start(settings, path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and committed(settings, f"tidal.{name}.monitor", preds, 2) < N:
        time.sleep(0.3)
    assert committed(settings, f"tidal.{name}.monitor", preds, 2) == N  # every prediction is committed, waiting
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)

    produce(settings, labels, [orjson.dumps({"event_id": f"e{i}", "label": i % 2}) for i in range(N)])
    restarted = start(settings, path, "--idle-exit", "3")
    assert restarted.wait(120) == 0
    joined = records(read_all(settings, f"{name}.joined", 2))
    assert {r["event_id"] for r in joined} == {f"e{i}" for i in range(N)}  # no label lost to the restart
    assert all(r["label"] == int(r["event_id"][1:]) % 2 and r["score"] == int(r["event_id"][1:]) / N
               for r in joined)
