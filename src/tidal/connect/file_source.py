"""Read CSV, JSON Lines and Parquet files (one file, or a folder, optionally watched) as events.

Each record becomes one JSON event; its position is ``{"file": name, "line": n}`` (JSON
Lines: the 1-based line of the file) or ``{"file": name, "row": n}`` (CSV: the 1-based data
row, blank lines not counted; Parquet: the 1-based row). Files are read in name order,
each from start to end; conversion is done a chunk at a time by pyarrow (CSV, Parquet) or
orjson (JSON Lines).

**Which files, and when.** A folder's files matching ``pattern`` are read, except names
that start with ``.`` or end in ``.tmp`` / ``.part`` / ``.partial`` (files being written).
With ``watch``, a new file is taken once its size and modification time stayed the same
over one poll interval (``settle_s``); writers that can should write ``.name.tmp`` and
rename it when complete, which is atomic and never read early.

**Finished files.** Once every record of a file is in Kafka and its position saved
(:meth:`committed`), the file is moved to ``done_dir``, deleted (``delete_done``), or (by
default) its name is added to a ledger (``<position file>.files.json``) so it is not read
again. A restart resumes inside the file named by the saved position; the runner's
dedup (see :mod:`tidal.connect.source_runner`) drops what was delivered after the last save.

**Bad input** goes to the dead-letter topic: a line that is not JSON (``invalid_json``) or
not an object (``not_an_object``), a CSV row with the wrong number of fields
(``wrong_field_count``), a file pyarrow cannot read (``unreadable_file``).

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp()); _ = (d / "a.jsonl").write_text('{"x": 1}\\nnope\\n')
>>> s = FileSource(d, ledger=d / "ledger.json"); s.open(None)
>>> [(type(r).__name__, r.position) for r in s.poll(10, 0)]
[('SourceRecord', {'file': 'a.jsonl', 'line': 1}), ('BadRecord', {'file': 'a.jsonl', 'line': 2})]
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import fnmatch
import io
import logging
import os
import time
from collections import deque
from pathlib import Path
from typing import Any, Iterator, Sequence

import orjson

from tidal.connect.base import BadRecord, Source, SourceRecord, Unavailable

__all__ = ["FileSource", "FORMATS", "format_of"]

log = logging.getLogger(__name__)

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet",
           ".pq": "parquet"}
_PARTIAL = (".tmp", ".part", ".partial")
MAX_LINE_BYTES = 16 * 1024 * 1024  # a JSON Lines line over this is dead-lettered, not read into memory
CHUNK_BYTES = 4 << 20  # CSV / JSON Lines are converted this many bytes at a time (fixed: positions depend on it)
PARQUET_BATCH = 10_000

Item = SourceRecord | BadRecord


def format_of(path: str | os.PathLike[str]) -> str:
    """The format a file name says: csv, jsonl or parquet.

    >>> format_of("x/events-01.ndjson"), format_of("a.PARQUET")
    ('jsonl', 'parquet')
    """
    ext = Path(path).suffix.lower()
    if ext not in FORMATS:
        raise ValueError(f"{path}: cannot tell the format from {ext or 'no extension'!r}; "
                         f"give one of csv, jsonl, parquet")
    return FORMATS[ext]


def _default(v: Any) -> Any:
    """orjson fallback for what pyarrow's to_pylist returns and JSON has no type for."""
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, bytes):
        try:
            return v.decode()
        except UnicodeDecodeError:
            return base64.b64encode(v).decode()
    if isinstance(v, dt.timedelta):
        return v.total_seconds()
    raise TypeError(f"cannot write {type(v).__name__} as JSON")


def _key(row: dict, field: str | None) -> bytes | None:
    if field is None:
        return None
    v = row.get(field)
    return None if v is None else str(v).encode()


def _table_records(table: Any, file: str, numbers: Sequence[int], key_field: str | None,
                   skip_through: int) -> list[Item]:
    """Records of a pyarrow table whose rows carry the 1-based ``numbers`` (after ``skip_through``)."""
    rows = table.to_pylist()
    out: list[Item] = []
    dumps = orjson.dumps
    for row, n in zip(rows, numbers):
        if n > skip_through:
            out.append(SourceRecord(dumps(row, default=_default), _key(row, key_field), {"file": file, "row": n}))
    return out


def _read_csv(path: Path, file: str, key_field: str | None, skip_through: int) -> Iterator[list[Item]]:
    """CSV in chunks of whole lines, each parsed (and typed) by pyarrow; bad rows kept in order."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    with open(path, "rb") as fh:
        header = b""
        while not header.strip():
            header = fh.readline()
            if not header:
                return
        header = header.rstrip(b"\r\n") + b"\n"
        row = 0  # data rows before this chunk
        rest = b""
        while True:
            data = fh.read(CHUNK_BYTES)
            chunk = rest + data
            if not data:
                rest = b""
            else:
                cut = chunk.rfind(b"\n") + 1
                chunk, rest = (chunk[:cut], chunk[cut:]) if cut else (b"", chunk)
            if chunk.strip():
                bad: list[tuple[int | None, str]] = []

                def invalid(r: Any) -> str:
                    bad.append((r.number, f"expected {r.expected_columns} fields, got {r.actual_columns}", r.text))
                    return "skip"

                try:
                    table = pcsv.read_csv(io.BytesIO(header + chunk),
                                          read_options=pcsv.ReadOptions(use_threads=False,
                                                                        block_size=len(header) + len(chunk) + 1),
                                          parse_options=pcsv.ParseOptions(invalid_row_handler=invalid))
                except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
                    yield [BadRecord(path.name.encode(), "unreadable_file", f"{file}: {exc}",
                                     position={"file": file, "row": row + 1})]
                    return
                total = table.num_rows + len(bad)
                # pyarrow numbers rows from 1 with the header as row 1, blank lines not counted
                bad_rows = {row + (n - 1 if n is not None else table.num_rows + k + 1): (msg, text)
                            for k, (n, msg, text) in enumerate(bad)}
                good = [n for n in range(row + 1, row + total + 1) if n not in bad_rows]
                items = _table_records(table, file, good, key_field, skip_through)
                if bad_rows:
                    items += [BadRecord(text.encode(), "wrong_field_count", f"{file} row {n}: {msg}",
                                        position={"file": file, "row": n})
                              for n, (msg, text) in bad_rows.items() if n > skip_through]
                    items.sort(key=lambda r: r.position["row"])
                row += total
                if items:
                    yield items
            if not data and not rest:
                return


def _read_jsonl(path: Path, file: str, key_field: str | None, skip_through: int) -> Iterator[list[Item]]:
    loads = orjson.loads
    with open(path, "rb") as fh:
        line = 0
        rest = b""
        skipping = False  # inside a line over MAX_LINE_BYTES: dropped up to its newline
        while True:
            data = fh.read(CHUNK_BYTES)
            eof = not data
            if skipping:
                end = data.find(b"\n")
                if end < 0 and not eof:
                    continue
                skipping, data = False, data[end + 1:] if end >= 0 else b""
            chunk = rest + data
            if not eof:
                cut = chunk.rfind(b"\n") + 1
                chunk, rest = chunk[:cut], chunk[cut:]
                too_long = rest[:4096] if len(rest) > MAX_LINE_BYTES else None
                if too_long is not None:  # one line longer than any record: never held whole in memory
                    rest, skipping = b"", True
            else:
                rest = b""
            lines = chunk.split(b"\n") if chunk else []  # no whole line yet: nothing to count
            if chunk.endswith(b"\n"):
                lines.pop()
            items: list[Item] = []
            for raw in lines:
                line += 1
                if line <= skip_through:
                    continue
                raw = raw.strip()
                if not raw:
                    continue
                pos = {"file": file, "line": line}
                try:
                    value = loads(raw)
                except orjson.JSONDecodeError as exc:
                    items.append(BadRecord(raw, "invalid_json", f"{file} line {line}: {exc}", position=pos))
                    continue
                if type(value) is not dict:
                    items.append(BadRecord(raw, "not_an_object", f"{file} line {line}: a JSON "
                                           f"{type(value).__name__}, not an object", position=pos))
                    continue
                items.append(SourceRecord(raw, _key(value, key_field), pos))
            if not eof and too_long is not None:
                line += 1
                if line > skip_through:
                    items.append(BadRecord(too_long, "line_too_long", f"{file} line {line}: over {MAX_LINE_BYTES:,} "
                                           "bytes (its first 4096 kept here)", position={"file": file, "line": line}))
            if items:
                yield items
            if eof:
                return


def _read_parquet(path: Path, file: str, key_field: str | None, skip_through: int) -> Iterator[list[Item]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except pa.ArrowInvalid as exc:
        yield [BadRecord(path.name.encode(), "unreadable_file", f"{file}: {exc}", position={"file": file, "row": 1})]
        return
    row, groups = 0, []
    for g in range(pf.metadata.num_row_groups):  # skip whole row groups already delivered
        n = pf.metadata.row_group(g).num_rows
        if row + n <= skip_through and not groups:
            row += n
        else:
            groups.append(g)
    if not groups:
        return
    try:
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH, row_groups=groups):
            numbers = range(row + 1, row + batch.num_rows + 1)
            row += batch.num_rows
            if row > skip_through:
                yield _table_records(batch, file, numbers, key_field, skip_through)
    except pa.ArrowInvalid as exc:
        yield [BadRecord(path.name.encode(), "unreadable_file", f"{file} after row {row}: {exc}",
                         position={"file": file, "row": row + 1})]


_READERS = {"csv": _read_csv, "jsonl": _read_jsonl, "parquet": _read_parquet}


class _EndOfFile:
    """Queued after a file's last record: the file is finished once what came before is committed."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class FileSource(Source):
    """Records of the files at ``path`` (a file or a folder; see the module docs for the rules).

    ``format``: csv, jsonl or parquet (default: from each file's extension); ``key_field``:
    the event key comes from this field; ``done_dir`` / ``delete_done``: what happens to a
    finished file (default: its name goes to ``ledger``).
    """

    kind = "file"

    def __init__(self, path: str | os.PathLike[str], *, format: str | None = None, watch: bool = False,
                 pattern: str | None = None, key_field: str | None = None,
                 done_dir: str | os.PathLike[str] | None = None, delete_done: bool = False,
                 ledger: str | os.PathLike[str] | None = None, name: str | None = None,
                 settle_s: float = 1.0) -> None:
        path = Path(path)
        self.path, self.format, self.watch, self.key_field = path, format, watch, key_field
        self.single = path.is_file() or (not path.is_dir() and path.suffix.lower() in FORMATS)
        self.folder = path.parent if self.single else path
        self.pattern = path.name if self.single else (pattern or "*")
        if format is not None and format not in _READERS:
            raise ValueError(f"format {format!r}: use one of {sorted(_READERS)}")
        if done_dir is not None and delete_done:
            raise ValueError("give done_dir or delete_done, not both")
        self.done_dir = Path(done_dir) if done_dir is not None else None
        self.delete_done = delete_done
        self.name = name or f"file-{(path.stem if self.single else path.name) or 'root'}"
        if ledger is None:
            from tidal.connect.positions import default_position_path

            ledger = default_position_path(self.name).with_suffix(".files.json")
        self.ledger = Path(ledger)
        self._own = {self.ledger.name} if self.ledger.resolve().parent == self.folder.resolve() else set()
        self.settle_s = settle_s
        self.finished = False  # not watching, and every file was read and committed (the CLI stops then)
        self.finished_files: list[str] = []  # finished by this run, in order
        self._done: set[str] = set()
        self._settling: dict[str, tuple[int, int, float]] = {}  # name -> (size, mtime_ns, since)
        self._queue: deque[Item | _EndOfFile] = deque()
        self._reader: Iterator[list[Item]] | None = None
        self._current: str | None = None
        self._resume: tuple[str, int] | None = None
        self._unsaved: list[str] = []  # files whose last records were returned but not yet committed

    # -- lifecycle --------------------------------------------------------------------------
    def open(self, position: Any | None) -> None:
        if not self.folder.is_dir():
            raise Unavailable(f"folder {self.folder} does not exist (or is not mounted)")
        self._done = set(orjson.loads(self.ledger.read_bytes())) if self.ledger.exists() else set()
        self._queue.clear()
        self._reader, self._current, self._unsaved = None, None, []
        self._resume = None
        if position:
            self._resume = (position["file"], int(position.get("line", position.get("row", 0))))

    def close(self) -> None:
        self._reader = None

    def already_ingested(self) -> list[str]:
        """Files here that an earlier run finished (listed in the ledger): they are not read again."""
        done = set(orjson.loads(self.ledger.read_bytes())) if self.ledger.exists() else set()
        try:
            names = sorted(e.name for e in os.scandir(self.folder) if e.is_file())
        except OSError:
            return []
        return [n for n in names if n in done and fnmatch.fnmatch(n, self.pattern)]

    # -- reading ----------------------------------------------------------------------------
    def poll(self, max_records: int, timeout: float) -> Sequence[Item]:
        out: list[Item] = []
        while len(out) < max_records:
            if not self._queue and not self._fill():
                break
            while self._queue and len(out) < max_records:
                item = self._queue.popleft()
                if isinstance(item, _EndOfFile):
                    if out:
                        self._unsaved.append(item.name)
                    else:  # everything before it is committed already
                        self._finish([item.name])
                else:
                    out.append(item)
        if not out:
            if self.watch:
                time.sleep(min(timeout, 0.1))
            else:
                self.finished = not self._queue and self._reader is None
        return out

    def _fill(self) -> bool:
        """Put the next chunk of records in the queue; False when there is nothing to read now."""
        while True:
            if self._reader is None and not self._next_file():
                return False
            try:
                chunk = next(self._reader)
            except StopIteration:
                self._queue.append(_EndOfFile(self._current))
                self._reader = None
                return True
            except FileNotFoundError:
                log.warning("%s: %s disappeared while being read; skipped", self.name, self._current)
                self._reader = None
                continue
            except OSError as exc:
                self._reader = None
                raise Unavailable(f"cannot read {self.folder / self._current}: {exc}") from exc
            self._queue.extend(chunk)
            return True

    def _next_file(self) -> bool:
        """Open the next file to read; False when there is none (yet)."""
        skip = 0
        if self._resume is not None:  # the file of the saved position, unless it was finished before
            name, skip = self._resume
            self._resume = None
            if name in self._done or not (self.folder / name).is_file():
                return self._next_file()
        else:
            names = self._ready_files()
            if not names:
                return False
            name = names[0]
        fmt = self.format or format_of(name)
        self._current = name
        self._reader = _READERS[fmt](self.folder / name, name, self.key_field, skip)
        return True

    def _ready_files(self) -> list[str]:
        """Matching, complete files not yet read, in name order."""
        try:
            names = sorted(e.name for e in os.scandir(self.folder) if e.is_file())
        except FileNotFoundError as exc:
            raise Unavailable(f"folder {self.folder} does not exist (or is not mounted)") from exc
        except OSError as exc:
            raise Unavailable(f"cannot list {self.folder}: {exc}") from exc
        taken = self._done | set(self._unsaved) | self._own | {i.name for i in self._queue if isinstance(i, _EndOfFile)}
        if self._current is not None:
            taken.add(self._current)
        out = []
        now = time.monotonic()
        for n in names:
            if n in taken or n.startswith(".") or n.endswith(_PARTIAL) or not fnmatch.fnmatch(n, self.pattern):
                continue
            if self.format is None and Path(n).suffix.lower() not in FORMATS:
                continue
            if self.watch and not self._settled(n, now):
                continue
            out.append(n)
        return out

    def _settled(self, name: str, now: float) -> bool:
        try:
            st = os.stat(self.folder / name)
        except FileNotFoundError:
            return False
        seen = self._settling.get(name)
        if seen is None or seen[:2] != (st.st_size, st.st_mtime_ns):
            self._settling[name] = (st.st_size, st.st_mtime_ns, now)
            return False
        if now - seen[2] < self.settle_s:
            return False
        del self._settling[name]
        return True

    # -- finished files ---------------------------------------------------------------------
    def committed(self, position: Any) -> None:
        """The files whose last records were in the batch just saved are finished now."""
        if self._unsaved:
            names, self._unsaved = self._unsaved, []
            self._finish(names)

    def _finish(self, names: list[str]) -> None:
        """Move, delete or list finished files (their records are in Kafka, their position saved)."""
        for n in names:
            src = self.folder / n
            try:
                if self.done_dir is not None:
                    self.done_dir.mkdir(parents=True, exist_ok=True)
                    os.replace(src, self.done_dir / n)
                elif self.delete_done:
                    src.unlink()
            except FileNotFoundError:
                pass
            log.info("%s: finished %s", self.name, n)
            self.finished_files.append(n)
        self._done.update(names)
        if self.done_dir is None and not self.delete_done:
            self.ledger.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.ledger.with_name(self.ledger.name + ".tmp")
            with open(tmp, "wb") as fh:
                fh.write(orjson.dumps(sorted(self._done)))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.ledger)
