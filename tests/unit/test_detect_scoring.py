"""Hand-made cases for bench/detectlib: NAB-style scoring and TCPD F1 / covering."""

from __future__ import annotations

import numpy as np
import pytest

from bench.detectlib import nab, tcpd

N = 1000
LABELS = [400, 700]  # windows of 50 points: 375..424, 675..724; probation 0..149
STD = nab.PROFILES["standard"]


def corpus():
    return [nab.Series.build(N, LABELS)]


def at(*idx):
    s = np.zeros(N)
    s[list(idx)] = 1.0
    return s


def score(s, profile=STD):
    return nab.normalised(corpus(), [s], 0.5, profile)


def test_windows_and_probation():
    assert nab.windows(N, LABELS) == [(375, 424), (675, 724)]
    assert nab.probation(N) == 150
    assert nab.windows(100, [0, 99]) == [(0, 2), (97, 99)]


def test_perfect_is_100_never_is_0():
    assert score(at(375, 675)) == pytest.approx(100.0)
    assert score(np.zeros(N)) == pytest.approx(0.0)
    assert nab.optimise(corpus(), [np.zeros(N)], STD)["score"] == pytest.approx(0.0)


def test_early_beats_late():
    assert score(at(380, 680)) > score(at(410, 710)) > score(at(424, 724))
    # at the window end: sigma(0) = 0, still better than a miss (-A_FN)
    assert nab.series_score(corpus()[0], at(424, 724), 0.5, STD)["score"] == pytest.approx(0.0, abs=1e-9)
    assert score(at(424, 724)) > score(at(424)) > 0.0


def test_only_first_detection_in_window_counts():
    assert score(at(380, 681)) == pytest.approx(score(at(380, 390, 400, 681)))


def test_false_positives_reduce_and_far_ones_cost_full():
    base = score(at(375, 675))
    near, far = score(at(375, 426, 675)), score(at(375, 620, 675))
    assert far < near < base
    raw = nab.series_score(corpus()[0], at(375, 620, 675), 0.5, STD)
    assert raw["fp"] == 1
    assert raw["score"] == pytest.approx(2 * nab.sigma(-1.0) + 0.11 * nab.sigma((620 - 424) / 50))
    assert nab.sigma(100.0) == pytest.approx(-1.0)


def test_probation_ignored():
    assert score(at(10, 100, 149, 375, 675)) == pytest.approx(100.0)


def test_profiles_differ():
    s = at(200, 300, 375)  # two far FPs, one hit, one miss
    std, lowfp, lowfn = (score(s, nab.PROFILES[p]) for p in ("standard", "reward_low_FP", "reward_low_FN"))
    assert lowfp < std
    assert lowfn > std  # the same miss counts less against the larger null


def test_vectorised_curve_matches_slow_path():
    rng = np.random.default_rng(0)
    corp = [nab.Series.build(N, LABELS), nab.Series.build(700, [300])]
    scores = [rng.random(N), rng.random(700)]
    for name, prof in nab.PROFILES.items():
        th = np.array([0.5, 0.9, 0.99, 0.999, np.inf])
        total, *_ = nab.curve(corp, scores, th, prof)
        for t, v in zip(th, total):
            slow = sum(nab.series_score(c, s, t, prof)["score"] for c, s in zip(corp, scores))
            assert v == pytest.approx(slow)


def test_optimise_finds_threshold():
    s = np.full(N, 0.2)
    s[[375, 675]] = 0.9
    s[500] = 0.6
    r = nab.optimise(corpus(), [s], STD)
    assert r["score"] == pytest.approx(100.0)
    assert 0.6 < r["threshold"] <= 0.9


# --- TCPD ---------------------------------------------------------------------------------------

def test_f1_zero_always_counted():
    assert tcpd.f_measure({"a": []}, []) == pytest.approx(1.0)
    F, P, R = tcpd.f_measure({"a": [50]}, [], return_pr=True)
    assert (P, R) == (1.0, 0.5)
    assert F == pytest.approx(2 / 3)


def test_f1_margin_and_one_to_one():
    assert tcpd.f_measure({"a": [50]}, [55]) == pytest.approx(1.0)
    F, P, R = tcpd.f_measure({"a": [50]}, [56], return_pr=True)
    assert (P, R) == (0.5, 0.5)
    F, P, R = tcpd.f_measure({"a": [50]}, [48, 52], return_pr=True)  # only one may match
    assert P == pytest.approx(2 / 3) and R == 1.0


def test_f1_several_annotators():
    ann = {"a": [50], "b": [100]}
    F, P, R = tcpd.f_measure(ann, [50], return_pr=True)
    assert P == 1.0  # against the union {0, 50, 100}
    assert R == pytest.approx((1.0 + 0.5) / 2)
    F, P, R = tcpd.f_measure(ann, [50, 100], return_pr=True)
    assert (P, R, F) == (1.0, 1.0, 1.0)


def test_covering():
    assert tcpd.covering({"a": [50]}, [50], 100) == pytest.approx(1.0)
    # no predictions: one segment [0,100) covers [0,50) and [50,100) each with J = 0.5
    assert tcpd.covering({"a": [50]}, [], 100) == pytest.approx(0.5)
    # truth [0,100) covered by [0,50),[50,100): max J = 0.5
    assert tcpd.covering({"a": []}, [50], 100) == pytest.approx(0.5)
    two = tcpd.covering({"a": [50], "b": []}, [50], 100)
    assert two == pytest.approx((1.0 + 0.5) / 2)
    # truth [0,30),[30,100), prediction [0,40),[40,100): J = 30/40 and 60/70
    assert tcpd.covering({"a": [30]}, [40], 100) == pytest.approx((30 * 0.75 + 70 * 60 / 70) / 100)
