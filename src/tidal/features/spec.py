"""The YAML step types of :mod:`tidal.features` (registered as ``tidal.steps`` entry points).

``aggs`` as :func:`tidal.features.aggregates.normalize` reads them: ``name: [field, agg]``,
``name: [field, distinct, {lg_k: 14}]``, ``name: [field, "module:Reducer"]`` or
``name: {field: .., agg: ..}`` / ``{field: .., reducer: ..}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tidal.stream.step import Step

__all__ = ["windowed", "sql", "enrich"]


def windowed(args: dict, base: Any = None, kind: str = "window", previous: list | None = None) -> Step:
    """``window`` (tumbling/hopping), ``sliding`` and ``session`` aggregates per key; a step's own
    ``state_path`` / ``state_dir`` are relative to the YAML file, as the ``state`` section's are."""
    from tidal.features import SessionAggregate, SlidingAggregate, WindowAggregate

    cls = {"window": WindowAggregate, "sliding": SlidingAggregate, "session": SessionAggregate}[kind]
    for folder in ("state_path", "state_dir"):
        if args.get(folder) and base is not None and not Path(args[folder]).is_absolute():
            args[folder] = str(Path(base) / args[folder])
    return cls(args.pop("key"), dict(args.pop("aggs")), **args)


def sql(args: dict, base: Any = ".", kind: str = "sql", previous: list | None = None) -> Step:
    """``sql: {query: ..., models: {name: path}}`` (paths relative to the YAML file)."""
    from tidal.features.sql import SqlStep

    models = {k: str(v if Path(v).is_absolute() else Path(base) / v)
              for k, v in dict(args.pop("models", {}) or {}).items()}
    return SqlStep(args.pop("query"), models=models, **args)


def enrich(args: dict, base: Any = None, kind: str = "enrich", previous: list | None = None) -> Step:
    """``enrich: {table: <topic>, key: .., fields: [..]}``: join a compacted table topic."""
    from tidal.features.enrich import TableJoin

    return TableJoin(args.pop("table"), args.pop("key"), args.pop("fields"), **args)
