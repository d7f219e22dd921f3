"""The drift step: data drift on features and concept drift on model errors, as alerts and metrics.

Put it after a scoring step (data drift on what the model sees) or in the monitor pipeline
after the labels join (both kinds: joined records carry features, ``decision`` and
``label``). It adds two columns that are not written out: ``drift_concept`` (true on the row
where a detector fired) and ``drift_width`` (ADWIN's estimate of how many rows ago the
change began, -1 elsewhere), which :class:`tidal.learn.RetrainStep` reacts to.

Alerts go to ``tidal.alerts``: ``data_drift:<pipeline>`` fires when the dataset drifts and
resolves at the first window that does not; ``concept_drift:<pipeline>:<model>`` fires when a
detector on that model's errors does — by default only when the errors rose
(``direction="up"``; detectors also fire when a model gets better) — and resolves after
``resolve_after`` of its events without another detection. Each event names what drifted, the
statistic, its threshold and the window. Metrics (registered in ``open``):
``tidal_drift_feature_score``/``_psi``/``_drifted`` per feature,
``tidal_drift_dataset_share``/``_drifted``, ``tidal_drift_error_rate`` per model
version and ``tidal_drift_detections_total``.

>>> import numpy as np
>>> from tidal.stream.batch import Batch
>>> events = []
>>> step = DriftStep(["x"], reference_size=500, window=500, emit=events.append, pipeline="p")
>>> rng = np.random.default_rng(0)
>>> _ = step.process(Batch.from_rows([{"x": v} for v in rng.normal(size=1000).tolist()]))
>>> _ = step.process(Batch.from_rows([{"x": v} for v in rng.normal(3, 1, size=500).tolist()]))
>>> [(e["rule"], e["state"], e["drifted_features"]) for e in events]
[('data_drift:p', 'firing', ['x'])]
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from tidal.broker.topics import ALERTS_TOPIC
from tidal.drift.concept import ConceptDriftMonitor, Detection
from tidal.drift.data import DataDriftMonitor, DriftReport
from tidal.drift.events import EventSink
from tidal.stream.batch import Batch
from tidal.stream.step import Step

__all__ = ["DriftStep", "errors_of"]


def _valid(values: np.ndarray) -> np.ndarray:
    if values.dtype == object:
        return values != None  # noqa: E711 - elementwise
    if values.dtype.kind == "f":
        return ~np.isnan(values)
    return np.ones(len(values), bool)


def errors_of(prediction: np.ndarray, label: np.ndarray, task: str = "binary") -> tuple[np.ndarray, np.ndarray]:
    """(errors, valid rows): 0/1 mistakes for classifiers, absolute errors for regressors.

    >>> errors_of(np.array([True, False, True]), np.array([1, 1, None], dtype=object))
    (array([0., 1.]), array([ True,  True, False]))
    """
    prediction, label = np.asarray(prediction), np.asarray(label)
    valid = _valid(prediction) & _valid(label)
    p, y = prediction[valid], label[valid]
    if task == "regression":
        return np.abs(p.astype(np.float64) - y.astype(np.float64)), valid
    if task == "binary":
        return ((p.astype(np.float64) > 0.5) != (y.astype(np.float64) > 0.5)).astype(np.float64), valid
    return (p.astype(str) != y.astype(str)).astype(np.float64), valid


def _has_field(batch: Batch, name: str) -> bool:
    if name in batch.columns:
        return True
    row = batch.rows[0]
    return name in row if isinstance(row, dict) else hasattr(row, name)


class DriftStep(Step):
    """Data drift on ``features`` and concept drift on each model's errors; see the module docstring."""

    name = "drift"

    def __init__(self, features: Iterable[str] = (), categorical: Iterable[str] = (), *,
                 reference: Mapping[str, np.ndarray] | None = None, reference_size: int = 5000, window: int = 1000,
                 drift_share: float = 0.5, tests: Mapping[str, str] | None = None,
                 thresholds: Mapping[str, float] | None = None, concept: bool = True, detector: str = "adwin",
                 detector_params: Mapping[str, Any] | None = None, prediction_field: str = "decision",
                 label_field: str = "label", error_field: str | None = None,
                 by: Sequence[str] | None = ("model", "model_version"), model: str = "model", task: str = "binary",
                 id_field: str = "event_id", pipeline: str = "", alerts_topic: str = ALERTS_TOPIC,
                 emit: Callable[[dict[str, Any]], None] | None = None, resolve_after: int = 10_000,
                 severity: str = "warning", direction: str = "up") -> None:
        if direction not in ("up", "both"):
            raise ValueError("direction must be 'up' (errors rose) or 'both'")
        self.direction = direction
        self.features = list(features)
        self.categorical = list(categorical)
        self.reference_size = reference_size
        self.window = window
        self.concept = concept
        self.detector = detector
        self.detector_params = dict(detector_params or {})
        self.prediction_field = prediction_field
        self.label_field = label_field
        self.error_field = error_field
        self.by = list(by) if by else []
        self.model = model
        self.task = task
        self.id_field = id_field
        self.pipeline = pipeline
        self.resolve_after = resolve_after
        self.severity = severity
        self.data = (DataDriftMonitor(self.features, self.categorical, reference_size=reference_size, window=window,
                                      drift_share=drift_share, reference=reference, tests=tests, thresholds=thresholds)
                     if self.features else None)
        self.errors = ConceptDriftMonitor(detector, self.detector_params) if concept else None
        self.events = EventSink(alerts_topic, emit)
        self.reports: deque[DriftReport] = deque(maxlen=100)
        self.detections: deque[dict[str, Any]] = deque(maxlen=100)
        self._data_firing = False
        self._concept_quiet: dict[str, int] = {}  # model → its events since the last detection (while firing)
        self._gauges: dict[str, Any] = {}

    # -- worker hooks ------------------------------------------------------------------------
    @property
    def side_outputs(self) -> tuple[str, ...]:  # type: ignore[override]
        return (self.events.topic,)

    def open(self, ctx: Any) -> None:
        from prometheus_client import Counter, Gauge

        self.pipeline = self.pipeline or ctx.pipeline
        self.events.open(ctx)
        r = ctx.registry
        if r is None:
            return
        self._gauges = {
            "score": Gauge("tidal_drift_feature_score", "Drift score of a feature's last window (p-value or distance).",
                           ["pipeline", "feature", "test"], registry=r),
            "psi": Gauge("tidal_drift_feature_psi", "PSI of a feature's last window against the reference.",
                         ["pipeline", "feature"], registry=r),
            "drifted": Gauge("tidal_drift_feature_drifted", "1 if the feature drifted in its last window.",
                             ["pipeline", "feature"], registry=r),
            "share": Gauge("tidal_drift_dataset_share", "Share of features that drifted in the last window.",
                           ["pipeline"], registry=r),
            "dataset": Gauge("tidal_drift_dataset_drifted", "1 if the dataset drifted in the last window.",
                             ["pipeline"], registry=r),
            "error": Gauge("tidal_drift_error_rate", "The concept-drift detector's running error estimate.",
                           ["pipeline", "model", "version"], registry=r),
            "detections": Counter("tidal_drift_detections", "Drift detections (kind: data, concept).",
                                  ["pipeline", "kind", "model"], registry=r),
        }

    # -- the step ----------------------------------------------------------------------------
    def process(self, batch: Batch) -> Batch:
        n = len(batch)
        data_flag = np.zeros(n, bool)
        concept_flag = np.zeros(n, bool)
        width = np.full(n, -1, np.int64)
        if self.data is not None and n:
            base = self.data.rows
            for report in self.data.update(batch.column):
                row = report.last_row - base
                data_flag[row] = report.dataset_drift
                self._on_report(report, batch, row)
        if self.errors is not None and n and _has_field(batch, self.label_field):
            self._concept(batch, concept_flag, width)
        batch.with_column("drift_data", data_flag, output=False)
        batch.with_column("drift_concept", concept_flag, output=False)
        batch.with_column("drift_width", width, output=False)
        return batch

    def _where(self, batch: Batch, row: int) -> dict[str, Any]:
        at = {"topic": batch.topics[row], "partition": int(batch.partitions[row]), "offset": int(batch.offsets[row])}
        if _has_field(batch, self.id_field):
            v = batch.column(self.id_field)[row]
            at[self.id_field] = v.item() if isinstance(v, np.generic) else v
        return at

    def _on_report(self, report: DriftReport, batch: Batch, row: int) -> None:
        self.reports.append(report)
        g = self._gauges
        if g:
            for f, d in report.features.items():
                if np.isfinite(d.score):
                    g["score"].labels(self.pipeline, f, d.test).set(d.score)
                g["psi"].labels(self.pipeline, f).set(d.psi)
                g["drifted"].labels(self.pipeline, f).set(float(d.drifted))
            g["share"].labels(self.pipeline).set(report.share)
            g["dataset"].labels(self.pipeline).set(float(report.dataset_drift))
        if report.dataset_drift == self._data_firing:
            return
        self._data_firing = report.dataset_drift
        state = "firing" if report.dataset_drift else "resolved"
        if report.dataset_drift and g:
            g["detections"].labels(self.pipeline, "data", "").inc()
        drifted = report.drifted_features
        detail = ", ".join(f"{f} ({report.features[f].test} {report.features[f].score:.3g})" for f in drifted)
        message = (f"dataset drift: {len(drifted)} of {len(report.features)} features drifted "
                   f"(share {report.share:.0%} ≥ {report.drift_share:.0%}): {detail}" if report.dataset_drift else
                   f"no dataset drift in window {report.window} (share {report.share:.0%})")
        self.events.send({
            "type": "data_drift", "rule": f"data_drift:{self.pipeline}", "state": state, "severity": self.severity,
            "pipeline": self.pipeline, "model": None, "metric": "drift_share", "value": report.share,
            "threshold": report.drift_share, "drifted_features": drifted,
            "features": {f: d.as_dict() for f, d in report.features.items()},
            "window": {"index": report.window, "rows": report.last_row - report.first_row + 1,
                       "reference_rows": self.data.reference_size if self.data else None,
                       "first_row": report.first_row, "last_row": report.last_row},
            "at": self._where(batch, row), "time": time.time(), "message": message})

    def _concept(self, batch: Batch, flag: np.ndarray, width: np.ndarray) -> None:
        if self.error_field:
            errors = np.asarray(batch.column(self.error_field), dtype=np.float64)
            valid = ~np.isnan(errors)
            errors = errors[valid]
        else:
            errors, valid = errors_of(batch.column(self.prediction_field), batch.column(self.label_field), self.task)
        rows = np.flatnonzero(valid)
        keys = [np.asarray(batch.column(f))[rows] for f in self.by] if self.by else None
        found = self.errors.update(errors, keys)
        hits: dict[str, int] = {}
        for det in found:
            if self.direction == "up" and det.direction != "up":
                self.detections.append({"model": str(det.key[0]) if det.key else self.model, "direction": "down",
                                        "seen": det.seen, "estimation": det.estimation, "time": time.time()})
                continue  # the errors fell: the model got better, nothing to alert on
            row = int(rows[det.row])
            flag[row] = True
            width[row] = det.width if det.width is not None else 0
            model = str(det.key[0]) if det.key else self.model
            hits[model] = row
            self._on_detection(det, model, batch, row)
        self._resolve_quiet(batch, rows, keys, hits)
        if self._gauges:
            for key in self.errors.detectors:
                est = self.errors.estimation(key)
                if est is not None:
                    model = str(key[0]) if key else self.model
                    version = str(key[1]) if len(key) > 1 else ""
                    self._gauges["error"].labels(self.pipeline, model, version).set(est)

    def _on_detection(self, det: Detection, model: str, batch: Batch, row: int) -> None:
        version = str(det.key[1]) if len(det.key) > 1 else None
        record = {"model": model, "version": version, "direction": det.direction, "seen": det.seen,
                  "estimation": det.estimation,
                  "width": det.width, "at": self._where(batch, row), "time": time.time()}
        self.detections.append(record)
        if self._gauges:
            self._gauges["detections"].labels(self.pipeline, "concept", model).inc()
        firing = model in self._concept_quiet
        self._concept_quiet[model] = 0
        if firing:
            return
        est = f"{det.estimation:.3f}" if det.estimation is not None else "n/a"
        self.events.send({
            "type": "concept_drift", "rule": f"concept_drift:{self.pipeline}:{model}", "state": "firing",
            "severity": self.severity, "pipeline": self.pipeline, "model": model, "version": version,
            "metric": "error_rate" if self.task != "regression" else "absolute_error", "statistic": self.detector,
            "value": det.estimation, "threshold": self.detector_params or "defaults",
            "window": {"events": det.width, "seen": det.seen}, "at": record["at"], "time": record["time"],
            "message": f"{self.detector} detected a change in the errors of {model}"
                       f"{f' v{version}' if version else ''} after {det.seen} labelled events "
                       f"(error estimate now {est}, over the last {det.width} events)"})

    def _resolve_quiet(self, batch: Batch, rows: np.ndarray, keys: list[np.ndarray] | None,
                       hits: dict[str, int]) -> None:
        if not self._concept_quiet:
            return
        models = keys[0].astype(str) if keys else np.full(len(rows), self.model)
        for model in list(self._concept_quiet):
            mine = np.flatnonzero(models == model)
            after = hits.get(model)
            count = int((rows[mine] > after).sum()) if after is not None else len(mine)
            self._concept_quiet[model] += count
            if self._concept_quiet[model] >= self.resolve_after:
                del self._concept_quiet[model]
                self.events.send({
                    "type": "concept_drift", "rule": f"concept_drift:{self.pipeline}:{model}", "state": "resolved",
                    "severity": self.severity, "pipeline": self.pipeline, "model": model, "time": time.time(),
                    "message": f"no change in the errors of {model} over its last {self.resolve_after} "
                               "labelled events"})
