"""Follow a model's deployments on ``tidal.models`` and keep its versions loaded and warm.

A background thread reads the compacted ``tidal.models`` topic from the beginning, keeps
the records keyed by one model name, loads each new target (checksum verified, one warm-up
prediction), and only then publishes the new :class:`Routing`. Readers take one snapshot per
micro-batch, so a swap always falls between two batches and never stalls one.

Before loading anything it applies :mod:`tidal.models.trust`: signature (with
``TIDAL_DEPLOY_KEY``), ``seq`` newer than the current deployment, the version resolved in
its own registry (or a path inside the trusted roots), the file's checksum before it is
read. A record refused or failing to load is logged and kept in
:attr:`DeploymentFollower.refused` (the scoring step alerts on it); the current deployment keeps serving. Versions no deployment names any
more are unloaded, except the ``keep`` most recent (swapping back to them is instant).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from tidal.broker.topics import MODELS_TOPIC
from tidal.config import KafkaSettings
from tidal.models.artifact import LoadedModel, load_model
from tidal.models.deployment import Deployment, Target
from tidal.models.trust import HEADER, UntrustedDeployment, check_inside, deploy_key, trusted_roots, verify

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

    def __init__(self, settings: KafkaSettings, model: str, topic: str = MODELS_TOPIC, registry: Any = None,
                 keep: int = 3) -> None:
        self.settings = settings
        self.model = model
        self.topic = topic
        self.registry = registry  # resolves versions (and their checksums) when given
        self.keep = keep
        self.routing: Routing | None = None
        self.errors: list[str] = []
        self.refused: list[str] = []
        self._cache: OrderedDict[str, LoadedModel] = OrderedDict()  # by sha256, least recently used first
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
                               f"promote a version with `tidal models promote {self.model} VERSION`, or, after the "
                               f"embedded broker restarted (its topics are in memory), `tidal models publish {self.model}`")
        assert self.routing is not None
        return self.routing

    def _where(self, target: Target) -> str:
        """The folder to load ``target`` from: the registry's own (its checksum must match), or
        the record's path if inside the trusted roots."""
        if self.registry is not None:
            mv = self.registry.resolve(f"{self.model}/{int(target.version)}")
            if mv.sha256 != target.sha256:
                raise UntrustedDeployment(f"v{target.version}: checksum {target.sha256[:12]} is not the registry's "
                                          f"{mv.sha256[:12]}")
            return str(mv.path)
        return str(check_inside(target.path, trusted_roots()))

    def _load(self, target: Target) -> LoadedModel:
        model = self._cache.get(target.sha256)
        if model is None:
            model = load_model(self._where(target), sha256=target.sha256)  # checked before it is read
            model.predict(np.zeros((1, len(model.card.features))))  # warm up before taking traffic
            self._cache[target.sha256] = model
        self._cache.move_to_end(target.sha256)
        return model

    def check(self, deployment: Deployment, value: bytes | None = None, headers: Any = None) -> None:
        """Refuse (:class:`UntrustedDeployment`) a record that is unsigned or forged (with a key
        set) or not newer than the current deployment."""
        key = deploy_key()
        if key is not None and not verify(value if value is not None else deployment.to_json(), headers, key):
            raise UntrustedDeployment(f"deployment {deployment.seq}: missing or bad {HEADER} "
                                      f"(signed with another key, or not signed)")
        current = self.routing.deployment if self.routing is not None else None
        if current is not None and deployment.seq <= current.seq and deployment.time <= current.time:
            raise UntrustedDeployment(f"deployment {deployment.seq} is not newer than the current {current.seq}")

    def apply(self, deployment: Deployment, value: bytes | None = None, headers: Any = None) -> Routing:
        """Check and load the deployment's versions, then switch to it (also used in tests)."""
        self.check(deployment, value, headers)
        primary = self._load(deployment.primary)
        secondary = self._load(deployment.secondary) if deployment.secondary else None
        self.routing = Routing(deployment, primary, secondary, time.time())
        in_use = {deployment.primary.sha256} | ({deployment.secondary.sha256} if deployment.secondary else set())
        for sha in [s for s in self._cache if s not in in_use][:max(0, len(self._cache) - max(self.keep, len(in_use)))]:
            del self._cache[sha]  # least recently used first; never one being served
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
                        latest = m  # only the newest record of a burst matters
                if latest is not None:
                    try:
                        self.apply(Deployment.from_json(latest.value()), latest.value(), latest.headers())
                    except Exception as exc:  # noqa: BLE001 - a bad deployment must not stop following
                        why = f"{type(exc).__name__}: {exc}"
                        self.errors.append(why)
                        self.refused.append(why)
                        log.error("model %s: deployment not applied, keeping the current one: %s", self.model, exc)
        finally:
            consumer.close()
