"""``- anomaly: {field, key, time_field}`` on the embedded broker: per-key series scores that
continue exactly across kill -9 and restart, and alarms on tidal.alerts."""

from __future__ import annotations

import signal

import numpy as np
import orjson
import pytest
import yaml

from tidal.broker import ensure_topics
from tidal.broker.topics import ALERTS_TOPIC
from tidal.detect.step import SeriesAnomalyStep
from tidal.stream import from_dict
from tidal.stream.batch import Batch

from .kafka_helpers import produce, read_all, records, wait_for
from .test_delivery import start

pytestmark = pytest.mark.integration

HOSTS, POINTS, SPIKE = 12, 400, ("h3", 320)


def series() -> list[dict]:
    rng = np.random.default_rng(7)
    out = []
    for t in range(POINTS):
        for h in range(HOSTS):
            cpu = 40 + 10 * np.sin(2 * np.pi * t / 288 + h) + rng.normal(0, 1)
            if (f"h{h}", t) == SPIKE:
                cpu += 45
            out.append({"id": t * HOSTS + h, "host": f"h{h}", "ts": 1_760_000_000_000 + t * 300_000,
                        "cpu": round(float(cpu), 3)})
    return out


def test_series_scores_survive_kill_9_and_alarms_reach_alerts(settings, name, tmp_path):
    args = {"field": "cpu", "key": "host", "time_field": "ts", "change": True}
    spec = {"pipeline": name, "schema": {"id": "int", "host": "str", "ts": "int", "cpu": "float"},
            "steps": [{"anomaly": dict(args)}, {"python": "integration.steps_for_tests:slow"}],
            "batch": {"max_batch": 100, "max_wait_ms": 20}, "partitions": 2}
    path = tmp_path / "cpu.yaml"
    path.write_text(yaml.safe_dump(spec))
    ensure_topics(settings, from_dict(spec).topic_specs())
    events = series()
    produce(settings, f"{name}.events", [orjson.dumps(e) for e in events], [e["host"].encode() for e in events])

    worker = start(settings, path)
    wait_for(settings, [(f"{name}.predictions", 2)], 1500, timeout=90)
    worker.send_signal(signal.SIGKILL)  # mid-stream, state in the changelog, batches uncommitted
    worker.wait(10)
    restarted = start(settings, path, "--idle-exit", "4")
    assert restarted.wait(180) == 0

    # the truth: one step that never stopped, each host's events in order
    truth = SeriesAnomalyStep(**args)
    by_host = sorted(events, key=lambda e: (e["host"], e["id"]))
    ref = truth.process(Batch.from_rows(by_host))
    want = {e["id"]: (s, c) for e, s, c in zip(by_host, ref.columns["anomaly_score"].tolist(),
                                                ref.columns["change_start"].tolist())}
    out = records(read_all(settings, f"{name}.predictions", 2))
    assert {r["id"] for r in out} == set(want)  # nothing lost
    for r in out:  # every copy (at-least-once repeats the uncommitted batches) as if it had not stopped
        s, c = want[r["id"]]
        assert (r["anomaly_score"] == pytest.approx(s, abs=1e-12) if s == s else r["anomaly_score"] is None), r
        assert r["change_start"] == c, r
    spike = next(r for r in out if (r["host"], (r["ts"] - 1_760_000_000_000) // 300_000) == SPIKE)
    assert spike["anomaly"] and spike["anomaly_score"] >= 0.99

    alerts = [orjson.loads(m.value()) for m in read_all(settings, ALERTS_TOPIC, 1)]
    mine = [a for a in alerts if a["pipeline"] == name]
    assert any(a["type"] == "series_anomaly" and a["key"] == "h3" and a["value"] == spike["cpu"] for a in mine)
    assert {a["type"] for a in mine} <= {"series_anomaly", "change_point"}
