"""``tidal ingest <connector>`` and ``tidal sink <connector>``: run a connector until stopped.

Each connector module (``tidal.cli.connect_*``) adds its commands to ``ingest_app`` /
``sink_app`` and hands the built connector to :func:`run_source` / :func:`run_sink`, which
resolve Kafka, serve ``/metrics`` and stop cleanly on SIGTERM / Ctrl-C.
"""

from __future__ import annotations

import logging
import signal
from typing import Optional

import typer

ingest_app = typer.Typer(no_args_is_help=True, help="Source connectors: bring events into Kafka.")
sink_app = typer.Typer(no_args_is_help=True, help="Sink connectors: write a topic out to another system.")

BOOTSTRAP = typer.Option(None, "--bootstrap", "-b", envvar="TIDAL_BOOTSTRAP_SERVERS",
                         help="Kafka bootstrap servers (default: the running embedded broker).")
KAFKA_CONFIG = typer.Option(None, "--kafka-config", envvar="TIDAL_KAFKA_CONFIG",
                            help="librdkafka .properties file (SASL, TLS, ...).")
METRICS_PORT = typer.Option(0, "--metrics-port", envvar="TIDAL_CONNECT_METRICS_PORT",
                            help="Serve Prometheus /metrics on this port (0: off).")
IDLE_EXIT = typer.Option(None, "--idle-exit", help="Exit after this many seconds without records (default: run until stopped).")


def _settings(bootstrap: Optional[str], kafka_config: Optional[str]):
    from tidal.cli.main import settings_or_exit

    return settings_or_exit(bootstrap, kafka_config)


def _serve(runner, metrics_port: int) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if metrics_port:
        from tidal.monitor.metrics import metrics_host, serve_metrics

        port = serve_metrics(runner.metrics.registry, metrics_port)
        if port:
            typer.echo(f"metrics on http://{metrics_host()}:{port}/metrics", err=True)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: runner.stop())


def run_source(source, topic: str, bootstrap: Optional[str], kafka_config: Optional[str], *,
               dlq: Optional[str] = None, partitions: int = 4, batch_size: int = 1000,
               metrics_port: int = 0, idle_exit: Optional[float] = None, position_file=None,
               until=None) -> None:
    """Run ``source`` into ``topic`` with the shared delivery (see :mod:`tidal.connect.source_runner`);
    ``until()`` true stops it (e.g. a source that has read everything)."""
    from tidal.connect import SourceRunner

    runner = SourceRunner(source, _settings(bootstrap, kafka_config), topic, dlq=dlq, partitions=partitions,
                          batch_size=batch_size, position_file=position_file)
    _serve(runner, metrics_port)
    runner.start()
    typer.echo(f"{source.name}: {source.kind} → {topic} (dead letters: {runner.dlq}; position: "
               f"{runner.positions.path})", err=True)
    before = getattr(source, "already_ingested", lambda: [])()
    if before:
        typer.echo(f"{source.name}: already ingested, not read again: {', '.join(before)} (listed in "
                   f"{source.ledger}; delete that file to read them again)", err=True)
    runner.run(idle_exit_s=idle_exit, until=until)
    dead = ", ".join(f"{r} {n}" for r, n in runner.dead.most_common())
    files = getattr(source, "finished_files", None)
    typer.echo(f"{source.name}: {runner.produced:,} records produced to {topic}, {sum(runner.dead.values()):,} to "
               f"{runner.dlq}{f' ({dead})' if dead else ''}"
               + (f"; {len(files)} file(s) finished: {', '.join(files)}" if files is not None else "")
               + (f"; {runner.skipped:,} delivered before the last stop, not produced again" if runner.skipped else ""),
               err=True)
    typer.echo(f"{source.name}: stopped at position {runner.position!r}", err=True)


def run_sink(sink, topics: list[str], bootstrap: Optional[str], kafka_config: Optional[str], *,
             group: Optional[str] = None, dlq: Optional[str] = None, batch_size: int = 1000,
             metrics_port: int = 0, idle_exit: Optional[float] = None) -> None:
    """Run ``sink`` over ``topics`` with the shared delivery (see :mod:`tidal.connect.sink_runner`)."""
    from tidal.connect import SinkRunner

    runner = SinkRunner(sink, _settings(bootstrap, kafka_config), topics, group=group, dlq=dlq,
                        batch_size=batch_size)
    _serve(runner, metrics_port)
    typer.echo(f"{sink.name}: {', '.join(topics)} → {sink.kind} (group {runner.group}; dead letters: "
               f"{runner.dlq})", err=True)
    runner.run(idle_exit_s=idle_exit)
    typer.echo(f"{sink.name}: stopped after writing {runner.written} records", err=True)


import tidal.cli.connect_mqtt  # noqa: E402,F401
import tidal.cli.connect_postgres  # noqa: E402,F401
import tidal.cli.connect_files  # noqa: E402,F401
import tidal.cli.connect_http  # noqa: E402,F401
