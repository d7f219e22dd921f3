"""The autoscaler's policy and supervisor loop, without a broker (fake lag, fake workers)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tidal.stream.autoscale import Autoscaler, ScalePolicy, max_workers, parse_workers
from tidal.stream.pipeline import Pipeline


def test_parse_workers():
    assert parse_workers("1..4") == (1, 4)
    assert parse_workers("3") == (3, 3)
    for bad in ("0", "4..2", "1-4", "x", "0..3"):
        with pytest.raises(ValueError):
            parse_workers(bad)


def feed(policy, lags, workers=1, lo=1, hi=4, t0=0.0, dt=1.0):
    return [policy.observe(lag, workers, lo, hi, now=t0 + i * dt) for i, lag in enumerate(lags)]


def test_up_after_intervals_above_threshold_and_not_shrinking():
    p = ScalePolicy(up_lag=100, down_lag=10, up_intervals=3, down_intervals=5, cooldown_s=0)
    assert feed(p, [500, 600, 700]) == [0, 0, 1]


def test_no_up_while_the_lag_shrinks_or_dips_under_the_threshold():
    p = ScalePolicy(up_lag=100, down_lag=10, up_intervals=3, cooldown_s=0)
    assert feed(p, [1000, 800, 600, 400]) == [0, 0, 0, 0]  # draining: the workers there catch up
    p = ScalePolicy(up_lag=100, down_lag=10, up_intervals=3, cooldown_s=0)
    assert feed(p, [500, 50, 500, 500]) == [0, 0, 0, 0]  # one sample under: the window starts over


def test_never_above_max_nor_below_min():
    p = ScalePolicy(up_lag=100, down_lag=10, up_intervals=1, down_intervals=1, cooldown_s=0)
    assert feed(p, [500, 500], workers=4, hi=4) == [0, 0]
    assert feed(p, [0, 0], workers=1, lo=1) == [0, 0]


def test_down_needs_longer_quiet_and_cooldown_follows_each_change():
    p = ScalePolicy(up_lag=100, down_lag=10, up_intervals=2, down_intervals=4, cooldown_s=3)
    assert feed(p, [5, 5, 5], workers=3) == [0, 0, 0]
    assert p.observe(5, 3, 1, 4, now=3) == -1
    # cool-down: samples in the next 3 s count for nothing, then a fresh window
    assert [p.observe(5, 2, 1, 4, now=t) for t in (4, 5, 6, 7, 8, 9)] == [0, 0, 0, 0, 0, -1]


def test_thresholds_validated():
    with pytest.raises(ValueError):
        ScalePolicy(up_lag=10, down_lag=10)


def test_max_workers_is_the_source_partitions():
    assert max_workers(Pipeline("a", partitions=4)) == 4
    assert max_workers(Pipeline("b", partitions=3, sources=["x", "y"])) == 6


class FakeLag:
    def __init__(self, lags):
        self.lags = list(lags)

    def __call__(self):
        return self.lags.pop(0) if len(self.lags) > 1 else self.lags[0]


def sleeper(_index):
    # drains on SIGTERM like a worker: exits 0
    code = "import signal,sys,time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); time.sleep(60)"
    return subprocess.Popen([sys.executable, "-c", code])


def test_supervisor_adds_then_removes_the_newest_and_exits_zero():
    policy = ScalePolicy(up_lag=100, down_lag=10, interval_s=0.05, up_intervals=2, down_intervals=3, cooldown_s=0)
    scaler = Autoscaler(sleeper, FakeLag([500] * 4 + [0] * 20), 1, 3, policy)
    scaler.add()
    try:
        time.sleep(0.3)  # the sleepers install their handler
        changes = [scaler.step() for _ in range(4)]
        assert changes == [0, 1, 0, 1] and len(scaler.workers) == 3
        assert [i for i, _ in scaler.workers] == [0, 1, 2]
        time.sleep(0.3)
        newest = scaler.workers[-1][1]
        changes = [scaler.step() for _ in range(6)]
        assert changes == [0, 0, -1, 0, 0, -1] and [i for i, _ in scaler.workers] == [0]
        assert newest.returncode == 0 and scaler.codes == [0, 0]
    finally:
        scaler.stopping.set()
        for _i, p in scaler.workers:
            p.terminate()
            p.wait()
