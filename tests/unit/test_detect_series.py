"""Unit tests for tidal.detect series detectors."""

from __future__ import annotations

import numpy as np
import pytest

from tidal.detect import SERIES_DETECTORS, make_detector

NAMES = ["gaussian", "context", "knn", "seasonal", "flatline", "default", "knn+likelihood", "gaussian+likelihood"]


def _series(n=1500, seed=0):
    rng = np.random.default_rng(seed)
    t = 1_600_000_000.0 + 300.0 * np.arange(n)
    x = 10 + np.sin(2 * np.pi * t / 86400.0) + 0.3 * rng.normal(size=n)
    return x, t


@pytest.mark.parametrize("name", NAMES)
def test_scores_in_unit_interval_and_nan(name):
    x, t = _series()
    x[700] = np.nan
    s = make_detector(name).score_many(np.zeros(len(x), dtype=np.int64), x, t)
    assert s.dtype == np.float64 and s.shape == x.shape
    assert np.isnan(s[700])
    ok = np.delete(s, 700)
    assert np.all(np.isfinite(ok)) and ok.min() >= 0.0 and ok.max() <= 1.0


@pytest.mark.parametrize("name", NAMES)
def test_nan_leaves_state_unchanged(name):
    x, t = _series(800)
    a = make_detector(name)
    b = make_detector(name)
    k = np.zeros(1, dtype=np.int64)
    sa = a.score_many(np.zeros(800, dtype=np.int64), x, t)
    b.score_many(np.zeros(400, dtype=np.int64), x[:400], t[:400])
    b.score_many(k, np.array([np.nan]), t[400:401])
    sb = b.score_many(np.zeros(400, dtype=np.int64), x[400:], t[400:])
    np.testing.assert_array_equal(sa[400:], sb)


@pytest.mark.parametrize("name", NAMES)
def test_causal_and_batch_invariant(name):
    x, t = _series()
    keys = np.zeros(len(x), dtype=np.int64)
    full = make_detector(name).score_many(keys, x, t)
    d = make_detector(name)
    parts = [d.score_many(keys[i : i + 97], x[i : i + 97], t[i : i + 97]) for i in range(0, 1000, 97)]
    np.testing.assert_array_equal(np.concatenate(parts)[:1000], full[:1000])


@pytest.mark.parametrize("name", NAMES)
def test_keys_independent(name):
    x1, t = _series(seed=1)
    x2, _ = _series(seed=2)
    x2 = x2 * 50 - 3
    sep1 = make_detector(name).score_many(np.full(len(x1), 7), x1, t)
    sep2 = make_detector(name).score_many(np.full(len(x2), 9), x2, t)
    keys = np.empty(2 * len(x1), dtype=object)
    keys[0::2], keys[1::2] = "a", "b"
    vals = np.empty(2 * len(x1))
    vals[0::2], vals[1::2] = x1, x2
    tt = np.repeat(t, 2)
    both = make_detector(name).score_many(keys, vals, tt)
    np.testing.assert_array_equal(both[0::2], sep1)
    np.testing.assert_array_equal(both[1::2], sep2)


@pytest.mark.parametrize("name", NAMES)
def test_snapshot_restore_bit_identical(name):
    x, t = _series()
    keys = np.zeros(len(x), dtype=np.int64)
    ref = make_detector(name).score_many(keys, x, t)
    a = make_detector(name)
    a.score_many(keys[:900], x[:900], t[:900])
    blob = a.key_state(0)
    assert isinstance(blob, bytes) and len(blob) <= a.state_nbytes_per_key()
    b = make_detector(name)
    b.score_many(np.array(["other"] * 5, dtype=object), x[:5], t[:5])  # a different slot layout
    b.load_key_state(0, blob)
    np.testing.assert_array_equal(b.score_many(keys[900:], x[900:], t[900:]), ref[900:])
    b.forget(0)
    assert 0 not in b.keys() and "other" in b.keys()
    with pytest.raises(ValueError):
        make_detector("gaussian", window=17).load_key_state(0, blob)


def test_forget_resets_key():
    x, t = _series(600)
    keys = np.zeros(600, dtype=np.int64)
    d = make_detector("default")
    first = d.score_many(keys, x, t)
    d.forget(0)
    np.testing.assert_array_equal(d.score_many(keys, x, t), first)


@pytest.mark.parametrize("name", ["gaussian", "context", "knn", "seasonal", "default"])
def test_spike_scores_higher_than_normal(name):
    rng = np.random.default_rng(3)
    n = 3000
    t = 1_600_000_000.0 + 300.0 * np.arange(n)
    x = 5 + np.sin(2 * np.pi * t / 86400.0) + 0.2 * rng.normal(size=n)
    x[2500] += 4.0
    s = make_detector(name).score_many(np.zeros(n, dtype=np.int64), x, t)
    normal = np.delete(s[1000:], 1500)
    if name == "context":  # discrete novelty: a never-seen context scores exactly 1
        assert s[2500] == 1.0 and normal.mean() < 0.5
    else:
        assert s[2500] > np.quantile(normal, 0.99)


def test_seasonal_flags_unusual_hour():
    rng = np.random.default_rng(4)
    n = 288 * 20  # 20 days of 5-minute data
    t = 1_600_000_000.0 + 300.0 * np.arange(n)
    hour = (t % 86400) / 3600
    x = np.where((hour > 8) & (hour < 18), 10.0, 2.0) + 0.3 * rng.normal(size=n)
    i = 288 * 18 + int(np.argmax((hour[288 * 18 :] > 2.9) & (hour[288 * 18 :] < 3.1)))  # 03:00, day 18
    x[i : i + 6] = 10.0
    s = make_detector("seasonal").score_many(np.zeros(n, dtype=np.int64), x, t)
    g = make_detector("gaussian").score_many(np.zeros(n, dtype=np.int64), x, t)
    assert s[i:i + 6].max() > np.quantile(s[288 * 5 :], 0.995)
    assert g[i:i + 6].max() < s[i:i + 6].max()


def test_registry_and_state_bound():
    assert set(SERIES_DETECTORS) >= {"gaussian", "context", "knn", "seasonal", "default"}
    with pytest.raises(KeyError):
        make_detector("nope")
    d = make_detector("default")
    per_key = d.state_nbytes_per_key()
    assert per_key < 20_000  # 10k keys < 200 MB
    keys = np.arange(2000, dtype=np.int64)
    d.score_many(keys, np.ones(2000))
    assert d.memory_nbytes() <= 1.3 * 2000 * d._row_nbytes() + 64 * d._row_nbytes()
    assert len(d.key_state(5)) == d._row_nbytes() + 8
