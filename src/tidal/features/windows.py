"""Per-key aggregates over event-time windows, added to each event as features.

``WindowAggregate`` keeps, for every key, the aggregates of the windows that are still open
and writes to each event the aggregates of its window *including itself* — a card's spend
in this hour, a user's sessions this day. State lives in the worker's changelog-backed
store (:mod:`tidal.stream.state`), so it survives restarts and moves with its partition.

- ``window_s=None``: running aggregates over all time (``idle_ttl_s``: a key with no event for
  that long, in event time, is forgotten: memory stays bounded by the keys active lately);
- ``window_s`` only: tumbling windows ``[k*w, (k+1)*w)``;
- ``window_s`` and ``hop_s``: hopping windows starting every ``hop_s``; the event gets the
  window that contains it and started earliest (the most history, ending soonest after it).

Event time comes from ``time_field`` (epoch ms) or the Kafka timestamp. A partition's
watermark is the largest event time it has seen; a window closes once the watermark passes
its end plus ``lateness_s``, and an event whose window already closed is late: it goes to
the DLQ (``late="dlq"``, reason ``late_event``) or is dropped (``late="drop"``), and is
counted either way. Closed windows leave the store when the watermark passes them, for
every key (:mod:`tidal.features.keyed`). Aggregates (:mod:`tidal.features.aggregates`):
``count``, ``sum``, ``mean``, ``std`` (population), ``min``, ``max``, ``last``, ``distinct``
(DataSketches HLL) and user reducers. Sliding and session windows:
:mod:`tidal.features.sliding`, :mod:`tidal.features.sessions`.

>>> from tidal.stream.batch import Batch
>>> from tidal.stream.state import StateStore
>>> step = WindowAggregate("card", {"spend_1h": ("amount", "sum"), "n_1h": ("amount", "count")},
...                        window_s=3600, time_field="ts")
>>> step.state_store = StateStore("w")
>>> rows = [{"card": "a", "amount": 5.0, "ts": 0}, {"card": "a", "amount": 7.0, "ts": 1000},
...         {"card": "b", "amount": 1.0, "ts": 2000}, {"card": "a", "amount": 2.0, "ts": 3_600_000}]
>>> out = step.process(Batch.from_rows(rows))
>>> out.columns["spend_1h"].tolist(), out.columns["n_1h"].tolist()
([5.0, 12.0, 1.0, 2.0], [1.0, 2.0, 1.0, 1.0])
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from tidal.features.aggregates import AGGREGATES, Agg
from tidal.features.keyed import KeyedAggregate

__all__ = ["WindowAggregate", "AGGREGATES"]

_LAST = "@last"  # running aggregates with idle_ttl_s: the key's latest event time


class WindowAggregate(KeyedAggregate):
    """Aggregates ``aggs`` (output name → (field, aggregate), or :class:`Agg`) per ``key`` and window."""

    def __init__(self, key: str, aggs: Mapping[str, Any] | Sequence[Agg], window_s: float | None = None,
                 hop_s: float | None = None, time_field: str | None = None, lateness_s: float = 0.0,
                 late: str = "dlq", name: str = "window", idle_ttl_s: float | None = None,
                 **state: Any) -> None:
        if hop_s is not None and (window_s is None or not 0 < hop_s <= window_s):
            raise ValueError("hop_s needs window_s and must be in (0, window_s]")
        super().__init__(key, aggs, time_field, lateness_s, late, name, **state)
        if idle_ttl_s is not None and window_s is not None:
            raise ValueError("idle_ttl_s is for running aggregates (window_s=None); windows expire by themselves")
        self.idle_ttl_ms = None if idle_ttl_s is None else int(idle_ttl_s * 1000)
        self.window_ms = None if window_s is None else int(window_s * 1000)
        self.hop_ms = None if hop_s is None else int(hop_s * 1000)

    def _starts(self, t: int) -> list[int]:
        """Start of every window containing ``t``, earliest first."""
        w, h = self.window_ms, self.hop_ms
        if w is None:
            return [0]
        if h is None:
            return [t - t % w]
        last = t - t % h
        first = last - ((w - 1) // h) * h
        return [s for s in range(first, last + 1, h) if s <= t < s + w]

    def _add(self, windows: Any, t: int, watermark: int, cols: dict[str, Any],
             i: int) -> tuple[Any, list[float], int | None] | None:
        w, lateness = self.window_ms, self.lateness_ms
        if w is not None and self.hop_ms is None:  # tumbling: one window (the hot path)
            start = t - t % w
            if start + w + lateness <= watermark:
                return None
            sk = str(start)
            if windows is None:
                accs: dict[str, Any] = {}
                windows = {sk: accs}
            else:
                accs = windows.get(sk)
                if accs is None:
                    accs = windows[sk] = {}
                if len(windows) > 1:
                    windows = self._prune(windows, max(watermark, t))  # forget windows that closed for good
            self.agg.add(accs, cols, i)
            return windows, self.agg.results(accs), self._expiry(windows) if len(windows) > 1 else start + w + lateness
        starts = self._starts(t)
        if w is not None and starts[-1] + w + lateness <= watermark:
            return None  # even its latest window has closed
        if w is None and windows is not None and self.idle_ttl_ms is not None:
            windows = self._prune(windows, max(watermark, t))  # idle too long: starts again (as at batch end)
        if windows is None:
            windows = {}
        first = None
        for start in starts:
            if w is not None and start + w + lateness <= watermark:
                continue  # this window closed; a later one still takes the event
            sk = str(start)
            first = first or sk
            accs = windows.get(sk)
            if accs is None:
                accs = windows[sk] = {}
            self.agg.add(accs, cols, i)
        result = self.agg.results(windows[first])
        if w is None and self.idle_ttl_ms is not None:
            windows[_LAST] = max(t, windows.get(_LAST, t))
        if w is not None and len(windows) > len(starts):  # forget windows that closed for good
            windows = self._prune(windows, max(watermark, t))
        return windows, result, self._expiry(windows)

    def _expiry(self, windows: Any) -> int | None:
        if self.window_ms is None:
            return windows[_LAST] + self.idle_ttl_ms if self.idle_ttl_ms is not None and _LAST in windows else None
        return min(map(int, windows)) + self.window_ms + self.lateness_ms

    def _prune(self, windows: Any, watermark: int) -> Any:
        if self.window_ms is None:  # running aggregates: forgotten after idle_ttl_s without an event
            last = windows.get(_LAST)
            return None if last is not None and watermark >= last + self.idle_ttl_ms else windows
        keep = watermark - self.window_ms - self.lateness_ms  # a window closed when start <= keep
        if all(int(s) > keep for s in windows):
            return windows
        left = {s: a for s, a in windows.items() if int(s) > keep}
        return left or None
