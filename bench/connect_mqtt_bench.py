"""Throughput of the MQTT bridge (messages/s): MQTT → Kafka and Kafka → MQTT.

    python bench/connect_mqtt_bench.py [--messages 20000]

Starts a throw-away Mosquitto (as the tests do) and the embedded broker. The bridge's session
is created first, then ``--messages`` QoS 1 messages are queued for it and the bridge drains
them into Kafka (without and with ``dedup_field``); the sink publishes as many Kafka records,
each PUBACK awaited. A bare paho subscriber reading the same backlog gives paho's own limit.
Prints one JSON object; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from integration.kafka_helpers import produce  # noqa: E402
from integration.mosquitto_server import Subscriber, publish  # noqa: E402

from tidal.broker import EmbeddedBroker  # noqa: E402
from tidal.config import KafkaSettings  # noqa: E402
from tidal.connect import Backoff, PositionFile, SinkRunner, SourceRunner  # noqa: E402
from tidal.connect.mosquitto import Mosquitto  # noqa: E402
from tidal.connect.mqtt import MqttConnection, MqttSink, MqttSource  # noqa: E402


def readings(n: int) -> list[tuple[str, bytes]]:
    return [(f"bench/m{i % 50}/sensors", orjson.dumps({"seq": i, "temperature": 60.0 + i % 7, "rpm": 1500}))
            for i in range(n)]


def bridge(settings: KafkaSettings, conn: MqttConnection, port: int, n: int, dedup: str | None) -> dict:
    name = f"bench-{dedup or 'plain'}"
    source = MqttSource([f"{name}/#"], name, conn, dedup_field=dedup)
    source.open(None)
    source.close()  # the session and its subscription exist: the backlog queues for it
    t = time.perf_counter()
    publish(port, [(f"{name}/{topic}", v) for topic, v in readings(n)])
    publish_s = time.perf_counter() - t
    runner = SourceRunner(source, settings, f"{name}.events", position_file=PositionFile(tempfile.mkdtemp() + "/p"))
    runner.start()
    t, moved = time.perf_counter(), 0
    while moved < n:
        moved += runner.step()
    s = time.perf_counter() - t
    runner.close()
    return {"messages_per_s": round(n / s), "seconds": round(s, 2), "publisher_messages_per_s": round(n / publish_s)}


def bare_paho(port: int, n: int) -> float:
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    def client():
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-raw", protocol=mqtt.MQTTv5)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 600
        c.connect("127.0.0.1", port, clean_start=False, properties=props)
        return c
    c = client()
    c.loop_start()
    time.sleep(0.2)
    c.subscribe("raw/#", 1)
    time.sleep(0.2)
    c.disconnect()
    c.loop_stop()
    publish(port, [(f"raw/{topic}", v) for topic, v in readings(n)])
    got = [0]
    c = client()
    c.on_message = lambda *_a: got.__setitem__(0, got[0] + 1)
    t = time.perf_counter()
    c.loop_start()
    while got[0] < n:
        time.sleep(0.005)
    s = time.perf_counter() - t
    c.disconnect()
    c.loop_stop()
    return round(n / s)


def sink(settings: KafkaSettings, conn: MqttConnection, port: int, n: int) -> dict:
    topic = "bench.alerts"
    produce(settings, topic, [orjson.dumps({"machine": f"m{i % 50}", "score": 0.9}) for i in range(n)],
            [f"m{i % 50}".encode() for i in range(n)])
    sub = Subscriber(port, "alerts/#")
    mqtt_sink = MqttSink("alerts/{key}", "bench-sink", conn)
    runner = SinkRunner(mqtt_sink, settings, [topic], backoff=Backoff())
    runner.start()
    while runner._assigned_at is None:  # the group join is not what is measured
        runner.step()
    t = time.perf_counter()
    while mqtt_sink.published < n:
        runner.step()
    s = time.perf_counter() - t
    runner.close()
    received = len(sub.wait(n))
    sub.close()
    return {"messages_per_s": round(n / s), "seconds": round(s, 2), "subscriber_received": received}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=20_000)
    n = ap.parse_args().messages
    with EmbeddedBroker() as broker, Mosquitto() as mosquitto:
        settings, conn = KafkaSettings(broker.bootstrap), MqttConnection(port=mosquitto.port)
        out = {"messages": n,
               "mqtt_to_kafka": bridge(settings, conn, mosquitto.port, n, None),
               "mqtt_to_kafka_dedup_field": bridge(settings, conn, mosquitto.port, n, "seq"),
               "bare_paho_subscriber_messages_per_s": bare_paho(mosquitto.port, n),
               "kafka_to_mqtt": sink(settings, conn, mosquitto.port, n)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
