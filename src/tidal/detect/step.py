"""Series anomaly and change detection as a pipeline step, per key, with state that survives.

``- anomaly: {field: cpu, key: host, time_field: ts}`` scores each event's ``field`` against
its own key's history (:func:`~tidal.detect.make_detector`, ``default`` unless ``detector``
says otherwise) and adds ``anomaly_score`` (in [0, 1]) and ``anomaly``: the score at or above
``threshold`` (default 0.999: a tail probability of 1e-3 for the k-NN member, smaller for the
likelihood ones), or, with ``alert_rate``, at or above the ``1 - alert_rate`` quantile of the recent scores (and at least ``min_score``).
With ``change: true`` (or ``change: {expected_run_length: 20000}``) BOCPD runs beside it and
adds ``change`` (an alarm on this event) and ``change_start`` (where that key's change
began, as a count of the key's events; -1 without an alarm).

Alerts go to ``tidal.alerts`` (the one alert shape): ``series_anomaly`` when a key's flag
rises (at most once per ``alert_cooldown_s`` of event time per key) and ``change_point``
with the change's start. A :class:`~tidal.learn.RetrainStep` after this step retrains on
``change`` with ``on=("change",)``.

State: each key's detector state lives in the worker's state store (``state_name``), as a
snapshot (written every ``snapshot_every`` of the key's events) plus the values since (the
*tail*, rewritten with each batch that touches the key). On assignment the snapshot is loaded
and the tail replayed, so scores after a restart or a rebalance are exactly those of a
worker that never stopped. Key the topic by the series key (as for windows): a key's state
belongs to the partition its events arrive on.

With ``alert_rate``, the window of recent scores starts empty again after a restart (flags
may differ for its first ``threshold_window`` events; scores and fixed-threshold flags do not).

Memory per key: the detector's ``state_nbytes_per_key()`` (about 9.4 kB for ``default``,
7.6 kB more with ``change``) plus a tail of at most ``snapshot_every`` values (16 bytes
each). Snapshots are kept in the changelog, not twice in memory.

>>> import numpy as np
>>> from tidal.stream.batch import Batch
>>> rng = np.random.default_rng(1)
>>> x = rng.normal(50, 1, 3000); x[2500] = 80
>>> step = SeriesAnomalyStep("cpu", key="host", detector="gaussian")
>>> out = step.process(Batch.from_rows([{"host": "h1", "cpu": float(v)} for v in x]))
>>> int(np.argmax(out.columns["anomaly_score"])), bool(out.columns["anomaly"][2500])
(2500, True)
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from tidal.broker.topics import ALERTS_TOPIC
from tidal.stream.batch import Batch
from tidal.stream.state import StateStore, opaque_bytes
from tidal.stream.step import Step

__all__ = ["SeriesAnomalyStep"]

_SNAP, _TAIL = "s:", "t:"


def _as_bytes(value: Any) -> bytes:
    data = opaque_bytes(value)
    return data if data is not None else bytes(value or b"")


class SeriesAnomalyStep(Step):
    """Per-key series anomaly scores (and change points) for ``field``; see the module docstring."""

    def __init__(self, field: str, key: str | None = None, time_field: str | None = None,
                 detector: str = "default", change: bool | dict = False, threshold: float = 0.999,
                 alert_rate: float | None = None, min_score: float = 0.5, threshold_window: int = 20_000,
                 alert_cooldown_s: float = 300.0, alerts: bool = True, snapshot_every: int = 64,
                 score_column: str = "anomaly_score", flag_column: str = "anomaly", name: str | None = None,
                 **params: Any) -> None:
        from tidal.detect import make_change_detector, make_detector

        self.field, self.key, self.time_field = field, key, time_field
        self.name = self.state_name = name or f"anomaly_{field}"
        self.detector_name, self.params = detector, dict(params)
        self.detector = make_detector(detector, **params)
        change_params = change if isinstance(change, dict) else {}
        self.changes = make_change_detector(**change_params) if change else None
        self.alert_rate, self.min_score, self.threshold = alert_rate, float(min_score), float(threshold)
        self.alert_cooldown_s, self.alerts, self.snapshot_every = float(alert_cooldown_s), alerts, int(snapshot_every)
        self.score_column, self.flag_column = score_column, flag_column
        self.side_outputs = (ALERTS_TOPIC,) if alerts else ()
        self._recent: deque[np.ndarray] = deque()
        self._recent_n, self._threshold_window = 0, int(threshold_window)
        self._tails: dict[Any, tuple[np.ndarray, np.ndarray]] = {}  # key -> (values, times) since its snapshot
        self._partition_of: dict[Any, int] = {}
        self._last_alert: dict[Any, float] = {}
        self._pipeline = ""

    # -- state -------------------------------------------------------------------------------
    def open(self, ctx: Any) -> None:
        self._pipeline = ctx.pipeline

    def on_assign(self, partitions: list[tuple[str, int]]) -> None:
        """Load each key's snapshot and replay its tail: the state as of the committed offset."""
        if self.state_store is None:
            return
        keys, values, times = [], [], []
        for p in sorted({p for _t, p in partitions}):
            self._drop_partition(p)
            part = self.state_store.partition(p)
            for skey, value in part.items():
                key = skey[2:]
                if skey.startswith(_SNAP):
                    data = _as_bytes(value)
                    self._load(key, data)
                    part.load(skey, b"")  # kept in the changelog; not twice in memory
                elif skey.startswith(_TAIL):
                    self._partition_of[key] = p
                    v = np.frombuffer(_as_bytes(value), dtype=np.float64).reshape(2, -1)
                    self._tails[key] = (v[0].copy(), v[1].copy())
                    keys.extend([key] * v.shape[1])
                    values.append(v[0])
                    times.append(v[1])
        if keys:  # replay the tails through the restored states (scores thrown away)
            k = np.array(keys, dtype=object)
            v, t = np.concatenate(values), np.concatenate(times)
            self.detector.score_many(k, v, t if self.time_field else None)
            if self.changes is not None:
                self.changes.update_many(k, v, t if self.time_field else None)

    def _load(self, key: str, data: bytes) -> None:
        if not data:
            return
        n = int.from_bytes(data[:4], "little")
        self.detector.load_key_state(key, data[4:4 + n])
        if self.changes is not None and len(data) > 4 + n:
            self.changes.load_key_state(key, data[4 + n:])

    def _dump(self, key: Any) -> bytes:
        own = self.detector.key_state(key)
        more = self.changes.key_state(key) if self.changes is not None else b""
        return len(own).to_bytes(4, "little") + own + more

    def on_revoke(self, partitions: list[tuple[str, int]]) -> None:
        for p in {p for _t, p in partitions}:
            self._drop_partition(p)

    def _drop_partition(self, p: int) -> None:
        for key in [k for k, q in self._partition_of.items() if q == p]:
            self.detector.forget(key)
            if self.changes is not None:
                self.changes.forget(key)
            self._tails.pop(key, None)
            self._partition_of.pop(key, None)
            self._last_alert.pop(key, None)

    # -- the step ----------------------------------------------------------------------------
    def reads(self) -> list[str]:
        return [f for f in (self.field, self.key, self.time_field) if f]

    def adds(self) -> list[str]:
        return [self.score_column, self.flag_column] + (["change", "change_start"] if self.changes else [])

    def process(self, batch: Batch) -> Batch:
        n = len(batch)
        if not n:
            return batch
        if self.state_store is None:  # outside a worker (tests, replays): in memory
            self.state_store = StateStore(self.name)
        values = np.asarray(batch.column(self.field), dtype=np.float64)
        keys = (np.asarray([str(k) for k in batch.column(self.key).tolist()], dtype=object) if self.key
                else np.full(n, "", dtype=object))
        times = (np.asarray(batch.column(self.time_field), dtype=np.float64) / 1000.0 if self.time_field
                 else batch.timestamps.astype(np.float64) / 1000.0)
        given = times if self.time_field else None
        scores = self.detector.score_many(keys, values, given)
        flags = self._flag(scores)
        batch.with_column(self.score_column, scores)
        batch.with_column(self.flag_column, flags)
        starts = None
        if self.changes is not None:
            starts = self.changes.update_many(keys, values, given)
            batch.with_column("change", starts >= 0)
            batch.with_column("change_start", starts)
        self._persist(batch, keys, values, times)
        if self.alerts and self.ctx is not None:
            self._alert(keys, values, times, scores, flags, starts)
        return batch

    def _flag(self, scores: np.ndarray) -> np.ndarray:
        """At or above ``threshold``, or the running ``1 - alert_rate`` quantile of the recent scores."""
        if self.alert_rate is None:
            return np.nan_to_num(scores, nan=0.0) >= self.threshold
        finite = scores[np.isfinite(scores)]
        if self._recent_n:
            cut = max(self.min_score, float(np.quantile(np.concatenate(self._recent), 1.0 - self.alert_rate)))
        else:
            cut = 1.0
        if len(finite):
            self._recent.append(finite)
            self._recent_n += len(finite)
            while self._recent_n - len(self._recent[0]) >= self._threshold_window:
                self._recent_n -= len(self._recent.popleft())
        return np.nan_to_num(scores, nan=0.0) >= cut

    def _persist(self, batch: Batch, keys: np.ndarray, values: np.ndarray, times: np.ndarray) -> None:
        """Per touched key: the tail grows by this batch's values; at ``snapshot_every`` a snapshot."""
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        bounds = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1
        parts = batch.partitions[order]
        for rows, start in zip(np.split(order, bounds), np.concatenate(([0], bounds))):
            key, p = sorted_keys[start], int(parts[start])
            part = self.state_store.partition(p)
            self._partition_of[key] = p
            tv, tt = self._tails.get(key, (np.empty(0), np.empty(0)))
            tv, tt = np.concatenate((tv, values[rows])), np.concatenate((tt, times[rows]))
            if len(tv) >= self.snapshot_every:
                part.set(_SNAP + key, self._dump(key))
                tv, tt = np.empty(0), np.empty(0)
            self._tails[key] = (tv, tt)
            part.set(_TAIL + key, np.stack((tv, tt)).tobytes())

    def _alert(self, keys: np.ndarray, values: np.ndarray, times: np.ndarray, scores: np.ndarray,
               flags: np.ndarray, starts: np.ndarray | None) -> None:
        for i in np.flatnonzero(flags).tolist():
            key, t = keys[i], float(times[i])
            if t - self._last_alert.get(key, -np.inf) < self.alert_cooldown_s:
                continue
            self._last_alert[key] = t
            self.ctx.alert("series_anomaly", f"series_anomaly:{self._pipeline}:{self.field}:{key}", "firing",
                           f"{self.field} of {key or 'the stream'} = {values[i]:.6g} is anomalous "
                           f"(score {scores[i]:.3f})", key=key, field=self.field, value=float(values[i]),
                           score=float(scores[i]), event_time=t, ttl_s=900.0)
        if starts is not None:
            for i in np.flatnonzero(starts >= 0).tolist():
                key = keys[i]
                self.ctx.alert("change_point", f"change_point:{self._pipeline}:{self.field}:{key}", "firing",
                               f"{self.field} of {key or 'the stream'} changed (from its event {int(starts[i])})",
                               key=key, field=self.field, change_start=int(starts[i]), event_time=float(times[i]),
                               ttl_s=900.0)
