"""One contract for every state backend (``memory``, ``rocksdb``): what steps, the changelog and restore rely on."""

from __future__ import annotations

import os

import numpy as np
import orjson
import pytest

from tidal.features.aggregates import Sketch
from tidal.stream import rocks
from tidal.stream.state import BACKENDS, DELETED, StateStore, apply_record, opaque_bytes


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path):
    s = StateStore("contract", backend=request.param, path=str(tmp_path))
    yield s
    s.close()


def test_get_set_delete_len_items(store):
    part = store.partition(0)
    assert part.get("a") is None and part.get("a", 7) == 7 and len(part) == 0
    part.set("a", {"n": 1, "xs": [1.5, 2.0]})
    part.set("b", 2)
    part.set("a", {"n": 2, "xs": [1.5]})  # overwrite: still two keys
    assert part.get("a") == {"n": 2, "xs": [1.5]} and part.get("b") == 2 and len(part) == 2
    part.flush()
    assert part.get("a") == {"n": 2, "xs": [1.5]} and len(part) == 2  # the same after it reached storage
    part.delete("b")
    part.delete("never-there")
    assert part.get("b") is None and len(part) == 1
    assert dict(part.items()) == {"a": {"n": 2, "xs": [1.5]}}


def test_changes_are_taken_once_with_deletes_as_tombstones(store):
    part = store.partition(3)
    part.set("a", 1)
    part.set("b", 2)
    part.set("gone", 3)
    part.delete("gone")
    assert sorted((p, k, v if v is not DELETED else "DELETED") for p, k, v in store.take_changes()) == [
        (3, "a", 1), (3, "b", 2), (3, "gone", "DELETED")]
    assert list(store.take_changes()) == []
    part.delete("a")
    records = store.changelog_records({3: 42})
    assert [(p, k, orjson.loads(v)) for p, k, v in records] == [(3, b"a", {"o": 42, "d": 1})]


def test_load_and_unload_are_not_changes(store):
    part = store.partition(0)
    part.load("a", [1, 2])
    part.load("b", 5)
    part.unload("b")
    part.unload("missing")
    assert part.get("a") == [1, 2] and part.get("b") is None and len(part) == 1
    assert list(store.take_changes()) == []


def test_clear_and_drop(store):
    part = store.partition(0)
    for i in range(50):
        part.set(f"k{i}", i)
    part.flush()
    part.clear()
    assert len(part) == 0 and part.get("k1") is None and list(part.items()) == [] and list(store.take_changes()) == []
    store.partition(1).set("x", 1)
    assert store.size() == 1
    store.drop(1)
    assert 1 not in store.partitions and store.size() == 0
    assert store.partition(1).get("x") is None  # a partition assigned again starts empty (restore refills it)


def test_many_writes_beyond_the_write_cache(store):
    part = store.partition(0)
    n = rocks.FLUSH_EVERY * 2 + 17
    for i in range(n):
        part.set(f"k{i}", i)
    for i in range(0, n, 3):
        part.delete(f"k{i}")
    left = n - len(range(0, n, 3))
    assert len(part) == left and part.get("k1") == 1 and part.get("k3") is None
    assert sum(1 for _ in part.items()) == left
    assert len(list(store.take_changes())) == n


def test_opaque_leaves_travel_as_bytes_and_are_revived(store):
    from datasketches import hll_sketch

    sk = hll_sketch(12)
    for v in ("a", "b", "c"):
        sk.update(v)
    part = store.partition(0)
    part.set("w", {"#d12:u": Sketch(sk), "x": [1, 2.0]})
    (p, key, value), = store.changelog_records({0: 5})
    record = orjson.loads(value)
    assert record["o"] == 5 and record["v"]["x"] == [1, 2.0]
    back = opaque_bytes(record["v"]["#d12:u"])
    assert hll_sketch.deserialize(back).get_estimate() == pytest.approx(3.0)


def test_restore_applies_committed_records_only(store):
    part = store.partition(0)
    log = [(b"a", orjson.dumps({"o": 3, "v": 1})), (b"b", orjson.dumps({"o": 4, "v": 2})),
           (b"a", orjson.dumps({"o": 9, "v": 99})),  # its batch never committed: skipped
           (b"b", orjson.dumps({"o": 5, "d": 1})), (b"c", orjson.dumps({"o": 5, "v": [1]})), (b"c", None)]
    applied = [apply_record(part, k, v, committed=5) for k, v in log]
    part.flush()
    assert applied == [True, True, False, True, True, False]
    assert dict(part.items()) == {"a": 1} and len(part) == 1
    assert list(store.take_changes()) == []  # restoring is not a change to write back


def test_both_backends_agree_on_a_random_workload(tmp_path):
    rng = np.random.default_rng(0)
    ops = [(int(rng.integers(0, 3)), f"k{rng.integers(0, 300)}", int(rng.integers(0, 1000)))
           for _ in range(30_000)]
    results = []
    for backend in BACKENDS:
        s = StateStore("agree", backend=backend, path=str(tmp_path))
        part, log, reads = s.partition(0), [], []
        for i, (op, key, v) in enumerate(ops):
            if op == 0:
                part.set(key, {"v": v, "l": [v, i]})
            elif op == 1:
                part.delete(key)
            else:
                reads.append(part.get(key))
            if i % 1000 == 999:
                log.extend(sorted(s.changelog_records({0: i})))
        results.append((reads, log, dict(part.items()), len(part)))
        s.close()
    assert results[0] == results[1]


def test_backend_choice():
    with pytest.raises(ValueError, match="unknown state backend"):
        StateStore("x", backend="leveldb")
    s = StateStore("x")
    s.partition(0)
    with pytest.raises(RuntimeError, match="already holds partitions"):
        s.use_backend("rocksdb")


def test_rocksdb_files_live_under_the_path_and_go_with_the_store(tmp_path):
    s = StateStore("files", backend="rocksdb", path=str(tmp_path / "state"))
    s.partition(0).set("a", 1)
    s.partition(0).flush()
    (root,) = (tmp_path / "state").iterdir()
    assert root.name.startswith("tidal-files-") and (root / "p0").is_dir()
    s.drop(0)
    assert not (root / "p0").exists()
    s.partition(1).set("b", 1)
    s.close()
    assert not root.exists() and os.listdir(tmp_path / "state") == []
