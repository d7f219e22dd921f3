"""Warm rocksdb restarts (``state: {dir: ...}``) on the real broker: a worker that stops cleanly
and starts again on the same host replays only the changelog written since its checkpoint, and
ends with the state (and outputs) a full replay gives; a local database that is corrupt, stale
or was left dirty is detected and rebuilt from the whole changelog."""

from __future__ import annotations

import signal
from collections import defaultdict

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from tidal.broker import ensure_topics
from tidal.stream import Worker, from_dict
from tidal.stream.rocks import META_KEY, RocksPartition
from tidal.stream.state import StateStore, restore_partitions

from .kafka_helpers import produce, read_all, records, tidal_process, wait_for
from .test_delivery import HERE
from .test_state import check as check_state_outputs
from .test_state import setup as setup_state

pytest.importorskip("rocksdict")
pytestmark = pytest.mark.integration

KEYS, PARTS = 40, 4


def spec(name: str, state_dir) -> dict:
    return {"pipeline": name, "schema": {"id": "int", "k": "str", "x": "float"}, "partitions": PARTS,
            "steps": [{"window": {"key": "k", "aggs": {"n": ["x", "count"], "total": ["x", "sum"]}}}],
            "batch": {"max_batch": 100, "max_wait_ms": 20},
            "state": {"backend": "rocksdb", "dir": str(state_dir)}}


def send(settings, name: str, ids: range) -> None:
    produce(settings, f"{name}.events", [orjson.dumps({"id": i, "k": f"k{i % KEYS}", "x": float(i)}) for i in ids],
            keys=[f"k{i % KEYS}".encode() for i in ids])  # keyed: a key's events stay in order


def run(settings, name: str, state_dir) -> Worker:
    w = Worker(from_dict(spec(name, state_dir)), settings, handle_signals=False)
    w.run(idle_exit_s=2)
    return w


def check_outputs(settings, name: str, n: int) -> None:
    """Every event's output is its key's running count and sum, as one uninterrupted run gives."""
    count, total, want = defaultdict(int), defaultdict(float), {}
    for i in range(n):
        count[i % KEYS] += 1
        total[i % KEYS] += float(i)
        want[i] = (float(count[i % KEYS]), total[i % KEYS])
    got = defaultdict(set)
    for r in records(read_all(settings, f"{name}.predictions", PARTS)):
        got[r["id"]].add((r["n"], r["total"]))
    assert set(got) == set(want)
    for i, values in got.items():
        assert values == {want[i]}, (i, values, want[i])


def db_path(state_dir, name: str, q: int):
    return state_dir / f"{name}.window.changelog" / f"p{q}"


def local_state(state_dir, name: str) -> dict[int, dict]:
    out = {}
    for q in range(PARTS):
        part = RocksPartition(db_path(state_dir, name, q), persistent=True)
        out[q] = dict(part.items())
        part.close()
    return out


def cold_state(settings, name: str) -> dict[int, dict]:
    """The state a full replay of the changelog gives at the group's committed offsets."""
    p = from_dict(spec(name, "unused"))
    c = Consumer(settings.client_config({"group.id": p.group, "log_level": 3}))
    committed = {tp.partition: tp.offset for tp in
                 c.committed([TopicPartition(f"{name}.events", q) for q in range(PARTS)], timeout=10)}
    c.close()
    store = StateStore("window", f"{name}.window.changelog")
    restore_partitions(settings, store, committed)
    return {q: dict(store.partition(q).items()) for q in range(PARTS)}


def changelog_after(settings, name: str, offsets: dict[int, int]) -> int:
    """Changelog records at or after ``offsets[q]`` in each partition q."""
    return sum(1 for m in read_all(settings, f"{name}.window.changelog", PARTS) if m.offset() >= offsets[m.partition()])


def test_a_warm_restart_replays_only_the_changelog_tail(settings, name, tmp_path):
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    ensure_topics(settings, from_dict(spec(name, here)).topic_specs())
    send(settings, name, range(0, 800))
    first = run(settings, name, here)
    assert first.stores[0].last_restore["cold"] == list(range(PARTS))  # nothing local yet

    checkpoints = {}
    for q in range(PARTS):  # what the clean stop left: a checkpoint per partition
        part = RocksPartition(db_path(here, name, q), persistent=True)
        assert part.found == "clean", q
        checkpoints[q] = part.checkpoint_info()["offset"]
        part.close()

    send(settings, name, range(800, 1400))  # processed on "another host": the changelog grows meanwhile
    run(settings, name, elsewhere)
    send(settings, name, range(1400, 2000))
    tail = changelog_after(settings, name, checkpoints)
    total = len(read_all(settings, f"{name}.window.changelog", PARTS))
    assert 0 < tail < total

    again = run(settings, name, here)
    r = again.stores[0].last_restore
    assert sorted(r["warm"]) == list(range(PARTS)) and r["cold"] == []
    assert r["read"] == tail  # the tail since the checkpoint, not the whole changelog
    warm = again.registry.get_sample_value("tidal_state_restored_partitions_total",
                                           {"pipeline": name, "state": "window", "mode": "warm"})
    assert warm == PARTS
    assert again.registry.get_sample_value("tidal_state_restore_remaining_records",
                                           {"pipeline": name, "state": "window"}) == 0
    check_outputs(settings, name, 2000)
    assert local_state(here, name) == cold_state(settings, name)

    for _ in range(2):  # nothing new: warm again (the second from the checkpoint a restore wrote itself)
        r = run(settings, name, here).stores[0].last_restore
        assert sorted(r["warm"]) == list(range(PARTS)) and r["read"] < tail, r
    assert local_state(here, name) == cold_state(settings, name)


def test_kill_9_with_a_state_dir_gives_the_results_of_an_uninterrupted_run(settings, name, tmp_path):
    """``tidal run`` with $TIDAL_STATE_DIR, killed mid-stream: its databases hold writes of batches
    that never committed (marked dirty), and the restart must not take them for state."""
    spec = setup_state(settings, tmp_path, name, state={"backend": "rocksdb"})
    env = {"PYTHONPATH": str(HERE.parent), "TIDAL_STATE_DIR": str(tmp_path / "state")}
    worker = tidal_process(settings, "run", str(spec), "--log-level", "WARNING", env=env)
    wait_for(settings, [(f"{name}.predictions", 4)], 600, timeout=60)
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    restarted = tidal_process(settings, "run", str(spec), "--log-level", "WARNING", "--idle-exit", "3", env=env)
    assert restarted.wait(120) == 0
    check_state_outputs(settings, name)
    assert local_state(tmp_path / "state", name) == cold_state(settings, name)  # kept, and right


def test_corrupt_stale_or_dirty_local_state_is_rebuilt(settings, name, tmp_path):
    here = tmp_path / "here"
    ensure_topics(settings, from_dict(spec(name, here)).topic_specs())
    send(settings, name, range(0, 800))
    run(settings, name, here)

    for q in range(3):  # lose the state of partitions 0-2, then make their checkpoints untrustworthy
        part = RocksPartition(db_path(here, name, q), persistent=True)
        meta = part.checkpoint_info()
        assert meta is not None and len(part) > 0
        for key, _value in list(part.items()):
            part.db.delete(key.encode())
        if q == 0:
            part.db[META_KEY] = b"garbage"
        elif q == 1:
            part.db[META_KEY] = orjson.dumps({**meta, "n": 0, "offset": meta["offset"] + 1_000_000})  # past the end
        else:
            part.db[META_KEY] = orjson.dumps({"v": 1, "state": "dirty"})  # a crash before the commit
        part.close()

    send(settings, name, range(800, 1600))
    again = run(settings, name, here)
    r = again.stores[0].last_restore
    assert sorted(r["cold"]) == [0, 1, 2] and r["warm"] == [3]
    assert "corrupt" in r["why"][0] and "past the changelog's end" in r["why"][1] and r["why"][2] == "dirty"
    check_outputs(settings, name, 1600)  # counts go on from the rebuilt state, not from zero
    assert local_state(here, name) == cold_state(settings, name)


@pytest.mark.parametrize("backend", ["memory", "rocksdb"])
def test_a_restore_applies_each_record_as_apply_record_does(settings, name, backend, tmp_path):
    """The restore's fast path (plain values) and its slow one (deletes, tombstones, chunked
    values, records of batches that never committed) give what :func:`apply_record` gives."""
    import base64
    import random

    from confluent_kafka import Producer

    from tidal.broker import TopicSpec
    from tidal.broker.topics import COMPACTED
    from tidal.stream.state import PartitionState, apply_record

    topic = f"{name}.s.changelog"
    ensure_topics(settings, [TopicSpec(topic, 2, COMPACTED)])
    src, rng, recs = StateStore("s", topic), random.Random(0), []
    for batch in range(30):
        for _ in range(40):
            q, k, r = rng.randrange(2), f"k{rng.randrange(50)}", rng.random()
            part = src.partition(q)
            if r < 0.1:
                part.delete(k)
            elif r < 0.12:  # over CHUNK_BYTES even compressed: two chunks and a head
                part.set(k, base64.b64encode(rng.randbytes(400_000)).decode())
            else:
                part.set(k, {"n": batch, "x": rng.random()})
        recs += src.changelog_records({0: batch * 10, 1: batch * 10})
    recs.append((0, b"k1", None))  # a tombstone, as compaction tooling writes
    producer = Producer(settings.client_config({"linger.ms": 5, "log_level": 3}))
    for q, key, value in recs:
        producer.produce(topic, value, key, q)
    assert producer.flush(30) == 0
    committed = {0: 150, 1: 205}  # records stamped past these are of batches that never committed

    ref = {q: PartitionState() for q in committed}
    chunks, chunked = {q: {} for q in committed}, {q: {} for q in committed}
    for m in read_all(settings, topic, 2):
        q = m.partition()
        apply_record(ref[q], m.key(), m.value(), committed[q], chunks[q], chunked[q])
    assert any(chunked.values())  # the chunked path was taken

    store = StateStore("s", topic, backend=backend, state_dir=str(tmp_path) if backend == "rocksdb" else None)
    restore_partitions(settings, store, committed)
    for q in committed:
        assert dict(store.partition(q).items()) == ref[q].data, q
        assert len(store.partition(q)) == len(ref[q].data)
    assert store._chunked == {(q, k): v for q in committed for k, v in chunked[q].items()}
    store.close()
    if backend == "rocksdb":  # warm, nothing new: the same state, nothing applied twice
        again = StateStore("s", topic, backend=backend, state_dir=str(tmp_path))
        restore_partitions(settings, again, committed)
        assert again.last_restore["warm"] == [0, 1]
        assert {q: dict(again.partition(q).items()) for q in committed} == {q: ref[q].data for q in committed}
        assert again._chunked == {(q, k): v for q in committed for k, v in chunked[q].items()}
        again.close()
