"""What every window step shares: per-key state, event time, the watermark, late events, pruning.

A window step (:class:`KeyedAggregate` subclass) says how one event changes a key's state
and when the earliest part of that state closes (``_add``, ``_expiry``), and what is left
once the watermark has passed it (``_prune``). This module runs them in arrival order over a
batch, writes each event's aggregates as columns, sends late events to the DLQ or drops
them, and prunes: an :class:`ExpiryIndex` per partition orders keys by the event time at
which their state next closes, so closed windows of *every* key — quiet ones too — leave the
store (a changelog tombstone once nothing is left) when the watermark passes them.

Event time comes from ``time_field`` (epoch ms) or the Kafka timestamp; a partition's
watermark is the largest event time it has accepted, kept in its store beside the keys. An
event more than ``max_future_s`` (default 300 s; None: no check) ahead of the worker's clock,
or without a time, goes to the DLQ as ``future_event`` before it can touch the watermark:
one event dated 2100 would otherwise make every later event late and close every window.
"""

from __future__ import annotations

import heapq
import time
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from tidal.features.aggregates import Agg, Aggregator, normalize
from tidal.stream.batch import Batch
from tidal.stream.state import BACKENDS, StateStore
from tidal.stream.step import Step

__all__ = ["KeyedAggregate", "ExpiryIndex", "WATERMARK_KEY"]

WATERMARK_KEY = "\x00watermark"  # the partition's watermark, stored beside the keys
_NO_WATERMARK = -(1 << 62)


class ExpiryIndex:
    """Keys by the event time their state next needs pruning: a heap with lazy deletion.

    >>> ix = ExpiryIndex()
    >>> ix.note("a", 50); ix.note("b", 20); ix.note("a", 10)
    >>> list(ix.due(30)), len(ix)
    (['a', 'b'], 0)
    """

    __slots__ = ("heap", "at")

    def __init__(self) -> None:
        self.heap: list[tuple[int, str]] = []
        self.at: dict[str, int] = {}  # the earliest expiry registered for each key

    def note(self, key: str, expiry: int | None) -> None:
        """``key``'s state has a part closing at ``expiry`` (None: never)."""
        if expiry is None:
            return
        current = self.at.get(key)
        if current is None or expiry < current:
            self.at[key] = expiry
            heapq.heappush(self.heap, (expiry, key))

    def due(self, watermark: int) -> Iterator[str]:
        """Pop the keys with a part closed at ``watermark`` (note them again if anything is left)."""
        heap, at = self.heap, self.at
        while heap and heap[0][0] <= watermark:
            expiry, key = heapq.heappop(heap)
            if at.get(key) == expiry:
                del at[key]
                yield key

    def __len__(self) -> int:
        return len(self.at)


class KeyedAggregate(Step):
    """Base of the window steps: per ``key``, aggregates ``aggs`` of each event's window.

    ``state_backend``: ``memory`` or ``rocksdb`` (``state_path``: folder for its scratch
    databases; ``state_dir``: a persistent folder instead, for warm restarts); the changelog
    semantics are the same. None (the default) means the
    pipeline's ``state`` setting in YAML, else ``memory``.
    """

    error_reason = "window_error"

    def __init__(self, key: str, aggs: Mapping[str, Any] | Sequence[Agg], time_field: str | None = None,
                 lateness_s: float = 0.0, late: str = "dlq", name: str = "window",
                 state_backend: str | None = None, state_path: str | None = None,
                 max_future_s: float | None = 300.0, state_dir: str | None = None) -> None:
        if late not in ("dlq", "drop"):
            raise ValueError("late must be 'dlq' or 'drop'")
        if state_backend is not None and state_backend not in BACKENDS:
            raise ValueError(f"unknown state backend {state_backend!r}; use one of {BACKENDS}")
        self.key, self.aggs = key, normalize(aggs)
        self.agg = Aggregator(self.aggs)
        self.time_field, self.lateness_ms, self.late = time_field, int(lateness_s * 1000), late
        self.name = self.state_name = name
        self.state_backend, self.state_path, self.state_dir = state_backend, state_path, state_dir
        self._store: StateStore | None = None
        self.late_events = self.future_events = 0
        self.max_future_ms = None if max_future_s is None else int(max_future_s * 1000)
        self._indexes: dict[int, ExpiryIndex] = {}
        self._ready: dict[int, ExpiryIndex] = {}  # built on a restore's thread, taken on assignment

    @property
    def backend(self) -> str:
        """The state backend in use: ``state_backend``, else ``memory``."""
        return self.state_backend or "memory"

    @property
    def state_store(self) -> StateStore | None:
        """The changelog-backed store the worker gives this step (in memory only outside one)."""
        return self._store

    @state_store.setter
    def state_store(self, store: StateStore | None) -> None:
        if store is not None and store.backend != self.backend:
            store.use_backend(self.backend, self.state_path)  # still empty: the worker just made it
        self._store = store
        self._indexes.clear()
        self._ready.clear()

    # -- what a window type defines ------------------------------------------------------------
    def _add(self, value: Any, t: int, watermark: int, cols: dict[str, Any],
             i: int) -> tuple[Any, list[float], int | None] | None:
        """``(new state, event i's aggregates, its _expiry)`` after adding event ``i`` at ``t``
        to a key's state ``value`` (None: no state yet); None if the event is late."""
        raise NotImplementedError

    def _expiry(self, value: Any) -> int | None:
        """Event time at which the earliest part of a key's state closes (None: never)."""
        return None

    def _prune(self, value: Any, watermark: int) -> Any:
        """The state without its parts closed at ``watermark`` (``value`` itself if none); None if empty."""
        return value

    # -- the engine ----------------------------------------------------------------------------
    def _index(self, p: int, part: Any) -> ExpiryIndex:
        ix = self._indexes.get(p)
        if ix is None:  # first batch since the partition was assigned (or rolled back): index what is there
            ix = self._indexes[p] = self._build_index(part)
        return ix

    def _build_index(self, part: Any) -> ExpiryIndex:
        ix = ExpiryIndex()
        expiry = self._expiry
        for key, value in part.items():
            if key != WATERMARK_KEY:
                ix.note(key, expiry(value))
        return ix

    def on_restored(self, partition: int, state: Any) -> None:
        self._ready[partition] = self._build_index(state)  # off the worker's thread (see Step.on_restored)

    def on_assign(self, partitions: list[tuple[str, int]]) -> None:
        for _t, p in partitions:
            ready = self._ready.pop(p, None)
            if ready is None:
                self._indexes.pop(p, None)
            else:
                self._indexes[p] = ready

    def on_revoke(self, partitions: list[tuple[str, int]]) -> None:
        for _t, p in partitions:
            self._indexes.pop(p, None)
            self._ready.pop(p, None)

    def reads(self) -> list[str]:
        fields = [self.key] + ([self.time_field] if self.time_field else [])
        return fields + [f for f in dict.fromkeys(a.field for a in self.aggs) if f and f not in fields]

    def adds(self) -> list[str]:
        return list(self.agg.names)

    def process(self, batch: Batch) -> Batch:
        if self._store is None:  # outside a worker (tests, replays)
            self.state_store = StateStore(self.name, backend=self.backend, path=self.state_path)
        store = self._store
        n = len(batch)
        times_ms = batch.column(self.time_field) if self.time_field else batch.timestamps
        future = np.zeros(n, dtype=bool)
        if self.max_future_ms is not None and n:  # an event from the future must not move the watermark
            future = ~(times_ms <= time.time() * 1000 + self.max_future_ms)  # NaN times too
            if future.any():
                self.future_events += int(future.sum())
                batch = batch.reject(future, "future_event", f"event time more than {self.max_future_ms / 1000:g}s "
                                     "ahead of this worker's clock (max_future_s)", self.name)
                if not len(batch):
                    return batch
                times_ms, n = times_ms[~future], len(batch)
        times = times_ms.astype(np.int64).tolist()
        keys = [str(k) for k in batch.column(self.key).tolist()]
        cols = self.agg.columns(batch.column)
        late = np.zeros(n, dtype=bool)
        rows: list[int] = []
        results: list[list[float]] = []
        marks: dict[int, int] = {}  # watermark per partition, written back once per batch
        parts: dict[int, tuple[Any, ExpiryIndex]] = {}
        add = self._add
        for i, (key, t, p) in enumerate(zip(keys, times, batch.partitions.tolist())):
            got = parts.get(p)
            if got is None:
                part = store.partition(p)
                got = parts[p] = (part, self._index(p, part))
                marks[p] = part.get(WATERMARK_KEY, _NO_WATERMARK)
            part, ix = got
            watermark = marks[p]
            done = add(part.get(key), t, watermark, cols, i)
            if done is None:
                late[i] = True
                continue
            value, result, expiry = done
            rows.append(i)
            results.append(result)
            if t > watermark:
                marks[p] = t
            part.set(key, value)
            ix.note(key, expiry)
        for p, mark in marks.items():
            part, ix = parts[p]
            part.set(WATERMARK_KEY, mark)
            self._prune_due(part, ix, mark)
        out = np.full((n, len(self.aggs)), np.nan)
        if rows:
            out[rows] = np.array(results, dtype=np.float64)
        for j, name in enumerate(self.agg.names):
            batch.with_column(name, out[:, j].copy())
        if late.any():
            self.late_events += int(late.sum())
            if self.late == "dlq":
                return batch.reject(late, "late_event", f"event time older than the watermark minus "
                                    f"{self.lateness_ms / 1000:g}s lateness", self.name)
            return batch.select(~late)
        return batch

    def _prune_due(self, part: Any, ix: ExpiryIndex, watermark: int) -> None:
        for key in list(ix.due(watermark)):
            value = part.get(key)
            if value is None:
                continue
            left = self._prune(value, watermark)
            if left is None:
                part.delete(key)
                continue
            if left is not value:
                part.set(key, left)
            ix.note(key, self._expiry(left))
