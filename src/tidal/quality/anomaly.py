"""Anomaly detection as a step: a score and a thresholded flag per event.

Detectors (``detector=``):

- ``iforest``: scikit-learn's IsolationForest, fitted on a window of (clean) events — given
  with :meth:`AnomalyStep.fit`, e.g. replayed history, or the first ``warmup`` events —
  and refitted every ``refit_every`` events on the recent window (adaptive). Scores whole
  batches in one vectorised call.
- ``hst``: River's ``anomaly.HalfSpaceTrees`` behind a ``MinMaxScaler``; learns every
  event online (one Python call per event: River is per-record).
- ``svm``: River's ``anomaly.OneClassSVM`` behind a ``StandardScaler``; online too.
- ``robust``: the root mean square of per-feature robust z-scores (median/MAD over a
  window), per ``key`` (a per-host baseline) or global; vectorised and adaptive.

Context features: ``hour_of: <timestamp field>`` adds the hour of day (as sin/cos) to
the features. The threshold is never hand-picked: it is the ``1 - alert_rate`` quantile of
the scores of the fit window (``threshold="fit"``) or of the last ``threshold_window``
scores before each batch (``threshold="running"``, the default for online detectors).

>>> import numpy as np
>>> from tidal.stream.batch import Batch
>>> rng = np.random.default_rng(0)
>>> step = AnomalyStep(["x", "y"], detector="robust", alert_rate=0.01, warmup=500).fit(rng.normal(0, 1, (2000, 2)))
>>> out = step.process(Batch.from_rows([{"x": 0.1, "y": -0.2}, {"x": 9.0, "y": 8.0}]))
>>> out.columns["anomaly"].tolist()
[False, True]
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from tidal.quality.base import FLAGS, QualityBatch, QualityStep, key_values
from tidal.quality.stats import Windows

__all__ = ["AnomalyStep", "DETECTORS"]

DETECTORS = ("iforest", "hst", "svm", "robust")


class AnomalyStep(QualityStep):
    """Score ``features``; add ``anomaly_score`` and ``anomaly`` (score above the threshold)."""

    name = "anomaly"

    def __init__(self, features: Sequence[str], detector: str = "iforest", alert_rate: float = 0.01,
                 threshold: str | None = None, warmup: int = 2000, refit_every: int | None = None,
                 window: int = 20_000, threshold_window: int = 20_000, key: str | None = None,
                 hour_of: str | None = None, score_column: str = "anomaly_score", flag_column: str = "anomaly",
                 seed: int = 0, learn: str = "normal", **params: Any) -> None:
        super().__init__()
        if detector not in DETECTORS:
            raise ValueError(f"detector {detector!r}; use one of {DETECTORS}")
        self.features, self.detector, self.alert_rate = list(features), detector, float(alert_rate)
        self.threshold_mode = threshold or ("fit" if detector == "iforest" else "running")
        self.warmup, self.refit_every, self.window = int(warmup), refit_every, int(window)
        self.key, self.hour_of, self.seed, self.learn, self.params = key, hour_of, seed, learn, params
        self.score_column, self.flag_column = score_column, flag_column
        self.threshold: float | None = None
        self.model: Any = None
        self._recent = np.empty((0, len(self.features) + (2 if hour_of else 0)))
        self._since_fit = 0
        self._scores = Windows(threshold_window, 1)
        self._robust_args = (params.pop("robust_window", 1024), params.pop("max_keys", 50_000))
        self._robust: list[Windows] = []

    # -- features -------------------------------------------------------------------------
    def reads(self) -> list[str]:
        return list(self.features)

    def adds(self) -> list[str]:
        return [self.score_column, self.flag_column, FLAGS]

    def matrix(self, batch: Any) -> np.ndarray:
        cols = [np.asarray(batch.column(f), dtype=np.float64) for f in self.features]
        if self.hour_of:
            ts = np.asarray(batch.column(self.hour_of), dtype=np.float64)
            angle = 2 * np.pi * ((ts / 3_600_000.0) % 24) / 24
            cols += [np.sin(angle), np.cos(angle)]
        X = np.column_stack(cols) if cols else np.empty((len(batch), 0))
        return np.where(np.isfinite(X), X, 0.0)

    # -- fitting --------------------------------------------------------------------------
    def fit(self, X: np.ndarray) -> "AnomalyStep":
        """Fit on a window of events believed normal; sets the threshold from their scores (``fit`` mode)."""
        X = np.asarray(X, dtype=np.float64)
        if self.detector == "iforest":
            from sklearn.ensemble import IsolationForest

            params = {"n_estimators": 200, "max_samples": 512, **self.params}
            self.model = IsolationForest(random_state=self.seed, n_jobs=1, **params).fit(X)
        elif self.detector in ("hst", "svm"):
            for row in X:
                self._learn_one(row)
        else:
            self._robust_scores(X, None, learn=True)
        self._recent = X[-self.window:]
        self._since_fit = 0
        scores = self.score(X, None, learn=False)
        self._scores.push(np.zeros(len(scores), dtype=np.int64) + self._scores.slots(["*"])[0], scores)
        self.threshold = float(np.nanquantile(scores, 1 - self.alert_rate))
        return self

    def _river(self) -> Any:
        if self.model is None:
            from river import anomaly, preprocessing

            if self.detector == "hst":
                p = {"n_trees": 25, "height": 10, "window_size": 250, **self.params}
                self.model = preprocessing.MinMaxScaler() | anomaly.HalfSpaceTrees(seed=self.seed, **p)
            else:
                self.model = preprocessing.StandardScaler() | anomaly.OneClassSVM(**{"nu": 0.05, **self.params})
        return self.model

    def _learn_one(self, row: np.ndarray) -> None:
        self._river().learn_one(dict(enumerate(row.tolist())))

    # -- scoring --------------------------------------------------------------------------
    def score(self, X: np.ndarray, keys: list | None, learn: bool = True) -> np.ndarray:
        """Anomaly scores (higher = more anomalous) for the rows of ``X``."""
        if self.detector == "iforest":
            if self.model is None:
                return np.zeros(len(X))
            return -self.model.score_samples(X)
        if self.detector == "robust":
            return self._robust_scores(X, keys, learn)
        model = self._river()
        out = np.empty(len(X))
        for i, row in enumerate(X.tolist()):
            x = dict(enumerate(row))
            out[i] = model.score_one(x)
            if learn:
                model.learn_one(x)
        return out

    def _robust_scores(self, X: np.ndarray, keys: list | None, learn: bool) -> np.ndarray:
        n, d = X.shape
        while len(self._robust) < d:
            size, max_keys = self._robust_args
            self._robust.append(Windows(size, max_keys if keys is not None else 1))
        z2, known = np.zeros(n), np.zeros(n, dtype=bool)
        for j, w in enumerate(self._robust[:d]):
            slots = w.slots(keys) if keys is not None else np.full(n, w.slots(["*"])[0], dtype=np.int64)
            uniq, inv = np.unique(slots, return_inverse=True)
            med, mad = w.median_mad(uniq)
            scale = np.where(mad > 0, 1.4826 * mad, np.nan)
            z = (X[:, j] - med[inv]) / scale[inv]
            ok = np.isfinite(z)
            z2 += np.where(ok, np.minimum(z * z, 1e4), 0.0)
            known |= ok
            if learn:
                w.push(slots, X[:, j])
        return np.where(known, np.sqrt(z2 / max(d, 1)), np.nan)

    def apply(self, batch: QualityBatch) -> QualityBatch:
        X = self.matrix(batch)
        keys = key_values(batch, self.key)
        online = self.detector != "iforest"
        if self.model is None and self.detector == "iforest":
            self._recent = np.vstack([self._recent, X])[-self.window:]
            if len(self._recent) >= self.warmup:
                self.fit(self._recent)
            scores = self.score(X, keys, learn=False) if self.model is not None else np.zeros(len(X))
        else:
            scores = self.score(X, keys, learn=online and self.learn == "all")
        slot = self._scores.slots(["*"])
        seen = int(self._scores.n(slot)[0])
        if self.threshold_mode == "running" and seen >= min(self.warmup, self._scores.size):
            self.threshold = float(self._scores.quantiles(slot, [1 - self.alert_rate])[0][0])
        with np.errstate(invalid="ignore"):
            flag = scores > self.threshold if self.threshold is not None else np.zeros(len(X), dtype=bool)
        if online and self.learn == "normal":  # learn from what looks normal, so attacks do not become normal
            normal = ~flag
            self.score(X[normal], [keys[i] for i in np.flatnonzero(normal)] if keys else None, learn=True) \
                if self.detector == "robust" else [self._learn_one(r) for r in X[normal]]
        self._scores.push(np.full(len(scores), slot[0], dtype=np.int64), scores)
        if self.detector == "iforest" and self.refit_every and self.model is not None:
            self._recent = np.vstack([self._recent, X[~flag]])[-self.window:]
            self._since_fit += len(X)
            if self._since_fit >= self.refit_every:
                threshold = self.threshold
                self.fit(self._recent)
                if self.threshold_mode == "running":
                    self.threshold = threshold
        self.count(self.flag_column, "anomaly", "flag", int(flag.sum()))
        batch.with_column(self.score_column, np.round(scores, 6))
        return batch.with_column(self.flag_column, flag)


def from_spec(args: dict, base: Any = None, kind: str = "anomaly", previous: list | None = None) -> Any:
    """YAML ``- anomaly:``: ``{features: [bytes, duration], detector: iforest}`` for these point
    detectors; ``{field: cpu, key: host, time_field: ts}`` for a series detector
    (:mod:`tidal.detect`, the ``detect`` extra: imported only then)."""
    if "field" in args:
        from tidal.detect.step import SeriesAnomalyStep

        return SeriesAnomalyStep(args.pop("field"), **args)
    return AnomalyStep(args.pop("features"), **args)
