"""The model registry: immutable, numbered versions of named models, aliases, and deployments.

A registry is a folder (``root``: ``$TIDAL_REGISTRY``, default ``$TIDAL_HOME/registry``)::

    registry.db            SQLite metadata: versions, aliases, alias history, deployments
    artifacts/<sha256>/    one folder per version, named by its model file's SHA-256, in
                           save_model's layout: the model file + tidal-model.json (whose name and
                           version are the registry's)
    tmp/                   registrations in progress

Versions are numbered 1, 2, 3... per name inside the write transaction, so concurrent
registrations from several processes get unique, consecutive numbers. A registration is
staged in ``tmp/``, loaded back (a corrupt or unloadable artifact is refused and leaves
nothing behind), then renamed into ``artifacts/`` in the same transaction that records it.

Safety: loading a pickle (``sklearn``, ``river``) runs code. :meth:`Registry.load` loads only
from the registry's own store, through :func:`tidal.models.load_model` (which verifies the
file's checksum first) and then checks the card against the registry's own record. Prefer
LightGBM's text format, which is data, not code.

Remote storage: the metadata needs a local file system (SQLite locking). Artifact folders are
immutable and content-addressed, so an S3-compatible store works as a mirror through
``fsspec``: ``fsspec.filesystem("s3").put(str(version.path), f"bucket/artifacts/{version.sha256}",
recursive=True)``, fetched back to the same path before loading (which re-verifies the checksum).
tidal does not do this for you yet.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from tidal.broker.embedded import tidal_home
from tidal.models.artifact import CARD, ArtifactError, LoadedModel, ModelCard, load_model, save_model
from tidal.registry.lifecycle import Lifecycle
from tidal.registry.records import ModelInfo, ModelVersion, Publisher
from tidal.registry.signature import Features, make_signature, model_feature_count
from tidal.registry.uri import NotFound, Ref, RegistryError, check_name, parse_ref, version_or_alias

__all__ = ["Registry", "ENV_REGISTRY", "code_version"]

ENV_REGISTRY = "TIDAL_REGISTRY"


def code_version(cwd: str | Path | None = None) -> str | None:
    """``git rev-parse HEAD`` of the working directory, or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _json(value: Any, what: str) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise RegistryError(f"{what} must be JSON-serialisable: {exc}") from None


def _metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    bad = [k for k, v in metrics.items() if isinstance(v, bool) or not isinstance(v, (int, float))]
    if bad:
        raise RegistryError(f"metrics must be numbers; not: {', '.join(map(str, bad))}")
    return {str(k): v for k, v in metrics.items()}


class Registry(Lifecycle):
    """Model versions, aliases and deployments in a folder; see the module docstring.

    ``publisher`` (e.g. a :class:`~tidal.registry.KafkaPublisher`) receives every deployment;
    without one, changes are only recorded on disk.

    >>> import shutil, tempfile
    >>> from sklearn.linear_model import LogisticRegression
    >>> registry = Registry(tempfile.mkdtemp())
    >>> model = LogisticRegression().fit([[0.0, 1.0], [1.0, 0.0]], [0, 1])
    >>> registry.register("fraud", model, features=["amount", "hour"], metrics={"auc": 0.9}).uri
    'models:/fraud/1'
    >>> registry.promote("fraud", 1, reason="first model").new_version
    1
    >>> registry.load("models:/fraud@champion").version
    '1'
    >>> registry.deployment("fraud").primary.version
    '1'
    >>> shutil.rmtree(registry.root)
    """

    def __init__(self, root: str | Path | None = None, publisher: Publisher | None = None, *,
                 timeout: float = 30.0) -> None:
        from tidal.registry.db import Database

        self.root = Path(root or os.environ.get(ENV_REGISTRY) or tidal_home() / "registry").expanduser().absolute()
        self.artifacts = self.root / "artifacts"
        self._tmp = self.root / "tmp"
        self.artifacts.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(exist_ok=True)
        self.db = Database(self.root / "registry.db", timeout)
        self.publisher = publisher
        self._sweep_staging()

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r})"

    def _sweep_staging(self, older_than: float = 86400.0) -> None:
        """Remove what registrations that died a day ago or more left in ``tmp/``."""
        for folder in self._tmp.glob("register-*"):
            try:
                if time.time() - folder.stat().st_mtime > older_than:
                    shutil.rmtree(folder, ignore_errors=True)
            except OSError:
                pass

    # --- registration --------------------------------------------------------------------------

    def register(self, name: str, model: Any = None, *, folder: str | Path | None = None,
                 features: Features | None = None, flavor: str | None = None,
                 categories: Mapping[str, Sequence[str]] | None = None, threshold: float | None = None,
                 task: str | None = None, metrics: Mapping[str, float] | None = None,
                 params: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None,
                 lineage: Mapping[str, Any] | None = None) -> ModelVersion:
        """Register ``model`` (saved with save_model) or an existing model ``folder`` as the next version.

        ``features`` (names, or ``{name: type}``) is required with a model object; with a folder
        it defaults to the card's. Card values (categories, threshold 0.5, task "binary",
        metrics, lineage) are kept unless given. ``lineage`` records where the training data
        came from (topic, partition/offset ranges); ``code_version`` defaults to ``git rev-parse HEAD``.
        A corrupt or unloadable artifact raises :class:`ArtifactError` and records nothing.
        """
        check_name(name)
        if (model is None) == (folder is None):
            raise RegistryError("register needs a model object or folder=, exactly one of them")
        extra = {"params": _json(dict(params or {}), "params"),
                 "tags": {str(k): str(v) for k, v in (tags or {}).items()}}
        staging = Path(tempfile.mkdtemp(prefix="register-", dir=self._tmp))
        try:
            if model is not None:
                if features is None:
                    raise RegistryError("features= is required when registering a model object")
                card = save_model(model, staging, name, 0, list(features), flavor=flavor, categories=categories,
                                  threshold=0.5 if threshold is None else threshold, task=task or "binary")
                loaded = _load_staged(staging, "the saved model")
            else:
                card, loaded = _copy_artifact(Path(folder), staging, flavor)
                card = replace(card, categories={k: list(v) for k, v in (categories or card.categories).items()},
                               threshold=card.threshold if threshold is None else float(threshold),
                               task=task or card.task)
            signature = make_signature(card.features if features is None else features, card.categories)
            if list(signature) != card.features:
                raise RegistryError(f"features {list(signature)} differ from the artifact's {card.features}")
            expected = model_feature_count(loaded.model)
            if expected is not None and expected != len(card.features):
                raise ArtifactError(f"the model takes {expected} features but its signature names "
                                    f"{len(card.features)}: {', '.join(card.features)}")
            merged_lineage = {**card.lineage, **(lineage or {})}
            merged_lineage.setdefault("code_version", code_version())
            card = replace(card, name=name, metrics=_metrics({**card.metrics, **(metrics or {})}),
                           lineage=json.loads(_json(merged_lineage, "lineage")))
            version = self._commit(staging, card, signature, extra)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return self.get(name, version)

    def _commit(self, staging: Path, card: ModelCard, signature: dict[str, str], extra: dict[str, Any]) -> int:
        """Number the staged artifact, move it into the store and record it, in one transaction."""
        now = time.time()
        with self.db.write() as conn:
            clash = conn.execute("SELECT name, version FROM versions WHERE sha256 = ?", (card.sha256,)).fetchone()
            if clash:
                raise RegistryError(f"this artifact is already registered as models:/{clash[0]}/{clash[1]}")
            conn.execute("INSERT OR IGNORE INTO models (name, created_at) VALUES (?, ?)", (card.name, now))
            version = conn.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE name = ?",
                                   (card.name,)).fetchone()[0]
            card = replace(card, version=str(version), created_at=now)
            (staging / CARD).write_text(json.dumps(asdict(card), indent=2))
            dest = self.artifacts / card.sha256
            if dest.exists():  # left by a registration that died before committing (no row has this sha)
                shutil.rmtree(dest)
            os.rename(staging, dest)
            try:
                conn.execute(
                    "INSERT INTO versions (name, version, flavor, signature, sha256, metrics, params, tags, lineage,"
                    " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (card.name, version, card.flavor, json.dumps(signature), card.sha256, json.dumps(card.metrics),
                     extra["params"], json.dumps(extra["tags"]), json.dumps(card.lineage), now))
            except BaseException:
                os.rename(dest, staging)
                raise
        return version

    # --- reading -------------------------------------------------------------------------------

    def get(self, name: str, version: int | str) -> ModelVersion:
        """One version by number (or alias, or ``"latest"``); :class:`NotFound` if missing."""
        return self.resolve(version_or_alias(name, version))

    def resolve(self, ref: str | Ref) -> ModelVersion:
        """``models:/NAME/3``, ``models:/NAME@ALIAS``, ``NAME/3``, ``NAME@ALIAS`` → the version."""
        ref = parse_ref(ref) if isinstance(ref, str) else ref
        with self.db.read() as conn:
            return self._resolve(conn, ref)

    def load(self, ref: str | Ref) -> LoadedModel:
        """Load a version from the store; refuses (ArtifactError) an artifact that was modified."""
        mv = self.resolve(ref)
        loaded = load_model(mv.path, mv.sha256)  # the database's checksum, checked before the file is read
        card = loaded.card
        if (card.sha256, card.name, card.version) != (mv.sha256, mv.name, str(mv.version)):
            raise ArtifactError(f"{mv.path}: its card does not match the registry's record of {mv.uri}; "
                                "the artifact was modified")
        return loaded

    def list_models(self) -> list[ModelInfo]:
        with self.db.read() as conn:
            rows = conn.execute("SELECT m.name, m.created_at, COUNT(v.version), MAX(v.version) FROM models m"
                                " JOIN versions v ON v.name = m.name GROUP BY m.name ORDER BY m.name").fetchall()
            aliases = conn.execute("SELECT name, alias, version FROM aliases ORDER BY alias").fetchall()
        by_name: dict[str, dict[str, int]] = {}
        for n, a, v in aliases:
            by_name.setdefault(n, {})[a] = v
        return [ModelInfo(n, count, latest, by_name.get(n, {}), created) for n, created, count, latest in rows]

    def versions(self, name: str) -> list[ModelVersion]:
        """Every version of ``name``, oldest first (archived ones included)."""
        with self.db.read() as conn:
            rows = conn.execute("SELECT * FROM versions WHERE name = ? ORDER BY version", (check_name(name),))
            out = [self._version(r) for r in rows.fetchall()]
            if not out:
                raise NotFound(self._missing(conn, Ref(name)))
        return out

    def compare(self, name: str, versions: Sequence[int | str]) -> dict[str, dict[int, float | None]]:
        """Metrics side by side: ``{metric: {version: value or None}}``."""
        mvs = [self.get(name, v) for v in versions]
        keys = sorted({k for mv in mvs for k in mv.metrics})
        return {k: {mv.version: mv.metrics.get(k) for mv in mvs} for k in keys}

    def _resolve(self, conn: Any, ref: Ref) -> ModelVersion:
        if ref.alias:
            row = conn.execute("SELECT v.* FROM aliases a JOIN versions v ON v.name = a.name AND v.version = a.version"
                               " WHERE a.name = ? AND a.alias = ?", (ref.name, ref.alias)).fetchone()
        elif ref.version is None:
            row = conn.execute("SELECT * FROM versions WHERE name = ? AND status = 'active' ORDER BY version DESC"
                               " LIMIT 1", (ref.name,)).fetchone()
        else:
            row = conn.execute("SELECT * FROM versions WHERE name = ? AND version = ?",
                               (ref.name, ref.version)).fetchone()
        if row is None:
            raise NotFound(self._missing(conn, ref))
        return self._version(row)

    def _missing(self, conn: Any, ref: Ref) -> str:
        if conn.execute("SELECT 1 FROM models WHERE name = ?", (ref.name,)).fetchone() is None:
            return f"no model named {ref.name!r} in the registry at {self.root}"
        if ref.alias:
            return f"{ref.name} has no alias {ref.alias!r}"
        return f"{ref.name} has no version {ref.version}" if ref.version else f"{ref.name} has no active version"

    def _version(self, row: Any) -> ModelVersion:
        signature = json.loads(row["signature"])
        return ModelVersion(name=row["name"], version=row["version"], flavor=row["flavor"], features=list(signature),
                            path=self.artifacts / row["sha256"], sha256=row["sha256"],
                            metrics=json.loads(row["metrics"]), params=json.loads(row["params"]),
                            tags=json.loads(row["tags"]), lineage=json.loads(row["lineage"]),
                            created_at=row["created_at"], status=row["status"], signature=signature)


def _load_staged(folder: Path, source: str) -> LoadedModel:
    """load_model, with every way a model can fail to deserialise turned into an ArtifactError."""
    try:
        return load_model(folder)
    except ArtifactError as exc:
        raise ArtifactError(str(exc).replace(str(folder), source)) from None
    except Exception as exc:  # the flavor's own loader: LightGBMError, UnpicklingError, EOFError, ...
        raise ArtifactError(f"{source}: cannot load the model ({type(exc).__name__}: {exc})") from exc


def _copy_artifact(src: Path, staging: Path, flavor: str | None) -> tuple[ModelCard, LoadedModel]:
    """Check that ``src`` loads, then copy its card and model file (nothing else) into ``staging``."""
    if not src.is_dir():
        raise ArtifactError(f"{src}: not a folder")
    loaded = _load_staged(src, str(src))
    card = loaded.card
    if Path(card.file).name != card.file:
        raise ArtifactError(f"{src / CARD}: model file {card.file!r} is not a plain file name")
    if flavor and flavor != card.flavor:
        raise ArtifactError(f"{src}: flavor {card.flavor!r} on the card, {flavor!r} given")
    shutil.copyfile(src / CARD, staging / CARD)
    shutil.copyfile(src / card.file, staging / card.file)
    with open(staging / card.file, "rb") as f:
        copied = hashlib.file_digest(f, "sha256").hexdigest()
    if copied != card.sha256:
        raise ArtifactError(f"{src / card.file}: changed while it was being registered")
    return card, loaded
