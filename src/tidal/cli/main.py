"""``tidal``: run pipelines on Kafka, manage the embedded broker, run the demos."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from tidal.cli.bench import bench
from tidal.cli.connect import ingest_app, sink_app
from tidal.cli.dashboard import dashboard
from tidal.cli.learn import register as register_learn
from tidal.cli.mlflow_cmds import register as register_mlflow
from tidal.cli.models import models_app
from tidal.cli.quality import demo_network, quality_app
from tidal.cli.serve import convert_cmd, serve_app
from tidal.config import BrokerUnreachable, KafkaSettings

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="tidal: real-time machine learning on Apache Kafka.")
broker_app = typer.Typer(no_args_is_help=True, help="The embedded Kafka-compatible broker (Tansu, in-memory storage).")
topics_app = typer.Typer(no_args_is_help=True, help="Create a pipeline's topics.")
demo_app = typer.Typer(no_args_is_help=True, help="Runnable end-to-end demos.")
app.add_typer(broker_app, name="broker")
app.add_typer(topics_app, name="topics")
app.add_typer(demo_app, name="demo")
app.add_typer(models_app, name="models")
app.add_typer(serve_app)  # `tidal serve`, `tidal convert`
models_app.command("convert")(convert_cmd)  # also as `tidal models convert`, as the registry's users expect
register_mlflow(models_app)  # `tidal models import`, `tidal models export --mlflow`
app.add_typer(quality_app, name="quality")
app.add_typer(ingest_app, name="ingest")
app.add_typer(sink_app, name="sink")
demo_app.command("network")(demo_network)
app.command("dashboard")(dashboard)
app.command("bench")(bench)
register_learn(app, demo_app)  # `tidal train`, `tidal learn`, `tidal demo maintenance|sentiment`
from tidal.cli.records import register as register_records  # noqa: E402
register_records(app)  # `tidal tail`, `tidal produce`, `tidal dlq replay`
from tidal.cli.check import check as check_command  # noqa: E402
app.command("check")(check_command)

BootstrapOpt = typer.Option(None, "--bootstrap", "-b", envvar="TIDAL_BOOTSTRAP_SERVERS",
                            help="Kafka bootstrap servers (default: the running embedded broker).")
KafkaConfigOpt = typer.Option(None, "--kafka-config", envvar="TIDAL_KAFKA_CONFIG",
                              help="librdkafka .properties file (SASL, TLS, ...).")


def spec_or_exit(spec: Path) -> None:
    """Check the pipeline now (as `tidal check`): each problem is one line, then exit 2, not a traceback."""
    from tidal.cli.check import check_spec

    report = check_spec(spec)  # what `tidal check` reports: every problem, one line each
    for w in report.warnings:
        typer.echo(f"warning: {spec}: {w}", err=True)
    if report.errors:
        for e in report.errors:
            typer.echo(f"error: {spec}: {e}", err=True)
        if len(report.errors) > 1:
            typer.echo(f"({len(report.errors)} problems: not started)", err=True)
        raise typer.Exit(2)


def settings_or_exit(bootstrap: Optional[str], kafka_config: Optional[str]) -> KafkaSettings:
    """Resolve Kafka settings, or print how to get a broker and exit 2."""
    from tidal.broker.embedded import wait_ready

    try:
        settings = KafkaSettings.resolve(bootstrap, kafka_config)
        wait_ready(settings.bootstrap, timeout=5, extra=dict(settings.extra))
        return settings
    except BrokerUnreachable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def version() -> None:
    """Print tidal's version."""
    from tidal import __version__

    typer.echo(__version__)


def _free_or_zero(port: int) -> int:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return 0
    return port


def _republish(bootstrap: str) -> None:
    """The broker's storage is in memory: publish the default registry's current deployments to
    the new ``tidal.models`` so followers find their models again."""
    import os

    from tidal.broker.embedded import tidal_home
    from tidal.registry import KafkaPublisher, Registry, RegistryError

    root = Path(os.environ.get("TIDAL_REGISTRY", tidal_home() / "registry"))
    if not (root / "registry.db").exists():
        return
    try:
        reg = Registry(root, KafkaPublisher(KafkaSettings(bootstrap)))
        names = [m.name for m in reg.list_models()]
    except Exception:  # noqa: BLE001 - no registry yet: nothing to publish
        return
    done = []
    for name in names:
        try:
            reg.republish(name)
            done.append(name)
        except RegistryError:  # registered, never deployed
            continue
        except Exception as exc:  # noqa: BLE001 - the broker is up; say what did not go
            typer.echo(f"warning: could not republish {name}: {exc}", err=True)
    if done:
        typer.echo(f"republished the registry's deployments of {', '.join(done)} to tidal.models")
    reg.publisher.close()


@broker_app.command("start")
def broker_start(port: int = typer.Option(0, help="Port on 127.0.0.1 (0: a free one)."),
                 foreground: bool = typer.Option(False, help="Stay attached; Ctrl-C stops it.")) -> None:
    """Start the embedded broker (topics live in memory: a restart loses them)."""
    from tidal.broker.embedded import EmbeddedBroker, running_broker, tidal_home

    state = running_broker()
    if state is not None:
        typer.echo(f"already running: {state.bootstrap} (pid {state.pid})")
        return
    last = tidal_home() / "broker.last-port"  # the same port as last time, when free: running workers reconnect
    if not port and last.exists():
        port = _free_or_zero(int(last.read_text() or 0))
    broker = EmbeddedBroker(port or None, log_path=tidal_home() / "broker.log", detach=not foreground)
    try:
        broker.start()
    except BrokerUnreachable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    broker.state().save()
    last.parent.mkdir(parents=True, exist_ok=True)
    last.write_text(str(broker.port))
    typer.echo(f"embedded broker on {broker.bootstrap} (pid {broker.process.pid}); storage is in memory")
    _republish(broker.bootstrap)
    if foreground:
        try:
            broker.process.wait()
        except KeyboardInterrupt:
            broker.stop()
        finally:
            from tidal.broker.embedded import BrokerState

            BrokerState.path().unlink(missing_ok=True)


@broker_app.command("stop")
def broker_stop() -> None:
    """Stop the embedded broker started by `tidal broker start`."""
    from tidal.broker.embedded import BrokerState, running_broker, stop_pid

    state = running_broker()
    if state is None:
        typer.echo("no embedded broker running")
        BrokerState.path().unlink(missing_ok=True)
        return
    stop_pid(state.pid, timeout=2.0)
    BrokerState.path().unlink(missing_ok=True)
    typer.echo(f"stopped the broker on {state.bootstrap}")


@broker_app.command("status")
def broker_status() -> None:
    """Say whether the embedded broker runs and answers (exit 1 if not)."""
    from tidal.broker.embedded import running_broker, wait_ready

    state = running_broker()
    if state is None:
        typer.echo("no embedded broker running (start one with `tidal broker start`)")
        raise typer.Exit(1)
    try:
        wait_ready(state.bootstrap, timeout=5)
    except BrokerUnreachable:
        typer.echo(f"broker process {state.pid} is alive but {state.bootstrap} does not answer")
        raise typer.Exit(1) from None
    typer.echo(f"running: {state.bootstrap} (pid {state.pid})")


@topics_app.command("create")
def topics_create(pipeline: str, partitions: int = typer.Option(4, help="Partitions per data topic."),
                  bootstrap: Optional[str] = BootstrapOpt, kafka_config: Optional[str] = KafkaConfigOpt) -> None:
    """Create PIPELINE.events/.predictions/.dlq/.labels and tidal.models if missing."""
    from tidal.broker.topics import ensure_topics
    from tidal.stream.pipeline import Pipeline

    settings = settings_or_exit(bootstrap, kafka_config)
    created = ensure_topics(settings, Pipeline(pipeline, partitions=partitions).topic_specs())
    typer.echo(f"created: {', '.join(created) if created else 'nothing (all exist)'}")


@app.command()
def run(spec: Path = typer.Argument(..., exists=True, dir_okay=False, help="Pipeline YAML file."),
        workers: str = typer.Option("1", "--workers", "-w",
                                    help="Worker processes (one consumer group): N, or MIN..MAX to scale on the "
                                         "group's lag (never more than the source partitions)."),
        scale_up_lag: int = typer.Option(10_000, min=1, help="With MIN..MAX: add a worker when the lag stays above "
                                         "this many messages for 3 intervals and is not shrinking."),
        scale_down_lag: int = typer.Option(1_000, min=0, help="With MIN..MAX: remove the newest worker when the lag "
                                           "stays below this for 6 intervals."),
        scale_interval: float = typer.Option(10.0, min=0.1, help="With MIN..MAX: seconds between lag samples."),
        scale_cooldown: float = typer.Option(30.0, min=0, help="With MIN..MAX: seconds without a change after each one."),
        worker_index: Optional[int] = typer.Option(None, hidden=True),
        worker_id: Optional[str] = typer.Option(None, help="Stable id of this worker (default: host-index)."),
        stats_file: Optional[Path] = typer.Option(None, help="Write final counts here as JSON (NAME-i.json per worker with --workers)."),
        idle_exit: Optional[float] = typer.Option(None, help="Exit after this many seconds without input."),
        log_level: str = typer.Option("INFO", help="Logging level."),
        metrics_port: int = typer.Option(9400, envvar="TIDAL_METRICS_PORT",
                                         help="Serve Prometheus /metrics here (worker i: port + i; 0: off)."),
        progress: float = typer.Option(10.0, "--progress", min=0,
                                       help="Log events/s, totals, DLQ by reason and lag every N seconds (0: off)."),
        bootstrap: Optional[str] = BootstrapOpt, kafka_config: Optional[str] = KafkaConfigOpt) -> None:
    """Run a pipeline until Ctrl-C / SIGTERM (which drain, commit and exit 0)."""
    from tidal.stream.runner import default_worker_id, run_worker, spawn_workers, wait_workers

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from tidal.stream.autoscale import ScalePolicy, parse_workers, run_autoscaled

    try:
        lo, hi = parse_workers(workers)
        policy = ScalePolicy(scale_up_lag, scale_down_lag, scale_interval, cooldown_s=scale_cooldown)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--workers / --scale-*")
    spec_or_exit(spec)
    settings = settings_or_exit(bootstrap, kafka_config)
    if hi == 1:
        wid = worker_id or default_worker_id(worker_index or 0)
        raise typer.Exit(run_worker(spec, settings, wid, stats_file, idle_exit, metrics_port, progress))
    if lo == hi:
        procs = spawn_workers(spec, lo, settings, kafka_config, stats_file, idle_exit, log_level, metrics_port,
                              progress)
        raise typer.Exit(wait_workers(procs))
    raise typer.Exit(run_autoscaled(spec, settings, lo, hi, policy, kafka_config, stats_file, idle_exit, log_level,
                                    metrics_port, progress))


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="Print the status as one JSON object."),
           pipeline: Optional[str] = typer.Option(None, "--pipeline", "-p",
                                                  help="Only this pipeline's topics, groups and alerts."),
           all_groups: bool = typer.Option(False, "--all", help="Also tidal's reader groups and empty groups."),
           bootstrap: Optional[str] = BootstrapOpt, kafka_config: Optional[str] = KafkaConfigOpt) -> None:
    """One screen: the cluster, each consumer group's lag, deployed models, active alerts."""
    from tidal.monitor.status import cluster_status

    settings = settings_or_exit(bootstrap, kafka_config)
    s = cluster_status(settings, pipeline=pipeline, all_groups=all_groups)
    if as_json:
        import json

        typer.echo(json.dumps(s))
        return
    from rich.console import Console
    from rich.table import Table

    from tidal.cli.text import one_line

    # A terminal: its width. A pipe or a file: wide enough that names are never cut.
    console = Console(width=None if sys.stdout.isatty() else 1000)

    scope = f", pipeline {pipeline}" if pipeline else ""
    console.print(f"[bold]Kafka[/] {s['bootstrap']}: {s['brokers']} broker(s), metadata in {s['metadata_ms']} ms, "
                  f"{len(s['topics'])} topics{scope}")
    groups = Table("group", "state", "members", "topic", "partition", "committed", "end", "lag", title="consumer groups")
    for g in s["groups"]:
        for i, p in enumerate(g["partitions"] or [{}]):
            groups.add_row(g["group"] if i == 0 else "", g["state"] if i == 0 else "",
                           str(g["members"]) if i == 0 else "", p.get("topic", ""), str(p.get("partition", "")),
                           str(p.get("committed", "")), str(p.get("end", "")), str(p.get("lag", "")))
    console.print(groups)
    if s.get("hidden_groups"):
        console.print(f"({s['hidden_groups']} reader or empty groups not shown: --all)")
    if s["models"]:
        models = Table("model", "mode", "primary", "secondary", "share", "reason", title="deployed models")
        for name, d in sorted(s["models"].items()):
            second = d.get("secondary") or {}
            models.add_row(name, d["mode"], f"v{d['primary']['version']}",
                           f"v{second['version']}" if second else "", f"{d.get('share', 0):.0%}",
                           one_line(d.get("reason", ""), 80))
        console.print(models)
    if s["active_alerts"]:
        alerts = Table("rule", "severity", "pipeline", "message", title="active alerts")
        for a in s["active_alerts"]:
            alerts.add_row(a.get("rule") or a.get("type", ""), a.get("severity", ""), a.get("pipeline", ""),
                           one_line(a.get("message") or a.get("reason", ""), 80))
        console.print(alerts)
    else:
        console.print("no active alerts")


@app.command()
def monitor(pipeline: str = typer.Argument(..., help="The scoring pipeline to watch."),
            window: int = typer.Option(1000, help="Rolling window in labelled events."),
            period_s: float = typer.Option(3600, help="Rolling window in seconds."),
            task: str = typer.Option("binary", help="binary or regression."),
            horizon_s: float = typer.Option(7 * 24 * 3600, help="How long a prediction waits for its label."),
            metrics_port: int = typer.Option(9410, envvar="TIDAL_MONITOR_METRICS_PORT", help="/metrics port (0: off)."),
            log_level: str = typer.Option("INFO"),
            bootstrap: Optional[str] = BootstrapOpt, kafka_config: Optional[str] = KafkaConfigOpt) -> None:
    """Join PIPELINE's delayed labels with its predictions; live quality per model version."""
    from tidal.broker.topics import ensure_topics
    from tidal.monitor.metrics import serve_metrics
    from tidal.monitor.model_quality import monitor_pipeline
    from tidal.stream.runner import default_worker_id
    from tidal.stream.worker import Worker

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = settings_or_exit(bootstrap, kafka_config)
    p = monitor_pipeline(pipeline, window, period_s, task, horizon_s)
    ensure_topics(settings, p.topic_specs())
    worker = Worker(p, settings, default_worker_id())
    if metrics_port:
        serve_metrics(worker.registry, metrics_port)
    worker.install_signal_handlers()
    worker.run()


@app.command("trace")
def trace_cmd(event_id: str, pipeline: str = typer.Option(..., "--pipeline", "-p", help="Pipeline name."),
              id_field: str = typer.Option("event_id", help="The field that holds the event id."),
              as_json: bool = typer.Option(False, "--json", help="Print the path as one JSON object."),
              bootstrap: Optional[str] = BootstrapOpt, kafka_config: Optional[str] = KafkaConfigOpt) -> None:
    """Show one event's path: input, model and version, what was added (scores, explanation) or why it was rejected."""
    import json

    from tidal.monitor.trace import trace

    settings = settings_or_exit(bootstrap, kafka_config)
    t = trace(settings, pipeline, event_id, id_field)
    if as_json:
        typer.echo(json.dumps(t, default=str))
    else:
        from rich.console import Console
        from rich.pretty import Pretty

        console = Console()
        if not t["found"]:
            console.print(f"event {event_id!r} not found on {pipeline}.predictions or {pipeline}.dlq")
        for title, key in (("input", "input"), ("model", "model"), ("added by the pipeline", "added"),
                           ("explanation (top contributions)", "explanation"), ("dead-letter", "dead_letters")):
            if t.get(key):
                console.rule(title)
                console.print(Pretty(t[key]))
        if t.get("duplicates"):
            console.print(f"[yellow]{t['duplicates']} duplicate output(s)[/] (at-least-once redelivery)")
    raise typer.Exit(0 if t["found"] else 1)


@demo_app.command("churn")
def demo_churn(users: int = typer.Option(2000, help="Users in the clickstream."),
               as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on the last line."),
               seed: int = typer.Option(11, help="Random seed of the generator."),
               bootstrap: Optional[str] = typer.Option(None, "--bootstrap", "-b", envvar="TIDAL_BOOTSTRAP_SERVERS",
                                                       help="Use this cluster instead of a fresh embedded broker."),
               kafka_config: Optional[str] = KafkaConfigOpt) -> None:
    """Churn: windowed per-user features, trained on a replay, served live; ROC-AUC vs truth."""
    from tidal.demos.churn import run_demo

    settings = settings_or_exit(bootstrap, kafka_config) if bootstrap else None
    summary = run_demo(settings, users=users, seed=seed, quiet=as_json)
    if as_json:
        import json

        sys.stdout.write(json.dumps(summary) + "\n")
    raise typer.Exit(0 if summary["predictions"] + summary["dlq"] == summary["events"] else 1)


@demo_app.command("fraud")
def demo_fraud(events: int = typer.Option(300_000, help="Transactions to generate."),
               workers: int = typer.Option(1, help="Scoring worker processes."),
               as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on the last line."),
               seed: int = typer.Option(7, help="Random seed of the generator."),
               bootstrap: Optional[str] = typer.Option(None, "--bootstrap", "-b", envvar="TIDAL_BOOTSTRAP_SERVERS",
                                                       help="Use this cluster instead of a fresh embedded broker."),
               kafka_config: Optional[str] = KafkaConfigOpt) -> None:
    """Fraud detection end to end: generate, train on replayed history, score the stream, report."""
    from tidal.demos.fraud import run_demo

    settings = None
    if bootstrap:
        settings = settings_or_exit(bootstrap, kafka_config)
    summary = run_demo(settings, events=events, workers=workers, seed=seed, quiet=as_json)
    if as_json:
        import json

        sys.stdout.write(json.dumps(summary) + "\n")
    raise typer.Exit(0 if summary["accounted"] else 1)


EXTRAS = {  # a missing module -> the extra that installs it
    "starlette": "serve", "uvicorn": "serve", "httpx": "serve", "numba": "detect", "river": "learn",
    "pandas": "learn", "duckdb": "sql", "pyarrow": "files", "psycopg": "postgres",
    "paho": "mqtt", "onnx": "onnx", "onnxruntime": "onnx", "skl2onnx": "onnx", "onnxmltools": "onnx",
    "matplotlib": "reports", "datasketches": "sketches", "rocksdict": "rocksdb", "fastavro": "avro",
    "mlflow": "mlflow",
}


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    """``pip install 'tidal[X]'`` for a module an extra provides, else None."""
    root = (exc.name or "").split(".")[0]
    extra = EXTRAS.get(root)
    return f"this needs {root}, which the lean install leaves out: pip install 'tidal[{extra}]'" if extra else None


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        app()
    except ModuleNotFoundError as exc:
        hint = missing_extra(exc)
        if hint is None:
            raise
        typer.echo(f"error: {hint}", err=True)
        raise SystemExit(2) from None
