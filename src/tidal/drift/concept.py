"""Concept drift: River's detectors on each model's error stream.

Every key (by default a model name and version) gets its own detector, fed that key's errors
in stream order: 0/1 for classifiers, absolute errors for regressors. A detector takes one
value at a time by nature, so this is the one place a row loop remains; grouping by key is
done with numpy first.

The default is ADWIN: it is the only one of River's detectors with no false alarm in
100,000 stationary values on every stream tidal benchmarks (``bench/drift_bench.py``);
Page-Hinkley and KSWIN with their defaults raise several per 10,000.

>>> import numpy as np
>>> rng = np.random.default_rng(1)
>>> errors = np.concatenate([rng.random(3000) < 0.1, rng.random(3000) < 0.4]).astype(float)
>>> mon = ConceptDriftMonitor()
>>> [(d.key, 3000 <= d.row < 3500) for d in mon.update(errors)]
[((), True)]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from river import drift

__all__ = ["DETECTORS", "ConceptDriftMonitor", "Detection", "make_detector"]

class BOCPDErrors:
    """tidal's BOCPD (:class:`tidal.detect.BOCPDDrift`) where River's detectors go.

    Errors (0/1, or absolute errors) are fed as means of blocks of ``block`` values: near
    Gaussian and independent, which BOCPD's model and its calibrated false-alarm rate assume
    (``expected_run_length`` counts blocks). ``width`` is how many values ago the change
    began: its estimated start, not the alarm.
    """

    def __init__(self, block: int = 25, **params: Any) -> None:
        from tidal.detect import BOCPDDrift

        self.block = int(block)
        self._d = BOCPDDrift(**{"model": "level", **params})
        self._sum, self._n, self.n = 0.0, 0, 0
        self.drift_detected = False
        self.width: int | None = None

    def update(self, x: float) -> "BOCPDErrors":
        self.n += 1
        self._sum += float(x)
        self._n += 1
        self.drift_detected = False
        if self._n == self.block:
            self._d.update(self._sum / self._n)
            self._sum, self._n = 0.0, 0
            if self._d.drift_detected:
                self.drift_detected = True
                self.width = self.n - self._d.change_point * self.block
        return self


#: tidal's names for River's detectors (the ``binary`` ones take 0/1 errors only), and BOCPD.
DETECTORS: dict[str, Callable[..., Any]] = {
    "bocpd": BOCPDErrors,
    "adwin": drift.ADWIN,
    "page_hinkley": drift.PageHinkley,
    "kswin": drift.KSWIN,
    "ddm": drift.binary.DDM,
    "eddm": drift.binary.EDDM,
    "hddm_a": drift.binary.HDDMA,
    "hddm_w": drift.binary.HDDMW,
    "fhddm": drift.binary.FHDDM,
}


def make_detector(name: str = "adwin", **params: Any) -> Any:
    """A fresh River detector by tidal name (``adwin``, ``page_hinkley``, ``kswin``, ``ddm``, ...)."""
    try:
        return DETECTORS[name](**params)
    except KeyError:
        raise ValueError(f"unknown drift detector {name!r}; use one of {sorted(DETECTORS)}") from None


@dataclass(frozen=True)
class Detection:
    """A detector fired on ``key`` at ``row`` of the batch, after ``seen`` values of that key."""

    key: tuple
    row: int
    seen: int
    estimation: float | None  # the detector's running error estimate, where it has one
    width: int | None  # ADWIN: how many recent values it kept (≈ values since the change)
    direction: str = "up"  # "up": the errors grew (a model got worse); "down": they shrank


class ConceptDriftMonitor:
    """One River detector per key, fed in order; :meth:`update` returns the detections."""

    def __init__(self, detector: str = "adwin", params: Mapping[str, Any] | None = None, tail: int = 2000) -> None:
        self.detector = detector
        self.tail = tail
        self.params = dict(params or {})
        make_detector(detector, **self.params)  # fail now on a bad name or parameter
        self.detectors: dict[tuple, Any] = {}
        self.seen: dict[tuple, int] = {}
        self.recent: dict[tuple, np.ndarray] = {}  # the last `tail` values per key, to tell a rise from a fall
        self.detections = 0

    def _detector(self, key: tuple) -> Any:
        d = self.detectors.get(key)
        if d is None:
            d = self.detectors[key] = make_detector(self.detector, **self.params)
            self.seen[key] = 0
        return d

    def update(self, errors: np.ndarray, keys: Sequence[np.ndarray] | None = None) -> list[Detection]:
        """Feed ``errors`` (one per row); ``keys`` are key columns (row i's key: their i-th values).

        Without ``keys`` every row belongs to one stream, key ``()``.
        """
        errors = np.asarray(errors, dtype=np.float64)
        if keys is None:
            groups = [((), np.arange(len(errors)))]
        else:
            groups = _group(keys)
        found: list[Detection] = []
        for key, rows in groups:
            det = self._detector(key)
            seen = self.seen[key]
            update = det.update
            values = errors[rows]
            past = self.recent.get(key, np.empty(0))
            for j, (row, value) in enumerate(zip(rows.tolist(), values.tolist())):
                update(value)
                seen += 1
                if det.drift_detected:
                    width = _int(getattr(det, "width", None))
                    found.append(Detection(key, row, seen, _number(getattr(det, "estimation", None)), width,
                                           _direction(np.concatenate([past, values[:j + 1]]), width)))
            self.seen[key] = seen
            self.recent[key] = np.concatenate([past, values])[-self.tail:]
        found.sort(key=lambda d: d.row)
        self.detections += len(found)
        return found

    def estimation(self, key: tuple = ()) -> float | None:
        """The running error estimate of ``key``'s detector (ADWIN: the mean of its window)."""
        d = self.detectors.get(key)
        return _number(getattr(d, "estimation", None)) if d is not None else None


def _group(keys: Sequence[np.ndarray]) -> list[tuple[tuple, np.ndarray]]:
    """Rows per distinct key (combined key columns), keys in order of first appearance."""
    code = np.zeros(len(keys[0]), np.int64)
    for col in keys:
        _, inv = np.unique(np.asarray(col).astype(str), return_inverse=True)
        code = code * (int(inv.max()) + 1 if len(inv) else 1) + inv
    _, first, inverse = np.unique(code, return_index=True, return_inverse=True)
    out = []
    for g in np.argsort(first, kind="stable").tolist():
        rows = np.flatnonzero(inverse == g)
        r0 = int(rows[0])
        out.append((tuple(_plain(col[r0]) for col in keys), rows))
    return out


def _direction(history: np.ndarray, width: int | None) -> str:
    """Whether the newest ``width`` values (100 without one) average above the ones before them."""
    w = min(width or 100, max(len(history) // 2, 1))
    new, old = history[-w:], history[max(0, len(history) - 2 * w):len(history) - w]
    if not len(old):
        return "up"
    return "up" if new.mean() >= old.mean() else "down"


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _number(v: Any) -> float | None:
    try:
        return float(v) if v is not None else None
    except (TypeError, ValueError):
        return None


def _int(v: Any) -> int | None:
    try:
        return int(v) if v is not None else None
    except (TypeError, ValueError):
        return None
