"""distil -> search -> validate, as plain functions the CLI (and AutoML code) call.

Each step takes objects and settings, writes its outputs atomically under an output folder and
returns the fitted objects, so a pipeline can run one step, several, or all (:func:`run`).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import torch

from ._params import is_whole
from ._io import write_json, write_text
from ._seed import derive_seed
from .data import ImageDataset, Proxy, load_dataset
from .data.proxy import PROXY_FILE
from .defaults import (DEFAULT_FULL_TRAIN, DEFAULT_N_ARCHS, DEFAULT_N_BOOTSTRAP, DEFAULT_N_TRIALS, DEFAULT_PROXY_TRAIN,
                       DEFAULT_SPACE, DEFAULT_TOP_K, QUICKSTART_FULL_TRAIN, QUICKSTART_N_ARCHS, QUICKSTART_PROXY_TRAIN,
                       QUICKSTART_TRIALS, RUNS_DIR)
from .checks import check_method_settings
from .distill import distill, get_method, method_class, method_names
from .errors import ConfigError
from .search import ProxyEvaluator, SearchResult
from .search.backend import BACKENDS, backend_class
from .spaces import SearchSpace, get_space
from .training import TrainConfig, fit_evaluate
from .progress import progress_bar, resolve_disable
from .validate import (Context, ReferenceKey, ReferenceStore, ValidationResult, budget_key, train_reference,
                       validate)
from .work.launch import torch_threads

if TYPE_CHECKING:
    from .search import SearchBackend

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def resolve_device(device: str | None) -> str:
    """``auto`` (or None) -> ``cuda`` when available, else ``cpu``; anything else is checked."""
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"unknown device {device!r}", "use cpu, cuda, cuda:N or auto") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} asked for but no CUDA GPU is available", "use --device cpu")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise ConfigError(f"device {device!r} asked for but this machine has {n} CUDA GPU(s)",
                              f"use cuda:0 to cuda:{n - 1}, or cuda")
    elif dev.type == "meta":
        raise ConfigError("device 'meta' holds no data: nothing can be trained on it", "use --device cpu or cuda")
    elif dev.type != "cpu":
        try:  # another backend (mps, xpu...): usable when this PyTorch build and machine have it
            torch.empty(1, device=dev).add_(1)
        except Exception as e:  # noqa: BLE001 - each backend fails in its own way (NotImplemented, Assertion...)
            first = ("this PyTorch build has no kernels for it" if isinstance(e, NotImplementedError)
                     else (str(e).splitlines() or [type(e).__name__])[0][:120])
            raise ConfigError(f"device {device!r} is not available here ({first})", "use --device cpu or cuda") from e
    return str(dev)


@dataclass
class DataSpec:
    """Which dataset, where it lives and how it is sliced and split."""

    name: str = "digits"
    root: str | None = None
    download: bool = False
    train_per_class: int | None = None
    test_per_class: int | None = None
    val_per_class: int | None = None
    seed: int = 0
    #: read an ``imagefolder:PATH`` tree or a torchvision dataset (:data:`STREAMABLE`) from its
    #: memory-mapped uint8 cache instead of RAM (:mod:`nasdistill.data.stream`)
    stream: bool = False
    resolution: int | None = None

    @classmethod
    def from_proxy(cls, proxy: Proxy, *, name: str | None = None, root: str | None = None, download: bool = False,
                   train_per_class: int | None = None, test_per_class: int | None = None,
                   val_per_class: int | None = None, stream: bool | None = None,
                   resolution: int | None = None) -> "DataSpec":
        """The data ``proxy`` was distilled from: its dataset name, slices, split seed and whether it
        was streamed (at which resolution), each replaced by the argument given (not None). A proxy
        that does not record its dataset needs ``name``."""
        recorded = proxy.meta.get("dataset", {})
        info = recorded.get("info", {})
        name = name or recorded.get("name")
        if not name:
            raise ConfigError("the proxy does not record its dataset", "pass --data NAME")
        given = {"train_per_class": train_per_class, "test_per_class": test_per_class, "val_per_class": val_per_class}
        streamed = info.get("source") == "stream"
        return cls(name=name, root=root, download=download, seed=info.get("seed") or 0,
                   stream=bool(stream) if stream is not None else streamed,
                   resolution=resolution if resolution is not None else info.get("resolution"),
                   **{k: v if v is not None else info.get(k) for k, v in given.items()})

    def load(self) -> ImageDataset:
        if self.stream:
            return self._load_streamed()
        return load_dataset(self.name, root=self.root, download=self.download,
                            train_per_class=self.train_per_class, test_per_class=self.test_per_class,
                            val_per_class=self.val_per_class, seed=self.seed, resolution=self.resolution)


    def _load_streamed(self) -> ImageDataset:
        from .data import SOURCES, default_root
        from .data.stream import StreamingDataset, build_array_cache, build_cache

        base, _, arg = self.name.partition(":")
        limits = dict(resolution=self.resolution, train_per_class=self.train_per_class,
                      test_per_class=self.test_per_class)
        if base == "imagefolder":
            folder = build_cache(arg, **limits)
        elif base in STREAMABLE:
            root = Path(self.root) if self.root is not None else default_root()
            raw = SOURCES.get(base)(None, root=root, download=self.download)  # torchvision holds it as uint8
            folder = build_array_cache(base, raw, **limits)
            del raw
        else:
            raise ConfigError(f"--stream reads ImageFolder trees and torchvision's datasets, not {self.name!r}",
                              f"pass --data imagefolder:PATH or one of {', '.join(STREAMABLE)}, or leave --stream out")
        return StreamingDataset(folder).as_image_dataset(name=None if base == "imagefolder" else base,
                                                         val_per_class=self.val_per_class, seed=self.seed)


#: torchvision names ``--stream`` accepts (their arrays are written into the streaming cache once)
STREAMABLE = ("mnist", "fashion_mnist", "cifar10", "cifar100", "svhn")


# --- distil ------------------------------------------------------------------------------------
def method_settings(method: str, settings: dict | None, *, budget: str = "auto", device: str = "cpu") -> dict:
    """The method's settings: its paper defaults, replaced by its CPU preset when ``budget`` is
    ``cpu`` (or ``auto`` on a CPU), then by explicit ``settings``."""
    cls = method_class(method)
    if budget not in ("auto", "cpu", "paper"):
        raise ConfigError(f"unknown budget {budget!r}", "use auto, cpu or paper")
    use_cpu = budget == "cpu" or (budget == "auto" and not str(device).startswith("cuda"))
    merged = cls.preset("cpu" if use_cpu else "paper", self_prepare=False)
    given = {k: v for k, v in (settings or {}).items() if v is not None}
    merged.update(check_method_settings(cls, given))
    return merged


def distill_step(dataset: ImageDataset, method: str, *, ipc: int, settings: dict | None = None,
                 budget: str = "auto", seed: int = 0, device: str = "cpu", out_dir: str | os.PathLike | None = None,
                 store: str | os.PathLike | None | bool = None, progress: bool | None = None,
                 log: Log = _quiet, relabel: str | None = None, teacher_epochs: int | None = None,
                 temperature: float = 1.0) -> Proxy:
    """Distil (or reuse) a proxy; copy it to ``out_dir/proxy.{safetensors,json,png}``.

    With ``relabel`` (a teacher architecture id of the ``convnet`` space) the proxy's labels become
    that teacher's soft labels at ``temperature`` (:func:`relabel_step`); the proxy written is the
    relabelled one and its meta records the teacher.
    """
    params = method_settings(method, settings, budget=budget, device=device)
    if relabel is not None:  # a bad teacher is refused before any work
        make_teacher(relabel, teacher_epochs=teacher_epochs, seed=seed, device=device)
    out = Path(out_dir) if out_dir else None
    proxy = distill(dataset, method, ipc=ipc, seed=seed, device=device, store=store,
                    checkpoint_dir=out / "checkpoints" if out else None, progress=progress, log=log, **params)
    if not proxy.meta.get("reused"):
        log(f"distilled {method} proxy ({len(proxy)} images, ipc {ipc}) in {proxy.meta.get('wall_time_s', 0):.1f}s"
            + (f", resumed from iteration {proxy.meta['resumed_from_iteration']}"
               if proxy.meta.get("resumed_from_iteration") else ""))
    if relabel is not None:
        proxy = relabel_step(dataset, proxy, teacher=relabel, teacher_epochs=teacher_epochs, temperature=temperature,
                             seed=seed, device=device, log=log)
    from .distill.parallel import is_writer

    if out is not None and is_writer():  # under torchrun only rank 0 writes
        path = proxy.save(out / PROXY_FILE)
        proxy.save_grid(out / "proxy.png")
        ckpt_dir = out / "checkpoints"
        if ckpt_dir.is_dir() and not any(ckpt_dir.iterdir()):
            ckpt_dir.rmdir()
        proxy.meta["out_path"] = str(path)
    return proxy


def make_teacher(arch: str, *, teacher_epochs: int | None = None, seed: int = 0, device: str = "cpu"):
    """An unfitted :class:`~nasdistill.distill.relabel.Teacher` of ``arch`` (checked here: a bad id
    or epoch count is a :class:`ConfigError` before any work)."""
    from .distill.relabel import Teacher, default_teacher_train

    if teacher_epochs is not None and (not is_whole(teacher_epochs) or teacher_epochs < 1):
        raise ConfigError(f"--teacher-epochs must be an integer >= 1, got {teacher_epochs!r}", "pass e.g. 10")
    budget = default_teacher_train(device, **({} if teacher_epochs is None else {"epochs": int(teacher_epochs)}))
    teacher = Teacher(arch=arch, train=budget, seed=seed, device=device)
    teacher._arch()
    return teacher


def relabel_step(dataset: ImageDataset, proxy: Proxy, *, teacher: str, teacher_epochs: int | None = None,
                 temperature: float = 1.0, seed: int = 0, device: str = "cpu", log: Log = _quiet) -> Proxy:
    """``proxy`` with the soft labels of a ``teacher`` (an architecture id of the ``convnet`` space)
    trained on ``dataset``'s full training split (or reloaded from ``$NASDISTILL_HOME/teachers``)
    for ``teacher_epochs`` (None: :func:`~nasdistill.distill.relabel.default_teacher_train`'s)."""
    from .distill.relabel import relabel

    fitted = make_teacher(teacher, teacher_epochs=teacher_epochs, seed=seed, device=device).fit(dataset)
    log(f"teacher {fitted.arch_id_}: test acc {fitted.test_acc_:.4f} "
        + ("(reused)" if fitted.reused_ else f"(trained in {fitted.wall_time_:.1f}s)"))
    return relabel(proxy, fitted, temperature=temperature)


# --- distil to a fidelity target ---------------------------------------------------------------------
def target_step(dataset: ImageDataset, *, target: float, methods: Sequence[str], ipcs: Sequence[int],
                settings: dict | None = None, budget: str = "auto", metric: str | None = None,
                bound: str = "value", n_archs: int = DEFAULT_N_ARCHS, space: SearchSpace | str = DEFAULT_SPACE,
                proxy_train: TrainConfig | None = None, full_train: TrainConfig | None = None,
                n_bootstrap: int = DEFAULT_N_BOOTSTRAP, time_budget_s: float | None = None, max_candidates: int | None = None,
                seed: int = 0, device: str = "cpu", out_dir: str | os.PathLike | None = None,
                store: str | os.PathLike | None | bool = None, reference_store: str | None = None,
                progress: bool | None = None, log: Log = _quiet):
    """Distil (method, ipc) candidates cheapest first until one's validated ``metric`` reaches
    ``target`` or the budget is spent (:class:`~nasdistill.target.FidelitySearch`); returns the
    :class:`~nasdistill.target.TargetResult`.

    ``settings`` (``--set``, ``--iterations``...) go to every method that takes them, over the
    ``budget`` preset (:func:`method_settings`). With ``out_dir``: the kept proxy
    (``proxy.safetensors``/``.json``/``.png``), its ``validation.*``, ``target.json`` and its report
    (:func:`report_step`).
    """
    from .target import DEFAULT_METRIC, FidelitySearch, settings_by_method

    per_method = settings_by_method(methods, settings)
    params = {m: method_settings(m, per_method[m], budget=budget, device=device) for m in per_method}
    out = Path(out_dir) if out_dir else None
    search = FidelitySearch(target=target, methods=list(methods), ipcs=list(ipcs), metric=metric or DEFAULT_METRIC,
                            bound=bound, method_settings=params, seed=seed, n_archs=n_archs, space=space,
                            proxy_train=proxy_train, full_train=full_train, n_bootstrap=n_bootstrap,
                            time_budget_s=time_budget_s, max_candidates=max_candidates, device=device, store=store,
                            reference_store=reference_store, progress=progress,
                            checkpoint_dir=out / "checkpoints" if out else None)
    result = search.run(dataset, log=log)
    if out is not None:
        result.save(out)
        ckpt_dir = out / "checkpoints"
        if ckpt_dir.is_dir() and not any(ckpt_dir.iterdir()):
            ckpt_dir.rmdir()
        report_step(out, log=log)
    return result


# --- expert trajectories (mtt) ---------------------------------------------------------------------
def expert_methods() -> list[str]:
    """The methods that match expert trajectories (their class maps ``nasdistill experts``'s options)."""
    return [m for m in method_names() if method_class(m).expert_options]


def experts_step(dataset: ImageDataset, *, method: str = "mtt", num_experts: int | None = None,
                 train_epochs: int | None = None, net: str | None = None, space: str | None = None,
                 lr: float | None = None, batch_size: int | None = None, augment: str | None = None,
                 budget: str = "auto", seed: int = 0, device: str = "cpu", root: str | os.PathLike | None = None,
                 progress: bool | None = None, log: Log = _quiet):
    """Train (or reuse) the expert trajectories that ``method`` matches (its
    :meth:`~nasdistill.distill.Distiller.prepare`) and return the built
    :class:`~nasdistill.distill.experts.ExpertBuffer`.

    The options are named as ``nasdistill experts`` names them; the method's ``expert_options``
    maps them to its settings (``mtt``: ``lr`` is ``lr_teacher``, ``seed`` is ``expert_seed``,
    ``root`` is ``experts_dir``...). Options left as None take the method's values for ``budget``
    (its paper defaults, or its CPU preset), so ``nasdistill experts`` builds exactly the buffer
    ``nasdistill distill --method mtt`` with the same budget looks for.
    """
    cls = method_class(method)
    names = cls.expert_options
    if not names:
        raise ConfigError(f"method {method!r} matches no expert trajectories",
                          f"use --method {' or '.join(expert_methods())}")
    given = {"num_experts": num_experts, "train_epochs": train_epochs, "net": net, "space": space, "lr": lr,
             "batch_size": batch_size, "augment": augment}
    params = method_settings(method, {names[k]: v for k, v in given.items()}, budget=budget, device=device)
    if augment in ("none", ""):
        params[names["augment"]] = None
    params[names["seed"]] = seed
    params[names["root"]] = str(root) if root else None
    buffer = cls(**params, device=device).prepare(dataset, progress=progress, log=log)
    log(f"experts: {buffer.num_experts} x {buffer.train_epochs} epochs of {buffer.arch_id} on {dataset.name} "
        f"({len(buffer.trained_)} trained now, {len(buffer.reused_)} reused) in {buffer.dir_}")
    return buffer


# --- proxy vs random -----------------------------------------------------------------------------
def compare_with_random(dataset: ImageDataset, proxy: Proxy, *, space: SearchSpace | str = DEFAULT_SPACE,
                        arch: dict | None = None, train: TrainConfig, eval_seeds: int = 1, device: str = "cpu",
                        store: str | os.PathLike | None | bool = None) -> dict:
    """Test accuracy of one architecture trained on the proxy vs on a random class-balanced subset
    of equal size, averaged over ``eval_seeds`` trainings."""
    space = get_space(space)
    arch = arch or space.default_arch()
    if arch is None:
        raise ConfigError(f"space {space.name!r} has no default architecture", "pass an architecture")
    seed = int(proxy.meta.get("seed", 0))
    subset = distill(dataset, "random", ipc=proxy.ipc, seed=seed, store=store)
    out: dict = {"arch_id": space.arch_id(arch), "ipc": proxy.ipc, "eval_seeds": eval_seeds}
    for label, p in (("proxy", proxy), ("random", subset)):
        accs = []
        for s in range(eval_seeds):
            model = space.build_seeded(arch, dataset.image_shape, dataset.num_classes, s)
            acc, _ = fit_evaluate(model, p.images, p.labels, dataset.x_test, dataset.y_test, train.replace(seed=s),
                                  device=device)
            accs.append(acc)
        t = torch.tensor(accs)
        out[f"{label}_acc"] = float(t.mean())
        out[f"{label}_acc_std"] = float(t.std()) if len(accs) > 1 else 0.0
        out[f"{label}_accs"] = accs
    return out


# --- search ------------------------------------------------------------------------------------
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
                out_dir: str | os.PathLike, progress: bool | None = None, log: Log = _quiet,
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
                      progress: bool | None = None, log: Log = _quiet) -> list[dict]:
    """Train the ``k`` best distinct architectures of a search (its :class:`SearchResult`, or rows
    of ``search.trials_``; best ``value`` first) on the full training split and score them on the
    test split. :func:`search_step` keeps what this returns in ``result.retrain`` (``search.retrain_``).

    Returns one dict per architecture: ``rank, trial, arch_id, arch, proxy_score`` (the search's
    validation accuracy after proxy training) beside ``test_acc`` and ``full_val_acc`` (after
    full-data training), ``params``, ``full_time_s`` and ``reused``. Results go through the reference
    store, so an architecture trained before with the same budget and seed is not trained again.
    Writes ``retrain.json`` / ``retrain.csv`` into ``out_dir`` when given.
    """
    from .search import top_rows

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


# --- validate ----------------------------------------------------------------------------------
def validate_step(dataset: ImageDataset, proxy: Proxy | Sequence[Proxy], *, space: SearchSpace | str = DEFAULT_SPACE,
                  n_archs: int = DEFAULT_N_ARCHS, proxy_train: TrainConfig | None = None,
                  full_train: TrainConfig | None = None, top_k: int | float | Sequence[int | float] = DEFAULT_TOP_K,
                  n_bootstrap: int = DEFAULT_N_BOOTSTRAP,
                  reference_store: str | None = None, seed: int = 0, device: str = "cpu",
                  out_dir: str | os.PathLike | None = None, progress: bool | None = None, log: Log = _quiet,
                  baselines: Sequence[str] = (), workers: int = 1,
                  zero_cost_batch: int | None = None, report: bool = True, reference=None,
                  repeats: int = 1, vectorize: bool = False) -> ValidationResult:
    """Rank ``n_archs`` sampled architectures with each proxy (and each baseline: ``early-stop``,
    ``zero-cost``...) and by full-data training; compare, cost, test, and write ``validation.*``
    (and, unless ``report`` is False, ``report.html`` / ``report.md``: :func:`report_step`).
    Budgets left None are the library's (:mod:`nasdistill.defaults`), as for :func:`~nasdistill.validate.validate`.
    ``reference``: a reference table (or its path) whose architectures and full-data results are used.
    ``repeats`` > 1: each proxy scores an architecture by the mean of that many seeded trainings;
    ``vectorize``: those trainings run at once under ``torch.func.vmap`` (for GPUs; the same scores to
    float rounding)."""
    proxies = [proxy] if isinstance(proxy, Proxy) else list(proxy)
    if repeats != 1 or vectorize:
        from .validate import ProxyContender

        proxies = [ProxyContender(p, repeats=repeats, vectorize=vectorize) for p in proxies]
    extra = {} if zero_cost_batch is None else {"zero_cost_batch": zero_cost_batch}
    if reference is not None:
        extra["reference"] = reference
    result = validate(proxies, data=dataset, space=space, baselines=baselines, n_archs=n_archs, seed=seed,
                      proxy_train=proxy_train, full_train=full_train, top_k=top_k, n_bootstrap=n_bootstrap,
                      store=reference_store, device=device, workers=workers, progress=progress, log=log, **extra)
    if out_dir is not None:
        result.save(out_dir)
    m, ref = result.primary.metrics, result.reference
    log(f"validation: Spearman {m['spearman']:.3f} [{m['spearman_ci'][0]:.3f}, {m['spearman_ci'][1]:.3f}] over "
        f"{len(result.archs)} architectures ({ref['n_trained']} trained on full data, {ref['n_reused']} reused)\n"
        + result.table())
    why = result.why_undefined()
    if why:
        log(f"note: {why}")
    if out_dir is not None and report:
        report_step(out_dir, log=log)
    return result


# --- report ------------------------------------------------------------------------------------
def report_step(out_dir: str | os.PathLike, *, log: Log = _quiet) -> dict[str, Path]:
    """Write ``report.html``, ``report.md`` and the figures of ``out_dir`` (:func:`nasdistill.report.write_report`).

    The results are already saved when this runs, so a report that cannot be written is logged
    (with the command that retries it) rather than raised; returns {} then.
    """
    from .report import write_report

    try:
        paths = write_report(out_dir)
    except Exception as e:  # never lose a finished run to its report
        log(f"report: not written ({type(e).__name__}: {e}); retry with: nasdistill report {out_dir}")
        return {}
    log(f"report: {paths['html']}, {paths['md']}")
    return paths


# --- everything --------------------------------------------------------------------------------
@dataclass
class RunConfig:
    """Settings of ``nasdistill run``. Defaults finish in a few minutes on 2 CPU cores with ``digits``."""

    name: str = "quickstart"
    data: DataSpec = field(default_factory=DataSpec)
    method: str = "dm"
    ipc: int = 10
    method_settings: dict = field(default_factory=dict)
    budget: str = "auto"
    space: str = DEFAULT_SPACE
    n_trials: int = QUICKSTART_TRIALS
    backend: str = "optuna"  # or "nni"
    sampler: str | None = None  # Optuna backend (None: tpe)
    strategy: str | None = None  # NNI backend (None: evolution)
    pruner: str = "none"
    storage: str | None = None
    study_name: str | None = None
    objectives: str = "accuracy"
    workers: int = 1
    retrain_top: int = 0
    proxy_train: TrainConfig = field(default_factory=lambda: QUICKSTART_PROXY_TRAIN.replace())
    full_train: TrainConfig = field(default_factory=lambda: QUICKSTART_FULL_TRAIN.replace())
    n_archs: int = QUICKSTART_N_ARCHS
    top_k: int | float | tuple = DEFAULT_TOP_K
    n_bootstrap: int = DEFAULT_N_BOOTSTRAP
    eval_seeds: int = 2
    seed: int = 0
    device: str = "cpu"
    out_root: str = str(RUNS_DIR)
    out: str | None = None  #: write into exactly this folder; None: ``out_root/name``
    store: str | None = None
    reference_store: str | None = None
    relabel: str | None = None  # a teacher architecture id: the proxy gets its soft labels
    teacher_epochs: int | None = None
    temperature: float = 1.0
    #: train the validation's full-data references in a background process (one thread, taken from
    #: this process's) while the proxy is distilled and searched; the same results. Off by default:
    #: on 2 cores it made the quick start slower (measured 71 s -> 93 s), as the main process already
    #: uses both; it pays where cores or a GPU sit idle beside the main process.
    prefetch: bool = False

    @property
    def out_dir(self) -> Path:
        """``out`` when given (exactly that folder, as ``--out`` for every command), else ``out_root/name``."""
        return Path(self.out) if self.out else Path(self.out_root) / self.name


@contextlib.contextmanager
def _prefetching(dataset: ImageDataset, validation: dict, config: "RunConfig", log: Log) -> Iterator[bool]:
    """With ``config.prefetch``, a background process trains the validation's full-data references
    while the block distils and searches (:func:`~nasdistill.validate.prefetch_references`), on one
    of this process's threads; yields whether it runs (not on one CPU core, nor with a store that
    cannot be shared), and stops it when the block ends."""
    group = None
    if config.prefetch and (os.cpu_count() or 1) >= 2:
        from .validate import prefetch_references

        settings = {k: v for k, v in validation.items() if k != "reference_store"}
        try:
            group = prefetch_references(dataset, store=validation["reference_store"], **settings)
            log("training the validation's full-data references in a background process (--prefetch)")
        except ConfigError as e:
            log(f"references not trained in the background: {e}")
    # the cores are shared: OpenMP threads beyond them stall each other (measured ~4-10x)
    share = max(1, torch.get_num_threads() - 1) if group is not None else None
    try:
        with torch_threads(share):
            yield group is not None
    finally:
        if group is not None:
            group.stop()  # finished by now, unless the run failed
            group.close()


def run(config: RunConfig, *, progress: bool | None = None, log: Log = print, callbacks: Sequence = ()) -> dict:
    """distil -> compare with a random subset -> search -> validate; write ``summary.json``/``summary.md``.

    ``callbacks``: :class:`~nasdistill.tracking.Callback` objects told of each step as it finishes
    (e.g. :class:`~nasdistill.tracking.MLflowTracker`)."""

    def tell(event: str, obj) -> None:
        for cb in callbacks:
            getattr(cb, event, lambda _obj: None)(obj)

    t0 = time.perf_counter()
    check_backend(config.backend, space=config.space, sampler=config.sampler, strategy=config.strategy,
                  pruner=config.pruner, storage=config.storage, workers=config.workers, objectives=config.objectives)
    out = config.out_dir
    timings: dict[str, float] = {}

    t = time.perf_counter()
    dataset = config.data.load()
    timings["load"] = time.perf_counter() - t
    # the method's settings, checked against the data before the run folder exists
    params = method_settings(config.method, config.method_settings, budget=config.budget, device=config.device)
    get_method(config.method, ipc=config.ipc, seed=config.seed, device=config.device, **params).check(dataset)
    get_space(config.space).check_input(dataset.image_shape)  # before the proxy is distilled
    out.mkdir(parents=True, exist_ok=True)
    log(f"data: {dataset.name} {tuple(dataset.image_shape)}, {len(dataset.y_train)} train / {len(dataset.y_val)} "
        f"val / {len(dataset.y_test)} test, fingerprint {dataset.fingerprint}")
    validation = dict(space=config.space, n_archs=config.n_archs, proxy_train=config.proxy_train,
                      full_train=config.full_train, reference_store=config.reference_store,
                      seed=derive_seed(config.seed, "validate") % 10**6, device=config.device)
    with _prefetching(dataset, validation, config, log) as prefetched:
        t = time.perf_counter()
        proxy = distill_step(dataset, config.method, ipc=config.ipc, settings=config.method_settings,
                             budget=config.budget, seed=config.seed, device=config.device, out_dir=out,
                             store=config.store, progress=progress, log=log, relabel=config.relabel,
                             teacher_epochs=config.teacher_epochs, temperature=config.temperature)
        timings["distill"] = time.perf_counter() - t
        tell("on_distill", proxy)

        t = time.perf_counter()
        comparison = compare_with_random(dataset, proxy, space=config.space, train=config.proxy_train,
                                         eval_seeds=config.eval_seeds, device=config.device, store=config.store)
        timings["compare"] = time.perf_counter() - t
        log(f"default architecture on the proxy: {comparison['proxy_acc']:.4f} test acc vs random subset "
            f"{comparison['random_acc']:.4f}")

        t = time.perf_counter()
        search = search_step(dataset, proxy, space=config.space, n_trials=config.n_trials, sampler=config.sampler,
                             pruner=config.pruner, storage=config.storage,
                             study_name=config.study_name or config.name, train=config.proxy_train,
                             seed=config.seed, device=config.device, out_dir=out, progress=progress, log=log,
                             objectives=config.objectives, workers=config.workers, retrain_top=config.retrain_top,
                             full_train=config.full_train, reference_store=config.reference_store,
                             backend=config.backend, strategy=config.strategy)
        timings["search"] = time.perf_counter() - t
        tell("on_search", search)

        t = time.perf_counter()
        val = validate_step(dataset, proxy, **validation, top_k=config.top_k, n_bootstrap=config.n_bootstrap,
                            out_dir=out, progress=progress, log=log, report=False,
                            workers=config.workers)  # the same processes as the search: its trainings shared
        timings["validate"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        tell("on_validate", val)

    summary = {
        "name": config.name,
        "dataset": dataset.describe(),
        "proxy": {"method": proxy.method, "ipc": proxy.ipc, "key": proxy.key, "reused": proxy.meta.get("reused"),
                  "path": str(out / PROXY_FILE)},
        "proxy_vs_random": comparison,
        "search": {"backend": config.backend, "study": config.study_name or config.name,
                   "trials": len(search.trials_),
                   "best_arch": search.best_arch_, "best_arch_id": search.best_id_,
                   "best_val_acc": search.best_value_, "retrain": search.retrain_},
        "validation": {"n_archs": config.n_archs, **val.primary.metrics},
        "cost": {"proxy": val.primary.cost, "full_data": val.reference["cost"],
                 "full_train_images": len(dataset.y_train), "proxy_images": len(proxy),
                 "references_in_background": prefetched},
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "config": asdict(config),
    }
    write_json(out / "summary.json", summary)
    table = summary_table(summary)
    write_text(out / "summary.md", f"# nasdistill run `{config.name}`\n\n{table}\n")
    log("\n" + table)
    report_step(out, log=log)
    tell("on_run", summary)
    return summary


#: Below this speed-up (full-data training time over proxy training time, per candidate) the summary says why.
SMALL_SPEEDUP = 2.0


def speedup_note(summary: dict) -> str | None:
    """What the run's speed-up is measured against and, when it is small, why and which command shows one
    (None for a summary without cost figures, or with a speed-up of :data:`SMALL_SPEEDUP` or more)."""
    cost = summary.get("cost")
    if not cost:
        return None
    proxy, full = cost["proxy"], cost["full_data"]
    wall, flops = proxy.get("speedup_wall"), proxy.get("speedup_flops")
    known = [x for x in (wall, flops) if x is not None and x == x]
    if not known or min(known) >= SMALL_SPEEDUP:
        return None
    seen_p, seen_f = proxy.get("samples_per_candidate"), full.get("samples_per_candidate")
    seen = (f" (a full-data training sees {seen_f:,} images, a proxy training {seen_p:,})"
            if seen_p and seen_f else "")
    return (f"Why the speed-up is small ({_x(wall)} in time, {_x(flops)} in training FLOPs): it is one candidate's "
            f"full-data training over its proxy training, and {summary['dataset']['name']} has only "
            f"{cost['full_train_images']:,} training images, so the full-data budget costs about what the proxy's "
            f"does{seen}. A proxy pays off when the full set is large: `nasdistill run --data mnist --data-root DIR "
            "--train-per-class 1000` (10,000 images), or the whole of MNIST on a GPU, shows it; "
            "benchmarks/fidelity.py measures it.")


def _x(v) -> str:
    return "?" if v is None or v != v else f"{v:.1f}×"


def summary_table(summary: dict) -> str:
    """A small Markdown table of what a run found (with :func:`speedup_note` below it when it applies)."""
    c = summary["proxy_vs_random"]
    v = summary["validation"]
    s = summary["search"]
    lo, hi = v.get("spearman_ci", (float("nan"), float("nan")))
    rows = [
        ("dataset", f"{summary['dataset']['name']} ({summary['dataset']['train']} train images)"),
        ("proxy", f"{summary['proxy']['method']}, ipc {summary['proxy']['ipc']}"
                  + (" (reused)" if summary["proxy"].get("reused") else "")),
        ("proxy test acc (default arch)", f"{c['proxy_acc']:.4f} ± {c['proxy_acc_std']:.4f}"),
        ("random subset test acc", f"{c['random_acc']:.4f} ± {c['random_acc_std']:.4f}"),
        ("best architecture found", f"{s['best_arch_id']} (val acc {s['best_val_acc']:.4f}, {s['trials']} trials)"),
        ("Spearman ρ (proxy vs full data)", f"{v['spearman']:.3f}  95% CI [{lo:.3f}, {hi:.3f}] ({v['n_archs']} archs)"),
        ("Kendall τ", f"{v['kendall']:.3f}"),
    ]
    cost = summary.get("cost")
    if cost:
        p, f = cost["proxy"], cost["full_data"]
        rows.append(("speed-up per candidate", f"{p['speedup_wall']:.1f}× time, {p['speedup_flops']:.1f}× FLOPs "
                     f"(full-data training {f['wall_time_s']:.2f} s vs proxy training {p['wall_time_s']:.2f} s"
                     + ("; references timed in the background process, beside the search: read the FLOPs"
                        if cost.get("references_in_background") else "") + ")"))
    rows.append(("total time", f"{summary['timings_s']['total']:.0f} s"))
    w = max(len(r[0]) for r in rows)
    lines = [f"| {'':{w}} | result |", f"|{'-' * (w + 2)}|--------|"]
    lines += [f"| {k:{w}} | {val} |" for k, val in rows]
    note = speedup_note(summary)
    return "\n".join(lines) + (f"\n\n{note}" if note else "")


def search_summary(search: "SearchBackend", out_dir: str | os.PathLike | None = None) -> dict:
    """What ``nasdistill search --json`` prints: the best architecture, its score, the trials and where they are."""
    result = search.result_
    out = Path(out_dir) if out_dir is not None else None
    return {"best_arch": search.best_arch_, "best_arch_id": search.best_id_, "best_value": search.best_value_,
            "trials": len(result.trials), "where": search.where(), "pareto": result.pareto or None,
            "retrain": result.retrain or None,
            "files": None if out is None else {"best_arch": str(out / "best_arch.json"),
                                               "trials": str(out / "trials.csv")}}


def validation_summary(result: ValidationResult, out_dir: str | os.PathLike | None = None) -> dict:
    """What ``nasdistill validate --json`` prints: every contender's metrics and cost, and the reference."""
    ref = result.reference
    return {"n_archs": len(result.archs), "space": result.settings.get("space"),
            "contenders": [{"name": c.name, "kind": c.kind, "metrics": c.metrics, "cost": c.cost}
                           for c in result.contenders],
            "reference": {"n_trained": ref["n_trained"], "n_reused": ref["n_reused"], "cost": ref["cost"]},
            "files": None if out_dir is None else {"validation": str(Path(out_dir) / "validation.json")}}
