"""A training run's parts, built once before its first step: the resolved config, the tasks
and their heads, the loaders, the optimizer and schedule, the training forward's wrappers and
the hooks the loss needs. :func:`build_parts` makes them in a fixed order (every random draw
of model building and data shuffling happens in it, as in an uninterrupted run), and
:func:`restore` loads a checkpoint into them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import mosa
from mosa.backbones.arch import find_architecture
from mosa.backbones.zoo import load_backbone
from mosa.engine.config import DataConfig, TrainConfig, config_changes
from mosa.engine.data import (
    TaskData,
    build_tasks,
    check_class_count,
    check_task_labels,
    eval_loader,
    per_rank_batch,
    resolve_data_configs,
    resolve_input,
    train_loader,
)
from mosa.engine.distributed import DistInfo, barrier
from mosa.engine.errors import ClassCountError, ResumeError, TrainingError
from mosa.engine.multitask import TaskModel, TaskStream
from mosa.engine.optim import ExpertTracker, WarmupCosine, build_optimizer
from mosa.engine.state import TrainState, find_last, load_last, read_state
from mosa.heads import (
    attach_task_heads,
    has_task_heads,
    is_joint,
    label_offset,
    task_classes,
    task_names,
)
from mosa.state import find_state

log = logging.getLogger("mosa.engine")

DatasetsArg = Mapping[str, Any] | Sequence[Mapping[str, Any]] | None

SUMMARY_JSON = "summary.json"

# config fields a resumed run may change. out and checkpoint_every never affect the numbers;
# another device or worker count is allowed (a job moved to another machine) but can change
# float rounding or the augmentation random streams, so the result may not be bit-identical.
# compile (and its backend) only changes how the same forward runs: float rounding at most;
# checkpoints written before these keys existed resume as eager runs. optim.accumulate
# gives the same updates (a job moved to a smaller GPU), up to float rounding.
RESUMABLE_CHANGES = (
    "out", "checkpoint_every", "device", "num_workers", "compile", "compile_backend", "eval",
    "optim.accumulate",
)  # fmt: skip


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class HiddenCapture:
    """Forward hooks on the first ``k`` blocks that keep their outputs (deep consistency)."""

    def __init__(self, model: nn.Module, k: int) -> None:
        blocks = [b for _, b in find_architecture(model).blocks(model)][:k]
        if len(blocks) < k:
            raise ValueError(
                f"optim.deep_consistency_blocks={k} but the backbone has {len(blocks)} blocks"
            )
        self.outputs: list[torch.Tensor] = []
        self._handles = [b.register_forward_hook(self._hook) for b in blocks]

    def _hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if module.training and torch.is_grad_enabled():
            self.outputs.append(output if torch.is_tensor(output) else output[0])

    def take(self) -> list[torch.Tensor]:
        out, self.outputs = self.outputs, []
        return out

    def close(self) -> None:
        for h in self._handles:
            h.remove()


@dataclass(frozen=True)
class TaskLayout:
    """The run's tasks and how their labels meet the heads."""

    tasks: list[TaskData]
    multitask: bool
    joint: bool  # one head over the union of every task's classes
    offsets: list[int]  # joint head: where each task's classes start (0 otherwise)


@dataclass(frozen=True)
class Loaders:
    """Per task: the training stream, the val loader and the per-epoch test loader."""

    local_batch: int  # this rank's share of optim.batch_size
    streams: list[TaskStream]
    val: list[Any]  # None where a task has no held-out val split
    # record-only test scores per epoch (eval.test_every_epoch): never read to choose
    epoch_test: list[Any]
    task_steps: list[int]

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch, whatever the task sampling rule."""
        return sum(self.task_steps)


@dataclass(frozen=True)
class Optimization:
    """The optimizer, its schedule, and the parameters it trains."""

    optimizer: torch.optim.Optimizer
    scheduler: WarmupCosine
    params: list[nn.Parameter]  # trainable
    param_names: dict[int, str]  # id(parameter) -> name, as checkpoints store them
    tracker: ExpertTracker | None  # the experts each step picked (masked optimizers)


@dataclass(frozen=True)
class RunParts:
    """Everything a run trains with; built by :func:`build_parts`."""

    config: TrainConfig
    info: DistInfo
    out: Path
    resolved: dict[str, Any]  # the config as config.json holds it
    checkpoint: Path | None  # the run's last/ when it resumes
    checkpoint_doc: dict[str, Any] | None  # that checkpoint's state document
    layout: TaskLayout
    model: nn.Module
    amp: torch.dtype | None
    loaders: Loaders
    optim: Optimization
    # the module a training step calls: the DDP and/or compiled wrapper of the model (a
    # TaskModel in a multi-task run); None: the bare model. Eval, merging and checkpoints
    # always use the bare model.
    train_forward: nn.Module | None
    ddp_module: DistributedDataParallel | None  # for no_sync while gradients accumulate
    capture: HiddenCapture | None

    @property
    def device(self) -> torch.device:
        return self.info.device

    @property
    def consistency(self) -> float:
        """The resolved consistency weight."""
        return self.config.consistency_weight

    def close(self) -> None:
        """Stop the loader workers and remove the hooks from the (maybe caller's) model."""
        for stream in self.loaders.streams:
            stream.stop()
        for h in (self.optim.tracker, self.capture):
            if h is not None:
                h.close()


@dataclass(frozen=True)
class ResumePoint:
    """Where this process starts: after which epoch, inside which epoch, after how long."""

    checkpoint: Path | None
    resumed_from_epoch: int | None
    # a checkpoint written inside an epoch (preemption): where that epoch stopped
    partial: dict[str, Any] | None
    base_elapsed: float  # wall seconds of the earlier processes of this run


def check_out(out: Path, resume: bool) -> Path | None:
    """The checkpoint to resume (None for a new run); refuse an ``out`` that does not fit."""
    last = find_last(out)
    if resume:
        if last is None:
            raise ResumeError(
                f"nothing to resume in {out}: no {out / 'last' / 'state.json'} "
                "(the run wrote no checkpoint yet, or out points elsewhere)"
            )
        return last
    if last is not None or (out / SUMMARY_JSON).exists():
        raise TrainingError(
            f"{out} already holds a run: continue it with `mosa train --resume "
            f"{out}` (Python: resume=True) or choose another --out"
        )
    return None


def resolve_config(
    config: TrainConfig, model: nn.Module | None
) -> tuple[list[DataConfig], dict[str, Any]]:
    """The data configs with image size and normalisation filled in, and the config as
    ``config.json`` holds it."""
    size, mean, std = resolve_input(config, model)
    data_cfgs = resolve_data_configs(config, size, mean, std)
    resolved = dataclasses.replace(
        config,
        data=data_cfgs,
        optim=dataclasses.replace(config.optim, consistency=config.consistency_weight),
    )
    return data_cfgs, json.loads(json.dumps(resolved.to_dict()))


def read_checkpoint(checkpoint: Path, resolved: dict[str, Any], info: DistInfo) -> dict[str, Any]:
    """The checkpoint's state document, once its config is known to match this run's."""
    doc = read_state(checkpoint)
    changed = config_changes(doc["config"], resolved, ignore=RESUMABLE_CHANGES)
    if changed:
        raise ResumeError(
            f"{checkpoint} was written with another configuration; changed fields: "
            + "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(changed.items())[:8])
        )
    for key in ("device", "num_workers"):
        if doc["config"].get(key) != resolved.get(key) and info.is_main:
            log.warning(
                "resuming with %s=%r instead of %r: the result may differ from an "
                "uninterrupted run in the last digits",
                key,
                resolved.get(key),
                doc["config"].get(key),
            )
    return doc


def _inject_method(model: nn.Module, config: TrainConfig) -> None:
    """Inject ``config.method`` unless the model already carries it; refuse a merged model
    or one injected with another method config."""
    state = find_state(model)
    if state is None:
        if config.multitask and not has_task_heads(model):
            model.reset_classifier(0)  # before inject, which unfreezes the classifier
        mosa.inject(model, config.method)
    elif state.config != config.method:
        raise TrainingError(
            "the given model was injected with another method config than config.method; "
            "pass an un-injected model"
        )
    if state is not None and state.merged:
        raise TrainingError("the given model is merged; training needs the unmerged model")


def prepare_model(
    config: TrainConfig, tasks: list[TaskData], model: nn.Module | None, device: torch.device
) -> nn.Module:
    """The injected model: the given one or ``config.backbone``, with a head per task in a
    multi-task run (its timm classifier reset to Identity)."""
    if model is None:
        # a real class count (a local weights file's head is then dropped as usual); a
        # multi-task run replaces that head by its task heads
        model = load_backbone(num_classes=tasks[0].num_classes, **config.backbone_args())
    _inject_method(model, config)
    if config.multitask:
        classes = {t.name: t.num_classes for t in tasks}
        if not has_task_heads(model):
            attach_task_heads(model, classes, joint=config.joint_head)
        have = {n: task_classes(model, n) for n in task_names(model)}
        if have != classes or is_joint(model) != config.joint_head:
            raise ClassCountError(
                f"the given model's task heads ({have}, joint={is_joint(model)}) do not fit "
                f"the tasks ({classes}, joint={config.joint_head}); pass a model without heads"
            )
        for t in tasks:
            check_task_labels(t)
    else:
        check_class_count(model, tasks[0])
    return model.to(device)


def amp_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the training and eval forwards (None: fp32)."""
    amp = config.optim.amp
    if device.type == "cuda" and amp in ("auto", "bf16"):
        return torch.bfloat16
    if amp == "bf16":
        log.warning("optim.amp='bf16' applies to CUDA only; this %s run uses fp32", device)
    return None


def build_loaders(config: TrainConfig, info: DistInfo, tasks: list[TaskData]) -> Loaders:
    """Per task: a seeded training stream, and the val and per-epoch test loaders."""
    local_batch = per_rank_batch(config.optim.batch_size, info)
    streams: list[TaskStream] = []
    val: list[Any] = []
    for i, task in enumerate(tasks):
        # task 0 keeps the single-task shuffle; the others get their own streams
        task_seed = config.seed + 1_000_003 * i
        loader, sampler, loader_gen = train_loader(
            task.train, local_batch, info, task_seed, config.num_workers
        )
        if len(loader) == 0:
            raise TrainingError(f"task {task.name!r} has an empty train split")
        streams.append(TaskStream(loader, sampler, loader_gen, task_seed))
        val.append(
            eval_loader(task.val, local_batch, info, config.num_workers)
            if task.val is not None
            else None
        )
    epoch_test = [
        eval_loader(task.test, local_batch, info, config.num_workers)
        if config.eval.test_every_epoch and task.test is not None
        else None
        for task in tasks
    ]
    return Loaders(local_batch, streams, val, epoch_test, [len(s) for s in streams])


def build_optimization(config: TrainConfig, model: nn.Module, steps: int) -> Optimization:
    """The optimizer and its warmup-cosine schedule over ``steps`` steps per epoch."""
    ocfg = config.optim
    optimizer = build_optimizer(model, ocfg)
    scheduler = WarmupCosine(
        optimizer,
        total_steps=ocfg.epochs * steps,
        warmup_steps=ocfg.warmup_epochs * steps,
        min_lr=ocfg.min_lr,
    )
    return Optimization(
        optimizer,
        scheduler,
        params=[p for p in model.parameters() if p.requires_grad],
        param_names={id(p): n for n, p in model.named_parameters()},
        tracker=ExpertTracker(model) if optimizer.has_masked else None,
    )


def _allow_graphs_per_task(tasks: int) -> None:
    """A multi-task forward gets one compiled graph per task (the task name is a constant of
    the graph); dynamo's default limit of 8 per function would send the rest to eager."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), 2 * tasks))


def build_train_forward(
    config: TrainConfig, info: DistInfo, model: nn.Module, layout: TaskLayout
) -> tuple[nn.Module | None, DistributedDataParallel | None]:
    """(the training forward's DDP and/or compiled wrapper, the DDP module); (None, None)
    when the training step calls the bare model."""
    if not (info.distributed or config.compile):
        return None, None
    fwd: nn.Module = TaskModel(model) if layout.multitask else model
    ddp = None
    if info.distributed:
        ids = [info.device.index] if info.device.type == "cuda" else None
        # buffers (partitions, initial weights) never change: no per-step broadcast.
        # Multi-task: every rank runs the same task in a step; the other tasks' heads
        # get no gradient on any rank, which DDP must be told (grads stay None).
        fwd = ddp = DistributedDataParallel(
            fwd,
            device_ids=ids,
            broadcast_buffers=False,
            find_unused_parameters=layout.multitask and not layout.joint,
        )
    if config.compile:
        fwd = torch.compile(fwd, backend=config.compile_backend)
        _allow_graphs_per_task(len(layout.tasks))
    return fwd, ddp


def _set_up_device(config: TrainConfig, info: DistInfo) -> None:
    """Seed every generator and reset the device's counters before anything is built."""
    seed_everything(config.seed)
    if info.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats(info.device)


def build_parts(
    config: TrainConfig,
    info: DistInfo,
    model: nn.Module | None,
    datasets: DatasetsArg,
    resume: bool,
) -> RunParts:
    """Check ``config.out``, read the checkpoint to resume (with ``resume``), build the tasks,
    the model, the loaders, the optimizer and the forward wrappers, in that order."""
    out = Path(config.out)
    checkpoint = check_out(out, resume)
    barrier(info)  # every rank looked at out/ before rank 0 writes to it
    _set_up_device(config, info)
    data_cfgs, resolved = resolve_config(config, model)
    doc = read_checkpoint(checkpoint, resolved, info) if checkpoint is not None else None
    tasks = build_tasks(
        data_cfgs,
        config.seed,
        datasets,
        out=out,
        resume=checkpoint is not None,
        write=info.is_main,
    )
    for task in tasks:
        if task.val_note and info.is_main:
            log.info("task %r: %s", task.name, task.val_note)
    model = prepare_model(config, tasks, model, info.device)
    joint = config.multitask and is_joint(model)
    offsets = [label_offset(model, t.name) if joint else 0 for t in tasks]
    layout = TaskLayout(tasks, config.multitask, joint, offsets)
    amp = amp_dtype(config, info.device)
    if config.method.routing == "sample" and info.distributed:
        log.warning(
            "routing='sample' under DDP: every rank draws its picks from the same stream, so "
            "item i of each rank's share gets the same expert (picks stay uniform per item)"
        )
    loaders = build_loaders(config, info, tasks)
    optim = build_optimization(config, model, loaders.steps_per_epoch)
    train_forward, ddp_module = build_train_forward(config, info, model, layout)
    k = config.optim.deep_consistency_blocks
    capture = HiddenCapture(model, k) if config.deep_consistency_weight > 0 else None
    return RunParts(
        config, info, out, resolved, checkpoint, doc, layout, model, amp, loaders, optim,
        train_forward, ddp_module, capture,
    )  # fmt: skip


def restore(parts: RunParts) -> tuple[TrainState, ResumePoint]:
    """The loop's state: a new run's, or the checkpoint's loaded into model, optimizer and
    schedule; with where this process starts."""
    state = TrainState(epoch=0, global_step=0, history=[], elapsed_s=0.0)
    checkpoint, doc = parts.checkpoint, parts.checkpoint_doc
    if checkpoint is None or doc is None:
        return state, ResumePoint(None, None, None, state.elapsed_s)
    state = load_last(
        checkpoint,
        doc,
        model=parts.model,
        optimizer=parts.optim.optimizer,
        scheduler=parts.optim.scheduler,
        param_names=parts.optim.param_names,
    )
    if parts.info.is_main:
        log.info("resuming %s after epoch %d (step %d)", parts.out, state.epoch, state.global_step)
    return state, ResumePoint(checkpoint, state.epoch, doc.get("partial"), state.elapsed_s)
