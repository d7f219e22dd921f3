"""Live model quality from joined (prediction, label) records, per model version.

River's rolling metrics do the counting: over the last ``window`` labelled events and over
the last ``period_s`` seconds, for each model version — accuracy, precision, recall, F1,
ROC-AUC and log-loss for binary models, MAE and RMSE for regression. The values are set on
``tidal_model_quality{pipeline, model, version, metric, window}`` and, every
``publish_every_s``, a snapshot goes to ``<pipeline>.monitor``.

>>> from tidal.stream.batch import Batch
>>> q = ModelQualityStep(window=100)
>>> b = Batch.from_rows([{"model": "m", "model_version": "1", "score": s, "decision": s >= 0.5, "label": y}
...                      for s, y in [(0.9, 1), (0.2, 0), (0.7, 0), (0.4, 1)]])
>>> _ = q.process(b)
>>> round(q.snapshot()[("m", "1")]["events"]["accuracy"], 2)
0.5
"""

from __future__ import annotations

import datetime as dt
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from river import metrics, utils

from tidal.stream.batch import Batch
from tidal.stream.step import Step

if TYPE_CHECKING:
    from tidal.stream.pipeline import Pipeline

__all__ = ["ModelQualityStep", "monitor_pipeline", "CLASSIFICATION", "REGRESSION"]

CLASSIFICATION = {"accuracy": metrics.Accuracy, "precision": metrics.Precision, "recall": metrics.Recall,
                  "f1": metrics.F1, "roc_auc": metrics.ROCAUC, "log_loss": metrics.LogLoss}
REGRESSION = {"mae": metrics.MAE, "rmse": metrics.RMSE}
_PROBA = {"roc_auc", "log_loss"}


class _VersionMetrics:
    def __init__(self, names: dict[str, type], window: int, period_s: float) -> None:
        self.by_count = {n: utils.Rolling(m, window_size=window) for n, m in names.items()}
        self.by_time = {n: utils.TimeRolling(m, period=dt.timedelta(seconds=period_s)) for n, m in names.items()}
        self.labelled = 0


class ModelQualityStep(Step):
    """Update rolling quality metrics from joined records (``score``, ``decision``, ``label``)."""

    name = "model_quality"

    def __init__(self, pipeline: str = "", window: int = 1000, period_s: float = 3600.0, task: str = "binary",
                 publish_every_s: float = 5.0, label_field: str = "label", max_versions: int = 8) -> None:
        self.pipeline = pipeline
        self.max_versions = max_versions  # versions tracked at once: the most recently labelled
        self.window = window
        self.period_s = period_s
        self.task = task
        self.publish_every_s = publish_every_s
        self.label_field = label_field
        self.versions: dict[tuple[str, str], _VersionMetrics] = {}
        self._gauge = None
        self._topic = ""
        self._published = 0.0

    @property
    def side_outputs(self) -> tuple[str, ...]:  # type: ignore[override]
        return (f"{self.pipeline}.monitor",) if self.pipeline else ("{pipeline}.monitor",)

    def open(self, ctx: Any) -> None:
        from prometheus_client import Gauge

        self.pipeline = self.pipeline or ctx.pipeline
        self._topic = self.outputs(ctx.pipeline)[0]
        if ctx.registry is not None:
            self._gauge = Gauge("tidal_model_quality", "Rolling model quality from delayed labels.",
                                ["pipeline", "model", "version", "metric", "window"], registry=ctx.registry)

    def close(self) -> None:
        if self.ctx is not None:
            self._publish()

    def process(self, batch: Batch) -> Batch:
        names = CLASSIFICATION if self.task == "binary" else REGRESSION
        models = batch.column("model").tolist()
        versions = batch.column("model_version").tolist()
        scores = batch.column("score").astype(np.float64).tolist()
        labels = batch.column(self.label_field).tolist()
        decisions = batch.column("decision").tolist() if self.task == "binary" else scores
        now = dt.datetime.now()  # River compares with a naive datetime.min
        for model, version, score, decision, label in zip(models, versions, scores, decisions, labels):
            vm = self.versions.get((model, version))
            if vm is None:
                vm = self.versions[(model, version)] = _VersionMetrics(names, self.window, self.period_s)
            y = bool(label) if self.task == "binary" else float(label)
            vm.labelled += 1
            for n in names:  # River's metrics take one pair at a time
                y_pred = min(max(score, 1e-15), 1 - 1e-15) if n in _PROBA else decision
                vm.by_count[n].update(y, y_pred)
                vm.by_time[n].update(y, y_pred, t=now)
        for key in dict.fromkeys(zip(models, versions)):  # labelled now: most recent (the dict is least recent first)
            self.versions[key] = self.versions.pop(key)
        while len(self.versions) > self.max_versions:  # `tidal learn` publishes versions without end
            model, version = next(iter(self.versions))
            del self.versions[(model, version)]
            if self._gauge is not None:
                for metric in names:
                    for window in ("events", "time"):
                        try:
                            self._gauge.remove(self.pipeline, model, version, metric, window)
                        except KeyError:
                            pass
        if self._gauge is not None:
            for (model, version), values in self.snapshot().items():
                for window, table in (("events", values["events"]), ("time", values["time"])):
                    for metric, v in table.items():
                        self._gauge.labels(self.pipeline, model, version, metric, window).set(v)
        if self.ctx is not None and time.monotonic() - self._published >= self.publish_every_s:
            self._publish()
        return batch

    def snapshot(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Current values: {(model, version): {"events": {metric: v}, "time": {...}, "labelled": n}}."""
        return {key: {"events": {n: float(m.get()) for n, m in vm.by_count.items()},
                      "time": {n: float(m.get()) for n, m in vm.by_time.items()}, "labelled": vm.labelled}
                for key, vm in self.versions.items()}

    def _publish(self) -> None:
        self._published = time.monotonic()
        for (model, version), values in self.snapshot().items():
            record = {"pipeline": self.pipeline, "model": model, "version": version, "time": time.time(),
                      "window_events": self.window, "window_s": self.period_s, **values}
            self.ctx.emit(self._topic, orjson.dumps(record), f"{model}/{version}")


def monitor_pipeline(pipeline: str, window: int = 1000, period_s: float = 3600.0, task: str = "binary",
                     horizon_s: float = 7 * 24 * 3600, id_field: str = "event_id") -> "Pipeline":
    """The pipeline behind ``tidal monitor``: predictions + labels → joined records → quality.

    Joined ``(features, prediction, label)`` records go to ``<pipeline>.joined`` (what online
    learners read); quality snapshots to ``<pipeline>.monitor``.
    """
    from tidal.broker.topics import PipelineTopics
    from tidal.learn.labels import LabelJoinStep
    from tidal.stream.pipeline import Pipeline

    t = PipelineTopics(pipeline)
    return Pipeline(f"{pipeline}.monitor", sources=[t.predictions, t.labels], sink=f"{pipeline}.joined",
                    dlq=f"{pipeline}.monitor.dlq", group=f"tidal.{pipeline}.monitor", lineage=False,
                    steps=[LabelJoinStep(t.labels, id_field, horizon_s=horizon_s),
                           ModelQualityStep(pipeline, window, period_s, task)])
