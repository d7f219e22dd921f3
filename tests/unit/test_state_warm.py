"""Persistent rocksdb state (``state_dir``): the checkpoint a database carries, when it is
trusted (clean, matching, not stale) and when a restore must rebuild it from the whole changelog."""

from __future__ import annotations

import orjson
import pytest

pytest.importorskip("rocksdict")

from tidal.stream.rocks import META_KEY, RocksPartition  # noqa: E402
from tidal.stream.state import StateStore, _warm_start  # noqa: E402


class Marks:
    """A stand-in consumer: the changelog's high watermark per partition."""

    def __init__(self, high: dict[int, int]) -> None:
        self.high, self.asked = high, []

    def get_watermark_offsets(self, tp, timeout=None, cached=False):
        self.asked.append(tp.partition)
        return 0, self.high[tp.partition]


def store(tmp_path, name="s") -> StateStore:
    return StateStore(name, f"pipe.{name}.changelog", backend="rocksdb", state_dir=str(tmp_path))


def test_a_checkpoint_survives_close_and_reopen(tmp_path):
    s = store(tmp_path)
    part = s.partition(0)
    assert part.persistent and part.found == "new" and part.checkpoint_info() is None
    part.set("a", {"n": 1})
    part.set("b", [1, 2])
    s._stamps[0] = 41
    assert s.changelog_records({0: 42})  # the batch's changes, stamped 42
    assert s.checkpoint(Marks({0: 7})) == 1
    assert s.checkpoint(Marks({0: 7})) == 0  # already clean: nothing to write
    s.close()
    assert (tmp_path / "pipe.s.changelog" / "p0").is_dir()  # not deleted: that is the point

    again = store(tmp_path).partition(0)
    info = again.checkpoint_info()
    assert again.found == "clean" and info["offset"] == 7 and info["committed"] == 42 and info["partition"] == 0
    assert len(again) == 2 and dict(again.items()) == {"a": {"n": 1}, "b": [1, 2]}  # the meta key is not state
    again.close()


def test_the_first_write_after_a_checkpoint_marks_the_database_dirty(tmp_path):
    s = store(tmp_path)
    part = s.partition(0)
    part.set("a", 1)
    s.changelog_records({0: 5})
    s.checkpoint(Marks({0: 1}))
    part.set("a", 2)  # a batch's change, written to the database before its offsets commit ...
    part.take_dirty()
    assert not part.clean
    s.close()  # ... and the process dies before the next checkpoint
    again = store(tmp_path).partition(0)
    assert again.found == "dirty" and again.checkpoint_info() is None
    again.close()


def test_changes_not_yet_taken_keep_a_partition_from_checkpointing(tmp_path):
    s = store(tmp_path)
    part = s.partition(0)
    part.set("a", 1)  # not taken for the changelog yet: the database is not committed state
    marks = Marks({0: 3})
    assert s.checkpoint(marks) == 0 and marks.asked == []
    s.changelog_records({0: 1})
    assert s.checkpoint(Marks({0: 3}), force=False) == 1
    part.set("a", 2)
    s.changelog_records({0: 2})
    assert s.checkpoint(Marks({0: 4}), force=False) == 0  # idle checkpoints are paced
    assert s.checkpoint(Marks({0: 4})) == 1
    s.close()


def test_garbage_in_the_checkpoint_is_not_trusted(tmp_path):
    s = store(tmp_path)
    part = s.partition(0)
    part.set("a", 1)
    s.changelog_records({0: 1})
    s.checkpoint(Marks({0: 1}))
    part.db[META_KEY] = b"\xffnot json"
    s.close()
    again = store(tmp_path).partition(0)
    assert again.found == "corrupt" and again.checkpoint_info() is None
    again.db[META_KEY] = orjson.dumps({"v": 1, "state": "clean", "offset": "3", "n": 1})  # wrong types
    again.close()
    assert store(tmp_path).partition(0).found == "corrupt"


def test_a_database_without_a_checkpoint_is_not_trusted(tmp_path):
    s = store(tmp_path)
    part = s.partition(0)
    part.set("a", 1)
    part.flush()  # written, never checkpointed (e.g. a crash during the first restore)
    part.db.delete(META_KEY)
    s.close()
    again = store(tmp_path).partition(0)
    assert again.found == "corrupt" and again.checkpoint_info() is None
    assert len(again) == 1  # counted, not guessed


def test_an_unreadable_database_is_wiped(tmp_path):
    s = store(tmp_path)
    part = s.partition(0)
    part.set("a", 1)
    s.changelog_records({0: 1})
    s.checkpoint(Marks({0: 1}))
    s.close()
    db = tmp_path / "pipe.s.changelog" / "p0"
    (db / "CURRENT").write_text("MANIFEST-999999\n")  # points at a manifest that is not there
    again = store(tmp_path).partition(0)
    assert again.found == "corrupt" and again.checkpoint_info() is None and len(again) == 0
    again.set("b", 2)
    again.flush()
    assert again.get("b") == 2


def test_a_database_another_store_holds_falls_back_to_scratch(tmp_path):
    first, second = store(tmp_path), store(tmp_path)
    a = first.partition(0)
    b = second.partition(0)  # the same path, locked by the first: a scratch database instead
    assert a.persistent and not b.persistent
    second.close()
    first.close()


def info(**kw):
    base = {"v": 1, "state": "clean", "topic": "pipe.s.changelog", "partition": 0, "offset": 100,
            "committed": 50, "topic_id": "T1", "n": 3}
    return {**base, **kw}


class Part:
    def __init__(self, meta, found="clean"):
        self.meta, self.found = meta, found

    def checkpoint_info(self):
        return self.meta


@pytest.mark.parametrize("meta, committed, low, high, topic_id, start, why", [
    (info(), 50, 0, 120, "T1", 100, "clean"),
    (info(), 70, 0, 100, "T1", 100, "clean"),  # nothing new: starts at the end
    (info(), 50, 0, 120, None, 100, "clean"),  # topic ids unknown: offsets judge
    (info(offset=130), 50, 0, 120, "T1", 120, "clean"),  # the end may be later: checked on reaching it
    (info(), 50, 0, -1, "T1", None, "end is unknown"),  # the watermarks could not be read
    (info(), 50, 101, 120, "T1", None, "before the changelog's start"),
    (info(), 50, 0, 120, "T2", None, "recreated"),
    (info(), 49, 0, 120, "T1", None, "committed before the checkpoint"),  # e.g. offsets reset by hand
    (info(partition=1), 50, 0, 120, "T1", None, "another changelog"),
    (info(topic="other.changelog"), 50, 0, 120, "T1", None, "another changelog"),
    (info(committed={"a": 5, "b": 7}), {"a": 5, "b": 6}, 0, 120, "T1", None, "committed before"),
    (info(committed={"a": 5, "b": 7}), {"a": 5, "b": 7}, 0, 120, "T1", 100, "clean"),
])
def test_which_checkpoints_a_restore_starts_from(meta, committed, low, high, topic_id, start, why):
    s = StateStore("s", "pipe.s.changelog")
    got, reason = _warm_start(Part(meta), s, 0, committed, low, high, topic_id)
    assert got == start and why in reason


def test_no_checkpoint_means_a_full_replay():
    s = StateStore("s", "pipe.s.changelog")
    assert _warm_start(Part(None, "dirty"), s, 0, 10, 0, 5, None) == (None, "dirty")
