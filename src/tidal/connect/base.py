"""What a connector is: a :class:`Source` that reads records from an outside system, or a
:class:`Sink` that writes a topic's records to one.

Connectors are small adapters; delivery (produce, acknowledgement, positions, offsets,
retries, the dead-letter topic, metrics) lives once in :mod:`tidal.connect.source_runner` and
:mod:`tidal.connect.sink_runner`.

>>> r = SourceRecord(b'{"id": 1}', key=b"1", position={"id": 1})
>>> r.position_bytes()
b'{"id":1}'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import orjson

__all__ = ["SourceRecord", "BadRecord", "SinkRecord", "Source", "Sink", "Unavailable", "RecordsRejected"]


class Unavailable(RuntimeError):
    """The outside system cannot be reached now; the runner backs off and tries again."""


class RecordsRejected(Exception):
    """The outside system refused some rows for what they hold (not for being down).

    Raised by :meth:`Sink.write` *before* it committed anything: ``rejected`` holds
    ``(index, reason, message)`` for the rows refused; the runner sends those to the
    dead-letter topic and writes the rest again.
    """

    def __init__(self, rejected: list[tuple[int, str, str]]) -> None:
        super().__init__(f"{len(rejected)} rows rejected: {rejected[0][2] if rejected else ''}")
        self.rejected = rejected


@dataclass(slots=True)
class SourceRecord:
    """One record read from an outside system, as the event value to produce.

    ``position`` (JSON-able) says where the record is in its source; it must be unique per
    record and a source must be able to resume right after it (:meth:`Source.open`).
    """

    value: bytes
    key: bytes | None = None
    position: Any = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)

    def position_bytes(self) -> bytes:
        return orjson.dumps(self.position, option=orjson.OPT_SORT_KEYS)


@dataclass(slots=True)
class BadRecord:
    """A record the source could not convert: it goes to the dead-letter topic with a reason."""

    raw: bytes
    reason: str
    message: str
    key: bytes | None = None
    position: Any = None

    def position_bytes(self) -> bytes:
        return orjson.dumps(self.position, option=orjson.OPT_SORT_KEYS)


class Source:
    """Reads records in order from an outside system. Subclasses implement :meth:`poll`."""

    name: str = "source"
    kind: str = "source"  # e.g. "postgres", "file": the metrics' ``connector_type`` label
    #: On start, also recognise records delivered up to this many offsets (per partition)
    #: before the saved ones: for a source whose acknowledgement to the outside system
    #: trails the saved position (MQTT: a PUBACK sent after the save), so that what the
    #: system sends again is skipped by position. 0: only what came after the save.
    lookback: int = 0

    def open(self, position: Any | None) -> None:
        """Connect and resume right after ``position`` (None: from the beginning). May raise Unavailable."""

    def poll(self, max_records: int, timeout: float) -> Sequence[SourceRecord | BadRecord]:
        """Up to ``max_records`` new records, in source order ([] when there are none yet)."""
        raise NotImplementedError

    def committed(self, position: Any) -> None:
        """Everything up to ``position`` is in Kafka and recorded (e.g. delete or move a finished file)."""

    def close(self) -> None:
        """Release connections."""


@dataclass(slots=True)
class SinkRecord:
    """One record of the topic a sink writes: where it came from, its key and decoded value."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: Any  # the decoded JSON value (a dict for tidal's events and predictions)
    timestamp: int
    raw: bytes


class Sink:
    """Writes records of a topic to an outside system. Subclasses implement :meth:`write`.

    The runner calls, for each batch: :meth:`prepare` (convert; what cannot be converted goes
    to the dead-letter topic, before anything is written), then :meth:`write` with the
    converted rows and the next offset per partition, then commits those offsets to Kafka.
    A sink that stores the offsets itself, in the same transaction as the rows, returns them
    from :meth:`stored_offsets`: the runner resumes from there, so a crash between the
    sink's commit and Kafka's neither loses nor repeats a row. A ``buffered`` sink (rolling
    files) says which offsets are durable through :meth:`durable_offsets`.
    """

    name: str = "sink"
    kind: str = "sink"
    buffered: bool = False

    def open(self) -> None:
        """Connect (may raise Unavailable)."""

    def stored_offsets(self, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int] | None:
        """Next offsets the sink recorded with its writes; None: use the consumer group's."""
        return None

    def prepare(self, records: Sequence[SinkRecord]) -> tuple[list[Any], list[tuple[SinkRecord, str, str]]]:
        """Convert records to rows: ``(rows, [(record, reason, message), ...])`` of those refused."""
        return list(records), []

    def write(self, rows: Sequence[Any], offsets: dict[tuple[str, int], int]) -> None:
        """Write ``rows`` durably (and ``offsets``, if the sink stores them). Raise Unavailable
        when the system is down (the same rows come again after a back-off), RecordsRejected
        for rows it refuses."""
        raise NotImplementedError

    def durable_offsets(self) -> dict[tuple[str, int], int]:
        """A buffered sink: next offsets whose rows are durable now (called after writes and when idle)."""
        return {}

    def revoke(self, partitions: list[tuple[str, int]]) -> None:
        """Partitions are leaving this worker: make what was written for them durable."""

    def close(self) -> None:
        """Make written rows durable and release connections."""
