"""RetrainStep: drift → retrain on recent rows → challenger vs champion → promote only if better by a margin."""

from __future__ import annotations

import numpy as np
import pytest

from tidal.drift import DriftStep
from tidal.learn import RetrainStep, evaluate, fit_model, predict_scores
from tidal.learn.train import _join_labels, time_split
from tidal.cli.learn import parse_offsets, parse_time
from tidal.registry import Registry
from tidal.stream.batch import Batch

FEATURES = ["a", "b"]


def _regime(rng, n, flip):
    X = rng.normal(size=(n, 2))
    y = (X[:, 1] > 0) if flip else (X[:, 0] > 0)
    return X, y.astype(int)


def _batch(X, y, decisions, start):
    rows = [{"event_id": f"e{start + i}", "a": a, "b": b, "label": int(t), "decision": bool(d), "model": "m",
             "model_version": "1"} for i, ((a, b), t, d) in enumerate(zip(X.tolist(), y.tolist(), decisions.tolist()))]
    batch = Batch.from_rows(rows, topic="m.joined")
    batch.offsets = batch.offsets + start
    return batch


@pytest.fixture
def registry(tmp_path):
    rng = np.random.default_rng(0)
    reg = Registry(tmp_path / "registry")
    X, y = _regime(rng, 2000, flip=False)
    reg.register("m", model=fit_model("logistic", X, y), features=FEATURES)
    reg.promote("m", 1)
    return reg


def test_drift_triggers_a_challenger_that_wins(registry):
    rng = np.random.default_rng(1)
    champion = registry.load("models:/m@champion")
    events = []
    drift = DriftStep(emit=events.append, pipeline="m.monitor")
    retrain = RetrainStep(registry, "m", FEATURES, kind="logistic", min_rows=1500, holdout=0.3, margin=0.05,
                          emit=events.append, pipeline="m.monitor")
    seen = 0
    for flip in [False] * 4 + [True] * 6:
        X, y = _regime(rng, 500, flip)
        decisions = champion.predict(X) >= 0.5
        retrain.process(drift.process(_batch(X, y, decisions, seen)))
        seen += 500
    assert [h["outcome"] for h in retrain.history] == ["promoted"]
    h = retrain.history[0]
    assert h["challenger"] > 0.9 and h["champion"] < 0.7 and h["version"] == 2
    assert registry.aliases("m") == {"champion": 2}
    v2 = registry.get("m", 2)
    lo, hi = v2.lineage["ranges"]["0"]
    assert 2000 <= lo < 2500 and hi - lo == h["train_rows"] + h["holdout_rows"]  # rows since the detection
    assert v2.lineage["trigger"]["reason"] == "concept drift" and v2.lineage["parent"] == "models:/m/1"
    assert v2.metrics["recent_accuracy"] == pytest.approx(h["challenger"])
    kinds = [(e["type"], e.get("outcome")) for e in events]
    assert ("concept_drift", None) in kinds and ("retrain", "promoted") in kinds


def test_a_challenger_that_is_not_better_is_not_registered(registry):
    rng = np.random.default_rng(2)
    retrain = RetrainStep(registry, "m", FEATURES, kind="logistic", min_rows=1000, margin=0.02, max_attempts=2,
                          retry_rows=500)
    retrain.request_retrain("test")
    for i in range(4):
        X, y = _regime(rng, 500, flip=False)  # same regime: the champion is as good
        retrain.process(_batch(X, y, np.zeros(500, bool), 500 * i))
    assert [h["outcome"] for h in retrain.history] == ["rejected", "rejected"]
    assert retrain.pending is None and len(registry.versions("m")) == 1


def test_fit_evaluate_and_helpers():
    rng = np.random.default_rng(3)
    X, y = _regime(rng, 600, flip=False)
    for kind in ("lightgbm", "logistic", "sgd"):
        m = fit_model(kind, X[:400], y[:400])
        assert evaluate(y[400:], predict_scores(m, X[400:]))["accuracy"] > 0.85, kind
    reg = fit_model("logistic", X, X[:, 0] * 2, task="regression")
    assert evaluate(X[:, 0] * 2, predict_scores(reg, X, "regression"), "regression")["mae"] < 0.01
    with pytest.raises(ValueError):
        fit_model("xgboost", X, y)
    train, test = time_split(np.array([5, 1, 4, 2, 3]), 0.4)
    assert train.tolist() == [1, 3, 4] and test.tolist() == [2, 0]
    labels, found = _join_labels(np.array(["c", "a", "x"]), np.array(["a", "b", "c", "a"]), np.array([1.0, 0, 1, 0]))
    assert found.tolist() == [True, True, False] and labels[:2].tolist() == [1.0, 0.0]  # the last label wins
    assert parse_offsets("0:5,3:9") == {0: 5, 3: 9} and parse_time("1700000000000") == 1700000000000
    with pytest.raises(ValueError):
        parse_offsets("5")


def test_data_drift_can_trigger_too(registry):
    rng = np.random.default_rng(4)
    drift = DriftStep(FEATURES, reference_size=1000, window=500, concept=False)
    retrain = RetrainStep(registry, "m", FEATURES, kind="logistic", on=("concept", "data"), min_rows=100_000)
    seen = 0
    for shift in (0.0, 0.0, 0.0, 2.0):
        X, y = _regime(rng, 500, flip=False)
        retrain.process(drift.process(_batch(X + shift, y, np.zeros(500, bool), seen)))
        seen += 500
    assert retrain.pending is not None and retrain.pending.reason == "data drift"
    assert retrain.pending.detected_at == 1999 and retrain.pending.at["offset"] == 1999


def test_online_model_names():
    from tidal.cli.learn import ONLINE_MODELS, make_online_model
    from tidal.learn import model_flavor

    for spec in ONLINE_MODELS:
        model = make_online_model(spec, "regression" if spec == "river-linreg" else "binary")
        assert model_flavor(model) == ("sklearn" if spec.startswith("sklearn") else "river")
    assert type(make_online_model("river.linear_model:PAClassifier")).__name__ == "PAClassifier"
    with pytest.raises(ValueError):
        make_online_model("nope")
