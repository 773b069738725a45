"""Typed configs: dataclasses loaded from YAML, dotted overrides, validation on load.

A config is a tree of dataclasses. `load_config(Schema, path, overrides)` reads the YAML,
applies `key.sub=value` overrides (values parsed as YAML scalars/lists), and builds the tree,
checking every key and type. Errors name the file and the dotted key, and an unknown key lists
the valid ones, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

T = TypeVar("T")
BASE_KEY = "base"  # reserved top-level YAML key: inherit from another config file


class ConfigError(ValueError):
    """A config file or override that does not fit its schema."""


def load_config(
    schema: type[T],
    path: str | Path | list[str | Path] | tuple | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> T:
    """Build `schema` from YAML file(s) plus dotted overrides.

    `path` may be one file, None (the schema's defaults), or several files deep-merged in order,
    e.g. a base run config followed by an ablation that states only what it changes.
    """
    paths = [] if path is None else [path] if isinstance(path, (str, Path)) else list(path)
    source = " + ".join(str(p) for p in paths) or f"<defaults of {schema.__name__}>"
    raw: dict[str, Any] = {}
    for p in paths:
        raw = deep_merge(raw, read_yaml(Path(p)))
    for item in overrides:
        _apply_override(raw, item, schema, source)
    return from_dict(schema, raw, source=source)


def read_yaml(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML mapping; a top-level `base: other.yaml` (relative to this file) is loaded first and
    deep-merged under it, so an ablation config states only what it changes."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    base = raw.pop(BASE_KEY, None)
    if base is None:
        return raw
    base_path = (path.parent / str(base)).resolve()
    if base_path in _seen:
        raise ConfigError(f"{path}: '{BASE_KEY}: {base}' makes a cycle")
    return deep_merge(read_yaml(base_path, (*_seen, path.resolve())), raw)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def from_dict(schema: type[T], data: dict[str, Any], *, source: str = "<dict>", prefix: str = "") -> T:
    """Recursively build a dataclass from a plain dict, validating keys and types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: '{prefix or '<root>'}' must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(schema) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"'{prefix}'" if prefix else "the top level"
        raise ConfigError(
            f"{source}: unknown key '{_join(prefix, unknown[0])}' in {where}; "
            f"valid keys: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(schema)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, source, _join(prefix, name))
    try:
        obj = schema(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {prefix or '<root>'}: {exc}") from exc
    return obj


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-dict view of a config tree (JSON/YAML safe)."""
    return dataclasses.asdict(cfg)


def config_hash(data: Any) -> str:
    """Stable content hash of a JSON-able value (a config or part of one): the cache key of a column."""
    if dataclasses.is_dataclass(data):
        data = to_dict(data)
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _apply_override(raw: dict[str, Any], item: str, schema: type, source: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like key.sub=value")
    key, _, text = item.partition("=")
    parts = key.strip().split(".")
    node, cls = raw, schema
    for depth, part in enumerate(parts):
        names = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
        if part not in names:
            where = ".".join(parts[:depth]) or "the top level"
            raise ConfigError(
                f"override '{item}': unknown key '{'.'.join(parts[: depth + 1])}' in {where}; "
                f"valid keys: {', '.join(sorted(names))}"
            )
        if depth == len(parts) - 1:
            try:
                node[part] = yaml.safe_load(text) if text.strip() else None
            except yaml.YAMLError as exc:
                raise ConfigError(f"override '{item}': value is not valid YAML: {exc}") from exc
            return
        cls = _dataclass_in(typing.get_type_hints(cls)[part])
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child


def _dataclass_in(tp: Any) -> type | None:
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def _coerce(tp: Any, value: Any, source: str, key: str) -> Any:
    """Check `value` against annotation `tp`, converting where the YAML form differs (int -> float, list -> tuple)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, source, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[-1] if errors else f"{source}: '{key}' has an unsupported type")
    if origin is Literal:
        choices = get_args(tp)
        if isinstance(value, bool) and "no" in choices:  # YAML 1.1 reads `no` / `off` as false
            value = {False: "no", True: "yes"}[value]
        if value not in choices:
            raise ConfigError(f"{source}: '{key}' = {value!r} is not one of: {', '.join(map(repr, choices))}")
        return value
    if dataclasses.is_dataclass(tp):
        if value is None:
            raise ConfigError(f"{source}: '{key}' must be a mapping, got null")
        return from_dict(tp, value, source=source, prefix=key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: '{key}' must be a list, got {value!r}")
        args = get_args(tp)
        item_tp = args[0] if args else Any
        items = [_coerce(item_tp, v, source, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}' must be a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string; people write it anyway
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: '{key}' must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: '{key}' must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: '{key}' must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{source}: '{key}' must be a string, got {value!r}")
        return str(value)
    return value
