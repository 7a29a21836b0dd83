"""Training engine: ``train(config) -> summary`` with resumable checkpoints and DDP support."""

from mosa.engine.config import DataConfig, OptimConfig, TrainConfig
from mosa.engine.errors import (
    ClassCountError,
    ResumeError,
    TrainingDivergedError,
    TrainingError,
)
from mosa.engine.losses import classification_loss, hidden_consistency, symmetric_kl
from mosa.engine.multitask import task_order
from mosa.engine.optim import SparseAdamW, WarmupCosine, build_optimizer, lr_at
from mosa.engine.run_parts import seed_everything
from mosa.engine.trainer import train
from mosa.heads import TaskView

__all__ = [
    "ClassCountError",
    "DataConfig",
    "OptimConfig",
    "ResumeError",
    "SparseAdamW",
    "TaskView",
    "TrainConfig",
    "TrainingDivergedError",
    "TrainingError",
    "WarmupCosine",
    "build_optimizer",
    "classification_loss",
    "hidden_consistency",
    "lr_at",
    "seed_everything",
    "symmetric_kl",
    "task_order",
    "train",
]
