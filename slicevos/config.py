"""Typed configs: YAML files in ``configs/`` load into frozen dataclasses.

``load_config(path, Cls)`` reads YAML and builds ``Cls`` (nested dataclasses, tuples and
optionals are converted); unknown keys are an error that names the key and the file, so a typo
never silently falls back to a default. ``config_to_dict`` gives back plain data for saving the
resolved config next to results and inside checkpoints.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any, TypeVar

import yaml

from slicevos.errors import InputError


class ConfigLoader(yaml.SafeLoader):
    """YAML's safe loader, but ``1e-4`` is a float (YAML 1.1 wants ``1.0e-4``, and reads
    ``1e-4`` as the string "1e-4", which a typed config then refuses with a confusing
    error)."""


ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """Parse YAML text with :class:`ConfigLoader`."""
    return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 (a SafeLoader subclass)

T = TypeVar("T")


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if value is None:
        return None
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(args[0], value, where) if len(args) == 1 else value
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, where) for v in value)
        return tuple(_convert(a, v, where) for a, v in zip(args, value, strict=True))
    if origin is list:
        return [_convert(typing.get_args(tp)[0], v, where) for v in value]
    if origin is dict:
        return dict(value)
    if tp is float and isinstance(value, int):
        return float(value)
    return value


def check_fields(config: Any, section: str, checks: dict[str, tuple[bool, str]]) -> None:
    """Raise ``InputError`` for the first field whose check failed: ``checks`` maps a field
    name to ``(ok, what a valid value looks like)``; messages read ``section.field = value``."""
    for name, (ok, expected) in checks.items():
        if not ok:
            raise InputError(None, f"{section}.{name} = {getattr(config, name)!r} is invalid",
                             f"set {section}.{name} to {expected}")


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys raise ``InputError``."""
    if not isinstance(data, dict):
        raise InputError(where, f"expected a mapping for {cls.__name__}, got {type(data).__name__}",
                         "check the YAML indentation")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputError(where, f"unknown key(s) {unknown} for {cls.__name__}",
                         f"valid keys are {sorted(names)}")
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in data and f.init
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise InputError(where, f"missing key(s) {missing} for {cls.__name__}",
                         "add them (configs/ has complete examples)")
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def apply_overrides(data: dict[str, Any], assignments: Sequence[str]) -> dict[str, Any]:
    """Apply ``"a.b.c=value"`` strings to nested ``data`` in place (values parsed as YAML, so
    ``train.iterations=200`` is an int and ``data.val_cases=[a, b]`` a list)."""
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise InputError(None, f"override {item!r} is not KEY=VALUE",
                             "write e.g. --set train.iterations=200")
        *parents, leaf = key.strip().split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InputError(None, f"override {item!r}: {part!r} is not a section",
                                 "check the dotted key against the config file")
        node[leaf] = load_yaml(raw)
    return data


def load_config(path: str | PathLike, cls: type[T], overrides: dict[str, Any] | None = None,
                assignments: Sequence[str] = ()) -> T:
    """Load a YAML file into dataclass ``cls``; ``overrides`` (top-level keys) and then
    ``assignments`` (``"a.b=value"`` strings) win over the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "config file not found", "check the path (configs/ has examples)")
    try:
        data = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise InputError(path, f"invalid YAML ({err})".replace("\n", " "), "fix the syntax") from None
    if not isinstance(data, dict):
        raise InputError(path, f"holds a YAML {type(data).__name__}, not a mapping of settings",
                         "pass a config file of 'key: value' lines (configs/ has examples)")
    data.update(overrides or {})
    apply_overrides(data, assignments)
    return from_dict(cls, data, str(path))


def config_to_dict(config: Any) -> dict[str, Any]:
    """Dataclass -> plain dict (tuples become lists) for YAML/JSON/checkpoints."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(config))


def with_defaults(cls: type, stored: Any, where: str = "stored config") -> Any:
    """A stored plain-data config of ``cls`` with the defaults of fields added since it was
    written (so an older run or checkpoint still compares equal to today's config); returned
    unchanged if it no longer reads as ``cls``."""
    try:
        return config_to_dict(from_dict(cls, stored, where))
    except (InputError, TypeError, ValueError, KeyError):
        return stored


def save_config(config: Any, path: str | PathLike) -> None:
    from slicevos.io.atomic import atomic_write_bytes

    atomic_write_bytes(path, yaml.safe_dump(config_to_dict(config), sort_keys=False).encode())
