"""A real Mosquitto for tests: started on a free loopback port with its own persistence folder.

Uses :class:`tidal.connect.mosquitto.Mosquitto` (the demo's starter too); tests skip with the
reason when the ``mosquitto`` package is not installed.
"""

from __future__ import annotations

import threading
import time

import pytest

from tidal.connect.mosquitto import MOSQUITTO_MISSING, Mosquitto, mosquitto_binary

__all__ = ["mosquitto_or_skip", "Subscriber", "publish"]


def mosquitto_or_skip(folder=None) -> Mosquitto:
    """A started broker, or the test is skipped when mosquitto is missing."""
    if mosquitto_binary() is None:
        pytest.skip(MOSQUITTO_MISSING)
    return Mosquitto(folder=folder).start()


def _client(port: int, client_id: str = "", **kw):
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, **kw)
    c.max_inflight_messages_set(1000)
    return c


def publish(port: int, messages: list[tuple[str, bytes]], client_id: str = "", timeout: float = 30.0) -> None:
    """Publish ``(topic, payload)`` pairs with QoS 1 and wait for every PUBACK."""
    c = _client(port, client_id)
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        infos = [c.publish(t, p, qos=1) for t, p in messages]
        deadline = time.monotonic() + timeout
        for i in infos:
            i.wait_for_publish(max(0.1, deadline - time.monotonic()))
            assert i.is_published(), "the broker did not acknowledge a publish"
    finally:
        c.disconnect()
        c.loop_stop()


class Subscriber:
    """Collects the messages of ``topic_filter`` (QoS 1) on paho's thread."""

    def __init__(self, port: int, topic_filter: str, client_id: str = "") -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.messages: list = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.client = c = _client(port, client_id)
        c.on_message = lambda _c, _u, m: self._add(m)
        c.on_subscribe = lambda *_a: self._ready.set()
        c.on_connect = lambda cl, *_a: cl.subscribe(topic_filter, qos=1)
        c.reconnect_delay_set(0.1, 0.5)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 600  # with a client id: messages queue for it while the broker restarts
        c.connect("127.0.0.1", port, clean_start=False, properties=props)  # (Mosquitto 2.0 does not
        # keep a clean-start session across its restart, even with an expiry)
        c.loop_start()
        assert self._ready.wait(10), "no SUBACK"

    def _add(self, m) -> None:
        with self._lock:
            self.messages.append(m)

    def wait(self, count: int, timeout: float = 20.0) -> list:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
