"""scikit-learn's parameter protocol (``get_params`` / ``set_params``) for nasdistill's estimators.

An estimator's settings are its constructor's named arguments, kept as attributes of the same
names (as scikit-learn asks); :class:`Params` reads them from the signatures along the class's
MRO, so ``sklearn.base.clone``, grid searches over settings and ``repr`` work on distillers,
search backends and the ranking validator alike.
"""

from __future__ import annotations

import inspect
import numbers
from typing import Any

from .errors import ConfigError


class Params:
    """Mixin: ``get_params()`` and ``set_params(**settings)`` over the constructor's named arguments."""

    @classmethod
    def _param_names(cls) -> list[str]:
        names: list[str] = []
        for klass in cls.__mro__:
            if "__init__" in vars(klass) and klass is not object:
                for p in inspect.signature(klass.__init__).parameters.values():
                    if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name not in names:
                        names.append(p.name)
        return names

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """All constructor settings, by name (``deep`` is accepted for scikit-learn; settings hold
        no nested estimators)."""
        return {k: getattr(self, k) for k in self._param_names()}

    def set_params(self, **params: Any) -> "Params":
        """Change settings by name (checked when the work starts, as the constructor's); returns self."""
        names = self._param_names()
        unknown = sorted(set(params) - set(names))
        if unknown:
            raise ConfigError(f"{type(self).__name__} has no setting {', '.join(map(repr, unknown))}",
                              f"use some of {', '.join(names)}")
        for k, v in params.items():
            setattr(self, k, v)
        return self


def as_whole(value: Any, name: str) -> int:
    """``value`` as a plain int when it is a whole number (:func:`is_whole`: an int or a NumPy integer, not
    a bool), else a one-line :class:`ConfigError` naming the setting ``name``."""
    if not is_whole(value):
        raise ConfigError(f"{name} must be a whole number, got {value!r}", f"pass {name} as an int")
    return int(value)


def is_whole(value: Any) -> bool:
    """Whether a count setting is a whole number: an ``int`` or a NumPy integer (a grid of settings
    built with NumPy gives those), not a ``bool`` (``True`` would count as 1)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
