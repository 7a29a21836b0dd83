"""Training engine: ``train(config) -> summary`` with resumable checkpoints and DDP support."""

from mosa.engine.config import DataConfig, OptimConfig, TrainConfig
from mosa.engine.errors import (
    ClassCountError,
    ResumeError,
    TrainingDivergedError,
    TrainingError,
)
from mosa.engine.losses import classification_loss, hidden_consistency, symmetric_kl
from mosa.engine.multitask import TaskView, adapter_tasks, load_for_eval, task_order
from mosa.engine.optim import SparseAdamW, WarmupCosine, build_optimizer, lr_at
from mosa.engine.trainer import build_backbone, seed_everything, train

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
    "adapter_tasks",
    "build_backbone",
    "build_optimizer",
    "classification_loss",
    "hidden_consistency",
    "load_for_eval",
    "lr_at",
    "seed_everything",
    "symmetric_kl",
    "task_order",
    "train",
]
