"""Typed configuration from YAML and dotted overrides: the one loader every config dataclass goes through.

    build(Cls, mapping)            a dataclass from a plain mapping (a `TrainConfig` mapping with `preset:` starts
                                   from that preset); unknown keys, wrong types, values outside a Literal and numbers
                                   outside `Cls.LIMITS` are a ConfigError naming the dotted key
    apply_overrides(data, ["a.b=v"])  dotted `key=value` overrides with YAML-typed values
    read_yaml(path)                a YAML file's top-level mapping (ConfigError when missing or malformed)
    load_yaml(text)                one YAML value as valor reads it: YAML 1.1 (PyYAML) plus the numbers a Python or
                                   YAML 1.2 user writes that 1.1 leaves as strings (`2e-4`, `1E-3`, `-.5`)
"""
from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from typing import Any, Literal, Optional

import yaml

from valor_core.config import TrainConfig
from valor_core.presets import get_preset


class NumberLoader(yaml.SafeLoader):
    """PyYAML's safe loader (YAML 1.1) that also reads `2e-4`, `1E-3`, `1e3` and `-.5` as floats (1.1 wants a dot and
    a signed exponent); `.5` and `1_000` are 1.1 numbers already."""


NumberLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?$"),
    list("-+0123456789."),
)


def load_yaml(stream: Any) -> Any:
    """One YAML document (text or an open file) with NumberLoader's numbers; yaml.YAMLError when malformed."""
    return yaml.load(stream, Loader=NumberLoader)


class ConfigError(ValueError):
    """A config file or override that does not fit the typed configuration; the message says where and why."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(tp: Any, value: Any, where: str, current: Any = None) -> Any:
    """Turn a YAML value into the declared type `tp`, or raise ConfigError naming `where`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return build(tp, value, where=where, base=current if isinstance(current, tp) else None)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{where}: may not be null")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where, current)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {_type_name(tp)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
        return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value))) if args else tuple(value)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        if not args:
            return dict(value)
        return {_coerce(args[0], k, f"{where}.{k}"): _coerce(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r} (quote it in YAML)")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{where}: cannot read {value!r} as {_type_name(tp)}")


def _base_instance(cls: type, data: dict[str, Any]) -> Any:
    """The instance a YAML mapping is applied on: the class defaults, or for a training section its preset."""
    if cls is TrainConfig and "preset" in data:
        try:
            return get_preset(data["preset"])
        except ValueError as err:
            raise ConfigError(str(err)) from None
    return cls()


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def build(cls: type, data: dict[str, Any], *, where: str = "", base: Any = None) -> Any:
    """Build the dataclass `cls` from a plain mapping, applied on `base` (default: `cls()` or the named preset).

    Unknown keys, wrong types, values outside a Literal and numbers outside the class's LIMITS raise ConfigError with
    the dotted key (and the known keys)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'top level'}: expected a mapping for {cls.__name__}, got {data!r}")
    if base is None or (cls is TrainConfig and "preset" in data):
        base = _base_instance(cls, data)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(repr(_join(where, k)) for k in unknown)} "
            f"({cls.__name__} has: {', '.join(names)})"
        )
    values = {k: _coerce(hints[k], v, _join(where, k), getattr(base, k)) for k, v in data.items()}
    check_limits(cls, values, where)
    return dataclasses.replace(base, **values)


def _within(rule: str, value: float) -> bool:
    """`value` is finite and inside `rule`: ">= x", "> x", "lo..hi" (inclusive) or "lo..<hi" (hi excluded)."""
    if not math.isfinite(value):
        return False
    if rule.startswith(">="):
        return value >= float(rule[2:])
    if rule.startswith(">"):
        return value > float(rule[1:])
    lo, _, hi = rule.partition("..")
    if hi.startswith("<"):
        return float(lo) <= value < float(hi[1:])
    return float(lo) <= value <= float(hi)


def _describe(rule: str) -> str:
    """A LIMITS rule in words: "> 0", "0.0 to 1.0", ">= 0.0 and < 1.0"."""
    lo, sep, hi = rule.partition("..")
    if not sep:
        return rule
    return f">= {lo} and < {hi[1:]}" if hi.startswith("<") else f"{lo} to {hi}"


def check_limits(cls: type, values: dict[str, Any], where: str = "") -> None:
    """ConfigError naming the first value of `values` outside `cls.LIMITS` (e.g. optim.epochs must be >= 1, got 0;
    inf and nan are outside every rule)."""
    limits = getattr(cls, "LIMITS", {})
    for key, value in values.items():
        rule = limits.get(key)
        if rule is None or value is None or isinstance(value, bool):
            continue
        items = value if isinstance(value, (tuple, list)) else (value,)
        for item in items:
            if isinstance(item, (int, float)) and not _within(rule, float(item)):
                finite = "" if math.isfinite(item) else "a finite number "
                raise ConfigError(f"{_join(where, key)}: must be {finite}{_describe(rule)}, got {value!r}")


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b.c=value` -> ("a.b.c", YAML-typed value): `x=3` is an int, `x=2e-4` a float, `x=[0.1, 0.2]` a list,
    `x=null` / `x=` None."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: expected key=value with a dotted key, e.g. train.optim.epochs=2")
    try:
        value = load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({err})") from None
    return key, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each dotted `key=value` into a (copied) plain mapping, creating intermediate mappings as needed."""
    data = copy.deepcopy(data)
    for text in overrides:
        key, value = parse_override(text)
        node = data
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(parts[: i + 1])} is {child!r}, not a section")
            node = child
        node[parts[-1]] = value
    return data


def read_yaml(path: Optional[str]) -> dict[str, Any]:
    """The top-level mapping of a YAML file (None = {}); ConfigError when it is missing, malformed or not a mapping."""
    if path is None:
        return {}
    try:
        with open(path) as fh:
            data = load_yaml(fh) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path!r} not found") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text (UTF-8) file") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data
