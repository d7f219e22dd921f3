"""The web dashboard: ``tidal dashboard`` (see :mod:`tidal.monitor.dashboard.server`)."""

from tidal.monitor.dashboard.collector import KafkaWatcher, MetricsHistory, histogram_quantile, normalize_targets
from tidal.monitor.dashboard.server import BasicAuth, Dashboard, create_app

__all__ = ["BasicAuth", "Dashboard", "KafkaWatcher", "MetricsHistory", "create_app", "histogram_quantile", "normalize_targets"]
