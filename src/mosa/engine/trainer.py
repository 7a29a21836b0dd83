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
- ``summary.json``: the returned summary (:class:`mosa.engine.summary.RunSummary`).
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

import json
import logging
import math
import sys
import time
import zlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import mosa
from mosa.engine import records
from mosa.engine.config import TrainConfig
from mosa.engine.data import eval_loader
from mosa.engine.distributed import (
    all_equal,
    all_reduce_sum,
    any_true,
    barrier,
    cleanup,
    init_distributed,
)
from mosa.engine.errors import TrainingDivergedError, TrainingError
from mosa.engine.evaluate import evaluate
from mosa.engine.failures import out_of_memory, writing
from mosa.engine.multitask import task_order
from mosa.engine.plots import plot_curves
from mosa.engine.preempt import RunPreempted, StopSignals
from mosa.engine.run_parts import (
    SUMMARY_JSON,
    DatasetsArg,
    ResumePoint,
    RunParts,
    build_parts,
    restore,
)
from mosa.engine.state import TrainState, restore_rng_from, save_last
from mosa.engine.step import Objective, accumulate_gradients, apply_update, begin_step
from mosa.engine.summary import RunSummary, TaskSummary, build_summary, task_summary
from mosa.heads import task_classes, task_logits
from mosa.io import atomic_write_bytes, atomic_write_json

log = logging.getLogger("mosa.engine")

EpochCallback = Callable[[dict[str, Any]], None]

CONFIG_JSON = "config.json"
METRICS_JSONL = "metrics.jsonl"
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
        started = time.perf_counter()
        parts = build_parts(config, info, model, datasets, resume)
        try:
            return _train_parts(parts, started, progress, on_epoch_end).to_dict()
        finally:
            parts.close()
    finally:
        cleanup(info)


def _train_parts(
    parts: RunParts, started: float, progress: bool, on_epoch_end: EpochCallback | None
) -> RunSummary:
    """Restore, train the remaining epochs, then score and write the final model."""
    state, resume = restore(parts)
    _write_start(parts, state)
    _check_routing(parts, "start")
    with StopSignals() as stop:
        run = _Run(parts, resume, stop, started, progress, on_epoch_end)
        run.train_epochs(state)
    return run.finish(state)


def _routing_checksum(model: nn.Module) -> int:
    crc = 0
    for name, state in sorted(mosa.get_rng_state(model).items()):
        crc = zlib.crc32(name.encode(), crc)
        crc = zlib.crc32(state.numpy().tobytes(), crc)
    return crc


def _check_routing(parts: RunParts, when: str) -> None:
    if not all_equal(_routing_checksum(parts.model), parts.info):
        raise TrainingError(
            f"MoSA routing generators differ across ranks at {when}: every rank must use "
            "the same method.seed so that all ranks pick the same experts"
        )


def _write_start(parts: RunParts, state: TrainState) -> None:
    """``config.json`` and the epoch records so far (rank 0)."""
    out = parts.out
    if parts.info.is_main:
        with writing("run config and epoch records", out, out):
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(out / CONFIG_JSON, parts.resolved)
            lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in state.history)
            # a resumed run drops records of epochs after its checkpoint (they are redone)
            atomic_write_bytes(out / METRICS_JSONL, lines.encode())
    barrier(parts.info)


class _Run:
    """The training loop of one :func:`train` call in one process, over ``parts`` built once;
    the loop's own state is the :class:`TrainState` it is handed."""

    def __init__(
        self,
        parts: RunParts,
        resume: ResumePoint,
        stop: StopSignals,
        started: float,
        progress: bool,
        on_epoch_end: EpochCallback | None,
    ) -> None:
        self.parts = parts
        self.resume = resume
        self.stop = stop
        self.started = started  # this process's time.perf_counter() when it began
        self.progress = progress
        self.on_epoch_end = on_epoch_end
        # what every step minimises: fixed for the run, so built once
        self.objective = Objective(
            consistency=parts.consistency,
            label_smoothing=parts.config.optim.label_smoothing,
            deep_weight=parts.config.deep_consistency_weight,
            hidden=parts.capture,
            amp=parts.amp,
        )

    def train_epochs(self, state: TrainState) -> None:
        """The epochs after ``state.epoch``; a stop signal ends the run after an epoch (or
        inside one) with a checkpoint and :class:`RunPreempted`."""
        epochs = self.parts.config.optim.epochs
        for epoch in range(state.epoch + 1, epochs + 1):
            self._epoch(epoch, state)
            if epoch < epochs and self.stop.requested(self.parts.info):
                self._preempted(epoch, state, self.parts.loaders.steps_per_epoch, None)

    # ------------------------------------------------------------------ one epoch
    def _epoch(self, epoch: int, state: TrainState) -> None:
        p = self.parts
        run_tasks = p.layout.tasks
        t0 = time.perf_counter()
        sums, steps, lr, carried_s = self._train_steps(epoch, state)
        train_s = time.perf_counter() - t0 + carried_s
        per_task = records.unflatten_sums(
            all_reduce_sum(records.flatten_sums(sums), p.info), len(run_tasks)
        )
        tasks = {
            task.name: records.task_record(
                per_task[i], self._evaluate(i, p.loaders.val[i]), p.info.world_size
            )
            for i, task in enumerate(run_tasks)
        }
        record = records.epoch_record(
            epoch,
            state.global_step,
            per_task,
            tasks,
            lr=lr,
            train_s=train_s,
            consistency=p.consistency > 0,
            deep=bool(p.capture),
        )
        _check_routing(p, f"epoch {epoch}")
        self._check_finite(record, epoch, steps, state.global_step)
        self._record_test(record)
        record["epoch_seconds"] = time.perf_counter() - t0
        if self.resume.resumed_from_epoch is not None:  # trained by a process that resumed
            record["resumed_from_epoch"] = self.resume.resumed_from_epoch
        state.history.append(record)
        state.epoch = epoch
        # wall time of the work a checkpoint keeps: earlier processes' plus this one's so far
        state.elapsed_s = self.resume.base_elapsed + (time.perf_counter() - self.started)
        if p.info.is_main:
            path = p.out / METRICS_JSONL
            with writing("epoch record", path, p.out), open(path, "a") as f:
                f.write(json.dumps(record, sort_keys=True) + "\n")
            log.info("%s", records.epoch_line(record, p.config.optim.epochs, p.layout.multitask))
        if epoch % p.config.checkpoint_every == 0 or epoch == p.config.optim.epochs:
            self._save_checkpoint(epoch, state)
        if self.on_epoch_end is not None:
            self.on_epoch_end(dict(record))

    def _record_test(self, record: dict[str, Any]) -> None:
        """With ``eval.test_every_epoch``: each task's test accuracy after this epoch, for the
        record only (``test_acc``; multi-task: the mean) and the seconds it took."""
        loaders = self.parts.loaders.epoch_test
        if not any(loader is not None for loader in loaders):
            return
        t0 = time.perf_counter()
        accs = []
        for i, task in enumerate(self.parts.layout.tasks):
            test = self._evaluate(i, loaders[i])
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
        p = self.parts
        state.elapsed_s = self.resume.base_elapsed + (time.perf_counter() - self.started)
        if partial is not None or epoch % p.config.checkpoint_every != 0:
            self._save_checkpoint(epoch, state, partial)  # else _epoch just wrote it
        step = steps if partial is None else partial["step"]
        raise RunPreempted(self.stop.name, epoch, step, steps, str(p.out / "last"))

    def _resume_point(self, epoch: int, order: list[int]) -> tuple[int, Any, float]:
        """(first step, per-task sums so far, train seconds so far) of ``epoch``: after a
        checkpoint written inside it, its batches up to there are drawn again (they depend
        on the epoch alone) and every RNG is set back to the checkpoint's. Only the first
        epoch of a resumed process can be the one its checkpoint stopped in."""
        partial = self.resume.partial
        if not partial or partial["epoch"] != epoch:
            return 0, records.new_sums(len(self.parts.layout.tasks)), 0.0
        for t in order[: partial["step"]]:
            self.parts.loaders.streams[t].next()
        restore_rng_from(self.resume.checkpoint, self.parts.model)
        return partial["step"], partial["sums"], float(partial["train_s"])

    def _epoch_order(self, epoch: int) -> list[int]:
        """The task of each of ``epoch``'s steps."""
        p = self.parts
        if p.layout.multitask:
            return task_order(p.loaders.task_steps, p.config.task_sampling, p.config.seed, epoch)
        return [0] * p.loaders.task_steps[0]

    def _train_steps(
        self, epoch: int, state: TrainState
    ) -> tuple[list[dict[str, float]], int, float, float]:
        """One epoch's optimizer steps: (per-task sums on this rank, steps, last lr, train
        seconds of an earlier process in this epoch)."""
        p = self.parts
        scheduler = p.optim.scheduler
        for stream in p.loaders.streams:
            stream.start(epoch)
        order = self._epoch_order(epoch)
        p.model.train()
        start, sums, carried_s = self._resume_point(epoch, order)
        t0 = time.perf_counter()
        bar = self._bar(epoch, len(order))
        lr = scheduler.lr
        try:
            for step in range(start, len(order)):
                t = order[step]
                if step > start and self.stop.requested(p.info):
                    partial = {
                        "epoch": epoch,
                        "step": step,
                        "sums": sums,
                        "train_s": carried_s + time.perf_counter() - t0,
                    }
                    self._preempted(epoch, state, len(order), partial)
                x, y = p.loaders.streams[t].next()
                x = x.to(p.device, non_blocking=True)
                y = torch.as_tensor(y).to(p.device, non_blocking=True)
                lr = scheduler.lr
                accumulate = p.config.optim.accumulate
                with out_of_memory(x.shape[0], p.device, p.out, accumulate, p.optim.optimizer):
                    out = self._step(x, y, t, epoch, step, state.global_step)
                state.global_step += 1
                records.add_step(sums[t], out, float(y.numel()))
                if bar is not None:
                    _show_step(bar, sums, epoch, p.config.optim.epochs, lr)
        finally:
            if bar is not None:
                bar.close()
            for stream in p.loaders.streams:
                stream.stop()
        return sums, len(order), lr, carried_s

    def _check_finite(self, record: dict[str, Any], epoch: int, steps: int, step: int) -> None:
        """Never checkpoint or report non-finite weights (a NaN gradient at the epoch's last
        step) or a model whose eval logits went non-finite."""
        lr, out = record["lr"], str(self.parts.out)
        if not all(bool(torch.isfinite(p).all()) for p in self.parts.optim.params):
            raise TrainingDivergedError(epoch, steps - 1, step - 1, math.nan, lr, "weights", out)
        losses = records.task_values(record["tasks"], "val_loss")
        bad_val = [v for v in losses if not math.isfinite(v)]
        if bad_val:
            raise TrainingDivergedError(epoch, steps - 1, step - 1, bad_val[0], lr, "val loss", out)

    def _save_checkpoint(
        self, epoch: int, state: TrainState, partial: dict[str, Any] | None = None
    ) -> None:
        p = self.parts
        if p.info.is_main:
            with writing("checkpoint", p.out / "last", p.out):
                sampler = {
                    "kind": "DistributedSampler",
                    "seed": p.config.seed,
                    "epoch": epoch,
                    "task_sampling": p.config.task_sampling if p.layout.multitask else None,
                }
                save_last(
                    p.out,
                    model=p.model,
                    optimizer=p.optim.optimizer,
                    scheduler=p.optim.scheduler,
                    param_names=p.optim.param_names,
                    state=state,
                    config=p.resolved,
                    sampler=sampler,
                    partial=partial,
                )
        barrier(p.info)

    # ------------------------------------------------------------------ one step
    def _forward(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """Training logits of task ``t`` (a joint head's: over the union of classes), through
        the training forward's wrapper (DDP, torch.compile) where there is one."""
        p = self.parts
        fwd = p.train_forward
        if not p.layout.multitask:
            return (fwd if fwd is not None else p.model)(x)
        name = p.layout.tasks[t].name
        if fwd is not None:
            return fwd(x, name, union=True)
        return task_logits(p.model, x, name, union=True)

    def _evaluate(self, t: int, loader: Any) -> dict[str, Any] | None:
        """Task ``t``'s accuracy and loss on ``loader`` (None without a loader)."""
        p = self.parts
        if loader is None:
            return None
        if not p.layout.multitask:
            return evaluate(p.model, loader, p.info, p.amp)
        name = p.layout.tasks[t].name
        span = (p.layout.offsets[t], task_classes(p.model, name)) if p.layout.joint else None
        return evaluate(
            p.model,
            loader,
            p.info,
            p.amp,
            forward=lambda x: task_logits(p.model, x, name, union=True),
            span=span,
        )

    def _step(
        self, x: torch.Tensor, y: torch.Tensor, t: int, epoch: int, step: int, global_step: int
    ) -> dict[str, float]:
        """One optimizer step over the batch ``x`` (:mod:`mosa.engine.step`):
        ``optim.accumulate`` micro-batches sharing one draw of expert picks, then the clip,
        the finite check (on every rank) and the update."""
        p = self.parts
        ocfg, optimizer, tracker = p.config.optim, p.optim.optimizer, p.optim.tracker
        offset = p.layout.offsets[t]
        target = y + offset if offset else y  # joint head: union labels
        begin_step(optimizer, tracker)
        totals = accumulate_gradients(
            p.model,
            x,
            target,
            self.objective,
            forward=lambda xx: self._forward(xx, t),
            accumulate=ocfg.accumulate,
            # DDP all-reduces the gradients once, after the step's last micro-batch
            no_sync=p.ddp_module.no_sync if p.ddp_module is not None else None,
        )
        if ocfg.grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(p.optim.params, ocfg.grad_clip)
        else:
            norm = torch.nn.utils.get_total_norm(
                [q.grad for q in p.optim.params if q.grad is not None]
            )
        # one device-to-host copy per step for every number the loop needs
        stats = torch.cat([totals, norm.detach().float().to(totals.device).view(1)]).tolist()
        loss_v, ce_v, kl_v, deep_v, correct, norm_v = stats
        bad = not (math.isfinite(loss_v) and math.isfinite(norm_v))
        if any_true(bad, p.info):
            quantity, value = (
                ("loss", loss_v) if not math.isfinite(loss_v) else ("grad norm", norm_v)
            )
            raise TrainingDivergedError(
                epoch, step, global_step, value, p.optim.scheduler.lr, quantity, str(p.out)
            )
        apply_update(optimizer, tracker)
        p.optim.scheduler.step()
        return {"loss": loss_v, "ce": ce_v, "kl": kl_v, "deep": deep_v, "correct": correct}

    # ------------------------------------------------------------------ the end
    def _bar(self, epoch: int, steps: int) -> Any:
        """One bar over the whole run (its ETA is the run's), shown by rank 0 on a terminal."""
        p = self.parts
        if not (self.progress and p.info.is_main and sys.stderr.isatty()):
            return None
        from tqdm.auto import tqdm  # only where a bar is shown

        return tqdm(
            total=p.config.optim.epochs * steps,
            initial=(epoch - 1) * steps,
            desc="train " + "+".join(t.name for t in p.layout.tasks),
            unit="step",
            dynamic_ncols=True,
            leave=epoch == p.config.optim.epochs,
        )

    def finish(self, state: TrainState) -> RunSummary:
        """Score the final model on the test split(s), write adapter, curves and the summary."""
        p = self.parts
        summary = build_summary(p, state, self._test_tasks(state), self.resume, self.started)
        if p.info.is_main:
            out = p.out
            with writing("adapter", out / ADAPTER_DIR, out):
                mosa.save_adapter(p.model, out / ADAPTER_DIR)
            with writing("training curves", out / CURVES_PNG, out):
                if state.history:
                    plot_curves(state.history, out / CURVES_PNG)
            with writing("summary", out / SUMMARY_JSON, out):
                atomic_write_json(out / SUMMARY_JSON, summary.to_dict())
            log.info(
                "done: val acc %s, test acc %s, %.1fs",
                *(
                    ("n/a" if v is None else f"{v:.4f}")
                    for v in (summary.val_acc, summary.test_acc)
                ),
                summary.wall_time_s,
            )
        barrier(p.info)
        return summary

    def _test_tasks(self, state: TrainState) -> dict[str, TaskSummary]:
        """Per task: sizes, the last epoch's val accuracy and the final model's test scores."""
        p = self.parts
        last_tasks = state.history[-1].get("tasks", {}) if state.history else {}
        out: dict[str, TaskSummary] = {}
        for i, task in enumerate(p.layout.tasks):
            test = None
            if task.test is not None:
                loader = eval_loader(task.test, p.loaders.local_batch, p.info, p.config.num_workers)
                test = self._evaluate(i, loader)
                if not math.isfinite(test["loss"]):
                    raise TrainingDivergedError(
                        p.config.optim.epochs, -1, state.global_step - 1, test["loss"],
                        p.optim.scheduler.lr, f"{task.name} test loss", str(p.out),
                    )  # fmt: skip
            val_acc = last_tasks.get(task.name, {}).get("val_acc")
            offset = p.layout.offsets[i] if p.layout.joint else None
            out[task.name] = task_summary(task, val_acc, test, offset)
        return out


def _show_step(bar: Any, sums: list[dict[str, float]], epoch: int, epochs: int, lr: float) -> None:
    """Advance the progress bar by one step, showing the epoch's running loss and accuracy."""
    seen = sum(a["seen"] for a in sums)
    bar.update(1)
    bar.set_postfix(
        epoch=f"{epoch}/{epochs}",
        loss=f"{sum(a['loss'] for a in sums) / seen:.4f}",
        acc=f"{sum(a['correct'] for a in sums) / seen:.3f}",
        lr=f"{lr:.2e}",
        refresh=False,
    )
