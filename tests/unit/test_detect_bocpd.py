"""Unit tests for tidal.detect BOCPD change detection."""

from __future__ import annotations

import numpy as np
import pytest

from tidal.detect import CHANGE_DETECTORS, BOCPDDrift, make_change_detector
from tidal.detect import bocpd as bocpd_mod


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))


@pytest.mark.parametrize("model", ["level", "diff"])
def test_detects_mean_shift_near_true_position(model):
    rng = np.random.default_rng(1)
    y = np.r_[rng.normal(size=800), rng.normal(size=800) + 2.0]
    if model == "diff":
        y = np.cumsum(np.r_[rng.normal(size=800), rng.normal(size=800) + 1.5])
    d = make_change_detector("bocpd", model=model, expected_run_length=1000)
    out = d.update_many(np.zeros(len(y), dtype=np.int64), y)
    hits = out[out >= 0]
    rows = np.nonzero(out >= 0)[0]
    near = [(r, c) for r, c in zip(rows, hits) if 800 <= r <= 860]
    assert near, (rows, hits)
    assert abs(near[0][1] - 800) <= 10


@pytest.mark.parametrize("model", ["level", "diff"])
def test_false_alarm_rate_calibrated(model):
    bocpd_mod.calibrate_threshold.cache_clear()
    erl = 1000
    d = make_change_detector("bocpd", model=model, expected_run_length=erl)
    x = np.random.default_rng(7).normal(size=50_000)
    alarms = int((d.update_many(np.zeros(len(x), dtype=np.int64), x) >= 0).sum())
    assert alarms <= 1.5 * len(x) / erl
    assert alarms >= 0.3 * len(x) / erl  # not trivially silent either


def test_snapshot_restore_and_keys():
    rng = np.random.default_rng(2)
    y = np.r_[rng.normal(size=500), rng.normal(size=500) * 4 + 3]
    keys = np.zeros(len(y), dtype=np.int64)
    ref = make_change_detector(expected_run_length=1000, model="level").update_many(keys, y)
    a = make_change_detector(expected_run_length=1000, model="level")
    a.update_many(keys[:450], y[:450])
    blob = a.key_state(0)
    b = make_change_detector(expected_run_length=1000, model="level")
    b.load_key_state(0, blob)
    np.testing.assert_array_equal(b.update_many(keys[450:], y[450:]), ref[450:])
    # interleaved keys equal separate runs
    k2 = np.empty(2 * len(y), dtype=object)
    k2[0::2], k2[1::2] = "x", "y"
    v2 = np.empty(2 * len(y))
    v2[0::2], v2[1::2] = y, y[::-1]
    both = make_change_detector(expected_run_length=1000, model="level").update_many(k2, v2)
    other = make_change_detector(expected_run_length=1000, model="level").update_many(keys, y[::-1])
    np.testing.assert_array_equal(both[0::2], ref)
    np.testing.assert_array_equal(both[1::2], other)
    assert a.state_nbytes_per_key() >= len(blob)


def test_nan_and_registry():
    assert CHANGE_DETECTORS["default"] is CHANGE_DETECTORS["bocpd"]
    d = make_change_detector(expected_run_length=1000)
    out = d.update_many(np.zeros(3, dtype=np.int64), np.array([1.0, np.nan, 2.0]))
    assert out.dtype == np.int64 and (out == -1).all()
    assert d.cnt[d._index[0]] == 2


def test_river_adapter():
    rng = np.random.default_rng(5)
    det = BOCPDDrift(expected_run_length=1000, model="level")
    found = []
    for i, x in enumerate(np.r_[rng.normal(size=600), rng.normal(size=300) + 3]):
        det.update(float(x))
        if det.drift_detected:
            found.append((i, det.change_point))
    assert any(600 <= i <= 640 and abs(cp - 600) <= 5 for i, cp in found), found


@pytest.mark.parametrize("name", sorted(CHANGE_DETECTORS))
def test_alarms_do_not_depend_on_how_the_stream_is_batched(name):
    """Twenty keys interleaved, half of them shifting: one call, or chunks smaller than the number
    of keys, give the same alarms."""
    rng = np.random.default_rng(3)
    k, n = 20, 20 * 600
    keys = np.array([f"k{i}" for i in range(k)] * (n // k), dtype=object)
    shift = np.array([i % 2 for i in range(k)] * (n // k)) * (np.arange(n) > n // 2) * 3.0
    x = rng.normal(size=n) + shift
    full = make_change_detector(name).update_many(keys, x)
    d = make_change_detector(name)
    parts = np.concatenate([d.update_many(keys[i:i + 7], x[i:i + 7]) for i in range(0, n, 7)])
    assert (full >= 0).sum() >= k // 2
    np.testing.assert_array_equal(parts, full)
