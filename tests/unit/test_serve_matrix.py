"""Every model flavor the server loads × one row and many × OIP v2 JSON and records: 200 with the
model's own scores, never a 500; and a null feature is a 422 naming it, or scored where the
flavor takes missing values."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from lightgbm import LGBMClassifier
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LinearRegression, LogisticRegression

from tidal.models import load_model, save_model
from tidal.serve import ModelRepository, ModelServer

FEATURES = ["a", "b"]
rng = np.random.default_rng(3)
X = rng.random((400, 2))
Y = (X[:, 0] + X[:, 1] > 1).astype(int)

MAKERS = {
    "lightgbm": lambda: LGBMClassifier(n_estimators=10, n_jobs=1, verbose=-1).fit(X, Y),
    "sklearn_logistic": lambda: LogisticRegression().fit(X, Y),
    "sklearn_forest": lambda: RandomForestClassifier(n_estimators=5, random_state=0).fit(X, Y),
    "sklearn_gbc": lambda: GradientBoostingClassifier(n_estimators=5).fit(X, Y),
    "sklearn_regression": lambda: LinearRegression().fit(X, X[:, 0] * 2),
}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("matrix")
    repo, models = ModelRepository(), {}
    for name, make in MAKERS.items():
        task = "regression" if "regression" in name else "binary"
        save_model(make(), root / name, name, 1, FEATURES, task=task)
        repo.add_folder(root / name)
        models[name] = load_model(root / name)
    try:  # ONNX (the onnx extra): a LightGBM model converted, served on ONNX Runtime
        from tidal.serve.onnx import convert

        save_model(MAKERS["lightgbm"](), root / "onnx-src", "onnx", 1, FEATURES)
        convert(root / "onnx-src", root / "onnx")
        repo.add_folder(root / "onnx")
        models["onnx"] = load_model(root / "onnx")
    except ImportError:
        pass
    with ModelServer(repo).start() as server, httpx.Client(base_url=server.url, timeout=10) as client:
        yield client, models


def rows(n: int) -> np.ndarray:
    return np.round(np.random.default_rng(n).random((n, 2)), 6)


@pytest.mark.parametrize("n", [1, 7])
@pytest.mark.parametrize("shape", ["oip_json", "records"])
def test_every_flavor_answers_every_documented_shape(served, shape, n):
    client, models = served
    assert "onnx" in models  # the test extras install the onnx extra
    data = rows(n)
    for name, model in models.items():
        if shape == "oip_json":
            body = {"inputs": [{"name": f, "shape": [n], "datatype": "FP64", "data": data[:, i].tolist()}
                               for i, f in enumerate(FEATURES)]}
            r = client.post(f"/v2/models/{name}/infer", json=body)
            assert r.status_code == 200, (name, r.text)
            scores = [o for o in r.json()["outputs"] if o["name"] == "score"][0]["data"]
        else:
            r = client.post(f"/predict/{name}", json=[dict(zip(FEATURES, row)) for row in data.tolist()])
            assert r.status_code == 200, (name, r.text)
            scores = [p["score"] for p in r.json()["predictions"]]
        assert np.allclose(scores, model.predict(data), atol=1e-6), name


def test_a_null_feature_is_a_422_or_a_score_never_a_500(served):
    client, models = served
    for name in models:
        r = client.post(f"/predict/{name}", json=[{"a": 0.3, "b": None}])
        assert r.status_code in (200, 422), (name, r.status_code, r.text)
        if r.status_code == 422:
            assert "b" in r.text, (name, r.text)
