"""A micro-batch: the unit every step transforms.

A batch holds the consumed messages (raw value, key, source position) and their decoded
rows, and serves fields as numpy columns, so steps compute column-wise. Steps add output
columns with :meth:`Batch.with_column`, drop rows with :meth:`Batch.select` and send rows
to the dead-letter topic with :meth:`Batch.reject`; a rejected row keeps its original bytes.

>>> b = Batch.from_rows([{"x": 1.0}, {"x": 5.0}, {"x": -2.0}])
>>> b.column("x")
array([ 1.,  5., -2.])
>>> b = b.reject(b.column("x") < 0, "negative", "x < 0", step="check")
>>> len(b), [r.reason for r in b.rejected]
(2, ['negative'])
>>> b.with_column("double", b.column("x") * 2).columns["double"]
array([ 2., 10.])
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from operator import attrgetter, itemgetter
from typing import Any, Sequence

import numpy as np
import orjson

__all__ = ["Batch", "Reject", "record_headers"]

_DTYPES = {"float": np.float64, "int": np.int64, "bool": np.bool_, "str": object}


def record_headers(message: Any) -> Any:
    """A consumed message's headers (None if it has none, or is a stand-in without them)."""
    get = getattr(message, "headers", None)
    return get() if get is not None else None


@dataclass(frozen=True)
class Reject:
    """A record that left the pipeline for the dead-letter topic, and why."""

    value: bytes | None
    key: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp: int
    reason: str
    message: str
    step: str
    headers: Any = None  #: the record's own Kafka headers, kept on its dead letter


@dataclass
class Batch:
    """Rows of one micro-batch with their source positions; columns are numpy arrays."""

    values: list[bytes | None]
    keys: list[bytes | None]
    topics: list[str]
    partitions: np.ndarray
    offsets: np.ndarray
    timestamps: np.ndarray
    rows: list[Any]
    types: dict[str, str] = field(default_factory=dict)
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    rejected: list[Reject] = field(default_factory=list)
    #: The consumed messages, row for row (None: rows not from Kafka); read through :attr:`headers`.
    messages: list[Any] | None = field(default=None, repr=False)

    @property
    def headers(self) -> list[list[tuple[str, bytes]]]:
        """Each row's Kafka record headers (``[]`` when it had none), read only when asked for."""
        if self.messages is None:
            return [[] for _ in self.rows]
        return [record_headers(m) or [] for m in self.messages]

    @classmethod
    def from_rows(cls, rows: Sequence[dict[str, Any]], topic: str = "memory", types: dict[str, str] | None = None) -> "Batch":
        """A batch from plain dicts, as if consumed from partition 0 of ``topic`` (for tests, replays)."""
        n = len(rows)
        return cls(values=[orjson.dumps(r) for r in rows], keys=[None] * n, topics=[topic] * n,
                   partitions=np.zeros(n, np.int32), offsets=np.arange(n, dtype=np.int64),
                   timestamps=np.zeros(n, np.int64), rows=list(rows), types=dict(types or {}))

    def __len__(self) -> int:
        return len(self.rows)

    def column(self, name: str) -> np.ndarray:
        """Field ``name`` of every row as a numpy array (cached; missing/None → NaN for numbers)."""
        col = self.columns.get(name)
        if col is not None:
            return col
        if not self.rows:
            col = np.empty(0, _DTYPES.get(self.types.get(name, "float"), np.float64))
        else:
            getter = itemgetter(name) if isinstance(self.rows[0], dict) else attrgetter(name)
            kind = self.types.get(name)
            dtype = _DTYPES.get(kind) if kind else None
            col = None
            if dtype is np.float64 or dtype is np.int64:  # numbers go straight into the array
                try:  # (a None becomes NaN in a float column; in an int column it raises: general path)
                    col = np.fromiter(map(getter, self.rows), dtype, len(self.rows))
                except (KeyError, AttributeError, TypeError, ValueError, OverflowError):
                    pass
            if col is None:
                try:
                    values = list(map(getter, self.rows))
                except (KeyError, AttributeError):
                    values = [r.get(name) if isinstance(r, dict) else getattr(r, name, None) for r in self.rows]
                if dtype in (np.int64, np.bool_) and None in values:
                    dtype = np.float64  # nullable ints/bools: None → NaN
                col = np.array(values, dtype=dtype)
        self.columns[name] = col
        return col

    def with_column(self, name: str, values: np.ndarray | Sequence[Any], output: bool = True) -> "Batch":
        """Set column ``name``; ``output=True`` appends it to the records this batch produces."""
        arr = values if isinstance(values, np.ndarray) else np.asarray(values)
        if len(arr) != len(self):
            raise ValueError(f"column {name!r} has {len(arr)} values for {len(self)} rows")
        self.columns[name] = arr
        if output and name not in self.outputs:
            self.outputs.append(name)
        return self

    def select(self, mask: np.ndarray) -> "Batch":
        """A batch of the rows where ``mask`` is true (rejected rows carry over)."""
        mask = np.asarray(mask, dtype=bool)
        if mask.all():
            return self
        idx = np.flatnonzero(mask)
        pick = idx.tolist()
        return replace(
            self,
            values=[self.values[i] for i in pick],
            keys=[self.keys[i] for i in pick],
            topics=[self.topics[i] for i in pick],
            partitions=self.partitions[idx],
            offsets=self.offsets[idx],
            timestamps=self.timestamps[idx],
            rows=[self.rows[i] for i in pick],
            messages=[self.messages[i] for i in pick] if self.messages is not None else None,
            columns={k: v[idx] for k, v in self.columns.items()},
            outputs=list(self.outputs),
            rejected=list(self.rejected),
        )

    def reject(self, mask: np.ndarray, reason: str, message: str | Sequence[str], step: str) -> "Batch":
        """Send the rows where ``mask`` is true to the dead-letter topic; returns the rest."""
        mask = np.asarray(mask, dtype=bool)
        idx = np.flatnonzero(mask).tolist()
        if not idx:
            return self
        messages = [message] * len(idx) if isinstance(message, str) else [message[i] for i in idx]
        rest = self.select(~mask)
        src = self.messages
        rest.rejected.extend(
            Reject(self.values[i], self.keys[i], self.topics[i], int(self.partitions[i]), int(self.offsets[i]),
                   int(self.timestamps[i]), reason, msg, step, record_headers(src[i]) if src is not None else None)
            for i, msg in zip(idx, messages)
        )
        return rest

    def reject_all(self, reason: str, message: str, step: str) -> "Batch":
        """Send every row to the dead-letter topic (e.g. the model raised on this batch)."""
        return self.reject(np.ones(len(self), dtype=bool), reason, message, step)
