"""Write topics to rolling files: JSON Lines, CSV or Parquet, one open file per partition.

Records of a partition are appended to ``<topic>-<partition>-<first offset>.<ext>.tmp``;
the file *rolls* (flush, fsync, close, rename to ``<topic>-<partition>-<first>-<last>.<ext>``,
fsync the folder) when it reaches ``roll_size`` bytes or ``roll_seconds`` of age, when its
partition is revoked and when the sink closes. Offsets are 20-digit, zero-padded, so names
sort in offset order.

Delivery: the runner commits only :meth:`FileSink.durable_offsets` — offsets whose records
are in rolled files — and on every assignment the sink resumes each partition after the
last offset named by its rolled files (:meth:`FileSink.stored_offsets`), so a kill -9
between a rename and Kafka's commit does not write a record twice. Leftover ``.tmp``
files of an assigned partition are deleted (their records are read again). The set of
final files holds every record exactly once. Rolled files may be moved away (uploaded,
archived): the next offset of each partition is also kept in ``.<topic>-<partition>.next``.

>>> import tempfile, pathlib
>>> from tidal.connect.base import SinkRecord
>>> d = pathlib.Path(tempfile.mkdtemp()); s = FileSink(d, "jsonl"); s.open()
>>> recs = [SinkRecord("t", 0, i, None, {"i": i}, 0, b'{"i":%d}' % i) for i in range(3)]
>>> rows, refused = s.prepare(recs); s.write(rows, {("t", 0): 3}); s.close()
>>> sorted(p.name for p in d.glob("*.jsonl")), s.durable_offsets()
(['t-0-00000000000000000000-00000000000000000002.jsonl'], {('t', 0): 3})
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Sequence

import orjson

from tidal.connect.base import Sink, SinkRecord, Unavailable

__all__ = ["FileSink", "parse_size"]

log = logging.getLogger(__name__)

_EXT = {"jsonl": "jsonl", "csv": "csv", "parquet": "parquet"}
_UNITS = {"": 1, "b": 1, "kb": 1 << 10, "k": 1 << 10, "mb": 1 << 20, "m": 1 << 20, "gb": 1 << 30, "g": 1 << 30}


def parse_size(text: str | int) -> int:
    """Bytes from ``64MB``, ``512kb``, ``1g`` or a number.

    >>> parse_size("64MB"), parse_size("10k"), parse_size(100)
    (67108864, 10240, 100)
    """
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"size {text!r}: use a number with an optional unit (B, KB, MB, GB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


class _Open:
    """One partition's open file (jsonl/csv: on disk; parquet: rows buffered until the roll)."""

    __slots__ = ("tmp", "first", "end", "size", "opened", "fh", "rows", "writer")

    def __init__(self, tmp: Path, first: int) -> None:
        self.tmp, self.first, self.end, self.size, self.opened = tmp, first, first, 0, time.monotonic()
        self.fh: Any = None
        self.rows: list[dict] = []
        self.writer: Any = None


class FileSink(Sink):
    """Rolling files in ``directory``; see the module docs for names, rolls and delivery."""

    kind = "file"
    buffered = True

    def __init__(self, directory: str | os.PathLike[str], format: str = "jsonl", *, roll_size: int | str = "64MB",
                 roll_seconds: float = 60.0, name: str | None = None) -> None:
        if format not in _EXT:
            raise ValueError(f"format {format!r}: use one of {sorted(_EXT)}")
        self.directory, self.format = Path(directory), format
        self.roll_size, self.roll_seconds = parse_size(roll_size), float(roll_seconds)
        self.name = name or f"file-{self.directory.name or 'root'}"
        self.rolled = 0  # files rolled by this sink
        self._open: dict[tuple[str, int], _Open] = {}
        self._durable: dict[tuple[str, int], int] = {}
        self._leaving: dict[tuple[str, int], int] = {}
        self._columns: dict[str, list[str]] = {}  # csv header per topic
        self._schemas: dict[str, Any] = {}  # parquet schema per topic

    # -- names ------------------------------------------------------------------------------
    def _final_re(self, topic: str, partition: int) -> re.Pattern:
        return re.compile(re.escape(f"{topic}-{partition}-") + r"(\d{20})-(\d{20})\." + self.format + "$")

    def _marker(self, tp: tuple[str, int]) -> Path:
        """``.<topic>-<partition>.next``: the next offset after the last rolled file (kept if files move)."""
        return self.directory / f".{tp[0]}-{tp[1]}.next"

    def _tmp_name(self, topic: str, partition: int, first: int) -> str:
        return f"{topic}-{partition}-{first:020d}.{self.format}.tmp"

    # -- lifecycle --------------------------------------------------------------------------
    def open(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            probe = self.directory / f".{self.name}.probe"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise Unavailable(f"cannot write to {self.directory}: {exc}") from exc

    def stored_offsets(self, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int] | None:
        """On assignment: drop the partitions' leftover .tmp files; resume after their last rolled file."""
        try:
            names = os.listdir(self.directory)
        except OSError as exc:
            raise Unavailable(f"cannot list {self.directory}: {exc}") from exc
        out: dict[tuple[str, int], int] = {}
        for topic, partition in partitions:
            tmp_prefix, final = f"{topic}-{partition}-", self._final_re(topic, partition)
            for n in names:
                if n.startswith(tmp_prefix) and n.endswith(f".{self.format}.tmp") \
                        and n[len(tmp_prefix):-len(f".{self.format}.tmp")].isdigit():
                    log.info("%s: deleting %s left by a crash (its records are read again)", self.name, n)
                    (self.directory / n).unlink(missing_ok=True)
                elif (m := final.match(n)) and int(m.group(2)) + 1 > out.get((topic, partition), -1):
                    out[(topic, partition)] = int(m.group(2)) + 1
            marker = self._marker((topic, partition))
            if marker.exists():  # the last roll's offset, even when rolled files were moved away since
                out[(topic, partition)] = max(out.get((topic, partition), 0), int(marker.read_text()))
        self._durable.update(out)
        return out or None

    # -- converting -------------------------------------------------------------------------
    def prepare(self, records: Sequence[SinkRecord]) -> tuple[list[Any], list[tuple[SinkRecord, str, str]]]:
        refused: list[tuple[SinkRecord, str, str]] = []
        ok: list[SinkRecord] = []
        for r in records:
            if isinstance(r.value, dict):
                ok.append(r)
            else:
                refused.append((r, "not_an_object", f"a JSON {type(r.value).__name__}, not an object"))
        if self.format == "csv":
            ok = self._fit_csv(ok, refused)
        elif self.format == "parquet":
            ok = self._fit_parquet(ok, refused)
        return ok, refused

    def _fit_csv(self, records: list[SinkRecord], refused: list) -> list[SinkRecord]:
        kept = []
        for r in records:
            cols = self._columns.setdefault(r.topic, list(r.value))
            extra = r.value.keys() - set(cols)
            if extra:
                refused.append((r, "field_not_in_header", f"fields {sorted(extra)} are not among the CSV "
                                f"columns {cols} (fixed by the topic's first record)"))
            else:
                kept.append(r)
        return kept

    def _fit_parquet(self, records: list[SinkRecord], refused: list) -> list[SinkRecord]:
        import pyarrow as pa

        kept: list[SinkRecord] = []
        by_topic: dict[str, list[SinkRecord]] = {}
        for r in records:
            by_topic.setdefault(r.topic, []).append(r)
        for topic, recs in by_topic.items():
            values = [r.value for r in recs]
            schema = self._schemas.get(topic)
            if schema is None:
                try:
                    schema = self._schemas[topic] = pa.Table.from_pylist(values).schema
                except (pa.ArrowInvalid, pa.ArrowTypeError):
                    schema = self._schemas[topic] = pa.Table.from_pylist(values[:1]).schema
            if self._converts(values, schema):
                kept += recs
                continue
            for r in recs:  # slow path, only for a batch holding a record that does not fit
                problem = self._misfit(r.value, topic)
                if problem:
                    refused.append((r, "schema_mismatch", problem))
                else:
                    kept.append(r)
        return kept

    def _converts(self, values: list[dict], schema: Any) -> bool:
        import pyarrow as pa

        names = set(schema.names)
        if any(v.keys() - names for v in values):
            return False
        try:
            pa.Table.from_pylist(values, schema=schema)
            return True
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            return False

    def _misfit(self, value: dict, topic: str) -> str | None:
        """Why ``value`` does not fit the topic's Parquet schema (a null-typed field takes the first type seen)."""
        import pyarrow as pa

        schema = self._schemas[topic]
        extra = value.keys() - set(schema.names)
        if extra:
            return f"fields {sorted(extra)} are not in the Parquet schema {schema.names} (fixed by the first batch)"
        try:
            pa.Table.from_pylist([value], schema=schema)
            return None
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
            nulls = [f.name for f in schema if pa.types.is_null(f.type) and value.get(f.name) is not None]
            if nulls:  # a field null in every record so far: its first value decides its type
                for n in nulls:
                    t = pa.Table.from_pylist([{n: value[n]}]).schema.field(n).type
                    schema = schema.set(schema.get_field_index(n), pa.field(n, t))
                self._schemas[topic] = schema
                return self._misfit(value, topic)
            return f"does not fit the Parquet schema: {exc}"

    # -- writing ----------------------------------------------------------------------------
    def write(self, rows: Sequence[SinkRecord], offsets: dict[tuple[str, int], int]) -> None:
        by_tp: dict[tuple[str, int], list[SinkRecord]] = {}
        for r in rows:
            by_tp.setdefault((r.topic, r.partition), []).append(r)
        undo: list[tuple[tuple[str, int], _Open, int, int, int, bool]] = []
        try:
            for tp, end in offsets.items():
                recs = by_tp.get(tp)
                f = self._open.get(tp)
                if recs:
                    new = f is None
                    if new:
                        f = self._open[tp] = self._start(tp, recs[0].offset)
                    undo.append((tp, f, f.fh.tell() if f.fh else 0, len(f.rows), f.size, new))
                    self._append(f, tp[0], recs)
                if f is not None:
                    f.end = end
                else:  # nothing of this batch to write (all dead-lettered): nothing pending either
                    self._durable[tp] = end
        except OSError as exc:  # all or nothing: the runner writes this batch again
            for tp, f, pos, n, size, new in undo:
                self._undo(tp, f, pos, n, size, new)
            raise Unavailable(f"writing to {self.directory}: {exc}") from exc
        for tp in offsets:
            f = self._open.get(tp)
            if f is not None and f.size >= self.roll_size:
                self._roll_or_wait(tp)

    def _undo(self, tp: tuple[str, int], f: _Open, pos: int, n: int, size: int, new: bool) -> None:
        try:
            if new:
                self._open.pop(tp, None)
                if f.fh is not None:
                    f.fh.close()
                f.tmp.unlink(missing_ok=True)
                return
            if f.fh is not None:
                if f.writer is not None:
                    f.writer.flush()
                f.fh.flush()
                f.fh.truncate(pos)
                f.fh.seek(pos)
            del f.rows[n:]
            f.size = size
        except OSError as exc:  # cannot even undo: drop the file, its records are read again
            log.warning("%s: %s: %s; restarting from the last rolled file", self.name, f.tmp, exc)
            raise

    def _roll_or_wait(self, tp: tuple[str, int]) -> None:
        try:
            self._roll(tp)
        except OSError as exc:  # the file stays open; the roll is tried again after the next write / when idle
            log.warning("%s: rolling %s failed (tried again later): %s", self.name, self._open[tp].tmp, exc)

    def _start(self, tp: tuple[str, int], first: int) -> _Open:
        f = _Open(self.directory / self._tmp_name(tp[0], tp[1], first), first)
        if self.format != "parquet":
            f.fh = open(f.tmp, "wb")
        if self.format == "csv":
            f.writer = io.TextIOWrapper(f.fh, encoding="utf-8", newline="", write_through=True)
            cols = self._columns[tp[0]]
            csv.writer(f.writer).writerow(cols)
        return f

    def _append(self, f: _Open, topic: str, recs: list[SinkRecord]) -> None:
        if self.format == "jsonl":
            data = b"".join((r.raw if b"\n" not in r.raw else orjson.dumps(r.value)) + b"\n" for r in recs)
            f.fh.write(data)
            f.size += len(data)
        elif self.format == "csv":
            cols = self._columns[topic]
            w = csv.DictWriter(f.writer, cols, restval="")
            w.writerows({k: (orjson.dumps(v).decode() if isinstance(v, (dict, list)) else v)
                         for k, v in r.value.items()} for r in recs)
            f.size = f.fh.tell()
        else:
            f.rows.extend(r.value for r in recs)
            f.size += sum(len(r.raw) for r in recs)

    def _roll(self, tp: tuple[str, int]) -> None:
        """Make the partition's open file final: flush, fsync, rename, fsync the folder."""
        f = self._open[tp]
        final = self.directory / f"{tp[0]}-{tp[1]}-{f.first:020d}-{f.end - 1:020d}.{self.format}"
        if self.format == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pylist(f.rows, schema=self._schemas[tp[0]])
            with open(f.tmp, "wb") as fh:
                pq.write_table(table, fh)
                fh.flush()
                os.fsync(fh.fileno())
        elif not f.fh.closed:
            if f.writer is not None:
                f.writer.flush()
            f.fh.flush()
            os.fsync(f.fh.fileno())
            f.fh.close()
        os.replace(f.tmp, final)
        del self._open[tp]
        marker = self._marker(tp)
        marker.with_suffix(".tmp").write_text(str(f.end))
        os.replace(marker.with_suffix(".tmp"), marker)
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self._durable[tp] = f.end
        self.rolled += 1

    def durable_offsets(self) -> dict[tuple[str, int], int]:
        """Rolls files past ``roll_seconds``; next offsets of what rolled files hold."""
        now = time.monotonic()
        for tp in [tp for tp, f in self._open.items() if now - f.opened >= self.roll_seconds]:
            self._roll_or_wait(tp)
        out = {**self._durable, **self._leaving}
        self._leaving = {}
        return out

    def revoke(self, partitions: list[tuple[str, int]]) -> None:
        failed = None
        for tp in partitions:
            if tp in self._open:
                try:
                    self._roll(tp)
                except OSError as exc:  # not durable: the partition's next owner writes these records
                    failed = exc
                    f = self._open.pop(tp)
                    if f.fh is not None and not f.fh.closed:
                        f.fh.close()
                    f.tmp.unlink(missing_ok=True)
        for tp in partitions:  # reported once more (the runner commits them), then forgotten
            if tp in self._durable:
                self._leaving[tp] = self._durable.pop(tp)
        if failed is not None:
            raise Unavailable(f"rolling files in {self.directory}: {failed}") from failed

    def close(self) -> None:
        try:
            for tp in list(self._open):
                self._roll(tp)
        except OSError as exc:
            raise Unavailable(f"rolling files in {self.directory}: {exc}") from exc
