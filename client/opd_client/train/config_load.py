"""Loads the trainer's config from YAML plus `--set key=value` overrides, and shows it.

Why this module exists: `config.py` holds the dataclasses and their checks; turning text
into them (type coercion with messages naming the field, dotted overrides, paths relative
to the YAML file), comparing a resumed run's config with the saved one, and printing the
resolved config with every field's documentation are a separate concern.

    config = load_config("run.yaml", ["loss.variant=stopgrad", "optim.lr=3e-4"])
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from opd_client.train.config import PATH_FIELDS, RESUMABLE_FIELDS, ConfigError, TrainConfig, require


def _coerce(tp: Any, value: Any, name: str) -> Any:
    """`value` (from YAML) as type `tp`, or a ConfigError naming `name`."""
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, name)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if origin is Literal:
        allowed = typing.get_args(tp)
        require(value in allowed, name, f"must be one of {list(allowed)}, got {value!r}")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if args and args[-1] is Ellipsis and args[0] is str and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        require(isinstance(value, list | tuple), name, f"must be a list, got {value!r}")
        if args[-1] is Ellipsis:
            inner = [args[0]] * len(value)
        else:
            require(len(value) == len(args), name, f"must have {len(args)} items, got {value!r}")
            inner = list(args)
        return tuple(
            _coerce(t, v, f"{name}[{i}]") for i, (t, v) in enumerate(zip(inner, value, strict=True))
        )
    if dataclasses.is_dataclass(tp):
        require(isinstance(value, dict), name, f"must be a mapping, got {value!r}")
        return _build(tp, value, f"{name}.")
    if tp is bool:
        require(isinstance(value, bool), name, f"must be true or false, got {value!r}")
        return value
    if tp is int:
        require(
            isinstance(value, int) and not isinstance(value, bool),
            name,
            f"must be an integer, got {value!r}",
        )
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        require(ok, name, f"must be a number, got {value!r}")
        return float(value)
    if tp is str:
        ok = isinstance(value, str | int | float) and not isinstance(value, bool)
        require(ok, name, f"must be a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{name}: unsupported type {tp}")


def _build(cls: Any, raw: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        require(
            key in names, f"{prefix}{key}", f"unknown field (known: {', '.join(sorted(names))})"
        )
    kwargs = {k: _coerce(hints[k], v, f"{prefix}{k}") for k, v in raw.items()}
    try:
        return cls(**kwargs)
    except ConfigError as err:
        message = str(err)
        raise ConfigError(message if message.startswith(prefix) else f"{prefix}{message}") from None


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node: Any = raw
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            require(part.isdigit() and int(part) < len(node), key, f"no list item {part}")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
            continue
        require(isinstance(node, dict), key, "cannot set a field inside a non-mapping")
        if last:
            node[part] = value
        else:
            node = node.setdefault(part, {})


def _paths(raw: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """(mapping, key) of every path field present in `raw`."""
    found: list[tuple[dict[str, Any], str]] = []
    for dotted in PATH_FIELDS:
        nodes: list[Any] = [raw]
        *parents, leaf = dotted.split(".")
        for part in parents:
            nxt: list[Any] = []
            for n in nodes:
                child = n.get(part) if isinstance(n, dict) else None
                if part == "*" and isinstance(n, list):
                    nxt.extend(c for c in n if isinstance(c, dict))
                elif isinstance(child, dict | list):
                    nxt.append(child)
            nodes = nxt
        found.extend((n, leaf) for n in nodes if isinstance(n, dict) and n.get(leaf) is not None)
    return found


def _absolutise(raw: dict[str, Any], base: Path) -> None:
    for node, key in _paths(raw):
        if isinstance(node[key], str) and node[key]:
            node[key] = str((base / Path(node[key]).expanduser()).resolve())


def load_config(
    path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()
) -> TrainConfig:
    """The validated config from a YAML file (or none) and `key=value` overrides."""
    raw: Any = {}
    if path is not None:
        p = Path(path)
        require(p.is_file(), "config", f"{p} is not a file")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ConfigError(
                f"config: {p} is not valid YAML: {str(err).splitlines()[0]}"
            ) from None
        require(isinstance(raw, dict), "config", f"{p} must hold a mapping at the top")
        _absolutise(raw, p.resolve().parent)
    if isinstance(raw.get("teachers"), dict):
        raw["teachers"] = [raw["teachers"]]
    for item in overrides:
        key, sep, text = item.partition("=")
        require(bool(sep) and bool(key), "--set", f"expected key=value, got {item!r}")
        try:
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
            value = text
        if key.startswith("teachers.") and not raw.get("teachers"):
            raw["teachers"] = [{}]
        _set_dotted(raw, key.strip(), value)
    _absolutise(raw, Path.cwd())
    return _build(TrainConfig, raw)


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain JSON/YAML-able dict (tuples become lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted names of fields that differ, leaving out RESUMABLE_FIELDS."""
    out: list[str] = []

    def walk(a: Any, b: Any, name: str) -> None:
        pattern = ".".join("*" if p.isdigit() else p for p in name.split("."))
        if pattern in RESUMABLE_FIELDS:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                walk(a.get(key), b.get(key), f"{name}.{key}" if name else key)
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                walk(x, y, f"{name}.{i}")
        elif a != b:
            out.append(f"{name} ({a!r} -> {b!r})")

    walk(saved, current, "")
    return out


def describe(config: Any, indent: int = 0) -> str:
    """The config as YAML with every field's documentation as a comment."""
    lines: list[str] = []
    pad = "  " * indent
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        doc = f.metadata.get("doc", "")
        if dataclasses.is_dataclass(value):
            lines.append(f"{pad}# {doc}")
            lines.append(f"{pad}{f.name}:")
            lines.append(describe(value, indent + 1))
        elif f.name == "teachers":
            lines.append(f"{pad}# {doc}")
            lines.append(f"{pad}{f.name}:")
            for teacher in value:
                body = describe(teacher, indent + 2).splitlines()
                first = next(i for i, line in enumerate(body) if not line.strip().startswith("#"))
                body[first] = f"{pad}  - " + body[first].strip()
                lines.extend(body)
        else:
            rendered = yaml.safe_dump(config_to_dict_value(value), default_flow_style=True).strip()
            rendered = rendered.removesuffix("\n...").removesuffix("...").strip()
            lines.append(f"{pad}# {doc}")
            lines.append(f"{pad}{f.name}: {rendered}")
    return "\n".join(lines)


def config_to_dict_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
