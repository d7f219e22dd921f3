"""The model runtime contract, run over every registered flavor, and a new flavor added in one registration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tidal.models.artifact import FLAVORS, load_model, save_model
from tidal.models.errors import NotSupported
from tidal.models.explain import contributions
from tidal.models.runtimes import (ModelRuntime, OnnxModel, flavors, platform_of, register_runtime, runtime_for,
                                   runtime_of, unregister_runtime)

FEATURES = ["a", "b", "c"]
BUILTIN = ("lightgbm", "sklearn", "river", "onnx")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    X = rng.random((400, 3))
    y = (X[:, 0] + 0.5 * X[:, 1] - 0.3 * X[:, 2] > 0.6).astype(int)
    return X, y, rng.random((40, 3))


def _lightgbm(X, y):
    import lightgbm

    return lightgbm.LGBMClassifier(n_estimators=10, n_jobs=1, verbose=-1).fit(X, y)


def _sklearn(X, y):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression().fit(X, y)


def _river(X, y):
    from river import linear_model

    model = linear_model.LogisticRegression()
    for row, label in zip(X.tolist(), y.tolist()):
        model.learn_one(dict(zip(FEATURES, row)), bool(label))
    return model


def _onnx(X, y):
    return OnnxModel(runtime_for("sklearn").to_onnx(_sklearn(X, y), X.shape[1]))


def _mlflow_pyfunc(X, y):
    """An MLflow model folder served through mlflow.pyfunc: predict_proba's two columns, P(positive) taken."""
    import tempfile

    pytest.importorskip("mlflow")
    import mlflow.sklearn
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    from tidal.models.runtimes import MlflowModel

    folder = Path(tempfile.mkdtemp(prefix="tidal-test-pyfunc-")) / "model"
    signature = ModelSignature(inputs=Schema([ColSpec("double", f) for f in FEATURES]))
    mlflow.sklearn.save_model(_sklearn(X, y), str(folder), serialization_format="cloudpickle",
                              pyfunc_predict_fn="predict_proba", signature=signature)
    return MlflowModel(folder, FEATURES)


MAKERS = {"lightgbm": _lightgbm, "sklearn": _sklearn, "river": _river, "onnx": _onnx,
          "mlflow_pyfunc": _mlflow_pyfunc}
EXPLAINS = {"lightgbm", "sklearn"}


def test_builtin_flavors_are_registered():
    assert set(BUILTIN) <= set(flavors()) and set(BUILTIN) <= set(FLAVORS)
    assert [platform_of(f) for f in BUILTIN] == ["lightgbm", "sklearn", "river", "onnxruntime_onnx"]
    assert platform_of("nope") == "nope"
    with pytest.raises(Exception, match="unknown flavor"):
        runtime_for("nope")


@pytest.fixture(params=flavors())
def case(request, data):
    flavor = request.param
    if flavor not in MAKERS:
        pytest.fail(f"flavor {flavor!r} is registered but has no model in this contract test")
    X, y, X_test = data
    return runtime_for(flavor), MAKERS[flavor](X, y), X_test


def test_round_trip_keeps_predictions(tmp_path, case):
    rt, model, X = case
    card = save_model(model, tmp_path / "m", "m", 1, FEATURES)  # flavor from runtime_of
    assert card.flavor == rt.flavor and card.file == rt.file
    loaded = load_model(tmp_path / "m")
    assert loaded.runtime is rt and rt.handles(loaded.model) and runtime_of(loaded.model) is rt
    np.testing.assert_allclose(loaded.predict(X), rt.predict(model, X, features=FEATURES), rtol=1e-6, atol=1e-9)


def test_predict_one_finite_score_per_row(case):
    rt, model, X = case
    assert runtime_of(model) is rt
    scores = rt.predict(model, X, features=FEATURES)
    assert scores.shape == (len(X),) and scores.dtype == np.float64 and np.isfinite(scores).all()
    assert ((scores >= 0) & (scores <= 1)).all()  # binary: P(positive)


def test_explain_sums_to_raw_score_or_says_unsupported(tmp_path, case):
    rt, model, X = case
    if rt.flavor not in EXPLAINS:
        with pytest.raises(NotSupported, match="no exact explanations"):
            rt.explain(model, X)
        assert issubclass(NotSupported, NotImplementedError) and issubclass(NotSupported, ValueError)
        return
    save_model(model, tmp_path / "m", "m", 1, FEATURES)
    loaded = load_model(tmp_path / "m")
    contrib, bias = contributions(loaded, X)
    assert contrib.shape == (len(X), len(FEATURES)) and bias.shape == (len(X),)
    p = loaded.predict(X)
    np.testing.assert_allclose(1 / (1 + np.exp(-(contrib.sum(axis=1) + bias))), p, rtol=1e-6, atol=1e-9)


def test_to_onnx_where_the_flavor_converts(case):
    rt, model, X = case
    if rt.flavor not in ("lightgbm", "sklearn"):
        with pytest.raises(NotSupported, match="cannot be converted to ONNX"):
            rt.to_onnx(model, len(FEATURES))
        return
    onnx = OnnxModel(rt.to_onnx(model, len(FEATURES)))
    np.testing.assert_allclose(onnx.predict(X), rt.predict(model, X), atol=1e-4)


def test_online_learners(data):
    from river import linear_model
    from sklearn.linear_model import SGDClassifier

    X, y, _ = data
    columns = {f: X[:, i] for i, f in enumerate(FEATURES)}
    for model, first_scored in ((linear_model.LogisticRegression(), True), (SGDClassifier(random_state=0), False)):
        rt = runtime_of(model)
        assert rt.online and rt.can_learn(model)
        learner = rt.learner(model, FEATURES, mode="one" if rt.flavor == "river" else "auto",
                             classes=np.array([0, 1]))
        for _ in range(2):
            preds, errors = learner.learn(columns.__getitem__, y.astype(bool) if rt.flavor == "river" else y)
            assert preds.shape == errors.shape == (len(y),)
        assert np.isfinite(errors).all() and errors.mean() < 0.5
    assert not runtime_for("sklearn").can_learn(_sklearn(X, y)) and not runtime_for("lightgbm").online
    with pytest.raises(NotSupported, match="cannot learn online"):
        runtime_for("onnx").learner(None, FEATURES)


# --- a new flavor: one class, one registration ----------------------------------------------------

class MeanModel:
    """Scores a row as the mean of its weighted features; it has ``predict``, like scikit-learn."""

    def __init__(self, weights):
        self.weights = np.asarray(weights, dtype=np.float64)

    def predict(self, X):
        return X @ self.weights / len(self.weights)


class MeanRuntime(ModelRuntime):
    """Stores the weights as JSON."""

    flavor = "mean"
    file = "weights.json"
    platform = "mean_json"

    def handles(self, model):
        return isinstance(model, MeanModel)

    def save(self, model, path: Path) -> None:
        path.write_text(json.dumps(model.weights.tolist()))

    def load(self, path: Path, *, task="binary"):
        return MeanModel(json.loads(path.read_text()))

    def predict(self, model, X, *, task="binary", features=(), threads=None):
        return model.predict(X)

    def explain(self, model, X):
        return X * model.weights / len(model.weights), np.zeros(len(X))


@pytest.fixture
def mean_flavor():
    register_runtime(MeanRuntime)
    yield runtime_for("mean")
    unregister_runtime("mean")


def test_a_new_flavor_end_to_end(tmp_path, data, mean_flavor):
    from tidal.serve.dataplane import DataPlane
    from tidal.serve.repository import ModelRepository

    _, _, X = data
    model = MeanModel([1.0, 2.0, 3.0])
    assert runtime_of(model) is mean_flavor  # asked before the duck-typed sklearn runtime
    assert "mean" in flavors()
    card = save_model(model, tmp_path / "m", "avg", 1, FEATURES, task="regression")
    assert card.flavor == "mean" and (tmp_path / "m" / "weights.json").is_file()
    loaded = load_model(tmp_path / "m")
    assert isinstance(loaded.model, MeanModel)
    np.testing.assert_allclose(loaded.predict(X), model.predict(X))
    contrib, bias = contributions(loaded, X)
    np.testing.assert_allclose(contrib.sum(axis=1) + bias, model.predict(X))
    repo = ModelRepository()
    repo.add_folder(tmp_path / "m")
    plane = DataPlane(repo)
    try:
        assert plane.model_metadata("avg")["platform"] == "mean_json"
    finally:
        plane.close()
