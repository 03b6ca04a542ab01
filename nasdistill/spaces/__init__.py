"""Search spaces, found by name or by file.

``get_space("convnet")`` imports ``search_spaces/convnet.py``; ``get_space("path/to/space.py")``
loads a user file; packages can also expose spaces through the ``nasdistill.spaces`` entry-point
group, and code can call ``SPACES.register(name, space)``.

A space module exposes a :class:`SearchSpace` instance as ``space`` (or ``SPACE``), or defines
exactly one :class:`SearchSpace` subclass, which is instantiated without arguments.

Options after a colon build a variant: ``get_space("nb201:cells_per_stage=1")`` calls the module's
space class with ``cells_per_stage=1`` (values are parsed as JSON where possible, else strings).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil
import sys
from pathlib import Path
from types import ModuleType

from .._registry import Registry
from ..errors import ConfigError, UnknownNameError
from .base import Arch, CategoricalSpace, DictTrial, Network, RandomTrial, SearchSpace, sample_args

__all__ = ["Arch", "CategoricalSpace", "DictTrial", "Network", "RandomTrial", "SearchSpace", "SPACES", "get_space", "space_names",
           "sample_args"]

SPACES: Registry[SearchSpace] = Registry("search space", hint="or a path to a space file")
_LOADED: dict[str, SearchSpace] = {}


def _space_from_module(mod: ModuleType, label: str) -> SearchSpace:
    for attr in ("space", "SPACE"):
        obj = getattr(mod, attr, None)
        if isinstance(obj, SearchSpace):
            return obj
        if inspect.isclass(obj) and issubclass(obj, SearchSpace):
            return obj()
    classes = [c for c in vars(mod).values() if inspect.isclass(c) and issubclass(c, SearchSpace)
               and c.__module__ == mod.__name__ and not inspect.isabstract(c)]
    if len(classes) == 1:
        return classes[0]()
    raise ConfigError(f"{label} defines no search space",
                      "define `space = MySpace()` with MySpace a subclass of nasdistill.spaces.SearchSpace")


def _load_file(path: Path) -> SearchSpace:
    mod_name = f"nasdistill_user_space_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot load {path} as Python", "pass a .py file")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = mod
    try:
        spec.loader.exec_module(mod)
    except Exception as e:
        sys.modules.pop(mod_name, None)
        raise ConfigError(f"loading the space file {path} failed: {type(e).__name__}: {e}", "fix the file") from e
    return _space_from_module(mod, str(path))


def _entry_point(name: str):
    from importlib.metadata import entry_points

    for ep in entry_points(group="nasdistill.spaces"):
        if ep.name == name:
            return ep
    return None


def space_names() -> list[str]:
    """Names accepted by :func:`get_space` (besides file paths)."""
    names = set(SPACES.names())
    try:
        import search_spaces

        names.update(m.name for m in pkgutil.iter_modules(search_spaces.__path__) if not m.name.startswith("_"))
    except ImportError:
        pass
    from importlib.metadata import entry_points

    names.update(ep.name for ep in entry_points(group="nasdistill.spaces"))
    return sorted(names)


def _with_options(base: SearchSpace, options: str, label: str) -> SearchSpace:
    import json

    kwargs = {}
    for part in filter(None, options.split(",")):
        k, sep, v = part.partition("=")
        if not sep:
            raise ConfigError(f"space option {part!r} in {label!r} is not KEY=VALUE",
                              "write e.g. nb201:cells_per_stage=1,channels=8")
        try:
            kwargs[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            kwargs[k.strip()] = v
    try:
        return type(base)(**kwargs)
    except TypeError as e:
        params = [p for p in inspect.signature(type(base)).parameters]
        raise ConfigError(f"space {label!r}: {e}", f"{type(base).__name__} takes {', '.join(params) or 'no options'}") \
            from e


def get_space(name: str | SearchSpace) -> SearchSpace:
    """Return the search space called ``name`` (a registered name, a module of ``search_spaces``,
    an entry point, or a path to a ``.py`` file), optionally with ``:key=value,...`` options.
    Instances are cached per name."""
    if isinstance(name, SearchSpace):
        return name
    key = str(name)
    if key in _LOADED:
        return _LOADED[key]
    base_name, sep, options = key.partition(":")
    if sep and not base_name.endswith(".py") and "/" not in base_name:
        space = _with_options(get_space(base_name), options, key)
        _LOADED[key] = space
        return space
    if key.endswith(".py") or "/" in key or "\\" in key:
        path = Path(key).expanduser()
        if not path.is_file():
            raise ConfigError(f"no search-space file at {path}", "pass an existing .py file or a space name")
        space = _load_file(path)
    elif key in SPACES:
        space = SPACES.get(key)
    else:
        space = None
        if key.isidentifier():
            try:
                mod = importlib.import_module(f"search_spaces.{key}")
                space = _space_from_module(mod, f"search_spaces/{key}.py")
            except ModuleNotFoundError as e:
                if e.name not in (f"search_spaces.{key}", "search_spaces"):
                    raise
        if space is None:
            ep = _entry_point(key)
            if ep is not None:
                obj = ep.load()
                space = obj() if inspect.isclass(obj) else obj
        if space is None:
            raise UnknownNameError(f"unknown search space {key!r}",
                                   f"choose one of: {', '.join(space_names())} (or a path to a space .py file)")
    _LOADED[key] = space
    return space
