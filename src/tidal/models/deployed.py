"""The deployed-model step: score with whatever ``tidal.models`` says, swapping without restarts.

``DeployedScoreStep("fraud")`` follows the deployments of model ``fraud`` (see
:mod:`tidal.registry.deployment`) and scores each micro-batch with the routing it had when
the batch started:

- ``single``: the primary version scores everything;
- ``canary`` / ``ab``: rows whose Kafka key hashes below ``share`` go to the secondary;
  the same key always lands on the same version;
- ``shadow``: the primary decides; the secondary's score rides along as ``shadow_score``.

Every output names the version that scored it. A canary that raises or returns non-finite
scores never costs an event — its rows are scored by the primary instead — and after
``max_canary_failures`` failing batches in a row it is rolled back automatically: a
``single`` deployment of the primary is published (through the registry when one is given —
a :class:`~tidal.registry.Registry` or its folder — so the registry's history records it) and
an alert naming the reason goes to ``tidal.alerts``.
"""

from __future__ import annotations

import logging
import zlib
from typing import Any

import numpy as np

from tidal.broker.topics import ALERTS_TOPIC, MODELS_TOPIC
from tidal.config import KafkaSettings
from tidal.models.artifact import LoadedModel
from tidal.models.deployment import Deployment
from tidal.models.follower import DeploymentFollower, Routing
from tidal.models.metrics import ScoreMetrics
from tidal.models.trust import sign_headers
from tidal.stream.batch import Batch
from tidal.stream.context import StepContext
from tidal.stream.step import Step

__all__ = ["DeployedScoreStep", "key_buckets"]

log = logging.getLogger("tidal.models")


def key_buckets(keys: list[bytes | None], offsets: np.ndarray) -> np.ndarray:
    """A stable number in [0, 1) per row from its Kafka key (CRC-32); keyless rows use the offset."""
    crc = zlib.crc32
    h = np.fromiter((crc(k) if k is not None else crc(b"%d" % o) for k, o in zip(keys, offsets.tolist())),
                    np.uint32, len(keys))
    return (h % 10_000) / 10_000


def _score(model: LoadedModel, batch: Batch, rows: np.ndarray | None = None) -> np.ndarray:
    X = model.features_matrix(batch.column)
    if rows is not None:
        X = X[rows]
    return np.asarray(model.predict(X), dtype=np.float64)


ONE_SHOT_TTL_S = 900.0  # a rollback or a refused record is news for 15 minutes (`tidal status`, dashboard)


class DeployedScoreStep(Step):
    """Score with the live deployment of ``model``; see the module docstring."""

    name = "score"
    error_reason = "model_error"

    def __init__(self, model: str, settings: KafkaSettings | None = None, topic: str = MODELS_TOPIC,
                 wait_s: float = 30.0, max_canary_failures: int = 3, registry: Any = None,
                 alerts_topic: str = ALERTS_TOPIC) -> None:
        self.model = model
        self.settings = settings
        self.topic = topic
        self.wait_s = wait_s
        self.max_canary_failures = max_canary_failures
        if isinstance(registry, (str, bytes)) or hasattr(registry, "__fspath__"):
            raise TypeError("registry: pass a tidal.registry.Registry (YAML `deployed: {registry: path}` opens one)")
        self.registry = registry  # records rollbacks in its history (and publishes them) when given
        self.alerts_topic = alerts_topic
        self.side_outputs = (topic, alerts_topic)  # rollbacks (without a registry) and their alerts
        self.pipeline = ""
        self.follower: DeploymentFollower | None = None
        self._failures = 0
        self._metrics: ScoreMetrics | None = None
        self._rolled_back: set[tuple[int, float]] = set()

    def open(self, ctx: StepContext) -> None:
        self.settings = self.settings or ctx.settings
        self.pipeline = ctx.pipeline
        self._metrics = ScoreMetrics.of(ctx.registry, ctx.pipeline)
        self.follower = DeploymentFollower(self.settings, self.model, self.topic, registry=self.registry).start()
        self._refused_seen = 0

    def close(self) -> None:
        if self.follower is not None:
            self.follower.stop()

    def process(self, batch: Batch) -> Batch:
        if self.follower is None:
            raise RuntimeError("DeployedScoreStep used outside a worker: it follows tidal.models on a cluster")
        self._alert_refused()
        routing = self.follower.routing or self.follower.wait_ready(self.wait_s)  # one snapshot per batch
        d = routing.deployment
        n = len(batch)
        scores = _score(routing.primary, batch) if d.mode in ("single", "shadow") else np.empty(n)
        versions = np.full(n, routing.primary.version, dtype=object)
        thresholds = np.full(n, routing.primary.card.threshold)
        if d.mode in ("canary", "ab"):
            to_secondary = key_buckets(batch.keys, batch.offsets) < d.share
            scores[~to_secondary] = _score(routing.primary, batch, ~to_secondary)
            if to_secondary.any():
                secondary = self._try_secondary(routing, batch, to_secondary)
                if secondary is None:  # failed: the primary scores these rows too
                    scores[to_secondary] = _score(routing.primary, batch, to_secondary)
                else:
                    scores[to_secondary] = secondary
                    versions[to_secondary] = routing.secondary.version
                    thresholds[to_secondary] = routing.secondary.card.threshold
        elif d.mode == "shadow":
            shadow = self._try_secondary(routing, batch, None)
            batch.with_column("shadow_score", shadow if shadow is not None else np.full(n, np.nan))
            batch.with_column("shadow_version", np.full(n, routing.secondary.version, dtype=object))
        batch.with_column("score", scores)
        if routing.primary.card.task == "binary":
            batch.with_column("decision", scores >= thresholds)
        batch.with_column("model", np.full(n, self.model, dtype=object))
        batch.with_column("model_version", versions)
        if self._metrics is not None:
            self._metrics.observe(batch)
        return batch

    def _alert_refused(self) -> None:
        """An alert for each deployment record the follower refused since the last batch."""
        refused = self.follower.refused
        for why in refused[self._refused_seen:]:
            self.ctx.alert("deployment_refused", f"deployment_refused:{self.pipeline}:{self.model}", "firing",
                           f"deployment of {self.model} refused: {why}", severity="critical", model=self.model,
                           reason=why, topic=self.alerts_topic, ttl_s=ONE_SHOT_TTL_S)
        self._refused_seen = len(refused)

    # -- canary health ---------------------------------------------------------------------
    def _try_secondary(self, routing: Routing, batch: Batch, rows: np.ndarray | None) -> np.ndarray | None:
        try:
            out = _score(routing.secondary, batch, rows)
            bad = ~np.isfinite(out)
            if routing.secondary.card.task == "binary":
                bad |= (out < 0) | (out > 1)
            if bad.any():
                raise ValueError(f"{int(bad.sum())} of {len(out)} scores non-finite or outside [0, 1]")
        except Exception as exc:  # noqa: BLE001 - a failing canary must not fail the batch
            self._failures += 1
            reason = f"{type(exc).__name__}: {exc}"
            log.warning("model %s v%s failed on a batch (%d in a row): %s", self.model,
                        routing.secondary.version, self._failures, reason)
            if self._failures >= self.max_canary_failures:
                self._roll_back(routing.deployment, reason)
            return None
        self._failures = 0
        return out

    def _roll_back(self, d: Deployment, why: str) -> None:
        if (d.seq, d.time) in self._rolled_back:  # already asked; the follower has not applied it yet
            return
        self._rolled_back.add((d.seq, d.time))
        reason = (f"auto-rollback: {d.mode} v{d.secondary.version} failed {self._failures} batches in a row "
                  f"({why}); back to v{d.primary.version} only")
        if self.registry is not None:  # recorded in the registry's history (published if it has a publisher)
            back = self.registry.deploy(self.model, "single", int(d.primary.version), reason=reason)
            published = getattr(self.registry, "publisher", None) is not None
        else:
            back, published = Deployment(self.model, "single", d.primary, seq=d.seq + 1, reason=reason), False
        if not published:
            value = back.to_json()
            self.ctx.emit(self.topic, value, self.model, headers=sign_headers(value))
        self.ctx.alert("model_rollback", f"model_rollback:{self.pipeline}:{self.model}", "firing", reason,
                       severity="critical", model=self.model, version=d.secondary.version,
                       restored_version=d.primary.version, reason=reason, topic=self.alerts_topic,
                       ttl_s=ONE_SHOT_TTL_S)
        self._failures = 0
        log.error(reason)
