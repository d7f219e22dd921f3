"""Streaming statistics updated a whole batch at a time with numpy, and serialisable as bytes.

- :class:`Windows`: the last ``size`` values per key (ring buffers, least-recently-used keys
  evicted past ``max_keys``) → windowed quantiles, median and MAD per key;
- :class:`Moments`: count, mean and variance (Chan et al.'s parallel update);
- :class:`TopK`: most frequent values, bounded;
- :class:`QuantileSketch`: DDSketch-style log buckets (1% relative accuracy), mergeable;
- :class:`Distinct`: HyperLogLog (1,024 registers, ~3% error), mergeable.

>>> w = Windows(size=100)
>>> w.push(w.slots(["a"] * 50 + ["b"] * 50), np.r_[np.arange(50.0), np.arange(50.0) * 10])
>>> med, mad = w.median_mad(w.slots(["a", "b"]))
>>> med.tolist(), mad.tolist()
([24.5, 245.0], [12.5, 125.0])
>>> d = Distinct(); d.add_numbers(np.arange(5000.0) % 1000); round(d.estimate(), -2)
1000.0
"""

from __future__ import annotations

import base64
import math
import zlib
from collections import Counter
from typing import Any, Iterable, Sequence

import numpy as np

from tidal.quality.base import key_codes

__all__ = ["Windows", "Moments", "TopK", "QuantileSketch", "Distinct"]


class Windows:
    """Ring buffers of the last ``size`` values per key; ``slots(keys)`` maps keys to rows."""

    def __init__(self, size: int = 256, max_keys: int = 100_000) -> None:
        self.size, self.max_keys = int(size), int(max_keys)
        self.index: dict[Any, int] = {}
        self.keys: list[Any] = []
        self.buf = np.full((0, self.size), np.nan)
        self.count = np.zeros(0, dtype=np.int64)
        self.used = np.zeros(0, dtype=np.int64)
        self.tick = 0
        self._cache: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}  # stat → (values per slot, count when computed)

    def __len__(self) -> int:
        return len(self.index)

    def slots(self, keys: Sequence[Any]) -> np.ndarray:
        """The slot of each key (allocated on first sight; -1 when more new keys than room)."""
        self.tick += 1
        codes, distinct = key_codes(list(keys))
        slot_of = np.full(len(distinct), -1, dtype=np.int64)
        new = []
        for j, k in enumerate(distinct):
            s = self.index.get(k)
            if s is None:
                new.append(j)
            else:
                slot_of[j] = s
        if new:
            free = self._free(len(new), exclude=slot_of[slot_of >= 0])
            for j, s in zip(new, free):
                k = distinct[j]
                self.index[k] = s
                self.keys[s] = k
                slot_of[j] = s
        slots = slot_of[codes]
        touched = slots[slots >= 0]
        self.used[touched] = self.tick
        return slots

    def _free(self, n: int, exclude: np.ndarray) -> list[int]:
        have = len(self.keys)
        grow = min(n, self.max_keys - have)
        out = list(range(have, have + grow))
        if grow > 0:
            self.buf = np.vstack([self.buf, np.full((grow, self.size), np.nan)])
            self.count = np.r_[self.count, np.zeros(grow, dtype=np.int64)]
            self.used = np.r_[self.used, np.full(grow, self.tick, dtype=np.int64)]
            self.keys.extend([None] * grow)
        need = n - len(out)
        if need > 0:  # evict the least recently used keys not in this batch
            used = self.used.copy()
            used[exclude] = np.iinfo(np.int64).max
            used[out] = np.iinfo(np.int64).max
            victims = np.argsort(used, kind="stable")[:need]
            victims = victims[used[victims] < np.iinfo(np.int64).max].tolist()
            for s in victims:
                del self.index[self.keys[s]]
                self.buf[s] = np.nan
                self.count[s] = 0
            for values, at in self._cache.values():
                at[victims] = -1
            out += victims
        return out

    def push(self, slots: np.ndarray, values: np.ndarray) -> None:
        """Append each value to its slot's window (NaN values and slot -1 are skipped)."""
        ok = (slots >= 0) & ~np.isnan(values)
        if not ok.any():
            return
        s, v = slots[ok], values[ok]
        order = np.argsort(s, kind="stable")
        s, v = s[order], v[order]
        idx = np.arange(len(s))
        start = np.r_[True, s[1:] != s[:-1]]
        rank = idx - np.maximum.accumulate(np.where(start, idx, 0))
        self.buf[s, (self.count[s] + rank) % self.size] = v
        self.count += np.bincount(s, minlength=len(self.count))

    def n(self, slots: np.ndarray) -> np.ndarray:
        """Values held per slot (0 for slot -1)."""
        out = np.zeros(len(slots), dtype=np.int64)
        ok = slots >= 0
        out[ok] = np.minimum(self.count[slots[ok]], self.size)
        return out

    def quantiles(self, slots: np.ndarray, qs: Sequence[float]) -> np.ndarray:
        """Linear-interpolated quantiles per slot: shape (len(qs), len(slots)); NaN when empty.

        Each slot's values are recomputed once an eighth of its window is new, else reused.
        """
        return self._cached(("q", *qs), slots, lambda rows, m: _quantiles(np.sort(rows, axis=1), m, qs))

    def median_mad(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Median and median absolute deviation per slot (NaN when empty); cached like :meth:`quantiles`."""
        def compute(rows: np.ndarray, m: np.ndarray) -> np.ndarray:
            rows = np.sort(rows, axis=1)
            med = _quantiles(rows, m, [0.5])[0]
            dev = np.sort(np.abs(rows - med[:, None]), axis=1)
            return np.vstack([med, _quantiles(dev, m, [0.5])[0]])

        out = self._cached(("median_mad",), slots, compute)
        return out[0], out[1]

    def _cached(self, stat: tuple, slots: np.ndarray, compute: Any) -> np.ndarray:
        k = 2 if stat[0] == "median_mad" else len(stat) - 1
        values, at = self._cache.get(stat, (np.zeros((k, 0)), np.zeros(0, dtype=np.int64)))
        cap = len(self.count)
        if len(at) < cap:
            values = np.hstack([values, np.full((k, cap - len(at)), np.nan)])
            at = np.r_[at, np.full(cap - len(at), -1, dtype=np.int64)]
            self._cache[stat] = (values, at)
        ok = slots >= 0
        s = slots[ok]
        fresh_after = np.maximum(1, np.minimum(self.count[s], self.size) // 8)
        stale = s[(at[s] < 0) | (self.count[s] - at[s] >= fresh_after)]
        if len(stale):
            stale = np.unique(stale)
            values[:, stale] = compute(self.buf[stale], self.n(stale))
            at[stale] = self.count[stale]
        out = np.full((k, len(slots)), np.nan)
        out[:, ok] = values[:, s]
        return out

    def snapshot(self) -> tuple[dict, dict]:
        live = np.array(sorted(self.index.values()), dtype=np.int64)
        meta = {"size": self.size, "max_keys": self.max_keys, "keys": [self.keys[s] for s in live.tolist()]}
        return meta, {"buf": self.buf[live], "count": self.count[live]}

    @classmethod
    def from_snapshot(cls, meta: dict, arrays: dict) -> "Windows":
        w = cls(meta["size"], meta["max_keys"])
        w.keys = list(meta["keys"])
        w.index = {k: i for i, k in enumerate(w.keys)}
        w.buf, w.count = arrays["buf"].reshape(-1, w.size).copy(), arrays["count"].copy()
        w.used = np.zeros(len(w.keys), dtype=np.int64)
        return w


def _quantiles(rows: np.ndarray, m: np.ndarray, qs: Sequence[float]) -> np.ndarray:
    out = np.full((len(qs), len(m)), np.nan)
    valid = m > 0
    if not valid.any():
        return out
    r = rows[valid]
    mv = m[valid]
    ar = np.arange(len(mv))
    for j, q in enumerate(qs):
        pos = q * (mv - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, mv - 1)
        frac = pos - lo
        out[j, valid] = r[ar, lo] * (1 - frac) + r[ar, hi] * frac
    return out


class Moments:
    """Count, mean and M2 (sum of squared deviations), updated per batch."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0
        self.min, self.max = math.inf, -math.inf

    def update(self, x: np.ndarray) -> None:
        x = x[np.isfinite(x)]
        if not len(x):
            return
        nb, mb = len(x), float(x.mean())
        m2b = float(((x - mb) ** 2).sum())
        self.merge_values(nb, mb, m2b, float(x.min()), float(x.max()))

    def merge_values(self, nb: int, mb: float, m2b: float, lo: float, hi: float) -> None:
        na = self.n
        n = na + nb
        if not nb:
            return
        delta = mb - self.mean
        self.mean += delta * nb / n
        self.m2 += m2b + delta * delta * na * nb / n
        self.n = n
        self.min, self.max = min(self.min, lo), max(self.max, hi)

    def merge(self, other: "Moments") -> None:
        self.merge_values(other.n, other.mean, other.m2, other.min, other.max)

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else 0.0

    def as_list(self) -> list[Any]:
        return [self.n, self.mean, self.m2, self.min if self.n else None, self.max if self.n else None]

    @classmethod
    def from_list(cls, v: Sequence[float]) -> "Moments":
        m = cls()
        m.n, m.mean, m.m2 = int(v[0]), float(v[1] or 0.0), float(v[2] or 0.0)
        if m.n:
            m.min, m.max = float(v[3]), float(v[4])
        return m


class TopK:
    """Counts of the most frequent values, pruned to ``k`` × 4 entries (approximate beyond ``k``)."""

    def __init__(self, k: int = 20) -> None:
        self.k = k
        self.counts: Counter = Counter()

    def update(self, values: Iterable[Any]) -> None:
        self.counts.update(values)
        if len(self.counts) > self.k * 4:
            self.counts = Counter(dict(self.counts.most_common(self.k * 2)))

    def merge(self, other: "TopK") -> None:
        self.counts.update(other.counts)

    def top(self, k: int | None = None) -> list[tuple[Any, int]]:
        return sorted(self.counts.items(), key=lambda kv: (-kv[1], str(kv[0])))[: k or self.k]

    def most_frequent(self) -> Any:
        top = self.top(1)
        return top[0][0] if top else None


class QuantileSketch:
    """DDSketch-style quantiles: values in log-spaced buckets with relative accuracy ``alpha``."""

    def __init__(self, alpha: float = 0.01) -> None:
        self.alpha = alpha
        self.gamma = (1 + alpha) / (1 - alpha)
        self._lg = math.log(self.gamma)
        self.pos: Counter = Counter()
        self.neg: Counter = Counter()
        self.zero = 0

    @property
    def count(self) -> int:
        return self.zero + sum(self.pos.values()) + sum(self.neg.values())

    def update(self, x: np.ndarray) -> None:
        x = x[np.isfinite(x)]
        if not len(x):
            return
        tiny = np.abs(x) < 1e-9
        self.zero += int(tiny.sum())
        for sign, store in ((1, self.pos), (-1, self.neg)):
            v = x[(np.sign(x) == sign) & ~tiny]
            if len(v):
                idx, cnt = np.unique(np.ceil(np.log(np.abs(v)) / self._lg).astype(np.int64), return_counts=True)
                store.update(dict(zip(idx.tolist(), cnt.tolist())))

    def merge(self, other: "QuantileSketch") -> None:
        self.pos.update(other.pos)
        self.neg.update(other.neg)
        self.zero += other.zero

    def _value(self, i: int) -> float:
        return 2 * self.gamma ** i / (self.gamma + 1)

    def buckets(self) -> list[tuple[float, int]]:
        """(representative value, count) in increasing order."""
        out = [(-self._value(i), c) for i, c in sorted(self.neg.items(), reverse=True)]
        if self.zero:
            out.append((0.0, self.zero))
        return out + [(self._value(i), c) for i, c in sorted(self.pos.items())]

    def quantile(self, q: float) -> float:
        b = self.buckets()
        total = sum(c for _, c in b)
        if not total:
            return math.nan
        rank, acc = q * (total - 1), 0
        for v, c in b:
            acc += c
            if acc > rank:
                return v
        return b[-1][0]

    def to_dict(self) -> dict:
        return {"alpha": self.alpha, "zero": self.zero, "pos": {str(k): v for k, v in self.pos.items()},
                "neg": {str(k): v for k, v in self.neg.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "QuantileSketch":
        s = cls(d["alpha"])
        s.zero = d["zero"]
        s.pos = Counter({int(k): v for k, v in d["pos"].items()})
        s.neg = Counter({int(k): v for k, v in d["neg"].items()})
        return s


_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: well-spread 64-bit hashes from any 64-bit input."""
    h = h.astype(np.uint64)
    with np.errstate(over="ignore"):
        h = (h + np.uint64(0x9E3779B97F4A7C15)) & _M64
        h = ((h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _M64
        h = ((h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _M64
    return h ^ (h >> np.uint64(31))


class Distinct:
    """HyperLogLog with ``2**p`` registers; stable hashes, so registers merge across processes."""

    def __init__(self, p: int = 10) -> None:
        self.p = p
        self.registers = np.zeros(1 << p, dtype=np.uint8)

    def add_hashes(self, h: np.ndarray) -> None:
        if not len(h):
            return
        h = _mix(h)
        p = np.uint64(self.p)
        idx = (h >> (np.uint64(64) - p)).astype(np.int64)
        w = (h << p) & _M64
        top = (w >> np.uint64(32)).astype(np.float64)
        low = (w & np.uint64(0xFFFFFFFF)).astype(np.float64)
        with np.errstate(divide="ignore"):
            clz_top = 31 - np.floor(np.log2(np.where(top > 0, top, 1)))
            clz_low = 31 - np.floor(np.log2(np.where(low > 0, low, 1)))
        clz = np.where(top > 0, clz_top, 32 + np.where(low > 0, clz_low, 32 - self.p))
        rank = np.minimum(clz + 1, 64 - self.p + 1).astype(np.uint8)
        np.maximum.at(self.registers, idx, rank)

    def add_numbers(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64)
        x = x[~np.isnan(x)] + 0.0  # -0.0 → 0.0
        self.add_hashes(np.unique(x).view(np.uint64))

    def add_values(self, values: Iterable[Any]) -> None:
        distinct = {v for v in values if v is not None}
        crc = zlib.crc32
        self.add_hashes(np.fromiter((crc(str(v).encode("utf-8", "surrogatepass")) | (len(str(v)) << 32)
                                     for v in distinct), np.uint64, len(distinct)))

    def merge(self, other: "Distinct") -> None:
        np.maximum(self.registers, other.registers, out=self.registers)

    def estimate(self) -> float:
        m = len(self.registers)
        alpha = 0.7213 / (1 + 1.079 / m)
        est = alpha * m * m / float(np.sum(np.exp2(-self.registers.astype(np.float64))))
        zeros = int(np.count_nonzero(self.registers == 0))
        if est <= 2.5 * m and zeros:
            est = m * math.log(m / zeros)
        return est

    def to_str(self) -> str:
        return base64.b64encode(zlib.compress(self.registers.tobytes())).decode()

    @classmethod
    def from_str(cls, s: str, p: int = 10) -> "Distinct":
        d = cls(p)
        d.registers = np.frombuffer(zlib.decompress(base64.b64decode(s)), dtype=np.uint8).copy()
        return d

