"""Per-key state that survives restarts and rebalances: a store per partition, a changelog topic.

A stateful step declares ``state_name``; the worker gives it a :class:`StateStore` as
``step.state_store``. State is
partitioned like the input: the store for source partition *p* is backed by partition *p* of
the compacted topic ``<pipeline>.<state_name>.changelog``.

- every change a batch makes is written to the changelog **before** the batch's offsets are
  committed (in exactly-once mode, inside the same transaction);
- each changelog record is stamped with the source offset its batch committed up to;
- when Kafka assigns a partition, its store is rebuilt by reading the changelog partition to
  its end, **skipping records stamped past the committed offset** — changes of a batch that
  never committed (a crash between produce and commit) are not applied twice when that batch
  is processed again. This keeps state exact after ``kill -9`` even where the broker does not
  hide aborted transactions.

>>> store = StateStore("counts")
>>> part = store.partition(0)
>>> part.set("card-1", 3); part.get("card-1"), part.get("card-2", 0)
(3, 0)
>>> [(p, k, v) for p, k, v in store.take_changes()]
[(0, 'card-1', 3)]
"""

from __future__ import annotations

import logging
import time
from typing import Any, Iterator

import orjson
from confluent_kafka import Consumer, KafkaError, TopicPartition

from tidal.config import KafkaSettings

__all__ = ["PartitionState", "StateStore", "restore_partitions", "DELETED"]

log = logging.getLogger("tidal.state")

DELETED = object()


class PartitionState:
    """The state of one partition: a dict of JSON-serialisable values with change tracking."""

    __slots__ = ("data", "dirty")

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.dirty: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.dirty.add(key)

    def delete(self, key: str) -> None:
        if self.data.pop(key, DELETED) is not DELETED:
            self.dirty.add(key)

    def __len__(self) -> int:
        return len(self.data)


class StateStore:
    """All partitions of one named state held by this worker."""

    def __init__(self, name: str, changelog: str | None = None) -> None:
        self.name = name
        self.changelog = changelog or f"{name}.changelog"
        self.partitions: dict[int, PartitionState] = {}

    def partition(self, p: int) -> PartitionState:
        part = self.partitions.get(p)
        if part is None:
            part = self.partitions[p] = PartitionState()
        return part

    def drop(self, p: int) -> None:
        self.partitions.pop(p, None)

    def size(self) -> int:
        return sum(len(p) for p in self.partitions.values())

    def take_changes(self) -> Iterator[tuple[int, str, Any]]:
        """(partition, key, value or DELETED) for every key changed since the last call."""
        for p, part in self.partitions.items():
            if part.dirty:
                for key in part.dirty:
                    yield p, key, part.data.get(key, DELETED)
                part.dirty = set()

    def changelog_records(self, stamps: dict[int, int]) -> list[tuple[int, bytes, bytes]]:
        """(partition, key, value) to produce; ``stamps[p]`` is the batch's next source offset."""
        out = []
        for p, key, value in self.take_changes():
            record = {"o": stamps.get(p, -1), "d": 1} if value is DELETED else {"o": stamps.get(p, -1), "v": value}
            out.append((p, key.encode(), orjson.dumps(record)))
        return out


def restore_partitions(settings: KafkaSettings, store: StateStore, committed: dict[int, int],
                       timeout: float = 60.0) -> int:
    """Rebuild ``store``'s partitions from the changelog; returns the records applied.

    ``committed[p]`` is source partition *p*'s committed offset (-1 if none). Records stamped
    beyond it belong to batches that never committed and are skipped.
    """
    if not committed:
        return 0
    for p in committed:
        part = store.partition(p)
        part.data.clear()
        part.dirty.clear()
    c = Consumer(settings.client_config({"group.id": f"tidal.restore.{store.name}", "enable.auto.commit": False,
                                         "enable.partition.eof": True, "isolation.level": "read_committed",
                                         "log_level": 3}))
    applied = 0
    try:
        c.assign([TopicPartition(store.changelog, p, 0) for p in committed])
        waiting = set(committed)
        deadline = time.monotonic() + timeout
        while waiting:
            if time.monotonic() > deadline:
                raise TimeoutError(f"restoring {store.changelog} {sorted(waiting)} took over {timeout:.0f}s")
            for m in c.consume(10_000, 0.2):
                err = m.error()
                p = m.partition()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        waiting.discard(p)
                        continue
                    raise RuntimeError(f"restore {store.changelog}[{p}]: {err.str()}")
                data = store.partitions[p].data
                value = m.value()
                if value is None:
                    data.pop(m.key().decode(), None)
                    continue
                record = orjson.loads(value)
                if record["o"] > committed[p]:
                    continue  # written by a batch whose offsets never committed (none did, if -1)
                if record.get("d"):
                    data.pop(m.key().decode(), None)
                else:
                    data[m.key().decode()] = record["v"]
                applied += 1
        return applied
    finally:
        c.close()
