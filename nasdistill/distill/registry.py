"""Distillation methods, found by name."""

from __future__ import annotations

import importlib

from .._registry import Registry
from ..errors import ConfigError
from .base import Distiller

METHODS: Registry[type[Distiller]] = Registry("distillation method")

#: Modules that register the built-in methods (imported on first lookup).
BUILTIN_MODULES = ("random", "dm")


def register(cls: type[Distiller]) -> type[Distiller]:
    """Class decorator: register a :class:`Distiller` subclass under its ``name``."""
    METHODS.register(cls.name, cls)
    return cls


def _load_builtins() -> None:
    for mod in BUILTIN_MODULES:
        importlib.import_module(f"{__package__}.{mod}")


def method_names() -> list[str]:
    _load_builtins()
    return METHODS.names()


def get_method(name: str, **settings) -> Distiller:
    """Instantiate the method called ``name`` with ``settings`` (unknown settings are an error)."""
    _load_builtins()
    cls = METHODS.get(name)
    allowed = cls._param_names()
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise ConfigError(f"method {name!r} has no setting {', '.join(map(repr, unknown))}",
                          f"its settings are: {', '.join(allowed)}")
    return cls(**settings)


def method_class(name: str) -> type[Distiller]:
    _load_builtins()
    return METHODS.get(name)
