"""Topic names and idempotent topic creation.

A pipeline named ``fraud`` reads ``fraud.events`` and writes ``fraud.predictions``; rejects
go to ``fraud.dlq``; ground truth arrives on ``fraud.labels``. The shared control topics
``tidal.models`` and ``tidal.alerts`` are compacted / retained like any other Kafka topic.

>>> PipelineTopics("fraud").all()
['fraud.events', 'fraud.predictions', 'fraud.dlq', 'fraud.labels']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from tidal.config import KafkaSettings

__all__ = ["PipelineTopics", "TopicSpec", "topic_spec", "ensure_topics", "MODELS_TOPIC", "ALERTS_TOPIC", "COMPACTED"]

MODELS_TOPIC = "tidal.models"
ALERTS_TOPIC = "tidal.alerts"
COMPACTED = {"cleanup.policy": "compact"}


@dataclass(frozen=True)
class PipelineTopics:
    """The default topic names of one pipeline."""

    pipeline: str

    @property
    def events(self) -> str:
        return f"{self.pipeline}.events"

    @property
    def predictions(self) -> str:
        return f"{self.pipeline}.predictions"

    @property
    def dlq(self) -> str:
        return f"{self.pipeline}.dlq"

    @property
    def labels(self) -> str:
        return f"{self.pipeline}.labels"

    def changelog(self, state: str) -> str:
        return f"{self.pipeline}.{state}.changelog"

    def all(self) -> list[str]:
        return [self.events, self.predictions, self.dlq, self.labels]


@dataclass(frozen=True)
class TopicSpec:
    """A topic to create: name, partitions, and topic-level config (compaction, compression)."""

    name: str
    partitions: int = 4
    config: Mapping[str, str] | None = None
    replication: int = 1


def topic_spec(name: str, partitions: int = 4) -> TopicSpec:
    """How tidal creates ``name``: ``tidal.models`` compacted with one partition (one ordered
    history per model), ``tidal.alerts`` with one partition, any other with ``partitions``."""
    if name == MODELS_TOPIC:
        return TopicSpec(name, 1, COMPACTED)
    if name == ALERTS_TOPIC:
        return TopicSpec(name, 1)
    return TopicSpec(name, partitions)


def ensure_topics(settings: KafkaSettings, specs: Iterable[TopicSpec | str], timeout: float = 15.0) -> list[str]:
    """Create the topics that do not exist yet; existing ones are left as they are.

    Returns the names that were created. Raises ``KafkaException`` on any other error.
    """
    specs = [topic_spec(s) if isinstance(s, str) else s for s in specs]
    if not specs:
        return []
    admin = AdminClient(settings.client_config({"log_level": 0}))
    new = [NewTopic(s.name, s.partitions, s.replication, config=dict(s.config or {})) for s in specs]
    created = []
    for name, future in admin.create_topics(new, request_timeout=timeout).items():
        # exception(), not result(): a raised "already exists" keeps this frame (and `admin`, with its
        # connections) alive in a reference cycle until the garbage collector runs
        exc = future.exception()
        if exc is None:
            created.append(name)
        elif not (isinstance(exc, KafkaException) and exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS):
            raise exc
    if created:  # metadata propagates asynchronously on real clusters
        _wait_visible(admin, created, timeout)
    return created


def _wait_visible(admin: AdminClient, names: list[str], timeout: float) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        topics = admin.list_topics(timeout=timeout).topics
        if all(n in topics and not topics[n].error for n in names):
            return
        time.sleep(0.05)
