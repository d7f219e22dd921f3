"""Follow a model's deployments on ``tidal.models`` and keep its versions loaded and warm.

A background thread reads the compacted ``tidal.models`` topic from the beginning, keeps
the records keyed by one model name, loads each new target (checksum verified, one warm-up
prediction), and only then publishes the new :class:`Routing`. Readers take one snapshot per
micro-batch, so a swap always falls between two batches and never stalls one.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from tidal.broker.topics import MODELS_TOPIC
from tidal.config import KafkaSettings
from tidal.models.artifact import LoadedModel, load_model
from tidal.models.deployment import Deployment, Target

__all__ = ["Routing", "DeploymentFollower"]

log = logging.getLogger("tidal.models")


@dataclass(frozen=True)
class Routing:
    """A deployment with its versions loaded: what one micro-batch is scored with."""

    deployment: Deployment
    primary: LoadedModel
    secondary: LoadedModel | None
    applied_at: float


class DeploymentFollower:
    """Keep :attr:`routing` in step with the latest deployment of ``model`` on ``topic``."""

    def __init__(self, settings: KafkaSettings, model: str, topic: str = MODELS_TOPIC) -> None:
        self.settings = settings
        self.model = model
        self.topic = topic
        self.routing: Routing | None = None
        self.errors: list[str] = []
        self._cache: dict[str, LoadedModel] = {}  # by sha256: swapping back is instant
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "DeploymentFollower":
        from tidal.broker.topics import COMPACTED, TopicSpec, ensure_topics

        ensure_topics(self.settings, [TopicSpec(self.topic, 1, COMPACTED)])
        self._thread = threading.Thread(target=self._run, name=f"tidal-follow-{self.model}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def wait_ready(self, timeout: float) -> Routing:
        """Block until a deployment of the model is loaded; raise if none arrives in time."""
        if not self._ready.wait(timeout):
            detail = f" (errors: {self.errors[-1]})" if self.errors else ""
            raise TimeoutError(f"no deployment of model {self.model!r} on {self.topic} within {timeout:.0f}s{detail}; "
                               f"promote a version with `tidal models promote {self.model} VERSION`")
        assert self.routing is not None
        return self.routing

    def _load(self, target: Target) -> LoadedModel:
        model = self._cache.get(target.sha256)
        if model is None:
            model = load_model(target.path)
            if model.card.sha256 != target.sha256:
                raise ValueError(f"{target.path}: artifact checksum {model.card.sha256[:12]} is not the deployed "
                                 f"{target.sha256[:12]}")
            model.predict(np.zeros((1, len(model.card.features))))  # warm up before taking traffic
            self._cache[target.sha256] = model
        return model

    def apply(self, deployment: Deployment) -> Routing:
        """Load the deployment's versions, then switch to it (also used directly in tests)."""
        primary = self._load(deployment.primary)
        secondary = self._load(deployment.secondary) if deployment.secondary else None
        self.routing = Routing(deployment, primary, secondary, time.time())
        self._ready.set()
        log.info("model %s now %s v%s%s (%s)", self.model, deployment.mode, deployment.primary.version,
                 f" + v{deployment.secondary.version} at {deployment.share:.0%}" if deployment.secondary else "",
                 deployment.reason)
        return self.routing

    def _run(self) -> None:
        conf = self.settings.client_config({"group.id": f"tidal.follow.{self.model}", "enable.auto.commit": False,
                                            "log_level": 3})
        consumer = Consumer(conf)
        try:
            parts = consumer.list_topics(self.topic, timeout=10).topics[self.topic].partitions
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in parts])
            key = self.model.encode()
            while not self._stop.is_set():
                latest = None
                for m in consumer.consume(100, 0.1):
                    if m.error():
                        if m.error().code() != KafkaError._PARTITION_EOF:
                            self.errors.append(m.error().str())
                        continue
                    if m.key() == key and m.value():
                        latest = m.value()  # only the newest record of a burst matters
                if latest is not None:
                    try:
                        self.apply(Deployment.from_json(latest))
                    except Exception as exc:  # noqa: BLE001 - a bad deployment must not stop following
                        self.errors.append(f"{type(exc).__name__}: {exc}")
                        log.error("model %s: deployment not applied, keeping the current one: %s", self.model, exc)
        finally:
            consumer.close()
