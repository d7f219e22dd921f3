"""Delayed labels joined with predictions; rolling quality equals River's on the same pairs."""

from __future__ import annotations

import threading
import time

import numpy as np
import orjson
import pytest
from river import metrics

from tidal.broker import ensure_topics
from tidal.monitor.model_quality import monitor_pipeline
from tidal.stream import Worker

from .kafka_helpers import produce, read_all, records

pytestmark = pytest.mark.integration


def test_labels_join_and_rolling_quality(settings, name):
    rng = np.random.default_rng(5)
    n = 1200
    scores = rng.random(n)
    labels = (rng.random(n) < scores).astype(int)  # a calibrated-ish model
    versions = np.where(np.arange(n) < 800, "1", "2")
    preds = [orjson.dumps({"event_id": f"e{i}", "amount": float(i), "score": float(scores[i]),
                           "decision": bool(scores[i] >= 0.5), "model": "m", "model_version": versions[i]})
             for i in range(n)]
    p = monitor_pipeline(name, window=5000, horizon_s=2.0)
    ensure_topics(settings, p.topic_specs())
    # Some labels come before their predictions; five never get a prediction at all.
    produce(settings, f"{name}.labels", [orjson.dumps({"event_id": f"e{i}", "label": int(labels[i])})
                                         for i in range(100)] + [b'{"event_id": "orphan%d", "label": 1}' % i
                                                                 for i in range(5)])
    produce(settings, f"{name}.predictions", preds)
    produce(settings, f"{name}.labels", [orjson.dumps({"event_id": f"e{i}", "label": int(labels[i])})
                                         for i in range(100, n)])
    worker = Worker(p, settings)
    t = threading.Thread(target=worker.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 60
    join, quality = p.steps
    while time.monotonic() < deadline and join.matched < n:
        time.sleep(0.2)
    time.sleep(2.5)  # past the horizon: the orphans are dropped at the next batch
    produce(settings, f"{name}.predictions", [b'{"event_id": "late", "score": 0.5, "decision": true, '
                                              b'"model": "m", "model_version": "2"}'])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and join.unmatched["label"] < 5:
        time.sleep(0.2)
    worker.stop()
    t.join(20)

    assert join.matched == n and join.unmatched["label"] == 5
    joined = records(read_all(settings, f"{name}.joined", 4))
    assert len(joined) == n and {r["event_id"] for r in joined} == {f"e{i}" for i in range(n)}
    assert all(r["label"] == labels[int(r["event_id"][1:])] and "amount" in r for r in joined)

    snap = quality.snapshot()
    for version, rows in (("1", range(800)), ("2", range(800, n))):
        river = {"accuracy": metrics.Accuracy(), "precision": metrics.Precision(), "recall": metrics.Recall(),
                 "f1": metrics.F1(), "roc_auc": metrics.ROCAUC(), "log_loss": metrics.LogLoss()}
        for i in rows:
            for k, m in river.items():
                m.update(bool(labels[i]), float(scores[i]) if k in ("roc_auc", "log_loss") else bool(scores[i] >= 0.5))
        ours = snap[("m", version)]
        assert ours["labelled"] == len(rows)
        for k, m in river.items():
            assert ours["events"][k] == pytest.approx(m.get(), abs=1e-9), k
            assert ours["time"][k] == pytest.approx(m.get(), abs=1e-9), k
    reg = worker.registry
    assert reg.get_sample_value("tidal_model_quality", {"pipeline": name, "model": "m", "version": "2",
                                                        "metric": "accuracy", "window": "events"}) == \
        pytest.approx(snap[("m", "2")]["events"]["accuracy"])
    monitor = records(read_all(settings, f"{name}.monitor", 1))
    assert monitor and {m["version"] for m in monitor} <= {"1", "2"}
