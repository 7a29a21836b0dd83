"""``mosa`` command line: train, eval, merge, data, report, sweep, recipes, bench, demo."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main"]

DEFAULT_DATA_ROOT = "data/vtab"


# ============================================================================ helpers
def _csv(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    """argparse type for comma-separated lists (``--seeds 0,1,2``)."""

    def parse(text: str) -> list[Any]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list, got nothing")
        try:
            return [kind(t) for t in items]
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None

    parse.__name__ = f"list of {getattr(kind, '__name__', 'value')}"
    return parse


def _one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split())  # multi-line library messages become one line
    if isinstance(e, KeyError) and len(e.args) == 1:
        msg = str(e.args[0])
    return msg or type(e).__name__


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input: reported in one line, exit code 2."""
    from mosa.checkpoint import CheckpointError
    from mosa.cli.runs import CliError
    from mosa.config import ConfigError
    from mosa.data.errors import DataError
    from mosa.results.aggregate import ResultsError

    errors: list[type[BaseException]] = [
        ConfigError,
        DataError,
        CheckpointError,
        FileNotFoundError,
        ResultsError,
        CliError,
    ]
    try:
        from mosa.engine.errors import TrainingError

        errors.append(TrainingError)
    except ImportError:
        pass
    return tuple(errors)


def _fmt_acc(v: Any) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k} {_fmt_acc(x)}" for k, x in v.items())
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return f"{100 * v:.2f}%" if v <= 1.0 else f"{v:.2f}%"
    return "n/a"


def _find(d: dict[str, Any], *keys: str) -> Any:
    """First present key, also looking one level down (e.g. ``params.trainable``)."""
    for k in keys:
        if k in d:
            return d[k]
    for v in d.values():
        if isinstance(v, dict):
            found = _find(v, *keys)
            if found is not None:
                return found
    return None


def _describe_summary(summary: dict[str, Any]) -> list[str]:
    trainable = _find(summary, "trainable_params", "trainable")
    seconds = _find(summary, "wall_time_s", "wall_time", "wall_s", "time_s")
    parts = [f"test top-1 {_fmt_acc(summary.get('test_acc'))}"]
    if summary.get("val_acc") is not None:
        parts.append(f"val top-1 {_fmt_acc(summary.get('val_acc'))}")
    if isinstance(trainable, int):
        parts.append(f"trainable params {trainable:,}")
    if isinstance(seconds, (int, float)):
        parts.append(f"{seconds:.0f}s")
    return parts


def _outputs(run_dir: Path) -> str:
    names = ["adapter/", "summary.json", "metrics.jsonl", "curves.png"]
    have = [n for n in names if (run_dir / n.rstrip("/")).exists()]
    return f"{run_dir}: " + (", ".join(have) if have else "(nothing written)")


def _device(name: str | None) -> str | None:
    """Check a --device value early, so a missing GPU is one clear line, not a traceback."""
    if name is None:
        return None
    from mosa.cli.runs import CliError

    if name != "auto" and not name.startswith(("cpu", "cuda", "mps", "xpu")):
        raise CliError(f"--device {name!r}: use auto, cpu, cuda or cuda:N")
    if name.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise CliError(f"--device {name}: CUDA is not available here; use --device cpu")
    return name


# ============================================================================ commands
def cmd_train(args: argparse.Namespace) -> int:
    from mosa.recipes import apply_overrides, build_config, dump_yaml, format_out, load_config

    if args.resume:
        from mosa.cli.runs import CliError, read_run_config

        if args.config:
            raise CliError("--resume takes the config from RUN_DIR/config.json; drop --config")
        run_dir = Path(args.resume)
        saved = read_run_config(run_dir).to_dict()
        tree = apply_overrides(saved, args.overrides)
        tree["out"] = str(run_dir)
        cfg = build_config(tree, f"{run_dir}/config.json")
        resume = True
    else:
        cfg = load_config(args.config or None, args.overrides, out=args.out)
        resume = False
    if args.device:
        cfg.device = _device(args.device)
    if args.compile:
        cfg.compile = True
    cfg = format_out(cfg) if "{" in cfg.out else cfg
    if args.print_config:
        print(dump_yaml(cfg.to_dict()), end="")
        return 0
    import mosa.engine as engine

    print(f"mosa: {'resuming' if resume else 'training'} {cfg.method.method} on "
          f"{'+'.join(d.label for d in cfg.data)} -> {cfg.out}", file=sys.stderr)  # fmt: skip
    summary = engine.train(cfg, resume=resume, progress=not args.quiet)
    print("mosa: " + ", ".join(_describe_summary(summary or {})))
    print("mosa: written to " + _outputs(Path(cfg.out)))
    return 0


def _parse_data_spec(spec: str) -> tuple[str, str, str, str | None]:
    from mosa.cli.runs import CliError

    parts = spec.split(":")
    # a Windows drive letter or "kind:root" without a task are not supported: say what is
    if len(parts) not in (3, 4) or not all(parts[:3]):
        raise CliError(
            f"--data {spec!r}: expected KIND:ROOT:TASK[:SPLIT], e.g. vtab:data/vtab:digits:test"
        )
    return parts[0], parts[1], parts[2], (parts[3] if len(parts) == 4 and parts[3] else None)


def cmd_eval(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from mosa.cli.runs import (
        CliError,
        build_model,
        build_task_view,
        check_single_task,
        check_task,
        find_checkpoint,
    )
    from mosa.engine.config import DataConfig
    from mosa.engine.multitask import TaskView
    from mosa.recipes import load_config
    from mosa.runs import adapter_tasks

    ckpt = find_checkpoint(args.path)
    cfg = load_config(args.config, args.overrides) if args.config else None
    if args.overrides and not args.config:
        raise CliError("key=value overrides need --config (they change that config)")
    run = cfg or ckpt.run_config
    tasks = adapter_tasks(ckpt.adapter_dir)  # None: a single-task adapter
    if args.task is not None:
        if tasks is not None:
            check_task(args.task, tasks, ckpt.adapter_dir)
        else:
            check_single_task(ckpt, args.task)
    by_head = tasks is not None or args.task is not None  # rebuilt through a task's head
    heads: list[str | None]
    if args.data:
        kind, root, task, split = _parse_data_spec(args.data)
        head = args.task
        if head is None and tasks is not None:
            if len(tasks) != 1:
                raise CliError(
                    f"{ckpt.adapter_dir} has a head for each of {len(tasks)} tasks "
                    f"({', '.join(tasks)}): say which one to evaluate --data with, "
                    f"e.g. --task {tasks[0]}"
                )
            head = tasks[0]
        base = _run_data(run, head, required=False) if run is not None else DataConfig()
        # keep the run's preprocessing (size, normalisation), change where the images come from
        datas = [dataclasses.replace(base, kind=kind, root=root, task=task, name=None)]
        splits = [split or args.split]
        heads = [head]
    elif run is not None:
        if by_head:
            heads = [args.task] if args.task is not None else list(tasks or [])
            datas = [_run_data(run, h, required=True) for h in heads]
        else:
            datas = list(run.data)
            heads = [None] * len(datas)
        splits = [args.split] * len(datas)
    else:
        raise CliError(
            f"{args.path} has no run config next to it: say what to evaluate on with "
            "--data KIND:ROOT:TASK[:SPLIT] or --config"
        )
    views: dict[str | None, TaskView] = {}
    if by_head:
        # one rebuild: every head sits on the same merged model
        first = build_task_view(ckpt, heads[0], weights=args.weights, config=cfg)
        model = first.model
        for h in heads:
            views[h] = first if h == heads[0] else TaskView(model, h).eval()
    else:
        model = build_model(ckpt, weights=args.weights, config=cfg)
        import mosa

        mosa.merge(model)  # evaluate the deployable model: one dense adapter / folded LoRA
    from mosa.engine.data import resolve_data_configs, resolve_input
    from mosa.engine.distributed import DistInfo, resolve_device
    from mosa.engine.evaluate import evaluate

    size, mean, std = resolve_input(run or _stub_config(ckpt), model)
    from mosa.engine.config import TrainConfig

    holder = TrainConfig(data=datas)
    datas = resolve_data_configs(holder, size, mean, std)
    device = resolve_device(_device(args.device) or (run.device if run else "auto"))
    info = DistInfo(0, 1, 0, device, None, False)
    model.to(device)
    from mosa.data import build_dataset
    from mosa.engine.data import dataset_num_classes, eval_loader

    results = []
    for d, split, head in zip(datas, splits, heads, strict=True):
        if split is None:
            raise CliError(f"{d.label}: no split to evaluate; pass --split")
        ds = build_dataset(
            d.kind,
            d.root,
            d.task,
            split,
            img_size=int(d.img_size),
            mean=d.mean,
            std=d.std,
            train=False,
            cache=False,
        )
        view = views.get(head)
        k = view.num_classes if view is not None else ckpt.meta.get("num_classes")
        if isinstance(k, int) and dataset_num_classes(ds) > k:
            whose = f"task {head!r}'s head" if head is not None else "the adapter's head"
            raise CliError(
                f"{d.kind}:{d.task}:{split} has {dataset_num_classes(ds)} classes but "
                f"{whose} has {k}: evaluate it on the task it was trained for"
            )
        loader = eval_loader(ds, args.batch_size, info, num_workers=0)
        with torch.inference_mode():
            r = evaluate(view if view is not None else model, loader, info)
        entry: dict[str, Any] = {}
        if head is not None:
            entry["task"] = head
        entry.update(
            {
                "data": f"{d.kind}:{d.root}:{d.task}:{split}",
                "top1": r["acc"],
                "n": r["n"],
                "loss": r["loss"],
                "adapter": str(ckpt.adapter_dir),
                "method": ckpt.meta.get("method", {}).get("method"),
                "backbone": ckpt.meta.get("backbone"),
                "merged": True,
            }
        )
        results.append(entry)
        task_note = f"task {head}: " if head is not None else ""
        print(
            f"{task_note}top-1 {100 * r['acc']:.2f}% ({r['n']} images) on {entry['data']} "
            f"[{entry['method']} on {entry['backbone']}, merged]"
        )
    if args.out:
        from mosa.io import atomic_write_json

        atomic_write_json(Path(args.out), results[0] if len(results) == 1 else results)
        print(f"mosa: written {args.out}", file=sys.stderr)
    return 0


def _run_data(run: Any, head: str | None, *, required: bool) -> Any:
    """The data config of ``run`` whose label is ``head`` (the first one when ``head`` is None,
    or when it has none and a stand-in is enough: ``required=False``)."""
    from mosa.cli.runs import CliError

    for d in run.data:
        if head is None or d.label == head:
            return d
    if not required:
        return run.data[0]
    labels = ", ".join(d.label for d in run.data)
    raise CliError(
        f"the run config has no data set labelled {head!r} (it has {labels}): say what to "
        "evaluate that head on with --data KIND:ROOT:TASK[:SPLIT]"
    )


def _stub_config(ckpt: Any) -> Any:
    from mosa.engine.config import TrainConfig

    return TrainConfig(backbone=ckpt.meta.get("backbone") or "unknown")


def cmd_merge(args: argparse.Namespace) -> int:
    import mosa
    from mosa.cli.runs import CliError, build_model, check_single_task, find_checkpoint
    from mosa.io import atomic_save_safetensors, atomic_write_json
    from mosa.model import PREFIX

    ckpt = find_checkpoint(args.path)
    out = Path(args.out)
    if out.resolve() == ckpt.adapter_dir.resolve():
        raise CliError("--out must differ from the adapter folder (merging is not in place)")
    from mosa.runs import adapter_tasks

    tasks = adapter_tasks(ckpt.adapter_dir)
    if tasks is not None:
        return _merge_multitask(args, ckpt, tasks, out)
    if args.task is not None:
        check_single_task(ckpt, args.task)
    model = build_model(ckpt, weights=args.weights)
    mosa.merge(model)
    mosa.save_adapter(model, out)
    method = ckpt.meta.get("method", {}).get("method")
    print(f"mosa: merged {method} adapter written to {out}")
    state = model.state_dict()
    leftover = [k for k in state if any(p.startswith(PREFIX) for p in k.split("."))]
    if leftover:  # adapter / mosa: the adapter stays a separate module by design
        print(
            f"mosa: {method} keeps its adapter modules after merging; load it with "
            "mosa.load_adapter(timm.create_model(...), DIR)"
        )
        return 0
    # linear / full / lora / mosa_lora: nothing of mosa is left, a plain timm state_dict
    backbone = ckpt.meta.get("backbone")
    classes = ckpt.meta.get("num_classes")
    atomic_save_safetensors(
        state,
        out / "model.safetensors",
        metadata={"format": "pt", "backbone": str(backbone), "num_classes": str(classes)},
    )
    atomic_write_json(
        out / "model_config.json",
        {"backbone": backbone, "num_classes": classes, "source": str(ckpt.adapter_dir)},
    )
    print(
        f"mosa: plain timm weights written to {out / 'model.safetensors'}: "
        f"timm.create_model({backbone!r}, num_classes={classes}).load_state_dict("
        "safetensors.torch.load_file(...))"
    )
    return 0


def _merge_multitask(args: argparse.Namespace, ckpt: Any, tasks: list[str], out: Path) -> int:
    """Merge a multi-task adapter: the adapter folder keeps every task head; a plain timm
    state_dict (one head) is written only for the task named by --task."""
    import mosa
    from mosa.cli.runs import build_task_view, check_task
    from mosa.engine.multitask import HEADS, JOINT_HEAD
    from mosa.io import atomic_save_safetensors, atomic_write_json
    from mosa.model import PREFIX, head_module_name

    if args.task is not None:
        check_task(args.task, tasks, ckpt.adapter_dir)
    view = build_task_view(ckpt, args.task or tasks[0], weights=args.weights)  # merged
    model = view.model
    mosa.save_adapter(model, out)
    method = ckpt.meta.get("method", {}).get("method")
    print(
        f"mosa: merged {method} adapter with heads for {len(tasks)} task(s) "
        f"({', '.join(tasks)}) written to {out}"
    )
    load_hint = f"mosa.runs.load_for_eval(DIR, {tasks[0]!r})"
    state = model.state_dict()
    heads = (HEADS, JOINT_HEAD)
    leftover = [
        k
        for k in state
        if k.split(".")[0] not in heads and any(p.startswith(PREFIX) for p in k.split("."))
    ]
    if leftover:  # adapter / mosa: the adapter stays a separate module by design
        print(f"mosa: {method} keeps its adapter modules after merging; load it with {load_hint}")
        return 0
    if args.task is None:
        print(
            "mosa: model.safetensors not written: a plain timm model has one classifier and "
            f"this adapter has {len(tasks)} task heads; pass --task NAME to export one task's "
            f"model (load the merged adapter with {load_hint})"
        )
        return 0
    head = head_module_name(model)
    if not head:
        print(
            f"mosa: model.safetensors not written: {type(model).__name__} has no timm "
            f"classifier to hold task {args.task!r}'s head; load the merged adapter with "
            f"{load_hint}"
        )
        return 0
    # linear / full / lora / mosa_lora: nothing of mosa is left but the task heads; the
    # chosen task's head (its rows of a joint head) becomes the timm classifier
    linear = getattr(model, JOINT_HEAD) if view.joint else getattr(model, HEADS)[args.task]
    rows = slice(view.label_offset, view.label_offset + view.num_classes)
    plain = {k: v for k, v in state.items() if k.split(".")[0] not in heads}
    plain[f"{head}.weight"] = linear.weight.detach()[rows].clone()
    plain[f"{head}.bias"] = linear.bias.detach()[rows].clone()
    backbone = ckpt.meta.get("backbone")
    classes = view.num_classes
    atomic_save_safetensors(
        plain,
        out / "model.safetensors",
        metadata={
            "format": "pt",
            "backbone": str(backbone),
            "num_classes": str(classes),
            "task": args.task,
        },
    )
    atomic_write_json(
        out / "model_config.json",
        {
            "backbone": backbone,
            "num_classes": classes,
            "task": args.task,
            "source": str(ckpt.adapter_dir),
        },
    )
    print(
        f"mosa: plain timm weights of task {args.task!r} written to {out / 'model.safetensors'}: "
        f"timm.create_model({backbone!r}, num_classes={classes}).load_state_dict("
        "safetensors.torch.load_file(...))"
    )
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from mosa.data.prepare import prepare_tasks

    def progress(task: str, status: str) -> None:
        print(f"mosa: {task}: {status}", file=sys.stderr)

    results = prepare_tasks(
        args.out,
        args.tasks,
        seed=args.seed,
        limit=args.limit,
        overwrite=args.overwrite,
        progress=progress,
    )
    for r in results:
        counts = ", ".join(f"{k} {v}" for k, v in r.counts.items())
        print(f"{r.task:14s} {r.status:8s} {r.path}  ({counts})")
    return 0


def cmd_data_list(args: argparse.Namespace) -> int:
    from mosa.data.prepare import PREPARE_TASKS

    for t in PREPARE_TASKS.values():
        print(f"{t.name:14s} {t.group:12s} {t.num_classes:3d} classes  {t.description}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from mosa.results import write_report

    _, text, written = write_report(args.runs_dir, args.out, plot=not args.no_plot)
    if not args.quiet:
        print(text, end="")
    for kind, path in written.items():
        print(f"mosa: {kind} written to {path}", file=sys.stderr)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from mosa.recipes.sweep import lock_state, plan_sweep, run_status, run_sweep

    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"device={_device(args.device)}")
    runs = plan_sweep(
        args.config or ["default"],
        overrides,
        out=args.out,
        tasks=args.tasks,
        methods=args.methods,
        seeds=args.seeds,
        lrs=args.lrs,
        shots=args.shots,
    )
    if args.dry_run:
        for r in runs:
            lock = lock_state(r.run_dir)
            note = {"running": " (being trained by a running sweep)", "stale": " (stale lock)"}
            print(f"{run_status(r.run_dir):7s} {r.run_dir}{note.get(lock or '', '')}")
        print(f"mosa: {len(runs)} run(s) planned (dry run)", file=sys.stderr)
        return 0
    log = lambda s: print(f"mosa: {s}", file=sys.stderr)  # noqa: E731
    result = run_sweep(
        runs,
        keep_going=args.keep_going,
        log=log,
        manifest=Path(args.out) / "sweep.json",
    )
    print(
        f"mosa: sweep {args.out}: {len(result.trained)} trained, {len(result.resumed)} resumed, "
        f"{len(result.done)} already done, {len(result.failed)} failed"
        + (f", {len(result.busy)} being trained by another process" if result.busy else "")
    )
    for path, msg in result.failed.items():
        print(f"mosa: failed {path}: {msg}", file=sys.stderr)
    if args.report and not result.failed and not result.busy:
        cmd_report(argparse.Namespace(runs_dir=args.out, out=None, no_plot=False, quiet=False))
    elif not result.failed and not result.busy:
        print(f"mosa: aggregate with: mosa report {args.out}", file=sys.stderr)
    return 1 if result.failed else 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from mosa.recipes import dump_yaml, list_recipes, load_config, recipe_description

    if args.show:
        cfg = load_config(args.show)
        print(dump_yaml(cfg.to_dict()), end="")
        return 0
    names = list_recipes(include_private=args.all)
    width = max(len(n) for n in names)
    for n in names:
        print(f"{n:{width}s}  {recipe_description(n)}")
    print(
        "\nmosa train --config NAME [key=value ...]; add --config methods/<method> (or "
        "method=<method>) for a baseline; mosa recipes --show NAME prints the resolved config",
        file=sys.stderr,
    )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from mosa.cli.runs import CliError

    module = f"mosa.bench.{args.suite}"
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise  # the benchmark exists but a dependency of it is missing: show that
        raise CliError(
            f"'mosa bench {args.suite}' is not available in this installation ({module} is missing)"
        ) from None
    rest = list(args.args)
    if rest and rest[0] == "--":
        rest = rest[1:]
    rc = mod.main(rest)
    return int(rc or 0)


def cmd_demo(args: argparse.Namespace) -> int:
    from mosa.data.prepare import prepare_tasks
    from mosa.recipes import load_config
    from mosa.recipes.sweep import run_one

    data_root = Path(args.data)
    if not (data_root / "digits" / "test.txt").is_file():
        print(f"mosa: preparing the digits task under {data_root}", file=sys.stderr)
        prepare_tasks(data_root, ["digits"], seed=0)
    extra = list(args.overrides)
    if args.epochs is not None:
        # keep the warm-up a fraction of a shortened schedule (the recipe's 2 of 12 epochs)
        warmup = min(load_config("default").optim.warmup_epochs, args.epochs // 4)
        extra += [f"optim.epochs={args.epochs}", f"optim.warmup_epochs={warmup}"]
    if args.device:
        extra.append(f"device={_device(args.device)}")
    rows = []
    for method in ("mosa", "adapter", "linear"):
        cfg = load_config(
            "default",
            [f"method={method}", f"data.root={data_root}", *extra],
            out=str(Path(args.out) / method),
        )
        print(f"mosa: {method}: training -> {cfg.out}", file=sys.stderr)
        status, summary = run_one(cfg)
        if status == "done":
            print(f"mosa: {method}: already trained, reusing {cfg.out}", file=sys.stderr)
        rows.append((method, Path(cfg.out), summary or {}))
    print()
    print(f"{'method':8s} {'test top-1':>11s} {'val top-1':>10s} {'trainable':>11s} {'time':>7s}")
    for method, _, s in rows:
        trainable = _find(s, "trainable_params", "trainable")
        seconds = _find(s, "wall_time_s", "wall_time", "wall_s", "time_s")
        print(
            f"{method:8s} {_fmt_acc(s.get('test_acc')):>11s} {_fmt_acc(s.get('val_acc')):>10s} "
            f"{f'{trainable:,}' if isinstance(trainable, int) else 'n/a':>11s} "
            f"{f'{seconds:.0f}s' if isinstance(seconds, (int, float)) else 'n/a':>7s}"
        )
    print()
    for method, run_dir, _ in rows:
        print(f"{method}: adapter {run_dir / 'adapter'}, curves {run_dir / 'curves.png'}, "
              f"summary {run_dir / 'summary.json'}")  # fmt: skip
    return 0


# ============================================================================ parser
def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {ln}" for ln in lines)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's example lines as written."""


def _add_sub(
    subs: argparse._SubParsersAction,
    name: str,
    help_text: str,
    description: str,
    examples: Sequence[str],
    common: argparse.ArgumentParser,
) -> argparse.ArgumentParser:
    return subs.add_parser(
        name,
        help=help_text,
        description=textwrap.dedent(description).strip(),
        epilog=_examples(*examples),
        formatter_class=_Formatter,
        parents=[common],
    )


def build_parser() -> argparse.ArgumentParser:
    """The full ``mosa`` argument parser."""
    from mosa import __version__

    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a --debug given before the subcommand is not reset by the subparser's default
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )
    p = argparse.ArgumentParser(
        prog="mosa",
        description="Mixture of Sparse Adapters (MoSA): parameter-efficient fine-tuning of "
        "timm vision backbones.",
        epilog=_examples(
            "mosa demo",
            "mosa data prepare --tasks digits,fmnist_rot",
            "mosa train --config vtab/dtd method=lora optim.lr=1e-3",
            "mosa sweep --config offline/_base --tasks digits,fmnist_rot --methods mosa,adapter "
            "--seeds 0,1,2 --out runs/sweep",
            "mosa report runs/sweep",
        ),
        formatter_class=_Formatter,
    )
    p.add_argument("--version", action="version", version=f"mosa {__version__}")
    p.add_argument("--debug", action="store_true", default=False, help="show tracebacks")
    subs = p.add_subparsers(dest="command", metavar="COMMAND")

    # ---------------------------------------------------------------- train
    s = _add_sub(
        subs,
        "train",
        "fine-tune a backbone from a recipe",
        """
        Train one run. The config is a packaged recipe (see 'mosa recipes') or a YAML file;
        several --config are merged left to right; key=value overrides come last (dotted keys,
        YAML values). Without --config the default recipe runs (MoSA on mosa_vit_fmnist on the
        digits task prepared under data/vtab). Writes config.json, metrics.jsonl, summary.json,
        adapter/, last/ and curves.png into the output folder. Prints one line per epoch
        (train loss and accuracy, val accuracy, lr, seconds; rank 0 only) and, on a terminal, a
        progress bar; --quiet prints only warnings and the result. A run shorter than the
        recipe's warm-up (optim.epochs=1) warms up over the whole run, with a notice. A
        non-finite loss, gradient, weight or eval loss stops the run with exit code 2, keeping
        the last good checkpoint in OUT/last.
        """,
        [
            "mosa train",
            "mosa train --config vtab/dtd method=lora optim.lr=1e-3 seed=1",
            "mosa train --config fgvc/cub --config methods/adapter data.root=/data/fgvc",
            "mosa train --config my.yaml data.0.task=digits data.1.task=fmnist_rot --out runs/mt",
            "mosa train --resume runs/default/mosa",
            "mosa train --config offline/digits optim.epochs=2 --print-config",
        ],
        common,
    )
    s.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    s.add_argument(
        "--config",
        "-c",
        action="append",
        metavar="FILE|RECIPE",
        help="recipe name (vtab/dtd) or YAML path; repeatable",
    )
    s.add_argument("--out", "-o", help="output folder (may use {task} {method} {seed} {lr})")
    s.add_argument("--resume", metavar="RUN_DIR", help="continue a run from RUN_DIR/last")
    s.add_argument("--device", help="auto (default), cpu, cuda, cuda:1 ...")
    s.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    s.add_argument("--quiet", "-q", action="store_true", help="no per-epoch lines or progress bar")
    s.add_argument(
        "--compile", action="store_true", help="train through torch.compile (= compile=true)"
    )
    s.set_defaults(func=cmd_train)

    # ---------------------------------------------------------------- eval
    s = _add_sub(
        subs,
        "eval",
        "top-1 of a trained adapter (merged)",
        """
        Rebuild the backbone named in adapter_config.json, load the adapter, merge it and
        report top-1 on a split. PATH is a run folder or an adapter folder. The data comes from
        --data, from --config (with overrides), or from the run's own config.json.

        A multi-task adapter (one head per task) is evaluated through a task's head: --task
        NAME picks one, without it every task is evaluated on the run's data set of that
        name. --data on a multi-task adapter needs --task (unless it has a single head).
        """,
        [
            "mosa eval runs/default/mosa",
            "mosa eval runs/default/mosa --split val200",
            "mosa eval runs/x/adapter --data vtab:data/vtab:digits:test --out eval.json",
            "mosa eval runs/x --config vtab/dtd data.root=/data/vtab-1k",
            "mosa eval runs/multitask",
            "mosa eval runs/multitask --task digits",
            "mosa eval runs/multitask --task digits --data vtab:data/vtab:digits:val200",
        ],
        common,
    )
    s.add_argument("path", metavar="RUN_DIR|ADAPTER_DIR")
    s.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides for --config")
    s.add_argument("--data", metavar="KIND:ROOT:TASK[:SPLIT]", help="data set to evaluate on")
    s.add_argument("--config", "-c", action="append", metavar="FILE|RECIPE")
    s.add_argument("--split", default="test", help="split name (default test)")
    s.add_argument("--task", metavar="NAME", help="multi-task adapter: the head to evaluate")
    s.add_argument("--weights", help="local backbone weights file (.safetensors/.npz/.pth)")
    s.add_argument("--batch-size", type=int, default=256)
    s.add_argument("--device", help="auto, cpu, cuda ...")
    s.add_argument("--out", "-o", help="also write the result as JSON")
    s.set_defaults(func=cmd_eval)

    # ---------------------------------------------------------------- merge
    s = _add_sub(
        subs,
        "merge",
        "merge experts into one deployable adapter",
        """
        Merge a trained adapter (MoSA experts -> one dense adapter; LoRA / MoSA-LoRA folded into
        the backbone's weights) and write the merged adapter folder. When nothing of mosa is
        left (linear, full, lora, mosa_lora) it also writes model.safetensors, a plain timm
        state_dict for timm.create_model(<backbone>, num_classes=K).

        A multi-task adapter's merged folder keeps every task head (load it with
        mosa.runs.load_for_eval(DIR, TASK), or 'mosa eval DIR --task TASK'). A plain timm
        model has one classifier, so there model.safetensors (for the methods above) is
        written only with --task NAME: that task's head becomes the timm head.
        """,
        [
            "mosa merge runs/default/mosa --out runs/default/mosa/merged",
            "mosa merge runs/x/adapter --out deploy/ --weights ViT-B_16.npz",
            "mosa merge runs/multitask --out runs/multitask/merged",
            "mosa merge runs/multitask_lora --task digits --out deploy/digits",
        ],
        common,
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

    # ---------------------------------------------------------------- data
    s = _add_sub(
        subs,
        "data",
        "prepare the offline tasks",
        "Write the project's offline tasks (real images, VTAB-1k layout).",
        [
            "mosa data prepare",
            "mosa data prepare --tasks digits,fmnist_rot --out data/vtab",
            "mosa data list",
        ],  # fmt: skip
        common,
    )
    dsubs = s.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    d = _add_sub(
        dsubs,
        "prepare",
        "write tasks under --out",
        """
        Write project tasks (default: all) in the VTAB-1k layout: train800, val200,
        train800val200 and test split files with 32x32 PNGs. A task already written with the
        same seed is skipped.
        """,
        [
            "mosa data prepare",
            "mosa data prepare --tasks digits,fmnist_rot,fmnist_loc --out data/vtab --seed 0",
        ],
        common,
    )
    d.add_argument("--tasks", type=_csv(str), help="comma-separated (default: all)")
    d.add_argument("--out", "-o", default=DEFAULT_DATA_ROOT, help=f"default {DEFAULT_DATA_ROOT}")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--limit", type=int, help="cap every split (quick tests)")
    d.add_argument("--overwrite", action="store_true", help="replace differing task folders")
    d.set_defaults(func=cmd_data_prepare)
    d = _add_sub(
        dsubs, "list", "list the tasks", "List the tasks 'prepare' can write.",
        ["mosa data list"], common,
    )  # fmt: skip
    d.set_defaults(func=cmd_data_list)

    # ---------------------------------------------------------------- report
    s = _add_sub(
        subs,
        "report",
        "aggregate runs into a markdown table + plot",
        """
        Collect every summary.json below RUNS_DIR into a table: rows = tasks, columns =
        methods, cells = mean ± std over seeds of the final test top-1. Several settings of a
        task/method (an lr sweep) are resolved by validation accuracy. VTAB tasks also get
        group means, the mean over tasks and the mean of the group means. Writes the markdown,
        a PNG bar chart and a JSON dump (default RUNS_DIR/report.md).
        """,
        ["mosa report runs/sweep", "mosa report runs/sweep --out results/vtab.md --quiet"],
        common,
    )
    s.add_argument("runs_dir", metavar="RUNS_DIR")
    s.add_argument("--out", "-o", help="markdown file (default RUNS_DIR/report.md)")
    s.add_argument("--no-plot", action="store_true", help="skip the PNG")
    s.add_argument("--quiet", "-q", action="store_true", help="do not print the table")
    s.set_defaults(func=cmd_report)

    # ---------------------------------------------------------------- sweep
    s = _add_sub(
        subs,
        "sweep",
        "grid of runs (tasks x methods x shots x lrs x seeds)",
        """
        Run a grid, each run in RUNS_DIR/<task>/<method>[/shots<k>]/lr<lr>/seed<seed>. Runs with
        a summary.json are skipped and runs with a last/ checkpoint are resumed, so a killed
        sweep continues when started again. A task uses the recipe of that name next to the
        first --config when there is one (vtab/_base + dtd -> vtab/dtd), else data.task. A
        seed sets both the run seed and method.seed.
        """,
        [
            "mosa sweep --config offline/_base --tasks digits,fmnist_rot --methods mosa,adapter,"
            "linear --seeds 0,1,2 --out runs/sweep",
            "mosa sweep --config vtab/_base --tasks dtd,svhn --lrs 1e-3,5e-3 --seeds 0 "
            "data.train_split=train800 data.val_split=val200 --out runs/lr",
            "mosa sweep --config offline/digits --shots 1,2,4 --seeds 0,1 --out runs/fewshot "
            "--dry-run",
        ],
        common,
    )
    s.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    s.add_argument("--config", "-c", action="append", metavar="FILE|RECIPE")
    s.add_argument("--tasks", type=_csv(str))
    s.add_argument("--methods", type=_csv(str))
    s.add_argument("--seeds", type=_csv(int))
    s.add_argument("--lrs", type=_csv(float))
    s.add_argument("--shots", type=_csv(int))
    s.add_argument("--out", "-o", required=True, metavar="RUNS_DIR")
    s.add_argument("--device", help="auto, cpu, cuda ...")
    s.add_argument("--dry-run", action="store_true", help="list the runs and their state")
    s.add_argument("--keep-going", action="store_true", help="continue after a failed run")
    s.add_argument("--report", action="store_true", help="run 'mosa report' at the end")
    s.set_defaults(func=cmd_sweep)

    # ---------------------------------------------------------------- recipes
    s = _add_sub(
        subs,
        "recipes",
        "list the packaged recipes",
        "List the packaged recipes (published VTAB / FGVC / general recipes, offline tasks, "
        "method mixins).",
        ["mosa recipes", "mosa recipes --all", "mosa recipes --show fgvc/stanford_cars"],
        common,
    )
    s.add_argument("--all", action="store_true", help="include the _base files")
    s.add_argument("--show", metavar="NAME", help="print one recipe, bases and defaults resolved")
    s.set_defaults(func=cmd_recipes)

    # ---------------------------------------------------------------- bench
    s = _add_sub(
        subs,
        "bench",
        "benchmarks (speed, accuracy, study)",
        "Run a benchmark suite; arguments after the suite name go to the suite itself.",
        [
            "mosa bench speed --device cpu --out runs/bench_speed.json",
            "mosa bench speed --help",
            "mosa bench accuracy --out runs/bench_accuracy",
            "mosa bench study --out runs/study",
        ],
        common,
    )
    s.add_argument("suite", choices=("speed", "accuracy", "study"))
    s.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the suite")
    s.set_defaults(func=cmd_bench)

    # ---------------------------------------------------------------- demo
    s = _add_sub(
        subs,
        "demo",
        "prepare digits, train MoSA, a plain adapter and a linear probe, compare",
        """
        Prepare the digits task if it is missing, train the default recipe (MoSA), the same
        recipe with method=adapter (the plain adapter MoSA must beat) and with method=linear,
        and print the three test accuracies side by side. Finished runs are reused.
        """,
        ["mosa demo", "mosa demo --epochs 3 --out runs/demo_quick"],
        common,
    )
    s.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides for every run")
    s.add_argument("--out", "-o", default="runs/demo")
    s.add_argument("--data", default=DEFAULT_DATA_ROOT, help="where the digits task lives")
    s.add_argument("--epochs", type=int)
    s.add_argument("--device", help="auto, cpu, cuda ...")
    s.set_defaults(func=cmd_demo)
    return p


# ============================================================================ entry point
class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (callers and tests may swap it)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _log_to_stderr(quiet: bool) -> None:
    """Show the library's progress messages (``mosa.*`` loggers) as ``mosa: ...`` lines."""
    logger = logging.getLogger("mosa")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("mosa: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False  # the command line owns the process's output
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (2 for bad input)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(list(argv) if argv is not None else None)
    if extra:
        # argparse hands KEY=VALUE items that follow an option (`--config X a=1`) back as
        # unknown: they are overrides of commands that take them
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    debug = bool(getattr(args, "debug", False))
    _log_to_stderr(quiet=bool(getattr(args, "quiet", False)))
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("mosa: interrupted (a run resumes from its last/ checkpoint)", file=sys.stderr)
        return 130
    except Exception as e:
        if debug or not isinstance(e, _user_errors()):
            raise
        print(f"mosa: error: {_one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
