"""The distillation protocol: scikit-learn-style estimators that condense a dataset into a proxy.

A method is a :class:`Distiller` subclass registered under a name. Its constructor takes settings
only; :meth:`Distiller.fit` does the work and leaves the results in attributes ending in ``_``
(``images_``, ``labels_``, ``history_``, ``wall_time_``); :meth:`Distiller.to_proxy` packs them
into a :class:`~nasdistill.data.Proxy`.

Iterative methods subclass :class:`IterativeDistiller` and write three small hooks
(``_init_state``, ``_step``, and optionally ``_extra_state``). The loop around them gives every
method a progress bar with the current loss, checkpoints every ``checkpoint_every`` iterations
(resumed automatically by the same call) and determinism: iteration ``t`` draws all its
randomness from a generator seeded by ``(seed, t)``, so a resumed run equals an uninterrupted one.
Methods that match real and synthetic data through freshly drawn networks subclass
:class:`NetworkMatchingDistiller`, which owns their ``augment``/``net``/``space``/``matching_space``
settings. Hooks receive a :class:`FitContext` (progress, checkpoint folder, time already spent).

A method needing more than the dataset (``mtt``'s expert trajectories) builds it in
:meth:`Distiller.prepare`; :meth:`Distiller.preset` gives the settings of a compute budget.
"""

from __future__ import annotations

import datetime as _dt
import inspect
import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

import torch

from .. import __version__
from .._io import atomic_path, fingerprint
from .._params import Params, is_whole
from .._seed import derive_seed, generator, seeded
from ..data import ImageDataset, Proxy, as_dataset
from ..checks import check_setting_values
from ..data.proxy import FORMAT_VERSION
from ..errors import ConfigError, warn
from ..progress import progress_bar, resolve_disable
from ..spaces import SearchSpace, get_space
from ..training import make_augment
from ..training.memory import keep_freed_memory

#: Settings that never change the result, left out of fingerprints.
RUNTIME_SETTINGS = frozenset({"device", "checkpoint_every", "progress"})

#: Settings left out of fingerprints while they hold this value (added after proxies were stored:
#: leaving the default out keeps those proxies' keys).
OMITTED_DEFAULTS = {"precision": "fp32", "compile": False}

#: Compute budgets :meth:`Distiller.preset` knows: the paper's settings, or the method's CPU preset.
BUDGETS = ("cpu", "paper")


@dataclass
class FitContext:
    """What one :meth:`Distiller.fit` call hands its hooks: where checkpoints go, whether to show
    progress bars, and the time already spent on this result by the runs it resumes."""

    checkpoint_dir: Path | None = None
    progress: bool | None = None
    #: seconds spent by earlier, interrupted runs whose checkpoint this run resumed
    resumed_time: float = 0.0
    #: ``time.perf_counter()`` when this run started
    started: float = field(default_factory=time.perf_counter)

    def this_run(self) -> float:
        """Seconds since this run started."""
        return time.perf_counter() - self.started

    def total(self) -> float:
        """Seconds spent on the result so far, resumed runs included."""
        return self.resumed_time + self.this_run()


class Distiller(Params, ABC):
    """Base class of every distillation method."""

    name: ClassVar[str] = "?"
    #: One-line description shown by ``nasdistill distill --help``.
    summary: ClassVar[str] = ""
    #: Settings that replace the paper's defaults when a CPU budget is asked for (``--budget cpu``).
    cpu_budget: ClassVar[dict] = {}
    #: Settings that let :meth:`fit` run :meth:`prepare` itself when its result is missing
    #: (``mtt``: ``build_experts=True``); :meth:`preset` adds them unless asked not to.
    self_prepare: ClassVar[dict] = {}
    #: Settings without a usable default that a caller must give (``rank``: its ``pool``); benchmarks
    #: that run "every method" leave such methods out unless they supply them.
    requires: ClassVar[tuple[str, ...]] = ()
    #: What :meth:`prepare` builds, for messages (None: nothing).
    prepares: ClassVar[str | None] = None
    #: For methods whose :meth:`prepare` trains expert trajectories: the ``nasdistill experts``
    #: options (num_experts, train_epochs, net, space, lr, batch_size, augment, seed, root) -> the
    #: method's settings they set. Empty: ``nasdistill experts --method`` refuses the method.
    expert_options: ClassVar[dict[str, str]] = {}

    def __init__(self, ipc: int = 10, seed: int = 0, device: str = "cpu"):
        self.ipc = ipc
        self.seed = seed
        self.device = device

    def settings(self) -> dict[str, Any]:
        """The settings that determine the result (runtime-only ones such as ``device`` left out)."""
        return {k: v for k, v in sorted(self.get_params().items())
                if k not in RUNTIME_SETTINGS and not (k in OMITTED_DEFAULTS and v == OMITTED_DEFAULTS[k])}

    def key(self, dataset: ImageDataset) -> str:
        """Fingerprint of (dataset fingerprint, method, settings incl. ipc and seed, format)."""
        settings = check_setting_values(type(self), self.settings())  # as check() makes them: 1 -> 1.0 for a float
        return fingerprint({"dataset": dataset.fingerprint, "method": self.name, "settings": settings,
                            "format": FORMAT_VERSION})

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    @classmethod
    def preset(cls, budget: str = "cpu", iterations: int | None = None, *, self_prepare: bool = True) -> dict:
        """The settings of a compute ``budget``: ``"cpu"``, the method's :attr:`cpu_budget`;
        ``"paper"``, none (the constructor's defaults are the paper's). With ``self_prepare`` the
        settings that let :meth:`fit` build what :meth:`prepare` builds are added (:attr:`self_prepare`);
        ``iterations`` caps the outer iterations of an iterative method."""
        if budget not in BUDGETS:
            raise ConfigError(f"unknown budget {budget!r}", f"use one of: {', '.join(BUDGETS)}")
        params = cls._param_names()
        settings = dict(cls.cpu_budget) if budget == "cpu" else {}
        if self_prepare:
            settings.update(cls.self_prepare)
        if iterations is not None and "iterations" in params:
            settings["iterations"] = min(iterations, settings.get("iterations", iterations))
        return settings

    # --- fitting -------------------------------------------------------------------------------
    def check(self, dataset: ImageDataset) -> None:
        """Raise :class:`ConfigError` for settings that cannot work on ``dataset``."""
        as_dataset(dataset, f"{type(self).__name__}.fit")
        smallest = min(dataset.class_counts())
        if not is_whole(self.ipc) or self.ipc < 1:
            raise ConfigError(f"ipc must be a positive integer, got {self.ipc!r}", "pass --ipc 1 or more")
        self.ipc = int(self.ipc)  # a NumPy integer (a grid built with NumPy) becomes the int it stands for
        if self.ipc > smallest:
            raise ConfigError(f"ipc={self.ipc} is larger than the smallest class of {dataset.name} "
                              f"({smallest} training images)", f"use --ipc {smallest} or less")
        # every setting's type and range, as `--set` checks them: the API refuses what the command line does
        for key, value in check_setting_values(type(self), {k: v for k, v in self.get_params().items()
                                                            if k != "device"}).items():
            setattr(self, key, value)

    def _check_ints(self, *names: str, low: int = 1, optional: bool = False) -> None:
        """Raise :class:`ConfigError` unless each named setting is an integer >= ``low`` (or None when
        ``optional``): the one message every method gives for counts and batch sizes."""
        for name in names:
            v = getattr(self, name)
            if optional and v is None:
                continue
            if not is_whole(v) or v < low:
                alt = " or None" if optional else ""
                raise ConfigError(f"{self.name} needs {name} >= {low}{alt}, got {v!r}",
                                  f"pass {name}={max(low, 1)} or more" + (", or leave it unset" if optional else ""))
            setattr(self, name, int(v))

    def _check_positive(self, *names: str) -> None:
        """Raise :class:`ConfigError` unless each named setting is a finite number above 0 (rates, scales)."""
        for name in names:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ConfigError(f"{self.name} needs a positive {name}, got {v!r}", f"pass a positive {name}")

    def prepare(self, dataset: ImageDataset, *, progress: bool | None = None,
                log: Callable[[str], None] | None = None) -> Any:
        """Build (or reuse) what this method needs besides ``dataset`` and return it (``mtt``: its
        :class:`~nasdistill.distill.experts.ExpertBuffer`); ``nasdistill experts`` calls it. The
        default needs nothing and returns None."""
        return None

    def fit(self, dataset: ImageDataset, *, checkpoint_dir: str | Path | None = None,
            progress: bool | None = None) -> "Distiller":
        """Distil ``dataset``; results land in ``images_``, ``labels_``, ``history_``, ``wall_time_``."""
        self.check(dataset)
        self.dataset_ = dataset
        self.key_ = self.key(dataset)
        self.history_: list[float] = []
        ctx = FitContext(checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir else None, progress=progress)
        images, labels = self._fit(dataset, ctx)
        self.images_ = images.detach().float().cpu()
        self.labels_ = labels.detach().cpu()
        self.wall_time_ = ctx.total()
        self.wall_time_this_run_ = ctx.this_run()
        return self

    @abstractmethod
    def _fit(self, dataset: ImageDataset, ctx: FitContext) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (images, labels) of the proxy."""

    def to_proxy(self) -> Proxy:
        """Pack the fitted result and its provenance into a :class:`Proxy`."""
        if not hasattr(self, "images_"):
            raise ConfigError(f"{type(self).__name__} is not fitted", "call fit(dataset) first")
        ds = self.dataset_
        meta = {
            "method": self.name,
            "ipc": self.ipc,
            "seed": self.seed,
            "settings": self.settings(),
            "key": self.key_,
            "dataset": {"name": ds.name, "fingerprint": ds.fingerprint, "mean": list(ds.mean), "std": list(ds.std),
                        "classes": list(ds.classes), "num_classes": ds.num_classes,
                        "image_shape": list(ds.image_shape), "info": dict(ds.info)},
            "wall_time_s": round(self.wall_time_, 3),
            "final_loss": self.history_[-1] if self.history_ else None,
            "iterations_done": len(self.history_),
            "loss_history": [round(float(x), 6) for x in self.history_],
            "nasdistill_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        return Proxy(self.images_, self.labels_, meta)

    # --- helpers shared by methods --------------------------------------------------------------
    def _select_real(self, dataset: ImageDataset, purpose: str = "init") -> torch.Tensor:
        """Indices of ``ipc`` random training images of each class (seeded)."""
        g = generator(derive_seed(self.seed, purpose))
        picks = [idx[torch.randperm(len(idx), generator=g)[: self.ipc]] for idx in dataset.indices_by_class()]
        return torch.cat(picks)

    def _class_labels(self, dataset: ImageDataset) -> torch.Tensor:
        return torch.arange(dataset.num_classes).repeat_interleave(self.ipc)


class IterativeDistiller(Distiller):
    """A method that optimises synthetic pixels over ``iterations`` outer steps.

    Subclasses implement ``_init_state(dataset, ctx)`` (create parameters/optimisers) and
    ``_step(t, dataset, g) -> float`` (one outer iteration, returning its loss). State to
    checkpoint is ``self.images`` plus whatever ``_extra_state()`` returns (tensors, optimiser
    state dicts, numbers).
    """

    def __init__(self, ipc: int = 10, iterations: int = 1000, init: str = "real", seed: int = 0,
                 device: str = "cpu", checkpoint_every: int = 50):
        super().__init__(ipc=ipc, seed=seed, device=device)
        self.iterations = iterations
        self.init = init
        self.checkpoint_every = checkpoint_every

    def check(self, dataset: ImageDataset) -> None:
        super().check(dataset)
        if self.iterations < 0:
            raise ConfigError("iterations must be 0 or more", "pass --iterations N")
        if self.init not in ("real", "noise"):
            raise ConfigError(f"unknown init {self.init!r}", "use --init real or --init noise")

    def _initial_images(self, dataset: ImageDataset) -> torch.Tensor:
        if self.init == "real":
            return dataset.x_train[self._select_real(dataset)].clone()
        g = generator(derive_seed(self.seed, "noise-init"))
        return torch.randn((dataset.num_classes * self.ipc, *dataset.image_shape), generator=g)

    @abstractmethod
    def _init_state(self, dataset: ImageDataset, ctx: FitContext) -> None:
        """Create ``self.images`` (a leaf tensor with requires_grad), ``self.labels`` and optimisers."""

    @abstractmethod
    def _step(self, t: int, dataset: ImageDataset, g: torch.Generator) -> float:
        """Run outer iteration ``t`` with generator ``g``; return its loss."""

    def _extra_state(self) -> dict:
        """Further state to checkpoint: ``{"name": obj}`` with obj a tensor, number or ``state_dict()`` owner."""
        return {}

    # --- the loop ----------------------------------------------------------------------------
    def _fit(self, dataset, ctx):
        if torch.device(self.device).type == "cpu":
            keep_freed_memory()  # iterations reuse each other's activation memory (see training.memory)
        self._init_state(dataset, ctx)
        start = 0
        ckpt = ctx.checkpoint_dir / f"{self.name}-{self.key_}.ckpt" if ctx.checkpoint_dir else None
        if ckpt is not None and ckpt.is_file():
            try:
                start = self._restore(ckpt, ctx)
            except Exception as e:  # truncated, garbled or foreign: discard it and start again, never unpickle
                warn(f"checkpoint {ckpt} is unreadable ({type(e).__name__}); discarded it, {self.name} starts "
                     "again from iteration 0")
                ckpt.unlink(missing_ok=True)
                self.history_, ctx.resumed_time = [], 0.0
                self.resumed_from_ = 0
                self._init_state(dataset, ctx)
                start = 0
        bar = progress_bar(range(start, self.iterations), total=self.iterations, initial=start,
                           desc=f"distilling ({self.name}, ipc {self.ipc})", unit="it",
                           disable=resolve_disable(ctx.progress))
        last_saved = start
        for t in bar:
            g = generator(derive_seed(self.seed, "step", t))
            with seeded(derive_seed(self.seed, "torch", t)):
                loss = float(self._step(t, dataset, g))
            if not math.isfinite(loss):
                raise ConfigError(f"{self.name} diverged at iteration {t} (loss {loss})",
                                  "lower the learning rates or change the init")
            self.history_.append(loss)
            bar.set_postfix(loss=f"{loss:.4g}")
            if ckpt is not None and self.checkpoint_every and (t + 1) % self.checkpoint_every == 0:
                self._save(ckpt, t + 1, ctx)
                last_saved = t + 1
        bar.close()
        if ckpt is not None and last_saved != self.iterations and self.iterations:
            self._save(ckpt, self.iterations, ctx)
        return self.images.detach(), self.labels.detach()

    def _state(self) -> dict:
        state = {"images": self.images.detach().cpu()}
        for k, v in self._extra_state().items():
            state[k] = v.state_dict() if hasattr(v, "state_dict") else (v.detach().cpu() if torch.is_tensor(v) else v)
        return state

    def _save(self, path: Path, done: int, ctx: FitContext) -> None:
        from .parallel import is_writer

        if not is_writer():  # under torchrun every rank holds the same state: rank 0 writes it
            return
        payload = {"key": self.key_, "done": done, "history": list(self.history_), "state": self._state(),
                   "time_spent": ctx.total()}
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)

    def _restore(self, path: Path, ctx: FitContext) -> int:
        """Load the checkpoint at ``path`` if it belongs to these settings; return the iterations it holds."""
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload.get("key") != self.key_:
            return 0
        state = payload["state"]
        with torch.no_grad():
            self.images.copy_(state["images"].to(self.images.device))
        for k, v in self._extra_state().items():
            if hasattr(v, "load_state_dict"):
                v.load_state_dict(state[k])
            elif torch.is_tensor(v):
                with torch.no_grad():
                    v.copy_(state[k].to(v.device))
        self.history_ = list(payload["history"])
        ctx.resumed_time = float(payload.get("time_spent", 0.0))
        self.resumed_from_ = int(payload["done"])
        return self.resumed_from_


class NetworkSampler:
    """Draws the matching network for each outer iteration.

    By default a freshly initialised fixed architecture (``net``, an id in ``space``; the space's
    default architecture when None). With ``matching_space`` set, the architecture itself is drawn
    from that space every iteration, so the proxy serves the whole family a search will explore.
    """

    def __init__(self, space: str | SearchSpace = "convnet", net: str | None = None,
                 matching_space: str | SearchSpace | None = None):
        self.space = get_space(space)
        self.arch = self.space.parse_id(net) if net else self.space.default_arch()
        if self.arch is None and matching_space is None:
            raise ConfigError(f"space {self.space.name!r} has no default architecture", "pass net=ARCH_ID")
        self.matching_space = get_space(matching_space) if matching_space else None

    def arch_at(self, seed: int, t: int) -> dict:
        if self.matching_space is None:
            return self.arch
        return self.matching_space.sample(1, seed=derive_seed(seed, "arch", t), unique=False)[0]

    def build(self, seed: int, t: int, dataset: ImageDataset, device) -> torch.nn.Module:
        space = self.matching_space or self.space
        model = space.build_seeded(self.arch_at(seed, t), dataset.image_shape, dataset.num_classes,
                                   derive_seed(seed, "net", t))
        return model.to(device)

    def iter_archs(self, seed: int, n: int) -> Iterator[dict]:
        for t in range(n):
            yield self.arch_at(seed, t)


class NetworkMatchingDistiller(IterativeDistiller):
    """An iterative method that matches real and synthetic data through networks it draws itself.

    Owns the four settings every such method shares: ``augment`` (a DSA strategy, ``"dsa"`` or
    None), ``net`` (the architecture id in ``space``; None: the space's default) and
    ``matching_space`` (draw the architecture from this space instead). :meth:`check` rejects
    unknown ones before any work; :meth:`_init_networks` sets ``self.aug`` (the augmentation, or
    None) and ``self.nets`` (the :class:`NetworkSampler`) for ``_init_state``.
    """

    def __init__(self, ipc: int = 10, iterations: int = 1000, init: str = "real", augment: str | None = None,
                 net: str | None = None, space: str = "convnet", matching_space: str | None = None, seed: int = 0,
                 device: str = "cpu", checkpoint_every: int = 50):
        super().__init__(ipc=ipc, iterations=iterations, init=init, seed=seed, device=device,
                         checkpoint_every=checkpoint_every)
        self.augment = augment
        self.net = net
        self.space = space
        self.matching_space = matching_space

    def check(self, dataset: ImageDataset) -> None:
        super().check(dataset)
        self._check_networks(dataset)

    def _check_networks(self, dataset: ImageDataset) -> None:
        """Raise :class:`ConfigError` for an unknown augmentation, space or architecture."""
        make_augment(self.augment, dataset.image_shape[0])
        self.network_sampler()

    def network_sampler(self) -> NetworkSampler:
        """The sampler of this method's matching networks."""
        return NetworkSampler(self.space, self.net, self.matching_space)

    def _init_networks(self, dataset: ImageDataset) -> None:
        """Set ``self.aug`` (the augmentation for ``dataset``'s channels, or None) and ``self.nets``."""
        self.aug = make_augment(self.augment, dataset.image_shape[0])
        self.nets = self.network_sampler()


def changed_defaults(parent_init: Callable, doc: str, **defaults) -> Callable:
    """An ``__init__`` that is ``parent_init`` with some defaults changed, for a method that is
    another one with other defaults (``dsa`` is ``dc`` with real init and DSA augmentation).

    Its signature (which :meth:`Distiller.get_params`, fingerprints and ``--help`` read) lists
    every setting of ``parent_init`` in the same order, with ``defaults`` replacing theirs.
    """
    sig = inspect.signature(parent_init)
    unknown = sorted(set(defaults) - set(sig.parameters))
    if unknown:
        raise TypeError(f"{parent_init.__qualname__} has no setting {', '.join(unknown)}")
    new = sig.replace(parameters=[p.replace(default=defaults[p.name]) if p.name in defaults else p
                                  for p in sig.parameters.values()])

    def __init__(self, *args, **kwargs):
        bound = new.bind(self, *args, **kwargs)
        bound.apply_defaults()
        parent_init(*bound.args, **bound.kwargs)

    __init__.__signature__ = new
    __init__.__doc__ = doc
    return __init__


def has_batchnorm(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
