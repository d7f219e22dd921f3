"""Model artifacts: save/load round trips per flavor, checksums, feature matrices, the score step's guard."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tidal.models.artifact import (
    CARD,
    ArtifactError,
    LoadedModel,
    ModelCard,
    category_codes,
    feature_matrix,
    load_model,
    save_model,
)
from tidal.models.score import ScoreStep
from tidal.stream.batch import Batch
from tidal.stream.pipeline import Pipeline


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1)
    X = rng.random((600, 3))
    y = (X[:, 0] + 0.5 * X[:, 1] - 0.3 * X[:, 2] > 0.6).astype(int)
    X_test = rng.random((50, 3))
    return X, y, X_test


FEATURES = ["a", "b", "c"]


def test_lightgbm_classifier_round_trip(tmp_path, data):
    import lightgbm

    X, y, X_test = data
    model = lightgbm.LGBMClassifier(n_estimators=15, n_jobs=1, verbose=-1).fit(X, y)
    card = save_model(model, tmp_path / "m", "clf", 3, FEATURES, threshold=0.4, metrics={"auc": 0.9},
                      lineage={"topic": "t"})
    assert (tmp_path / "m" / "model.txt").is_file()
    loaded = load_model(tmp_path / "m")
    assert loaded.card == card
    assert (loaded.name, loaded.version, loaded.card.flavor) == ("clf", "3", "lightgbm")
    assert loaded.card.threshold == 0.4 and loaded.card.metrics == {"auc": 0.9}
    np.testing.assert_allclose(loaded.predict(X_test), model.predict_proba(X_test)[:, 1], rtol=1e-9)


@pytest.mark.parametrize("rows", [50, 3000])
def test_lightgbm_scores_do_not_depend_on_threads(tmp_path, data, rows):
    import lightgbm

    X, y, _ = data
    model = lightgbm.LGBMClassifier(n_estimators=15, n_jobs=1, verbose=-1).fit(X, y)
    save_model(model, tmp_path / "m", "clf", 1, FEATURES)
    X_big = np.random.default_rng(2).random((rows, 3))
    expected = model.predict_proba(X_big)[:, 1]
    loaded = load_model(tmp_path / "m")
    for threads in (None, 1, 2):
        loaded.threads = threads
        np.testing.assert_allclose(loaded.predict(X_big), expected, rtol=1e-12)
    step = ScoreStep(loaded, threads=1)
    assert loaded.threads == 1 and step.model is loaded


def test_lightgbm_booster_round_trip(tmp_path, data):
    import lightgbm

    X, y, X_test = data
    booster = lightgbm.train({"objective": "binary", "num_threads": 1, "verbose": -1}, lightgbm.Dataset(X, y), num_boost_round=10)
    save_model(booster, tmp_path / "m", "booster", 1, FEATURES)
    loaded = load_model(tmp_path / "m")
    assert loaded.card.flavor == "lightgbm"
    np.testing.assert_allclose(loaded.predict(X_test), booster.predict(X_test), rtol=1e-9)


def test_sklearn_round_trip(tmp_path, data):
    from sklearn.linear_model import LogisticRegression

    X, y, X_test = data
    model = LogisticRegression().fit(X, y)
    save_model(model, tmp_path / "m", "lr", 1, FEATURES)
    loaded = load_model(tmp_path / "m")
    assert loaded.card.flavor == "sklearn" and loaded.card.file == "model.joblib"
    scores = loaded.predict(X_test)
    np.testing.assert_allclose(scores, model.predict_proba(X_test)[:, 1])
    assert scores.shape == (len(X_test),)


def test_sklearn_regression_uses_predict(tmp_path, data):
    from sklearn.linear_model import LinearRegression

    X, _, X_test = data
    target = X @ np.array([1.0, -2.0, 0.5])
    model = LinearRegression().fit(X, target)
    save_model(model, tmp_path / "m", "reg", 1, FEATURES, task="regression")
    np.testing.assert_allclose(load_model(tmp_path / "m").predict(X_test), model.predict(X_test))


def _river_rows(X, y):
    return [(dict(zip(FEATURES, x)), bool(t)) for x, t in zip(X.tolist(), y.tolist())]


def test_river_logistic_regression_round_trip(tmp_path, data):
    from river import linear_model

    X, y, X_test = data
    model = linear_model.LogisticRegression()
    for x, t in _river_rows(X[:200], y[:200]):
        model.learn_one(x, t)
    save_model(model, tmp_path / "m", "river-lr", 1, FEATURES)
    loaded = load_model(tmp_path / "m")
    assert loaded.card.flavor == "river"
    expected = [model.predict_proba_one(dict(zip(FEATURES, x))).get(True, 0.0) for x in X_test.tolist()]
    np.testing.assert_allclose(loaded.predict(X_test), expected)


def test_river_per_row_model_round_trip(tmp_path, data):
    """A River model without a mini-batch API goes through predict_proba_one row by row."""
    from river import linear_model

    X, y, X_test = data
    model = linear_model.PAClassifier()
    for x, t in _river_rows(X[:200], y[:200]):
        model.learn_one(x, t)
    assert not hasattr(model, "predict_proba_many")
    save_model(model, tmp_path / "m", "river-pa", 1, FEATURES)
    loaded = load_model(tmp_path / "m")
    assert loaded.card.flavor == "river"
    expected = [model.predict_proba_one(dict(zip(FEATURES, x))).get(True, 0.0) for x in X_test.tolist()]
    scores = loaded.predict(X_test)
    np.testing.assert_allclose(scores, expected)
    assert len(set(scores.tolist())) > 1  # the model actually depends on its inputs


def test_predict_empty_matrix(tmp_path, toy_model):
    assert load_model(toy_model).predict(np.empty((0, 2))).shape == (0,)


def test_modified_model_file_fails_checksum(tmp_path, toy_model):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(toy_model, folder)
    path = folder / "model.txt"
    path.write_bytes(path.read_bytes() + b"\n")
    with pytest.raises(ArtifactError, match="checksum"):
        load_model(folder)


def test_modified_joblib_file_fails_checksum(tmp_path, data):
    from sklearn.linear_model import LogisticRegression

    X, y, _ = data
    save_model(LogisticRegression().fit(X, y), tmp_path / "m", "lr", 1, FEATURES)
    path = tmp_path / "m" / "model.joblib"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="checksum"):
        load_model(tmp_path / "m")


def test_missing_card(tmp_path):
    (tmp_path / "model.txt").write_text("not a model")
    with pytest.raises(ArtifactError, match=CARD):
        load_model(tmp_path)


def test_unreadable_card(tmp_path, toy_model):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(toy_model, folder)
    (folder / CARD).write_text("{not json")
    with pytest.raises(ArtifactError):
        load_model(folder)
    card = json.loads((toy_model / CARD).read_text())
    (folder / CARD).write_text(json.dumps({**card, "surprise": 1}))
    with pytest.raises(ArtifactError):
        load_model(folder)


def test_missing_model_file(tmp_path, toy_model):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(toy_model, folder)
    (folder / "model.txt").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        load_model(folder)


def test_unknown_flavor_on_save(tmp_path):
    with pytest.raises(ArtifactError):
        save_model(object(), tmp_path / "m", "x", 1, ["a"], flavor="tensorflow")
    with pytest.raises(ArtifactError):
        save_model(object(), tmp_path / "m2", "x", 1, ["a"])  # no predict: flavor unknown


def test_card_records_categories_and_checksum(tmp_path, toy_model):
    import hashlib

    card = json.loads((toy_model / CARD).read_text())
    assert card["features"] == ["x", "y"] and card["name"] == "toy" and card["version"] == "1"
    assert card["sha256"] == hashlib.sha256((toy_model / card["file"]).read_bytes()).hexdigest()


# --- feature matrices ----------------------------------------------------------------------------

def test_category_codes():
    assert category_codes({"m": ["a", "b", "c"]}) == {"m": {"a": 0.0, "b": 1.0, "c": 2.0}}
    assert category_codes({}) == {}


def test_feature_matrix_codes_and_unknown_categories():
    cols = {
        "amount": np.array([1.5, 2.0, 3.0, 4.0]),
        "cat": np.array(["b", "zzz", "a", None], dtype=object),
        "n": np.array([1, 2, 3, 4]),
    }
    X = feature_matrix(cols.__getitem__, ["n", "cat", "amount"], category_codes({"cat": ["a", "b"]}))
    assert X.dtype == np.float64
    assert X.shape == (4, 3)
    assert X[:, 0].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert X[:, 2].tolist() == [1.5, 2.0, 3.0, 4.0]
    assert X[0, 1] == 1.0 and X[2, 1] == 0.0
    assert math.isnan(X[1, 1]) and math.isnan(X[3, 1])


def test_feature_matrix_from_batch_with_missing_values():
    b = Batch.from_rows([{"x": 1.0, "c": "a"}, {"x": None, "c": "b"}], types={"x": "float", "c": "str"})
    X = feature_matrix(b.column, ["x", "c"], category_codes({"c": ["b", "a"]}))
    assert X[0].tolist() == [1.0, 1.0]
    assert math.isnan(X[1, 0]) and X[1, 1] == 0.0


def test_loaded_model_features_matrix_uses_card_categories(tmp_path, data):
    from sklearn.linear_model import LogisticRegression

    X, y, _ = data
    save_model(LogisticRegression().fit(X, y), tmp_path / "m", "lr", 1, ["a", "kind", "c"],
               categories={"kind": ["low", "high"]})
    loaded = load_model(tmp_path / "m")
    b = Batch.from_rows([{"a": 0.1, "kind": "high", "c": 0.3}, {"a": 0.2, "kind": "weird", "c": 0.4}])
    M = loaded.features_matrix(b.column)
    assert M[0].tolist() == [0.1, 1.0, 0.3]
    assert M[1, 0] == 0.2 and math.isnan(M[1, 1])


# --- the score step's shape guard ----------------------------------------------------------------

class _StubModel:
    """Stands in for a model whose predict returns one column too many.

    A stub is fine here: the test is about ScoreStep's guard on the shape of the scores, not
    about any real model library.
    """

    def predict(self, X):
        return np.zeros((len(X), 2))


def _stub_loaded(flavor="sklearn", task="regression"):
    card = ModelCard(name="stub", version="1", flavor=flavor, features=["x"], file="none", sha256="0", task=task)
    return LoadedModel(card, _StubModel())


def test_score_step_rejects_wrong_shape():
    step = ScoreStep(_stub_loaded())
    with pytest.raises(ValueError, match="shape"):
        step.process(Batch.from_rows([{"x": 1.0}, {"x": 2.0}, {"x": 3.0}]))


def test_score_step_wrong_shape_becomes_model_error_rejects():
    p = Pipeline("p").then(ScoreStep(_stub_loaded()))
    out, dlq = p.test([b'{"x": 1}', b'{"x": 2}'])
    assert out == []
    assert [(r.reason, r.step, r.offset) for r in dlq] == [("model_error", "score", 0), ("model_error", "score", 1)]
    assert "shape" in dlq[0].message


def test_score_step_regression_has_no_decision(tmp_path, data):
    from sklearn.linear_model import LinearRegression

    X, _, _ = data
    save_model(LinearRegression().fit(X[:, :1], X[:, 0] * 2), tmp_path / "m", "reg", 1, ["x"], task="regression")
    out = ScoreStep.from_path(str(tmp_path / "m")).process(Batch.from_rows([{"x": 1.0}, {"x": 2.0}]))
    assert out.outputs == ["score", "model", "model_version"]
    np.testing.assert_allclose(out.columns["score"], [2.0, 4.0])


def test_score_step_empty_batch_is_untouched(toy_model):
    b = Batch.from_rows([])
    assert ScoreStep.from_path(str(toy_model)).process(b) is b
    assert b.outputs == []
