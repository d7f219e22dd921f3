"""Large state values in the changelog: compressed, chunked, checked, and the old chunks deleted."""

from __future__ import annotations

import os

import pytest

from tidal.stream.state import CHUNK_BYTES, PartitionState, StateStore, apply_record


def restore(records):
    part, chunks, chunked = PartitionState(), {}, {}
    for _p, k, v in records:
        apply_record(part, k, v, 10**9, chunks, chunked)
    return part, chunks, chunked


def test_a_large_value_travels_as_chunks_under_the_limit_and_comes_back_whole():
    store = StateStore("s")
    big = os.urandom(CHUNK_BYTES).hex()  # 2 x the chunk size, random: compression cannot save it
    store.partition(0).set("k", big)
    store.partition(0).set("small", 1)
    recs = store.changelog_records({0: 5})
    assert all(v is None or len(v) <= CHUNK_BYTES + 100 for _p, _k, v in recs) and len(recs) >= 4
    part, chunks, chunked = restore(recs)
    assert part.get("k") == big and part.get("small") == 1 and not chunks and chunked["k"][1] >= 2


def test_the_next_value_deletes_the_previous_chunks_and_a_small_value_ends_chunking():
    store = StateStore("s")
    store.partition(0).set("k", os.urandom(CHUNK_BYTES).hex())
    first = store.changelog_records({0: 1})
    store.partition(0).set("k", os.urandom(CHUNK_BYTES).hex())
    second = store.changelog_records({0: 2})
    old_keys = {k for _p, k, v in first if v is not None and k != b"k"}
    assert {k for _p, k, v in second if v is None} == old_keys  # tombstones for every old chunk
    store.partition(0).set("k", "tiny")
    third = store.changelog_records({0: 3})
    part, chunks, _ = restore(first + second + third)
    assert part.get("k") == "tiny" and not chunks
    assert len([1 for _p, _k, v in third if v is None]) == len([k for _p, k, v in second if v and k != b"k"])


def test_a_tampered_chunk_is_refused():
    store = StateStore("s")
    store.partition(0).set("k", os.urandom(CHUNK_BYTES).hex())
    recs = store.changelog_records({0: 1})
    p, k, v = recs[0]
    recs[0] = (p, k, bytes([v[0] ^ 1]) + v[1:])
    with pytest.raises(RuntimeError, match="checksum"):
        restore(recs)
