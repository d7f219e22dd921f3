"""State restored in the background on the real broker: while a worker rebuilds the state of
partitions it was just given, it goes on processing the partitions it already had; the new
ones wait, paused, and continue from the restored state once it is back."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import defaultdict

import pytest

from tidal.stream import Worker, from_dict, restorer

from .test_state_warm import check_outputs, send

pytestmark = pytest.mark.integration

KEYS, PARTS = 40, 4


def spec(name: str) -> dict:
    return {"pipeline": name, "schema": {"id": "int", "k": "str", "x": "float"}, "partitions": PARTS,
            "steps": [{"window": {"key": "k", "aggs": {"n": ["x", "count"], "total": ["x", "sum"]}}}],
            "batch": {"max_batch": 100, "max_wait_ms": 0}}


def until(cond, timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class Gate:
    """Wraps the restore: once armed, a restore of the worker with ``settings`` waits until the
    gate opens (the other worker may still be handed partitions while it leaves)."""

    def __init__(self, real, settings) -> None:
        self.real, self.settings = real, settings
        self.armed, self.open, self.waiting = False, threading.Event(), threading.Event()

    def __call__(self, *args, **kwargs):
        if self.armed and args[0] is self.settings:
            self.waiting.set()
            self.open.wait(60)
        return self.real(*args, **kwargs)


@pytest.mark.timeout(420)  # three rebalances on the embedded broker: 40-85 s alone, ~150 s in a parallel run
def test_a_restore_does_not_stop_the_partitions_already_held(settings, name, monkeypatch):
    mine = dataclasses.replace(settings)  # worker one's own settings object: the gate knows its restores
    gate = Gate(restorer.restore_partitions, mine)
    monkeypatch.setattr(restorer, "restore_partitions", gate)
    seen: dict[int, set[int]] = defaultdict(set)  # worker one's partitions and the ids it processed

    def note(w, batch) -> None:
        for q, i in zip(batch.partitions.tolist(), batch.column("id").tolist()):
            seen[q].add(i)

    one = Worker(from_dict(spec(name)), mine, handle_signals=False, on_batch=note)
    two = Worker(from_dict(spec(name)), settings, handle_signals=False, worker_id="1")
    threads = [threading.Thread(target=w.run, daemon=True) for w in (one, two)]
    threads[0].start()
    send(settings, name, range(0, 400))
    until(lambda: one.stats.events_in >= 400, what="worker one to process the first events")

    threads[1].start()  # joins: some partitions, with their state, move to it
    until(lambda: two.consumer is not None and len(two.consumer.assignment()) > 0 and not two.health()["restoring"],
          what="worker two to take partitions")
    send(settings, name, range(400, 800))
    until(lambda: one.stats.events_in + two.stats.events_in >= 800, what="both to process the second events")
    kept = {tp.partition for tp in one.consumer.assignment()}
    moved = {tp.partition for tp in two.consumer.assignment()}
    assert kept and moved and not kept & moved

    gate.armed = True  # worker two leaves: its partitions come back to one, whose restore now waits
    two.stop()
    threads[1].join(30)
    assert gate.waiting.wait(60), "worker one never restored the returned partitions"
    until(lambda: one.health()["restoring"], what="worker one to report the restore")
    before = {q: set(ids) for q, ids in seen.items()}
    send(settings, name, range(800, 1200))
    third = set(range(800, 1200))
    # the partitions it kept go on while the others' state is still being restored ...
    until(lambda: sum(len((seen[q] - before.get(q, set())) & third) for q in kept) > 0,
          what="the kept partitions to go on during the restore")
    time.sleep(1.0)
    assert all(not (seen[q] - before.get(q, set())) & third for q in moved)  # ... and the returned ones wait
    assert one.health()["restoring"] and one.health()["live"]

    gate.open.set()
    until(lambda: not one.health()["restoring"], what="the restore to finish")
    until(lambda: len(set().union(*seen.values()) & third) == len(third), what="every third-round event")
    assert {q for q, ids in seen.items() if ids & third} == kept | moved
    one.stop()
    threads[0].join(30)
    check_outputs(settings, name, 1200)  # every count continues from the restored state
