"""Session windows: per key, a session holds events less than ``gap_s`` apart in event time.

Each event gets the aggregates of its session so far, itself included — a user's clicks this
visit, a card's spend in this burst of activity. A session spans ``[first, last]`` event time
and stays open until the watermark reaches ``last + gap + lateness``; then it is closed and
leaves the store. An out-of-order event that falls within ``gap`` of two open sessions joins
them into one (their accumulators merge: user reducers need ``merge``). An event that would
start a session already closed (``t + gap + lateness <= watermark``) is late, and goes to the
DLQ or is dropped like in the other windows; closed sessions never merge again.

>>> from tidal.stream.batch import Batch
>>> step = SessionAggregate("user", {"clicks": ("page", "count"), "pages": ("page", "distinct")},
...                         gap_s=80, lateness_s=100, time_field="ts")
>>> rows = [{"user": "a", "page": "home", "ts": 0}, {"user": "a", "page": "cart", "ts": 50_000},
...         {"user": "a", "page": "home", "ts": 200_000}, {"user": "a", "page": "buy", "ts": 125_000}]
>>> out = step.process(Batch.from_rows(rows))
>>> out.columns["clicks"].tolist(), out.columns["pages"].tolist()  # the last event joins both sessions
([1.0, 2.0, 1.0, 4.0], [1.0, 2.0, 1.0, 3.0])
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from tidal.features.aggregates import Agg, can_merge
from tidal.features.keyed import KeyedAggregate

__all__ = ["SessionAggregate"]


class SessionAggregate(KeyedAggregate):
    """Aggregates ``aggs`` per ``key`` and session (events less than ``gap_s`` apart)."""

    def __init__(self, key: str, aggs: Mapping[str, Any] | Sequence[Agg], gap_s: float,
                 time_field: str | None = None, lateness_s: float = 0.0, late: str = "dlq",
                 name: str = "session", **state: Any) -> None:
        if not gap_s > 0:
            raise ValueError("gap_s must be > 0")
        super().__init__(key, aggs, time_field, lateness_s, late, name, **state)
        for a in self.aggs:
            if a.reducer is not None and not can_merge(a.reducer):
                raise ValueError(f"{a.name}: session windows merge sessions; the reducer needs merge(a, b)")
        self.gap_ms = int(gap_s * 1000)

    def _add(self, sessions: Any, t: int, watermark: int, cols: dict[str, Any],
             i: int) -> tuple[Any, list[float], int | None] | None:
        gap, closed_by = self.gap_ms, watermark - self.gap_ms - self.lateness_ms  # closed: last <= closed_by
        start, end, accs, rest = t, t, None, []
        for s in sessions or ():
            if s[1] <= closed_by:
                continue  # closed (and gone once pruned): never merges again
            if s[0] - gap < t < s[1] + gap:
                start, end = min(start, s[0]), max(end, s[1])
                accs = s[2] if accs is None else self.agg.merge(accs, s[2])
            else:
                rest.append(s)
        if accs is None:
            if t <= closed_by:
                return None  # its own session would already be closed
            accs = {}
        self.agg.add(accs, cols, i)
        rest.append([start, end, accs])
        rest.sort(key=lambda s: s[0])
        return rest, self.agg.results(accs), self._expiry(rest)

    def _expiry(self, sessions: Any) -> int | None:
        return min(s[1] for s in sessions) + self.gap_ms + self.lateness_ms

    def _prune(self, sessions: Any, watermark: int) -> Any:
        closed_by = watermark - self.gap_ms - self.lateness_ms
        if all(s[1] > closed_by for s in sessions):
            return sessions
        return [s for s in sessions if s[1] > closed_by] or None
