"""The worker's stall watch: a partition behind whose position does not move is warned about
once (the embedded broker can answer every fetch of a large topic with no records)."""

from __future__ import annotations

import logging
import time

from tidal.config import KafkaSettings
from tidal.stream import Worker, from_dict

KEY = ("p.events", 0)


def worker() -> Worker:
    w = Worker(from_dict({"pipeline": "p", "schema": {"id": "int"}, "steps": []}),
               KafkaSettings("127.0.0.1:1"), handle_signals=False)
    w.stall_warn_s = 0.2
    return w


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "nothing of it came from the broker" in r.getMessage()]


def test_behind_and_not_moving_warns_once(caplog):
    w = worker()
    w._positions[KEY] = 100
    with caplog.at_level(logging.WARNING, logger="tidal.worker"):
        w._watch_stall(KEY, 50)
        assert not warnings(caplog)  # not yet: it has not stood still long enough
        time.sleep(0.25)
        w._watch_stall(KEY, 60)
        w._watch_stall(KEY, 70)
    assert len(warnings(caplog)) == 1
    assert "p.events [0] is 60 records behind" in warnings(caplog)[0] and "fetch.wait.max.ms (5 ms)" in warnings(caplog)[0]


def test_moving_caught_up_or_held_partitions_are_not_stalled(caplog):
    w = worker()
    with caplog.at_level(logging.WARNING, logger="tidal.worker"):
        w._positions[KEY] = 100
        w._watch_stall(KEY, 50)
        time.sleep(0.25)
        w._positions[KEY] = 150  # it moved: the clock starts again
        w._watch_stall(KEY, 50)
        w._watch_stall(("p.events", 1), 0)  # not behind
        w._held.add(("p.events", 2))  # paused by the worker while its state is restored
        w._positions[("p.events", 2)] = 7
        w._watch_stall(("p.events", 2), 500)
        time.sleep(0.25)
        w._watch_stall(("p.events", 2), 500)
    assert not warnings(caplog)
    time.sleep(0.05)
    with caplog.at_level(logging.WARNING, logger="tidal.worker"):
        w._watch_stall(KEY, 50)  # 0.3 s at position 150 now
    assert len(warnings(caplog)) == 1


def test_a_partition_revoked_and_given_back_starts_a_new_clock(caplog):
    from confluent_kafka import TopicPartition

    w = worker()
    w._positions[KEY] = 100
    w._watch_stall(KEY, 50)
    time.sleep(0.25)
    w._on_revoke(None, [TopicPartition(*KEY)])  # stateless: nothing to commit or drop
    w._positions[KEY] = 100  # back, at the same committed position
    with caplog.at_level(logging.WARNING, logger="tidal.worker"):
        w._watch_stall(KEY, 50)
    assert not warnings(caplog)


class _Consumer:
    """What ``_update_lag`` asks of the consumer: the assignment and cached watermarks."""

    def __init__(self, high: int) -> None:
        self.high = high

    def assignment(self):
        from confluent_kafka import TopicPartition

        return [TopicPartition(*KEY)]

    def get_watermark_offsets(self, tp, cached=True):
        return 0, self.high


def test_stall_seconds_are_a_metric_and_leave_with_the_partition():
    from confluent_kafka import TopicPartition

    from tidal.monitor.hooks import MonitorHooks

    w = worker()
    w.hooks = hooks = MonitorHooks(w.pipeline)
    labels = {"pipeline": "p", "topic": KEY[0], "partition": str(KEY[1])}

    def stalled():
        return hooks.registry.get_sample_value("tidal_partition_stalled_seconds", labels)

    w.consumer = _Consumer(high=150)
    w._positions[KEY] = 100
    w._update_lag()
    assert stalled() == 0.0 and w.lag == 50  # behind, but its clock only starts now
    time.sleep(0.25)
    w._update_lag()
    assert stalled() >= 0.25
    w._positions[KEY] = 150  # it moved and caught up
    w._update_lag()
    assert stalled() == 0.0
    w._on_revoke(None, [TopicPartition(*KEY)])
    assert stalled() is None  # a partition that left has no series
