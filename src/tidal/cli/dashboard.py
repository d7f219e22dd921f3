"""``tidal dashboard``: the web page with live charts of the running pipelines."""

from __future__ import annotations

import logging
from typing import List, Optional

import typer

__all__ = ["dashboard"]


def dashboard(
    port: int = typer.Option(8080, help="Port to serve the page on (0: a free one)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 for every interface; "
                                               "then set --auth)."),
    auth: Optional[str] = typer.Option(None, "--auth", envvar="TIDAL_DASHBOARD_AUTH",
                                       help="USER:PASSWORD: HTTP Basic authentication for the page and its API "
                                            "(/healthz stays open). Prefer the variable: a flag shows in `ps`."),
    metrics_token: Optional[str] = typer.Option(None, "--metrics-token", envvar="TIDAL_METRICS_TOKEN",
                                                help="Bearer token for workers that serve /metrics behind "
                                                     "TIDAL_METRICS_TOKEN (default: that variable)."),
    metrics: List[str] = typer.Option(
        [], "--metrics", "-m",
        help="A worker's metrics endpoint: URL, HOST:PORT or HOST:9400-9403 for several (repeatable; "
             "default http://127.0.0.1:9400/metrics, where `tidal run` serves worker 0)."),
    interval: float = typer.Option(1.0, min=0.2, help="Seconds between scrapes of the workers."),
    history: float = typer.Option(600.0, min=10, help="Seconds of history kept in memory for the charts."),
    kafka_interval: float = typer.Option(5.0, min=1, help="Seconds between Kafka status checks "
                                                          "(groups, deployed models, alerts)."),
    no_kafka: bool = typer.Option(False, "--no-kafka", help="Do not ask Kafka; show the scraped metrics only."),
    bootstrap: Optional[str] = typer.Option(None, "--bootstrap", "-b", envvar="TIDAL_BOOTSTRAP_SERVERS",
                                            help="Kafka bootstrap servers (default: the running embedded broker)."),
    kafka_config: Optional[str] = typer.Option(None, "--kafka-config", envvar="TIDAL_KAFKA_CONFIG",
                                               help="librdkafka .properties file (SASL, TLS, ...)."),
    log_level: str = typer.Option("INFO", help="Logging level."),
) -> None:
    """Serve a live web dashboard: throughput, latency percentiles, lag, DLQ, predictions per model
    version, model quality, deployed models and active alerts. Scrapes the workers' /metrics itself."""
    from tidal.config import BrokerUnreachable, KafkaSettings
    from tidal.monitor.dashboard import Dashboard
    from tidal.monitor.dashboard.collector import normalize_targets

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        targets = normalize_targets(metrics or ["http://127.0.0.1:9400/metrics"])
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    settings = None
    if not no_kafka:
        try:
            settings = KafkaSettings.resolve(bootstrap, kafka_config)
        except BrokerUnreachable:  # the page says so; the metrics still show
            logging.getLogger("tidal.dashboard").warning(
                "no Kafka cluster configured and no embedded broker running: Kafka status not shown")
    if not auth and host not in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger("tidal.dashboard").warning(
            "serving on %s without authentication: anyone who reaches it sees the pipelines (set --auth)", host)
    try:
        d = Dashboard(targets, settings, host=host, port=port, interval=interval, history_s=history,
                      kafka_interval=kafka_interval, auth=auth or None, metrics_token=metrics_token or None)
    except ValueError as exc:  # --auth that is not USER:PASSWORD
        typer.echo(f"error: --auth / TIDAL_DASHBOARD_AUTH: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        d.bind()
    except OSError as exc:
        typer.echo(f"error: cannot listen on {host}:{port}: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"dashboard on {d.url}  (scraping {', '.join(targets)}; "
               f"Kafka: {settings.bootstrap if settings else 'off'}; "
               f"{'basic auth' if auth else 'no authentication'})")
    d.run()
