"""The model server on loopback, called with a real HTTP client: OIP v2 shapes, errors, batching, auth."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys

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

FEATURES = ["x", "y", "c"]
CATS = {"c": ["a", "b", "c"]}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """toy v1 (LightGBM, x + y > 1, categorical c), toy v2 (LightGBM, x > 0.5), reg v1 (linear regression)."""
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.random((3000, 2)), rng.integers(0, 3, 3000)])
    root = tmp_path_factory.mktemp("serve-models")
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
    with ModelServer(repo, max_body_bytes=200_000, max_rows=1000).start() as s:
        yield s


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


def infer_body(rows: list[tuple[float, float, str]], **extra) -> dict:
    n = len(rows)
    return {"inputs": [{"name": "x", "shape": [n], "datatype": "FP64", "data": [r[0] for r in rows]},
                       {"name": "y", "shape": [n, 1], "datatype": "FP32", "data": [[r[1]] for r in rows]},
                       {"name": "c", "shape": [n], "datatype": "BYTES", "data": [r[2] for r in rows]}], **extra}


def local_scores(folder, rows) -> np.ndarray:
    m = load_model(folder)
    cols = {"x": np.array([r[0] for r in rows]), "y": np.array([r[1] for r in rows], dtype=np.float32),
            "c": np.array([r[2] for r in rows], dtype=object)}
    return m.predict(m.features_matrix(cols.__getitem__))


def test_health_routes_answer_200_with_an_empty_body(client):
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/toy/ready", "/v2/models/toy/versions/1/ready"):
        r = client.get(path)
        assert (r.status_code, r.content) == (200, b""), path
    assert (client.get("/v2/models/nope/ready").status_code, client.get("/v2/models/nope/ready").content) == (404, b"")
    assert client.get("/v2/models/toy/versions/7/ready").status_code == 404


def test_server_and_model_metadata_have_the_protocol_shape(client):
    meta = client.get("/v2").json()
    assert meta["name"] == "tidal" and isinstance(meta["version"], str) and isinstance(meta["extensions"], list)
    for path in ("/v2/models/toy", "/v2/models/toy/versions/1"):
        m = client.get(path).json()
        assert m["name"] == "toy" and m["versions"] == ["1"] and m["platform"] == "lightgbm"
        assert m["inputs"] == [{"name": "x", "datatype": "FP64", "shape": [-1]},
                               {"name": "y", "datatype": "FP64", "shape": [-1]},
                               {"name": "c", "datatype": "BYTES", "shape": [-1]}]
        assert [o["name"] for o in m["outputs"]] == ["score", "decision"]
    assert [o["name"] for o in client.get("/v2/models/reg").json()["outputs"]] == ["score"]


def test_infer_returns_the_models_scores_in_protocol_tensors(client, folders):
    rows = [(0.9, 0.8, "a"), (0.1, 0.2, "b"), (0.6, 0.5, "zz")]  # zz: an unknown category → NaN, as in the stream
    for path in ("/v2/models/toy/infer", "/v2/models/toy/versions/1/infer"):
        r = client.post(path, json=infer_body(rows, id="req-1", parameters={"anything": 1}))
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["model_name"], body["model_version"], body["id"]) == ("toy", "1", "req-1")
        score, decision = body["outputs"]
        assert (score["name"], score["shape"], score["datatype"]) == ("score", [3], "FP64")
        assert (decision["name"], decision["shape"], decision["datatype"]) == ("decision", [3], "BOOL")
        np.testing.assert_allclose(score["data"], local_scores(folders / "toy-1", rows), rtol=1e-9)
        assert decision["data"] == [s >= 0.5 for s in score["data"]]


def test_infer_takes_one_matrix_tensor_nested_or_flat_and_can_select_outputs(client, folders):
    data = [[0.9, 0.8, 0.0], [0.1, 0.2, 1.0]]
    nested = {"inputs": [{"name": "input", "shape": [2, 3], "datatype": "FP64", "data": data}],
              "outputs": [{"name": "score"}]}
    flat = {"inputs": [{"name": "input", "shape": [2, 3], "datatype": "FP32", "data": sum(data, [])}]}
    a, b = client.post("/v2/models/toy/infer", json=nested).json(), client.post("/v2/models/toy/infer", json=flat).json()
    assert [o["name"] for o in a["outputs"]] == ["score"] and len(b["outputs"]) == 2
    expected = local_scores(folders / "toy-1", [(0.9, 0.8, "a"), (0.1, 0.2, "b")])
    np.testing.assert_allclose(a["outputs"][0]["data"], expected, rtol=1e-6)
    np.testing.assert_allclose(b["outputs"][0]["data"], expected, rtol=1e-6)
    reg = client.post("/v2/models/reg/infer", json={"inputs": [{"name": "x", "shape": [1], "datatype": "INT64",
                                                                "data": [1]},
                                                               {"name": "y", "shape": [1], "datatype": "FP64",
                                                                "data": [0]}]})
    assert reg.json()["outputs"][0]["data"] == pytest.approx([3.0], abs=1e-6)


BAD = [
    ("malformed JSON", "/v2/models/toy/infer", b'{"inputs": [', 400, "not valid JSON"),
    ("not an object", "/v2/models/toy/infer", b"[1, 2]", 400, "Expected `object`"),
    ("inputs missing", "/v2/models/toy/infer", b'{"id": "x"}', 400, "inputs"),
    ("empty inputs", "/v2/models/toy/infer", b'{"inputs": []}', 400, "empty"),
    ("shape vs data", "/v2/models/toy/infer",
     b'{"inputs": [{"name": "x", "shape": [3], "datatype": "FP64", "data": [1, 2]}]}', 400, "needs 3 values"),
    ("unknown datatype", "/v2/models/toy/infer",
     b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP128", "data": [1]}]}', 400, "unknown datatype"),
    ("strings as numbers", "/v2/models/toy/infer",
     b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": ["a"]}]}', 400, "must be numbers"),
    ("missing feature", "/v2/models/toy/infer",
     b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1]}]}', 422, "missing: y, c"),
    ("wrong datatype for a feature", "/v2/models/reg/infer",
     b'{"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["1"]},'
     b' {"name": "y", "shape": [1], "datatype": "FP64", "data": [1]}]}', 422, "must be numeric"),
    ("matrix with wrong width", "/v2/models/toy/infer",
     b'{"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP64", "data": [1, 2]}]}', 422, "3 features"),
    ("rows differ", "/v2/models/reg/infer",
     b'{"inputs": [{"name": "x", "shape": [2], "datatype": "FP64", "data": [1, 2]},'
     b' {"name": "y", "shape": [1], "datatype": "FP64", "data": [1]}]}', 422, "different row counts"),
    ("unknown output", "/v2/models/reg/infer",
     b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1]},'
     b' {"name": "y", "shape": [1], "datatype": "FP64", "data": [1]}], "outputs": [{"name": "proba"}]}', 422,
     "unknown output"),
    ("unknown model", "/v2/models/nope/infer", b'{"inputs": []}', 404, "unknown model 'nope'"),
    ("unknown version", "/v2/models/toy/versions/9/infer", b'{"inputs": []}', 404, "no version '9'"),
    ("unknown route", "/v3/whatever", b"{}", 404, "Not Found"),
    ("records not a list", "/predict/toy", b'{"x": 1}', 400, "list of objects"),
    ("records not JSON", "/predict/toy", b"nope", 400, "not valid JSON"),
    ("records with a string for a number", "/predict/reg", b'[{"x": "big", "y": 1}]', 422, "'x' is numeric"),
    ("records lacking a feature", "/predict/reg", b'[{"x": 1}]', 422, "lack feature(s) y"),
    ("too many rows", "/v2/models/reg/infer",
     b'{"inputs": [{"name": "input", "shape": [1001, 2], "datatype": "FP64", "data": [' + b",".join([b"1"] * 2002)
     + b"]}]}", 413, "at most 1000"),
    ("body too large", "/v2/models/toy/infer", b" " * 300_000, 413, "at most 200000"),
]


@pytest.mark.parametrize("what,path,body,status,message", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_a_4xx_with_a_clear_message_and_the_server_keeps_serving(client, what, path, body,
                                                                                  status, message):
    r = client.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert message in r.json()["error"]
    assert client.get("/v2/health/live").status_code == 200
    assert client.post("/v2/models/toy/infer", json=infer_body([(0.9, 0.9, "a")])).status_code == 200


def test_oversized_body_without_content_length_is_refused_while_streaming(server):
    def chunks():
        for _ in range(30):
            yield b" " * 10_000

    with httpx.Client(base_url=server.url) as c:
        r = c.post("/v2/models/toy/infer", content=chunks())
        assert r.status_code == 413 and "over 200000" in r.json()["error"]


def test_predict_records_and_metrics(client, folders):
    r = client.post("/predict/toy", json=[{"x": 0.9, "y": 0.8, "c": "a"}, {"x": 0.1, "y": 0.2, "c": "b", "z": 1}])
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model_name"], body["model_version"]) == ("toy", "1")
    expected = local_scores(folders / "toy-1", [(0.9, 0.8, "a"), (0.1, 0.2, "b")])
    assert [p["score"] for p in body["predictions"]] == pytest.approx(expected.tolist())
    assert [p["decision"] for p in body["predictions"]] == (expected >= 0.5).tolist()
    assert client.post("/predict/toy", json={"records": [{"x": 1, "y": 1, "c": "a"}]}).status_code == 200
    assert client.post("/predict/toy", json=[{"y": 1, "c": "a"}]).status_code == 422  # its own error to count
    m = client.get("/metrics")
    assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain")
    assert re.search(r'tidal_serve_request_duration_seconds_bucket\{le="[0-9.]+",model_name="toy",model_version="1"\}',
                     m.text) or re.search(r'tidal_serve_request_duration_seconds_bucket\{model_name="toy",'
                                          r'model_version="1",le=', m.text)
    assert re.search(r'tidal_serve_errors_total\{status="422"\} [1-9]', m.text)
    assert "python_gc_objects_collected_total" not in m.text  # its own registry, not the global one


async def _concurrent(url: str, n: int) -> list[dict]:
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        rows = [(i / n, 1 - i / n, "abc"[i % 3]) for i in range(n)]
        responses = await asyncio.gather(*(c.post("/v2/models/toy/infer", json=infer_body([r])) for r in rows))
        return [r.json() for r in responses], rows


@pytest.mark.parametrize("batching", [True, False])
def test_adaptive_batching_merges_concurrent_requests(folders, batching):
    repo = ModelRepository()
    repo.add_folder(folders / "toy-1")
    kw = {"max_batch_size": 64, "max_batch_time": 0.05} if batching else {}
    with ModelServer(repo, **kw).start() as s:
        answers, rows = asyncio.run(_concurrent(s.url, 40))
        calls = s.plane.metrics.value("tidal_serve_model_calls_total", model_name="toy", model_version="1")
        requests = s.plane.metrics.value("tidal_serve_requests_total", model_name="toy", model_version="1")
    got = [a["outputs"][0]["data"][0] for a in answers]
    np.testing.assert_allclose(got, local_scores(folders / "toy-1", rows), rtol=1e-9)  # each got its own row
    assert requests == 40
    if batching:
        assert calls < 20, f"{calls} model calls for 40 concurrent requests"
    else:
        assert calls == 40


def test_bearer_token_guards_everything_but_health(folders):
    repo = ModelRepository()
    repo.add_folder(folders / "reg-1")
    with ModelServer(repo, token="s3cret").start() as s, httpx.Client(base_url=s.url) as c:
        assert c.get("/v2/health/ready").status_code == 200
        for path in ("/v2", "/v2/models/reg", "/metrics"):
            assert c.get(path).status_code == 401
        assert "bearer" in c.get("/v2", headers={"authorization": "Bearer wrong"}).json()["error"]
        assert c.get("/v2", headers={"authorization": "Bearer s3cret"}).status_code == 200


def test_followed_model_is_not_ready_then_hot_swaps_and_routes_canary_by_key(folders):
    """The follower's apply() is what its Kafka thread calls; the Kafka path is in the integration tests."""
    follower = DeploymentFollower(KafkaSettings("127.0.0.1:1"), "toy")  # never started: no deployment yet
    repo = ModelRepository()
    repo.follow(follower)
    t1, t2 = (Target(v, str(folders / f"toy-{v}"), load_model(folders / f"toy-{v}").card.sha256) for v in "12")
    with ModelServer(repo).start() as s, httpx.Client(base_url=s.url) as c:
        assert c.get("/v2/health/ready").status_code == 400 and c.get("/v2/models/toy/ready").status_code == 400
        r = c.post("/v2/models/toy/infer", json=infer_body([(0.5, 0.5, "a")]))
        assert r.status_code == 503 and "no deployment" in r.json()["error"]
        follower.apply(Deployment("toy", "single", t1))
        assert c.post("/v2/models/toy/infer", json=infer_body([(0.5, 0.5, "a")])).json()["model_version"] == "1"
        follower.apply(Deployment("toy", "single", t2, seq=2))
        assert c.post("/v2/models/toy/infer", json=infer_body([(0.5, 0.5, "a")])).json()["model_version"] == "2"
        follower.apply(Deployment("toy", "canary", t1, t2, share=0.5, seq=3))
        assert sorted(c.get("/v2/models/toy").json()["versions"]) == ["1", "2"]
        keys = [f"user-{i}" for i in range(40)]
        expected = np.where(key_buckets([k.encode() for k in keys], np.zeros(40)) < 0.5, "2", "1")
        got = [c.post("/v2/models/toy/infer", json=infer_body([(0.5, 0.5, "a")]),
                      headers={"X-Tidal-Key": k}).json()["model_version"] for k in keys]
        assert got == expected.tolist() and {"1", "2"} <= set(got)  # same side as the stream engine's
        assert c.post("/v2/models/toy/infer", json=infer_body([(0.5, 0.5, "a")])).json()["model_version"] == "1"
        assert c.post("/v2/models/toy/versions/2/infer", json=infer_body([(0.5, 0.5, "a")])).json()[
            "model_version"] == "2"
        rows = [(0.9, 0.3, "b")] * 41  # one request, a key per row (what the remote step sends): split like a stream
        body = c.post("/v2/models/toy/infer", json=infer_body(rows, parameters={"keys": keys + [None]})).json()
        outs = {o["name"]: o for o in body["outputs"]}
        assert outs["model_version"]["datatype"] == "BYTES" and outs["model_version"]["data"] == expected.tolist() + ["1"]
        by_version = {v: local_scores(folders / f"toy-{v}", rows[:1])[0] for v in "12"}
        assert outs["score"]["data"] == pytest.approx([by_version[v] for v in outs["model_version"]["data"]])
        r = c.post("/v2/models/toy/infer", json=infer_body(rows[:2], parameters={"keys": ["only-one"]}))
        assert r.status_code == 400 and "one per row" in r.json()["error"]
        follower.apply(Deployment("toy", "shadow", t1, t2, seq=4))
        body = c.post("/v2/models/toy/infer", json=infer_body([(0.9, 0.1, "a")])).json()
        assert body["parameters"] == {"shadow_version": "2"}
        assert [o["name"] for o in body["outputs"]] == ["score", "decision", "shadow_score"]


def test_tidal_serve_command_serves_folders_and_registry_refs_and_stops_cleanly_on_sigterm(folders, tmp_path):
    from tidal.registry import Registry

    registry = Registry(tmp_path / "registry")
    registry.register("toy", folder=folders / "toy-2")
    registry.promote("toy", 1)
    proc = subprocess.Popen([sys.executable, "-m", "tidal", "serve", str(folders / "reg-1"), "models:/toy@champion",
                             "--registry", str(registry.root), "--port", "0",
                             "--max-batch-size", "16", "--max-batch-time", "0.001"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        url = None
        for line in proc.stderr:
            m = re.search(r"serving on (http://\S+)", line)
            if m:
                url = m.group(1)
                break
        assert url, "no 'serving on' line"
        r = httpx.post(f"{url}/predict/reg", json=[{"x": 1.0, "y": 0.0}], timeout=10)
        assert r.json()["predictions"][0]["score"] == pytest.approx(3.0, abs=1e-6)
        r = httpx.post(f"{url}/predict/toy", json=[{"x": 0.9, "y": 0.1, "c": "a"}], timeout=10)
        assert r.json()["model_version"] == "1"
        np.testing.assert_allclose(r.json()["predictions"][0]["score"],
                                   local_scores(folders / "toy-2", [(0.9, 0.1, "a")]), rtol=1e-9)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


def test_a_scikit_learn_classifier_answers_multi_row_infer(tmp_path):
    """predict_proba(X)[:, 1] is a strided view: it must still serialise (it was a 500)."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(3)
    X = rng.random((200, 2))
    save_model(LogisticRegression().fit(X, X[:, 0] > 0.5), tmp_path / "lr", "lr", 1, ["x", "y"])
    repo = ModelRepository()
    repo.add_folder(tmp_path / "lr")
    body = {"inputs": [{"name": "x", "shape": [3], "datatype": "FP64", "data": [0.1, 0.6, 0.9]},
                       {"name": "y", "shape": [3], "datatype": "FP64", "data": [0.5, 0.5, 0.5]}]}
    with ModelServer(repo).start() as s, httpx.Client(base_url=s.url, timeout=10) as c:
        r = c.post("/v2/models/lr/infer", json=body)
        assert r.status_code == 200, r.text
        scores = r.json()["outputs"][0]["data"]
        assert len(scores) == 3 and scores[0] < 0.5 < scores[2]


def test_a_follower_keeps_only_the_most_recent_versions_loaded(tmp_path):
    from sklearn.linear_model import LogisticRegression

    X = np.random.default_rng(4).random((100, 2))
    targets = []
    for v in range(1, 6):
        save_model(LogisticRegression(C=v).fit(X, X[:, 0] > 0.5), tmp_path / f"m{v}", "m", v, ["x", "y"])
        targets.append(Target(str(v), str(tmp_path / f"m{v}"), load_model(tmp_path / f"m{v}").card.sha256))
    follower = DeploymentFollower(KafkaSettings("127.0.0.1:1"), "m", keep=2)
    for seq, t in enumerate(targets, 1):
        follower.apply(Deployment("m", "single", t, seq=seq))
    assert list(follower._cache) == [targets[3].sha256, targets[4].sha256]  # the two newest, served last
    follower.apply(Deployment("m", "canary", targets[0], targets[4], share=0.1, seq=9))  # back to v1: loaded again
    assert set(follower._cache) == {targets[0].sha256, targets[4].sha256}


def test_a_null_feature_is_a_422_naming_it_for_a_model_that_cannot_score_missing_values(tmp_path, folders):
    from sklearn.linear_model import LogisticRegression

    X = np.random.default_rng(5).random((100, 2))
    save_model(LogisticRegression().fit(X, X[:, 0] > 0.5), tmp_path / "lr", "lr", 1, ["x", "y"])
    repo = ModelRepository()
    repo.add_folder(tmp_path / "lr")
    repo.add_folder(folders / "toy-1")  # LightGBM takes missing values
    with ModelServer(repo).start() as s, httpx.Client(base_url=s.url, timeout=10) as c:
        r = c.post("/predict/lr", json=[{"x": 0.2, "y": None}])
        assert r.status_code == 422 and "missing values" in r.json()["error"] and "y" in r.json()["error"]
        assert c.post("/predict/lr", json=[{"x": 0.2, "y": 0.4}]).status_code == 200
        assert c.post("/predict/toy", json=[{"x": 0.2, "y": None, "c": "a"}]).status_code == 200
