"""Worker metrics on /metrics equal counts made independently by the test."""

from __future__ import annotations

import threading
import urllib.request

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tidal.broker import ensure_topics
from tidal.broker.embedded import free_port
from tidal.models import ScoreStep, load_model
from tidal.monitor import serve_metrics
from tidal.quality import Schema
from tidal.stream import Pipeline, Worker

from .kafka_helpers import produce

pytestmark = pytest.mark.integration

SCHEMA = Schema.from_dict({"id": "int", "x": "float", "y": "float"})


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples, name, **labels) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def run(worker: Worker, stop_after: int) -> None:
    worker.on_batch = lambda w, _b: w.stop() if w.stats.events_in >= stop_after else None
    t = threading.Thread(target=worker.run, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive()


def test_counts_on_metrics_endpoint(settings, name, toy_model):
    p = Pipeline(name, schema=SCHEMA, steps=[ScoreStep(load_model(toy_model))], max_batch=200)
    ensure_topics(settings, p.topic_specs())
    good = [orjson.dumps({"id": i, "x": (i % 10) / 10, "y": 0.5}) for i in range(500)]
    bad = [b"{", b'{"id": 1}', b'{"id": "x", "x": 1, "y": 2}']
    produce(settings, p.sources[0], good + bad)
    worker = Worker(p, settings)
    port = serve_metrics(worker.registry, free_port(), "127.0.0.1")
    run(worker, 503)

    s = scrape(port)
    assert value(s, "tidal_events_in_total", pipeline=name) == 503
    assert value(s, "tidal_events_out_total", pipeline=name) == 500
    assert value(s, "tidal_dlq_total", pipeline=name, reason="invalid_json") == 1
    assert value(s, "tidal_dlq_total", pipeline=name, reason="missing_field") == 1
    assert value(s, "tidal_dlq_total", pipeline=name, reason="wrong_type") == 1
    positives = sum(1 for i in range(500) if (i % 10) / 10 + 0.5 > 1)
    true = value(s, "tidal_predictions_total", pipeline=name, model="toy", version="1", decision="true")
    false = value(s, "tidal_predictions_total", pipeline=name, model="toy", version="1", decision="false")
    assert true + false == 500 and abs(true - positives) <= 60  # a 20-tree model, not the rule itself
    assert value(s, "tidal_model_info", pipeline=name, model="toy", version="1") == 1
    assert value(s, "tidal_end_to_end_latency_seconds_count", pipeline=name) == 500
    assert value(s, "tidal_prediction_score_count", pipeline=name) == 500
    assert value(s, "tidal_step_duration_seconds_count", pipeline=name, step="score") == worker.stats.batches
    assert value(s, "tidal_batch_size_sum", pipeline=name) == 503
    assert value(s, "tidal_commits_total", pipeline=name) >= 1


def test_lag_after_a_known_backlog(settings, name):
    p = Pipeline(name, schema=SCHEMA, max_batch=100)
    ensure_topics(settings, p.topic_specs())
    produce(settings, p.sources[0], [orjson.dumps({"id": i, "x": 0.0, "y": 0.0}) for i in range(1000)])
    worker = Worker(p, settings, lag_interval_s=0.0)  # lag refreshed after every batch
    seen = {}

    def lags(metric: str, first: str) -> float:
        reg = worker.registry
        return sum(reg.get_sample_value(metric, {first: label, "topic": p.sources[0], "partition": str(q)}) or 0
                   for q in range(4) for label in [p.name if first == "pipeline" else p.group])

    def published() -> int:  # partitions with a lag sample (each appears once its first fetch answered)
        reg = worker.registry
        return sum(reg.get_sample_value("tidal_consumer_lag", {"pipeline": p.name, "topic": p.sources[0],
                                                               "partition": str(q)}) is not None for q in range(4))

    def on_batch(w: Worker, _batch) -> None:
        # The lag published after the previous batch, read during this one, against what was
        # processed by then; once every partition has a number.
        if "before" in seen and published() == 4 and "lag" not in seen:
            seen["processed"] = seen["before"]
            seen["lag"] = lags("tidal_consumer_lag", "pipeline")
            seen["kafka_lag"] = lags("kafka_consumergroup_group_lag", "group")
            w.stop()
        seen["before"] = w.stats.events_in

    worker.on_batch = on_batch
    t = threading.Thread(target=worker.run, daemon=True)
    t.start()
    t.join(60)
    assert 0 < seen["processed"] < 1000
    assert seen["lag"] == 1000 - seen["processed"]
    assert seen["kafka_lag"] == seen["lag"]


def test_alert_rule_fires_once_and_resolves_on_tidal_alerts(settings, name):
    import time

    from tidal.broker.topics import ALERTS_TOPIC
    from tidal.monitor import AlertRule

    from .kafka_helpers import read_all

    rule = AlertRule.from_dict({"name": f"dlq-{name}", "metric": "tidal_dlq_total", "rate": "> 0", "window_s": 2,
                                "severity": "critical"})
    p = Pipeline(name, schema=SCHEMA, alerts=[rule])
    ensure_topics(settings, p.topic_specs())
    worker = Worker(p, settings)
    t = threading.Thread(target=worker.run, daemon=True)
    t.start()
    produce(settings, p.sources[0], [b"{bad"] * 5 + [orjson.dumps({"id": i, "x": 0.0, "y": 0.0}) for i in range(50)])

    def mine():
        return [orjson.loads(m.value()) for m in read_all(settings, ALERTS_TOPIC, 1) if m.key() == rule.name.encode()]

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and [a["state"] for a in mine()] != ["firing", "resolved"]:
        time.sleep(0.5)
    worker.stop()
    t.join(20)
    alerts = mine()
    assert [a["state"] for a in alerts] == ["firing", "resolved"]  # once, then resolved, no repeats
    assert alerts[0]["pipeline"] == name and alerts[0]["severity"] == "critical" and alerts[0]["value"] > 0


def test_health_probes_live_while_the_loop_turns_ready_once_assigned(settings, name, tmp_path):
    """/health/live and /health/ready (the Kubernetes probes) on the metrics port of `tidal run`."""
    import json
    import signal
    import subprocess
    import time
    import urllib.error

    import yaml

    from .kafka_helpers import tidal_process

    port = free_port()
    spec = {"pipeline": name, "schema": {"id": "int"}, "partitions": 1}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(spec))
    proc = tidal_process(settings, "run", str(path), "--metrics-port", str(port), "--log-level", "WARNING",
                         stderr=subprocess.PIPE)

    def probe(which: str) -> tuple[int, dict]:
        try:
            r = urllib.request.urlopen(f"http://127.0.0.1:{port}/health/{which}", timeout=5)
            return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())
        except OSError:
            return 0, {}

    deadline = time.monotonic() + 60
    while probe("ready")[0] != 200 and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.2)
    code, state = probe("ready")
    assert code == 200 and state["live"] and state["ready"] and not state["restoring"]
    assert probe("live")[0] == 200
    produce(settings, f"{name}.events", [orjson.dumps({"id": i}) for i in range(10)])
    assert probe("live")[0] == 200 and "tidal_events_in_total" in urllib.request.urlopen(
        f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
