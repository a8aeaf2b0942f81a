"""Building typed configs from plain data: `build` (dataclasses from mappings), `key.sub=value` overrides, YAML.

Written here rather than taken from a library because the project's rule is one-line errors naming the
field path, and dataclasses + typing already give the types.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import sys
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
            raise ConfigError(f"{where}: unknown key{_did_you_mean(cls, key, data[key], path)}; allowed: "
                              f"{', '.join(names)}")
    kwargs = {k: _convert(hints[k], v, f"{path}.{k}" if path else k) for k, v in data.items()}
    return cls(**kwargs)


def _did_you_mean(cls: type, key, value, path: str) -> str:
    """A key that belongs one section deeper (`train.learning_rate` in a sweep, whose ticket template holds
    `train`), or a close spelling of an allowed key: the suggestion of an unknown-key error."""
    import difflib

    key = str(key)
    queue, found = [(cls, "")], []
    for _ in range(3):  # sections nest at most a few deep (sweep > ticket > train)
        deeper = []
        for tp, prefix in queue:
            for f in dataclasses.fields(tp):
                inner = _dataclass_of(typing.get_type_hints(tp)[f.name])
                if inner is None:
                    continue
                if key in {g.name for g in dataclasses.fields(inner)}:
                    found.append(f"{prefix}{f.name}.{key}")
                deeper.append((inner, f"{prefix}{f.name}."))
        queue = deeper
    if found:
        leaf = value
        suffix = ""
        while isinstance(leaf, Mapping) and len(leaf) == 1:  # `train={learning_rate: 3e-5}` from an override
            (k, leaf), = leaf.items()
            suffix += f".{k}"
        where = f"{path}." if path else ""
        return f" (did you mean {where}{found[0]}{suffix}?)"
    close = difflib.get_close_matches(key, [f.name for f in dataclasses.fields(cls)], n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _dataclass_of(tp) -> type | None:
    """The dataclass a field holds, directly or as `X | None`."""
    if dataclasses.is_dataclass(tp):
        return tp
    inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
    return inner[0] if typing.get_origin(tp) in (typing.Union, types.UnionType) and inner else None


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
        return _number(tp, value, path)
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{path}: {value!r} is not a string")
        return str(value)
    return value


# Every int setting ends up in an int64 somewhere (Parquet rows, torch seeds, Tune's sample count): a larger one
# is a typo, refused here rather than as an OverflowError deep inside a run.
INT_MAX = 2**63 - 1


def _number(tp: type, value, path: str):
    """`value` as an int or float setting: finite, and an integer within int64 for int fields."""
    if isinstance(value, bool):  # float(True) == 1.0: a boolean must not pass as a number
        raise ConfigError(f"{path}: {value!r} is not a number ({tp.__name__})")
    if not isinstance(value, (int, float)):
        try:
            value = float(value) if tp is float else int(str(value))
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: {_short(value)} is not a number ({tp.__name__})") from None
    if isinstance(value, int) and abs(value) > (INT_MAX if tp is int else sys.float_info.max):
        # float(10**400) raises OverflowError; an int beyond int64 overflows later, far from the config
        limit = "2**63 - 1" if tp is int else f"{sys.float_info.max:.4g}"
        raise ConfigError(f"{path}: {_short(value)} is too large; at most {limit} ({tp.__name__})")
    if not math.isfinite(value):  # "nan" would pass every range check (nan <= 0 is False)
        raise ConfigError(f"{path}: {value!r} is not a finite number ({tp.__name__})")
    if tp is int and isinstance(value, float):
        if not value.is_integer():
            raise ConfigError(f"{path}: {value!r} is not an integer")
        if abs(value) > INT_MAX:
            raise ConfigError(f"{path}: {value!r} is too large; at most 2**63 - 1 (int)")
    return tp(value)


def _short(value) -> str:
    """A value as an error shows it: a 400-digit number by its first digits and its length, not in full."""
    text, raw = repr(value), str(value)
    return text if len(text) <= 40 else f"{raw[:20]}... ({len(raw)} characters)"


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Apply `key.sub=value` overrides (values parsed as YAML: 3, 0.1, true, [a, b], null)."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key.sub=value")
        try:
            value = yaml.load(raw, Loader=UniqueKeyLoader) if raw != "" else ""
        except DuplicateKey as e:
            raise ConfigError(f"override {item!r}: {e}") from None
        except (yaml.YAMLError, ValueError):  # not YAML (ValueError: an int past Python's digit limit): a string
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


class DuplicateKey(Exception):
    """A mapping in YAML text gives one key twice (the message names the key and both lines)."""


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, except that a key given twice in one mapping is an error: SafeLoader keeps the last
    silently, so a forgotten earlier `epochs: 1` would quietly lose to a later `epochs: 3`. Keys merged in with
    `<<: *anchor` may still be overridden; that is what merging is for."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise DuplicateKey(f"key {key!r} is given twice (lines {seen[key]} and {line})")
                    seen[key] = line
                except TypeError:  # an unhashable key: SafeLoader's own error says so
                    break
        return super().construct_mapping(node, deep)


def read_yaml(path: str | os.PathLike) -> dict:
    """A YAML config file as a mapping; a missing, unreadable, non-UTF-8 or invalid file, or a key given twice,
    is one ConfigError naming the file (and the line)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config: file {str(path)!r} does not exist")
    if not path.is_file():
        raise ConfigError(f"config: {str(path)!r} is not a file")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"config: cannot read {path} ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError(f"config: {path} is not UTF-8 text (byte 0x{raw[e.start]:02x} on line {line}); save it as "
                          f"UTF-8") from None
    try:
        data = yaml.load(text, Loader=UniqueKeyLoader) or {}
    except DuplicateKey as e:
        raise ConfigError(f"config: {path}: {e}") from None
    except (yaml.YAMLError, ValueError) as e:  # ValueError: an int past Python's digit limit
        raise ConfigError(f"config: {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config: {path} must hold a mapping at the top level")
    return data




def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)

# Config files: found by name among the shipped ones, and their input paths read relative to the file itself.
SHIPPED_CONFIGS = Path(__file__).parent / "configs"  # a link to the repository's configs/ (pyproject package-data)
# Keys whose relative value, inside a config file, is read from the file's folder: folders of input data always;
# a model or MLM corpus only when that path exists there (else it is a hub name: `minilm`, `bert-base`, a dataset id).
# Outputs (storage_path, results_dir, work_dir, cache_dir, a transfer source) stay relative to where the command
# runs, as Ray's storage_path is: shipped configs must not write into an installed package.
INPUT_DIRS = ("glue_dir", "squad_dir")
INPUT_IF_THERE = ("model", "corpus")


def config_file(name: str | os.PathLike) -> Path:
    """`name` as a path, or the shipped config `configs/<name>.yaml` (`--config smoke`)."""
    path = Path(name)
    if path.exists() or path.suffix or len(path.parts) > 1:
        return path
    shipped = SHIPPED_CONFIGS / f"{name}.yaml"
    if shipped.is_file():  # from a source tree, the link's target: the repository's configs/, as the README has it
        return Path(os.path.realpath(shipped))
    names = sorted(p.stem for p in SHIPPED_CONFIGS.glob("*.yaml"))
    raise ConfigError(f"config: {str(name)!r} is neither a file nor a shipped config; shipped: {', '.join(names)}")


def read_config(name: str | os.PathLike) -> dict:
    """A config file (a path, or a shipped config's name) as a mapping, its relative input paths made absolute
    against the file's folder, so the same file works from any directory."""
    path = config_file(name)
    data = read_yaml(path)
    _inputs_from(data, Path(os.path.abspath(path)).parent)  # abspath, not resolve: a link's folder is the base
    return data


def _inputs_from(node, base: Path) -> None:
    if isinstance(node, list):
        for item in node:
            _inputs_from(item, base)
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if isinstance(value, str) and value and "://" not in value and not os.path.isabs(os.path.expanduser(value)):
            there = os.path.normpath(base / value)
            if key in INPUT_DIRS or (key in INPUT_IF_THERE and os.path.exists(there)):
                node[key] = there
        else:
            _inputs_from(value, base)
