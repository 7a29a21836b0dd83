"""A finished run's summary as a typed record: :class:`RunSummary`, which
:func:`mosa.engine.train` returns as :meth:`RunSummary.to_dict` and writes as
``summary.json``; one :class:`TaskSummary` per task."""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Any

import mosa
from mosa.engine import records
from mosa.engine.data import TaskData
from mosa.engine.run_parts import ResumePoint, RunParts
from mosa.engine.state import TrainState
from mosa.heads import head_parameters

BEST_VAL_NOTE = "for information only: the reported model is the final one"
TEST_BY_EPOCH_NOTE = "record only: the reported model is the final one, chosen by val"


@dataclass(frozen=True)
class TaskSummary:
    """One task of a run: its split sizes, the last epoch's val accuracy and the final
    model's test scores."""

    num_classes: int
    train_size: int
    val_size: int | None
    test_size: int | None
    val_acc: float | None
    val_note: str | None  # why val is missing or not held out
    test_acc: float | None
    test_loss: float | None
    shots: int | None
    shots_file: str | None
    label_offset: int | None = None  # joint head: where the task's classes start; else None
    test_acc_union: float | None = None  # joint head: argmax over every task's classes

    def to_dict(self) -> dict[str, Any]:
        """The task's entry of ``summary.json`` (the joint head's keys only with one)."""
        d: dict[str, Any] = {
            "num_classes": self.num_classes,
            "train_size": self.train_size,
            "val_size": self.val_size,
            "test_size": self.test_size,
            "val_acc": self.val_acc,
            "val_note": self.val_note,
            "test_acc": self.test_acc,
            "test_loss": self.test_loss,
            "shots": self.shots,
            "shots_file": self.shots_file,
        }
        if self.label_offset is not None:
            d["label_offset"] = self.label_offset
            d["test_acc_union"] = self.test_acc_union
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskSummary:
        """Read back a task entry of ``summary.json`` (keys a run did not write are None)."""
        return cls(**{f.name: d.get(f.name) for f in fields(cls)})


def task_summary(
    task: TaskData, val_acc: float | None, test: dict[str, Any] | None, offset: int | None
) -> TaskSummary:
    """``task``'s summary from the last epoch's val accuracy and the final ``test`` scores
    (None without a test split); ``offset``: its joint-head label offset (None: no joint)."""
    return TaskSummary(
        num_classes=task.num_classes,
        train_size=len(task.train),
        val_size=len(task.val) if task.val is not None else None,
        test_size=len(task.test) if task.test is not None else None,
        val_acc=val_acc,
        val_note=task.val_note,
        test_acc=test["acc"] if test else None,
        test_loss=test["loss"] if test else None,
        shots=task.shots,
        shots_file=task.shots_file,
        label_offset=offset,
        test_acc_union=(test.get("acc_union") if test else None) if offset is not None else None,
    )


@dataclass(frozen=True)
class EpochTests:
    """With ``eval.test_every_epoch``: the test accuracy after each epoch and the seconds
    those evaluations took, for comparison only (nothing selects on it)."""

    accs: list[float | None]
    seconds: float


@dataclass(frozen=True)
class RunSummary:
    """What a finished run reports. In a multi-task run ``val_acc`` / ``test_acc`` are the
    means over the tasks; ``best_val_acc`` / ``best_val_epoch`` are information only (the
    reported model is the final one)."""

    epochs: int
    global_steps: int
    val_acc: float | None  # the final epoch's (None without a held-out val split)
    val_note: str | None
    test_acc: float | None
    mean_val_acc: float | None
    mean_test_acc: float | None
    multitask: bool
    task_sampling: str | None
    joint_head: bool
    best_val_acc: float | None
    best_val_epoch: int | None
    test_by_epoch: EpochTests | None  # None: eval.test_every_epoch is off
    final_train_loss: float | None
    final_train_acc: float | None
    tasks: dict[str, TaskSummary]
    params: dict[str, Any]  # mosa.summary plus task_heads
    wall_time_s: float  # every process of the run
    process_wall_time_s: float  # this process
    train_time_s: float
    images_per_s: float | None
    peak_memory_bytes: int
    peak_memory_kind: str
    seed: int
    resumed_from_epoch: int | None
    config: dict[str, Any]  # as config.json holds it
    versions: dict[str, str]
    host: dict[str, Any]
    status: str = "completed"

    def to_dict(self) -> dict[str, Any]:
        """The summary as :func:`mosa.engine.train` returns it and ``summary.json`` holds it."""
        tests: dict[str, Any] = {}
        if self.test_by_epoch is not None:
            tests = {
                "test_by_epoch": self.test_by_epoch.accs,
                "test_by_epoch_seconds": self.test_by_epoch.seconds,
                "test_by_epoch_note": TEST_BY_EPOCH_NOTE,
            }
        return {
            "status": self.status,
            "epochs": self.epochs,
            "global_steps": self.global_steps,
            "val_acc": self.val_acc,
            "val_note": self.val_note,
            "test_acc": self.test_acc,
            "mean_val_acc": self.mean_val_acc,
            "mean_test_acc": self.mean_test_acc,
            "multitask": self.multitask,
            "task_sampling": self.task_sampling,
            "joint_head": self.joint_head,
            "best_val_acc": self.best_val_acc,
            "best_val_epoch": self.best_val_epoch,
            "best_val_note": BEST_VAL_NOTE,
            **tests,
            "final_train_loss": self.final_train_loss,
            "final_train_acc": self.final_train_acc,
            "tasks": {name: t.to_dict() for name, t in self.tasks.items()},
            "params": self.params,
            "wall_time_s": self.wall_time_s,
            "process_wall_time_s": self.process_wall_time_s,
            "train_time_s": self.train_time_s,
            "images_per_s": self.images_per_s,
            "peak_memory_bytes": self.peak_memory_bytes,
            "peak_memory_kind": self.peak_memory_kind,
            "seed": self.seed,
            "resumed_from_epoch": self.resumed_from_epoch,
            "config": self.config,
            "versions": self.versions,
            "host": self.host,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSummary:
        """Read back ``summary.json``; keys an older version did not write are None (a run
        without ``test_by_epoch`` recorded no per-epoch test)."""
        values = {f.name: d.get(f.name) for f in fields(cls)}
        values["tasks"] = {n: TaskSummary.from_dict(t) for n, t in (d.get("tasks") or {}).items()}
        tests = d.get("test_by_epoch")
        seconds = d.get("test_by_epoch_seconds") or 0.0
        values["test_by_epoch"] = EpochTests(tests, seconds) if tests is not None else None
        values["params"] = d.get("params") or {}
        values["status"] = d.get("status") or "completed"
        return cls(**values)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _task_values(tasks: dict[str, TaskSummary], key: str) -> list[float]:
    """``key`` of every task that has one."""
    return [v for t in tasks.values() if (v := getattr(t, key)) is not None]


def _val_note(tasks: dict[str, TaskSummary], multitask: bool) -> str | None:
    """Why val accuracy is missing or not held out (None: nothing to say)."""
    notes = [f"{n}: {t.val_note}" for n, t in tasks.items() if t.val_note]
    if not notes:
        return None
    return next(iter(tasks.values())).val_note if not multitask else "; ".join(notes)


def _best_val(history: list[dict[str, Any]]) -> tuple[float | None, int | None]:
    """The best val accuracy and its (earliest) epoch: information only."""
    vals = [(r["val_acc"], r["epoch"]) for r in history if r.get("val_acc") is not None]
    return max(vals, key=lambda v: (v[0], -v[1])) if vals else (None, None)


def _epoch_tests(history: list[dict[str, Any]], on: bool) -> EpochTests | None:
    if not on:
        return None
    return EpochTests(
        [r.get("test_acc") for r in history],
        sum(r.get("test_seconds") or 0.0 for r in history),
    )


def build_summary(
    parts: RunParts,
    state: TrainState,
    tasks: dict[str, TaskSummary],
    resume: ResumePoint,
    started: float,
) -> RunSummary:
    """The summary of the run that ``parts`` trained to ``state`` (``started``: this
    process's ``time.perf_counter()`` when it began)."""
    cfg, history, multitask = parts.config, state.history, parts.layout.multitask
    last = history[-1] if history else {}
    params = mosa.summary(parts.model)
    params["task_heads"] = head_parameters(parts.model)  # part of params["adapter"]
    best_acc, best_epoch = _best_val(history)
    mem, mem_kind = records.peak_memory(parts.device)
    first = next(iter(tasks.values()))
    images = sum(r.get("train_images", 0) for r in history)
    train_s = sum(r.get("train_seconds", 0.0) for r in history)
    return RunSummary(
        epochs=len(history),
        global_steps=state.global_step,
        val_acc=_mean(_task_values(tasks, "val_acc")) if multitask else first.val_acc,
        val_note=_val_note(tasks, multitask),
        test_acc=_mean(_task_values(tasks, "test_acc")) if multitask else first.test_acc,
        mean_val_acc=_mean(_task_values(tasks, "val_acc")),
        mean_test_acc=_mean(_task_values(tasks, "test_acc")),
        multitask=multitask,
        task_sampling=cfg.task_sampling if multitask else None,
        joint_head=parts.layout.joint,
        best_val_acc=best_acc,
        best_val_epoch=best_epoch,
        test_by_epoch=_epoch_tests(history, cfg.eval.test_every_epoch),
        final_train_loss=last.get("train_loss"),
        final_train_acc=last.get("train_acc"),
        tasks=tasks,
        params=params,
        wall_time_s=resume.base_elapsed + (time.perf_counter() - started),
        process_wall_time_s=time.perf_counter() - started,
        train_time_s=train_s,
        images_per_s=images / train_s if train_s > 0 else None,
        peak_memory_bytes=mem,
        peak_memory_kind=mem_kind,
        seed=cfg.seed,
        resumed_from_epoch=resume.resumed_from_epoch,
        config=parts.resolved,
        versions=records.versions(),
        host=records.host(parts.device, parts.info, parts.amp),
    )
