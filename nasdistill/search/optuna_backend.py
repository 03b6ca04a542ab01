"""Architecture search with Optuna: one study per name + storage, resumable, shareable by workers.

>>> search = OptunaSearch(space, ProxyEvaluator(space, proxy, dataset), n_trials=50,
...                       storage="sqlite:///runs/cifar/study.db", study_name="cifar").run()
>>> search.best_arch_, search.best_value_
>>> search.export("runs/cifar")          # best_arch.json + trials.csv (+ pareto.csv/json)

``n_trials`` is the number of finished (COMPLETE or PRUNED) trials the *study* should hold: running
again with the same name and storage only runs what is missing, and several worker processes
given the same name and storage share the work and stop at exactly ``n_trials`` finished trials
(see :mod:`nasdistill.search.claiming` and :mod:`nasdistill.search.workers`; ``workers=N``
starts N local processes). A proposal equal to
an architecture already completed in the study is not trained again: its value is copied and the
trial gets the user attribute ``reused_from``; one equal to an architecture another worker is
training waits for that trial and reuses its result.

With several ``objectives`` (``["accuracy", "params"]``, see :mod:`nasdistill.search.objectives`)
the study is multi-objective (maximise accuracy, minimise the rest; no pruning). ``pareto_`` holds
its Pareto front over distinct architectures, and ``best_arch_`` is the front's most accurate point.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from .._io import to_jsonable, write_json
from .._seed import derive_seed
from ..errors import ConfigError
from ..progress import progress_bar, resolve_disable
from ..spaces import SearchSpace, get_space
from ..work.names import worker_label
from .backend import (MAX_FAILED_IN_A_ROW, SearchBackend, SearchResult, accepts_report, failed_in_a_row, objective_dicts,
                      register_backend)
from .claiming import FINISHED, ClaimingStudy, StudyFull, claim_lock, count_trials
from .evaluator import ProxyEvaluator, space_spec
from .objectives import Objective, pareto_front, parse_objectives
from .samplers import SAMPLERS, make_pruner, make_sampler
from .storage import (GRACE_PERIOD, HEARTBEAT_INTERVAL, default_storage_url, heartbeat_settings, make_storage,
                      storage_label, storage_url)
from .workers import JOB_FILE, run_workers

#: The sampler when none is named.
DEFAULT_SAMPLER = "tpe"
#: Study user attribute holding what the scores depend on (checked when a study is resumed).
STUDY_ATTR = "nasdistill"
#: Trial attribute that says why a trial failed.
FAILED_ATTR = "failed_because"

_log = logging.getLogger(__name__)


@register_backend("optuna")
class OptunaSearch(SearchBackend):
    """Search ``space`` for the architecture that ``evaluator`` scores highest.

    Args:
        space: a :class:`SearchSpace` or its name.
        evaluator: ``evaluator(arch, report=None) -> float`` to maximise, usually a
            :class:`~nasdistill.search.ProxyEvaluator`. ``report`` is needed only by pruners.
        n_trials: finished trials wanted in the study in all (at most the size of a finite space).
        sampler: a name from ``SAMPLERS`` (``tpe``, ``gp``, ``random``, ``grid``, ``nsga2``) or an Optuna sampler.
        pruner: a name from ``PRUNERS`` (``none``, ``median``, ``hyperband``) or an Optuna pruner.
        storage: a storage URL (see :func:`~nasdistill.search.make_storage`), an Optuna storage,
            or None for ``sqlite:///runs/<study_name>/study.db``.
        study_name: the study to create or continue.
        seed: seeds the sampler (combined with the number of trials already in the study, so a
            continued study explores new points rather than replaying the first ones, and with
            ``worker_index``).
        timeout: stop starting trials after this many seconds (None: no limit).
        progress: show a progress bar (None: ``NASDISTILL_PROGRESS`` / terminal decides).
        objectives: ``"accuracy"`` (default), or ``"accuracy,params"`` / a list adding ``params``,
            ``flops`` or ``latency`` (see :data:`~nasdistill.search.objectives.OBJECTIVES`); more
            than one needs an evaluator with a ``dataset`` (for the input shape) and no pruner.
        workers: run the study in this many local worker processes (needs a
            :class:`~nasdistill.search.ProxyEvaluator` and a storage other processes can open).
        worker_index: this process's index among the workers sharing the study (seeds the sampler
            so that workers propose different architectures).
        heartbeat_interval, grace_period: the storage's heartbeat (seconds), when ``storage`` is a URL.

    After :meth:`run`: ``study_``, ``best_arch_``, ``best_id_``, ``best_value_``, ``best_trial_``,
    ``best_values_`` (objective name -> value), ``trials_`` (one dict per trial of the study:
    number, state, value, arch_id, arch, params, duration_s, reused, reused_from, and
    ``objectives`` with the other objectives' values in a multi-objective study) and ``pareto_``
    (multi-objective studies: the Pareto front, most accurate first; else None).
    """

    takes = ("sampler", "pruner", "storage", "objectives", "workers", "worker_index")
    choice_flag = "--sampler NAME"

    def __init__(self, space: SearchSpace | str, evaluator: Callable[..., float], *, n_trials: int = 20,
                 sampler: str | optuna.samplers.BaseSampler = "tpe",
                 pruner: str | optuna.pruners.BasePruner | None = "none",
                 storage: str | BaseStorage | None = None, study_name: str = "nasdistill", seed: int = 0,
                 timeout: float | None = None, progress: bool | None = None,
                 objectives: str | Sequence[str] = "accuracy", workers: int = 1, worker_index: int | None = None,
                 heartbeat_interval: int = HEARTBEAT_INTERVAL, grace_period: int | None = GRACE_PERIOD):
        super().__init__(space, evaluator, n_trials=n_trials, seed=seed, study_name=study_name, timeout=timeout,
                         progress=progress)
        self.sampler = sampler
        self.pruner = pruner
        self.storage = storage
        self.objectives = objectives
        self.workers = workers
        self.worker_index = worker_index
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period

    def objectives_list(self) -> list[Objective]:
        """The parsed ``objectives`` (accuracy first)."""
        return parse_objectives(self.objectives)

    # --- running --------------------------------------------------------------------------------
    def search(self) -> SearchResult:
        """Create or continue the study, run the missing trials, collect the results."""
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ConfigError(f"workers must be 1 or more, got {self.workers!r}", "pass --workers 1 or more")
        objectives = self.objectives_list()
        space = get_space(self.space)
        pruner_name = self.pruner if isinstance(self.pruner, str) else None
        no_pruner = self.pruner is None or pruner_name == "none"
        if len(objectives) > 1 and not no_pruner:
            raise ConfigError(f"pruner {self.pruner!r} cannot prune a study with several objectives",
                              "use pruner 'none' with several objectives")
        reports = accepts_report(self.evaluator)
        if not reports and not no_pruner:
            raise ConfigError(f"the evaluator takes no report callback, so pruner {self.pruner!r} cannot work",
                              "use pruner 'none' or give the evaluator a report=None argument")
        pruner = make_pruner(self.pruner, getattr(self.evaluator, "epochs", None))
        use_report = reports and not isinstance(pruner, optuna.pruners.NopPruner)
        make_sampler(self.sampler, self.seed, space)  # fail on a bad sampler before touching the storage
        shape = _input_shape(self.evaluator) if len(objectives) > 1 else None
        if self.workers > 1:
            self.check_job()
        storage = make_storage(self.storage if self.storage is not None else default_storage_url(self.study_name),
                               heartbeat_interval=self.heartbeat_interval, grace_period=self.grace_period)
        target = self.n_trials if space.size() is None else min(self.n_trials, space.size())

        old_verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(logging.WARNING)
        try:
            study = self._open_study(storage, space, pruner, objectives, target)
            if self.workers > 1 and _n_finished(study) < target:
                run_workers(self, self.workers)
            if _n_finished(study) < target:
                self._optimize(study, storage, space, target, use_report, objectives, shape)
        finally:
            optuna.logging.set_verbosity(old_verbosity)
        self.study_ = study
        return self._collect(study, space, objectives)

    def _open_study(self, storage: BaseStorage, space: SearchSpace, pruner, objectives: list[Objective],
                    target: int) -> ClaimingStudy:
        directions = [o.direction for o in objectives]
        study = optuna.create_study(storage=storage, study_name=self.study_name, directions=directions,
                                    load_if_exists=True, sampler=optuna.samplers.RandomSampler(self.seed),
                                    pruner=pruner)
        found = [d.name.lower() for d in study.directions]
        if found != directions:
            raise ConfigError(f"study {self.study_name!r} in {storage_label(storage)} optimises {len(found)} "
                              f"value(s) ({', '.join(found)}), not {', '.join(o.name for o in objectives)}",
                              "pick another study name, or the objectives it was started with")
        self._check_identity(study, space, objectives)
        with warnings.catch_warnings():  # heartbeats and metric names are "experimental" in Optuna 5.0
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if len(objectives) > 1 and study.metric_names is None:
                study.set_metric_names([o.name for o in objectives])
            optuna.storages.fail_stale_trials(study)  # trials of dead workers -> FAIL (and queued again)
        trials = study.get_trials(deepcopy=False)
        # Seeded by the study's length too (a continued study must not replay its first proposals),
        # and by the worker: workers that start together must not propose the same architectures.
        parts: list[Any] = ["sampler", self.seed, len(trials)]
        if self.worker_index is not None:
            parts += ["worker", self.worker_index]
        elif any(t.state == TrialState.RUNNING for t in trials):  # joining a study others are running
            parts += ["joined", worker_label(None)]
        sampler = make_sampler(self.sampler, derive_seed(*parts) % (2**32), space)
        return ClaimingStudy(self.study_name, storage, sampler, pruner, target=target,
                             lock=claim_lock(storage, self.study_name))

    def _check_identity(self, study: optuna.Study, space: SearchSpace, objectives: list[Objective]) -> None:
        describe = getattr(self.evaluator, "describe", None)
        identity = {"space": space.name, "evaluator": describe() if callable(describe) else None}
        if len(objectives) > 1:  # single-objective studies keep the identity they always had
            identity["objectives"] = [o.name for o in objectives]
        identity = to_jsonable(identity)
        stored = study.user_attrs.get(STUDY_ATTR)
        if stored is None:
            study.set_user_attr(STUDY_ATTR, identity)
            return
        if stored != identity:
            diff = sorted(k for k in set(_flat(stored)) | set(_flat(identity))
                          if _flat(stored).get(k) != _flat(identity).get(k))
            raise ConfigError(f"study {self.study_name!r} was scored with other settings ({', '.join(diff)} differ), "
                              "so its trials cannot be mixed with these", "use a new study name or storage")

    def _optimize(self, study: ClaimingStudy, storage: BaseStorage, space: SearchSpace, target: int,
                  use_report: bool, objectives: list[Objective], shape) -> None:
        bar = progress_bar(total=target, initial=_n_finished(study), desc=f"search {self.study_name}", unit="trial",
                           disable=resolve_disable(self.progress))
        best = _best(study.get_trials(deepcopy=False))
        if best is not None:
            bar.set_postfix(best=f"{best.values[0]:.4f}")
        heartbeat = heartbeat_settings(storage)
        poll = _poll_seconds(heartbeat)
        label = worker_label(self.worker_index)

        failed: list[FrozenTrial] = []  # this worker's trials that failed since its last finished one

        def after_trial(study: optuna.Study, trial: FrozenTrial) -> None:
            nonlocal best
            if trial.state == TrialState.COMPLETE and (best is None or trial.values[0] > best.values[0]):
                best = trial
            failed[:] = [*failed, trial] if trial.state == TrialState.FAIL else []
            finished = _n_finished(study)  # counts the trials of every worker
            bar.update(finished - bar.n)
            if best is not None:
                bar.set_postfix(best=f"{best.values[0]:.4f}")
            if finished >= target or len(failed) >= MAX_FAILED_IN_A_ROW:
                study.stop()

        def objective(trial: optuna.Trial):
            return self._objective(trial, space, use_report, objectives, shape, label, heartbeat, poll)

        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        idle: tuple[Any, float] | None = None  # (what the study looked like, since when)
        try:
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                try:
                    study.optimize(objective, timeout=left, callbacks=[after_trial])
                    break  # the study is complete, the sampler ran out (grid), or time is up
                except StudyFull as full:
                    if full.finished >= target or heartbeat is None:
                        break
                    # Every free slot is held by a trial running in another worker: wait for those
                    # trials, so that a dead worker's slot (failed by the heartbeat) is taken over.
                    snapshot = _snapshot(study)
                    if idle is None:
                        _log.warning("study %r: waiting for %d trial(s) running elsewhere; a dead worker's trial is "
                                     "taken over once its heartbeat is %d s old (NASDISTILL_GRACE_PERIOD), and this "
                                     "worker stops after %d s without change", self.study_name, full.running,
                                     heartbeat[1], heartbeat[1] + 2 * heartbeat[0])
                    if idle is None or idle[0] != snapshot:
                        idle = (snapshot, time.monotonic())
                    elif time.monotonic() - idle[1] > heartbeat[1] + 2 * heartbeat[0]:
                        _log.warning("study %r: %d trial(s) still running elsewhere; leaving them to their workers",
                                     self.study_name, full.running)
                        break
                    bar.set_postfix_str(f"waiting for {full.running} trial(s) running elsewhere")
                    time.sleep(poll)
                    _fail_stale(study)
                    bar.update(_n_finished(study) - bar.n)
                except UpdateFinishedTrialError as e:  # our trial was failed as stale while it ran
                    _log.warning("study %r: %s; continuing", self.study_name, e)
        finally:
            bar.close()
        if len(failed) >= MAX_FAILED_IN_A_ROW:  # failed trials are retried: without this, forever
            last = failed[-1]
            why = last.user_attrs.get(FAILED_ATTR, "failed")
            raise failed_in_a_row(self.study_name, len(failed), last.user_attrs.get("arch_id", "?"), why)

    def _objective(self, trial: optuna.Trial, space: SearchSpace, use_report: bool, objectives: list[Objective],
                   shape, label: str, heartbeat, poll: float):
        trial.set_user_attr("worker", label)
        arch = space.suggest(trial)
        arch_id = space.arch_id(arch)
        trial.set_user_attr("arch_id", arch_id)
        trial.set_user_attr("arch", to_jsonable(dict(arch)))
        earlier = _earlier(trial, arch_id, heartbeat, poll)
        if earlier is not None:
            trial.set_user_attr("reused_from", earlier.number)
            return earlier.values[0] if len(objectives) == 1 else tuple(earlier.values)
        extra = [float(o.measure(space, arch, *shape)) for o in objectives[1:]]
        accuracy = self._accuracy(trial, arch, use_report)
        return accuracy if not extra else (accuracy, *extra)

    def _accuracy(self, trial: optuna.Trial, arch: Mapping, use_report: bool) -> float:
        value = self._evaluate(trial, arch, use_report)
        if math.isnan(value):  # Optuna fails the trial; say why, for the error after several
            trial.set_user_attr(FAILED_ATTR, f"the evaluator returned {value}")
        return value

    def _evaluate(self, trial: optuna.Trial, arch: Mapping, use_report: bool) -> float:
        if not use_report:
            return float(self.evaluator(arch))
        pruned_at: list[int] = []

        def report(epoch: int, accuracy: float) -> bool:
            trial.report(float(accuracy), epoch)
            if trial.should_prune():
                pruned_at.append(epoch)
                return True
            return False

        value = float(self.evaluator(arch, report=report))
        if pruned_at:
            raise optuna.TrialPruned(f"accuracy {value:.4f} at epoch {pruned_at[0]}")
        return value

    # --- results --------------------------------------------------------------------------------
    def _collect(self, study: optuna.Study, space: SearchSpace, objectives: list[Objective]) -> SearchResult:
        names = [o.name for o in objectives]
        trials = study.get_trials(deepcopy=False)
        rows = [_trial_row(t, names, space) for t in trials]
        pareto = None
        if len(objectives) > 1:
            pareto = _pareto(trials, objectives, space)
            numbers = {p["trial"] for p in pareto}
            front = [t for t in trials if t.number in numbers]
            best = max(front, key=lambda t: (t.values[0], -t.number)) if front else None
        else:
            best = _best(trials)
        top = None if best is None else {
            "arch": _trial_arch(best, space), "arch_id": best.user_attrs.get("arch_id"),
            "value": float(best.values[0]), "trial": best.number, "values": dict(zip(names, map(float, best.values)))}
        return SearchResult(self.study_name, rows, top, self.info(), objectives=objective_dicts(objectives),
                            pareto=pareto)

    # --- results --------------------------------------------------------------------------------
    def info(self) -> dict:
        describe = getattr(self.evaluator, "describe", None)
        return {
            "backend": "optuna",
            "space": get_space(self.space).name,
            "storage": storage_label(self.storage) or default_storage_url(self.study_name),
            "sampler": self.sampler if isinstance(self.sampler, str) else type(self.sampler).__name__,
            "pruner": self.pruner if isinstance(self.pruner, str) or self.pruner is None
            else type(self.pruner).__name__,
            "evaluator": describe() if callable(describe) else None,
        }

    def no_result(self) -> tuple[str, str]:
        return f"study {self.study_name!r} has no completed trial to export", "run more trials, or use pruner 'none'"

    def where(self) -> str:
        return f"in study {self.study_name!r}"

    # --- options --------------------------------------------------------------------------------
    @classmethod
    def refuse(cls, option: str, value: Any) -> ConfigError:
        if option == "strategy":
            return ConfigError(f"--strategy {value} chooses an NNI strategy, but the backend is optuna",
                               "add --backend nni, or pick an Optuna sampler with --sampler")
        return super().refuse(option, value)

    @classmethod
    def grid(cls, given: Mapping[str, Any]) -> bool:
        return (given.get("sampler") or DEFAULT_SAMPLER) == "grid"

    @classmethod
    def from_options(cls, space, evaluator, *, out_dir: Path, n_trials: int, seed: int, study_name: str,
                     progress: bool | None, **options: Any) -> "OptunaSearch":
        """As :meth:`SearchBackend.from_options`; the sampler defaults to ``tpe`` and the storage to
        ``sqlite:///OUT/study.db``."""
        options["sampler"] = options.get("sampler") or DEFAULT_SAMPLER
        options["storage"] = options.get("storage") or f"sqlite:///{Path(out_dir) / 'study.db'}"
        return super().from_options(space, evaluator, out_dir=out_dir, n_trials=n_trials, seed=seed,
                                    study_name=study_name, progress=progress, **options)

    @classmethod
    def choices(cls) -> list[tuple[str, str]]:
        return [(n, SAMPLERS.get(n)) for n in SAMPLERS.names()]

    # --- jobs: the search in worker processes ---------------------------------------------------
    def shared_storage_url(self) -> str:
        """The URL worker processes open this study's storage with (memory storages cannot be shared)."""
        return storage_url(self.storage if self.storage is not None else default_storage_url(self.study_name))

    def check_job(self) -> dict:
        """Raise :class:`ConfigError` unless worker processes can rebuild this search; return the space spec."""
        if not isinstance(self.evaluator, ProxyEvaluator):
            raise ConfigError("worker processes can only rebuild a ProxyEvaluator",
                              "start your own processes on the same study name and storage instead")
        for what, value in (("sampler", self.sampler), ("pruner", self.pruner)):
            if not (value is None or isinstance(value, str)):
                raise ConfigError(f"worker processes need the {what} by name, not a {type(value).__name__}",
                                  f"pass the {what} name")
        self.shared_storage_url()
        return space_spec(self.space)

    def to_job(self, folder: str | os.PathLike, *, threads: int | None = None) -> Path:
        """Write what a worker process needs to join this study into ``folder`` (``job.json`` and the
        evaluator's tensors, :meth:`ProxyEvaluator.to_job`); return the folder."""
        spec = self.check_job()
        folder = Path(folder)
        job = {"backend": self.name, **self.evaluator.to_job(folder), "space": spec,
               "search": {"n_trials": self.n_trials, "sampler": self.sampler, "pruner": self.pruner,
                          "storage": self.shared_storage_url(), "study_name": self.study_name, "seed": self.seed,
                          "timeout": self.timeout, "objectives": [o.name for o in self.objectives_list()],
                          "heartbeat_interval": self.heartbeat_interval, "grace_period": self.grace_period},
               "threads": threads}
        write_json(folder / JOB_FILE, job)
        return folder

    @classmethod
    def from_job(cls, folder: str | os.PathLike, index: int | None) -> "OptunaSearch":
        """The search worker ``index`` runs for the job :meth:`to_job` wrote into ``folder``."""
        job = json.loads((Path(folder) / JOB_FILE).read_text())
        evaluator = ProxyEvaluator.from_job(folder, job)
        return cls(evaluator.space, evaluator, **job["search"], progress=False, worker_index=index)

    def __repr__(self) -> str:
        space = self.space if isinstance(self.space, str) else getattr(self.space, "name", self.space)
        return (f"OptunaSearch(space={space!r}, n_trials={self.n_trials}, sampler={self.sampler!r}, "
                f"pruner={self.pruner!r}, study_name={self.study_name!r})" + self._found())


# --- helpers ------------------------------------------------------------------------------------
def _input_shape(evaluator) -> tuple[tuple[int, ...], int]:
    """(image shape, classes) of the evaluator's dataset, which cost objectives measure networks on."""
    ds = getattr(evaluator, "dataset", None)
    if ds is None or not hasattr(ds, "image_shape"):
        raise ConfigError("objectives other than accuracy need the input shape, and this evaluator has no dataset",
                          "use a ProxyEvaluator, or give the evaluator a .dataset with image_shape and num_classes")
    return tuple(ds.image_shape), int(ds.num_classes)


def _poll_seconds(heartbeat: tuple[int, int] | None) -> float:
    """How often a waiting worker looks at the study again."""
    return 1.0 if heartbeat is None else max(0.2, min(2.0, heartbeat[0] / 2))


def _fail_stale(study: optuna.Study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _snapshot(study: optuna.Study) -> tuple:
    return tuple((t.number, t.state) for t in study.get_trials(deepcopy=False))


def _n_finished(study: optuna.Study) -> int:
    return count_trials(study)[0]


def _earlier(trial: optuna.Trial, arch_id: str, heartbeat, poll: float) -> FrozenTrial | None:
    """The completed trial that trained ``arch_id``; if an earlier trial is training it right now in
    another worker, wait for that one (when a heartbeat tells dead workers from busy ones)."""
    while True:
        trials = trial.study.get_trials(deepcopy=False)
        done = _completed_by_arch(trials).get(arch_id)
        if done is not None or heartbeat is None:
            return done
        if not any(t.state == TrialState.RUNNING and t.number < trial.number
                   and t.user_attrs.get("arch_id") == arch_id for t in trials):
            return None
        time.sleep(poll)
        _fail_stale(trial.study)


def _completed_by_arch(trials: Sequence[FrozenTrial]) -> dict[str, FrozenTrial]:
    """arch_id -> the earliest trial that trained it to completion (reused trials are skipped)."""
    out: dict[str, FrozenTrial] = {}
    for t in sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.number):
        aid = t.user_attrs.get("arch_id")
        if aid is not None and "reused_from" not in t.user_attrs and aid not in out:
            out[aid] = t
    return out


def _best(trials: Sequence[FrozenTrial]) -> FrozenTrial | None:
    """The most accurate completed trial; ties go to the earliest (so never a reused copy)."""
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    return max(done, key=lambda t: (t.values[0], -t.number)) if done else None


def _pareto(trials: Sequence[FrozenTrial], objectives: list[Objective], space: SearchSpace) -> list[dict]:
    """The Pareto front of the trained (not reused) completed trials, most accurate first."""
    names = [o.name for o in objectives]
    trained = [t for t in trials if t.state == TrialState.COMPLETE and "reused_from" not in t.user_attrs]
    front = [trained[i] for i in pareto_front([t.values for t in trained], [o.direction for o in objectives])]
    front.sort(key=lambda t: (-t.values[0], t.number))
    return [{"trial": t.number, "arch_id": t.user_attrs.get("arch_id"), "arch": _trial_arch(t, space),
             "values": dict(zip(names, map(float, t.values)))} for t in front]


def _trial_arch(trial: FrozenTrial, space: SearchSpace) -> dict:
    arch = trial.user_attrs.get("arch")
    if isinstance(arch, Mapping):
        return dict(arch)
    return space.parse_id(trial.user_attrs["arch_id"]) if "arch_id" in trial.user_attrs else dict(trial.params)


def _trial_row(t: FrozenTrial, names: list[str], space: SearchSpace) -> dict[str, Any]:
    reused_from = t.user_attrs.get("reused_from")
    values = t.values if t.state == TrialState.COMPLETE else None
    row = {
        "number": t.number,
        "state": t.state.name,
        "value": values[0] if values else _last_intermediate(t),
        "arch_id": t.user_attrs.get("arch_id"),
        "arch": _trial_arch(t, space) if "arch_id" in t.user_attrs or "arch" in t.user_attrs else None,
        "params": dict(t.params),
        "duration_s": t.duration.total_seconds() if t.duration is not None else None,
        "reused": reused_from is not None,
        "reused_from": reused_from,
    }
    if len(names) > 1:
        row["objectives"] = {n: (values[i] if values else None) for i, n in enumerate(names) if i}
    return row


def _last_intermediate(t: FrozenTrial) -> float | None:
    """A pruned trial's last reported accuracy (None for trials that never reported)."""
    if not t.intermediate_values:
        return None
    return float(t.intermediate_values[max(t.intermediate_values)])


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, Mapping):
        return {prefix or "value": d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


__all__ = ["OptunaSearch", "FINISHED", "STUDY_ATTR", "DEFAULT_SAMPLER"]
