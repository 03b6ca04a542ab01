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
"""

from __future__ import annotations

import datetime as _dt
import inspect
import math
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Iterator

import torch

from .. import __version__
from .._io import atomic_path, fingerprint
from .._seed import derive_seed, generator, seeded
from ..data import ImageDataset, Proxy
from ..data.proxy import FORMAT_VERSION
from ..errors import ConfigError
from ..progress import progress_bar, resolve_disable
from ..spaces import SearchSpace, get_space

#: Settings that never change the result, left out of fingerprints.
RUNTIME_SETTINGS = frozenset({"device", "checkpoint_every", "progress"})


class Distiller(ABC):
    """Base class of every distillation method."""

    name: ClassVar[str] = "?"
    #: One-line description shown by ``nasdistill distill --help``.
    summary: ClassVar[str] = ""
    #: Settings that replace the paper's defaults when a CPU budget is asked for (``--budget cpu``).
    cpu_budget: ClassVar[dict] = {}

    def __init__(self, ipc: int = 10, seed: int = 0, device: str = "cpu"):
        self.ipc = ipc
        self.seed = seed
        self.device = device

    # --- scikit-learn style parameters ---------------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        names: list[str] = []
        for klass in cls.__mro__:
            if "__init__" in vars(klass):
                for p in inspect.signature(klass.__init__).parameters.values():
                    if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name not in names:
                        names.append(p.name)
        return names

    def get_params(self) -> dict[str, Any]:
        """All constructor settings (as scikit-learn's ``get_params``)."""
        return {k: getattr(self, k) for k in self._param_names()}

    def settings(self) -> dict[str, Any]:
        """The settings that determine the result (runtime-only ones such as ``device`` left out)."""
        return {k: v for k, v in sorted(self.get_params().items()) if k not in RUNTIME_SETTINGS}

    def key(self, dataset: ImageDataset) -> str:
        """Fingerprint of (dataset fingerprint, method, settings incl. ipc and seed, format)."""
        return fingerprint({"dataset": dataset.fingerprint, "method": self.name, "settings": self.settings(),
                            "format": FORMAT_VERSION})

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # --- fitting -------------------------------------------------------------------------------
    def check(self, dataset: ImageDataset) -> None:
        """Raise :class:`ConfigError` for settings that cannot work on ``dataset``."""
        smallest = min(dataset.class_counts())
        if not isinstance(self.ipc, int) or self.ipc < 1:
            raise ConfigError(f"ipc must be a positive integer, got {self.ipc!r}", "pass --ipc 1 or more")
        if self.ipc > smallest:
            raise ConfigError(f"ipc={self.ipc} is larger than the smallest class of {dataset.name} "
                              f"({smallest} training images)", f"use --ipc {smallest} or less")

    def _check_ints(self, *names: str, low: int = 1, optional: bool = False) -> None:
        """Raise :class:`ConfigError` unless each named setting is an integer >= ``low`` (or None when
        ``optional``): the one message every method gives for counts and batch sizes."""
        for name in names:
            v = getattr(self, name)
            if optional and v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                alt = " or None" if optional else ""
                raise ConfigError(f"{self.name} needs {name} >= {low}{alt}, got {v!r}",
                                  f"pass {name}={max(low, 1)} or more" + (", or leave it unset" if optional else ""))

    def _check_positive(self, *names: str) -> None:
        """Raise :class:`ConfigError` unless each named setting is a finite number above 0 (rates, scales)."""
        for name in names:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ConfigError(f"{self.name} needs a positive {name}, got {v!r}", f"pass a positive {name}")

    def fit(self, dataset: ImageDataset, *, checkpoint_dir: str | Path | None = None,
            progress: bool | None = None) -> "Distiller":
        """Distil ``dataset``; results land in ``images_``, ``labels_``, ``history_``, ``wall_time_``."""
        self.check(dataset)
        self.dataset_ = dataset
        self.key_ = self.key(dataset)
        self.history_: list[float] = []
        t0 = time.perf_counter()
        images, labels = self._fit(dataset, checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir else None,
                                   progress=progress)
        self.images_ = images.detach().float().cpu()
        self.labels_ = labels.detach().cpu()
        self.wall_time_ = time.perf_counter() - t0 + getattr(self, "_resumed_time", 0.0)
        self.wall_time_this_run_ = time.perf_counter() - t0
        return self

    @abstractmethod
    def _fit(self, dataset: ImageDataset, *, checkpoint_dir: Path | None,
             progress: bool | None) -> tuple[torch.Tensor, torch.Tensor]:
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

    Subclasses implement ``_init_state(dataset)`` (create parameters/optimisers) and
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
    def _init_state(self, dataset: ImageDataset) -> None:
        """Create ``self.images`` (a leaf tensor with requires_grad), ``self.labels`` and optimisers."""

    @abstractmethod
    def _step(self, t: int, dataset: ImageDataset, g: torch.Generator) -> float:
        """Run outer iteration ``t`` with generator ``g``; return its loss."""

    def _extra_state(self) -> dict:
        """Further state to checkpoint: ``{"name": obj}`` with obj a tensor, number or ``state_dict()`` owner."""
        return {}

    # --- the loop ----------------------------------------------------------------------------
    def _fit(self, dataset, *, checkpoint_dir, progress):
        self._init_state(dataset)
        start = 0
        ckpt = checkpoint_dir / f"{self.name}-{self.key_}.ckpt" if checkpoint_dir else None
        self._resumed_time = 0.0
        self._t0 = time.perf_counter()
        if ckpt is not None and ckpt.is_file():
            start = self._restore(ckpt)
        bar = progress_bar(range(start, self.iterations), total=self.iterations, initial=start,
                           desc=f"distilling ({self.name}, ipc {self.ipc})", unit="it", disable=resolve_disable(progress))
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
                self._save(ckpt, t + 1)
                last_saved = t + 1
        bar.close()
        if ckpt is not None and last_saved != self.iterations and self.iterations:
            self._save(ckpt, self.iterations)
        return self.images.detach(), self.labels.detach()

    def _state(self) -> dict:
        state = {"images": self.images.detach().cpu()}
        for k, v in self._extra_state().items():
            state[k] = v.state_dict() if hasattr(v, "state_dict") else (v.detach().cpu() if torch.is_tensor(v) else v)
        return state

    def _save(self, path: Path, done: int) -> None:
        payload = {"key": self.key_, "done": done, "history": list(self.history_), "state": self._state(),
                   "time_spent": self._resumed_time + time.perf_counter() - self._t0}
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)

    def _restore(self, path: Path) -> int:
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
        self._resumed_time = float(payload.get("time_spent", 0.0))
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


def has_batchnorm(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
