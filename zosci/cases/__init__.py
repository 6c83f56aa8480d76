"""Case kinds: a case file's ``kind`` names a module exposing SCHEMA and run(run).

A kind module may also define ``check(config)`` for checks beyond the schema
(data paths exist, ...); it raises ConfigError. Modules are imported lazily.
"""
from __future__ import annotations

import difflib
import importlib

from ..config import read_toml
from ..errors import ConfigError

KINDS: dict[str, str] = {
    "estimator_study": "zosci.cases.estimator_study",
    "llm_finetune": "zosci.llm.case",
    "mesh_adaptation": "zosci.cfd.adaptation_case",
    "cfd_gcn": "zosci.cfd.gcn_case",
    "poisson_mesh": "zosci.cfd.poisson_case",
}


def get_kind(kind):
    """The module of a case kind; ConfigError if unknown or not importable."""
    if kind not in KINDS:
        near = difflib.get_close_matches(str(kind), list(KINDS), 1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise ConfigError(f"kind: unknown case kind {kind!r}; {hint}known kinds: {', '.join(KINDS)}")
    name = KINDS[kind]
    try:
        module = importlib.import_module(name)
    except ImportError as err:
        raise ConfigError(f"kind {kind}: its module {name} is not available ({err})") from None
    if not hasattr(module, "SCHEMA") or not hasattr(module, "run"):
        raise ConfigError(f"kind {kind}: module {name} must define SCHEMA and run(run)")
    return module


def validate(raw: dict):
    """(module, validated config) of a parsed case: kind, schema, then the kind's check hook."""
    if not isinstance(raw, dict) or "kind" not in raw:
        raise ConfigError(f"kind: required; add `kind = \"...\"` at the top of the case file "
                          f"(one of {', '.join(KINDS)})")
    module = get_kind(raw["kind"])
    config = module.SCHEMA.validate(raw)
    check = getattr(module, "check", None)
    if check is not None:
        check(config)
    return module, config


def load_case(path):
    """(module, validated config, verbatim text) of a case file."""
    raw, text = read_toml(path)
    try:
        module, config = validate(raw)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    return module, config, text


__all__ = ["KINDS", "get_kind", "validate", "load_case"]
