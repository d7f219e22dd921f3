"""``tidal run --workers 1..4``: the supervisor scales on the group's lag, and each change
(a rebalance) loses and repeats nothing in exactly-once mode."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
import yaml

from tidal.broker import ensure_topics
from tidal.stream import from_dict
from tidal.stream.autoscale import GroupLag

from .kafka_helpers import produce, read_all, records, tidal_process

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
UP_LAG, DOWN_LAG = 300, 60
SCALE = re.compile(r"scale (up|down) (\d+) -> (\d+) workers: lag (\d+)")


def write_spec(tmp_path: Path, name: str) -> Path:
    # 0.3 s per batch of at most 20: one worker takes ~60 events/s, so a burst makes lag
    spec = {"pipeline": name, "schema": {"id": "int"}, "exactly_once": True, "partitions": 4,
            "steps": [{"python": "integration.steps_for_tests:slower"}],
            "batch": {"max_batch": 20, "max_wait_ms": 0}}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def committed_ids(settings, name) -> Counter:
    return Counter(r["id"] for r in records(read_all(settings, f"{name}.predictions", 4, "read_committed")))


def test_scales_up_on_lag_and_down_without_loss_or_duplicates(settings, name, tmp_path):
    spec = write_spec(tmp_path, name)
    ensure_topics(settings, from_dict(yaml.safe_load(spec.read_text())).topic_specs())
    log_path = tmp_path / "supervisor.log"
    with log_path.open("w") as logf:
        sup = tidal_process(settings, "run", str(spec), "--workers", "1..4", "--scale-up-lag", str(UP_LAG),
                            "--scale-down-lag", str(DOWN_LAG), "--scale-interval", "0.5", "--scale-cooldown", "2",
                            "--metrics-port", "0", "--progress", "0", "--log-level", "INFO",
                            env={"PYTHONPATH": str(HERE.parent)}, stdout=logf, stderr=logf, start_new_session=True)
    lag = GroupLag(settings, f"tidal.{name}", [f"{name}.events"])
    seen: list[tuple[str, int, int, int]] = []  # (up/down, from, to, lag) as the supervisor logs them
    samples: list[tuple[float, int]] = []  # (seconds after the load, group lag)
    first_seen: dict[str, float] = {}  # each decision line: seconds after the load when the test saw it
    next_id = 0
    try:
        time.sleep(3)  # the first worker forms the group
        t_load = time.monotonic()
        burst = 2400
        produce(settings, f"{name}.events", [orjson.dumps({"id": i}) for i in range(burst)])
        next_id = burst

        # a trickle well under one worker's pace keeps events flowing through every later change
        stop_trickle = threading.Event()

        def trickle():
            nonlocal next_id
            while not stop_trickle.wait(0.5):
                produce(settings, f"{name}.events", [orjson.dumps({"id": next_id + j}) for j in range(5)])
                next_id += 5

        feeder = threading.Thread(target=trickle, daemon=True)
        feeder.start()

        def poll():
            samples.append((time.monotonic() - t_load, lag()))
            seen.clear()
            for line in log_path.read_text().splitlines():
                m = SCALE.search(line)
                if m:
                    first_seen.setdefault(line, samples[-1][0])
                    seen.append((m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4))))
            time.sleep(0.5)

        deadline = time.monotonic() + 50
        scaled_up_at = low_at = None
        while time.monotonic() < deadline:
            poll()
            ups = [s for s in seen if s[0] == "up"]
            if ups and scaled_up_at is None:
                scaled_up_at = round(samples[-1][0], 1)
            if scaled_up_at is not None and low_at is None and samples[-1][1] < UP_LAG:
                low_at = round(samples[-1][0], 1)
            downs = [s for s in seen if s[0] == "down"]
            if downs and downs[-1][2] == 1:
                break
        stop_trickle.set()
        feeder.join(5)
        total = next_id

        ups = [s for s in seen if s[0] == "up"]
        downs = [s for s in seen if s[0] == "down"]
        peak = max((s[2] for s in ups), default=1)
        print(f"\nautoscale: load {burst} events; first scale-up seen {scaled_up_at}s after the load, lag under "
              f"{UP_LAG} at {low_at}s, peak {peak} workers, back to "
              f"{downs[-1][2] if downs else '-'} at {samples[-1][0]:.1f}s; decisions {[(round(t, 1), d) for t, d in zip(first_seen.values(), seen)]}")
        assert ups, f"never scaled up; lag samples {samples[-10:]}\n{log_path.read_text()[-3000:]}"
        assert all(s[3] > UP_LAG for s in ups)  # each up decision was caused by lag above the threshold
        assert low_at is not None, "the lag never came back under the threshold"
        assert downs and downs[-1][2] < peak, f"never scaled down; {samples[-10:]}"
        assert all(s[3] < DOWN_LAG for s in downs)
        assert peak <= 4

        # everything produced gets processed, then the supervisor drains the rest and exits 0
        end = time.monotonic() + 30
        while sum(committed_ids(settings, name).values()) < total and time.monotonic() < end:
            time.sleep(0.5)
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(30) == 0
        assert "tidal.autoscale ERROR" not in log_path.read_text()  # no worker exited non-zero after its SIGTERM
        assert committed_ids(settings, name) == Counter(range(total))  # every event exactly once
    finally:
        lag.close()
        try:
            os.killpg(sup.pid, signal.SIGKILL)  # the supervisor and any worker left behind (a failed test)
        except ProcessLookupError:
            pass
