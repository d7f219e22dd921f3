"""Errors of model artifacts and runtimes."""

from __future__ import annotations

__all__ = ["ArtifactError", "NotSupported"]


class ArtifactError(RuntimeError):
    """The artifact is missing, corrupt, or of an unknown flavor."""


class NotSupported(ValueError, NotImplementedError):
    """The flavor cannot do this (explain, convert to ONNX, learn online)."""
