"""The binary tensor data extension of OIP v2, called with NVIDIA's tritonclient and with hand-built bodies.

Every score is compared with the model's own ``predict`` and with the JSON endpoint's answer: the
binary path decodes into the same arrays and goes through the same data plane.
"""

from __future__ import annotations

import json

import httpx
import lightgbm
import numpy as np
import pytest
from sklearn.linear_model import LinearRegression

from tidal.models import load_model, save_model
from tidal.serve import ModelRepository, ModelServer

tritonhttp = pytest.importorskip("tritonclient.http")

FEATURES = ["x", "y", "c"]
CATS = {"c": ["a", "b", "c"]}
HEADER = "Inference-Header-Content-Length"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """toy v1 (LightGBM, x + y > 1, categorical c), reg v1 (linear regression on x, y)."""
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.random((3000, 2)), rng.integers(0, 3, 3000)])
    root = tmp_path_factory.mktemp("serve-binary-models")
    m1 = lightgbm.LGBMClassifier(n_estimators=15, n_jobs=1, verbose=-1).fit(X, (X[:, 0] + X[:, 1] > 1).astype(int))
    save_model(m1, root / "toy-1", "toy", 1, FEATURES, categories=CATS)
    save_model(LinearRegression().fit(X[:, :2], X[:, 0] * 3 - X[:, 1]), root / "reg-1", "reg", 1, ["x", "y"],
               task="regression")
    return root


@pytest.fixture(scope="module")
def server(folders):
    repo = ModelRepository()
    repo.add_folder(folders / "toy-1")
    repo.add_folder(folders / "reg-1")
    with ModelServer(repo, max_body_bytes=200_000, max_rows=1000).start() as s:
        yield s


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


@pytest.fixture
def triton(server):
    c = tritonhttp.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=10)
    yield c
    c.close()


def local(folder, x, y, c=None) -> np.ndarray:
    """The model's own scores, without a server."""
    m = load_model(folder)
    cols = {"x": np.asarray(x), "y": np.asarray(y), "c": None if c is None else np.asarray(c, dtype=object)}
    return m.predict(m.features_matrix(cols.__getitem__))


def json_scores(client, model: str, inputs: list[dict]) -> dict[str, list]:
    r = client.post(f"/v2/models/{model}/infer", json={"inputs": inputs})
    assert r.status_code == 200, r.text
    return {o["name"]: o["data"] for o in r.json()["outputs"]}


def tensor(name: str, arr: np.ndarray, datatype: str, binary: bool):
    t = tritonhttp.InferInput(name, list(arr.shape), datatype)
    t.set_data_from_numpy(arr, binary_data=binary)
    return t


def wanted(binary: bool | dict[str, bool], names=("score", "decision")):
    flags = binary if isinstance(binary, dict) else {n: binary for n in names}
    return [tritonhttp.InferRequestedOutput(n, binary_data=b) for n, b in flags.items()]


ROWS_X = np.array([0.9, 0.1, 0.6, 0.45, 0.0, 1.0, 0.3333333333333333])
ROWS_Y = np.array([0.8, 0.2, 0.5, 0.55, 0.0, 1.0, 0.7], dtype=np.float32)
ROWS_C = np.array(["a", "b", "zz", "c", "é", "a", "b"], dtype=object)  # zz, é: unknown categories → NaN


def test_binary_inputs_and_binary_outputs_score_like_the_model_and_the_json_endpoint(triton, client, folders):
    """(a) every input and output in binary, on both infer routes; numeric tensors of several datatypes."""
    x, y = ROWS_X, ROWS_Y
    expected = local(folders / "reg-1", x, y)
    by_json = json_scores(client, "reg", [{"name": "x", "shape": [7], "datatype": "FP64", "data": x.tolist()},
                                          {"name": "y", "shape": [7, 1], "datatype": "FP32", "data": y.tolist()}])
    for version in ("", "1"):
        r = triton.infer("reg", [tensor("x", x, "FP64", True), tensor("y", y.reshape(7, 1), "FP32", True)],
                         model_version=version, outputs=wanted(True, ["score"]))
        header = r.get_response()
        assert (header["model_name"], header["model_version"]) == ("reg", "1")
        assert header["outputs"] == [{"name": "score", "shape": [7], "datatype": "FP64",
                                      "parameters": {"binary_data_size": 7 * 8}}]
        np.testing.assert_array_equal(r.as_numpy("score"), by_json["score"])
        np.testing.assert_allclose(r.as_numpy("score"), expected, rtol=1e-12, atol=1e-12)
    # integer and half-precision inputs, and one [N, features] matrix tensor
    ints = triton.infer("reg", [tensor("x", np.array([1, -2, 3], np.int32), "INT32", True),
                                tensor("y", np.array([0, 5, 7], np.uint16), "UINT16", True)])
    np.testing.assert_allclose(ints.as_numpy("score"), local(folders / "reg-1", [1, -2, 3], [0, 5, 7]), rtol=1e-12)
    half = triton.infer("reg", [tensor("x", np.array([0.5, 0.25], np.float16), "FP16", True),
                                tensor("y", np.array([True, False]), "BOOL", True)])
    np.testing.assert_allclose(half.as_numpy("score"), local(folders / "reg-1", [0.5, 0.25], [1.0, 0.0]), rtol=1e-12)
    matrix = np.column_stack([x, y, np.arange(7) % 3]).astype(np.float64)
    r = triton.infer("toy", [tensor("input", matrix, "FP64", True)])  # no outputs named: all come back binary
    assert [(o["name"], o["shape"], o["datatype"], o["parameters"]) for o in r.get_response()["outputs"]] == [
        ("score", [7], "FP64", {"binary_data_size": 56}), ("decision", [7], "BOOL", {"binary_data_size": 7})]
    expected = local(folders / "toy-1", x, y, np.array(CATS["c"], dtype=object)[np.arange(7) % 3])
    np.testing.assert_allclose(r.as_numpy("score"), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(r.as_numpy("decision"), r.as_numpy("score") >= 0.5)


def test_json_mode_through_tritonclient_is_plain_json_with_the_same_scores(triton, client, folders):
    """(b) binary_data=False everywhere: the request and the response are ordinary OIP JSON."""
    inputs = [tensor("x", ROWS_X, "FP64", False), tensor("y", ROWS_Y, "FP32", False),
              tensor("c", ROWS_C, "BYTES", False)]
    r = triton.infer("toy", inputs, outputs=wanted(False))
    outs = {o["name"]: o for o in r.get_response()["outputs"]}
    assert list(outs) == ["score", "decision"] and "data" in outs["score"] and "parameters" not in outs["score"]
    by_json = json_scores(client, "toy", [{"name": "x", "shape": [7], "datatype": "FP64", "data": ROWS_X.tolist()},
                                          {"name": "y", "shape": [7], "datatype": "FP32", "data": ROWS_Y.tolist()},
                                          {"name": "c", "shape": [7], "datatype": "BYTES",
                                           "data": ROWS_C.tolist()}])
    np.testing.assert_array_equal(r.as_numpy("score"), by_json["score"])
    np.testing.assert_allclose(r.as_numpy("score"), local(folders / "toy-1", ROWS_X, ROWS_Y, ROWS_C), rtol=1e-12)
    np.testing.assert_array_equal(r.as_numpy("decision"), by_json["decision"])
    raw = client.post("/v2/models/toy/infer", json={"inputs": [
        {"name": "input", "shape": [1, 3], "datatype": "FP64", "data": [0.5, 0.5, 0]}]})
    assert HEADER.lower() not in raw.headers and raw.headers["content-type"] == "application/json"


def test_a_bytes_input_in_binary_mode_is_decoded_as_the_categorical_text(triton, client, folders):
    """(c) the categorical feature as a binary BYTES tensor (4-byte length + UTF-8 per element), str or bytes."""
    expected = local(folders / "toy-1", ROWS_X, ROWS_Y, ROWS_C)
    for c in (ROWS_C, np.array([s.encode() for s in ROWS_C], dtype=np.object_)):
        r = triton.infer("toy", [tensor("x", ROWS_X, "FP64", True), tensor("y", ROWS_Y, "FP32", True),
                                 tensor("c", c, "BYTES", True)], outputs=wanted(True))
        np.testing.assert_allclose(r.as_numpy("score"), expected, rtol=1e-12, atol=1e-12)
        by_json = json_scores(client, "toy", [
            {"name": "x", "shape": [7], "datatype": "FP64", "data": ROWS_X.tolist()},
            {"name": "y", "shape": [7], "datatype": "FP32", "data": ROWS_Y.tolist()},
            {"name": "c", "shape": [7], "datatype": "BYTES", "data": ROWS_C.tolist()}])
        np.testing.assert_array_equal(r.as_numpy("score"), by_json["score"])
        np.testing.assert_array_equal(r.as_numpy("decision"), by_json["decision"])
    empty = tensor("c", np.array(["", "a"], dtype=object), "BYTES", True)  # a zero-length element
    r = triton.infer("toy", [tensor("x", ROWS_X[:2], "FP64", True), tensor("y", ROWS_Y[:2], "FP32", True), empty])
    np.testing.assert_allclose(r.as_numpy("score"), local(folders / "toy-1", ROWS_X[:2], ROWS_Y[:2], ["", "a"]),
                               rtol=1e-12)


def test_binary_and_json_tensors_mix_in_one_request_and_one_response(triton, client, folders):
    """(d) x and c binary, y JSON; score binary, decision JSON; a BYTES output (model_version) in binary."""
    inputs = [tensor("x", ROWS_X, "FP64", True), tensor("y", ROWS_Y, "FP32", False), tensor("c", ROWS_C, "BYTES", True)]
    r = triton.infer("toy", inputs, outputs=wanted({"score": True, "decision": False}))
    outs = {o["name"]: o for o in r.get_response()["outputs"]}
    assert outs["score"]["parameters"] == {"binary_data_size": 56} and "data" not in outs["score"]
    assert outs["decision"]["data"] == (r.as_numpy("score") >= 0.5).tolist() and "parameters" not in outs["decision"]
    expected = local(folders / "toy-1", ROWS_X, ROWS_Y, ROWS_C)
    np.testing.assert_allclose(r.as_numpy("score"), expected, rtol=1e-12, atol=1e-12)
    keys = [f"user-{i}" for i in range(7)]  # a key per row adds the model_version output, a BYTES tensor
    r = triton.infer("toy", inputs, parameters={"keys": keys})
    assert [o["name"] for o in r.get_response()["outputs"]] == ["score", "decision", "model_version"]
    assert r.as_numpy("model_version").tolist() == [b"1"] * 7
    np.testing.assert_allclose(r.as_numpy("score"), expected, rtol=1e-12, atol=1e-12)


def binary_body(inputs: list[tuple], parameters: dict | None = None, outputs: list | None = None,
                extra: bytes = b"") -> tuple[bytes, int]:
    """A hand-built request: (name, datatype, shape, raw bytes or None, JSON data or None) per input."""
    tensors = []
    chunks = []
    for name, datatype, shape, raw, data in inputs:
        t = {"name": name, "shape": shape, "datatype": datatype}
        if raw is not None:
            t["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        if data is not None:
            t["data"] = data
        tensors.append(t)
    req = {"inputs": tensors}
    if parameters is not None:
        req["parameters"] = parameters
    if outputs is not None:
        req["outputs"] = outputs
    header = json.dumps(req).encode()
    return header + b"".join(chunks) + extra, len(header)


def strings(*values: bytes) -> bytes:
    return b"".join(len(v).to_bytes(4, "little") + v for v in values)


def test_hand_built_binary_request_and_response_follow_the_extension(client, folders):
    x, y = np.array([0.2, 0.7]), np.array([0.9, 0.1])
    body, n = binary_body([("x", "FP64", [2], x.astype("<f8").tobytes(), None),
                           ("y", "FP64", [2], None, y.tolist()),
                           ("c", "BYTES", [2], strings(b"a", b"c"), None)],
                          parameters={"binary_data_output": True},
                          outputs=[{"name": "decision", "parameters": {"binary_data": False}}, {"name": "score"}])
    r = client.post("/v2/models/toy/infer", content=body, headers={HEADER: str(n)})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    k = int(r.headers[HEADER])
    header = json.loads(r.content[:k])
    assert header["outputs"][0] == {"name": "decision", "shape": [2], "datatype": "BOOL",
                                    "data": header["outputs"][0]["data"]}
    assert header["outputs"][1] == {"name": "score", "shape": [2], "datatype": "FP64",
                                    "parameters": {"binary_data_size": 16}}
    scores = np.frombuffer(r.content[k:], "<f8")
    assert len(r.content) == k + 16
    np.testing.assert_allclose(scores, local(folders / "toy-1", x, y, ["a", "c"]), rtol=1e-12, atol=1e-12)
    assert header["outputs"][0]["data"] == (scores >= 0.5).tolist()
    # header length == body length: the whole body is JSON, as without the header
    plain = json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1]},
                                   {"name": "y", "shape": [1], "datatype": "FP64", "data": [0]}]}).encode()
    r = client.post("/v2/models/reg/infer", content=plain, headers={HEADER: str(len(plain))})
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == pytest.approx([3.0], abs=1e-9)


def test_server_metadata_lists_the_extension(triton):
    assert "binary_tensor_data" in triton.get_server_metadata()["extensions"]


F8 = np.array([1.0, 2.0]).astype("<f8").tobytes()
Y1 = ("y", "FP64", [2], None, [0.0, 1.0])

BAD = [
    ("header longer than the body", lambda: ({"inputs": []}, 10_000), 400, "but the body has only"),
    ("header not a number", lambda: ({"inputs": []}, "12a"), 400, "must be a non-negative integer"),
    ("size does not match shape", lambda: ([("x", "FP64", [3], F8, None), Y1], None), 400,
     "needs 3 × 8 = 24 bytes"),
    ("size does not match the element size", lambda: ([("x", "FP32", [2], F8, None), Y1], None), 400,
     "needs 2 × 4 = 8 bytes"),
    ("bytes left over", lambda: ([("x", "FP64", [2], F8, None), Y1], b"\x00" * 3), 400, "3 bytes left over"),
    ("bytes missing", lambda: "missing", 400, "binary_data_size is 24 but only 16 binary bytes are left"),
    ("no header, binary inputs", lambda: "no header", 400, "only 0 binary bytes are left"),
    ("BYTES length past its tensor", lambda: ([("x", "FP64", [2], F8, None), Y1,
                                               ("c", "BYTES", [2], strings(b"a") + b"\x09\x00\x00\x00ab", None)],
                                              None), 400, "element 1 of length 9 runs past the end of its 11 bytes"),
    ("BYTES too short for its lengths", lambda: ([("x", "FP64", [2], F8, None), Y1,
                                                  ("c", "BYTES", [2], b"\x01\x00\x00\x00a", None)], None), 400,
     "needs at least 2 × 4 = 8 bytes"),
    ("BYTES bytes left over in its tensor", lambda: ([("x", "FP64", [2], F8, None), Y1,
                                                      ("c", "BYTES", [2], strings(b"a", b"b") + b"zz", None)],
                                                     None), 400, "2 bytes left over after its 2 BYTES elements"),
    ("BYTES not UTF-8", lambda: ([("x", "FP64", [2], F8, None), Y1, ("c", "BYTES", [2], strings(b"a", b"\xff"),
                                                                     None)], None), 400, "not UTF-8"),
    ("unknown datatype", lambda: ([("x", "FP128", [1], F8, None), Y1], None), 400, "unknown datatype 'FP128'"),
    ("negative dimension", lambda: ([("x", "FP64", [-2], F8, None), Y1], None), 400, "negative dimension"),
    ("a huge shape is refused before allocating", lambda: ([("x", "FP64", [10**12], F8, None), Y1], None), 400,
     "needs 1000000000000 × 8"),
    ("a huge BYTES shape too", lambda: ([("x", "FP64", [2], F8, None), Y1,
                                         ("c", "BYTES", [10**12], strings(b"a"), None)], None), 400,
     "needs at least 1000000000000 × 4"),
    ("data and binary data", lambda: ([("x", "FP64", [2], F8, [1.0, 2.0]), Y1], None), 400,
     "both 'data' and binary_data_size"),
    ("binary_data_size not an integer", lambda: "size as text", 400, "binary_data_size must be a non-negative"),
    ("neither data nor binary data", lambda: "no data", 400, "missing required field 'data'"),
    ("binary_data_output not a flag", lambda: ([("x", "FP64", [2], F8, None), Y1], {"binary_data_output": "yes"}),
     400, "binary_data_output must be true or false"),
    ("too many rows", lambda: ([("x", "FP64", [1001], np.zeros(1001).tobytes(), None),
                                ("y", "FP64", [1001], np.zeros(1001).tobytes(), None)], None), 413, "at most 1000"),
    ("body too large", lambda: ([("x", "FP64", [20_000], np.zeros(20_000).tobytes(), None),
                                 ("y", "FP64", [20_000], np.zeros(20_000).tobytes(), None)], None), 413,
     "at most 200000"),
]


def bad_request(case) -> tuple[bytes, dict]:
    if case == "missing":  # x says 24 bytes (3 × FP64) and only 16 follow
        body, n = binary_body([("x", "FP64", [3], np.zeros(3).tobytes(), None)])
        return body[:-8], {HEADER: str(n)}
    if case == "no header":
        body, n = binary_body([("x", "FP64", [2], F8, None), Y1])
        return body[:n], {}
    if case == "size as text":
        head = json.dumps({"inputs": [{"name": "x", "shape": [2], "datatype": "FP64",
                                       "parameters": {"binary_data_size": "16"}}]}).encode()
        return head + F8, {HEADER: str(len(head))}
    if case == "no data":
        return json.dumps({"inputs": [{"name": "x", "shape": [2], "datatype": "FP64"}]}).encode(), {}
    first, second = case
    if isinstance(first, dict):  # a header length of its own
        body = json.dumps(first).encode()
        return body, {HEADER: str(second)}
    if isinstance(second, dict):
        body, n = binary_body(first, parameters=second)
    else:
        body, n = binary_body(first, extra=second or b"")
    return body, {HEADER: str(n)}


@pytest.mark.parametrize("what,make,status,message", BAD, ids=[b[0] for b in BAD])
def test_bad_binary_requests_get_a_4xx_json_error_and_the_server_keeps_serving(client, what, make, status, message):
    body, headers = bad_request(make())
    model = "reg" if what in ("too many rows",) else "toy"
    r = client.post(f"/v2/models/{model}/infer", content=body, headers=headers)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json" and HEADER.lower() not in r.headers
    assert list(r.json()) == ["error"] and message in r.json()["error"], r.json()["error"]
    ok, n = binary_body([("x", "FP64", [2], F8, None), Y1])
    assert client.post("/v2/models/reg/infer", content=ok, headers={HEADER: str(n)}).status_code == 200


def test_an_oversized_binary_body_is_refused_while_streaming(server):
    body, n = binary_body([("x", "FP64", [30_000], np.zeros(30_000).tobytes(), None), Y1])  # 240 kB

    def chunks():
        for i in range(0, len(body), 10_000):
            yield body[i:i + 10_000]

    with httpx.Client(base_url=server.url, timeout=10) as c:
        r = c.post("/v2/models/reg/infer", content=chunks(), headers={HEADER: str(n)})
        assert r.status_code == 413 and "over 200000" in r.json()["error"]


def test_binary_requests_are_batched_like_json_ones(folders):
    """Concurrent tritonclient requests (its own connection pool) share model calls and each gets its row."""
    repo = ModelRepository()
    repo.add_folder(folders / "toy-1")
    with ModelServer(repo, max_batch_size=64, max_batch_time=0.05).start() as s:
        c = tritonhttp.InferenceServerClient(s.url.removeprefix("http://"), concurrency=16, network_timeout=10)
        try:
            n = 32
            xs, ys = np.linspace(0, 1, n), np.linspace(1, 0, n)
            cs = np.array(["abc"[i % 3] for i in range(n)], dtype=object)
            pending = [c.async_infer("toy", [tensor("x", xs[i:i + 1], "FP64", True),
                                             tensor("y", ys[i:i + 1], "FP64", True),
                                             tensor("c", cs[i:i + 1], "BYTES", True)]) for i in range(n)]
            got = np.concatenate([p.get_result().as_numpy("score") for p in pending])
        finally:
            c.close()
        calls = s.plane.metrics.value("tidal_serve_model_calls_total", model_name="toy", model_version="1")
        requests = s.plane.metrics.value("tidal_serve_requests_total", model_name="toy", model_version="1")
    np.testing.assert_allclose(got, local(folders / "toy-1", xs, ys, cs), rtol=1e-12, atol=1e-12)
    assert requests == n and calls < n, f"{calls} model calls for {n} concurrent requests"
