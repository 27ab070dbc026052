"""Turning YAML mappings into frozen config dataclasses, with errors that name the key.

Each component owns its config dataclass (``ModelConfig`` beside the model, ``DataConfig``
beside the data, ...). This module only knows how to build any such dataclass from a plain
mapping, check every value against the field's type, and report what went wrong in
terms of the file and dotted key a user wrote.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
import typing
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """Bad user input: carries the source file and dotted key so the CLI can say where."""

    def __init__(self, key: str, message: str, source: str | None = None) -> None:
        self.key = key
        self.message = message
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.source}: " if self.source else ""
        key = f"'{self.key}': " if self.key else ""
        return f"{where}{key}{self.message}"

    def within(self, prefix: str, source: str | None = None) -> ConfigError:
        key = f"{prefix}.{self.key}" if prefix and self.key else (prefix or self.key)
        return ConfigError(key, self.message, self.source or source)


def check(condition: bool, key: str, message: str) -> None:
    """Raise a ConfigError for ``key`` unless ``condition`` holds (for ``__post_init__``)."""
    if not condition:
        raise ConfigError(key, message)


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return {"int": "an integer", "float": "a number", "str": "a string",
                "bool": "true or false"}.get(tp.__name__, tp.__name__)
    return str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp`` and return it converted (ints -> floats, ...)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arm in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arm, key)
            except ConfigError as exc:
                errors.append(exc.message)
        raise ConfigError(key, " or ".join(errors))
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(key, f"got {value!r}; allowed: {', '.join(map(repr, args))}")
        return value
    if origin in (tuple, list):
        if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
            raise ConfigError(key, f"expected a list, got {value!r}")
        item_tp = args[0] if args else Any
        return tuple(_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, str):
                try:
                    as_float = float(value)  # PyYAML reads 1e6 as a string
                except ValueError:
                    pass
                else:
                    if as_float.is_integer():
                        return int(as_float)
            raise ConfigError(key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(key, f"expected a number, got {value!r}")
        number = None
        if isinstance(value, int | float):
            number = float(value)
        elif isinstance(value, str):
            with contextlib.suppress(ValueError):
                number = float(value)  # PyYAML reads 1e6 as a string
        if number is None:
            raise ConfigError(key, f"expected a number, got {value!r}")
        if not math.isfinite(number):  # no setting means infinity; .nan is never a value
            raise ConfigError(key, f"expected a finite number, got {value!r}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"config field {key} has unsupported annotation {tp!r}")


def build(cls: type[T], data: Any, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, naming the dotted key of any bad value."""
    if data is None:
        data = {}
    if dataclasses.is_dataclass(data) and isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(prefix, f"expected a mapping of settings, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else str(unknown[0])
        raise ConfigError(key, f"unknown key; allowed keys here: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _convert(value, hints[name], key)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise exc.within(prefix) from None


def to_dict(obj: Any) -> Any:
    """Plain-data form of a config (tuples become lists) for YAML, JSON and MLflow."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_dict(v) for v in obj]
    return obj


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``a.b.c`` inside nested dicts, creating levels as needed."""
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(key, f"'{part}' is a value, not a section")
        node = child
    node[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` from the command line; the value is read as YAML (``3``, ``[1, 2]``)."""
    if "=" not in text:
        raise ConfigError(text, "an override must look like key=value")
    key, raw = text.split("=", 1)
    if not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError("--set", f"{text!r} names no key: an override must look like "
                          "section.key=value, e.g. model.loops=8")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, turning I/O and syntax problems into ConfigErrors about the file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError("", "file not found", str(path)) from None
    except OSError as exc:
        raise ConfigError("", f"cannot read: {exc.strerror}", str(path)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        what = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise ConfigError("", f"not valid YAML: {what}", where) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("", "expected a mapping at the top level", str(path))
    return data


def check_writable(folder: Path, key: str) -> None:
    """Create ``folder`` if needed and prove a file can be written there, before any work.

    ``key`` names the option the folder came from in the error.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{uuid.uuid4().hex}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(key, f"cannot write the folder {folder}: {exc.strerror or exc}") \
            from None
