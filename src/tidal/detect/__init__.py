"""Streaming per-key series anomaly detectors and online change-point detection.

Every detector holds independent state per key in flat numpy slot arrays and
runs numba kernels over the rows of a batch in order.  Series detectors score
each row *before* learning it and return scores in [0, 1]; change detectors
return, per row, -1 or the start index of a detected change.

Which detector when
-------------------
``default``
    Max of ``knn`` and the anomaly likelihoods of ``context``, ``seasonal``
    and ``flatline``: use it unless you know better.
``gaussian``
    Windowed z-score; cheap baseline for iid noise with spikes.
``context``
    Novel (level, change) contexts: flat-lines, new levels, odd shapes.
``knn``
    Unusual recent windows (shape anomalies, spikes, level shifts).
``seasonal``
    Series with daily/weekly patterns and ``times``; catches a normal value
    at an abnormal hour.
``flatline``
    Runs of repeated values longer than the key usually has (stuck sensors).
``<name>+likelihood``
    Any detector with HTM anomaly-likelihood post-processing: fewer false
    alarms on noisy raw scores.
``bocpd`` (change detector)
    Bayesian online change-point detection with a calibrated false-alarm
    rate (``expected_run_length``); :class:`BOCPDDrift` is a River-style
    drift-detector adapter.

State per key in bytes: ``state_nbytes_per_key()`` (it includes 200 bytes for
the key table).
"""

from __future__ import annotations

from .base import ChangeDetector, SeriesDetector
from .bocpd import BOCPD, BOCPDDrift
from .context import ContextDetector
from .ensemble import EnsembleDetector
from .flatline import FlatlineDetector
from .gaussian import GaussianDetector
from .knn import KNNDetector
from .likelihood import AnomalyLikelihood
from .seasonal import SeasonalDetector

__all__ = [
    "BOCPD",
    "BOCPDDrift",
    "CHANGE_DETECTORS",
    "SERIES_DETECTORS",
    "AnomalyLikelihood",
    "ChangeDetector",
    "ContextDetector",
    "DefaultDetector",
    "EnsembleDetector",
    "FlatlineDetector",
    "GaussianDetector",
    "KNNDetector",
    "SeasonalDetector",
    "SeriesDetector",
    "make_change_detector",
    "make_detector",
]


class DefaultDetector(EnsembleDetector):
    """Default series detector: the maximum of the k-NN conformal score (already a calibrated
    p-value over lagged windows) and the anomaly likelihoods of the ``context``, ``seasonal`` and
    ``flatline`` detectors (their raw scores are not calibrated; the likelihood puts them on the
    same tail-probability scale).

    k-NN covers spikes, dips, level shifts and changed shapes; ``seasonal`` values normal at
    another hour; ``context`` unseen sequences; ``flatline`` stuck sensors. A Gaussian member
    added nothing k-NN did not catch and raised false alarms (measured in
    ``bench/detect_bench.py``).

    Parameters
    ----------
    combine
        ``"max"`` (default) or ``"mean"`` of the members' scores.
    probation, long_window, short_window
        Passed to each :class:`AnomalyLikelihood` (HTM's short window of 10).
    """

    def __init__(self, combine: str = "max", probation: int = 150, long_window: int = 2000,
                 short_window: int = 10) -> None:
        lk = dict(probation=probation, long_window=long_window, short_window=short_window)
        members = [
            KNNDetector(),
            AnomalyLikelihood(ContextDetector(), **lk),
            AnomalyLikelihood(SeasonalDetector(), **lk),
            AnomalyLikelihood(FlatlineDetector(), **lk),
        ]
        super().__init__(members, combine=combine)


SERIES_DETECTORS: dict[str, type[SeriesDetector]] = {
    "gaussian": GaussianDetector,
    "context": ContextDetector,
    "knn": KNNDetector,
    "seasonal": SeasonalDetector,
    "flatline": FlatlineDetector,
    "default": DefaultDetector,
}

CHANGE_DETECTORS: dict[str, type[ChangeDetector]] = {"bocpd": BOCPD, "default": BOCPD}


def make_detector(name: str = "default", **params) -> SeriesDetector:
    """Build a series detector by name; ``"<name>+likelihood"`` wraps it.

    Parameters are passed to the base detector (likelihood options as
    ``likelihood_<option>``, e.g. ``likelihood_probation=100``).
    """
    base, _, suffix = name.partition("+")
    if base not in SERIES_DETECTORS:
        raise KeyError(f"unknown detector {base!r}; choose from {sorted(SERIES_DETECTORS)}")
    if suffix and suffix != "likelihood":
        raise KeyError(f"unknown post-processing {suffix!r}; only 'likelihood'")
    lk = {k[len("likelihood_"):]: params.pop(k) for k in list(params) if k.startswith("likelihood_")}
    det = SERIES_DETECTORS[base](**params)
    if suffix:
        return AnomalyLikelihood(det, **lk)
    if lk:
        raise TypeError("likelihood_* parameters need a '+likelihood' name")
    return det


def make_change_detector(name: str = "default", **params) -> ChangeDetector:
    """Build a change detector by name (``"bocpd"`` or ``"default"``)."""
    if name not in CHANGE_DETECTORS:
        raise KeyError(f"unknown change detector {name!r}; choose from {sorted(CHANGE_DETECTORS)}")
    return CHANGE_DETECTORS[name](**params)
