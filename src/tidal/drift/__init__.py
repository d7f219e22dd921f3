"""Drift: data drift per feature on sketches (Evidently's tests and defaults) and concept drift
with River's detectors on each model's errors; :class:`DriftStep` turns both into alerts and metrics.

>>> from tidal import drift
>>> drift.default_test("numeric", 5000), drift.default_test("categorical", 800)
('wasserstein', 'chisquare')
"""

from tidal.drift.concept import DETECTORS, ConceptDriftMonitor, Detection, make_detector
from tidal.drift.data import DataDriftMonitor, DriftReport
from tidal.drift.events import EventSink
from tidal.drift.sketch import CategoricalSketch, FeatureDrift, NumericSketch, make_sketch
from tidal.drift.stats import THRESHOLDS, default_test, psi
from tidal.drift.step import DriftStep, errors_of

__all__ = ["CategoricalSketch", "ConceptDriftMonitor", "DETECTORS", "DataDriftMonitor", "Detection", "DriftReport",
           "DriftStep", "EventSink", "FeatureDrift", "NumericSketch", "THRESHOLDS", "default_test", "errors_of",
           "make_detector", "make_sketch", "psi"]
