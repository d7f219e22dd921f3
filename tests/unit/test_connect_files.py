"""File source and sink logic without a broker: numbering, resume, finished files, rolls, offsets."""

from __future__ import annotations

import os
import time

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tidal.connect.base import BadRecord, SinkRecord, Unavailable
from tidal.connect.file_sink import FileSink, parse_size
from tidal.connect.file_source import FileSource, format_of


def _all(source: FileSource) -> list:
    out, batch = [], source.poll(1000, 0)
    while batch:
        out += batch
        source.committed(batch[-1].position)
        batch = source.poll(1000, 0)
    return out


def test_csv_rows_are_numbered_in_file_order_good_and_bad_alike(tmp_path):
    (tmp_path / "a.csv").write_text("a,b\n1,x\n\n2\n3,y\n4,z,extra\n5,w")  # no newline at the end
    s = FileSource(tmp_path, ledger=tmp_path / "l.json")
    s.open(None)
    got = [(type(r).__name__, r.position["row"]) for r in _all(s)]
    assert got == [("SourceRecord", 1), ("BadRecord", 2), ("SourceRecord", 3), ("BadRecord", 4), ("SourceRecord", 5)]
    assert s.finished


def test_csv_chunks_keep_numbering_and_types_across_chunk_edges(tmp_path, monkeypatch):
    import tidal.connect.file_source as fs

    monkeypatch.setattr(fs, "CHUNK_BYTES", 64)
    (tmp_path / "a.csv").write_text("i,x\n" + "".join(f"{i},{i / 2}\n" if i != 13 else "13\n" for i in range(40)))
    s = FileSource(tmp_path, ledger=tmp_path / "l.json")
    s.open(None)
    recs = _all(s)
    assert [r.position["row"] for r in recs] == list(range(1, 41))
    assert [r.position["row"] for r in recs if isinstance(r, BadRecord)] == [14]
    assert orjson.loads(recs[3].value) == {"i": 3, "x": 1.5}


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_resume_starts_right_after_the_saved_position(tmp_path, fmt):
    rows = [{"i": i} for i in range(25)]
    path = tmp_path / f"d.{fmt}"
    if fmt == "csv":
        path.write_text("i\n" + "".join(f"{r['i']}\n" for r in rows))
    elif fmt == "jsonl":
        path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=10)
    field = "line" if fmt == "jsonl" else "row"
    s = FileSource(path, ledger=tmp_path / "l.json")
    s.open({"file": path.name, field: 12})
    got = _all(s)
    assert [orjson.loads(r.value)["i"] for r in got] == list(range(12, 25))
    assert got[0].position == {"file": path.name, field: 13}


def test_finished_files_are_listed_once_committed_and_not_read_again(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"x": 1}\n')
    (tmp_path / "b.jsonl").write_text("")  # empty: finished without a record
    s = FileSource(tmp_path, ledger=tmp_path / "l" / "ledger.json")
    s.open(None)
    batch = s.poll(100, 0)
    assert [r.position for r in batch] == [{"file": "a.jsonl", "line": 1}]
    assert not (tmp_path / "l" / "ledger.json").exists()  # not before its records are committed
    s.committed(batch[-1].position)
    assert s.poll(100, 0) == [] and s.finished
    assert orjson.loads((tmp_path / "l" / "ledger.json").read_bytes()) == ["a.jsonl", "b.jsonl"]
    again = FileSource(tmp_path, ledger=tmp_path / "l" / "ledger.json")
    again.open(None)
    assert again.poll(100, 0) == []


def test_delete_done_and_a_missing_folder(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text('{"x": 1}\n')
    s = FileSource(tmp_path / "in", delete_done=True, ledger=tmp_path / "l.json")
    s.open(None)
    _all(s)
    assert list((tmp_path / "in").iterdir()) == []
    (tmp_path / "in").rmdir()
    with pytest.raises(Unavailable, match="does not exist"):
        s.open(None)


def test_watch_waits_until_a_file_stops_growing(tmp_path):
    s = FileSource(tmp_path, watch=True, settle_s=0.15, ledger=tmp_path / "l.json")
    s.open(None)
    (tmp_path / "a.jsonl").write_text('{"x": 1}\n')
    assert s.poll(10, 0) == []  # first seen now
    with open(tmp_path / "a.jsonl", "a") as fh:
        fh.write('{"x": 2}\n')
    os.utime(tmp_path / "a.jsonl", ns=(time.time_ns(), time.time_ns() + 1000))
    time.sleep(0.2)
    assert s.poll(10, 0) == []  # it changed: the clock starts again
    time.sleep(0.2)
    assert [orjson.loads(r.value)["x"] for r in s.poll(10, 0)] == [1, 2]


def test_format_and_size_parsing():
    assert format_of("a/b.csv") == "csv" and parse_size("1.5KB") == 1536
    with pytest.raises(ValueError, match="format"):
        format_of("notes.txt")
    with pytest.raises(ValueError, match="size"):
        parse_size("lots")


def _recs(topic, partition, start, n, value=lambda i: {"i": i}):
    return [SinkRecord(topic, partition, o, None, value(o), 0, orjson.dumps(value(o))) for o in range(start, start + n)]


def test_sink_rolls_by_age_and_resumes_from_its_files(tmp_path):
    sink = FileSink(tmp_path, "jsonl", roll_seconds=0.05)
    sink.open()
    rows, _ = sink.prepare(_recs("t", 1, 0, 5))
    sink.write(rows, {("t", 1): 5})
    assert sink.durable_offsets() == {} and list(tmp_path.glob("*.tmp"))
    time.sleep(0.06)
    assert sink.durable_offsets() == {("t", 1): 5}
    rows, _ = sink.prepare(_recs("t", 1, 5, 3))
    sink.write(rows, {("t", 1): 8})  # left open, as after a kill -9
    fresh = FileSink(tmp_path, "jsonl")
    assert fresh.stored_offsets([("t", 1), ("t", 2)]) == {("t", 1): 5}
    assert not list(tmp_path.glob("*.tmp"))  # the crashed file is discarded, its records read again
    for f in tmp_path.glob("t-1-*.jsonl"):
        f.unlink()  # rolled files moved away: the marker still knows where to resume
    assert FileSink(tmp_path, "jsonl").stored_offsets([("t", 1)]) == {("t", 1): 5}


def test_parquet_schema_from_the_first_batch(tmp_path):
    sink = FileSink(tmp_path, "parquet", roll_size=1)
    sink.open()
    first = _recs("t", 0, 0, 2, lambda i: {"i": i, "note": None})
    rows, refused = sink.prepare(first)
    assert refused == []
    later = _recs("t", 0, 2, 3, lambda i: {"i": i, "note": "n"} if i != 3 else {"i": "three"})
    later.append(SinkRecord("t", 0, 5, None, {"i": 5, "extra": 1}, 0, b""))
    rows2, refused2 = sink.prepare(later)
    assert [(r.offset, reason) for r, reason, _ in refused2] == [(3, "schema_mismatch"), (5, "schema_mismatch")]
    sink.write(rows + rows2, {("t", 0): 6})
    table = pq.read_table(next(tmp_path.glob("*.parquet")))
    assert table.to_pylist() == [{"i": 0, "note": None}, {"i": 1, "note": None}, {"i": 2, "note": "n"},
                                 {"i": 4, "note": "n"}]
    assert sink.durable_offsets() == {("t", 0): 6}


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    sink = FileSink(tmp_path, "jsonl")
    sink.open()
    rows, _ = sink.prepare(_recs("t", 0, 0, 3))
    sink.write(rows, {("t", 0): 3})
    f = sink._open[("t", 0)]
    real = f.fh

    class Full:
        def __getattr__(self, name):
            return getattr(real, name)

        def write(self, data):
            real.write(data[:5])
            raise OSError(28, "No space left on device")

    f.fh = Full()
    rows, _ = sink.prepare(_recs("t", 0, 3, 2))
    with pytest.raises(Unavailable, match="No space"):
        sink.write(rows, {("t", 0): 5})
    f.fh = real
    sink.write(rows, {("t", 0): 5})
    sink.close()
    lines = next(tmp_path.glob("*.jsonl")).read_bytes().splitlines()
    assert [orjson.loads(x)["i"] for x in lines] == [0, 1, 2, 3, 4]
