"""The ``rocksdb`` state backend: one RocksDB database per partition, through ``rocksdict``.

Same semantics as the in-memory backend (:class:`tidal.stream.state.PartitionState`): the
changelog topic is the record of truth, a partition is rebuilt from it on assignment, and the
database is scratch space that lets state outgrow memory. Each store gets a fresh folder
(``tidal-<state>-*`` under ``path`` or the temp folder), so workers sharing a machine never
share a database; it is removed when the store closes or the process exits (a ``kill -9``
leaves it behind, to delete by hand).

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

import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any, Iterator

import orjson
from rocksdict import Options, Rdict, WriteBatch

from tidal.stream.state import DELETED, encode_value

__all__ = ["RocksPartition", "scratch_root"]

_MISSING = object()
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
    """One partition's state in its own RocksDB database (same methods as ``PartitionState``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.db = Rdict(self.path, Options(raw_mode=True))
        self.cache: dict[str, Any] = {}  # key → value or DELETED, not yet in the database
        self.dirty: set[str] = set()
        self._n = 0

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
        if not self._exists(key):
            self._n += 1
        self.cache[key] = value
        if len(self.cache) >= FLUSH_EVERY:
            self.flush()

    def unload(self, key: str) -> None:
        if self._exists(key):
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
            yield k.decode(), orjson.loads(v)

    def clear(self) -> None:
        self.cache.clear()
        self.dirty.clear()
        self.db.close()
        Rdict.destroy(self.path)
        self.db = Rdict(self.path, Options(raw_mode=True))
        self._n = 0

    def take_dirty(self) -> list[tuple[str, Any]]:
        out = [(k, self.get(k, DELETED)) for k in self.dirty]
        self.dirty = set()
        self.flush()
        return out

    def flush(self) -> None:
        if not self.cache:
            return
        wb = WriteBatch(raw_mode=True)
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

    def __len__(self) -> int:
        return self._n
