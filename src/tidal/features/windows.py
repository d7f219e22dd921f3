"""Per-key aggregates over event-time windows, added to each event as features.

``WindowAggregate`` keeps, for every key, the aggregates of the windows that are still open
and writes to each event the aggregates of its window *including itself* — a card's spend
in this hour, a user's sessions this day. State lives in the worker's changelog-backed
store (:mod:`tidal.stream.state`), so it survives restarts and moves with its partition.

- ``window_s=None``: running aggregates over all time;
- ``window_s`` only: tumbling windows ``[k*w, (k+1)*w)``;
- ``window_s`` and ``hop_s``: hopping windows starting every ``hop_s``; the event gets the
  window that contains it and started earliest (the most history, ending soonest after it).

Event time comes from ``time_field`` (epoch ms) or the Kafka timestamp. A partition's
watermark is the largest event time it has seen; a window closes once the watermark passes
its end plus ``lateness_s``, and an event whose window already closed is late: it goes to
the DLQ (``late="dlq"``, reason ``late_event``) or is dropped (``late="drop"``), and is
counted either way. Aggregates: ``count``, ``sum``, ``mean``, ``std`` (population),
``min``, ``max``, ``last``.

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

import math
from typing import Any, Mapping

import numpy as np

from tidal.stream.batch import Batch
from tidal.stream.state import StateStore
from tidal.stream.step import Step

__all__ = ["WindowAggregate", "AGGREGATES"]

AGGREGATES = ("count", "sum", "mean", "std", "min", "max", "last")
_WM = "\x00watermark"  # the partition's watermark, stored beside the keys


def _value(acc: list[float], agg: str) -> float:
    n, s, ss, lo, hi, last = acc
    if agg == "count":
        return n
    if agg == "sum":
        return s
    if agg == "mean":
        return s / n
    if agg == "std":
        return math.sqrt(max(0.0, ss / n - (s / n) ** 2))
    if agg == "min":
        return lo
    if agg == "max":
        return hi
    return last


class WindowAggregate(Step):
    """Aggregates of ``aggs`` (output name → (field, aggregate)) per ``key`` and window."""

    error_reason = "window_error"

    def __init__(self, key: str, aggs: Mapping[str, tuple[str, str]], window_s: float | None = None,
                 hop_s: float | None = None, time_field: str | None = None, lateness_s: float = 0.0,
                 late: str = "dlq", name: str = "window") -> None:
        for out, (_field, agg) in aggs.items():
            if agg not in AGGREGATES:
                raise ValueError(f"{out}: unknown aggregate {agg!r}; use one of {AGGREGATES}")
        if hop_s is not None and (window_s is None or not 0 < hop_s <= window_s):
            raise ValueError("hop_s needs window_s and must be in (0, window_s]")
        if late not in ("dlq", "drop"):
            raise ValueError("late must be 'dlq' or 'drop'")
        self.key, self.aggs = key, dict(aggs)
        self.window_ms = None if window_s is None else int(window_s * 1000)
        self.hop_ms = None if hop_s is None else int(hop_s * 1000)
        self.time_field, self.lateness_ms, self.late = time_field, int(lateness_s * 1000), late
        self.name = self.state_name = name
        self.state_store: StateStore | None = None  # given by the worker (changelog-backed)
        self.late_events = 0
        self._fields = sorted({f for f, _a in self.aggs.values()})

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

    def process(self, batch: Batch) -> Batch:
        if self.state_store is None:
            self.state_store = StateStore(self.name)  # in memory only: outside a worker (tests, replays)
        n = len(batch)
        times = (batch.column(self.time_field).astype(np.int64) if self.time_field else batch.timestamps).tolist()
        keys = [str(k) for k in batch.column(self.key).tolist()]
        values = [(f, batch.column(f).astype(np.float64).tolist()) for f in self._fields]
        out = {name: np.full(n, np.nan) for name in self.aggs}
        outputs = [(f, agg, out[name]) for name, (f, agg) in self.aggs.items()]
        late = np.zeros(n, dtype=bool)
        w, lateness = self.window_ms, self.lateness_ms
        marks: dict[int, int] = {}  # watermark per partition, written back once per batch
        for i, (key, t, p) in enumerate(zip(keys, times, batch.partitions.tolist())):
            part = self.state_store.partition(p)
            watermark = marks.get(p)
            if watermark is None:
                watermark = marks[p] = part.get(_WM, -(1 << 62))
            starts = self._starts(t)
            if w is not None and starts[-1] + w + lateness <= watermark:
                late[i] = True  # even its latest window has closed
                continue
            windows = part.data.get(key)
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
                for f, vals in values:  # one accumulator per field, shared by its aggregates
                    x = vals[i]
                    acc = accs.get(f)
                    if acc is None:
                        accs[f] = [1, x, x * x, x, x, x]
                    else:
                        acc[0] += 1
                        acc[1] += x
                        acc[2] += x * x
                        if x < acc[3]:
                            acc[3] = x
                        if x > acc[4]:
                            acc[4] = x
                        acc[5] = x
            firsts = windows[first]
            for f, agg, col in outputs:
                col[i] = _value(firsts[f], agg)
            if t > watermark:
                watermark = marks[p] = t
            if w is not None and len(windows) > len(starts):  # forget windows that closed for good
                windows = {s: a for s, a in windows.items() if int(s) + w + lateness > watermark}
            part.set(key, windows)
        for p, mark in marks.items():
            self.state_store.partition(p).set(_WM, mark)
        for name, col in out.items():
            batch.with_column(name, col)
        if late.any():
            self.late_events += int(late.sum())
            if self.late == "dlq":
                return batch.reject(late, "late_event", f"event time older than the watermark minus "
                                    f"{lateness / 1000:g}s lateness", self.name)
            return batch.select(~late)
        return batch
