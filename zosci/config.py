"""Case-file schemas: typed fields with defaults, validated with errors that name the key.

    SCHEMA = Schema({
        "optimizer": {"lr": Field(float, 1e-3, min=0, min_exclusive=True, doc="step size")},
        "steps": Field(int, 100, min=1),
    })
    config = SCHEMA.validate(tomllib.loads(text))   # nested dict, defaults filled

Every schema also holds the fields common to all case files (COMMON: kind,
name, description, seed, output) unless built with ``common=False``.
"""
from __future__ import annotations

import difflib
import json
import tomllib
from pathlib import Path

from .errors import ConfigError


class _Required:
    def __repr__(self):
        return "REQUIRED"


REQUIRED = _Required()
_TYPES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list",
          dict: "a table"}


class Field:
    """One key: its type (int, float, str, bool, list, dict), default, allowed choices and bounds.

    For lists, ``item`` is the element type, ``choices`` apply to each element
    and ``min``/``max`` bound the length. Bounds are inclusive unless
    ``min_exclusive``/``max_exclusive``.
    """

    def __init__(self, type, default=REQUIRED, choices=None, min=None, max=None, doc: str = "",
                 item=None, min_exclusive: bool = False, max_exclusive: bool = False):
        if type not in _TYPES:
            raise TypeError(f"Field type must be one of {[t.__name__ for t in _TYPES]}, got {type!r}")
        self.type, self.default, self.choices, self.min, self.max, self.doc = type, default, choices, min, max, doc
        self.item, self.min_exclusive, self.max_exclusive = item, min_exclusive, max_exclusive

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def check(self, value, key: str):
        """The validated value (ints become floats for float fields), or ConfigError."""
        if self.type is list:
            value = _typed(value, list, key)
            self._bounds(len(value), key, "length")
            value = [self._scalar(v, f"{key}[{i}]") for i, v in enumerate(value)]
            return value
        return self._scalar(value, key)

    def _scalar(self, value, key):
        typ = self.item if self.type is list else self.type
        if typ is not None:
            value = _typed(value, typ, key)
        if self.choices is not None and value not in self.choices:
            near = difflib.get_close_matches(str(value), [str(c) for c in self.choices], 1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(f"{key}: must be one of {', '.join(repr(c) for c in self.choices)}, "
                              f"got {value!r}{hint}")
        if self.type is not list:
            self._bounds(value, key)
        return value

    def _bounds(self, value, key, what=""):
        label = f"{what} " if what else ""
        if self.min is not None and (value <= self.min if self.min_exclusive else value < self.min):
            raise ConfigError(f"{key}: {label}must be {'>' if self.min_exclusive else '>='} {self.min}, got {value}")
        if self.max is not None and (value >= self.max if self.max_exclusive else value > self.max):
            raise ConfigError(f"{key}: {label}must be {'<' if self.max_exclusive else '<='} {self.max}, got {value}")


def _typed(value, typ, key):
    ok = isinstance(value, typ) and not (typ in (int, float) and isinstance(value, bool))
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        example = {int: "10", float: "0.5", str: '"text"', bool: "true", list: '["a", "b"]', dict: "{...}"}[typ]
        raise ConfigError(f"{key}: must be {_TYPES[typ]} (e.g. {example}), got {type(value).__name__} {value!r}")
    return value


COMMON = {
    "kind": Field(str, doc="the case kind (zosci.cases.KINDS)"),
    "name": Field(str, doc="run name; run folders are <output>/<name>-<timestamp>"),
    "description": Field(str, "", doc="one line shown by zosci --help"),
    "seed": Field(int, 0, doc="random seed"),
    "output": Field(str, "runs", doc="where run folders go, relative to the current directory"),
}


class Schema:
    """Top-level fields and sections (a dict of name -> Field, or name -> dict of Fields)."""

    def __init__(self, sections: dict, common: bool = True):
        self.fields = {**(COMMON if common else {}), **sections}
        for name, spec in self.fields.items():
            if not isinstance(spec, (Field, dict, Schema)):
                raise TypeError(f"schema entry {name!r} must be a Field or a dict of Fields")

    def validate(self, raw: dict) -> dict:
        """The nested config with defaults filled; ConfigError names the first bad key."""
        if not isinstance(raw, dict):
            raise ConfigError(f"the case must be a TOML table, got {type(raw).__name__}")
        return _validate(self.fields, raw, "")

    def defaults(self) -> dict:
        """Defaults of every field (REQUIRED where there is none)."""
        return {k: (s.default if isinstance(s, Field) else Schema(_fields(s), False).defaults())
                for k, s in self.fields.items()}

    def describe(self) -> str:
        """One line per key: path, type, default, doc."""
        lines = []
        for key, f in _flat_fields(self.fields, ""):
            default = "required" if f.required else json.dumps(f.default)
            lines.append(f"{key} ({f.type.__name__}, {default}){': ' + f.doc if f.doc else ''}")
        return "\n".join(lines)


def _fields(spec):
    return spec.fields if isinstance(spec, Schema) else spec


def _flat_fields(fields, prefix):
    for k, s in fields.items():
        if isinstance(s, Field):
            yield prefix + k, s
        else:
            yield from _flat_fields(_fields(s), f"{prefix}{k}.")


def _validate(fields: dict, raw: dict, prefix: str) -> dict:
    where = f"under [{prefix[:-1]}]" if prefix else "at the top of the case file"
    for key in raw:
        if key not in fields:
            near = difflib.get_close_matches(key, list(fields), 1, 0.6)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise ConfigError(f"{prefix}{key}: unknown key; {hint}valid keys {where}: {', '.join(fields)}")
    out = {}
    for key, spec in fields.items():
        path = prefix + key
        if isinstance(spec, Field):
            if key in raw:
                out[key] = spec.check(raw[key], path)
            elif spec.required:
                raise ConfigError(f"{path}: required; add `{key} = ...` {where}")
            else:
                out[key] = _copy(spec.default)
        else:
            sub = raw.get(key, {})
            if not isinstance(sub, dict):
                raise ConfigError(f"{path}: must be a table ([{path}]), got {type(sub).__name__} {sub!r}")
            out[key] = _validate(_fields(spec), sub, path + ".")
    return out


def _copy(value):
    return list(value) if isinstance(value, list) else dict(value) if isinstance(value, dict) else value


def read_toml(path) -> tuple[dict, str]:
    """(parsed table, verbatim text) of a TOML file; ConfigError if missing or malformed."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror or err})") from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML ({err})") from None


def flatten(config: dict, prefix: str = "") -> dict:
    """{"a.b": value} view of a nested config."""
    out = {}
    for k, v in config.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


__all__ = ["Field", "Schema", "REQUIRED", "COMMON", "read_toml", "flatten"]
