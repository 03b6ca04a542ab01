"""Checks run before any work: settings, training flags and output locations.

Each check raises a one-line :class:`~nasdistill.errors.NasDistillError` (problem and fix) and
writes nothing, so a command that fails here leaves no folder, study, cache or store entry behind.

* :func:`check_method_settings`: method settings (``--set KEY=VALUE``) against the method's
  constructor: known names (with "did you mean"), types read from its signature
  (int/float/bool/str/None), ranges (counts >= 0, batch sizes >= 1, rates > 0, finite numbers);
  :func:`parse_setting` turns the text of ``--set`` into the constructor's type.
* :func:`check_train`: a :class:`~nasdistill.training.TrainConfig` (epochs/steps, batch size,
  learning rate) before trial 0; the augmentation by its flag with check_augment.
* :func:`check_count`: one integer flag against its lower bound.
* :func:`check_out_dir` / :func:`check_writable`: a folder that will be written is a folder (or
  can become one) and is writable; :func:`check_home` for ``$NASDISTILL_HOME``.
* :func:`check_store_url`: a ``--reference-store`` URL or path that can be parsed, before any file is created.
"""

from __future__ import annotations

import difflib
import inspect
import math
import numbers
import os
import tempfile
from pathlib import Path
from typing import Any

from ._params import is_whole
from ._io import home_dir
from .errors import ConfigError, StorageError

#: Settings the command line sets with its own flags; ``--set`` may not repeat them.
OWN_FLAGS = {"ipc": "--ipc", "seed": "--seed", "device": "--device"}
#: Settings with a flag of their own that ``--set`` may give instead (but not both).
FLAG_SETTINGS = {"iterations": "--iterations", "init": "--init", "matching_space": "--matching-space"}

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NONE = {"none", "null", ""}


# --- method settings ---------------------------------------------------------------------------------
def _annotations(cls) -> dict[str, str]:
    """Setting name -> its annotation text, over ``cls``'s constructors (most derived first)."""
    out: dict[str, str] = {}
    for klass in cls.__mro__:
        init = vars(klass).get("__init__")
        if init is None:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.name == "self" or p.name in out or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                continue
            ann = p.annotation
            out[p.name] = "" if ann is inspect.Parameter.empty else (ann if isinstance(ann, str)
                                                                      else getattr(ann, "__name__", str(ann)))
    return out


def _kinds(annotation: str) -> tuple[set[str], bool]:
    """(``{"int", "float", "bool", "str"}`` subset, whether None is allowed) of an annotation text."""
    parts = {p.strip().removeprefix("typing.") for p in annotation.replace("Optional[", "").rstrip("]").split("|")}
    optional = "None" in parts or "Optional[" in annotation
    return {p for p in parts if p in ("int", "float", "bool", "str")}, optional


def setting_kinds(cls, name: str) -> tuple[set[str], bool]:
    """The types (``int``, ``float``, ``bool``, ``str``) ``cls`` takes for setting ``name``, and whether None is allowed."""
    return _kinds(_annotations(cls).get(name, ""))


def _unknown(cls, key: str) -> ConfigError:
    names = [n for n in cls._param_names() if n not in OWN_FLAGS]
    close = difflib.get_close_matches(key, names, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return ConfigError(f"method {cls.name!r} has no setting {key!r}",
                       f"{hint}its settings are: {', '.join(names)}")


def parse_setting(cls, key: str, text: str) -> Any:
    """The value of ``--set key=text`` in the type ``cls``'s constructor gives ``key``."""
    if key not in cls._param_names():
        raise _unknown(cls, key)
    kinds, optional = setting_kinds(cls, key)
    low = text.strip().lower()
    if optional and low in _NONE:
        return None
    if "bool" in kinds and low in _TRUE | _FALSE:
        return low in _TRUE
    if "int" in kinds:
        try:
            return int(text)
        except ValueError:
            pass
    if "float" in kinds:
        try:
            return float(text)
        except ValueError:
            pass
    if "str" in kinds:
        return text.strip()
    if not kinds:  # no annotation: JSON, or the text itself
        import json

        try:
            return json.loads(text)
        except ValueError:
            return text
    want = _words(kinds, optional)
    raise ConfigError(f"--set {key}={text!r}: {cls.name}'s {key} must be {want}",
                      f"pass e.g. --set {key}={_example(key, kinds)}")


_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}


def _words(kinds: set[str], optional: bool) -> str:
    words = [_WORDS[k] for k in ("int", "float", "bool", "str") if k in kinds]
    if "int" in kinds and "float" in kinds:
        words.remove("an integer")
    return " or ".join(words + (["none"] if optional else []))


def _example(key: str, kinds: set[str]) -> str:
    if "bool" in kinds:
        return "true"
    if "float" in kinds:
        return "0.1" if key.startswith("lr") else "0.5" if "momentum" in key else "1.0"
    if "int" in kinds:
        return "256" if key.startswith("batch") else "10"
    return "NAME"


def _minimum(key: str) -> tuple[float, bool]:
    """(lower bound, strict) of a numeric setting, from its name."""
    if "momentum" in key:  # inner_momentum, momentum_net: in [0, 1) (the upper bound: _check_value)
        return 0, False
    if key.startswith(("lr", "temperature", "loop_scale")) or key.endswith("_lr"):
        return 0.0, True
    if key.startswith(("batch", "num_", "pool_size", "syn_steps", "expert_epochs", "outer", "n_inits",
                       "reset_every", "reinit_every", "train_epochs")):  # inner_*, online_steps: each method's check
        return 1, False
    return 0, False


def check_method_settings(cls, settings: dict | None) -> dict:
    """Raise a one-line :class:`ConfigError` unless every entry of ``settings`` is a setting of
    method class ``cls`` of the type its constructor gives (int, float, bool, str or None) and in
    range (numbers finite; counts >= 0; batch sizes, step and expert counts >= 1; rates and
    temperatures > 0; momentum in [0, 1)). Returns ``settings`` with ints given for floats made floats."""
    for key in settings or {}:
        if key in OWN_FLAGS:
            raise ConfigError(f"{key} is not a --set setting", f"use {OWN_FLAGS[key]} instead of --set {key}=...")
        if key not in cls._param_names():
            raise _unknown(cls, key)
    return check_setting_values(cls, settings, cli=True)


def check_setting_values(cls, settings: dict | None, *, cli: bool = False) -> dict:
    """The type and range half of :func:`check_method_settings`, for settings already known to be
    ``cls``'s (its constructor's names, ``ipc`` and ``seed`` included): what every distiller's
    ``check`` runs on its own settings, so the Python API refuses what ``--set`` refuses. Returns
    the values as the constructor's types (an int given for a float setting, a NumPy number, as the
    plain float or int it stands for), so equal settings give equal keys. ``cli``: the fixes name
    ``--set KEY=VALUE`` rather than ``KEY=VALUE``."""
    return {key: _check_value(cls, key, value, *setting_kinds(cls, key), cli=cli)
            for key, value in (settings or {}).items()}


def _check_value(cls, key: str, value: Any, kinds: set[str], optional: bool, *, cli: bool = True) -> Any:
    where = f"{cls.name}'s {key}"
    fix = f"pass e.g. {'--set ' if cli else ''}{key}={{}}"
    if value is None:
        if optional or not kinds:
            return None
        raise ConfigError(f"{where} cannot be None", fix.format(_example(key, kinds)))
    if not kinds:
        return value
    want = _words(kinds, optional)
    bad = ConfigError(f"{where} must be {want}, got {value!r}", fix.format(_example(key, kinds)))
    if isinstance(value, bool):
        if "bool" in kinds:
            return value
        raise bad
    if isinstance(value, numbers.Real) and ("int" in kinds or "float" in kinds):
        if not isinstance(value, numbers.Integral):  # a float (or NumPy float) given for an int-only setting
            if "float" not in kinds:
                if not float(value).is_integer():
                    raise bad
                value = int(value)
            else:
                value = float(value)
        else:
            value = int(value)  # a NumPy integer (a grid of settings) as the int it stands for
        if not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number, got {value!r}", fix.format(_example(key, kinds)))
        low, strict = _minimum(key)
        if (value <= low) if strict else (value < low):
            rel = ">" if strict else ">="
            raise ConfigError(f"{where} must be {rel} {low:g}, got {value!r}", fix.format(_example(key, kinds)))
        if "momentum" in key and value >= 1:
            raise ConfigError(f"{where} must be below 1, got {value!r}", fix.format("0.5"))
        return float(value) if "float" in kinds and "int" not in kinds else value
    if isinstance(value, str) and "str" in kinds:
        return value
    raise bad


# --- training and counts ------------------------------------------------------------------------------
def check_count(value: int | None, flag: str, low: int = 1) -> None:
    """Raise :class:`ConfigError` unless ``value`` (when given) is an integer >= ``low``."""
    if value is None:
        return
    if not is_whole(value) or value < low:
        raise ConfigError(f"{flag} must be an integer >= {low}, got {value!r}", f"pass {flag} {max(low, 1)} or more")


def check_number(value: float | None, flag: str, *, low: float | None = None, high: float | None = None,
                 strict: bool = True) -> None:
    """Raise :class:`ConfigError` unless ``value`` (when given) is a finite number in range."""
    if value is None:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if strict else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        rng = " and ".join(s for s in ((f"{'>' if strict else '>='} {low:g}" if low is not None else ""),
                                       (f"<= {high:g}" if high is not None else "")) if s)
        raise ConfigError(f"{flag} must be a finite number{' ' + rng if rng else ''}, got {value!r}",
                          f"pass a value for {flag} {rng}".rstrip())


def check_augment(spec: str | None, flag: str = "--augment") -> None:
    """Raise :class:`ConfigError` for an augmentation name :func:`~nasdistill.training.make_augment` would refuse."""
    from .training import make_augment

    if spec is None or not isinstance(spec, str):
        return
    try:
        make_augment(spec, 3)
    except ConfigError as e:
        raise ConfigError(f"{flag} {spec!r}: {e.problem}",
                          "use none, dsa or ops joined by '_' (e.g. crop_flip)") from None


def check_train(config, prefix: str = "") -> None:
    """Raise :class:`ConfigError` for a training config that cannot train (before any trial):
    epochs/steps >= 1, batch size >= 1, a finite learning rate > 0, momentum and weight decay >= 0
    (the augmentation is :class:`~nasdistill.training.TrainConfig`'s own check: check it by its flag
    with :func:`check_augment` before building the config). ``prefix`` names the flags
    (``"full-"``: ``--full-epochs``...)."""
    if config is None:
        return
    check_count(config.epochs, f"--{prefix or 'proxy-'}epochs")
    check_count(config.steps, f"--{prefix or 'proxy-'}steps")
    check_count(config.batch_size, f"--{prefix}batch-size")
    check_number(config.lr, "--lr", low=0.0)
    check_number(config.momentum, "momentum", low=0.0, high=1.0, strict=False)
    check_number(config.weight_decay, "weight decay", low=0.0, strict=False)


# --- outputs -----------------------------------------------------------------------------------------
def _existing_ancestor(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_out_dir(path: str | os.PathLike | None, flag: str = "--out") -> None:
    """Raise :class:`ConfigError` unless ``path`` is a folder, or can be created, and is writable
    (nothing is created)."""
    if path is None:
        return
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} is a file, not a folder", f"pass a folder to {flag}, or remove the file")
    check_writable(path, flag)


def check_writable(path: str | os.PathLike, what: str) -> None:
    """Raise :class:`ConfigError` unless ``path`` (a folder that may not exist yet) could be written:
    its nearest existing ancestor is a writable folder."""
    path = Path(path).expanduser()
    base = _existing_ancestor(path)
    if not base.is_dir():
        raise ConfigError(f"{what} {path} cannot be created: {base} is a file",
                          "pass a path whose parent folders are folders")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path} is not writable ({base} is read-only to this user)",
                          "pass a writable location")
    # permission bits are not the whole story (root passes os.access on /proc, a full or read-only
    # mount...): create and remove a folder where the first one would go
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".nasdistill-probe-", dir=base))
    except OSError as e:
        raise ConfigError(f"{what} {path} cannot be created under {base} ({e.strerror or e})",
                          "pass a writable location") from None


def check_home() -> None:
    """Raise :class:`ConfigError` unless ``$NASDISTILL_HOME`` (or its default) is writable."""
    home = home_dir()
    if home.exists() and not home.is_dir():
        raise ConfigError(f"NASDISTILL_HOME {home} is a file", "point NASDISTILL_HOME at a writable folder")
    try:
        check_writable(home, "NASDISTILL_HOME")
    except ConfigError as e:
        raise ConfigError(e.problem, "point NASDISTILL_HOME at a writable folder, or pass the store flags") from None


def check_store_url(url: str | os.PathLike | None, flag: str = "--reference-store") -> None:
    """Raise :class:`StorageError` for a results-store URL or path that cannot be one (nothing is
    opened or created): a malformed URL, a plain path containing ``:`` (a mistyped URL), or an
    SQLite file in a folder that cannot be written."""
    if url is None:
        check_home()
        return
    text = os.fspath(url).strip()
    fix = "pass a SQLAlchemy URL such as sqlite:///refs.db or postgresql://user@host/db, or a file path"
    if not text:
        raise StorageError(f"{flag} is empty", fix)
    if "://" not in text:
        if ":" in text:
            raise StorageError(f"{flag} {text!r} is neither a URL (no '://') nor a plain file path (it contains ':')",
                               fix)
        path = Path(text).expanduser()
        if path.is_dir():
            raise StorageError(f"{flag} {text!r} is a folder", "pass a file path, e.g. FOLDER/references.db")
        check_writable(path.parent, flag)
        return
    import sqlalchemy as sa
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = sa.make_url(text)
    except (ArgumentError, ValueError) as e:
        raise StorageError(f"{flag} {text!r} is not a valid URL ({' '.join(str(e).split())})", fix) from None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        check_writable(Path(parsed.database).expanduser().parent, flag)


__all__ = ["check_method_settings", "parse_setting", "setting_kinds", "check_count", "check_number", "check_augment",
           "check_train", "check_out_dir", "check_writable", "check_home", "check_store_url", "OWN_FLAGS",
           "FLAG_SETTINGS"]
