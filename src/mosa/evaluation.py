"""A trained run rebuilt and evaluated: its checkpoint and run config found
(:func:`find_checkpoint`), its model rebuilt and merged as deployed (:func:`load_for_eval`)
and scored (:func:`evaluate_checkpoint`, what ``mosa eval`` runs). Where the adapter and its
heads are on disk is :mod:`mosa.runs`'s business.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import EllipsisType
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from mosa.backbones.zoo import load_backbone
from mosa.checkpoint import CheckpointError, load_adapter, read_adapter_config
from mosa.config import ConfigError, MethodConfig
from mosa.data import build_dataset
from mosa.engine.config import DataConfig, TrainConfig
from mosa.engine.data import dataset_num_classes, eval_loader, resolve_data_configs, resolve_input
from mosa.engine.distributed import DistInfo, resolve_device
from mosa.engine.evaluate import evaluate
from mosa.heads import TaskView, attach_task_heads, has_task_heads
from mosa.model import inject
from mosa.model import merge as merge_model
from mosa.runs import RUN_CONFIG, HeadLayout, adapter_paths, read_head_layout
from mosa.state import find_state, state_of


@dataclass
class Checkpoint:
    """An adapter folder, its parsed adapter_config.json and the run config next to it."""

    adapter_dir: Path
    meta: dict[str, Any]
    run_config: TrainConfig | None
    run_dir: Path | None


def find_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Accept an adapter folder (``adapter_config.json``) or a run folder (``adapter/``)."""
    adapter_dir, run_dir = adapter_paths(path)
    meta = read_adapter_config(adapter_dir)
    run_config = None
    if run_dir is not None:
        try:
            run_config = read_run_config(run_dir)
        except CheckpointError:
            run_config = None  # the adapter alone still says backbone and classes
    return Checkpoint(adapter_dir, meta, run_config, run_dir)


def read_run_config(run_dir: str | os.PathLike[str]) -> TrainConfig:
    """``run_dir/config.json`` as a TrainConfig (keys it does not know are ignored)."""
    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {run_dir} is not a mosa run folder")
    try:
        raw = json.loads(path.read_text())
    except ValueError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from e
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        return TrainConfig.from_dict({k: v for k, v in raw.items() if k in known})
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{path} does not hold a valid run config: {e}") from e


def adapter_tasks(path: str | os.PathLike[str]) -> list[str] | None:
    """Task names of a multi-task adapter (folder or run folder), in the run's task order when
    its config.json is there; None for a single-task adapter."""
    layout = read_head_layout(path)
    if layout is None:
        return None
    _, run_dir = adapter_paths(path)
    run = read_run_config(run_dir) if run_dir is not None else None
    order = [d.label for d in run.data] if run is not None else []
    return sorted(layout.tasks, key=lambda t: (order.index(t) if t in order else len(order), t))


# ----------------------------------------------------------------------------- rebuild
def load_for_eval(
    path: str | os.PathLike[str] | Checkpoint,
    task: str | None = None,
    *,
    config: Any = None,
    weights: str | None = None,
    merge: bool = True,
    model: nn.Module | None = None,
) -> TaskView:
    """Rebuild a trained model from an adapter folder (or a run folder) for evaluation.

    ``path`` may also be a :class:`Checkpoint` from :func:`find_checkpoint`: its run config is
    then used as it is (None when find_checkpoint set aside an unreadable one). Multi-task adapters are evaluated through one task's head: ``task``
    names it (it may be omitted when the adapter has a single head). For a single-task
    adapter ``task`` may be None or the run's task name. The backbone comes from the
    adapter's backbone name with the run config's ``weights`` / ``pretrained`` /
    ``backbone_kwargs`` (``config`` replaces the run config found next to the adapter;
    ``weights`` replaces its weights file). With ``merge`` (default) MoSA experts are merged
    and LoRA folded, as deployed. ``model``: a fresh (un-injected) backbone to load into
    instead of building one. Returns a :class:`TaskView` in eval mode whose ``forward(x)``
    gives the task's logits over its own classes; ``.model`` is the underlying timm model.
    Raises :class:`~mosa.checkpoint.CheckpointError` for a corrupt checkpoint and when timm
    cannot build the backbone (no network, weights that do not fit), FileNotFoundError for a
    missing weights file.
    """
    ckpt = path if isinstance(path, Checkpoint) else _read_checkpoint(path, config is None)
    run = config if config is not None else ckpt.run_config
    name = ckpt.meta.get("backbone") or (run.backbone if run is not None else None)
    if not name:
        raise CheckpointError(f"{ckpt.adapter_dir}: adapter_config.json names no backbone")
    bcfg = dataclasses.replace(run if run is not None else TrainConfig(), backbone=name)
    if weights is not None:
        bcfg = dataclasses.replace(bcfg, weights=weights, pretrained=True)
    layout = read_head_layout(ckpt.adapter_dir)
    if layout is None:
        view = _single_task_view(ckpt, run, task, bcfg, model)
    else:
        view = _task_head_view(ckpt, layout, task, bcfg, model)
    if merge and not state_of(view.model).merged:
        merge_model(view.model)
    return view.eval()


def _read_checkpoint(path: str | os.PathLike[str], read_run: bool) -> Checkpoint:
    """Like :func:`find_checkpoint`, but a run config that cannot be read is an error (and is
    not read without ``read_run``: a config given by the caller replaces it)."""
    adapter, run_dir = adapter_paths(path)
    meta = read_adapter_config(adapter)  # the adapter's own problems are reported first
    run = read_run_config(run_dir) if read_run and run_dir is not None else None
    return Checkpoint(adapter, meta, run, run_dir)


def _build_backbone(bcfg: TrainConfig, classes: int) -> nn.Module:
    """``bcfg``'s backbone with ``classes`` outputs and its backbone weights."""
    try:
        return load_backbone(num_classes=classes, **bcfg.backbone_args())
    except RuntimeError as e:  # no network, weights that do not fit: say so in one line
        raise CheckpointError(f"cannot build backbone {bcfg.backbone!r}: {e}") from e


def _single_task_view(
    ckpt: Checkpoint,
    run: TrainConfig | None,
    task: str | None,
    bcfg: TrainConfig,
    model: nn.Module | None,
) -> TaskView:
    labels = [d.label for d in run.data] if run is not None else []
    if task is not None and labels and task not in labels:
        raise CheckpointError(
            f"{ckpt.adapter_dir} is a single-task adapter trained on {labels[0]!r}, not {task!r}"
        )
    classes = ckpt.meta.get("num_classes")
    if not isinstance(classes, int) or classes < 1:
        raise CheckpointError(
            f"{ckpt.adapter_dir}: num_classes={classes!r} in adapter_config.json; a single-head "
            "adapter records its class count (the checkpoint is corrupt)"
        )
    if model is None:
        model = _build_backbone(bcfg, classes)
    load_adapter(model, ckpt.adapter_dir)
    return TaskView(model, None)


def _task_head_view(
    ckpt: Checkpoint,
    layout: HeadLayout,
    task: str | None,
    bcfg: TrainConfig,
    model: nn.Module | None,
) -> TaskView:
    adapter = ckpt.adapter_dir
    if task is None:
        if len(layout.tasks) != 1:
            raise CheckpointError(
                f"{adapter} holds heads for {len(layout.tasks)} tasks "
                f"({', '.join(layout.tasks)}): choose one with task=..."
            )
        task = layout.tasks[0]
    if task not in layout.classes:
        raise CheckpointError(_no_head(adapter, task, layout.tasks))
    # build with a real class count (a local weights file's head is then dropped as in
    # single-task runs), then replace the classifier by the task heads
    if model is None:
        model = _build_backbone(bcfg, next(iter(layout.classes.values())))
    elif has_task_heads(model) or find_state(model) is not None:
        raise ValueError("load_for_eval needs a fresh backbone (no mosa method, no heads)")
    inject(model, MethodConfig.from_dict(ckpt.meta["method"]))
    attach_task_heads(model, layout.classes, layout.joint)
    load_adapter(model, adapter)
    return TaskView(model, task)


# ----------------------------------------------------------------------------- evaluation
DATA_SPEC = "KIND:ROOT:TASK[:SPLIT]"


@dataclass(frozen=True)
class Arg:
    """An argument a :class:`UsageError` names, which each front end spells its own way.

    ``value``: an example value; ``...``: a value to choose; None: leave the argument out.
    ``bare``: the argument's name alone.
    """

    name: str
    value: str | None | EllipsisType = ...
    bare: bool = False

    def __str__(self) -> str:
        """The argument as a Python keyword (``task='digits'``, ``split=...``)."""
        if self.bare:
            return self.name
        if self.value is None:
            return f"pass {self.name}=None"
        return f"{self.name}={'...' if self.value is ... else repr(self.value)}"


class UsageError(ValueError):
    """What was asked of a checkpoint does not fit it: a task it has no head for, data
    with more classes than the head, an evaluation with nothing to evaluate on.

    ``str(e)`` names the arguments as Python keywords (``task='digits'``); ``e.parts`` keeps
    the message as text and :class:`Arg` pieces for a front end that spells arguments its own
    way (``mosa`` writes them as options: ``--task digits``).
    """

    def __init__(self, *parts: str | Arg) -> None:
        super().__init__("".join(str(p) for p in parts))
        self.parts = parts


@dataclass(frozen=True)
class _EvalTarget:
    """One evaluation of :func:`evaluate_checkpoint`: a data set, its split, and the task whose
    head to use (None: a single-task adapter's own head, unnamed)."""

    data: DataConfig
    split: str | None
    head: str | None


def _no_head(adapter: Path, task: str, tasks: Sequence[str]) -> str:
    """Why ``task`` cannot be evaluated: no head of that name (with the nearest one)."""
    hint = difflib.get_close_matches(task, list(tasks), n=1)
    extra = f" (did you mean {hint[0]!r}?)" if hint else ""
    return f"{adapter} has no head for task {task!r}{extra}; tasks: {', '.join(tasks)}"


def check_task(ckpt: Checkpoint, task: str, tasks: Sequence[str] | None) -> None:
    """A :class:`UsageError` unless ``task`` names one of the adapter's heads (``tasks``, from
    :func:`adapter_tasks`) or, for a single-task adapter (``tasks`` None), the task it was
    trained on (accepted when no run config says)."""
    if tasks is not None:
        if task in tasks:
            return
        raise UsageError(_no_head(ckpt.adapter_dir, task, tasks))
    labels = [d.label for d in ckpt.run_config.data] if ckpt.run_config else []
    if labels and task != labels[0]:
        msg = f"{ckpt.adapter_dir} is a single-task adapter trained on {labels[0]!r}, not {task!r}"
        raise UsageError(f"{msg}: ", Arg("task", None))


def parse_data_spec(spec: str) -> tuple[str, str, str, str | None]:
    """``KIND:ROOT:TASK[:SPLIT]`` (e.g. ``vtab:data/vtab:digits:test``) -> (kind, root, task,
    split or None)."""
    parts = spec.split(":")
    # a Windows drive letter or "kind:root" without a task are not supported: say what is
    if len(parts) not in (3, 4) or not all(parts[:3]):
        raise UsageError(
            Arg("data", spec), f": expected {DATA_SPEC}, e.g. vtab:data/vtab:digits:test"
        )
    return parts[0], parts[1], parts[2], (parts[3] if len(parts) == 4 and parts[3] else None)


def _run_data(run: TrainConfig, head: str | None, *, required: bool) -> DataConfig:
    """The data config of ``run`` whose label is ``head`` (the first one when ``head`` is None,
    or when it has none and a stand-in is enough: ``required=False``)."""
    for d in run.data:
        if head is None or d.label == head:
            return d
    if not required:
        return run.data[0]
    labels = ", ".join(d.label for d in run.data)
    msg = f"the run config has no data set labelled {head!r} (it has {labels}): say what to "
    raise UsageError(f"{msg}evaluate that head on with ", Arg("data", DATA_SPEC))


def _spec_target(
    ckpt: Checkpoint,
    run: TrainConfig | None,
    tasks: Sequence[str] | None,
    task: str | None,
    spec: str,
    split: str | None,
) -> _EvalTarget:
    """The target of a ``data`` spec: the run's preprocessing, the spec's images."""
    kind, root, name, spec_split = parse_data_spec(spec)
    head = task
    if head is None and tasks is not None:
        if len(tasks) != 1:
            msg = (
                f"{ckpt.adapter_dir} has a head for each of {len(tasks)} tasks "
                f"({', '.join(tasks)}): say which one to evaluate "
            )
            raise UsageError(msg, Arg("data", bare=True), " with, e.g. ", Arg("task", tasks[0]))
        head = tasks[0]
    base = _run_data(run, head, required=False) if run is not None else DataConfig()
    # keep the run's preprocessing (size, normalisation), change where the images come from
    data = dataclasses.replace(base, kind=kind, root=root, task=name, name=None)
    return _EvalTarget(data, spec_split or split, head)


def _eval_targets(
    path: str | os.PathLike[str],
    ckpt: Checkpoint,
    run: TrainConfig | None,
    tasks: Sequence[str] | None,
    *,
    task: str | None,
    data: str | None,
    split: str | None,
) -> list[_EvalTarget]:
    """What :func:`evaluate_checkpoint` evaluates, checked against the checkpoint."""
    if task is not None:
        check_task(ckpt, task, tasks)
    if data is not None:
        return [_spec_target(ckpt, run, tasks, task, data, split)]
    if run is None:
        msg = f"{path} has no run config next to it: say what to evaluate on with "
        raise UsageError(msg, Arg("data", DATA_SPEC), " or ", Arg("config"))
    if tasks is None and task is None:  # the run's own data sets through the adapter's head
        return [_EvalTarget(d, split, None) for d in run.data]
    heads = [task] if task is not None else list(tasks or [])
    return [_EvalTarget(_run_data(run, h, required=True), split, h) for h in heads]


def _rebuild(
    ckpt: Checkpoint, run: TrainConfig | None, head: str | None, weights: str | None
) -> tuple[TaskView, TrainConfig]:
    """The merged model seen through ``head`` (None: a single-task adapter), and the config it
    was built from (the run's, or a stand-in naming the adapter's backbone)."""
    view = load_for_eval(ckpt, head, config=run, weights=weights)
    # a run config that could not be read is no reason to refuse: the adapter alone says
    # backbone and classes
    name = ckpt.meta.get("backbone") or (run.backbone if run is not None else "")
    return view, run if run is not None else TrainConfig(backbone=name)


def _eval_dataset(d: DataConfig, target: _EvalTarget, view: TaskView) -> Dataset:
    """``target``'s split of ``d`` (resolved), refused when it has more classes than the head."""
    if target.split is None:
        msg = f"{d.label}: no split to evaluate; pass "
        raise UsageError(msg, Arg("split"))
    ds = build_dataset(
        d.kind,
        d.root,
        d.task,
        target.split,
        img_size=int(d.img_size or 0),
        mean=d.mean,
        std=d.std,
        train=False,
        cache=False,
    )
    found, k = dataset_num_classes(ds), view.num_classes
    if found > k:
        whose = f"task {target.head!r}'s head" if target.head is not None else "the adapter's head"
        raise UsageError(
            f"{d.kind}:{d.task}:{target.split} has {found} classes but {whose} has {k}: "
            "evaluate it on the task it was trained for"
        )
    return ds


def _result(
    ckpt: Checkpoint, target: _EvalTarget, d: DataConfig, r: dict[str, Any]
) -> dict[str, Any]:
    """One entry of :func:`evaluate_checkpoint`'s list (what ``mosa eval --out`` writes)."""
    entry: dict[str, Any] = {} if target.head is None else {"task": target.head}
    entry.update(
        {
            "data": f"{d.kind}:{d.root}:{d.task}:{target.split}",
            "top1": r["acc"],
            "n": r["n"],
            "loss": r["loss"],
            "adapter": str(ckpt.adapter_dir),
            "method": ckpt.meta.get("method", {}).get("method"),
            "backbone": ckpt.meta.get("backbone"),
            "merged": True,
        }
    )
    return entry


def evaluate_checkpoint(
    path: str | os.PathLike[str],
    *,
    task: str | None = None,
    data: str | None = None,
    split: str | None = "test",
    config: TrainConfig | None = None,
    weights: str | None = None,
    batch_size: int = 256,
    device: str | None = None,
) -> list[dict[str, Any]]:
    """Top-1 of a trained adapter, merged as deployed (what ``mosa eval`` runs).

    ``path``: a run folder or an adapter folder. The data comes from ``data`` (a
    ``KIND:ROOT:TASK[:SPLIT]`` spec, with the run's preprocessing), else from ``config`` or
    the run's own config.json; ``split`` is the split when the spec names none. A multi-task
    adapter is evaluated through ``task``'s head, or through each head on the run's data set
    of that name. ``weights``: a local backbone weights file; ``device`` defaults to the run's.

    Returns one dict per evaluation: ``task`` (when a head is named), ``data``
    (``kind:root:task:split``), ``top1``, ``n``, ``loss``, ``adapter``, ``method``,
    ``backbone``, ``merged``. Raises :class:`UsageError` for a request that does not fit the
    checkpoint (an unknown task, data with more classes than the head), before evaluating.
    """
    ckpt = find_checkpoint(path)
    run = config if config is not None else ckpt.run_config
    tasks = adapter_tasks(ckpt.adapter_dir)  # None: a single-task adapter
    targets = _eval_targets(path, ckpt, run, tasks, task=task, data=data, split=split)
    view, built = _rebuild(ckpt, run, targets[0].head if tasks is not None else None, weights)
    # every head sits on the same merged model: one rebuild, a view per head
    views = {targets[0].head: view}
    for t in targets[1:]:
        views.setdefault(t.head, TaskView(view.model, t.head).eval())
    size, mean, std = resolve_input(built, view.model)
    datas = resolve_data_configs(TrainConfig(data=[t.data for t in targets]), size, mean, std)
    info = DistInfo(0, 1, 0, resolve_device(device or built.device), None, False)
    view.model.to(info.device)
    # every data set is checked against its head before the first is evaluated
    sets = [_eval_dataset(d, t, views[t.head]) for d, t in zip(datas, targets, strict=True)]
    results = []
    for d, t, ds in zip(datas, targets, sets, strict=True):
        loader = eval_loader(ds, batch_size, info, num_workers=0)
        with torch.inference_mode():
            r = evaluate(views[t.head], loader, info)
        results.append(_result(ckpt, t, d, r))
    return results
