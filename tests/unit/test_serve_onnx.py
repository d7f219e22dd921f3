"""ONNX conversion: parity with LightGBM and scikit-learn, int8 for networks, the onnx flavor everywhere."""

from __future__ import annotations

import httpx
import lightgbm
import numpy as np
import pytest
from river import linear_model
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from typer.testing import CliRunner

from tidal.models import ScoreStep, load_model, save_model
from tidal.serve import ModelRepository, ModelServer
from tidal.serve.onnx import ConversionError, OnnxModel, convert
from tidal.stream.batch import Batch

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

RNG = np.random.default_rng(3)
X = np.column_stack([RNG.normal(50, 20, 3000), RNG.random(3000), RNG.integers(0, 4, 3000)])
Y = ((X[:, 0] > 55) ^ (X[:, 1] > 0.7) | (X[:, 2] == 3)).astype(int)
FEATURES = ["amount", "ratio", "merchant"]
CATS = {"merchant": ["fuel", "food", "travel", "online"]}


def fresh(n: int = 500, nan: bool = False) -> np.ndarray:
    rng = np.random.default_rng(99)
    Xn = np.column_stack([rng.normal(50, 25, n), rng.random(n) * 1.2, rng.integers(0, 4, n)]).astype(np.float64)
    if nan:
        Xn[::9, 0] = np.nan
        Xn[::13, 2] = np.nan  # unknown category
    return Xn


def roundtrip(model, tmp_path, flavor=None, task="binary", **kw):
    src = tmp_path / "src"
    save_model(model, src, "m", 4, FEATURES, categories=CATS, flavor=flavor, task=task, threshold=0.4)
    report = convert(src, tmp_path / "onnx", **kw)
    return load_model(src), load_model(tmp_path / "onnx"), report


def test_lightgbm_classifier_parity_including_missing_values(tmp_path):
    model = lightgbm.LGBMClassifier(n_estimators=60, num_leaves=15, n_jobs=1, verbose=-1).fit(X, Y)
    original, onnx, report = roundtrip(model, tmp_path)
    assert onnx.card.flavor == "onnx" and onnx.card.file == "model.onnx" and report.max_abs_diff < 1e-4
    assert (onnx.card.features, onnx.card.categories, onnx.card.threshold) == (FEATURES, CATS, 0.4)
    assert onnx.card.lineage["converted_from"]["sha256"] == original.card.sha256
    Xn = fresh(nan=True)
    np.testing.assert_allclose(onnx.predict(Xn), original.predict(Xn), atol=1e-5)


def test_lightgbm_regressor_parity(tmp_path):
    model = lightgbm.LGBMRegressor(n_estimators=40, n_jobs=1, verbose=-1).fit(X, X[:, 0] * 2 + X[:, 1])
    original, onnx, _ = roundtrip(model, tmp_path, task="regression")
    np.testing.assert_allclose(onnx.predict(fresh()), original.predict(fresh()), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("model", [
    make_pipeline(StandardScaler(), LogisticRegression()),
    RandomForestClassifier(n_estimators=15, max_depth=6, random_state=0),
], ids=["scaler+logistic", "random-forest"])
def test_sklearn_parity(tmp_path, model):
    original, onnx, report = roundtrip(model.fit(X, Y), tmp_path)
    assert report.rows == 2000 and not report.quantized
    np.testing.assert_allclose(onnx.predict(fresh()), original.predict(fresh()), atol=1e-5)


def test_mlp_is_quantized_to_int8_within_the_stated_tolerance(tmp_path):
    mlp = make_pipeline(StandardScaler(), MLPClassifier((32, 16), max_iter=200, random_state=0)).fit(X, Y)
    original, onnx, report = roundtrip(mlp, tmp_path, sample=fresh(1000))  # mean diff <= 0.01, 99% same decisions
    assert report.quantized, report.quantize_note
    assert onnx.card.lineage["quantized"] is True and "int8" in onnx.card.lineage["quantize_note"]
    ops = {n.op_type for n in __import__("onnx").load(str(tmp_path / "onnx" / "model.onnx")).graph.node}
    assert ops & {"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul"}, ops
    diff = np.abs(onnx.predict(fresh()) - original.predict(fresh()))  # rows the check did not see
    assert diff.mean() <= 0.01
    assert ((onnx.predict(fresh()) >= 0.4) == (original.predict(fresh()) >= 0.4)).mean() >= 0.98


def test_quantization_beyond_tolerance_keeps_float_or_fails_when_demanded(tmp_path):
    mlp = make_pipeline(StandardScaler(), MLPClassifier((16,), max_iter=60, random_state=0)).fit(X, Y)
    _, onnx, report = roundtrip(mlp, tmp_path, quantize_atol=0.0)  # no int8 error is that small
    assert not report.quantized and "not kept" in report.quantize_note
    ops = {n.op_type for n in __import__("onnx").load(str(tmp_path / "onnx" / "model.onnx")).graph.node}
    assert not ops & {"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul"}, ops  # float32 saved
    with pytest.raises(ConversionError, match="exceeds its tolerance: mean"):
        convert(tmp_path / "src", tmp_path / "q", quantize=True, quantize_agreement=1.01)
    with pytest.raises(ConversionError, match="neural networks only"):
        save_model(LogisticRegression().fit(X, Y), tmp_path / "lr", "lr", 1, FEATURES)
        convert(tmp_path / "lr", tmp_path / "lr-onnx", quantize=True)


def test_a_parity_mismatch_fails_loudly_and_saves_nothing(tmp_path, monkeypatch):
    save_model(LogisticRegression().fit(X, Y), tmp_path / "src", "m", 1, FEATURES)
    real = OnnxModel.predict
    monkeypatch.setattr(OnnxModel, "predict", lambda self, X: real(self, X) + 0.01)
    with pytest.raises(ConversionError, match=r"2000 of 2000 sample rows differ beyond atol=0.0001"):
        convert(tmp_path / "src", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unsupported_flavor_is_refused(tmp_path):
    save_model(linear_model.LogisticRegression(), tmp_path / "river", "r", 1, ["a"], flavor="river")
    with pytest.raises(ConversionError, match="'river' cannot be converted"):
        convert(tmp_path / "river", tmp_path / "out")


def test_onnx_models_score_in_the_stream_engine_and_the_server(tmp_path):
    model = lightgbm.LGBMClassifier(n_estimators=30, n_jobs=1, verbose=-1).fit(X, Y)
    original, onnx, _ = roundtrip(model, tmp_path)
    rows = [{"amount": float(a), "ratio": float(r), "merchant": CATS["merchant"][int(m)]} for a, r, m in fresh(50)]
    out = ScoreStep(onnx).process(Batch.from_rows(rows, types={"merchant": "str"}))
    ref = ScoreStep(original).process(Batch.from_rows(rows, types={"merchant": "str"}))
    np.testing.assert_allclose(out.columns["score"], ref.columns["score"], atol=1e-5)
    assert out.columns["model_version"][0] == "4-onnx"
    repo = ModelRepository()
    repo.add_folder(tmp_path / "onnx")
    with ModelServer(repo).start() as s:
        assert httpx.get(f"{s.url}/v2/models/m").json()["platform"] == "onnxruntime_onnx"
        answer = httpx.post(f"{s.url}/predict/m", json=rows).json()
    np.testing.assert_allclose([p["score"] for p in answer["predictions"]], ref.columns["score"], atol=1e-5)


def test_convert_command_saves_and_registers(tmp_path):
    from tidal.cli.main import app
    from tidal.registry import Registry

    save_model(lightgbm.LGBMClassifier(n_estimators=10, n_jobs=1, verbose=-1).fit(X, Y), tmp_path / "src", "fraud", 1,
               FEATURES, categories=CATS)
    np.save(tmp_path / "sample.npy", fresh(300))
    runner = CliRunner()
    r = runner.invoke(app, ["convert", str(tmp_path / "src"), "--out", str(tmp_path / "o"),
                            "--sample", str(tmp_path / "sample.npy")])
    assert r.exit_code == 0, r.output
    assert "parity on 300 rows" in r.output and load_model(tmp_path / "o").card.flavor == "onnx"
    registry = Registry(tmp_path / "reg")
    registry.register("fraud", folder=tmp_path / "src")
    r = runner.invoke(app, ["models", "convert", "models:/fraud/1", "--registry", str(tmp_path / "reg")])
    assert r.exit_code == 0, r.output  # also reachable as `tidal models convert`
    assert "registered models:/fraud/2" in r.output
    assert registry.load("models:/fraud/2").card.flavor == "onnx"
    csv = "amount,merchant,ratio\n" + "".join(f"{a},{CATS['merchant'][int(m)]},{r}\n" for a, r, m in fresh(40))
    (tmp_path / "sample.csv").write_text(csv + ",unknown-shop,0.5\n")  # any column order; blanks → NaN
    r = runner.invoke(app, ["convert", str(tmp_path / "src"), "--out", str(tmp_path / "o4"),
                            "--sample", str(tmp_path / "sample.csv")])
    assert r.exit_code == 0 and "parity on 41 rows" in r.output, r.output
    save_model(linear_model.LogisticRegression(), tmp_path / "river", "r", 1, ["a"], flavor="river")
    r = runner.invoke(app, ["convert", str(tmp_path / "river"), "--out", str(tmp_path / "o3")])
    assert r.exit_code == 1 and "cannot be converted" in r.output
