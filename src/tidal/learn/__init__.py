"""Learning from the stream: delayed labels joined with predictions, online learning, batch
training from replayed topics, and retraining when drift is detected."""

from tidal.learn.labels import LabelJoinStep
from tidal.learn.online import DiscardStep, OnlineLearnStep, learn_pipeline, model_flavor, resume_model
from tidal.learn.retrain import RetrainStep, Trigger
from tidal.learn.train import (MODEL_KINDS, TrainingData, TrainResult, evaluate, fit_model, load_training_data,
                               predict_scores, train_from_topic)

__all__ = ["DiscardStep", "LabelJoinStep", "MODEL_KINDS", "OnlineLearnStep", "RetrainStep", "TrainResult",
           "TrainingData", "Trigger", "evaluate", "fit_model", "learn_pipeline", "load_training_data", "model_flavor",
           "predict_scores", "resume_model", "train_from_topic"]
