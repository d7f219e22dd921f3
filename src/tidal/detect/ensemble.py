"""Ensemble of likelihood-calibrated detectors (the ``default`` detector).

Each member is wrapped in :class:`~tidal.detect.likelihood.AnomalyLikelihood`
so its scores share one scale (log tail probability); the ensemble returns
their maximum (``combine="max"``) or mean.  All members share the key -> slot
table, so a batch costs one key lookup.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .base import SeriesDetector

__all__ = ["EnsembleDetector"]


@njit(cache=True)
def _combine(stack, use_max, out):
    m, n = stack.shape
    for i in range(n):
        acc = stack[0, i]
        for j in range(1, m):
            v = stack[j, i]
            if use_max:
                if v > acc:
                    acc = v
            else:
                acc += v
        out[i] = acc if use_max else acc / m


class EnsembleDetector(SeriesDetector):
    """Combine member detectors' scores row by row.

    Parameters
    ----------
    members
        Detectors (fresh, unused) whose scores are combined.
    combine
        ``"max"`` or ``"mean"``.
    """

    def __init__(self, members: list[SeriesDetector], combine: str = "max") -> None:
        if combine not in ("max", "mean"):
            raise ValueError("combine must be 'max' or 'mean'")
        self.members = list(members)
        self.combine = combine
        super().__init__()

    def _children(self):
        return self.members

    def _score_slots(self, slots, values, times):
        stack = np.empty((len(self.members), values.shape[0]))
        for j, m in enumerate(self.members):
            stack[j] = m._score_slots(slots, values, times)
        out = np.empty(values.shape[0])
        _combine(stack, self.combine == "max", out)
        return out
