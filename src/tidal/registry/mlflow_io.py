"""MLflow models in and out of the registry: :func:`import_mlflow` and :func:`export_mlflow`.

Import takes an MLflow model folder (one with an ``MLmodel`` file) or a URI MLflow resolves
(``runs:/<run id>/model``, ``models:/NAME/3``, ``models:/NAME@alias``, ``file:``, ``s3://``...)
against a tracking URI (a local ``mlruns`` file store works: no server), and registers it as the
next tidal version. The MLflow flavors become tidal flavors:

- ``sklearn`` whose loaded object is a plain scikit-learn (or LightGBM scikit-learn) model → ``sklearn``
  (or ``lightgbm``): the very object, so it scores exactly as tidal's own;
- ``lightgbm`` (a ``Booster`` or an ``LGBMModel``) → ``lightgbm``;
- ``onnx`` → ``onnx`` (the graph file);
- anything else with ``python_function`` → ``mlflow_pyfunc`` (:mod:`tidal.models.runtimes.pyfunc`):
  the whole folder, scored by ``mlflow.pyfunc`` on a DataFrame of the features, one call per
  micro-batch; a two-column output of a binary model is taken as [P(negative), P(positive)].

The features are the MLflow signature's input names, in order (a scikit-learn or LightGBM model
trained on a DataFrame: its own column order), typed ``double``/``float`` → ``float``,
``long``/``integer`` → ``int``, ``boolean`` → ``bool``; string, binary and datetime inputs are
refused (tidal feeds models numeric features). A model without a column signature needs
``features=``. The version's lineage keeps ``mlflow``: the source, tracking URI, run id, model
id/uuid, artifact path, flavors, MLflow version, creation time, the registered model name and
version (``models:/``) and the run's experiment; ``code_version`` is the run's git commit where
MLflow recorded one. Its tags get ``mlflow.run_id``, ``mlflow.source`` and ``mlflow.flavor``;
a run's metrics and params become the version's (``runs:/`` and ``models:/`` sources).

Export writes an MLflow model folder (``mlflow.pyfunc.save_model``) holding the version's tidal
artifact folder as an MLflow artifact and a small ``PythonModel``
(:class:`tidal.registry.mlflow_pyfunc.TidalPythonModel`) that loads it with tidal: its
``predict(df)`` is tidal's own score of the rows (P(positive) for binary models), whatever the
flavor. Loading it needs tidal installed. It carries a signature (the version's features; one
``double`` output, ``score``) and the version's name, version, sha256, flavor, task and
threshold in the ``MLmodel`` metadata (``tidal``).

Needs ``pip install 'tidal[mlflow]'``; mlflow is imported only here, on use.
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from tidal.models.artifact import ArtifactError
from tidal.models.runtimes.base import module_of
from tidal.registry.records import ModelVersion
from tidal.registry.uri import RegistryError, check_name

if TYPE_CHECKING:
    from tidal.registry.store import Registry

__all__ = ["import_mlflow", "export_mlflow", "MLFLOW_TYPES", "TIDAL_TYPES", "EXTRA_HINT"]

EXTRA_HINT = "pip install 'tidal[mlflow]'"
# MLflow column type -> tidal feature type, and back
MLFLOW_TYPES = {"double": "float", "float": "float", "long": "int", "integer": "int", "boolean": "bool"}
TIDAL_TYPES = {"float": "double", "int": "long", "bool": "boolean", "str": "string"}
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # runs:/, models:/, file:, s3://, ...
_OWN = ("sklearn", "lightgbm")  # the loaded object of these MLflow flavors may become tidal's own flavor


@contextmanager
def _file_store_allowed() -> Iterator[None]:
    """MLflow 3 refuses a local ``mlruns`` file store unless told: reading one to import a model is fine."""
    before = os.environ.get("MLFLOW_ALLOW_FILE_STORE")
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)


@contextmanager
def _tracking(uri: str | None) -> Iterator[None]:
    """Use ``uri`` as MLflow's tracking URI meanwhile (MLflow 3 resolves ``runs:/`` through the global one)."""
    if not uri:
        yield
        return
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    before = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        with _use_tracking_uri(uri):
            yield
    finally:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before


def _fetch(source: str, tracking_uri: str | None, tmp: Path) -> Path:
    """The local MLflow model folder of ``source`` (downloaded into ``tmp`` for a URI)."""
    path = Path(source).expanduser()
    if not _URI.match(source) or path.exists():
        if path.is_file() and path.name == "MLmodel":
            path = path.parent
        if not path.is_dir():
            raise ArtifactError(f"{source}: no such folder (give an MLflow model folder or a runs:/, models:/ URI)")
        folder = path
    else:
        import mlflow.artifacts

        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(tmp / "download"),
                                                          tracking_uri=tracking_uri, registry_uri=tracking_uri))
    if not (folder / "MLmodel").is_file():
        raise ArtifactError(f"{source}: no MLmodel file; not an MLflow model")
    return folder


def _signature(meta: Any, features: Sequence[str] | None, source: str) -> dict[str, str]:
    """``{feature: tidal type}`` from the MLflow input signature (or the given ``features``)."""
    schema = meta.get_input_schema()
    named = schema is not None and not schema.is_tensor_spec() and schema.has_input_names()
    if not named:
        if not features:
            raise RegistryError(f"{source}: the MLflow model has no column signature (input names); "
                                "pass the feature names (--features a,b,c)")
        return {str(f): "float" for f in features}
    sig: dict[str, str] = {}
    for col in schema.inputs:
        mtype = getattr(col.type, "name", str(col.type))
        if mtype not in MLFLOW_TYPES:
            raise RegistryError(f"{source}: input {col.name!r} is {mtype}; tidal feeds models numeric features "
                                f"({', '.join(MLFLOW_TYPES)})")
        sig[col.name] = MLFLOW_TYPES[mtype]
    if features and list(features) != list(sig):
        raise RegistryError(f"{source}: features {list(features)} differ from the MLflow signature's {list(sig)}")
    return sig


def _reorder(sig: dict[str, str], names: Sequence[str] | None, source: str) -> dict[str, str]:
    """The signature in the column order a model was trained with (scikit-learn refuses another order)."""
    if names is None or list(names) == list(sig):
        return sig
    names = [str(n) for n in names]
    if set(names) != set(sig):
        if all(n.startswith("Column_") for n in names):  # LightGBM trained on an unnamed matrix: order as signed
            return sig
        raise RegistryError(f"{source}: the model was trained on columns {names}, its MLflow signature "
                            f"names {list(sig)}")
    return {n: sig[n] for n in names}


def _sklearn_task(model: Any) -> str:
    from sklearn.base import is_classifier, is_regressor

    if is_regressor(model):
        return "regression"
    classes = getattr(model, "classes_", None)
    if is_classifier(model) and classes is not None and len(classes) > 2:
        return "multiclass"
    return "binary" if hasattr(model, "predict_proba") or is_classifier(model) else "regression"


def _lightgbm_task(model: Any) -> str:
    objective = getattr(model, "objective_", None) or getattr(model, "objective", None)
    if not isinstance(objective, str):
        booster = getattr(model, "booster_", model)
        objective = (booster.params or {}).get("objective") or booster.dump_model(num_iteration=0).get("objective")
    objective = str(objective or "")
    if objective.startswith(("binary", "cross_entropy", "xentropy")):
        return "binary"
    if objective.startswith(("multiclass", "softmax", "multiclassova")):
        return "multiclass"
    return "regression"


def _model_object(folder: Path, meta: Any, sig: dict[str, str], task: str | None,
                  source: str) -> tuple[Any, str, str, dict[str, str]]:
    """(model object, MLflow flavor used, tidal task, signature in the model's column order)."""
    flavors = meta.flavors
    if "sklearn" in flavors:
        import mlflow.sklearn

        model = mlflow.sklearn.load_model(str(folder))
        if module_of(model) in _OWN:
            if module_of(model) == "lightgbm":
                return model, "sklearn", task or _lightgbm_task(model), _reorder(
                    sig, getattr(model, "feature_name_", None), source)
            return model, "sklearn", task or _sklearn_task(model), _reorder(
                sig, getattr(model, "feature_names_in_", None), source)
    if "lightgbm" in flavors:
        import mlflow.lightgbm

        model = mlflow.lightgbm.load_model(str(folder))
        if module_of(model) == "lightgbm":
            booster = getattr(model, "booster_", model)
            return model, "lightgbm", task or _lightgbm_task(model), _reorder(sig, booster.feature_name(), source)
    if "onnx" in flavors:
        data = flavors["onnx"].get("data", "model.onnx")
        graph = folder / data
        if Path(data).name != data or not graph.is_file():
            raise ArtifactError(f"{source}: onnx flavor without its graph file {data!r}")
        return graph.read_bytes(), "onnx", task or "binary", sig
    if "python_function" in flavors:
        from tidal.models.runtimes.pyfunc import MlflowModel

        return MlflowModel(folder, list(sig), task or "binary"), "python_function", task or "binary", sig
    raise ArtifactError(f"{source}: MLflow flavors {sorted(flavors)}; tidal takes sklearn, lightgbm, onnx or "
                        "anything with python_function")


def _default_name(source: str, folder: Path) -> str:
    if source.startswith("models:/"):
        text = source[len("models:/"):]
        candidate = re.split(r"[/@]", text, maxsplit=1)[0]
    else:
        candidate = folder.name if not _URI.match(source) else source.rstrip("/").rsplit("/", 1)[-1]
    candidate = re.sub(r"[^A-Za-z0-9_.-]", "-", candidate).lstrip("_.-")[:128]
    return candidate or "mlflow-model"


def _run_details(source: str, tracking_uri: str | None, run_id: str | None) -> dict[str, Any]:
    """What the tracking store knows: the registered model version, the run's metrics, params, git commit."""
    from mlflow import MlflowClient

    out: dict[str, Any] = {}
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    if source.startswith("models:/"):
        text = source[len("models:/"):].strip("/")
        try:
            if "@" in text:
                rm, _, alias = text.partition("@")
                mv = client.get_model_version_by_alias(rm, alias.split("/")[0])
            else:
                rm, _, version = text.partition("/")
                mv = client.get_model_version(rm, version.split("/")[0]) if version.split("/")[0].isdigit() else None
            if mv is not None:
                out["registered_model"] = {"name": mv.name, "version": str(mv.version)}
                out["model_source"] = mv.source
                run_id = run_id or mv.run_id
                out["run_id"] = run_id
        except Exception:  # noqa: BLE001 - a logged-model id (models:/m-...) or a stage: nothing registered to name
            pass
    if run_id:
        try:
            run = client.get_run(run_id)
        except Exception:  # noqa: BLE001 - the run lives in a store we cannot read: keep the id only
            return out
        out["experiment_id"] = run.info.experiment_id
        out["run_name"] = run.info.run_name
        out["metrics"] = {k: float(v) for k, v in run.data.metrics.items()}
        out["params"] = dict(run.data.params)
        out["git_commit"] = run.data.tags.get("mlflow.source.git.commit")
    return out


def import_mlflow(registry: "Registry", source: str | Path, *, name: str | None = None,
                  tracking_uri: str | None = None, features: Sequence[str] | None = None, task: str | None = None,
                  threshold: float | None = None, metrics: Mapping[str, float] | None = None,
                  params: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None) -> ModelVersion:
    """Register the MLflow model at ``source`` as the next version of ``name``; see the module docstring.

    ``name`` defaults to the registered MLflow model's (``models:/NAME/...``) or the folder's
    last path component; ``task`` to what the model says (scikit-learn, LightGBM) or ``binary``.
    """
    source = str(source)
    with _file_store_allowed(), _tracking(tracking_uri), tempfile.TemporaryDirectory(
            prefix="tidal-mlflow-import-") as tmp:
        from mlflow.models import Model

        folder = _fetch(source, tracking_uri, Path(tmp))
        meta = Model.load(str(folder / "MLmodel"))
        name = check_name(name or _default_name(source, folder))
        sig = _signature(meta, features, source)
        model, used, task, sig = _model_object(folder, meta, sig, task, source)
        remote = bool(_URI.match(source)) and not Path(source).exists()  # resolved by the tracking store
        details = _run_details(source, tracking_uri, meta.run_id) if remote else {}
        run_id = meta.run_id or details.get("run_id")
        lineage_mlflow = {
            "source": source,
            "tracking_uri": tracking_uri or (_tracking_uri() if remote else None),
            "run_id": run_id,
            "model_id": getattr(meta, "model_id", None),
            "model_uuid": meta.model_uuid,
            "artifact_path": meta.artifact_path,
            "flavors": sorted(meta.flavors),
            "flavor": used,
            "mlflow_version": meta.mlflow_version,
            "utc_time_created": meta.utc_time_created,
            "signature": meta.signature.to_dict() if meta.signature is not None else None,
            **{k: v for k, v in details.items() if k not in ("metrics", "params", "git_commit", "run_id")},
        }
        lineage = {"mlflow": lineage_mlflow, "code_version": details.get("git_commit")}
        all_tags = {"mlflow.source": source, "mlflow.flavor": used, **({"mlflow.run_id": run_id} if run_id else {}),
                    **dict(tags or {})}
        flavor = "mlflow_pyfunc" if used == "python_function" else ("onnx" if used == "onnx" else None)
        return registry.register(name, model, features=sig, flavor=flavor, task=task, threshold=threshold,
                                 metrics={**details.get("metrics", {}), **dict(metrics or {})},
                                 params={**details.get("params", {}), **dict(params or {})}, tags=all_tags,
                                 lineage=lineage)


def _tracking_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


def export_mlflow(registry: "Registry", ref: str, dest: str | Path) -> Path:
    """Write version ``ref`` (``NAME/3``, ``models:/NAME@champion``...) as an MLflow model folder at ``dest``."""
    import mlflow.pyfunc
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    from tidal import __version__
    from tidal.registry.mlflow_pyfunc import ARTIFACT, TidalPythonModel

    mv = registry.resolve(ref)
    loaded = registry.load(mv.uri)  # refuses a modified artifact before anything is written
    dest = Path(dest).expanduser().absolute()
    if dest.exists():
        if not dest.is_dir() or any(dest.iterdir()):
            raise RegistryError(f"{dest} exists and is not an empty folder")
        dest.rmdir()
    signature = ModelSignature(inputs=Schema([ColSpec(TIDAL_TYPES.get(t, "double"), f)
                                              for f, t in (mv.signature or {f: "float" for f in mv.features}).items()]),
                               outputs=Schema([ColSpec("double", "score")]))
    card = loaded.card
    requirements = [f"tidal=={__version__}"] + {"onnx": ["onnxruntime"], "mlflow_pyfunc": ["mlflow-skinny", "pandas"],
                                                "river": ["river"]}.get(card.flavor, [])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(input example|CloudPickle).*")
        mlflow.pyfunc.save_model(  # the artifact folder holds the card and the model file, nothing else
            path=str(dest), python_model=TidalPythonModel(), artifacts={ARTIFACT: str(mv.path)},
            signature=signature, pip_requirements=requirements,
            metadata={"tidal": {"uri": mv.uri, "name": mv.name, "version": str(mv.version), "sha256": mv.sha256,
                                "flavor": mv.flavor, "task": card.task, "threshold": card.threshold,
                                "features": list(mv.features)}})
    return dest
