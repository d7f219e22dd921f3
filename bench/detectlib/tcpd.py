"""Change-point metrics of the Turing Change Point Detection benchmark, after van den Burg &
Williams (2020), "An Evaluation of Change Point Detection Algorithms". Written from the paper.

- Index 0 is always a change point, in the predictions and in every annotator's set.
- F1 with a margin (5 points): a prediction is a true positive for an annotated point within the
  margin, each annotated point and each prediction matched at most once (closest first).
  Precision against the union of all annotators' points; recall averaged over annotators.
- Covering: ``C(G', G) = 1/n sum_{A in G} |A| max_{A' in G'} J(A, A')`` of the ground-truth
  partition ``G`` by the predicted partition ``G'`` (segments between consecutive change points),
  averaged over annotators.
"""

from __future__ import annotations

import numpy as np


def _clean(points, n: int | None = None) -> list[int]:
    pts = {int(p) for p in points}
    pts.add(0)
    if n is not None:
        pts = {p for p in pts if 0 <= p < n}
    return sorted(pts)


def true_positives(truth, pred, margin: int = 5) -> set[int]:
    """Annotated points matched by a prediction within ``margin`` (one-to-one, closest first)."""
    free = sorted(set(int(x) for x in pred))
    hits: set[int] = set()
    for t in sorted(set(int(x) for x in truth)):
        near = [x for x in free if abs(x - t) <= margin]
        if not near:
            continue
        best = min(near, key=lambda x: (abs(x - t), x))
        free.remove(best)
        hits.add(t)
    return hits


def f_measure(annotations: dict, predictions, margin: int = 5, n: int | None = None,
              return_pr: bool = False):
    """F1 of ``predictions`` against several annotators' change points (dict: annotator -> points)."""
    X = _clean(predictions, n)
    Tk = {k: _clean(v, n) for k, v in annotations.items()}
    if not Tk:
        Tk = {"0": [0]}
    union = sorted(set().union(*Tk.values()))
    P = len(true_positives(union, X, margin)) / len(X)
    R = float(np.mean([len(true_positives(t, X, margin)) / len(t) for t in Tk.values()]))
    F = 0.0 if P + R == 0 else 2 * P * R / (P + R)
    return (F, P, R) if return_pr else F


def _partition(points, n: int) -> list[tuple[int, int]]:
    pts = _clean(points, n) + [n]
    return [(a, b) for a, b in zip(pts[:-1], pts[1:]) if b > a]


def _jaccard(a: tuple[int, int], b: tuple[int, int]) -> float:
    inter = max(0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - inter
    return inter / union if union else 0.0


def covering_one(truth, pred, n: int) -> float:
    G = _partition(truth, n)
    Gp = _partition(pred, n)
    total = 0.0
    j = 0
    for A in G:
        # predicted segments overlapping A (both sorted): only those can have J > 0
        while j < len(Gp) and Gp[j][1] <= A[0]:
            j += 1
        best = 0.0
        k = j
        while k < len(Gp) and Gp[k][0] < A[1]:
            best = max(best, _jaccard(A, Gp[k]))
            k += 1
        total += (A[1] - A[0]) * best
    return total / n


def covering(annotations: dict, predictions, n: int) -> float:
    """Covering of the annotated partitions by the predicted one, averaged over annotators."""
    Tk = list(annotations.values()) or [[0]]
    return float(np.mean([covering_one(t, predictions, n) for t in Tk]))
