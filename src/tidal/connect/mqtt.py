"""MQTT bridge: subscribe to an MQTT broker into Kafka (:class:`MqttSource`), publish a topic to it (:class:`MqttSink`).

Both speak MQTT 5 with QoS 1 through paho-mqtt 2.

**MQTT → Kafka.** The source connects with a fixed client id and a persistent session
(``clean_start=False``, a session expiry), so the broker keeps the subscription and queues
QoS 1 messages while the bridge is away. Messages are acknowledged by hand: the PUBACK goes
to the MQTT broker only after Kafka acknowledged the record and the runner saved its
position (:meth:`MqttSource.committed`). Until then the broker holds the message and sends it
again on the next connection, so nothing is lost. The bridge announces ``receive_maximum``
(MQTT 5 Receive Maximum) and queues at most that many messages; when the queue is full it
stops reading its socket until Kafka has taken a batch, so TCP slows the broker down (Mosquitto
2.0 keeps to the Receive Maximum only until the first PUBACKs).

QoS 1 is at-least-once by definition: a message delivered to Kafka whose PUBACK did not
reach the broker (kill -9, connection lost) comes again. Without an id in the payload it is
produced again (**at-least-once**). With ``dedup_field`` — a field unique per MQTT topic, such
as a sensor's sequence number — the position of each record is ``(topic, id)``: a redelivered
message is recognised, acknowledged and skipped, in the same process (the last
``2 × receive_maximum`` ids are remembered) and after a restart (the runner reads back
``2 × receive_maximum`` records per partition, :attr:`Source.lookback`): **each message once**.

**Kafka → MQTT.** The sink publishes each record with QoS 1 on a topic built from a template
(``alerts/{key}``, ``plant/{machine_id}/alerts``) and waits for every PUBACK of the batch
before :meth:`MqttSink.write` returns, so offsets are committed only after the broker has the
messages; broker down → :class:`Unavailable`, the unacknowledged rest of the batch is
published again (at-least-once; a crash mid-batch republishes that batch).

>>> TopicTemplate("plant/{machine_id}/alerts").render(b"k1", {"machine_id": "m-7"})
'plant/m-7/alerts'
>>> w = parse_where("score>=0.8"); w({"score": 0.9}), w({"score": 0.1}), w({})
(True, False, False)
"""

from __future__ import annotations

import collections
import logging
import operator
import string
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import orjson

from tidal.connect.base import BadRecord, Sink, SinkRecord, Source, SourceRecord, Unavailable

__all__ = ["MqttConnection", "MqttSource", "MqttSink", "TopicTemplate", "parse_where"]

log = logging.getLogger(__name__)

_OPS: dict[str, Callable[[Any, Any], bool]] = {">=": operator.ge, "<=": operator.le, "==": operator.eq,
                                               "!=": operator.ne, ">": operator.gt, "<": operator.lt}


def parse_where(text: str) -> Callable[[Any], bool]:
    """``"field>value"`` (also ``>=``, ``<``, ``<=``, ``==``, ``!=``; the value is JSON, else a string)."""
    for op in _OPS:  # two-character operators first
        field, sep, raw = text.partition(op)
        if sep:
            break
    else:
        raise ValueError(f"--where {text!r}: expected FIELD OP VALUE with OP one of {', '.join(_OPS)}")
    field, raw, fn = field.strip(), raw.strip(), _OPS[op]
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        value = raw

    def keep(record: Any) -> bool:
        if not isinstance(record, dict) or field not in record:
            return False
        try:
            return bool(fn(record[field], value))
        except TypeError:
            return False
    return keep


class TopicTemplate:
    """An MQTT topic from a record: ``{key}`` is the Kafka key, other ``{names}`` are fields of the value."""

    def __init__(self, template: str) -> None:
        self.template = template
        self.fields = [f for _, f, _, _ in string.Formatter().parse(template) if f]

    def render(self, key: bytes | None, value: Any) -> str:
        """The topic; KeyError names a missing field, ValueError a topic MQTT refuses."""
        data = {}
        for f in self.fields:
            if f == "key":
                if key is None:
                    raise KeyError("key")
                data[f] = key.decode("utf-8", "replace")
            elif isinstance(value, dict) and f in value:
                data[f] = value[f]
            else:
                raise KeyError(f)
        topic = self.template.format_map(data)
        if not topic or "+" in topic or "#" in topic or "\0" in topic:
            raise ValueError(f"{topic!r} is not a topic one can publish to")
        return topic


@dataclass(frozen=True)
class MqttConnection:
    """Where the MQTT broker is and how to log in (``password`` never printed)."""

    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    keepalive: int = 30
    connect_timeout: float = 5.0

    def __repr__(self) -> str:
        return f"MqttConnection({self.host}:{self.port}, user={self.username!r}, tls={self.tls})"

    def client(self, client_id: str, **kw: Any):
        """A paho client (MQTT 5) that does not reconnect by itself: the runner's back-off does."""
        import paho.mqtt.client as mqtt

        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                        reconnect_on_failure=False, **kw)
        if self.username is not None:
            c.username_pw_set(self.username, self.password)
        if self.tls or self.ca_file:
            c.tls_set(ca_certs=self.ca_file, certfile=self.cert_file, keyfile=self.key_file)
        return c

    def connect(self, c, what: str, properties=None, clean_start: bool = False) -> Any:
        """Connect ``c`` and wait for the CONNACK; its properties. Unavailable when unreachable."""
        from paho.mqtt.enums import MQTTErrorCode

        acked = threading.Event()
        result: dict[str, Any] = {}

        def on_connect(_c, _u, flags, reason, props) -> None:
            result.update(reason=reason, props=props, flags=flags)
            acked.set()
        c.on_connect = on_connect
        try:
            if c.connect(self.host, self.port, self.keepalive, clean_start=clean_start,
                         properties=properties) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                raise OSError("connect failed")
        except OSError as exc:
            raise Unavailable(f"MQTT broker {self.host}:{self.port}: {exc}") from exc
        c.loop_start()
        if not acked.wait(self.connect_timeout):
            c.loop_stop()
            raise Unavailable(f"MQTT broker {self.host}:{self.port}: no CONNACK within {self.connect_timeout}s")
        reason = result["reason"]
        if reason.is_failure:
            c.loop_stop()
            if reason.value in (0x88, 0x89, 0x97, 0x9F):  # server unavailable/busy, quota, rate
                raise Unavailable(f"MQTT broker {self.host}:{self.port} refused {what}: {reason}")
            raise RuntimeError(f"MQTT broker {self.host}:{self.port} refused {what}: {reason}")
        return result


class MqttSource(Source):
    """Subscribes to ``subscriptions`` (QoS 1) and hands out each message as a record.

    ``key``: ``"topic"`` (the MQTT topic) or ``"field:NAME"``. ``topic_field``: also put the
    MQTT topic in the JSON object under this name. ``dedup_field``: a payload field unique per
    MQTT topic, which makes redelivered messages skipped (see the module's docstring).
    Headers ``mqtt.topic``, ``mqtt.qos``, ``mqtt.retain``. Payloads that are not JSON (or lack a
    field that is needed) become dead letters with their reason.
    """

    kind = "mqtt"

    def __init__(self, subscriptions: Sequence[str], client_id: str, connection: MqttConnection | None = None,
                 key: str = "topic", topic_field: str | None = None, dedup_field: str | None = None,
                 receive_maximum: int = 4000, session_expiry: int = 7 * 86400, name: str | None = None) -> None:
        if key != "topic" and not key.startswith("field:"):
            raise ValueError(f"key {key!r}: expected 'topic' or 'field:NAME'")
        self.subscriptions, self.client_id = list(subscriptions), client_id
        self.connection = connection or MqttConnection()
        self.key, self.topic_field, self.dedup_field = key, topic_field, dedup_field
        self.receive_maximum, self.session_expiry = receive_maximum, session_expiry
        self.name = name or client_id
        self.lookback = 2 * receive_maximum if dedup_field else 0  # Mosquitto may resend more than RM on reconnect
        self.received = self.redelivered = self.redelivered_skipped = 0
        self._key_field = key[6:] if key.startswith("field:") else None
        self._run = uuid.uuid4().hex[:12]  # positions without a dedup field: unique per run and message
        self._n = 0
        self._queue: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._handed: list[tuple[int, int, bytes]] = []  # (mid, qos, position) handed out, not yet acknowledged
        self._recent: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self._client = None
        self._lost: str | None = None
        self._subacked = threading.Event()
        self._granted: list[Any] = []

    # -- connection -------------------------------------------------------------------------
    def open(self, position: Any | None) -> None:
        """Connect with the persistent session (MQTT has no offsets: the broker's session is the position)."""
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties
        from paho.mqtt.subscribeoptions import SubscribeOptions

        c = self.connection.client(self.client_id, manual_ack=True)
        c.on_message, c.on_disconnect = self._on_message, self._on_disconnect
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.session_expiry
        props.ReceiveMaximum = self.receive_maximum
        self._lost = None
        result = self.connection.connect(c, f"client {self.client_id!r}", props)
        self._client = c
        self._subacked.clear()
        c.on_subscribe = self._on_subscribe
        # RETAIN_SEND_IF_NEW_SUB: a retained message is bridged once, not again on every reconnect.
        c.subscribe([(s, SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB))
                     for s in self.subscriptions])
        present = result["flags"].session_present
        # A new session: wait for the SUBACK, so what is published from now on is kept for us. A session
        # that is present has its subscriptions (and may be sending its backlog): poll() checks the SUBACK.
        if not present and not self._subacked.wait(self.connection.connect_timeout):
            self.close()
            raise Unavailable("MQTT broker did not answer the SUBSCRIBE")
        self._check_subscribed()
        log.info("%s: connected to MQTT %s:%d (session present: %s), subscribed to %s", self.name,
                 self.connection.host, self.connection.port, present, self.subscriptions)

    def _on_subscribe(self, _client, _userdata, _mid, codes, _props) -> None:
        self._granted = list(codes)
        self._subacked.set()

    def _check_subscribed(self) -> None:
        if not self._subacked.is_set():
            return
        granted, self._granted = self._granted, []
        refused = [(s, str(g)) for s, g in zip(self.subscriptions, granted) if g.is_failure]
        if refused:
            self.close()
            raise RuntimeError(f"MQTT broker refused the subscriptions {refused}")
        for s, g in zip(self.subscriptions, granted):
            if g.value < 1:
                log.warning("%s: broker granted QoS %d on %r: messages may be lost", self.name, g.value, s)

    def _on_message(self, _client, _userdata, msg) -> None:  # paho's network thread
        with self._cond:
            # Full (a broker that sends past the receive maximum: Mosquitto 2.0 does after PUBACKs):
            # stop reading the socket until poll() makes room, so TCP slows the broker down.
            while len(self._queue) >= self.receive_maximum and self._lost is None and self._client is not None:
                self._cond.wait(0.1)
            self._queue.append(msg)
            self._cond.notify_all()

    def _on_disconnect(self, _client, _userdata, _flags, reason, _props) -> None:
        with self._cond:
            self._lost = str(reason)
            self._cond.notify_all()

    # -- records ----------------------------------------------------------------------------
    def poll(self, max_records: int, timeout: float) -> list[SourceRecord | BadRecord]:
        if self._granted:
            self._check_subscribed()
        with self._cond:
            if not self._queue and self._lost is None:
                self._cond.wait(timeout)
            if self._lost is not None:
                # Unacknowledged messages stay with the broker's session: it sends them again.
                self._queue.clear()
                raise Unavailable(f"connection to the MQTT broker lost: {self._lost}")
            n = min(max_records, len(self._queue))
            msgs = [self._queue.popleft() for _ in range(n)]
            self._cond.notify_all()
        out: list[SourceRecord | BadRecord] = []
        for m in msgs:
            self.redelivered += m.dup
            r = self._convert(m)
            if self.dedup_field and isinstance(r, SourceRecord) and r.position_bytes() in self._recent:
                self._client.ack(m.mid, m.qos)  # already in Kafka: a redelivery after a reconnect
                self.redelivered_skipped += 1
                continue
            self._handed.append((m.mid, m.qos, r.position_bytes() if self.dedup_field else b""))
            out.append(r)
        self.received += len(msgs)
        return out

    def _convert(self, m) -> SourceRecord | BadRecord:
        topic, raw = m.topic, bytes(m.payload)
        self._n += 1
        position: Any = {"t": topic, "run": self._run, "n": self._n}
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return BadRecord(raw, "decode_error", f"MQTT {topic}: not JSON: {exc}", topic.encode(), position)
        needs = [f for f in (self._key_field, self.dedup_field) if f]
        if (needs or self.topic_field) and not isinstance(value, dict):
            return BadRecord(raw, "not_an_object", f"MQTT {topic}: JSON {type(value).__name__}, not an object",
                             topic.encode(), position)
        missing = [f for f in needs if f not in value]
        if missing:
            return BadRecord(raw, "missing_field", f"MQTT {topic}: no field {missing[0]!r}", topic.encode(), position)
        if self.dedup_field:
            position = {"t": topic, "id": value[self.dedup_field]}
        if self.topic_field:
            value[self.topic_field] = topic
            raw = orjson.dumps(value)
        key = topic.encode() if self._key_field is None else str(value[self._key_field]).encode()
        headers = [("mqtt.topic", topic.encode()), ("mqtt.qos", b"%d" % m.qos),
                   ("mqtt.retain", b"1" if m.retain else b"0")]
        return SourceRecord(raw, key, position, headers)

    def committed(self, position: Any) -> None:
        """Kafka has the records handed out so far and the runner saved them: PUBACK them, in order."""
        handed, self._handed = self._handed, []
        c = self._client
        if c is not None:
            for mid, qos, _ in handed:
                c.ack(mid, qos)  # if the connection is gone, the broker sends these again
        if self.dedup_field:  # a redelivery of any of these (after a reconnect) is skipped
            recent = self._recent
            recent.update((p, None) for _, _, p in handed)
            while len(recent) > 2 * self.receive_maximum:
                recent.popitem(last=False)

    def close(self) -> None:
        with self._cond:
            c, self._client = self._client, None
            self._cond.notify_all()
        self._handed = []
        if c is not None:
            log.info("%s: %d MQTT messages received so far, %d flagged DUP, %d skipped here as already in Kafka",
                     self.name, self.received, self.redelivered, self.redelivered_skipped)
        if c is not None:
            try:
                c.disconnect()  # queued after the PUBACKs already sent: they go out first
            finally:
                c.loop_stop()
        with self._cond:
            self._queue.clear()


class MqttSink(Sink):
    """Publishes records (QoS 1) on ``publish`` topics (a :class:`TopicTemplate`); ``where`` keeps some.

    The payload is the Kafka record's value as it is. Records whose topic cannot be built go
    to the dead-letter topic (``missing_field`` / ``bad_topic``); records ``where`` rejects are
    skipped (and committed).
    """

    kind = "mqtt"

    def __init__(self, publish: str, client_id: str, connection: MqttConnection | None = None,
                 where: str | None = None, retain: bool = False, qos: int = 1, max_inflight: int = 1000,
                 ack_timeout: float = 10.0, name: str | None = None) -> None:
        self.template = TopicTemplate(publish)
        self.client_id, self.connection = client_id, connection or MqttConnection()
        self.where = parse_where(where) if where else None
        self.retain, self.qos, self.max_inflight, self.ack_timeout = retain, qos, max_inflight, ack_timeout
        self.name = name or client_id
        self.published = self.filtered = 0
        self._client = None
        self._lost = threading.Event()
        self._done: set[tuple[str, int, int]] = set()  # rows of the current batch the broker acknowledged

    def open(self) -> None:
        self._connect()

    def _connect(self) -> None:
        while True:
            c = self.connection.client(self.client_id)
            c.max_inflight_messages_set(self.max_inflight)
            self._lost.clear()
            c.on_disconnect = lambda *_a: self._lost.set()
            result = self.connection.connect(c, f"client {self.client_id!r}", clean_start=True)
            server_max = getattr(result["props"], "ReceiveMaximum", None) or 65535
            if server_max >= self.max_inflight:
                self._client = c
                return
            # The broker's Receive Maximum binds; paho sets its window only before connecting.
            self.max_inflight = server_max
            c.disconnect()
            c.loop_stop()

    def _drop(self) -> None:
        c, self._client = self._client, None
        if c is not None:
            c.disconnect()
            c.loop_stop()

    def prepare(self, records: Sequence[SinkRecord]) -> tuple[list[Any], list[tuple[SinkRecord, str, str]]]:
        rows, refused = [], []
        for r in records:
            if self.where is not None and not self.where(r.value):
                self.filtered += 1
                continue
            try:
                topic = self.template.render(r.key, r.value)
            except KeyError as exc:
                refused.append((r, "missing_field", f"topic {self.template.template!r} needs {exc.args[0]!r}"))
                continue
            except ValueError as exc:
                refused.append((r, "bad_topic", str(exc)))
                continue
            rows.append((topic, r.raw, (r.topic, r.partition, r.offset)))
        return rows, refused

    def write(self, rows: Sequence[Any], offsets: dict[tuple[str, int], int]) -> None:
        """Publish the rows not yet acknowledged and wait for their PUBACKs (Unavailable if they do not come)."""
        from paho.mqtt.enums import MQTTErrorCode

        if self._client is None or self._lost.is_set():
            self._drop()
            self._connect()
        c, sent = self._client, []
        for topic, payload, ident in rows:
            if ident in self._done:
                continue
            info = c.publish(topic, payload, qos=self.qos, retain=self.retain)
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN):
                self._drop()
                raise Unavailable(f"MQTT publish failed: {info.rc.name}")
            sent.append((ident, info))
        deadline = time.monotonic() + self.ack_timeout
        try:
            for ident, info in sent:
                while not info.is_published():
                    if self._lost.is_set() or time.monotonic() > deadline:
                        raise Unavailable("connection to the MQTT broker lost" if self._lost.is_set()
                                          else f"no PUBACK within {self.ack_timeout}s")
                    info.wait_for_publish(0.05)
                self._done.add(ident)
        except (RuntimeError, ValueError) as exc:
            self._drop()
            raise Unavailable(f"MQTT publish failed: {exc}") from exc
        except Unavailable:
            self._drop()
            raise
        self.published += len(sent)
        self._done.clear()

    def close(self) -> None:
        self._drop()
