"""Distillation methods, found by name.

Methods register themselves with :func:`register` when their module is imported; the built-in
ones are imported by :mod:`nasdistill.distill.methods` (which ``nasdistill.distill`` imports), so
the registry is complete as soon as the package is.
"""

from __future__ import annotations

from .._registry import Registry
from ..errors import ConfigError
from .base import Distiller

METHODS: Registry[type[Distiller]] = Registry("distillation method")


def register(cls: type[Distiller]) -> type[Distiller]:
    """Class decorator: register a :class:`Distiller` subclass under its ``name``."""
    METHODS.register(cls.name, cls)
    return cls


def method_names() -> list[str]:
    return METHODS.names()


def get_method(name: str, **settings) -> Distiller:
    """Instantiate the method called ``name`` with ``settings`` (unknown settings are an error)."""
    cls = METHODS.get(name)
    allowed = cls._param_names()
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise ConfigError(f"method {name!r} has no setting {', '.join(map(repr, unknown))}",
                          f"its settings are: {', '.join(allowed)}")
    return cls(**settings)


def method_class(name: str) -> type[Distiller]:
    return METHODS.get(name)
