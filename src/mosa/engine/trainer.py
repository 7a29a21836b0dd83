"""The training loop: ``train(config) -> summary`` (single process, or DDP under torchrun).

What a run writes to ``config.out`` (rank 0 only):

- ``config.json``: the resolved TrainConfig (image size, mean/std, consistency weight filled
  in); ``TrainConfig.from_dict`` reads it back.
- ``metrics.jsonl``: one JSON record per epoch: ``epoch``, ``global_step``, ``train_loss``
  (the whole objective), ``train_ce``, ``train_consistency`` / ``train_deep_consistency``
  (None when off), ``train_acc``, ``val_acc`` / ``val_loss`` (None without a held-out val
  split; in a multi-task run the mean over the tasks that have one), ``lr`` (of the epoch's
  last update), ``train_images``, ``train_seconds``, ``epoch_seconds``, ``images_per_s``, and
  ``tasks``: per task ``steps``, ``train_images``, ``train_loss``, ``train_acc``,
  ``val_acc``, ``val_loss``.
- ``summary.json``: the returned summary (see :meth:`_Run._finish` for the fields).
- ``adapter/``: ``mosa.save_adapter`` of the final, unmerged model (with every task head).
- ``curves.png``: loss and accuracy per epoch.
- ``last/``: the resumable checkpoint (:mod:`mosa.engine.state`).
- ``shots_<task>.json`` (and ``shots_<task>_val.json``): the few-shot draw of a task with
  ``data.shots`` set (:mod:`mosa.engine.data`).

Several data sets (``config.data`` with more than one entry) train one backbone and one
adapter with one head per task (or one joint head), a task per step picked by
:func:`mosa.engine.multitask.task_order` (:mod:`mosa.engine.multitask`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import sys
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import mosa
from mosa.backbones.zoo import load_backbone
from mosa.engine import records
from mosa.engine.config import TrainConfig, flatten_config
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
from mosa.engine.distributed import (
    DistInfo,
    all_equal,
    all_reduce_sum,
    any_true,
    barrier,
    cleanup,
    init_distributed,
)
from mosa.engine.errors import (
    ClassCountError,
    OutOfMemoryError,
    ResumeError,
    TrainingDivergedError,
    TrainingError,
    WriteFailedError,
)
from mosa.engine.evaluate import autocast, evaluate
from mosa.engine.losses import classification_loss, hidden_consistency, symmetric_kl
from mosa.engine.multitask import TaskModel, TaskStream, task_order
from mosa.engine.optim import ExpertTracker, WarmupCosine, build_optimizer
from mosa.engine.plots import plot_curves
from mosa.engine.preempt import RunPreempted, StopSignals
from mosa.engine.state import (
    TrainState,
    find_last,
    load_last,
    read_state,
    restore_rng_from,
    save_last,
)
from mosa.heads import (
    attach_task_heads,
    has_task_heads,
    head_parameters,
    is_joint,
    label_offset,
    task_classes,
    task_logits,
    task_names,
)
from mosa.io import atomic_write_bytes, atomic_write_json
from mosa.model import SharedRoutes
from mosa.state import find_state

log = logging.getLogger("mosa.engine")

EpochCallback = Callable[[dict[str, Any]], None]
DatasetsArg = Mapping[str, Any] | Sequence[Mapping[str, Any]] | None

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

CONFIG_JSON = "config.json"
METRICS_JSONL = "metrics.jsonl"
SUMMARY_JSON = "summary.json"
CURVES_PNG = "curves.png"
ADAPTER_DIR = "adapter"


def train(
    config: TrainConfig,
    *,
    model: nn.Module | None = None,
    datasets: DatasetsArg = None,
    resume: bool = False,
    progress: bool = True,
    on_epoch_end: EpochCallback | None = None,
) -> dict[str, Any]:
    """Fine-tune a backbone with ``config`` and return the run summary (also ``summary.json``).

    ``model``: a timm model to use instead of building ``config.backbone`` (injected with
    ``config.method`` here unless it already is). ``datasets``: pre-built splits instead of
    ``mosa.data.build_dataset``, as ``{"train": ds, "val": ds | None, "test": ds | None}`` or a
    list of such mappings, one per ``config.data`` entry. Several ``config.data`` entries make
    a multi-task run: one adapter, a head per task (``mosa_heads``) or one joint head
    (``config.joint_head``), a task per step (``config.task_sampling``), per-task and mean
    accuracies in the summary. ``data.shots`` trains on k images per class, drawn once and
    kept in ``out/shots_<task>.json`` (a resume reads it back). ``resume``: continue from
    ``config.out/last``. ``on_epoch_end`` is called on every rank with each epoch's metrics
    record, after that epoch's checkpoint was written.

    Launched by torchrun with ``WORLD_SIZE > 1``, it trains with DistributedDataParallel and
    ``config.optim.batch_size`` stays the global batch; only rank 0 writes files.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    info = init_distributed(config.device)
    try:
        return _Run(config, info, model, datasets, progress, on_epoch_end).run(resume)
    finally:
        cleanup(info)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _HiddenCapture:
    """Forward hooks on the first ``k`` blocks that keep their outputs (deep consistency)."""

    def __init__(self, model: nn.Module, k: int) -> None:
        from mosa.backbones.arch import find_architecture

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


def config_changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Fields (dotted) whose values differ, ignoring those a resume may change."""
    a = flatten_config(json.loads(json.dumps(saved)))
    b = flatten_config(json.loads(json.dumps(current)))
    keys = sorted(set(a) | set(b))
    return [
        f"{k}: {a.get(k)!r} -> {b.get(k)!r}"
        for k in keys
        if a.get(k) != b.get(k) and not {k, k.split(".")[0]} & set(RESUMABLE_CHANGES)
    ]


def _allow_graphs_per_task(tasks: int) -> None:
    """A multi-task forward gets one compiled graph per task (the task name is a constant of
    the graph); dynamo's default limit of 8 per function would send the rest to eager."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), 2 * tasks))


def _routing_checksum(model: nn.Module) -> int:
    crc = 0
    for name, state in sorted(mosa.get_rng_state(model).items()):
        crc = zlib.crc32(name.encode(), crc)
        crc = zlib.crc32(state.numpy().tobytes(), crc)
    return crc


def _memory_of(device: torch.device) -> str:
    """The device's total memory, in words."""
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        return f"{total / 2**30:.1f} GiB, {torch.cuda.max_memory_allocated(device) / 2**30:.1f} used at peak"
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return "host memory"
    return f"{total / 2**30:.1f} GiB host memory"


class _Run:
    """One call of :func:`train` in one process."""

    def __init__(
        self,
        config: TrainConfig,
        info: DistInfo,
        model: nn.Module | None,
        datasets: DatasetsArg,
        progress: bool,
        on_epoch_end: EpochCallback | None,
    ) -> None:
        self.config = config
        self.info = info
        self.given_model = model
        self.given_datasets = datasets
        self.progress = progress
        self.on_epoch_end = on_epoch_end
        self.out = Path(config.out)
        self.device = info.device

    # ------------------------------------------------------------------ set-up
    def _check_out(self, resume: bool) -> Path | None:
        last = find_last(self.out)
        if resume:
            if last is None:
                raise ResumeError(
                    f"nothing to resume in {self.out}: no {self.out / 'last' / 'state.json'} "
                    "(the run wrote no checkpoint yet, or out points elsewhere)"
                )
            return last
        if last is not None or (self.out / SUMMARY_JSON).exists():
            raise TrainingError(
                f"{self.out} already holds a run: continue it with `mosa train --resume "
                f"{self.out}` (Python: resume=True) or choose another --out"
            )
        return None

    def _prepare_model(self, tasks: list[TaskData]) -> nn.Module:
        """The injected model: the given one or ``config.backbone``, with a head per task in
        a multi-task run (its timm classifier reset to Identity)."""
        cfg = self.config
        model = self.given_model
        if model is None:
            # a real class count (a local weights file's head is then dropped as usual); a
            # multi-task run replaces that head by its task heads
            model = load_backbone(num_classes=tasks[0].num_classes, **cfg.backbone_args())
        state = find_state(model)
        if state is None:
            if cfg.multitask and not has_task_heads(model):
                model.reset_classifier(0)  # before inject, which unfreezes the classifier
            mosa.inject(model, cfg.method)
        elif state.config != cfg.method:
            raise TrainingError(
                "the given model was injected with another method config than config.method; "
                "pass an un-injected model"
            )
        if state is not None and state.merged:
            raise TrainingError("the given model is merged; training needs the unmerged model")
        if cfg.multitask:
            classes = {t.name: t.num_classes for t in tasks}
            if not has_task_heads(model):
                attach_task_heads(model, classes, joint=cfg.joint_head)
            have = {n: task_classes(model, n) for n in task_names(model)}
            if have != classes or is_joint(model) != cfg.joint_head:
                raise ClassCountError(
                    f"the given model's task heads ({have}, joint={is_joint(model)}) do not fit "
                    f"the tasks ({classes}, joint={cfg.joint_head}); pass a model without heads"
                )
            for t in tasks:
                check_task_labels(t)
        else:
            check_class_count(model, tasks[0])
        return model.to(self.device)

    def _amp_dtype(self) -> torch.dtype | None:
        amp = self.config.optim.amp
        if self.device.type == "cuda" and amp in ("auto", "bf16"):
            return torch.bfloat16
        if amp == "bf16":
            log.warning("optim.amp='bf16' applies to CUDA only; this %s run uses fp32", self.device)
        return None

    # ------------------------------------------------------------------ the run
    def run(self, resume: bool) -> dict[str, Any]:
        self.started = time.perf_counter()
        cfg, info = self.config, self.info
        checkpoint = self._check_out(resume)
        barrier(info)  # every rank looked at out/ before rank 0 writes to it
        seed_everything(cfg.seed)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.cuda.reset_peak_memory_stats(self.device)
        data_cfgs = self._resolve_config()
        doc = self._read_checkpoint(checkpoint) if checkpoint is not None else None
        self.tasks = tasks = build_tasks(
            data_cfgs,
            cfg.seed,
            self.given_datasets,
            out=self.out,
            resume=checkpoint is not None,
            write=info.is_main,
        )
        self.multitask = cfg.multitask
        for task in tasks:
            if task.val_note and info.is_main:
                log.info("task %r: %s", task.name, task.val_note)
        self.model = model = self._prepare_model(tasks)
        self.joint = self.multitask and is_joint(model)
        self.offsets = [label_offset(model, t.name) if self.joint else 0 for t in tasks]
        self.amp = self._amp_dtype()
        if cfg.method.routing == "sample" and info.distributed:
            log.warning(
                "routing='sample' under DDP: every rank draws its picks from the same stream, so "
                "item i of each rank's share gets the same expert (picks stay uniform per item)"
            )
        self._build_loaders(tasks)
        self._build_optimization(model)
        state = self._restore(checkpoint, doc)
        self._write_start(state)
        self._check_routing("start")
        return self._train(state)

    def _resolve_config(self) -> list[Any]:
        """The data configs with image size and normalisation filled in; ``self.resolved`` is
        the config as ``config.json`` holds it."""
        cfg = self.config
        size, mean, std = resolve_input(cfg, self.given_model)
        data_cfgs = resolve_data_configs(cfg, size, mean, std)
        resolved = dataclasses.replace(
            cfg,
            data=data_cfgs,
            optim=dataclasses.replace(cfg.optim, consistency=cfg.consistency_weight),
        )
        self.resolved = json.loads(json.dumps(resolved.to_dict()))
        return data_cfgs

    def _build_loaders(self, tasks: list[TaskData]) -> None:
        cfg, info = self.config, self.info
        self.local_batch = per_rank_batch(cfg.optim.batch_size, info)
        self.streams: list[TaskStream] = []
        self.val_loaders: list[Any] = []
        for i, task in enumerate(tasks):
            # task 0 keeps the single-task shuffle; the others get their own streams
            task_seed = cfg.seed + 1_000_003 * i
            loader, sampler, loader_gen = train_loader(
                task.train, self.local_batch, info, task_seed, cfg.num_workers
            )
            if len(loader) == 0:
                raise TrainingError(f"task {task.name!r} has an empty train split")
            self.streams.append(TaskStream(loader, sampler, loader_gen, task_seed))
            self.val_loaders.append(
                eval_loader(task.val, self.local_batch, info, cfg.num_workers)
                if task.val is not None
                else None
            )
        # record-only test scores per epoch (eval.test_every_epoch): never read to choose
        self.epoch_test_loaders = [
            eval_loader(task.test, self.local_batch, info, cfg.num_workers)
            if cfg.eval.test_every_epoch and task.test is not None
            else None
            for task in tasks
        ]
        self.task_steps = [len(s) for s in self.streams]
        self.steps_per_epoch = sum(self.task_steps)  # per epoch, whatever the sampling rule

    def _build_optimization(self, model: nn.Module) -> None:
        """Optimizer, schedule, and the training forward's wrappers (DDP, torch.compile)."""
        cfg, info, ocfg = self.config, self.info, self.config.optim
        steps = self.steps_per_epoch
        self.optimizer = build_optimizer(model, ocfg)
        self.scheduler = WarmupCosine(
            self.optimizer,
            total_steps=ocfg.epochs * steps,
            warmup_steps=ocfg.warmup_epochs * steps,
            min_lr=ocfg.min_lr,
        )
        self.param_names = {id(p): n for n, p in model.named_parameters()}
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.consistency = cfg.consistency_weight
        self.ddp: nn.Module = model
        self.ddp_module: DistributedDataParallel | None = None
        if info.distributed or cfg.compile:
            # the training forward only: eval, merging and checkpoints use the bare model
            fwd: nn.Module = TaskModel(model) if self.multitask else model
            if info.distributed:
                ids = [self.device.index] if self.device.type == "cuda" else None
                # buffers (partitions, initial weights) never change: no per-step broadcast.
                # Multi-task: every rank runs the same task in a step; the other tasks' heads
                # get no gradient on any rank, which DDP must be told (grads stay None).
                fwd = self.ddp_module = DistributedDataParallel(
                    fwd,
                    device_ids=ids,
                    broadcast_buffers=False,
                    find_unused_parameters=self.multitask and not self.joint,
                )
            if cfg.compile:
                fwd = torch.compile(fwd, backend=cfg.compile_backend)
                _allow_graphs_per_task(len(self.tasks))
            self.ddp = fwd

    def _restore(self, checkpoint: Path | None, doc: dict[str, Any] | None) -> TrainState:
        state = TrainState(epoch=0, global_step=0, history=[], elapsed_s=0.0)
        if checkpoint is not None and doc is not None:
            state = load_last(
                checkpoint,
                doc,
                model=self.model,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                param_names=self.param_names,
            )
            if self.info.is_main:
                log.info(
                    "resuming %s after epoch %d (step %d)", self.out, state.epoch, state.global_step
                )
        self.resumed_from_epoch = state.epoch if checkpoint is not None else None
        # a checkpoint written inside an epoch (preemption): where that epoch stopped
        self.partial = (doc or {}).get("partial") if checkpoint is not None else None
        self.checkpoint = checkpoint
        self.base_elapsed = state.elapsed_s
        return state

    def _train(self, state: TrainState) -> dict[str, Any]:
        """The remaining epochs, then the final scoring; hooks on the (possibly caller's)
        model are removed however the run ends."""
        ocfg = self.config.optim
        self.tracker = ExpertTracker(self.model) if self.optimizer.has_masked else None
        try:
            self.capture = (
                _HiddenCapture(self.model, ocfg.deep_consistency_blocks)
                if self.config.deep_consistency_weight > 0
                else None
            )
            self.two_pass = self.consistency > 0 or self.capture is not None
            with StopSignals() as self.stop:
                for epoch in range(state.epoch + 1, ocfg.epochs + 1):
                    self._epoch(epoch, state)
                    if epoch < ocfg.epochs and self.stop.requested(self.info):
                        self._preempted(epoch, state, self.steps_per_epoch, None)
            return self._finish(state)
        finally:
            for stream in self.streams:
                stream.stop()
            for h in (self.tracker, getattr(self, "capture", None)):
                if h is not None:
                    h.close()

    def _read_checkpoint(self, checkpoint: Path) -> dict[str, Any]:
        """The checkpoint's state document, once its config is known to match this run's."""
        doc = read_state(checkpoint)
        changed = config_changes(doc["config"], self.resolved)
        if changed:
            raise ResumeError(
                f"{checkpoint} was written with another configuration; changed fields: "
                + "; ".join(changed[:8])
            )
        for key in ("device", "num_workers"):
            if doc["config"].get(key) != self.resolved.get(key) and self.info.is_main:
                log.warning(
                    "resuming with %s=%r instead of %r: the result may differ from an "
                    "uninterrupted run in the last digits",
                    key,
                    self.resolved.get(key),
                    doc["config"].get(key),
                )
        return doc

    # ------------------------------------------------------------------ one epoch
    def _epoch(self, epoch: int, state: TrainState) -> None:
        t0 = time.perf_counter()
        sums, steps, lr, carried_s = self._train_steps(epoch, state)
        train_s = time.perf_counter() - t0 + carried_s
        per_task = records.unflatten_sums(
            all_reduce_sum(records.flatten_sums(sums), self.info), len(self.tasks)
        )
        tasks = {
            task.name: records.task_record(
                per_task[i], self._evaluate(i, self.val_loaders[i]), self.info.world_size
            )
            for i, task in enumerate(self.tasks)
        }
        record = records.epoch_record(
            epoch,
            state.global_step,
            per_task,
            tasks,
            lr=lr,
            train_s=train_s,
            consistency=self.consistency > 0,
            deep=bool(self.capture),
        )
        self._check_routing(f"epoch {epoch}")
        self._check_finite(record, epoch, steps, state.global_step)
        self._record_test(record)
        record["epoch_seconds"] = time.perf_counter() - t0
        if self.resumed_from_epoch is not None:  # trained by a process that resumed the run
            record["resumed_from_epoch"] = self.resumed_from_epoch
        state.history.append(record)
        state.epoch = epoch
        # wall time of the work a checkpoint keeps: earlier processes' plus this one's so far
        state.elapsed_s = self.base_elapsed + (time.perf_counter() - self.started)
        if self.info.is_main:
            path = self.out / METRICS_JSONL
            with self._writing("epoch record", path), open(path, "a") as f:
                f.write(json.dumps(record, sort_keys=True) + "\n")
            log.info("%s", records.epoch_line(record, self.config.optim.epochs, self.multitask))
        cfg = self.config
        if epoch % cfg.checkpoint_every == 0 or epoch == cfg.optim.epochs:
            self._save_checkpoint(epoch, state)
        if self.on_epoch_end is not None:
            self.on_epoch_end(dict(record))

    def _record_test(self, record: dict[str, Any]) -> None:
        """With ``eval.test_every_epoch``: each task's test accuracy after this epoch, for the
        record only (``test_acc``; multi-task: the mean) and the seconds it took."""
        if not any(loader is not None for loader in self.epoch_test_loaders):
            return
        t0 = time.perf_counter()
        accs = []
        for i, task in enumerate(self.tasks):
            test = self._evaluate(i, self.epoch_test_loaders[i])
            record["tasks"][task.name]["test_acc"] = test["acc"] if test else None
            if test:
                accs.append(test["acc"])
        record["test_acc"] = sum(accs) / len(accs)
        record["test_seconds"] = time.perf_counter() - t0

    def _preempted(
        self, epoch: int, state: TrainState, steps: int, partial: dict[str, Any] | None
    ) -> None:
        """Write a resumable checkpoint where the run stopped (after ``epoch``, or inside it
        with ``partial``) and raise :class:`RunPreempted`."""
        state.elapsed_s = self.base_elapsed + (time.perf_counter() - self.started)
        if partial is not None or epoch % self.config.checkpoint_every != 0:
            self._save_checkpoint(epoch, state, partial)  # else _epoch just wrote it
        step = steps if partial is None else partial["step"]
        raise RunPreempted(self.stop.name, epoch, step, steps, str(self.out / "last"))

    def _resume_point(self, epoch: int, order: list[int]) -> tuple[int, Any, float]:
        """(first step, per-task sums so far, train seconds so far) of ``epoch``: after a
        checkpoint written inside it, its batches up to there are drawn again (they depend
        on the epoch alone) and every RNG is set back to the checkpoint's."""
        partial, self.partial = self.partial, None
        if not partial or partial["epoch"] != epoch:
            return 0, records.new_sums(len(self.tasks)), 0.0
        for t in order[: partial["step"]]:
            self.streams[t].next()
        restore_rng_from(self.checkpoint, self.model)
        return partial["step"], partial["sums"], float(partial["train_s"])

    def _train_steps(
        self, epoch: int, state: TrainState
    ) -> tuple[list[dict[str, float]], int, float, float]:
        """One epoch's optimizer steps: (per-task sums on this rank, steps, last lr, train
        seconds of an earlier process in this epoch)."""
        cfg = self.config
        for stream in self.streams:
            stream.start(epoch)
        if self.multitask:
            order = task_order(self.task_steps, cfg.task_sampling, cfg.seed, epoch)
        else:
            order = [0] * self.task_steps[0]
        self.model.train()
        start, sums, carried_s = self._resume_point(epoch, order)
        t0 = time.perf_counter()
        bar = self._bar(epoch, len(order))
        lr = self.scheduler.lr
        try:
            for step in range(start, len(order)):
                t = order[step]
                if step > start and self.stop.requested(self.info):
                    partial = {
                        "epoch": epoch,
                        "step": step,
                        "sums": sums,
                        "train_s": carried_s + time.perf_counter() - t0,
                    }
                    self._preempted(epoch, state, len(order), partial)
                x, y = self.streams[t].next()
                x = x.to(self.device, non_blocking=True)
                y = torch.as_tensor(y).to(self.device, non_blocking=True)
                lr = self.scheduler.lr
                with self._out_of_memory(x.shape[0]):
                    out = self._step(x, y, t, epoch, step, state.global_step)
                state.global_step += 1
                records.add_step(sums[t], out, float(y.numel()))
                if bar is not None:
                    seen = sum(a["seen"] for a in sums)
                    bar.update(1)
                    bar.set_postfix(
                        epoch=f"{epoch}/{cfg.optim.epochs}",
                        loss=f"{sum(a['loss'] for a in sums) / seen:.4f}",
                        acc=f"{sum(a['correct'] for a in sums) / seen:.3f}",
                        lr=f"{lr:.2e}",
                        refresh=False,
                    )
        finally:
            if bar is not None:
                bar.close()
            for stream in self.streams:
                stream.stop()
        return sums, len(order), lr, carried_s

    def _check_finite(self, record: dict[str, Any], epoch: int, steps: int, step: int) -> None:
        """Never checkpoint or report non-finite weights (a NaN gradient at the epoch's last
        step) or a model whose eval logits went non-finite."""
        lr = record["lr"]
        if not all(bool(torch.isfinite(p).all()) for p in self.params):
            raise TrainingDivergedError(
                epoch, steps - 1, step - 1, math.nan, lr, "weights", str(self.out)
            )
        losses = records.task_values(record["tasks"], "val_loss")
        bad_val = [v for v in losses if not math.isfinite(v)]
        if bad_val:
            raise TrainingDivergedError(
                epoch, steps - 1, step - 1, bad_val[0], lr, "val loss", str(self.out)
            )

    def _save_checkpoint(
        self, epoch: int, state: TrainState, partial: dict[str, Any] | None = None
    ) -> None:
        if self.info.is_main:
            with self._writing("checkpoint", self.out / "last"):
                self._save_last(epoch, state, partial)
        barrier(self.info)

    def _save_last(self, epoch: int, state: TrainState, partial: dict[str, Any] | None) -> None:
        cfg = self.config
        sampler = {
            "kind": "DistributedSampler",
            "seed": cfg.seed,
            "epoch": epoch,
            "task_sampling": cfg.task_sampling if self.multitask else None,
        }
        save_last(
            self.out,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            param_names=self.param_names,
            state=state,
            config=self.resolved,
            sampler=sampler,
            partial=partial,
        )

    @contextlib.contextmanager
    def _writing(self, what: str, path: Path) -> Iterator[None]:
        """Turn a failed write (no space, permission, I/O error) into one clear error that
        names the last good checkpoint; the atomic writes left earlier files intact."""
        try:
            yield
        except (OSError, SafetensorError) as e:
            reason = (e.strerror or str(e)) if isinstance(e, OSError) else str(e)
            raise WriteFailedError(what, str(path), reason, self._last_good(), str(self.out)) from e

    @contextlib.contextmanager
    def _out_of_memory(self, batch: int) -> Iterator[None]:
        """A step that runs out of memory (CUDA's error, or the CPU allocator's) becomes one
        clear error with the batch, the device's memory and what to change."""
        try:
            yield
        except RuntimeError as e:
            cpu_oom = "DefaultCPUAllocator: can't allocate memory" in str(e)
            if not (isinstance(e, torch.OutOfMemoryError) or cpu_oom):
                raise
            self.optimizer.zero_grad(set_to_none=True)  # frees the gradients before reporting
            raise OutOfMemoryError(
                batch,
                str(self.device),
                _memory_of(self.device),
                self._last_good(),
                self.config.optim.accumulate,
            ) from e

    def _last_good(self) -> str | None:
        """``OUT/last`` with where it stands (None when no readable checkpoint exists)."""
        last = find_last(self.out)
        if last is None:
            return None
        try:
            doc = read_state(last)
        except ResumeError:
            return None
        part = doc.get("partial")
        where = (
            f"epoch {doc['epoch']}" if not part else f"epoch {part['epoch']}, step {part['step']}"
        )
        return f"{last} ({where})"

    def _forward(self, x: torch.Tensor, t: int, ddp: bool) -> torch.Tensor:
        """Training logits of task ``t`` (a joint head's: over the union of classes), through
        the DDP wrapper or the bare model."""
        if not self.multitask:
            return (self.ddp if ddp else self.model)(x)
        name = self.tasks[t].name
        if ddp and self.ddp is not self.model:
            return self.ddp(x, name, union=True)
        return task_logits(self.model, x, name, union=True)

    def _evaluate(self, t: int, loader: Any) -> dict[str, Any] | None:
        """Task ``t``'s accuracy and loss on ``loader`` (None without a loader)."""
        if loader is None:
            return None
        if not self.multitask:
            return evaluate(self.model, loader, self.info, self.amp)
        name = self.tasks[t].name
        span = (self.offsets[t], task_classes(self.model, name)) if self.joint else None
        return evaluate(
            self.model,
            loader,
            self.info,
            self.amp,
            forward=lambda x: task_logits(self.model, x, name, union=True),
            span=span,
        )

    def _step(
        self, x: torch.Tensor, y: torch.Tensor, t: int, epoch: int, step: int, global_step: int
    ) -> dict[str, float]:
        """One optimizer step over the batch ``x``: ``optim.accumulate`` micro-batches, each
        a forward and a backward, sharing the expert picks drawn once for the whole batch."""
        ocfg = self.config.optim
        self.optimizer.zero_grad(set_to_none=True)
        if self.tracker is not None:
            self.tracker.reset()
        target = y + self.offsets[t] if self.offsets[t] else y  # joint head: union labels
        k = ocfg.accumulate
        parts = [
            (a, b) for a, b in zip(x.tensor_split(k), target.tensor_split(k), strict=True) if len(a)
        ]
        totals = x.new_zeros(5, dtype=torch.float32)
        with mosa.shared_routes(self.model, x.shape[0], passes=2 if self.two_pass else 1) as r:
            for i, (xs, ys) in enumerate(parts):
                # DDP all-reduces the gradients once, after the step's last micro-batch
                last = i == len(parts) - 1 or self.ddp_module is None
                with contextlib.nullcontext() if last else self.ddp_module.no_sync():
                    totals += self._micro_step(r, xs, ys, t, xs.shape[0] / x.shape[0])
        if ocfg.grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.params, ocfg.grad_clip)
        else:
            norm = torch.nn.utils.get_total_norm(
                [p.grad for p in self.params if p.grad is not None]
            )
        # one device-to-host copy per step for every number the loop needs
        stats = torch.cat([totals, norm.detach().float().to(totals.device).view(1)]).tolist()
        loss_v, ce_v, kl_v, deep_v, correct, norm_v = stats
        bad = not (math.isfinite(loss_v) and math.isfinite(norm_v))
        if any_true(bad, self.info):
            quantity, value = (
                ("loss", loss_v) if not math.isfinite(loss_v) else ("grad norm", norm_v)
            )
            raise TrainingDivergedError(
                epoch, step, global_step, value, self.scheduler.lr, quantity, str(self.out)
            )
        if self.tracker is not None:
            self.optimizer.set_active(self.tracker.masks())
        self.optimizer.step()
        self.scheduler.step()
        return {"loss": loss_v, "ce": ce_v, "kl": kl_v, "deep": deep_v, "correct": correct}

    def _micro_step(
        self, routes: SharedRoutes, x: torch.Tensor, target: torch.Tensor, t: int, share: float
    ) -> torch.Tensor:
        """Forward and backward of one micro-batch (``share`` of the step's images; its loss
        is weighted by it, so the gradients add up to the whole batch's mean). Returns its
        weighted loss, CE, KL, deep term and correct count."""
        ocfg = self.config.optim
        if self.capture is not None:
            self.capture.take()
        kl = deep = None
        with autocast(self.device, self.amp):
            logits, *second = routes.forward(x, lambda xx: self._forward(xx, t, ddp=True))
        loss = ce = classification_loss(logits, target, ocfg.label_smoothing)
        if second:
            if self.consistency > 0:
                kl = symmetric_kl(logits, second[0])
                loss = loss + self.consistency * kl
            if self.capture is not None:
                halves = [h.chunk(2) for h in self.capture.take()]
                deep = hidden_consistency([a for a, _ in halves], [b for _, b in halves])
                loss = loss + self.config.deep_consistency_weight * deep
        (loss * share).backward()
        zero = loss.new_zeros(())
        return torch.stack(
            [
                loss.detach() * share,
                ce.detach() * share,
                (kl.detach() if kl is not None else zero) * share,
                (deep.detach() if deep is not None else zero) * share,
                (logits.detach().argmax(dim=-1) == target).sum().float(),
            ]
        ).float()

    # ------------------------------------------------------------------ helpers
    def _bar(self, epoch: int, steps: int) -> Any:
        """One bar over the whole run (its ETA is the run's), shown by rank 0 on a terminal."""
        if not (self.progress and self.info.is_main and sys.stderr.isatty()):
            return None
        from tqdm.auto import tqdm

        total = self.config.optim.epochs * steps
        return tqdm(
            total=total,
            initial=(epoch - 1) * steps,
            desc="train " + "+".join(t.name for t in self.tasks),
            unit="step",
            dynamic_ncols=True,
            leave=epoch == self.config.optim.epochs,
        )

    def _check_routing(self, when: str) -> None:
        if not all_equal(_routing_checksum(self.model), self.info):
            raise TrainingError(
                f"MoSA routing generators differ across ranks at {when}: every rank must use "
                "the same method.seed so that all ranks pick the same experts"
            )

    def _write_start(self, state: TrainState) -> None:
        if self.info.is_main:
            with self._writing("run config and epoch records", self.out):
                self.out.mkdir(parents=True, exist_ok=True)
                atomic_write_json(self.out / CONFIG_JSON, self.resolved)
                lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in state.history)
                # a resumed run drops records of epochs after its checkpoint (they are redone)
                atomic_write_bytes(self.out / METRICS_JSONL, lines.encode())
        barrier(self.info)

    def _finish(self, state: TrainState) -> dict[str, Any]:
        """Score the final model on the test split(s), write adapter, curves and the summary:
        ``val_acc`` (final epoch; None with ``val_note`` when val is not held out),
        ``test_acc``, ``mean_val_acc`` / ``mean_test_acc`` (over the tasks; in a multi-task
        run ``val_acc`` / ``test_acc`` are these means), ``best_val_acc`` / ``best_val_epoch``
        (information only), ``tasks`` (per task: sizes, ``val_acc``, ``test_acc``,
        ``test_loss``, ``shots``, ``shots_file``; with a joint head also ``test_acc_union``,
        the argmax over every task's classes), ``multitask``, ``task_sampling``,
        ``joint_head``, ``params`` (``mosa.summary`` plus ``task_heads``), ``wall_time_s``,
        ``train_time_s``, ``images_per_s``, ``peak_memory_bytes`` / ``peak_memory_kind``,
        ``seed``, ``resumed_from_epoch``, ``config``, ``versions`` and ``host``."""
        summary = self._summary(state, self._test_tasks(state))
        if self.info.is_main:
            with self._writing("adapter", self.out / ADAPTER_DIR):
                mosa.save_adapter(self.model, self.out / ADAPTER_DIR)
            with self._writing("training curves", self.out / CURVES_PNG):
                if state.history:
                    plot_curves(state.history, self.out / CURVES_PNG)
            with self._writing("summary", self.out / SUMMARY_JSON):
                atomic_write_json(self.out / SUMMARY_JSON, summary)
            log.info(
                "done: val acc %s, test acc %s, %.1fs",
                *(
                    ("n/a" if v is None else f"{v:.4f}")
                    for v in (summary["val_acc"], summary["test_acc"])
                ),
                summary["wall_time_s"],
            )
        barrier(self.info)
        return summary

    def _test_tasks(self, state: TrainState) -> dict[str, dict[str, Any]]:
        """Per task: sizes, the last epoch's val accuracy and the final model's test scores."""
        cfg = self.config
        last_tasks = state.history[-1].get("tasks", {}) if state.history else {}
        out: dict[str, dict[str, Any]] = {}
        for i, task in enumerate(self.tasks):
            test = None
            if task.test is not None:
                loader = eval_loader(task.test, self.local_batch, self.info, cfg.num_workers)
                test = self._evaluate(i, loader)
                if not math.isfinite(test["loss"]):
                    raise TrainingDivergedError(
                        cfg.optim.epochs, -1, state.global_step - 1, test["loss"],
                        self.scheduler.lr, f"{task.name} test loss", str(self.out),
                    )  # fmt: skip
            entry = {
                "num_classes": task.num_classes,
                "train_size": len(task.train),
                "val_size": len(task.val) if task.val is not None else None,
                "test_size": len(task.test) if task.test is not None else None,
                "val_acc": last_tasks.get(task.name, {}).get("val_acc"),
                "val_note": task.val_note,
                "test_acc": test["acc"] if test else None,
                "test_loss": test["loss"] if test else None,
                "shots": task.shots,
                "shots_file": task.shots_file,
            }
            if self.joint:
                entry["label_offset"] = self.offsets[i]
                entry["test_acc_union"] = test.get("acc_union") if test else None
            out[task.name] = entry
        return out

    def _summary(self, state: TrainState, tasks: dict[str, dict[str, Any]]) -> dict[str, Any]:
        cfg, history = self.config, state.history
        last = history[-1] if history else {}
        params = mosa.summary(self.model)
        params["task_heads"] = head_parameters(self.model)  # part of params["adapter"]
        best_acc, best_epoch = records.best_val(history)
        mem, mem_kind = records.peak_memory(self.device)
        acc = records.accuracies(tasks, self.multitask)
        return {
            "status": "completed",
            "epochs": len(history),
            "global_steps": state.global_step,
            "val_acc": acc["val_acc"],
            "val_note": records.val_note(tasks, self.multitask),
            "test_acc": acc["test_acc"],
            "mean_val_acc": acc["mean_val_acc"],
            "mean_test_acc": acc["mean_test_acc"],
            "multitask": self.multitask,
            "task_sampling": cfg.task_sampling if self.multitask else None,
            "joint_head": self.joint,
            "best_val_acc": best_acc,
            "best_val_epoch": best_epoch,
            "best_val_note": "for information only: the reported model is the final one",
            **records.test_by_epoch(history, cfg.eval.test_every_epoch),
            "final_train_loss": last.get("train_loss"),
            "final_train_acc": last.get("train_acc"),
            "tasks": tasks,
            "params": params,
            "wall_time_s": self.base_elapsed + (time.perf_counter() - self.started),
            "process_wall_time_s": time.perf_counter() - self.started,
            **records.throughput(history),
            "peak_memory_bytes": mem,
            "peak_memory_kind": mem_kind,
            "seed": cfg.seed,
            "resumed_from_epoch": self.resumed_from_epoch,
            "config": self.resolved,
            "versions": records.versions(),
            "host": records.host(self.device, self.info, self.amp),
        }
