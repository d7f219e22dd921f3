"""References to registered models: ``models:/fraud/3``, ``models:/fraud@champion``, ``fraud/3``.

The ``models:/`` form is MLflow's; the short forms drop the scheme. ``latest`` stands for the
newest active version (``fraud/latest``, ``fraud@latest``). A bare name is refused: say which
version you mean.

>>> parse_ref("models:/fraud/3")
Ref(name='fraud', version=3, alias=None)
>>> parse_ref("fraud@champion")
Ref(name='fraud', version=None, alias='champion')
>>> parse_ref("models:/fraud/latest").uri
'models:/fraud/latest'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Ref", "parse_ref", "version_or_alias", "check_name", "check_alias", "RegistryError", "NotFound",
           "LATEST", "SCHEME"]

SCHEME = "models:/"
LATEST = "latest"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_ALIAS = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
_DIGITS = re.compile(r"[0-9]{1,18}")


class RegistryError(ValueError):
    """A registry operation was refused: bad input, a conflict, or a rule (e.g. archived versions)."""


class NotFound(RegistryError, LookupError):
    """No such model, version or alias."""


def check_name(name: str) -> str:
    """``name`` if it is a valid model name (letters, digits, ``_ . -``; no ``/`` or ``@``)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise RegistryError(f"invalid model name {name!r}: use letters, digits, '_', '.', '-' (no '/' or '@')")
    return name


def check_alias(alias: str) -> str:
    """``alias`` if it is a valid alias: starts with a letter, so it never reads as a version."""
    if not isinstance(alias, str) or not _ALIAS.fullmatch(alias) or alias == LATEST:
        raise RegistryError(f"invalid alias {alias!r}: start with a letter; letters, digits, '_', '-'; not {LATEST!r}")
    return alias


@dataclass(frozen=True)
class Ref:
    """A model name plus either a version number or an alias (``version=None, alias=None``: latest)."""

    name: str
    version: int | None = None
    alias: str | None = None

    @property
    def uri(self) -> str:
        if self.alias:
            return f"{SCHEME}{self.name}@{self.alias}"
        return f"{SCHEME}{self.name}/{self.version if self.version is not None else LATEST}"


def version_or_alias(name: str, spec: int | str) -> Ref:
    """A :class:`Ref` from a name and ``3``, ``"3"``, ``"latest"`` or an alias."""
    check_name(name)
    if isinstance(spec, bool):
        raise RegistryError(f"invalid version {spec!r}")
    if isinstance(spec, int) or (isinstance(spec, str) and _DIGITS.fullmatch(spec)):
        version = int(spec)
        if version < 1:
            raise RegistryError(f"invalid version {spec!r}: versions start at 1")
        return Ref(name, version)
    if spec == LATEST:
        return Ref(name)
    return Ref(name, alias=check_alias(spec))


def parse_ref(ref: str) -> Ref:
    """Parse ``models:/NAME/VERSION``, ``models:/NAME@ALIAS`` or the same without ``models:/``."""
    if not isinstance(ref, str):
        raise RegistryError(f"expected a model reference string, got {type(ref).__name__}")
    text = ref[len(SCHEME):] if ref.startswith(SCHEME) else ref
    if "@" in text:
        name, _, alias = text.partition("@")
        return Ref(check_name(name)) if alias == LATEST else Ref(check_name(name), alias=check_alias(alias))
    if "/" in text:
        name, _, version = text.partition("/")
        if _DIGITS.fullmatch(version) or version == LATEST:
            return version_or_alias(name, version)
    raise RegistryError(f"cannot read model reference {ref!r}: use models:/NAME/VERSION, models:/NAME@ALIAS, "
                        "NAME/VERSION or NAME@ALIAS")
