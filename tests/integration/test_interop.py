"""Other Kafka clients and tidal on the same broker: events produced by kafka-python and aiokafka
are scored by a tidal worker, and both clients read its predictions and dead letters back.

What each client needs: tidal's producers compress with lz4 by default, which kafka-python reads
only with the ``lz4`` package and aiokafka only with ``cramjam`` (``aiokafka[lz4]``); a pipeline
with ``producer_config={"compression.type": "none"}`` is readable without either. "Without" is a
subprocess where the module cannot be imported (``sys.modules[name] = None``), as if not installed.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from tidal.broker import ensure_topics
from tidal.stream import Pipeline, Worker
from tidal.stream.batch import Batch
from tidal.stream.hooks import WorkerHooks
from tidal.stream.schema import Schema

from .kafka_helpers import produce, run_until

pytestmark = [
    pytest.mark.integration,
    # kafka-python 3.0 loads its protocol schemas with importlib.resources' legacy read_text/open_text
    pytest.mark.filterwarnings("ignore:(read_text|open_text) is deprecated:DeprecationWarning"),
]

SCHEMA = Schema.from_dict({"id": "int", "x": "float"})
N = 20
MALFORMED = b'{"id": 999, "x": '  # cut short: invalid JSON, so a dead letter


def doubled(batch: Batch) -> Batch:
    return batch.with_column("x2", batch.column("x") * 2)


def pipeline(name: str, **kw) -> Pipeline:
    return Pipeline(name, schema=SCHEMA, partitions=2, max_wait_ms=20, **kw).then(doubled, name="double")


def events() -> list[tuple[bytes, bytes]]:
    """(key, value): N valid events, then the malformed one."""
    return [(f"k{i}".encode(), orjson.dumps({"id": i, "x": i / 4})) for i in range(N)] + [(b"bad", MALFORMED)]


# -- producing ---------------------------------------------------------------------------------
def kafka_python_produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> tuple:
    from kafka import KafkaProducer

    p = KafkaProducer(bootstrap_servers=bootstrap, compression_type="lz4", linger_ms=5)  # lz4: needs `lz4`
    try:
        for k, v in records:
            p.send(topic, v, key=k, headers=[("sent-by", b"kafka-python")])
        p.flush(30)
        return p.config["api_version"]  # auto-detected from the broker's ApiVersions answer
    finally:
        p.close(10)


def aiokafka_produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    from aiokafka import AIOKafkaProducer

    async def go() -> None:
        p = AIOKafkaProducer(bootstrap_servers=bootstrap, compression_type="gzip", linger_ms=5)
        await p.start()
        try:
            for f in [await p.send(topic, v, key=k, headers=[("sent-by", b"aiokafka")]) for k, v in records]:
                await f
        finally:
            await p.stop()

    asyncio.run(go())


# -- reading: every record of a topic now, to each partition's end -------------------------------
def kafka_python_read(bootstrap: str, topic: str, partitions: int, timeout: float = 30) -> list[dict]:
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        end = c.end_offsets(tps)
        out: list[dict] = []
        deadline = time.monotonic() + timeout
        while any(c.position(tp) < end[tp] for tp in tps):
            assert time.monotonic() < deadline, f"kafka-python: {topic} not read to its end in {timeout}s"
            for recs in c.poll(500).values():
                out += [{"key": r.key, "value": r.value, "headers": dict(r.headers)} for r in recs]
        return out
    finally:
        c.close()


def aiokafka_read(bootstrap: str, topic: str, partitions: int, timeout: float = 30) -> list[dict]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def go() -> list[dict]:
        c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await c.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(partitions)]
            c.assign(tps)
            await c.seek_to_beginning(*tps)
            end = await c.end_offsets(tps)
            out: list[dict] = []
            deadline = time.monotonic() + timeout
            while any([await c.position(tp) < end[tp] for tp in tps]):
                assert time.monotonic() < deadline, f"aiokafka: {topic} not read to its end in {timeout}s"
                for recs in (await c.getmany(timeout_ms=500)).values():
                    out += [{"key": r.key, "value": r.value, "headers": dict(r.headers)} for r in recs]
            return out
        finally:
            await c.stop()

    return asyncio.run(go())


PRODUCERS = {"kafka-python": kafka_python_produce, "aiokafka": aiokafka_produce}
READERS = {"kafka-python": kafka_python_read, "aiokafka": aiokafka_read}
CODEC_MODULES = {"kafka-python": ["lz4", "lz4.frame", "lz4f", "lz4framed"], "aiokafka": ["cramjam"]}


def read_without_codec(client: str, bootstrap: str, topic: str, partitions: int) -> dict:
    """Read ``topic`` with ``client`` in a subprocess where its lz4 library cannot be imported."""
    script = (
        "import json, sys\n"
        f"for m in {CODEC_MODULES[client]!r}: sys.modules[m] = None\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})\n"
        "from integration.test_interop import READERS\n"
        "try:\n"
        f"    recs = READERS[{client!r}]({bootstrap!r}, {topic!r}, {partitions})\n"
        "    print(json.dumps({'values': [r['value'].decode() for r in recs]}))\n"
        "except Exception as exc:\n"
        "    print(json.dumps({'error': f'{type(exc).__name__}: {exc}'}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def score(settings, p: Pipeline) -> None:
    worker = Worker(p, settings, hooks=WorkerHooks())
    run_until(worker, N + 1)
    assert (worker.stats.outputs, worker.stats.events_in) == (N, N + 1)


# -- tests -------------------------------------------------------------------------------------
@pytest.mark.parametrize("producer", list(PRODUCERS))
def test_events_from_another_client_are_scored_and_both_clients_read_outputs_and_dlq(settings, name, producer):
    p = pipeline(name)
    ensure_topics(settings, p.topic_specs())
    detected = PRODUCERS[producer](settings.bootstrap, p.sources[0], events())
    if producer == "kafka-python":
        assert isinstance(detected, tuple) and detected >= (0, 11), detected  # record headers need 0.11+
    score(settings, p)

    for reader, read in READERS.items():
        out = [orjson.loads(r["value"]) for r in read(settings.bootstrap, p.sink, p.partitions)]
        assert sorted(r["id"] for r in out) == list(range(N)), reader  # each event once
        for r in out:
            assert r["x2"] == 2 * r["x"] == r["id"] / 2, (reader, r)
            assert r["source_topic"] == p.sources[0] and 0 <= r["source_partition"] < p.partitions

        [dead] = read(settings.bootstrap, p.dlq, 1)
        assert (dead["key"], dead["value"]) == (b"bad", MALFORMED), reader  # the original bytes, to replay
        h = dead["headers"]
        assert h["tidal.error.reason"] == b"invalid_json", (reader, h)
        assert h["tidal.pipeline"] == name.encode() and h["tidal.source.topic"] == p.sources[0].encode()
        assert h["tidal.error.message"] and int(h["tidal.source.offset"]) >= 0


def test_tidal_default_lz4_output_needs_lz4_in_kafka_python_and_cramjam_in_aiokafka(settings, name):
    p = pipeline(name)  # tidal's default producer: compression.type lz4
    ensure_topics(settings, p.topic_specs())
    produce(settings, p.sources[0], [v for _, v in events()], [k for k, _ in events()])
    score(settings, p)
    for client in READERS:
        got = read_without_codec(client, settings.bootstrap, p.sink, p.partitions)
        assert "values" not in got, f"{client} read lz4 batches without its lz4 library: {got}"
        assert got["error"].startswith("UnsupportedCodecError") and "lz4" in got["error"], (client, got)


def test_compression_none_output_is_readable_without_lz4_or_cramjam(settings, name):
    p = pipeline(name, producer_config={"compression.type": "none"})  # YAML: kafka: {producer: {compression.type: none}}
    ensure_topics(settings, p.topic_specs())
    produce(settings, p.sources[0], [v for _, v in events()], [k for k, _ in events()])
    score(settings, p)
    for client in READERS:
        got = read_without_codec(client, settings.bootstrap, p.sink, p.partitions)
        assert "error" not in got, (client, got)
        assert sorted(orjson.loads(v)["id"] for v in got["values"]) == list(range(N)), client
        [dead] = read_without_codec(client, settings.bootstrap, p.dlq, 1)["values"]
        assert dead.encode() == MALFORMED, client
