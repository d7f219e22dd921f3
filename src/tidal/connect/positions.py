"""Where a source connector is: its last delivered position, kept in a small JSON file.

The file is replaced atomically (write, fsync, rename), so a crash leaves the old or the
new position, never half of one. It also records, per topic partition, the offset after
the last record the connector saw acknowledged (its topic and its dead-letter topic); on restart the runner reads the topic from
there to find records that were delivered after the last save (see
:mod:`tidal.connect.source_runner`).

>>> import tempfile, pathlib
>>> f = PositionFile(pathlib.Path(tempfile.mkdtemp()) / "pg.json")
>>> f.load()
(None, {})
>>> f.save({"id": 42}, {("orders.events", 0): 10, ("orders.dlq", 1): 7})
>>> f.load()
({'id': 42}, {('orders.events', 0): 10, ('orders.dlq', 1): 7})
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

__all__ = ["PositionFile", "default_position_path"]


def default_position_path(connector: str) -> Path:
    """``$TIDAL_HOME/connect/<connector>.json``."""
    from tidal.broker.embedded import tidal_home

    return tidal_home() / "connect" / f"{connector}.json"


class PositionFile:
    """A source position plus the topic's next offsets per partition, on disk."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> tuple[Any, dict[tuple[str, int], int]]:
        if not self.path.exists():
            return None, {}
        doc = orjson.loads(self.path.read_bytes())
        offsets = {}
        for tp, o in doc.get("offsets", {}).items():
            topic, _, partition = tp.rpartition(":")  # Kafka topic names have no ':'
            offsets[(topic, int(partition))] = int(o)
        return doc.get("position"), offsets

    def save(self, position: Any, offsets: dict[tuple[str, int], int]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as fh:
            fh.write(orjson.dumps({"position": position, "offsets": {f"{t}:{p}": o for (t, p), o in offsets.items()}}))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
