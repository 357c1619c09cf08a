"""Training SANE on model zoos with Accelerate: options, data pipeline, loop."""

from .arguments import SaneTrainingArguments, parse_epochs, parse_training_args
from .data import Augmentation, TokenBatch, ZooData
from .evaluation import encode_split, probe_scores
from .trainer import SaneTrainer, TrainingDivergedError, TrainResult, train_sane

__all__ = [
    "Augmentation",
    "SaneTrainer",
    "SaneTrainingArguments",
    "TokenBatch",
    "TrainResult",
    "TrainingDivergedError",
    "ZooData",
    "encode_split",
    "parse_epochs",
    "parse_training_args",
    "probe_scores",
    "train_sane",
]
