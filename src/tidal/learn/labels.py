"""Join late ground truth with the predictions it belongs to.

Labels arrive on ``<pipeline>.labels`` (``{"event_id": ..., "label": ...}``) minutes or days
after the prediction on ``<pipeline>.predictions``. :class:`LabelJoinStep` runs in a worker
that reads both topics; it keeps each side waiting by event id for at most ``horizon_s``
(either may come first) and emits one joined record — the prediction record (features,
score, model version) plus ``label`` — when the pair completes. Entries that wait longer
than the horizon, or overflow ``max_pending``, are dropped and counted as unmatched.

The waiting rows are the step's state (``state_name``): kept in the worker's state store,
partition by partition, and restored from its changelog after a restart or a rebalance, so
a label that arrives within the horizon finds its prediction even across a ``kill -9``. A
label finds its prediction in any partition this worker holds (one worker: all of them);
with several workers, key both topics by event id so the pair meets on one worker.

>>> step = LabelJoinStep("p.labels")
>>> b = Batch.from_rows([{"event_id": "a", "score": 0.9, "model_version": "1"}], topic="p.predictions")
>>> len(step.process(b)), len(step.pending_predictions)
(0, 1)
>>> out = step.process(Batch.from_rows([{"event_id": "a", "label": 1}], topic="p.labels"))
>>> out.rows
[{'event_id': 'a', 'score': 0.9, 'model_version': '1', 'label': 1}]
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

import numpy as np
import orjson

from tidal.stream.batch import Batch
from tidal.stream.state import StateStore
from tidal.stream.step import Step

__all__ = ["LabelJoinStep"]

_PRED, _LABEL = "p:", "l:"


class LabelJoinStep(Step):
    """Join predictions and labels by ``id_field``; see the module docstring."""

    def __init__(self, labels_topic: str, id_field: str = "event_id", label_field: str = "label",
                 horizon_s: float = 7 * 24 * 3600, max_pending: int = 2_000_000, name: str = "label_join") -> None:
        self.name = self.state_name = name
        self.labels_topic = labels_topic
        self.id_field = id_field
        self.label_field = label_field
        self.horizon_s = horizon_s
        self.max_pending = max_pending
        self.unmatched = {"prediction": 0, "label": 0}
        self.matched = 0
        self._counter = None
        self._pipeline = ""
        # per store partition, the waiting keys in arrival order, with their arrival time
        self._waiting: dict[int, OrderedDict[str, float]] = {}
        self._where: dict[str, int] = {}  # waiting key -> its store partition

    def _load(self, p: int) -> OrderedDict[str, float]:
        w = self._waiting.get(p)
        if w is None:
            items = sorted(((v["t"], k) for k, v in self.state_store.partition(p).items()))
            w = self._waiting[p] = OrderedDict((k, t) for t, k in items)
            self._where.update((k, p) for k in w)
        return w

    def open(self, ctx: Any) -> None:
        from prometheus_client import Counter

        self._pipeline = ctx.pipeline
        if ctx.registry is not None:
            self._counter = Counter("tidal_labels_unmatched", "Predictions or labels dropped unjoined "
                                    "(horizon, overflow).", ["pipeline", "kind"], registry=ctx.registry)

    def on_assign(self, partitions: list[tuple[str, int]]) -> None:
        for p in {p for _t, p in partitions}:  # rebuilt from the (restored) store
            for key in self._waiting.pop(p, {}):
                self._where.pop(key, None)
            if self.state_store is not None:
                self._load(p)

    def on_revoke(self, partitions: list[tuple[str, int]]) -> None:
        for p in {p for _t, p in partitions}:
            for key in self._waiting.pop(p, {}):
                self._where.pop(key, None)

    @property
    def pending_predictions(self) -> dict[str, float]:
        """Predictions waiting for their label: {id key: arrival time}."""
        return {k: t for w in self._waiting.values() for k, t in w.items() if k.startswith(_PRED)}

    @property
    def pending_labels(self) -> dict[str, float]:
        """Labels waiting for their prediction: {id key: arrival time}."""
        return {k: t for w in self._waiting.values() for k, t in w.items() if k.startswith(_LABEL)}

    def _take(self, key: str) -> Any:
        """The waiting value of ``key`` (any partition held here), removed; None if not waiting."""
        p = self._where.pop(key, None)
        if p is None:
            return None
        part = self.state_store.partition(p)
        value = part.get(key)
        part.delete(key)
        self._waiting[p].pop(key, None)
        return value

    def _wait(self, p: int, key: str, value: dict, now: float) -> None:
        self.state_store.partition(p).set(key, value)
        self._load(p)[key] = now
        self._where[key] = p

    def _evict(self, now: float) -> None:
        dropped = {"prediction": 0, "label": 0}
        total = sum(len(w) for w in self._waiting.values())
        for p, w in self._waiting.items():
            part = self.state_store.partition(p)
            while w:
                key, t = next(iter(w.items()))
                if now - t <= self.horizon_s and total <= self.max_pending:
                    break
                w.popitem(last=False)
                part.delete(key)
                self._where.pop(key, None)
                total -= 1
                dropped["prediction" if key.startswith(_PRED) else "label"] += 1
        for kind, n in dropped.items():
            if n:
                self.unmatched[kind] += n
                if self._counter is not None:
                    self._counter.labels(self._pipeline, kind).inc(n)

    def process(self, batch: Batch) -> Batch:
        if self.state_store is None:  # outside a worker (tests, replays): in memory
            self.state_store = StateStore(self.name)
        now = time.time()
        ids = [orjson.dumps(i).decode() for i in batch.column(self.id_field).tolist()]
        parts = batch.partitions.tolist()
        joined: list[dict] = []
        at: list[int] = []
        for i, (eid, p, topic) in enumerate(zip(ids, parts, batch.topics)):
            row = batch.rows[i]
            self._load(p)
            if topic == self.labels_topic:
                label = row.get(self.label_field) if isinstance(row, dict) else getattr(row, self.label_field)
                found = self._take(_PRED + eid)
                if found is None:
                    self._wait(p, _LABEL + eid, {"t": now, "l": label}, now)
                    continue
                record = found["r"]
            else:
                record = row if isinstance(row, dict) else {f: getattr(row, f) for f in row.__struct_fields__}
                found = self._take(_LABEL + eid)
                if found is None:
                    self._wait(p, _PRED + eid, {"t": now, "r": record}, now)
                    continue
                label = found["l"]
            joined.append({**record, self.label_field: label})
            at.append(i)
        self.matched += len(joined)
        self._evict(now)
        idx = np.asarray(at, dtype=np.int64)
        return Batch(values=[orjson.dumps(r) for r in joined], keys=[batch.keys[i] for i in at],
                     topics=[batch.topics[i] for i in at], partitions=batch.partitions[idx],
                     offsets=batch.offsets[idx], timestamps=batch.timestamps[idx], rows=joined,
                     rejected=list(batch.rejected))
