"""Join late ground truth with the predictions it belongs to.

Labels arrive on ``<pipeline>.labels`` (``{"event_id": ..., "label": ...}``) minutes or days
after the prediction on ``<pipeline>.predictions``. :class:`LabelJoinStep` runs in a worker
that reads both topics; it keeps each side waiting by event id for at most ``horizon_s``
(either may come first) and emits one joined record — the prediction record (features,
score, model version) plus ``label`` — when the pair completes. Entries that wait longer
than the horizon, or overflow ``max_pending``, are dropped and counted as unmatched.

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
from tidal.stream.step import Step

__all__ = ["LabelJoinStep"]


class LabelJoinStep(Step):
    """Join predictions and labels by ``id_field``; see the module docstring."""

    name = "label_join"

    def __init__(self, labels_topic: str, id_field: str = "event_id", label_field: str = "label",
                 horizon_s: float = 7 * 24 * 3600, max_pending: int = 2_000_000) -> None:
        self.labels_topic = labels_topic
        self.id_field = id_field
        self.label_field = label_field
        self.horizon_s = horizon_s
        self.max_pending = max_pending
        self.pending_predictions: OrderedDict[Any, tuple[float, dict]] = OrderedDict()
        self.pending_labels: OrderedDict[Any, tuple[float, Any]] = OrderedDict()
        self.unmatched = {"prediction": 0, "label": 0}
        self.matched = 0
        self._counter = None

    def open(self, ctx: Any) -> None:
        from prometheus_client import Counter

        self._pipeline = ctx.pipeline
        if ctx.registry is not None:
            self._counter = Counter("tidal_labels_unmatched", "Predictions or labels dropped unjoined "
                                    "(horizon, overflow).", ["pipeline", "kind"], registry=ctx.registry)

    def _evict(self, now: float) -> None:
        for kind, pending in (("prediction", self.pending_predictions), ("label", self.pending_labels)):
            dropped = 0
            while pending and (len(pending) > self.max_pending or now - next(iter(pending.values()))[0] > self.horizon_s):
                pending.popitem(last=False)
                dropped += 1
            if dropped:
                self.unmatched[kind] += dropped
                if self._counter is not None:
                    self._counter.labels(self._pipeline, kind).inc(dropped)

    def process(self, batch: Batch) -> Batch:
        now = time.time()
        ids = batch.column(self.id_field).tolist()
        is_label = [t == self.labels_topic for t in batch.topics]
        joined: list[dict] = []
        at: list[int] = []
        for i, (eid, label_row) in enumerate(zip(ids, is_label)):
            row = batch.rows[i]
            if label_row:
                label = row.get(self.label_field) if isinstance(row, dict) else getattr(row, self.label_field)
                found = self.pending_predictions.pop(eid, None)
                if found is None:
                    self.pending_labels[eid] = (now, label)
                    continue
                record = found[1]
            else:
                record = row if isinstance(row, dict) else {f: getattr(row, f) for f in row.__struct_fields__}
                found = self.pending_labels.pop(eid, None)
                if found is None:
                    self.pending_predictions[eid] = (now, record)
                    continue
                label = found[1]
            joined.append({**record, self.label_field: label})
            at.append(i)
        self.matched += len(joined)
        self._evict(now)
        idx = np.asarray(at, dtype=np.int64)
        return Batch(values=[orjson.dumps(r) for r in joined], keys=[batch.keys[i] for i in at],
                     topics=[batch.topics[i] for i in at], partitions=batch.partitions[idx],
                     offsets=batch.offsets[idx], timestamps=batch.timestamps[idx], rows=joined,
                     rejected=list(batch.rejected))
