"""``tidal quality report`` and ``tidal demo network``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

quality_app = typer.Typer(no_args_is_help=True, help="Data quality: profiles and reports.")

_BOOTSTRAP = typer.Option(None, "--bootstrap", "-b", envvar="TIDAL_BOOTSTRAP_SERVERS",
                          help="Kafka bootstrap servers (default: the running embedded broker).")
_KAFKA_CONFIG = typer.Option(None, "--kafka-config", envvar="TIDAL_KAFKA_CONFIG",
                             help="librdkafka .properties file (SASL, TLS, ...).")


@quality_app.command("report")
def report(pipeline: str = typer.Argument(..., help="The pipeline whose <pipeline>.quality topic to read."),
           out: Path = typer.Option(Path("."), "--out", "-o", help="Folder for <pipeline>-quality.html/.png."),
           as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object."),
           bootstrap: Optional[str] = _BOOTSTRAP, kafka_config: Optional[str] = _KAFKA_CONFIG) -> None:
    """Print the latest profile of PIPELINE and write an HTML + PNG report."""
    from tidal.cli.main import settings_or_exit
    from tidal.quality.report import latest_report, print_report, write_html, write_png

    settings = settings_or_exit(bootstrap, kafka_config)
    rep = latest_report(settings, pipeline)
    if rep is None:
        typer.echo(f"no profile on {pipeline}.quality yet (add a `profile` step to the pipeline)", err=True)
        raise typer.Exit(1)
    try:
        png = write_png(rep, out / f"{pipeline}-quality.png")
    except ImportError:  # matplotlib is optional: the HTML report still has every number
        png = None
        typer.echo("matplotlib is not installed: no PNG charts", err=True)
    page = write_html(rep, out / f"{pipeline}-quality.html", png)
    if as_json:
        sys.stdout.write(json.dumps({**rep, "html": str(page), "png": str(png) if png else None}) + "\n")
        return
    print_report(rep)
    typer.echo(f"report: {page}" + (f" and {png}" if png else ""))


def demo_network(events: int = typer.Option(120_000, help="Flow records to generate."),
                 as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on the last line."),
                 seed: int = typer.Option(7, help="Random seed of the generator."),
                 bootstrap: Optional[str] = _BOOTSTRAP, kafka_config: Optional[str] = _KAFKA_CONFIG) -> None:
    """Network flows with injected attacks and dirty data: clean, flag, detect, report."""
    from tidal.demos.network import run_demo

    settings = None
    if bootstrap:
        from tidal.cli.main import settings_or_exit

        settings = settings_or_exit(bootstrap, kafka_config)
    summary = run_demo(settings, events=events, seed=seed, quiet=as_json)
    if as_json:
        sys.stdout.write(json.dumps(summary) + "\n")
    raise typer.Exit(0 if summary["accounted"] else 1)
