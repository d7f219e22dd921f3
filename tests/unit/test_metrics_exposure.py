"""What /metrics exposes: skipped records on the worker's registry, a bounded number of version series, a token."""

from prometheus_client import generate_latest

from tidal.broker.skipped import loads_or_skip
from tidal.monitor.metrics import WorkerMetrics


def test_skipped_records_are_on_the_workers_registry():
    m = WorkerMetrics("p", "tidal.p")
    assert loads_or_skip(b"{not json", "test.skipped.topic") is None
    text = generate_latest(m.registry).decode()
    line = [x for x in text.splitlines() if x.startswith("tidal_skipped_records_total{") and "test.skipped.topic" in x]
    assert line and line[0].endswith(" 1.0") and 'reason="invalid_json"' in line[0]


def test_prediction_series_of_old_versions_are_removed():
    """A model retrained and published every few minutes: /metrics keeps the latest versions' series only."""
    import numpy as np
    from prometheus_client import CollectorRegistry

    from tidal.models.metrics import MAX_VERSION_SERIES, ScoreMetrics

    reg = CollectorRegistry()
    m = ScoreMetrics(reg, "p")
    for v in range(1, 30):
        m.observe_models(np.array(["m", "m"], dtype=object), np.array([str(v), str(v)], dtype=object),
                         np.array([True, False]))
    text = generate_latest(reg).decode()
    versions = {line.split('version="')[1].split('"')[0] for line in text.splitlines()
                if line.startswith("tidal_predictions_total{")}
    assert versions == {str(v) for v in range(30 - MAX_VERSION_SERIES, 30)}
    assert 'tidal_model_info{model="m",pipeline="p",version="29"} 1.0' in text


def test_metrics_behind_a_bearer_token(monkeypatch):
    """TIDAL_METRICS_TOKEN: /metrics answers 401 without the token, the metrics with it."""
    import urllib.error
    import urllib.request

    import pytest

    from tidal.monitor.metrics import serve_metrics

    monkeypatch.setenv("TIDAL_METRICS_TOKEN", "s3cret")
    m = WorkerMetrics("guarded", "tidal.guarded")
    m.events_in.inc(7)
    port = serve_metrics(m.registry, 0)
    url = f"http://127.0.0.1:{port}/metrics"
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(url, timeout=5)
    assert e.value.code == 401
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": "Bearer wrong"}), timeout=5)
    body = urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": "Bearer s3cret"}),
                                  timeout=5).read().decode()
    assert 'tidal_events_in_total{pipeline="guarded"} 7.0' in body
    monkeypatch.delenv("TIDAL_METRICS_TOKEN")
    open_port = serve_metrics(m.registry, 0)  # no token: open, as before
    assert "tidal_events_in_total" in urllib.request.urlopen(f"http://127.0.0.1:{open_port}/metrics",
                                                             timeout=5).read().decode()


def test_model_quality_tracks_the_most_recent_versions_only():
    from prometheus_client import CollectorRegistry

    from tidal.monitor.model_quality import ModelQualityStep
    from tidal.stream.batch import Batch
    from tidal.stream.context import StepContext

    reg = CollectorRegistry()
    step = ModelQualityStep("p", max_versions=3)
    step.open(StepContext("p", registry=reg))
    for v in range(1, 8):
        step.process(Batch.from_rows([{"model": "m", "model_version": str(v), "score": s, "decision": s > 0.5,
                                       "label": int(s > 0.4)} for s in (0.1, 0.6, 0.9)]))
    assert list(step.versions) == [("m", "5"), ("m", "6"), ("m", "7")]
    series = {line.split('version="')[1].split('"')[0] for line in generate_latest(reg).decode().splitlines()
              if line.startswith("tidal_model_quality{")}
    assert series == {"5", "6", "7"}
