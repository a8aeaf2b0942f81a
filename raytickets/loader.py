"""Building typed configs from plain data: `build` (dataclasses from mappings), `key.sub=value` overrides, YAML.

Written here rather than taken from a library because the project's rule is one-line errors naming the
field path, and dataclasses + typing already give the types.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml

from .errors import ConfigError

def build(cls: type, data: Mapping[str, Any] | None, path: str = ""):
    """Build dataclass `cls` from a mapping, rejecting unknown keys and converting scalar types."""
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(f"{where}: unknown key; allowed: {', '.join(names)}")
    kwargs = {k: _convert(hints[k], v, f"{path}.{k}" if path else k) for k, v in data.items()}
    return cls(**kwargs)


def _convert(tp, value, path: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, path)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: {value!r} is not allowed; allowed: {', '.join(map(str, args))}")
        return value
    if origin is list:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            value = [v.strip() for v in str(value).split(",") if v.strip()] if isinstance(value, str) else None
            if value is None:
                raise ConfigError(f"{path}: expected a list")
        return [_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return {str(k): _convert(args[1], v, f"{path}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if value is None:
        raise ConfigError(f"{path}: null is not allowed; expected {tp.__name__}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: {value!r} is not a boolean (true/false)")
    if tp in (int, float):
        if isinstance(value, bool):  # float(True) == 1.0: a boolean must not pass as a number
            raise ConfigError(f"{path}: {value!r} is not a number ({tp.__name__})")
        if not isinstance(value, (int, float)):
            try:
                value = float(value) if tp is float else int(str(value))
            except (TypeError, ValueError):
                raise ConfigError(f"{path}: {value!r} is not a number ({tp.__name__})") from None
        if not math.isfinite(value):  # "nan" would pass every range check (nan <= 0 is False)
            raise ConfigError(f"{path}: {value!r} is not a finite number ({tp.__name__})")
        if tp is int and float(value) != int(value):
            raise ConfigError(f"{path}: {value!r} is not an integer")
        return tp(value)
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{path}: {value!r} is not a string")
        return str(value)
    return value


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Apply `key.sub=value` overrides (values parsed as YAML: 3, 0.1, true, [a, b], null)."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key.sub=value")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = data
        parts = _split_key(key, data)
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
            node = child
        node[parts[-1]] = value
    return data


SECTIONS = ("data", "train", "prune")  # TicketConfig's sections: search-space keys are paths into them


def _split_key(key: str, data: dict) -> list[str]:
    """Split `a.b.c=` into path parts, keeping dotted keys that exist (search.space."prune.rate")."""
    parts, node, rest = [], data, key.split(".")
    while rest:
        for n in range(len(rest), 0, -1):  # the longest existing dotted key wins
            candidate = ".".join(rest[:n])
            if isinstance(node, dict) and candidate in node or n == 1:
                parts.append(candidate)
                node = node.get(candidate) if isinstance(node, dict) else None
                rest = rest[n:]
                break
    # A search-space key is itself a ticket path ("prune.rate"): keep it whole when it is new too.
    if parts[:2] == ["search", "space"] and len(parts) > 3 and parts[2] in SECTIONS:
        parts[2:4] = [f"{parts[2]}.{parts[3]}"]
    return parts


def read_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config: file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config: {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config: {path} must hold a mapping at the top level")
    return data




def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
