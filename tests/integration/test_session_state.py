"""Session windows with distinct counts, state in RocksDB: kill -9 a worker mid-stream (exactly-once
mode), restart it, and every output equals an uninterrupted in-process run over the same events.

The kill lands inside a step, between transactions: the embedded broker shows the records of an
aborted transaction to read_committed readers (a known quirk), so a kill inside an open
transaction would show its records twice here though Apache Kafka hides them. The aborted
transaction itself is covered in test_worker_failures."""

from __future__ import annotations

import json
import signal
import time
from collections import defaultdict

import numpy as np
import orjson
import pytest
import yaml

from tidal.broker import ensure_topics
from tidal.features import SessionAggregate
from tidal.stream import from_dict
from tidal.stream.batch import Batch

from .kafka_helpers import produce, read_all, records, wait_for
from .test_delivery import start

pytestmark = pytest.mark.integration

N, USERS = 2000, 30
SESSION = {"key": "user", "time_field": "ts", "gap_s": 60, "lateness_s": 20, "late": "dlq",
           "aggs": {"clicks": ["page", "count"], "pages": ["page", "distinct"], "spend": ["amount", "sum"]}}


def events() -> list[dict]:
    rng = np.random.default_rng(7)
    ts = np.sort(rng.integers(0, 3_000_000, N)) + rng.integers(-40_000, 40_000, N)  # out of order
    ts = np.maximum(0, np.where(rng.random(N) < 0.03, ts - 300_000, ts))  # and 3% five minutes late: most too late
    return [{"id": i, "user": f"u{rng.integers(0, USERS)}", "page": f"p{rng.integers(0, 50)}",
             "amount": float(rng.integers(1, 100)), "ts": int(t)} for i, t in enumerate(ts)]


def uninterrupted(settings, name) -> tuple[dict[int, tuple], set[int]]:
    """The same step in process, over each partition's events in partition order."""
    by_part = defaultdict(list)
    for m in read_all(settings, f"{name}.events", 4):
        by_part[m.partition()].append((m.offset(), orjson.loads(m.value())))
    out, late = {}, set()
    for rows in by_part.values():
        rows = [r for _o, r in sorted(rows, key=lambda x: x[0])]
        step = SessionAggregate(**SESSION)
        b = step.process(Batch.from_rows(rows))
        out.update((int(i), (c, p, s)) for i, c, p, s in zip(b.column("id"), b.columns["clicks"], b.columns["pages"],
                                                              b.columns["spend"]))
        late |= {rows[r.offset]["id"] for r in b.rejected}
    return out, late


def kill_inside_a_step(worker, mark) -> None:
    """SIGKILL ``worker`` just after its step began a batch (it then sleeps 0.3 s)."""
    seen, deadline = mark.read_text(), time.monotonic() + 30
    while mark.read_text() == seen and time.monotonic() < deadline:
        time.sleep(0.005)
    worker.send_signal(signal.SIGKILL)


def test_kill_9_mid_stream_then_restart_gives_the_uninterrupted_sessions(settings, name, tmp_path, monkeypatch):
    spec = {"pipeline": name, "schema": {"id": "int", "user": "str", "page": "str", "amount": "float", "ts": "int"},
            "steps": [{"session": SESSION}, {"python": "integration.steps_for_tests:marked"}],
            "state": {"backend": "rocksdb", "path": str(tmp_path / "state")},
            "batch": {"max_batch": 200, "max_wait_ms": 20}, "exactly_once": True}  # 0.3 s a batch
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec))
    pipeline = from_dict(spec)
    ensure_topics(settings, pipeline.topic_specs())
    rows = events()
    produce(settings, f"{name}.events", [orjson.dumps(r) for r in rows], keys=[r["user"].encode() for r in rows])

    mark = tmp_path / "batches"
    monkeypatch.setenv("TIDAL_TEST_MARK", str(mark))
    worker = start(settings, path)
    wait_for(settings, [(f"{name}.predictions", 4)], 500, timeout=60)
    kill_inside_a_step(worker, mark)  # mid-stream: state changed in memory, not yet in the changelog
    worker.wait(10)
    restarted = start(settings, path, "--idle-exit", "3", "--stats-file", str(tmp_path / "stats.json"))
    assert restarted.wait(120) == 0
    resumed = json.loads((tmp_path / "stats.json").read_text())["events_in"]
    assert 0 < resumed < N  # it went on from the first worker's last commit: the state before came from the changelog
    assert [p.name.split("-")[1] for p in (tmp_path / "state").iterdir()] == ["session"]  # RocksDB scratch (kill -9
    # leaves the killed worker's behind; the restarted one removed its own at exit)

    want, late = uninterrupted(settings, name)
    got = defaultdict(list)
    for r in records(read_all(settings, f"{name}.predictions", 4, "read_committed")):
        got[r["id"]].append((r["clicks"], r["pages"], r["spend"]))
    assert 0 < len(late) < N // 4 and max(c for c, _p, _s in want.values()) > 10  # late events, long sessions
    assert sum(1 for c, _p, _s in want.values() if c > 1) > N // 2
    assert set(got) == set(want) and all(len(v) == 1 for v in got.values())  # exactly once: none lost, none twice
    assert {i: v[0] for i, v in got.items()} == want
    dlq = [orjson.loads(m.value())["id"] for m in read_all(settings, pipeline.dlq, 1, "read_committed")]
    assert sorted(dlq) == sorted(late)
