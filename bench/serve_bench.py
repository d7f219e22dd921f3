"""Model serving: adaptive batching under concurrency, and embedded vs remote scoring in a pipeline.

1. HTTP and gRPC: ``tidal serve --grpc-port`` in its own process on loopback; 64 concurrent
   closed loops send single-row OIP v2 requests for a fixed time, one client kind after the
   other against the same server: ``raw`` (JSON on a minimal asyncio HTTP/1.1 client),
   ``httpx`` (JSON, one httpx AsyncClient per loop), ``binary`` (the binary tensor data
   extension, bodies made by ``tritonclient.http``, on the raw client) and ``grpc`` (the
   generated ``grpc.aio`` stub, 8 channels, inputs as ``contents``). Requests/s and latency
   percentiles with adaptive batching off and on, for the LightGBM model and its ONNX conversion.
2. Stream: the same pre-produced backlog on the embedded broker, scored by one worker with the
   model embedded (``ScoreStep``) and with the remote step (``RemoteScoreStep``, one request per
   micro-batch) against a ``tidal serve`` process.

Model: the fraud demo's LightGBM (100 trees, 10 numeric + 1 categorical feature).

    python bench/serve_bench.py [--seconds 10] [--events 100000] [--quick] [--client all|raw|httpx|binary|grpc]

Prints a table and writes bench/results/<date>-serve.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import httpx
import lightgbm
import numpy as np
from confluent_kafka import Producer

from tidal.broker import EmbeddedBroker, TopicSpec, ensure_topics, produce_all
from tidal.config import KafkaSettings
from tidal.demos.fraud_data import CATEGORIES, FEATURES, SCHEMA, generate
from tidal.models import ScoreStep, load_model, save_model
from tidal.models.artifact import category_codes, feature_matrix
from tidal.serve.onnx import convert
from tidal.serve.remote import RemoteScoreStep
from tidal.stream import Pipeline, Worker
from tidal.stream.decode import decode_values

RESULTS = Path(__file__).resolve().parent / "results"
PARTITIONS = 4
CLIENTS = 64
GRPC_CHANNELS = 8  # HTTP/2 connections the 64 gRPC loops share


def train(values: list[bytes], labels: np.ndarray, folder: Path) -> list[dict]:
    """The demo's model; returns decoded rows to send as requests."""
    batch = decode_values(values, SCHEMA)
    X = feature_matrix(batch.column, FEATURES, category_codes({"merchant_category": CATEGORIES}))
    model = lightgbm.LGBMClassifier(n_estimators=100, num_leaves=31, verbose=-1)
    model.fit(X, labels[batch.offsets], categorical_feature=[FEATURES.index("merchant_category")])
    save_model(model, folder, "fraud", 1, FEATURES, categories={"merchant_category": CATEGORIES})
    cols = {f: batch.column(f)[:1000].tolist() for f in FEATURES}  # valid records only
    return [{f: cols[f][i] for f in FEATURES} for i in range(len(cols[FEATURES[0]]))]


class ServerProcess:
    """``tidal serve`` in a child process on a free loopback port."""

    def __init__(self, folder: Path, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tidal", "serve", str(folder), "--port", "0",
                                      "--log-level", "WARNING", *args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.url = self.grpc = ""
        for line in self.proc.stderr:
            m = re.search(r"serving on (http://\S+)", line)
            if m:
                self.url = m.group(1)
                g = re.search(r"gRPC on (\S+)", line)
                self.grpc = g.group(1) if g else ""
                break
        if not self.url:
            raise RuntimeError("tidal serve did not start")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("tidal serve never became ready")

    def metric(self, name: str) -> float:
        text = httpx.get(f"{self.url}/metrics").text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def oip_body(row: dict) -> bytes:
    inputs = [{"name": f, "shape": [1], "datatype": "BYTES" if f == "merchant_category" else "FP64",
               "data": [row.get(f)]} for f in FEATURES]
    return json.dumps({"inputs": inputs}).encode()


def binary_body(row: dict) -> tuple[bytes, int]:
    """The same request with the binary tensor data extension, as ``tritonclient.http`` encodes it."""
    import tritonclient.http as th

    inputs = []
    for f in FEATURES:
        categorical = f == "merchant_category"
        t = th.InferInput(f, [1], "BYTES" if categorical else "FP64")
        value = row.get(f)
        t.set_data_from_numpy(np.array([value], dtype=object) if categorical else np.array([value], dtype=np.float64),
                              binary_data=True)
        inputs.append(t)
    body, json_size = th.InferenceServerClient.generate_request_body(inputs)
    return body, json_size


def grpc_request(pb2, row: dict):
    """The same request as a ``ModelInferRequest`` with ``contents``."""
    req = pb2.ModelInferRequest(model_name="fraud")
    for f in FEATURES:
        t = req.inputs.add(name=f, datatype="BYTES" if f == "merchant_category" else "FP64", shape=[1])
        value = row.get(f)
        if f == "merchant_category":
            t.contents.bytes_contents.append(str(value).encode())
        else:
            t.contents.fp64_contents.append(float("nan") if value is None else float(value))
    return req


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _raw_loop(url: str, send, stop_at: float) -> None:
    """One client on a minimal keep-alive HTTP/1.1 connection (asyncio streams): a tenth of httpx's CPU."""
    host, port = url.split("//")[1].rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def post(body: bytes | tuple[bytes, int]) -> int:
        if isinstance(body, tuple):  # binary tensor data: (body, JSON header length)
            body, n = body
            writer.write(b"POST /v2/models/fraud/infer HTTP/1.1\r\nHost: bench\r\nContent-Type: "
                         b"application/octet-stream\r\nInference-Header-Content-Length: %d\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (n, len(body), body))
        else:
            writer.write(b"POST /v2/models/fraud/infer HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))  # not Inference-Header-...
        await reader.readexactly(length)
        return int(head[9:12])

    try:
        await send(post, stop_at)
    finally:
        writer.close()


async def load(url: str, bodies: list, seconds: float, warmup: float, client: str) -> dict:
    """CLIENTS concurrent closed loops of single-row requests, bounded by time and by count."""
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + seconds

    async def send(post, stop_at: float, i: int = 0) -> None:
        nonlocal errors
        for k in range(1_000_000):  # bounded; the clock ends it long before
            now = time.perf_counter()
            if now >= stop_at:
                return
            status = await post(bodies[(i * 7919 + k) % len(bodies)])
            if status != 200:
                errors += 1
            elif now >= measure_from:
                latencies.append(time.perf_counter() - now)

    if client in ("raw", "binary"):
        await asyncio.gather(*(_raw_loop(url, send, stop_at) for _ in range(CLIENTS)))
    elif client == "grpc":  # url: host:port; bodies: ModelInferRequest messages
        import grpc

        from tidal.serve.grpc_stubs import load as stubs

        pb2_grpc = stubs()[1]
        channels = [grpc.aio.insecure_channel(url) for _ in range(GRPC_CHANNELS)]
        calls = [pb2_grpc.GRPCInferenceServiceStub(ch).ModelInfer for ch in channels]

        def caller(call):
            async def post(request) -> int:
                try:
                    await call(request, timeout=10)
                    return 200
                except grpc.aio.AioRpcError:
                    return 500
            return post

        for ch in channels:
            await ch.channel_ready()
        start = time.perf_counter()
        measure_from, stop_at = start + warmup, start + warmup + seconds
        await asyncio.gather(*(send(caller(calls[i % len(calls)]), stop_at, i) for i in range(CLIENTS)))
        for ch in channels:
            await ch.close()
    else:  # one AsyncClient per loop: a shared pool of 64 connections costs httpx O(n) per request
        nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
        clients = [httpx.AsyncClient(base_url=url, timeout=10, headers={"content-type": "application/json"},
                                     transport=httpx.AsyncHTTPTransport(socket_options=nodelay))
                   for _ in range(CLIENTS)]

        def poster(c: httpx.AsyncClient):
            async def post(body: bytes) -> int:
                return (await c.post("/v2/models/fraud/infer", content=body)).status_code
            return post

        start = time.perf_counter()  # creating 64 clients takes a while: the clock starts now
        measure_from, stop_at = start + warmup, start + warmup + seconds
        await asyncio.gather(*(send(poster(c), stop_at, i) for i, c in enumerate(clients)))
        for c in clients:
            await c.aclose()
    lat = np.array(latencies) * 1000
    return {"requests_per_s": len(lat) / seconds, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "requests": len(lat), "errors": errors}


def http_scenario(folder: Path, bodies: dict[str, list], batching: bool, seconds: float, clients: list[str]) -> dict:
    args = ["--max-batch-size", "64", "--max-batch-time", "0.002"] if batching else []
    if "grpc" in clients:
        args += ["--grpc-port", str(free_port())]
    server = ServerProcess(folder, *args)
    out = {}
    try:
        for client in clients:
            calls0, reqs0 = server.metric("tidal_serve_model_calls_total"), server.metric("tidal_serve_requests_total")
            target = server.grpc if client == "grpc" else server.url
            r = asyncio.run(load(target, bodies[client], seconds, 1.0, client))
            calls = server.metric("tidal_serve_model_calls_total") - calls0
            r["rows_per_model_call"] = round((server.metric("tidal_serve_requests_total") - reqs0) / calls, 2)
            out[client] = r
    finally:
        server.stop()
    return out


def fill(settings: KafkaSettings, topic: str, keys: list[bytes], values: list[bytes]) -> None:
    ensure_topics(settings, [TopicSpec(topic, PARTITIONS)])
    p = Producer(settings.client_config({"linger.ms": 20, "batch.size": 1_000_000, "compression.type": "lz4",
                                         "log_level": 3}))
    produce_all(p, topic, values, keys)
    p.flush()


def stream_scenario(settings: KafkaSettings, topic: str, n: int, step) -> dict:
    name = f"bench{uuid.uuid4().hex[:6]}"
    p = Pipeline(name, sources=[topic], schema=SCHEMA, steps=[step], group=f"bench-{name}", max_batch=5000)
    ensure_topics(settings, [TopicSpec(p.sink, PARTITIONS), TopicSpec(p.dlq, 1)])
    w = Worker(p, settings)
    w.on_batch = lambda w, _b: w.stop() if w.stats.events_in >= n else None
    stats = w.run()
    return {"events_per_s": stats.events_in / (stats.last_event_at - stats.first_event_at),
            "outputs": stats.outputs, "dlq": dict(stats.dlq)}


def _http_stack() -> dict:
    from importlib.util import find_spec

    from importlib.metadata import PackageNotFoundError, version

    try:
        grpc_version = version("grpcio")
    except PackageNotFoundError:
        grpc_version = None
    return {"server": "uvicorn + starlette", "http_parser": "httptools" if find_spec("httptools") else "h11",
            "event_loop": "uvloop" if find_spec("uvloop") else "asyncio",
            "grpc": f"grpc.aio {grpc_version} on the same event loop" if grpc_version else None}


def main() -> None:
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="Measured seconds per HTTP scenario.")
    ap.add_argument("--events", type=int, default=100_000, help="Backlog for the stream scenarios.")
    ap.add_argument("--quick", action="store_true", help="3 s per HTTP scenario, 30k events.")
    ap.add_argument("--client", choices=["raw", "httpx", "binary", "grpc", "both", "all"], default="all",
                    help="raw: JSON on a minimal asyncio HTTP/1.1 client; httpx: 64 httpx.AsyncClient (~10x the client "
                         "CPU); binary: binary tensor data on the raw client; grpc: the grpc.aio stub; both: raw and "
                         "httpx; all: every one.")
    args = ap.parse_args()
    clients = {"both": ["raw", "httpx"], "all": ["raw", "httpx", "binary", "grpc"]}.get(args.client, [args.client])
    seconds, n = (3.0, 30_000) if args.quick else (args.seconds, args.events)
    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    gen = generate(30_000 + n, seed=11)
    rows = train(gen.values[:30_000], gen.labels[:30_000], work / "lgbm")
    onnx = convert(work / "lgbm", work / "onnx").folder
    bodies: dict[str, list] = {"raw": [oip_body(r) for r in rows]}
    bodies["httpx"] = bodies["raw"]
    if "binary" in clients:
        bodies["binary"] = [binary_body(r) for r in rows]
    if "grpc" in clients:
        from tidal.serve.grpc_stubs import load as stubs

        pb2 = stubs()[0]
        bodies["grpc"] = [grpc_request(pb2, r) for r in rows]

    http = {}
    for label, folder in (("LightGBM", work / "lgbm"), ("ONNX Runtime", onnx)):
        for batching in (False, True):
            key = f"{label}, batching {'on (64 rows / 2 ms)' if batching else 'off'}"
            http[key] = http_scenario(folder, bodies, batching, seconds, clients)
            print(f"  {key}: " + ", ".join(f"{c} {v['requests_per_s']:,.0f} req/s" for c, v in http[key].items()),
                  file=sys.stderr)

    stream = {}
    with EmbeddedBroker() as broker:
        settings = KafkaSettings(broker.bootstrap)
        topic = f"bench.serve.{uuid.uuid4().hex[:6]}"
        fill(settings, topic, gen.keys[30_000:], gen.values[30_000:])
        stream["embedded ScoreStep (LightGBM in the worker)"] = stream_scenario(
            settings, topic, n, ScoreStep(load_model(work / "lgbm")))
        stream["embedded ScoreStep (ONNX Runtime in the worker)"] = stream_scenario(
            settings, topic, n, ScoreStep(load_model(onnx)))
        server = ServerProcess(work / "lgbm")
        try:
            stream["RemoteScoreStep → tidal serve (LightGBM), 1 request per micro-batch"] = stream_scenario(
                settings, topic, n, RemoteScoreStep(server.url, "fraud", timeout=30))
        finally:
            server.stop()

    print(f"\nHTTP / gRPC: single-row OIP v2 requests, {CLIENTS} concurrent clients, {seconds:g} s each")
    print(f"{'scenario':<36} {'client':<6} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'rows/call':>10}")
    for k, by_client in http.items():
        for c, v in by_client.items():
            print(f"{k:<36} {c:<6} {v['requests_per_s']:>8,.0f} {v['p50_ms']:>8.1f} {v['p99_ms']:>8.1f} "
                  f"{v['rows_per_model_call']:>10.1f}")
    print(f"\nStream: {n:,} events, 1 worker, micro-batches of up to 5,000")
    print(f"{'scenario':<72} {'events/s':>10}")
    for k, v in stream.items():
        print(f"{k:<72} {v['events_per_s']:>10,.0f}")
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    out = RESULTS / f"{stamp}-serve.json"
    out.write_text(json.dumps({"date": stamp, "clients": CLIENTS, "seconds": seconds, "events": n,
                               "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                           "python": platform.python_version(),
                                           "load_average_at_start": load_at_start},
                               "http_stack": _http_stack(),
                               "http": http, "stream": stream}, indent=2))
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
