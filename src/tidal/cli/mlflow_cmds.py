"""``tidal models import`` and ``tidal models export --mlflow``: MLflow models in and out of the registry.

The MLflow logic is :mod:`tidal.registry.mlflow_io`; without ``tidal[mlflow]`` both commands say
which extra to install, in one line, and exit 2.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import typer

from tidal.cli.models import JsonOpt, RegistryOpt, _as_json, _fail, _handled, _open, _pairs

__all__ = ["register", "import_cmd", "export_cmd"]

_EXTRA = {"mlflow", "pandas", "cloudpickle"}  # what tidal[mlflow] installs for these commands


@contextmanager
def _mlflow_errors() -> Iterator[None]:
    """A missing extra or an MLflow error is one line on stderr and exit 2."""
    try:
        yield
    except ModuleNotFoundError as exc:
        root = (exc.name or "").split(".")[0]
        if root in _EXTRA:
            _fail(f"this needs {root}, which the lean install leaves out: pip install 'tidal[mlflow]'")
        _fail(f"this model needs the {root or 'missing'} module: pip install {root}")
    except Exception as exc:  # noqa: BLE001 - MlflowException and friends: mlflow's message says what is wrong
        if type(exc).__module__.split(".")[0] != "mlflow":
            raise
        _fail(f"mlflow: {getattr(exc, 'message', None) or exc}")


def import_cmd(source: str = typer.Argument(..., help="An MLflow model folder (with an MLmodel file), "
                                            "runs:/RUN_ID/PATH or models:/NAME/VERSION (or @ALIAS)."),
               name: Optional[str] = typer.Option(None, "--name", "-n", help="Register as this model (default: "
                                                  "the MLflow registered model's name, or the folder's)."),
               tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", envvar="MLFLOW_TRACKING_URI",
                                                          help="MLflow tracking URI for runs:/ and models:/ "
                                                          "(e.g. file:./mlruns)."),
               features: Optional[str] = typer.Option(None, "--features", help="Feature names, comma-separated, "
                                                      "for a model without a column signature."),
               task: Optional[str] = typer.Option(None, "--task", help="binary, multiclass or regression "
                                                  "(default: what the model says, else binary)."),
               tag: list[str] = typer.Option([], "--tag", "-t", help="KEY=VALUE (repeatable)."),
               registry: Optional[Path] = RegistryOpt, as_json: bool = JsonOpt) -> None:
    """Import an MLflow model as the next version of NAME (sklearn, lightgbm, onnx or python_function)."""
    if task is not None and task not in ("binary", "multiclass", "regression"):
        _fail(f"unknown task {task!r}; use binary, multiclass or regression")
    names = [f.strip() for f in features.split(",") if f.strip()] if features else None
    tags = _pairs(tag, "tag")
    with _handled(), _mlflow_errors():
        from tidal.registry.mlflow_io import import_mlflow

        mv = import_mlflow(_open(registry), source, name=name, tracking_uri=tracking_uri, features=names, task=task,
                           tags=tags)
    if as_json:
        typer.echo(json.dumps(_as_json(mv)))
        return
    run = mv.lineage.get("mlflow", {}).get("run_id")
    typer.echo(f"imported {source} as {mv.uri} ({mv.flavor}, {len(mv.features)} features"
               f"{f', run {run}' if run else ''}, sha256 {mv.sha256[:12]})")


def export_cmd(ref: str = typer.Argument(..., help="NAME/VERSION, NAME@ALIAS or models:/NAME/VERSION."),
               mlflow_dir: Path = typer.Option(..., "--mlflow", help="Write an MLflow model folder here "
                                               "(new or empty); mlflow.pyfunc.load_model(DIR) loads it."),
               registry: Optional[Path] = RegistryOpt) -> None:
    """Export a version as an MLflow model whose predict(df) is tidal's own score."""
    with _handled(), _mlflow_errors():
        from tidal.registry.mlflow_io import export_mlflow

        reg = _open(registry)
        mv = reg.resolve(ref)
        dest = export_mlflow(reg, mv.uri, mlflow_dir)
    typer.echo(f"exported {mv.uri} ({mv.flavor}) to {dest}: mlflow.pyfunc.load_model({str(dest)!r})")


def register(models_app: Any) -> None:
    """Add ``import`` and ``export`` to the ``tidal models`` app."""
    models_app.command("import")(import_cmd)
    models_app.command("export")(export_cmd)
