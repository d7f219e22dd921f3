"""Run a :class:`~tidal.connect.base.Source`: read batches, produce them, remember where it is.

Delivery, for every source alike:

- records are produced with an idempotent producer (``acks=all``), each with the headers
  ``tidal.connector`` and ``tidal.connect.position``; a record Kafka did not acknowledge is
  produced again (with back-off), never skipped;
- after every acknowledged batch the position of its last record and the next offset of
  every partition written are saved atomically (:class:`~tidal.connect.positions.PositionFile`),
  then the source hears :meth:`~tidal.connect.base.Source.committed`;
- on start the runner reads the topic (and the dead-letter topic) from the saved offsets
  to their ends: records there were acknowledged after the last save (a kill -9 between
  the acknowledgement and the save). The source resumes at the saved position and the
  records whose position is among those are skipped, so a crash neither loses nor repeats
  a record;
- records the source cannot convert (:class:`~tidal.connect.base.BadRecord`) go to the
  dead-letter topic with ``tidal.error.reason`` / ``tidal.error.message`` headers;
- when the outside system is down (:class:`~tidal.connect.base.Unavailable`) the runner
  says so in the log and in ``tidal_connector_up``, backs off and reopens at its position.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Any, Callable, Sequence

from confluent_kafka import KafkaError, KafkaException, Producer

from tidal.broker.read import partitions_of, read_partitions
from tidal.broker.topics import TopicSpec, ensure_topics
from tidal.config import KafkaSettings
from tidal.connect.backoff import Backoff
from tidal.connect.base import BadRecord, Source, SourceRecord, Unavailable
from tidal.connect.metrics import ConnectorMetrics
from tidal.connect.positions import PositionFile, default_position_path
from tidal.stream.encode import fit_dead_letter

__all__ = ["SourceRunner", "CONNECTOR_HEADER", "POSITION_HEADER"]

log = logging.getLogger(__name__)

CONNECTOR_HEADER = "tidal.connector"
POSITION_HEADER = "tidal.connect.position"


class SourceRunner:
    """Moves a source's records into ``topic`` (bad ones into ``dlq``), resuming after restarts.

    ``partitions`` is used when the runner creates the topics. ``producer_config`` is passed
    to librdkafka on top of tidal's defaults.
    """

    def __init__(self, source: Source, settings: KafkaSettings, topic: str, dlq: str | None = None,
                 position_file: PositionFile | None = None, partitions: int = 4, batch_size: int = 1000,
                 poll_timeout: float = 0.5, metrics: ConnectorMetrics | None = None,
                 backoff: Backoff | None = None, producer_config: dict[str, Any] | None = None) -> None:
        self.source, self.settings, self.topic = source, settings, topic
        self.dlq = dlq or (topic.rsplit(".", 1)[0] + ".dlq" if topic.endswith(".events") else topic + ".dlq")
        self.positions = position_file or PositionFile(default_position_path(source.name))
        self.partitions, self.batch_size, self.poll_timeout = partitions, batch_size, poll_timeout
        self.metrics = metrics or ConnectorMetrics(source.name, source.kind, "source")
        self.backoff = backoff or Backoff()
        self.producer_config = producer_config or {}
        self.position: Any = None
        self.offsets: dict[tuple[str, int], int] = {}
        self.skipped = 0  # records found already delivered on start, not produced again
        self.produced = 0  # records delivered to the topic by this run
        self.dead: Counter[str] = Counter()  # dead letters of this run, by reason
        self._seen: set[bytes] = set()
        self._stop = threading.Event()
        self._producer: Producer | None = None
        self._open = self._was_down = False

    # -- start ------------------------------------------------------------------------------
    def start(self) -> None:
        """Create the topics, load the position and find what was delivered after its last save."""
        ensure_topics(self.settings, [TopicSpec(self.topic, self.partitions), TopicSpec(self.dlq, self.partitions)])
        self.position, self.offsets = self.positions.load()
        parts = {(t, p) for t in (self.topic, self.dlq) for p in partitions_of(self.settings, t)}
        missing = parts - set(self.offsets)
        if self.position is None and not self.offsets:
            self.offsets = self._ends(parts)  # first run: nothing of ours is in the topic yet
            self.positions.save(None, self.offsets)
        elif missing:  # partitions added since: anything of ours there came after the save
            self.offsets.update({tp: 0 for tp in missing})
        me = self.source.name.encode()
        back = self.source.lookback if self.position is not None else 0
        for m in read_partitions(self.settings, {tp: max(0, self.offsets[tp] - back) for tp in parts}, timeout=60):
            headers = dict(m.headers() or ())
            if headers.get(CONNECTOR_HEADER) == me and POSITION_HEADER in headers:
                self._seen.add(headers[POSITION_HEADER])
            self.offsets[(m.topic(), m.partition())] = m.offset() + 1
        if self._seen:
            log.info("%s: %d records were delivered after the last saved position%s; they will not be "
                     "produced again", self.source.name, len(self._seen),
                     f" (or up to {back} offsets before it)" if back else "")
        conf = self.settings.client_config({
            "enable.idempotence": True, "acks": "all", "linger.ms": 5, "compression.type": "lz4",
            "client.id": f"tidal-connect-{self.source.name}", "log_level": 3, **self.producer_config})
        self._producer = Producer(conf)
        self._limit = max(1024, int(conf.get("message.max.bytes", 1_000_000)) - 16 * 1024)

    def _ends(self, parts: set[tuple[str, int]]) -> dict[tuple[str, int], int]:
        # A low end is safe (more is read on restart); Tansu's ListOffsets may be short.
        from confluent_kafka import Consumer, TopicPartition

        c = Consumer(self.settings.client_config({"group.id": "tidal.status", "log_level": 3}))
        try:
            return {tp: c.get_watermark_offsets(TopicPartition(*tp), timeout=10)[1] for tp in parts}
        finally:
            c.close()

    # -- the loop ---------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def run(self, idle_exit_s: float | None = None, until: Callable[[], bool] | None = None) -> None:
        """Move batches until stopped (or idle for ``idle_exit_s``, or ``until()`` is true)."""
        if self._producer is None:
            self.start()
        idle_since = time.monotonic()
        try:
            while not self._stop.is_set() and not (until and until()):
                n = self.step()
                if n:
                    idle_since = time.monotonic()
                elif idle_exit_s is not None and time.monotonic() - idle_since > idle_exit_s:
                    break
        finally:
            self.close()

    def step(self) -> int:
        """One batch: poll the source, deliver, save the position. Returns records handled."""
        try:
            if not self._open:
                self.source.open(self.position)
                self._open = True
                self._up()
            records = self.source.poll(self.batch_size, self.poll_timeout)
        except Unavailable as exc:
            self._down(exc)
            return 0
        if not records:
            return 0
        t0 = time.perf_counter()
        fresh = self._drop_seen(records)
        if fresh:
            self._deliver(fresh)
        self.position = records[-1].position
        self.positions.save(self.position, self.offsets)
        self.source.committed(self.position)
        good = sum(isinstance(r, SourceRecord) for r in fresh)
        self.produced += good
        self.dead.update(r.reason for r in fresh if isinstance(r, BadRecord))
        self.metrics.records.inc(good)
        self.metrics.batch_seconds.observe(time.perf_counter() - t0)
        self.metrics.last_success.set(time.time())
        self.backoff.reset()
        return len(records)

    def _up(self) -> None:
        if self._was_down:
            log.info("%s: %s is reachable again", self.source.name, self.source.kind)
        self._was_down = False
        self.metrics.up.set(1)

    def _down(self, exc: Exception) -> None:
        self._was_down = True
        self.metrics.up.set(0)
        self.metrics.error("unavailable")
        delay = self.backoff.next_delay()
        log.warning("%s: %s unavailable (%s); retrying in %.1fs from position %r", self.source.name,
                    self.source.kind, exc, delay, self.position)
        if self._open:
            try:
                self.source.close()
            except Exception:  # noqa: BLE001 - closing a broken connection may fail too
                pass
            self._open = False
        self._stop.wait(delay)

    def _drop_seen(self, records: Sequence[SourceRecord | BadRecord]) -> list[SourceRecord | BadRecord]:
        if not self._seen:
            return list(records)
        fresh = []
        for r in records:
            pos = r.position_bytes()
            if pos in self._seen:
                self._seen.discard(pos)
                self.skipped += 1
            else:
                fresh.append(r)
        return fresh

    def _deliver(self, records: list[SourceRecord | BadRecord]) -> None:
        """Produce ``records`` until every one is acknowledged; record the offsets they got."""
        pending = records
        while pending:
            failed: list[SourceRecord | BadRecord] = []
            for r in pending:
                self._produce(r, failed)
            while self._producer.flush(10) > 0:
                log.warning("%s: waiting for Kafka to acknowledge %d records", self.source.name,
                            len(self._producer))
            if failed:
                self.metrics.error("delivery")
                delay = self.backoff.next_delay()
                log.warning("%s: %d records not acknowledged; producing them again in %.1fs",
                            self.source.name, len(failed), delay)
                self._stop.wait(delay)
            pending = failed

    def _produce(self, r: SourceRecord | BadRecord, failed: list) -> None:
        pos = r.position_bytes()
        headers = [(CONNECTOR_HEADER, self.source.name.encode()), (POSITION_HEADER, pos)]
        limit = getattr(self, "_limit", 1_000_000 - 16 * 1024)
        if not isinstance(r, BadRecord) and r.value is not None and len(r.value) > limit:
            r = BadRecord(r.value, "too_large", f"record of {len(r.value):,} bytes is over the producer's limit "
                          f"({limit:,}; message.max.bytes)", key=r.key, position=r.position)  # one record never stops a source
        if isinstance(r, BadRecord):
            topic, value = self.dlq, r.raw
            headers += [("tidal.error.reason", r.reason.encode()),
                        ("tidal.error.message", r.message.encode("utf-8", "replace")[:4096]),
                        ("tidal.error.step", b"connect:" + self.source.kind.encode())]
            self.metrics.dlq(r.reason)
        else:
            topic, value = self.topic, r.value
            headers += r.headers
        if topic == self.dlq:
            value, headers = fit_dead_letter(value, headers, limit)

        def done(err: KafkaError | None, msg: Any) -> None:
            if err is not None:
                if err.code() == KafkaError.MSG_SIZE_TOO_LARGE and topic != self.dlq:  # the broker's limit is lower
                    self._produce(BadRecord(value, "too_large", f"refused by the broker: {err.str()}", key=r.key,
                                            position=r.position), failed)
                    return
                failed.append(r)
                return
            tp = (msg.topic(), msg.partition())
            if msg.offset() + 1 > self.offsets.get(tp, 0):
                self.offsets[tp] = msg.offset() + 1

        while True:
            try:
                self._producer.produce(topic, value, r.key, headers=headers, on_delivery=done)
                return
            except BufferError:
                self._producer.poll(0.05)
            except KafkaException as exc:  # refused by the client: the record goes to the DLQ, the source goes on
                if topic == self.dlq:
                    raise
                self._produce(BadRecord(value, "produce_error", str(exc), key=r.key, position=r.position), failed)
                return

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(30)
            self._producer = None
        if self._open:
            self.source.close()
            self._open = False
