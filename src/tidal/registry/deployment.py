"""Deployment records (what ``tidal.models`` carries) live with the models that follow them:
:mod:`tidal.models.deployment`; re-exported here for the registry that writes them."""

from tidal.models.deployment import MODES, Deployment, Target  # noqa: F401

__all__ = ["Deployment", "Target", "MODES"]
