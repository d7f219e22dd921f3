"""``tidal bench``: run the benchmark suite of a source checkout (``bench/run.py``).

The suite lives beside the package (``bench/``), not inside it: its comparison systems
(Quix Streams, Faust) are never tidal's dependencies. ``make bench`` installs them first;
``tidal bench`` runs whatever of them is installed and reports the rest as skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

import typer


def find_bench(start: Path | None = None) -> Path | None:
    """``bench/run.py`` of the checkout this package runs from, or of the current folder."""
    here = Path(__file__).resolve()
    for root in [here.parents[3], Path(start or Path.cwd()).resolve()]:
        if (root / "bench" / "run.py").is_file():
            return root / "bench" / "run.py"
    return None


def bench(quick: bool = typer.Option(False, "--quick", help="Smaller sizes: under 3 minutes."),
          only: Optional[str] = typer.Option(None, help="Comma-separated scenario keys (bench/README.md)."),
          skip: Optional[str] = typer.Option(None, help="Comma-separated scenario keys to leave out."),
          out: Optional[Path] = typer.Option(None, help="Results file (default bench/results/<date>[-quick].json)."),
          bootstrap: Optional[str] = typer.Option(
              None, "--bootstrap", "-b", envvar="TIDAL_BOOTSTRAP_SERVERS",
              help="Run against this Kafka cluster instead of a fresh embedded broker (its topics are deleted after)."),
          kafka_config: Optional[Path] = typer.Option(
              None, "--kafka-config", envvar="TIDAL_KAFKA_CONFIG", help="librdkafka .properties file (SASL, TLS, ...)."),
          extra: Optional[List[str]] = typer.Argument(None, help="More arguments for bench/run.py (after --).")) -> None:
    """Run the benchmark suite: tidal against passthrough, per-message, Quix Streams, Faust; latency; scaling;
    online learning; hot-swap time and drift-detection delay."""
    script = find_bench()
    if script is None:
        typer.echo("error: the benchmark suite ships with the source, not the wheel: clone the repository "
                   "and run `tidal bench` (or `make bench`) in it", err=True)
        raise typer.Exit(2)
    cmd = [sys.executable, str(script)]
    if quick:
        cmd.append("--quick")
    for flag, value in (("--only", only), ("--skip", skip), ("--out", out), ("--bootstrap", bootstrap)):
        if value:
            cmd += [flag, str(value)]
    cmd += list(extra or [])
    env = os.environ.copy()
    if kafka_config:
        env["TIDAL_KAFKA_CONFIG"] = str(Path(kafka_config).resolve())
    raise typer.Exit(subprocess.call(cmd, cwd=script.parents[1], env=env))
