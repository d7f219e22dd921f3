"""``tidal check pipeline.yaml``: everything that would stop a pipeline, before it runs.

The same checks run when ``tidal run`` starts (it refuses to start on an error):

- the YAML itself (unknown keys with "did you mean", wrong values, steps that cannot load);
- :meth:`tidal.stream.Pipeline.problems`: fields a step reads that the schema and earlier steps
  lack (a model feature the events do not carry), fields of the wrong type (a categorical
  feature the schema has as a number), steps that cannot work with their model (an explain
  step after a model with no exact explanations), state names used twice;
- for each ``deployed`` step, the versions the registry deploys for it now: their features
  against the fields the step gets. A model with no deployment yet is a warning.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from tidal.stream.pipeline import types_clash

import typer

__all__ = ["Report", "check_spec", "check", "pipeline_refuses"]


@dataclass
class Report:
    """What checking one pipeline file found."""

    spec: Path
    pipeline: Any = None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)  # "fraud v3 (lightgbm, 4 features)"

    def as_dict(self) -> dict[str, Any]:
        return {"spec": str(self.spec), "pipeline": getattr(self.pipeline, "name", None), "ok": not self.errors,
                "errors": self.errors, "warnings": self.warnings, "models": self.models}


def check_spec(spec: Path, registry: Optional[Path] = None) -> Report:
    """Load ``spec`` and collect every problem (nothing raised for the user's mistakes)."""
    import yaml

    from tidal.cli.main import missing_extra
    from tidal.stream.spec import load_pipeline

    report = Report(Path(spec))
    try:
        pipeline = load_pipeline(spec, check=False)
    except yaml.MarkedYAMLError as exc:  # one line: where, and what
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        report.errors.append(f"not valid YAML: {where}{exc.problem or exc}")
        return report
    except (ValueError, TypeError, KeyError, ImportError, AttributeError, OSError, yaml.YAMLError) as exc:
        hint = missing_extra(exc) if isinstance(exc, ModuleNotFoundError) else None
        report.errors.append(hint or str(exc))
        return report
    except Exception as exc:  # noqa: BLE001 - a step or model that cannot load (ArtifactError, ...): one line
        report.errors.append(f"{type(exc).__name__}: {exc}")
        return report
    report.pipeline = pipeline
    try:
        report.errors.extend(pipeline.problems())
    except TypeError as exc:
        report.errors.append(str(exc))
        return report
    _alerts(pipeline, report)
    _models(pipeline, report, registry)
    return report


def _alerts(pipeline: Any, report: Report) -> None:
    """Each alert rule as the worker will read it: a bad one is an error now, not at start-up."""
    from tidal.monitor.alerts import AlertRule

    for i, rule in enumerate(pipeline.alerts):
        try:
            AlertRule.from_dict(rule)
        except (ValueError, TypeError) as exc:
            report.errors.append(f"alerts[{i}]: {exc}")


def _models(pipeline: Any, report: Report, registry: Optional[Path]) -> None:
    """The fixed models' names, and each deployed step's current versions against its fields."""
    from tidal.models.deployed import DeployedScoreStep

    types = pipeline.schema_types()
    reg = None
    for step, known in zip(pipeline.steps, pipeline.fields_before()):
        card = getattr(getattr(step, "model", None), "card", None)
        if card is not None:
            report.models.append(f"{card.name} v{card.version} ({card.flavor}, {len(card.features)} features)")
        if not isinstance(step, DeployedScoreStep):
            continue
        if reg is None:
            reg = step.registry or _registry(registry, report)
            if reg is None:
                return
        deployment = reg.deployment(step.model)
        if deployment is None:
            report.warnings.append(f"step {step.name!r}: model {step.model!r} has no deployment in the registry "
                                   f"yet; workers wait for one (`tidal models promote {step.model} VERSION`)")
            continue
        targets = [("primary", deployment.primary)] + ([("secondary", deployment.secondary)]
                                                        if deployment.secondary is not None else [])
        for role, target in targets:
            version = reg.get(step.model, target.version)
            report.models.append(f"{step.model} v{version.version} ({version.flavor}, {len(version.features)} "
                                 f"features, {deployment.mode} {role})")
            report.errors.extend(f"step {step.name!r}: {p}" for p in
                                 _version_problems(pipeline.name, version, known, types, f"{deployment.mode} {role}"))


def _version_problems(pipeline: str, version: Any, known: set[str] | None, types: dict[str, str],
                      role: str = "") -> list[str]:
    """What a registry version needs that a step's fields (``known``; None: unknown) lack, or
    has with another type (``types``: the schema's)."""
    signature = version.signature or {f: None for f in version.features}
    label = f"models:/{version.name}/{version.version}" + (f" ({role})" if role else "")
    out = []
    if known is not None:
        missing = [f for f in signature if f not in known]
        if missing:
            out.append(f"{label} needs {', '.join(map(repr, missing))}, which the events of pipeline {pipeline!r} "
                       "do not have")
    wrong = [f"{f!r} (model {t}, schema {types[f]})" for f, t in signature.items() if types_clash(types.get(f), t)]
    if wrong:
        out.append(f"{label} has features of another type: {', '.join(wrong)}")
    return out


def pipeline_refuses(spec: Path, version: Any) -> list[str]:
    """Why the pipeline in ``spec`` could not score ``version`` (a registry ModelVersion) in its
    ``deployed`` step for that model (or, without one, with the schema's fields); [] if it can."""
    from tidal.models.deployed import DeployedScoreStep
    from tidal.stream.spec import load_pipeline

    pipeline = load_pipeline(spec, check=False)
    types = pipeline.schema_types()
    known: set[str] | None = set(types) if pipeline.schema is not None else None
    for step, fields in zip(pipeline.steps, pipeline.fields_before()):
        if isinstance(step, DeployedScoreStep) and step.model == version.name:
            known = fields
            break
    return _version_problems(pipeline.name, version, known, types)


def _registry(path: Optional[Path], report: Report) -> Any:
    import os

    from tidal.broker.embedded import tidal_home
    from tidal.registry import Registry
    from tidal.registry.store import ENV_REGISTRY

    where = Path(path or os.environ.get(ENV_REGISTRY) or tidal_home() / "registry").expanduser()
    if not (where / "registry.db").exists():
        report.warnings.append(f"no model registry at {where}: deployed models not checked (--registry PATH)")
        return None
    try:
        return Registry(where)
    except Exception as exc:  # noqa: BLE001 - reported, the check goes on
        report.warnings.append(f"cannot open the registry at {where}: {exc}")
        return None


def check(spec: Path = typer.Argument(..., exists=True, dir_okay=False, help="Pipeline YAML file."),
          registry: Optional[Path] = typer.Option(None, "--registry", envvar="TIDAL_REGISTRY",
                                                  help="Model registry folder (default: $TIDAL_HOME/registry)."),
          as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object.")) -> None:
    """Check a pipeline before running it: one line per problem, exit 1 if there is any."""
    report = check_spec(spec, registry)
    if as_json:
        typer.echo(json.dumps(report.as_dict()))
    else:
        for e in report.errors:
            typer.echo(f"error: {spec}: {e}", err=True)
        for w in report.warnings:
            typer.echo(f"warning: {spec}: {w}", err=True)
        if not report.errors:
            p = report.pipeline
            typer.echo(f"ok: pipeline {p.name}: {len(p.sources)} source(s) → {p.sink}, {len(p.steps)} step(s)"
                       + (f"; models: {'; '.join(report.models)}" if report.models else ""))
    raise typer.Exit(1 if report.errors else 0)
