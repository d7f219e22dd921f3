"""DriftStep in a worker: drift alerts land on tidal.alerts, metrics on the worker's registry."""

from __future__ import annotations

import time

import numpy as np
import orjson
import pytest

from tidal.broker import ensure_topics
from tidal.broker.topics import ALERTS_TOPIC
from tidal.demos.maintenance import WorkerThread
from tidal.drift import DriftStep
from tidal.learn import LabelJoinStep
from tidal.stream import Pipeline

from .kafka_helpers import produce, read_all, records

pytestmark = pytest.mark.integration


def test_monitor_with_drift_step_alerts_on_kafka(settings, name):
    rng = np.random.default_rng(0)
    n, change = 6000, 4000
    x = np.where(np.arange(n) < change, rng.normal(size=n), rng.normal(1.5, 1, n))
    wrong = rng.random(n) < np.where(np.arange(n) < change, 0.05, 0.4)
    decision = rng.random(n) < 0.5
    preds = [orjson.dumps({"event_id": f"e{i}", "x": float(x[i]), "decision": bool(decision[i]), "model": name,
                           "model_version": "3"}) for i in range(n)]
    labels = [orjson.dumps({"event_id": f"e{i}", "label": int(decision[i] != wrong[i])}) for i in range(n)]
    drift = DriftStep(["x"], reference_size=2000, window=1000)
    p = Pipeline(f"{name}.monitor", sources=[f"{name}.predictions", f"{name}.labels"], sink=f"{name}.joined",
                 steps=[LabelJoinStep(f"{name}.labels"), drift], partitions=1, lineage=False, max_wait_ms=20)
    ensure_topics(settings, p.topic_specs())
    worker = WorkerThread(p, settings).start()
    produce(settings, f"{name}.predictions", preds)
    produce(settings, f"{name}.labels", labels)
    join = p.steps[0]
    deadline = time.monotonic() + 30
    while join.matched < n and time.monotonic() < deadline:
        time.sleep(0.1)
    worker.stop()

    alerts = [a for a in records(read_all(settings, ALERTS_TOPIC, 1)) if a.get("pipeline") == p.name]
    kinds = {(a["type"], a["state"]) for a in alerts}
    assert kinds == {("data_drift", "firing"), ("concept_drift", "firing")}
    concept = next(a for a in alerts if a["type"] == "concept_drift")
    data = next(a for a in alerts if a["type"] == "data_drift")
    assert concept["model"] == name and concept["version"] == "3"
    assert concept["rule"] == f"concept_drift:{p.name}:{name}"
    assert change <= int(concept["at"]["event_id"][1:]) < change + 500  # ADWIN: a few hundred labels at most
    assert int(data["at"]["event_id"][1:]) == change + 999 and data["drifted_features"] == ["x"]
    reg = worker.worker.registry
    assert reg.get_sample_value("tidal_drift_dataset_drifted", {"pipeline": p.name}) == 1.0
    assert reg.get_sample_value("tidal_drift_feature_score", {"pipeline": p.name, "feature": "x",
                                                              "test": "wasserstein"}) > 1.0
    assert reg.get_sample_value("tidal_drift_detections_total", {"pipeline": p.name, "kind": "concept",
                                                                 "model": name}) >= 1
    joined = records(read_all(settings, f"{name}.joined", 1))
    assert len(joined) == n and "drift_concept" not in joined[0]  # drift columns stay inside the worker
