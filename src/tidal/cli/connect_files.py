"""``tidal ingest file`` and ``tidal sink file`` (see :mod:`tidal.connect.file_source` and
:mod:`tidal.connect.file_sink`)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from tidal.cli.connect import BOOTSTRAP, IDLE_EXIT, KAFKA_CONFIG, METRICS_PORT, ingest_app, run_sink, run_source, sink_app

__all__ = ["ingest_file", "sink_file"]


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@ingest_app.command("file")
def ingest_file(
        path: Path = typer.Argument(..., help="A CSV / JSON Lines / Parquet file, or a folder of them."),
        topic: str = typer.Option(..., "--topic", help="Topic to produce to, e.g. orders.events."),
        format: Optional[str] = typer.Option(None, "--format", help="csv | jsonl | parquet (default: from each file's extension)."),
        watch: bool = typer.Option(False, "--watch", help="Keep watching the folder for new files (default: stop when all are read)."),
        pattern: Optional[str] = typer.Option(None, "--pattern", help="Only files matching this glob, e.g. '*.csv'."),
        key_field: Optional[str] = typer.Option(None, "--key-field", help="Field whose value keys each event (default: no key)."),
        done_dir: Optional[Path] = typer.Option(None, "--done-dir", help="Move finished files here."),
        delete_done: bool = typer.Option(False, "--delete-done", help="Delete finished files."),
        settle: float = typer.Option(1.0, "--settle", help="With --watch: seconds a new file's size must stay the same before it is read."),
        name: Optional[str] = typer.Option(None, "--name", help="Connector name: positions, metrics, headers (default: file-<name>)."),
        dlq: Optional[str] = typer.Option(None, "--dlq", help="Dead-letter topic (default: <pipeline>.dlq)."),
        partitions: int = typer.Option(4, "--partitions", help="Partitions when the topic is created."),
        batch_size: int = typer.Option(5000, "--batch-size", min=1, help="Records produced per batch."),
        position_file: Optional[Path] = typer.Option(None, "--position-file", help="Where the position is kept (default: $TIDAL_HOME/connect/<name>.json; finished files are listed next to it)."),
        bootstrap: Optional[str] = BOOTSTRAP, kafka_config: Optional[str] = KAFKA_CONFIG,
        metrics_port: int = METRICS_PORT, idle_exit: Optional[float] = IDLE_EXIT) -> None:
    """Read CSV, JSON Lines or Parquet files into a topic; resumes where it stopped, each file once."""
    from tidal.connect import PositionFile
    from tidal.connect.file_source import FileSource

    if not path.exists():
        _fail(f"{path} does not exist")
    if path.is_file() and not path.stat().st_mode & 0o444:
        _fail(f"{path} is not readable")
    if watch and not path.is_dir():
        _fail(f"--watch needs a folder; {path} is a file")
    try:
        source = FileSource(path, format=format, watch=watch, pattern=pattern, key_field=key_field,
                            done_dir=done_dir, delete_done=delete_done, name=name, settle_s=settle,
                            ledger=position_file.with_suffix(".files.json") if position_file else None)
        if source.single and format is None:
            from tidal.connect.file_source import format_of

            format_of(path)
    except ValueError as exc:
        _fail(str(exc))
    run_source(source, topic, bootstrap, kafka_config, dlq=dlq, partitions=partitions, batch_size=batch_size,
               metrics_port=metrics_port, idle_exit=idle_exit,
               position_file=PositionFile(position_file) if position_file else None,
               until=None if watch else (lambda: source.finished))


@sink_app.command("file")
def sink_file(
        directory: Path = typer.Argument(..., help="Folder the files are written to (created if missing)."),
        topics: List[str] = typer.Option(..., "--topic", help="Topic to write (repeat for more)."),
        format: str = typer.Option("jsonl", "--format", help="jsonl | csv | parquet."),
        roll_size: str = typer.Option("64MB", "--roll-size", help="Roll a file at this size (e.g. 64MB, 512KB)."),
        roll_seconds: float = typer.Option(60.0, "--roll-seconds", help="Roll a file at this age in seconds."),
        name: Optional[str] = typer.Option(None, "--name", help="Connector name: group, metrics (default: file-<folder>)."),
        group: Optional[str] = typer.Option(None, "--group", help="Consumer group (default: tidal-sink-<name>)."),
        dlq: Optional[str] = typer.Option(None, "--dlq", help="Dead-letter topic (default: <name>.sink.dlq)."),
        batch_size: int = typer.Option(5000, "--batch-size", min=1, help="Records consumed per batch."),
        bootstrap: Optional[str] = BOOTSTRAP, kafka_config: Optional[str] = KAFKA_CONFIG,
        metrics_port: int = METRICS_PORT, idle_exit: Optional[float] = IDLE_EXIT) -> None:
    """Write topics to rolling JSON Lines / CSV / Parquet files, every record exactly once."""
    from tidal.connect.file_sink import FileSink

    if directory.exists() and not directory.is_dir():
        _fail(f"{directory} is not a folder")
    try:
        sink = FileSink(directory, format, roll_size=roll_size, roll_seconds=roll_seconds, name=name)
    except ValueError as exc:
        _fail(str(exc))
    run_sink(sink, topics, bootstrap, kafka_config, group=group, dlq=dlq, batch_size=batch_size,
             metrics_port=metrics_port, idle_exit=idle_exit)
