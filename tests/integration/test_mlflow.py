"""An MLflow model imported into the registry, deployed by canary over tidal.models, scored in a pipeline."""

from __future__ import annotations

import threading
import time

import numpy as np
import orjson
import pytest

mlflow = pytest.importorskip("mlflow")
pd = pytest.importorskip("pandas")

import mlflow.pyfunc  # noqa: E402
import mlflow.sklearn  # noqa: E402
from mlflow.models import ModelSignature  # noqa: E402
from mlflow.types import ColSpec, Schema  # noqa: E402

from tidal.broker import ensure_topics  # noqa: E402
from tidal.models.deployed import DeployedScoreStep  # noqa: E402
from tidal.quality import Schema as TidalSchema  # noqa: E402
from tidal.registry import KafkaPublisher, Registry  # noqa: E402
from tidal.registry.mlflow_io import import_mlflow  # noqa: E402
from tidal.stream import Pipeline, Worker  # noqa: E402

from .kafka_helpers import produce, read_all, records  # noqa: E402

pytestmark = pytest.mark.integration

SCHEMA = TidalSchema.from_dict({"id": "int", "x": "float", "y": "float"})
SIGNATURE = ModelSignature(inputs=Schema([ColSpec("double", "x"), ColSpec("double", "y")]))


class Logistic(mlflow.pyfunc.PythonModel):
    """Two columns, [P(negative), P(positive)], with P = logistic(4 (x - y))."""

    def predict(self, context, model_input, params=None):
        p = 1 / (1 + np.exp(-4 * (model_input["x"] - model_input["y"])))
        return pd.DataFrame({"no": 1 - p, "yes": p})


def wait_outputs(settings, topic: str, n: int, timeout: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout
    out: list[dict] = []
    while time.monotonic() < deadline:
        out = records(read_all(settings, topic, 4))
        if len(out) >= n:
            return out
        time.sleep(0.3)
    raise AssertionError(f"{len(out)} of {n} outputs within {timeout}s")


def test_an_imported_mlflow_model_is_canaried_and_scores_its_rows(settings, name, tmp_path, monkeypatch):
    from sklearn.linear_model import LogisticRegression

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    store = f"file:{tmp_path}/mlruns"
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(store)
    try:
        rng = np.random.default_rng(5)
        train = pd.DataFrame({"x": rng.random(500), "y": rng.random(500)})
        sk = LogisticRegression().fit(train, (train.x + train.y > 1).astype(int))
        with mlflow.start_run() as run:
            mlflow.sklearn.log_model(sk, name="model", signature=SIGNATURE)
        with mlflow.start_run() as run2:
            mlflow.pyfunc.log_model(name="custom", python_model=Logistic(), signature=SIGNATURE)
    finally:
        mlflow.set_tracking_uri(before)

    model = f"m-{name}"
    registry = Registry(tmp_path / "registry", publisher=KafkaPublisher(settings))
    champion = import_mlflow(registry, f"runs:/{run.info.run_id}/model", name=model, tracking_uri=store)
    canary = import_mlflow(registry, f"runs:/{run2.info.run_id}/custom", name=model, tracking_uri=store)
    assert (champion.version, champion.flavor, canary.version, canary.flavor) == (1, "sklearn", 2, "mlflow_pyfunc")
    assert canary.features == ["x", "y"] and canary.lineage["mlflow"]["run_id"] == run2.info.run_id
    registry.promote(model, 1, reason="imported from MLflow", features=["x", "y"])
    registry.deploy(model, "canary", 1, 2, share=0.3, reason="MLflow pyfunc canary")

    p = Pipeline(name, schema=SCHEMA, max_batch=200, max_wait_ms=20,
                 steps=[DeployedScoreStep(model, wait_s=20, registry=Registry(tmp_path / "registry"))])
    ensure_topics(settings, p.topic_specs())
    worker = Worker(p, settings)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        xy = np.random.default_rng(9).random((1000, 2))
        values = [orjson.dumps({"id": i, "x": float(a), "y": float(b)}) for i, (a, b) in enumerate(xy.tolist())]
        produce(settings, f"{name}.events", values, [b"key-%d" % i for i in range(1000)])
        out = wait_outputs(settings, f"{name}.predictions", 1000)
    finally:
        worker.stop()
        thread.join(20)

    assert sorted(r["id"] for r in out) == list(range(1000))
    by_version = {v: [r for r in out if r["model_version"] == v] for v in ("1", "2")}
    assert 0.2 <= len(by_version["2"]) / 1000 <= 0.4  # the canary's share of keys
    for version, rows in by_version.items():
        X = np.array([[r["x"], r["y"]] for r in rows])
        want = (sk.predict_proba(pd.DataFrame(X, columns=["x", "y"]))[:, 1] if version == "1"
                else 1 / (1 + np.exp(-4 * (X[:, 0] - X[:, 1]))))
        np.testing.assert_allclose([r["score"] for r in rows], want, rtol=1e-12, atol=1e-15)
    assert registry.deployment(model).mode == "canary"  # the canary scored cleanly: no auto-rollback
