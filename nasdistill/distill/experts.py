"""Expert trajectories: cached training runs of real-data networks, matched by ``mtt``.

An *expert* is a network of a fixed architecture trained on the real training split with plain
SGD (Cazenavette et al., CVPR 2022: lr 0.01, no momentum, no weight decay, batch 256, DSA
augmentation); its *trajectory* is its flattened parameter vector at the start and after every
epoch. :class:`ExpertBuffer` trains ``num_experts`` of them once and keeps them under
``$NASDISTILL_HOME/experts/<key>/``, where ``key`` hashes (dataset fingerprint, architecture,
training settings, number of experts, seed)::

    <key>/expert_000.safetensors   tensors epoch_000 ... epoch_<E>, each the flat float32 parameters
    <key>/expert_001.safetensors
    <key>/manifest.json            settings, parameter names/shapes, per-expert loss and test accuracy

Every file is written atomically and an expert's file appears only once it is fully trained, so a
killed build keeps its finished experts and the next call trains only the missing ones. Nothing
is pickled. Once complete, the buffer is reused without any training.

>>> buf = ExpertBuffer(num_experts=10, train_epochs=20).build(dataset)    # trains or loads
>>> start, target = buf.fetch(expert=3, start_epoch=5, target_epoch=7)    # flat parameter vectors
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import time
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .. import __version__
from .._params import is_whole
from .._io import atomic_path, fingerprint, home_dir, write_json
from .._seed import derive_seed
from ..data import ImageDataset
from ..errors import ConfigError, warn
from ..progress import progress_bar, resolve_disable
from ..spaces import get_space
from ..training import TrainConfig, evaluate, make_augment, train

#: Bumped when the on-disk layout changes (it is part of the key).
FORMAT_VERSION = 1


def flat_parameters(model: torch.nn.Module) -> torch.Tensor:
    """All parameters of ``model`` as one float32 CPU vector, in ``named_parameters`` order."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).float().cpu()


class ExpertBuffer:
    """``num_experts`` training trajectories of one architecture on one dataset, built once and cached.

    Args:
        num_experts: independently initialised networks to train (paper: 100).
        train_epochs: epochs each expert trains; its trajectory has ``train_epochs + 1`` checkpoints (paper: 50).
        lr: SGD learning rate, no momentum, no weight decay, constant (paper's ``lr_teacher``: 0.01).
        batch_size: real images per SGD step (paper: 256).
        augment: augmentation while training, ``"dsa"`` (paper), ``None`` or a DSA strategy.
        net: architecture id in ``space`` (default: the space's default, DC's ConvNet).
        space: the search space the architecture comes from.
        seed: seeds every expert's initialisation and batch order (expert ``i`` uses ``(seed, i)``).
        device: where experts train (not part of the key).
        root: folder holding buffers (default: ``$NASDISTILL_HOME/experts``).
    """

    def __init__(self, num_experts: int = 100, train_epochs: int = 50, lr: float = 0.01, batch_size: int = 256,
                 augment: str | None = "dsa", net: str | None = None, space: str = "convnet", seed: int = 0,
                 device: str = "cpu", root: str | os.PathLike | None = None):
        self.num_experts = num_experts
        self.train_epochs = train_epochs
        self.lr = lr
        self.batch_size = batch_size
        self.augment = augment
        self.net = net
        self.space = space
        self.seed = seed
        self.device = device
        self.root = Path(root).expanduser() if root else home_dir() / "experts"
        self._validate()
        self._space = get_space(space)
        self.arch = self._space.parse_id(net) if net else self._space.default_arch()
        if self.arch is None:
            raise ConfigError(f"space {self._space.name!r} has no default architecture", "pass net=ARCH_ID (--net)")
        self.arch_id = self._space.arch_id(self.arch)

    def _validate(self) -> None:
        for name in ("num_experts", "train_epochs", "batch_size"):
            v = getattr(self, name)
            if not is_whole(v) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}",
                                  f"pass --{name.replace('_', '-')} 1 or more")
            setattr(self, name, int(v))
        if not isinstance(self.lr, (int, float)) or self.lr <= 0:
            raise ConfigError(f"the experts' learning rate must be positive, got {self.lr!r}", "pass a positive lr")
        make_augment(self.augment, 3)  # unknown strategies fail here, before any work

    def __repr__(self) -> str:
        return (f"ExpertBuffer(num_experts={self.num_experts}, train_epochs={self.train_epochs}, lr={self.lr}, "
                f"batch_size={self.batch_size}, augment={self.augment!r}, net={self.arch_id!r}, "
                f"space={self._space.name!r}, seed={self.seed})")

    # --- identity --------------------------------------------------------------------------------
    def training(self) -> dict:
        """The training settings of every expert (part of the key)."""
        return {"epochs": self.train_epochs, "lr": self.lr, "momentum": 0.0, "weight_decay": 0.0,
                "schedule": "constant", "batch_size": self.batch_size, "augment": self.augment}

    def key(self, dataset: ImageDataset) -> str:
        return fingerprint({"dataset": dataset.fingerprint, "space": self._space.name, "arch": self.arch_id,
                            "training": self.training(), "num_experts": self.num_experts, "seed": self.seed,
                            "format": FORMAT_VERSION})

    def path(self, dataset: ImageDataset) -> Path:
        """The buffer's folder (it may not exist yet)."""
        return self.root / self.key(dataset)

    def _expert_file(self, folder: Path, i: int) -> Path:
        return folder / f"expert_{i:03d}.safetensors"

    def finished(self, dataset: ImageDataset) -> list[int]:
        """Indices of the experts whose trajectories are stored."""
        folder, key = self.path(dataset), self.key(dataset)
        return [i for i in range(self.num_experts) if self._read_meta(self._expert_file(folder, i), key) is not None]

    def is_complete(self, dataset: ImageDataset) -> bool:
        """Whether every expert is stored (then :meth:`build` trains nothing)."""
        return len(self.finished(dataset)) == self.num_experts

    def command(self, dataset: ImageDataset) -> str:
        """The ``nasdistill experts`` command line that builds this buffer."""
        parts = ["nasdistill experts", *dataset.load_flags()]
        parts += [f"--num-experts {self.num_experts}", f"--train-epochs {self.train_epochs}", f"--net {self.arch_id}"]
        if self._space.name != "convnet":
            parts.append(f"--space {self.space}")
        if self.lr != 0.01:
            parts.append(f"--lr {self.lr}")
        if self.batch_size != 256:
            parts.append(f"--batch-size {self.batch_size}")
        if self.augment != "dsa":
            parts.append(f"--augment {self.augment or 'none'}")
        parts.append(f"--seed {self.seed}")
        if self.root != home_dir() / "experts":
            parts.append(f"--store {self.root}")
        return " ".join(parts)

    def mtt_settings(self) -> dict:
        """The ``mtt`` settings that select this buffer (those equal to mtt's defaults left out, but
        always the expert count, epochs and architecture)."""
        out: dict = {"num_experts": self.num_experts, "train_epochs": self.train_epochs, "net": self.arch_id}
        if self._space.name != "convnet":
            out["space"] = self.space
        for name, value, default in (("lr_teacher", self.lr, 0.01), ("batch_train", self.batch_size, 256),
                                     ("augment", self.augment, "dsa"), ("expert_seed", self.seed, 0)):
            if value != default:
                out[name] = value
        if self.root != home_dir() / "experts":
            out["experts_dir"] = str(self.root)
        return out

    # --- building ---------------------------------------------------------------------------------
    def build(self, dataset: ImageDataset, *, progress: bool | None = None,
              log: Callable[[str], None] | None = None) -> "ExpertBuffer":
        """Train the experts not stored yet (none when the buffer is complete), then load the manifest.

        Sets ``dir_`` (the buffer's folder), ``manifest_``, ``trained_`` (indices trained by this
        call) and ``reused_`` (indices found on disk).
        """
        folder, key = self.path(dataset), self.key(dataset)
        done = set(self.finished(dataset))
        todo = [i for i in range(self.num_experts) if i not in done]
        self.trained_: list[int] = []
        self.reused_ = sorted(done)
        if todo:
            if log:
                log(f"training {len(todo)} of {self.num_experts} experts ({self.arch_id}, {self.train_epochs} epochs "
                    f"each) into {folder}")
            bar = progress_bar(total=self.num_experts * self.train_epochs, initial=len(done) * self.train_epochs,
                               desc=f"training experts ({self.arch_id})", unit="epoch",
                               disable=resolve_disable(progress))
            try:
                for i in todo:
                    self._train_expert(dataset, i, folder, key, bar)
                    self.trained_.append(i)
            finally:
                bar.close()
        manifest_path = folder / "manifest.json"
        manifest = None if todo else self._read_manifest(manifest_path, key)
        if manifest is None:
            write_json(manifest_path, self._manifest(dataset, folder, key))
            manifest = json.loads(manifest_path.read_text())
        self.manifest_ = manifest
        self.dir_ = folder
        if log and not todo:
            log(f"reusing {self.num_experts} stored experts from {folder}")
        return self

    def load(self, dataset: ImageDataset) -> "ExpertBuffer":
        """Open a complete stored buffer without training; :class:`ConfigError` naming the build command if absent."""
        if not self.is_complete(dataset):
            have = len(self.finished(dataset))
            raise ConfigError(f"no complete expert buffer ({have} of {self.num_experts} experts stored) "
                              f"at {self.path(dataset)}", f"run `{self.command(dataset)}` first")
        return self.build(dataset)

    def network(self, dataset: ImageDataset, i: int) -> torch.nn.Module:
        """Expert ``i``'s network at its seeded initialisation (epoch 0 of its trajectory)."""
        return self._space.build_seeded(self.arch, dataset.image_shape, dataset.num_classes,
                                        derive_seed(self.seed, "expert", i))

    def _train_expert(self, dataset: ImageDataset, i: int, folder: Path, key: str, bar) -> None:
        t0 = time.perf_counter()
        model = self.network(dataset, i).to(self.device)
        checkpoints = {"epoch_000": flat_parameters(model)}

        def record(epoch: int, m: torch.nn.Module) -> None:
            checkpoints[f"epoch_{epoch:03d}"] = flat_parameters(m)
            bar.update(1)

        config = TrainConfig(epochs=self.train_epochs, batch_size=self.batch_size, lr=self.lr, momentum=0.0,
                             weight_decay=0.0, schedule="constant", augment=self.augment,
                             seed=derive_seed(self.seed, "expert-batches", i) % (2**31))
        log = train(model, dataset.x_train, dataset.y_train, config, device=self.device, callback=record)
        acc = evaluate(model, dataset.x_test, dataset.y_test, device=self.device) if len(dataset.y_test) else None
        meta = {"key": key, "expert": str(i), "epochs": str(self.train_epochs),
                "train_losses": json.dumps([round(v, 6) for v in log.losses]),
                "test_acc": json.dumps(acc), "wall_time_s": f"{time.perf_counter() - t0:.3f}"}
        with atomic_path(self._expert_file(folder, i)) as tmp:
            save_file({k: v.contiguous() for k, v in checkpoints.items()}, str(tmp), metadata=meta)

    def _read_manifest(self, path: Path, key: str) -> dict | None:
        """The stored manifest for ``key``, or None when missing; a damaged or foreign one is
        reported (one line) and rebuilt from the expert files."""
        if not path.is_file():
            return None
        try:
            manifest = json.loads(path.read_text())
            if manifest.get("key") == key and len(manifest.get("experts", ())) == self.num_experts:
                return manifest
            problem = "belongs to other settings"
        except (OSError, ValueError, AttributeError) as e:
            problem = f"is unreadable ({type(e).__name__})"
        warn(f"expert manifest {path} {problem}; rebuilt it from the expert files")
        return None

    def _read_meta(self, path: Path, key: str) -> dict | None:
        """The metadata of a finished expert file for ``key``, or None (missing, foreign or unreadable)."""
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                names = set(f.keys())
        except Exception as e:  # a damaged file counts as not finished and is trained again
            warn(f"expert file {path} is unreadable ({type(e).__name__}); discarded it, that expert is trained again")
            path.unlink(missing_ok=True)
            return None
        want = {f"epoch_{e:03d}" for e in range(self.train_epochs + 1)}
        return meta if meta.get("key") == key and want <= names else None

    def _manifest(self, dataset: ImageDataset, folder: Path, key: str) -> dict:
        model = self.network(dataset, 0)
        experts = []
        for i in range(self.num_experts):
            meta = self._read_meta(self._expert_file(folder, i), key) or {}
            experts.append({"file": self._expert_file(folder, i).name, "train_losses": json.loads(meta["train_losses"]),
                            "test_acc": json.loads(meta["test_acc"]), "wall_time_s": float(meta["wall_time_s"])})
        return {
            "key": key, "format": FORMAT_VERSION, "num_experts": self.num_experts, "train_epochs": self.train_epochs,
            "dataset": {"name": dataset.name, "fingerprint": dataset.fingerprint, "info": dict(dataset.info)},
            "space": self._space.name, "arch": self.arch, "arch_id": self.arch_id, "training": self.training(),
            "seed": self.seed,
            "param_names": [n for n, _ in model.named_parameters()],
            "param_shapes": [list(p.shape) for p in model.parameters()],
            "num_params": sum(p.numel() for p in model.parameters()),
            "experts": experts,
            "nasdistill_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }

    # --- reading ----------------------------------------------------------------------------------
    def _check_built(self) -> None:
        if not hasattr(self, "dir_"):
            raise ConfigError("the expert buffer is not built or loaded", "call build(dataset) or load(dataset) first")

    def fetch(self, expert: int, start_epoch: int, target_epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat parameters of ``expert`` after ``start_epoch`` and after ``target_epoch`` epochs (CPU float32)."""
        self._check_built()
        if not 0 <= expert < self.num_experts or not 0 <= start_epoch <= target_epoch <= self.train_epochs:
            raise ConfigError(f"no checkpoints (expert {expert}, epochs {start_epoch} and {target_epoch}) in a buffer "
                              f"of {self.num_experts} experts x {self.train_epochs} epochs",
                              "ask for experts and epochs inside the buffer")
        with safe_open(str(self._expert_file(self.dir_, expert)), framework="pt") as f:
            return f.get_tensor(f"epoch_{start_epoch:03d}"), f.get_tensor(f"epoch_{target_epoch:03d}")

    def trajectory(self, expert: int) -> torch.Tensor:
        """The whole trajectory of ``expert``: (train_epochs + 1, num_params)."""
        self._check_built()
        with safe_open(str(self._expert_file(self.dir_, expert)), framework="pt") as f:
            return torch.stack([f.get_tensor(f"epoch_{e:03d}") for e in range(self.train_epochs + 1)])
