"""The worker: runs a pipeline on Kafka, one micro-batch at a time.

One batch is one ordered sequence (:meth:`Worker._process`), and its delivery is written in
one place (the *delivery* section below):

1. **consume** up to ``max_batch`` messages or ``max_wait_ms``; with ``max_wait_ms=0`` a batch
   is whatever has arrived while the previous one was processed (no wait to fill it);
2. **decode** into columns; undecodable records become rejects;
3. **steps** transform the whole batch; a step that raises rejects the batch it got. Steps
   write their side outputs with ``ctx.emit`` (queued, not produced);
4. **produce**, as one unit (:class:`_Unit`): state changelog records, sink outputs, DLQ
   rejects and the side outputs the steps emitted;
5. **commit**: at-least-once commits a unit's offsets once the broker acknowledged every
   record of it, without waiting for it: the next batches are consumed, computed and
   produced meanwhile (up to ``max_in_flight`` units unacknowledged), and acknowledged
   units are committed in order (:meth:`Worker._settle`), when idle, on revocation and on
   shutdown. A record the broker refuses (or never acknowledges within ``message.timeout.ms``)
   commits nothing after it: the units in flight are dropped, state and positions roll back
   to the last commit and the batches are processed again on a fresh producer; after
   ``max_redeliveries`` failures in a row the worker stops with :class:`DeliveryFailed`. Exactly-once (``exactly_once=True``) puts the unit and its offsets in one
   Kafka transaction; an aborted transaction rolls the batch back (:meth:`Worker._roll_back`):
   the consumer seeks back *and* the steps' state is restored to the committed point.

Offsets are never committed for a record whose output was not acknowledged, so a crash at
any point loses nothing (at-least-once may repeat the last batch; exactly-once does not).
Workers sharing ``pipeline.group`` split the partitions; revoked partitions are committed
before they leave. SIGTERM / SIGINT finish the current batch, commit, and exit cleanly.
Metrics and alert rules are the business of :class:`~tidal.stream.hooks.WorkerHooks`.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, Callable

import numpy as np
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from tidal.broker.topics import ALERTS_TOPIC, COMPACTED, TopicSpec, ensure_topics, topic_spec
from tidal.config import KafkaSettings
from tidal.stream.batch import Batch, Reject
from tidal.stream.context import SideOutputs, SideRecord, StepContext
from tidal.stream.decode import decode_messages
from tidal.stream.encode import dlq_headers, encode_outputs, fit_dead_letter, produce_error_headers
from tidal.stream.hooks import WorkerHooks, default_hooks
from tidal.stream.pipeline import Pipeline
from tidal.stream.restorer import Restore
from tidal.stream.state import STATE_DIR_ENV, StateStore

__all__ = ["Worker", "WorkerStats", "DeliveryFailed", "fetch_wait_ms", "take_arrived"]

log = logging.getLogger("tidal.worker")

Offsets = dict[tuple[str, int], int]


class DeliveryFailed(RuntimeError):
    """The broker did not acknowledge a batch's outputs; its offsets were not committed."""


@dataclass
class WorkerStats:
    """Running counts of one worker, as plain numbers (``as_dict`` for JSON)."""

    events_in: int = 0
    outputs: int = 0
    side_outputs: int = 0
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
        return {"events_in": self.events_in, "outputs": self.outputs, "side_outputs": self.side_outputs,
                "dlq": dict(self.dlq), "dlq_total": sum(self.dlq.values()), "batches": self.batches,
                "commits": self.commits, "rebalances": self.rebalances, "aborted_transactions": self.aborted,
                "busy_s": round(self.busy_s, 3), "first_event_at": self.first_event_at,
                "last_event_at": self.last_event_at}


@dataclass
class _Unit:
    """What one batch delivers, as one unit: produced together, committed together."""

    offsets: Offsets  # next offset per source partition (empty: side outputs emitted between batches)
    outputs: list[bytes] = field(default_factory=list)
    keys: list[Any] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    changes: list[tuple[str, int, bytes, bytes]] = field(default_factory=list)  # state changelog records
    side: list[SideRecord] = field(default_factory=list)
    msgs: list[Any] = field(default_factory=list)  # the consumed messages (to rewind on abort)
    # at-least-once: acknowledgements still to come, and what the broker refused
    pending: int = 0
    sealed: bool = False
    errors: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.changes) + len(self.outputs) + len(self.rejects) + len(self.side)

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

    ``hooks``: what the worker reports to (default: :func:`~tidal.stream.hooks.default_hooks`,
    the monitor's metrics and alert rules). ``max_in_flight``: at-least-once batches produced
    but not yet acknowledged (each is committed once all its records are, in order).
    ``max_redeliveries``: how many times in a row a refused delivery is retried from the last
    commit before the worker stops with :class:`DeliveryFailed`. ``commit_interval_s``:
    acknowledged offsets are committed at most this often (at-least-once; one commit per batch
    of a few events would cost the broker more than the batch), and always on revocation and
    shutdown; a crash repeats at most that much more.
    """

    def __init__(self, pipeline: Pipeline, settings: KafkaSettings, worker_id: str = "0",
                 on_batch: Callable[["Worker", Batch], None] | None = None,
                 hooks: WorkerHooks | None = None, lag_interval_s: float = 1.0, max_in_flight: int = 3,
                 max_redeliveries: int = 5, metrics_port: int | None = None, handle_signals: bool = True,
                 commit_interval_s: float = 0.1) -> None:
        self.pipeline = pipeline
        self.metrics_port = metrics_port  # serve /metrics here while running (0 or None: off)
        self.handle_signals = handle_signals  # SIGTERM / SIGINT drain, commit and return (main thread only)
        self.settings = settings
        self.worker_id = worker_id
        self.on_batch = on_batch
        self.stats = WorkerStats()
        self.hooks = hooks if hooks is not None else default_hooks(pipeline)
        self.lag_interval_s = lag_interval_s
        self.max_in_flight = max_in_flight
        self.max_redeliveries = max_redeliveries
        self.commit_interval_s = commit_interval_s  # at-least-once: commit acknowledged offsets at most this often
        self._unsent: Offsets = {}  # acknowledged, not yet committed (paced by commit_interval_s)
        self._commit_at = 0.0
        self._failures = 0  # redeliveries in a row
        self.side = SideOutputs()  # what steps (and hooks) emitted, not yet produced
        self.stores: dict[int, StateStore] = {}  # by step index
        self._positions: Offsets = {}  # next offset to process, per partition
        self._last_ts: Offsets = {}  # timestamp (ms) of the last processed event
        self._lag_at = 0.0
        self._stop = threading.Event()
        self._done: Offsets = {}  # offsets delivered and async-committed, to sync-commit on revoke/shutdown
        self._inflight: deque[_Unit] = deque()  # at-least-once units produced, oldest first
        self._last_input = float("inf")
        self.consumer: Consumer | None = None
        self.producer: Producer | None = None
        self.lag = 0  # records behind, over the assigned partitions (updated every lag_interval_s)
        self._turned = 0.0  # monotonic time the loop last went round (health)
        self._assigned_once = self._restoring = False
        self._restores: deque[Restore] = deque()  # state being restored in the background, oldest first
        self._held: set[tuple[str, int]] = set()  # assigned partitions paused until their state is back
        self._stray: Offsets = {}  # first offset consumed (and dropped) from a held partition
        self._incremental = True  # cooperative rebalancing (set from the consumer's settings)
        self.stall_warn_s = 30.0  # warn when a partition is behind and has not moved for this long
        self._still: dict[tuple[str, int], tuple[int, float, bool]] = {}  # position, since, warned

    @property
    def _record_limit(self) -> int:
        """The largest record value this worker produces: the producer's ``message.max.bytes``
        less room for the key, headers and record overhead."""
        limit = getattr(self, "_limit", None)
        if limit is None:
            conf = self._producer_config()
            limit = self._limit = max(1024, int(conf.get("message.max.bytes", 1_000_000)) - 16 * 1024)
        return limit

    @property
    def registry(self) -> Any:
        """The hooks' metrics registry (what ``/metrics`` serves), or None."""
        return self.hooks.registry

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
            # librdkafka postpones a partition's next fetch by this much once its local queue is
            # over queued.min.messages (default 1 s): a worker draining a backlog at 100k+/s ran
            # the queue dry and sat idle ~0.3 s of every 1.1 s (profile_worker: 112k → 160k events/s).
            "fetch.queue.backoff.ms": 10,
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
        if len(p.sources) > 1 and any(s.state_name for s in p.steps):
            conf["partition.assignment.strategy"] = "range"  # partition q of every source on one worker
        conf.update(p.consumer_config)
        return self.settings.client_config(conf)

    def _producer_config(self) -> dict[str, Any]:
        p = self.pipeline
        conf: dict[str, Any] = {
            "enable.idempotence": True,
            # 2 ms: within ~3 ms of a relay's latency at 10k events/s, and batches still fill under
            # load (a unit's records are queued at once); bench/run.py --only latency compares 1/2/5.
            "linger.ms": 2,
            "batch.size": 1_000_000,
            "compression.type": "lz4",
            "queue.buffering.max.messages": max(1_000_000, 4 * p.max_batch),
            "queue.buffering.max.kbytes": 2_097_151,
            "message.timeout.ms": 60000,  # not acknowledged in a minute: produce again from the last commit
            "on_delivery": self._on_delivery,  # exactly-once: the transaction's records
            "client.id": f"tidal-{p.name}-{self.worker_id}",
            "log_level": 3,
        }
        if p.exactly_once:
            conf["transactional.id"] = f"{p.group}.{self.worker_id}"
        conf.update(p.producer_config)
        return self.settings.client_config(conf)

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None:  # the transaction's commit fails and says why; count it here
            self.hooks.produce_error()

    # -- start: state stores and step contexts ---------------------------------------------
    def _open_steps(self) -> None:
        """A store (and compacted changelog) per step that declares ``state_name``, then each
        step's context: its store, its declared side outputs, the metrics registry."""
        p = self.pipeline
        p.check()
        side = p.side_outputs() + [t for t in self.hooks.alert_topics() if t not in p.side_outputs()]
        if side:  # the topics steps write must exist before they write (not auto-created with other settings)
            ensure_topics(self.settings, [topic_spec(t, 1) for t in side])
        stateful = [(i, s) for i, s in enumerate(p.steps) if s.state_name]
        if stateful:
            n = self._source_partitions()
            for i, step in stateful:
                store = StateStore(step.state_name, p.changelog(step), backend=step.state_backend or "memory",
                                   path=step.state_path,
                                   state_dir=getattr(step, "state_dir", None) or os.environ.get(STATE_DIR_ENV) or None)
                ensure_topics(self.settings, [TopicSpec(store.changelog, n, COMPACTED)])
                self.stores[i] = store
        for i, step in enumerate(p.steps):
            ctx = StepContext(p.name, step=step.name, topics=step.outputs(p.name), sink=self.side,
                              settings=self.settings, registry=self.hooks.registry, store=self.stores.get(i))
            step.bind(ctx)
            step.open(ctx)
        self.hooks.started(p, self._emit_alert)

    def _source_partitions(self) -> int:
        """The source topics' partition count; stores are partitioned the same way. Several
        sources must be co-partitioned (same count), and are assigned with the range assignor."""
        from confluent_kafka.admin import AdminClient

        p = self.pipeline
        md = AdminClient(self.settings.client_config({"log_level": 0})).list_topics(timeout=10)
        counts = {t: len(md.topics[t].partitions) if t in md.topics else p.partitions for t in p.sources}
        if len(set(counts.values())) > 1:
            raise ValueError(f"stateful steps over several source topics need them co-partitioned: {counts}")
        return next(iter(counts.values())) or p.partitions

    def _emit_alert(self, event: dict[str, Any]) -> None:
        """Alerts of the hooks (alert rules) travel like a step's side outputs."""
        import orjson

        self.side.put(SideRecord(ALERTS_TOPIC, orjson.dumps(event), str(event.get("rule", "")).encode(), None))

    # -- rebalance -------------------------------------------------------------------------
    def _committed(self, partitions: list[TopicPartition]) -> Offsets:
        """Committed offsets (-1: none) of ``partitions``; where restored state resumes."""
        out: Offsets = {}
        for tp in self.consumer.committed(partitions, timeout=10):
            out[(tp.topic, tp.partition)] = tp.offset
        return out

    def _upto(self, tps: list[tuple[str, int]], committed: Offsets) -> dict[int, Any]:
        """Per store partition, the committed source offset its state is restored to."""
        sources = self.pipeline.sources
        if len(sources) == 1:
            return {q: committed.get((t, q), -1) for t, q in tps}
        # a store partition follows partition q of every source topic
        return {q: {t: committed.get((t, q), -1) for t in sources} for q in {q for _t, q in tps}}

    def _restore(self, tps: list[tuple[str, int]], committed: Offsets) -> None:
        """Restore ``tps``' state on this thread (a roll-back; assignments restore in the background)."""
        if self.stores:
            job = Restore(self.settings, self.stores, tps, self._upto(tps, committed),
                          self.hooks.state_restore, self.hooks.state_restored, self._restored)
            job.run()
            job.adopt(self.stores)

    def _checkpoint_stores(self, only: list[int] | None = None, force: bool = True) -> None:
        """Persistent stores note that their databases equal committed state: call only when every
        delivered unit is acknowledged and committed (or being committed) and before new changes."""
        if not self.stores or self._inflight or getattr(self, "_unsent", None) or sys.exc_info()[0] is not None:
            return  # (an exception on its way out, e.g. through consumer.close(): a batch may be half done)
        for store in self.stores.values():
            store.checkpoint(self.consumer, only, force=force)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.stats.rebalances += 1
        self.hooks.rebalanced()
        tps = [(tp.topic, tp.partition) for tp in partitions]
        log.info("worker %s assigned %s", self.worker_id, tps)
        committed: Offsets = {}
        try:  # where each partition starts: for lag, and for restoring state
            committed = self._committed(partitions)
        except KafkaException as exc:
            if self.stores:
                raise  # restoring state without knowing what committed could apply a batch twice
            log.warning("could not read committed offsets: %s", exc)
        for key, offset in committed.items():
            if offset >= 0:
                self._positions.setdefault(key, offset)
        if self.stores and tps:  # paused until their state is back; the other partitions go on meanwhile
            self._hold(consumer, partitions)
            self._restores.append(Restore(self.settings, self.stores, tps, self._upto(tps, committed),
                                          self.hooks.state_restore, self.hooks.state_restored, self._restored))
            self._next_restore()
        else:
            for step in self.pipeline.steps:
                step.on_assign(tps)
        self._last_input = self._turned = time.monotonic()  # restoring is not idleness: the idle clock starts now
        self._assigned_once = True

    # -- state restored in the background (see tidal.stream.restorer) -----------------------
    def _hold(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Take the assignment now (instead of after this callback) and pause it: nothing of
        these partitions is fetched until their state is restored."""
        if self._incremental:
            consumer.incremental_assign(partitions)
        else:
            consumer.assign(partitions)
        consumer.pause(partitions)
        self._held.update((tp.topic, tp.partition) for tp in partitions)

    def _restored(self, step: int, partition: int, state: Any) -> None:
        self.pipeline.steps[step].on_restored(partition, state)

    def _next_restore(self) -> None:
        if self._restores and not self._restores[0].started:
            self._restores[0].start()
        self._restoring = bool(self._restores)

    def _poll_restores(self) -> None:
        """Adopt a finished restore: its state into the live stores, then resume its partitions
        where processing left off (a failed restore raises here, as it would have in the callback)."""
        job = self._restores[0]
        if not job.done:
            return
        self._restores.popleft()
        job.adopt(self.stores)
        resume = []
        for t, q in job.tps:
            self._held.discard((t, q))
            stray = self._stray.pop((t, q), None)
            if stray is not None:  # fetched before the pause took hold, and dropped: read it again
                self.consumer.seek(TopicPartition(t, q, stray))
            resume.append(TopicPartition(t, q))
        self.consumer.resume(resume)
        for step in self.pipeline.steps:
            step.on_assign(job.tps)
        self._last_input = time.monotonic()
        self._next_restore()

    def _call_off(self, revoked: set[tuple[str, int]]) -> None:
        """Revoked partitions still being restored: the restores that hold them are called off
        and made again for the partitions that stay."""
        jobs, self._restores = list(self._restores), deque()
        for job in jobs:
            if not revoked.intersection(job.tps):
                self._restores.append(job)
                continue
            if job.started:
                job.cancel()
            stay = [tp for tp in job.tps if tp not in revoked]
            if stay:
                qs = {q for _t, q in stay}
                self._restores.append(Restore(self.settings, self.stores, stay,
                                              {q: o for q, o in job.upto.items() if q in qs},
                                              job.progress, job.finished, job.restored))
        for key in revoked:
            self._held.discard(key)
            self._stray.pop(key, None)
        self._next_restore()

    def _without_held(self, msgs: list[Any]) -> list[Any]:
        keep = []
        for m in msgs:
            key = (m.topic(), m.partition())
            if key in self._held:
                self._stray.setdefault(key, m.offset())
            else:
                keep.append(m)
        return keep

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.stats.rebalances += 1
        self.hooks.rebalanced()
        self._last_input = time.monotonic()  # a rebalance is under way: not idle, wait for it
        tps = [(tp.topic, tp.partition) for tp in partitions]
        for t, q in tps:
            self.hooks.revoked(t, q)
            self._positions.pop((t, q), None)
            self._still.pop((t, q), None)  # back later at the same position is not a stall
        log.info("worker %s revoked %s", self.worker_id, tps)
        held = self._held.intersection(tps)
        if held:  # never processed here: their restore is called off, and the steps never saw them
            self._call_off(held)
            tps = [tp for tp in tps if tp not in held]
        for step in self.pipeline.steps:
            step.on_revoke(tps)
        self._settle()
        self._commit_done(only=set(tps))
        self._checkpoint_stores([q for _t, q in tps])
        for store in self.stores.values():
            for _t, q in tps:
                store.drop(q)

    # -- the loop --------------------------------------------------------------------------
    def health(self, stall_s: float = 60.0) -> dict[str, Any]:
        """``live``: the loop went round within ``stall_s`` (a batch, or an idle poll); ``ready``:
        live, and Kafka has given this worker its partitions (none left is also an answer)."""
        running = self.consumer is not None and not self._stop.is_set()
        live = running and (self._restoring or time.monotonic() - self._turned < stall_s)
        return {"live": live, "ready": live and self._assigned_once and not self._restoring,
                "restoring": self._restoring, "lag": self.lag}

    def stop(self) -> None:
        """Ask the loop to finish the current batch and exit."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())

    def run(self, idle_exit_s: float | None = None) -> WorkerStats:
        """Process batches until stopped (or, with ``idle_exit_s``, after that long without input).

        In the main thread (and with ``handle_signals``), SIGTERM and SIGINT stop it the way
        ``tidal run`` does: the batch in hand is delivered, offsets committed, then it returns.
        """
        previous = {}
        if self.handle_signals and threading.current_thread() is threading.main_thread():
            previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
            self.install_signal_handlers()
        if self.metrics_port:
            self.hooks.serve(self.metrics_port, self.health)
        try:
            return self._run(idle_exit_s)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _run(self, idle_exit_s: float | None) -> WorkerStats:
        p = self.pipeline
        self._open_steps()
        self.consumer = Consumer(self._consumer_config())
        self.producer = Producer(self._producer_config())
        if p.exactly_once:
            self.producer.init_transactions(30)
        strategy = self._consumer_config().get("partition.assignment.strategy", "")
        self._incremental = "cooperative" in str(strategy)
        self.consumer.subscribe(list(p.sources), on_assign=self._on_assign, on_revoke=self._on_revoke)
        take = self._take_arrived if p.max_wait_ms == 0 else self._fill
        self._last_input = float("inf")  # the idle clock starts at the first assignment
        gc.freeze()  # long-lived objects (models, code) need no rescans by the cyclic GC
        try:
            while not self._stop.is_set():
                self._turned = time.monotonic()
                msgs = take()
                self.producer.poll(0)
                if msgs:
                    msgs = self._drop_errors(msgs)
                if msgs and self._held:
                    msgs = self._without_held(msgs)
                if self._restores:
                    self._poll_restores()
                if msgs:
                    self._last_input = time.monotonic()
                    self._process(msgs)
                else:
                    if len(self.side):  # emitted between batches (timers, hooks): a unit of its own
                        self._deliver(_Unit({}, side=self.side.take()))
                    if self._settle(wait=False):  # idle: commit the last units as soon as they are acknowledged
                        self._checkpoint_stores(force=False)  # nothing in flight: warm state dirs note it
                now = time.monotonic()
                if now - self._lag_at >= self.lag_interval_s:  # idle too: lag drains to 0
                    self._update_lag()
                self.hooks.tick(time.time())
                if (not msgs and idle_exit_s is not None and not self._restores
                        and now - self._last_input > idle_exit_s):
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
        """One batch: decode, steps, then deliver it as one unit."""
        t0 = time.perf_counter()
        p = self.pipeline
        batch, offsets = decode_messages(msgs, p.schema)
        self._remember_positions(batch, offsets)
        batch = p.process(batch, self.hooks.step_seconds)
        outputs = encode_outputs(batch) if len(batch) else []
        if outputs:
            sizes = np.fromiter(map(len, outputs), np.int64, len(outputs))
            big = sizes > self._record_limit
            if big.any():  # to the DLQ, not a produce error that would stop the partition
                batch = batch.reject(big, "too_large", [f"output record of {n:,} bytes is over the producer's "
                                                        f"limit ({self._record_limit:,}; message.max.bytes)"
                                                        for n in sizes.tolist()], "produce")
                outputs = [o for o, b in zip(outputs, big.tolist()) if not b]
        unit = _Unit(offsets, outputs, batch.keys if outputs else [], batch.rejected, self._state_changes(offsets),
                     self.side.take(), msgs)
        self._deliver(unit)
        now = time.time()
        s = self.stats
        s.first_event_at = s.first_event_at or now
        s.last_event_at = now
        s.events_in += len(msgs)
        s.batches += 1
        for r in batch.rejected:
            s.dlq[r.reason] += 1
        s.busy_s += time.perf_counter() - t0
        self.hooks.batch(batch, len(msgs), len(outputs), time.perf_counter() - t0)
        if self.on_batch is not None:
            self.on_batch(self, batch)

    def _remember_positions(self, batch: Batch, offsets: Offsets) -> None:
        self._positions.update(offsets)
        if len(batch):  # the newest event per partition, for lag in seconds
            for (t, q) in offsets:
                rows = np.flatnonzero(batch.partitions == q)
                if len(rows):
                    self._last_ts[(t, q)] = int(batch.timestamps[rows[-1]])

    def _update_lag(self) -> None:
        """Lag per assigned partition: high watermark (from the last fetch) minus our position.

        A partition not fetched yet gets no number until its first fetch answers (within
        ``fetch.wait.max.ms``): asking the broker instead (ListOffsets) can be short by a record
        batch on the embedded broker, and a wrong lag is worse than a late one.
        """
        self._lag_at = time.monotonic()
        now_ms = time.time() * 1000
        total = 0
        for tp in self.consumer.assignment():
            key = (tp.topic, tp.partition)
            try:
                low, high = self.consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                continue
            if high < 0:
                continue
            lag = max(0, high - self._positions.get(key, max(low, 0)))  # no commit yet: from the start
            total += lag
            self.hooks.stalled(tp.topic, tp.partition, self._watch_stall(key, lag))
            age = (now_ms - self._last_ts.get(key, now_ms)) / 1000 if lag else 0.0
            self.hooks.lag(tp.topic, tp.partition, lag, max(0.0, age))
        self.lag = total

    def _watch_stall(self, key: tuple[str, int], lag: int) -> float:
        """Seconds ``key`` has been behind with its position not moving (0 if it moves, is caught
        up, or is held while its state is restored); warns once when that reaches
        ``stall_warn_s``. The client fetches and the broker answers with no records (the embedded
        broker does so when it cannot find them within ``fetch.wait.max.ms``, which happens once
        its memory holds tens of millions of records), or the partition is paused by someone."""
        pos = self._positions.get(key)
        if not lag or pos is None or key in self._held:
            self._still.pop(key, None)
            return 0.0
        now = time.monotonic()
        last = self._still.get(key)
        if last is None or last[0] != pos:
            self._still[key] = (pos, now, False)
            return 0.0
        still = now - last[1]
        if not last[2] and still >= self.stall_warn_s:
            wait = self._consumer_config().get("fetch.wait.max.ms")
            log.warning("%s [%d] is %d records behind and nothing of it came from the broker for %.0f s "
                        "(position %d). On the embedded broker a short fetch.wait.max.ms (%s ms) can starve a "
                        "large topic: set kafka.consumer.fetch.wait.max.ms to 100 or more in the pipeline",
                        key[0], key[1], lag, still, pos, wait)
            self._still[key] = (pos, last[1], True)
        return still

    def _state_changes(self, offsets: Offsets) -> list[tuple[str, int, bytes, bytes]]:
        if not self.stores:
            return []
        if len(self.pipeline.sources) == 1:
            stamps: dict[int, Any] = {q: o for (_t, q), o in offsets.items()}
        else:
            stamps = {}
            for (t, q), o in offsets.items():
                stamps.setdefault(q, {})[t] = o
        out = []
        for store in self.stores.values():
            out.extend((store.changelog, q, k, v) for q, k, v in store.changelog_records(stamps))
            self.hooks.state_size(store.name, store.size())
        return out

    # -- delivery: produce a unit, then commit it (one place) ------------------------------
    def _deliver(self, unit: _Unit) -> None:
        """Produce ``unit`` and commit its offsets: in a transaction, or once acknowledged."""
        self.stats.outputs += len(unit.outputs)
        self.stats.side_outputs += len(unit.side)
        if self.pipeline.exactly_once:
            self._deliver_transaction(unit)
            return
        while len(self._inflight) >= self.max_in_flight:  # bounded: wait for the oldest unit
            self.producer.poll(0.05)
            self._settle(wait=False)

        def ack(err: KafkaError | None, msg: Any) -> None:  # librdkafka's delivery report, per record
            unit.pending -= 1
            if err is not None:
                unit.errors.append(f"{msg.topic()}: {err.str()}")
                self.hooks.produce_error()

        self._produce(unit, ack)
        unit.pending += unit.size
        unit.sealed = True
        self._inflight.append(unit)
        self.producer.poll(0)
        self._settle(wait=False)

    def _produce(self, unit: _Unit, cb: Callable | None) -> None:
        """Queue the unit's records: state changes, sink outputs, rejects, side outputs.

        A record the client refuses (e.g. over ``message.max.bytes``) goes to the dead-letter
        topic instead (``produce_error``), so one record never stops its partition."""
        produce = self.producer.produce
        sink, outputs, keys = self.pipeline.sink, unit.outputs, unit.keys
        failed: list[tuple[int, KafkaException]] = []
        try:
            for topic, q, key, value in unit.changes:  # state changelog: same delivery as the outputs
                produce(topic, value, key, q, cb)
            i, n = 0, len(outputs)
            while i < n:
                try:
                    for i in range(i, n):
                        produce(sink, outputs[i], keys[i], -1, cb)
                    break
                except KafkaException as exc:
                    failed.append((i, exc))
                    i += 1
        except BufferError:
            # The queue is sized for several batches in flight, so this means a misconfiguration.
            # Stop without committing: the batch is re-read on restart.
            raise DeliveryFailed("producer queue full; raise queue.buffering.max.messages above max_batch") from None
        name = self.pipeline.name
        for i, exc in failed:
            log.warning("output record refused by the client (to the DLQ): %s", exc)
            self._dead_letter(outputs[i], keys[i], produce_error_headers(name, sink, str(exc)), cb)
        for r in unit.rejects:
            self._dead_letter(r.value, r.key, dlq_headers(r, name), cb)
        for rec in unit.side:
            try:
                self._retry_full(rec.topic, rec.value, rec.key, rec.headers, cb)
            except KafkaException as exc:
                log.warning("side output to %s refused by the client (to the DLQ): %s", rec.topic, exc)
                self._dead_letter(rec.value, rec.key, produce_error_headers(name, rec.topic, str(exc)), cb)

    def _dead_letter(self, value: bytes | None, key: Any, headers: list, cb: Callable | None) -> None:
        """One dead letter, truncated to fit the producer's limit (original size and sha256 in
        its headers); if the client still refuses it, the headers alone."""
        value, headers = fit_dead_letter(value, headers, self._record_limit)
        try:
            self._retry_full(self.pipeline.dlq, value, key, headers, cb)
        except KafkaException as exc:
            self._retry_full(self.pipeline.dlq, None, None, headers + [("tidal.error.dlq", str(exc).encode()[:1024])], cb)

    def _retry_full(self, topic: str, value: bytes | None, key: Any, headers: Any, cb: Callable | None) -> None:
        while True:
            try:
                self.producer.produce(topic, value, key, headers=headers, on_delivery=cb)
                return
            except BufferError:
                self.producer.poll(0.1)

    def _settle(self, wait: bool = True) -> bool:
        """Commit, in order, the units in flight that the broker fully acknowledged (``wait``:
        wait for all of them). Returns whether nothing is left in flight."""
        if self.producer is None:
            return True
        if wait and self._inflight:
            while self.producer.flush(10) > 0:
                log.warning("waiting for the broker to acknowledge %d batches", len(self._inflight))
        done: Offsets = {}
        failed: _Unit | None = None
        while self._inflight and self._inflight[0].done:
            if self._inflight[0].errors:
                failed = self._inflight[0]
                break
            done.update(self._inflight.popleft().offsets)
        if done:
            self._failures = 0
            self._done.update(done)
            self._unsent.update(done)
        if self._unsent and (wait or time.monotonic() - self._commit_at >= self.commit_interval_s):
            self._commit(self._unsent)
            self._unsent = {}
        if failed is not None:
            self._redeliver(failed.errors)
        return not self._inflight

    def _redeliver(self, errors: list[str]) -> None:
        """The broker refused records of the oldest unit in flight (or never acknowledged them):
        drop every unit in flight, roll state and positions back to the last commit, and go on
        with a fresh producer, so nothing is lost; after ``max_redeliveries`` failures in a row
        stop with :class:`DeliveryFailed` (offsets not committed)."""
        units = list(self._inflight)
        self._inflight.clear()
        self._failures += 1
        if self._failures > self.max_redeliveries:
            raise DeliveryFailed(f"{len(errors)} records not acknowledged, offsets not committed: {errors[0]} "
                                 f"({self._failures} tries)")
        log.warning("%d records not acknowledged (%s): producing again from the last commit (try %d of %d)",
                    len(errors), errors[0], self._failures, self.max_redeliveries)
        self.producer.purge(in_queue=True, in_flight=True)
        self.producer.poll(0)
        self.producer = Producer(self._producer_config())
        self._roll_back([m for u in units for m in u.msgs], [r for u in units if not u.msgs for r in u.side])

    def _commit(self, offsets: Offsets) -> None:
        """Commit acknowledged offsets without waiting (a sync commit follows on revoke/shutdown)."""
        self.consumer.commit(offsets=[TopicPartition(t, q, o) for (t, q), o in offsets.items()], asynchronous=True)
        self._commit_at = time.monotonic()
        self.stats.commits += 1
        self.hooks.committed()

    def _commit_done(self, only: set[tuple[str, int]] | None = None) -> None:
        """Synchronously commit delivered offsets (at-least-once); in EOS the transaction did it."""
        pending = {k: v for k, v in self._done.items() if only is None or k in only}
        for k in pending:  # committed below: a paced async commit must not follow with the same offsets
            self._unsent.pop(k, None)
        if not pending or self.pipeline.exactly_once or self.consumer is None:
            return
        try:
            self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in pending.items()],
                                 asynchronous=False)
            self.stats.commits += 1
        except KafkaException as exc:  # e.g. the partition already moved: it will be re-read, not lost
            log.warning("sync commit failed: %s", exc)
        for k in pending:
            self._done.pop(k, None)

    def _deliver_transaction(self, unit: _Unit) -> None:
        producer = self.producer
        producer.begin_transaction()
        try:
            self._produce(unit, None)
            if unit.offsets:
                producer.send_offsets_to_transaction([TopicPartition(t, q, o) for (t, q), o in unit.offsets.items()],
                                                     self.consumer.consumer_group_metadata(), 30)
            producer.commit_transaction(60)
            self.stats.commits += 1
            self.hooks.committed()
        except KafkaException as exc:
            err = exc.args[0]
            if err.fatal() or not err.txn_requires_abort():
                raise
            log.warning("transaction aborted, the batch will be processed again: %s", err)
            producer.abort_transaction(30)
            self.stats.aborted += 1
            self._roll_back(unit.msgs, [] if unit.msgs else unit.side)

    def _roll_back(self, msgs: list[Any], side: list[SideRecord] = ()) -> None:
        """Undo the processing of ``msgs`` (not delivered): the steps' state back to the committed
        point, then seek back to the first of them; ``side``: side outputs emitted between
        batches, queued again (those of ``msgs`` come again when they are processed again)."""
        for rec in side:
            self.side.put(rec)
        first: Offsets = {}
        for m in msgs:
            first.setdefault((m.topic(), m.partition()), m.offset())
        if not first:
            return
        tps = sorted(first)
        for step in self.pipeline.steps:
            step.on_revoke(tps)
        if self.stores:
            for store in self.stores.values():
                for _t, q in tps:
                    store.drop(q)
            self._restore(tps, self._committed([TopicPartition(t, q) for t, q in tps]))
        for step in self.pipeline.steps:
            step.on_assign(tps)
        for (t, q), o in first.items():
            self.consumer.seek(TopicPartition(t, q, o))
            self._positions[(t, q)] = o

    def _shutdown(self) -> None:
        for job in self._restores:  # partitions never processed here: nothing of theirs to deliver
            job.cancel()
        self._restores.clear()
        try:
            for step in self.pipeline.steps:  # a step may emit its last side outputs as it closes
                try:
                    step.close()
                except Exception:  # noqa: BLE001 - one step's failure must not lose the others' outputs
                    log.exception("step %s failed to close", step.name)
            if self.producer is not None:
                if len(self.side):
                    self._deliver(_Unit({}, side=self.side.take()))
                self._settle()
                self.producer.flush(30)
            self._commit_done()
            self._checkpoint_stores()
        finally:
            if self.consumer is not None:
                self.consumer.close()
            for store in self.stores.values():
                store.close()
            # Drop the clients now: the producer holds a bound method of this worker, a cycle the
            # cyclic GC would otherwise find only later (their threads would outlive the worker).
            self.producer = None
            gc.unfreeze()
