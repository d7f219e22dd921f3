"""Per-key state that survives restarts and rebalances: a store per partition, a changelog topic.

A stateful step declares ``state_name`` (unique in its pipeline); the worker gives it a
:class:`StateStore` (``ctx.store``, also ``step.state_store``). State is partitioned like
the input: the store for source partition *p* is backed by partition *p* of the compacted
topic ``<pipeline>.<state_name>.changelog``. A pipeline with several source topics (a join)
needs them co-partitioned: partition *p* of each goes to the same worker (the range assignor).

- every change a batch makes is written to the changelog **before** the batch's offsets are
  committed (in exactly-once mode, inside the same transaction);
- each changelog record is stamped with the source offset its batch committed up to;
- when Kafka assigns a partition, its store is rebuilt by reading the changelog partition to
  its end, **skipping records stamped past the committed offset** — changes of a batch that
  never committed (a crash between produce and commit) are not applied twice when that batch
  is processed again. This keeps state exact after ``kill -9`` even where the broker does not
  hide aborted transactions.

Two backends keep the same semantics: ``memory`` (a dict per partition, the default) and
``rocksdb`` (a RocksDB database per partition through ``rocksdict``, for state larger than
memory; see :mod:`tidal.stream.rocks`). Values are JSON-serialisable, plus :class:`Opaque`
leaves (sketches, reducer states) that travel as bytes and come back as ``{"$b": base64}``,
for the step that owns them to revive (:func:`opaque_bytes`).

>>> store = StateStore("counts")
>>> part = store.partition(0)
>>> part.set("card-1", 3); part.get("card-1"), part.get("card-2", 0)
(3, 0)
>>> [(p, k, v) for p, k, v in store.take_changes()]
[(0, 'card-1', 3)]
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
import zlib
from typing import Any, Iterator

import orjson
from confluent_kafka import Consumer, KafkaError, TopicPartition

from tidal.config import KafkaSettings

__all__ = ["PartitionState", "StateStore", "restore_partitions", "apply_record", "encode_value", "opaque_bytes",
           "Opaque", "DELETED", "BACKENDS"]

log = logging.getLogger("tidal.state")

DELETED = object()
BACKENDS = ("memory", "rocksdb")
_BYTES = "$b"


class Opaque:
    """A state leaf held as a live object in memory and written as bytes (``to_bytes``)."""

    __slots__ = ()

    def to_bytes(self) -> bytes:
        raise NotImplementedError


def _default(obj: Any) -> Any:
    if isinstance(obj, Opaque):
        obj = obj.to_bytes()
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return {_BYTES: base64.b64encode(obj).decode()}
    raise TypeError(f"state values must be JSON-serialisable or Opaque, not {type(obj).__name__}")


def encode_value(value: Any) -> bytes:
    """JSON bytes of a state value; :class:`Opaque` leaves and bytes become ``{"$b": base64}``."""
    return orjson.dumps(value, default=_default)


def opaque_bytes(value: Any) -> bytes | None:
    """The bytes of an encoded opaque leaf (as restored from a changelog), else None."""
    if isinstance(value, dict) and _BYTES in value:
        return base64.b64decode(value[_BYTES])
    return None


class PartitionState:
    """The state of one partition in memory: a dict of values with change tracking.

    Every backend's partition offers the same methods: ``get``/``set``/``delete``/``items``/
    ``len`` for steps (always ``set`` a value again after changing it), and ``load``/``unload``/
    ``clear``/``take_dirty``/``flush``/``close`` for the store and restore.
    """

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

    def items(self) -> Iterator[tuple[str, Any]]:
        return iter(list(self.data.items()))

    def load(self, key: str, value: Any) -> None:
        """Set without recording a change (restore)."""
        self.data[key] = value

    def unload(self, key: str) -> None:
        """Delete without recording a change (restore)."""
        self.data.pop(key, None)

    def clear(self) -> None:
        self.data.clear()
        self.dirty.clear()

    def take_dirty(self) -> list[tuple[str, Any]]:
        """(key, value or DELETED) of every key changed since the last call."""
        out = [(k, self.data.get(k, DELETED)) for k in self.dirty]
        self.dirty = set()
        return out

    def flush(self) -> None:
        """Write buffered changes to storage (nothing to write in memory)."""

    def close(self, destroy: bool = False) -> None:
        """Release resources (nothing to release in memory)."""

    def __len__(self) -> int:
        return len(self.data)


class StateStore:
    """All partitions of one named state held by this worker, in ``backend`` (``memory``/``rocksdb``).

    ``path``: the folder under which the ``rocksdb`` backend makes a fresh scratch folder per
    store (default: the system temp folder); the changelog stays the record of truth.
    """

    def __init__(self, name: str, changelog: str | None = None, backend: str = "memory",
                 path: str | None = None) -> None:
        self.name = name
        self.changelog = changelog or f"{name}.changelog"
        self.partitions: dict[int, Any] = {}
        self._root: Any = None
        self._chunked: dict[tuple[int, str], tuple[str, int]] = {}  # (p, key) -> chunks of its last value
        self._generation = 0
        self.use_backend(backend, path)

    def use_backend(self, backend: str, path: str | None = None) -> None:
        """Choose the backend; only while the store holds no partition yet."""
        if backend not in BACKENDS:
            raise ValueError(f"unknown state backend {backend!r}; use one of {BACKENDS}")
        if self.partitions:
            raise RuntimeError(f"state {self.name!r} already holds partitions: choose its backend first")
        if backend == "rocksdb":
            from tidal.stream.rocks import RocksPartition  # noqa: F401 - fail here if rocksdict is missing
        self.backend, self.path = backend, path

    def partition(self, p: int) -> Any:
        part = self.partitions.get(p)
        if part is None:
            if self.backend == "memory":
                part = PartitionState()
            else:
                from tidal.stream.rocks import RocksPartition, scratch_root

                if self._root is None:
                    self._root = scratch_root(self.name, self.path)
                part = RocksPartition(self._root.path / f"p{p}")
            self.partitions[p] = part
        return part

    def drop(self, p: int) -> None:
        part = self.partitions.pop(p, None)
        for key in [k for k in self._chunked if k[0] == p]:
            del self._chunked[key]
        if part is not None:
            part.close(destroy=True)

    def close(self) -> None:
        """Drop every partition (and the rocksdb scratch folder)."""
        for p in list(self.partitions):
            self.drop(p)
        if self._root is not None:
            self._root.cleanup()
            self._root = None

    def size(self) -> int:
        return sum(len(p) for p in self.partitions.values())

    def take_changes(self) -> Iterator[tuple[int, str, Any]]:
        """(partition, key, value or DELETED) for every key changed since the last call."""
        for p, part in self.partitions.items():
            for key, value in part.take_dirty():
                yield p, key, value

    def changelog_records(self, stamps: dict[int, Any]) -> list[tuple[int, bytes, bytes | None]]:
        """(partition, key, value) to produce; ``stamps[p]`` is the batch's next source offset
        (one source topic), or ``{topic: next offset}`` of the topics the batch read (several).

        A value whose record is over :data:`CHUNK_BYTES` is compressed and, if still too big,
        written as chunks (see :func:`chunk_record`), so no state value is ever too large to produce."""
        out: list[tuple[int, bytes, bytes | None]] = []
        for p, key, value in self.take_changes():
            stamp = stamps.get(p, -1)
            record = encode_value({"o": stamp, "d": 1} if value is DELETED else {"o": stamp, "v": value})
            old = self._chunked.pop((p, key), None)
            if len(record) > CHUNK_BYTES:
                self._generation += 1
                gen = f"{int(time.time() * 1000)}.{self._generation}"
                recs = chunk_record(key, stamp, record, gen)
                out.extend((p, k, v) for k, v in recs)
                self._chunked[(p, key)] = (gen, len(recs) - 1)
            else:
                out.append((p, key.encode(), record))
            if old is not None:  # the previous value's chunks: tombstones, after the new value
                out.extend((p, chunk_key(key, old[0], i), None) for i in range(old[1]))
        return out


CHUNK_BYTES = 256 * 1024  # a changelog value over this is compressed, then split into chunks of at most this
_CHUNK = "\x00z"


def chunk_key(key: str, gen: str, i: int) -> bytes:
    return f"{key}{_CHUNK}{gen}:{i}".encode()


def chunk_record(key: str, stamp: Any, record: bytes, gen: str) -> list[tuple[bytes, bytes]]:
    """A large changelog record as zlib-compressed chunks (keys ``<key>\\x00z<gen>:<i>``), then
    the key's own record ``{"o": stamp, "z": [gen, n, sha256]}`` naming them. Chunks come first
    on the same partition, so a restore has them when it reads the key's record; generations
    make a newer value's chunks never overwrite (under compaction) an older one's."""
    data = zlib.compress(record, 1)
    parts = [data[i:i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)] or [b""]
    out = [(chunk_key(key, gen, i), part) for i, part in enumerate(parts)]
    head = orjson.dumps({"o": stamp, "z": [gen, len(parts), hashlib.sha256(data).hexdigest()]})
    return out + [(key.encode(), head)]


def _uncommitted(stamp: Any, committed: Any) -> bool:
    """Whether a record's stamp lies past what committed: ints for one source topic, dicts
    ``{topic: offset}`` for several (co-partitioned) ones."""
    if isinstance(stamp, dict):
        return any(o > (committed.get(t, -1) if isinstance(committed, dict) else committed) for t, o in stamp.items())
    return stamp > (max(committed.values(), default=-1) if isinstance(committed, dict) else committed)


def apply_record(part: Any, key: bytes, value: bytes | None, committed: Any,
                 chunks: dict[bytes, bytes] | None = None, chunked: dict[str, tuple[str, int]] | None = None) -> bool:
    """Apply one changelog record to a partition being restored; False if skipped.

    A record stamped past ``committed`` (the source partition's committed offset, -1 if none;
    ``{topic: offset}`` with several source topics) was written by a batch whose offsets never
    committed, and is skipped. ``chunks`` collects the chunks of large values
    (:func:`chunk_record`) until their key's record arrives; ``chunked`` notes, per key, the
    chunks its value is in (so the next value can delete them).
    """
    if _CHUNK.encode() in key:
        if chunks is not None:
            if value is None:
                chunks.pop(key, None)
            else:
                chunks[key] = value
        return False
    if value is None:  # a tombstone left by compaction tooling
        part.unload(key.decode())
        return False
    record = orjson.loads(value)
    if _uncommitted(record["o"], committed):
        return False
    if "z" in record:
        gen, n, digest = record["z"]
        name = key.decode()
        try:
            data = b"".join((chunks or {}).pop(chunk_key(name, gen, i)) for i in range(n))
        except KeyError:
            raise RuntimeError(f"changelog value of {name!r} lacks chunks of generation {gen}") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise RuntimeError(f"changelog value of {name!r}: chunks of generation {gen} do not match their checksum")
        record = orjson.loads(zlib.decompress(data))
        if chunked is not None:
            chunked[name] = (gen, n)
    elif chunked is not None:
        chunked.pop(key.decode(), None)
    if record.get("d"):
        part.unload(key.decode())
    else:
        part.load(key.decode(), record["v"])
    return True


def restore_partitions(settings: KafkaSettings, store: StateStore, committed: dict[int, Any],
                       timeout: float = 60.0) -> int:
    """Rebuild ``store``'s partitions from the changelog; returns the records applied.

    ``committed[p]`` is source partition *p*'s committed offset (-1 if none), or
    ``{topic: offset}`` with several source topics. Records stamped beyond it belong to batches
    that never committed and are skipped.
    """
    if not committed:
        return 0
    for p in committed:
        store.partition(p).clear()
        for key in [k for k in store._chunked if k[0] == p]:
            del store._chunked[key]
    c = Consumer(settings.client_config({"group.id": f"tidal.restore.{store.name}", "enable.auto.commit": False,
                                         "enable.partition.eof": True, "isolation.level": "read_committed",
                                         "log_level": 3}))
    applied = 0
    chunks: dict[int, dict[bytes, bytes]] = {p: {} for p in committed}
    chunked: dict[int, dict[str, tuple[str, int]]] = {p: {} for p in committed}
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
                applied += apply_record(store.partitions[p], m.key(), m.value(), committed[p], chunks[p], chunked[p])
        for p in committed:
            store.partitions[p].flush()
            store._chunked.update(((p, k), v) for k, v in chunked[p].items())
        return applied
    finally:
        c.close()
