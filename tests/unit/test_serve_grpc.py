"""The model server's OIP v2 gRPC service on loopback: the generated stub and tritonclient.grpc as clients."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import lightgbm
import numpy as np
import pytest
from sklearn.linear_model import LinearRegression

from tidal.config import KafkaSettings
from tidal.models import load_model, save_model
from tidal.models.deployed import key_buckets
from tidal.models.follower import DeploymentFollower
from tidal.registry.deployment import Deployment, Target
from tidal.serve import ModelRepository, ModelServer
from tidal.serve.grpc_stubs import load as load_stubs

pb2, pb2_grpc = load_stubs()

FEATURES = ["x", "y", "c"]
CATS = {"c": ["a", "b", "c"]}
ROWS = [(0.9, 0.8, "a"), (0.1, 0.2, "b"), (0.6, 0.5, "zz")]  # zz: an unknown category → NaN


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.random((3000, 2)), rng.integers(0, 3, 3000)])
    root = tmp_path_factory.mktemp("grpc-models")
    m1 = lightgbm.LGBMClassifier(n_estimators=15, n_jobs=1, verbose=-1).fit(X, (X[:, 0] + X[:, 1] > 1).astype(int))
    m2 = lightgbm.LGBMClassifier(n_estimators=15, n_jobs=1, verbose=-1).fit(X, (X[:, 0] > 0.5).astype(int))
    save_model(m1, root / "toy-1", "toy", 1, FEATURES, categories=CATS)
    save_model(m2, root / "toy-2", "toy", 2, FEATURES, categories=CATS)
    save_model(LinearRegression().fit(X[:, :2], X[:, 0] * 3), root / "reg-1", "reg", 1, ["x", "y"], task="regression")
    return root


@pytest.fixture(scope="module")
def server(folders):
    repo = ModelRepository()
    repo.add_folder(folders / "toy-1")
    repo.add_folder(folders / "reg-1")
    with ModelServer(repo, max_body_bytes=200_000, max_rows=1000, grpc_port=0).start() as s:
        yield s


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.grpc_address) as channel:
        yield pb2_grpc.GRPCInferenceServiceStub(channel)


def local_scores(folder, rows) -> np.ndarray:
    m = load_model(folder)
    cols = {"x": np.array([r[0] for r in rows]), "y": np.array([r[1] for r in rows], dtype=np.float32),
            "c": np.array([r[2] for r in rows], dtype=object)}
    return m.predict(m.features_matrix(cols.__getitem__))


def contents_request(rows, model="toy", **kw):
    req = pb2.ModelInferRequest(model_name=model, **kw)
    n = len(rows)
    req.inputs.add(name="x", datatype="FP64", shape=[n]).contents.fp64_contents.extend([r[0] for r in rows])
    req.inputs.add(name="y", datatype="FP32", shape=[n, 1]).contents.fp32_contents.extend([r[1] for r in rows])
    req.inputs.add(name="c", datatype="BYTES", shape=[n]).contents.bytes_contents.extend([r[2].encode() for r in rows])
    return req


def raw_request(rows, model="toy"):
    req = pb2.ModelInferRequest(model_name=model)
    n = len(rows)
    req.inputs.add(name="x", datatype="FP64", shape=[n])
    req.inputs.add(name="y", datatype="FP32", shape=[n])
    req.inputs.add(name="c", datatype="BYTES", shape=[n])
    strings = b"".join(len(r[2]).to_bytes(4, "little") + r[2].encode() for r in rows)
    req.raw_input_contents.extend([np.array([r[0] for r in rows], "<f8").tobytes(),
                                   np.array([r[1] for r in rows], "<f4").tobytes(), strings])
    return req


def outputs(response) -> dict[str, np.ndarray]:
    kinds = {"FP64": "<f8", "BOOL": "?"}
    assert len(response.raw_output_contents) == len(response.outputs)
    return {o.name: np.frombuffer(raw, kinds[o.datatype]).reshape(list(o.shape))
            for o, raw in zip(response.outputs, response.raw_output_contents)}


def code_of(call, *args, **kw) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kw)
    return info.value.code(), info.value.details()


def test_health_rpcs(stub):
    assert stub.ServerLive(pb2.ServerLiveRequest()).live is True
    assert stub.ServerReady(pb2.ServerReadyRequest()).ready is True
    assert stub.ModelReady(pb2.ModelReadyRequest(name="toy")).ready is True
    assert stub.ModelReady(pb2.ModelReadyRequest(name="toy", version="1")).ready is True
    assert code_of(stub.ModelReady, pb2.ModelReadyRequest(name="nope"))[0] == grpc.StatusCode.NOT_FOUND
    assert code_of(stub.ModelReady, pb2.ModelReadyRequest(name="toy", version="7"))[0] == grpc.StatusCode.NOT_FOUND


def test_server_and_model_metadata(stub, server):
    meta = stub.ServerMetadata(pb2.ServerMetadataRequest())
    assert meta.name == "tidal" and meta.version and "model_repository" in meta.extensions
    for version in ("", "1"):
        m = stub.ModelMetadata(pb2.ModelMetadataRequest(name="toy", version=version))
        assert (m.name, list(m.versions), m.platform) == ("toy", ["1"], "lightgbm")
        assert [(t.name, t.datatype, list(t.shape)) for t in m.inputs] == [
            ("x", "FP64", [-1]), ("y", "FP64", [-1]), ("c", "BYTES", [-1])]
        assert [t.name for t in m.outputs] == ["score", "decision"]
    assert code_of(stub.ModelMetadata, pb2.ModelMetadataRequest(name="nope"))[0] == grpc.StatusCode.NOT_FOUND


def test_infer_with_contents_matches_the_model_and_the_http_endpoint(stub, server, folders):
    expected = local_scores(folders / "toy-1", ROWS)
    for version in ("", "1"):
        r = stub.ModelInfer(contents_request(ROWS, id="req-1", model_version=version))
        assert (r.model_name, r.model_version, r.id) == ("toy", "1", "req-1")
        assert [(o.name, o.datatype, list(o.shape)) for o in r.outputs] == [("score", "FP64", [3]),
                                                                            ("decision", "BOOL", [3])]
        out = outputs(r)
        np.testing.assert_allclose(out["score"], expected, rtol=1e-9)
        assert out["decision"].tolist() == (out["score"] >= 0.5).tolist()
    body = {"inputs": [{"name": "x", "shape": [3], "datatype": "FP64", "data": [r[0] for r in ROWS]},
                       {"name": "y", "shape": [3], "datatype": "FP32", "data": [r[1] for r in ROWS]},
                       {"name": "c", "shape": [3], "datatype": "BYTES", "data": [r[2] for r in ROWS]}]}
    http = httpx.post(f"{server.url}/v2/models/toy/infer", json=body, timeout=10).json()
    assert outputs(stub.ModelInfer(contents_request(ROWS)))["score"].tolist() == http["outputs"][0]["data"]
    one = contents_request(ROWS)
    one.outputs.add(name="score")
    assert [o.name for o in stub.ModelInfer(one).outputs] == ["score"]
    reg = pb2.ModelInferRequest(model_name="reg")
    reg.inputs.add(name="x", datatype="INT64", shape=[2]).contents.int64_contents.extend([1, 2])
    reg.inputs.add(name="y", datatype="INT32", shape=[2]).contents.int_contents.extend([0, 0])
    np.testing.assert_allclose(outputs(stub.ModelInfer(reg))["score"], [3.0, 6.0], atol=1e-6)


def test_infer_with_raw_input_contents(stub, folders):
    r = stub.ModelInfer(raw_request(ROWS))
    np.testing.assert_allclose(outputs(r)["score"], local_scores(folders / "toy-1", ROWS), rtol=1e-9)
    matrix = pb2.ModelInferRequest(model_name="toy")  # one [N, features] tensor, categories as codes
    matrix.inputs.add(name="input", datatype="FP32", shape=[2, 3])
    matrix.raw_input_contents.append(np.array([[0.9, 0.8, 0], [0.1, 0.2, 1]], "<f4").tobytes())
    np.testing.assert_allclose(outputs(stub.ModelInfer(matrix))["score"], local_scores(folders / "toy-1", ROWS[:2]),
                               rtol=1e-6)


def test_tritonclient_grpc_interoperates(server, folders):
    tg = pytest.importorskip("tritonclient.grpc")
    with tg.InferenceServerClient(server.grpc_address) as client:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("toy")
        assert client.get_model_metadata("toy", as_json=True)["platform"] == "lightgbm"
        inputs = [tg.InferInput("x", [3], "FP64"), tg.InferInput("y", [3], "FP32"), tg.InferInput("c", [3], "BYTES")]
        inputs[0].set_data_from_numpy(np.array([r[0] for r in ROWS]))
        inputs[1].set_data_from_numpy(np.array([r[1] for r in ROWS], dtype=np.float32))
        inputs[2].set_data_from_numpy(np.array([r[2] for r in ROWS], dtype=object))
        result = client.infer("toy", inputs, request_id="t-1", outputs=[tg.InferRequestedOutput("score")])
        np.testing.assert_allclose(result.as_numpy("score"), local_scores(folders / "toy-1", ROWS), rtol=1e-9)
        assert result.as_numpy("decision") is None and result.get_response().id == "t-1"
        with pytest.raises(tg.InferenceServerException) as info:
            client.infer("nope", inputs)
        assert info.value.status() == "StatusCode.NOT_FOUND"




BAD = [
    ("unknown model", lambda: contents_request(ROWS, model="nope"), grpc.StatusCode.NOT_FOUND, "unknown model"),
    ("unknown version", lambda: contents_request(ROWS, model_version="9"), grpc.StatusCode.NOT_FOUND, "no version"),
    ("values do not fit the shape", lambda: _reshape(contents_request(ROWS), 0, [4]),
     grpc.StatusCode.INVALID_ARGUMENT, "needs 4 values"),
    ("raw bytes do not fit the shape", lambda: _reshape(raw_request(ROWS), 0, [2]),
     grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents[0] size"),
    ("raw entries ≠ inputs", lambda: _drop_raw(raw_request(ROWS)), grpc.StatusCode.INVALID_ARGUMENT, "2 entries"),
    ("wrong contents field", lambda: _retype(contents_request(ROWS), 0, "FP32"), grpc.StatusCode.INVALID_ARGUMENT,
     "contents.fp32_contents, not contents.fp64_contents"),
    ("missing input", lambda: _drop_input(contents_request(ROWS)), grpc.StatusCode.INVALID_ARGUMENT, "missing: c"),
    ("no inputs", lambda: pb2.ModelInferRequest(model_name="toy"), grpc.StatusCode.INVALID_ARGUMENT, "empty"),
    ("unknown output", lambda: _want(contents_request(ROWS), "nope"), grpc.StatusCode.INVALID_ARGUMENT, "nope"),
    ("too many rows", lambda: contents_request(ROWS * 400), grpc.StatusCode.RESOURCE_EXHAUSTED, "at most 1000"),
    ("message over the body limit", lambda: _pad(contents_request(ROWS), 300_000), grpc.StatusCode.RESOURCE_EXHAUSTED,
     "larger than max"),
]


def _reshape(req, i, shape):
    del req.inputs[i].shape[:]
    req.inputs[i].shape.extend(shape)
    return req


def _drop_raw(req):
    del req.raw_input_contents[-1]
    return req


def _retype(req, i, datatype):
    req.inputs[i].datatype = datatype
    return req


def _drop_input(req):
    del req.inputs[-1]
    return req


def _want(req, name):
    req.outputs.add(name=name)
    return req


def _pad(req, size):
    req.parameters["padding"].string_param = "x" * size
    return req


@pytest.mark.parametrize("what,make,code,message", BAD, ids=[b[0] for b in BAD])
def test_errors_map_to_status_codes_and_the_server_keeps_serving(stub, what, make, code, message):
    got, details = code_of(stub.ModelInfer, make())
    assert got == code, details
    assert message in details
    assert len(stub.ModelInfer(contents_request(ROWS[:1])).outputs) == 2


def test_unexpected_errors_are_internal_without_details(folders, caplog):
    repo = ModelRepository()
    repo.add_folder(folders / "reg-1")
    with ModelServer(repo, grpc_port=0).start() as s, grpc.insecure_channel(s.grpc_address) as channel:
        async def broken(*args, **kw):
            raise RuntimeError("secret internals")

        s.plane.infer = broken
        req = pb2.ModelInferRequest(model_name="reg")
        req.inputs.add(name="input", datatype="FP64", shape=[1, 2]).contents.fp64_contents.extend([1, 0])
        code, details = code_of(pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer, req)
        assert code == grpc.StatusCode.INTERNAL and "logged as" in details and "secret" not in details
        assert "secret internals" in caplog.text


def test_bearer_token_guards_metadata_and_infer_but_not_health(folders):
    repo = ModelRepository()
    repo.add_folder(folders / "reg-1")
    with ModelServer(repo, token="s3cret", grpc_port=0).start() as s, grpc.insecure_channel(s.grpc_address) as ch:
        stub = pb2_grpc.GRPCInferenceServiceStub(ch)
        assert stub.ServerReady(pb2.ServerReadyRequest()).ready
        assert stub.ModelReady(pb2.ModelReadyRequest(name="reg")).ready
        req = pb2.ModelInferRequest(model_name="reg")
        req.inputs.add(name="input", datatype="FP64", shape=[1, 2]).contents.fp64_contents.extend([1, 0])
        for call, message in ((stub.ServerMetadata, pb2.ServerMetadataRequest()),
                              (stub.ModelMetadata, pb2.ModelMetadataRequest(name="reg")), (stub.ModelInfer, req)):
            assert code_of(call, message)[0] == grpc.StatusCode.UNAUTHENTICATED
            code, details = code_of(call, message, metadata=[("authorization", "Bearer wrong")])
            assert code == grpc.StatusCode.UNAUTHENTICATED and "bearer" in details
        good = [("authorization", "Bearer s3cret")]
        assert stub.ServerMetadata(pb2.ServerMetadataRequest(), metadata=good).name == "tidal"
        assert outputs(stub.ModelInfer(req, metadata=good))["score"][0] == pytest.approx(3.0, abs=1e-6)


def test_not_ready_is_unavailable_then_canary_routes_by_the_key_metadata(folders):
    follower = DeploymentFollower(KafkaSettings("127.0.0.1:1"), "toy")  # never started: no deployment yet
    repo = ModelRepository()
    repo.follow(follower)
    t1, t2 = (Target(v, str(folders / f"toy-{v}"), load_model(folders / f"toy-{v}").card.sha256) for v in "12")
    with ModelServer(repo, grpc_port=0).start() as s, grpc.insecure_channel(s.grpc_address) as ch:
        stub = pb2_grpc.GRPCInferenceServiceStub(ch)
        assert not stub.ServerReady(pb2.ServerReadyRequest()).ready
        assert not stub.ModelReady(pb2.ModelReadyRequest(name="toy")).ready
        code, details = code_of(stub.ModelInfer, contents_request(ROWS[:1]))
        assert code == grpc.StatusCode.UNAVAILABLE and "no deployment" in details
        follower.apply(Deployment("toy", "canary", t1, t2, share=0.5, seq=1))
        keys = [f"user-{i}" for i in range(30)]
        expected = np.where(key_buckets([k.encode() for k in keys], np.zeros(30)) < 0.5, "2", "1")
        got = [stub.ModelInfer(contents_request(ROWS[:1]), metadata=[("x-tidal-key", k)]).model_version for k in keys]
        assert got == expected.tolist() and {"1", "2"} <= set(got)
        assert stub.ModelInfer(contents_request(ROWS[:1])).model_version == "1"


def test_grpc_and_http_requests_share_the_adaptive_batches(folders):
    repo = ModelRepository()
    repo.add_folder(folders / "toy-1")
    with ModelServer(repo, grpc_port=0, max_batch_size=64, max_batch_time=0.05).start() as s, \
            grpc.insecure_channel(s.grpc_address) as ch, httpx.Client(base_url=s.url, timeout=10) as http:
        stub = pb2_grpc.GRPCInferenceServiceStub(ch)
        body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [0.9]},
                           {"name": "y", "shape": [1], "datatype": "FP64", "data": [0.8]},
                           {"name": "c", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}
        with ThreadPoolExecutor(4) as pool:
            http_futures = [pool.submit(http.post, "/v2/models/toy/infer", json=body) for _ in range(4)]
            grpc_futures = [stub.ModelInfer.future(contents_request(ROWS[:1])) for _ in range(12)]
            assert all(f.result().status_code == 200 for f in http_futures)
            scores = [outputs(f.result())["score"][0] for f in grpc_futures]
        np.testing.assert_allclose(scores, local_scores(folders / "toy-1", ROWS[:1])[0], rtol=1e-9)
        m = s.plane.metrics
        assert m.value("tidal_serve_requests_total", model_name="toy", model_version="1") == 16
        assert m.value("tidal_serve_model_calls_total", model_name="toy", model_version="1") < 16


def test_a_taken_grpc_port_fails_the_start(folders):
    repo = ModelRepository()
    repo.add_folder(folders / "reg-1")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = ModelServer(repo, grpc_port=taken.getsockname()[1])
        try:
            with pytest.raises(RuntimeError, match="gRPC on 127.0.0.1:.* did not start"):
                server.start()
        finally:
            server.stop()


def test_tidal_serve_grpc_port_option(folders):
    with socket.socket() as probe:  # a free port for the child (--grpc-port 0 means off)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "tidal", "serve", str(folders / "reg-1"), "--port", "0",
                             "--grpc-port", str(port), "--log-level", "WARNING"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        line = next((ln for ln in proc.stderr if "serving on" in ln), "")
        m = re.search(r"gRPC on (\S+)", line)
        assert m and m.group(1) == f"127.0.0.1:{port}", line
        with grpc.insecure_channel(m.group(1)) as ch:
            stub = pb2_grpc.GRPCInferenceServiceStub(ch)
            assert stub.ServerLive(pb2.ServerLiveRequest(), wait_for_ready=True, timeout=20).live
            req = pb2.ModelInferRequest(model_name="reg")
            req.inputs.add(name="x", datatype="FP64", shape=[1]).contents.fp64_contents.append(1.0)
            req.inputs.add(name="y", datatype="FP64", shape=[1]).contents.fp64_contents.append(0.0)
            assert outputs(stub.ModelInfer(req, timeout=10))["score"][0] == pytest.approx(3.0, abs=1e-6)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
