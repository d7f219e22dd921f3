"""`tidal run`'s progress line: rate, totals, DLQ by reason and lag, only while there is news."""

from __future__ import annotations

import logging
import time
from collections import Counter
from types import SimpleNamespace

from tidal.stream.runner import Progress, progress_line
from tidal.stream.worker import WorkerStats


def test_the_line_sorts_dlq_reasons_by_count():
    line = progress_line("w1", 1234.6, 5000, 4990, {"too_large": 1, "wrong_type": 9}, 0)
    assert line == "worker w1: 1,235 events/s, 5,000 in, 4,990 out, dlq 10 (wrong_type 9, too_large 1), lag 0"
    assert progress_line("w1", 0, 0, 0, {}, 7).endswith("dlq 0, lag 7")


def test_progress_logs_while_events_flow_and_stays_quiet_when_idle(caplog):
    stats = WorkerStats()
    worker = SimpleNamespace(stats=stats, lag=0, worker_id="0")
    caplog.set_level(logging.INFO, logger="tidal.runner")
    progress = Progress(worker, 0.05)
    try:
        for _ in range(5):  # events arrive
            stats.events_in += 100
            stats.outputs += 99
            stats.dlq = Counter({"wrong_type": stats.dlq["wrong_type"] + 1})
            time.sleep(0.06)
        time.sleep(0.2)
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("worker 0:")]
        assert lines and "500 in, 495 out, dlq 5 (wrong_type 5), lag 0" in lines[-1]
        idle = len(lines)
        time.sleep(0.3)  # nothing new, no lag: no more lines
        assert len([r for r in caplog.records if r.getMessage().startswith("worker 0:")]) == idle
        worker.lag = 42  # behind, even with no new input: it says so
        time.sleep(0.2)
        assert any("lag 42" in r.getMessage() for r in caplog.records)
    finally:
        progress.stop()
