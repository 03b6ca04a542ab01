"""The built-in distillation methods, one module each.

Every method module registers its :class:`~nasdistill.distill.Distiller` subclass with
``@register`` when imported; this package imports each of them explicitly (as torchvision's
``models`` package does with ``register_model``). A new built-in method is a new module here plus
one import line below; code outside the package registers its own methods with
:func:`nasdistill.distill.register` (see ``tests/test_new_method.py``).
"""

from __future__ import annotations

from . import cafe, dc, dd, dm, herding, kcenter, krr, mtt, random, rank, sre2l

__all__ = ["cafe", "dc", "dd", "dm", "herding", "kcenter", "krr", "mtt", "random", "rank", "sre2l"]
