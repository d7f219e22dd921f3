"""Models: artifacts on disk (checksummed) and the batch scoring step."""

from tidal.models.artifact import ArtifactError, LoadedModel, ModelCard, load_model, save_model
from tidal.models.deployed import DeployedScoreStep
from tidal.models.score import ScoreStep

__all__ = ["ArtifactError", "DeployedScoreStep", "LoadedModel", "ModelCard", "ScoreStep", "load_model", "save_model"]
