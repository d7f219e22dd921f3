"""``tidal ingest http``: ``POST /ingest/{pipeline}`` into Kafka (see :mod:`tidal.connect.http`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional

import typer

from tidal.cli.connect import BOOTSTRAP, KAFKA_CONFIG, _settings, ingest_app

__all__ = ["ingest_http"]


@ingest_app.command("http")
def ingest_http(
        pipelines: List[Path] = typer.Option(..., "--pipeline", "-p", help="Pipeline YAML whose schema and source topic are used (repeat for more)."),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
        port: int = typer.Option(8088, "--port", help="Port to listen on (0: a free one)."),
        key_field: Optional[str] = typer.Option(None, "--key-field", help="Field whose value keys each event (default: no key)."),
        timeout: float = typer.Option(10.0, "--timeout", help="Seconds to wait for Kafka's acknowledgement before answering 503."),
        max_in_flight: int = typer.Option(100_000, "--max-in-flight", help="Records waiting for acknowledgement before requests get 429."),
        max_body: int = typer.Option(16 * 1024 * 1024, "--max-body", help="Largest request body in bytes (413 above)."),
        token: Optional[str] = typer.Option(None, "--token", envvar="TIDAL_INGEST_TOKEN", show_default=False,
                                            help="Require 'Authorization: Bearer TOKEN' on /ingest and /metrics."),
        bootstrap: Optional[str] = BOOTSTRAP, kafka_config: Optional[str] = KAFKA_CONFIG) -> None:
    """Take records over HTTP, validate them against each pipeline's schema, and answer once Kafka has them."""
    from tidal.connect.http import IngestServer, load_ingest_pipeline

    try:
        pipes = [load_ingest_pipeline(p, key_field) for p in pipelines]
    except (OSError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = IngestServer(pipes, _settings(bootstrap, kafka_config), host=host, port=port, timeout_s=timeout,
                          max_in_flight=max_in_flight, max_body_bytes=max_body, token=token)
    try:
        server.bind()
    except OSError as exc:
        typer.echo(f"error: cannot listen on {host}:{port}: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"ingest on {server.url}/ingest/{{{','.join(p.name for p in pipes)}}} → "
               f"{', '.join(p.topic for p in pipes)}; metrics on {server.url}/metrics", err=True)
    server.run()
