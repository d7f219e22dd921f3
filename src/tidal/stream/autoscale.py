"""Elastic scaling on one machine: ``tidal run pipeline.yaml --workers 1..N``.

A supervisor starts the lower bound of worker processes (one consumer group), measures the
group's lag every ``interval_s`` and adds or removes one worker at a time:

* **up** when the lag stayed above ``up_lag`` for ``up_intervals`` samples in a row and did
  not shrink over them (the newest sample is at least 90 % of the oldest): the workers there
  are not catching up;
* **down** when the lag stayed below ``down_lag`` for ``down_intervals`` samples in a row
  (longer than the way up: hysteresis, together with ``down_lag < up_lag``);
* after every change, a **cool-down** of ``cooldown_s`` (the rebalance the change causes
  stalls the group for a moment); samples taken during it do not count.

Never more workers than the pipeline's source partitions (a worker without a partition would
only idle), never fewer than the lower bound. Removing a worker is SIGTERM to the newest one
and waiting for it to exit: workers drain on SIGTERM (finish the batch, commit, exit 0), so a
change is a rebalance that loses nothing, in exactly-once mode repeats nothing either. Each
decision is logged with the lag that caused it.

The lag is read from the broker, the way ``tidal status`` does: the group's committed offsets
against end offsets taken from fetch responses (the embedded broker's ``ListOffsets`` can be
short). Not from the workers' ``/metrics``: those cover only the partitions a live worker holds
now, so during the very rebalances scaling causes (and before a new worker's first assignment,
or after a stopped worker's gauges vanished) they under-report; they need a metrics port per
worker; and a worker's lag counts from its fetch position, not from what is committed. The
committed offsets are the one number that is right whatever the workers are doing.
"""

from __future__ import annotations

import logging
import re
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from confluent_kafka import OFFSET_END, Consumer, ConsumerGroupTopicPartitions, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient

from tidal.config import KafkaSettings

__all__ = ["ScalePolicy", "GroupLag", "Autoscaler", "run_autoscaled", "parse_workers", "max_workers", "stop_worker"]

log = logging.getLogger("tidal.autoscale")


def parse_workers(text: str | int) -> tuple[int, int]:
    """``"3"`` → (3, 3) (a fixed count, as before); ``"1..4"`` → (1, 4) (scale between them).

    >>> parse_workers("1..4"), parse_workers("2"), parse_workers(3)
    ((1, 4), (2, 2), (3, 3))
    """
    m = re.fullmatch(r"\s*(\d+)\s*(?:\.\.\s*(\d+)\s*)?", str(text))
    if not m:
        raise ValueError(f"--workers takes N or MIN..MAX (e.g. 1..4), not {text!r}")
    lo = int(m.group(1))
    hi = int(m.group(2)) if m.group(2) is not None else lo
    if lo < 1 or hi < lo:
        raise ValueError(f"--workers {text}: need 1 ≤ MIN ≤ MAX")
    return lo, hi


def max_workers(pipeline) -> int:
    """How many workers can hold a partition each: the source partitions (with the range
    assignor, used for stateful multi-source pipelines, partition q of every source goes to one
    worker, so the most partitions of one source)."""
    counts = [pipeline.partitions] * len(pipeline.sources)
    strategy = pipeline.consumer_config.get("partition.assignment.strategy")
    if strategy is None and len(pipeline.sources) > 1 and any(s.state_name for s in pipeline.steps):
        strategy = "range"
    return max(counts) if strategy == "range" else sum(counts)


@dataclass
class ScalePolicy:
    """When to add or remove a worker (see the module docstring). Lags are in messages."""

    up_lag: int = 10_000
    down_lag: int = 1_000
    interval_s: float = 10.0
    up_intervals: int = 3
    down_intervals: int = 6
    cooldown_s: float = 30.0
    _samples: deque = field(default_factory=deque, init=False, repr=False)
    _quiet_until: float = field(default=float("-inf"), init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.down_lag < self.up_lag:
            raise ValueError(f"need 0 ≤ scale-down lag ({self.down_lag}) < scale-up lag ({self.up_lag})")
        if self.interval_s <= 0 or self.up_intervals < 1 or self.down_intervals < 1 or self.cooldown_s < 0:
            raise ValueError("the interval must be > 0, the interval counts ≥ 1 and the cool-down ≥ 0")

    def observe(self, lag: int, workers: int, lo: int, hi: int, now: float | None = None) -> int:
        """Take one lag sample; +1 (add a worker), -1 (remove one) or 0."""
        now = time.monotonic() if now is None else now
        if now < self._quiet_until:
            return 0
        self._samples.append(lag)
        while len(self._samples) > max(self.up_intervals, self.down_intervals):
            self._samples.popleft()
        recent = list(self._samples)
        up = recent[-self.up_intervals:]
        if (workers < hi and len(up) == self.up_intervals and min(up) > self.up_lag
                and up[-1] >= 0.9 * up[0]):
            return self._changed(now, +1)
        down = recent[-self.down_intervals:]
        if workers > lo and len(down) == self.down_intervals and max(down) < self.down_lag:
            return self._changed(now, -1)
        return 0

    def _changed(self, now: float, step: int) -> int:
        self._samples.clear()  # decide on what the new number of workers does, after the rebalance
        self._quiet_until = now + self.cooldown_s
        return step


class GroupLag:
    """The consumer group's lag over its source topics, from the broker (committed offsets vs
    fetch-response high watermarks), as ``tidal status`` reads it."""

    def __init__(self, settings: KafkaSettings, group: str, topics: list[str], timeout: float = 5.0) -> None:
        self.group, self.topics, self.timeout = group, list(topics), timeout
        self.admin = AdminClient(settings.client_config({"log_level": 0}))
        # assign() only, never subscribe: this reader joins no group (tidal.status is hidden by `tidal status`)
        self.reader = Consumer(settings.client_config({"group.id": "tidal.status", "enable.auto.commit": False,
                                                       "enable.partition.eof": True, "log_level": 3}))

    def partitions(self) -> list[tuple[str, int]]:
        md = self.reader.list_topics(timeout=self.timeout)
        return [(t, p) for t in self.topics if t in md.topics and md.topics[t].error is None
                for p in sorted(md.topics[t].partitions)]

    def ends(self, parts: list[tuple[str, int]]) -> dict[tuple[str, int], tuple[int, int]]:
        """(low, high) watermark per partition; the high one from a fetch response at the end."""
        self.reader.assign([TopicPartition(t, p, OFFSET_END) for t, p in parts])
        try:
            waiting, deadline = set(parts), time.monotonic() + self.timeout
            while waiting and time.monotonic() < deadline:
                for m in self.reader.consume(1000, 0.1):
                    if m.error() is None or m.error().code() == KafkaError._PARTITION_EOF:
                        waiting.discard((m.topic(), m.partition()))
            out = {}
            for t, p in parts:
                low, high = self.reader.get_watermark_offsets(TopicPartition(t, p), cached=True)
                if high < 0:
                    low, high = self.reader.get_watermark_offsets(TopicPartition(t, p), timeout=self.timeout)
                out[(t, p)] = (low, high)
            return out
        finally:
            self.reader.unassign()

    def committed(self) -> dict[tuple[str, int], int]:
        futures = self.admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(self.group)],
                                                         request_timeout=self.timeout)
        result = futures[self.group].result()
        return {(tp.topic, tp.partition): tp.offset for tp in result.topic_partitions}

    def __call__(self) -> int:
        parts = self.partitions()
        if not parts:
            return 0
        ends, done = self.ends(parts), self.committed()
        lag = 0
        for tp in parts:
            low, high = ends[tp]
            start = done.get(tp, -1)
            if start < 0:  # nothing committed yet: the group starts at the beginning (auto.offset.reset)
                start = max(low, 0)
            lag += max(0, high - start)
        return lag

    def close(self) -> None:
        self.reader.close()


def stop_worker(proc: subprocess.Popen, stopping: threading.Event | None = None, warn_after: float = 60.0) -> int:
    """SIGTERM one worker and wait for it to drain, commit and exit; its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    warned = False
    while True:
        try:
            return proc.wait(0.2)
        except subprocess.TimeoutExpired:
            if not warned and time.monotonic() - t0 > warn_after:
                log.warning("worker pid %d still draining after %.0fs", proc.pid, warn_after)
                warned = True


class Autoscaler:
    """Keep between ``lo`` and ``hi`` workers running, scaled on the group's lag.

    ``spawn(index)`` starts worker ``index`` (a Popen); ``lag()`` measures the lag. Worker
    indices stay compact (a new worker takes the lowest free one, so its id, transactional.id
    and metrics port are those of a worker stopped before). :meth:`run` returns when every
    worker has exited (after SIGTERM/SIGINT, forwarded to all, or on their own), with the worst
    exit status.
    """

    def __init__(self, spawn: Callable[[int], subprocess.Popen], lag: Callable[[], int], lo: int, hi: int,
                 policy: ScalePolicy | None = None) -> None:
        self.spawn, self.lag, self.lo, self.hi = spawn, lag, lo, hi
        self.policy = policy or ScalePolicy()
        self.workers: list[tuple[int, subprocess.Popen]] = []  # in start order: the newest last
        self.codes: list[int] = []
        self.stopping = threading.Event()
        self.history: list[tuple[float, int, int]] = []  # (monotonic time, lag, workers) per sample

    # -- workers ---------------------------------------------------------------------------
    def add(self) -> None:
        used = {i for i, _ in self.workers}
        index = next(i for i in range(len(used) + 1) if i not in used)
        self.workers.append((index, self.spawn(index)))

    def remove(self) -> None:
        index, proc = self.workers.pop()
        code = stop_worker(proc)
        self.codes.append(abs(code))
        if code != 0:
            log.error("worker %d exited %d after SIGTERM", index, code)

    def reap(self) -> None:
        for index, proc in list(self.workers):
            code = proc.poll()
            if code is not None:
                self.workers.remove((index, proc))
                self.codes.append(abs(code))
                (log.info if code == 0 else log.error)("worker %d exited on its own (%d)", index, code)

    def _forward(self, _signum: int, _frame: object) -> None:
        self.stopping.set()
        for _i, p in self.workers:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    # -- loop ------------------------------------------------------------------------------
    def run(self) -> int:
        previous = {}
        if threading.current_thread() is threading.main_thread():
            previous = {s: signal.signal(s, self._forward) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            log.info("autoscaling %d..%d workers: up above lag %d (%d intervals, not shrinking), down below %d "
                     "(%d intervals), every %gs, cool-down %gs", self.lo, self.hi, self.policy.up_lag,
                     self.policy.up_intervals, self.policy.down_lag, self.policy.down_intervals,
                     self.policy.interval_s, self.policy.cooldown_s)
            for _ in range(self.lo):
                self.add()
            self.policy._changed(time.monotonic(), 0)  # the first group formation: a cool-down too
            while not self.stopping.wait(self.policy.interval_s):
                self.reap()
                if not self.workers:
                    break
                self.step()
        finally:
            for _i, p in self.workers:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for _i, p in self.workers:
                self.codes.append(abs(p.wait()))
            self.workers.clear()
            for s, h in previous.items():
                signal.signal(s, h)
        return max(self.codes, default=0)

    def step(self) -> int:
        """One sample and, maybe, one change; the change (+1, -1, 0)."""
        try:
            lag = self.lag()
        except Exception as e:  # noqa: BLE001 - a broker hiccup skips a sample, it decides nothing
            log.warning("could not measure the lag (%s); sample skipped", e)
            return 0
        n = len(self.workers)
        self.history.append((time.monotonic(), lag, n))
        change = self.policy.observe(lag, n, self.lo, self.hi)
        if change > 0:
            log.info("scale up %d -> %d workers: lag %d above %d for %d intervals and not shrinking",
                     n, n + 1, lag, self.policy.up_lag, self.policy.up_intervals)
            self.add()
        elif change < 0:
            log.info("scale down %d -> %d workers: lag %d below %d for %d intervals; stopping the newest (worker %d)",
                     n, n - 1, lag, self.policy.down_lag, self.policy.down_intervals, self.workers[-1][0])
            self.remove()
        else:
            log.debug("lag %d with %d workers: no change", lag, n)
        return change


def run_autoscaled(spec, settings: KafkaSettings, lo: int, hi: int, policy: ScalePolicy | None = None,
                   kafka_config: str | None = None, stats_file=None, idle_exit_s: float | None = None,
                   log_level: str = "INFO", metrics_port: int | None = None, progress_s: float = 10.0) -> int:
    """``tidal run SPEC --workers LO..HI``: worker processes (as :func:`~tidal.stream.runner.spawn_worker`
    starts them) between ``lo`` and ``hi``, capped at the source partitions; the worst exit status."""
    from tidal.broker.topics import ensure_topics
    from tidal.stream.runner import spawn_worker
    from tidal.stream.spec import load_pipeline

    pipeline = load_pipeline(spec)
    ensure_topics(settings, pipeline.topic_specs())
    cap = max_workers(pipeline)
    if hi > cap:
        log.info("at most %d workers: the source partitions of pipeline %s", cap, pipeline.name)
        hi, lo = cap, min(lo, cap)
    lag = GroupLag(settings, pipeline.group, pipeline.sources)
    try:
        return Autoscaler(lambda i: spawn_worker(spec, i, settings, kafka_config, stats_file, idle_exit_s,
                                                 log_level, metrics_port, progress_s), lag, lo, hi, policy).run()
    finally:
        lag.close()
