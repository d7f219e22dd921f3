"""Normalisation: timestamps, numbers, units, strings — column-wise, with a status per cell."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from tidal.quality import Field
from tidal.quality.normalize import (BAD, MISSING, NULL, OK, NormalizeStep, epoch_ms, normalize_field, numbers,
                                     strings, with_units)
from tidal.stream.batch import Batch

MS = 1704067200000  # 2024-01-01T00:00:00Z


@pytest.mark.parametrize("value", [
    "2024-01-01T00:00:00Z", "2024-01-01T00:00:00+00:00", "2024-01-01T01:00:00+01:00", "2023-12-31T19:00:00-05:00",
    "2024-01-01T00:00:00.000", "2024-01-01 00:00:00", "2024-01-01T00:00:00.000000Z", MS // 1000, float(MS // 1000),
    MS, MS * 1000, MS * 1_000_000, str(MS), "Mon, 01 Jan 2024 00:00:00 GMT", "01/Jan/2024:01:00:00 +0100",
    "2024/01/01 00:00:00", "20240101T000000",
])
def test_timestamps_to_utc_epoch_ms(value):
    ms, status = epoch_ms([value])
    assert status.tolist() == [OK] and ms.tolist() == [MS]


def test_timestamp_units_and_failures():
    ms, status = epoch_ms([1704067200, "yesterday", None, msgspec.UNSET, [1], float("nan")], unit="s")
    assert ms[0] == MS and status.tolist() == [OK, BAD, NULL, MISSING, BAD, BAD]
    assert epoch_ms(["01.01.2024 00:00"], unit="%d.%m.%Y %H:%M")[0].tolist() == [MS]


def test_numbers():
    v, st = numbers([1, 2.5, "3", " 4e2 ", "x", None, msgspec.UNSET, True, {"a": 1}, 10 ** 400], coerce=True)
    assert v[:4].tolist() == [1.0, 2.5, 3.0, 400.0]
    assert st.tolist() == [OK, OK, OK, OK, BAD, NULL, MISSING, BAD, BAD, BAD]
    assert numbers(["3"])[1].tolist() == [BAD]  # strings only with coerce
    assert numbers([1.5, 2], integer=True)[1].tolist() == [BAD, OK]


def test_units():
    v, unknown = with_units(np.array([1.0, 2.0, 3.0, 4.0, 5.0]), ["KB", None, "GiB", "furlong", "kbps"], "B",
                            {"kbps": 125.0})
    assert v[:3].tolist() == [1000.0, 2.0, 3 * 1024.0 ** 3] and v[4] == 625.0
    assert unknown.tolist() == [False, False, False, True, False]
    assert with_units(np.array([1500.0]), ["ms"], "s")[0].tolist() == [1.5]
    assert with_units(np.array([1.0]), ["kg"], "s")[1].tolist() == [True]  # another dimension


def test_unit_strings_and_unit_field():
    f = Field("d", unit="s", unit_field="du")
    col, status, changed = normalize_field(f, ["250ms", 2.0, 3.0, "1.5 min", "fast"], ["s", "s", "ms", None, None])
    assert col[:4].tolist() == [0.25, 2.0, 0.003, 90.0] and status[4] == BAD
    assert changed.tolist() == [True, False, True, True, False]


def test_strings():
    col, st = strings([" TCP", "udp", None, 5, msgspec.UNSET], trim=True, case="lower")
    assert col.tolist() == ["tcp", "udp", None, None, None] and st.tolist() == [OK, OK, NULL, BAD, MISSING]
    assert strings([5, True], coerce=True)[0].tolist() == ["5", "true"]
    assert strings(["Straße"], case="fold")[0].tolist() == ["strasse"]


def test_normalize_step_rewrites_only_changed_records():
    step = NormalizeStep({"ts": {"type": "int", "timestamp": True}, "b": {"unit": "B", "unit_field": "bu"}})
    b = Batch.from_rows([{"ts": MS, "b": 10.0, "bu": "B"}, {"ts": "2024-01-01T00:00:00Z", "b": 2.0, "bu": "KB"},
                         {"ts": "never", "b": 1.0, "bu": "B"}])
    before = list(b.values)
    out = step.process(b)
    assert out.values[0] is before[0] and out.values[2] is before[2]
    assert out.values[1] == b'{"ts":1704067200000,"b":2000.0,"bu":"B"}'
    assert step.counts[("ts", "type", "none")] == 1
