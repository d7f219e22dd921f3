"""Keyed, flat-array state shared by all detectors.

Every detector keeps the state of each key in one *slot*: row ``slot`` of a few
numpy arrays (scalars, ring buffers, tables).  A ``dict`` maps keys to slots;
numba kernels then loop over the rows of a batch in order, so there is no
per-row Python.  A key's snapshot is the raw bytes of its rows, fixed in size
for given parameters.
"""

from __future__ import annotations

import struct
from collections.abc import Hashable

import numpy as np

__all__ = ["ChangeDetector", "SeriesDetector", "StateLayout"]

_MAGIC = b"TDS1"
#: Rough cost of one key in the ``key -> slot`` dict (entry, key object, int).
DICT_BYTES_PER_KEY = 200


class StateLayout:
    """Per-slot numpy state: subclasses list their fields and child layouts.

    ``_fields()`` returns ``(name, shape, dtype, fill)`` tuples; each becomes an
    attribute ``self.<name>`` of shape ``(capacity, *shape)``.
    """

    _cap: int = 0

    def _fields(self) -> list[tuple[str, tuple[int, ...], type, float]]:
        return []

    def _children(self) -> list["StateLayout"]:
        return []

    def _grow(self, cap: int) -> None:
        old = self._cap
        for name, shape, dtype, fill in self._fields():
            arr = np.full((cap, *shape), fill, dtype=dtype)
            if old:
                arr[:old] = getattr(self, name)
            setattr(self, name, arr)
        self._cap = cap
        for child in self._children():
            child._grow(cap)

    def _reset(self, slot: int) -> None:
        for name, _shape, _dtype, fill in self._fields():
            getattr(self, name)[slot] = fill
        for child in self._children():
            child._reset(slot)

    def _dump(self, slot: int) -> bytes:
        parts = [getattr(self, name)[slot].tobytes() for name, *_ in self._fields()]
        parts += [child._dump(slot) for child in self._children()]
        return b"".join(parts)

    def _load(self, slot: int, data: bytes, offset: int = 0) -> int:
        for name, shape, dtype, _fill in self._fields():
            arr = getattr(self, name)
            n = int(np.prod(shape, dtype=np.int64)) if shape else 1
            nbytes = n * np.dtype(dtype).itemsize
            row = np.frombuffer(data, dtype=dtype, count=n, offset=offset)
            arr[slot] = row.reshape(shape) if shape else row[0]
            offset += nbytes
        for child in self._children():
            offset = child._load(slot, data, offset)
        return offset

    def _row_nbytes(self) -> int:
        own = sum(
            int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            for _n, shape, dtype, _f in self._fields()
        )
        return own + sum(child._row_nbytes() for child in self._children())


class _Keyed(StateLayout):
    """Key -> slot bookkeeping and the snapshot API."""

    def _init_keys(self) -> None:
        self._index: dict[Hashable, int] = {}
        self._free: list[int] = []
        self._used = 0
        self._grow(64)

    def _slots_for(self, keys) -> np.ndarray:
        kl = keys.tolist() if isinstance(keys, np.ndarray) else list(keys)
        get = self._index.get
        out = [get(k, -1) for k in kl]
        if -1 in out:
            for i, s in enumerate(out):
                if s == -1:
                    k = kl[i]
                    s = get(k, -1)
                    if s == -1:
                        s = self._new_slot(k)
                    out[i] = s
        return np.array(out, dtype=np.int64)

    def _new_slot(self, key: Hashable) -> int:
        if self._free:
            slot = self._free.pop()
        else:
            if self._used >= self._cap:
                self._grow(max(64, self._cap + self._cap // 4))
            slot = self._used
            self._used += 1
        self._index[key] = slot
        return slot

    # -- public state API -------------------------------------------------
    def keys(self) -> list[Hashable]:
        """Keys that currently hold state."""
        return list(self._index)

    def forget(self, key: Hashable) -> None:
        """Drop a key's state (no-op for unknown keys)."""
        slot = self._index.pop(key, None)
        if slot is not None:
            self._reset(slot)
            self._free.append(slot)

    def key_state(self, key: Hashable) -> bytes:
        """Compact snapshot of one key's state (fixed size for given params)."""
        slot = self._index[key]
        body = self._dump(slot)
        return _MAGIC + struct.pack("<I", len(body)) + body

    def load_key_state(self, key: Hashable, data: bytes) -> None:
        """Restore a key from :meth:`key_state` bytes (replaces its state)."""
        if data[:4] != _MAGIC:
            raise ValueError("not a tidal.detect key state")
        (n,) = struct.unpack("<I", data[4:8])
        if n != self._row_nbytes() or len(data) != 8 + n:
            raise ValueError("key state size does not match this detector's parameters")
        slot = self._index.get(key)
        if slot is None:
            slot = self._new_slot(key)
        self._load(slot, bytes(data[8:]), 0)

    def state_nbytes_per_key(self) -> int:
        """Upper bound of memory per key: slot rows + dict entry (bytes)."""
        return self._row_nbytes() + DICT_BYTES_PER_KEY

    def memory_nbytes(self) -> int:
        """Bytes held by all slot arrays (allocated capacity)."""
        return self._row_nbytes() * self._cap


def _as_inputs(keys, values, times):
    keys = np.asarray(keys)
    values = np.ascontiguousarray(values, dtype=np.float64)
    if keys.ndim != 1 or values.shape != keys.shape:
        raise ValueError("keys and values must be 1-D arrays of the same length")
    if times is None:
        t = np.full(values.shape[0], np.nan)
    else:
        t = np.ascontiguousarray(times, dtype=np.float64)
        if t.shape != values.shape:
            raise ValueError("times must have the same length as values")
    return keys, values, t


class SeriesDetector(_Keyed):
    """Streaming per-key anomaly scorer.

    Rows are scored in order, each *before* it is learned (prequential).
    Scores lie in [0, 1]; a NaN value scores NaN and leaves the state unchanged.
    """

    def __init__(self) -> None:
        self._init_keys()

    def score_many(self, keys, values, times=None) -> np.ndarray:
        """Score a batch of rows (keys may interleave); returns float64 scores."""
        keys, values, t = _as_inputs(keys, values, times)
        if values.shape[0] == 0:
            return np.empty(0)
        slots = self._slots_for(keys)
        return self._score_slots(slots, values, t)

    def score_one(self, key: Hashable, value: float, time: float | None = None) -> float:
        """Score one row (convenience; batch with :meth:`score_many`)."""
        return float(self.score_many([key], [value], None if time is None else [time])[0])

    def _score_slots(self, slots: np.ndarray, values: np.ndarray, times: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class ChangeDetector(_Keyed):
    """Streaming per-key change-point detector.

    :meth:`update_many` returns, per row, -1 or the estimated start index of
    the new segment in that key's own sequence (0-based count of its values).
    """

    def __init__(self) -> None:
        self._init_keys()

    def update_many(self, keys, values, times=None) -> np.ndarray:
        """Feed a batch of rows; returns int64 change starts (-1 = no alarm)."""
        keys, values, t = _as_inputs(keys, values, times)
        if values.shape[0] == 0:
            return np.empty(0, dtype=np.int64)
        slots = self._slots_for(keys)
        return self._update_slots(slots, values, t)

    def _update_slots(self, slots: np.ndarray, values: np.ndarray, times: np.ndarray) -> np.ndarray:
        raise NotImplementedError

