"""HTTP ingest against the real broker, over a real socket (uvicorn in a thread).

Accepted records are on the topic exactly (count and values, with keys); invalid ones are
answered 422 with their indices and nothing of the request is produced; a full in-flight
window answers 429 with Retry-After; an unreachable broker answers 503 and is not ready.
"""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import orjson
import pytest

from tidal.config import KafkaSettings
from tidal.connect.http import IngestPipeline, IngestServer, load_ingest_pipeline

from .kafka_helpers import read_all

pytestmark = pytest.mark.integration

SPEC = """pipeline: {name}
schema:
  card_id: str
  amount: {{type: float, min: 0}}
  note: {{type: str, required: false}}
steps: []
"""


def _wait_ready(url: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(f"{url}/health/ready").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError("ingest server never became ready")


@pytest.fixture(scope="module")
def server(settings, tmp_path_factory):
    import uuid

    name = f"h{uuid.uuid4().hex[:8]}"
    spec = tmp_path_factory.mktemp("http") / "p.yaml"
    spec.write_text(SPEC.format(name=name))
    pipe = load_ingest_pipeline(spec, key_field="card_id")
    # linger.ms 300: a request stays in flight long enough for a second one to meet the limit
    srv = IngestServer([pipe], settings, port=0, max_in_flight=120, probe_s=0.5,
                       producer_config={"linger.ms": 300}).start()
    _wait_ready(srv.url)
    yield srv, pipe
    srv.stop()


def test_single_and_batch_are_on_the_topic_exactly(server, settings):
    srv, pipe = server
    with httpx.Client(base_url=srv.url) as c:
        one = c.post(f"/ingest/{pipe.name}", json={"card_id": "c0", "amount": 1.5})
        assert one.status_code == 200 and one.json()["accepted"] == 1
        batch = [{"card_id": f"c{i}", "amount": float(i), "note": "x"} for i in range(1, 51)]
        many = c.post(f"/ingest/{pipe.name}", json=batch)
        assert many.status_code == 200 and many.json()["accepted"] == 50
        lines = b"".join(orjson.dumps({"card_id": f"c{i}", "amount": i}) + b"\n" for i in range(51, 61))
        nd = c.post(f"/ingest/{pipe.name}", content=lines, headers={"content-type": "application/x-ndjson"})
        assert nd.status_code == 200 and nd.json()["accepted"] == 10
        assert c.get("/health/live").status_code == 200
        metrics = c.get("/metrics").text
    msgs = read_all(settings, pipe.topic, 4)
    got = {m.key(): orjson.loads(m.value()) for m in msgs}
    assert len(msgs) == 61 and len(got) == 61
    assert got[b"c0"] == {"card_id": "c0", "amount": 1.5}
    assert got[b"c7"] == {"card_id": "c7", "amount": 7.0, "note": "x"}
    assert got[b"c55"] == {"card_id": "c55", "amount": 55}
    offsets = {(p, o) for p, o in many.json()["offsets"]}
    assert offsets <= {(m.partition(), m.offset()) for m in msgs} and len(offsets) == 50
    assert f'tidal_ingest_records_total{{outcome="accepted",pipeline="{pipe.name}"}} 61.0' in metrics
    assert "tidal_ingest_request_duration_seconds_bucket" in metrics


def test_invalid_records_get_422_with_indices_and_nothing_is_written(server, settings):
    srv, pipe = server
    before = len(read_all(settings, pipe.topic, 4))
    body = [{"card_id": "ok", "amount": 1}, {"card_id": "neg", "amount": -5}, {"amount": 2}, {"card_id": 3, "amount": 1}]
    r = httpx.post(f"{srv.url}/ingest/{pipe.name}", json=body)
    assert r.status_code == 422
    assert [(e["index"], e["reason"]) for e in r.json()["errors"]] == [(1, "out_of_range"), (2, "missing_field"),
                                                                         (3, "wrong_type")]
    assert "nothing was written" in r.json()["error"]
    bad = httpx.post(f"{srv.url}/ingest/{pipe.name}", content=b"[{\"card_id\": ")
    assert bad.status_code == 400
    assert httpx.post(f"{srv.url}/ingest/nope", json={}).status_code == 404
    assert len(read_all(settings, pipe.topic, 4)) == before


def test_a_full_in_flight_window_answers_429(server):
    srv, pipe = server
    batch = [{"card_id": f"q{i}", "amount": 1.0} for i in range(100)]

    async def two():
        async with httpx.AsyncClient(base_url=srv.url) as c:
            first = asyncio.create_task(c.post(f"/ingest/{pipe.name}", json=batch))
            await asyncio.sleep(0.1)  # the first 100 wait for the broker (linger 300 ms); limit 120
            second = await c.post(f"/ingest/{pipe.name}", json=batch)
            return await first, second

    first, second = asyncio.run(two())
    assert first.status_code == 200
    assert second.status_code == 429 and int(second.headers["retry-after"]) >= 1
    assert "retry" in second.json()["error"]


def test_unreachable_broker_is_not_ready_and_answers_503():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    pipe = IngestPipeline("down", "down.events")
    with IngestServer([pipe], KafkaSettings(f"127.0.0.1:{port}"), port=0, probe_s=0.3, timeout_s=1).start() as srv:
        time.sleep(0.8)
        assert httpx.get(f"{srv.url}/health/ready").status_code == 503
        r = httpx.post(f"{srv.url}/ingest/down", json={"x": 1})
        assert r.status_code == 503 and "unreachable" in r.json()["error"]
        assert "retry-after" in r.headers
        assert httpx.get(f"{srv.url}/health/live").status_code == 200


def test_a_token_guards_ingest_and_metrics_and_unknown_names_share_one_label(settings, tmp_path):
    import uuid

    name = f"h{uuid.uuid4().hex[:8]}"
    spec = tmp_path / "p.yaml"
    spec.write_text(SPEC.format(name=name))
    pipe = load_ingest_pipeline(spec, key_field="card_id")
    with IngestServer([pipe], settings, port=0, probe_s=0.3, token="s3cret").start() as srv:
        _wait_ready(srv.url)
        rec = {"card_id": "c1", "amount": 1.0}
        assert httpx.post(f"{srv.url}/ingest/{name}", json=rec).status_code == 401
        assert httpx.post(f"{srv.url}/ingest/{name}", json=rec,
                          headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = {"Authorization": "Bearer s3cret"}
        assert httpx.post(f"{srv.url}/ingest/{name}", json=rec, headers=ok).status_code == 200
        huge = httpx.post(f"{srv.url}/ingest/{name}", json=[rec, {**rec, "note": "z" * 1_500_000}], headers=ok)
        assert huge.status_code == 413 and "record 1 is" in huge.json()["error"]  # nothing of it written
        for i in range(30):  # a scan of made-up names
            assert httpx.post(f"{srv.url}/ingest/made-up-{i}", json=rec, headers=ok).status_code == 404
        assert httpx.get(f"{srv.url}/metrics").status_code == 401
        text = httpx.get(f"{srv.url}/metrics", headers=ok).text
        assert "made-up" not in text and 'pipeline="(unknown)",status="404"} 30.0' in text
    assert [orjson.loads(m.value()) for m in read_all(settings, f"{name}.events", 4)] == [rec]
