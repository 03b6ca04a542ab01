"""From parsed flags to what the pipeline takes (settings, training configurations, the data
spec), the checks run before any work (preflight: one line per bad input), and the command's
messages (logging, ``--json``)."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..training import TrainConfig


logger = logging.getLogger("nasdistill.cli")


def _callbacks(args) -> list:
    """The tracking callbacks the flags ask for (``--mlflow``)."""
    if getattr(args, "mlflow", None) is None:
        return []
    from ..tracking import MLflowTracker

    return [MLflowTracker(args.mlflow)]


def _tell(callbacks: list, event: str, obj) -> None:
    for cb in callbacks:
        getattr(cb, event)(obj)


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {"none": None, "true": True, "false": False}.get(text.lower(), text)


def _settings(args, methods: list[str] | None = None, *, note: bool = True) -> dict:
    """The ``--set`` settings (typed by the method's constructor when one method is named) and the
    method flags given (``--iterations``, ``--init``, ``--matching-space``). A setting given both
    ways, or one that has its own flag (``--ipc``, ``--seed``, ``--device``), is refused. A method flag
    that none of ``methods`` takes gets a one-line note and is dropped; unknown ``--set`` keys are refused."""
    from ..checks import FLAG_SETTINGS, OWN_FLAGS, parse_setting
    from ..distill import method_class

    single = getattr(args, "target_spearman", None) is None and getattr(args, "method", None)
    cls = method_class(single) if single else None
    settings = {}
    for item in args.settings:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"--set {item!r} is not KEY=VALUE", "write e.g. --set lr_img=0.5")
        if key in OWN_FLAGS:
            raise ConfigError(f"--set {key}=... repeats {OWN_FLAGS[key]}", f"use {OWN_FLAGS[key]} only")
        if key in settings:
            raise ConfigError(f"--set {key} is given twice", "give each setting once")
        settings[key] = parse_setting(cls, key, value) if cls is not None else _parse_value(value.strip())
    for key, flag in FLAG_SETTINGS.items():
        if getattr(args, key, None) is not None:
            if methods and not _taken_by(key, methods):
                if note:
                    _say(f"note: {flag} does not apply to {', '.join(methods)} (not an iterative method); ignored")
                continue
            if key in settings:
                raise ConfigError(f"--set {key}=... and {flag} are both given", f"use {flag} only")
            settings[key] = getattr(args, key)
    return settings


def _taken_by(key: str, methods: list[str]) -> bool:
    """Whether any of ``methods`` has the setting ``key`` (an unknown method is left to be refused later)."""
    from ..distill import method_class, method_names

    known = [m for m in methods if m in method_names()]
    return len(known) < len(methods) or any(key in method_class(m)._param_names() for m in known)


def _data_spec(args, proxy=None):
    """The ``data`` flags as a :class:`~nasdistill.pipeline.DataSpec`; with ``proxy``, unset ones come from it."""
    from ..pipeline import DataSpec

    given = {"root": args.data_root, "download": args.download, "train_per_class": args.train_per_class,
             "test_per_class": args.test_per_class, "val_per_class": args.val_per_class,
             "resolution": args.resolution}
    if proxy is None:
        return DataSpec(name=args.data, stream=args.stream, **given)
    # a proxy's data is read as it was (streamed or not) unless --stream is given
    return DataSpec.from_proxy(proxy, name=args.data, stream=True if args.stream else None, **given)


def _augment(text: str):
    return None if text == "none" else text


def _train_config(args) -> TrainConfig:
    """The proxy-training flags over their preset (:mod:`nasdistill.defaults`)."""
    changes = {"batch_size": args.batch_size, "lr": args.lr, "schedule": args.schedule,
               "augment": _augment(args.augment), "precision": _precision(args)}
    if args.proxy_epochs is not None:
        changes["epochs"] = args.proxy_epochs
    elif args.proxy_steps is not None:
        changes["steps"] = args.proxy_steps
    return args.proxy_preset.replace(**changes)


def _full_config(args) -> TrainConfig:
    """The full-data flags over their preset (:data:`~nasdistill.defaults.DEFAULT_FULL_TRAIN`, or the quick start's)."""
    return args.full_preset.replace(epochs=args.full_epochs, batch_size=args.full_batch_size, lr=args.lr,
                                    augment=_augment(args.full_augment), precision=_precision(args))


def _precision(args) -> str:
    """``--precision``, with ``auto`` resolved for the run's device (:func:`~nasdistill.training.resolve_precision`)."""
    from ..pipeline import resolve_device
    from ..training import resolve_precision

    return resolve_precision(args.precision, resolve_device(args.device))


def _load_proxy(path: Path):
    from ..data import load_proxy

    return load_proxy(path)


def _say(msg: str) -> None:
    """A message of the command: an INFO record of the ``nasdistill.cli`` logger (:func:`_logging_to`)."""
    logger.info(msg)


def _emit_json(obj) -> None:
    """The ``--json`` summary: one line of strict JSON on the real stdout."""
    from .._io import to_jsonable

    _JSON_OUT[0].write(json.dumps(to_jsonable(obj), sort_keys=True) + "\n")
    _JSON_OUT[0].flush()


_JSON_OUT: list = [sys.stdout]  #: where --json writes (the stdout main() found)


class _Formatter(logging.Formatter):
    """Plain messages on the console; time-stamped, with level and logger, in a file."""

    def __init__(self, stamped: bool):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s" if stamped else "%(message)s")


@contextlib.contextmanager
def _logging_to(args):
    """Route the ``nasdistill`` logger for one command: messages to stdout (stderr with ``--json``, whose
    stdout holds only the JSON), at ``--log-level``, and to ``--log-file`` when given."""
    root = logging.getLogger("nasdistill")
    level = getattr(logging, getattr(args, "log_level", "info").upper())
    as_json = getattr(args, "json", False)
    console = logging.StreamHandler(sys.stderr if as_json else sys.stdout)
    console.setFormatter(_Formatter(stamped=False))
    handlers: list[logging.Handler] = [console]
    log_file = getattr(args, "log_file", None)
    if log_file is not None:
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
        except OSError as e:
            raise ConfigError(f"cannot write the log file {log_file} ({e.strerror or e})",
                              "pass a writable --log-file path") from None
        handlers[-1].setFormatter(_Formatter(stamped=True))
    for h in handlers:
        h.setLevel(level)
        root.addHandler(h)
    saved = root.level, root.propagate
    root.setLevel(level)
    root.propagate = False
    _JSON_OUT[0] = sys.stdout
    redirect = contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext()
    try:
        with redirect:
            yield
    finally:
        from ..progress import close_all

        close_all()
        for h in handlers:
            root.removeHandler(h)
            h.close()
        root.setLevel(saved[0])
        root.propagate = saved[1]


def _check_backend(args) -> None:
    """One line, before any work, when the search flags do not fit ``--backend`` (or NNI is missing)."""
    from ..pipeline import check_backend

    check_backend(args.backend, space=args.space, sampler=args.sampler, strategy=args.strategy, pruner=args.pruner,
                  storage=args.storage, workers=args.workers, worker_index=getattr(args, "worker_index", None),
                  objectives=args.objectives)


#: Integer flags and their lowest value, checked before any work (None: not given).
_COUNTS = {"ipc": 1, "iterations": 0, "train_per_class": 1, "test_per_class": 1, "val_per_class": 0, "trials": 1,
           "workers": 1, "worker_index": 0, "retrain_top": 0, "archs": 2, "bootstrap": 1, "eval_seeds": 1,
           "zero_cost_batch": 1, "validate_archs": 2, "target_max_candidates": 1, "num_experts": 1,
           "train_epochs": 1, "batch_size": 1, "full_epochs": 1, "full_batch_size": 1, "proxy_epochs": 1,
           "proxy_steps": 1, "proxy_repeats": 1}


def _preflight(args) -> None:
    """Every flag of ``args`` checked before any work: counts, numbers, training configs, method
    settings, and that the places written (``--out``, ``$NASDISTILL_HOME``, the stores) can be.
    Nothing is created here."""
    from ..checks import check_augment, check_count, check_home, check_number, check_out_dir, check_store_url, \
        check_train

    from ..work.claims import check_grace_env

    check_grace_env()
    for name, low in _COUNTS.items():
        if name in vars(args):
            check_count(getattr(args, name), f"--{name.replace('_', '-')}", low)
    if getattr(args, "target_spearman", None) is not None:
        check_number(args.target_spearman, "--target-spearman", low=-1.0, high=1.0, strict=False)
    check_number(getattr(args, "target_budget", None), "--target-budget", low=0.0)
    if "lr" in vars(args):
        check_number(args.lr, "--lr", low=0.0)
    if getattr(args, "top_k", None) is not None:
        if not args.top_k or any(isinstance(k, bool) or not (k >= 1 if isinstance(k, int) else 0 < k <= 1)
                                 for k in args.top_k):
            raise ConfigError(f"--top-k {','.join(map(str, args.top_k)) or '(empty)'} is not a list of counts >= 1 "
                              "and fractions in (0, 1]", "write e.g. --top-k 5,10,0.1")
    if "proxy_preset" in vars(args):
        check_augment(_augment(args.augment))  # named by its flag, before TrainConfig refuses it unnamed
        check_train(_train_config(args))
    if "full_preset" in vars(args):
        check_augment(_augment(args.full_augment), "--full-augment")
        check_train(_full_config(args), "full-")
        check_store_url(args.reference_store)
    if args.command == "experts":
        check_augment(args.augment)
    if args.command in ("search", "run"):
        _check_search_flags(args)
    if args.command in ("distill", "run") and "settings" in vars(args):
        _check_method_flags(args)
    if args.command in ("distill", "run", "experts", "search", "validate") and getattr(args, "out", None) is not None:
        check_out_dir(args.out)
    if getattr(args, "store", None) is not None:
        check_out_dir(args.store, "--store")
    elif args.command in ("distill", "run") or (args.command == "experts" and args.out is None):
        check_home()


def _check_search_flags(args) -> None:
    """The search flags of ``search``/``run`` by name (sampler, pruner, storage URL), before any work."""
    from ..search.storage import check_storage_url

    if args.backend == "optuna":
        from ..search.samplers import PRUNERS, SAMPLERS

        if args.sampler is not None:
            SAMPLERS.get(args.sampler)
        PRUNERS.get(args.pruner or "none")
    check_storage_url(args.storage)


def _check_method_flags(args) -> None:
    """The method, budget and settings of ``distill``/``run``, as the pipeline will merge them."""
    from ..checks import check_method_settings
    from ..distill import method_class

    if getattr(args, "target_spearman", None) is not None:
        _settings(args)
        return  # target_step splits the settings between its methods and checks each
    settings = _settings(args, [args.method], note=False)  # the command itself says what it drops
    check_method_settings(method_class(args.method), settings)
