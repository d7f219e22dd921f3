"""A pipeline: source topic(s) → ordered steps → sink topic, declared once.

Declare it in Python (or YAML, see :mod:`tidal.stream.spec`), try it in memory with
:meth:`Pipeline.test`, and run it on Kafka with :class:`tidal.stream.worker.Worker` or
``tidal run``.

>>> p = Pipeline("demo", schema=Schema.from_dict({"x": "float"}))
>>> p = p.then(lambda b: b.with_column("y", b.column("x") + 1), name="add_one")
>>> out, dlq = p.test([b'{"x": 1}', b'{"x": "oops"}', b'not json'])
>>> out
[b'{"x": 1,"y":2.0,"source_topic":"demo.events","source_partition":0,"source_offset":0,"source_timestamp":0}']
>>> [(r.reason, r.offset) for r in dlq]
[('wrong_type', 1), ('invalid_json', 2)]
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from tidal.broker.topics import PipelineTopics, TopicSpec, topic_spec
from tidal.stream.batch import Batch, Reject
from tidal.stream.context import SideOutputs, SideRecord, StepContext
from tidal.stream.schema import Schema
from tidal.stream.encode import encode_outputs
from tidal.stream.step import FunctionStep, Step

__all__ = ["Pipeline", "run_steps", "with_source"]

def run_steps(steps: Sequence[Step], batch: Batch,
              timer: Callable[[str, float], None] | None = None) -> Batch:
    """Apply ``steps`` in order; a step that raises sends the batch it got to the DLQ.

    ``timer(step_name, seconds)`` is told how long each step took.
    """
    for step in steps:
        if not len(batch):
            break
        t0 = time.perf_counter()
        try:
            out = step.process(batch)
            if not isinstance(out, Batch):
                raise TypeError(f"step returned {type(out).__name__}, not a Batch (missing `return batch`?)")
            batch = out
        except Exception as exc:  # noqa: BLE001 - any step failure is a DLQ reason, not a crash
            batch = batch.reject_all(step.error_reason, f"{type(exc).__name__}: {exc}", step.name)
        if timer is not None:
            timer(step.name, time.perf_counter() - t0)
    return batch


def with_source(batch: Batch) -> Batch:
    """Add the source position to every output record (lineage: where it came from)."""
    batch.with_column("source_topic", np.array(batch.topics, dtype=object))
    batch.with_column("source_partition", batch.partitions)
    batch.with_column("source_offset", batch.offsets)
    batch.with_column("source_timestamp", batch.timestamps)
    return batch


def types_clash(have: str | None, want: str | None) -> bool:
    """A text field where a number is wanted, or the reverse (None: not known, no clash).

    >>> types_clash("str", "float"), types_clash("int", "float"), types_clash(None, "str")
    (True, False, False)
    """
    return have is not None and want is not None and (have == "str") != (want == "str")


@dataclass
class Pipeline:
    """What to read, how to transform it, where to write it, and how to deliver it."""

    name: str
    steps: list[Step] = field(default_factory=list)
    schema: Schema | None = None
    sources: list[str] | None = None
    sink: str | None = None
    dlq: str | None = None
    group: str | None = None
    max_batch: int = 5000
    max_wait_ms: int = 0  # 0 (default): each batch is what has arrived; N: wait up to N ms to fill one
    exactly_once: bool = False
    partitions: int = 4
    consumer_config: dict[str, Any] = field(default_factory=dict)
    producer_config: dict[str, Any] = field(default_factory=dict)
    alerts: list[Any] = field(default_factory=list)  # alert rules (dicts or tidal.monitor.AlertRule)
    lineage: bool = True  # add source_topic/partition/offset/timestamp to outputs

    def __post_init__(self) -> None:
        topics = PipelineTopics(self.name)
        self.sources = list(self.sources or [topics.events])
        self.sink = self.sink or topics.predictions
        self.dlq = self.dlq or topics.dlq
        self.group = self.group or f"tidal.{self.name}"
        if self.max_batch < 1 or self.max_wait_ms < 0:
            raise ValueError("max_batch must be ≥ 1 and max_wait_ms ≥ 0")
        self.check()

    def then(self, step: Step | Callable[[Batch], Batch], name: str | None = None) -> "Pipeline":
        """Append a step (a :class:`Step` or a function ``batch -> batch``); returns the pipeline."""
        self.steps.append(step if isinstance(step, Step) else FunctionStep(step, name))
        self.check()
        return self

    def check(self) -> None:
        """Refuse what cannot run (:meth:`problems`): raises ValueError with the first problem."""
        problems = self.problems()
        if problems:
            raise ValueError(problems[0] if len(problems) == 1 else
                             f"{problems[0]} (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''}: "
                             f"`tidal check` lists them)")

    def problems(self) -> list[str]:
        """Everything that cannot run, one message each: two steps declaring the same state
        name; a step that reads a field neither the schema nor an earlier step provides (a
        model whose feature the events lack would otherwise score NaN, or fail every batch), or
        one of the wrong type (a categorical feature the schema has as a number, or the
        reverse); and what each step's own :meth:`~tidal.stream.step.Step.check` finds. A
        non-step raises TypeError."""
        for step in self.steps:
            if not isinstance(step, Step):
                raise TypeError(f"{step!r} is not a tidal Step (wrap a function with FunctionStep)")
        out: list[str] = []
        seen: dict[str, str] = {}
        types = self.schema_types()
        for step, known in zip(self.steps, self.fields_before()):
            if known is not None:
                missing = [f for f in step.reads() if f not in known]
                if missing:
                    out.append(f"step {step.name!r} reads {', '.join(map(repr, missing))}, which the events "
                               f"of pipeline {self.name!r} do not have (schema: {', '.join(self.schema.names)})"
                               + _closest(missing[0], known))
                for f, want in step.read_types().items():
                    if types_clash(types.get(f), want):
                        out.append(f"step {step.name!r} needs {f!r} as {want}, but the schema of pipeline "
                                   f"{self.name!r} has it as {types[f]}")
            out.extend(f"step {step.name!r}: {p}" for p in step.check())
            if step.state_name:
                if step.state_name in seen:
                    out.append(f"steps {seen[step.state_name]!r} and {step.name!r} both declare state "
                               f"{step.state_name!r}: give one a name of its own (name=...)")
                seen[step.state_name] = step.name
        return out

    def schema_types(self) -> dict[str, str]:
        """The schema's field types by name (empty without a schema)."""
        return {f.name: f.type for f in self.schema.fields} if self.schema is not None else {}

    def fields_before(self) -> list[set[str] | None]:
        """The fields each step gets: the schema's and those earlier steps add (None: unknown,
        without a schema or after a step that does not say what it adds)."""
        known: set[str] | None = set(self.schema.names) if self.schema is not None else None
        out: list[set[str] | None] = []
        for step in self.steps:
            out.append(None if known is None else set(known))
            added = step.adds() if known is not None else None
            known = None if added is None or known is None else known | set(added)
        return out

    def changelog(self, step: Step) -> str:
        """The compacted topic that backs ``step``'s state: ``<pipeline>.<state_name>.changelog``."""
        return f"{self.name}.{step.state_name}.changelog"

    def side_outputs(self) -> list[str]:
        """Every topic the steps declared they write, in step order."""
        return list(dict.fromkeys(t for s in self.steps for t in s.outputs(self.name)))

    def topic_specs(self) -> list[TopicSpec]:
        """The topics this pipeline reads and writes, for :func:`tidal.broker.topics.ensure_topics`
        (changelog topics are made by the worker, co-partitioned with the source)."""
        specs = [TopicSpec(t, self.partitions) for t in self.sources]
        specs += [TopicSpec(self.sink, self.partitions), TopicSpec(self.dlq, 1)]
        specs += [topic_spec(t, 1) for t in self.side_outputs()]
        return specs

    def process(self, batch: Batch, timer: Callable[[str, float], None] | None = None) -> Batch:
        """Run every step over one decoded batch and add the source position."""
        out = run_steps(self.steps, batch, timer)
        return with_source(out) if len(out) and self.lineage else out

    def replay(self, settings: Any, start: dict[int, int] | None = None,
               end: dict[int, int] | None = None) -> "Iterator[Batch]":
        """Run this pipeline's steps over a replay of its source topic, without producing anything.

        Training features come from here: the same decoder and the same step code as the live
        stream, so training and serving features cannot drift apart. Use a fresh pipeline
        (fresh step state) for a replay.
        """
        from tidal.stream.replay import replay

        for batch in replay(settings, self.sources[0], self.schema, start, end):
            yield self.process(batch)

    def open_local(self) -> SideOutputs:
        """Give every step a context without Kafka (as :meth:`test` does); returns where their
        side outputs collect."""
        from tidal.stream.state import StateStore

        sink = SideOutputs()
        for step in self.steps:
            store = step.state_store
            if store is None and step.state_name:  # in memory: no changelog without Kafka
                store = StateStore(step.state_name, self.changelog(step))
            ctx = StepContext(self.name, step=step.name, topics=step.outputs(self.name), sink=sink, store=store)
            step.bind(ctx)
            step.open(ctx)
        return sink

    def test(self, values: Sequence[bytes], topic: str | None = None,
             side: list[SideRecord] | None = None, headers: Sequence[Any] | None = None) -> tuple[list[bytes], list[Reject]]:
        """Run the pipeline over raw message values in memory, no Kafka: (outputs, rejects).

        Steps that were not opened yet are opened without a cluster; their side outputs are
        appended to ``side`` when given; ``headers[i]`` are value *i*'s record headers.
        """
        from tidal.stream.decode import decode_values

        sink = self.open_local() if any(s.ctx is None for s in self.steps) else \
            (self.steps[0].ctx.sink if self.steps else SideOutputs())
        out = self.process(decode_values(values, self.schema, topic or self.sources[0], headers))
        records = sink.take()
        if side is not None:
            side.extend(records)
        return encode_outputs(out), out.rejected


def _closest(name: str, known: set[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""
