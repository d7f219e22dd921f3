"""Explanations: exact contributions that add up to the raw score; top-k; sampling; YAML."""

from __future__ import annotations

import lightgbm
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier

from tidal.models import ScoreStep, load_model, save_model
from tidal.models.explain import ExplainStep, contributions, top_k
from tidal.stream.batch import Batch


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(600, 4))
    y = (X[:, 0] + 2 * X[:, 1] - X[:, 3] > 0).astype(int)
    return X, y


def test_lightgbm_contributions_sum_to_raw_score(tmp_path, data):
    X, y = data
    model = lightgbm.LGBMClassifier(n_estimators=30, n_jobs=1, verbose=-1).fit(X, y)
    save_model(model, tmp_path, "m", 1, ["a", "b", "c", "d"])
    loaded = load_model(tmp_path)
    contrib, bias = contributions(loaded, X)
    raw = loaded.model.predict(X, raw_score=True)
    assert np.max(np.abs(contrib.sum(axis=1) + bias - raw)) < 1e-6
    assert np.abs(contrib[:, 2]).mean() < np.abs(contrib[:, 1]).mean()  # c is noise, b matters most


def test_linear_contributions_are_exact(tmp_path, data):
    X, y = data
    save_model(LogisticRegression().fit(X, y), tmp_path, "m", 1, ["a", "b", "c", "d"])
    loaded = load_model(tmp_path)
    contrib, bias = contributions(loaded, X)
    assert np.allclose(contrib.sum(axis=1) + bias, loaded.model.decision_function(X))


def test_unsupported_model_is_refused(tmp_path, data):
    X, y = data
    save_model(DecisionTreeClassifier().fit(X, y), tmp_path, "m", 1, ["a", "b", "c", "d"])
    with pytest.raises(ValueError, match="no exact explanations"):
        contributions(load_model(tmp_path), X)


def test_top_k_orders_by_magnitude():
    contrib = np.array([[0.1, -0.5, 0.3], [0.0, 0.2, -0.01]])
    assert top_k(contrib, ["a", "b", "c"], 2) == [{"b": -0.5, "c": 0.3}, {"b": 0.2, "c": -0.01}]


def test_explain_step_samples_and_writes_the_column(tmp_path, data):
    X, y = data
    save_model(lightgbm.LGBMClassifier(n_estimators=10, n_jobs=1, verbose=-1).fit(X, y), tmp_path, "m", 1,
               ["a", "b", "c", "d"])
    score = ScoreStep(load_model(tmp_path))
    rows = [dict(zip("abcd", x)) for x in X.tolist()]
    batch = score.process(Batch.from_rows(rows))
    out = ExplainStep(score, sample=0.25, k=2, seed=1).process(batch)
    explained = [e for e in out.columns["explanation"].tolist() if e is not None]
    assert 0.15 * len(rows) < len(explained) < 0.35 * len(rows)
    assert all(len(e) == 2 and set(e) <= set("abcd") for e in explained)
    everything = ExplainStep(score, sample=1.0).process(score.process(Batch.from_rows(rows)))
    assert all(e is not None for e in everything.columns["explanation"].tolist())


def test_yaml_explain_follows_the_score_step(tmp_path, toy_model):
    from tidal.stream.spec import from_dict

    p = from_dict({"pipeline": "p", "steps": [{"score": {"model": str(toy_model)}}, {"explain": {"sample": 0.5}}]})
    assert isinstance(p.steps[1], ExplainStep) and p.steps[1].source is p.steps[0]
    with pytest.raises(ValueError, match="needs a score"):
        from_dict({"pipeline": "p", "steps": [{"explain": {}}]})
