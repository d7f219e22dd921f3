"""Reacting to drift: retrain on recent labelled data, then promote only a challenger that wins.

:class:`RetrainStep` runs after :class:`tidal.drift.DriftStep` in the monitor pipeline (after
the labels join). It keeps the last ``buffer`` labelled rows (features as a float matrix, in a
numpy ring) and, when the drift step marks a detection (``drift_concept``; ``drift_data``
too with ``on=("concept", "data")``; a series step's change point, ``change``, with
``on=("change",)``) or on :meth:`request_retrain`:

1. waits until ``min_rows`` labelled rows have arrived since the detection (or, with
   ``since="estimate"``, since where ADWIN's window after the detection says the change began:
   earlier, but ADWIN cuts at bucket boundaries, so that window often still holds old rows);
2. trains a challenger (``kind``: LightGBM, logistic, SGD, or a function) on the older part
   of those rows, at most ``max_rows``, and holds out the newest ``holdout`` share;
3. scores the held-out rows with the challenger and with the current champion (loaded from
   the registry), and registers and promotes the challenger only if its ``metric`` is better
   by ``margin``; promoting the champion deploys it to every worker following ``tidal.models``.

A challenger that loses is not registered; the step tries again after ``retry_rows`` more
rows, up to ``max_attempts`` times per detection. A new detection while waiting restarts the
wait from its own change estimate: the latest change is the one to learn. Each outcome is an event on
``tidal.alerts`` (type ``retrain``, outcome ``promoted``/``rejected``) and a count on
``tidal_retrain_total``. The version's lineage holds the topic/partition/offset ranges of
the rows it was trained and judged on and the detection that triggered it.

Training runs inside the worker, between two batches: size ``max_rows`` for your latency budget.

>>> import tempfile
>>> from tidal.registry import Registry
>>> rng = np.random.default_rng(0)
>>> X = rng.normal(size=(3000, 2)); old, new = (X[:, 0] > 0).astype(int), (X[:, 1] > 0).astype(int)
>>> registry = Registry(tempfile.mkdtemp())
>>> registry.promote("m", registry.register("m", fit_model("logistic", X, old), features=["a", "b"]).version).new_version
1
>>> step = RetrainStep(registry, "m", ["a", "b"], kind="logistic", min_rows=1000)
>>> step.request_retrain("the world changed")
>>> batch = Batch.from_rows([{"a": a, "b": b, "label": int(y)} for (a, b), y in zip(X.tolist(), new.tolist())])
>>> _ = step.process(batch)
>>> [(h["outcome"], h["version"], h["challenger"] > 0.95 > 0.6 > h["champion"]) for h in step.history]
[('promoted', 2, True)]
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from tidal.broker.topics import ALERTS_TOPIC
from tidal.drift.events import EventSink
from tidal.learn.train import evaluate, fit_model, higher_is_better, predict_scores
from tidal.models.artifact import category_codes, feature_matrix
from tidal.stream.batch import Batch
from tidal.stream.step import Step

__all__ = ["RetrainStep", "Trigger"]

log = logging.getLogger("tidal.learn")


@dataclass
class Trigger:
    """Why and from where to retrain: ``start`` is the first row (step-wide index) of the new regime."""

    reason: str
    start: int
    detected_at: int
    at: dict[str, Any]
    attempts: int = 0
    next_try: int = 0


class RetrainStep(Step):
    """Retrain on drift and promote a challenger only if it beats the champion; see the module docstring."""

    name = "retrain"

    def __init__(self, registry: Any, model: str, features: Sequence[str], *,
                 kind: str | Callable[[np.ndarray, np.ndarray], Any] = "lightgbm",
                 params: Mapping[str, Any] | None = None, categories: Mapping[str, Sequence[str]] | None = None,
                 label_field: str = "label", task: str = "binary", on: Sequence[str] = ("concept",),
                 min_rows: int = 2000, max_rows: int = 20_000, since: str = "detection", holdout: float = 0.25,
                 metric: str = "accuracy",
                 margin: float = 0.01, buffer: int = 50_000, max_attempts: int = 3, retry_rows: int = 1000,
                 seed: int = 7, pipeline: str = "", alerts_topic: str = ALERTS_TOPIC,
                 emit: Callable[[dict[str, Any]], None] | None = None) -> None:
        if not 0.0 < holdout < 1.0:
            raise ValueError("holdout must be a share in (0, 1)")
        self.registry = registry
        self.model = model
        self.features = list(features)
        self.kind = kind
        self.params = dict(params or {})
        self.categories = {k: list(v) for k, v in (categories or {}).items()}
        self._codes = category_codes(self.categories)
        self.label_field = label_field
        self.task = task
        self.on = tuple(on)
        if since not in ("detection", "estimate"):
            raise ValueError("since must be 'detection' or 'estimate'")
        self.since = since
        self.min_rows = min_rows
        self.max_rows = min(max_rows, buffer)
        self.holdout = holdout
        self.metric = metric
        self.margin = margin
        self.max_attempts = max_attempts
        self.retry_rows = retry_rows
        self.seed = seed
        self.pipeline = pipeline
        self.events = EventSink(alerts_topic, emit)
        self.size = buffer
        self._X = np.zeros((buffer, len(self.features)))
        self._y = np.zeros(buffer)
        self._part = np.zeros(buffer, np.int32)
        self._off = np.zeros(buffer, np.int64)
        self.topic = ""
        self.total = 0  # labelled rows seen
        self.pending: Trigger | None = None
        self.history: list[dict[str, Any]] = []
        self._counter: Any = None
        self._requested = False
        self._request_reason = "on demand"

    @property
    def side_outputs(self) -> tuple[str, ...]:  # type: ignore[override]
        return (self.events.topic,)

    def open(self, ctx: Any) -> None:
        from prometheus_client import Counter

        self.pipeline = self.pipeline or ctx.pipeline
        self.events.open(ctx)
        if ctx.registry is not None:
            self._counter = Counter("tidal_retrain", "Retraining outcomes (promoted, rejected, skipped).",
                                    ["pipeline", "model", "outcome"], registry=ctx.registry)

    def request_retrain(self, reason: str = "on demand") -> None:
        """Retrain on the most recent rows at the next batch (as if the change began ``min_rows`` ago)."""
        self._requested = True
        self._request_reason = reason

    # -- the step ------------------------------------------------------------------------------
    def process(self, batch: Batch) -> Batch:
        labels = batch.column(self.label_field)
        valid = labels != None if labels.dtype == object else ~np.isnan(labels.astype(np.float64))  # noqa: E711
        rows = np.flatnonzero(valid)
        base = self.total
        if len(rows):
            self._append(batch, rows, labels[rows])
        self._trigger(batch, rows, base)
        if self.pending is not None and self.total - self.pending.start >= self.min_rows \
                and self.total >= self.pending.next_try:
            self._retrain(self.pending)
        return batch

    def _append(self, batch: Batch, rows: np.ndarray, labels: np.ndarray) -> None:
        X = feature_matrix(batch.column, self.features, self._codes)[rows]
        y = labels.astype(np.float64)
        self.topic = self.topic or batch.topics[int(rows[0])]
        n = len(rows)
        if n > self.size:
            X, y, rows = X[-self.size:], y[-self.size:], rows[-self.size:]
            self.total += n - self.size
            n = self.size
        at = (self.total + np.arange(n)) % self.size
        self._X[at] = X
        self._y[at] = y
        self._part[at] = batch.partitions[rows]
        self._off[at] = batch.offsets[rows]
        self.total += n

    def _trigger(self, batch: Batch, rows: np.ndarray, base: int) -> None:
        if self._requested:
            self._requested = False
            self.pending = Trigger(self._request_reason, max(0, self.total - self.min_rows), self.total, {})
            return
        if not len(rows):
            return
        for kind, column in (("concept", "drift_concept"), ("data", "drift_data"), ("change", "change")):
            flags = batch.columns.get(column)
            if kind not in self.on or flags is None:
                continue
            hit = np.flatnonzero(flags[rows])
            if not len(hit):
                continue
            i = int(hit[0])
            row = int(rows[i])
            width = int(batch.columns["drift_width"][row]) if "drift_width" in batch.columns else -1
            detected = base + i
            start = detected - width if self.since == "estimate" and width > 0 else detected
            at = {"topic": batch.topics[row], "partition": int(batch.partitions[row]),
                  "offset": int(batch.offsets[row])}
            # A newer detection restarts the wait: the latest change is the one to learn.
            self.pending = Trigger(f"{kind} drift", max(0, start), detected, at)
            log.info("%s drift at row %d: retraining %s once %d rows since row %d have arrived", kind, detected,
                     self.model, self.min_rows, start)
            return

    # -- challenger vs champion ----------------------------------------------------------------
    def _retrain(self, trigger: Trigger) -> None:
        lo = max(trigger.start, self.total - self.max_rows)
        idx = np.arange(lo, self.total) % self.size
        X, y = self._X[idx], self._y[idx]
        cut = len(idx) - int(round(len(idx) * self.holdout))
        train, test = np.arange(cut), np.arange(cut, len(idx))
        trigger.attempts += 1
        trigger.next_try = self.total + self.retry_rows
        if self.task != "regression" and len(np.unique(y[train] > 0.5)) < 2:
            return self._decide(trigger, "skipped", None, None, None, idx, train, test, "one class only")
        cat_idx = [self.features.index(f) for f in self.categories if f in self.features]
        challenger = fit_model(self.kind, X[train], y[train], task=self.task, categorical_idx=cat_idx, seed=self.seed,
                               params=self.params)
        ours = evaluate(y[test], predict_scores(challenger, X[test], self.task), self.task).get(self.metric)
        theirs, champion = None, None
        try:
            champion = self.registry.load(f"models:/{self.model}@champion")
            cols = [self.features.index(f) for f in champion.card.features]
            theirs = evaluate(y[test], champion.predict(X[test][:, cols]), self.task,
                              champion.card.threshold).get(self.metric)
        except Exception as exc:  # noqa: BLE001 - no champion (or one that cannot score): the challenger competes alone
            log.warning("champion of %s unavailable for comparison: %s", self.model, exc)
        if ours is None:
            raise ValueError(f"metric {self.metric!r} is not computed for task {self.task!r}")
        if theirs is None:
            better = True
        elif higher_is_better(self.metric):
            better = ours >= theirs + self.margin
        else:
            better = ours <= theirs - self.margin
        self._decide(trigger, "promoted" if better else "rejected", challenger, ours, theirs, idx, train, test,
                     "", champion)

    def _ranges(self, idx: np.ndarray) -> dict[str, list[int]]:
        parts, offs = self._part[idx], self._off[idx]
        return {str(int(p)): [int(offs[parts == p].min()), int(offs[parts == p].max()) + 1]
                for p in np.unique(parts).tolist()}

    def _decide(self, trigger: Trigger, outcome: str, challenger: Any, ours: float | None, theirs: float | None,
                idx: np.ndarray, train: np.ndarray, test: np.ndarray, note: str = "", champion: Any = None) -> None:
        record: dict[str, Any] = {
            "outcome": outcome, "reason": trigger.reason, "attempt": trigger.attempts, "rows": int(self.total),
            "train_rows": len(train), "holdout_rows": len(test), "metric": self.metric, "challenger": ours,
            "champion": theirs, "champion_version": champion.version if champion is not None else None,
            "margin": self.margin, "time": time.time(), "note": note}
        if outcome == "promoted":
            lineage = {"topic": self.topic, "ranges": self._ranges(idx), "train_ranges": self._ranges(idx[train]),
                       "holdout_ranges": self._ranges(idx[test]),
                       "trigger": {"reason": trigger.reason, "at": trigger.at, "change_start_row": trigger.start,
                                   "detected_row": trigger.detected_at},
                       "parent": f"models:/{self.model}/{champion.version}" if champion is not None else None}
            metrics = {f"recent_{self.metric}": float(ours), "train_rows": float(len(train)),
                       "holdout_rows": float(len(test))}
            if theirs is not None:
                metrics[f"champion_recent_{self.metric}"] = float(theirs)
            mv = self.registry.register(self.model, model=challenger, features=self.features,
                                        categories=self.categories or None, task=self.task, metrics=metrics,
                                        lineage=lineage, params=self.params,
                                        tags={"trained_by": "tidal retrain", "trigger": trigger.reason})
            self.registry.promote(self.model, mv.version, reason=(
                f"retrained after {trigger.reason}: {self.metric} {ours:.4f} vs champion "
                f"{'n/a' if theirs is None else f'{theirs:.4f}'} on the last {len(test)} labelled events"))
            record["version"] = mv.version
            self.pending = None
        elif trigger.attempts >= self.max_attempts:
            self.pending = None
        self.history.append(record)
        if self._counter is not None:
            self._counter.labels(self.pipeline, self.model, outcome).inc()
        log.warning("retrain %s: %s (%s %s vs champion %s)", self.model, outcome, self.metric, ours, theirs)
        if outcome != "skipped":
            vs = "n/a" if theirs is None else f"{theirs:.4f}"
            self.events.send({
                "type": "retrain", "rule": f"retrain:{self.pipeline}:{self.model}", "state": "resolved",
                "severity": "info", "pipeline": self.pipeline, "model": self.model, "outcome": outcome,
                "version": record.get("version"), "metric": self.metric, "value": ours, "champion_value": theirs,
                "threshold": self.margin, "window": {"train_rows": len(train), "holdout_rows": len(test)},
                "time": record["time"],
                "message": (f"{self.model}: challenger {self.metric} {ours:.4f} vs champion {vs} on the last "
                            f"{len(test)} labelled events: {outcome}"
                            + (f" as v{record['version']}" if outcome == "promoted" else ""))})
