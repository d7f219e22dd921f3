"""Normalisation, column-wise: timestamps → UTC epoch ms, numeric strings → numbers, units, strings.

Each function takes one column of raw decoded values (any JSON value; ``None`` for null,
``msgspec.UNSET`` for a missing field) and returns numpy arrays plus a status per cell:
``OK``, ``NULL``, ``MISSING`` or ``BAD`` (cannot be read as the declared type). Batches of
well-typed values take a single numpy conversion; per-value Python runs only on the cells
that need it (strings to parse, odd types).

>>> ms, status = epoch_ms(["2024-01-01T00:00:00Z", 1704067200, 1704067200000, "2024-01-01 01:00:00+01:00", None])
>>> ms.tolist(), status.tolist()
([1704067200000, 1704067200000, 1704067200000, 1704067200000, 0], [0, 0, 0, 0, 1])
>>> v, status = numbers(["1.5", 2, "x", True], coerce=True)
>>> v.tolist()[:2], status.tolist()
([1.5, 2.0], [0, 0, 3, 3])
>>> with_units(np.array([1.5, 2.0, 3.0]), ["KB", "B", "MiB"], "B")[0].tolist()
[1500.0, 2.0, 3145728.0]
>>> strings([" TCP ", "udp", None], trim=True, case="lower")[0].tolist()
['tcp', 'udp', None]
"""

from __future__ import annotations

import operator
import re
import warnings
from datetime import datetime, timezone
from collections import defaultdict
from email.utils import parsedate_to_datetime
from itertools import repeat
from typing import Any, Mapping, Sequence

import msgspec
import numpy as np

from tidal.quality.base import QualityBatch, QualityStep, raw_column
from tidal.quality.schema import Field

__all__ = ["OK", "NULL", "MISSING", "BAD", "numbers", "booleans", "strings", "epoch_ms", "with_units", "UNITS",
           "NormalizeStep", "normalize_field", "FORMATS", "typed"]

OK, NULL, MISSING, BAD = 0, 1, 2, 3
_NUM = (int, float)
_UNSET = msgspec.UNSET

# Unit → (dimension, factor to the dimension's base unit).
UNITS: dict[str, tuple[str, float]] = {
    **{u: ("time", f) for u, f in {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "sec": 1.0,
                                     "min": 60.0, "h": 3600.0, "hr": 3600.0, "d": 86400.0, "day": 86400.0}.items()},
    **{u: ("data", f) for u, f in {"bit": 0.125, "B": 1.0, "byte": 1.0, "bytes": 1.0, "KB": 1e3, "kB": 1e3,
                                     "MB": 1e6, "GB": 1e9, "TB": 1e12, "KiB": 1024.0, "MiB": 1024.0 ** 2,
                                     "GiB": 1024.0 ** 3, "TiB": 1024.0 ** 4}.items()},
    **{u: ("length", f) for u, f in {"mm": 1e-3, "cm": 1e-2, "m": 1.0, "km": 1e3, "in": 0.0254, "ft": 0.3048,
                                       "mi": 1609.344}.items()},
    **{u: ("mass", f) for u, f in {"mg": 1e-6, "g": 1e-3, "kg": 1.0, "t": 1e3, "lb": 0.45359237}.items()},
}
# Formats tried (in order) for timestamp strings that are not ISO-8601.
FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y/%m/%d %H:%M:%S", "%d/%m/%Y %H:%M:%S", "%d/%b/%Y:%H:%M:%S %z",
           "%Y-%m-%dT%H:%M:%S.%f%z", "%d.%m.%Y %H:%M:%S", "%Y%m%dT%H%M%S", "%Y%m%d")
_WITH_UNIT = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([A-Za-zµ]+)\s*$")
_EPOCH = ((1e11, 1000.0), (1e14, 1.0), (1e17, 1e-3))  # |x| below → factor to ms (s, ms, µs); else ns


_INT, _FLOAT, _STR, _NONE, _UNSETC, _BOOL, _OTHER = range(7)
_CODES: defaultdict = defaultdict(lambda: _OTHER, {int: _INT, float: _FLOAT, str: _STR, type(None): _NONE,
                                                   type(_UNSET): _UNSETC, bool: _BOOL})


def type_codes(values: Sequence[Any]) -> np.ndarray:
    """One small int per value for its Python type (int, float, str, None, unset, bool, other): one C-level pass."""
    return np.fromiter(map(_CODES.__getitem__, map(type, values)), np.int8, len(values))


def _status_of(values: Sequence[Any], codes: np.ndarray | None = None) -> np.ndarray:
    """NULL where None, MISSING where unset, else OK."""
    codes = type_codes(values) if codes is None else codes
    status = np.zeros(len(values), dtype=np.int8)
    status[codes == _NONE] = NULL
    status[codes == _UNSETC] = MISSING
    return status


def _floats(values: Sequence[Any], idx: np.ndarray, out: np.ndarray, status: np.ndarray) -> None:
    """``out[idx] = float(values[idx])`` in one numpy call; per value only when some fail."""
    sub = values if len(idx) == len(values) else list(map(values.__getitem__, idx.tolist()))
    try:
        out[idx] = np.array(sub, dtype=np.float64)
        return
    except (ValueError, OverflowError, TypeError):
        pass
    for i, v in zip(idx.tolist(), sub):
        try:
            out[i] = float(v)
        except (ValueError, OverflowError, TypeError):
            status[i] = BAD


def numbers(values: Sequence[Any], coerce: bool = False, integer: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Numbers as float64 (NaN where not a number) and each cell's status.

    JSON numbers are numbers; booleans are not. With ``coerce``, numeric strings ("12.5",
    " 3 ", "1e3") are too. With ``integer``, a number with a fractional part is ``BAD``.
    """
    return _numbers(values, coerce, integer)[:2]


def _numbers(values: Sequence[Any], coerce: bool = False, integer: bool = False,
             codes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(values)
    codes = type_codes(values) if codes is None else codes
    out = np.full(n, np.nan)
    status = _status_of(values, codes)
    num = codes <= _FLOAT
    if num.all():
        if n:
            _floats(values, np.arange(n), out, status)
    else:
        if num.any():
            _floats(values, np.flatnonzero(num), out, status)
        is_str = codes == _STR
        if coerce and is_str.any():
            _floats(values, np.flatnonzero(is_str), out, status)
        elif not coerce:
            status[is_str] = BAD
        status[codes >= _BOOL] = BAD
    if integer:
        frac = (status == OK) & np.isfinite(out) & (out != np.floor(out))
        status[frac] = BAD
    return out, status, codes


_TRUE = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def booleans(values: Sequence[Any], coerce: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Booleans as float64 1/0 (NaN where absent or not a boolean) and each cell's status."""
    n = len(values)
    if set(map(type, values)) == {bool}:
        return np.array(values, dtype=np.float64), np.zeros(n, dtype=np.int8)
    out = np.full(n, np.nan)
    status = _status_of(values)
    for i, v in enumerate(values):
        if type(v) is bool:
            out[i] = v
        elif status[i]:
            continue
        elif coerce and type(v) is str and v.strip().lower() in _TRUE:
            out[i] = _TRUE[v.strip().lower()]
        elif coerce and type(v) in _NUM and v in (0, 1):
            out[i] = v
        else:
            status[i] = BAD
    return out, status


def strings(values: Sequence[Any], trim: bool = False, case: str | None = None,
            coerce: bool = False, codes: np.ndarray | None = None,
            _changes: set | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Strings as an object array (None where absent or not a string), trimmed / case-folded.

    Each distinct value is cleaned once, so categorical columns cost one dict lookup per cell.
    """
    n = len(values)
    kinds = set(map(type, values))
    status = np.zeros(n, dtype=np.int8) if kinds == {str} else _status_of(values, codes)
    clean = {"lower": str.lower, "upper": str.upper, "fold": str.casefold}.get(case or "")
    out = np.empty(n, dtype=object)
    if kinds == {str} and not trim and clean is None:
        out[:] = values
        return out, status
    if kinds <= {str, int, float, type(None), type(_UNSET)}:  # hashable, no bool/int collisions
        memo = {v: _clean_str(v, trim, clean, coerce) for v in set(values)}
        res = list(map(memo.__getitem__, values))
        if _changes is not None:
            _changes.update(v for v, c in memo.items() if c is not _BADV and c is not None and c != v)
    else:
        res = [_clean_str(v, trim, clean, coerce) for v in values]
    if kinds <= {str, type(None), type(_UNSET)}:
        bad_rows: list[int] = []
    else:
        bad_rows = np.flatnonzero(np.fromiter(map(operator.is_, res, repeat(_BADV)), bool, n)).tolist()
    for i in bad_rows:
        res[i] = None
        if not status[i]:
            status[i] = BAD
    out[:] = res
    return out, status


_BADV = object()


def _clean_str(v: Any, trim: bool, clean: Any, coerce: bool) -> Any:
    if v is None or v is _UNSET:
        return None
    if type(v) is not str:
        if not coerce or type(v) not in (int, float, bool):
            return _BADV
        v = str(v).lower() if type(v) is bool else str(v)
    if trim:
        v = v.strip()
    return clean(v) if clean is not None else v


def epoch_ms(values: Sequence[Any], unit: str | bool = True,
             _parsed: tuple | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Timestamps → UTC epoch milliseconds (int64; 0 where absent or unreadable) and statuses.

    Numbers (and numeric strings) are epoch seconds, ms, µs or ns — by magnitude, or as
    ``unit`` says ("s", "ms", "us", "ns"). Strings are ISO-8601 (any offset; naive = UTC), RFC
    2822 or one of :data:`FORMATS`; a ``unit`` with a ``%`` is a strptime format tried first.
    """
    n = len(values)
    nums, status, codes = _numbers(values, coerce=True) if _parsed is None else _parsed
    status = status.copy()
    ms = np.zeros(n, dtype=np.float64)
    num = (status == OK) & np.isfinite(nums)
    status[(status == OK) & ~num] = BAD
    if num.any():
        x = nums[num]
        if unit in (True, "auto"):
            mag = np.abs(x)
            factor = np.full(len(x), 1e-6)
            for bound, f in reversed(_EPOCH):
                factor[mag < bound] = f
        else:
            factor = np.full(len(x), {"s": 1000.0, "ms": 1.0, "us": 1e-3, "µs": 1e-3, "ns": 1e-6}.get(str(unit), 1.0))
        ms[num] = x * factor
    strs = np.flatnonzero((status == BAD) & (codes == _STR))
    if len(strs):
        texts = [values[i].strip() for i in strs.tolist()]
        parsed = _parse_times(texts, unit if isinstance(unit, str) and "%" in unit else None)
        good = ~np.isnan(parsed)
        ms[strs[good]] = parsed[good]
        status[strs[good]] = OK
    out = np.zeros(n, dtype=np.int64)
    ok = status == OK
    if ok.any():
        safe = ok & (np.abs(ms) < 9.2e18)
        out[safe] = np.round(ms[safe]).astype(np.int64)
        status[ok & ~safe] = BAD
    return out, status


def _parse_times(texts: list[str], fmt: str | None) -> np.ndarray:
    out = np.full(len(texts), np.nan)
    if fmt is None and all(t[:4].isdigit() and len(t) >= 10 and t[4] == "-" for t in texts):
        try:  # ISO-8601 in bulk (numpy applies offsets; it warns that it drops the zone, which is wanted)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                arr = np.array(texts, dtype="datetime64[ms]")
            res = arr.astype(np.int64).astype(np.float64)
            res[np.isnat(arr)] = np.nan
            return res
        except ValueError:
            pass
    for i, t in enumerate(texts):
        dt = _parse_one(t, fmt)
        if dt is not None:
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=timezone.utc)
            try:
                out[i] = dt.timestamp() * 1000.0
            except (OverflowError, ValueError, OSError):
                pass
    return out


def _parse_one(text: str, fmt: str | None) -> datetime | None:
    for f in ((fmt,) if fmt else ()):
        try:
            return datetime.strptime(text, f)
        except ValueError:
            pass
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        pass
    for f in FORMATS:
        try:
            return datetime.strptime(text, f)
        except ValueError:
            continue
    if "," in text or text[:3].isalpha():
        try:
            return parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
    return None


def _factor(unit: Any, to: str, custom: Mapping[str, float]) -> float:
    """Multiplier from ``unit`` to ``to`` (NaN when unknown or of another dimension)."""
    if unit is None or unit is _UNSET or unit == "":
        return 1.0
    if not isinstance(unit, str):
        return np.nan
    u = unit.strip()
    if u in custom:
        return float(custom[u])
    src, dst = UNITS.get(u), UNITS.get(to)
    if src is None or dst is None or src[0] != dst[0]:
        return 1.0 if u == to else np.nan
    return src[1] / dst[1]


def with_units(values: np.ndarray, units: Sequence[Any], to: str,
               custom: Mapping[str, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``values`` (float64) given in ``units`` (one unit name per cell) converted to ``to``.

    Returns the converted values and a mask of cells whose unit is unknown (left as NaN).
    ``custom`` adds factors to ``to`` (``{"kbps": 125.0}``). Each distinct unit is looked up once.
    """
    custom = dict(custom or {})
    if not set(map(type, units)) <= {str, type(None)}:
        units = [u if type(u) is str or u is None else repr(u) for u in units]
    table = {u: _factor(u, to, custom) for u in set(units)}
    if len(table) == 1:
        factors = np.full(len(units), next(iter(table.values())))
    else:
        factors = np.fromiter(map(table.__getitem__, units), np.float64, len(units))
    unknown = np.isnan(factors)
    return values * np.where(unknown, np.nan, factors), unknown


def split_units(values: Sequence[Any], codes: np.ndarray | None = None) -> tuple[list[Any], list[Any]]:
    """``"12.5 KB"`` → (12.5, "KB"); other values unchanged with unit None."""
    codes = type_codes(values) if codes is None else codes
    strs = np.flatnonzero(codes == _STR)
    units: list[Any] = [None] * len(values)
    if not len(strs):
        return list(values), units
    nums: list[Any] = list(values)
    for i in strs.tolist():
        m = _WITH_UNIT.match(values[i])
        if m:
            nums[i] = float(m.group(1))
            units[i] = m.group(2)
    return nums, units


def normalize_field(f: Field, raw: Sequence[Any], unit_values: Sequence[Any] | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One field's raw values → (clean column, status per cell, changed mask) per the field's declaration.

    ``changed`` marks cells whose clean value differs from what the record holds (their JSON
    is rewritten). Status ``BAD`` means the value cannot be read as the field's type.
    """
    n = len(raw)
    codes = type_codes(raw)
    if f.type == "str":
        changing: set = set()
        col, status = strings(raw, f.trim, f.case, f.coerce, codes, changing)
        changed = np.zeros(n, dtype=bool)
        if f.trim or f.case or f.coerce:
            if ((codes == _STR) | (codes == _NONE) | (codes == _UNSETC)).all():
                if changing:
                    changed = np.fromiter(map(changing.__contains__, raw), bool, n)
            else:
                changed = (status == OK) & (codes != _STR)
                changed |= np.fromiter((c is not None and c != r for c, r in zip(col.tolist(), raw)), bool, n)
        return col, status, changed
    if f.type == "bool":
        col, status = booleans(raw, f.coerce)
        return col, status, (status == OK) & (codes != _BOOL)
    if f.timestamp:
        parsed = _numbers(raw, True, False, codes)
        ms, status = epoch_ms(raw, f.timestamp, parsed)
        col = ms.astype(np.float64)
        col[status != OK] = np.nan
        nums = np.where(codes == _INT, parsed[0], np.nan)  # the record already holds epoch ms as an int
        return col, status, (status == OK) & ~(col == nums)
    units = None
    values = raw
    if f.unit:
        values, units = split_units(raw, codes)
        if f.unit_field is not None and unit_values is not None:
            if values is not raw and any(u is not None for u in units):
                units = [u if u is not None else (uv if type(uv) is str else None) for u, uv in zip(units, unit_values)]
            else:
                units = unit_values
        col, status, _ = _numbers(values, True, False, None if values is not raw else codes)
    else:
        col, status, _ = _numbers(raw, f.coerce, False, codes)
    changed = (status == OK) & (codes > _FLOAT)
    if f.unit and units is not None:
        converted, unknown = with_units(col, units, f.unit, dict(f.units or ()))
        status[(status == OK) & unknown] = BAD
        changed |= (status == OK) & (converted != col)
        col = converted
    if f.type == "int":
        status[(status == OK) & ~(np.abs(col) < 2.0**63)] = BAD  # beyond int64 (and inf): not an int here
        frac = (status == OK) & (col != np.round(col))
        if f.coerce or f.unit:
            col = np.where(frac, np.round(col), col)
            changed |= frac
        else:
            status[frac] = BAD
    col[status != OK] = np.nan
    return col, status, changed


def typed(col: np.ndarray, f: Field) -> np.ndarray:
    """A float column of an int (bool) field as int64 (bool) when it has no missing cells."""
    if col.dtype.kind == "f" and f.type in ("int", "bool") and not np.isnan(col).any():
        return col.astype(np.int64 if f.type == "int" else bool)
    return col


class NormalizeStep(QualityStep):
    """Normalise fields in place (no rules): ``{name: Field or {timestamp:, unit:, trim:, case:, coerce:}}``.

    Values that cannot be read are left as they are and counted (rule ``type``, action
    ``none``). For rules and policies, declare the same keys on the schema and use
    :class:`tidal.quality.rules.ValidateStep`, which normalises before it checks.

    >>> from tidal.stream.batch import Batch
    >>> step = NormalizeStep({"ts": {"type": "int", "timestamp": True}, "proto": {"type": "str", "case": "lower"}})
    >>> out = step.process(Batch.from_rows([{"ts": "2024-01-01T00:00:00Z", "proto": "TCP"}]))
    >>> out.values
    [b'{"ts":1704067200000,"proto":"tcp"}']
    """

    name = "normalize"

    def __init__(self, fields: Mapping[str, Any]) -> None:
        super().__init__()
        self.fields = [v if isinstance(v, Field) else Field(k, **{"type": "float", **dict(v)})
                       for k, v in fields.items()]

    def apply(self, batch: QualityBatch) -> QualityBatch:
        for f in self.fields:
            raw = raw_column(batch, f.name)
            units = raw_column(batch, f.unit_field) if f.unit_field else None
            col, status, changed = normalize_field(f, raw, units)
            bad = status == BAD
            self.count(f.name, "type", "none", int(bad.sum()))
            if bad.any() and col.dtype == object:
                col[bad] = np.array(raw, dtype=object)[bad]
            batch.types.setdefault(f.name, f.type)
            batch.with_column(f.name, typed(col, f), output=False)
            batch.mark(f.name, changed & ~bad)
            if f.unit and f.unit_field and changed.any():
                batch.with_column(f.unit_field, np.full(len(batch), f.unit, dtype=object), output=False)
                batch.mark(f.unit_field, changed)
        return batch
