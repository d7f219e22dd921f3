"""Data drift: each feature's current window against a reference window, and the dataset as a whole.

The reference is the first ``reference_size`` rows the monitor sees (or arrays you give it,
e.g. the training data); then every ``window`` rows make one current window, compared per
column with Evidently's default test (see :mod:`tidal.drift.stats`). The dataset drifts when
at least ``drift_share`` (default 50%) of its columns do. Batches are cut at window
boundaries and each piece updates the sketches column-wise.

Defaults: a 5,000-row reference (so numeric columns use Wasserstein/std ≥ 0.1 and categorical
ones Jensen-Shannon ≥ 0.1, as Evidently does above 1,000 reference rows) and tumbling
1,000-row windows. With a reference of 1,000 rows or fewer the p-value tests (KS,
chi-squared) decide: at p < 0.05 KS flags about one stationary window in twenty per column
by construction, and Evidently's chi-squared, which takes the reference's shares as exact,
about one in five when the reference is no larger than the window.

>>> rng = np.random.default_rng(3)
>>> mon = DataDriftMonitor(["x", "y"], reference_size=2000, window=1000)
>>> mon.update({"x": rng.normal(size=3000), "y": rng.normal(size=3000)})[0].dataset_drift
False
>>> r = mon.update({"x": rng.normal(2, 1, 1000), "y": rng.normal(size=1000)})[0]
>>> r.drifted_features, r.share, r.dataset_drift
(['x'], 0.5, True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from tidal.drift.sketch import CategoricalSketch, FeatureDrift, NumericSketch, make_sketch

__all__ = ["DataDriftMonitor", "DriftReport"]

Columns = Mapping[str, np.ndarray] | Callable[[str], np.ndarray]


@dataclass(frozen=True)
class DriftReport:
    """One window's verdict: per-feature results, the share that drifted, and dataset drift."""

    window: int  # 0, 1, 2, ... since the reference was fixed
    first_row: int  # index in the monitor's stream of the window's first and last rows
    last_row: int
    features: dict[str, FeatureDrift]
    share: float
    dataset_drift: bool
    drift_share: float

    @property
    def drifted_features(self) -> list[str]:
        return [f for f, d in self.features.items() if d.drifted]

    def as_dict(self) -> dict[str, Any]:
        return {"window": self.window, "first_row": self.first_row, "last_row": self.last_row,
                "share": round(self.share, 4), "dataset_drift": self.dataset_drift, "drift_share": self.drift_share,
                "drifted_features": self.drifted_features,
                "features": {f: d.as_dict() for f, d in self.features.items()}}


class DataDriftMonitor:
    """Reference and current-window sketches of ``features``; :meth:`update` returns finished windows."""

    def __init__(self, features: Iterable[str], categorical: Iterable[str] = (), *, reference_size: int = 5000,
                 window: int = 1000, drift_share: float = 0.5, reference: Mapping[str, np.ndarray] | None = None,
                 tests: Mapping[str, str] | None = None, thresholds: Mapping[str, float] | None = None) -> None:
        self.features = list(features)
        self.categorical = set(categorical)
        if not self.features:
            raise ValueError("DataDriftMonitor needs at least one feature")
        unknown = self.categorical - set(self.features)
        if unknown:
            raise ValueError(f"categorical columns not among the features: {sorted(unknown)}")
        if reference_size < 2 or window < 1:
            raise ValueError("reference_size must be ≥ 2 and window ≥ 1")
        self.reference_size = reference_size
        self.window = window
        self.drift_share = drift_share
        self.tests = dict(tests or {})
        self.thresholds = dict(thresholds or {})
        self.sketches: dict[str, NumericSketch | CategoricalSketch] | None = None
        self._ref_parts: dict[str, list[np.ndarray]] = {f: [] for f in self.features}
        self._ref_rows = 0
        self.rows = 0  # rows seen, reference included
        self.windows = 0
        self._window_rows = 0
        self._window_first = 0
        if reference is not None:
            self.set_reference(reference)

    @property
    def ready(self) -> bool:
        """Whether the reference is fixed (windows are being compared)."""
        return self.sketches is not None

    def set_reference(self, reference: Mapping[str, np.ndarray]) -> None:
        """Fix the reference from whole columns (e.g. the training data)."""
        self.sketches = {f: make_sketch(np.asarray(reference[f]), "categorical" if f in self.categorical else "numeric",
                                        f, self.tests.get(f), self.thresholds.get(f)) for f in self.features}
        self._ref_parts = {}
        self._window_first = self.rows

    def update(self, columns: Columns) -> list[DriftReport]:
        """Add a batch (``{feature: array}`` or ``batch.column``); returns the windows it completed."""
        get = columns if callable(columns) else columns.__getitem__
        cols = {f: np.asarray(get(f)) for f in self.features}
        n = len(cols[self.features[0]])
        start = 0
        reports: list[DriftReport] = []
        while start < n:
            if self.sketches is None:
                take = min(n - start, self.reference_size - self._ref_rows)
                for f in self.features:
                    self._ref_parts[f].append(cols[f][start:start + take])
                self._ref_rows += take
                self.rows += take
                start += take
                if self._ref_rows >= self.reference_size:
                    self.set_reference({f: np.concatenate(parts) for f, parts in self._ref_parts.items()})
                continue
            take = min(n - start, self.window - self._window_rows)
            for f, sketch in self.sketches.items():
                sketch.update(cols[f][start:start + take])
            self._window_rows += take
            self.rows += take
            start += take
            if self._window_rows >= self.window:
                reports.append(self._close_window())
        return reports

    def _close_window(self) -> DriftReport:
        assert self.sketches is not None
        results = {f: s.evaluate() for f, s in self.sketches.items()}
        share = sum(r.drifted for r in results.values()) / len(results)
        report = DriftReport(self.windows, self._window_first, self.rows - 1, results, share,
                             share >= self.drift_share, self.drift_share)
        for s in self.sketches.values():
            s.reset()
        self.windows += 1
        self._window_rows = 0
        self._window_first = self.rows
        return report
