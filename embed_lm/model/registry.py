"""The closed set of model parts a saved config may name, and how one is built from plain data.

A run folder's embedder/config.yaml and an export's embed_lm.yaml describe the model as data: `backbone`, `pooling`
and `instruction_style` sections whose `_target_` must be one of the project's own builders below. Anything else
(`_target_: shutil.copy`, `builtins.exec`, a nested `_target_`, `_args_`, ...) is refused before any code is
imported or called; Hydra's `instantiate` is never used on a loaded file.

    build_part("pooling", {"_target_": "embed_lm.model.pooling.Pooling", "name": "mean"}, where="run/config.yaml")
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from embed_lm.errors import ConfigError, UnsafeFileError
from embed_lm.model.backbone import build_backbone
from embed_lm.model.instructions import NaturalInstruction, NoInstruction, TaskTypePrefix
from embed_lm.model.pooling import Pooling

PARTS: dict[str, dict[str, Callable[..., Any]]] = {
    "backbone": {"embed_lm.model.backbone.build_backbone": build_backbone},
    "pooling": {"embed_lm.model.pooling.Pooling": Pooling},
    "instruction_style": {f"embed_lm.model.instructions.{c.__name__}": c
                          for c in (NaturalInstruction, NoInstruction, TaskTypePrefix)},
}


def _nested_keys(value: Any, path: str) -> list[str]:
    """Dotted paths of every key starting with '_' (Hydra's _target_, _args_, _partial_, ...) inside `value`."""
    if isinstance(value, dict):
        found = [f"{path}.{k}" for k in value if str(k).startswith("_")]
        return found + [p for k, v in value.items() for p in _nested_keys(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _nested_keys(v, f"{path}[{i}]")]
    return []


def check_part(section: str, spec: Any, where: str) -> Callable[..., Any]:
    """The builder `spec` names, after checking it is data for one of our parts; raises UnsafeFileError."""
    allowed = PARTS[section]
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: `{section}` must be a mapping with a _target_ (one of {sorted(allowed)}), "
                          f"got {type(spec).__name__}")
    target = spec.get("_target_")
    if target not in allowed:
        raise UnsafeFileError(f"{where}: {section}._target_={target!r} is not one of embed_lm's {section} builders "
                              f"({', '.join(sorted(allowed))}); refused: a config file chooses among the project's "
                              "own classes and never names code to run")
    extra = [p for p in _nested_keys(spec, section) if p != f"{section}._target_"]
    if extra:
        raise UnsafeFileError(f"{where}: {', '.join(extra)} refused: only {section}._target_ may name a builder "
                              "(nested _target_/_args_/_partial_ keys would run other code)")
    builder = allowed[target]
    params = inspect.signature(builder).parameters
    unknown = sorted(k for k in spec if k != "_target_" and k not in params)
    if unknown:
        raise ConfigError(f"{where}: unknown {section} option(s) {', '.join(unknown)} for {target} "
                          f"(known: {', '.join(params)})")
    return builder


def build_part(section: str, spec: Any, where: str, **overrides: Any) -> Any:
    """Build the backbone spec / pooling / instruction style that `spec` (plain data) describes; `overrides` win
    over the file (e.g. trust_remote_code, which only the command line may turn on)."""
    builder = check_part(section, spec, where)
    kwargs = {k: v for k, v in spec.items() if k != "_target_"} | overrides
    try:
        return builder(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {section}: {e}") from e
