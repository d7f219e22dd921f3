"""Enrichment: join each event with the latest value per key of a compacted table topic.

``TableJoin("customers", key="customer_id", fields=["segment", "tenure_days"])`` keeps the
latest record per Kafka key of topic ``customers`` (e.g. a customer profile, a CDC stream) in
memory — read from the beginning when the worker starts, then followed as it changes, like
Kafka Streams' GlobalKTable — and adds the chosen fields to each event whose ``key`` field
matches (``None`` when there is no match yet; a tombstone removes the key). The compacted
topic is the table's changelog, so nothing else needs restoring after a restart.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Sequence

import numpy as np
from confluent_kafka import Consumer, KafkaError, TopicPartition

from tidal.broker.skipped import loads_or_skip
from tidal.config import KafkaSettings
from tidal.stream.batch import Batch
from tidal.stream.step import Step

__all__ = ["TableJoin"]


class TableJoin(Step):
    """Add ``fields`` of table ``topic``'s latest record for each event's ``key`` value."""

    name = "enrich"

    def __init__(self, topic: str, key: str, fields: Sequence[str], prefix: str = "",
                 wait_s: float = 60.0) -> None:
        self.topic, self.key, self.fields, self.prefix, self.wait_s = topic, key, list(fields), prefix, wait_s
        self.table: dict[str, dict[str, Any]] = {}
        self._loaded = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def open(self, ctx: Any) -> None:
        self._thread = threading.Thread(target=self._follow, args=(ctx.settings,), daemon=True,
                                        name=f"tidal-table-{self.topic}")
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _follow(self, settings: KafkaSettings) -> None:
        c = Consumer(settings.client_config({"group.id": f"tidal.table.{self.topic}", "enable.auto.commit": False,
                                             "enable.partition.eof": True, "log_level": 3}))
        try:
            parts = c.list_topics(self.topic, timeout=10).topics[self.topic].partitions
            c.assign([TopicPartition(self.topic, p, 0) for p in parts])
            loading = set(parts)
            while not self._stop.is_set():
                for m in c.consume(10_000, 0.1):
                    err = m.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            loading.discard(m.partition())
                        continue
                    key = m.key().decode() if m.key() is not None else None
                    if key is None:
                        continue
                    if m.value() is None:
                        self.table.pop(key, None)
                    else:
                        row = loads_or_skip(m.value(), self.topic)  # a bad table record never stops the join
                        if row is not None:
                            self.table[key] = row
                if not loading:
                    self._loaded.set()
        finally:
            c.close()

    def process(self, batch: Batch) -> Batch:
        if not self._loaded.is_set():
            deadline = time.monotonic() + self.wait_s
            while not self._loaded.wait(0.1):  # the whole table first: no event joins a half-read table
                if time.monotonic() > deadline:
                    raise TimeoutError(f"table {self.topic} not loaded within {self.wait_s:.0f}s")
        get = self.table.get
        matches = [get(str(k)) for k in batch.column(self.key).tolist()]
        for f in self.fields:
            batch.with_column(self.prefix + f, np.array([m.get(f) if m else None for m in matches], dtype=object))
        return batch
