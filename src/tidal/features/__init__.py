"""Streaming features: per-key aggregates over event-time windows, with changelog-backed state."""

from tidal.features.enrich import TableJoin
from tidal.features.windows import AGGREGATES, WindowAggregate

__all__ = ["AGGREGATES", "TableJoin", "WindowAggregate"]
