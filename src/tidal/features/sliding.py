"""Sliding windows: for each event at ``t``, the aggregates over its key's events in ``(t - window, t]``.

A card's spend in the hour before each payment, whatever the clock says: the window moves with
every event rather than jumping from one bucket to the next as tumbling and hopping windows
do. Each output is computed when the event arrives, over the events of its key accepted so
far (itself included); an event that arrives later does not change earlier outputs.

The step keeps each key's raw events (event time and the values the aggregates read) while a
future event may still need them: an event at ``e`` leaves the store once the watermark
reaches ``e + window + lateness`` — no later event can be accepted with ``e`` in its window
— and a key with nothing left is deleted (a changelog tombstone). An event is late when
``t + lateness`` is older than the watermark (``t + lateness < watermark``, the moment its
window's end passed by more than the lateness); it goes to the DLQ or is dropped, and is
counted, like in the other windows. Aggregates are computed from the raw events in the window
(``distinct`` builds a fresh sketch, a reducer updates a fresh state with the window's values
in arrival order), so every :class:`~tidal.features.aggregates.Agg` works, user reducers
included (no ``merge`` needed). The cost of an event grows with the number of its key's events
in the window.

>>> from tidal.stream.batch import Batch
>>> step = SlidingAggregate("card", {"spend": ("amount", "sum"), "n": ("amount", "count")},
...                         window_s=60, lateness_s=30, time_field="ts")
>>> rows = [{"card": "c1", "amount": 10.0, "ts": 0}, {"card": "c1", "amount": 5.0, "ts": 50_000},
...         {"card": "c1", "amount": 1.0, "ts": 90_000}, {"card": "c1", "amount": 2.0, "ts": 70_000},
...         {"card": "c1", "amount": 7.0, "ts": 10_000}]
>>> out = step.process(Batch.from_rows(rows))
>>> out.columns["spend"].tolist(), out.columns["n"].tolist(), step.late_events
([10.0, 15.0, 6.0, 7.0], [1.0, 2.0, 2.0, 2.0], 1)
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from tidal.features.aggregates import Agg
from tidal.features.keyed import KeyedAggregate

__all__ = ["SlidingAggregate"]


class SlidingAggregate(KeyedAggregate):
    """Aggregates ``aggs`` per ``key`` over each event's trailing ``window_s`` of event time.

    A key's state is ``[times, column, column, ...]``: one list per column the aggregates
    read (:meth:`~tidal.features.aggregates.Aggregator.columns`), in arrival order.
    """

    def __init__(self, key: str, aggs: Mapping[str, Any] | Sequence[Agg], window_s: float,
                 time_field: str | None = None, lateness_s: float = 0.0, late: str = "dlq",
                 name: str = "sliding", **state: Any) -> None:
        if not window_s > 0:
            raise ValueError("window_s must be > 0")
        super().__init__(key, aggs, time_field, lateness_s, late, name, **state)
        self.window_ms = int(window_s * 1000)

    def _add(self, events: Any, t: int, watermark: int, cols: dict[str, Any],
             i: int) -> tuple[Any, list[float], int | None] | None:
        if t + self.lateness_ms < watermark:
            return None
        row = self.agg.row(cols, i)
        if events is None:
            events = [[t], *([v] for v in row)]
        else:
            events[0].append(t)
            for column, v in zip(events[1:], row):
                column.append(v)
        times = events[0]
        horizon = max(watermark, t) - self.window_ms - self.lateness_ms
        oldest = min(times)
        if oldest <= horizon:  # no event accepted from now on can have these in its window
            events = _keep(events, [j for j, e in enumerate(times) if e > horizon])
            times = events[0]
            oldest = min(times)
        lo = t - self.window_ms
        idx = [j for j, e in enumerate(times) if lo < e <= t]
        if len(idx) == len(times):
            values = dict(zip(cols, events[1:]))
        else:
            values = {name: [column[j] for j in idx] for name, column in zip(cols, events[1:])}
        return events, self.agg.over(values), oldest + self.window_ms + self.lateness_ms

    def _expiry(self, events: Any) -> int | None:
        return min(events[0]) + self.window_ms + self.lateness_ms

    def _prune(self, events: Any, watermark: int) -> Any:
        horizon = watermark - self.window_ms - self.lateness_ms
        if min(events[0]) > horizon:
            return events
        idx = [j for j, e in enumerate(events[0]) if e > horizon]
        return _keep(events, idx) if idx else None


def _keep(events: list[list[Any]], idx: list[int]) -> list[list[Any]]:
    return [[column[j] for j in idx] for column in events]
