"""The commands: each turns its parsed flags into one pipeline call and prints what it wrote."""

from __future__ import annotations

import sys

from ..errors import ConfigError
from .codes import EXIT_TARGET_NOT_MET
from .options import (_callbacks, _check_backend, _data_spec, _emit_json, _full_config, _load_proxy, _precision, _say,
                      _settings, _tell, _train_config)


#: ``distill`` flags that only mean something with ``--target-spearman``.
_TARGET_ONLY = ("target_metric", "target_bound", "validate_archs", "target_methods", "target_ipcs", "target_budget",
                "target_max_candidates", "space")


def _list(text: str, flag: str, cast=str) -> list:
    try:
        return [cast(t) for t in (t.strip() for t in text.split(",")) if t]
    except ValueError:
        raise ConfigError(f"{flag} {text!r} is not a comma-separated list of integers", f"write e.g. {flag} 1,2,5,10") \
            from None


def cmd_distill_target(args) -> int:
    from ..defaults import DEFAULT_N_ARCHS, DEFAULT_SPACE, target_dir
    from ..pipeline import resolve_device, target_step
    from ..target import default_methods, ipc_ladder

    if args.mlflow is not None:
        raise ConfigError("--mlflow is not taken with --target-spearman",
                          "drop --mlflow, and log the kept proxy's validation with nasdistill validate --mlflow URI")
    if args.relabel is not None:
        raise ConfigError("--relabel does not apply with --target-spearman", "drop --relabel, or --target-spearman")
    device = resolve_device(args.device)
    dataset = _data_spec(args).load()
    methods = (_list(args.target_methods, "--target-methods") if args.target_methods is not None
               else default_methods(args.method))
    ipcs = (_list(args.target_ipcs, "--target-ipcs", int) if args.target_ipcs is not None
            else ipc_ladder(args.ipc, min(dataset.class_counts())))
    out = args.out or target_dir(args.method)
    result = target_step(dataset, target=args.target_spearman, methods=methods, ipcs=ipcs,
                         settings=_settings(args, methods),
                         budget=args.budget, metric=args.target_metric, bound=args.target_bound or "value",
                         n_archs=DEFAULT_N_ARCHS if args.validate_archs is None else args.validate_archs,
                         space=args.space or DEFAULT_SPACE, proxy_train=_train_config(args), full_train=_full_config(args),
                         n_bootstrap=args.bootstrap, time_budget_s=args.target_budget,
                         max_candidates=args.target_max_candidates, seed=args.seed, device=device, out_dir=out,
                         store=args.store, reference_store=args.reference_store, progress=args.progress, log=_say)
    _say(f"proxy: {out / 'proxy.safetensors'} ({result.chosen.name}); validation: {out / 'validation.json'}; "
         f"candidates tried: {out / 'target.json'}")
    if not result.met:
        print(f"nasdistill: {result.message()}", file=sys.stderr)
        return EXIT_TARGET_NOT_MET
    return 0


def cmd_distill(args) -> int:
    from ..pipeline import resolve_device

    if args.target_spearman is not None:
        return cmd_distill_target(args)
    given = [f"--{k.replace('_', '-')}" for k in _TARGET_ONLY if getattr(args, k) is not None]
    if given:
        raise ConfigError(f"{given[0]} only applies with --target-spearman", "add --target-spearman R, or drop it")
    from ..distill.parallel import init_from_env, shutdown

    device = resolve_device(args.device)
    distributed = init_from_env(device)  # under torchrun: join the process group (data-parallel distillation)
    try:
        return _distill(args, device)
    finally:
        if distributed:
            shutdown()


def _distill(args, device) -> int:
    from ..defaults import distill_dir
    from ..distill.parallel import is_writer
    from ..pipeline import distill_step

    callbacks = _callbacks(args)
    spec = _data_spec(args)
    dataset = spec.load()
    out = args.out or distill_dir(args.method, args.ipc)
    proxy = distill_step(dataset, args.method, ipc=args.ipc, settings=_settings(args, [args.method]),
                         budget=args.budget,
                         seed=args.seed, device=device, out_dir=out, store=args.store, progress=args.progress,
                         log=_say, relabel=args.relabel, teacher_epochs=args.teacher_epochs,
                         temperature=args.temperature)
    if is_writer():
        _say(f"proxy: {out / 'proxy.safetensors'} (key {proxy.key}; grid {out / 'proxy.png'})")
        _tell(callbacks, "on_distill", proxy)
    return 0


def cmd_search(args) -> int:
    from ..defaults import proxy_dir
    from ..pipeline import search_step, resolve_device

    device = resolve_device(args.device)
    _check_backend(args)
    callbacks = _callbacks(args)
    proxy = _load_proxy(args.proxy)
    dataset = _data_spec(args, proxy).load()
    out = args.out or proxy_dir(args.proxy)
    search = search_step(dataset, proxy, space=args.space, n_trials=args.trials, sampler=args.sampler,
                         backend=args.backend, strategy=args.strategy,
                         pruner=args.pruner, storage=args.storage, study_name=args.study_name or "nasdistill",
                         train=_train_config(args), seed=args.seed, device=device, out_dir=out,
                         progress=args.progress, log=_say, objectives=args.objectives, workers=args.workers,
                         worker_index=args.worker_index, retrain_top=args.retrain_top, full_train=_full_config(args),
                         reference_store=args.reference_store)
    _say(f"best architecture: {search.best_id_} -> {out / 'best_arch.json'}; trials: {out / 'trials.csv'}")
    _tell(callbacks, "on_search", search)
    if args.json:
        from ..pipeline import search_summary

        _emit_json(search_summary(search, out))
    return 0


def cmd_validate(args) -> int:
    from ..defaults import DEFAULT_FULL_TRAIN, proxy_dir
    from ..pipeline import resolve_device, validate_step

    if args.vectorize_repeats and args.proxy_repeats < 2:
        raise ConfigError("--vectorize-repeats vectorises the trainings of --proxy-repeats K, which is 1",
                          "add --proxy-repeats K with K of 2 or more, or drop --vectorize-repeats")
    device = resolve_device(args.device)
    callbacks = _callbacks(args)
    proxies = [_load_proxy(p) for p in args.proxy]
    dataset = _data_spec(args, proxies[0]).load()
    out = args.out or proxy_dir(args.proxy[0])
    full_train = _full_config(args)
    if args.reference is not None and full_train == DEFAULT_FULL_TRAIN:
        full_train = None  # the table's budget
    result = validate_step(dataset, proxies, space=args.space, n_archs=args.archs, proxy_train=_train_config(args),
                  full_train=full_train, top_k=args.top_k, n_bootstrap=args.bootstrap, reference=args.reference,
                  reference_store=args.reference_store, seed=args.seed, device=device, out_dir=out,
                  progress=args.progress, log=_say, baselines=args.baseline, workers=args.workers,
                  zero_cost_batch=args.zero_cost_batch, repeats=args.proxy_repeats,
                  vectorize=args.vectorize_repeats)
    _say(f"results: {out / 'validation.json'}, {out / 'validation.csv'} (one line per contender), "
         f"{out / 'validation_archs.csv'} (one line per architecture)")
    _tell(callbacks, "on_validate", result)
    if args.json:
        from ..pipeline import validation_summary

        _emit_json(validation_summary(result, out))
    return 0


def _run_method_settings(args) -> dict:
    """``run``'s method settings: :func:`_settings`, plus ``--precision`` (resolved) as the method's own
    ``precision`` when it takes one and ``--set`` gives neither it nor ``compile=true`` (fp32 only)."""
    from ..distill import method_class

    settings = _settings(args, [args.method])
    if ("precision" in method_class(args.method)._param_names() and "precision" not in settings
            and not settings.get("compile")):
        settings["precision"] = _precision(args)
    return settings


def cmd_run(args) -> int:
    from ..defaults import RUNS_DIR
    from ..pipeline import RunConfig, resolve_device, run

    device = resolve_device(args.device)
    if args.out is not None and args.out_root is not None:
        raise ConfigError("--out and --out-root both given", "pass --out DIR (exactly DIR) or --out-root ROOT "
                          "(ROOT/<name>)")
    config = RunConfig(  # run() checks the backend's flags before any work
        name=args.name, data=_data_spec(args), method=args.method, ipc=args.ipc,
        method_settings=_run_method_settings(args),
        budget=args.budget, space=args.space, n_trials=args.trials, backend=args.backend, sampler=args.sampler,
        strategy=args.strategy, pruner=args.pruner,
        storage=args.storage, study_name=args.study_name, objectives=args.objectives, workers=args.workers,
        retrain_top=args.retrain_top, proxy_train=_train_config(args),
        full_train=_full_config(args), n_archs=args.archs, top_k=args.top_k, n_bootstrap=args.bootstrap,
        eval_seeds=args.eval_seeds, seed=args.seed, device=device, out_root=str(args.out_root or RUNS_DIR),
        out=None if args.out is None else str(args.out), store=args.store, reference_store=args.reference_store,
        relabel=args.relabel, teacher_epochs=args.teacher_epochs, temperature=args.temperature,
        prefetch=args.prefetch,
    )
    summary = run(config, progress=args.progress, log=_say, callbacks=_callbacks(args))
    _say(f"outputs: {config.out_dir}/")
    if args.json:
        _emit_json(summary)
    return 0


def cmd_experts(args) -> int:
    from ..pipeline import experts_step, resolve_device

    device = resolve_device(args.device)
    dataset = _data_spec(args).load()
    buffer = experts_step(dataset, method=args.method, num_experts=args.num_experts, train_epochs=args.train_epochs,
                          net=args.net, space=args.space, lr=args.lr, batch_size=args.batch_size, augment=args.augment,
                          budget=args.budget, seed=args.seed, device=device, root=args.store, progress=args.progress,
                          log=_say)
    sets = " ".join(f"--set {k}={'none' if v is None else v}" for k, v in buffer.mtt_settings().items())
    data = " ".join([*dataset.load_flags(), *([f"--data-root {args.data_root}"] if args.data_root else [])])
    command = f"nasdistill distill --method {args.method} {data} {sets}"  # the slice too: it keys the buffer
    _say(f"expert buffer: {buffer.dir_} ({args.method} matches it with: {command})")
    if args.out is not None:
        from .._io import write_json

        path = write_json(args.out / "experts.json", {
            "dir": str(buffer.dir_), "method": args.method, "num_experts": buffer.num_experts,
            "train_epochs": buffer.train_epochs, "arch_id": buffer.arch_id, "trained": buffer.trained_,
            "reused": buffer.reused_, "settings": buffer.mtt_settings(), "command": command})
        _say(f"experts: {path}")
    return 0


def cmd_report(args) -> int:
    from ..report import write_report

    paths = write_report(args.run_dir)
    for role, path in paths.items():
        _say(f"{role}: {path}")
    return 0


def cmd_dashboard(args) -> int:
    from ..dashboard import serve

    serve(args.run_dir, host=args.host, port=args.port, storage=args.storage, log=_say)
    return 0


def cmd_list(args) -> int:
    if args.what == "datasets":
        from ..data import dataset_names

        items = dataset_names()
    elif args.what == "methods":
        from ..distill import method_class, method_names

        items = [f"{n:10} {method_class(n).summary}" for n in method_names()]
    elif args.what == "spaces":
        from ..spaces import get_space, space_names

        items = [f"{n:10} {get_space(n).size() or 'unbounded'} architectures" for n in space_names()]
    elif args.what == "backends":
        from ..search.backend import BACKENDS, backend_class

        items = [f"{n:10} {_first_sentence(backend_class(n))}" for n in BACKENDS.names()]
    else:
        from ..search.backend import BACKENDS, backend_class

        backends = [backend_class(n) for n in ("optuna", "nni")]
        backends += [backend_class(n) for n in BACKENDS.names() if n not in ("optuna", "nni")]
        items = [f"{n:10} {b.name:7} {_first_sentence(obj)}" for b in backends for n, obj in b.choices()]
        how = "; ".join(f"{b.name}: {b.choice_flag}" for b in backends if b.choice_flag)
        items = [f"{'name':10} {'backend':7} ({how})", *items]
    print("\n".join(items))
    return 0


def _first_sentence(obj) -> str:
    """The first sentence of ``obj``'s docstring, without reST markup."""
    import re

    doc = " ".join((obj.__doc__ or "").strip().split("\n\n")[0].split())
    doc = re.sub(r":\w+:`([^`]*)`", r"\1", doc).replace("``", "").replace("`", "")
    return re.split(r"(?<=\.)\s+(?=[A-Z])", doc)[0]


COMMANDS = {"distill": cmd_distill, "search": cmd_search, "validate": cmd_validate, "run": cmd_run,
            "experts": cmd_experts, "report": cmd_report, "dashboard": cmd_dashboard, "list": cmd_list}
