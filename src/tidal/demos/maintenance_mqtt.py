"""``tidal demo maintenance --via-mqtt``: the sensor readings travel through a local Mosquitto.

Readings are published (QoS 1) on ``plant/<machine>/sensors``; the MQTT bridge
(:class:`~tidal.connect.mqtt.MqttSource`, keyed by ``machine_id``, deduplicated by
``event_id``) moves them into the demo's events topic; predictions that say a machine is close
to failure go back to MQTT on ``plant/<machine>/alerts`` through :class:`~tidal.connect.mqtt.MqttSink`.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from tidal.config import KafkaSettings
from tidal.connect import Backoff, PositionFile, SinkRunner, SourceRunner
from tidal.connect.mosquitto import Mosquitto
from tidal.connect.mqtt import MqttConnection, MqttSink, MqttSource

__all__ = ["ViaMqtt"]


class ViaMqtt:
    """Mosquitto, the bridge into ``events`` and the alerts sink from ``predictions``, on threads."""

    def __init__(self, settings: KafkaSettings, name: str, events: str, predictions: str, work: Path) -> None:
        self.broker = Mosquitto().start()
        conn = MqttConnection(port=self.broker.port)
        self.source = MqttSource(["plant/+/sensors"], f"{name}-bridge", conn, key="field:machine_id",
                                 dedup_field="event_id")
        self.bridge = SourceRunner(self.source, settings, events, position_file=PositionFile(work / "mqtt-bridge.json"),
                                   partitions=1, batch_size=2000, poll_timeout=0.02,
                                   backoff=Backoff(initial=0.1, maximum=1.0))
        self.alerts = MqttSink("plant/{key}/alerts", f"{name}-alerts", conn, where="decision==true")
        self.sink = SinkRunner(self.alerts, settings, [predictions], group=f"tidal.{name}.mqtt-alerts",
                               dlq=f"{name}.mqtt-alerts.dlq", batch_timeout=0.1)
        # The sensors: a QoS 1 publisher that waits for the broker's PUBACKs (a sink's write does exactly that).
        self.sensors = MqttSink("plant/{key}/sensors", f"{name}-sensors", conn)
        self.sensors.open()
        self.errors: list[BaseException] = []
        self._threads = [threading.Thread(target=self._run, args=(r,), daemon=True) for r in (self.bridge, self.sink)]
        for t in self._threads:
            t.start()
        deadline = time.monotonic() + 30
        while self._gauge("tidal_connector_up") != 1:  # subscribed: readings published from now on are kept
            if self.errors or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"the MQTT bridge did not connect to mosquitto: {self.errors}")
            time.sleep(0.02)

    def _gauge(self, metric: str) -> float:
        labels = {"connector": self.source.name, "connector_type": "mqtt", "direction": "source"}
        return self.bridge.metrics.registry.get_sample_value(metric, labels) or 0

    def _run(self, runner: Any) -> None:
        try:
            runner.run()
        except BaseException as exc:  # noqa: BLE001 - reported by close()
            self.errors.append(exc)

    def publish(self, keys: list[bytes], values: list[bytes], first: int) -> None:
        """Publish readings ``first``.. on ``plant/<machine>/sensors`` (QoS 1, acknowledged by Mosquitto)."""
        self.sensors.write([(f"plant/{k.decode()}/sensors", v, ("sensors", 0, first + i))
                            for i, (k, v) in enumerate(zip(keys, values))], {})

    def bridged(self) -> int:
        return int(self._gauge("tidal_connector_records_total"))

    def wait_bridged(self, count: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.bridged() < count:
            if self.errors or time.monotonic() > deadline:
                raise RuntimeError(f"the MQTT bridge moved {self.bridged()} of {count} readings: {self.errors}")
            time.sleep(0.01)

    def wait_alerts(self, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.alerts.published < count and not self.errors and time.monotonic() < deadline:
            time.sleep(0.05)

    def summary(self) -> dict[str, int]:
        return {"published": self.sensors.published, "bridged": self.bridged(),
                "redelivered_skipped": self.source.redelivered_skipped, "alerts_published": self.alerts.published}

    def close(self) -> None:
        self.bridge.stop()
        self.sink.stop()
        for t in self._threads:
            t.join(30)
        self.sensors.close()
        self.broker.__exit__()
        if self.errors:
            raise RuntimeError(f"MQTT bridge failed: {self.errors[0]}") from self.errors[0]
