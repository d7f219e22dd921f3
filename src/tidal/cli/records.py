"""``tidal tail``, ``tidal produce`` and ``tidal dlq replay``: look at records, feed sample
events, and send fixed dead letters back through their pipeline.

Registered on the main app by :func:`register` (one call in ``tidal.cli.main``).

``--where`` takes a Python-like expression over a record's fields. It is parsed with
:mod:`ast` and *interpreted* here, never passed to ``eval``: only comparisons, ``and``/
``or``/``not``, field names (``a.b`` and ``a["b"]`` reach into nested objects) and constants
(numbers, strings, ``True``/``False``/``None``, lists or tuples of them for ``in``).

>>> w = Where.parse('score > 0.9 and merchant == "fuel"')
>>> w.matches({"score": 0.95, "merchant": "fuel"}), w.matches({"score": 0.5, "merchant": "fuel"})
(True, False)
>>> Where.parse("__import__('os')")
Traceback (most recent call last):
...
ValueError: a function call is not allowed (column 1); use comparisons, and/or/not, field names and constants
"""

from __future__ import annotations

import ast
import importlib
import operator
import os
import shutil
import signal
import sys
import time
import uuid
from collections import Counter, deque
from datetime import datetime
from typing import Any, Callable, Iterable, Optional

import orjson
import typer

__all__ = ["register", "Where", "dlq_app", "REPLAY_HEADER", "replay_group"]

BootstrapOpt = typer.Option(None, "--bootstrap", "-b", envvar="TIDAL_BOOTSTRAP_SERVERS",
                            help="Kafka bootstrap servers (default: the running embedded broker).")
KafkaConfigOpt = typer.Option(None, "--kafka-config", envvar="TIDAL_KAFKA_CONFIG",
                              help="librdkafka .properties file (SASL, TLS, ...).")

REPLAY_HEADER = "tidal.replayed-from"
DLQ_SUFFIX = ".dlq"

dlq_app = typer.Typer(no_args_is_help=True, help="Dead letters: replay them, fixed, to their pipeline.")


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _settings(bootstrap: Optional[str], kafka_config: Optional[str]) -> Any:
    from tidal.cli.main import settings_or_exit  # not at import time: main imports this module

    return settings_or_exit(bootstrap, kafka_config)


# -- --where: a safe expression over a record's fields ------------------------------------------
class _Missing(Exception):
    """A name the record does not have: the record does not match."""


_COMPARE: dict[type, Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge, ast.Is: operator.is_, ast.IsNot: operator.is_not,
    ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
}
_WHAT = {ast.Call: "a function call", ast.Lambda: "a lambda", ast.BinOp: "arithmetic",
         ast.NamedExpr: "an assignment", ast.IfExp: "a conditional expression",
         ast.ListComp: "a comprehension", ast.GeneratorExp: "a comprehension", ast.DictComp: "a comprehension",
         ast.SetComp: "a comprehension", ast.JoinedStr: "an f-string", ast.Dict: "a dict", ast.Await: "await"}


class Where:
    """A ``--where`` expression, checked when parsed; :meth:`matches` interprets it on a record."""

    def __init__(self, text: str, tree: ast.expr) -> None:
        self.text, self.tree = text, tree

    @classmethod
    def parse(cls, text: str) -> "Where":
        """Raises ValueError (one line) for a syntax error or anything but the allowed nodes."""
        try:
            tree = ast.parse(text.strip(), mode="eval").body
        except SyntaxError as exc:
            raise ValueError(f"not an expression: {exc.msg} (column {exc.offset})") from None
        cls._check(tree)
        return cls(text, tree)

    @classmethod
    def _check(cls, node: ast.AST) -> None:
        ok = False
        if isinstance(node, ast.BoolOp):
            ok = True
        elif isinstance(node, ast.UnaryOp):
            ok = isinstance(node.op, (ast.Not, ast.USub, ast.UAdd))
        elif isinstance(node, ast.Compare):
            ok = all(type(op) in _COMPARE for op in node.ops)
        elif isinstance(node, ast.Name):
            ok = isinstance(node.ctx, ast.Load) and not node.id.startswith("__")
        elif isinstance(node, ast.Constant):
            ok = isinstance(node.value, (str, int, float, bool, type(None)))
        elif isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            ok = True
        elif isinstance(node, ast.Attribute):  # a.b: the field b of the object in field a
            ok = not node.attr.startswith("_") and isinstance(node.value, (ast.Name, ast.Attribute, ast.Subscript))
        elif isinstance(node, ast.Subscript):  # a["b"], a[0]
            ok = isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, (str, int))
        if not ok:
            what = _WHAT.get(type(node))
            if what is None and isinstance(node, ast.Name):
                what = f"the name {node.id!r}"
            what = what or f"{type(node).__name__}"
            col = getattr(node, "col_offset", 0) + 1
            raise ValueError(f"{what} is not allowed (column {col}); "
                             "use comparisons, and/or/not, field names and constants")
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.expr_context, ast.boolop, ast.cmpop, ast.unaryop)):
                continue
            cls._check(child)

    def matches(self, fields: dict[str, Any]) -> bool:
        """Whether the record matches; a missing field or incomparable values do not match."""
        try:
            return bool(self._eval(self.tree, fields))
        except (_Missing, TypeError, ValueError):
            return False

    def _eval(self, node: ast.AST, f: dict[str, Any]) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            if node.id in f:
                return f[node.id]
            if node.id in ("true", "false", "null"):  # JSON spellings
                return {"true": True, "false": False, "null": None}[node.id]
            raise _Missing(node.id)
        if isinstance(node, ast.BoolOp):
            if isinstance(node.op, ast.And):
                return all(self._eval(v, f) for v in node.values)
            return any(self._eval(v, f) for v in node.values)
        if isinstance(node, ast.UnaryOp):
            v = self._eval(node.operand, f)
            if isinstance(node.op, ast.Not):
                return not v
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError("not a number")
            return -v if isinstance(node.op, ast.USub) else +v
        if isinstance(node, ast.Compare):
            left = self._eval(node.left, f)
            for op, comp in zip(node.ops, node.comparators):
                right = self._eval(comp, f)
                if not _COMPARE[type(op)](left, right):
                    return False
                left = right
            return True
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            return [self._eval(e, f) for e in node.elts]
        if isinstance(node, ast.Attribute):
            obj = self._eval(node.value, f)
            if isinstance(obj, dict) and node.attr in obj:
                return obj[node.attr]
            raise _Missing(node.attr)
        if isinstance(node, ast.Subscript):
            obj, k = self._eval(node.value, f), node.slice.value  # type: ignore[attr-defined]
            try:
                return obj[k]
            except (KeyError, IndexError, TypeError):
                raise _Missing(str(k)) from None
        raise TypeError(type(node).__name__)  # _check let nothing else through


# -- decoding and showing records -------------------------------------------------------------------
def _text(b: bytes | None) -> str | None:
    return None if b is None else b.decode("utf-8", "replace")


class Shown:
    """One record, decoded for display: ``value`` is the JSON value, or None with ``raw`` set."""

    __slots__ = ("msg", "value", "raw", "headers", "decoded")

    def __init__(self, msg: Any, dlq: bool) -> None:
        self.msg = msg
        v = msg.value()
        self.raw: str | None = None
        self.decoded = True
        self.value: Any = None
        if v is not None:
            try:
                self.value = orjson.loads(v)
            except orjson.JSONDecodeError:
                self.decoded, self.raw = False, repr(v)
        self.headers = {k: _text(h) for k, h in (msg.headers() or [])} if dlq else None

    @property
    def timestamp(self) -> int:
        return self.msg.timestamp()[1]

    def fields(self) -> dict[str, Any]:
        m = self.msg
        meta: dict[str, Any] = {"key": _text(m.key()), "partition": m.partition(), "offset": m.offset(),
                                "timestamp": self.timestamp, "topic": m.topic()}
        if self.headers is not None:
            h = self.headers
            meta.update(reason=h.get("tidal.error.reason"), message=h.get("tidal.error.message"),
                        step=h.get("tidal.error.step"), source_topic=h.get("tidal.source.topic"))
        out = {f"_{k}": v for k, v in meta.items()}  # always there, under _NAME
        out.update(meta)
        if isinstance(self.value, dict):
            out.update(self.value)  # the record's own fields win over the unprefixed names
        elif self.value is not None:
            out["value"] = self.value
        return out

    def as_json(self) -> bytes:
        m = self.msg
        o: dict[str, Any] = {"topic": m.topic(), "partition": m.partition(), "offset": m.offset(),
                             "timestamp": self.timestamp, "key": _text(m.key()), "value": self.value}
        if not self.decoded:
            o["raw"] = self.raw
        if self.headers is not None:
            o["headers"] = self.headers
        return orjson.dumps(o, option=orjson.OPT_NON_STR_KEYS)


def _cut(s: str, width: int) -> str:
    s = s.replace("\n", " ").replace("\r", " ")
    if width <= 0:
        return ""
    return s if len(s) <= width else s[: max(0, width - 1)] + "…"


class Columns:
    """Aligned plain-text columns that fit the terminal; the last column takes what is left."""

    def __init__(self, dlq: bool, width: int | None = None) -> None:
        self.dlq = dlq
        self.width = width or shutil.get_terminal_size((120, 24)).columns
        if dlq:
            self.cols = [("P:OFFSET", 10), ("TIME", 19), ("REASON", 15), ("SOURCE", 22), ("MESSAGE", 0), ("VALUE", 0)]
        else:
            self.cols = [("P:OFFSET", 10), ("TIME", 19), ("KEY", 14), ("VALUE", 0)]
        if self.width < 80:  # narrow: no time column
            self.cols = [c for c in self.cols if c[0] != "TIME"]
        fixed = sum(w + 1 for _, w in self.cols if w)
        flex = [c for c, w in self.cols if not w]
        left = max(10 * len(flex), self.width - fixed)
        if len(flex) == 2:  # the dead letter's message gets 45%, its value the rest
            first = int(left * 0.45)
            self.widths = {flex[0]: first - 1, flex[1]: left - first}
        else:
            self.widths = {flex[0]: left}

    def _line(self, cells: dict[str, str]) -> str:
        parts = []
        for i, (name, w) in enumerate(self.cols):
            w = w or self.widths[name]
            cell = _cut(cells.get(name, ""), w)
            parts.append(cell if i == len(self.cols) - 1 else cell.ljust(w))
        return " ".join(parts).rstrip()

    def header(self) -> str:
        return self._line({name: name for name, _ in self.cols})

    def row(self, r: Shown) -> str:
        m = r.msg
        ts = r.timestamp
        when = datetime.fromtimestamp(ts / 1000).strftime("%Y-%m-%d %H:%M:%S") if ts and ts > 0 else ""
        if r.decoded:
            value = "null" if m.value() is None else orjson.dumps(r.value).decode()
        else:
            value = f"(raw) {r.raw}"
        cells = {"P:OFFSET": f"{m.partition()}:{m.offset()}", "TIME": when, "KEY": _text(m.key()) or "",
                 "VALUE": value}
        if r.headers is not None:
            h = r.headers
            src = h.get("tidal.source.topic")
            cells.update(REASON=h.get("tidal.error.reason") or "", MESSAGE=h.get("tidal.error.message") or "",
                         SOURCE=f"{src}:{h.get('tidal.source.partition')}:{h.get('tidal.source.offset')}" if src else "")
        return self._line(cells)


def _topic_names(settings: Any) -> dict[str, list[int]]:
    from confluent_kafka.admin import AdminClient

    md = AdminClient(settings.client_config({"log_level": 0})).list_topics(timeout=10)
    return {name: sorted(t.partitions) for name, t in md.topics.items() if t.error is None}


def resolve_tail_topic(target: str, dlq: bool, topics: dict[str, list[int]]) -> str:
    """TARGET as a topic, or the pipeline's predictions (``--dlq``: its dead-letter) topic."""
    from tidal.broker.topics import PipelineTopics

    t = PipelineTopics(target)
    if dlq:
        for cand in (t.dlq, target if target.endswith(DLQ_SUFFIX) else None):
            if cand and cand in topics:
                return cand
        raise ValueError(f"no dead-letter topic {t.dlq} (is {target!r} a pipeline?)")
    for cand in (target, t.predictions):
        if cand in topics:
            return cand
    raise ValueError(f"no topic {target!r} and no pipeline predictions topic {t.predictions}")


def _reader(settings: Any, extra: dict[str, Any] | None = None) -> Any:
    from confluent_kafka import Consumer

    return Consumer(settings.client_config({
        "group.id": f"tidal.tail.{uuid.uuid4().hex[:12]}", "enable.auto.commit": False,
        "enable.auto.offset.store": False, "enable.partition.eof": True, "auto.offset.reset": "earliest",
        "isolation.level": "read_committed", "log_level": 3, **(extra or {})}))


def _close_soon(consumer: Any, timeout: float = 5.0) -> None:
    """Close a reader, giving up after ``timeout`` s: it committed nothing, so nothing is lost
    by not waiting, and Ctrl-C must end ``tail --follow`` even when the broker is slow to answer."""
    import threading

    t = threading.Thread(target=consumer.close, name="tidal-tail-close", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        typer.echo(f"the Kafka client did not close within {timeout:.0f} s; exiting without it", err=True)


class _Stop(Exception):
    pass


class _Fatal(Exception):
    pass


def tail(target: str = typer.Argument(..., metavar="TOPIC|PIPELINE",
                                      help="A topic, or a pipeline (its predictions topic; --dlq: its dead letters)."),
         dlq: bool = typer.Option(False, "--dlq", help="The pipeline's dead letters, with reason, message and source."),
         follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new records until Ctrl-C."),
         as_json: bool = typer.Option(False, "--json", help="One JSON object per record and line."),
         where: Optional[str] = typer.Option(None, "--where", "-w",
                                             help='Only records where this holds, e.g. \'score > 0.9 and merchant == "fuel"\'. '
                                                  "Names are the record's fields, and key, partition, offset, "
                                                  "timestamp (dead letters: reason, message, step), also as _key, ..."),
         from_beginning: bool = typer.Option(False, "--from-beginning", help="Every record from the start."),
         last: Optional[int] = typer.Option(None, "--last", "-n", min=0,
                                            help="The last N records (the default: 10; with --where the last N matching)."),
         max_records: Optional[int] = typer.Option(None, "--max", min=1, help="Stop after printing N records."),
         bootstrap: Optional[str] = BootstrapOpt, kafka_config: Optional[str] = KafkaConfigOpt) -> None:
    """Print a topic's or a pipeline's records, decoded; without --follow read to the end and exit."""
    from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

    if from_beginning and last is not None:
        _fail("--from-beginning and --last exclude each other")
    try:
        cond = Where.parse(where) if where else None
    except ValueError as exc:
        _fail(f"--where: {exc}")
    settings = _settings(bootstrap, kafka_config)
    try:
        topics = _topic_names(settings)
        topic = resolve_tail_topic(target, dlq, topics)
    except ValueError as exc:
        _fail(str(exc))
    show_dlq = dlq or topic.endswith(DLQ_SUFFIX)
    parts = topics[topic]
    n_last = None if from_beginning else (10 if last is None else last)

    consumer = _reader(settings)
    starts = []
    for p in parts:
        if n_last is None or cond is not None:  # --where with --last: the last N matching, from the start
            starts.append(TopicPartition(topic, p, OFFSET_BEGINNING))
        else:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            starts.append(TopicPartition(topic, p, max(low, high - n_last) if high >= 0 else OFFSET_BEGINNING))
    consumer.assign(starts)

    cols = None if as_json else Columns(show_dlq)
    out = sys.stdout
    printed = 0
    undecodable = 0

    def emit(r: Shown) -> None:
        nonlocal printed
        if as_json:
            out.write(r.as_json().decode() + "\n")
        else:
            if not printed:
                out.write(cols.header() + "\n")
            out.write(cols.row(r) + "\n")
        printed += 1
        if follow:
            out.flush()
        if max_records is not None and printed >= max_records:
            raise _Stop

    def take(msgs: Iterable[Any], eof: set[int] | None) -> list[Shown]:
        nonlocal undecodable
        keep = []
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    if eof is not None:
                        eof.add(m.partition())
                    continue
                if err.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
                    raise _Fatal(f"topic {topic} went away: {err.str()}")
                continue
            r = Shown(m, show_dlq)
            if not r.decoded:
                undecodable += 1
            if cond is None or cond.matches(r.fields()):
                keep.append(r)
        return keep

    stopping = False

    def on_term(*_: Any) -> None:
        nonlocal stopping
        stopping = True  # the loop ends even if a client call swallowed the exception
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, on_term) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        # up to the current end of every partition (partition EOF, not a high watermark: it can be short)
        eof: set[int] = set()
        window: deque[Shown] | None = deque(maxlen=n_last) if n_last is not None else None
        deadline = time.monotonic() + 60
        while len(eof) < len(parts) and time.monotonic() < deadline:
            for r in take(consumer.consume(500, 0.2), eof):
                if window is None:
                    emit(r)
                else:
                    window.append(r)  # keeps the last N (per topic, as read; sorted by time below)
        if window is not None:
            for r in sorted(window, key=lambda r: (r.timestamp, r.msg.partition(), r.msg.offset()))[-n_last:] \
                    if n_last else []:
                emit(r)
        out.flush()
        while follow and not stopping:
            for r in take(consumer.consume(500, 0.5), None):
                emit(r)
    except _Stop:
        pass
    except _Fatal as exc:
        _fail(str(exc), 1)
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        out.flush()
        _close_soon(consumer)
    if undecodable:
        typer.echo(f"{undecodable} record(s) were not JSON: shown raw", err=True)
    if not printed and not as_json:
        typer.echo(f"no records{' matching --where' if cond else ''} on {topic}", err=True)


# -- tidal produce ---------------------------------------------------------------------------------
def _key_bytes(v: Any) -> bytes | None:
    if v is None:
        return None
    if isinstance(v, str):
        return v.encode()
    if isinstance(v, (dict, list)):
        return orjson.dumps(v)
    return str(v).encode() if not isinstance(v, bool) else (b"true" if v else b"false")


def produce(topic: str = typer.Argument(..., help="The topic to write to (created when missing)."),
            file: str = typer.Argument(..., metavar="FILE|-", help="JSON Lines: one JSON object per line ('-': stdin)."),
            key: Optional[str] = typer.Option(None, "--key", "-k", help="Key each record by this field."),
            rate: Optional[float] = typer.Option(None, "--rate", min=0.001, help="At most N records per second."),
            bootstrap: Optional[str] = BootstrapOpt, kafka_config: Optional[str] = KafkaConfigOpt) -> None:
    """Produce sample events from a JSON Lines file or stdin; invalid lines are named and skipped."""
    from tidal.broker.produce import make_producer
    from tidal.broker.topics import ensure_topics, topic_spec

    if file == "-":
        stream = sys.stdin.buffer
    else:
        try:
            stream = open(file, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            _fail(f"{file}: {exc.strerror or exc}")
    settings = _settings(bootstrap, kafka_config)
    try:
        if topic not in _topic_names(settings):
            ensure_topics(settings, [topic_spec(topic)])
            typer.echo(f"created topic {topic}", err=True)
    except Exception as exc:  # noqa: BLE001 - an invalid name, no rights: one line
        _fail(f"cannot create topic {topic}: {exc}")

    failed: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(err.str())

    producer = make_producer(settings, {"linger.ms": 5, "on_delivery": delivered})
    name = "stdin" if file == "-" else file
    sent = bad = no_key = 0
    start = time.monotonic()
    interrupted = False
    try:
        for lineno, line in enumerate(stream, 1):
            s = line.strip()
            if not s:
                continue
            try:
                obj = orjson.loads(s)
            except orjson.JSONDecodeError as exc:
                bad += 1
                typer.echo(f"{name}:{lineno}: invalid JSON, skipped ({exc})", err=True)
                continue
            if not isinstance(obj, dict):
                bad += 1
                typer.echo(f"{name}:{lineno}: not a JSON object, skipped", err=True)
                continue
            k = None
            if key is not None:
                k = _key_bytes(obj.get(key))
                no_key += k is None
            if rate:
                wait = start + sent / rate - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            while True:
                try:
                    producer.produce(topic, s, k)
                    break
                except BufferError:
                    producer.poll(0.05)
            producer.poll(0)
            sent += 1
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    left = producer.flush(60)
    acked = sent - len(failed) - left
    extra = []
    if bad:
        extra.append(f"{bad} invalid line(s) skipped")
    if no_key:
        extra.append(f"{no_key} without a {key!r} field, produced without a key")
    typer.echo(f"produced {acked} record(s) to {topic}" + (f" ({'; '.join(extra)})" if extra else ""))
    if failed or left:
        _fail(f"{len(failed) + left} record(s) not acknowledged" + (f": {failed[0]}" if failed else ""), 1)
    if interrupted:
        raise typer.Exit(130)


# -- tidal dlq replay ------------------------------------------------------------------------------
def replay_group(pipeline: str, reason: str | None = None) -> str:
    """The consumer group that remembers how far the DLQ was replayed (per reason with --reason)."""
    g = f"tidal.dlq-replay.{pipeline}"
    return g if reason is None else f"{g}.reason.{reason}"


def _load_fix(spec: str) -> Callable[[bytes, dict], Optional[bytes]]:
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"--fix {spec!r}: expected module:function")
    if os.getcwd() not in sys.path:  # `tidal` (a console script) runs with its bin folder first, not the cwd
        sys.path.insert(0, os.getcwd())
    try:
        fn = getattr(importlib.import_module(module), attr)
    except ImportError as exc:
        raise ValueError(f"--fix {spec}: cannot import {module}: {exc}") from None
    except AttributeError:
        raise ValueError(f"--fix {spec}: {module} has no {attr}") from None
    if not callable(fn):
        raise ValueError(f"--fix {spec}: not a function")
    return fn


class _Counts:
    def __init__(self) -> None:
        self.by: dict[str, Counter] = {}

    def add(self, reason: str, what: str) -> None:
        self.by.setdefault(reason, Counter())[what] += 1

    def total(self, what: str) -> int:
        return sum(c[what] for c in self.by.values())


class _Committer:
    """Offsets of the replay group(s): in the transaction of the records replayed, or (nothing
    replayed in a unit: a transaction without records commits no offsets on every broker) as a
    plain commit."""

    def __init__(self, settings: Any, groups: list[str], producer: Any, dry_run: bool) -> None:
        from confluent_kafka import Consumer

        self.consumers = {g: Consumer(settings.client_config({"group.id": g, "enable.auto.commit": False,
                                                              "log_level": 3})) for g in groups}
        self.producer, self.dry_run = producer, dry_run
        self.in_txn = False

    def committed(self, group: str, topic: str, parts: list[int]) -> dict[int, int]:
        from confluent_kafka import TopicPartition

        got = self.consumers[group].committed([TopicPartition(topic, p) for p in parts], timeout=15)
        return {tp.partition: max(tp.offset, 0) for tp in got}

    def begin(self) -> None:
        if not self.in_txn and not self.dry_run:
            self.producer.begin_transaction()
            self.in_txn = True

    def commit(self, offsets: dict[str, dict[tuple[str, int], int]]) -> None:
        from confluent_kafka import TopicPartition

        if self.dry_run:
            return
        offsets = {g: o for g, o in offsets.items() if o}
        if self.in_txn:
            for g, o in offsets.items():
                self.producer.send_offsets_to_transaction([TopicPartition(t, p, x) for (t, p), x in o.items()],
                                                          self.consumers[g].consumer_group_metadata(), 30)
            self.producer.commit_transaction(60)
            self.in_txn = False
            return
        for g, o in offsets.items():
            self.consumers[g].commit(offsets=[TopicPartition(t, p, x) for (t, p), x in o.items()], asynchronous=False)

    def abort(self) -> None:
        if self.in_txn:
            self.producer.abort_transaction(30)
            self.in_txn = False

    def close(self) -> None:
        for c in self.consumers.values():
            c.close()


@dlq_app.command("replay")
def dlq_replay(pipeline: str = typer.Argument(..., help="The pipeline whose dead letters to replay."),
               reason: Optional[list[str]] = typer.Option(None, "--reason", "-r",
                                                          help="Only dead letters with this reason (repeatable)."),
               since: Optional[str] = typer.Option(None, "--since",
                                                   help="Only dead letters from this time on (ISO time, naive = UTC, or "
                                                        "epoch ms); older ones are passed over for good."),
               fix: Optional[str] = typer.Option(None, "--fix", metavar="MODULE:FUNCTION",
                                                 help="fix(value: bytes, headers: dict of str to str) -> bytes | None "
                                                      "(None: skip the dead letter)."),
               dry_run: bool = typer.Option(False, "--dry-run", help="Count what would be replayed; change nothing."),
               batch: int = typer.Option(500, min=1, help="Dead letters per transaction."),
               bootstrap: Optional[str] = BootstrapOpt, kafka_config: Optional[str] = KafkaConfigOpt) -> None:
    """Re-produce PIPELINE's dead letters (original key and value, or --fix's output) to its events
    topic, each exactly once: a transaction commits the replayed records with the position of the
    consumer group tidal.dlq-replay.PIPELINE, so running it again replays only newer dead letters.

    With --reason R the position is kept per reason (group tidal.dlq-replay.PIPELINE.reason.R), and
    a later replay without --reason passes over what a --reason run replayed."""
    from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from tidal.broker.topics import PipelineTopics
    from tidal.cli.learn import parse_time

    try:
        since_ms = parse_time(since)
    except ValueError:
        _fail(f"--since {since!r}: expected an ISO time (2024-05-01T12:00) or epoch milliseconds")
    try:
        fixer = _load_fix(fix) if fix else None
    except ValueError as exc:
        _fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - the fix module's own import failed
        _fail(f"--fix {fix}: importing it raised {type(exc).__name__}: {exc}")
    reasons = sorted(set(reason or []))
    settings = _settings(bootstrap, kafka_config)
    names = PipelineTopics(pipeline)
    topics = _topic_names(settings)
    if names.dlq not in topics:
        _fail(f"no dead-letter topic {names.dlq} (is {pipeline!r} a pipeline?)")
    if names.events not in topics:
        _fail(f"no events topic {names.events} to replay to (create it with `tidal topics create {pipeline}`)")
    dlq, events, parts = names.dlq, names.events, topics[names.dlq]

    main_group = replay_group(pipeline)
    groups = [main_group] + [replay_group(pipeline, r) for r in reasons]
    producer = None
    if not dry_run:
        producer = Producer(settings.client_config({
            "transactional.id": main_group,  # one replay of a pipeline at a time: a second one fences the first
            "enable.idempotence": True, "linger.ms": 5, "log_level": 3}))
        try:
            producer.init_transactions(30)
        except KafkaException as exc:
            _fail(f"cannot start a transaction on {settings.bootstrap}: {exc.args[0].str()}", 1)
    com = _Committer(settings, groups, producer, dry_run)
    done_main = com.committed(main_group, dlq, parts)
    done_reason: dict[str, dict[int, int]] = {}  # reason -> partition -> replayed up to (by a --reason run)

    def reason_done(r: str) -> dict[int, int]:
        if r not in done_reason:
            g = replay_group(pipeline, r)
            if g not in com.consumers:
                from confluent_kafka import Consumer

                com.consumers[g] = Consumer(settings.client_config({"group.id": g, "enable.auto.commit": False,
                                                                    "log_level": 3}))
            done_reason[r] = com.committed(g, dlq, parts)
        return done_reason[r]

    if reasons:
        starts = {p: min(max(done_main[p], reason_done(r)[p]) for r in reasons) for p in parts}
    else:
        starts = dict(done_main)
    reader = _reader(settings, {"group.id": main_group})
    reader.assign([TopicPartition(dlq, p, o) for p, o in starts.items()])
    total = 0
    for p in parts:
        _low, high = reader.get_watermark_offsets(TopicPartition(dlq, p), timeout=10)
        total += max(0, high - starts[p])

    counts = _Counts()
    position: dict[int, int] = {}  # partition -> next offset to read (everything below was seen)
    since_commit = 0
    console = Console(stderr=True)

    def commit() -> None:
        nonlocal since_commit
        offs: dict[str, dict[tuple[str, int], int]] = {}
        if reasons:
            for r in reasons:
                d = reason_done(r)
                offs[replay_group(pipeline, r)] = {(dlq, p): o for p, o in position.items() if o > d[p]}
        else:
            offs[main_group] = {(dlq, p): o for p, o in position.items() if o > done_main[p]}
        com.commit(offs)
        for p, o in position.items():
            if reasons:
                for r in reasons:
                    done_reason[r][p] = max(done_reason[r][p], o)
            else:
                done_main[p] = max(done_main[p], o)
        since_commit = 0

    eof: set[int] = set()
    error: str | None = None
    progress = Progress(TextColumn("replaying {task.fields[topic]}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, transient=True, disable=not console.is_terminal)
    try:
        with progress:
            task = progress.add_task("replay", total=total or None, topic=dlq)
            idle_deadline = time.monotonic() + 60
            while len(eof) < len(parts) and error is None:
                msgs = reader.consume(500, 0.2)
                if not msgs and time.monotonic() > idle_deadline:
                    console.print(f"warning: {dlq}: partitions {sorted(set(parts) - eof)} did not reach their end "
                                  "in 60 s; replayed what was read")
                    break
                for m in msgs:
                    err = m.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            eof.add(m.partition())
                        continue
                    idle_deadline = time.monotonic() + 60
                    p, x = m.partition(), m.offset()
                    headers = {k: _text(v) or "" for k, v in (m.headers() or [])}
                    r = headers.get("tidal.error.reason") or "(no reason)"
                    progress.advance(task)
                    if reasons:
                        if r not in reasons:
                            position[p] = x + 1
                            continue
                        if x < max(done_main[p], reason_done(r)[p]):
                            position[p] = x + 1
                            continue
                    elif x < reason_done(r)[p]:
                        counts.add(r, "already")  # replayed by an earlier --reason run
                        position[p] = x + 1
                        continue
                    ts = m.timestamp()[1]
                    if since_ms is not None and ts < since_ms:
                        counts.add(r, "older")
                        position[p] = x + 1
                        continue
                    value: bytes | None = m.value()
                    if fixer is not None:
                        try:
                            value = fixer(value, dict(headers))
                        except Exception as exc:  # noqa: BLE001 - stop here: what is before it is committed
                            error = f"--fix raised {type(exc).__name__} on dead letter dlq:{p}:{x}: {exc}"
                            break
                        if value is not None and not isinstance(value, (bytes, bytearray)):
                            error = (f"--fix returned {type(value).__name__} for dlq:{p}:{x}; "
                                     "expected bytes or None")
                            break
                        if value is None:
                            counts.add(r, "skipped")
                            position[p] = x + 1
                            continue
                    elif headers.get("tidal.error.truncated") == "true":
                        counts.add(r, "truncated")  # its value was cut to fit the DLQ: not the original
                        position[p] = x + 1
                        continue
                    if not dry_run:
                        com.begin()
                        while True:
                            try:
                                producer.produce(events, bytes(value) if value is not None else None, m.key(),
                                                 headers=[(REPLAY_HEADER, f"dlq:{p}:{x}".encode())])
                                break
                            except BufferError:
                                producer.poll(0.05)
                    counts.add(r, "replayed")
                    position[p] = x + 1
                    since_commit += 1
                    if since_commit >= batch:
                        commit()
            commit()
    except KafkaException as exc:
        com.abort()
        _fail(f"replay failed, its open transaction was aborted: {exc.args[0].str()}", 1)
    except KeyboardInterrupt:
        com.abort()
        typer.echo("interrupted: the open transaction was aborted; what was committed before stays", err=True)
        raise typer.Exit(130) from None
    finally:
        reader.close()
        com.close()
        if producer is not None:
            producer.flush(10)

    n = counts.total("replayed")
    verb = "would replay" if dry_run else "replayed"
    typer.echo(f"{verb} {n} dead letter(s) from {dlq} to {events}" + (" (dry run: nothing changed)" if dry_run else ""))
    labels = [("replayed", verb), ("skipped", "skipped by the fix"), ("older", "older than --since, passed over"),
              ("truncated", "truncated in the DLQ, passed over (replay them with --fix)"),
              ("already", "done before by a --reason run")]
    for r in sorted(counts.by):
        c = counts.by[r]
        typer.echo(f"  {r}: " + ", ".join(f"{c[k]} {label}" for k, label in labels if c[k]))
    if error:
        _fail(error, 1)


def register(app: typer.Typer) -> None:
    """``tidal tail``, ``tidal produce`` and ``tidal dlq replay`` on the main app."""
    app.command("tail")(tail)
    app.command("produce")(produce)
    app.add_typer(dlq_app, name="dlq")
