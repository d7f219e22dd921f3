"""`tidal learn`: a learner process on PIPELINE.joined publishes versions on schedule, on SIGUSR1, and stops cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import orjson
import pytest

from tidal.broker import TopicSpec, ensure_topics
from tidal.registry import Registry

from .kafka_helpers import produce, read_all, records

pytestmark = pytest.mark.integration


def _joined(rng, n, start):
    X = rng.normal(size=(n, 2))
    return [orjson.dumps({"event_id": f"e{start + i}", "a": a, "b": b, "label": bool(a > b)})
            for i, (a, b) in enumerate(X.tolist())]


def _wait(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_learn_command_publishes_on_schedule_and_on_signal(settings, name, tmp_path):
    rng = np.random.default_rng(0)
    ensure_topics(settings, [TopicSpec(f"{name}.joined", 1)])
    produce(settings, f"{name}.joined", _joined(rng, 1500, 0))
    reg_path = tmp_path / "registry"
    proc = subprocess.Popen([sys.executable, "-m", "tidal", "learn", name, "--features", "a,b", "--name", name,
                             "--publish-every", "1000", "--registry", str(reg_path), "--bootstrap", settings.bootstrap,
                             "--metrics-port", "0", "--log-level", "WARNING"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ})
    try:
        registry = Registry(reg_path)
        count = lambda: len(registry.versions(name)) if registry.list_models() else 0  # noqa: E731
        _wait(lambda: count() >= 1)  # the schedule is checked once per micro-batch
        proc.send_signal(signal.SIGUSR1)  # publish at the next batch, whatever the schedule says
        time.sleep(1.0)
        produce(settings, f"{name}.joined", _joined(rng, 200, 1500))
        _wait(lambda: count() >= 2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, proc.stdout.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    versions = registry.versions(name)
    assert [v.lineage["reason"] for v in versions] == ["every 1000 events", "on demand"]  # none at exit: no news
    assert versions[-1].lineage["ranges"] == {f"{name}.joined": {"0": [0, 1700]}}
    assert registry.aliases(name) == {"champion": 2}
    assert versions[-1].metrics["prequential_accuracy"] > 0.9
    report = records(read_all(settings, f"{name}.learning", 1))[-1]
    assert report["events"] == 1700 and report["version"] == 2
