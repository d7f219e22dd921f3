"""Aliases, archiving and deployments: the registry operations that change what serves.

Every alias move is recorded in ``alias_history`` (time, old version, new version, reason),
which is what :meth:`Lifecycle.rollback` walks back through. Moving the ``champion`` alias
(promote, rollback, set_alias) also deploys it (mode ``single``). A deployment gets the next
``seq`` of its model, is recorded in ``deployments`` and handed to the publisher while the
write lock is held, so published records are in ``seq`` order; if publishing fails the change
stays recorded and :class:`PublishError` is raised (``republish`` sends it again).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from tidal.registry.deployment import Deployment
from tidal.registry.publish import PublishError
from tidal.registry.records import ACTIVE, ARCHIVED, CHAMPION, AliasMove, ModelVersion, Publisher
from tidal.registry.signature import Features, check_signature
from tidal.registry.uri import NotFound, Ref, RegistryError, check_alias, check_name, version_or_alias

if TYPE_CHECKING:
    from tidal.registry.db import Database

__all__ = ["Lifecycle"]


class Lifecycle:
    """Alias, archive and deployment methods of :class:`tidal.registry.Registry`."""

    db: "Database"
    publisher: Publisher | None

    def _resolve(self, conn: sqlite3.Connection, ref: Ref) -> ModelVersion:  # provided by Registry
        raise NotImplementedError

    def _missing(self, conn: sqlite3.Connection, ref: Ref) -> str:  # provided by Registry
        raise NotImplementedError

    # --- aliases -------------------------------------------------------------------------------

    def aliases(self, name: str) -> dict[str, int]:
        """``{alias: version}`` of one model."""
        with self.db.read() as conn:
            rows = conn.execute("SELECT alias, version FROM aliases WHERE name = ? ORDER BY alias", (check_name(name),))
            return {alias: version for alias, version in rows.fetchall()}

    def alias_history(self, name: str, alias: str | None = None) -> list[AliasMove]:
        """Every alias move of ``name`` (or of one alias), oldest first."""
        query, args = "SELECT * FROM alias_history WHERE name = ?", [check_name(name)]
        if alias:
            query, args = query + " AND alias = ?", args + [alias]
        with self.db.read() as conn:
            rows = conn.execute(query + " ORDER BY id", args).fetchall()
        return [AliasMove(r["name"], r["alias"], r["old_version"], r["new_version"], r["action"], r["reason"],
                          r["time"]) for r in rows]

    def set_alias(self, name: str, alias: str, version: int | str, reason: str = "") -> AliasMove:
        """Point ``alias`` at ``version`` (moving ``champion`` also deploys it)."""
        return self._move(name, alias, version, reason, "set")

    def promote(self, name: str, version: int | str, alias: str = CHAMPION, reason: str = "",
                features: Features | Any = None) -> AliasMove:
        """Point ``alias`` (default ``champion``, which deploys) at an active version.

        ``features``, the pipeline's feature names (``["amount", "hour:int"]``, ``{name: type}``
        or a :class:`tidal.Schema`), must be exactly the version's; otherwise
        :class:`SignatureMismatch` names the missing, extra and mistyped features.
        """
        return self._move(name, alias, version, reason, "promote", features)

    def rollback(self, name: str, alias: str = CHAMPION, reason: str = "") -> AliasMove:
        """Undo the alias's last move: back to the version it pointed at before (repeatable)."""
        return self._move(name, alias, None, reason, "rollback")

    def remove_alias(self, name: str, alias: str, reason: str = "") -> AliasMove:
        """Delete an alias (not ``champion``: promote another version instead)."""
        if alias == CHAMPION:
            raise RegistryError("the champion alias cannot be removed; promote another version instead")
        with self.db.write() as conn:
            old = self._alias(conn, check_name(name), check_alias(alias))
            move = AliasMove(name, alias, old, None, "remove", reason, time.time())
            conn.execute("DELETE FROM aliases WHERE name = ? AND alias = ?", (name, alias))
            self._record(conn, move)
        return move

    def _move(self, name: str, alias: str, version: int | str | None, reason: str, action: str,
              features: Any = None) -> AliasMove:
        check_name(name)
        check_alias(alias)
        failure = None
        with self.db.write() as conn:
            old = self._alias(conn, name, alias)
            if version is None:  # rollback
                version = self._undo_target(conn, name, alias)
            mv = self._resolve(conn, version_or_alias(name, version))
            if mv.status != ACTIVE:
                raise RegistryError(f"{mv.uri} is archived; it cannot become {name}@{alias}")
            if features is not None:
                check_signature(mv.uri, mv.signature or {}, features)
            move = AliasMove(name, alias, old, mv.version, action, reason, time.time())
            if old == mv.version:
                return move
            conn.execute("INSERT OR REPLACE INTO aliases (name, alias, version, updated_at) VALUES (?, ?, ?, ?)",
                         (name, alias, mv.version, move.time))
            self._record(conn, move)
            if alias == CHAMPION:
                _, failure = self._deploy(conn, name, "single", mv, None, 0.0, reason or f"{action} {mv.uri}")
        if failure:
            raise failure
        return move

    def _alias(self, conn: sqlite3.Connection, name: str, alias: str) -> int | None:
        row = conn.execute("SELECT version FROM aliases WHERE name = ? AND alias = ?", (name, alias)).fetchone()
        return row[0] if row else None

    def _record(self, conn: sqlite3.Connection, move: AliasMove) -> None:
        conn.execute("INSERT INTO alias_history (name, alias, old_version, new_version, action, reason, time)"
                     " VALUES (?, ?, ?, ?, ?, ?, ?)", (move.name, move.alias, move.old_version, move.new_version,
                                                       move.action, move.reason, move.time))

    def _undo_target(self, conn: sqlite3.Connection, name: str, alias: str) -> int:
        """The version before the alias's last move that no rollback has undone yet."""
        if self._alias(conn, name, alias) is None:
            raise NotFound(self._missing(conn, Ref(name, alias=alias)))
        undone = 0
        rows = conn.execute("SELECT old_version, action FROM alias_history WHERE name = ? AND alias = ?"
                            " ORDER BY id DESC", (name, alias))
        for old, action in rows.fetchall():
            if action == "rollback":
                undone += 1
            elif undone:
                undone -= 1
            elif old is not None:
                return old
            else:
                break
        raise RegistryError(f"{name}@{alias} has no earlier version to roll back to")

    # --- archive -------------------------------------------------------------------------------

    def archive(self, name: str, version: int | str) -> ModelVersion:
        """Mark a version archived: kept and loadable, but never promoted or deployed again."""
        with self.db.write() as conn:
            mv = self._resolve(conn, version_or_alias(name, version))
            pointing = [a for (a,) in conn.execute("SELECT alias FROM aliases WHERE name = ? AND version = ?",
                                                   (name, mv.version)).fetchall()]
            if pointing:
                raise RegistryError(f"{mv.uri} is {', '.join(f'{name}@{a}' for a in pointing)}; "
                                    "move the alias before archiving it")
            latest = self._latest(conn, name)
            if latest and str(mv.version) in (latest.primary.version, getattr(latest.secondary, "version", None)):
                raise RegistryError(f"{mv.uri} is deployed ({latest.mode}, deployment {latest.seq}); "
                                    "deploy other versions first")
            conn.execute("UPDATE versions SET status = ? WHERE name = ? AND version = ?", (ARCHIVED, name, mv.version))
        return replace(mv, status=ARCHIVED)

    # --- deployments ---------------------------------------------------------------------------

    def deploy(self, name: str, mode: str, primary: int | str, secondary: int | str | None = None,
               share: float = 0.0, reason: str = "") -> Deployment:
        """Record and publish how ``name`` is served: ``single``, ``canary``, ``ab`` or ``shadow``.

        ``primary``/``secondary`` are version numbers or aliases; ``share`` is the fraction of
        keys the secondary scores (canary, ab).
        """
        if mode == "single" and secondary is not None:
            raise RegistryError("mode 'single' takes no secondary version")
        with self.db.write() as conn:
            first = self._active(conn, name, primary)
            second = self._active(conn, name, secondary) if secondary is not None else None
            deployment, failure = self._deploy(conn, name, mode, first, second, share, reason)
        if failure:
            raise failure
        return deployment

    def deployment(self, name: str) -> Deployment | None:
        """The current deployment of ``name`` (the latest recorded), or None."""
        with self.db.read() as conn:
            return self._latest(conn, check_name(name))

    def deployments(self, name: str) -> list[Deployment]:
        """Every deployment of ``name``, oldest first."""
        with self.db.read() as conn:
            rows = conn.execute("SELECT record FROM deployments WHERE name = ? ORDER BY seq", (check_name(name),))
            return [Deployment.from_json(r[0]) for r in rows.fetchall()]

    def republish(self, name: str) -> Deployment:
        """Publish the current deployment of ``name`` again (e.g. after a PublishError)."""
        if self.publisher is None:
            raise RegistryError("this registry has no publisher")
        with self.db.write() as conn:
            latest = self._latest(conn, check_name(name))
            if latest is None:
                raise NotFound(f"{name} has no deployment")
            failure = self._publish(conn, latest)
        if failure:
            raise failure
        return latest

    def _active(self, conn: sqlite3.Connection, name: str, version: int | str) -> ModelVersion:
        mv = self._resolve(conn, version_or_alias(name, version))
        if mv.status != ACTIVE:
            raise RegistryError(f"{mv.uri} is archived; it cannot be deployed")
        return mv

    def _latest(self, conn: sqlite3.Connection, name: str) -> Deployment | None:
        row = conn.execute("SELECT record FROM deployments WHERE name = ? ORDER BY seq DESC LIMIT 1",
                           (name,)).fetchone()
        return Deployment.from_json(row[0]) if row else None

    def _deploy(self, conn: sqlite3.Connection, name: str, mode: str, primary: ModelVersion,
                secondary: ModelVersion | None, share: float, reason: str) -> tuple[Deployment, PublishError | None]:
        conn.execute("UPDATE models SET deploy_seq = deploy_seq + 1 WHERE name = ?", (name,))
        seq = conn.execute("SELECT deploy_seq FROM models WHERE name = ?", (name,)).fetchone()[0]
        try:
            deployment = Deployment(name, mode, primary.target(), secondary.target() if secondary else None,
                                    share=float(share), seq=seq, time=time.time(), reason=reason)
        except (TypeError, ValueError) as exc:
            raise RegistryError(str(exc)) from None
        conn.execute("INSERT INTO deployments (name, seq, mode, primary_version, secondary_version, share, reason,"
                     " time, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (name, seq, mode, primary.version, secondary.version if secondary else None, deployment.share,
                      reason, deployment.time, deployment.to_json()))
        return deployment, self._publish(conn, deployment)

    def _publish(self, conn: sqlite3.Connection, deployment: Deployment) -> PublishError | None:
        """Hand the deployment to the publisher; a failure is returned, so the change still commits."""
        if self.publisher is None:
            return None
        try:
            self.publisher(deployment)
        except Exception as exc:
            failure = PublishError(f"deployment {deployment.seq} of {deployment.model} is recorded in the registry "
                                   f"but was not published: {exc}")
            failure.__cause__ = exc
            return failure
        conn.execute("UPDATE deployments SET published = 1 WHERE name = ? AND seq = ?",
                     (deployment.model, deployment.seq))
        return None
