"""Streaming features: per-key aggregates over event-time windows, with changelog-backed state.

Windows: :class:`WindowAggregate` (tumbling and hopping), :class:`SlidingAggregate` (each
event's trailing window), :class:`SessionAggregate` (activity gaps). Aggregates: the built-ins
of :data:`AGGREGATES` (``distinct`` through DataSketches HLL) and user :class:`Reducer` s.
"""

from tidal.features.aggregates import AGGREGATES, Agg, FunctionReducer, Reducer
from tidal.features.enrich import TableJoin
from tidal.features.keyed import KeyedAggregate
from tidal.features.sessions import SessionAggregate
from tidal.features.sliding import SlidingAggregate
from tidal.features.windows import WindowAggregate

__all__ = ["AGGREGATES", "Agg", "FunctionReducer", "KeyedAggregate", "Reducer", "SessionAggregate",
           "SlidingAggregate", "TableJoin", "WindowAggregate"]
