"""Synthetic sensor readings from a fleet of machines that wear out, with a regime change.

Each machine wears at its own rate; a repair resets it. A reading carries temperature,
vibration, pressure and rpm; the label says whether the machine is close to failure (wear
above its type's limit). Until ``change_at`` the fleet is type A, whose wear shows in
vibration and temperature; from then on it is type B — different baselines, and wear that
shows in pressure and rpm instead — so a model trained on type A loses most of its accuracy
until it is retrained on type B data.

>>> g = generate(2000, seed=1)
>>> len(g.values), g.change_at, bool(0.2 < g.labels[:1000].mean() < 0.45), g.values[0][:14]
(2000, 1000, True, b'{"event_id":"m')
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import orjson

from tidal.quality.schema import Schema

__all__ = ["MaintenanceEvents", "generate", "FEATURES", "SCHEMA"]

FEATURES = ["temperature", "vibration", "pressure", "rpm"]
SCHEMA = Schema.from_dict({"event_id": "str", "machine_id": "str", "machine_type": "str", "temperature": "float",
                           "vibration": "float", "pressure": "float", "rpm": "float"})
LIMIT = {"A": 0.7, "B": 0.6}  # wear above which a machine is close to failure


@dataclass
class MaintenanceEvents:
    """Encoded readings and their truth; ``labels[i]`` is 1 when reading i's machine is close to failure."""

    keys: list[bytes]
    values: list[bytes]
    event_ids: list[str]
    labels: np.ndarray
    machine_type: np.ndarray
    change_at: int

    def label_values(self, lo: int, hi: int) -> list[bytes]:
        """The label records of readings ``lo``..``hi`` (``{"event_id", "label"}``)."""
        return [b'{"event_id":"%s","label":%d}' % (e.encode(), y)
                for e, y in zip(self.event_ids[lo:hi], self.labels[lo:hi].tolist())]


def generate(n: int, seed: int = 7, change_at: int | None = None, machines: int = 2000) -> MaintenanceEvents:
    """``n`` readings (ids ``m-000000``…), type A before ``change_at`` (default ``n // 2``), type B after."""
    rng = np.random.default_rng(seed)
    change_at = n // 2 if change_at is None else change_at
    machine = rng.integers(0, machines, n)
    order = np.argsort(machine, kind="stable")  # the k-th reading of each machine, without a loop
    sorted_m = machine[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_m)) + 1]
    group_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    k = np.empty(n, np.int64)
    k[order] = np.arange(n) - group_start
    rate = rng.uniform(0.004, 0.02, machines)[machine]
    phase = rng.random(machines)[machine]
    wear = np.mod(phase + rate * k, 1.0)  # wears towards 1, repaired back to 0
    kind = np.where(np.arange(n) < change_at, "A", "B")
    a = kind == "A"
    noise = rng.normal(size=(4, n))
    temperature = np.where(a, 60 + 15 * wear, 70 + 4 * wear) + 3.0 * noise[0]
    vibration = np.where(a, 0.5 + 2.0 * wear ** 2, 1.2 + 0.2 * wear) + 0.15 * noise[1]
    pressure = np.where(a, 5.0 + 0 * wear, 6.0 - 3.0 * wear) + np.where(a, 0.3, 0.2) * noise[2]
    rpm = np.where(a, 1500 + 0 * wear, 1800 + 400 * wear) + 40.0 * noise[3]
    labels = (wear > np.where(a, LIMIT["A"], LIMIT["B"])).astype(np.int8)
    ids = [f"m-{i:06d}" for i in range(n)]
    machine_ids = [f"machine-{m}" for m in machine.tolist()]
    kinds = kind.tolist()
    values = [orjson.dumps({"event_id": e, "machine_id": mid, "machine_type": t, "temperature": round(tp, 3),
                            "vibration": round(v, 4), "pressure": round(p, 4), "rpm": round(r, 1)})
              for e, mid, t, tp, v, p, r in zip(ids, machine_ids, kinds, temperature.tolist(), vibration.tolist(),
                                               pressure.tolist(), rpm.tolist())]
    return MaintenanceEvents([m.encode() for m in machine_ids], values, ids, labels, kind, change_at)
