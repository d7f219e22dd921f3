"""Publishing deployments to Kafka: the compacted ``tidal.models`` topic, keyed by model name.

The latest record per key is the whole serving state of that model, so a worker that starts
late reads the topic from the beginning and knows what to load. The registry calls its
publisher while it still holds its write lock, so records reach the topic in ``seq`` order.
"""

from __future__ import annotations

from typing import Any

from tidal.broker.produce import make_producer
from tidal.broker.topics import COMPACTED, MODELS_TOPIC, TopicSpec, ensure_topics
from tidal.config import KafkaSettings
from tidal.models.trust import sign_headers
from tidal.registry.deployment import Deployment

__all__ = ["KafkaPublisher", "PublishError"]


class PublishError(RuntimeError):
    """The change is recorded in the registry, but the broker did not acknowledge its deployment."""


class KafkaPublisher:
    """``publisher(deployment)``: produce it to ``topic`` and wait for the broker's acknowledgement.

    The topic is created (compacted, one partition) on first use. Raises :class:`PublishError`
    if the record was not acknowledged within ``timeout`` seconds.
    """

    def __init__(self, settings: KafkaSettings, topic: str = MODELS_TOPIC, timeout: float = 15.0) -> None:
        self.settings = settings
        self.topic = topic
        self.timeout = timeout
        self._producer: Any = None

    def __repr__(self) -> str:
        return f"KafkaPublisher({self.settings!r}, topic={self.topic!r})"

    def _ensure(self) -> Any:
        if self._producer is None:
            ensure_topics(self.settings, [TopicSpec(self.topic, 1, COMPACTED)], timeout=self.timeout)
            self._producer = make_producer(self.settings, {
                "acks": "all", "enable.idempotence": True, "linger.ms": 0, "log_level": 3,
                "message.timeout.ms": int(self.timeout * 1000)})
        return self._producer

    def __call__(self, deployment: Deployment) -> None:
        try:
            producer = self._ensure()
        except Exception as exc:  # KafkaException from topic creation
            raise PublishError(f"cannot create {self.topic} on {self.settings.bootstrap}: {exc}") from exc
        errors: list[Any] = []
        value = deployment.to_json()
        producer.produce(self.topic, key=deployment.model.encode(), value=value, headers=sign_headers(value),
                         on_delivery=lambda err, msg: errors.append(err) if err else None)
        left = producer.flush(self.timeout)
        if left or errors:
            why = errors[0].str() if errors else f"no acknowledgement within {self.timeout:.0f}s"
            raise PublishError(f"{self.topic} on {self.settings.bootstrap}: deployment {deployment.seq} of "
                               f"{deployment.model!r} not acknowledged ({why})")

    def close(self) -> None:
        """Flush and drop the producer (a later call makes a new one)."""
        if self._producer is not None:
            self._producer.flush(self.timeout)
            self._producer = None
