"""Relabelling: a teacher trained on the full data gives any proxy soft labels.

Soft labels carry what the hard ones cannot: how much an image of a ``3`` also looks like an ``8``.
Large-scale distillation (SRe2L, RDED) stores a teacher's soft labels with its synthetic images; it
is one of the strongest known levers on what a small set teaches. Here it is a step after any
method: the proxy's images stay, its labels become ``softmax(teacher(x) / temperature)`` (float32
``(N, K)``), and search and validation train on them with the soft cross-entropy.

>>> teacher = Teacher(arch="D3-W64-relu-instancenorm-avgpool", train=TrainConfig(epochs=5)).fit(dataset)
>>> soft = relabel(proxy, teacher, temperature=1.0)
>>> soft.labels.shape, soft.meta["relabel"]["teacher_test_acc"]

A teacher is trained once per (dataset, architecture, budget, seed) and kept as a ``.safetensors``
state dict (never a pickle) in ``$NASDISTILL_HOME/teachers`` with a JSON sidecar; a second call
loads it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from .._io import fingerprint, home_dir, write_bytes, write_json
from ..data import ImageDataset, Proxy
from ..errors import ConfigError, ProxyError
from ..spaces import get_space
from ..training import TrainConfig, evaluate, predict, resolve_precision, train

#: DC's ConvNet at width 64: a good teacher that trains in minutes on a CPU.
DEFAULT_TEACHER_ARCH = "D3-W64-relu-instancenorm-avgpool"
#: 10 epochs on the full training split, cosine decay, DSA augmentation, bf16 autocast (what a teacher
#: gets where the device computes bf16 in hardware; elsewhere :func:`default_teacher_train` gives fp32).
DEFAULT_TEACHER_TRAIN = TrainConfig(epochs=10, batch_size=128, lr=0.01, schedule="cosine", augment="dsa",
                                    precision="bf16")


def default_teacher_train(device: str = "cpu", **changes) -> TrainConfig:
    """:data:`DEFAULT_TEACHER_TRAIN` (with ``changes``) in the device's fastest precision: bf16 where it
    computes bf16 in hardware (a CUDA GPU with bf16, a CPU with AMX or AVX512-BF16), fp32 elsewhere, where
    bf16 is emulated and slower (sre2l's ResNet-18 teacher test on a 2-core AVX2 CPU: 106 s in bf16, 20 s
    in fp32). Resolved before the teacher is keyed, so its key names the precision that ran."""
    return DEFAULT_TEACHER_TRAIN.replace(precision=resolve_precision("auto", device), **changes)
TEACHER_FORMAT = "nasdistill.teacher/1"


@dataclass
class Teacher:
    """A network trained on the full training split, whose predictions relabel proxies.

    Settings only; :meth:`fit` trains (or loads the stored weights). Fitted attributes:
    ``model_`` (in eval mode), ``test_acc_``, ``val_acc_``, ``key_``, ``reused_`` (loaded from the store).

    Args:
        arch: an architecture of ``space``: its id (e.g. ``D3-W64-relu-instancenorm-avgpool``) or a dict.
        space: the search space ``arch`` belongs to.
        train: the teacher's training budget on the full training split (None:
            :func:`default_teacher_train` for ``device``).
        seed: seeds the weights and the batches.
        device: torch device.
        store: folder of stored teachers (None: ``$NASDISTILL_HOME/teachers``; False: keep nothing).
    """

    arch: str | Mapping = DEFAULT_TEACHER_ARCH
    space: str = "convnet"
    train: TrainConfig | None = None
    seed: int = 0
    device: str = "cpu"
    store: str | os.PathLike | None | bool = None

    def __post_init__(self) -> None:
        if self.train is None:  # the default budget in the device's fastest precision
            self.train = default_teacher_train(self.device)

    def _arch(self) -> dict:
        space = get_space(self.space)
        return space.parse_id(self.arch) if isinstance(self.arch, str) else space.validate(dict(self.arch))

    def describe(self, dataset: ImageDataset) -> dict:
        """What the teacher's weights depend on (its key hashes this)."""
        space = get_space(self.space)
        return {"format": TEACHER_FORMAT, "dataset": dataset.fingerprint, "space": space.name,
                "arch_id": space.arch_id(self._arch()), "train": self.train.budget(), "seed": int(self.seed)}

    def key(self, dataset: ImageDataset) -> str:
        return fingerprint(self.describe(dataset), n=20)

    def fit(self, dataset: ImageDataset) -> "Teacher":
        from safetensors.torch import load as st_load
        from safetensors.torch import save as st_save

        space = get_space(self.space)
        arch = self._arch()
        self.key_ = self.key(dataset)
        model = space.build_seeded(arch, dataset.image_shape, dataset.num_classes, self.seed)
        root = None if self.store is False else Path(self.store or home_dir() / "teachers").expanduser()
        path = root / f"{self.key_}.safetensors" if root is not None else None
        self.reused_ = False
        if path is not None and path.is_file():
            try:
                model.load_state_dict(st_load(path.read_bytes()))
                info = json.loads(path.with_suffix(".json").read_text())
                self.test_acc_, self.val_acc_ = info["test_acc"], info.get("val_acc")
                self.wall_time_ = info.get("wall_time", 0.0)
                self.reused_ = True
            except (OSError, ValueError, KeyError, RuntimeError):
                model = space.build_seeded(arch, dataset.image_shape, dataset.num_classes, self.seed)
        if not self.reused_:
            t0 = time.perf_counter()
            train(model, dataset.x_train, dataset.y_train, self.train.replace(seed=self.seed), device=self.device)
            self.wall_time_ = time.perf_counter() - t0
            self.test_acc_ = evaluate(model, dataset.x_test, dataset.y_test, device=self.device)
            self.val_acc_ = evaluate(model, dataset.x_val, dataset.y_val, device=self.device) if len(dataset.y_val) \
                else None
            if path is not None:
                state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
                write_json(path.with_suffix(".json"), {**self.describe(dataset), "test_acc": self.test_acc_,
                                                       "val_acc": self.val_acc_, "wall_time": self.wall_time_})
                write_bytes(path, st_save(state))  # the weights last: a sidecar alone is never trusted
        self.model_ = model.eval()
        self.arch_id_ = space.arch_id(arch)
        self.dataset_ = {"name": dataset.name, "fingerprint": dataset.fingerprint}
        return self


def relabel(proxy: Proxy, teacher: Teacher, *, temperature: float = 1.0, dataset: ImageDataset | None = None) -> Proxy:
    """A copy of ``proxy`` whose labels are ``teacher``'s soft labels at ``temperature``.

    ``teacher`` must be fitted (pass ``dataset`` to fit it here). The copy's key hashes the
    original key, the teacher's key and the temperature, so relabelled and plain proxies never mix
    in a store or a results store.
    """
    if not (isinstance(temperature, (int, float)) and temperature > 0 and temperature == temperature):
        raise ConfigError(f"relabel temperature must be a positive number, got {temperature!r}", "pass e.g. 1.0")
    if not hasattr(teacher, "model_"):
        if dataset is None:
            raise ConfigError("the teacher is not trained", "call teacher.fit(dataset) or pass dataset=")
        proxy.check_compatible(dataset)
        teacher.fit(dataset)
    source = proxy.meta.get("dataset", {})
    if source.get("fingerprint") != teacher.dataset_["fingerprint"]:
        raise ProxyError(f"the teacher was trained on {teacher.dataset_['name']} but the proxy was distilled from "
                         f"{source.get('name', 'unknown data')}", "train the teacher on the proxy's dataset")
    shape = tuple(proxy.images.shape[1:])
    logits = predict(teacher.model_, proxy.images, device=teacher.device)
    if logits.ndim != 2 or logits.shape[1] != proxy.num_classes:
        raise ProxyError(f"the teacher predicts {tuple(logits.shape[1:])} classes for {shape} images, the proxy has "
                         f"{proxy.num_classes}", "use a teacher trained on the proxy's dataset")
    soft = torch.softmax(logits.float() / float(temperature), dim=1)
    info = {"teacher": teacher.key_, "teacher_arch": teacher.arch_id_, "teacher_space": get_space(teacher.space).name,
            "teacher_train": teacher.train.budget(), "teacher_test_acc": teacher.test_acc_,
            "teacher_val_acc": teacher.val_acc_, "temperature": float(temperature),
            "agreement_with_hard_labels": float((soft.argmax(1) == proxy.hard_labels).float().mean())}
    meta = {k: v for k, v in proxy.meta.items() if k not in ("path", "reused")}
    meta["relabel"] = info
    meta["key"] = fingerprint({"proxy": proxy.key, "teacher": teacher.key_, "temperature": float(temperature)}, n=20)
    return Proxy(proxy.images.clone(), soft, meta)


__all__ = ["Teacher", "relabel", "DEFAULT_TEACHER_ARCH", "DEFAULT_TEACHER_TRAIN", "default_teacher_train"]
