"""The web dashboard: ``tidal dashboard`` (see :mod:`tidal.monitor.dashboard.server`)."""

from tidal.monitor.dashboard.collector import KafkaWatcher, MetricsHistory, histogram_quantile, normalize_targets
from tidal.monitor.dashboard.server import Dashboard, create_app

__all__ = ["Dashboard", "KafkaWatcher", "MetricsHistory", "create_app", "histogram_quantile", "normalize_targets"]
