"""Online learning from the joined stream: test-then-train, and new registry versions on a schedule.

:class:`OnlineLearnStep` reads labelled records (``<pipeline>.joined``: features + ``label``)
and, for each micro-batch, first predicts and then learns — River's prequential protocol, so
the accuracy it reports is the one ``river.evaluate.progressive_val_score`` reports on the
same events in the same order:

- River models, ``mode="one"``: ``predict_one`` then ``learn_one``, row by row (River's
  protocol is per row by nature); ``mode="many"``: ``predict_many``/``learn_many`` on chunks
  of ``chunk_size`` rows (needs pandas; mini-batch updates, not identical to the per-row
  protocol); ``mode="auto"`` (default) takes ``many`` where the model has ``learn_many`` and
  pandas is installed, else ``one``.
- scikit-learn models with ``partial_fit``: one ``predict`` and one ``partial_fit`` per
  micro-batch on the feature matrix; rows before the first fit are not scored.

After the micro-batch that completes another ``publish_every`` labelled events, or
``publish_every_s`` seconds, on :meth:`request_publish` (``tidal learn`` maps SIGUSR1 to it) and
when the worker stops (if it learned anything since), the model becomes a new version in the
registry — with its prequential metrics and the topic/partition/offset ranges it learned
from — and, with ``promote=True``, the champion
(which deploys it to the workers that follow ``tidal.models``). Progress snapshots go to
``report_topic`` (``<pipeline>.learning``) every ``report_every_s`` and at the end.

The step adds ``learn_prediction`` and ``learn_error`` (1.0 for a mistake, the absolute
error for regression) to the batch, for :class:`tidal.drift.DriftStep` with
``error_field="learn_error"``; they are written out only with ``output=True``.

>>> from river import linear_model
>>> from tidal.stream.batch import Batch
>>> step = OnlineLearnStep(linear_model.LogisticRegression(), ["x"], mode="one")
>>> rows = [{"x": float(i % 7) - 3.0, "label": i % 7 > 3} for i in range(700)]
>>> _ = step.process(Batch.from_rows(rows))
>>> step.events, round(step.accuracy, 3) > 0.9
(700, True)
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import orjson

from tidal.models.artifact import category_codes
from tidal.models.errors import ArtifactError
from tidal.models.runtimes import ModelRuntime, runtime_for, runtime_of
from tidal.stream.batch import Batch
from tidal.stream.step import Step

__all__ = ["OnlineLearnStep", "DiscardStep", "learn_pipeline", "model_flavor", "resume_model"]

log = logging.getLogger("tidal.learn")


def _online_runtime(model: Any) -> ModelRuntime:
    try:
        runtime = runtime_of(model)
    except ArtifactError:
        runtime = None
    if runtime is None or not runtime.can_learn(model):
        raise TypeError(f"{type(model).__name__} cannot learn online (River models and estimators with "
                        "partial_fit can)")
    return runtime


def model_flavor(model: Any) -> str:
    """The flavor of a model that learns online: ``river`` for River estimators, ``sklearn`` for ``partial_fit``."""
    return _online_runtime(model).flavor


def resume_model(registry: Any, name: str, alias: str = "champion") -> Any | None:
    """The model object of ``name@alias`` (else its latest version) to keep learning from, or None.

    A restarted learner resumes from the last version it published; what it learned after that
    is learned again only if those events are re-read (the worker commits as it goes, so they are not).
    """
    from tidal.registry import NotFound

    for ref in (f"models:/{name}@{alias}", f"models:/{name}/latest"):
        try:
            loaded = registry.load(ref)
        except NotFound:
            continue
        if runtime_for(loaded.card.flavor).online:
            return loaded.model
    return None


def _valid(values: np.ndarray) -> np.ndarray:
    if values.dtype == object:
        return values != None  # noqa: E711 - elementwise
    if values.dtype.kind == "f":
        return ~np.isnan(values)
    return np.ones(len(values), bool)


class DiscardStep(Step):
    """Drop every row: the worker writes nothing and commits (ends a pipeline that only learns)."""

    name = "discard"

    def process(self, batch: Batch) -> Batch:
        return batch.select(np.zeros(len(batch), bool))


class OnlineLearnStep(Step):
    """Learn ``model`` from labelled batches, test-then-train; see the module docstring."""

    name = "learn"

    def __init__(self, model: Any, features: Sequence[str], *, model_name: str = "online", label_field: str = "label",
                 task: str = "binary", mode: str = "auto", chunk_size: int = 256, classes: Sequence[Any] | None = None,
                 categories: Mapping[str, Sequence[str]] | None = None, registry: Any = None,
                 publish_every: int | None = 10_000, publish_every_s: float | None = None, promote: bool = True,
                 publish_initial: bool = False, publish_on_close: bool = True, window: int = 1000,
                 output: bool = False, report_topic: str | None = None, report_every_s: float = 5.0,
                 emit: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.model = model
        runtime = _online_runtime(model)
        self.flavor = runtime.flavor
        self.features = list(features)
        self.model_name = model_name
        self.label_field = label_field
        if task not in ("binary", "multiclass", "regression"):
            raise ValueError(f"task must be binary, multiclass or regression, not {task!r}")
        self.task = task
        if mode not in ("auto", "one", "many"):
            raise ValueError(f"mode must be auto, one or many, not {mode!r}")
        self.chunk_size = max(1, chunk_size)
        self.classes = np.asarray(classes) if classes is not None else (np.array([0, 1]) if task == "binary" else None)
        self.categories = {k: list(v) for k, v in (categories or {}).items()}
        self._codes = category_codes(self.categories)
        self.learner = runtime.learner(model, self.features, task=task, mode=mode, chunk_size=self.chunk_size,
                                       classes=self.classes, codes=self._codes)
        self.mode = self.learner.mode
        self.registry = registry
        self.publish_every = publish_every
        self.publish_every_s = publish_every_s
        self.promote = promote
        self.publish_initial = publish_initial
        self.publish_on_close = publish_on_close
        self.window = window
        self.output = output
        self.report_topic = report_topic
        self.report_every_s = report_every_s
        self.emit = emit
        # running state
        self.events = 0
        self.scored = 0
        self.correct = 0
        self.abs_error = 0.0
        self._recent = np.zeros(max(1, window))  # ring of the last `window` errors
        self._recent_n = 0
        self._pos = 0
        self.ranges: dict[str, dict[str, list[int]]] = {}  # topic → partition → [first, last + 1]
        self.versions: list[Any] = []
        self._published_at_events = -1
        self._published_at = time.monotonic()
        self._publish_requested = threading.Event()
        self._types: dict[str, str] | None = None  # the registered signature, from the first batch
        self._reported = 0.0
        self._metrics: dict[str, Any] = {}
        self.pipeline = ""

    # -- metrics -------------------------------------------------------------------------------
    @property
    def accuracy(self) -> float:
        """Prequential accuracy over every scored event (classification)."""
        return self.correct / self.scored if self.scored else float("nan")

    @property
    def mae(self) -> float:
        return self.abs_error / self.scored if self.scored else float("nan")

    @property
    def rolling(self) -> float:
        """Accuracy (MAE for regression) over the last ``window`` scored events."""
        k = min(self._recent_n, len(self._recent))
        if not k:
            return float("nan")
        mean_error = float(self._recent[:k].mean())
        return mean_error if self.task == "regression" else 1.0 - mean_error

    def stats(self) -> dict[str, Any]:
        out = {"model": self.model_name, "events": self.events, "scored": self.scored, "mode": self.mode,
               "window": self.window, "versions_published": len(self.versions),
               "version": self.versions[-1].version if self.versions else None, "ranges": self.ranges,
               "time": time.time()}
        if self.task == "regression":
            out.update({"mae": self.mae, "rolling_mae": self.rolling})
        else:
            out.update({"correct": self.correct, "accuracy": self.accuracy, "rolling_accuracy": self.rolling})
        return out

    # -- worker hooks ------------------------------------------------------------------------
    @property
    def side_outputs(self) -> tuple[str, ...]:  # type: ignore[override]
        return (self.report_topic,) if self.report_topic else ()

    def open(self, ctx: Any) -> None:
        self.pipeline = ctx.pipeline
        if ctx.registry is not None:
            self._attach_metrics(ctx.registry)
        if self.publish_initial:
            self.publish("initial", force=True)

    def _attach_metrics(self, r: Any) -> None:
        from prometheus_client import Counter, Gauge

        self._metrics = {
            "events": Counter("tidal_learn_events", "Labelled events learned from.", ["pipeline", "model"],
                              registry=r).labels(self.pipeline, self.model_name),
            "quality": Gauge("tidal_learn_quality", "Prequential quality of the online model (window: all, rolling).",
                             ["pipeline", "model", "metric", "window"], registry=r),
            "version": Gauge("tidal_learn_published_version", "The last version the learner published.",
                             ["pipeline", "model"], registry=r).labels(self.pipeline, self.model_name),
        }

    def close(self) -> None:
        if self.publish_on_close:
            try:
                self.publish("worker stopping")
            except Exception as exc:  # noqa: BLE001 - stopping must not fail on the registry
                log.error("final publish of %s failed: %s", self.model_name, exc)
        self._report(force=True)

    # -- learning ----------------------------------------------------------------------------
    def process(self, batch: Batch) -> Batch:
        n = len(batch)
        labels = batch.column(self.label_field)
        valid = _valid(labels)
        rows = np.flatnonzero(valid)
        preds = np.full(n, None, dtype=object)
        errors = np.full(n, np.nan)
        if len(rows):
            part = batch if len(rows) == n else batch.select(valid)
            if self._types is None:  # text and categories stay strings for River: say so in the signature
                self._types = {f: "str" if part.column(f).dtype.kind in "OUS" else "float" for f in self.features}
            p, e = self._learn(part, labels[rows])
            preds[rows] = p
            errors[rows] = e
            self._track(part)
        batch.with_column("learn_prediction", preds, output=self.output)
        batch.with_column("learn_error", errors, output=self.output)
        self._maybe_publish()
        self._report()
        return batch

    def _learn(self, batch: Batch, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        preds, errors = self.learner.learn(batch.column, labels)
        scored = ~np.isnan(errors)
        k = int(scored.sum())
        self.events += len(labels)
        self.scored += k
        if self.task == "regression":
            self.abs_error += float(errors[scored].sum())
        else:
            self.correct += int(k - errors[scored].sum())
        self._remember(errors[scored])
        if self._metrics:
            self._metrics["events"].inc(len(labels))
            name = "mae" if self.task == "regression" else "accuracy"
            overall = self.mae if self.task == "regression" else self.accuracy
            self._metrics["quality"].labels(self.pipeline, self.model_name, name, "all").set(overall)
            self._metrics["quality"].labels(self.pipeline, self.model_name, name, "rolling").set(self.rolling)
        return preds, errors

    def _remember(self, errors: np.ndarray) -> None:
        """Keep the last ``window`` errors in a ring (only their mean is read)."""
        ring, w = self._recent, len(self._recent)
        if len(errors) >= w:
            ring[:] = errors[-w:]
            self._pos, self._recent_n = 0, w
            return
        end = self._pos + len(errors)
        if end <= w:
            ring[self._pos:end] = errors
        else:
            k = w - self._pos
            ring[self._pos:] = errors[:k]
            ring[:end - w] = errors[k:]
        self._pos = end % w
        self._recent_n = min(w, self._recent_n + len(errors))

    def _track(self, batch: Batch) -> None:
        """Extend the offset ranges learned from, per topic and partition."""
        names = set(batch.topics)
        if len(names) == 1:
            groups = [(next(iter(names)), batch.partitions, batch.offsets)]
        else:
            arr = np.asarray(batch.topics)
            groups = [(t, batch.partitions[arr == t], batch.offsets[arr == t]) for t in sorted(names)]
        for topic, parts, offs in groups:
            table = self.ranges.setdefault(topic, {})
            for p in np.unique(parts).tolist():
                o = offs[parts == p]
                lo, hi = int(o.min()), int(o.max()) + 1
                have = table.get(str(p))
                table[str(p)] = [min(lo, have[0]), max(hi, have[1])] if have else [lo, hi]

    # -- publishing --------------------------------------------------------------------------
    def request_publish(self) -> None:
        """Publish a version at the next batch (safe from any thread or a signal handler)."""
        self._publish_requested.set()

    def _maybe_publish(self) -> None:
        if self.registry is None:
            return
        if self._publish_requested.is_set():
            self._publish_requested.clear()
            self.publish("on demand")
            return
        since = self.events - max(self._published_at_events, 0)
        if self.publish_every and since >= self.publish_every:
            self.publish(f"every {self.publish_every} events")
        elif self.publish_every_s and time.monotonic() - self._published_at >= self.publish_every_s and since > 0:
            self.publish(f"every {self.publish_every_s:g} s")

    def publish(self, reason: str = "on demand", force: bool = False) -> Any:
        """Register the model as a new version (and promote it); None if nothing new was learned."""
        if self.registry is None or (not force and self.events == self._published_at_events):
            return None
        metrics: dict[str, float] = {"learned_events": float(self.events), "scored_events": float(self.scored)}
        if self.scored:
            if self.task == "regression":
                metrics.update({"prequential_mae": self.mae, "rolling_mae": self.rolling})
            else:
                metrics.update({"prequential_accuracy": self.accuracy, "rolling_accuracy": self.rolling})
        parent = self.versions[-1].uri if self.versions else None
        lineage = {"mode": f"online ({self.mode})", "ranges": self.ranges, "parent": parent, "reason": reason,
                   "learned_events": self.events}
        mv = self.registry.register(self.model_name, model=self.model, features=self._types or self.features,
                                    flavor=self.flavor,
                                    categories=self.categories or None, task=self.task, metrics=metrics,
                                    lineage=lineage, tags={"trained_by": "tidal learn"})
        self.versions.append(mv)
        self._published_at_events = self.events
        self._published_at = time.monotonic()
        if self.promote:
            self.registry.promote(self.model_name, mv.version, reason=f"online learner: {reason} "
                                  f"({self.events} labelled events)")
        if self._metrics:
            self._metrics["version"].set(mv.version)
        log.info("published %s (%s)", mv.uri, reason)
        return mv

    def _report(self, force: bool = False) -> None:
        reporting = self.ctx is not None and bool(self.report_topic)
        if not reporting and self.emit is None:
            return
        now = time.monotonic()
        if not force and now - self._reported < self.report_every_s:
            return
        self._reported = now
        record = self.stats()
        if self.emit is not None:
            self.emit(record)
        if reporting:
            self.ctx.emit(self.report_topic, orjson.dumps(record), self.model_name)


def learn_pipeline(pipeline: str, step: OnlineLearnStep, *, extra_steps: Iterable[Step] = (), schema: Any = None,
                   source: str | None = None, max_batch: int = 5000, max_wait_ms: int = 50,
                   partitions: int = 1) -> Any:
    """The pipeline behind ``tidal learn PIPELINE``: ``<pipeline>.joined`` → learner (→ drift) → nothing.

    With ``step.output`` the rows (with ``learn_prediction``/``learn_error``) go to
    ``<pipeline>.learned``; otherwise the worker only learns and commits. The learner reports
    to ``<pipeline>.learning`` unless ``step.report_topic`` says otherwise.
    """
    from tidal.stream.pipeline import Pipeline

    if step.report_topic is None:
        step.report_topic = f"{pipeline}.learning"
    steps: list[Step] = [step, *extra_steps]
    if not step.output:
        steps.append(DiscardStep())
    return Pipeline(f"{pipeline}.learn", steps=steps, schema=schema, sources=[source or f"{pipeline}.joined"],
                    sink=f"{pipeline}.learned", dlq=f"{pipeline}.learn.dlq", group=f"tidal.{pipeline}.learn",
                    max_batch=max_batch, max_wait_ms=max_wait_ms, partitions=partitions, lineage=step.output)
