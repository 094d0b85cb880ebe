"""YAML training configs → typed dataclasses, with one-line errors for unknown keys and bad values.

A config file is a mapping whose sections are the fields of a top-level dataclass (for example
``PretrainConfig`` with ``train``, ``data``, ``model`` and ``eval`` sections). Every key must name a
dataclass field: a typo is an error, never silently ignored. ``--set section.key=value`` on the
command line overrides single values (the value is parsed as YAML).

    config = load_config("configs/tiny/stage1.yaml", PretrainConfig, overrides=["train.max_steps=10"])
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

from cope.errors import CopeInputError


def load_config(path: str | Path, cls: type, overrides: list[str] | None = None):
    """Read a YAML file into an instance of the dataclass ``cls``; ``overrides`` are ``a.b=value``."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise CopeInputError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        reason = str(exc).replace("\n", " ")
        raise CopeInputError(f"{path}: not valid YAML ({reason})") from exc
    if not isinstance(raw, dict):
        raise CopeInputError(f"{path}: a config must be a mapping of sections, got {type(raw).__name__}")
    for override in overrides or []:
        apply_override(raw, override, path)
    return from_dict(cls, raw, source=str(path))


def apply_override(raw: dict, override: str, source: Path | str) -> None:
    """Set ``raw[a][b] = yaml(value)`` for an override ``a.b=value``."""
    import yaml

    key, sep, text = override.partition("=")
    if not sep or not key:
        raise CopeInputError(f"{source}: override {override!r} must look like section.key=value")
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise CopeInputError(f"{source}: override {override!r}: {part!r} is not a section")
    node[leaf] = yaml.safe_load(text)


def from_dict(cls: type, data: Any, source: str, where: str = ""):
    """Build dataclass ``cls`` from a mapping, checking keys and value types recursively."""
    if not isinstance(data, dict):
        raise CopeInputError(f"{source}: {where or 'config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        raise CopeInputError(f"{source}: unknown key {_join(where, unknown[0])!r} (known: {known})")
    values = {}
    for name, value in data.items():
        values[name] = _convert(hints[name], value, source, _join(where, name))
    missing = [
        name
        for name, f in fields.items()
        if name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
    ]
    if missing:
        raise CopeInputError(f"{source}: missing required key {_join(where, missing[0])!r}")
    try:
        return cls(**values)
    except (ValueError, TypeError) as exc:
        raise CopeInputError(f"{source}: {where or 'config'}: {exc}") from exc


def to_dict(config) -> dict:
    """A dataclass config as plain data (for config.yaml in the run directory and for trackers)."""
    return dataclasses.asdict(config)


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _convert(hint, value, source: str, where: str):
    """Check (and gently coerce) one value against a type hint."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, source, where)
            except CopeInputError as exc:
                errors.append(str(exc))
        raise CopeInputError(errors[0] if errors else f"{source}: {where}: bad value {value!r}")
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, source, where)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise CopeInputError(f"{source}: {where} must be a list, got {value!r}")
        item = args[0] if args else Any
        converted = [_convert(item, v, source, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(converted) if origin is tuple else converted
    if origin is dict:
        if not isinstance(value, dict):
            raise CopeInputError(f"{source}: {where} must be a mapping, got {value!r}")
        key_hint, value_hint = args if args else (Any, Any)
        return {
            _convert(key_hint, k, source, where): _convert(value_hint, v, source, f"{where}.{k}")
            for k, v in value.items()
        }
    if origin is typing.Literal:
        if value not in args:
            raise CopeInputError(f"{source}: {where} must be one of {list(args)}, got {value!r}")
        return value
    return _convert_scalar(hint, value, source, where)


def _convert_scalar(hint, value, source: str, where: str):
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-5" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    elif isinstance(value, hint):
        return value
    name = getattr(hint, "__name__", str(hint))
    raise CopeInputError(f"{source}: {where} must be {name}, got {value!r}")
