"""Delivery guarantees with real worker processes: crash, exactly-once, shutdown, scale-out."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
import yaml
from confluent_kafka import Consumer, TopicPartition

from tidal.broker import ensure_topics
from tidal.stream import from_dict

from .kafka_helpers import produce, read_all, records, tidal_process, wait_for

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent


def write_spec(tmp_path: Path, name: str, step: str = "slow", **extra) -> Path:
    spec = {"pipeline": name, "schema": {"id": "int"},
            "steps": [{"python": f"integration.steps_for_tests:{step}"}], "batch": {"max_batch": 100, "max_wait_ms": 20},
            **extra}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def start(settings, spec: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    level = os.environ.get("TIDAL_TEST_LOG_LEVEL", "WARNING")
    return tidal_process(settings, "run", str(spec), "--log-level", level, *args,
                         env={"PYTHONPATH": str(HERE.parent), **(env or {})})


def setup(settings, tmp_path, name, n, **extra) -> Path:
    spec = write_spec(tmp_path, name, **extra)
    ensure_topics(settings, from_dict(yaml.safe_load(spec.read_text())).topic_specs())
    produce(settings, f"{name}.events", [orjson.dumps({"id": i}) for i in range(n)])
    return spec


def ids(settings, topic: str, isolation: str = "read_uncommitted") -> Counter:
    return Counter(r["id"] for r in records(read_all(settings, topic, 4, isolation)))


def test_kill_9_then_restart_loses_nothing(settings, name, tmp_path):
    n = 3000
    spec = setup(settings, tmp_path, name, n, step="marked")  # 0.3 s a batch of 100, each counted in a file
    mark = tmp_path / "batches"
    env = {"TIDAL_TEST_MARK": str(mark)}
    worker = start(settings, spec, env=env)
    deadline = time.monotonic() + 60
    while not (mark.exists() and int(mark.read_text() or 0) >= 8):  # 7 batches done, ~23 to go
        assert time.monotonic() < deadline and worker.poll() is None, "the worker did not get going"
        time.sleep(0.05)
    worker.send_signal(signal.SIGKILL)  # mid-stream, without any chance to commit
    worker.wait(10)
    partial = ids(settings, f"{name}.predictions")
    assert 0 < sum(partial.values()) < n, "the kill should land mid-stream"

    restarted = start(settings, spec, "--idle-exit", "3", env=env)
    assert restarted.wait(120) == 0
    seen = ids(settings, f"{name}.predictions")
    assert set(seen) == set(range(n))  # every event has a prediction
    # at-least-once: only the batches in flight at the kill may repeat
    assert sum(seen.values()) - n <= 4 * 100 * 2


def test_exactly_once_no_duplicate_no_gap(settings, name, tmp_path):
    n = 2000
    spec = setup(settings, tmp_path, name, n, exactly_once=True)
    worker = start(settings, spec, "--idle-exit", "3")
    assert worker.wait(120) == 0
    seen = ids(settings, f"{name}.predictions", "read_committed")
    assert seen == Counter(range(n))  # each id exactly once

    # The group's committed offsets (written inside the transactions) cover the whole input.
    c = Consumer(settings.client_config({"group.id": f"tidal.{name}", "log_level": 3}))
    committed = c.committed([TopicPartition(f"{name}.events", p) for p in range(4)], timeout=10)
    c.close()
    assert sum(tp.offset for tp in committed) == n


def test_sigterm_drains_commits_and_exits_zero(settings, name, tmp_path):
    n = 3000
    spec = setup(settings, tmp_path, name, n)
    worker = start(settings, spec)
    wait_for(settings, [(f"{name}.predictions", 4)], 300, timeout=60)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    first = ids(settings, f"{name}.predictions")
    c = Consumer(settings.client_config({"group.id": f"tidal.{name}", "log_level": 3}))
    committed = c.committed([TopicPartition(f"{name}.events", p) for p in range(4)], timeout=10)
    c.close()
    # everything committed was delivered, and everything delivered was committed
    assert sum(max(tp.offset, 0) for tp in committed) == sum(first.values())

    worker = start(settings, spec, "--idle-exit", "3")
    assert worker.wait(120) == 0
    assert ids(settings, f"{name}.predictions") == Counter(range(n))  # resumed: no repeat, no gap


def test_two_workers_split_partitions_and_score_everything_once(settings, name, tmp_path):
    n = 4000
    spec = setup(settings, tmp_path, name, n)
    stats = tmp_path / "stats.json"
    runner = start(settings, spec, "--workers", "2", "--idle-exit", "4", "--stats-file", str(stats))
    assert runner.wait(180) == 0
    per_worker = [json.loads((tmp_path / f"stats-{i}.json").read_text()) for i in range(2)]
    assert all(w["events_in"] > 0 for w in per_worker), per_worker  # both took partitions
    assert sum(w["events_in"] for w in per_worker) == n
    assert ids(settings, f"{name}.predictions") == Counter(range(n))

