"""Alert rules: fire once, stay quiet while true, resolve once; rate, absence, for_s, webhook."""

from __future__ import annotations

import http.server
import threading
import time

import orjson
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge

from tidal.monitor.alerts import AlertEvaluator, AlertRule


def states(events):
    return [(e["rule"], e["state"]) for e in events]


def test_value_rule_fires_once_dedupes_and_resolves():
    reg = CollectorRegistry()
    lag = Gauge("tidal_consumer_lag", "", ["pipeline", "partition"], registry=reg)
    rule = AlertRule.from_dict({"name": "lag", "metric": "tidal_consumer_lag", "value": ">= 100",
                                "labels": {"pipeline": "p"}, "severity": "critical"})
    emitted = []
    ev = AlertEvaluator([rule], reg, "p", emitted.append)
    lag.labels("p", "0").set(60)
    lag.labels("other", "0").set(1000)  # filtered out by labels
    assert ev.evaluate(now=1) == []
    lag.labels("p", "1").set(50)  # the sum over partitions crosses
    assert states(ev.evaluate(now=2)) == [("lag", "firing")]
    assert ev.evaluate(now=3) == [] and ev.evaluate(now=4) == []  # de-duplicated while firing
    lag.labels("p", "1").set(0)
    assert states(ev.evaluate(now=5)) == [("lag", "resolved")]
    assert ev.evaluate(now=6) == []
    assert [e["state"] for e in emitted] == ["firing", "resolved"]
    assert emitted[0]["value"] == 110 and emitted[0]["severity"] == "critical" and emitted[0]["pipeline"] == "p"


def test_rate_rule_uses_the_window():
    reg = CollectorRegistry()
    dlq = Counter("tidal_dlq", "", registry=reg)
    ev = AlertEvaluator([AlertRule.from_dict({"name": "burst", "metric": "tidal_dlq_total", "rate": "> 5",
                                              "window_s": 10})], reg, "p")
    assert ev.evaluate(now=0) == []
    dlq.inc(30)  # 30 in 2 s = 15/s
    assert states(ev.evaluate(now=2)) == [("burst", "firing")]
    assert ev.evaluate(now=4) == []  # 30 in 4 s = 7.5/s: still firing, not repeated
    assert states(ev.evaluate(now=8)) == [("burst", "resolved")]  # 30 in 8 s = 3.75/s
    dlq.inc(100)  # a new burst; t=0 has left the 10 s window, so the rate is measured from t=4
    assert states(ev.evaluate(now=12)) == [("burst", "firing")]  # 100 in 8 s = 12.5/s


def test_absent_rule_and_for_s():
    reg = CollectorRegistry()
    seen = Counter("tidal_events_in", "", registry=reg)
    ev = AlertEvaluator([AlertRule.from_dict({"name": "stalled", "metric": "tidal_events_in_total",
                                              "absent_for_s": 30, "for_s": 10})], reg, "p")
    seen.inc()
    assert ev.evaluate(now=0) == []
    assert ev.evaluate(now=35) == []  # quiet 35 s, but not yet for 10 s more
    assert states(ev.evaluate(now=46)) == [("stalled", "firing")]
    seen.inc()
    assert states(ev.evaluate(now=47)) == [("stalled", "resolved")]


def test_bad_rules_are_refused():
    with pytest.raises(ValueError, match="exactly one"):
        AlertRule.from_dict({"name": "x", "metric": "m", "value": "> 1", "rate": "> 1"})
    with pytest.raises(ValueError, match="expected e.g."):
        AlertRule.from_dict({"name": "x", "metric": "m", "value": "more than 1"})


def test_webhook_receives_the_event():
    received = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            received.append(orjson.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        reg = CollectorRegistry()
        Gauge("g", "", registry=reg).set(5)
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        AlertEvaluator([AlertRule.from_dict({"name": "g", "metric": "g", "value": "> 1", "webhook": url})],
                       reg, "p").evaluate(now=1)
        deadline = time.monotonic() + 5
        while not received and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        server.shutdown()
    assert received and received[0]["rule"] == "g" and received[0]["state"] == "firing"


def test_a_rule_with_an_unknown_or_missing_key_is_refused_by_name():
    with pytest.raises(ValueError, match=r"unknown key 'window' \(did you mean 'window_s'\?\)"):
        AlertRule.from_dict({"name": "r", "metric": "m", "rate": "> 1", "window": 30})
    with pytest.raises(ValueError, match="metric is required"):
        AlertRule.from_dict({"name": "r", "value": "> 1"})
    assert AlertRule.from_dict({"name": "r", "metric": "m", "value": "> 1", "severity": "critical"}).severity == "critical"
