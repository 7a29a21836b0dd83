"""``mosa merge``: a trained adapter merged into one deployable adapter (and, where nothing of
mosa is left, a plain timm state_dict written by :func:`mosa.export_timm`)."""

from __future__ import annotations

import argparse
from pathlib import Path

import mosa
from mosa.cli.common import Subparsers, add_subparser
from mosa.cli.runs import CliError, build_task_view
from mosa.evaluation import Checkpoint, adapter_tasks, check_task, find_checkpoint
from mosa.export import WEIGHTS_FILE, ExportError, export_timm
from mosa.heads import TaskView

DESCRIPTION = """
Merge a trained adapter (MoSA experts -> one dense adapter; LoRA / MoSA-LoRA folded into
the backbone's weights) and write the merged adapter folder. When nothing of mosa is
left (linear, full, lora, mosa_lora) it also writes model.safetensors, a plain timm
state_dict for timm.create_model(<backbone>, num_classes=K).

A multi-task adapter's merged folder keeps every task head (load it with
mosa.evaluation.load_for_eval(DIR, TASK), or 'mosa eval DIR --task TASK'). A plain timm
model has one classifier, so there model.safetensors (for the methods above) is
written only with --task NAME: that task's head becomes the timm head.
"""

EXAMPLES = [
    "mosa merge runs/default/mosa --out runs/default/mosa/merged",
    "mosa merge runs/x/adapter --out deploy/ --weights ViT-B_16.npz",
    "mosa merge runs/multitask --out runs/multitask/merged",
    "mosa merge runs/multitask_lora --task digits --out deploy/digits",
]


def add_parser(subs: Subparsers, common: argparse.ArgumentParser) -> None:
    """Add ``mosa merge`` to ``subs``."""
    s = add_subparser(
        subs, "merge", "merge experts into one deployable adapter", DESCRIPTION, EXAMPLES, common
    )
    s.add_argument("path", metavar="RUN_DIR|ADAPTER_DIR")
    s.add_argument("--out", "-o", required=True, help="folder for the merged adapter")
    s.add_argument(
        "--task",
        metavar="NAME",
        help="multi-task adapter: also export this task's model as model.safetensors",
    )
    s.add_argument("--weights", help="local backbone weights file (.safetensors/.npz/.pth)")
    s.set_defaults(func=cmd_merge)


def _merged(ckpt: Checkpoint, tasks: list[str] | None, args: argparse.Namespace) -> TaskView:
    """The checkpoint rebuilt and merged, seen through --task's head (the first one without
    it) on a multi-task adapter, through its own head on a single-task one."""
    if args.task is not None:
        check_task(ckpt, args.task, tasks)
    head = (args.task or tasks[0]) if tasks is not None else None
    return build_task_view(ckpt, head, weights=args.weights)


def _not_exported(
    error: ExportError, view: TaskView, task: str | None, method: str, tasks: list[str] | None
) -> str:
    """Why model.safetensors was not written, and how to load the merged adapter instead."""
    if tasks is None:  # adapter / mosa: the adapter stays a separate module by design
        return (
            f"{method} keeps its adapter modules after merging; load it with "
            "mosa.load_adapter(timm.create_model(...), DIR)"
        )
    hint = f"mosa.evaluation.load_for_eval(DIR, {tasks[0]!r})"
    if error.reason == "task":
        return (
            "model.safetensors not written: a plain timm model has one classifier and "
            f"this adapter has {len(tasks)} task heads; pass --task NAME to export one task's "
            f"model (load the merged adapter with {hint})"
        )
    if error.reason == "classifier":
        return (
            f"model.safetensors not written: {type(view.model).__name__} has no timm "
            f"classifier to hold task {task!r}'s head; load the merged adapter with {hint}"
        )
    return f"{method} keeps its adapter modules after merging; load it with {hint}"


def cmd_merge(args: argparse.Namespace) -> int:
    """Write the merged adapter folder, and the plain timm state_dict where there is one."""
    ckpt = find_checkpoint(args.path)
    out = Path(args.out)
    if out.resolve() == ckpt.adapter_dir.resolve():
        raise CliError("--out must differ from the adapter folder (merging is not in place)")
    tasks = adapter_tasks(ckpt.adapter_dir)  # None: a single-task adapter
    view = _merged(ckpt, tasks, args)
    mosa.save_adapter(view.model, out)
    method = str(ckpt.meta.get("method", {}).get("method"))
    heads = "" if tasks is None else f" with heads for {len(tasks)} task(s) ({', '.join(tasks)})"
    print(f"mosa: merged {method} adapter{heads} written to {out}")
    task = args.task if tasks is not None else None  # a single-task model has its timm head
    try:
        export_timm(view.model, out, task, source=ckpt.adapter_dir)
    except ExportError as e:
        print(f"mosa: {_not_exported(e, view, task, method, tasks)}")
        return 0
    of_task = f" of task {task!r}" if task is not None else ""
    print(
        f"mosa: plain timm weights{of_task} written to {out / WEIGHTS_FILE}: "
        f"timm.create_model({ckpt.meta.get('backbone')!r}, num_classes={view.num_classes})"
        ".load_state_dict(safetensors.torch.load_file(...))"
    )
    return 0
