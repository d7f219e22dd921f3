"""``tidal trace EVENT_ID``: one event's whole path through a pipeline.

Finds the event's output on ``<pipeline>.predictions`` (or its record on ``<pipeline>.dlq``),
follows the output's lineage back to the exact source message (topic, partition, offset),
and puts together: the input as it arrived, what the pipeline added (scores, decision,
explanation), which model version scored it, and, for a rejected event, why.
"""

from __future__ import annotations

from typing import Any

import orjson
from confluent_kafka import Consumer, TopicPartition

from tidal.broker.topics import PipelineTopics
from tidal.config import KafkaSettings
from tidal.broker.read import read_topic

__all__ = ["trace"]


def _find(messages: list[Any], needle: bytes) -> list[Any]:
    return [m for m in messages if m.value() and needle in m.value()]


def _fetch(settings: KafkaSettings, topic: str, partition: int, offset: int, timeout: float = 10.0) -> Any | None:
    c = Consumer(settings.client_config({"group.id": "tidal.trace", "enable.auto.commit": False, "log_level": 3}))
    try:
        c.assign([TopicPartition(topic, partition, offset)])
        m = c.poll(timeout)
        return m if m is not None and not m.error() and m.offset() == offset else None
    finally:
        c.close()


def trace(settings: KafkaSettings, pipeline: str, event_id: str, id_field: str = "event_id",
          timeout: float = 10.0) -> dict[str, Any]:
    """The path of the event whose ``id_field`` equals ``event_id`` (``found`` is False if none)."""
    topics = PipelineTopics(pipeline)
    needle = orjson.dumps(event_id)
    result: dict[str, Any] = {"event_id": event_id, "pipeline": pipeline, "found": False, "outputs": [],
                              "dead_letters": []}
    for m in _find(read_topic(settings, topics.predictions, timeout), needle):
        record = orjson.loads(m.value())
        if record.get(id_field) != event_id:
            continue
        result["outputs"].append({"record": record, "position": [m.topic(), m.partition(), m.offset()]})
    for m in _find(read_topic(settings, topics.dlq, timeout), needle):
        headers = {k: v.decode("utf-8", "replace") for k, v in (m.headers() or [])}
        result["dead_letters"].append({"value": m.value().decode("utf-8", "replace"), "headers": headers,
                                       "reason": headers.get("tidal.error.reason"),
                                       "message": headers.get("tidal.error.message")})
    if result["outputs"]:
        out = result["outputs"][0]["record"]
        source = _fetch(settings, out["source_topic"], out["source_partition"], out["source_offset"], timeout)
        if source is not None:
            result["input"] = {"record": orjson.loads(source.value()),
                               "position": [source.topic(), source.partition(), source.offset()],
                               "timestamp": source.timestamp()[1]}
            added = {k: v for k, v in out.items() if k not in result["input"]["record"]}
        else:
            added = out
        result["added"] = added
        result["model"] = {"name": out.get("model"), "version": out.get("model_version")}
        result["explanation"] = out.get("explanation")
    elif result["dead_letters"]:
        h = result["dead_letters"][0]["headers"]
        result["input"] = {"raw": result["dead_letters"][0]["value"],
                           "position": [h.get("tidal.source.topic"), int(h.get("tidal.source.partition", -1)),
                                        int(h.get("tidal.source.offset", -1))]}
    result["found"] = bool(result["outputs"] or result["dead_letters"])
    result["duplicates"] = max(0, len(result["outputs"]) - 1)
    return result
