"""Data-drift windows, concept-drift detectors per model version, and the DriftStep's alerts and metrics."""

from __future__ import annotations

import numpy as np
import pytest

from tidal.drift import ConceptDriftMonitor, DataDriftMonitor, DriftStep, errors_of, make_detector
from tidal.monitor.metrics import WorkerMetrics
from tidal.stream.context import StepContext
from tidal.stream.batch import Batch


def _cols(rng, n, shift=0.0, cats=("a", "b", "c")):
    return {"x": rng.normal(shift, 1, n), "y": rng.normal(size=n), "c": rng.choice(list(cats), n).astype(object)}


def test_windows_do_not_depend_on_how_batches_are_cut():
    rng = np.random.default_rng(0)
    data = _cols(rng, 7300)
    one = DataDriftMonitor(["x", "y", "c"], ["c"], reference_size=2000, window=1000)
    many = DataDriftMonitor(["x", "y", "c"], ["c"], reference_size=2000, window=1000)
    whole = one.update(data)
    cut = [r for lo in range(0, 7300, 333) for r in many.update({k: v[lo:lo + 333] for k, v in data.items()})]
    assert [r.as_dict() for r in whole] == [r.as_dict() for r in cut]
    assert [(r.first_row, r.last_row) for r in whole] == [(2000 + 1000 * i, 2999 + 1000 * i) for i in range(5)]
    assert one.rows == 7300 and one.windows == 5


def test_dataset_drift_at_half_the_columns_and_given_reference():
    rng = np.random.default_rng(1)
    ref = _cols(rng, 3000)
    mon = DataDriftMonitor(["x", "y", "c"], ["c"], window=1000, reference=ref)
    assert mon.ready
    calm = mon.update(_cols(rng, 1000))[0]
    assert not calm.dataset_drift and calm.features["x"].test == "wasserstein"
    one = mon.update(_cols(rng, 1000, shift=1.0))[0]  # 1 of 3 columns: below 50%
    assert one.drifted_features == ["x"] and not one.dataset_drift
    two = mon.update(_cols(rng, 1000, shift=1.0, cats=("a", "z")))[0]  # 2 of 3
    assert two.drifted_features == ["x", "c"] and two.dataset_drift and two.share == pytest.approx(2 / 3)


def test_monitor_validates_its_arguments():
    with pytest.raises(ValueError):
        DataDriftMonitor([])
    with pytest.raises(ValueError):
        DataDriftMonitor(["x"], ["y"])
    with pytest.raises(ValueError):
        make_detector("nope")


def test_concept_monitor_per_key_and_direction():
    rng = np.random.default_rng(2)
    calm = (rng.random(4000) < 0.1).astype(float)
    worse = np.concatenate([calm, (rng.random(4000) < 0.4).astype(float)])
    mon = ConceptDriftMonitor()
    n = len(worse)
    model = np.array(["m"] * n, dtype=object)
    # version "1" gets worse halfway, version "2" (interleaved) stays calm
    versions = np.where(np.arange(n) % 2 == 0, "1", "2").astype(object)
    errors = np.where(versions == "1", np.repeat(worse[::2], 2)[:n], np.repeat(calm, 2)[:n])
    found = []
    for lo in range(0, n, 1000):
        found += [(d.key, d.direction, d.row + lo) for d in mon.update(errors[lo:lo + 1000],
                                                                        [model[lo:lo + 1000], versions[lo:lo + 1000]])]
    assert found and {k for k, _, _ in found} == {("m", "1")}
    assert found[0][1] == "up" and 4000 <= found[0][2] < 5000
    assert mon.seen == {("m", "1"): n // 2, ("m", "2"): n // 2}
    better = ConceptDriftMonitor().update(np.concatenate([(rng.random(3000) < 0.4), (rng.random(3000) < 0.05)]))
    assert better and better[0].direction == "down"


def test_errors_of_each_task():
    e, ok = errors_of(np.array([0.9, 2.0]), np.array([1.0, 3.5]), "regression")
    assert e.tolist() == [pytest.approx(0.1), 1.5] and ok.all()
    e, ok = errors_of(np.array(["a", "b"], dtype=object), np.array(["a", "c"], dtype=object), "multiclass")
    assert e.tolist() == [0.0, 1.0]


def _joined(rng, n, error_rate, version="1", start=0):
    decisions = rng.random(n) < 0.5
    wrong = rng.random(n) < error_rate
    labels = np.where(wrong, ~decisions, decisions)
    return Batch.from_rows([{"event_id": f"e{start + i}", "x": float(x), "decision": bool(d), "label": int(y),
                             "model": "m", "model_version": version}
                            for i, (x, d, y) in enumerate(zip(rng.normal(size=n).tolist(), decisions.tolist(),
                                                              labels.tolist()))], topic="p.joined")


def test_drift_step_alerts_and_metrics():
    rng = np.random.default_rng(3)
    events = []
    step = DriftStep(["x"], reference_size=1000, window=1000, emit=events.append, resolve_after=3000)
    metrics = WorkerMetrics("p.monitor", "g")
    step.open(StepContext("p.monitor", step=step.name, topics=step.outputs("p.monitor"), registry=metrics.registry))
    seen = 0
    for i in range(4):
        out = step.process(_joined(rng, 1000, 0.1, start=seen))
        seen += 1000
    assert not events and out.outputs == []  # drift columns are not written out
    assert {"drift_concept", "drift_width", "drift_data"} <= set(out.columns)
    flagged = 0
    for i in range(2):
        out = step.process(_joined(rng, 1000, 0.45, start=seen))
        flagged += int(out.columns["drift_concept"].sum())
        seen += 1000
    concept = [e for e in events if e["type"] == "concept_drift"]
    assert flagged >= 1 and [e["state"] for e in concept] == ["firing"]
    fired = concept[0]
    assert fired["rule"] == "concept_drift:p.monitor:m" and fired["model"] == "m" and fired["version"] == "1"
    assert int(fired["at"]["event_id"][1:]) >= 4000 and fired["statistic"] == "adwin"
    for i in range(4):  # calm again: resolved after 3,000 quiet events
        step.process(_joined(rng, 1000, 0.45, version="2", start=seen))
        seen += 1000
    assert [e["state"] for e in events if e["type"] == "concept_drift"] == ["firing", "resolved"]
    reg = metrics.registry
    assert reg.get_sample_value("tidal_drift_detections_total", {"pipeline": "p.monitor", "kind": "concept",
                                                                 "model": "m"}) >= 1
    assert reg.get_sample_value("tidal_drift_error_rate", {"pipeline": "p.monitor", "model": "m", "version": "2"}) \
        == pytest.approx(0.45, abs=0.05)
    assert reg.get_sample_value("tidal_drift_dataset_drifted", {"pipeline": "p.monitor"}) == 0.0
    assert reg.get_sample_value("tidal_drift_feature_psi", {"pipeline": "p.monitor", "feature": "x"}) < 0.1


def test_data_drift_fires_once_and_resolves():
    rng = np.random.default_rng(4)
    events = []
    step = DriftStep(["x"], reference_size=2000, window=500, emit=events.append, concept=False, pipeline="p")
    rows = lambda xs: Batch.from_rows([{"x": float(v)} for v in xs])  # noqa: E731
    step.process(rows(rng.normal(size=3000)))
    out = step.process(rows(rng.normal(1.0, 1, 1500)))
    assert [e["state"] for e in events] == ["firing"] and out.columns["drift_data"].sum() == 3
    step.process(rows(rng.normal(size=500)))
    assert [e["state"] for e in events] == ["firing", "resolved"]
    fired = events[0]
    assert fired["drifted_features"] == ["x"] and fired["features"]["x"]["test"] == "wasserstein"
    assert fired["window"]["rows"] == 500 and fired["threshold"] == 0.5
    assert "x (wasserstein" in fired["message"]


def test_rising_errors_only_by_default():
    rng = np.random.default_rng(5)
    events = []
    step = DriftStep(emit=events.append, by=None, error_field="err", pipeline="p")
    errs = np.concatenate([rng.random(3000) < 0.4, rng.random(3000) < 0.05]).astype(float)
    step.process(Batch.from_rows([{"err": float(e), "label": 1} for e in errs.tolist()]))
    assert events == [] and any(d["direction"] == "down" for d in step.detections)


@pytest.mark.parametrize("module", ["tidal.drift", "tidal.drift.stats", "tidal.drift.sketch", "tidal.drift.data",
                                    "tidal.drift.concept", "tidal.drift.step", "tidal.drift.events", "tidal.learn",
                                    "tidal.learn.online", "tidal.learn.train", "tidal.learn.retrain",
                                    "tidal.demos.maintenance", "tidal.demos.maintenance_data", "tidal.demos.sentiment",
                                    "tidal.cli.learn"])
def test_public_names_exist(module):
    import importlib

    m = importlib.import_module(module)
    assert m.__all__ and len(m.__all__) == len(set(m.__all__))
    assert [n for n in m.__all__ if not hasattr(m, n)] == []
