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
        assert browser.wait_for(f"{chips} === 'clicks|orders|all pipelines (sum)' && {chips}")
        events = "document.getElementById('kpi-events-in').textContent"
        active = "document.querySelector('#pipelines .chip.active').textContent"
        browser.wait_for(f"{events} === '34' && {active} === 'clicks'")  # by default one pipeline: the first
        browser.evaluate("document.querySelector('#pipelines .chip[data-pipeline=\"orders\"]').click()")
        browser.wait_for(f"{events} === '1,200' && location.search === '?pipeline=orders'")
        browser.wait_for("document.querySelectorAll('#chart-quality canvas').length > 0")
        assert browser.evaluate("document.querySelector('#chart-quality .u-legend').textContent") == "v3 accuracy"
        browser.evaluate("document.querySelector('#pipelines .chip[data-pipeline=\"*\"]').click()")
        browser.wait_for(f"{events} === '1,234' && {active} === 'all pipelines (sum)'")  # an explicit sum
        browser.evaluate("document.querySelector('#pipelines .chip[data-pipeline=\"clicks\"]').click()")
        browser.wait_for(f"{events} === '34' && location.search === '?pipeline=clicks'")
        assert browser.evaluate(active) == "clicks"
        assert browser.evaluate("document.getElementById('targets-status').textContent") == "workers 2/3 up"
        down = browser.evaluate("[...document.querySelectorAll('#targets-table tbody tr')]"
                                ".filter(tr => tr.cells[0].textContent.includes('gone'))[0].cells[1].textContent")
        assert down.startswith("down:") and "refused" in down
        assert browser.evaluate("document.getElementById('kafka-status').textContent") == "Kafka: not configured"
        browser.screenshot(tmp_path / "pipelines.png")


def test_monitor_workers_apart_quality_axes_and_scores():
    """A `tidal monitor` worker's counts stay out of its pipeline's; quality splits [0, 1] from log-loss."""
    import numpy as np
    from prometheus_client import Counter, Gauge

    from tidal.models.metrics import ScoreMetrics

    fake = FakeWorkers()
    scoring, monitor = "http://scoring/metrics", "http://monitor/metrics"
    fake.pages[scoring] = WorkerMetrics("fraud", "tidal.fraud")
    fake.pages[monitor] = WorkerMetrics("fraud.monitor", "tidal.fraud.monitor")
    sm = ScoreMetrics.of(fake.pages[scoring].registry, "fraud")
    quality = Gauge("tidal_model_quality", "q", ["pipeline", "model", "version", "metric", "window"],
                    registry=fake.pages[monitor].registry)
    Counter("tidal_labels_unmatched", "u", ["pipeline", "kind"], registry=fake.pages[monitor].registry)
    h = MetricsHistory([scoring, monitor], history_s=60, rate_window_s=2, fetcher=fake)
    for t in range(4):
        fake.pages[scoring].events_in.inc(40)
        fake.pages[monitor].events_in.inc(74)  # 40 predictions and 34 labels read
        fake.pages[monitor].events_out.inc(34)
        sm.scores.observe_many(np.array([0.05] * 30 + [0.95] * 10))
        sm.observe_models(np.array(["m"] * 40), np.array(["3"] * 40), np.array([False] * 30 + [True] * 10))
        for metric, v in (("accuracy", 0.9), ("roc_auc", 0.8), ("log_loss", 2.5)):
            for window in ("events", "time"):
                quality.labels("fraud", "m", "3", metric, window).set(v)
        h.scrape(now=2000.0 + t)
    s = h.summary("fraud")
    assert s["pipelines"] == ["fraud"]  # no "fraud.monitor" pipeline
    assert s["totals"]["in"] == 160 and s["rates"]["in"] == pytest.approx(40)  # the scoring worker only
    assert s["monitor"] | {"groups": None} == {"in": 296, "out": 136, "dlq": 0, "unmatched": 0, "batches": 0,
                                               "workers": 1, "groups": None}
    assert {t["url"]: t["kind"] for t in s["targets"]} == {scoring: "scoring", monitor: "monitor"}
    assert s["quality"] == {"v3 accuracy": 0.9, "v3 auc": 0.8} and s["loss"] == {"v3 log-loss": 2.5}
    assert set(s["series"]["quality"]) == {"v3 accuracy", "v3 auc"} and set(s["series"]["loss"]) == {"v3 log-loss"}
    assert s["decisions"]["rate"] == pytest.approx(0.25) and s["decisions"]["decided"] == 160
    assert s["series"]["decision_rate"][-1] == pytest.approx(0.25)
    bars = s["scores"]["bars"]
    assert sum(b["count"] for b in bars) == 160 and bars[0] == {"lo": None, "hi": 0.1, "count": 120}
    assert bars[-1] == {"lo": 0.9, "hi": 1.0, "count": 40}
    assert h.summary(None)["totals"]["in"] == 160  # "all" sums like kinds: scoring workers


@pytest.mark.integration
@needs_chromium
def test_per_pipeline_view_shows_what_was_produced_for_it(settings, name, toy_model, tmp_path):
    """Two pipelines and a monitor worker for one: `?pipeline=A` shows A's counts, not A+B nor the monitor's."""
    from tidal.broker.topics import ALERTS_TOPIC, topic_spec
    from tidal.monitor.model_quality import monitor_pipeline
    from tidal.stream.context import alert_event

    a, b = f"{name}z", f"{name}a"  # b sorts first: the page's default, so ?pipeline= must select a
    schema = Schema.from_dict({"event_id": "str", "x": "float", "y": "float"})
    pipelines = {p: Pipeline(p, schema=schema, steps=[ScoreStep(load_model(toy_model))], max_batch=200)
                 for p in (a, b)}
    mon = monitor_pipeline(a, window=1000, horizon_s=3600)
    for p in (*pipelines.values(), mon):
        ensure_topics(settings, p.topic_specs())
    ensure_topics(settings, [topic_spec(ALERTS_TOPIC)])
    workers = [Worker(p, settings, lag_interval_s=0.2) for p in (*pipelines.values(), mon)]
    ports = [serve_metrics(w.registry, free_port(), "127.0.0.1") for w in workers]
    threads = [threading.Thread(target=w.run, daemon=True) for w in workers]
    for t in threads:
        t.start()
    # a: 30 clear positives (x + y = 1.8), 60 clear negatives (0.2), 2 malformed; b: 37 events, 1 malformed
    n_pos, n_neg, n_labels = 30, 60, 50
    rows = [{"event_id": f"a{i}", "x": 0.9 if i < n_pos else 0.1, "y": 0.9 if i < n_pos else 0.1}
            for i in range(n_pos + n_neg)]
    produce(settings, f"{a}.events", [orjson.dumps(r) for r in rows] + BAD[:2])
    produce(settings, f"{b}.events", [orjson.dumps({"event_id": f"b{i}", "x": 0.5, "y": 0.7}) for i in range(37)]
            + BAD[:1])
    produce(settings, f"{a}.labels", [orjson.dumps({"event_id": f"a{i}", "label": int(i < n_pos)})
                                      for i in range(n_labels)])
    long_reason = "ValueError: X has 3 features, but LGBMClassifier is expecting 2 features as input. " * 8
    assert len(long_reason) > 600
    model = f"{a}-model"
    publisher = KafkaPublisher(settings)
    publisher(Deployment(model, "single", Target("1", str(toy_model), "a" * 64), seq=1, reason=long_reason))
    publisher.close()
    now = time.time()
    produce(settings, ALERTS_TOPIC, [orjson.dumps(e) for e in (
        alert_event("model_rollback", f"model_rollback:{a}:old", "firing", "rolled back long ago", pipeline=a,
                    severity="critical", time_s=now - 600, ttl_s=60),  # a one-shot alert past its ttl
        alert_event("model_rollback", f"model_rollback:{a}:{model}", "firing", long_reason, pipeline=a,
                    severity="critical", model=model, time_s=now, ttl_s=3600),
        alert_event("model_rollback", f"model_rollback:{b}:x", "firing", "b's own", pipeline=b, time_s=now,
                    ttl_s=3600))], keys=[b"1", b"2", b"3"])

    d = Dashboard([f"http://127.0.0.1:{port}/metrics" for port in ports], settings, port=0, interval=0.3,
                  kafka_interval=0.5)
    n_a, n_b = n_pos + n_neg + 2, 38
    try:
        with d.start():
            url = d.url
            last: dict = {}

            def api_ready():
                s = last["a"] = get_json(f"{url}/api/summary?pipeline={a}")
                sb = get_json(f"{url}/api/summary?pipeline={b}")
                return (s["totals"]["in"] == n_a and sb["totals"]["in"] == n_b
                        and s["monitor"]["out"] == n_labels and s["monitor"]["in"] == n_pos + n_neg + n_labels
                        and "v1 accuracy" in s["quality"] and s["kafka"]["reachable"]
                        and any(m["model"] == model for m in s["kafka"]["models"])
                        and any(al["rule"] == f"model_rollback:{a}:{model}" for al in s["kafka"]["alerts"]))
            try:
                wait_until(api_ready, 60, "both pipelines' events, the monitor's joins, the deployment and the alert")
            except AssertionError as exc:
                s = last.get("a") or {}
                raise AssertionError(f"{exc}; A: totals {s.get('totals')}, monitor {s.get('monitor')}, "
                                     f"quality {s.get('quality')}") from None
            assert get_json(f"{url}/api/summary")["selected"] == b  # no pipeline asked: the first one seen
            s = get_json(f"{url}/api/summary?pipeline={a}")
            assert s["pipelines"] == sorted([a, b]) and s["totals"]["dlq"] == 2 and s["totals"]["out"] == n_pos + n_neg
            assert [al["rule"] for al in s["kafka"]["alerts"]] == [f"model_rollback:{a}:{model}"]

            with Chromium(tmp_path / "chromium") as browser:
                browser.open(f"{url}/?pipeline={a}")
                text = "(id) => document.getElementById(id).textContent"
                browser.wait_for(f"({text})('kpi-events-in') === {json.dumps(f'{n_a:,}')}"
                                 f" && ({text})('models-table').includes({json.dumps(model)})"
                                 f" && ({text})('alerts-table').includes({json.dumps(model)})"
                                 " && document.querySelectorAll('#chart-quality canvas').length > 0"
                                 " && document.querySelectorAll('#chart-scores .bar').length > 0", timeout=30)
                page = browser.evaluate(f"""(() => {{
                    const t = id => document.getElementById(id).textContent;
                    const rows = id => [...document.querySelectorAll('#' + id + ' tbody tr')]
                        .map(tr => [...tr.cells].map(td => td.textContent));
                    const model = [...document.querySelectorAll('#models-table tbody tr')]
                        .find(tr => tr.cells[0].textContent === {json.dumps(model)});
                    const alert = [...document.querySelectorAll('#alerts-table tbody tr')]
                        .find(tr => tr.cells[2].textContent.endsWith({json.dumps(model)}));
                    const cut = cell => ({{text: cell.textContent, title: cell.querySelector('[title]')?.title}});
                    return {{active: document.querySelector('#pipelines .chip.active').textContent,
                             selected: document.body.dataset.selected,
                             eventsIn: t('kpi-events-in'), eventsOut: t('kpi-events-out'), dlq: t('kpi-dlq'),
                             decisions: t('kpi-decisions'), decisionsSub: t('kpi-decisions-sub'),
                             predictions: rows('predictions-table'), dlqRows: rows('dlq-table'),
                             alerts: rows('alerts-table'), monitor: t('monitor-info'),
                             workers: rows('targets-table'),
                             bars: [...document.querySelectorAll('#chart-scores .bar')]
                                 .map(b => [b.dataset.hi, Number(b.dataset.count)]),
                             quality: document.querySelector('#chart-quality .u-legend').textContent,
                             loss: document.querySelector('#chart-loss .u-legend')?.textContent,
                             reason: cut(model.cells[6]), message: cut(alert.cells[4])}};
                }})()""")
                browser.screenshot(tmp_path / "pipeline-a.png")
                console = list(browser.console)

        assert page["active"] == a and page["selected"] == a
        assert page["eventsIn"] == f"{n_a:,}" and page["eventsOut"] == f"{n_pos + n_neg:,}" and page["dlq"] == "2"
        assert sorted((r[0], r[1]) for r in page["dlqRows"]) == [("invalid_json", "1"), ("missing_field", "1")]
        assert [(r[0], r[1]) for r in page["predictions"]] == [("toy v1", f"{n_pos + n_neg}")]
        assert page["decisions"] == "33.3 %" and page["decisionsSub"].startswith(f"{n_pos} of {n_pos + n_neg} positive")
        assert sum(c for _hi, c in page["bars"]) == n_pos + n_neg
        assert dict(page["bars"])["0.1"] == n_neg and dict(page["bars"])["1"] == n_pos
        assert "v1 accuracy" in page["quality"] and "log-loss" not in page["quality"]
        assert page["loss"] == "v1 log-loss"
        assert f"{n_pos + n_neg + n_labels} predictions and labels read" in page["monitor"]
        assert f"{n_labels} joined" in page["monitor"]
        assert sorted(r[2] for r in page["workers"]) == ["monitor", "scoring", "scoring"]
        # the one-shot alert past its ttl and b's alert are not shown; the long texts are cut, whole on hover
        assert [r[2] for r in page["alerts"]] == [f"model_rollback:{a}:{model}"]
        for cut in (page["reason"], page["message"]):
            assert cut["title"] == long_reason and len(cut["text"]) <= 120 and cut["text"].endswith("…")
            assert long_reason.startswith(cut["text"][:-1])
        assert not [c for c in console if c.startswith("exception")], console
    finally:
        for w in workers:
            w.stop()
        for t in threads:
            t.join(20)


def basic(credentials: str) -> dict[str, str]:
    import base64

    return {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}


@needs_chromium
def test_the_page_asks_for_basic_auth_and_scrapes_workers_behind_a_token(tmp_path):
    worker = WorkerMetrics("secure", "tidal.secure")
    worker.events_in.inc(77)
    port = serve_metrics(worker.registry, 0, "127.0.0.1", token="s3cret")  # a worker with TIDAL_METRICS_TOKEN
    url = f"http://127.0.0.1:{port}/metrics"
    with Dashboard([url], None, port=0, interval=0.2, auth="ops:pa55", metrics_token="s3cret").start() as d:
        for path in ("/", "/api/summary", "/static/app.js", "/metrics"):
            for headers in ({}, basic("ops:wrong"), basic("pa55:ops"), {"Authorization": "Bearer pa55"}):
                with pytest.raises(urllib.error.HTTPError) as err:
                    urllib.request.urlopen(urllib.request.Request(d.url + path, headers=headers), timeout=5)
                assert err.value.code == 401, (path, headers)
                assert err.value.headers["WWW-Authenticate"] == 'Basic realm="tidal dashboard", charset="UTF-8"'
        assert get_json(d.url + "/healthz")["ok"] is True  # probes need no credentials

        def summary() -> dict:
            req = urllib.request.Request(d.url + "/api/summary", headers=basic("ops:pa55"))
            return orjson.loads(urllib.request.urlopen(req, timeout=5).read())

        wait_until(lambda: summary()["totals"]["in"] == 77, 10, "the worker scraped with its token")
        with Chromium(tmp_path / "chromium", width=1000, height=700) as browser:
            # credentials in the URL answer the page's challenge; the page's own fetches reuse them
            browser.open(f"http://ops:pa55@127.0.0.1:{d.port}/")
            browser.wait_for("document.getElementById('kpi-events-in').textContent === '77'")
            assert browser.evaluate("document.getElementById('targets-status').textContent") == "workers 1/1 up"
    with Dashboard([url], None, port=0, interval=0.2).start() as d:  # no token: the worker refuses the scrape
        (target,) = wait_until(lambda: [t for t in get_json(d.url + "/api/summary")["targets"] if t["error"]], 10,
                               "a refused scrape")
        assert target["up"] is False and target["error"].startswith("HTTP 401 Unauthorized: the worker wants its")
