"""``tidal train``, ``tidal learn``, ``tidal demo maintenance`` and ``tidal demo sentiment``.

Registered on the main app by :func:`register` (one call in ``tidal.cli.main``).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import typer

__all__ = ["register", "parse_offsets", "parse_time", "make_online_model", "ONLINE_MODELS"]

BootstrapOpt = typer.Option(None, "--bootstrap", "-b", envvar="TIDAL_BOOTSTRAP_SERVERS",
                            help="Kafka bootstrap servers (default: the running embedded broker).")
KafkaConfigOpt = typer.Option(None, "--kafka-config", envvar="TIDAL_KAFKA_CONFIG",
                              help="librdkafka .properties file (SASL, TLS, ...).")
RegistryOpt = typer.Option(None, "--registry", envvar="TIDAL_REGISTRY",
                           help="Registry folder (default: $TIDAL_HOME/registry).")
ONLINE_MODELS = ("river-logreg", "river-tree", "river-forest", "river-linreg", "sklearn-sgd")


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def parse_offsets(text: Optional[str]) -> dict[int, int] | None:
    """``"0:100,1:250"`` → ``{0: 100, 1: 250}``.

    >>> parse_offsets("0:100, 1:250")
    {0: 100, 1: 250}
    """
    if not text:
        return None
    out = {}
    for part in text.split(","):
        p, sep, o = part.strip().partition(":")
        if not sep:
            raise ValueError(f"offsets {text!r}: expected PARTITION:OFFSET[,PARTITION:OFFSET...]")
        out[int(p)] = int(o)
    return out


def parse_time(text: Optional[str]) -> int | None:
    """Epoch milliseconds from ``1700000000000`` or an ISO time (naive means UTC).

    >>> parse_time("2024-01-01T00:00:00")
    1704067200000
    """
    if not text:
        return None
    if text.strip().lstrip("-").isdigit():
        return int(text)
    t = datetime.fromisoformat(text.strip())
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return int(t.timestamp() * 1000)


def make_online_model(spec: str, task: str = "binary") -> Any:
    """An online model by name (``river-logreg``, ...) or a ``module:factory`` that returns one."""
    if ":" in spec:
        import importlib

        module, _, attr = spec.partition(":")
        obj = getattr(importlib.import_module(module), attr)
        return obj() if callable(obj) else obj
    from river import forest, linear_model, preprocessing, tree

    if spec == "river-logreg":
        return preprocessing.StandardScaler() | linear_model.LogisticRegression()
    if spec == "river-linreg":
        return preprocessing.StandardScaler() | linear_model.LinearRegression()
    if spec == "river-tree":
        return tree.HoeffdingTreeRegressor() if task == "regression" else tree.HoeffdingTreeClassifier()
    if spec == "river-forest":
        return forest.ARFRegressor(seed=7) if task == "regression" else forest.ARFClassifier(seed=7)
    if spec == "sklearn-sgd":
        from sklearn.linear_model import SGDClassifier, SGDRegressor

        return SGDRegressor() if task == "regression" else SGDClassifier(loss="log_loss")
    raise ValueError(f"unknown model {spec!r}; use one of {', '.join(ONLINE_MODELS)} or module:factory")


def _features(text: Optional[str], registry: Any, name: str) -> list[str]:
    if text:
        return [f.strip() for f in text.split(",") if f.strip()]
    try:
        return list(registry.get(name, "latest").features)
    except Exception:  # noqa: BLE001 - NotFound: say what to do instead
        _fail(f"--features is required (no registered model {name!r} to take them from)")
    return []


def train_cmd(pipeline: str = typer.Argument(..., help="The pipeline whose data to train on."),
              name: Optional[str] = typer.Option(None, "--name", "-n", help="Model name (default: PIPELINE)."),
              features: Optional[str] = typer.Option(None, help="Feature fields, comma-separated (default: the "
                                                                 "registered model's)."),
              categorical: str = typer.Option("", help="Categorical features among them, comma-separated."),
              label: str = typer.Option("label", help="The label field."),
              source: str = typer.Option("joined", help="joined: PIPELINE.joined (features + label); events: "
                                                        "PIPELINE.events joined with PIPELINE.labels by id."),
              topic: Optional[str] = typer.Option(None, help="Read this topic instead."),
              id_field: str = typer.Option("event_id", help="The id shared by events and labels."),
              from_offsets: Optional[str] = typer.Option(None, "--from", help="Start offsets: P:O[,P:O...]."),
              to_offsets: Optional[str] = typer.Option(None, "--to", help="End offsets (exclusive): P:O[,P:O...]."),
              since: Optional[str] = typer.Option(None, help="First Kafka timestamp (ISO time or epoch ms)."),
              until: Optional[str] = typer.Option(None, help="Timestamps before this (ISO time or epoch ms)."),
              model: str = typer.Option("lightgbm", help="lightgbm, logistic or sgd."),
              task: str = typer.Option("binary", help="binary or regression."),
              holdout: float = typer.Option(0.2, help="Newest share of the rows held out for evaluation."),
              promote: bool = typer.Option(False, "--promote", help="Make the new version the champion (deploys it)."),
              automl: bool = typer.Option(False, "--automl", help="Search several model families (time-ordered "
                                          "validation), register the best as challenger; with --promote, champion "
                                          "only if it beats the champion on the same holdout."),
              time_budget: float = typer.Option(120.0, "--time-budget", help="AutoML: seconds of search."),
              families: str = typer.Option("", "--families", help="AutoML: among logistic, lightgbm, hist_gb, "
                                           "random_forest, extra_trees (default: all)."),
              as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
              registry_path: Optional[Path] = RegistryOpt, bootstrap: Optional[str] = BootstrapOpt,
              kafka_config: Optional[str] = KafkaConfigOpt) -> None:
    """Replay a window of a topic, train, evaluate on its newest slice, register with exact lineage."""
    from tidal.cli.main import settings_or_exit
    from tidal.learn.train import train_from_topic
    from tidal.registry import KafkaPublisher, Registry

    settings = settings_or_exit(bootstrap, kafka_config)
    registry = Registry(registry_path, KafkaPublisher(settings))
    name = name or pipeline
    feats = _features(features, registry, name)
    window: dict[str, Any] = {}
    try:
        window.update(start=parse_offsets(from_offsets), end=parse_offsets(to_offsets), since_ms=parse_time(since),
                      until_ms=parse_time(until))
    except ValueError as exc:
        _fail(str(exc))
    if source == "events":
        window.update(labels_topic=f"{pipeline}.labels", id_field=id_field)
    elif source != "joined":
        _fail("--source must be joined or events")
    read = topic or (f"{pipeline}.joined" if source == "joined" else f"{pipeline}.events")
    try:
        result = train_from_topic(settings, read, feats, name=name, label=label, kind=model, task=task,
                                  holdout=holdout, registry=registry, promote=promote,
                                  categorical=[c for c in categorical.split(",") if c], automl=automl,
                                  families=[f for f in families.split(",") if f] or None, time_budget_s=time_budget,
                                  **window)
    except ValueError as exc:
        _fail(str(exc))
    out = {"model": result.version.uri, "promoted": result.promoted, "metrics": result.metrics,
           "lineage": result.lineage}
    if as_json:
        sys.stdout.write(json.dumps(out) + "\n")
        return
    search = result.lineage.get("automl")
    if search is not None:
        for c in search["candidates"]:
            how = f"{c['metric']} {c['value']:.4f} ({c['seconds']:.1f}s)" if "value" in c else \
                c.get("skipped") or c.get("error")
            typer.echo(f"  candidate {c['family']:<13} {json.dumps(c['params'])}: {how}")
        if "same_as" in search:
            typer.echo(f"AutoML's best is {search['same_as']} itself (the same artifact): nothing new registered")
            return
    typer.echo(f"registered {result.version.uri}{' (champion)' if result.promoted else ''}"
               f"{' (challenger)' if search is not None and not result.promoted else ''}")
    for k, v in sorted(result.metrics.items()):
        typer.echo(f"  {k:>20}: {v:.4f}" if isinstance(v, float) else f"  {k:>20}: {v}")
    typer.echo(f"  trained on {read} {result.lineage['ranges']}")


def learn_cmd(pipeline: str = typer.Argument(..., help="Learn from PIPELINE.joined (see `tidal monitor`)."),
              features: str = typer.Option(..., help="Feature fields, comma-separated."),
              name: Optional[str] = typer.Option(None, "--name", "-n", help="Model name (default: PIPELINE-online)."),
              model: str = typer.Option("river-logreg", help=f"{', '.join(ONLINE_MODELS)} or module:factory."),
              mode: str = typer.Option("auto", help="River: one (per row, exact prequential), many (learn_many "
                                                    "per chunk, needs pandas) or auto."),
              task: str = typer.Option("binary", help="binary, multiclass or regression."),
              label: str = typer.Option("label", help="The label field."),
              publish_every: int = typer.Option(10_000, help="Publish a version every N labelled events (0: off)."),
              publish_every_s: float = typer.Option(0.0, help="... and every T seconds (0: off)."),
              promote: bool = typer.Option(True, help="Make each published version the champion (deploys it)."),
              publish_initial: bool = typer.Option(False, help="Publish the untrained model at start (so a "
                                                               "deployed scorer has a version at once)."),
              drift: bool = typer.Option(True, help="ADWIN on the learner's errors; alerts on tidal.alerts."),
              resume: bool = typer.Option(True, help="Start from NAME's champion (else latest) version if any."),
              metrics_port: int = typer.Option(9420, envvar="TIDAL_LEARN_METRICS_PORT", help="/metrics port (0: off)."),
              log_level: str = typer.Option("INFO"),
              registry_path: Optional[Path] = RegistryOpt, bootstrap: Optional[str] = BootstrapOpt,
              kafka_config: Optional[str] = KafkaConfigOpt) -> None:
    """Learn online from PIPELINE.joined, test-then-train; publish versions to the registry. SIGUSR1: publish now."""
    import signal

    from tidal.broker.topics import ensure_topics
    from tidal.cli.main import settings_or_exit
    from tidal.drift import DriftStep
    from tidal.learn.online import OnlineLearnStep, learn_pipeline, resume_model
    from tidal.monitor.metrics import serve_metrics
    from tidal.registry import KafkaPublisher, Registry
    from tidal.stream.runner import default_worker_id
    from tidal.stream.worker import Worker

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = settings_or_exit(bootstrap, kafka_config)
    name = name or f"{pipeline}-online"
    registry = Registry(registry_path, KafkaPublisher(settings))
    try:
        estimator = (resume_model(registry, name) if resume else None) or make_online_model(model, task)
        step = OnlineLearnStep(estimator, [f.strip() for f in features.split(",") if f.strip()], model_name=name,
                               label_field=label, task=task, mode=mode, registry=registry,
                               publish_every=publish_every or None, publish_every_s=publish_every_s or None,
                               promote=promote, publish_initial=publish_initial)
    except (ValueError, TypeError, ImportError, AttributeError) as exc:
        _fail(str(exc))
    extra = [DriftStep(error_field="learn_error", by=None, model=name, label_field=label,
                       task="regression" if task == "regression" else "binary")] if drift else []
    p = learn_pipeline(pipeline, step, extra_steps=extra)
    ensure_topics(settings, p.topic_specs())
    worker = Worker(p, settings, default_worker_id())
    if metrics_port:
        serve_metrics(worker.registry, metrics_port)
    worker.install_signal_handlers()
    if hasattr(signal, "SIGUSR1"):
        signal.signal(signal.SIGUSR1, lambda *_: step.request_publish())
    worker.run()


def _demo_settings(bootstrap: Optional[str], kafka_config: Optional[str]) -> Any:
    if not bootstrap:
        return None
    from tidal.cli.main import settings_or_exit

    return settings_or_exit(bootstrap, kafka_config)


def demo_maintenance(events: int = typer.Option(60_000, help="Sensor readings to generate."),
                     seed: int = typer.Option(7, help="Random seed of the generator."),
                     as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on the last line."),
                     bootstrap: Optional[str] = typer.Option(None, "--bootstrap", "-b",
                                                             envvar="TIDAL_BOOTSTRAP_SERVERS",
                                                             help="Use this cluster, not a fresh embedded broker."),
                     kafka_config: Optional[str] = KafkaConfigOpt,
                     via_mqtt: bool = typer.Option(False, "--via-mqtt",
                                                   help="Send the readings through a local Mosquitto and the MQTT "
                                                        "bridge; publish failure alerts back to MQTT.")) -> None:
    """Predictive maintenance through a regime change: drift detected, retrained, promoted, no person acting."""
    from tidal.demos.maintenance import run_demo

    if via_mqtt:
        from tidal.connect.mosquitto import MOSQUITTO_MISSING, mosquitto_binary

        if mosquitto_binary() is None:
            _fail(f"--via-mqtt needs a local MQTT broker; {MOSQUITTO_MISSING}")
    logging.basicConfig(level=logging.ERROR)
    summary = run_demo(_demo_settings(bootstrap, kafka_config), events=events, seed=seed, quiet=as_json,
                       via_mqtt=via_mqtt)
    if as_json:
        sys.stdout.write(json.dumps(summary, default=str) + "\n")
    raise typer.Exit(0 if summary["recovered"] else 1)


def demo_sentiment(events: int = typer.Option(40_000, help="Reviews to generate."),
                   seed: int = typer.Option(7, help="Random seed of the generator."),
                   as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on the last line."),
                   bootstrap: Optional[str] = typer.Option(None, "--bootstrap", "-b", envvar="TIDAL_BOOTSTRAP_SERVERS",
                                                           help="Use this cluster instead of a fresh embedded broker."),
                   kafka_config: Optional[str] = KafkaConfigOpt) -> None:
    """Online text classification (River bag of words + logistic regression) through a vocabulary shift."""
    from tidal.demos.sentiment import run_demo

    logging.basicConfig(level=logging.ERROR)
    summary = run_demo(_demo_settings(bootstrap, kafka_config), events=events, seed=seed, quiet=as_json)
    if as_json:
        sys.stdout.write(json.dumps(summary, default=str) + "\n")
    raise typer.Exit(0 if summary["learned"] == summary["events"] else 1)


def register(app: typer.Typer, demo_app: typer.Typer) -> None:
    """Add this module's commands to ``tidal`` and ``tidal demo``."""
    app.command("train")(train_cmd)
    app.command("learn")(learn_cmd)
    demo_app.command("maintenance")(demo_maintenance)
    demo_app.command("sentiment")(demo_sentiment)
