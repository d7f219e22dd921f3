"""``tidal ingest postgres`` and ``tidal sink postgres`` (see :mod:`tidal.connect.postgres_source`
and :mod:`tidal.connect.postgres_sink`)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from tidal.cli.connect import (BOOTSTRAP, IDLE_EXIT, KAFKA_CONFIG, METRICS_PORT, ingest_app, run_sink, run_source,
                               sink_app)

__all__ = ["ingest_postgres", "sink_postgres"]

DSN = typer.Option(..., "--dsn", envvar="TIDAL_PG_DSN",
                   help="libpq connection string or URI, e.g. postgresql://user@host/db "
                        "(password: PGPASSWORD or ~/.pgpass).")


@ingest_app.command("postgres")
def ingest_postgres(
        dsn: str = DSN,
        table: str = typer.Option(..., "--table", help="Table (or schema.table) to poll."),
        topic: str = typer.Option(..., "--topic", help="Topic to produce to, e.g. orders.events."),
        mode: str = typer.Option("incrementing", "--mode", help="incrementing | timestamp | timestamp+incrementing."),
        id_column: str = typer.Option("id", "--id-column", help="Strictly increasing column (incrementing modes)."),
        timestamp_column: str = typer.Option("updated_at", "--timestamp-column",
            help="Last-modified column (timestamp modes)."),
        key_column: Optional[str] = typer.Option(None, "--key-column",
            help="Column whose value keys each event (default: no key)."),
        timestamp_delay: float = typer.Option(0.0, "--timestamp-delay",
            help="Seconds to wait before reading a timestamp, for transactions that commit late."),
        query_batch: int = typer.Option(1000, "--query-batch", min=1, help="Rows one query reads at most."),
        poll_interval: float = typer.Option(1.0, "--poll-interval", help="Seconds between queries once caught up."),
        name: Optional[str] = typer.Option(None, "--name",
            help="Connector name: positions, metrics, headers (default: pg-<table>)."),
        dlq: Optional[str] = typer.Option(None, "--dlq", help="Dead-letter topic (default: <pipeline>.dlq)."),
        partitions: int = typer.Option(4, "--partitions", help="Partitions when the topic is created."),
        position_file: Optional[Path] = typer.Option(None, "--position-file",
            help="Where the position is kept (default: $TIDAL_HOME/connect/<name>.json)."),
        bootstrap: Optional[str] = BOOTSTRAP, kafka_config: Optional[str] = KAFKA_CONFIG,
        metrics_port: int = METRICS_PORT, idle_exit: Optional[float] = IDLE_EXIT) -> None:
    """Poll a PostgreSQL table into a topic, as the JDBC source connector does; resumes where it stopped."""
    from tidal.connect import PositionFile
    from tidal.connect.postgres_source import PostgresSource

    try:
        source = PostgresSource(dsn, table, mode, id_column=id_column, timestamp_column=timestamp_column,
                                key_column=key_column, name=name, query_batch=query_batch,
                                poll_interval=poll_interval, timestamp_delay=timestamp_delay)
        run_source(source, topic, bootstrap, kafka_config, dlq=dlq, partitions=partitions,
                   batch_size=query_batch, metrics_port=metrics_port, idle_exit=idle_exit,
                   position_file=PositionFile(position_file) if position_file else None)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@sink_app.command("postgres")
def sink_postgres(
        dsn: str = DSN,
        table: str = typer.Option(..., "--table", help="Table (or schema.table) to upsert into."),
        topics: List[str] = typer.Option(..., "--topic", help="Topic to write (repeat for more)."),
        key_field: str = typer.Option("id", "--key-field", help="Record field holding the key."),
        key_column: Optional[str] = typer.Option(None, "--key-column",
            help="Unique column the key goes to (default: same as the field)."),
        columns: Optional[str] = typer.Option(None, "--columns",
            help="Comma-separated columns to write (default: all the table's)."),
        extra_column: Optional[str] = typer.Option(None, "--extra-column",
            help="jsonb column for fields without a column (default: drop them)."),
        create_table: bool = typer.Option(False, "--create-table",
            help="Create the table from the first batch when missing."),
        name: Optional[str] = typer.Option(None, "--name",
            help="Connector name: offsets, metrics (default: pg-<table>)."),
        group: Optional[str] = typer.Option(None, "--group", help="Consumer group (default: tidal-sink-<name>)."),
        dlq: Optional[str] = typer.Option(None, "--dlq", help="Dead-letter topic (default: <name>.sink.dlq)."),
        batch_size: int = typer.Option(1000, "--batch-size", min=1, help="Records per transaction at most."),
        bootstrap: Optional[str] = BOOTSTRAP, kafka_config: Optional[str] = KAFKA_CONFIG,
        metrics_port: int = METRICS_PORT, idle_exit: Optional[float] = IDLE_EXIT) -> None:
    """Upsert a topic's records into a PostgreSQL table by key, exactly once (offsets kept in the table's database)."""
    from tidal.connect.postgres_sink import PostgresSink

    try:
        sink = PostgresSink(dsn, table, key_field, key_column=key_column,
                            columns=[c.strip() for c in columns.split(",") if c.strip()] if columns else None,
                            extra_column=extra_column, create_table=create_table, name=name)
        run_sink(sink, topics, bootstrap, kafka_config, group=group, dlq=dlq, batch_size=batch_size,
                 metrics_port=metrics_port, idle_exit=idle_exit)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
