"""``tidal status``: the cluster, the consumer groups' lag, the deployed models, active alerts.

End offsets come from a fetch response's high watermark (read to partition end), which is
authoritative on every broker; ``ListOffsets(latest)`` alone under-reports on the embedded
broker (see README, known quirks).
"""

from __future__ import annotations

import time
from typing import Any

from confluent_kafka import OFFSET_END, Consumer, ConsumerGroupTopicPartitions, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient

from tidal.broker.skipped import loads_or_skip
from tidal.broker.topics import ALERTS_TOPIC, MODELS_TOPIC
from tidal.broker.read import read_topic
from tidal.config import KafkaSettings

__all__ = ["end_offsets", "cluster_status"]


def end_offsets(settings: KafkaSettings, tps: list[TopicPartition], timeout: float = 10.0) -> dict[tuple[str, int], int]:
    """High watermark per (topic, partition), taken from real fetch responses."""
    tps = list({(tp.topic, tp.partition): tp for tp in tps}.values())  # groups sharing a topic: ask once
    if not tps:
        return {}
    c = Consumer(settings.client_config({"group.id": "tidal.status", "enable.auto.commit": False,
                                         "enable.partition.eof": True, "log_level": 3}))
    try:
        c.assign([TopicPartition(tp.topic, tp.partition, OFFSET_END) for tp in tps])
        waiting = {(tp.topic, tp.partition) for tp in tps}
        deadline = time.monotonic() + timeout
        while waiting and time.monotonic() < deadline:
            for m in c.consume(1000, 0.2):
                if m.error() is None or m.error().code() == KafkaError._PARTITION_EOF:
                    waiting.discard((m.topic(), m.partition()))
        out = {}
        for tp in tps:
            _low, high = c.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), cached=True)
            if high < 0:
                _low, high = c.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=timeout)
            out[(tp.topic, tp.partition)] = high
        return out
    finally:
        c.close()


# Groups of tidal's own readers (they assign partitions, never form a group that processes):
# hidden unless asked for, like any group with neither members nor committed offsets.
READER_GROUPS = ("tidal.status", "tidal.trace", "tidal.restore.", "tidal.follow.", "tidal.table.", "tidal.tail.",
                 "tidal.train", "tidal.replay", "tidal.demo.")


def cluster_status(settings: KafkaSettings, timeout: float = 10.0, pipeline: str | None = None,
                   all_groups: bool = False) -> dict[str, Any]:
    """Everything ``tidal status`` shows, as plain data.

    ``pipeline``: only its topics (``PIPELINE.*``), its groups (``tidal.PIPELINE`` and those
    reading its topics) and its alerts. Reader groups and groups with neither members nor
    committed offsets are left out (counted in ``hidden_groups``) unless ``all_groups``.
    An alert is active while firing and, for one-shot alerts (``ttl_s``), for that long after it."""
    t0 = time.monotonic()
    admin = AdminClient(settings.client_config({"log_level": 0}))
    md = admin.list_topics(timeout=timeout)
    status: dict[str, Any] = {
        "bootstrap": settings.bootstrap, "reachable": True, "brokers": len(md.brokers),
        "metadata_ms": round((time.monotonic() - t0) * 1000, 1), "cluster_id": md.cluster_id,
        "topics": {t: len(m.partitions) for t, m in sorted(md.topics.items()) if not t.startswith("__")},
        "groups": [], "models": {}, "active_alerts": [], "hidden_groups": 0,
    }
    if pipeline:
        status["pipeline"] = pipeline
        status["topics"] = {t: n for t, n in status["topics"].items() if t.startswith(f"{pipeline}.")}
    groups = admin.list_consumer_groups(request_timeout=timeout).result()
    names = sorted(g.group_id for g in groups.valid if not g.group_id.startswith("tidal.status"))
    described = {}
    if names:
        for gid, future in admin.describe_consumer_groups(names, request_timeout=timeout).items():
            try:
                described[gid] = future.result()
            except Exception:  # noqa: BLE001 - a group that vanished meanwhile
                pass
    committed: dict[str, list[TopicPartition]] = {}
    # One request per group (the API takes one group at a time), all in flight at once: a
    # cluster with hundreds of groups answers in one round trip's time, not hundreds.
    pending = [(gid, f) for gid in names for _g, f in admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(gid)], request_timeout=timeout).items()]
    for gid, future in pending:
        committed[gid] = [tp for tp in future.result().topic_partitions if tp.offset >= 0]
    ends = end_offsets(settings, [tp for tps in committed.values() for tp in tps], timeout)
    for gid in names:
        ours = not pipeline or gid == f"tidal.{pipeline}" or any(
            tp.topic.startswith(f"{pipeline}.") for tp in committed.get(gid, []))
        d = described.get(gid)
        throwaway = gid.startswith(READER_GROUPS) or (not committed.get(gid) and not (d is not None and d.members))
        if not ours:
            continue
        if throwaway and not all_groups:
            status["hidden_groups"] += 1
            continue
        parts = []
        for tp in sorted(committed.get(gid, []), key=lambda tp: (tp.topic, tp.partition)):
            end = ends.get((tp.topic, tp.partition), -1)
            parts.append({"topic": tp.topic, "partition": tp.partition, "committed": tp.offset, "end": end,
                          "lag": max(0, end - tp.offset) if end >= 0 else None})
        status["groups"].append({
            "group": gid, "state": d.state.name.lower() if d is not None else "unknown",
            "members": len(d.members) if d is not None else 0, "partitions": parts,
            "lag": sum(p["lag"] or 0 for p in parts)})
    if MODELS_TOPIC in md.topics:
        for m in read_topic(settings, MODELS_TOPIC, timeout):
            if m.key() and m.value():
                record = loads_or_skip(m.value(), MODELS_TOPIC)
                if record is not None:
                    status["models"][m.key().decode("utf-8", "replace")] = record
    if ALERTS_TOPIC in md.topics:
        active: dict[str, dict] = {}
        now = time.time()
        for m in read_topic(settings, ALERTS_TOPIC, timeout):
            event = loads_or_skip(m.value(), ALERTS_TOPIC)
            if event is None or (pipeline and event.get("pipeline") not in (pipeline, None)):
                continue
            key = str(event.get("rule") or event.get("type", "?"))
            if event.get("state") == "resolved":
                active.pop(key, None)
            else:
                active[key] = event
        status["active_alerts"] = [a for a in active.values() if not _expired(a, now)][-20:]
    return status


def _expired(alert: dict[str, Any], now: float) -> bool:
    """A one-shot alert (``ttl_s``: a rollback, a refused deployment) is active only that long."""
    ttl = alert.get("ttl_s")
    try:
        return ttl is not None and float(alert.get("time", 0)) + float(ttl) < now
    except (TypeError, ValueError):
        return False
