"""`tidal dashboard` with a pipeline running: the page Chromium renders shows what the worker counted.

A worker scores a stream (with a few malformed records and an alert rule on the DLQ), a
deployment is published on tidal.models, `tidal dashboard` runs as its own process, and
headless Debian Chromium opens the page. The assertions read the DOM the page's JavaScript
built, and a screenshot goes to the test's tmp_path (and tests/output/dashboard.png).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest

from tidal.broker import ensure_topics
from tidal.broker.embedded import free_port
from tidal.models import ScoreStep, load_model
from tidal.monitor import AlertRule, WorkerMetrics, serve_metrics
from tidal.monitor.dashboard import Dashboard, MetricsHistory
from tidal.quality import Schema
from tidal.registry.deployment import Deployment, Target
from tidal.registry.publish import KafkaPublisher
from tidal.stream import Pipeline, Worker

from .browser import CHROMIUM, Chromium
from .kafka_helpers import produce

needs_chromium = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                    reason=f"{CHROMIUM} missing: apt-get install -y chromium (make test installs it)")

SCHEMA = Schema.from_dict({"id": "int", "x": "float", "y": "float"})
OUTPUT = Path(__file__).resolve().parents[1] / "output"
BAD = [b"{not json", b'{"id": 1, "x": 0.5}', b'{"id": "seven", "x": 0.1, "y": 0.2}']  # one of each reason
ROUNDS, PER_ROUND = 8, 60


def get_json(url: str) -> dict:
    return orjson.loads(urllib.request.urlopen(url, timeout=5).read())


def wait_until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except OSError as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.2)
    raise AssertionError(f"{what} not seen within {timeout}s (last: {last!r})")


@pytest.mark.integration
@needs_chromium
def test_dashboard_page_shows_the_running_pipeline(settings, name, toy_model, tmp_path):
    rule = AlertRule.from_dict({"name": f"dlq-{name}", "metric": "tidal_dlq_total", "value": "> 0",
                                "severity": "critical"})
    p = Pipeline(name, schema=SCHEMA, steps=[ScoreStep(load_model(toy_model))], max_batch=200, alerts=[rule])
    ensure_topics(settings, p.topic_specs())
    worker = Worker(p, settings, lag_interval_s=0.2)
    metrics_port = serve_metrics(worker.registry, free_port(), "127.0.0.1")
    wt = threading.Thread(target=worker.run, daemon=True)
    wt.start()
    model = f"{name}-model"
    publisher = KafkaPublisher(settings)
    publisher(Deployment(model, "canary", Target("1", str(toy_model), "a" * 64), Target("2", str(toy_model), "b" * 64),
                         share=0.25, seq=1, reason="dashboard test canary"))
    publisher.close()

    port = free_port()
    log = open(tmp_path / "dashboard.log", "wb")
    dash = subprocess.Popen([sys.executable, "-m", "tidal", "dashboard", "--port", str(port),
                             "--metrics", f"127.0.0.1:{metrics_port}", "--bootstrap", settings.bootstrap,
                             "--interval", "0.5", "--kafka-interval", "1", "--log-level", "WARNING"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    good = total = 0
    try:
        wait_until(lambda: get_json(f"{url}/healthz")["scrapes"] > 0, 30, "the dashboard")
        for r in range(ROUNDS):  # a paced stream, so the charts have a shape
            values = [orjson.dumps({"id": good + i, "x": ((good + i) % 10) / 10, "y": 0.5}) for i in range(PER_ROUND)]
            good += len(values)
            if r % 3 == 0:
                values.append(BAD[r // 3])
            total += len(values)
            produce(settings, p.sources[0], values)
            time.sleep(0.4)

        missing: list[str] = []

        def api_ready():
            s = get_json(f"{url}/api/summary")
            k = s["kafka"]
            missing[:] = [what for what, ok in (
                (f"events in {s['totals']['in']} of {total}", s["totals"]["in"] == total),
                ("kafka reachable", k["reachable"]), ("the deployment", any(m["model"] == model for m in k["models"])),
                ("the alert", any(a["rule"] == rule.name for a in k["alerts"])),
                ("the group", any(g["group"] == p.group for g in k["groups"]))) if not ok]
            return not missing and s
        try:
            summary = wait_until(api_ready, 45, f"{total} events, the deployment and the alert in /api/summary")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; missing at the end: {missing}") from None
        assert summary["pipelines"] == [name]
        assert summary["dlq"] == {"invalid_json": 1, "missing_field": 1, "wrong_type": 1}
        assert summary["latency"]["total"]["p99"] is not None

        with Chromium(tmp_path / "chromium") as browser:
            browser.open(url + "/")
            text = "(id) => document.getElementById(id).textContent"
            browser.wait_for(f"({text})('kpi-events-in') === {json.dumps(f'{total:,}')}")
            browser.wait_for(f"({text})('alerts-table').includes({json.dumps(rule.name)})"
                             f" && ({text})('models-table').includes({json.dumps(model)})")
            browser.wait_for("document.querySelectorAll('.chart canvas').length >= 4")
            time.sleep(1.0)  # one more refresh, so the charts have their latest points
            page = browser.evaluate("""(() => {
                const t = id => document.getElementById(id).textContent;
                const rows = id => [...document.querySelectorAll('#' + id + ' tbody tr')]
                    .map(tr => [...tr.cells].map(td => td.textContent));
                return {pipelines: [...document.querySelectorAll('#pipelines .chip')].map(b => b.textContent),
                        kafka: t('kafka-status'), kafkaClass: document.getElementById('kafka-status').className,
                        workers: t('targets-status'), eventsIn: t('kpi-events-in'), eventsOut: t('kpi-events-out'),
                        dlq: t('kpi-dlq'), latency: t('kpi-latency'),
                        dlqRows: rows('dlq-table'), predictions: rows('predictions-table'),
                        models: rows('models-table'), alerts: rows('alerts-table'), groups: rows('groups-table'),
                        quality: t('chart-quality'),
                        canvases: Object.fromEntries([...document.querySelectorAll('.chart')]
                            .map(c => [c.id, c.querySelectorAll('canvas').length]))};
            })()""")
            shot = browser.screenshot(tmp_path / "dashboard.png")
            console = list(browser.console)
        OUTPUT.mkdir(exist_ok=True)
        shutil.copyfile(shot, OUTPUT / "dashboard.png")

        assert page["pipelines"] == [name]
        assert "pill-ok" in page["kafkaClass"] and settings.bootstrap in page["kafka"]
        assert page["workers"] == "workers 1/1 up"
        assert page["eventsIn"] == f"{total:,}" and page["eventsOut"] == f"{good:,}"
        assert page["dlq"] == "3"
        assert sorted((r[0], r[1]) for r in page["dlqRows"]) == [("invalid_json", "1"), ("missing_field", "1"),
                                                                 ("wrong_type", "1")]
        assert [r[0] for r in page["predictions"]] == ["toy v1"]
        assert page["predictions"][0][1] == f"{good:,}" and "latest batch" in page["predictions"][0][3]
        mine = [r for r in page["models"] if r[0] == model]
        assert mine and mine[0][1:4] == ["canary", "v1", "v2"] and mine[0][4] == "25.0 %"
        fired = [r for r in page["alerts"] if r[2] == rule.name]
        assert fired and fired[0][1] == "critical" and fired[0][3] == name
        assert any(r[0] == p.group for r in page["groups"])
        assert " ms" in page["latency"] or " s" in page["latency"]
        for chart in ("chart-throughput", "chart-latency", "chart-lag", "chart-dlq", "chart-predictions"):
            assert page["canvases"][chart] >= 1, chart
        assert page["canvases"]["chart-quality"] == 0 and "no labels yet" in page["quality"]
        assert not [c for c in console if c.startswith("exception")], console
        assert shot.stat().st_size > 20_000  # a rendered page, not a blank one

        dash.send_signal(signal.SIGTERM)
        assert dash.wait(15) == 0
    finally:
        if dash.poll() is None:
            dash.kill()
            dash.wait(5)
        log.close()
        worker.stop()
        wt.join(20)


# -- without a broker or a browser: the collector's arithmetic and the server's routes ---------------

class FakeWorkers:
    """Serves WorkerMetrics pages by URL; a URL set to None is down."""

    def __init__(self) -> None:
        self.pages: dict[str, WorkerMetrics | None] = {}

    def __call__(self, url: str, _timeout: float) -> str:
        from prometheus_client import generate_latest

        m = self.pages.get(url)
        if m is None:
            raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))
        return generate_latest(m.registry).decode()


def test_rates_resets_and_down_workers():
    import numpy as np

    fake = FakeWorkers()
    a, b = "http://a/metrics", "http://b/metrics"
    fake.pages = {a: WorkerMetrics("fraud", "tidal.fraud"), b: WorkerMetrics("fraud", "tidal.fraud")}
    h = MetricsHistory([a, b], history_s=60, rate_window_s=2, fetcher=fake)
    for t in range(5):  # 100 events/s on a, 50 on b; 2 DLQ records per second on a
        fake.pages[a].events_in.inc(100)
        fake.pages[b].events_in.inc(50)
        fake.pages[a].dlq.labels("fraud", "invalid_json").inc(2)
        fake.pages[a].e2e_latency.observe_many(np.full(100, 0.02))
        fake.pages[a].set_lag("fraud.events", 0, 7, 0.5)
        h.scrape(now=1000.0 + t)
    s = h.summary()
    assert s["pipelines"] == ["fraud"] and s["totals"]["in"] == 750
    assert s["rates"]["in"] == pytest.approx(150) and s["series"]["in"][-1] == pytest.approx(150)
    assert s["series"]["in"][0] is None  # one point is no rate
    assert s["dlq"] == {"invalid_json": 10} and s["series"]["dlq"]["invalid_json"] == [2, 4, 6, 8, 10]
    assert s["lag"]["partitions"] == {"events[0]": 7}
    assert 0.01 < s["latency"]["recent"]["p50"] <= 0.025 and s["latency"]["total"]["p99"] <= 0.025

    fake.pages[a] = WorkerMetrics("fraud", "tidal.fraud")  # a restarts: its counters begin again
    fake.pages[a].events_in.inc(30)
    fake.pages[b] = None  # b stops answering
    h.scrape(now=1005.0)
    s = h.summary()
    assert s["totals"]["in"] == 500 + 30 + 250  # a's 500 before the restart are kept, and b's last 250
    assert s["rates"]["in"] == pytest.approx((150 + 30) / 2)  # 1003 -> 1005: the restart is no drop
    assert s["lag"]["partitions"] == {}  # the new a has no lag gauge, b's gauges went with it
    up = {t["url"]: t["up"] for t in s["targets"]}
    assert up == {a: True, b: False} and "refused" in s["targets"][1]["error"]
    assert h.summary(pipeline="other")["totals"]["in"] == 0


def test_server_routes_without_kafka():
    fake = FakeWorkers()
    url = "http://w/metrics"
    fake.pages[url] = WorkerMetrics("p1", "tidal.p1")
    fake.pages[url].events_in.inc(5)
    d = Dashboard([url], None, port=0, interval=0.2)
    d.history.fetcher = fake
    with d.start():
        wait_until(lambda: get_json(f"{d.url}/healthz")["scrapes"] >= 2, 10, "two scrapes")
        page = urllib.request.urlopen(d.url + "/", timeout=5).read().decode()
        assert "static/app.js" in page and "uPlot.iife.min.js" in page and "https://" not in page
        for path in ("/static/app.js", "/static/style.css", "/static/vendor/uplot/uPlot.iife.min.js",
                     "/static/vendor/uplot/uPlot.min.css", "/static/vendor/uplot/LICENSE"):
            assert urllib.request.urlopen(d.url + path, timeout=5).status == 200, path
        s = get_json(f"{d.url}/api/summary?pipeline=p1&window=60")
        assert s["selected"] == "p1" and s["totals"]["in"] == 5
        assert s["kafka"]["configured"] is False and s["kafka"]["reachable"] is None
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{d.url}/api/summary?window=soon", timeout=5)
        assert err.value.code == 400
        own = urllib.request.urlopen(d.url + "/metrics", timeout=5).read().decode()
        assert f'tidal_dashboard_target_up{{target="{url}"}} 1.0' in own


@needs_chromium
def test_page_switches_between_pipelines_and_shows_a_down_worker(tmp_path):
    fake = FakeWorkers()
    urls = ["http://a/metrics", "http://b/metrics", "http://gone/metrics"]
    for url, pipeline, n in (("http://a/metrics", "orders", 1200), ("http://b/metrics", "clicks", 34)):
        fake.pages[url] = WorkerMetrics(pipeline, f"tidal.{pipeline}")
        fake.pages[url].events_in.inc(n)
    from prometheus_client import Gauge  # a quality metric as the labels join will publish it

    accuracy = Gauge("tidal_model_quality_accuracy", "Rolling accuracy.", ["pipeline", "model", "version", "window"],
                     registry=fake.pages["http://a/metrics"].registry)
    accuracy.labels("orders", "churn", "3", "1000").set(0.91)
    d = Dashboard(urls, None, port=0, interval=0.2)
    d.history.fetcher = fake
    with d.start(), Chromium(tmp_path / "chromium", width=1200, height=800) as browser:
        browser.open(d.url + "/")
        chips = "[...document.querySelectorAll('#pipelines .chip')].map(b => b.textContent).join('|')"
        assert browser.wait_for(f"{chips} === 'all pipelines|clicks|orders' && {chips}")
        events = "document.getElementById('kpi-events-in').textContent"
        browser.wait_for(f"{events} === '1,234'")
        browser.wait_for("document.querySelectorAll('#chart-quality canvas').length > 0")
        assert browser.evaluate("document.querySelector('#chart-quality .u-legend').textContent") == \
            "churn v3 accuracy window=1000"
        browser.evaluate("document.querySelector('#pipelines .chip[data-pipeline=\"clicks\"]').click()")
        browser.wait_for(f"{events} === '34' && location.hash === '#pipeline=clicks'")
        assert browser.evaluate("document.querySelector('#pipelines .chip.active').textContent") == "clicks"
        assert browser.evaluate("document.getElementById('targets-status').textContent") == "workers 2/3 up"
        down = browser.evaluate("[...document.querySelectorAll('#targets-table tbody tr')]"
                                ".filter(tr => tr.cells[0].textContent.includes('gone'))[0].cells[1].textContent")
        assert down.startswith("down:") and "refused" in down
        assert browser.evaluate("document.getElementById('kafka-status').textContent") == "Kafka: not configured"
        browser.screenshot(tmp_path / "pipelines.png")
