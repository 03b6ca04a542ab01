"""``sre2l``: squeeze, recover, relabel (Yin, Xing & Shen, NeurIPS 2023, "Squeeze, Recover and
Relabel: Dataset Condensation at ImageNet Scale From A New Perspective").

Distillation decoupled from the data, so its cost does not grow with the dataset beyond one
teacher's training:

1. *squeeze*: a teacher with BatchNorm is trained once on the full training split
   (:class:`~nasdistill.distill.relabel.Teacher`, stored and reused), or loaded from a local
   weights file (``teacher_weights``: a safetensors or ``torch.save`` state dict of ``teacher``);
2. *recover*: synthetic images, initialised from noise, are optimised (Adam, cosine-decayed
   learning rate) so the frozen teacher classifies them as their class and the batch statistics
   its BatchNorm layers see match the running statistics it learnt on the real data::

       L = CE(teacher(x_syn), y) + r_bn * sum_l (||mu_l(x_syn) - mu_l|| + ||sigma²_l(x_syn) - sigma²_l||)

   (the first BN layer's term weighted ``first_bn_multiplier`` times, as the authors' code does),
   under random jitter (a roll of up to ``jitter`` pixels) and horizontal flips. No real image is
   used. Images are recovered in groups of one image per class, each group its own batch for the
   BN statistics (the authors' batches hold one image per class);
3. *relabel*: the proxy's labels are the teacher's soft labels ``softmax(teacher(x)/temperature)``
   of each synthetic image (float32 ``(N, K)``), which search and validation train on with the
   soft cross-entropy. (The paper stores soft labels per augmented crop and epoch, FKD-style; here
   one soft label per image is stored, so any training recipe can use the proxy.)

Under ``torchrun`` each rank recovers a share of the groups and the gradients are summed
(:mod:`nasdistill.distill.parallel`); the teacher is trained by rank 0 first and loaded by the others.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from ...errors import ConfigError
from ...spaces import get_space
from .. import parallel
from ..base import IterativeDistiller, has_batchnorm
from ..registry import register
from ..relabel import Teacher, default_teacher_train

#: DC's ConvNet with BatchNorm: the teacher recover matches the statistics of.
DEFAULT_TEACHER = "D3-W64-relu-batchnorm-avgpool"


def load_state_dict(path: str | Path) -> dict:
    """A state dict from a ``.safetensors`` file or a ``torch.save`` file (loaded with ``weights_only``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"teacher weights {path} not found", "pass teacher_weights=PATH of an existing file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt or foreign file is a user error
        raise ConfigError(f"cannot read teacher weights {path} ({type(e).__name__}: {e})",
                          "pass a safetensors or torch.save state dict of the teacher architecture") from e
    return state.get("state_dict", state) if isinstance(state, dict) else state


class BNStatistics:
    """Forward hooks on every BatchNorm layer of ``model``: after a forward pass, :meth:`loss` is
    sum over layers of ||batch mean - running mean||_2 + ||batch var - running var||_2."""

    def __init__(self, model: torch.nn.Module, first_multiplier: float = 1.0):
        self.layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        self.first_multiplier = first_multiplier
        self.terms: list[torch.Tensor] = []
        self.handles = [m.register_forward_hook(self._hook) for m in self.layers]

    def _hook(self, module, inputs, _output):
        x = inputs[0]
        dims = [0] + list(range(2, x.ndim))
        mean = x.mean(dims)
        var = x.var(dims, unbiased=False)
        self.terms.append(torch.linalg.vector_norm(mean - module.running_mean, 2)
                          + torch.linalg.vector_norm(var - module.running_var, 2))

    def loss(self) -> torch.Tensor:
        terms, self.terms = self.terms, []
        return sum(t * (self.first_multiplier if i == 0 else 1.0) for i, t in enumerate(terms))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@register
class SRe2L(IterativeDistiller):
    name = "sre2l"
    summary = "squeeze, recover, relabel: match a trained teacher's BatchNorm statistics; soft labels (Yin et al.)"
    cpu_budget = {"iterations": 200, "teacher_epochs": 5}
    prepares = "a teacher trained on the full training split"

    def __init__(self, ipc: int = 50, iterations: int = 1000, lr_img: float = 0.25, r_bn: float = 0.01,
                 first_bn_multiplier: float = 10.0, jitter: int | None = None, flip: bool | None = None,
                 teacher: str = DEFAULT_TEACHER, teacher_space: str = "convnet", teacher_epochs: int = 10,
                 teacher_seed: int = 0, teacher_weights: str | None = None, temperature: float = 1.0,
                 init: str = "noise", seed: int = 0, device: str = "cpu", checkpoint_every: int = 50):
        """Defaults are the paper's ImageNet-1k recover settings (1,000 iterations of Adam with
        betas (0.5, 0.9) at lr 0.25, cosine decay, r_bn 0.01, first BN layer x10, random flips,
        noise init), with ``jitter`` scaled to the image (the paper's 32 px at 224 px: 1/7 of the
        side; None = that fraction) and DC's ConvNet with BatchNorm trained here as the teacher.

        Args:
            lr_img: Adam's learning rate on the synthetic pixels (cosine-decayed to 0).
            r_bn: weight of the BatchNorm statistics term.
            first_bn_multiplier: extra weight of the first BN layer's term.
            jitter: largest random roll in pixels (None: 1/7 of the image side).
            flip: random horizontal flips during recovery (None: on for colour images, off for
                single-channel ones, where a flipped digit is another digit or none, as DSA's
                default strategy does; measured on an MNIST slice at ipc 10: 54% -> 80%).
            teacher: the teacher's architecture id in ``teacher_space`` (it needs BatchNorm).
            teacher_epochs / teacher_seed: the teacher's training on the full training split
                (the rest of :func:`~nasdistill.distill.relabel.default_teacher_train`).
            teacher_weights: a local state-dict file of ``teacher`` trained on this dataset
                (no training then; its accuracy is measured on the test split).
            temperature: of the soft labels.
        """
        super().__init__(ipc=ipc, iterations=iterations, init=init, seed=seed, device=device,
                         checkpoint_every=checkpoint_every)
        self.lr_img = lr_img
        self.r_bn = r_bn
        self.first_bn_multiplier = first_bn_multiplier
        self.jitter = jitter
        self.flip = flip
        self.teacher = teacher
        self.teacher_space = teacher_space
        self.teacher_epochs = teacher_epochs
        self.teacher_seed = teacher_seed
        self.teacher_weights = teacher_weights
        self.temperature = temperature

    # --- settings ----------------------------------------------------------------------------------
    def settings(self) -> dict:
        """The settings, plus the precision the teacher trains in on this device when it is not fp32
        (:func:`~nasdistill.distill.relabel.default_teacher_train`: bf16 where the device computes it
        in hardware), so the proxy's key, as the teacher's, tells the two teachers apart; keys on
        fp32 devices and with ``teacher_weights`` are unchanged."""
        out = super().settings()
        precision = self.make_teacher().train.precision
        if self.teacher_weights is None and precision != "fp32":
            out["teacher_precision"] = precision
        return out

    def check(self, dataset):
        super().check(dataset)
        self._check_ints("teacher_epochs", low=1)
        self._check_ints("jitter", low=0, optional=True)
        self._check_positive("lr_img", "temperature", "first_bn_multiplier")
        if isinstance(self.r_bn, bool) or not isinstance(self.r_bn, (int, float)) or not self.r_bn >= 0:
            raise ConfigError(f"sre2l needs r_bn >= 0, got {self.r_bn!r}", "pass r_bn=0.01")
        teacher = self.make_teacher()
        model = get_space(self.teacher_space).build(teacher._arch(), dataset.image_shape, dataset.num_classes)
        if not has_batchnorm(model):
            raise ConfigError(f"sre2l's teacher {self.teacher} has no BatchNorm layer to match",
                              f"pass --set teacher={DEFAULT_TEACHER} (or another batchnorm architecture)")
        if self.teacher_weights is not None and not Path(self.teacher_weights).expanduser().is_file():
            raise ConfigError(f"teacher weights {self.teacher_weights} not found",
                              "pass teacher_weights=PATH of an existing file")

    def make_teacher(self) -> Teacher:
        """The (unfitted) teacher these settings squeeze."""
        return Teacher(arch=self.teacher, space=self.teacher_space,
                       train=default_teacher_train(self.device, epochs=self.teacher_epochs), seed=self.teacher_seed,
                       device=self.device, store=False if self.teacher_weights else None)

    def prepare(self, dataset, *, progress=None, log=None) -> Teacher:
        """Squeeze: train (or reload) the teacher, or load ``teacher_weights``; return it fitted."""
        teacher = self.make_teacher()
        if self.teacher_weights is None:
            if not parallel.is_writer():
                parallel.barrier()  # rank 0 trains and stores the teacher; the others load it
            teacher.fit(dataset)
            if parallel.is_writer():
                parallel.barrier()
        else:
            from ...training import evaluate

            space = get_space(self.teacher_space)
            arch = teacher._arch()
            model = space.build(arch, dataset.image_shape, dataset.num_classes)
            try:
                model.load_state_dict(load_state_dict(self.teacher_weights))
            except RuntimeError as e:
                raise ConfigError(f"teacher weights {self.teacher_weights} do not fit {self.teacher} on "
                                  f"{dataset.name} ({str(e).splitlines()[0]})",
                                  "pass the weights of that architecture trained on this dataset") from e
            teacher.model_ = model.to(self.device).eval()
            teacher.key_ = f"file:{Path(self.teacher_weights).name}"
            teacher.arch_id_ = space.arch_id(arch)
            teacher.test_acc_ = evaluate(model, dataset.x_test, dataset.y_test, device=self.device)
            teacher.val_acc_, teacher.reused_, teacher.wall_time_ = None, True, 0.0
            teacher.dataset_ = {"name": dataset.name, "fingerprint": dataset.fingerprint}
        if log:
            log(f"sre2l teacher {teacher.arch_id_}: test acc {teacher.test_acc_:.4f}")
        return teacher

    # --- recover -----------------------------------------------------------------------------------
    def _init_state(self, dataset, ctx):
        self.teacher_ = self.prepare(dataset)
        net = self.teacher_.model_.to(self.device).eval()
        for p in net.parameters():
            p.requires_grad_(False)
        self.net = net
        self.bn = BNStatistics(net, self.first_bn_multiplier)
        self.images = self._initial_images(dataset).to(self.device).requires_grad_(True)
        self.labels = self._class_labels(dataset)
        self.opt = torch.optim.Adam([self.images], lr=self.lr_img, betas=(0.5, 0.9), eps=1e-8)
        mean = torch.tensor(dataset.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(dataset.std, dtype=torch.float32).view(1, -1, 1, 1)
        self.low, self.high = ((0 - mean) / std).to(self.device), ((1 - mean) / std).to(self.device)
        side = min(dataset.image_shape[1:])
        self.max_shift = self.jitter if self.jitter is not None else max(1, side // 7)
        self.flip_ = self.flip if self.flip is not None else dataset.image_shape[0] != 1
        # group j: image j of every class (one batch of BN statistics)
        k = dataset.num_classes
        self.groups = [torch.arange(k) * self.ipc + j for j in range(self.ipc)]

    def _extra_state(self):
        return {"opt": self.opt}

    def draw_view(self, g: torch.Generator) -> tuple[int, int, bool]:
        """One random jitter (dx, dy) and flip, drawn from ``g``."""
        dx = dy = 0
        if self.max_shift:
            dx, dy = (int(v) for v in torch.randint(-self.max_shift, self.max_shift + 1, (2,), generator=g))
        flip = bool(torch.rand(1, generator=g) < 0.5) if self.flip_ else False
        return dx, dy, flip

    def group_loss(self, x: torch.Tensor, y: torch.Tensor, view: tuple[int, int, bool]) -> torch.Tensor:
        """The recover loss of one group of synthetic images (one BN batch) under one jitter/flip ``view``."""
        dx, dy, flip = view
        if dx or dy:
            x = torch.roll(x, shifts=(dx, dy), dims=(2, 3))
        if flip:
            x = torch.flip(x, dims=(3,))
        logits = self.net(x)
        return F.cross_entropy(logits, y) + self.r_bn * self.bn.loss()

    def _set_lr(self, t: int) -> None:
        lr = 0.5 * (1 + math.cos(math.pi * t / max(1, self.iterations))) * self.lr_img
        for group in self.opt.param_groups:
            group["lr"] = lr

    def _step(self, t, dataset, g):
        self._set_lr(t)
        self.opt.zero_grad(set_to_none=True)
        total = 0.0
        labels = self.labels.to(self.device)
        for j, idx in enumerate(self.groups):
            view = self.draw_view(g)  # every rank draws every group's view: the same random stream
            if not parallel.mine(j):
                continue
            idx = idx.to(self.device)
            loss = self.group_loss(self.images[idx], labels[idx], view)
            loss.backward()
            total += float(loss.detach())
        parallel.all_reduce_grad(self.images)  # a no-op in one process
        self.opt.step()
        with torch.no_grad():
            self.images.copy_(torch.maximum(torch.minimum(self.images, self.high), self.low))
        return parallel.all_reduce_sum(total, self.device) / len(self.groups)

    # --- relabel -----------------------------------------------------------------------------------
    def _fit(self, dataset, ctx):
        images, _ = super()._fit(dataset, ctx)
        self.bn.remove()
        with torch.no_grad():
            logits = torch.cat([self.net(images[i:i + 512]) for i in range(0, len(images), 512)])
        soft = torch.softmax(logits.float() / float(self.temperature), dim=1)
        self.teacher_info_ = {"teacher": self.teacher_.key_, "teacher_arch": self.teacher_.arch_id_,
                              "teacher_test_acc": self.teacher_.test_acc_, "temperature": float(self.temperature),
                              "agreement_with_hard_labels": float((soft.argmax(1).cpu() == self.labels).float().mean())}
        return images, soft

    def to_proxy(self):
        proxy = super().to_proxy()
        proxy.meta["relabel"] = dict(self.teacher_info_)
        return proxy
