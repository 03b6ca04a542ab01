"""nasdistill: neural architecture search on distilled proxy datasets.

Distil a labelled image dataset once into a small synthetic proxy, search architectures on the
proxy with Optuna or NNI, and validate how well the proxy's ranking matches full-data training.

The main entry points are served lazily from :mod:`nasdistill.api` (``import nasdistill`` imports
nothing heavy): ``nasdistill.load_dataset``, ``nasdistill.get_space``, ``nasdistill.ProxyEvaluator``,
``nasdistill.OptunaSearch``, ``nasdistill.NNISearch``, ``nasdistill.write_report``, ``nasdistill.run``...
``nasdistill.distill`` and ``nasdistill.validate`` always name the subpackages; their main functions
are ``nasdistill.distill_proxy`` and ``nasdistill.validate_proxies`` (or ``from nasdistill.api import
distill, validate``).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: Subpackages: ``nasdistill.<name>`` is always the module, never a function of the same name.
_SUBPACKAGES = frozenset({"data", "distill", "search", "spaces", "training", "validate", "report", "defaults"})


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    if not name.startswith("_"):
        api = importlib.import_module(f"{__name__}.api")
        if name in api.__all__:
            return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    from . import api

    own = {n for n in globals() if n not in ("annotations", "importlib")}  # not this file's own imports
    return sorted(own | _SUBPACKAGES | set(api.__all__))
