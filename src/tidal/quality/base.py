"""What every quality step shares: policies, flags, counts, metrics, record rewrites, partition state.

**Accounting.** A quality step sends each record to exactly one place: on (with fixed values,
and a ``quality_flags`` list in the records that were flagged), to the DLQ (``batch.reject`` with a reason)
or dropped by policy (counted in ``dropped`` and ``tidal_quality_dropped_total``). Every
rule hit is counted per (field, rule, action) in ``counts`` and in
``tidal_quality_violations_total{pipeline, step, field, rule, action}``, so
events in = outputs + DLQ + dropped, each exposed as a metric.

**Fixed values reach the output record.** Steps compute on columns; a fixed cell is also
written into the record's JSON (only rows with a fix are re-encoded, once per step). A
:class:`QualityBatch` remembers each rewritten record's original bytes, so a row that a later
step rejects still reaches the DLQ as it arrived.

**Per-partition state** (see :class:`PartitionedStep`) lives in one state object per
(topic, partition) with ``snapshot() -> bytes`` / ``restore(bytes)``, created and dropped by
the ``on_assign`` / ``on_revoke`` hooks. In a worker, snapshots go through the changelog-backed
store (``state_name``; at most every ``snapshot_every_s``) and are restored on assignment.
"""

from __future__ import annotations

import base64
import io
import operator
import weakref
from collections import Counter
from dataclasses import dataclass, field, fields, replace
from itertools import repeat
from operator import attrgetter
from typing import Any, Callable, Iterator

import msgspec
import numpy as np
import orjson

from tidal.stream.batch import Batch
from tidal.stream.step import Step

__all__ = ["QualityBatch", "QualityStep", "PartitionedStep", "PartitionStats", "FLAGS", "add_flags",
           "as_quality", "flush", "pack", "unpack", "partition_groups", "quality_metrics", "raw_column", "key_codes",
           "key_values", "missing_mask", "take"]

FLAGS = "quality_flags"
_EMPTY: tuple = ()
_INF = float("inf")
_DECODE = msgspec.json.decode
_ENCODE = msgspec.json.Encoder().encode


@dataclass
class QualityBatch(Batch):
    """A batch whose rows may have fixed values still to write into their JSON, and originals for the DLQ."""

    originals: list | None = None  # original bytes of rewritten records (None where untouched)
    pending: dict = field(default_factory=dict)  # field name → bool mask of rows whose record gets the column

    def select(self, mask: np.ndarray) -> "QualityBatch":
        mask = np.asarray(mask, dtype=bool)
        out = super().select(mask)
        if out is self:
            return self
        idx = np.flatnonzero(mask)
        out.originals = [self.originals[i] for i in idx.tolist()] if self.originals is not None else None
        out.pending = {k: m[idx] for k, m in self.pending.items()}
        return out

    def reject(self, mask: np.ndarray, reason: str, message: Any, step: str) -> "QualityBatch":
        before = len(self.rejected)
        rest = super().reject(mask, reason, message, step)
        if self.originals is not None and rest is not self:
            idx = np.flatnonzero(np.asarray(mask, dtype=bool)).tolist()
            new = rest.rejected[before:]
            rest.rejected[before:] = [r if self.originals[i] is None else replace(r, value=self.originals[i])
                                      for r, i in zip(new, idx)]
        return rest

    def mark(self, name: str, rows: np.ndarray) -> None:
        """The record of each row in ``rows`` (bool mask) gets column ``name``'s value on flush."""
        rows = np.asarray(rows, dtype=bool)
        if rows.any():
            prev = self.pending.get(name)
            self.pending[name] = rows if prev is None else prev | rows


def as_quality(batch: Batch) -> QualityBatch:
    if isinstance(batch, QualityBatch):
        return batch
    return QualityBatch(**{f.name: getattr(batch, f.name) for f in fields(Batch)})


def flush(batch: QualityBatch) -> QualityBatch:
    """Write pending fixed values into the records' JSON (re-encoding only the rows concerned)."""
    if not batch.pending or not len(batch):
        batch.pending = {}
        return batch
    flags = batch.pending.pop(FLAGS, None)
    rows = np.zeros(len(batch), dtype=bool)
    for m in batch.pending.values():
        rows |= m
    values = list(batch.values)
    originals = list(batch.originals) if batch.originals is not None else [None] * len(values)
    if flags is not None:  # flagged records whose values stay as they are: splice the list in, no re-encoding
        col = batch.columns[FLAGS]
        splice = flags & ~rows
        if batch.originals is not None:  # already rewritten by an earlier step: may hold a list already
            again = np.fromiter(map(operator.is_not, originals, repeat(None)), bool, len(originals))
            rows |= splice & again
            splice &= ~again
        for i in np.flatnonzero(splice).tolist():
            v = values[i]
            head = v.rstrip()[:-1].rstrip() if v else b""
            if head[-1:] in (b"{", b""):
                continue  # an empty object: nothing to splice after
            if originals[i] is None:
                originals[i] = v
            values[i] = head + b',"' + FLAGS.encode() + b'":' + _ENCODE(col[i]) + b"}"
        batch.pending[FLAGS] = flags & rows
    idx = np.flatnonzero(rows).tolist()
    records = {}
    for i in idx:
        try:
            rec = _DECODE(values[i])
        except msgspec.DecodeError:
            rec = None
        records[i] = rec if type(rec) is dict else None
    for name, m in batch.pending.items():
        rows_m = np.flatnonzero(m)
        col = batch.columns[name][rows_m].tolist()
        if batch.types.get(name) == "int" and batch.columns[name].dtype.kind == "f":
            col = [None if v != v or v in (_INF, -_INF) else int(v) for v in col]
        for i, v in zip(rows_m.tolist(), col):
            rec = records[i]
            if rec is not None:
                rec[name] = v
    for i in idx:
        rec = records[i]
        if rec is not None:
            if originals[i] is None:
                originals[i] = values[i]
            values[i] = _ENCODE(rec)
    batch.values, batch.originals, batch.pending = values, originals, {}
    return batch


def add_flags(batch: Batch, mask: np.ndarray, flag: str, column: str = FLAGS) -> None:
    """Append ``flag`` to the ``quality_flags`` list of the rows in ``mask``.

    Only flagged records carry the list: it is written into their JSON on flush (a record
    without ``quality_flags`` passed every check). Steps read it as ``batch.columns[FLAGS]``.
    """
    col = batch.columns.get(column)
    if col is None or len(col) != len(batch):
        col = np.empty(len(batch), dtype=object)
        col.fill(_EMPTY)
        batch.with_column(column, col, output=False)
    mask = np.asarray(mask, dtype=bool)
    for i in np.flatnonzero(mask).tolist():
        col[i] = col[i] + (flag,)
    if isinstance(batch, QualityBatch):
        batch.mark(column, mask)


def ensure_flags(batch: Batch, column: str = FLAGS) -> None:
    """Make sure ``batch.columns[FLAGS]`` exists (empty tuples), so steps can read it."""
    add_flags(batch, np.zeros(len(batch), dtype=bool), "", column)


def raw_column(batch: Batch, name: str) -> list:
    """Field ``name`` of every row as decoded (any JSON value; missing → ``msgspec.UNSET`` or None)."""
    if not batch.rows:
        return []
    if isinstance(batch.rows[0], dict):
        return list(map(dict.get, batch.rows, repeat(name)))
    try:
        return list(map(attrgetter(name), batch.rows))
    except AttributeError:  # not a schema field
        return [getattr(r, name, None) for r in batch.rows]


def take(values: list, idx: np.ndarray) -> list:
    """``values[i] for i in idx`` (the whole list when ``idx`` covers it in order)."""
    if len(idx) == len(values):
        return values
    return list(map(values.__getitem__, idx.tolist()))


def key_values(batch: Batch, key: str | None) -> list | None:
    """Per-row keys as strings: a field's values, the Kafka message key (``"$key"``), or None (global)."""
    if key is None:
        return None
    if key == "$key":
        return [k.decode("utf-8", "replace") if k is not None else "" for k in batch.keys]
    values = batch.column(key).tolist()
    if set(map(type, values)) <= {str}:
        return values
    return [v if type(v) is str else str(v) for v in values]


def missing_mask(col: np.ndarray) -> np.ndarray:
    """Cells that hold no value: NaN in a numeric column; None / NaN / unset in an object column."""
    if col.dtype.kind == "f":
        return np.isnan(col)
    if col.dtype.kind in "iub":
        return np.zeros(len(col), dtype=bool)
    return np.fromiter((v is None or v != v or v is msgspec.UNSET for v in col.tolist()), bool, len(col))


def key_codes(keys: list) -> tuple[np.ndarray, list]:
    """Integer codes for hashable keys (first-seen order) and the distinct keys."""
    index = dict.fromkeys(keys)
    distinct = list(index)
    index.update(zip(distinct, range(len(distinct))))
    return np.fromiter(map(index.__getitem__, keys), np.int64, len(keys)), distinct


def partition_groups(batch: Batch) -> Iterator[tuple[tuple[str, int], np.ndarray]]:
    """(topic, partition) → row indices of the batch, in batch order."""
    n = len(batch)
    if not n:
        return
    topics = set(batch.topics)
    if len(topics) == 1:
        topic = next(iter(topics))
        parts = batch.partitions
        if (parts == parts[0]).all():
            yield (topic, int(parts[0])), np.arange(n)
            return
        for p in np.unique(parts).tolist():
            yield (topic, int(p)), np.flatnonzero(parts == p)
        return
    codes, distinct = key_codes(batch.topics)
    for c, t in enumerate(distinct):
        in_topic = codes == c
        for p in np.unique(batch.partitions[in_topic]).tolist():
            yield (t, int(p)), np.flatnonzero(in_topic & (batch.partitions == p))


# -- metrics ------------------------------------------------------------------------------
class _QualityMetrics:
    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter as PCounter, Gauge

        self.violations = PCounter("tidal_quality_violations", "Quality rule hits per field, rule and action.",
                                   ["pipeline", "step", "field", "rule", "action"], registry=registry)
        self.dropped = PCounter("tidal_quality_dropped", "Records dropped by a quality policy.",
                                ["pipeline", "step", "reason"], registry=registry)
        self.records = PCounter("tidal_quality_records", "Records seen by a quality step.", ["pipeline", "step"],
                                registry=registry)
        self.field = Gauge("tidal_quality_field", "Rolling profile of a field (stat: count, missing_ratio, min, "
                           "max, mean, std, distinct, p50, p90, p99).", ["pipeline", "field", "stat"],
                           registry=registry)


_METRICS: "weakref.WeakKeyDictionary[Any, _QualityMetrics]" = weakref.WeakKeyDictionary()


def quality_metrics(registry: Any) -> _QualityMetrics:
    """The quality metrics on ``registry`` (registered once, shared by every quality step)."""
    m = _METRICS.get(registry)
    if m is None:
        m = _METRICS[registry] = _QualityMetrics(registry)
    return m


# -- steps --------------------------------------------------------------------------------
class QualityStep(Step):
    """A step that counts what it does. Subclasses implement :meth:`apply` on a :class:`QualityBatch`."""

    name = "quality"

    def __init__(self) -> None:
        self.counts: Counter = Counter()  # (field, rule, action) → records
        self.dropped: Counter = Counter()  # reason → records
        self.seen = 0
        self.pipeline = ""
        self._metrics: _QualityMetrics | None = None

    def adds(self) -> list[str] | None:
        return [FLAGS]  # fields are fixed in place; flags go in one column

    def open(self, ctx: Any) -> None:
        self.pipeline = self.pipeline or ctx.pipeline
        if ctx.registry is not None:
            self._metrics = quality_metrics(ctx.registry)

    def process(self, batch: Batch) -> Batch:
        qb = as_quality(batch)
        self.seen += len(qb)
        if self._metrics is not None:
            self._metrics.records.labels(self.pipeline, self.name).inc(len(qb))
        out = flush(self.apply(qb))
        self._persist(batch)
        return out

    # -- durable statistics ---------------------------------------------------------------
    #: In a worker, steps with per-partition statistics get a changelog-backed store here
    #: (``state_name``); their snapshots are written through it at most every
    #: ``snapshot_every_s`` and restored when Kafka assigns the partition again.
    state_store: Any = None
    snapshot_every_s: float = 5.0
    _snapshot_at: float = 0.0

    @property
    def state_name(self) -> str | None:
        return f"{self.name}-stats" if self.partitioned_parts() else None

    def partitioned_parts(self) -> list["PartitionedStep"]:
        """The parts whose statistics must survive restarts (itself, or a chain's parts)."""
        return [self] if isinstance(self, PartitionedStep) else []

    def _persist(self, batch: Batch) -> None:
        import time

        if self.state_store is None or time.monotonic() - self._snapshot_at < self.snapshot_every_s:
            return
        self._snapshot_at = time.monotonic()
        for part in self.partitioned_parts():
            for (topic, p) in list(part.states):
                self.state_store.partition(p).set(part.name, base64.b64encode(part.snapshot((topic, p))).decode())

    def _recover(self, partitions: list[tuple[str, int]]) -> None:
        if self.state_store is None:
            return
        for part in self.partitioned_parts():
            for topic, p in partitions:
                data = self.state_store.partition(p).get(part.name)
                if data is not None:
                    part.restore((topic, p), base64.b64decode(data))

    def apply(self, batch: QualityBatch) -> QualityBatch:
        raise NotImplementedError

    def count(self, field_name: str, rule: str, action: str, n: int) -> None:
        if n:
            self.counts[(field_name, rule, action)] += n
            if self._metrics is not None:
                self._metrics.violations.labels(self.pipeline, self.name, field_name, rule, action).inc(n)

    def drop(self, batch: QualityBatch, mask: np.ndarray, reason: str) -> QualityBatch:
        n = int(np.count_nonzero(mask))
        if not n:
            return batch
        self.dropped[reason] += n
        if self._metrics is not None:
            self._metrics.dropped.labels(self.pipeline, self.name, reason).inc(n)
        return batch.select(~np.asarray(mask, dtype=bool))

    def act(self, batch: QualityBatch, mask: np.ndarray, field_name: str, rule: str, policy: str, reason: str,
            message: str | Callable[[int], str]) -> QualityBatch:
        """Apply a reject / flag / drop policy to the rows in ``mask`` and count them ("fix" is the caller's)."""
        mask = np.asarray(mask, dtype=bool)
        n = int(np.count_nonzero(mask))
        if not n:
            return batch
        self.count(field_name, rule, policy, n)
        if policy == "reject":
            if callable(message):
                msgs = [""] * len(batch)
                for i in np.flatnonzero(mask).tolist():
                    msgs[i] = message(i)
                return batch.reject(mask, reason, msgs, self.name)
            return batch.reject(mask, reason, message, self.name)
        if policy == "drop":
            return self.drop(batch, mask, reason)
        if policy == "flag":
            add_flags(batch, mask, f"{field_name}:{rule}")
            return batch
        raise ValueError(f"policy {policy!r} is not one of reject, flag, drop here")

    def summary(self) -> dict[str, Any]:
        """Counts as plain data: {"seen", "violations": {"field:rule:action": n}, "dropped": {...}}."""
        return {"seen": self.seen, "violations": {":".join(k): v for k, v in sorted(self.counts.items())},
                "dropped": dict(self.dropped)}


class PartitionStats:
    """Statistics of one (topic, partition); subclasses say what ``snapshot``/``restore`` keep."""

    def snapshot(self) -> bytes:
        raise NotImplementedError

    def restore(self, data: bytes) -> None:
        raise NotImplementedError


class PartitionedStep(QualityStep):
    """A quality step with per-partition state, kept in ``states[(topic, partition)]``.

    ``on_assign`` creates the state of each new partition (the changelog-backed store will
    restore it there from the partition's last snapshot); ``on_revoke`` drops it (the store
    will have written its snapshot first). ``snapshot(tp)`` / ``restore(tp, data)`` round-trip
    one partition's state as bytes. Rows of a batch are processed per partition, in order.
    """

    def __init__(self) -> None:
        super().__init__()
        self.states: dict[tuple[str, int], PartitionStats] = {}

    def new_state(self) -> PartitionStats:
        raise NotImplementedError

    def state(self, tp: tuple[str, int]) -> PartitionStats:
        s = self.states.get(tp)
        if s is None:
            s = self.states[tp] = self.new_state()
        return s

    def on_assign(self, partitions: list[tuple[str, int]]) -> None:
        for tp in partitions:
            self.state(tuple(tp))
        self._recover([tuple(tp) for tp in partitions])

    def on_revoke(self, partitions: list[tuple[str, int]]) -> None:
        for tp in partitions:
            self.states.pop(tuple(tp), None)

    def snapshot(self, tp: tuple[str, int]) -> bytes:
        return self.state(tp).snapshot()

    def restore(self, tp: tuple[str, int], data: bytes) -> None:
        s = self.new_state()
        s.restore(data)
        self.states[tp] = s


# -- state serialisation ------------------------------------------------------------------
def pack(meta: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> bytes:
    """JSON metadata + numpy arrays as one ``.npz`` blob (no pickle)."""
    buf = io.BytesIO()
    np.savez(buf, __meta__=np.frombuffer(orjson.dumps(meta, option=orjson.OPT_SERIALIZE_NUMPY), np.uint8),
             **(arrays or {}))
    return buf.getvalue()


def unpack(data: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "__meta__"}
        meta = orjson.loads(z["__meta__"].tobytes())
    return meta, arrays
