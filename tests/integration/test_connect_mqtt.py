"""The MQTT bridge against a real Mosquitto and the real Kafka broker.

MQTT → Kafka: every message once with its MQTT topic as key and headers, non-JSON to the
dead-letter topic; a kill -9 of ``tidal ingest mqtt`` mid-stream and a Mosquitto restart lose
nothing and (with ``--dedup-field``) repeat nothing. Kafka → MQTT: every record published once
on its templated topic.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter

import orjson
import pytest

from tidal.connect import Backoff, PositionFile, SinkRunner, SourceRunner
from tidal.connect.mqtt import MqttConnection, MqttSink, MqttSource

from .kafka_helpers import produce, read_all, wait_for
from .mosquitto_server import Subscriber, mosquitto_or_skip, publish

pytestmark = pytest.mark.integration

FAST = dict(initial=0.05, maximum=0.2, jitter=0.0)


@pytest.fixture(scope="module")
def mosq(tmp_path_factory):
    m = mosquitto_or_skip(tmp_path_factory.mktemp("mosquitto"))
    yield m
    m.stop()


def _labels(runner: SourceRunner) -> dict[str, str]:
    return {"connector": runner.source.name, "connector_type": "mqtt", "direction": "source"}


def _up(runner: SourceRunner) -> float | None:
    return runner.metrics.registry.get_sample_value("tidal_connector_up", _labels(runner))


class Bridge:
    """A SourceRunner on a thread (in-process bridge)."""

    def __init__(self, runner: SourceRunner) -> None:
        self.runner, self.error = runner, None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.start: dict = {}
        deadline = time.monotonic() + 20
        while _up(runner) != 1:  # opened: session and subscription exist
            assert self.error is None and time.monotonic() < deadline, f"bridge did not connect: {self.error}"
            time.sleep(0.02)
        self.start = dict(runner.offsets)

    def _run(self) -> None:
        try:
            self.runner.run()
        except BaseException as exc:  # noqa: BLE001
            self.error = exc

    def wait(self, delivered: int, timeout: float = 20.0) -> None:
        """Until the runner has delivered ``delivered`` records (good ones plus dead letters)."""
        deadline = time.monotonic() + timeout
        while self._delivered() < delivered:
            assert self.error is None and time.monotonic() < deadline, (self._delivered(), self.error)
            time.sleep(0.01)

    def _delivered(self) -> int:
        return int(sum(self.runner.offsets.get((t, p), 0) - self.start.get((t, p), 0)
                       for t, p in list(self.runner.offsets)))

    def stop(self) -> None:
        self.runner.stop()
        self.thread.join(20)
        assert self.error is None, self.error


def test_each_message_once_keyed_by_its_topic_and_non_json_to_the_dlq(settings, name, tmp_path, mosq):
    topic = f"{name}.events"
    source = MqttSource([f"plant/{name}/+/sensors/#"], f"{name}-bridge", MqttConnection(port=mosq.port),
                        topic_field="mqtt_topic")
    bridge = Bridge(SourceRunner(source, settings, topic, position_file=PositionFile(tmp_path / "p.json"),
                                 backoff=Backoff(**FAST)))
    topics = [f"plant/{name}/m{k}/sensors/temp" for k in range(3)]
    msgs = [(topics[i % 3], orjson.dumps({"i": i})) for i in range(600)]
    msgs[100:100] = [(topics[0], b"not json {"), (topics[1], b"\xff\xfe")]
    publish(mosq.port, msgs)
    bridge.wait(602)
    bridge.stop()

    got = read_all(settings, topic, 4)
    assert len(got) == 600
    values = [orjson.loads(m.value()) for m in got]
    assert sorted(v["i"] for v in values) == list(range(600))
    assert all(m.key().decode() == v["mqtt_topic"] == topics[v["i"] % 3] for m, v in zip(got, values))
    headers = [dict(m.headers()) for m in got]
    assert all(h["mqtt.topic"] == m.key() and h["mqtt.qos"] == b"1" and h["mqtt.retain"] == b"0"
               for h, m in zip(headers, got))
    assert Counter(m.key() for m in got) == {t.encode(): 200 for t in topics}
    dead = read_all(settings, f"{name}.dlq", 4)
    assert sorted(m.value() for m in dead) == [b"not json {", b"\xff\xfe"]
    assert {dict(m.headers())["tidal.error.reason"] for m in dead} == {b"decode_error"}


def _bridge_cmd(settings, name: str, mqtt_port: int) -> list[str]:
    return [sys.executable, "-c", "from tidal.cli.main import main; main()", "ingest", "mqtt",
            "--subscribe", f"seq/{name}/#", "--topic", f"{name}.events", "--client-id", f"{name}-bridge",
            "--dedup-field", "seq", "--batch-size", "100", "--receive-maximum", "400",
            "--mqtt-port", str(mqtt_port), "--bootstrap", settings.bootstrap]


def _start(cmd: list[str], lines: list[str]) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    proc.reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    proc.reader.start()
    deadline = time.monotonic() + 30
    while not any("subscribed to" in line for line in lines):
        assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)[-3000:]
        time.sleep(0.05)
    return proc


def test_kill_9_mid_stream_then_restart_loses_and_repeats_nothing_with_a_dedup_field(settings, name, mosq):
    n, topic = 4000, f"{name}.events"

    def readings(lo: int, hi: int) -> list[tuple[str, bytes]]:
        return [(f"seq/{name}/s{i % 4}", orjson.dumps({"seq": i, "v": i * 0.5})) for i in range(lo, hi)]
    procs: list[subprocess.Popen] = []
    try:
        logs_a: list[str] = []
        procs.append(_start(_bridge_cmd(settings, name, mosq.port), logs_a))
        publish(mosq.port, readings(0, 200))
        wait_for(settings, [(topic, 4)], 200)  # the bridge is running
        published = [200]

        def publisher() -> None:  # keeps publishing through the kill and the restart
            for lo in range(200, n, 200):
                publish(mosq.port, readings(lo, lo + 200), client_id=f"{name}-pub")
                published[0] = lo + 200
                time.sleep(0.05)
        pub = threading.Thread(target=publisher, daemon=True)
        pub.start()
        while published[0] < 1400 and pub.is_alive():
            time.sleep(0.005)
        os.kill(procs[0].pid, signal.SIGKILL)
        procs[0].wait(10)
        before = len(read_all(settings, topic, 4))
        assert 200 <= before < n  # mid-stream

        logs_b: list[str] = []
        procs.append(_start(_bridge_cmd(settings, name, mosq.port) + ["--idle-exit", "2"], logs_b))
        pub.join(60)
        assert procs[1].wait(60) == 0, "".join(logs_b)[-3000:]
        procs[1].reader.join(5)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    got = Counter(orjson.loads(m.value())["seq"] for m in read_all(settings, topic, 4))
    assert set(got) == set(range(n)), f"lost: {sorted(set(range(n)) - set(got))[:10]}"
    assert max(got.values()) == 1, f"duplicated: {[s for s, c in got.items() if c > 1][:10]}"
    received = int(re.search(r"(\d+) MQTT messages received", "".join(logs_b)).group(1))
    print(f"kill -9 after {before} records in Kafka; the restarted bridge received {received} messages and "
          f"skipped {received - (n - before)} already in Kafka")


def test_records_in_kafka_whose_puback_was_lost_are_not_produced_again(settings, name, tmp_path, mosq):
    """The window QoS 1 leaves open, made to happen: Kafka has a batch (and its position is saved),
    the PUBACK never reached Mosquitto, which sends the messages again — after a reconnect in the
    same process, and after a restart."""
    topic, pos, conn = f"{name}.events", PositionFile(tmp_path / "p.json"), MqttConnection(port=mosq.port)

    def runner() -> SourceRunner:
        source = MqttSource([f"crash/{name}/#"], f"{name}-bridge", conn, dedup_field="seq", receive_maximum=150)
        return SourceRunner(source, settings, topic, position_file=pos, batch_size=50, backoff=Backoff(**FAST))

    def delivered_and_saved(r: SourceRunner) -> None:  # a step, up to (not including) committed()
        records, deadline = [], time.monotonic() + 10
        while len(records) < 50 and time.monotonic() < deadline:  # (redeliveries it skips are not handed out)
            records += r.source.poll(50 - len(records), 0.5)
        assert len(records) == 50
        r._deliver(records)
        r.position = records[-1].position
        r.positions.save(r.position, r.offsets)

    first = runner()
    first.start()
    first.step()  # connects: the session and its subscription exist from here
    publish(mosq.port, [(f"crash/{name}/d{i % 3}", orjson.dumps({"seq": i})) for i in range(600)])
    for _ in range(2):
        first.step()
    delivered_and_saved(first)
    # 1. the connection drops before the PUBACKs go out; the runner reconnects in this process
    first.source._client.socket().shutdown(socket.SHUT_RDWR)
    first.source.committed(first.position)
    deadline = time.monotonic() + 20
    while first.source.redelivered_skipped < 50 and time.monotonic() < deadline:
        first.step()
    assert first.source.redelivered_skipped >= 50  # this batch (and any other whose PUBACK was lost)
    # 2. a crash before the PUBACKs, then a restart
    delivered_and_saved(first)
    first.source._handed.clear()  # committed() never runs
    first.close()
    again = runner()
    again.run(idle_exit_s=1.0)
    assert again.skipped >= 50
    got = Counter(orjson.loads(m.value())["seq"] for m in read_all(settings, topic, 4))
    assert got == {i: 1 for i in range(600)}


def test_mosquitto_down_for_seconds_loses_nothing_and_reports_it(settings, name, tmp_path, mosq):
    topic = f"{name}.events"
    source = MqttSource([f"restart/{name}/#"], f"{name}-bridge", MqttConnection(port=mosq.port), dedup_field="seq")
    bridge = Bridge(SourceRunner(source, settings, topic, position_file=PositionFile(tmp_path / "p.json"),
                                 backoff=Backoff(initial=0.3, maximum=0.6, jitter=0)))
    ups: list[float] = []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            v = _up(bridge.runner)
            if not ups or ups[-1] != v:
                ups.append(v)
            time.sleep(0.01)
    threading.Thread(target=sample, daemon=True).start()

    def batch(lo: int, hi: int) -> list[tuple[str, bytes]]:
        return [(f"restart/{name}/d{i % 3}", orjson.dumps({"seq": i})) for i in range(lo, hi)]
    publish(mosq.port, batch(0, 300))
    bridge.wait(300)
    mosq.restart(down_s=1.5)
    publish(mosq.port, batch(300, 600))  # before the bridge is back: queued for its persistent session
    bridge.wait(600)
    publish(mosq.port, batch(600, 700))
    bridge.wait(700)
    time.sleep(0.3)  # (anything more would show as a duplicate)
    bridge.stop()
    sampling.set()

    got = Counter(orjson.loads(m.value())["seq"] for m in read_all(settings, topic, 4))
    assert got == {i: 1 for i in range(700)}
    assert ups[:3] == [1, 0, 1] and ups[-1] == 1, ups  # tidal_connector_up went 0 while Mosquitto was down
    errors = bridge.runner.metrics.registry.get_sample_value("tidal_connector_errors_total",
                                                             {**_labels(bridge.runner), "kind": "unavailable"})
    assert errors >= 1


def test_sink_publishes_each_record_on_its_templated_topic_also_across_a_mosquitto_restart(settings, name, mosq):
    topic = f"{name}.alerts"
    records = [{"machine": f"m{i % 5}", "level": i % 3, "type": "overheat" if i % 2 else "vibration"}
               for i in range(300)]
    values, keys = [orjson.dumps(r) for r in records], [r["machine"].encode() for r in records]
    expected = [(f"{name}/alerts/{r['machine']}/{r['type']}", orjson.dumps(r)) for r in records if r["level"] >= 1]
    sub = Subscriber(mosq.port, f"{name}/alerts/#", client_id=f"{name}-sub")
    sink = MqttSink(f"{name}/alerts/{{key}}/{{type}}", f"{name}-sink", MqttConnection(port=mosq.port),
                    where="level>=1")
    runner = SinkRunner(sink, settings, [topic], dlq=f"{name}.sink.dlq", backoff=Backoff(**FAST))
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    produce(settings, topic, values[:150] + [b"not json", orjson.dumps({"level": 2})], keys[:150] + [b"m0", b"m1"])
    deadline = time.monotonic() + 30
    while sink.published < 100 and time.monotonic() < deadline:
        time.sleep(0.02)
    sub.wait(100)
    time.sleep(0.2)  # the subscriber's own PUBACKs (else Mosquitto sends it those again: QoS 1)
    mosq.stop()  # down for a second: the sink backs off, nothing is committed until the broker acknowledged
    produce(settings, topic, values[150:], keys[150:])
    time.sleep(1.0)
    mosq.start()
    deadline = time.monotonic() + 30
    while sink.published < len(expected) and time.monotonic() < deadline:
        time.sleep(0.02)
    runner.stop()
    thread.join(20)
    got = sub.wait(len(expected))
    time.sleep(0.3)
    sub.close()
    assert len(sub.messages) == len(expected) == sink.published == 200
    assert Counter((m.topic, bytes(m.payload)) for m in sub.messages) == Counter(expected)
    assert all(m.qos == 1 for m in got)
    reasons = Counter(dict(m.headers())["tidal.error.reason"] for m in read_all(settings, f"{name}.sink.dlq", 4))
    assert reasons == {b"decode_error": 1, b"missing_field": 1}
    labels = {"connector": sink.name, "connector_type": "mqtt", "direction": "sink"}
    assert runner.metrics.registry.get_sample_value("tidal_connector_errors_total",
                                                    {**labels, "kind": "unavailable"}) >= 1
