"""Contextual detector, in the spirit of CAD OSE (Smirnov & Hrydziuszko).

Each value is quantised into a level bin and a bin of its change from the
previous value; the last few (level, change) pairs form *context words* of
orders 1..``orders``.  Every word is hashed into a small per-key count table.
The score is the mean novelty ``1 / (1 + count)`` over the current words
(order ``o`` weighted ``1 / o``, as long contexts are often new in noise), so
a context never seen before scores 1 and familiar ones score near 0.  Counts
are halved periodically so old contexts fade.

Bin width is ``resolution`` times the key's slowly tracked standard
deviation, snapped to a power of sqrt(2) so words stay stable.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .base import SeriesDetector

__all__ = ["ContextDetector"]

_M1 = -7046029254386353131  # 0x9E3779B97F4A7C15 as int64
_M2 = -4658895280553007687  # 0xBF58476D1CE4E5B9


@njit(cache=True)
def _mix(h, v):
    h = (h ^ v) * _M1
    h = h ^ (h >> 29)
    h = h * _M2
    return h ^ (h >> 32)


@njit(cache=True)
def _context_kernel(slots, x, table, hist, cnt, mean, var, prev, inserts, warmup, resolution, max_delta, decay_every, out):
    H = table.shape[1]
    O = hist.shape[1] // 2
    mask = H - 1
    for i in range(x.shape[0]):
        v = x[i]
        if math.isnan(v):
            out[i] = np.nan
            continue
        s = slots[i]
        n = cnt[s]
        m = mean[s]
        # slow running mean/variance (cumulative during warm-up, then EW)
        a = 1.0 / (n + 1) if n + 1 < 1000 else 0.001
        d = v - m
        if n >= warmup:
            sd = math.sqrt(var[s])
            scale = max(sd, 1e-9 * max(1.0, abs(m)))
            w = resolution * scale
            # snap the width to a power of sqrt(2) (stable words)
            w = math.exp2(math.floor(2.0 * math.log2(w)) / 2.0)
            lb = np.int64(math.floor(v / w)) if abs(v / w) < 4e18 else np.int64(0)
            db_f = (v - prev[s]) / w
            db_f = min(max(db_f, -max_delta), max_delta)
            db = np.int64(math.floor(db_f + 0.5))
            wid = np.int64(math.floor(2.0 * math.log2(w)))
            # shift history: (level, delta) pairs, newest at the end
            for j in range(O - 1):
                hist[s, 2 * j] = hist[s, 2 * j + 2]
                hist[s, 2 * j + 1] = hist[s, 2 * j + 3]
            hist[s, 2 * O - 2] = lb
            hist[s, 2 * O - 1] = db
            seen = n - warmup + 1
            novelty = 0.0
            used = 0.0
            h = _mix(wid, 0x5bd1e995)
            for o in range(O):
                j = O - 1 - o
                h = _mix(h, hist[s, 2 * j])
                h = _mix(h, hist[s, 2 * j + 1])
                if o < seen:
                    slot = h & mask
                    c = table[s, slot]
                    wgt = 1.0 / (o + 1.0)
                    novelty += wgt / (1.0 + c)
                    used += wgt
                    if c < 65535:
                        table[s, slot] = c + 1
            out[i] = novelty / used if n >= warmup + O else 0.0
            k = inserts[s] + 1
            if k >= decay_every:
                for j in range(H):
                    table[s, j] = table[s, j] >> 1
                k = 0
            inserts[s] = k
        else:
            out[i] = 0.0
        m += a * d
        var[s] = (1.0 - a) * (var[s] + a * d * d)
        mean[s] = m
        prev[s] = v
        cnt[s] = n + 1


class ContextDetector(SeriesDetector):
    """Novelty of the recent (level, change) context.

    Parameters
    ----------
    orders
        Longest context word (number of recent (level, change) pairs).
    table_size
        Hash-table slots per key (power of 2; uint16 counts).
    resolution
        Bin width in units of the key's standard deviation.
    max_delta
        Changes are clipped to +/- this many bins.
    warmup
        Values used to learn the scale before words are formed.
    decay_every
        Rows between halvings of all counts (default ``table_size / (2 * orders)``,
        which keeps the table sparse; contexts seen once fade after that).
    """

    def __init__(
        self,
        orders: int = 3,
        table_size: int = 2048,
        resolution: float = 0.5,
        max_delta: int = 4,
        warmup: int = 32,
        decay_every: int | None = None,
    ) -> None:
        if table_size & (table_size - 1):
            raise ValueError("table_size must be a power of 2")
        self.orders = int(orders)
        self.table_size = int(table_size)
        self.resolution = float(resolution)
        self.max_delta = float(max_delta)
        self.warmup = int(warmup)
        self.decay_every = int(decay_every) if decay_every else max(64, self.table_size // (2 * self.orders))
        super().__init__()

    def _fields(self):
        return [
            ("table", (self.table_size,), np.uint16, 0),
            ("hist", (2 * self.orders,), np.int64, 0),
            ("cnt", (), np.int64, 0),
            ("mean", (), np.float64, 0.0),
            ("var", (), np.float64, 0.0),
            ("prev", (), np.float64, 0.0),
            ("inserts", (), np.int64, 0),
        ]

    def _score_slots(self, slots, values, times):
        out = np.empty(values.shape[0])
        _context_kernel(
            slots, values, self.table, self.hist, self.cnt, self.mean, self.var, self.prev,
            self.inserts, self.warmup, self.resolution, self.max_delta, self.decay_every, out,
        )
        return out
