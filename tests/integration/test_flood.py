"""A flood of requests against the model server and HTTP ingest (loopback, bounded count and time):
answers are 200 or 503 with Retry-After, nothing crashes, memory stays bounded, every accepted
record is on the topic, and the server answers normally afterwards.

Both servers run as `tidal` subprocesses with a small ``--max-in-flight`` so the flood meets it;
the clients are raw asyncio sockets (one request per connection, as a crowd of clients would)."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from .kafka_helpers import read_all, tidal_process

pytestmark = pytest.mark.integration

REQUESTS, CONCURRENT = 1500, 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def one(port: int, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        await writer.drain()
        raw = await reader.read()
    finally:
        writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, payload


async def flood(port: int, path: str, bodies: list[bytes]) -> list[tuple[int, dict[str, str], bytes]]:
    gate = asyncio.Semaphore(CONCURRENT)

    async def guarded(body: bytes):
        async with gate:
            try:
                return await one(port, path, body)
            except (ConnectionError, OSError) as exc:  # refused / reset: counted, not raised
                return 0, {}, str(exc).encode()

    return await asyncio.wait_for(asyncio.gather(*(guarded(b) for b in bodies)), timeout=120)


def wait_http(port: int, path: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2).status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{path} never answered 200")


def check_flood(answers, proc: subprocess.Popen) -> Counter:
    codes = Counter(code for code, _h, _b in answers)
    assert set(codes) <= {200, 503}, codes  # no 500, no reset connection
    assert codes[200] > 0 and codes[503] > 0, codes  # the flood met the limit, and work still got done
    for code, headers, body in answers:
        if code == 503:
            assert headers.get("retry-after") == "1" and b"overloaded" in body, (headers, body)
    assert proc.poll() is None
    return codes


def test_a_flood_against_the_model_server(settings, toy_model):
    port = free_port()
    proc = tidal_process(settings, "serve", str(toy_model), "--port", str(port), "--max-in-flight", "16",
                         "--max-batch-size", "64", "--max-batch-time", "0.002", "--log-level", "WARNING",
                         stderr=subprocess.PIPE, text=True)
    wait_http(port, "/v2/health/ready", proc)
    body = orjson.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [0.7]},
                                    {"name": "y", "shape": [1], "datatype": "FP64", "data": [0.6]}]})
    before = rss_mb(proc.pid)
    answers = asyncio.run(flood(port, "/v2/models/toy/infer", [body] * REQUESTS))
    codes = check_flood(answers, proc)
    scores = {round(json.loads(b)["outputs"][0]["data"][0], 9) for c, _h, b in answers if c == 200}
    assert len(scores) == 1  # every answered request got the same, right score
    assert rss_mb(proc.pid) - before < 150, (before, rss_mb(proc.pid))
    code, _h, payload = asyncio.run(one(port, "/v2/models/toy/infer", body))  # and it still serves
    assert code == 200 and round(json.loads(payload)["outputs"][0]["data"][0], 9) in scores
    print(f"model server flood: {dict(codes)}")


def test_a_flood_against_http_ingest(settings, name, tmp_path):
    spec = tmp_path / "p.yaml"
    spec.write_text(f"pipeline: {name}\nschema: {{id: int}}\nsteps: []\n")
    port = free_port()
    proc = tidal_process(settings, "ingest", "http", "--pipeline", str(spec), "--port", str(port),
                         env={"TIDAL_HTTP_MAX_IN_FLIGHT": "16"}, stderr=subprocess.PIPE, text=True)
    wait_http(port, "/health/ready", proc)
    before = rss_mb(proc.pid)
    answers = asyncio.run(flood(port, f"/ingest/{name}", [orjson.dumps({"id": i}) for i in range(REQUESTS)]))
    codes = check_flood(answers, proc)
    assert rss_mb(proc.pid) - before < 150
    accepted = sum(json.loads(b)["accepted"] for c, _h, b in answers if c == 200)
    assert accepted == codes[200]  # one record per accepted request
    on_topic = read_all(settings, f"{name}.events", 4)
    assert len(on_topic) == accepted  # every accepted record is there once; no refused one is
    print(f"ingest flood: {dict(codes)}")
