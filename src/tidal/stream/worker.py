"""The worker: runs a pipeline on Kafka, one micro-batch at a time.

One batch is one ordered sequence, written once, here:

1. **consume** up to ``max_batch`` messages or ``max_wait_ms``; with ``max_wait_ms=0`` a batch
   is whatever has arrived while the previous one was processed (no wait to fill it);
2. **decode** into columns; undecodable records become rejects;
3. **steps** transform the whole batch; a step that raises rejects the batch it got;
4. **produce** outputs to the sink and rejects to the DLQ (original bytes + reason headers);
5. **deliver**: at-least-once commits a batch's offsets once the broker acknowledged every
   record of it, without waiting for it: the next batches are consumed, computed and
   produced meanwhile (up to ``max_in_flight`` batches unacknowledged), and acknowledged
   batches are committed in order as their reports arrive, when idle, on revocation and on
   shutdown. Exactly-once (``exactly_once=True``) instead commits
   outputs and offsets in one Kafka transaction (``send_offsets_to_transaction``).

Offsets are never committed for a record whose output was not acknowledged, so a crash at
any point loses nothing (at-least-once may repeat the last batch; exactly-once does not).
Workers sharing ``pipeline.group`` split the partitions; revoked partitions are committed
before they leave. SIGTERM / SIGINT finish the current batch, commit, and exit cleanly.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, Callable

import numpy as np
import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from tidal.broker.topics import ALERTS_TOPIC
from tidal.config import KafkaSettings
from tidal.monitor.alerts import AlertEvaluator
from tidal.monitor.metrics import WorkerMetrics
from tidal.stream.batch import Batch, Reject
from tidal.stream.decode import decode_messages
from tidal.stream.encode import dlq_headers, encode_outputs
from tidal.stream.pipeline import Pipeline
from tidal.stream.state import StateStore, restore_partitions

__all__ = ["Worker", "WorkerStats", "DeliveryFailed"]

log = logging.getLogger("tidal.worker")


class DeliveryFailed(RuntimeError):
    """The broker did not acknowledge a batch's outputs; its offsets were not committed."""


@dataclass
class WorkerStats:
    """Running counts of one worker, as plain numbers (``as_dict`` for JSON)."""

    events_in: int = 0
    outputs: int = 0
    dlq: Counter = field(default_factory=Counter)
    batches: int = 0
    commits: int = 0
    rebalances: int = 0
    aborted: int = 0
    busy_s: float = 0.0
    started_at: float = field(default_factory=time.time)
    first_event_at: float | None = None
    last_event_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"events_in": self.events_in, "outputs": self.outputs, "dlq": dict(self.dlq),
                "dlq_total": sum(self.dlq.values()), "batches": self.batches, "commits": self.commits,
                "rebalances": self.rebalances, "aborted_transactions": self.aborted, "busy_s": round(self.busy_s, 3),
                "first_event_at": self.first_event_at, "last_event_at": self.last_event_at}


class _Acks:
    """One produced batch: its next offsets, and the broker's acknowledgements still to come."""

    __slots__ = ("offsets", "pending", "sealed", "errors", "error_counter")

    def __init__(self, offsets: dict[tuple[str, int], int], error_counter: Any) -> None:
        self.offsets, self.pending, self.sealed, self.errors = offsets, 0, False, []
        self.error_counter = error_counter

    def ack(self, err: KafkaError | None, msg: Any) -> None:  # librdkafka's delivery report, per record
        self.pending -= 1
        if err is not None:
            self.errors.append(f"{msg.topic()}: {err.str()}")
            self.error_counter.inc()

    def seal(self, produced: int) -> None:
        self.pending += produced
        self.sealed = True

    @property
    def done(self) -> bool:
        return self.sealed and self.pending <= 0


def fetch_wait_ms(max_wait_ms: int) -> int:
    """The consumer's ``fetch.wait.max.ms`` for a pipeline's ``max_wait_ms``: as long, within
    5..100 ms. Never under 5 ms: a shorter broker wait buys little and costs the broker CPU (an
    idle consumer at 1 ms keeps one Tansu core 17% busy, at 5 ms 10%)."""
    return max(5, min(100, max_wait_ms))


def take_arrived(consumer: Consumer, max_n: int, timeout: float) -> list[Any]:
    """Wait at most ``timeout`` s for one message, then take what else has already been fetched,
    up to ``max_n`` in all. ``consume(n, timeout)`` alone waits out the whole timeout whenever
    fewer than n messages come."""
    first = consumer.poll(timeout)
    if first is None:
        return []
    return [first, *consumer.consume(max_n - 1, 0)] if max_n > 1 else [first]


class Worker:
    """Run ``pipeline`` against the cluster in ``settings`` until :meth:`stop` (or a signal).

    ``max_in_flight``: at-least-once batches produced but not yet acknowledged (each is
    committed once all its records are acknowledged, in order).
    """

    def __init__(self, pipeline: Pipeline, settings: KafkaSettings, worker_id: str = "0",
                 on_batch: Callable[["Worker", Batch], None] | None = None,
                 metrics: WorkerMetrics | None = None, lag_interval_s: float = 1.0, max_in_flight: int = 3) -> None:
        self.pipeline = pipeline
        self.settings = settings
        self.worker_id = worker_id
        self.on_batch = on_batch
        self.stats = WorkerStats()
        self.metrics = metrics or WorkerMetrics(pipeline.name, pipeline.group)
        self.lag_interval_s = lag_interval_s
        self._positions: dict[tuple[str, int], int] = {}  # next offset to process, per partition
        self._last_ts: dict[tuple[str, int], int] = {}  # timestamp (ms) of the last processed event
        self._lag_at = 0.0
        self._alerts_at = 0.0
        self._alert_producer: Producer | None = None
        self.alerts = AlertEvaluator(pipeline.alerts, self.metrics.registry, pipeline.name, self._emit_alert)
        self._stop = threading.Event()
        self._done: dict[tuple[str, int], int] = {}  # offsets processed and delivered, not yet sync-committed
        self._delivery_errors: list[str] = []
        self._inflight: deque[_Acks] = deque()  # batches produced, oldest first, not yet committed
        self.max_in_flight = max_in_flight
        self._last_input = float("inf")
        self.consumer: Consumer | None = None
        self.producer: Producer | None = None
        self.stores: list[StateStore] = []

    # -- clients ---------------------------------------------------------------------------
    def _consumer_config(self) -> dict[str, Any]:
        p = self.pipeline
        tuning = {  # tidal's defaults; the cluster settings (--kafka-config, TIDAL_KAFKA_*) override them
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": 10000,  # the embedded broker takes half of it to form a group
            "heartbeat.interval.ms": 1000,
            "max.poll.interval.ms": 30000,
            "fetch.wait.max.ms": fetch_wait_ms(p.max_wait_ms),
            "queued.min.messages": max(100000, 2 * p.max_batch),
            "client.id": f"tidal-{p.name}-{self.worker_id}",
            "log_level": 3,
        }
        conf = {k: v for k, v in tuning.items() if k not in self.settings.extra}
        conf.update({
            "group.id": p.group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
        })
        if p.exactly_once:
            conf["isolation.level"] = "read_committed"
        conf.update(p.consumer_config)
        return self.settings.client_config(conf)

    def _producer_config(self) -> dict[str, Any]:
        p = self.pipeline
        conf: dict[str, Any] = {
            "enable.idempotence": True,
            "linger.ms": 5,
            "batch.size": 1_000_000,
            "compression.type": "lz4",
            "queue.buffering.max.messages": max(1_000_000, 4 * p.max_batch),
            "queue.buffering.max.kbytes": 2_097_151,
            "on_delivery": self._on_delivery,
            "client.id": f"tidal-{p.name}-{self.worker_id}",
            "log_level": 3,
        }
        if p.exactly_once:
            conf["transactional.id"] = f"{p.group}.{self.worker_id}"
        conf.update(p.producer_config)
        return self.settings.client_config(conf)

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            self._delivery_errors.append(f"{msg.topic()}: {err.str()}")
            self.metrics.produce_errors.inc()

    # -- rebalance -------------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.stats.rebalances += 1
        self.metrics.rebalances.inc()
        self._last_input = min(self._last_input, time.monotonic())
        tps = [(tp.topic, tp.partition) for tp in partitions]
        log.info("worker %s assigned %s", self.worker_id, tps)
        committed: dict[tuple[str, int], int] = {}
        try:  # where each partition starts: for lag, and for restoring state
            for tp in consumer.committed(partitions, timeout=10):
                committed[(tp.topic, tp.partition)] = tp.offset
                if tp.offset >= 0:
                    self._positions.setdefault((tp.topic, tp.partition), tp.offset)
        except KafkaException as exc:
            if self.stores:
                raise  # restoring state without knowing what committed could apply a batch twice
            log.warning("could not read committed offsets: %s", exc)
        for store in self.stores:  # state first: no batch of these partitions runs before it is back
            t0 = time.monotonic()
            n = restore_partitions(self.settings, store, {q: committed.get((t, q), -1) for t, q in tps})
            log.info("restored %s %s: %d changelog records in %.2fs", store.name, [q for _t, q in tps], n,
                     time.monotonic() - t0)
        for step in self.pipeline.steps:
            step.on_assign(tps)
        self._last_input = min(self._last_input, time.monotonic()) if self._last_input == float("inf") \
            else time.monotonic()  # restoring is not idleness

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.stats.rebalances += 1
        self.metrics.rebalances.inc()
        self._last_input = time.monotonic()  # a rebalance is under way: not idle, wait for it
        tps = [(tp.topic, tp.partition) for tp in partitions]
        for t, q in tps:
            self.metrics.forget_partition(t, q)
            self._positions.pop((t, q), None)
        log.info("worker %s revoked %s", self.worker_id, tps)
        for step in self.pipeline.steps:
            step.on_revoke(tps)
        self._settle()
        self._commit_done(only=set(tps))
        for store in self.stores:
            for _t, q in tps:
                store.drop(q)

    def _commit_done(self, only: set[tuple[str, int]] | None = None) -> None:
        """Synchronously commit delivered offsets (at-least-once); in EOS the transaction did it."""
        pending = {k: v for k, v in self._done.items() if only is None or k in only}
        if not pending or self.pipeline.exactly_once or self.consumer is None:
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in pending.items()]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
            self.stats.commits += 1
        except KafkaException as exc:  # e.g. the partition already moved: it will be re-read, not lost
            log.warning("sync commit failed: %s", exc)
        for k in pending:
            self._done.pop(k, None)

    # -- the loop --------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to finish the current batch and exit."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())

    def run(self, idle_exit_s: float | None = None) -> WorkerStats:
        """Process batches until stopped (or, with ``idle_exit_s``, after that long without input)."""
        p = self.pipeline
        self.stores = self._make_stores()
        for step in p.steps:
            step.open(self.settings, p.name)
            step.attach_metrics(self.metrics)
        self.consumer = Consumer(self._consumer_config())
        self.producer = Producer(self._producer_config())
        if p.exactly_once:
            self.producer.init_transactions(30)
        self.consumer.subscribe(list(p.sources), on_assign=self._on_assign, on_revoke=self._on_revoke)
        take = self._take_arrived if p.max_wait_ms == 0 else self._fill
        self._last_input = float("inf")  # the idle clock starts at the first assignment
        gc.freeze()  # long-lived objects (models, code) need no rescans by the cyclic GC
        try:
            while not self._stop.is_set():
                msgs = take()
                self.producer.poll(0)
                if not msgs:
                    self._settle(wait=False)  # idle: commit the last batches as soon as they are acknowledged
                if msgs:
                    msgs = self._drop_errors(msgs)
                if msgs:
                    self._last_input = time.monotonic()
                    self._process(msgs)
                if time.monotonic() - self._lag_at >= self.lag_interval_s:  # idle too: lag drains to 0
                    self._update_lag()
                if self.alerts.rules and time.monotonic() - self._alerts_at >= 1.0:
                    self._alerts_at = time.monotonic()
                    self.alerts.evaluate()
                if not msgs and idle_exit_s is not None and time.monotonic() - self._last_input > idle_exit_s:
                    break
        finally:
            self._shutdown()
        return self.stats

    def _fill(self) -> list[Any]:
        """Up to ``max_batch`` messages, waiting at most ``max_wait_ms`` for the batch to fill."""
        return self.consumer.consume(self.pipeline.max_batch, self.pipeline.max_wait_ms / 1000)

    def _take_arrived(self) -> list[Any]:
        """``max_wait_ms=0``: under load the batches grow by themselves (what arrives while one
        is processed is the next); when quiet each event goes at once."""
        return take_arrived(self.consumer, self.pipeline.max_batch, 0.1)

    def _drop_errors(self, msgs: list[Any]) -> list[Any]:
        try:
            if not any(map(type(msgs[0]).error, msgs)):
                return msgs
        except TypeError:  # messages of mixed classes (tests' stand-ins)
            if not any(m.error() for m in msgs):
                return msgs
        good = []
        for m in msgs:
            err = m.error()
            if err is None:
                good.append(m)
            elif err.code() != KafkaError._PARTITION_EOF:
                if err.fatal():
                    raise KafkaException(err)
                log.warning("consume error: %s", err)
        return good

    def _process(self, msgs: list[Any]) -> None:
        t0 = time.perf_counter()
        p = self.pipeline
        batch, offsets = decode_messages(msgs, p.schema)
        self._remember_positions(batch, offsets)
        batch = p.process(batch, self._time_step)
        outputs = encode_outputs(batch) if len(batch) else []
        changes = self._state_changes(offsets)
        if p.exactly_once:
            self._deliver_transaction(batch, outputs, msgs, offsets, changes)
        else:
            self._send(batch, outputs, offsets, changes)
        now = time.time()
        s = self.stats
        s.first_event_at = s.first_event_at or now
        s.last_event_at = now
        s.events_in += len(msgs)
        s.outputs += len(outputs)
        for r in batch.rejected:
            s.dlq[r.reason] += 1
        s.batches += 1
        s.busy_s += time.perf_counter() - t0
        self._observe(batch, len(msgs), len(outputs), time.perf_counter() - t0)
        if self.on_batch is not None:
            self.on_batch(self, batch)

    # -- metrics ---------------------------------------------------------------------------
    def _time_step(self, step: str, seconds: float) -> None:
        self.metrics.step_seconds.labels(self.pipeline.name, step).observe(seconds)

    def _remember_positions(self, batch: Batch, offsets: dict[tuple[str, int], int]) -> None:
        self._positions.update(offsets)
        if len(batch):  # the newest event per partition, for lag in seconds
            for (t, q) in offsets:
                rows = np.flatnonzero(batch.partitions == q)
                if len(rows):
                    self._last_ts[(t, q)] = int(batch.timestamps[rows[-1]])

    def _observe(self, batch: Batch, n_in: int, n_out: int, seconds: float) -> None:
        m = self.metrics
        m.events_in.inc(n_in)
        m.events_out.inc(n_out)
        m.batches.inc()
        m.batch_size.observe(n_in)
        m.batch_seconds.observe(seconds)
        for reason, count in Counter(r.reason for r in batch.rejected).items():
            m.dlq.labels(self.pipeline.name, reason).inc(count)
        if not len(batch):
            return
        m.e2e_latency.observe_many((time.time() * 1000 - batch.timestamps) / 1000)
        cols = batch.columns
        if "score" in cols:
            m.scores.observe_many(cols["score"])
        if "model_version" in cols and "model" in cols:
            m.observe_models(cols["model"], cols["model_version"], cols.get("decision"))

    def _emit_alert(self, event: dict[str, Any]) -> None:
        """Alerts go out on their own producer: outside the batch's transaction, never lost in it."""
        if self._alert_producer is None:
            self._alert_producer = Producer(self.settings.client_config({"enable.idempotence": True,
                                                                         "log_level": 3}))
        self._alert_producer.produce(ALERTS_TOPIC, orjson.dumps(event), event["rule"].encode())
        self._alert_producer.poll(0)

    def _update_lag(self) -> None:
        """Lag per assigned partition: high watermark (from the last fetch) minus our position.

        A partition not fetched yet gets no number until its first fetch answers (within
        ``fetch.wait.max.ms``): asking the broker instead (ListOffsets) can be short by a record
        batch on the embedded broker (DESIGN.md), and a wrong lag is worse than a late one.
        """
        self._lag_at = time.monotonic()
        now_ms = time.time() * 1000
        for tp in self.consumer.assignment():
            key = (tp.topic, tp.partition)
            try:
                _low, high = self.consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                continue
            if high < 0:
                continue
            lag = max(0, high - self._positions.get(key, max(_low, 0)))  # no commit yet: from the start
            age = (now_ms - self._last_ts.get(key, now_ms)) / 1000 if lag else 0.0
            self.metrics.set_lag(tp.topic, tp.partition, lag, max(0.0, age))

    # -- state -----------------------------------------------------------------------------
    def _make_stores(self) -> list[StateStore]:
        """A store (and a compacted changelog topic) for each step that declares ``state_name``."""
        from tidal.broker.topics import COMPACTED, TopicSpec, ensure_topics

        p = self.pipeline
        stateful = [s for s in p.steps if getattr(s, "state_name", None)]
        if not stateful:
            return []
        if len(p.sources) != 1:
            raise ValueError("stateful steps need a pipeline with exactly one source topic")
        from confluent_kafka.admin import AdminClient

        md = AdminClient(self.settings.client_config({"log_level": 0})).list_topics(p.sources[0], timeout=10)
        n = len(md.topics[p.sources[0]].partitions) or p.partitions  # co-partitioned with the source
        stores = []
        for step in stateful:
            store = StateStore(step.state_name, f"{p.name}.{step.state_name}.changelog")
            ensure_topics(self.settings, [TopicSpec(store.changelog, n, COMPACTED)])
            step.state_store = store
            stores.append(store)
        return stores

    def _state_changes(self, offsets: dict[tuple[str, int], int]) -> list[tuple[str, int, bytes, bytes]]:
        if not self.stores:
            return []
        stamps = {q: o for (_t, q), o in offsets.items()}
        out = []
        for store in self.stores:
            out.extend((store.changelog, q, k, v) for q, k, v in store.changelog_records(stamps))
            self.metrics.state_entries.labels(self.pipeline.name, store.name).set(store.size())
        return out

    def _produce(self, batch: Batch, outputs: list[bytes],
                 changes: list[tuple[str, int, bytes, bytes]] = (), acks: "_Acks | None" = None) -> int:
        """Queue the batch's state changes, outputs and rejects; returns how many records."""
        cb = acks.ack if acks is not None else None
        produce = self.producer.produce
        for topic, q, key, value in changes:  # state changelog: same delivery (or transaction) as outputs
            produce(topic, value, key, q, cb)
        sink = self.pipeline.sink
        try:
            if cb is None:
                list(map(produce, repeat(sink), outputs, batch.keys))
            else:
                list(map(produce, repeat(sink), outputs, batch.keys, repeat(-1), repeat(cb)))
        except BufferError:
            # The queue is sized for several batches in flight, so this means a misconfiguration.
            # Stop without committing: the batch is re-read on restart.
            raise DeliveryFailed("producer queue full; raise queue.buffering.max.messages above max_batch") from None
        for r in batch.rejected:
            self._produce_reject(r, cb)
        return len(changes) + len(outputs) + len(batch.rejected)

    def _produce_reject(self, r: Reject, cb: Callable | None = None) -> None:
        while True:
            try:
                self.producer.produce(self.pipeline.dlq, r.value, r.key, headers=dlq_headers(r, self.pipeline.name),
                                      on_delivery=cb)
                return
            except BufferError:
                self.producer.poll(0.1)

    def _send(self, batch: Batch, outputs: list[bytes], offsets: dict[tuple[str, int], int],
              changes: list = ()) -> None:
        """At-least-once: produce the batch and move on; :meth:`_settle` commits it once acknowledged."""
        while len(self._inflight) >= self.max_in_flight:  # bounded: wait for the oldest batch
            self.producer.poll(0.05)
            self._settle(wait=False)
        acks = _Acks(offsets, self.metrics.produce_errors)
        acks.seal(self._produce(batch, outputs, changes, acks))
        self._inflight.append(acks)
        self.producer.poll(0)
        self._settle(wait=False)

    def _settle(self, wait: bool = True) -> bool:
        """Commit, in order, the batches in flight that the broker fully acknowledged (``wait``:
        wait for all of them). Returns whether nothing is left in flight."""
        if wait and self._inflight:
            while self.producer.flush(10) > 0:
                log.warning("waiting for the broker to acknowledge %d batches", len(self._inflight))
        done: dict[tuple[str, int], int] = {}
        while self._inflight and self._inflight[0].done:
            acks = self._inflight.popleft()
            if acks.errors:
                self._inflight.clear()
                raise DeliveryFailed(f"{len(acks.errors)} records not acknowledged, offsets not committed: "
                                     f"{acks.errors[0]}")
            done.update(acks.offsets)
        if done:
            self._done.update(done)
            self.consumer.commit(offsets=[TopicPartition(t, q, o) for (t, q), o in done.items()], asynchronous=True)
            self.stats.commits += 1
            self.metrics.commits.inc()
        return not self._inflight

    def _deliver_transaction(self, batch: Batch, outputs: list[bytes], msgs: list[Any],
                             offsets: dict[tuple[str, int], int], changes: list = ()) -> None:
        producer = self.producer
        producer.begin_transaction()
        try:
            self._produce(batch, outputs, changes)
            producer.send_offsets_to_transaction([TopicPartition(t, q, o) for (t, q), o in offsets.items()],
                                                 self.consumer.consumer_group_metadata(), 30)
            producer.commit_transaction(60)
            self.stats.commits += 1
            self.metrics.commits.inc()
        except KafkaException as exc:
            err = exc.args[0]
            if err.fatal() or not err.txn_requires_abort():
                raise
            log.warning("transaction aborted, the batch will be re-read: %s", err)
            producer.abort_transaction(30)
            self.stats.aborted += 1
            self._rewind(msgs)

    def _rewind(self, msgs: list[Any]) -> None:
        first: dict[tuple[str, int], int] = {}
        for m in msgs:
            first.setdefault((m.topic(), m.partition()), m.offset())
        for (t, q), o in first.items():
            self.consumer.seek(TopicPartition(t, q, o))

    def _shutdown(self) -> None:
        try:
            if self.producer is not None:
                self._settle()
                self.producer.flush(30)
            if self._alert_producer is not None:
                self._alert_producer.flush(10)
            self._commit_done()
        finally:
            if self.consumer is not None:
                self.consumer.close()
            for step in self.pipeline.steps:
                step.close()
            # Drop the clients now: the producer holds a bound method of this worker, a cycle the
            # cyclic GC would otherwise find only later (their threads would outlive the worker).
            self.producer = self._alert_producer = None
            gc.unfreeze()

