"""Run a :class:`~tidal.connect.base.Sink`: consume a topic in batches, write, then commit.

Delivery, for every sink alike:

- offsets are committed to Kafka only after the sink wrote the batch durably (a buffered
  sink: only the offsets it reports durable), so a crash re-reads, never skips;
- a sink that stores offsets with its rows (:meth:`~tidal.connect.base.Sink.stored_offsets`)
  is resumed from its own offsets on every assignment: no row lost, none written twice;
- a record that is not JSON, or that the sink cannot convert or the system refuses, goes
  to the dead-letter topic (acknowledged before the batch is written) with a reason;
- while the outside system is down the batch is retried with back-off; the consumer stays
  in its group (librdkafka heartbeats in the background; ``max.poll.interval.ms`` bounds how
  long an outage may last before the partitions move to another worker).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Sequence

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from tidal.broker.topics import TopicSpec, ensure_topics
from tidal.config import KafkaSettings
from tidal.connect.backoff import Backoff
from tidal.connect.base import RecordsRejected, Sink, SinkRecord, Unavailable
from tidal.connect.metrics import ConnectorMetrics
from tidal.stream.encode import fit_dead_letter

__all__ = ["SinkRunner"]

log = logging.getLogger(__name__)


class SinkRunner:
    """Writes ``topics`` to ``sink`` as consumer group ``group``; rejects go to ``dlq``."""

    def __init__(self, sink: Sink, settings: KafkaSettings, topics: Sequence[str], group: str | None = None,
                 dlq: str | None = None, batch_size: int = 1000, batch_timeout: float = 0.5,
                 metrics: ConnectorMetrics | None = None, backoff: Backoff | None = None,
                 consumer_config: dict[str, Any] | None = None) -> None:
        self.sink, self.settings, self.topics = sink, settings, list(topics)
        self.group = group or f"tidal-sink-{sink.name}"
        self.dlq = dlq or f"{sink.name}.sink.dlq"
        self.batch_size, self.batch_timeout = batch_size, batch_timeout
        self.metrics = metrics or ConnectorMetrics(sink.name, sink.kind, "sink")
        self.backoff = backoff or Backoff()
        self.consumer_config = consumer_config or {}
        self.written = 0
        self._stop = threading.Event()
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._dlq_errors: list[str] = []
        self._uncommitted: dict[tuple[str, int], int] = {}
        self._committed: dict[tuple[str, int], int] = {}
        self._opened = False
        self._assigned_at: float | None = None

    # -- clients ----------------------------------------------------------------------------
    def start(self) -> None:
        ensure_topics(self.settings, [TopicSpec(self.dlq)])
        self._producer = Producer(self.settings.client_config({
            "enable.idempotence": True, "acks": "all", "linger.ms": 5, "log_level": 3,
            "client.id": f"tidal-sink-{self.sink.name}"}))
        tuning = {"auto.offset.reset": "earliest", "partition.assignment.strategy": "cooperative-sticky",
                  "session.timeout.ms": 10000, "heartbeat.interval.ms": 1000, "max.poll.interval.ms": 300000,
                  "fetch.wait.max.ms": 100, "client.id": f"tidal-sink-{self.sink.name}", "log_level": 3}
        self._consumer = Consumer(self.settings.client_config({
            **{k: v for k, v in tuning.items() if k not in self.settings.extra},  # --kafka-config wins
            "group.id": self.group, "enable.auto.commit": False, **self.consumer_config}))
        self._open_sink()
        self._consumer.subscribe(self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke)

    def _open_sink(self) -> None:
        while not self._opened and not self._stop.is_set():
            try:
                self.sink.open()
                self._opened = True
                self.metrics.up.set(1)
            except Unavailable as exc:
                self._down(exc)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = [(tp.topic, tp.partition) for tp in partitions]
        stored = None
        while not self._stop.is_set():
            try:
                stored = self.sink.stored_offsets(tps)
                break
            except Unavailable as exc:
                self._down(exc)
        if stored:  # the sink's own record of what it wrote wins over the group's commits
            for tp in partitions:
                if (tp.topic, tp.partition) in stored:
                    tp.offset = stored[(tp.topic, tp.partition)]
        consumer.incremental_assign(partitions)
        self._assigned_at = time.monotonic()
        log.info("%s: assigned %s%s", self.sink.name, tps, f" from the sink's offsets {stored}" if stored else "")

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = [(tp.topic, tp.partition) for tp in partitions]
        try:
            self.sink.revoke(tps)
        except Unavailable as exc:  # not durable: not committed, the next owner rewrites it
            log.warning("%s: could not make revoked partitions durable: %s", self.sink.name, exc)
        else:
            self._commit(self.sink.durable_offsets() if self.sink.buffered else {}, only=set(tps))
        for tp in tps:
            self._uncommitted.pop(tp, None)
            self._committed.pop(tp, None)
        consumer.incremental_unassign(partitions)

    # -- the loop ---------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def run(self, idle_exit_s: float | None = None, until: Callable[[], bool] | None = None) -> None:
        """Write batches until stopped (or idle for ``idle_exit_s``, or ``until()`` is true)."""
        if self._consumer is None:
            self.start()
        idle_since = time.monotonic()
        try:
            while not self._stop.is_set() and not (until and until()):
                if self.step() or self._assigned_at is None:  # idleness counts from the first assignment
                    idle_since = time.monotonic()
                elif idle_exit_s is not None and time.monotonic() - max(idle_since, self._assigned_at) > idle_exit_s:
                    break
        finally:
            self.close()

    def step(self) -> int:
        """One batch: consume, convert, write, commit. Returns records consumed."""
        msgs = [m for m in self._consumer.consume(self.batch_size, self.batch_timeout) if self._keep(m)]
        if not msgs:
            if self.sink.buffered:
                self._commit(self.sink.durable_offsets())
            return 0
        t0 = time.perf_counter()
        records, bad = [], []
        for m in msgs:
            raw = m.value()
            try:
                value = None if raw is None else orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                bad.append((m, "decode_error", f"not JSON: {exc}"))
                continue
            records.append(SinkRecord(m.topic(), m.partition(), m.offset(), m.key(), value,
                                      m.timestamp()[1], raw))
        rows, refused = self.sink.prepare(records)
        refused_ids = {id(r) for r, _, _ in refused}
        kept = [r for r in records if id(r) not in refused_ids]
        bad += [(r, reason, message) for r, reason, message in refused]
        self._dead_letters(bad)
        offsets: dict[tuple[str, int], int] = {}
        for m in msgs:
            offsets[(m.topic(), m.partition())] = m.offset() + 1
        self._write(rows, kept, offsets)
        self._commit(self.sink.durable_offsets() if self.sink.buffered else offsets)
        self.metrics.batch_seconds.observe(time.perf_counter() - t0)
        self.metrics.last_success.set(time.time())
        return len(msgs)

    def _keep(self, m: Any) -> bool:
        err = m.error()
        if err is None:
            return True
        if err.code() != KafkaError._PARTITION_EOF:
            if err.fatal():
                raise KafkaException(err)
            log.warning("%s: consumer error: %s", self.sink.name, err)
        return False

    def _write(self, rows: list[Any], records: list[SinkRecord], offsets: dict[tuple[str, int], int]) -> None:
        """Write until it succeeds: back off while the system is down, dead-letter refused rows."""
        while True:
            try:
                self.sink.write(rows, offsets)
                self.metrics.up.set(1)
                self.backoff.reset()
                self.written += len(rows)
                self.metrics.records.inc(len(rows))
                return
            except Unavailable as exc:
                if self._stop.is_set():
                    raise  # stopping during an outage: nothing is committed, the batch is re-read
                self._down(exc)
            except RecordsRejected as exc:
                gone = {i for i, _, _ in exc.rejected}
                self._dead_letters([(records[i], reason, message) for i, reason, message in exc.rejected])
                rows = [r for i, r in enumerate(rows) if i not in gone]
                records = [r for i, r in enumerate(records) if i not in gone]

    def _down(self, exc: Exception) -> None:
        self.metrics.up.set(0)
        self.metrics.error("unavailable")
        delay = self.backoff.next_delay()
        log.warning("%s: %s unavailable (%s); retrying in %.1fs", self.sink.name, self.sink.kind, exc, delay)
        self._stop.wait(delay)

    def _dead_letters(self, bad: list[tuple[Any, str, str]]) -> None:
        """Produce refused records to the DLQ and wait for the acknowledgement."""
        if not bad:
            return
        for rec, reason, message in bad:
            if isinstance(rec, SinkRecord):
                topic, partition, offset, key, raw = rec.topic, rec.partition, rec.offset, rec.key, rec.raw
            else:
                topic, partition, offset, key, raw = rec.topic(), rec.partition(), rec.offset(), rec.key(), rec.value()
            headers = [("tidal.error.reason", reason.encode()),
                       ("tidal.error.message", message.encode("utf-8", "replace")[:4096]),
                       ("tidal.error.step", b"sink:" + self.sink.kind.encode()),
                       ("tidal.connector", self.sink.name.encode()),
                       ("tidal.source.topic", topic.encode()), ("tidal.source.partition", str(partition).encode()),
                       ("tidal.source.offset", str(offset).encode())]
            raw, headers = fit_dead_letter(raw, headers, 1_000_000 - 16 * 1024)  # cut to fit, size and sha256 kept
            self._producer.produce(self.dlq, raw, key, headers=headers, on_delivery=self._dlq_delivered)
            self.metrics.dlq(reason)
        while self._producer.flush(10) > 0:
            log.warning("%s: waiting for Kafka to acknowledge dead letters", self.sink.name)
        if self._dlq_errors:
            errors, self._dlq_errors = self._dlq_errors, []
            raise RuntimeError(f"dead letters not acknowledged, batch not written: {errors[0]}")

    def _dlq_delivered(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            self._dlq_errors.append(err.str())

    def _commit(self, offsets: dict[tuple[str, int], int], only: set[tuple[str, int]] | None = None) -> None:
        self._uncommitted.update({tp: o for tp, o in offsets.items() if self._committed.get(tp) != o})
        pending = {tp: o for tp, o in self._uncommitted.items() if only is None or tp in only}
        if not pending:
            return
        try:
            self._consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in pending.items()],
                                  asynchronous=False)
            for tp in pending:
                self._uncommitted.pop(tp, None)
            self._committed.update(pending)
        except KafkaException as exc:  # e.g. after a rebalance: the rows are re-read, not lost
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                log.warning("%s: commit failed: %s", self.sink.name, exc)

    def close(self) -> None:
        try:
            if self._opened:
                try:
                    self.sink.close()
                    if self.sink.buffered:
                        self._commit(self.sink.durable_offsets())
                except Unavailable as exc:
                    log.warning("%s: closing while %s is down: %s", self.sink.name, self.sink.kind, exc)
                self._opened = False
            if self._consumer is not None:
                self._consumer.close()
        finally:
            self._consumer = None
            if self._producer is not None:
                self._producer.flush(10)
                self._producer = None
