"""Inference requests over Kafka (``tidal serve --kafka-input``) on the real broker: every request
answered once with the model's own scores, malformed ones in the DLQ, nothing lost across a SIGKILL."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import numpy as np
import orjson
import pytest
from confluent_kafka import Producer
from sklearn.linear_model import LogisticRegression

from tidal.broker import ensure_topics
from tidal.broker.topics import TopicSpec
from tidal.models import load_model, save_model
from tidal.serve import ModelRepository
from tidal.serve.kafka import KafkaInference

from .kafka_helpers import read_all, tidal_process

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lin_model(tmp_path_factory):
    """A second model on x and y (logistic regression), named ``lin``."""
    rng = np.random.default_rng(1)
    X = rng.random((500, 2))
    folder = tmp_path_factory.mktemp("models") / "lin-v3"
    save_model(LogisticRegression().fit(X, (X[:, 0] > X[:, 1]).astype(int)), folder, "lin", 3, ["x", "y"])
    return folder


def request(rows: list[list[float]], rid: str | None = None, matrix: bool = False) -> bytes:
    n = len(rows)
    if matrix:  # one [N, features] tensor in the card's feature order
        inputs = [{"name": "input-0", "shape": [n, 2], "datatype": "FP64", "data": rows}]
    else:
        inputs = [{"name": f, "shape": [n], "datatype": "FP64", "data": [r[j] for r in rows]}
                  for j, f in enumerate(("x", "y"))]
    body: dict = {"inputs": inputs}
    if rid is not None:
        body["id"] = rid
    return orjson.dumps(body)


def headers_of(msg) -> dict[str, str]:
    return {k: (v or b"").decode() for k, v in (msg.headers() or [])}


def run_in_thread(server: KafkaInference) -> threading.Thread:
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    return t


def wait_count(settings, topics: list[tuple[str, int]], count: int, timeout: float = 60.0,
               alive=lambda: True) -> int:
    deadline = time.monotonic() + timeout
    n = 0
    while time.monotonic() < deadline and alive():
        n = sum(len(read_all(settings, t, p)) for t, p in topics)
        if n >= count:
            return n
        time.sleep(0.3)
    raise AssertionError(f"only {n} of {count} records arrived within {timeout}s" + ("" if alive() else
                         " (the server is gone)"))


def test_every_request_answered_once_with_the_models_scores_and_bad_ones_dead_lettered(
        settings, name, toy_model, lin_model):
    src, out = f"{name}.requests", f"{name}.responses"
    repo = ModelRepository()
    repo.add_folder(toy_model)
    repo.add_folder(lin_model)
    models = {"toy": load_model(toy_model), "lin": load_model(lin_model)}
    ensure_topics(settings, [TopicSpec(src, 3), TopicSpec(out, 3), TopicSpec(f"{src}.dlq", 1)])  # read below

    rng = np.random.default_rng(7)
    producer = Producer(settings.client_config({"linger.ms": 5, "log_level": 3}))
    sent: dict[str, dict] = {}  # request id -> what was asked
    for i in range(240):
        n = 1 if i % 3 else 2 + i % 7  # single-row requests, and some of 2..8 rows
        rows = rng.random((n, 2)).round(6).tolist()
        model = "toy" if i % 2 else "lin"
        header = "mlserver-model" if i % 4 < 2 else "tidal-model"
        rid = f"r{i}" if i % 5 else None  # no id: the record's key is the request id
        key = f"k{i}".encode()
        headers = [(header, model.encode()), ("trace", f"t{i}".encode())]
        if model == "lin" and i % 8 == 0:
            headers.append(("mlserver-version", b"3"))
        producer.produce(src, request(rows, rid, matrix=i % 4 == 0), key, headers=headers)
        sent[rid or key.decode()] = {"rows": rows, "model": model, "key": key, "trace": f"t{i}"}
    bad = {
        b"bad-json": (b'{"inputs": [', [("mlserver-model", b"toy")], "invalid_json"),
        b"not-a-request": (b'{"id": "x1", "parameters": {}}', [("mlserver-model", b"toy")], "invalid_request"),
        b"unknown-model": (request([[0.1, 0.2]], "x2"), [("mlserver-model", b"nope")], "unknown_model"),
        b"unknown-version": (request([[0.1, 0.2]], "x3"), [("mlserver-model", b"toy"), ("mlserver-version", b"9")],
                             "unknown_model"),
        b"no-model-header": (request([[0.1, 0.2]], "x4"), [], "unknown_model"),  # two models served: which?
        b"wrong-shape": (orjson.dumps({"inputs": [{"name": "x", "shape": [2], "datatype": "FP64", "data": [0.1]},
                                                  {"name": "y", "shape": [2], "datatype": "FP64", "data": [0.1, 0.2]}]}),
                         [("tidal-model", b"toy")], "invalid_input"),
        b"missing-input": (orjson.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [0.1]}]}),
                           [("tidal-model", b"lin")], "invalid_input"),
    }
    for key, (value, headers, _reason) in bad.items():
        producer.produce(src, value, key, headers=headers)
    assert producer.flush(30) == 0

    server = KafkaInference(repo, settings, src, out, max_batch=64, handle_signals=False)
    thread = run_in_thread(server)
    try:
        wait_count(settings, [(out, 3), (server.dlq, 1)], len(sent) + len(bad), alive=thread.is_alive)
    finally:
        server.stop()
        thread.join(30)
    assert not thread.is_alive()

    answers = read_all(settings, out, 3)
    ids = Counter(orjson.loads(m.value())["id"] for m in answers)
    assert ids == Counter(sent.keys())  # each request exactly once (one clean run), nothing else
    rows_checked = 0
    for m in answers:
        body, h = orjson.loads(m.value()), headers_of(m)
        asked = sent[body["id"]]
        assert m.key() == asked["key"]
        assert body["model_name"] == asked["model"] == h["tidal-model"] == h["Ce-Modelid"]
        assert h["tidal-request-id"] == h["Ce-Requestid"] == body["id"]
        assert h["trace"] == asked["trace"]  # the request's headers come back
        assert h["Ce-Type"] == "io.seldon.serving.inference.response"
        outputs = {o["name"]: o for o in body["outputs"]}
        X = np.array(asked["rows"])
        model = models[asked["model"]]
        expected = np.asarray(model.predict(X), dtype=np.float64)
        assert outputs["score"]["shape"] == [len(X)] and outputs["score"]["datatype"] == "FP64"
        np.testing.assert_allclose(outputs["score"]["data"], expected, rtol=1e-12, atol=0)
        assert outputs["decision"]["data"] == (expected >= model.card.threshold).tolist()
        rows_checked += len(X)
    assert rows_checked > len(sent)  # multi-row requests were among them

    dead = read_all(settings, server.dlq, 1)
    assert sorted(m.key() for m in dead) == sorted(bad)
    for m in dead:
        value, _headers, reason = bad[m.key()]
        h = headers_of(m)
        assert m.value() == value  # the original bytes
        assert h["tidal.error.reason"] == reason, h
        assert h["tidal.error.message"]
        assert h["tidal.source.topic"] == src and int(h["tidal.source.offset"]) >= 0
        assert h["tidal.pipeline"] == server.pipeline.name
    assert "nope" in headers_of(next(m for m in dead if m.key() == b"unknown-model"))["tidal.error.message"]

    toy_requests = sum(1 for a in sent.values() if a["model"] == "toy")
    calls = server.plane.metrics.value("tidal_serve_model_calls_total", model_name="toy", model_version="1")
    assert 0 < calls < toy_requests / 4, (calls, toy_requests)  # requests of a micro-batch share model calls
    assert server.worker.stats.dlq == Counter(r for _v, _h, r in bad.values())


def test_restart_after_sigkill_answers_every_request(settings, name, toy_model):
    """The serving process is killed mid-stream and started again: every request has a response."""
    src, out, total = f"{name}.in", f"{name}.out", 3000
    ensure_topics(settings, [TopicSpec(src, 4), TopicSpec(out, 4)])
    rng = np.random.default_rng(3)
    xy = rng.random((total, 2)).round(6).tolist()
    producer = Producer(settings.client_config({"linger.ms": 5, "log_level": 3}))
    stop = threading.Event()

    up = threading.Event()

    def feed() -> None:  # paced, so the kill lands mid-stream and requests arrive while it is down
        for i in range(total):
            if stop.is_set():
                return
            producer.produce(src, request([xy[i]], f"r{i}"), f"k{i}".encode())  # no header: the only model
            if i == 199:
                producer.flush(10)
                up.wait(90)  # the server answers: go on at ~500 requests/s
            elif i % 50 == 49:
                producer.flush(10)
                time.sleep(0.1)
        producer.flush(30)

    cmd = ["serve", str(toy_model), "--kafka-input", src, "--kafka-output", out, "--kafka-max-batch", "50",
           "--log-level", "WARNING"]
    feeder = threading.Thread(target=feed, daemon=True)
    proc = tidal_process(settings, *cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        feeder.start()
        wait_count(settings, [(out, 4)], 100, timeout=90, alive=lambda: proc.poll() is None)
        up.set()
        time.sleep(1.5)  # answering the paced stream (~500 requests/s, 6 s in all): kill it now
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        killed_at = len(read_all(settings, out, 4))
        assert 100 <= killed_at < total, "the kill did not land mid-stream"
        proc = tidal_process(settings, *cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        ids: Counter = Counter()
        while time.monotonic() < deadline:
            msgs = read_all(settings, out, 4)
            ids = Counter(orjson.loads(m.value())["id"] for m in msgs)
            if len(ids) >= total:
                break
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err.decode()[-2000:]
    finally:
        stop.set()
        feeder.join(30)
    missing = [f"r{i}" for i in range(total) if ids[f"r{i}"] == 0]
    assert not missing, f"{len(missing)} requests never answered, e.g. {missing[:5]}"
    assert set(ids) == {f"r{i}" for i in range(total)}
    repeated = sum(c - 1 for c in ids.values())
    print(f"\nkilled after {killed_at} responses; {repeated} requests answered again after the restart")
    assert not read_all(settings, f"{src}.dlq", 1)
    model = load_model(toy_model)  # spot-check the scores of the answers
    msgs = read_all(settings, out, 4)
    for m in msgs[::97]:
        body = orjson.loads(m.value())
        i = int(body["id"][1:])
        assert m.key() == f"k{i}".encode()
        assert body["outputs"][0]["data"] == pytest.approx(model.predict(np.array([xy[i]])).tolist(), rel=1e-12)


def test_throughput_figure(settings, name, toy_model):
    """Not a timed assertion: measures requests/s (single-row, and 10-row requests) and prints them."""
    figures = {}
    for rows_per_request, count in ((1, 20000), (10, 5000)):
        src, out = f"{name}.r{rows_per_request}", f"{name}.o{rows_per_request}"
        ensure_topics(settings, [TopicSpec(src, 4), TopicSpec(out, 4)])
        rng = np.random.default_rng(5)
        producer = Producer(settings.client_config({"linger.ms": 20, "log_level": 3}))
        for i in range(count):
            producer.produce(src, request(rng.random((rows_per_request, 2)).tolist(), f"r{i}"), f"k{i}".encode())
            if i % 5000 == 4999:
                producer.poll(0)
        assert producer.flush(60) == 0
        repo = ModelRepository()
        repo.add_folder(toy_model)
        server = KafkaInference(repo, settings, src, out, handle_signals=False)
        marks: dict[str, float] = {}

        def on_batch(worker, _batch) -> None:
            marks.setdefault("first", time.perf_counter())
            marks.setdefault("first_n", worker.stats.events_in)
            if worker.stats.events_in >= count:
                worker.stop()

        server.worker.on_batch = on_batch
        run_in_thread(server).join(120)
        end = time.perf_counter()  # after the shutdown: every response acknowledged, offsets committed
        n = count - marks["first_n"]
        seconds = end - marks["first"]
        assert server.step.answered == count
        figures[rows_per_request] = (n / seconds, n * rows_per_request / seconds, server.worker.stats.batches)
    with open(sys.stderr.fileno(), "w", closefd=False) as err:
        for k, (rps, rows, batches) in figures.items():
            print(f"\n{k}-row requests: {rps:,.0f} requests/s, {rows:,.0f} rows/s ({batches} micro-batches)", file=err)


def test_exactly_once_puts_responses_dead_letters_and_offsets_in_one_transaction(settings, name, toy_model):
    src, out = f"{name}.eos", f"{name}.eos-out"
    ensure_topics(settings, [TopicSpec(src, 2), TopicSpec(out, 2), TopicSpec(f"{src}.dlq", 1)])
    values = [request([[i / 100, 1 - i / 100]], f"r{i}") for i in range(100)] + [b"nope"]
    producer = Producer(settings.client_config({"linger.ms": 5, "log_level": 3}))
    for i, v in enumerate(values):
        producer.produce(src, v, f"k{i}".encode())
    assert producer.flush(30) == 0
    repo = ModelRepository()
    repo.add_folder(toy_model)
    server = KafkaInference(repo, settings, src, out, max_batch=30, exactly_once=True, handle_signals=False)
    thread = run_in_thread(server)
    try:
        wait_count(settings, [(out, 2), (server.dlq, 1)], len(values), alive=thread.is_alive)
    finally:
        server.stop()
        thread.join(30)
    answers = read_all(settings, out, 2, isolation="read_committed")
    assert sorted(orjson.loads(m.value())["id"] for m in answers) == sorted(f"r{i}" for i in range(100))
    assert [headers_of(m)["tidal.error.reason"] for m in read_all(settings, server.dlq, 1, "read_committed")] \
        == ["invalid_json"]
    assert server.worker.stats.commits >= 1 and server.worker.stats.aborted == 0


def test_one_process_answers_kafka_requests_and_http_with_the_same_model(settings, name, toy_model):
    """``tidal serve --kafka-input ... --http``: both protocols from one process and one repository."""
    import urllib.request

    from tidal.broker.embedded import free_port

    src, out = f"{name}.in", f"{name}.out"
    ensure_topics(settings, [TopicSpec(src, 1), TopicSpec(out, 1)])
    port = free_port()
    cmd = ["serve", str(toy_model), "--kafka-input", src, "--kafka-output", out, "--http", "--port", str(port),
           "--log-level", "WARNING"]
    proc = tidal_process(settings, *cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    body = request([[0.2, 0.9], [0.7, 0.1]], "both")
    try:
        producer = Producer(settings.client_config({"log_level": 3}))
        producer.produce(src, body, b"k")
        producer.flush(10)
        wait_count(settings, [(out, 1)], 1, timeout=60, alive=lambda: proc.poll() is None)
        (msg,) = read_all(settings, out, 1)
        by_kafka = orjson.loads(msg.value())
        base = f"http://127.0.0.1:{port}/v2"
        assert urllib.request.urlopen(f"{base}/health/ready", timeout=5).status == 200
        req = urllib.request.Request(f"{base}/models/toy/infer", data=body, headers={"Content-Type": "application/json"})
        by_http = orjson.loads(urllib.request.urlopen(req, timeout=10).read())
        assert by_http["id"] == by_kafka["id"] == "both" and by_http["model_name"] == by_kafka["model_name"] == "toy"
        assert by_http["outputs"] == by_kafka["outputs"]
        assert by_kafka["outputs"][0]["data"] == pytest.approx(
            load_model(toy_model).predict(np.array([[0.2, 0.9], [0.7, 0.1]])).tolist(), rel=1e-12)
        proc.send_signal(signal.SIGTERM)  # the worker drains and commits, then the HTTP server stops
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err.decode()[-2000:]
        assert "answered 1 requests" in err.decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    with pytest.raises(OSError):  # nothing listens there any more
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/live", timeout=2)
