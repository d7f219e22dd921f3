"""The model server with the real broker: the remote step through a worker, a server restart, hot-swaps."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import lightgbm
import numpy as np
import orjson
import pytest
from confluent_kafka import Producer

from tidal.broker import ensure_topics
from tidal.broker.topics import MODELS_TOPIC
from tidal.models import load_model, save_model
from tidal.models.deployed import key_buckets
from tidal.quality import Schema
from tidal.registry.deployment import Deployment, Target
from tidal.serve import ModelRepository, ModelServer
from tidal.serve.remote import RemoteScoreStep
from tidal.stream import Pipeline, Worker

from .kafka_helpers import read_all, records

pytestmark = pytest.mark.integration

SCHEMA = Schema.from_dict({"id": "int", "x": "float", "y": "float"})


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    rng = np.random.default_rng(2)
    X = rng.random((2000, 2))
    root = tmp_path_factory.mktemp("serve-kafka")
    out = {}
    for v, y in ((1, X.sum(1) > 1), (2, X[:, 0] > 0.5)):
        m = lightgbm.LGBMClassifier(n_estimators=10, n_jobs=1, verbose=-1).fit(X, y.astype(int))
        card = save_model(m, root / f"v{v}", "m", v, ["x", "y"])
        out[v] = Target(str(v), str(root / f"v{v}"), card.sha256)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(folder, port: int) -> ModelServer:
    repo = ModelRepository()
    repo.add_folder(folder)
    return ModelServer(repo, port=port, max_batch_size=256, max_batch_time=0.002).start()


def test_remote_step_loses_nothing_when_the_server_stops_mid_stream(settings, name, versions):
    port = free_port()
    server = serve(versions[1].path, port)
    step = RemoteScoreStep(f"http://127.0.0.1:{port}", "m", retries=1, backoff=0.02, timeout=2,
                           breaker_failures=3, breaker_cooldown=0.3)
    pipeline = Pipeline(name, schema=SCHEMA, steps=[step], max_batch=100, max_wait_ms=20)
    ensure_topics(settings, pipeline.topic_specs())
    worker = Worker(pipeline, settings)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()

    n, rng = 3000, np.random.default_rng(0)
    xy = rng.random((n, 2)).tolist()
    producer = Producer(settings.client_config({"linger.ms": 5, "log_level": 3}))

    def send(ids: range, pace: bool = False) -> None:
        for i in ids:
            producer.produce(f"{name}.events", orjson.dumps({"id": i, "x": xy[i][0], "y": xy[i][1]}), b"k%d" % i)
            if pace and i % 100 == 99:  # ~2,000 events/s
                producer.flush()
                time.sleep(0.05)
        producer.flush()

    def wait(topic: str, partitions: int, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(read_all(settings, topic, partitions)) < count:
            assert time.monotonic() < deadline, f"{topic}: fewer than {count} records in {timeout}s"
            time.sleep(0.2)

    try:
        send(range(0, 500))
        wait(f"{name}.predictions", 4, 500)  # the worker runs and scores remotely
        send(range(500, 1000), pace=True)
        server.stop()  # mid-stream: the worker is consuming while the server goes away
        send(range(1000, 2000), pace=True)
        wait(f"{name}.dlq", 1, 1)
        server = serve(versions[1].path, port)  # back on the same address
        time.sleep(0.5)  # past the breaker's cool-down: the next batch is the probe
        send(range(2000, n), pace=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            outs, dlq = read_all(settings, f"{name}.predictions", 4), read_all(settings, f"{name}.dlq", 1)
            if len(outs) + len(dlq) >= n:
                break
            time.sleep(0.3)
    finally:
        worker.stop()
        thread.join(20)
        server.stop()

    out_ids = [r["id"] for r in records(outs)]
    dlq_ids = [orjson.loads(m.value())["id"] for m in dlq]
    assert sorted(out_ids + dlq_ids) == list(range(n))  # events in = predictions + DLQ, nothing twice
    assert {dict(m.headers())["tidal.error.reason"] for m in dlq} == {b"remote_error"}
    assert 500 <= min(dlq_ids) and max(dlq_ids) < 2000  # only what arrived while the server was away
    assert set(range(2000, n)) <= set(out_ids)  # after the restart every event is scored again
    assert worker.stats.dlq["remote_error"] == len(dlq_ids)
    m1 = load_model(versions[1].path)
    got = records(outs)
    np.testing.assert_allclose([r["score"] for r in got], m1.predict(np.array([[r["x"], r["y"]] for r in got])),
                               rtol=1e-9)


def publish(settings, model: str, d: Deployment) -> None:
    ensure_topics(settings, [MODELS_TOPIC])
    p = Producer(settings.client_config({"log_level": 3}))
    p.produce(MODELS_TOPIC, d.to_json(), model.encode())
    assert p.flush(10) == 0


def version_of(client: httpx.Client, model: str, key: str | None = None) -> str:
    body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [0.7]},
                       {"name": "y", "shape": [1], "datatype": "FP64", "data": [0.2]}]}
    r = client.post(f"/v2/models/{model}/infer", json=body, headers={"x-tidal-key": key} if key else {})
    assert r.status_code == 200, r.text
    return r.json()["model_version"]


def test_tidal_serve_follow_hot_swaps_on_tidal_models_without_failing_a_request(settings, name, versions):
    model = f"m-{name}"
    publish(settings, model, Deployment(model, "single", versions[1], seq=1))
    proc = subprocess.Popen([sys.executable, "-m", "tidal", "serve", "--follow", model, "--port", "0",
                             "--bootstrap", settings.bootstrap, "--wait", "20"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        url = next(m.group(1) for line in proc.stderr if (m := re.search(r"serving on (http://\S+)", line)))
        client = httpx.Client(base_url=url, timeout=10)
        assert client.get(f"/v2/models/{model}/ready").status_code == 200
        assert version_of(client, model) == "1"
        seen, stop = [], threading.Event()

        def load() -> None:  # steady traffic through the swap: every request must succeed
            with httpx.Client(base_url=url, timeout=10) as c:
                while not stop.is_set():
                    seen.append(version_of(c, model))

        t = threading.Thread(target=load)
        t.start()
        publish(settings, model, Deployment(model, "single", versions[2], seq=2))
        deadline = time.monotonic() + 15
        while version_of(client, model) != "2":
            assert time.monotonic() < deadline, "the server did not swap to v2"
            time.sleep(0.05)
        time.sleep(0.2)
        stop.set()
        t.join(10)
        first_two = seen.index("2")
        assert set(seen[:first_two]) == {"1"} and set(seen[first_two:]) == {"2"}  # one clean switch

        publish(settings, model, Deployment(model, "canary", versions[1], versions[2], share=0.3, seq=3))
        keys = [f"card-{i}" for i in range(30)]
        expected = np.where(key_buckets([k.encode() for k in keys], np.zeros(30)) < 0.3, "2", "1").tolist()
        deadline = time.monotonic() + 15
        while [version_of(client, model, k) for k in keys] != expected:
            assert time.monotonic() < deadline, "canary routing never matched the stream engine's key hash"
            time.sleep(0.1)
        assert {"1", "2"} <= set(expected)
        client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
