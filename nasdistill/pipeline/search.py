"""Search on the proxy with a registered backend; retrain the best architectures on the full data."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from .._io import write_json, write_text
from ..data import ImageDataset, Proxy
from ..defaults import DEFAULT_FULL_TRAIN, DEFAULT_N_TRIALS, DEFAULT_PROXY_TRAIN, DEFAULT_SPACE
from ..search import ProxyEvaluator, SearchResult
from ..search.backend import BACKENDS, backend_class
from ..spaces import SearchSpace, get_space
from ..training import TrainConfig
from ..progress import progress_bar, resolve_disable
from ..validate import Context, ReferenceKey, ReferenceStore, budget_key, train_reference
from .log import Log, quiet

if TYPE_CHECKING:
    from ..search import SearchBackend


#: Search backends (:data:`nasdistill.search.BACKENDS`): ``optuna`` (samplers, pruners, storages,
#: workers), ``nni`` (NNI 3.0 strategies, in this process, results in memory) and any registered
#: with :func:`nasdistill.search.register_backend`; each writes ``best_arch.json`` + ``trials.csv``.
SEARCH_BACKENDS = BACKENDS


def check_backend(backend: str, *, space: SearchSpace | str | None = None, sampler: str | None = None,
                  strategy: str | None = None, pruner: str | None = "none", storage: str | None = None,
                  workers: int = 1, worker_index: int | None = None, objectives: str | Sequence[str] = "accuracy",
                  study_name: str | None = None) -> None:
    """Fail with one line, before any work, on settings ``backend`` cannot use
    (:meth:`SearchBackend.check_options <nasdistill.search.SearchBackend.check_options>` of the
    backend registered under that name).

    ``sampler``/``pruner``/``storage``/``workers``/``worker_index``/``objectives`` belong to the
    Optuna backend, ``strategy`` to the NNI one (None means "not given"). With ``nni`` NNI must be
    importable (else ``pip install "nasdistill[nni]"``) and the strategy known; a grid (either
    backend) needs a finite categorical space.
    """
    backend_class(backend).check_options(space=space, sampler=sampler, strategy=strategy, pruner=pruner,
                                         storage=storage, workers=workers, worker_index=worker_index,
                                         objectives=objectives)


def search_step(dataset: ImageDataset, proxy: Proxy, *, space: SearchSpace | str = DEFAULT_SPACE,
                n_trials: int = DEFAULT_N_TRIALS,
                sampler: str | None = None, pruner: str = "none", storage: str | None = None,
                study_name: str = "nasdistill", train: TrainConfig | None = None, seed: int = 0, device: str = "cpu",
                out_dir: str | os.PathLike, progress: bool | None = None, log: Log = quiet,
                objectives: str = "accuracy", workers: int = 1, worker_index: int | None = None,
                retrain_top: int = 0, full_train: TrainConfig | None = None,
                reference_store: str | None = None, backend: str = "optuna",
                strategy: str | None = None) -> "SearchBackend":
    """Search ``space`` scored by training on the proxy, accuracy on real validation data.

    ``backend="optuna"`` (default): an Optuna study with ``sampler`` (default ``tpe``), ``pruner``
    and ``storage`` (default ``OUT/study.db``); ``objectives`` adds cost objectives
    (``accuracy,params``: a Pareto front in ``pareto.csv``); ``workers`` runs the study in that
    many local processes. ``backend="nni"``: an NNI ``strategy`` (default ``evolution``; random,
    evolution, tpe, grid) in this process, NNI's log in ``OUT/nni.log``. Both write
    ``best_arch.json`` and ``trials.csv``; ``retrain_top`` > 0 then trains the best architectures
    on the full data (:func:`retrain_top_archs`; ``search.retrain_``, ``retrain.csv``).
    """
    check_backend(backend, space=space, sampler=sampler, strategy=strategy, pruner=pruner, storage=storage,
                  workers=workers, worker_index=worker_index, objectives=objectives)
    evaluator = ProxyEvaluator(get_space(space), proxy, dataset, train or DEFAULT_PROXY_TRAIN, device=device, seed=seed)
    out = Path(out_dir)  # created once the proxy, the data and the space are known to fit
    out.mkdir(parents=True, exist_ok=True)
    search = backend_class(backend).from_options(
        get_space(space), evaluator, out_dir=out, n_trials=n_trials, seed=seed, study_name=study_name,
        progress=progress, sampler=sampler, strategy=strategy, pruner=pruner, storage=storage, objectives=objectives,
        workers=workers, worker_index=worker_index).run()
    search.export(out)
    result = search.result_
    log(f"search: {len(result.trials)} trials {search.where()}; best {result.best['arch_id']} "
        f"(val acc {result.best['value']:.4f})"
        + (f"; Pareto front of {len(result.pareto)} architectures in {out / 'pareto.csv'}" if result.pareto else ""))
    if retrain_top > 0:
        result.retrain = retrain_top_archs(dataset, result, retrain_top, space=space,
                                           full_train=full_train or DEFAULT_FULL_TRAIN, seed=seed, device=device,
                                           reference_store=reference_store, out_dir=out, progress=progress, log=log)
    return search


def retrain_top_archs(dataset: ImageDataset, trials: SearchResult | list[dict], k: int, *,
                      space: SearchSpace | str = DEFAULT_SPACE,
                      full_train: TrainConfig | None = None, seed: int = 0, device: str = "cpu",
                      reference_store: str | None = None, out_dir: str | os.PathLike | None = None,
                      progress: bool | None = None, log: Log = quiet) -> list[dict]:
    """Train the ``k`` best distinct architectures of a search (its :class:`SearchResult`, or rows
    of ``search.trials_``; best ``value`` first) on the full training split and score them on the
    test split. :func:`search_step` keeps what this returns in ``result.retrain`` (``search.retrain_``).

    Returns one dict per architecture: ``rank, trial, arch_id, arch, proxy_score`` (the search's
    validation accuracy after proxy training) beside ``test_acc`` and ``full_val_acc`` (after
    full-data training), ``params``, ``full_time_s`` and ``reused``. Results go through the reference
    store, so an architecture trained before with the same budget and seed is not trained again.
    Writes ``retrain.json`` / ``retrain.csv`` into ``out_dir`` when given.
    """
    from ..search import top_rows

    space = get_space(space)
    config = (full_train or DEFAULT_FULL_TRAIN).replace(seed=seed)
    ctx = Context(dataset=dataset, space=space, seed=seed, proxy_train=DEFAULT_PROXY_TRAIN, full_train=config,
                  device=device)
    rows = trials.top(k) if isinstance(trials, SearchResult) else top_rows(trials, k)
    results = []
    with ReferenceStore(reference_store) as store:
        for rank, row in enumerate(progress_bar(rows, desc="retrain top", unit="arch",
                                                disable=resolve_disable(progress)), 1):
            arch = row.get("arch") or space.parse_id(row["arch_id"])
            key = ReferenceKey(dataset=dataset.fingerprint, space=space.name, arch_id=row["arch_id"],
                               budget=budget_key(config), seed=seed)
            ref, reused = store.get(key), True
            if ref is None:
                ref, reused = store.put(key, train_reference(ctx, arch)), False
            results.append({"rank": rank, "trial": row["number"], "arch_id": row["arch_id"], "arch": dict(arch),
                            "proxy_score": row["value"], "test_acc": ref.test_acc, "full_val_acc": ref.val_acc,
                            "params": ref.params, "full_time_s": ref.wall_time, "reused": reused})
    if out_dir is not None:
        columns = ["rank", "trial", "arch_id", "proxy_score", "test_acc", "full_val_acc", "params", "full_time_s",
                   "reused"]
        lines = [",".join(columns)] + [",".join(_csv_cell(r[c]) for c in columns) for r in results]
        write_json(Path(out_dir) / "retrain.json", {"k": k, "full_train": config.budget(), "seed": seed,
                                                    "dataset": dataset.describe(), "results": results})
        write_text(Path(out_dir) / "retrain.csv", "\n".join(lines) + "\n")
    log(f"retrained the top {len(results)} on the full training data ({config.epochs or config.steps} "
        f"{'epochs' if config.epochs else 'steps'}):\n" + "\n".join(
            f"  {r['rank']}. {r['arch_id']}: proxy val acc {r['proxy_score']:.4f} -> full-data test acc "
            f"{r['test_acc']:.4f}" + (" (reused)" if r["reused"] else "") for r in results))
    return results


def _csv_cell(v) -> str:
    text = "" if v is None else repr(v) if isinstance(v, float) else str(v)
    return f'"{text}"' if "," in text else text


__all__ = ["SEARCH_BACKENDS", "check_backend", "search_step", "retrain_top_archs"]
