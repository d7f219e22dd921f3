"""The remote step against a loopback model server: batching, chunks, retries, the circuit breaker."""

from __future__ import annotations

import socket
import time

import lightgbm
import numpy as np
import orjson
import pytest

from tidal.models import ScoreStep, load_model, save_model
from tidal.quality import Schema
from tidal.serve import ModelRepository, ModelServer
from tidal.serve.remote import CircuitOpen, RemoteError, RemoteScoreStep
from tidal.stream import Pipeline
from tidal.stream.batch import Batch
from tidal.stream.spec import from_dict

CATS = {"c": ["a", "b", "c"]}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    rng = np.random.default_rng(5)
    X = np.column_stack([rng.random((2000, 2)), rng.integers(0, 3, 2000)])
    m = lightgbm.LGBMClassifier(n_estimators=15, n_jobs=1, verbose=-1).fit(X, (X[:, 0] + X[:, 2] / 3 > 0.9).astype(int))
    path = tmp_path_factory.mktemp("remote") / "toy"
    save_model(m, path, "toy", 3, ["x", "y", "c"], categories=CATS, threshold=0.3)
    return path


@pytest.fixture(scope="module")
def server(folder):
    repo = ModelRepository()
    repo.add_folder(folder)
    with ModelServer(repo).start() as s:
        yield s


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rows(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"x": float(a), "y": float(b), "c": "abcz"[int(k)]} for a, b, k in
            zip(rng.random(n), rng.random(n), rng.integers(0, 4, n))]


def batch(n: int, seed: int = 0) -> Batch:
    return Batch.from_rows(rows(n, seed), types={"c": "str"})


def test_remote_scores_match_the_embedded_step_in_one_request(server, folder):
    step = RemoteScoreStep(server.url, "toy")
    out = step.process(batch(300))
    ref = ScoreStep(load_model(folder)).process(batch(300))
    np.testing.assert_allclose(out.columns["score"], ref.columns["score"], rtol=1e-9)
    assert out.columns["decision"].tolist() == ref.columns["decision"].tolist()  # the server's threshold, 0.3
    assert set(out.columns["model_version"]) == {"3"} and set(out.columns["model"]) == {"toy"}
    assert out.outputs == ["score", "decision", "model", "model_version"]
    assert step.requests == 2  # metadata once, then the whole batch as one inference request
    step.process(batch(10, seed=1))
    assert step.requests == 3
    step.close()


def test_large_batches_go_in_chunks_and_matrix_mode_works(server, folder):
    step = RemoteScoreStep(server.url, "toy", chunk_rows=40)
    out = step.process(batch(130))
    assert step.requests == 1 + 4
    matrix = RemoteScoreStep(server.url, "toy", features=["x", "y", "cc"], threshold=0.5)
    b = batch(50)
    b.with_column("cc", np.array([CATS["c"].index(v) if v in CATS["c"] else np.nan for v in b.column("c")]), False)
    out2 = matrix.process(b)
    assert len(out.columns["score"]) == 130
    np.testing.assert_allclose(out2.columns["score"], step.process(batch(50)).columns["score"], rtol=1e-9)
    assert out2.columns["decision"].tolist() == (out2.columns["score"] >= 0.5).tolist()


def test_server_down_raises_after_bounded_retries_then_the_breaker_fails_fast(folder):
    port = free_port()
    step = RemoteScoreStep(f"http://127.0.0.1:{port}", "toy", retries=2, backoff=0.01, timeout=1,
                           breaker_failures=5, breaker_cooldown=0.5)
    with pytest.raises(RemoteError, match="failed 3 times; last: ConnectError"):
        step.process(batch(5))
    assert step.requests == 3 and step.breaker.state == "closed"
    with pytest.raises(CircuitOpen):  # two more failures open the circuit mid-batch
        step.process(batch(5))
    assert step.requests == 5 and step.breaker.state == "open"
    t0 = time.monotonic()
    with pytest.raises(CircuitOpen, match="circuit open"):
        step.process(batch(5))
    assert step.requests == 5 and time.monotonic() - t0 < 0.05  # no call at all while open
    repo = ModelRepository()
    repo.add_folder(folder)
    time.sleep(0.5)
    with ModelServer(repo, port=port).start():  # back on the same port: the half-open probe closes the circuit
        out = step.process(batch(20))
    assert step.breaker.state == "closed" and len(out.columns["score"]) == 20


def test_stale_inputs_are_read_again_after_a_422(server, folder):
    step = RemoteScoreStep(server.url, "toy")
    step.inputs = [("x", "FP64"), ("old_feature", "FP64")]  # as if the model had been swapped since
    out = step.process(batch(10))
    assert [n for n, _ in step.inputs] == ["x", "y", "c"] and len(out.columns["score"]) == 10
    assert step.requests == 3  # the refused request, the metadata, the retry


def test_a_request_the_server_refuses_is_not_retried(server):
    step = RemoteScoreStep(server.url, "nope", retries=3, backoff=0.01)
    with pytest.raises(RemoteError, match="HTTP 404: unknown model 'nope'"):
        step.process(batch(5))
    assert step.requests == 1 and step.breaker.state == "closed"


def test_failed_batches_go_to_the_dlq_with_reason_remote_error(server):
    schema = Schema.from_dict({"x": "float", "y": "float", "c": "str"})
    values = [orjson.dumps(r) for r in rows(20)]
    ok = Pipeline("p", schema=schema, steps=[RemoteScoreStep(server.url, "toy")])
    outputs, rejects = ok.test(values)
    assert len(outputs) == 20 and not rejects
    down = Pipeline("p", schema=schema, steps=[RemoteScoreStep(f"http://127.0.0.1:{free_port()}", "toy",
                                                               retries=0)])
    outputs, rejects = down.test(values)
    assert outputs == [] and len(rejects) == 20
    assert {r.reason for r in rejects} == {"remote_error"} and {r.step for r in rejects} == {"remote"}
    assert "ConnectError" in rejects[0].message and rejects[0].value == values[0]  # original bytes kept


def test_yaml_remote_step():
    p = from_dict({"pipeline": "r", "schema": {"x": "float"},
                   "steps": [{"remote": {"url": "http://127.0.0.1:9/", "model": "toy", "timeout": 2, "retries": 1}}]})
    step = p.steps[0]
    assert isinstance(step, RemoteScoreStep)
    assert (step.url, step.model, step.timeout, step.retries, step.error_reason) == ("http://127.0.0.1:9", "toy", 2,
                                                                                     1, "remote_error")


def test_rows_are_routed_by_their_kafka_keys_on_a_canary_server(folder, tmp_path):
    from tidal.config import KafkaSettings
    from tidal.models.deployed import key_buckets
    from tidal.models.follower import DeploymentFollower
    from tidal.registry.deployment import Deployment, Target

    X = np.random.default_rng(1).random((500, 3))
    save_model(lightgbm.LGBMClassifier(n_estimators=5, n_jobs=1, verbose=-1).fit(X, (X[:, 1] > 0.5).astype(int)),
               tmp_path / "v4", "toy", 4, ["x", "y", "c"], categories=CATS)
    t3, t4 = (Target(v, str(f), load_model(f).card.sha256) for v, f in (("3", folder), ("4", tmp_path / "v4")))
    follower = DeploymentFollower(KafkaSettings("127.0.0.1:1"), "toy")
    follower.apply(Deployment("toy", "canary", t3, t4, share=0.5))
    repo = ModelRepository()
    repo.follow(follower)
    b = batch(60)
    b.keys = [b"user-%d" % i for i in range(59)] + [None]
    with ModelServer(repo).start() as s:
        out = RemoteScoreStep(s.url, "toy").process(b)
    expected = np.where(key_buckets(b.keys[:59], b.offsets[:59]) < 0.5, "4", "3").tolist() + ["3"]
    assert out.columns["model_version"].tolist() == expected and {"3", "4"} <= set(expected)
