"""``tidal serve`` (the model server) and ``tidal convert`` (a model folder to ONNX)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import List, Optional

import typer

__all__ = ["serve_app"]

serve_app = typer.Typer()

RegistryOpt = typer.Option(None, "--registry", envvar="TIDAL_REGISTRY",
                           help="Registry folder for models:/ references (default: $TIDAL_HOME/registry).")


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@serve_app.command("serve")
def serve(models: Optional[List[str]] = typer.Argument(None, help="Model folders or registry references "
                                                                  "(models:/fraud@champion, fraud/3)."),
          follow: List[str] = typer.Option([], "--follow", "-f", help="Serve this model as its deployments on "
                                           "tidal.models say: hot-swap, canary by X-Tidal-Key (repeatable)."),
          host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 for every interface)."),
          port: int = typer.Option(8000, help="Port (0: a free one)."),
          grpc_port: int = typer.Option(0, "--grpc-port", envvar="TIDAL_SERVE_GRPC_PORT",
                                        help="Also serve OIP v2 over gRPC (inference.GRPCInferenceService) on this "
                                             "port, same models, batching and --token (0: off)."),
          max_batch_size: int = typer.Option(0, help="Adaptive batching: most rows per model call (0/1: off)."),
          max_batch_time: float = typer.Option(0.0, help="Adaptive batching: longest wait in seconds (0: off)."),
          max_body_bytes: int = typer.Option(16 * 1024 * 1024, help="Largest request body (413 above)."),
          max_rows: int = typer.Option(100_000, help="Most rows in one request (413 above)."),
          max_in_flight: int = typer.Option(256, "--max-in-flight", envvar="TIDAL_HTTP_MAX_IN_FLIGHT", min=1,
                                            help="HTTP requests in flight at once; more get 503 with Retry-After."),
          token: Optional[str] = typer.Option(None, envvar="TIDAL_SERVE_TOKEN", show_default=False,
                                              help="Require 'Authorization: Bearer TOKEN' (health routes stay open)."),
          workers: Optional[int] = typer.Option(None, help="Threads running model calls (default: min(4, CPUs))."),
          model_threads: Optional[int] = typer.Option(None, help="OpenMP threads inside one model call (LightGBM); "
                                                       "default 1 unless OMP_NUM_THREADS is set: requests run in "
                                                       "parallel on --workers instead, without oversubscription."),
          wait: float = typer.Option(30.0, help="Seconds to wait for followed models' first deployment."),
          registry: Optional[Path] = RegistryOpt,
          log_level: str = typer.Option("INFO", help="Logging level."),
          bootstrap: Optional[str] = typer.Option(None, "--bootstrap", "-b", envvar="TIDAL_BOOTSTRAP_SERVERS",
                                                  help="Kafka bootstrap servers, for --follow and --kafka-input."),
          kafka_config: Optional[str] = typer.Option(None, "--kafka-config", envvar="TIDAL_KAFKA_CONFIG",
                                                     help="librdkafka .properties file, for --follow and "
                                                          "--kafka-input."),
          kafka_input: Optional[str] = typer.Option(None, "--kafka-input", envvar="TIDAL_SERVE_KAFKA_INPUT",
                                                    help="Answer OIP v2 inference requests read from this topic "
                                                         "(model in header mlserver-model or tidal-model) instead "
                                                         "of HTTP."),
          kafka_output: Optional[str] = typer.Option(None, "--kafka-output", envvar="TIDAL_SERVE_KAFKA_OUTPUT",
                                                     help="Topic for the responses, keyed like their requests "
                                                          "(default: <input>.responses)."),
          kafka_dlq: Optional[str] = typer.Option(None, "--kafka-dlq", help="Topic for requests that cannot be "
                                                  "answered, with the reason in headers (default: <input>.dlq)."),
          kafka_group: Optional[str] = typer.Option(None, "--kafka-group", help="Consumer group (default: "
                                                    "tidal.serve.<input>); servers in one group share the input."),
          kafka_max_batch: int = typer.Option(500, "--kafka-max-batch", help="Most requests per micro-batch "
                                              "(scored together, committed together)."),
          exactly_once: bool = typer.Option(False, "--exactly-once", help="Responses, dead letters and input "
                                            "offsets in one transaction (read the responses read_committed)."),
          metrics_port: int = typer.Option(0, "--metrics-port", help="With --kafka-input: the worker's "
                                           "Prometheus /metrics on this port (0: off)."),
          http: bool = typer.Option(False, "--http", help="With --kafka-input: answer HTTP on --port (and gRPC "
                                                        "with --grpc-port) as well, from the same models.")) -> None:
    """Serve models over the Open Inference Protocol v2 (HTTP, and gRPC with --grpc-port; Kafka with
    --kafka-input, and both with --kafka-input --http) until Ctrl-C / SIGTERM."""
    from tidal.models import ArtifactError
    from tidal.serve.repository import ModelRepository
    from tidal.serve.server import ModelServer

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if model_threads is not None or "OMP_NUM_THREADS" not in os.environ:  # read when LightGBM first loads
        os.environ["OMP_NUM_THREADS"] = str(model_threads or 1)
    if not models and not follow:
        _fail("name at least one model folder or registry reference, or --follow NAME")
    repo = ModelRepository()
    try:
        for ref in models or []:
            if Path(ref).is_dir():
                model = repo.add_folder(ref)
            else:
                from tidal.registry import Registry, RegistryError

                try:
                    model = repo.add_ref(ref, Registry(registry))
                except RegistryError as exc:
                    _fail(f"{ref}: not a model folder, and the registry says: {exc}")
            typer.echo(f"model {model.name} v{model.version} ({model.card.flavor}) from {ref}")
    except (ArtifactError, ValueError) as exc:
        _fail(str(exc))
    if kafka_output and not kafka_input:
        _fail("--kafka-output needs --kafka-input TOPIC")
    if http and not kafka_input:
        _fail("--http goes with --kafka-input TOPIC (without it, tidal serve answers HTTP anyway)")
    settings = None
    if follow or kafka_input:
        from tidal.cli.main import settings_or_exit

        settings = settings_or_exit(bootstrap, kafka_config)
    if follow:
        from tidal.models.follower import DeploymentFollower

        trusted = None
        if registry is not None:  # versions resolved (and checksums checked) in this registry
            from tidal.registry import Registry

            trusted = Registry(registry)
        for name in follow:
            follower = repo.follow(DeploymentFollower(settings, name, registry=trusted).start())
            try:
                r = follower.wait_ready(wait)
                typer.echo(f"model {name}: {r.deployment.mode} v{r.primary.version} (following tidal.models)")
            except TimeoutError as exc:
                typer.echo(f"warning: {exc}; serving anyway (not ready until a deployment arrives)", err=True)
    server = None
    if http or not kafka_input:
        server = ModelServer(repo, host=host, port=port, max_batch_size=max_batch_size, max_batch_time=max_batch_time,
                             max_body_bytes=max_body_bytes, max_rows=max_rows, token=token, workers=workers,
                             grpc_port=grpc_port or None, max_in_flight=max_in_flight)
        batching = (f"adaptive batching up to {max_batch_size} rows / {max_batch_time * 1000:g} ms"
                    if server.plane.batcher_enabled else "no adaptive batching")
        try:
            server.bind()
        except OSError as exc:
            _fail(f"cannot listen on {host}:{port}: {exc}", 1)
        grpc_note = f" and gRPC on {server.grpc_address}" if server.grpc is not None else ""
        typer.echo(f"serving on {server.url}{grpc_note} ({batching}); Ctrl-C stops", err=True)
    if kafka_input:
        if server is not None:  # HTTP (and gRPC) from a thread; the Kafka worker holds the main thread and its signals
            try:
                server.start()
            except RuntimeError as exc:
                _fail(str(exc), 1)
        _serve_kafka(repo, settings, kafka_input, kafka_output or f"{kafka_input}.responses", kafka_dlq, kafka_group,
                     kafka_max_batch, max_batch_size, max_batch_time, max_rows, workers, exactly_once, metrics_port,
                     server)
        return
    try:
        server.run()
    except RuntimeError as exc:  # e.g. the gRPC port is taken
        _fail(str(exc), 1)


def _serve_kafka(repo, settings, input: str, output: str, dlq: Optional[str], group: Optional[str], max_batch: int,
                 max_batch_size: int, max_batch_time: float, max_rows: int, workers: Optional[int],
                 exactly_once: bool, metrics_port: int, http_server=None) -> None:
    """``tidal serve --kafka-input``: the stream engine's worker answers until SIGTERM / Ctrl-C (then
    it finishes the batch in hand, commits and exits); ``http_server`` (``--http``), already serving
    the same repository, stops after it."""
    from tidal.serve.kafka import KafkaInference

    server = KafkaInference(repo, settings, input, output, dlq=dlq, group=group, max_batch=max_batch,
                            max_batch_size=max_batch_size if max_batch_size > 1 else 1024,
                            max_batch_time=max_batch_time if max_batch_time > 0 else 0.002, max_rows=max_rows,
                            workers=workers, exactly_once=exactly_once, metrics_port=metrics_port or None)
    typer.echo(f"serving {', '.join(repo.names()) or 'no models'} over Kafka: requests on {input} → responses on "
               f"{output}, dead letters on {server.dlq} (group {server.pipeline.group}); Ctrl-C stops", err=True)
    try:
        stats = server.run()
    finally:
        if http_server is not None:
            http_server.stop()  # finishes its requests in flight, then closes the repository
        else:
            repo.close()
    typer.echo(f"answered {server.step.answered} requests, {stats.as_dict()['dlq_total']} dead letters", err=True)


@serve_app.command("convert")
def convert_cmd(source: str = typer.Argument(..., help="Model folder or registry reference to convert."),
                out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for the ONNX model "
                                                   "(default with --register: a temporary one)."),
                register: Optional[bool] = typer.Option(None, "--register/--no-register",
                                                        help="Register the ONNX version (default: when SOURCE is "
                                                             "a registry reference)."),
                sample: Optional[Path] = typer.Option(None, exists=True, dir_okay=False,
                                                      help="Sample data for the parity check: CSV with a header "
                                                           "naming the features, or .npy (rows × features)."),
                atol: float = typer.Option(1e-4, help="Parity: absolute tolerance per score."),
                rtol: float = typer.Option(1e-3, help="Parity: relative tolerance per score."),
                quantize: Optional[bool] = typer.Option(None, "--quantize/--no-quantize",
                                                        help="int8 dynamic quantisation (default: tried for "
                                                             "neural networks, kept within --quantize-atol)."),
                quantize_atol: float = typer.Option(0.05, help="Largest score change int8 may cause."),
                version: Optional[str] = typer.Option(None, help="Version on the card (default: SOURCE's + '-onnx')."),
                registry: Optional[Path] = RegistryOpt) -> None:
    """Convert a scikit-learn or LightGBM model to ONNX, check parity on sample data, save (and register) it."""
    import tempfile

    from tidal.models import ArtifactError
    from tidal.serve.onnx import convert, read_sample

    reg = None
    folder = Path(source)
    is_ref = not folder.is_dir()
    if is_ref or register:
        from tidal.registry import Registry, RegistryError

        reg = Registry(registry)
        if is_ref:
            try:
                folder = reg.resolve(source).path
            except RegistryError as exc:
                _fail(f"{source}: not a model folder, and the registry says: {exc}")
    register = is_ref if register is None else register
    if out is None and not register:
        _fail("--out FOLDER is required unless the ONNX version is registered")
    target = out or Path(tempfile.mkdtemp(prefix="tidal-onnx-")) / "model"
    try:
        data = read_sample(sample, folder) if sample else None
        report = convert(folder, target, sample=data, atol=atol, rtol=rtol, quantize=quantize,
                         quantize_atol=quantize_atol, version=version)
    except ArtifactError as exc:  # ConversionError included: parity failures exit 1 with the numbers
        _fail(str(exc), 1)
    typer.echo(f"converted {source} → {report.folder}: parity on {report.rows} rows, max |diff| "
               f"{report.max_abs_diff:.3g} (atol {atol}, rtol {rtol})")
    if report.quantize_note:
        typer.echo(report.quantize_note)
    if register:
        assert reg is not None
        mv = reg.register(report.card.name, folder=report.folder)
        typer.echo(f"registered {mv.uri} (flavor onnx)")
