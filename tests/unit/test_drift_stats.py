"""Drift statistics on sketches equal the reference implementations on raw rows (scipy, Evidently's formulas)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sst
from scipy.spatial.distance import jensenshannon

from tidal.drift import stats
from tidal.drift.sketch import CategoricalSketch, NumericSketch, make_sketch


def _numeric(ref: np.ndarray, cur: np.ndarray, parts: int = 3) -> NumericSketch:
    s = make_sketch(ref, "numeric")
    assert isinstance(s, NumericSketch)
    for chunk in np.array_split(cur, parts):  # batches: the result must not depend on how rows were cut
        s.update(chunk)
    return s


@pytest.mark.parametrize("seed,n,m,shift,integers", [(0, 300, 500, 0.0, False), (1, 800, 1000, 0.2, False),
                                                     (2, 500, 700, 0.0, True), (3, 1000, 2000, 0.15, True)])
def test_ks_is_exact_for_small_references(seed, n, m, shift, integers):
    rng = np.random.default_rng(seed)
    ref, cur = rng.normal(size=n), rng.normal(shift, 1, m)
    if integers:  # ties: values sit exactly on the reference's edges
        ref, cur = np.round(ref * 3), np.round(cur * 3)
    r = _numeric(ref, cur).evaluate()
    expected = sst.ks_2samp(ref, cur, method="asymp")
    assert r.test == "ks"
    assert r.details["ks_statistic"] == pytest.approx(expected.statistic, abs=1e-12)
    assert r.details["ks_p_value"] == pytest.approx(expected.pvalue, rel=1e-6, abs=1e-12)
    assert r.drifted == (expected.pvalue < 0.05)


@pytest.mark.parametrize("n,integers", [(600, False), (600, True), (5000, False)])
def test_wasserstein_matches_scipy(n, integers):
    rng = np.random.default_rng(4)
    ref, cur = rng.normal(size=n), np.concatenate([rng.normal(0.3, 1.2, 900), rng.normal(6, 1, 100)])  # a tail
    if integers:
        ref, cur = np.round(ref * 4), np.round(cur * 4)
    r = _numeric(ref, cur).evaluate()
    expected = sst.wasserstein_distance(ref, cur) / np.std(ref)
    # Exact when values sit on the reference's values; otherwise the CDFs are linear inside a bin.
    tol = 1e-9 if integers else 0.01
    assert r.details["wasserstein_norm"] == pytest.approx(expected, rel=tol)
    assert (r.test == "wasserstein") == (n > 1000)


def test_psi_thirty_bins_with_evidently_floor():
    ref = np.linspace(0, 1, 3000)
    s = _numeric(ref, np.linspace(0, 0.5, 1000))
    r = s.evaluate()
    ref_counts = np.histogram(ref, np.linspace(0, 1, 31))[0] / 3000
    cur_counts = np.histogram(np.linspace(0, 0.5, 1000), np.linspace(0, 1, 31))[0] / 1000
    ref_counts = np.where(ref_counts == 0, 0.0001, ref_counts)
    cur_counts = np.where(cur_counts == 0, 0.0001, cur_counts)
    assert r.psi == pytest.approx(float(np.sum((ref_counts - cur_counts) * np.log(ref_counts / cur_counts))), rel=1e-9)
    assert r.psi_band == "significant" and stats.psi_band(0.15) == "moderate" and stats.psi_band(0.05) == "none"


def test_categorical_chi_squared_and_jensen_shannon():
    ref = np.array(["a"] * 300 + ["b"] * 500 + ["c"] * 200, dtype=object)
    cur = np.array(["a"] * 100 + ["b"] * 300 + ["c"] * 100, dtype=object)
    s = make_sketch(ref, "categorical")
    assert isinstance(s, CategoricalSketch) and s.test == "chisquare"
    s.update(cur[:250])
    s.update(cur[250:])
    r = s.evaluate()
    expected = sst.chisquare([100, 300, 100], np.array([300, 500, 200]) * 0.5)
    assert r.score == pytest.approx(expected.pvalue)
    assert r.details["jensenshannon"] == pytest.approx(jensenshannon([0.3, 0.5, 0.2, 0], [0.2, 0.6, 0.2, 0]))


def test_unseen_category_drifts_and_none_is_ignored():
    s = make_sketch(np.array(["x", "y"] * 100, dtype=object), "categorical")
    s.update(np.array(["x", None, "y"] * 10, dtype=object))
    assert s.rows == 20 and not s.evaluate().drifted
    s.update(np.array(["z"] * 5, dtype=object))
    assert s.evaluate().drifted and s.evaluate().score == 0.0


def test_few_distinct_numbers_are_categorical_and_large_refs_use_distances():
    assert make_sketch(np.array([0.0, 1.0] * 50), "numeric").kind == "categorical"  # Evidently: ≤ 5 values
    assert make_sketch(np.arange(2000.0), "numeric").test == "wasserstein"
    assert make_sketch(np.array(list("abcd") * 500, dtype=object), "categorical").test == "jensenshannon"
    assert stats.drifted("ks", 0.01) and not stats.drifted("jensenshannon", 0.05)


def test_nan_values_are_skipped_and_empty_reference_refused():
    s = make_sketch(np.arange(100.0), "numeric")
    s.update(np.array([np.nan, 5.0, np.inf]))
    assert s.rows == 1
    with pytest.raises(ValueError):
        make_sketch(np.array([np.nan]), "numeric", "x")
    with pytest.raises(ValueError):
        make_sketch(np.arange(10.0), "text")
