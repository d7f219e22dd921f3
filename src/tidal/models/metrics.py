"""What scoring steps record: the score distribution and predictions per model version.

Registered once per metrics registry (several scoring steps in one worker share them).

>>> import numpy as np
>>> from prometheus_client import CollectorRegistry
>>> from tidal.stream.batch import Batch
>>> reg = CollectorRegistry()
>>> m = ScoreMetrics.of(reg, "fraud")
>>> b = Batch.from_rows([{"x": 1}]).with_column("score", np.array([0.9]))
>>> b = b.with_column("model", np.array(["fraud"], dtype=object)).with_column("decision", np.array([True]))
>>> m.observe(b.with_column("model_version", np.array(["3"], dtype=object)))
>>> reg.get_sample_value("tidal_predictions_total", {"pipeline": "fraud", "model": "fraud", "version": "3",
...                                                 "decision": "true"})
1.0
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import numpy as np
from prometheus_client import Counter, Gauge

from tidal.stream.batch import Batch
from tidal.stream.histogram import BatchHistogram

__all__ = ["ScoreMetrics", "SCORE_BUCKETS"]

SCORE_BUCKETS = tuple(np.round(np.linspace(0.1, 1.0, 10), 2))
_BY_REGISTRY: "weakref.WeakKeyDictionary[Any, dict[str, ScoreMetrics]]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


# Prediction series kept per pipeline: those of the versions that scored most recently. Older
# versions' series are removed, so a model retrained every few minutes does not grow /metrics
# without end (Prometheus keeps what it scraped).
MAX_VERSION_SERIES = 8

class ScoreMetrics:
    """``tidal_prediction_score``, ``tidal_predictions_total`` and ``tidal_model_info`` of a pipeline."""

    def __init__(self, registry: Any, pipeline: str) -> None:
        self.pipeline = pipeline
        self.scores = BatchHistogram("tidal_prediction_score", "Model scores, per event.", {"pipeline": pipeline},
                                     SCORE_BUCKETS, registry)
        self.predictions = Counter("tidal_predictions", "Predictions by model version and decision.",
                                   ["pipeline", "model", "version", "decision"], registry=registry)
        self.model_info = Gauge("tidal_model_info", "1 for each model version that scored the latest batch.",
                                ["pipeline", "model", "version"], registry=registry)
        self._versions: set[tuple[str, str]] = set()
        self._recent: dict[tuple[str, str], None] = {}  # versions with prediction series, least recent first

    @classmethod
    def of(cls, registry: Any, pipeline: str) -> "ScoreMetrics | None":
        """The pipeline's score metrics on ``registry`` (made on first use); None without a registry."""
        if registry is None:
            return None
        with _LOCK:
            mine = _BY_REGISTRY.setdefault(registry, {})
            if pipeline not in mine:
                mine[pipeline] = cls(registry, pipeline)
            return mine[pipeline]

    def observe(self, batch: Batch) -> None:
        """Record the ``score`` / ``model`` / ``model_version`` / ``decision`` columns of a batch."""
        cols = batch.columns
        if not len(batch):
            return
        if "score" in cols:
            self.scores.observe_many(cols["score"])
        if "model_version" in cols and "model" in cols:
            self.observe_models(np.asarray(cols["model"]), np.asarray(cols["model_version"]), cols.get("decision"))

    def observe_models(self, models: np.ndarray, versions: np.ndarray, decisions: np.ndarray | None) -> None:
        """Count predictions per (model, version, decision) of one batch; update the info metric."""
        seen = set()
        for model in set(models.tolist()):  # a handful of distinct values: loop over those, not rows
            of_model = models == model
            for version in set(versions[of_model].tolist()):
                rows = of_model & (versions == version)
                if decisions is None:
                    self.predictions.labels(self.pipeline, model, version, "none").inc(int(rows.sum()))
                else:
                    positive = int((rows & np.asarray(decisions, dtype=bool)).sum())
                    self.predictions.labels(self.pipeline, model, version, "true").inc(positive)
                    self.predictions.labels(self.pipeline, model, version, "false").inc(int(rows.sum()) - positive)
                seen.add((model, version))
        for model, version in self._versions - seen:
            self.model_info.remove(self.pipeline, model, version)
        for mv in seen:
            self._recent.pop(mv, None)
            self._recent[mv] = None
        while len(self._recent) > MAX_VERSION_SERIES:  # e.g. `tidal learn` publishing a version every N events
            model, version = next(iter(self._recent))
            del self._recent[(model, version)]
            for decision in ("none", "true", "false"):
                try:
                    self.predictions.remove(self.pipeline, model, version, decision)
                except KeyError:
                    pass
        for model, version in seen:
            self.model_info.labels(self.pipeline, model, version).set(1)
        self._versions = seen
