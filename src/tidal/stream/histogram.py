"""A Prometheus histogram fed whole numpy arrays: per-event distributions at batch cost."""

from __future__ import annotations

import threading
from typing import Iterable, Sequence

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

__all__ = ["BatchHistogram"]


class BatchHistogram:
    """A Prometheus histogram fed whole numpy arrays at once (one ``np.searchsorted`` per batch)."""

    def __init__(self, name: str, doc: str, labels: dict[str, str], buckets: Sequence[float],
                 registry: CollectorRegistry) -> None:
        self.name, self.doc, self.labels = name, doc, dict(labels)
        self.bounds = np.asarray(buckets, dtype=np.float64)
        self.counts = np.zeros(len(self.bounds) + 1, dtype=np.int64)  # last: above every bound (+Inf)
        self.total = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64)
        values = values[np.isfinite(values)]
        if not len(values):
            return
        idx = np.searchsorted(self.bounds, values, side="left")  # le semantics: value <= bound
        with self._lock:
            self.counts += np.bincount(idx, minlength=len(self.counts))
            self.total += float(values.sum())

    def collect(self) -> Iterable[HistogramMetricFamily]:
        with self._lock:
            cumulative = np.cumsum(self.counts).astype(float).tolist()
            total = self.total
        family = HistogramMetricFamily(self.name, self.doc, labels=list(self.labels))
        buckets = [(floatToGoString(b), c) for b, c in zip(self.bounds.tolist(), cumulative)]
        buckets.append(("+Inf", cumulative[-1]))
        family.add_metric(list(self.labels.values()), buckets=buckets, sum_value=total)
        yield family
