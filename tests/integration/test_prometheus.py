"""A real Prometheus server (Debian's `prometheus`) scrapes a worker; its query API returns what the test produced.

The same server also checks what ships in deploy/: every PromQL expression of the Grafana
dashboard is accepted and the main panels return data, and `promtool` accepts the scrape config.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import orjson
import pytest

from tidal.broker import ensure_topics
from tidal.broker.embedded import free_port
from tidal.models import ScoreStep, load_model
from tidal.monitor import serve_metrics
from tidal.monitor.dashboard.collector import histogram_quantile, parse_samples
from tidal.quality import Schema
from tidal.stream import Pipeline, Worker

from .kafka_helpers import produce

PROMETHEUS = "/usr/bin/prometheus"
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not os.path.exists(PROMETHEUS),
                                 reason=f"{PROMETHEUS} missing: apt-get install -y prometheus (make test installs it)")]

SCHEMA = Schema.from_dict({"id": "int", "x": "float", "y": "float"})
BAD = [b"{not json", b'{"id": 1, "x": 0.5}', b'{"id": "seven", "x": 0.1, "y": 0.2}', b"plain text"]


def good(start: int, n: int) -> list[bytes]:
    return [orjson.dumps({"id": i, "x": (i % 10) / 10, "y": 0.5}) for i in range(start, start + n)]


class PromServer:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, expr: str) -> list[dict]:
        qs = urllib.parse.urlencode({"query": expr})
        reply = orjson.loads(urllib.request.urlopen(f"{self.url}/api/v1/query?{qs}", timeout=5).read())
        assert reply["status"] == "success", (expr, reply)
        return reply["data"]["result"]

    def values(self, expr: str) -> dict[tuple, float]:
        """{(sorted labels without __name__): value} of an instant query."""
        return {tuple(sorted((k, v) for k, v in r["metric"].items() if k != "__name__")): float(r["value"][1])
                for r in self.query(expr)}

    def wait(self, expr: str, check, timeout: float = 30.0) -> dict[tuple, float]:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.values(expr)
            except OSError as exc:  # not listening yet
                last = exc
            else:
                if check(last):
                    return last
            time.sleep(0.25)
        raise AssertionError(f"Prometheus never answered {expr!r} as expected within {timeout}s; last: {last!r}")


def total(values: dict) -> float:
    return sum(values.values())


def test_prometheus_scrapes_a_worker_and_runs_the_grafana_queries(settings, name, toy_model, tmp_path):
    p = Pipeline(name, schema=SCHEMA, steps=[ScoreStep(load_model(toy_model))], max_batch=100)
    ensure_topics(settings, p.topic_specs())
    worker = Worker(p, settings, lag_interval_s=0.2)
    port = serve_metrics(worker.registry, free_port(), "127.0.0.1")
    wt = threading.Thread(target=worker.run, daemon=True)
    wt.start()
    produce(settings, p.sources[0], good(0, 300) + BAD)

    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "tidal-workers", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}]}))
    prom_port = free_port()
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
                             f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    prom = PromServer(f"http://127.0.0.1:{prom_port}")
    sel = f'pipeline="{name}"'
    try:
        prom.wait(f'up{{job="tidal-workers"}}', lambda v: total(v) == 1)
        prom.wait(f"tidal_events_in_total{{{sel}}}", lambda v: total(v) == 304)
        produce(settings, p.sources[0], good(300, 200))  # a second burst, so rates over the last seconds are > 0
        events_in = prom.wait(f"tidal_events_in_total{{{sel}}}", lambda v: total(v) == 504)

        (labels,) = events_in
        assert dict(labels) == {"pipeline": name, "job": "tidal-workers", "instance": f"127.0.0.1:{port}"}
        assert total(prom.values(f"tidal_events_out_total{{{sel}}}")) == 500
        dlq = {dict(k)["reason"]: v for k, v in prom.values(f"tidal_dlq_total{{{sel}}}").items()}
        assert dlq == {"invalid_json": 2, "missing_field": 1, "wrong_type": 1}
        assert total(prom.values(f"sum(tidal_predictions_total{{{sel}}})")) == 500
        assert prom.values(f"tidal_model_info{{{sel}}}") != {}
        lag = prom.values(f'kafka_consumergroup_group_lag{{group="{p.group}"}}')
        assert {dict(k)["partition"] for k in lag} == {"0", "1", "2", "3"}
        assert {dict(k)["topic"] for k in lag} == {p.sources[0]}
        assert total(prom.values(f"tidal_end_to_end_latency_seconds_count{{{sel}}}")) == 500

        # the dashboard's own percentile (same buckets, same interpolation) equals PromQL's
        prom_p99 = prom.values(f"histogram_quantile(0.99, tidal_end_to_end_latency_seconds_bucket{{{sel}}})")
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        buckets = {float(dict(labels)["le"]): v for (n, labels), v, _m in parse_samples(text)
                   if n == "tidal_end_to_end_latency_seconds_bucket"}
        assert math.isclose(total(prom_p99), histogram_quantile(0.99, buckets), rel_tol=1e-9)

        # every expression of deploy/grafana-dashboard.json is valid PromQL; the main panels have data
        dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
        results = {}
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                expr = (target["expr"].replace("$__rate_interval", "15s").replace("$pipeline", name)
                        .replace("$group", p.group.replace(".", "\\\\.")))
                results[(panel["title"], target["refId"])] = prom.query(expr)
        for title in ("Events in", "Throughput", "End-to-end latency", "Consumer lag per partition",
                      "Dead-letter by reason", "Predictions by model version", "Models in use", "Workers up"):
            assert results[(title, "A")], f"Grafana panel {title!r} has no data"
        p99 = float(results[("Latency p99", "A")][0]["value"][1])
        assert math.isfinite(p99) and 0 < p99 < 60
        assert {r["metric"]["reason"] for r in results[("Dead-letter by reason", "A")]} == set(dlq)
        assert [r["metric"]["version"] for r in results[("Predictions by model version", "A")]] == ["1"]
        assert results[("Model quality", "A")] == []  # no tidal_model_quality_* metric yet: an empty panel
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
        worker.stop()
        wt.join(20)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian prometheus) missing")
def test_shipped_scrape_config_is_valid():
    out = subprocess.run(["promtool", "check", "config", str(DEPLOY / "prometheus.yml")], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    text = (DEPLOY / "prometheus.yml").read_text()
    assert all(f"127.0.0.1:{9400 + i}" in text for i in range(4))
