"""`tidal produce`, `tidal tail` and `tidal dlq replay` as a user runs them: subprocesses
against the session's embedded broker, with a real worker in between that sends two
malformed events to the DLQ."""

from __future__ import annotations

import subprocess
from pathlib import Path

import orjson
import pytest

from tidal.broker import ensure_topics
from tidal.stream import Pipeline, Worker
from tidal.stream.hooks import WorkerHooks
from tidal.stream.schema import Schema

from .kafka_helpers import produce, read_all, tidal_process

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SCHEMA = Schema.from_dict({"id": "int", "merchant": "str", "score": "float"})
LINES = [
    '{"id": 1, "merchant": "fuel", "score": 0.95}',
    '{"id": 2, "merchant": "grocery", "score": 0.97}',
    '{"id": 3, "merchant": "fuel", "score": 0.2}',
    '{"id": 4, "merchant": "fuel", "score": 0.9',  # line 4: cut short, not JSON
    '{"id": "four", "merchant": "fuel", "score": 0.5}',  # wrong_type in the worker
    '',
    '{"id": 5, "score": 0.1}',  # missing_field in the worker
]
FIX = "tests.integration.test_cli_records:fix"


def fix(value: bytes, headers: dict) -> bytes | None:
    """The --fix of the tests: a wrong id spelled out becomes the number; anything else is skipped."""
    if headers.get("tidal.error.reason") != "wrong_type":
        return None
    obj = orjson.loads(value)
    obj["id"] = {"four": 4}[obj["id"]]
    return orjson.dumps(obj)


def cli(settings, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    proc = tidal_process(settings, *args, env={"COLUMNS": "200"}, cwd=REPO, text=True,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(stdin, timeout=120)
    return proc.returncode, out, err


def jsons(out: str) -> list[dict]:
    return [orjson.loads(line) for line in out.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def fed(settings, tmp_path_factory):
    """A pipeline fed by `tidal produce` from a file with one bad line, run to its end once."""
    import uuid

    name = f"t{uuid.uuid4().hex[:10]}"
    p = Pipeline(name, schema=SCHEMA, partitions=1, max_wait_ms=20)
    ensure_topics(settings, p.topic_specs())
    path = tmp_path_factory.mktemp("records") / "sample.jsonl"
    path.write_text("\n".join(LINES) + "\n")
    produced = cli(settings, "produce", f"{name}.events", str(path), "--key", "merchant")
    Worker(p, settings, hooks=WorkerHooks()).run(idle_exit_s=4)
    return name, path, produced


def test_produce_names_the_bad_line_and_produces_the_good_ones(settings, fed):
    name, path, (rc, out, err) = fed
    assert rc == 0, err
    assert f"{path}:4: invalid JSON" in err
    assert "produced 5 record(s)" in out and "1 invalid line(s) skipped" in out
    msgs = read_all(settings, f"{name}.events", 1)
    assert len(msgs) == 5
    assert [m.key() for m in msgs][:3] == [b"fuel", b"grocery", b"fuel"]
    assert msgs[4].key() is None and "1 without a 'merchant' field" in out


def test_produce_from_stdin_creates_the_topic(settings, name):
    rc, out, err = cli(settings, "produce", f"{name}.sample", "-", stdin='{"a": 1}\n[1, 2]\n{"a": 2}\n')
    assert rc == 0, err
    assert "stdin:2: not a JSON object" in err and "created topic" in err
    assert "produced 2 record(s)" in out
    assert len(read_all(settings, f"{name}.sample", 4)) == 2


def test_tail_json_shows_the_predictions(settings, fed):
    name = fed[0]
    rc, out, err = cli(settings, "tail", name, "--json")
    assert rc == 0, err
    rows = jsons(out)
    assert sorted(r["value"]["id"] for r in rows) == [1, 2, 3]
    assert all(r["topic"] == f"{name}.predictions" and "headers" not in r for r in rows)


def test_tail_dlq_shows_the_reason_and_the_source(settings, fed):
    name = fed[0]
    rc, out, err = cli(settings, "tail", name, "--dlq")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["P:OFFSET", "TIME", "REASON", "SOURCE"]
    assert len(lines) == 3
    assert "wrong_type" in lines[1] and f"{name}.events:0:3" in lines[1]
    assert "missing_field" in lines[2] and '"score":0.1' in lines[2]
    assert all(len(line) <= 200 for line in lines)

    rc, out, _ = cli(settings, "tail", name, "--dlq", "--json")
    rows = jsons(out)
    assert [r["headers"]["tidal.error.reason"] for r in rows] == ["wrong_type", "missing_field"]
    assert rows[0]["headers"]["tidal.source.offset"] == "3" and rows[0]["value"]["id"] == "four"


def test_tail_where_filters(settings, fed):
    name = fed[0]
    rc, out, err = cli(settings, "tail", name, "--json", "--where", 'score > 0.9 and merchant == "fuel"')
    assert rc == 0, err
    assert [r["value"]["id"] for r in jsons(out)] == [1]
    rc, out, _ = cli(settings, "tail", name, "--dlq", "--json", "--where", "reason in ['missing_field'] and not _offset < 0")
    assert [r["value"]["id"] for r in jsons(out)] == [5]
    rc, out, _ = cli(settings, "tail", name, "--json", "--last", "1", "--where", "merchant != 'grocery'")
    assert [r["value"]["id"] for r in jsons(out)] == [3]  # the last one that matches
    rc, out, _ = cli(settings, "tail", name, "--json", "--from-beginning", "--max", "2")
    assert len(jsons(out)) == 2


@pytest.mark.parametrize("expr", ["__import__('os')", "score.__class__", "score + 1 > 2", "score >"])
def test_a_bad_where_is_refused_in_one_line(settings, fed, expr):
    rc, out, err = cli(settings, "tail", fed[0], "--where", expr)
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: --where:"), err


def test_tail_shows_undecodable_values_raw(settings, name):
    ensure_topics(settings, [f"{name}.raw"])
    produce(settings, f"{name}.raw", [b'{"ok": 1}', b"\xff\xfe not json"])
    rc, out, err = cli(settings, "tail", f"{name}.raw")
    assert rc == 0, err
    assert "(raw) b'\\xff\\xfe not json'" in out and "1 record(s) were not JSON" in err
    rc, out, _ = cli(settings, "tail", f"{name}.raw", "--json")
    assert [r.get("raw") for r in jsons(out)] == [None, "b'\\xff\\xfe not json'"]


def test_tail_of_nothing_known_is_one_line(settings, name):
    rc, _out, err = cli(settings, "tail", name)
    assert rc == 2 and err.startswith("error: no topic") and len(err.strip().splitlines()) == 1


def events(settings, name: str) -> list:
    return read_all(settings, f"{name}.events", 1, isolation="read_committed")


def test_dlq_replay_with_a_fix_is_exactly_once_and_reason_filters(settings, fed):
    name = fed[0]
    before = len(events(settings, name))

    rc, out, err = cli(settings, "dlq", "replay", name, "--reason", "wrong_type", "--fix", FIX, "--dry-run")
    assert rc == 0, err
    assert "would replay 1 dead letter(s)" in out and len(events(settings, name)) == before
    rc, out, _ = cli(settings, "dlq", "replay", name, "--since", "2100-01-01", "--dry-run")
    assert "would replay 0" in out and "2 older than --since" not in out and "older than --since" in out

    rc, out, err = cli(settings, "dlq", "replay", name, "--reason", "wrong_type", "--fix", FIX)
    assert rc == 0, err
    assert f"replayed 1 dead letter(s) from {name}.dlq to {name}.events" in out and "wrong_type: 1 replayed" in out
    assert "missing_field" not in out  # --reason: the other dead letters are not looked at
    msgs = events(settings, name)
    assert len(msgs) == before + 1
    last = msgs[-1]
    assert orjson.loads(last.value())["id"] == 4 and last.key() == b"fuel"
    assert dict(last.headers())["tidal.replayed-from"] == b"dlq:0:0"

    rc, out, err = cli(settings, "dlq", "replay", name, "--reason", "wrong_type", "--fix", FIX)
    assert rc == 0 and "replayed 0 dead letter(s)" in out, err
    assert len(events(settings, name)) == before + 1

    # without --reason: the rest, as they were (no fix); the fixed one is not replayed again
    rc, out, err = cli(settings, "dlq", "replay", name)
    assert rc == 0, err
    assert "replayed 1 dead letter(s)" in out and "missing_field: 1 replayed" in out
    assert "wrong_type: 1 done before by a --reason run" in out
    msgs = events(settings, name)
    assert len(msgs) == before + 2
    assert msgs[-1].value() == LINES[-1].encode() and dict(msgs[-1].headers())["tidal.replayed-from"] == b"dlq:0:1"

    rc, out, err = cli(settings, "dlq", "replay", name)
    assert rc == 0 and "replayed 0 dead letter(s)" in out, err
    assert len(events(settings, name)) == before + 2


def test_dlq_replay_refuses_a_bad_fix_and_an_unknown_pipeline(settings, fed, name):
    rc, _out, err = cli(settings, "dlq", "replay", fed[0], "--fix", "tests.integration.test_cli_records:nope")
    assert rc == 2 and err.startswith("error: --fix") and len(err.strip().splitlines()) == 1
    rc, _out, err = cli(settings, "dlq", "replay", name)
    assert rc == 2 and err.startswith(f"error: no dead-letter topic {name}.dlq")


def test_tail_follow_prints_new_records_until_ctrl_c(settings, name, tmp_path):
    import select
    import signal
    import time

    ensure_topics(settings, [f"{name}.live"])
    err = tmp_path / "stderr"  # a file, not a pipe nobody reads: client logs filling one would block the tail
    proc = tidal_process(settings, "tail", f"{name}.live", "--follow", "--json", text=True,
                         stdout=subprocess.PIPE, stderr=err.open("w"), env={"PYTHONFAULTHANDLER": "1"})
    produce(settings, f"{name}.live", [b'{"n": 1}'])
    got, deadline = [], time.monotonic() + 60
    while not got and time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 0.5)[0]:
            got.append(orjson.loads(proc.stdout.readline()))
        if not got:  # the tail may have started after the record: it reads the last 10, so it shows up
            assert proc.poll() is None, err.read_text()
    assert [r["value"] for r in got] == [{"n": 1}]
    produce(settings, f"{name}.live", [b'{"n": 2}'])
    assert select.select([proc.stdout], [], [], 30)[0]
    assert orjson.loads(proc.stdout.readline())["value"] == {"n": 2}
    proc.send_signal(signal.SIGINT)
    try:
        rc = proc.wait(60)
    except subprocess.TimeoutExpired:  # where it hangs: faulthandler prints every thread's stack on SIGABRT
        proc.send_signal(signal.SIGABRT)
        proc.wait(10)
        raise AssertionError("tail --follow did not exit on Ctrl-C:\n" + err.read_text()[-6000:]) from None
    assert rc == 0, err.read_text()[-3000:]
    assert "Traceback" not in err.read_text()
