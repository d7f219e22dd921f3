"""`tidal trace`: an event's path, from output back to its source message; a rejected event's reason."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import orjson
import pytest

from tidal.broker import ensure_topics
from tidal.models import ScoreStep, load_model
from tidal.models.explain import ExplainStep
from tidal.quality import Schema
from tidal.stream import Pipeline, Worker

from .kafka_helpers import produce

pytestmark = pytest.mark.integration


def tidal_trace(settings, pipeline: str, event_id: str) -> tuple[int, dict]:
    r = subprocess.run([sys.executable, "-m", "tidal", "trace", event_id, "--pipeline", pipeline, "--json",
                        "--bootstrap", settings.bootstrap], capture_output=True, text=True, timeout=60)
    return r.returncode, json.loads(r.stdout)


def test_trace_shows_the_whole_path(settings, name, toy_model):
    score = ScoreStep(load_model(toy_model))
    p = Pipeline(name, schema=Schema.from_dict({"event_id": "str", "x": "float", "y": "float"}),
                 steps=[score, ExplainStep(score, sample=1.0, k=2)])
    ensure_topics(settings, p.topic_specs())
    values = [orjson.dumps({"event_id": f"e{i}", "x": i / 100, "y": 0.5}) for i in range(100)]
    values.append(b'{"event_id": "bad-1", "x": "oops", "y": 1}')
    produce(settings, p.sources[0], values)
    worker = Worker(p, settings)
    worker.on_batch = lambda w, _b: w.stop() if w.stats.events_in >= 101 else None
    t = threading.Thread(target=worker.run, daemon=True)
    t.start()
    t.join(60)

    code, path = tidal_trace(settings, name, "e42")
    assert code == 0 and path["found"] and path["duplicates"] == 0
    assert path["input"]["record"] == {"event_id": "e42", "x": 0.42, "y": 0.5}
    topic, partition, offset = path["input"]["position"]
    out = path["outputs"][0]["record"]
    assert (topic, partition, offset) == (out["source_topic"], out["source_partition"], out["source_offset"])
    assert path["model"] == {"name": "toy", "version": "1"}
    assert set(path["added"]) >= {"score", "decision", "explanation", "source_offset"}
    assert set(path["explanation"]) <= {"x", "y"} and len(path["explanation"]) == 2

    code, rejected = tidal_trace(settings, name, "bad-1")
    assert code == 0 and rejected["outputs"] == []
    assert rejected["dead_letters"][0]["reason"] == "wrong_type"
    assert rejected["input"]["position"][0] == p.sources[0]

    code, missing = tidal_trace(settings, name, "nope")
    assert code == 1 and not missing["found"]


def test_trace_a_fraud_demo_event(settings, tmp_path):
    import os

    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TIDAL_")}, "TIDAL_HOME": str(tmp_path)}
    demo = subprocess.run([sys.executable, "-m", "tidal", "demo", "fraud", "--events", "20000", "--json",
                           "--bootstrap", settings.bootstrap], env=env, capture_output=True, text=True, timeout=180)
    assert demo.returncode == 0, demo.stderr[-2000:]
    summary = json.loads(demo.stdout.strip().splitlines()[-1])
    pipeline = summary["pipeline"]
    event = f"tx-{summary['history_events'] + 5}"  # scored live, after the training history
    code, path = tidal_trace(settings, pipeline, event)
    assert code == 0 and path["found"]
    assert path["input"]["record"]["event_id"] == event and "amount" in path["input"]["record"]
    assert path["model"] == {"name": "fraud", "version": "1"}
    assert {"score", "decision", "source_offset"} <= set(path["added"])
