"""Pipelines declared in YAML, for ``tidal run pipeline.yaml``.

.. code-block:: yaml

    pipeline: fraud                 # topics default to fraud.events → fraud.predictions, fraud.dlq
    schema:                         # field: type (float, int, str, bool) or {type:, required:}
      amount: float
      merchant_category: str
    steps:
      - score: {model: models/fraud-v1, threshold: 0.5}   # a fixed model folder (relative to this file)
      # or: - deployed: {model: fraud}                   # follow tidal.models: hot-swap, canary, shadow
      - explain: {sample: 0.001, k: 3}                     # top-k contributions on 0.1% of rows
      - window: {key: card_id, time_field: ts, window_s: 3600, aggs: {spend_1h: [amount, sum]}}
      - sliding: {key: card_id, time_field: ts, window_s: 600, aggs: {n_10m: [amount, count]}}
      - session: {key: card_id, time_field: ts, gap_s: 1800, lateness_s: 60,
                  aggs: {merchants: [merchant_category, distinct], p90: [amount, "mypackage.reducers:P90"]}}
      - python: mypackage.steps:flag_large                 # a Step class or a batch -> batch function
        args: {limit: 1000}
    batch: {max_batch: 5000, max_wait_ms: 0}               # 0: no wait, batches grow with the load
    exactly_once: false
    kafka: {consumer: {}, producer: {}}                    # extra librdkafka settings
    state: {backend: rocksdb, path: state}                 # window state in RocksDB (default: memory)
    alerts:                                                # rules on any metric → tidal.alerts
      - {name: dlq_burst, metric: tidal_dlq_total, rate: "> 5", window_s: 30}
      - {name: stalled, metric: tidal_events_in_total, absent_for_s: 120, severity: critical}

>>> p = from_dict({"pipeline": "t", "schema": {"x": "float"}, "batch": {"max_batch": 10}})
>>> p.sources, p.sink, p.max_batch, p.schema.names
(['t.events'], 't.predictions', 10, ['x'])
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from functools import lru_cache
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any, Mapping

import yaml

from tidal.stream.pipeline import Pipeline
from tidal.stream.schema import Schema
from tidal.stream.step import FunctionStep, Step

__all__ = ["load_pipeline", "from_dict", "step_types", "STEPS_GROUP"]

#: Entry point group of the YAML step types. The package that owns a step registers it:
#: ``score = "tidal.models.score:from_spec"``; the factory is called as
#: ``factory(args, base=<folder of the YAML file>, kind=<type>, previous=<steps so far>)``.
STEPS_GROUP = "tidal.steps"

_KNOWN = {"pipeline", "name", "source", "sources", "sink", "dlq", "group", "schema", "steps", "batch",
          "exactly_once", "partitions", "kafka", "alerts", "state"}


@lru_cache(maxsize=1)
def step_types() -> dict[str, EntryPoint]:
    """The registered YAML step types, by name (loaded only when a pipeline uses one)."""
    return {ep.name: ep for ep in entry_points(group=STEPS_GROUP)}


def _python(target: str, args: Mapping[str, Any]) -> Step:
    module, _, attr = str(target).partition(":")
    if not attr:
        raise ValueError(f"python step {target!r}: expected 'module:attribute'")
    obj: Any = getattr(importlib.import_module(module), attr)
    if inspect.isclass(obj):
        return obj(**args)
    if args:
        obj = obj(**args)  # a factory returning a step or a function
    return obj if isinstance(obj, Step) else FunctionStep(obj, name=attr)


def _step(entry: Mapping[str, Any], base: Path, previous: list[Step]) -> Step:
    entry = dict(entry)
    if "python" in entry:
        extra = sorted(set(entry) - {"python", "args"})
        if extra:
            raise ValueError(f"python step {entry['python']!r}: unknown key {extra[0]!r}{_did_you_mean(extra[0], ['args'])}; "
                             f"its options go under args:")
        return _python(entry["python"], entry.get("args") or {})
    types = step_types()
    if len(entry) != 1 or next(iter(entry)) not in types:
        raise ValueError(f"unknown step {entry!r}{_did_you_mean(next(iter(entry), ''), types)}; use one of "
                         f"{sorted(types)} or 'python: module:attr'")
    kind, args = next(iter(entry.items()))
    if args is None or args is True:  # `- validate:` or `- validate: true`: the step with its defaults
        args = {}
    if not isinstance(args, Mapping):
        raise ValueError(f"step `{kind}`: options must be a mapping, not {args!r}")
    factory = types[kind].load()
    try:
        return factory(dict(args), base=base, kind=kind, previous=previous)
    except TypeError as exc:  # a misspelt option: say which, and what was meant
        raise ValueError(f"step `{kind}`: {_option_error(exc)}") from None


def _option_error(exc: TypeError) -> str:
    """``X.__init__() got an unexpected keyword argument 'treshold'`` → a sentence with the
    closest option names of X (found in the frame that made the call)."""
    import difflib
    import re

    text = str(exc)
    m = re.search(r"(\w+)\.(\w+)\(\) got an unexpected keyword argument '(\w+)'", text)
    if not m:
        return text
    cls_name, method, bad = m.groups()
    classes: list[Any] = []  # every constructor on the way (a step passes extra options on to its detector)
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        own = frame.f_locals.get("self")
        named = frame.f_locals.get(cls_name) or frame.f_globals.get(cls_name)
        if named is not None and method != "__init__":
            named = getattr(named, method, None)
        for c in (type(own) if own is not None and frame.f_code.co_name == "__init__" else None, named):
            if (inspect.isclass(c) or inspect.ismethod(c) or inspect.isfunction(c)) and c not in classes:
                classes.append(c)
        tb = tb.tb_next
    options: list[str] = []
    for c in classes:
        try:
            names = inspect.signature(c).parameters
        except (TypeError, ValueError):
            continue
        options += [p for p, v in names.items() if v.kind not in (v.VAR_KEYWORD, v.VAR_POSITIONAL) and p not in options]
    close = difflib.get_close_matches(bad, options, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown option {bad!r}{hint}" + (f"; options: {', '.join(options)}" if options else "")


def _did_you_mean(bad: Any, known: Any) -> str:
    close = difflib.get_close_matches(str(bad), [str(k) for k in known], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _int(section: Mapping[str, Any], key: str, default: int, where: str) -> int:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().lstrip("-").isdigit():
        raise ValueError(f"{where}{key} must be a whole number, not {value!r}")
    return int(value)


def _bool(section: Mapping[str, Any], key: str, default: bool) -> bool:
    value = section.get(key, default)
    if not isinstance(value, bool):  # "false" (quoted) would otherwise be true
        raise ValueError(f"{key} must be true or false (unquoted), not {value!r}")
    return value


def _steps(entries: list[Mapping[str, Any]], base: Path) -> list[Step]:
    steps: list[Step] = []
    for entry in entries:
        steps.append(_step(entry, base, steps))
    return steps


def _state(steps: list[Step], state: Mapping[str, Any], name: str, base: Path) -> None:
    """``state: {backend: rocksdb, path: state}``: the backend of every stateful step that names none.

    ``path`` (relative to the YAML file; default ``$TIDAL_HOME/state/<pipeline>``) holds the
    scratch databases; the changelog topics stay the record of truth. ``dir`` (relative to the
    YAML file too): a persistent folder instead, where ``rocksdb`` databases outlive restarts
    with a checkpoint, so a restart on the same host replays only the changelog's tail (``dir``
    alone means ``backend: rocksdb``; with ``memory`` it is an error).
    """
    from tidal.broker.embedded import tidal_home
    from tidal.stream.state import BACKENDS

    unknown = set(state) - {"backend", "path", "dir"}
    if unknown:
        raise ValueError(f"unknown state keys {sorted(unknown)}; known: ['backend', 'path', 'dir']")
    backend = state.get("backend", "rocksdb" if state.get("dir") else "memory")  # a folder to keep: RocksDB
    if backend not in BACKENDS:
        raise ValueError(f"unknown state backend {backend!r}; use one of {BACKENDS}")
    if state.get("dir") and backend != "rocksdb":
        raise ValueError(f"state.dir keeps RocksDB databases across restarts; backend {backend!r} keeps nothing "
                         f"on disk (use backend: rocksdb, or leave dir out)")
    path = Path(state["path"]) if state.get("path") else tidal_home() / "state" / name
    for step in steps:
        if step.state_name and step.state_backend is None:
            step.state_backend = backend
            if step.state_path is None:
                step.state_path = str(path if path.is_absolute() else base / path)
    if state.get("dir"):
        folder = Path(state["dir"])
        for step in steps:
            if step.state_name and getattr(step, "state_dir", None) is None:
                step.state_dir = str(folder if folder.is_absolute() else base / folder)


def from_dict(spec: Mapping[str, Any], base: str | Path = ".", check: bool = True) -> Pipeline:
    """A :class:`Pipeline` from the YAML structure above (``base``: folder for relative paths).

    ``check=False`` builds it without :meth:`Pipeline.check`, for :meth:`Pipeline.problems` to list
    every problem (``tidal check``)."""
    unknown = set(spec) - _KNOWN
    if unknown:
        raise ValueError(f"unknown pipeline keys {sorted(unknown)}{_did_you_mean(sorted(unknown)[0], _KNOWN)}; "
                         f"known: {sorted(_KNOWN)}")
    name = spec.get("pipeline") or spec.get("name")
    if not name:
        raise ValueError("a pipeline needs a name: `pipeline: <name>`")
    base = Path(base)
    sources = spec.get("sources") or spec.get("source")
    batch = spec.get("batch") or {}
    kafka = spec.get("kafka") or {}
    for section, have, known in (("batch", batch, ("max_batch", "max_wait_ms")), ("kafka", kafka, ("consumer", "producer"))):
        unknown = set(have) - set(known)
        if unknown:
            raise ValueError(f"unknown {section} keys {sorted(unknown)}{_did_you_mean(sorted(unknown)[0], known)}; "
                             f"known: {list(known)}")
    steps = _steps(spec.get("steps") or [], base)
    if spec.get("state"):
        _state(steps, spec["state"], name, base)
    pipeline = Pipeline(
        name=name,
        steps=[],
        schema=Schema.from_dict(spec["schema"]) if spec.get("schema") else None,
        sources=[sources] if isinstance(sources, str) else sources,
        sink=spec.get("sink"),
        dlq=spec.get("dlq"),
        group=spec.get("group"),
        max_batch=_int(batch, "max_batch", 5000, "batch."),
        max_wait_ms=_int(batch, "max_wait_ms", 0, "batch."),
        exactly_once=_bool(spec, "exactly_once", False),
        partitions=_int(spec, "partitions", 4, ""),
        consumer_config=dict(kafka.get("consumer") or {}),
        producer_config=dict(kafka.get("producer") or {}),
        alerts=[dict(a) for a in spec.get("alerts") or []],  # read by the worker's hooks (the monitor)
    )
    pipeline.steps = steps
    if check:
        pipeline.check()
    return pipeline


def load_pipeline(path: str | Path, check: bool = True) -> Pipeline:
    """Read a pipeline YAML file (``check``: as :func:`from_dict`)."""
    path = Path(path)
    spec = yaml.safe_load(path.read_text())
    if not isinstance(spec, Mapping):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return from_dict(spec, path.parent, check)
