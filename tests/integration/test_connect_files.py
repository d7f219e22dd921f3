"""File connectors against the real broker: CSV / JSON Lines / Parquet in, rolling files out.

Exact record counts and values both ways, bad lines in the dead-letter topic with reasons,
a watched folder picking up a new file, and kill -9 of ``tidal ingest file`` / ``tidal sink
file`` mid-way: after a restart every record is in Kafka (or in the final files) exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tidal.connect import Backoff, FileSink, FileSource, PositionFile, SinkRunner, SourceRunner

from .kafka_helpers import produce, read_all, tidal_process

pytestmark = pytest.mark.integration

FAST = dict(initial=0.05, maximum=0.2, jitter=0.0)
REPO = Path(__file__).resolve().parents[2]


def _runner(source, settings, name, tmp_path, **kw):
    return SourceRunner(source, settings, f"{name}.events", position_file=PositionFile(tmp_path / "pos.json"),
                        backoff=Backoff(**FAST), **kw)


def _cli(settings, *args: str) -> subprocess.Popen:
    return tidal_process(settings, *args, env={"PYTHONPATH": str(REPO / "src")}, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)


def test_each_format_exactly_with_bad_lines_dead_lettered(settings, name, tmp_path):
    data = tmp_path / "in"
    data.mkdir()
    (data / "a.csv").write_text("id,amount,merchant\n1,2.5,m1\n2,3\n\n3,4.25,\"m,3\"\n4,1,m4,extra\n")
    (data / "b.jsonl").write_text('{"id": 5, "amount": 1.5}\nnot json\n[6]\n\n{"id": 7, "amount": 2}\n')
    pq.write_table(pa.table({"id": [8, 9, 10], "amount": [0.5, None, 7.0], "merchant": ["x", "y", "z"]}),
                   data / "c.parquet", row_group_size=2)
    (data / "skip.tmp").write_text("{}\n")  # being written: never read
    source = FileSource(data, key_field="id", ledger=tmp_path / "ledger.json", done_dir=tmp_path / "done")
    runner = _runner(source, settings, name, tmp_path)
    runner.run(until=lambda: source.finished)

    got = sorted((orjson.loads(m.value()) for m in read_all(settings, f"{name}.events", 4)), key=lambda r: r["id"])
    assert got == [{"id": 1, "amount": 2.5, "merchant": "m1"}, {"id": 3, "amount": 4.25, "merchant": "m,3"},
                   {"id": 5, "amount": 1.5}, {"id": 7, "amount": 2},
                   {"id": 8, "amount": 0.5, "merchant": "x"}, {"id": 9, "amount": None, "merchant": "y"},
                   {"id": 10, "amount": 7.0, "merchant": "z"}]
    keys = {orjson.loads(m.value())["id"]: m.key() for m in read_all(settings, f"{name}.events", 4)}
    assert keys[8] == b"8"
    positions = sorted((p["file"], p.get("row", p.get("line")), reason, raw) for p, (reason, raw) in
                       ((orjson.loads(dict(m.headers())["tidal.connect.position"]),
                         (dict(m.headers())["tidal.error.reason"], m.value()))
                        for m in read_all(settings, f"{name}.dlq", 4)))
    assert positions == [("a.csv", 2, b"wrong_field_count", b"2,3"), ("a.csv", 4, b"wrong_field_count", b"4,1,m4,extra"),
                         ("b.jsonl", 2, b"invalid_json", b"not json"), ("b.jsonl", 3, b"not_an_object", b"[6]")]
    assert sorted(p.name for p in (tmp_path / "done").iterdir()) == ["a.csv", "b.jsonl", "c.parquet"]
    assert [p.name for p in data.iterdir()] == ["skip.tmp"]


def test_watched_folder_picks_up_a_new_file(settings, name, tmp_path):
    data = tmp_path / "in"
    data.mkdir()
    (data / "01.jsonl").write_bytes(b"".join(orjson.dumps({"i": i}) + b"\n" for i in range(50)))
    source = FileSource(data, watch=True, settle_s=0.2, ledger=tmp_path / "ledger.json")
    runner = _runner(source, settings, name, tmp_path)
    t = threading.Thread(target=runner.run, kwargs={"until": lambda: runner.position == {"file": "02.jsonl", "line": 30}},
                         daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while runner.position != {"file": "01.jsonl", "line": 50} and time.monotonic() < deadline:
        time.sleep(0.05)
    # written the way the docs ask: a hidden temporary name, then an atomic rename
    (data / ".02.jsonl.tmp").write_bytes(b"".join(orjson.dumps({"i": i}) + b"\n" for i in range(50, 80)))
    os.replace(data / ".02.jsonl.tmp", data / "02.jsonl")
    t.join(20)
    runner.stop()
    assert not t.is_alive()
    assert sorted(orjson.loads(m.value())["i"] for m in read_all(settings, f"{name}.events", 4)) == list(range(80))
    assert orjson.loads((tmp_path / "ledger.json").read_bytes()) == ["01.jsonl", "02.jsonl"]
    # A restart reads neither file again.
    again = FileSource(data, ledger=tmp_path / "ledger.json")
    _runner(again, settings, name, tmp_path).run(until=lambda: again.finished)
    assert len(read_all(settings, f"{name}.events", 4)) == 80


def test_kill_9_of_ingest_file_then_restart_delivers_every_row_once(settings, name, tmp_path):
    n = 6000
    csv = tmp_path / "rows.csv"
    csv.write_text("i,x,label\n" + "".join(f"{i},{i * 0.5},r{i}\n" for i in range(n)))
    pos = tmp_path / "pos.json"
    args = ["ingest", "file", str(csv), "--topic", f"{name}.events", "--batch-size", "200",
            "--position-file", str(pos), "--name", name]
    proc = _cli(settings, *args)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        if pos.exists() and (PositionFile(pos).load()[0] or {}).get("row", 0) >= 1000:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    at = PositionFile(pos).load()[0]["row"]
    assert 1000 <= at < n, f"killed at row {at}: choose a larger file"
    again = _cli(settings, *args)
    assert again.wait(60) == 0, again.stderr.read().decode()[-2000:]
    got = Counter(orjson.loads(m.value())["i"] for m in read_all(settings, f"{name}.events", 4))
    assert len(got) == n and set(got.values()) == {1}
    assert PositionFile(pos).load()[0] == {"file": "rows.csv", "row": n}


def _final_records(folder: Path, fmt: str) -> list[dict]:
    out: list[dict] = []
    for p in sorted(folder.glob(f"*.{fmt}")):
        if fmt == "jsonl":
            out += [orjson.loads(line) for line in p.read_bytes().splitlines()]
        elif fmt == "parquet":
            out += pq.read_table(p).to_pylist()
        else:
            import csv as csv_module

            out += [{k: int(v) if v.lstrip("-").isdigit() else v for k, v in row.items()}
                    for row in csv_module.DictReader(p.open(newline=""))]
    return out


def test_sink_rolls_files_holding_each_record_once(settings, name, tmp_path):
    """One topic written by three sinks at once (jsonl, csv, parquet), each its own group."""
    topic = f"{name}.predictions"
    m = 900
    values = [orjson.dumps({"i": i, "score": i / 1000, "who": f"u{i % 7}"}) for i in range(m)]
    produce(settings, topic, values + [orjson.dumps({"i": -1, "other": 1}), b"[1, 2]"])
    sinks = {fmt: FileSink(tmp_path / fmt, fmt, roll_size="1KB", roll_seconds=60, name=f"{name}-{fmt}")
             for fmt in ("jsonl", "csv", "parquet")}
    runners = [SinkRunner(sink, settings, [topic], dlq=f"{name}.{fmt}.dlq", backoff=Backoff(**FAST), batch_size=50)
               for fmt, sink in sinks.items()]
    threads = [threading.Thread(target=r.run, kwargs={"idle_exit_s": 0.7}, daemon=True) for r in runners]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for fmt, sink in sinks.items():
        got = [r for r in _final_records(tmp_path / fmt, fmt) if r["i"] >= 0]
        assert sorted(r["i"] for r in got) == list(range(m)), fmt
        by_i = {r["i"]: r for r in got}
        assert by_i[7] == {"i": 7, "score": 0.007 if fmt != "csv" else "0.007", "who": "u0"}
        assert sink.rolled > 8 and not list((tmp_path / fmt).glob("*.tmp")), fmt
        reasons = Counter(dict(x.headers())["tidal.error.reason"] for x in read_all(settings, f"{name}.{fmt}.dlq", 4))
        misfit = {"jsonl": {}, "csv": {b"field_not_in_header": 1}, "parquet": {b"schema_mismatch": 1}}[fmt]
        assert reasons == {b"not_an_object": 1, **misfit}, fmt
        if fmt == "jsonl":  # no schema to break: the odd record is written as it came
            assert sorted(r["i"] for r in _final_records(tmp_path / fmt, fmt)) == [-1] + list(range(m))


def test_kill_9_of_sink_file_then_restart_leaves_every_record_once(settings, name, tmp_path):
    topic = f"{name}.predictions"
    m = 5000
    produce(settings, topic, [orjson.dumps({"i": i, "pad": "x" * 40}) for i in range(m)])
    out = tmp_path / "out"
    args = ["sink", "file", str(out), "--topic", topic, "--format", "jsonl", "--roll-size", "16KB",
            "--batch-size", "100", "--name", name]
    proc = _cli(settings, *args)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(list(out.glob("*.jsonl"))) < 8:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert len(_final_records(out, "jsonl")) < m, "killed too late: make the topic larger"
    assert list(out.glob("*.tmp")), "a kill mid-way leaves open files behind"
    # The restart joins as a new group: the killed member would hold its partitions for the
    # session timeout (10 s), and the sink resumes from its own files (stored_offsets) anyway.
    again = _cli(settings, *args, "--idle-exit", "1", "--group", f"{name}-restart")
    assert again.wait(60) == 0, again.stderr.read().decode()[-2000:]
    got = Counter(r["i"] for r in _final_records(out, "jsonl"))
    assert len(got) == m and set(got.values()) == {1}
    assert not list(out.glob("*.tmp"))


def test_ingest_says_what_it_produced_and_which_files_it_ingested_before(settings, name, tmp_path):
    data = tmp_path / "in"
    data.mkdir()
    (data / "a.jsonl").write_text("".join(f'{{"i": {i}}}\n' for i in range(30)))
    (data / "b.jsonl").write_text('{"i": 30}\n{"i": 31\n{"i": 32}\n')  # line 2: cut short
    args = ["ingest", "file", str(data), "--topic", f"{name}.events", "--position-file", str(tmp_path / "pos.json"),
            "--name", name]
    first = _cli(settings, *args)
    assert first.wait(60) == 0
    err = first.stderr.read().decode()
    assert f"32 records produced to {name}.events, 1 to {name}.dlq (invalid_json 1); 2 file(s) finished: " \
           "a.jsonl, b.jsonl" in err, err
    again = _cli(settings, *args)
    assert again.wait(60) == 0
    err = again.stderr.read().decode()
    assert "already ingested, not read again: a.jsonl, b.jsonl" in err and "0 records produced" in err, err
    assert len(read_all(settings, f"{name}.events", 4)) == 32
