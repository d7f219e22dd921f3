"""What a worker trusts in a deployment record on ``tidal.models`` before it loads any code.

A deployment record names model files on disk, and loading a pickled flavor (scikit-learn,
River) runs code from that file. So a follower, before it deserialises anything:

1. with ``TIDAL_DEPLOY_KEY`` set (the same secret on publishers and workers), accepts only
   records whose ``tidal.signature`` header is the HMAC-SHA256 of the record under that key;
2. ignores records whose ``seq`` is not newer than the deployment it serves (replays);
3. loads a version from its own registry when it has one (the record's path is ignored and
   its checksum must be the registry database's), else only from a folder inside a trusted
   root (``TIDAL_MODEL_ROOTS``, ``os.pathsep``-separated; default the registry folder,
   ``$TIDAL_REGISTRY`` or ``$TIDAL_HOME/registry``);
4. checks the model file's SHA-256 against the record's (signed, or the registry's) before
   the flavor reads it (:func:`tidal.models.artifact.load_model` with ``sha256``).

>>> key = b"s3cret"
>>> h = sign_headers(b'{"model":"m"}', key)
>>> verify(b'{"model":"m"}', h, key), verify(b'{"model":"x"}', h, key), verify(b'{"model":"m"}', [], key)
(True, False, False)
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path
from typing import Any, Sequence

__all__ = ["ENV_KEY", "ENV_ROOTS", "HEADER", "UntrustedDeployment", "deploy_key", "sign_headers", "verify",
           "trusted_roots", "check_inside"]

ENV_KEY = "TIDAL_DEPLOY_KEY"
ENV_ROOTS = "TIDAL_MODEL_ROOTS"
HEADER = "tidal.signature"


class UntrustedDeployment(ValueError):
    """A deployment record this worker refuses (unsigned, forged, replayed, or outside its roots)."""


def deploy_key() -> bytes | None:
    """The shared signing key from ``$TIDAL_DEPLOY_KEY`` (None: records are not signed or checked)."""
    key = os.environ.get(ENV_KEY)
    return key.encode() if key else None


def sign_headers(value: bytes, key: bytes | None = None) -> list[tuple[str, bytes]]:
    """The header that signs ``value`` (none without a key)."""
    key = deploy_key() if key is None else key
    if not key:
        return []
    return [(HEADER, hmac.new(key, value, hashlib.sha256).hexdigest().encode())]


def verify(value: bytes, headers: Sequence[tuple[str, Any]] | None, key: bytes) -> bool:
    """Whether ``headers`` carry a valid signature of ``value`` under ``key``."""
    want = hmac.new(key, value, hashlib.sha256).hexdigest().encode()
    got = [v for k, v in (headers or []) if k == HEADER]
    return bool(got) and hmac.compare_digest(bytes(got[-1] or b""), want)


def trusted_roots() -> list[Path]:
    """Folders a follower without a registry may load models from."""
    env = os.environ.get(ENV_ROOTS)
    if env:
        return [Path(p).resolve() for p in env.split(os.pathsep) if p]
    home = Path(os.environ.get("TIDAL_HOME", Path.home() / ".tidal"))  # the registry's default folder
    return [Path(os.environ.get("TIDAL_REGISTRY", home / "registry")).resolve()]


def check_inside(path: str | Path, roots: Sequence[Path]) -> Path:
    """``path`` resolved (links followed), if it lies inside one of ``roots``; else refuse it."""
    real = Path(path).resolve()
    if not any(real == r or r in real.parents for r in roots):
        raise UntrustedDeployment(f"{path}: outside the trusted model folders {[str(r) for r in roots]} "
                                  f"(set {ENV_ROOTS}, or give the worker its registry)")
    return real
