"""Learning from the stream: joining delayed labels with predictions."""

from tidal.learn.labels import LabelJoinStep

__all__ = ["LabelJoinStep"]
