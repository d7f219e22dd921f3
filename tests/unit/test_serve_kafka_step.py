"""The Kafka adapter's step without a broker: headers → model, request ids, responses, dead letters."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from sklearn.linear_model import LogisticRegression
from typer.testing import CliRunner

from tidal.cli.main import app
from tidal.models import load_model, save_model
from tidal.serve import DataPlane, ModelRepository
from tidal.serve.kafka import InferenceRequestStep, inference_pipeline

X = np.random.default_rng(0).random((200, 2))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("kafka-step")
    out = {}
    for name, version, y in (("a", 1, X.sum(1) > 1), ("b", 2, X[:, 0] > 0.5)):
        save_model(LogisticRegression().fit(X, y.astype(int)), root / name, name, version, ["x", "y"])
        out[name] = root / name
    return out


def body(rows, rid=None, **extra) -> bytes:
    rows = np.asarray(rows, dtype=float)
    b = {"inputs": [{"name": "x", "shape": [len(rows)], "datatype": "FP64", "data": rows[:, 0].tolist()},
                    {"name": "y", "shape": [len(rows)], "datatype": "FP64", "data": rows[:, 1].tolist()}], **extra}
    if rid is not None:
        b["id"] = rid
    return orjson.dumps(b)


def run(folders, names, values, headers=None):
    repo = ModelRepository()
    for n in names:
        repo.add_folder(folders[n])
    plane = DataPlane(repo, max_batch_size=1024, max_batch_time=5.0)  # a long timer: only the flush sends
    step = InferenceRequestStep(plane, "out")
    p = inference_pipeline(step, "in")
    side = []
    outputs, dlq = p.test(values, side=side, headers=headers)
    assert outputs == []  # nothing for the sink: answers are side outputs with headers
    step.close()
    plane.close()
    return step, plane, side, dlq


def test_headers_pick_the_model_and_come_back_with_the_correlation_id(folders):
    values = [body(X[:3], "r0"), body(X[3:4]), body(X[4:5], "r2"), body(X[5:6])]
    headers = [[("mlserver-model", b"a"), ("trace", b"t0")], [("tidal-model", b"b"), ("tidal-request-id", b"h1")],
               [("mlserver-model", b"b"), ("mlserver-version", b"2"), ("tidal-request-id", b"ignored")],
               [("tidal-model", b"a")]]
    step, plane, side, dlq = run(folders, ["a", "b"], values, headers)
    assert dlq == [] and step.answered == 4
    answers = [(orjson.loads(r.value), dict(r.headers)) for r in side]
    assert [a["id"] for a, _ in answers] == ["r0", "h1", "r2", "in-0-3"]  # body, header, (key), position
    assert [a["model_name"] for a, _ in answers] == ["a", "b", "b", "a"]
    assert all(r.topic == "out" for r in side)
    first, h = answers[0]
    assert h["trace"] == b"t0" and h["tidal-request-id"] == h["Ce-Requestid"] == b"r0"
    assert h["tidal-model"] == b"a" and h["tidal-model-version"] == b"1" and h["Ce-Modelid"] == b"a"
    assert dict(side[2].headers)["tidal-request-id"] == b"r2"  # the body's id wins over the header's
    np.testing.assert_allclose(first["outputs"][0]["data"], load_model(folders["a"]).predict(X[:3]), rtol=1e-12)
    # 2 requests for a: one model call, sent by the flush (the 5 s timer never ran)
    assert plane.metrics.value("tidal_serve_model_calls_total", model_name="a", model_version="1") == 1


def test_the_only_model_answers_requests_without_a_header(folders):
    step, _plane, side, dlq = run(folders, ["a"], [body(X[:2], "r0")])
    assert dlq == [] and orjson.loads(side[0].value)["model_name"] == "a"


def test_malformed_requests_are_dead_letters_with_reasons(folders):
    values = [b"{not json", b'{"id": "x"}', body(X[:1]), body(X[:1]), body(X[:1]),
              orjson.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [0.5]}]}),
              orjson.dumps({"inputs": [{"name": "x", "shape": [3], "datatype": "FP64", "data": [0.5]},
                                       {"name": "y", "shape": [3], "datatype": "FP64", "data": [0.5]}]}),
              body(X[:1], outputs=[{"name": "nope"}]), body(X[:2], "ok")]
    headers = [None, [("tidal-model", b"a")], None, [("mlserver-model", b"zzz")],
               [("mlserver-model", b"a"), ("mlserver-version", b"7")], [("tidal-model", b"a")],
               [("tidal-model", b"a")], [("tidal-model", b"a")], [("tidal-model", b"b")]]
    step, plane, side, dlq = run(folders, ["a", "b"], values, headers)
    assert [(r.offset, r.reason) for r in dlq] == [
        (0, "invalid_json"), (1, "invalid_request"), (2, "unknown_model"), (3, "unknown_model"),
        (4, "unknown_model"), (5, "invalid_input"), (6, "invalid_input"), (7, "invalid_input")]
    assert all(r.value == values[r.offset] for r in dlq)  # the original bytes
    assert "mlserver-model" in dlq[2].message and "zzz" in dlq[3].message
    assert [orjson.loads(r.value)["id"] for r in side] == ["ok"]
    assert plane.metrics.value("tidal_serve_errors_total", status="404") == 3


def test_cli_needs_an_input_topic_for_an_output_topic(folders):
    result = CliRunner().invoke(app, ["serve", str(folders["a"]), "--kafka-output", "x"])
    assert result.exit_code == 2 and "--kafka-input" in result.output


def test_cli_http_goes_with_an_input_topic(folders):
    result = CliRunner().invoke(app, ["serve", str(folders["a"]), "--http"])
    assert result.exit_code == 2 and "--http goes with --kafka-input" in result.output
