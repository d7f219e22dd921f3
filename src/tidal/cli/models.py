"""``tidal models``: the model registry from the shell.

Changes are always recorded in the registry folder (``--registry`` / ``TIDAL_REGISTRY``, default
``$TIDAL_HOME/registry``). Commands that change what serves (promoting or rolling back the
champion, ``deploy``, ``publish``) also publish the deployment to ``tidal.models`` when a broker
is configured (``--bootstrap``, ``TIDAL_BOOTSTRAP_SERVERS``) or the embedded one is running;
``--no-publish`` skips that. Bad input exits 2, a change recorded but not published exits 1.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator, NoReturn, Optional

import typer

from tidal.cli.text import one_line

__all__ = ["models_app"]

models_app = typer.Typer(no_args_is_help=True,
                         help="The model registry: versions, aliases, rollback, deployments on tidal.models.")

RegistryOpt = typer.Option(None, "--registry", envvar="TIDAL_REGISTRY",
                           help="Registry folder (default: $TIDAL_HOME/registry).")
BootstrapOpt = typer.Option(None, "--bootstrap", "-b", envvar="TIDAL_BOOTSTRAP_SERVERS",
                            help="Kafka bootstrap servers (default: the running embedded broker).")
KafkaConfigOpt = typer.Option(None, "--kafka-config", envvar="TIDAL_KAFKA_CONFIG",
                              help="librdkafka .properties file (SASL, TLS, ...).")
NoPublishOpt = typer.Option(False, "--no-publish", help="Record in the registry only; publish nothing.")
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of a table.")
ReasonOpt = typer.Option("", "--reason", "-r", help="Why; recorded with the change.")
AliasOpt = typer.Option("champion", "--alias", "-a", help="Alias to move (champion also deploys).")
PipelineOpt = typer.Option(None, "--pipeline", "-p", exists=True, dir_okay=False,
                           help="A pipeline YAML that scores NAME: refused if it cannot feed the version's features.")


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def _handled() -> Iterator[None]:
    """Registry errors become one line on stderr: exit 2 for bad input, 1 for publishing failures."""
    from tidal.models import ArtifactError
    from tidal.registry import PublishError, RegistryError

    try:
        yield
    except PublishError as exc:
        _fail(f"{exc}\n(publish it later with `tidal models publish NAME`)", 1)
    except (RegistryError, ArtifactError) as exc:
        _fail(str(exc))
    except sqlite3.Error as exc:
        _fail(f"registry database: {exc}", 1)


def _open(path: Optional[Path], publisher: Any = None) -> Any:
    from tidal.registry import Registry

    try:
        return Registry(path, publisher)
    except (OSError, sqlite3.Error, RuntimeError) as exc:
        _fail(f"cannot open the registry at {path or 'the default location'}: {exc}")


def _publisher(bootstrap: Optional[str], kafka_config: Optional[str], no_publish: bool) -> Any:
    """A KafkaPublisher, or None when publishing is off or no broker is configured or running."""
    from tidal.broker.embedded import wait_ready
    from tidal.config import BrokerUnreachable, KafkaSettings
    from tidal.registry import KafkaPublisher

    if no_publish:
        return None
    try:
        settings = KafkaSettings.resolve(bootstrap, kafka_config)
    except BrokerUnreachable:
        typer.echo("note: no Kafka broker configured or running; recording in the registry only", err=True)
        return None
    try:
        wait_ready(settings.bootstrap, timeout=5, extra=dict(settings.extra))
    except BrokerUnreachable as exc:
        _fail(f"{exc} Nothing was changed; pass --no-publish to record without publishing.")
    return KafkaPublisher(settings)


def _pairs(items: list[str], what: str, numbers: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _fail(f"--{what} expects KEY=VALUE, got {item!r}")
        if numbers:
            try:
                out[key] = float(value)
            except ValueError:
                _fail(f"--{what} {key}: {value!r} is not a number")
        else:
            out[key] = value
    return out


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _brief(values: dict[str, Any], limit: int = 4) -> str:
    shown = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in list(values.items())[:limit]]
    return ", ".join(shown) + (", ..." if len(values) > limit else "")


def _as_json(mv: Any, aliases: dict[str, int] | None = None) -> dict[str, Any]:
    out = {**asdict(mv), "path": str(mv.path), "uri": mv.uri}
    if aliases is not None:
        out["aliases"] = sorted(a for a, v in aliases.items() if v == mv.version)
    return out


def _print_table(title: str | None, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    Console(width=None if sys.stdout.isatty() else 1000).print(table)  # piped: never cut or fold


def _deployed(deployment: Any) -> str:
    if deployment is None:
        return ""
    text = f"{deployment.mode} v{deployment.primary.version}"
    if deployment.secondary is not None:
        share = f" {deployment.share:.0%}" if deployment.mode in ("canary", "ab") else ""
        text += f" + v{deployment.secondary.version}{share}"
    return f"{text} (seq {deployment.seq})"


def _published(publisher: Any) -> str:
    return f"published to {publisher.topic}" if publisher is not None else "recorded (not published)"


@models_app.command("register")
def register(name: str,
             folder: Path = typer.Argument(..., exists=True, file_okay=False, help="Folder written by save_model."),
             metric: list[str] = typer.Option([], "--metric", "-m", help="KEY=NUMBER (repeatable)."),
             param: list[str] = typer.Option([], "--param", "-p", help="KEY=VALUE (repeatable)."),
             tag: list[str] = typer.Option([], "--tag", "-t", help="KEY=VALUE (repeatable)."),
             registry: Optional[Path] = RegistryOpt, as_json: bool = JsonOpt) -> None:
    """Register a model folder as the next version of NAME (verified by loading it first)."""
    metrics, params, tags = _pairs(metric, "metric", numbers=True), _pairs(param, "param"), _pairs(tag, "tag")
    with _handled():
        mv = _open(registry).register(name, folder=folder, metrics=metrics, params=params, tags=tags)
    if as_json:
        typer.echo(json.dumps(_as_json(mv)))
        return
    typer.echo(f"registered {mv.uri} ({mv.flavor}, {len(mv.features)} features, sha256 {mv.sha256[:12]})")


@models_app.command("list")
def list_models(registry: Optional[Path] = RegistryOpt, as_json: bool = JsonOpt) -> None:
    """Every model: version count, newest version, aliases, current deployment."""
    with _handled():
        reg = _open(registry)
        infos = [(info, reg.deployment(info.name)) for info in reg.list_models()]
    if as_json:
        typer.echo(json.dumps([{**asdict(i), "deployment": asdict(d) if d else None} for i, d in infos]))
        return
    rows = [[i.name, i.versions, i.latest, ", ".join(f"{a}={v}" for a, v in i.aliases.items()), _deployed(d)]
            for i, d in infos]
    _print_table(f"models in {reg.root}", ["model", "versions", "latest", "aliases", "deployment"], rows)


@models_app.command("versions")
def versions(name: str, registry: Optional[Path] = RegistryOpt, as_json: bool = JsonOpt) -> None:
    """Every version of NAME with its status, metrics and aliases."""
    with _handled():
        reg = _open(registry)
        mvs, aliases = reg.versions(name), reg.aliases(name)
    if as_json:
        typer.echo(json.dumps([_as_json(mv, aliases) for mv in mvs]))
        return
    rows = [[mv.version, mv.status, mv.flavor, len(mv.features), _brief(mv.metrics),
             ", ".join(a for a, v in aliases.items() if v == mv.version), _when(mv.created_at)] for mv in mvs]
    _print_table(name, ["version", "status", "flavor", "features", "metrics", "aliases", "created"], rows)


@models_app.command("show")
def show(ref: str = typer.Argument(..., help="models:/NAME/VERSION, models:/NAME@ALIAS, NAME/3 or NAME@ALIAS."),
         registry: Optional[Path] = RegistryOpt, as_json: bool = JsonOpt) -> None:
    """One version: signature, metrics, params, tags, lineage, artifact."""
    with _handled():
        reg = _open(registry)
        mv = reg.resolve(ref)
        aliases = reg.aliases(mv.name)
    data = _as_json(mv, aliases)
    if as_json:
        typer.echo(json.dumps(data))
        return
    rows = [["uri", mv.uri], ["status", mv.status], ["aliases", ", ".join(data["aliases"])],
            ["flavor", mv.flavor], ["features", ", ".join(f"{f}:{t}" for f, t in (mv.signature or {}).items())],
            ["metrics", _brief(mv.metrics, 50)], ["params", _brief(mv.params, 50)], ["tags", _brief(mv.tags, 50)],
            ["lineage", json.dumps(mv.lineage)], ["created", _when(mv.created_at)], ["sha256", mv.sha256],
            ["path", str(mv.path)]]
    _print_table(None, ["field", "value"], rows)


@models_app.command("compare")
def compare(name: str, version: list[str] = typer.Argument(..., help="Versions or aliases."),
            registry: Optional[Path] = RegistryOpt, as_json: bool = JsonOpt) -> None:
    """Metrics of several versions side by side."""
    with _handled():
        reg = _open(registry)
        table = reg.compare(name, version)
        shown = [reg.get(name, v).version for v in version]
    if as_json:
        typer.echo(json.dumps(table))
        return
    rows = [[metric] + [f"{values.get(v):.6g}" if values.get(v) is not None else "-" for v in shown]
            for metric, values in table.items()]
    _print_table(name, ["metric"] + [f"v{v}" for v in shown], rows)


@models_app.command("promote")
def promote(name: str, version: str, alias: str = AliasOpt, reason: str = ReasonOpt,
            features: Optional[str] = typer.Option(None, help="The pipeline's features, e.g. 'amount,hour:int,"
                                                   "merchant:str'; refused unless the version's match."),
            pipeline: Optional[Path] = PipelineOpt,
            registry: Optional[Path] = RegistryOpt, bootstrap: Optional[str] = BootstrapOpt,
            kafka_config: Optional[str] = KafkaConfigOpt, no_publish: bool = NoPublishOpt) -> None:
    """Point an alias (default champion) at VERSION; moving champion deploys it."""
    publisher = _publisher(bootstrap, kafka_config, no_publish) if alias == "champion" else None
    with _handled():
        reg = _open(registry, publisher)
        if alias == "champion":
            _check_pipelines(reg, name, [version], pipeline, features)
        move = reg.promote(name, version, alias=alias, reason=reason, features=features)
    if alias == "champion":
        _note_unchecked(pipeline, features)
    _report_move(move, publisher)


@models_app.command("rollback")
def rollback(name: str, alias: str = AliasOpt, reason: str = ReasonOpt, registry: Optional[Path] = RegistryOpt,
             bootstrap: Optional[str] = BootstrapOpt, kafka_config: Optional[str] = KafkaConfigOpt,
             no_publish: bool = NoPublishOpt) -> None:
    """Move an alias (default champion) back to the version it pointed at before."""
    publisher = _publisher(bootstrap, kafka_config, no_publish) if alias == "champion" else None
    with _handled():
        move = _open(registry, publisher).rollback(name, alias=alias, reason=reason)
    _report_move(move, publisher)


def _check_pipelines(reg: Any, name: str, versions: list[str], pipeline: Optional[Path],
                     features: Optional[str]) -> None:
    """Refuse versions the pipeline cannot feed (``--pipeline``); say so when nothing was checked."""
    from tidal.cli.check import pipeline_refuses

    if pipeline is None:
        return
    problems = [p for v in versions for p in pipeline_refuses(pipeline, reg.resolve(_ref(name, v)))]
    if problems:
        _fail("; ".join(problems) + f" (refused by {pipeline}; nothing changed)")


def _note_unchecked(pipeline: Optional[Path], features: Optional[str]) -> None:
    if pipeline is None and features is None:
        typer.echo("note: features not checked against a pipeline (--pipeline FILE refuses a version it "
                   "cannot feed)", err=True)


def _ref(name: str, version: str) -> str:
    """``models:/NAME/V`` or ``models:/NAME@ALIAS`` for a --version/--primary value."""
    return f"models:/{name}/{version}" if str(version).isdigit() else f"models:/{name}@{version}"


def _report_move(move: Any, publisher: Any) -> None:
    if move.old_version == move.new_version:
        typer.echo(f"{move.name}@{move.alias} already is version {move.new_version}; nothing changed")
        return
    was = f" (was {move.old_version})" if move.old_version is not None else ""
    deployed = f"; deployment {_published(publisher)}" if move.alias == "champion" else ""
    typer.echo(f"{move.name}@{move.alias} -> version {move.new_version}{was}{deployed}")
    if publisher is not None:
        publisher.close()


@models_app.command("archive")
def archive(name: str, version: str, registry: Optional[Path] = RegistryOpt) -> None:
    """Archive a version: kept and loadable, never promoted or deployed again."""
    with _handled():
        mv = _open(registry).archive(name, version)
    typer.echo(f"archived {mv.uri}")


@models_app.command("history")
def history(name: str, alias: Optional[str] = typer.Option(None, "--alias", "-a", help="Only this alias."),
            registry: Optional[Path] = RegistryOpt, as_json: bool = JsonOpt) -> None:
    """Every alias move and deployment of NAME (canary, shadow, A/B, automatic rollbacks): when,
    from which version to which, and why."""
    with _handled():
        reg = _open(registry)
        moves = reg.alias_history(name, alias)
        deployments = [] if alias else reg.deployments(name)
    # Moving champion deploys it: that deployment is the move's own line, not one more (each
    # champion move matches the first single deployment of its version at or after it).
    own: set[int] = set()
    for m in (m for m in moves if m.alias == "champion"):
        for i, d in enumerate(deployments):
            if (i not in own and d.mode == "single" and str(d.primary.version) == str(m.new_version)
                    and d.time >= m.time - 1):
                own.add(i)
                break
    events = [{"kind": "alias", **asdict(m)} for m in moves]
    previous = None
    for i, d in enumerate(deployments):
        if i not in own:
            events.append({"kind": "deployment", "time": d.time, "alias": None, "action": "deploy",
                           "old_version": previous, "new_version": _deployed(d), "reason": d.reason})
        previous = _deployed(d)
    events.sort(key=lambda e: e["time"])
    if as_json:
        typer.echo(json.dumps(events))
        return
    rows = [[_when(e["time"]), e["alias"] or "", e["action"], e["old_version"], e["new_version"],
             one_line(e["reason"])] for e in events]
    _print_table(name, ["time", "alias", "action", "from", "to", "reason"], rows)


@models_app.command("deploy")
def deploy(name: str,
           mode: str = typer.Option(..., "--mode", help="single, canary, ab or shadow."),
           version: str = typer.Option(..., "--version", "-v", help="single: the version to serve; otherwise "
                                       "the secondary (canary / B / shadow) version."),
           primary: str = typer.Option("champion", "--primary", help="The primary version when mode is not single."),
           share: float = typer.Option(0.0, "--share", help="Fraction of keys the secondary scores (canary, ab)."),
           pipeline: Optional[Path] = PipelineOpt,
           reason: str = ReasonOpt, registry: Optional[Path] = RegistryOpt, bootstrap: Optional[str] = BootstrapOpt,
           kafka_config: Optional[str] = KafkaConfigOpt, no_publish: bool = NoPublishOpt) -> None:
    """Deploy versions of NAME: e.g. --mode canary --version 4 --share 0.1 next to the champion."""
    from tidal.registry import MODES

    if mode not in MODES:
        _fail(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    publisher = _publisher(bootstrap, kafka_config, no_publish)
    with _handled():
        reg = _open(registry, publisher)
        _check_pipelines(reg, name, [version] if mode == "single" else [primary, version], pipeline, None)
        if mode == "single":
            d = reg.deploy(name, mode, version, reason=reason)
        else:
            d = reg.deploy(name, mode, primary, version, share=share, reason=reason)
    _note_unchecked(pipeline, None)
    typer.echo(f"{name}: {_deployed(d)}, {_published(publisher)}")
    if publisher is not None:
        publisher.close()


@models_app.command("publish")
def publish(name: str, registry: Optional[Path] = RegistryOpt, bootstrap: Optional[str] = BootstrapOpt,
            kafka_config: Optional[str] = KafkaConfigOpt) -> None:
    """Publish the current deployment of NAME to tidal.models again."""
    publisher = _publisher(bootstrap, kafka_config, False)
    if publisher is None:
        _fail("no Kafka broker to publish to")
    with _handled():
        d = _open(registry, publisher).republish(name)
    publisher.close()
    typer.echo(f"{name}: {_deployed(d)}, {_published(publisher)}")
