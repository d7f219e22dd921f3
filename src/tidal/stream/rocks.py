"""The ``rocksdb`` state backend: one RocksDB database per partition, through ``rocksdict``.

Same semantics as the in-memory backend (:class:`tidal.stream.state.PartitionState`): the
changelog topic is the record of truth, a partition is rebuilt from it on assignment, and the
database is scratch space that lets state outgrow memory. Each store gets a fresh folder
(``tidal-<state>-*`` under ``path`` or the temp folder), so workers sharing a machine never
share a database; it is removed when the store closes or the process exits (a ``kill -9``
leaves it behind, to delete by hand).

**Warm restarts** (``state_dir``, see :class:`tidal.stream.state.StateStore`): with a state
folder, each partition's database lives at a stable path (``<state_dir>/<changelog>/p<q>``)
and outlives the process. It holds a *checkpoint* under a reserved key (:data:`META_KEY`):
``{"state": "clean", "offset": X, "committed": C, ...}`` says the database is exactly the
committed state that the changelog partition up to offset ``X`` gives, with source offsets
committed up to ``C``. The worker writes it only where that is true (after a restore, when
nothing is in flight, on revocation and on shutdown); the first write after it marks the
database ``dirty`` in the same ``WriteBatch``, so a database a ``kill -9`` left with writes of
a batch that never committed is never taken for committed state. On assignment a clean
database replays only the changelog from ``X`` on; a dirty, unreadable or stale one (see
:func:`tidal.stream.state.restore_partitions`) is wiped and rebuilt from the whole changelog.

Values are JSON bytes (:func:`tidal.stream.state.encode_value`). Writes go to a small cache
first and reach the database in one ``WriteBatch`` when the worker takes the batch's changes,
so a key a batch touches many times is encoded once. Values read back from the database are
decoded copies: set a value again after changing it (the in-memory backend needs that too).

>>> from tidal.stream.state import StateStore
>>> store = StateStore("counts", backend="rocksdb")
>>> part = store.partition(0)
>>> part.set("card-1", {"n": 3}); part.flush(); part.get("card-1"), len(part)
({'n': 3}, 1)
>>> store.close()
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any, Iterator

import orjson
from rocksdict import Options, Rdict, WriteBatch

from tidal.stream.state import DELETED, encode_value

__all__ = ["RocksPartition", "scratch_root", "META_KEY", "CHECKPOINT_VERSION"]

log = logging.getLogger("tidal.state")

_MISSING = object()
META_KEY = b"\x00tidal:checkpoint"  # reserved: no state key is ever this (a str key starting with NUL)
CHECKPOINT_VERSION = 1
_DIRTY = orjson.dumps({"v": CHECKPOINT_VERSION, "state": "dirty"})
FLUSH_EVERY = 10_000  # cached writes before they go to the database without waiting for a batch end


class _Root:
    """A scratch folder removed on cleanup or at interpreter exit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(path), True)

    def cleanup(self) -> None:
        self._finalizer()


def scratch_root(name: str, path: str | None = None) -> _Root:
    """A fresh folder for the databases of state ``name`` (under ``path`` if given)."""
    if path is not None:
        Path(path).mkdir(parents=True, exist_ok=True)
    return _Root(Path(tempfile.mkdtemp(prefix=f"tidal-{name}-", dir=path)))


class RocksPartition:
    """One partition's state in its own RocksDB database (same methods as ``PartitionState``).

    ``persistent``: the database outlives the process and carries a checkpoint
    (:meth:`checkpoint_info`, :meth:`mark_clean`); a database that cannot be opened (corrupt)
    is wiped and made again. A database another process holds (its lock) raises.
    """

    def __init__(self, path: str | Path, persistent: bool = False) -> None:
        self.path = str(path)
        self.persistent = persistent
        self.meta: dict[str, Any] | None = None  # the checkpoint found at open (clean ones only)
        self._clean = False  # the database holds a clean checkpoint (the next write marks it dirty)
        self.found = "new"  # at open: new | clean | dirty | corrupt
        self._lock = self._take_lock() if persistent else None
        self.db = self._open()
        self.cache: dict[str, Any] = {}  # key → value or DELETED, not yet in the database
        self.dirty: set[str] = set()
        self._n: int | None = 0
        if persistent:
            self._read_meta()

    def _take_lock(self) -> Any:
        """An exclusive ``flock`` on ``<path>.lock`` before RocksDB is touched: a database another
        worker (process or store) holds is refused here, never by a failed ``Rdict`` open (whose
        half-made object crashed the interpreter at a later garbage collection)."""
        import fcntl

        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        fh = open(f"{self.path}.lock", "a+b")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise RuntimeError(f"state database {self.path} is in use by another worker (lock held)") from None
        return fh

    def _open(self) -> Rdict:
        if not self.persistent:
            return Rdict(self.path, Options(raw_mode=True))
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            return Rdict(self.path, Options(raw_mode=True))
        except Exception as exc:  # noqa: BLE001 - rocksdict raises plain Exception
            if "lock" in str(exc).lower():
                raise
            log.warning("state database %s unreadable (%s): wiping it", self.path, exc)
            self.found = "corrupt"
            shutil.rmtree(self.path, ignore_errors=True)
            return Rdict(self.path, Options(raw_mode=True))

    def _read_meta(self) -> None:
        raw = self.db.get(META_KEY)
        self._n = None  # unknown until counted (or read from a clean checkpoint)
        if raw is None:
            if self.found != "corrupt":
                self.found = "new" if self._empty() else "corrupt"
            if self.found == "new":
                self._n = 0
            return
        try:
            meta = orjson.loads(raw)
            ok = (isinstance(meta, dict) and meta.get("v") == CHECKPOINT_VERSION and meta.get("state") == "clean"
                  and isinstance(meta.get("offset"), int) and meta["offset"] >= 0 and isinstance(meta.get("n"), int)
                  and isinstance(meta.get("chunked", {}), dict))
        except orjson.JSONDecodeError:
            meta, ok = None, False
        if ok:
            self.meta, self._clean, self.found, self._n = meta, True, "clean", meta["n"]
        else:
            self.found = "dirty" if isinstance(meta, dict) and meta.get("state") == "dirty" else "corrupt"

    def _empty(self) -> bool:
        it = self.db.iter()
        it.seek_to_first()
        return not it.valid()

    def checkpoint_info(self) -> dict[str, Any] | None:
        """The clean checkpoint this database was opened with (None: none, dirty or unreadable)."""
        return self.meta if self._clean else None

    def mark_clean(self, info: dict[str, Any]) -> None:
        """Write the checkpoint ``info`` (offset, committed, ...): the database *is* that state."""
        self.flush()
        meta = {"v": CHECKPOINT_VERSION, "state": "clean", **info, "n": len(self)}
        wb = WriteBatch(raw_mode=True)
        wb.put(META_KEY, orjson.dumps(meta))
        self.db.write(wb)
        self.meta, self._clean = meta, True

    @property
    def clean(self) -> bool:
        return self._clean

    def _exists(self, key: str) -> bool:
        v = self.cache.get(key, _MISSING)
        if v is _MISSING:
            return key.encode() in self.db
        return v is not DELETED

    def get(self, key: str, default: Any = None) -> Any:
        v = self.cache.get(key, _MISSING)
        if v is _MISSING:
            raw = self.db.get(key.encode())
            return default if raw is None else orjson.loads(raw)
        return default if v is DELETED else v

    def load(self, key: str, value: Any) -> None:
        if self._n is not None and not self._exists(key):
            self._n += 1
        self.cache[key] = value
        if len(self.cache) >= FLUSH_EVERY:
            self.flush()

    def unload(self, key: str) -> None:
        if self._exists(key):
            if self._n is not None:
                self._n -= 1
            self.cache[key] = DELETED
            if len(self.cache) >= FLUSH_EVERY:
                self.flush()

    def set(self, key: str, value: Any) -> None:
        self.load(key, value)
        self.dirty.add(key)

    def delete(self, key: str) -> None:
        if self._exists(key):
            self.unload(key)
            self.dirty.add(key)

    def items(self) -> Iterator[tuple[str, Any]]:
        self.flush()
        for k, v in self.db.items():
            if k != META_KEY:
                yield k.decode(), orjson.loads(v)

    def clear(self) -> None:
        self.cache.clear()
        self.dirty.clear()
        self.db.close()
        Rdict.destroy(self.path)
        self.db = Rdict(self.path, Options(raw_mode=True))
        self._n = 0
        self.meta, self._clean = None, False

    def take_dirty(self) -> list[tuple[str, Any]]:
        out = [(k, self.get(k, DELETED)) for k in self.dirty]
        self.dirty = set()
        self.flush()
        return out

    def flush(self) -> None:
        if not self.cache:
            return
        wb = WriteBatch(raw_mode=True)
        if self._clean:  # in the same batch as the writes: a crash never leaves them under a clean checkpoint
            wb.put(META_KEY, _DIRTY)
            self._clean = False
        for k, v in self.cache.items():
            if v is DELETED:
                wb.delete(k.encode())
            else:
                wb.put(k.encode(), encode_value(v))
        self.db.write(wb)
        self.cache.clear()

    def close(self, destroy: bool = False) -> None:
        self.cache.clear()
        self.db.close()
        if destroy:
            Rdict.destroy(self.path)
            shutil.rmtree(self.path, ignore_errors=True)
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    def __len__(self) -> int:
        if self._n is None:
            self.flush()
            self._n = sum(1 for k in self.db.keys() if k != META_KEY)
        return self._n
