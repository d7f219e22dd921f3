"""River's bundled real change-point series (``river.drift.datasets``, from the Turing Change Point
Detection benchmark) with their annotations (per annotator, read from the dataset classes).

The CSVs are read directly and brought to the series the annotations index, as the datasets'
docstrings describe: BrentSpotPrice from 2000 on, every 10th day (500 points); Apple every 3rd
day (623 points). Multivariate ones use one column as the value stream: Apple ``Close``,
Occupancy ``V1`` (temperature), RunLog ``Pace``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass

import numpy as np

# dataset class -> (value column, first data row, step)
SPEC = {
    "AirlinePassengers": ("Total Passengers", 0, 1),
    "Apple": ("Close", 0, 3),
    "Bitcoin": ("price", 0, 1),
    "BrentSpotPrice": ("DPB", None, 10),  # None: first row of 2000
    "Occupancy": ("V1", 0, 1),
    "RunLog": ("Pace", 0, 1),
    "UKCoalEmploy": ("Employment", 0, 1),
}


@dataclass
class CPSeries:
    name: str
    column: str
    values: np.ndarray
    annotations: dict[str, list[int]]


def load() -> list[CPSeries]:
    from river.drift import datasets

    out = []
    for name, (col, start, step) in SPEC.items():
        ds = getattr(datasets, name)()
        with open(ds.path, newline="") as f:
            rows = list(csv.DictReader(f))
        if start is None:
            date_col = next(iter(rows[0]))
            start = next(i for i, r in enumerate(rows) if r[date_col].endswith("2000"))
        vals = np.array([float(r[col]) for r in rows[start::step]], dtype=np.float64)
        ann = {str(k): sorted(int(x) for x in v if 0 <= int(x) < len(vals)) for k, v in ds.annotations.items()}
        out.append(CPSeries(name, col, vals, ann))
    return out
