"""Typed, validated configs: dataclasses in, dataclasses out, one-line errors for bad keys.

Every stage declares its config as a (nested) dataclass. `load_config` reads YAML, applies
`--set dotted.key=value` overrides, and checks every key and type against the dataclass, so a
typo fails loudly with the dotted name instead of being silently ignored. `save_config` writes the
resolved config next to a stage's outputs; `config_hash` identifies it (stages skip work whose
outputs carry the same hash).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from echochamber.errors import UserError

_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in typing.get_args(tp))
    if typing.get_origin(tp) is Literal:
        return " or ".join(repr(arg) for arg in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against type `tp`; return it (ints widened to float where a float is asked)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        sections = [arg for arg in args if dataclasses.is_dataclass(arg)]
        if (
            isinstance(value, dict) and len(sections) == 1
        ):  # a mapping is that section: its error is the clear one
            return _coerce(value, sections[0], key)
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except UserError:
                continue  # the next type may fit; one error naming all of them if none does
        raise UserError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise UserError(f"config key '{key}': must be one of {choices}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key '{key}': expected a list, got {value!r}")
        item = args[0] if args else Any
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"config key '{key}': expected a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise UserError(f"config key '{key}': expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"config key '{key}': expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"config key '{key}': expected an integer, got {value!r}")
        return value
    if tp is float:
        # YAML 1.1 reads `1e-5` (no dot) as a string; a researcher means the number.
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"config key '{key}': expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"config key '{key}': expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} for key {key}")  # a bug in a config class


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from a plain mapping, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise UserError(f"config '{prefix.rstrip('.') or 'root'}': expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise UserError(f"unknown config key '{prefix}{key}' (known here: {known})")
    kwargs = {name: _coerce(value, hints[name], prefix + name) for name, value in data.items()}
    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise UserError(f"missing config key '{prefix}{missing[0]}'")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` strings; values are parsed as YAML scalars (`3`, `1e-3`, `true`, `[1,2]`)."""
    data = json.loads(json.dumps(data))  # deep copy of plain data
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set expects key=value, got '{item}'")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UserError(f"--set {key}: '{part}' is not a section")
            node = child
        node[parts[-1]] = value
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise UserError(f"config file {path} is not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping at the top level")
    return data


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> T:
    """Resolve a config: `base` (a preset) <- YAML file <- `--set` overrides, then validate."""
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        data = merge(data, read_yaml(path))
    data = apply_overrides(data, overrides or [])
    return from_dict(cls, data)


def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge two plain mappings; `top` wins on conflicts."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def config_hash(obj: Any) -> str:
    blob = json.dumps(to_dict(obj) if dataclasses.is_dataclass(obj) else obj, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def save_config(obj: Any, path: str | Path) -> None:
    """A config (dataclass or plain mapping) as YAML, keys in their declared order."""
    data = to_dict(obj) if dataclasses.is_dataclass(obj) else obj
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))


# ---------------------------------------------------------------------------------------------
# Packaged presets: echochamber/configs/<kind>/<name>.yaml


def preset_names(kind: str) -> tuple[str, ...]:
    """The packaged presets of one kind (`mixtures`, `rl`, `study`, `sweeps`), sorted."""
    folder = resources.files("echochamber") / "configs" / kind  # package data, not a package
    return tuple(sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")))


def preset_path(kind: str, name: str, what: str) -> Path:
    """The file of preset `name`; an unknown name is a one-line error listing the known ones."""
    known = preset_names(kind)
    if name not in known:
        raise UserError(f"unknown {what} preset '{name}' (known: {', '.join(known)})")
    return Path(str(resources.files("echochamber") / "configs" / kind / f"{name}.yaml"))


def read_preset(kind: str, name: str, what: str) -> dict[str, Any]:
    """A packaged preset as plain data (a base that a YAML file and `--set` overrides go on top of)."""
    return read_yaml(preset_path(kind, name, what))
