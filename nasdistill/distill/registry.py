"""Distillation methods, found by name."""

from __future__ import annotations

import importlib
import pkgutil

from .._registry import Registry
from ..errors import ConfigError
from .base import Distiller

METHODS: Registry[type[Distiller]] = Registry("distillation method")

#: Modules of this package that hold infrastructure, not methods.
_NOT_METHODS = frozenset({"base", "experts", "registry", "store", "unroll"})


def register(cls: type[Distiller]) -> type[Distiller]:
    """Class decorator: register a :class:`Distiller` subclass under its ``name``."""
    METHODS.register(cls.name, cls)
    return cls


def _load_builtins() -> None:
    """Import every method module of this package (one module per method; each registers itself)."""
    import nasdistill.distill as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name not in _NOT_METHODS and not info.name.startswith("_"):
            importlib.import_module(f"{__package__}.{info.name}")


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
