"""Column sketches: a frozen reference histogram and a current window updated one batch at a time.

A numeric column is binned at the reference's own values (all of them when the reference has
at most ``max_edges`` distinct values, else that many quantiles), which makes the KS statistic
exact for small references; the sketch also counts values sitting exactly on an edge (for
the CDF just below it) and the mass outside the reference's range (for Wasserstein), and keeps
30 equal-width bins over the reference's range for PSI. A categorical column counts the
reference's categories plus one bucket for anything else. Updating a window costs one
``np.searchsorted`` and a few ``np.bincount`` per column and batch — no Python per row.

>>> rng = np.random.default_rng(0)
>>> s = make_sketch(rng.normal(size=500), "numeric")
>>> s.update(rng.normal(0.0, 1.0, 500)); s.evaluate().drifted
False
>>> s.reset(); s.update(rng.normal(1.0, 1.0, 500)); r = s.evaluate(); (r.test, r.drifted, r.psi_band)
('ks', True, 'significant')
>>> c = make_sketch(np.array(["a", "b", "b", "c"] * 50, dtype=object), "categorical")
>>> c.update(np.array(["a", "a", "a", "d"] * 20, dtype=object)); c.evaluate().drifted
True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tidal.drift import stats

__all__ = ["FeatureDrift", "NumericSketch", "CategoricalSketch", "make_sketch", "PSI_BINS"]

PSI_BINS = 30
MAX_EDGES = 1000
MAX_CATEGORIES = 200
FEW_VALUES = 5  # Evidently treats a numeric column with this many distinct values or fewer as categorical


@dataclass(frozen=True)
class FeatureDrift:
    """One column's drift in one window: the deciding test, its score and threshold, and PSI."""

    feature: str
    kind: str
    test: str
    score: float
    threshold: float
    drifted: bool
    psi: float
    psi_band: str
    rows: int
    details: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        score = self.score if np.isfinite(self.score) else None
        return {"kind": self.kind, "test": self.test, "score": score, "threshold": self.threshold,
                "drifted": self.drifted, "psi": round(self.psi, 6), "psi_band": self.psi_band, "rows": self.rows,
                **{k: (round(v, 6) if np.isfinite(v) else None) for k, v in self.details.items()}}


def _finite(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values)
    if v.dtype == object:
        v = np.array([x for x in v.tolist() if x is not None], dtype=np.float64)  # rare: a nullable numeric column
    v = v.astype(np.float64, copy=False)
    return v[np.isfinite(v)]


class NumericSketch:
    """Reference and current-window histograms of one numeric column."""

    kind = "numeric"

    def __init__(self, reference: np.ndarray, name: str = "", test: str | None = None,
                 threshold: float | None = None, max_edges: int = MAX_EDGES) -> None:
        ref = _finite(reference)
        if not len(ref):
            raise ValueError(f"column {name!r}: the reference has no finite values")
        self.name = name
        self.n_ref = len(ref)
        self.test = test or stats.default_test("numeric", self.n_ref)
        self.threshold = stats.THRESHOLDS[self.test] if threshold is None else float(threshold)
        uniq = np.unique(ref)
        self.edges = uniq if len(uniq) <= max_edges else np.unique(np.quantile(ref, np.linspace(0, 1, max_edges)))
        self.ref_std = float(np.std(ref))
        lo, hi = float(uniq[0]), float(uniq[-1])
        self.psi_edges = np.linspace(lo, hi, PSI_BINS + 1) if hi > lo else np.array([lo, lo])
        counts, atoms, _, _, psi_counts = self._bin(ref)
        self.ref_cdf = np.cumsum(counts)[:-1] / self.n_ref
        self.ref_below_edge = self.ref_cdf - atoms / self.n_ref
        self.ref_psi = psi_counts
        self.reset()

    def reset(self) -> None:
        """Start a new current window."""
        k = len(self.edges)
        self.counts = np.zeros(k + 1, np.int64)
        self.atoms = np.zeros(k, np.int64)
        self.psi_counts = np.zeros(len(self.ref_psi), np.int64)
        self.below = 0.0
        self.above = 0.0
        self.rows = 0

    def _bin(self, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float, np.ndarray]:
        edges = self.edges
        k = len(edges)
        idx = np.searchsorted(edges, v, side="left")  # idx = #edges < x: x in (e_{idx-1}, e_idx]
        counts = np.bincount(idx, minlength=k + 1)
        inside = idx < k
        exact = np.zeros(len(v), bool)
        exact[inside] = edges[idx[inside]] == v[inside]
        atoms = np.bincount(idx[exact], minlength=k)[:k]
        lo, hi = edges[0], edges[-1]
        below = float((lo - v[v < lo]).sum())
        above = float((v[v > hi] - hi).sum())
        nb = len(self.psi_edges) - 1
        pidx = np.clip(np.searchsorted(self.psi_edges[1:-1], v, side="right"), 0, max(nb - 1, 0))
        psi_counts = np.bincount(pidx, minlength=max(nb, 1))
        return counts, atoms, below, above, psi_counts

    def update(self, values: np.ndarray) -> None:
        """Add a batch's values (NaN and None are ignored) to the current window."""
        v = _finite(values)
        if not len(v):
            return
        counts, atoms, below, above, psi_counts = self._bin(v)
        self.counts += counts
        self.atoms += atoms
        self.psi_counts += psi_counts
        self.below += below
        self.above += above
        self.rows += len(v)

    def evaluate(self) -> FeatureDrift:
        """The current window against the reference."""
        m = self.rows
        p = stats.psi(self.ref_psi, self.psi_counts) if m else 0.0
        if m == 0:
            return FeatureDrift(self.name, self.kind, self.test, float("nan"), self.threshold, False, p,
                                stats.psi_band(p), 0)
        cur_cdf = np.cumsum(self.counts)[:-1] / m
        cur_below_edge = cur_cdf - self.atoms / m
        # The KS p-value costs more than everything else together: computed only when KS decides.
        d, pv = stats.ks_test(self.ref_cdf, cur_cdf, self.ref_below_edge, cur_below_edge, self.n_ref, m,
                              p_value=self.test == "ks")
        wd = stats.wasserstein_norm(self.edges, self.ref_cdf, cur_cdf, self.ref_below_edge, cur_below_edge,
                                    self.below / m, self.above / m, self.ref_std)
        score = {"ks": pv, "wasserstein": wd, "psi": p}[self.test]
        details = {"ks_statistic": d, "wasserstein_norm": wd}
        if self.test == "ks":
            details["ks_p_value"] = pv
        return FeatureDrift(self.name, self.kind, self.test, score, self.threshold,
                            stats.drifted(self.test, score, self.threshold), p, stats.psi_band(p), m, details)


class CategoricalSketch:
    """Reference and current-window category counts of one column (unseen values share a bucket)."""

    kind = "categorical"

    def __init__(self, reference: np.ndarray, name: str = "", test: str | None = None,
                 threshold: float | None = None, max_categories: int = MAX_CATEGORIES) -> None:
        keys, counts = np.unique(self._keys(reference), return_counts=True)
        if not len(keys):
            raise ValueError(f"column {name!r}: the reference has no values")
        self.name = name
        self.n_ref = int(counts.sum())
        self.test = test or stats.default_test("categorical", self.n_ref)
        self.threshold = stats.THRESHOLDS[self.test] if threshold is None else float(threshold)
        top = np.argsort(-counts, kind="stable")[:max_categories]
        self.categories = keys[np.sort(top)]
        self.index = {k: i for i, k in enumerate(self.categories.tolist())}
        self.ref_counts = np.zeros(len(self.categories) + 1, np.int64)  # last: any other value
        self.ref_counts[:-1] = counts[np.sort(top)]
        self.ref_counts[-1] = self.n_ref - self.ref_counts[:-1].sum()
        self.reset()

    @staticmethod
    def _keys(values: np.ndarray) -> np.ndarray:
        v = np.asarray(values)
        if v.dtype == object:
            v = v[v != None]  # noqa: E711 - elementwise: drop missing values
            return v.astype(str)
        if v.dtype.kind == "f":
            v = v[np.isfinite(v)]
        return v.astype(str)

    def reset(self) -> None:
        self.counts = np.zeros(len(self.ref_counts), np.int64)
        self.rows = 0

    def update(self, values: np.ndarray) -> None:
        keys = self._keys(values)
        if not len(keys):
            return
        uniq, inverse = np.unique(keys, return_inverse=True)
        other = len(self.categories)
        table = np.fromiter((self.index.get(u, other) for u in uniq.tolist()), np.int64, len(uniq))
        self.counts += np.bincount(table[inverse], minlength=len(self.counts))
        self.rows += len(keys)

    def evaluate(self) -> FeatureDrift:
        m = self.rows
        p = stats.psi(self.ref_counts, self.counts) if m else 0.0
        if m == 0:
            return FeatureDrift(self.name, self.kind, self.test, float("nan"), self.threshold, False, p,
                                stats.psi_band(p), 0)
        js = stats.jensen_shannon(self.ref_counts, self.counts)
        details = {"jensenshannon": js}
        if self.test == "chisquare":
            details["chi2_p_value"] = stats.chi_squared(self.ref_counts, self.counts)[1]
        score = {"chisquare": details.get("chi2_p_value"), "jensenshannon": js, "psi": p}[self.test]
        return FeatureDrift(self.name, self.kind, self.test, score, self.threshold,
                            stats.drifted(self.test, score, self.threshold), p, stats.psi_band(p), m, details)


def make_sketch(reference: np.ndarray, kind: str = "numeric", name: str = "", test: str | None = None,
                threshold: float | None = None) -> NumericSketch | CategoricalSketch:
    """A sketch of the right kind; numeric columns with ≤ 5 distinct values count as categorical (Evidently)."""
    if kind not in ("numeric", "categorical"):
        raise ValueError(f"column {name!r}: kind must be numeric or categorical, not {kind!r}")
    if kind == "numeric":
        values = _finite(reference)
        if len(np.unique(values)) > FEW_VALUES:
            return NumericSketch(values, name, test, threshold)
        reference = values
    if test is not None and test not in ("chisquare", "jensenshannon", "psi"):
        test = None  # a numeric test asked of a column that is categorical in practice
    return CategoricalSketch(reference, name, test, threshold)
