"""Run recipes: YAML files shipped with the package, ``base:`` inheritance and dotted overrides.

A recipe is a YAML mapping with the keys of :class:`mosa.engine.config.TrainConfig` plus two
keys of its own:

- ``base``: a recipe (or a list of recipes, applied in order) this one inherits from, given as a
  path relative to the file or as a packaged recipe name (``vtab/_base``). Mappings are merged
  key by key; lists and scalars are replaced.
- ``description``: one line shown by ``mosa recipes``.

``data`` may be one mapping (single data set) or a list of mappings (multi-task). Values are
YAML 1.2-style: ``1e-3`` is a float (PyYAML alone would read it as a string).

Overrides are ``dotted.key=value`` strings: ``optim.lr=1e-3``, ``method.method=lora`` (or the
shortcut ``method=lora``), ``data.task=dtd`` for the single-data-set case, ``data.1.task=x`` for
an entry of a multi-task list (the index one past the end adds an entry that copies the last
one), ``seed=1``. ``backbone_kwargs.<any>=...`` is passed to timm as is.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from mosa.config import ConfigError
from mosa.engine.config import TrainConfig

__all__ = [
    "DEFAULT_RECIPE",
    "RECIPES_DIR",
    "apply_overrides",
    "build_config",
    "dump_yaml",
    "format_out",
    "list_recipes",
    "load_config",
    "load_tree",
    "merge_trees",
    "parse_value",
    "recipe_description",
    "resolve_recipe",
    "validate_tree",
]

RECIPES_DIR = Path(__file__).resolve().parent
DEFAULT_RECIPE = "default"
RESERVED = ("base", "description")  # recipe-file keys that are not TrainConfig fields
_NULLS = ("null", "Null", "NULL", "~", "")


# --------------------------------------------------------------------------------- YAML reading
class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` / ``5E4`` as floats (YAML 1.2 behaviour)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from e
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from e


def parse_value(text: str) -> Any:
    """One override value as a YAML scalar / flow collection (``1e-3`` -> 0.001, ``null`` -> None)."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506
    except yaml.YAMLError:
        return text  # not valid YAML (e.g. an unbalanced bracket): keep the literal text


def dump_yaml(obj: Any) -> str:
    """YAML text of a config tree (tuples written as lists)."""

    def plain(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x

    return yaml.safe_dump(plain(obj), sort_keys=False, default_flow_style=False)


# --------------------------------------------------------------------------------- recipe files
def _recipe_files() -> list[Path]:
    return sorted(p for p in RECIPES_DIR.rglob("*.yaml") if p.is_file())


def _recipe_name(path: Path) -> str:
    return path.relative_to(RECIPES_DIR).with_suffix("").as_posix()


def list_recipes(include_private: bool = False) -> list[str]:
    """Names of the packaged recipes (``vtab/dtd``...); ``_``-prefixed bases only on request."""
    names = [_recipe_name(p) for p in _recipe_files()]
    if not include_private:
        names = [n for n in names if not n.rsplit("/", 1)[-1].startswith("_")]
    return names


def recipe_description(name_or_path: str) -> str:
    """The ``description`` of a recipe (inherited from its bases when it has none)."""
    tree = load_tree(name_or_path, keep_description=True)
    return str(tree.get("description") or "")


def resolve_recipe(name_or_path: str | Path, relative_to: Path | None = None) -> Path:
    """Path of a config given as a file path (absolute, relative to ``relative_to`` or to the
    working directory) or as a packaged recipe name with or without ``.yaml``."""
    raw = str(name_or_path)
    candidates: list[Path] = []
    p = Path(raw).expanduser()
    if relative_to is not None and not p.is_absolute():
        candidates.append(relative_to / p)
    candidates.append(p)
    stem = raw[:-5] if raw.endswith(".yaml") else raw[:-4] if raw.endswith(".yml") else raw
    candidates.append(RECIPES_DIR / f"{stem}.yaml")
    for c in candidates:
        if c.is_file():
            return c.resolve()
    names = list_recipes(include_private=True)
    hint = difflib.get_close_matches(stem, names, n=3)
    extra = f" (did you mean {', '.join(hint)}?)" if hint else ""
    raise FileNotFoundError(
        f"config {raw!r} is neither a file nor a packaged recipe{extra}; "
        "'mosa recipes' lists the recipes"
    )


def merge_trees(base: Any, over: Any) -> Any:
    """``over`` on top of ``base``: mappings merge key by key, anything else replaces."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = merge_trees(base[k], v) if k in base else copy.deepcopy(v)
        return out
    return copy.deepcopy(over)


def load_tree(
    name_or_path: str | Path,
    *,
    keep_description: bool = False,
    _relative_to: Path | None = None,
    _stack: tuple[Path, ...] = (),
) -> dict[str, Any]:
    """A recipe file with its ``base:`` chain merged in (raw tree, not yet validated)."""
    path = resolve_recipe(name_or_path, _relative_to)
    if path in _stack:
        chain = " -> ".join(str(p) for p in (*_stack, path))
        raise ConfigError(f"recipe inheritance loops: {chain}")
    tree = _read_yaml(path)
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, got {type(tree).__name__}")
    bases = tree.pop("base", None)
    if bases is None:
        bases = []
    elif isinstance(bases, str):
        bases = [bases]
    elif not (isinstance(bases, list) and all(isinstance(b, str) for b in bases)):
        raise ConfigError(f"{path}: 'base' must be a recipe name/path or a list of them")
    merged: dict[str, Any] = {}
    for b in bases:
        parent = load_tree(
            b, keep_description=True, _relative_to=path.parent, _stack=(*_stack, path)
        )
        merged = merge_trees(merged, parent)
    merged = merge_trees(merged, tree)
    if not keep_description:
        merged.pop("description", None)
    return merged


# --------------------------------------------------------------------------------- schema
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    """(inner type, whether None is allowed) of ``X | None``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        # several non-None members: not in the schema today; leave the value to the dataclass
        return (args[0] if len(args) == 1 else Any), optional
    return tp, False


def _unknown(key: str, path: str, names: Iterable[str]) -> ConfigError:
    names = list(names)
    hint = difflib.get_close_matches(key, names, n=1)
    prefix = f"{path}." if path else ""
    extra = f" (did you mean {prefix + hint[0]!r}?)" if hint else ""
    where = f"{path!r}" if path else "the run config"
    return ConfigError(f"unknown key {prefix + key!r}{extra}: {where} has {', '.join(names)}")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert the harmless cases
    (int -> float, integral float -> int, number -> str); nested dataclasses are walked."""
    inner, optional = _strip_optional(tp)
    if value is None:
        if optional or inner is Any:
            return None
        raise ConfigError(f"{path} may not be null")
    if inner is Any:
        return value
    if dataclasses.is_dataclass(inner):
        if isinstance(value, inner):
            return value
        if not isinstance(value, dict):
            raise ConfigError(
                f"{path} must be a mapping of {inner.__name__} options, got {value!r}"
            )
        return _walk(value, inner, path)
    origin = typing.get_origin(inner)
    args = typing.get_args(inner)
    if origin is list and args and dataclasses.is_dataclass(args[0]):
        if isinstance(value, (dict, args[0])):
            return _coerce(value, args[0], path)
        if not isinstance(value, list):
            raise ConfigError(f"{path} must be a mapping or a list of mappings, got {value!r}")
        return [_coerce(v, args[0], f"{path}.{i}") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a mapping, got {value!r}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            return value  # e.g. targets "q,v": the dataclass splits it
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return [_coerce(v, args[0], f"{path}.{i}") for i, v in enumerate(value)]
        if len(args) != len(value):
            raise ConfigError(f"{path} must have {len(args)} values, got {len(value)}: {value!r}")
        return [
            _coerce(v, t, f"{path}.{i}") for i, (t, v) in enumerate(zip(args, value, strict=True))
        ]
    if inner is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be true or false, got {value!r}")
        return value
    if inner is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path} must be an integer, got {value!r}")
        return value
    if inner is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path} must be a number, got {value!r}")
        return float(value)
    if inner is str:
        if isinstance(value, bool):
            raise ConfigError(f"{path} must be a string, got {value!r} (quote it in YAML)")
        if isinstance(value, (int, float)):
            return str(value)
        if not isinstance(value, str):
            raise ConfigError(f"{path} must be a string, got {value!r}")
        return value
    return value


def _walk(node: dict[str, Any], cls: type, path: str) -> dict[str, Any]:
    hints = _hints(cls)
    out: dict[str, Any] = {}
    for k, v in node.items():
        if not isinstance(k, str) or k not in hints:
            raise _unknown(str(k), path, hints)
        out[k] = _coerce(v, hints[k], f"{path}.{k}" if path else k)
    return out


def validate_tree(tree: dict[str, Any], source: str = "") -> dict[str, Any]:
    """Check every key of a raw config tree (with a suggestion for typos) and coerce scalars."""
    body = {k: v for k, v in tree.items() if k not in RESERVED}
    try:
        return _walk(body, TrainConfig, "")
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}" if source else str(e)) from None


# --------------------------------------------------------------------------------- overrides
def _set_override(tree: dict[str, Any], key: str, raw: str) -> None:
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise ConfigError(f"override {key!r}={raw!r}: the key is empty or has an empty part")
    if parts[0] in RESERVED:
        raise ConfigError(f"override {key!r}: {parts[0]!r} can only be set inside a recipe file")
    if parts == ["method"] and isinstance(parse_value(raw), str):
        parts = ["method", "method"]  # shortcut: method=lora
    node: Any = tree
    tp: Any = TrainConfig
    done: list[str] = []
    i = 0
    while True:
        part = parts[i]
        last = i == len(parts) - 1
        inner, _ = _strip_optional(tp)
        path = ".".join(done)
        if not dataclasses.is_dataclass(inner):  # a free mapping such as backbone_kwargs
            if last:
                node[part] = parse_value(raw)
                return
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {key!r}: {'.'.join([*done, part])} is not a mapping")
            node, tp = child, Any
            done.append(part)
            i += 1
            continue
        hints = _hints(inner)
        if part not in hints:
            raise _unknown(part, path, hints)
        ftp = hints[part]
        if last:
            value = _parse_for(raw, ftp)
            if isinstance(value, dict) and isinstance(node.get(part), dict):
                value = merge_trees(node[part], value)  # method={rank: 4} edits, not replaces
            node[part] = value
            return
        fin, _ = _strip_optional(ftp)
        done.append(part)
        if typing.get_origin(fin) is list:  # data: one mapping or a list of them
            entries, index = _list_entries(node, part, parts[i + 1], ".".join(done))
            if index is not None:
                i += 1
                done.append(parts[i])
                if i == len(parts) - 1:  # data.1={task: x, ...}: the whole entry
                    value = parse_value(raw)
                    if not isinstance(value, dict):
                        raise ConfigError(f"override {key!r}: the value must be a mapping")
                    entries[index] = merge_trees(entries[index], value)
                    return
            node, tp = entries[index or 0], typing.get_args(fin)[0]
            i += 1
            continue
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"override {key!r}: {'.'.join(done)} is not a mapping")
        node, tp = child, ftp
        i += 1


def _list_entries(
    node: dict[str, Any], part: str, nxt: str, full: str
) -> tuple[list[dict[str, Any]], int | None]:
    """The entries of a list-of-mappings field (``data``) and the index ``nxt`` names (None
    when ``nxt`` is a field name, which is allowed while the run has a single entry). An index
    one past the end adds an entry copied from the last one. The tree keeps its
    single-mapping form unless an index is used."""
    orig = node.get(part)
    if orig is None:
        entries: list[dict[str, Any]] = [{}]
    elif isinstance(orig, dict):
        entries = [orig]
    elif isinstance(orig, list) and all(isinstance(e, dict) for e in orig):
        entries = orig if orig else [{}]
    else:
        raise ConfigError(f"{full} must be a mapping or a list of mappings")
    if re.fullmatch(r"-?[0-9]+", nxt):
        idx = int(nxt)
        if idx < 0 or idx > len(entries):
            raise ConfigError(
                f"{full}.{idx}: index out of range ({full} has {len(entries)} "
                f"entr{'y' if len(entries) == 1 else 'ies'}; {full}.{len(entries)} adds one)"
            )
        if idx == len(entries):
            # a new entry starts as a copy of the last one (same kind/root/splits), so
            # data.1.task=x adds a second task of the same family
            entries.append({k: copy.deepcopy(v) for k, v in entries[-1].items() if k != "name"})
        node[part] = entries
        return entries, idx
    if len(entries) > 1:
        raise ConfigError(f"{full} has {len(entries)} entries: say which, e.g. {full}.0.{nxt}=...")
    node[part] = entries if isinstance(orig, list) else entries[0]
    return entries, None


def _parse_for(raw: str, tp: Any) -> Any:
    """String-typed fields take the text as is (``task=2017`` stays a string)."""
    inner, optional = _strip_optional(tp)
    if inner is str:
        if optional and raw.strip() in _NULLS:
            return None
        return raw
    return parse_value(raw)


def apply_overrides(tree: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``tree`` with ``key=value`` overrides applied in order."""
    out = copy.deepcopy(tree)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(
                f"override {item!r} is not key=value (e.g. optim.lr=1e-3, method=lora, data.task=dtd)"
            )
        key, raw = item.split("=", 1)
        _set_override(out, key.strip(), raw.strip())
    return out


# --------------------------------------------------------------------------------- building
def build_config(tree: dict[str, Any], source: str = "") -> TrainConfig:
    """Validate a merged tree into a TrainConfig."""
    body = validate_tree(tree, source)
    try:
        return TrainConfig.from_dict(body)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}" if source else str(e)) from None


def format_out(config: TrainConfig) -> TrainConfig:
    """Fill ``{task}``, ``{method}``, ``{seed}``, ``{lr}``, ``{backbone}``, ``{shots}`` in
    ``config.out`` so one recipe can send each variant to its own folder."""
    fields = {
        "task": "+".join(d.label for d in config.data),
        "method": config.method.method,
        "seed": config.seed,
        "lr": f"{config.optim.lr:g}",
        "backbone": config.backbone.replace("/", "_"),
        "shots": config.data[0].shots if config.data[0].shots is not None else "all",
    }
    try:
        config.out = config.out.format(**fields)
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(
            f"out={config.out!r} has an unknown placeholder {e}; use {{{'}, {'.join(fields)}}}"
        ) from None
    return config


def load_config(
    configs: str | Path | Sequence[str | Path] | None = None,
    overrides: Sequence[str] = (),
    *,
    out: str | None = None,
) -> TrainConfig:
    """Recipes (merged left to right; default: the ``default`` recipe) + overrides -> TrainConfig.

    ``out`` (when given) replaces the recipe's output folder; placeholders are then filled.
    """
    if configs is None or (not isinstance(configs, (str, Path)) and not configs):
        configs = [DEFAULT_RECIPE]
    elif isinstance(configs, (str, Path)):
        configs = [configs]
    tree: dict[str, Any] = {}
    sources = []
    for c in configs:
        part = load_tree(c)
        sources.append(str(c))
        validate_tree(part, str(c))  # typo in a file: name that file
        tree = merge_trees(tree, part)
    tree = apply_overrides(tree, overrides)
    if out is not None:
        tree["out"] = out
    cfg = build_config(tree, " + ".join(sources))
    return format_out(cfg)
