"""MLflow models in and out: `tidal models import` / `export --mlflow` against a real local MLflow file store."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

mlflow = pytest.importorskip("mlflow")
pd = pytest.importorskip("pandas")

import mlflow.pyfunc  # noqa: E402
import mlflow.sklearn  # noqa: E402
from mlflow.models import ModelSignature, infer_signature  # noqa: E402
from mlflow.types import ColSpec, Schema  # noqa: E402

from tidal.models import save_model  # noqa: E402
from tidal.registry import Registry, RegistryError  # noqa: E402
from tidal.registry.mlflow_io import export_mlflow, import_mlflow  # noqa: E402

FEATURES = ["amount", "hour", "n"]


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A local MLflow file store (``file:<tmp>/mlruns``) as the tracking and registry URI."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"file:{tmp_path}/mlruns"
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(before)


@pytest.fixture(scope="module")
def frame():
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"amount": rng.random(300), "hour": rng.random(300), "n": rng.integers(0, 5, 300)})
    y = ((df.amount + 0.1 * df.n - df.hour) > 0.2).astype(int)
    return df, y


def log_sklearn(frame, registered: str | None = None, **extra):
    from sklearn.linear_model import LogisticRegression

    df, y = frame
    model = LogisticRegression().fit(df, y)
    with mlflow.start_run() as run:
        mlflow.log_metric("auc", 0.91)
        mlflow.log_param("C", "1.0")
        mlflow.set_tag("mlflow.source.git.commit", "abc123")
        mlflow.sklearn.log_model(model, name="model", signature=infer_signature(df, model.predict_proba(df)[:, 1]),
                                 registered_model_name=registered, **extra)
    return model, run.info.run_id


def make_two_column_model():
    class TwoColumns(mlflow.pyfunc.PythonModel):
        """[P(negative), P(positive)] from a logistic of amount - hour + n / 10."""

        def predict(self, context, model_input, params=None):
            p = 1 / (1 + np.exp(-(model_input["amount"] - model_input["hour"] + model_input["n"] / 10)))
            return pd.DataFrame({"no": 1 - p, "yes": p})

    return TwoColumns()


def expected_two_columns(df):
    return (1 / (1 + np.exp(-(df.amount - df.hour + df.n / 10)))).to_numpy()


def test_a_sklearn_model_by_run_uri_and_by_path_scores_as_predict_proba(store, frame, tmp_path):
    df, _ = frame
    model, run_id = log_sklearn(frame)
    reg = Registry(tmp_path / "reg")
    mv = import_mlflow(reg, f"runs:/{run_id}/model", name="fraud")
    assert (mv.uri, mv.flavor, mv.features) == ("models:/fraud/1", "sklearn", FEATURES)
    assert mv.signature == {"amount": "float", "hour": "float", "n": "int"}  # MLflow's long -> int
    assert mv.lineage["mlflow"]["run_id"] == run_id and mv.lineage["mlflow"]["source"] == f"runs:/{run_id}/model"
    assert mv.lineage["mlflow"]["tracking_uri"] == store and mv.lineage["mlflow"]["flavor"] == "sklearn"
    assert mv.lineage["code_version"] == "abc123"  # the run's git commit, not this checkout's
    assert mv.tags["mlflow.run_id"] == run_id and mv.metrics == {"auc": 0.91} and mv.params == {"C": "1.0"}
    loaded = reg.load(mv.uri)
    X = df[FEATURES].to_numpy(dtype=np.float64)
    assert np.array_equal(loaded.predict(X), model.predict_proba(df)[:, 1])  # exactly tidal's own sklearn scoring
    assert loaded.card.task == "binary"

    folder = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model", dst_path=str(tmp_path / "dl"))
    by_path = import_mlflow(Registry(tmp_path / "reg2"), folder)
    assert by_path.name == "model" and by_path.features == FEATURES and by_path.flavor == "sklearn"
    assert by_path.lineage["mlflow"]["run_id"] == run_id and by_path.lineage["mlflow"]["source"] == folder
    assert by_path.lineage["mlflow"]["tracking_uri"] is None
    with pytest.raises(RegistryError, match="already registered as models:/fraud/1"):  # the same model file
        import_mlflow(reg, folder, name="again")


def test_a_registered_mlflow_model_keeps_its_name_and_version(store, frame, tmp_path):
    model, run_id = log_sklearn(frame, registered="churn")
    mv = import_mlflow(Registry(tmp_path / "reg"), "models:/churn/1", tracking_uri=store)
    assert mv.name == "churn" and mv.lineage["mlflow"]["registered_model"] == {"name": "churn", "version": "1"}
    assert mv.lineage["mlflow"]["run_id"] == run_id and mv.tags["mlflow.source"] == "models:/churn/1"


def test_a_column_order_other_than_the_signature_is_the_models(store, frame, tmp_path):
    from sklearn.linear_model import LogisticRegression

    df, y = frame
    model = LogisticRegression().fit(df[["n", "amount", "hour"]], y)
    folder = tmp_path / "m"
    signature = ModelSignature(inputs=Schema([ColSpec("double", f) for f in FEATURES]))  # another order
    mlflow.sklearn.save_model(model, str(folder), signature=signature)
    mv = import_mlflow(Registry(tmp_path / "reg"), folder, name="m")
    assert mv.features == ["n", "amount", "hour"]
    scores = Registry(tmp_path / "reg").load(mv.uri).predict(df[mv.features].to_numpy(dtype=np.float64))
    assert np.array_equal(scores, model.predict_proba(df[["n", "amount", "hour"]])[:, 1])


def test_a_pyfunc_model_scores_through_mlflow_one_call_per_batch(store, frame, tmp_path):
    df, _ = frame
    signature = ModelSignature(inputs=Schema([ColSpec("double", "amount"), ColSpec("double", "hour"),
                                              ColSpec("long", "n")]))
    with mlflow.start_run() as run:
        mlflow.pyfunc.log_model(name="model", python_model=make_two_column_model(), signature=signature)
    reg = Registry(tmp_path / "reg")
    mv = import_mlflow(reg, f"runs:/{run.info.run_id}/model", name="custom")
    assert mv.flavor == "mlflow_pyfunc" and mv.features == FEATURES and mv.signature["n"] == "int"
    assert mv.lineage["mlflow"]["flavor"] == "python_function" and mv.tags["mlflow.run_id"] == run.info.run_id
    loaded = reg.load(mv.uri)  # the folder zipped into one checksummed file, unpacked and loaded again
    assert loaded.card.file == "model.mlflow.zip"
    X = df[FEATURES].to_numpy(dtype=np.float64)
    calls = []
    pyfunc = loaded.model.pyfunc
    real = pyfunc.predict
    pyfunc.predict = lambda data, *a, **k: calls.append(data) or real(data, *a, **k)
    scores = loaded.predict(X)
    assert len(calls) == 1 and list(calls[0].columns) == FEATURES and calls[0]["n"].dtype == np.int64
    np.testing.assert_allclose(scores, expected_two_columns(df), rtol=0, atol=1e-12)  # the positive column


def test_a_lightgbm_model_becomes_tidals_lightgbm(store, frame, tmp_path):
    import lightgbm
    import mlflow.lightgbm

    df, y = frame
    model = lightgbm.LGBMClassifier(n_estimators=10, n_jobs=1, verbose=-1).fit(df, y)
    mlflow.lightgbm.save_model(model, str(tmp_path / "lgb"), signature=infer_signature(df))
    reg = Registry(tmp_path / "reg")
    mv = import_mlflow(reg, tmp_path / "lgb", name="lgb")
    assert mv.flavor == "lightgbm" and mv.features == FEATURES
    scores = reg.load(mv.uri).predict(df[FEATURES].to_numpy(dtype=np.float64))
    np.testing.assert_allclose(scores, model.predict_proba(df)[:, 1], rtol=0, atol=1e-12)


def test_an_onnx_model_becomes_tidals_onnx_and_needs_features_without_a_column_signature(store, frame, tmp_path):
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    import mlflow.onnx
    from sklearn.linear_model import LogisticRegression

    from tidal.models.runtimes import OnnxModel, runtime_for

    df, y = frame
    X = df[FEATURES].to_numpy(dtype=np.float64)
    graph = runtime_for("sklearn").to_onnx(LogisticRegression().fit(X, y), len(FEATURES))
    mlflow.onnx.save_model(onnx.load_from_string(graph), str(tmp_path / "onnx"))
    reg = Registry(tmp_path / "reg")
    with pytest.raises(RegistryError, match="no column signature"):
        import_mlflow(reg, tmp_path / "onnx", name="o")
    mv = import_mlflow(reg, tmp_path / "onnx", name="o", features=FEATURES)
    assert mv.flavor == "onnx" and mv.features == FEATURES
    np.testing.assert_allclose(reg.load(mv.uri).predict(X), OnnxModel(graph).predict(X), rtol=0, atol=1e-7)


def test_string_inputs_are_refused(store, tmp_path):
    folder = tmp_path / "s"
    mlflow.pyfunc.save_model(str(folder), python_model=make_two_column_model(),
                             signature=ModelSignature(inputs=Schema([ColSpec("string", "merchant")])))
    with pytest.raises(RegistryError, match="'merchant' is string; tidal feeds models numeric features"):
        import_mlflow(Registry(tmp_path / "reg"), folder, name="s")


def test_export_loads_in_mlflow_and_scores_as_tidal(store, frame, tmp_path):
    import lightgbm

    df, y = frame
    reg = Registry(tmp_path / "reg")
    lgb = lightgbm.LGBMClassifier(n_estimators=10, n_jobs=1, verbose=-1).fit(df.to_numpy(dtype=float), y)
    mv = reg.register("native", lgb, features={"amount": "float", "hour": "float", "n": "int"})
    out = export_mlflow(reg, "native/1", tmp_path / "exported")
    exported = mlflow.pyfunc.load_model(str(out))
    assert exported.metadata.get_input_schema().input_names() == FEATURES
    assert exported.metadata.metadata["tidal"]["uri"] == "models:/native/1"
    scores = np.asarray(exported.predict(df))
    assert np.array_equal(scores, reg.load(mv.uri).predict(df.to_numpy(dtype=np.float64)))
    with pytest.raises(RegistryError, match="not an empty folder"):
        export_mlflow(reg, "native/1", out)

    # categories: the MLflow input is a string column, scored with tidal's codes
    from sklearn.linear_model import LogisticRegression

    merchant = np.where(df.n.to_numpy() > 2, "fuel", "food")
    X = np.column_stack([df.amount, (merchant == "fuel").astype(float)])
    save_model(LogisticRegression().fit(X, y), tmp_path / "cat", "cat", 1, ["amount", "merchant"],
               categories={"merchant": ["food", "fuel"]})
    cat = reg.register("cat", folder=tmp_path / "cat")
    exported = mlflow.pyfunc.load_model(str(export_mlflow(reg, "cat@latest", tmp_path / "cat-mlflow")))
    assert [c.type.name for c in exported.metadata.get_input_schema().inputs] == ["double", "string"]
    scores = np.asarray(exported.predict(pd.DataFrame({"amount": df.amount, "merchant": merchant})))
    assert np.array_equal(scores, reg.load(cat.uri).predict(X))


def test_an_imported_pyfunc_model_exports_back(store, frame, tmp_path):
    df, _ = frame
    folder = tmp_path / "py"
    mlflow.pyfunc.save_model(str(folder), python_model=make_two_column_model(),
                             signature=ModelSignature(inputs=Schema([ColSpec("double", f) for f in FEATURES])))
    reg = Registry(tmp_path / "reg")
    import_mlflow(reg, folder, name="py")
    exported = mlflow.pyfunc.load_model(str(export_mlflow(reg, "py/1", tmp_path / "again")))
    np.testing.assert_allclose(np.asarray(exported.predict(df.astype(float))), expected_two_columns(df), atol=1e-12)


def test_cli_import_and_export(store, frame, tmp_path):
    from typer.testing import CliRunner

    from tidal.cli.main import app

    df, _ = frame
    model, run_id = log_sklearn(frame)
    runner = CliRunner()
    r = runner.invoke(app, ["models", "import", f"runs:/{run_id}/model", "--name", "fraud", "--tracking-uri", store,
                            "--registry", str(tmp_path / "reg"), "--json"])
    assert r.exit_code == 0, r.output
    shown = json.loads(r.output)
    assert shown["uri"] == "models:/fraud/1" and shown["lineage"]["mlflow"]["run_id"] == run_id
    r = runner.invoke(app, ["models", "export", "fraud/1", "--mlflow", str(tmp_path / "out"),
                            "--registry", str(tmp_path / "reg")])
    assert r.exit_code == 0, r.output
    scores = np.asarray(mlflow.pyfunc.load_model(str(tmp_path / "out")).predict(df))
    tidal_own = Registry(tmp_path / "reg").load("fraud/1")
    assert np.array_equal(scores, tidal_own.predict(tidal_own.features_matrix(lambda f: df[f].to_numpy())))
    np.testing.assert_allclose(scores, model.predict_proba(df)[:, 1], rtol=1e-12, atol=0)
    r = runner.invoke(app, ["models", "import", str(tmp_path / "nope"), "--registry", str(tmp_path / "reg")])
    assert r.exit_code == 2 and "no such folder" in r.output


def test_without_the_extra_the_cli_names_it(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        sys.modules["mlflow"] = None  # as if tidal[mlflow] were not installed
        sys.argv = ["tidal", "models", "import", {str(tmp_path)!r}, "--registry", {str(tmp_path / "reg")!r}]
        from tidal.cli.main import main
        main()
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        "error: this needs mlflow, which the lean install leaves out: pip install 'tidal[mlflow]'"]
