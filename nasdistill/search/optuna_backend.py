"""Architecture search with Optuna: one study per name + storage, resumable, shareable by workers.

>>> search = OptunaSearch(space, ProxyEvaluator(space, proxy, dataset), n_trials=50,
...                       storage="sqlite:///runs/cifar/study.db", study_name="cifar").run()
>>> search.best_arch_, search.best_value_
>>> search.export("runs/cifar")          # best_arch.json + trials.csv

``n_trials`` is the number of finished (COMPLETE or PRUNED) trials the *study* should hold: running
again with the same name and storage only runs what is missing, and several worker processes
given the same name and storage share the work (each may overshoot by the trials still running
in the others). A proposal equal to an architecture already completed in the study is not trained
again: its value is copied and the trial gets the user attribute ``reused_from``.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from typing import Any, Callable, Mapping

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from .._io import to_jsonable
from .._seed import derive_seed
from ..errors import ConfigError, NasDistillError
from ..progress import progress_bar, resolve_disable
from ..spaces import SearchSpace, get_space
from .samplers import make_pruner, make_sampler
from .storage import default_storage_url, make_storage, storage_label, write_results

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
#: Study user attribute holding what the scores depend on (checked when a study is resumed).
STUDY_ATTR = "nasdistill"


class OptunaSearch:
    """Search ``space`` for the architecture that ``evaluator`` scores highest.

    Args:
        space: a :class:`SearchSpace` or its name.
        evaluator: ``evaluator(arch, report=None) -> float`` to maximise, usually a
            :class:`~nasdistill.search.ProxyEvaluator`. ``report`` is needed only by pruners.
        n_trials: finished trials wanted in the study in all (at most the size of a finite space).
        sampler: a name from ``SAMPLERS`` (``tpe``, ``random``, ``grid``) or an Optuna sampler.
        pruner: a name from ``PRUNERS`` (``none``, ``median``, ``hyperband``) or an Optuna pruner.
        storage: a storage URL (see :func:`~nasdistill.search.make_storage`), an Optuna storage,
            or None for ``sqlite:///runs/<study_name>/study.db``.
        study_name: the study to create or continue.
        seed: seeds the sampler (combined with the number of trials already in the study, so a
            continued study explores new points rather than replaying the first ones).
        timeout: stop starting trials after this many seconds (None: no limit).
        progress: show a progress bar (None: ``NASDISTILL_PROGRESS`` / terminal decides).

    After :meth:`run`: ``study_``, ``best_arch_``, ``best_id_``, ``best_value_``, ``best_trial_``
    and ``trials_`` (one dict per trial of the study: number, state, value, arch_id, params,
    duration_s, reused, reused_from).
    """

    def __init__(self, space: SearchSpace | str, evaluator: Callable[..., float], *, n_trials: int = 20,
                 sampler: str | optuna.samplers.BaseSampler = "tpe",
                 pruner: str | optuna.pruners.BasePruner | None = "none",
                 storage: str | BaseStorage | None = None, study_name: str = "nasdistill", seed: int = 0,
                 timeout: float | None = None, progress: bool | None = None):
        self.space = space
        self.evaluator = evaluator
        self.n_trials = n_trials
        self.sampler = sampler
        self.pruner = pruner
        self.storage = storage
        self.study_name = study_name
        self.seed = seed
        self.timeout = timeout
        self.progress = progress

    # --- running --------------------------------------------------------------------------------
    def run(self) -> "OptunaSearch":
        """Create or continue the study, run the missing trials, collect the results; returns self."""
        if self.n_trials < 0:
            raise ConfigError(f"n_trials must be 0 or more, got {self.n_trials}", "pass a number of trials")
        space = get_space(self.space)
        pruner_name = self.pruner if isinstance(self.pruner, str) else None
        reports = _accepts_report(self.evaluator)
        if not reports and not (self.pruner is None or pruner_name == "none"):
            raise ConfigError(f"the evaluator takes no report callback, so pruner {self.pruner!r} cannot work",
                              "use pruner 'none' or give the evaluator a report=None argument")
        pruner = make_pruner(self.pruner, getattr(self.evaluator, "epochs", None))
        use_report = reports and not isinstance(pruner, optuna.pruners.NopPruner)
        make_sampler(self.sampler, self.seed, space)  # fail on a bad sampler before touching the storage
        storage = make_storage(self.storage if self.storage is not None else default_storage_url(self.study_name))
        target = self.n_trials if space.size() is None else min(self.n_trials, space.size())

        old_verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(logging.WARNING)
        try:
            study = self._open_study(storage, space, pruner)
            done = _n_finished(study)
            remaining = max(0, target - done)
            if remaining:
                self._optimize(study, space, target, done, remaining, use_report)
        finally:
            optuna.logging.set_verbosity(old_verbosity)
        self.study_ = study
        self._collect(study, space)
        return self

    def _open_study(self, storage: BaseStorage, space: SearchSpace, pruner) -> optuna.Study:
        study = optuna.create_study(storage=storage, study_name=self.study_name, direction="maximize",
                                    load_if_exists=True, sampler=optuna.samplers.RandomSampler(self.seed),
                                    pruner=pruner)
        if list(study.directions) != [optuna.study.StudyDirection.MAXIMIZE]:
            raise ConfigError(f"study {self.study_name!r} in {storage_label(storage)} does not maximise one value",
                              "pick another study name")
        self._check_identity(study, space)
        with warnings.catch_warnings():  # trials of dead workers -> FAIL (no-op without a heartbeat)
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        # Seeded by the study's length too: a continued study must not replay its first proposals.
        seed = derive_seed("sampler", self.seed, len(study.get_trials(deepcopy=False))) % (2**32)
        study.sampler = make_sampler(self.sampler, seed, space)
        return study

    def _check_identity(self, study: optuna.Study, space: SearchSpace) -> None:
        describe = getattr(self.evaluator, "describe", None)
        identity = to_jsonable({"space": space.name, "evaluator": describe() if callable(describe) else None})
        stored = study.user_attrs.get(STUDY_ATTR)
        if stored is None:
            study.set_user_attr(STUDY_ATTR, identity)
            return
        if stored != identity:
            diff = sorted(k for k in set(_flat(stored)) | set(_flat(identity))
                          if _flat(stored).get(k) != _flat(identity).get(k))
            raise ConfigError(f"study {self.study_name!r} was scored with other settings ({', '.join(diff)} differ), "
                              "so its trials cannot be mixed with these", "use a new study name or storage")

    def _optimize(self, study: optuna.Study, space: SearchSpace, target: int, done: int, remaining: int,
                  use_report: bool) -> None:
        bar = progress_bar(total=target, initial=done, desc=f"search {self.study_name}", unit="trial",
                           disable=resolve_disable(self.progress))
        best = _best(study)
        if best is not None:
            bar.set_postfix(best=f"{best.value:.4f}")

        def after_trial(study: optuna.Study, trial: FrozenTrial) -> None:
            nonlocal best
            if trial.state == TrialState.COMPLETE and (best is None or trial.value > best.value):
                best = trial
            bar.update(1)
            if best is not None:
                bar.set_postfix(best=f"{best.value:.4f}")
            if _n_finished(study) >= target:  # counts the trials of every worker
                study.stop()

        try:
            study.optimize(lambda trial: self._objective(trial, space, use_report), n_trials=remaining,
                           timeout=self.timeout, callbacks=[after_trial])
        finally:
            bar.close()

    def _objective(self, trial: optuna.Trial, space: SearchSpace, use_report: bool) -> float:
        arch = space.suggest(trial)
        arch_id = space.arch_id(arch)
        trial.set_user_attr("arch_id", arch_id)
        trial.set_user_attr("arch", to_jsonable(dict(arch)))
        earlier = _completed_by_arch(trial.study).get(arch_id)
        if earlier is not None:
            trial.set_user_attr("reused_from", earlier.number)
            return float(earlier.value)
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
    def _collect(self, study: optuna.Study, space: SearchSpace) -> None:
        self.trials_ = [_trial_row(t) for t in study.get_trials(deepcopy=False)]
        best = _best(study)
        self.best_trial_ = best.number if best is not None else None
        self.best_value_ = float(best.value) if best is not None else None
        self.best_id_ = best.user_attrs.get("arch_id") if best is not None else None
        self.best_arch_ = _trial_arch(best, space) if best is not None else None

    def export(self, out_dir) -> dict:
        """Write ``best_arch.json`` and ``trials.csv`` into ``out_dir`` (atomically); return their paths."""
        if not hasattr(self, "study_"):
            raise ConfigError("the search has not run yet", "call run() before export()")
        if self.best_arch_ is None:
            raise NasDistillError(f"study {self.study_name!r} has no completed trial to export",
                                  "run more trials, or use pruner 'none'")
        describe = getattr(self.evaluator, "describe", None)
        extra = {
            "backend": "optuna",
            "space": get_space(self.space).name,
            "storage": storage_label(self.storage) or default_storage_url(self.study_name),
            "sampler": self.sampler if isinstance(self.sampler, str) else type(self.sampler).__name__,
            "pruner": self.pruner if isinstance(self.pruner, str) or self.pruner is None
            else type(self.pruner).__name__,
            "evaluator": describe() if callable(describe) else None,
        }
        best = {"arch": self.best_arch_, "arch_id": self.best_id_, "value": self.best_value_,
                "trial": self.best_trial_, "metric": "val_accuracy"}
        if isinstance(extra["evaluator"], dict) and extra["evaluator"].get("split") == "test":
            best["metric"] = "test_accuracy"
        return write_results(out_dir, best=best, trials=self.trials_, study_name=self.study_name, extra=extra)

    def __repr__(self) -> str:
        space = self.space if isinstance(self.space, str) else getattr(self.space, "name", self.space)
        return (f"OptunaSearch(space={space!r}, n_trials={self.n_trials}, sampler={self.sampler!r}, "
                f"pruner={self.pruner!r}, study_name={self.study_name!r})")


# --- helpers ------------------------------------------------------------------------------------
def _accepts_report(fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "report" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def _n_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def _completed_by_arch(study: optuna.Study) -> dict[str, FrozenTrial]:
    """arch_id -> the earliest trial that trained it to completion (reused trials are skipped)."""
    out: dict[str, FrozenTrial] = {}
    for t in sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number):
        aid = t.user_attrs.get("arch_id")
        if aid is not None and "reused_from" not in t.user_attrs and aid not in out:
            out[aid] = t
    return out


def _best(study: optuna.Study) -> FrozenTrial | None:
    """The highest-valued completed trial; ties go to the earliest (so never a reused copy)."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max(done, key=lambda t: (t.value, -t.number)) if done else None


def _trial_arch(trial: FrozenTrial, space: SearchSpace) -> dict:
    arch = trial.user_attrs.get("arch")
    if isinstance(arch, Mapping):
        return dict(arch)
    return space.parse_id(trial.user_attrs["arch_id"]) if "arch_id" in trial.user_attrs else dict(trial.params)


def _trial_row(t: FrozenTrial) -> dict[str, Any]:
    reused_from = t.user_attrs.get("reused_from")
    return {
        "number": t.number,
        "state": t.state.name,
        "value": t.value if t.state == TrialState.COMPLETE else _last_intermediate(t),
        "arch_id": t.user_attrs.get("arch_id"),
        "params": dict(t.params),
        "duration_s": t.duration.total_seconds() if t.duration is not None else None,
        "reused": reused_from is not None,
        "reused_from": reused_from,
    }


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


__all__ = ["OptunaSearch", "FINISHED", "STUDY_ATTR"]
