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

By default every assignment replays the whole changelog partition (a ``rocksdb`` store's
databases are scratch). With ``state_dir`` (a step's ``state_dir``, YAML ``state: {dir: ...}``
or ``$TIDAL_STATE_DIR`` for the worker) a ``rocksdb`` store keeps each partition's database at
``<state_dir>/<changelog>/p<q>`` across restarts on the same host, with a checkpoint of the
changelog offset it reflects (:meth:`StateStore.checkpoint`, written only where the database
equals committed state); the next assignment replays only the changelog from there. A database
that is missing, unreadable, marked dirty (a crash between its writes and their commit), or
stale (its offset past the partition's end or before its start, another topic id, a source
offset committed before the checkpoint's) is wiped and rebuilt from the whole changelog.

A restore logs its progress every ``PROGRESS_EVERY_S`` seconds (records applied, records/s,
records left and an ETA from the changelog's high watermarks) and reports it through a
``progress(records, remaining)`` callback (the worker's hooks: Prometheus metrics).

>>> store = StateStore("counts")
>>> part = store.partition(0)
>>> part.set("card-1", 3); part.get("card-1"), part.get("card-2", 0)
(3, 0)
>>> [(p, k, v) for p, k, v in store.take_changes()]
[(0, 'card-1', 3)]
"""

from __future__ import annotations

import base64
import gc
import hashlib
import logging
import re
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from tidal.config import KafkaSettings

__all__ = ["PartitionState", "StateStore", "RestoreCancelled", "restore_partitions", "apply_record", "encode_value", "opaque_bytes",
           "Opaque", "DELETED", "BACKENDS", "STATE_DIR_ENV"]

log = logging.getLogger("tidal.state")

DELETED = object()
BACKENDS = ("memory", "rocksdb")
STATE_DIR_ENV = "TIDAL_STATE_DIR"  # the worker's default state_dir (warm rocksdb restarts)
PROGRESS_EVERY_S = 2.0  # a restore logs (and reports) its progress this often


class RestoreCancelled(Exception):
    """A restore was called off (its partitions were revoked, or the worker is stopping)."""
CHECKPOINT_EVERY_S = 5.0  # idle checkpoints of a persistent store, at most this often
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
    ``state_dir``: a persistent folder instead (``rocksdb`` only; ignored in memory): each
    partition's database stays at ``<state_dir>/<changelog>/p<q>`` with a checkpoint, so a
    restart on the same host replays only the changelog's tail (see :meth:`checkpoint`).
    """

    def __init__(self, name: str, changelog: str | None = None, backend: str = "memory",
                 path: str | None = None, state_dir: str | None = None) -> None:
        self.name = name
        self.changelog = changelog or f"{name}.changelog"
        self.partitions: dict[int, Any] = {}
        self._root: Any = None
        self._chunked: dict[tuple[int, str], tuple[str, int]] = {}  # (p, key) -> chunks of its last value
        self._generation = 0
        self.state_dir = state_dir
        self._stamps: dict[int, Any] = {}  # per partition: the newest stamp restored to or produced
        self._checkpoint_at = 0.0
        self.last_restore: dict[str, Any] = {}  # what the last restore did (warm/cold partitions, records)
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

    @property
    def persistent(self) -> bool:
        return self.backend == "rocksdb" and bool(self.state_dir)

    def partition_dir(self, p: int) -> Path:
        """Where partition ``p``'s persistent database lives (``state_dir`` set)."""
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", self.changelog)
        return Path(self.state_dir) / safe / f"p{p}"

    def partition(self, p: int) -> Any:
        part = self.partitions.get(p)
        if part is None:
            if self.backend == "memory":
                part = PartitionState()
            else:
                from tidal.stream.rocks import RocksPartition, scratch_root

                if self.persistent:
                    try:
                        part = RocksPartition(self.partition_dir(p), persistent=True)
                    except Exception as exc:  # noqa: BLE001 - e.g. another process holds its lock
                        log.warning("state %s[%d]: %s unusable (%s); using a scratch database", self.name, p,
                                    self.partition_dir(p), exc)
                if part is None:
                    if self._root is None:
                        self._root = scratch_root(self.name, self.path)
                    part = RocksPartition(self._root.path / f"p{p}")
            self.partitions[p] = part
        return part

    def drop(self, p: int) -> None:
        """Forget partition ``p`` (revoked): a scratch database is deleted, a persistent one closed
        as it is (clean only if :meth:`checkpoint` wrote so since its last change)."""
        part = self.partitions.pop(p, None)
        for key in [k for k in self._chunked if k[0] == p]:
            del self._chunked[key]
        self._stamps.pop(p, None)
        if part is not None:
            part.close(destroy=not getattr(part, "persistent", False))

    def staging(self) -> "StateStore":
        """An empty store like this one, to restore partitions into off the worker's thread
        (then :meth:`adopt`): the same changelog, backend and folders."""
        other = StateStore(self.name, self.changelog, self.backend, self.path, self.state_dir)
        if self.backend == "rocksdb" and not self.persistent:
            from tidal.stream.rocks import scratch_root

            if self._root is None:
                self._root = scratch_root(self.name, self.path)
            other._root = self._root  # the scratch databases live where this store cleans up
        other._topic_id = self._topic_id
        return other

    def adopt(self, other: "StateStore") -> list[int]:
        """Take the restored partitions of ``other`` (made by :meth:`staging`); returns them."""
        taken = sorted(other.partitions)
        self.partitions.update(other.partitions)
        self._chunked.update(other._chunked)
        self._stamps.update(other._stamps)
        self._topic_id = other._topic_id or self._topic_id
        self.last_restore = other.last_restore
        other.partitions, other._chunked, other._stamps = {}, {}, {}
        return taken

    def discard(self) -> None:
        """Give up a staging store: its partitions are closed (scratch databases deleted,
        persistent ones left as they are, not marked clean), the shared folder kept."""
        for p in list(self.partitions):
            self.drop(p)
        self._root = None

    def close(self) -> None:
        """Drop every partition (and the rocksdb scratch folder)."""
        for p in list(self.partitions):
            self.drop(p)
        if self._root is not None:
            self._root.cleanup()
            self._root = None

    def checkpoint(self, consumer: Any, partitions: Any = None, force: bool = True) -> int:
        """Note, in each persistent partition's database, that it equals committed state.

        Call only where that holds: every change taken from the store was delivered and its
        batch's offsets committed (or are being committed: a checkpoint also records the newest
        source offset its records carry, and a restore that finds less committed rebuilds), and
        no new change has been written since. ``consumer``: any client with
        ``get_watermark_offsets`` (the changelog's end is where the next restore starts).
        ``partitions``: only these; ``force=False``: at most every :data:`CHECKPOINT_EVERY_S`.
        Partitions with changes not yet taken, or already clean, are left as they are.
        Returns the partitions checkpointed.
        """
        if not self.persistent:
            return 0
        now = time.monotonic()
        if not force and now - self._checkpoint_at < CHECKPOINT_EVERY_S:
            return 0
        todo = [(p, part) for p, part in self.partitions.items()
                if (partitions is None or p in partitions) and getattr(part, "persistent", False)
                and not part.clean and not part.dirty]
        if not todo:
            return 0
        self._checkpoint_at = now
        done = 0
        for p, part in todo:
            try:
                _low, high = consumer.get_watermark_offsets(TopicPartition(self.changelog, p), timeout=5, cached=False)
            except Exception as exc:  # noqa: BLE001 - no checkpoint: the next restore replays it all
                log.warning("state %s[%d]: no checkpoint (changelog end unknown: %s)", self.name, p, exc)
                continue
            if high < 0:
                continue
            part.mark_clean(self._checkpoint_info(p, high))
            done += 1
        return done

    def _checkpoint_info(self, p: int, offset: int) -> dict[str, Any]:
        chunked = {k: list(v) for (q, k), v in self._chunked.items() if q == p}
        return {"topic": self.changelog, "partition": p, "offset": offset, "committed": self._stamps.get(p, -1),
                "topic_id": self._topic_id, "chunked": chunked, "at": time.time()}

    _topic_id: str | None = None

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
            self._note_stamp(p, stamp)
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

    def _note_stamp(self, p: int, stamp: Any) -> None:
        have = self._stamps.get(p, -1)
        if isinstance(stamp, dict):
            merged = dict(have) if isinstance(have, dict) else {}
            for t, o in stamp.items():
                merged[t] = max(o, merged.get(t, -1))
            self._stamps[p] = merged
        elif isinstance(stamp, int) and stamp >= 0 and not isinstance(have, dict):
            self._stamps[p] = max(have, stamp)


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
    return _apply_decoded(part, key, orjson.loads(value), committed, chunks, chunked)


def _apply_decoded(part: Any, key: bytes, record: dict[str, Any], committed: Any,
                   chunks: dict[bytes, bytes] | None, chunked: dict[str, tuple[str, int]] | None) -> bool:
    """:func:`apply_record` of a key's record already decoded (not a chunk, not a tombstone)."""
    if _uncommitted(record["o"], committed):
        return False
    if "z" in record:
        gen, n, digest = record["z"]
        name = key.decode()
        try:
            data = b"".join((chunks or {}).pop(chunk_key(name, gen, i)) for i in range(n))
        except KeyError:
            if chunked is not None and chunked.get(name) == (gen, n):
                return False  # a warm restore from just before this value: the database has it already
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


#: The restore consumer's fetch sizes: large fetches cut the broker round trips of a long restore
#: (1M small records: 2.8 s to read with librdkafka's defaults, 0.9 s with these).
RESTORE_CONSUMER = {"fetch.max.bytes": 64 * 1024 * 1024, "max.partition.fetch.bytes": 16 * 1024 * 1024,
                    "queued.min.messages": 1_000_000, "queued.max.messages.kbytes": 256 * 1024}
_CONSUME_N = 10_000


def _topic_id(settings: KafkaSettings, topic: str) -> str | None:
    """The changelog topic's id (a recreated topic gets a new one), or None if the broker does not say."""
    try:
        from confluent_kafka import TopicCollection
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(settings.client_config({"log_level": 0}))
        desc = admin.describe_topics(TopicCollection([topic]), request_timeout=10)[topic].result(15)
        tid = str(desc.topic_id) if desc.topic_id is not None else ""
        return tid if tid and set(tid) - set("A=") else None  # an all-zero id: unknown
    except Exception as exc:  # noqa: BLE001 - without it, offsets alone judge a checkpoint
        log.debug("no topic id for %s: %s", topic, exc)
        return None


def _warm_start(part: Any, store: StateStore, p: int, committed: Any, low: int, high: int,
                topic_id: str | None) -> tuple[int | None, str]:
    """Where a persistent partition's restore starts (None: from scratch) and why.

    A checkpoint past ``high`` starts at ``high``, and the restore checks, when it reaches the
    partition's end, that the end is not before the checkpoint (else it starts over from scratch):
    a broker may answer ListOffsets short of the end (the embedded one, by the last record batch),
    and reading again records the database already reflects changes nothing (each record is its
    key's whole value)."""
    info = part.checkpoint_info()
    if info is None:
        return None, part.found  # new, dirty (a crash after writes not committed) or corrupt
    if info.get("topic") != store.changelog or info.get("partition") != p:
        return None, "checkpoint of another changelog"
    if topic_id and info.get("topic_id") and info["topic_id"] != topic_id:
        return None, "changelog topic recreated (another topic id)"
    offset = info["offset"]
    if high < 0:
        return None, "the changelog's end is unknown"
    if low > offset:
        return None, f"checkpoint offset {offset} before the changelog's start {low}"
    try:
        if _uncommitted(info.get("committed", -1), committed):
            return None, f"source offsets committed before the checkpoint's ({info.get('committed')})"
    except TypeError:
        return None, "checkpoint of another source layout"
    return min(offset, high), "clean"


def _start_over(store: StateStore, p: int, why: str, chunks: dict, chunked: dict) -> None:
    """A warm partition found stale during its restore: wipe it and replay from the start."""
    log.warning("state %s[%d]: local database not used (%s): restoring the whole changelog", store.name, p, why)
    store.partitions[p].clear()
    chunks.clear()
    chunked.clear()
    r = store.last_restore
    r["warm"].remove(p)
    r["cold"].append(p)
    r["why"][p] = why


def restore_partitions(settings: KafkaSettings, store: StateStore, committed: dict[int, Any],
                       timeout: float = 60.0, progress: Callable[[int, int], None] | None = None,
                       cancelled: Callable[[], bool] | None = None) -> int:
    """Rebuild ``store``'s partitions from the changelog; returns the records applied.

    ``committed[p]`` is source partition *p*'s committed offset (-1 if none), or
    ``{topic: offset}`` with several source topics. Records stamped beyond it belong to batches
    that never committed and are skipped. ``timeout``: the longest the restore may go without
    reading anything. A persistent store's partition with a valid checkpoint (see
    :func:`_warm_start`) replays only the changelog from its offset; any other is rebuilt from
    the start. ``progress(records, remaining)``: called every :data:`PROGRESS_EVERY_S` and at the
    end, with the records applied since the last call and the records left to read.
    ``store.last_restore`` says what happened (warm and cold partitions, records read).
    ``cancelled()``: asked between fetches; true stops the restore with :class:`RestoreCancelled`
    (the partitions are then half restored: drop them).
    """
    t_start = time.monotonic()
    store.last_restore = {"warm": [], "cold": [], "read": 0, "applied": 0, "seconds": 0.0, "why": {}}
    if not committed:
        return 0
    c = Consumer(settings.client_config({"group.id": f"tidal.restore.{store.name}", "enable.auto.commit": False,
                                         "enable.partition.eof": True, "isolation.level": "read_committed",
                                         "log_level": 3, **RESTORE_CONSUMER}))
    applied = read = 0
    chunks: dict[int, dict[bytes, bytes]] = {p: {} for p in committed}
    chunked: dict[int, dict[str, tuple[str, int]]] = {p: {} for p in committed}
    ends: dict[int, int] = {}
    gc_was = gc.isenabled()
    try:
        marks: dict[int, tuple[int, int]] = {}
        for p in committed:
            try:
                marks[p] = c.get_watermark_offsets(TopicPartition(store.changelog, p), timeout=10, cached=False)
            except KafkaException:
                marks[p] = (0, -1)  # unknown (e.g. the topic is being created): a full replay
        starts: dict[int, int] = {}
        verify: dict[int, int] = {}  # warm partitions whose end must reach their checkpoint's offset
        topic_id = None
        if store.persistent:
            topic_id = store._topic_id = _topic_id(settings, store.changelog)
        for p in committed:
            for key in [k for k in store._chunked if k[0] == p]:
                del store._chunked[key]
            part = store.partition(p)
            start, why = (None, "")
            if getattr(part, "persistent", False):
                start, why = _warm_start(part, store, p, committed[p], *marks[p], topic_id)
            if start is None:
                part.clear()
                starts[p] = 0
                store.last_restore["cold"].append(p)
            else:
                starts[p] = start
                if start < part.checkpoint_info()["offset"]:
                    verify[p] = part.checkpoint_info()["offset"]
                chunked[p].update((k, (v[0], v[1])) for k, v in part.checkpoint_info().get("chunked", {}).items())
                store.last_restore["warm"].append(p)
            if why:
                store.last_restore["why"][p] = why
                if start is None and why != "new":
                    log.warning("state %s[%d]: local database not used (%s): restoring the whole changelog",
                                store.name, p, why)
        total = sum(max(0, marks[p][1] - starts[p]) for p in committed)
        c.assign([TopicPartition(store.changelog, p, starts[p]) for p in committed])
        waiting = set(committed)
        if gc_was:
            gc.disable()  # a restore allocates millions of objects that live on: no collections meanwhile
        parts = store.partitions
        marker = _CHUNK.encode()
        loads = orjson.loads
        last = time.monotonic()
        deadline = last + timeout
        reported = 0
        while waiting:
            if cancelled is not None and cancelled():
                raise RestoreCancelled(f"restore of {store.changelog} {sorted(waiting)} called off")
            msgs = c.consume(_CONSUME_N, 0.2)
            now = time.monotonic()
            if not msgs:
                if now > deadline:
                    raise TimeoutError(f"restoring {store.changelog} {sorted(waiting)}: nothing read for {timeout:.0f}s")
            else:
                deadline = now + timeout
            last_p = None
            part = data = upto = ch = ck = None
            simple = False
            for m in msgs:
                err = m.error()
                p = m.partition()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        if p in verify and m.offset() < verify[p]:  # the changelog ends before the checkpoint
                            _start_over(store, p, f"checkpoint offset {verify.pop(p)} past the changelog's end "
                                                  f"{m.offset()}", chunks[p], chunked[p])
                            total += m.offset()
                            c.seek(TopicPartition(store.changelog, p, 0))
                            continue
                        verify.pop(p, None)
                        waiting.discard(p)
                        ends[p] = m.offset()
                        continue
                    raise RuntimeError(f"restore {store.changelog}[{p}]: {err.str()}")
                if p != last_p:
                    last_p, part, upto, ch, ck = p, parts[p], committed[p], chunks[p], chunked[p]
                    data = part.data if type(part) is PartitionState else None
                    simple = type(upto) is int
                read += 1
                key, value = m.key(), m.value()
                if value is None or not simple or marker in key:
                    applied += apply_record(part, key, value, upto, ch, ck)
                    continue
                record = loads(value)
                o = record["o"]
                try:
                    v = record["v"]
                except KeyError:  # a deletion or a chunked value
                    applied += _apply_decoded(part, key, record, upto, ch, ck)
                    continue
                if type(o) is not int:
                    applied += _apply_decoded(part, key, record, upto, ch, ck)
                    continue
                if o > upto:
                    continue
                name = key.decode()
                if ck:
                    ck.pop(name, None)
                if data is not None:
                    data[name] = v
                else:
                    part.load(name, v)
                applied += 1
            if now - last >= PROGRESS_EVERY_S:
                rate = read / max(1e-9, now - t_start)
                left = max(0, total - read)
                log.info("restoring %s %s: %d records applied (%d read), %.0f records/s, %d left, ETA %.0fs",
                         store.name, sorted(committed), applied, read, rate, left, left / rate if rate else 0.0)
                if progress is not None:
                    progress(applied - reported, left)
                    reported = applied
                last = now
        for p in committed:
            part = store.partitions[p]
            part.flush()
            store._chunked.update(((p, k), v) for k, v in chunked[p].items())
            store._stamps[p] = committed[p]
            if getattr(part, "persistent", False) and p in ends:  # it now is the committed state up to ends[p]
                part.mark_clean(store._checkpoint_info(p, ends[p]))
        if progress is not None:
            progress(applied - reported, 0)
        store.last_restore.update(read=read, applied=applied, seconds=time.monotonic() - t_start)
        return applied
    finally:
        if gc_was:
            # what was restored lives on: out of the cyclic GC's reach, or the next full
            # collection scans it all (a 1.4 s stop of the worker after 0.5M entries)
            gc.freeze()
            gc.enable()
        c.close()
