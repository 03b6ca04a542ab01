"""``mtt``: matching training trajectories (Cazenavette et al., CVPR 2022, "Dataset Distillation by
Matching Training Trajectories").

Long-range parameter matching against *experts*, networks trained on the real data whose
parameters were saved after every epoch (:mod:`nasdistill.distill.experts`, built once and cached).
Each iteration picks a random expert and a random start epoch ``s < max_start_epoch``. A student
starts from the expert's parameters θ_s and takes ``syn_steps`` (N) plain-SGD steps on mini-batches
of the DSA-augmented synthetic images with a *learnable* learning rate; the loss is the distance
left to the expert's parameters ``expert_epochs`` (M) epochs later, relative to the distance the
expert covered::

    L = ||θ_student − θ_{s+M}||² / ||θ_s − θ_{s+M}||²

and gradients flow back through the whole unroll (``torch.func``) to the pixels and the learning
rate. So N steps on the synthetic set are trained to do the work of M epochs on the real set.

``trajectories`` > 1 matches that many (expert, start epoch) segments per iteration and averages
their losses (a larger batch of trajectories; 1 is the paper's). It is also how ``mtt`` runs
data-parallel under ``torchrun`` (:mod:`nasdistill.distill.parallel`): every rank draws every
segment (one random stream; each segment's unroll has a generator of its own, seeded from it),
unrolls only its share, and the gradients on the pixels and the learning rate are summed across
ranks before the identical optimiser steps. Set ``trajectories`` to a multiple of the world size.
"""

from __future__ import annotations

import torch

from ..._seed import generator
from ...errors import ConfigError
from ...training import make_augment
from ...training.loop import bf16_autocast, check_precision
from .. import parallel
from ..base import IterativeDistiller
from ..experts import ExpertBuffer
from ..registry import register
from ..unroll import parameters, sgd_unroll, unroll_layout

#: The learnable synthetic learning rate never drops below this fraction of ``lr_teacher``.
LR_FLOOR = 1e-4

#: The CPU preset's matching network: DC's ConvNet at width 32 (experts are the dominant cost).
CPU_NET = "D3-W32-relu-instancenorm-avgpool"


@register
class MatchingTrainingTrajectories(IterativeDistiller):
    name = "mtt"
    summary = "trajectory matching: N steps on synthetic data reach where M epochs of real data went (Cazenavette et al.)"
    cpu_budget = {"iterations": 100, "syn_steps": 10, "batch_syn": 50, "expert_epochs": 2, "max_start_epoch": 2,
                  "num_experts": 2, "train_epochs": 3, "net": CPU_NET}
    self_prepare = {"build_experts": True}
    prepares = "expert trajectories"
    #: ``nasdistill experts`` options -> the mtt settings they set (see :meth:`prepare`).
    expert_options = {"num_experts": "num_experts", "train_epochs": "train_epochs", "net": "net", "space": "space",
                      "lr": "lr_teacher", "batch_size": "batch_train", "augment": "augment", "seed": "expert_seed",
                      "root": "experts_dir"}

    def __init__(self, ipc: int = 10, iterations: int = 5000, syn_steps: int = 30, expert_epochs: int = 2,
                 max_start_epoch: int = 20, lr_img: float = 100.0, lr_lr: float = 1e-5, lr_teacher: float = 0.01,
                 momentum: float = 0.5, batch_syn: int | None = None, num_experts: int = 100, train_epochs: int = 50,
                 batch_train: int = 256, expert_seed: int = 0, build_experts: bool = False,
                 experts_dir: str | None = None, init: str = "real", augment: str | None = "dsa",
                 net: str | None = None, space: str = "convnet", trajectories: int = 1, precision: str = "fp32",
                 seed: int = 0, device: str = "cpu", checkpoint_every: int = 50):
        """Defaults are the paper's CIFAR-10 settings at 10 images per class without ZCA whitening
        (ZCA is not implemented): 5,000 iterations, N = 30 student steps, M = 2 expert epochs, start
        epochs below 20, image lr 100 (the paper's no-ZCA value; 1000 is for ZCA-whitened images)
        with momentum 0.5, lr-of-lr 1e-5 (momentum 0.5), synthetic lr initialised at the experts'
        0.01, every synthetic image in each student step, real init, DSA augmentation, DC's default
        ConvNet; experts: 100 trained for 50 epochs (SGD lr 0.01, no momentum, batch 256, DSA).

        Args:
            syn_steps: N, student SGD steps on synthetic mini-batches per iteration.
            expert_epochs: M, epochs of the expert between the start and the target checkpoints.
            max_start_epoch: start checkpoints are drawn from epochs 0 .. max_start_epoch - 1.
            lr_img / momentum: SGD on the synthetic pixels.
            lr_lr: SGD (momentum 0.5) on the learnable synthetic learning rate (kept above
                ``LR_FLOOR`` x lr_teacher; the paper does not bound it, but a rate <= 0 stalls the student).
            lr_teacher: the experts' learning rate, and the initial synthetic learning rate.
            batch_syn: synthetic images per student step (None: all of them).
            num_experts, train_epochs, batch_train, expert_seed: the expert buffer to match
                (built by ``nasdistill experts``; see :class:`~nasdistill.distill.experts.ExpertBuffer`).
            build_experts: train the experts here when they are not cached (otherwise a ConfigError
                names the ``nasdistill experts`` command to run).
            experts_dir: folder of expert buffers (default: ``$NASDISTILL_HOME/experts``).
            augment: DSA augmentation of the experts' real batches and of the student's synthetic batches.
            net: architecture id of the experts and the student in ``space`` (default: its default architecture).
            trajectories: expert segments matched per iteration, their losses averaged (the paper: 1;
                under ``torchrun`` the ranks share them, so use a multiple of the world size).
            precision: ``fp32``, or ``bf16`` for the student's forward passes under bfloat16 autocast
                (parameters, their updates and the distance stay float32): ~1.8x faster on CPUs with
                AMX, the pixels' gradient within cosine 0.999 of float32's (measured on DC's ConvNet,
                10 steps); it changes the numerics, so it is off by default.
        """
        super().__init__(ipc=ipc, iterations=iterations, init=init, seed=seed, device=device,
                         checkpoint_every=checkpoint_every)
        self.syn_steps = syn_steps
        self.expert_epochs = expert_epochs
        self.max_start_epoch = max_start_epoch
        self.lr_img = lr_img
        self.lr_lr = lr_lr
        self.lr_teacher = lr_teacher
        self.momentum = momentum
        self.batch_syn = batch_syn
        self.num_experts = num_experts
        self.train_epochs = train_epochs
        self.batch_train = batch_train
        self.expert_seed = expert_seed
        self.build_experts = build_experts
        self.experts_dir = experts_dir
        self.augment = augment
        self.net = net
        self.space = space
        self.trajectories = trajectories
        self.precision = precision

    def settings(self):
        # whether experts may be built here, and where they live, do not change the result
        return {k: v for k, v in super().settings().items() if k not in ("build_experts", "experts_dir")}

    def expert_buffer(self) -> ExpertBuffer:
        """The expert buffer these settings match against (not built or loaded yet)."""
        return ExpertBuffer(num_experts=self.num_experts, train_epochs=self.train_epochs, lr=self.lr_teacher,
                            batch_size=self.batch_train, augment=self.augment, net=self.net, space=self.space,
                            seed=self.expert_seed, device=self.device, root=self.experts_dir)

    def check(self, dataset):
        super().check(dataset)
        self._check_ints("syn_steps", "expert_epochs", "max_start_epoch", "trajectories")
        if self.max_start_epoch + self.expert_epochs > self.train_epochs + 1:
            raise ConfigError(
                f"max_start_epoch={self.max_start_epoch} + expert_epochs={self.expert_epochs} reaches past the "
                f"experts' last checkpoint (train_epochs={self.train_epochs})",
                f"lower them so that max_start_epoch + expert_epochs <= {self.train_epochs + 1}, or raise train_epochs")
        self._check_ints("batch_syn", optional=True)
        if not isinstance(self.build_experts, bool):
            raise ConfigError(f"build_experts must be true or false, got {self.build_experts!r}",
                              "pass --set build_experts=true or false")
        self._check_positive("lr_teacher")
        check_precision(self.precision)
        self.expert_buffer()  # bad expert settings (net, augment, counts) fail before any work

    def prepare(self, dataset, *, progress=None, log=None) -> ExpertBuffer:
        """Train (or reuse) the expert trajectories these settings match against; return the built buffer."""
        return self.expert_buffer().build(dataset, progress=progress, log=log)

    # --- the algorithm ---------------------------------------------------------------------------
    def _init_state(self, dataset, ctx):
        buffer = self.expert_buffer()
        if not buffer.is_complete(dataset):
            if not self.build_experts:
                have = len(buffer.finished(dataset))
                raise ConfigError(
                    f"mtt needs expert trajectories ({self.num_experts} experts x {self.train_epochs} epochs of "
                    f"{buffer.arch_id} on {dataset.name}; {have} stored in {buffer.path(dataset)})",
                    f"run `{buffer.command(dataset)}` first, or pass --set build_experts=true")
        if not parallel.is_writer():
            parallel.barrier()  # rank 0 trains (or finds) and stores the experts; the others then load them
        self.buffer_ = self.prepare(dataset, progress=ctx.progress)
        if parallel.is_writer():
            parallel.barrier()  # a no-op in one process
        self.images = self._initial_images(dataset).to(self.device).requires_grad_(True)
        self.labels = self._class_labels(dataset)
        self.syn_lr = torch.tensor(float(self.lr_teacher), device=self.device).requires_grad_(True)
        self.opt_img = torch.optim.SGD([self.images], lr=self.lr_img, momentum=self.momentum)
        self.opt_lr = torch.optim.SGD([self.syn_lr], lr=self.lr_lr, momentum=0.5)
        self.aug = make_augment(self.augment, dataset.image_shape[0])
        self.student = self.buffer_.network(dataset, 0).to(self.device).train()
        for p in self.student.parameters():
            p.requires_grad_(False)
        names = list(parameters(self.student))
        shapes = [list(p.shape) for p in self.student.parameters()]
        if names != self.buffer_.manifest_["param_names"] or shapes != self.buffer_.manifest_["param_shapes"]:
            raise ConfigError(f"the expert buffer at {self.buffer_.dir_} holds another network's parameters",
                              "delete that folder and build the experts again")
        self._shapes = dict(zip(names, shapes))
        self._labels_dev = self.labels.to(self.device)

    def _extra_state(self):
        return {"opt_img": self.opt_img, "opt_lr": self.opt_lr, "syn_lr": self.syn_lr}

    def _unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        out, i = {}, 0
        for name, shape in self._shapes.items():
            n = int(torch.Size(shape).numel())
            out[name] = flat[i:i + n].view(shape)
            i += n
        return out

    def _augment(self, x, g):
        return self.aug(x, generator=g)

    def _segment_loss(self, expert: int, start_epoch: int, g: torch.Generator) -> torch.Tensor:
        """The normalised distance left after unrolling the student from one expert segment."""
        start, target = self.buffer_.fetch(expert, start_epoch, start_epoch + self.expert_epochs)
        start, target = start.to(self.device), target.to(self.device)
        theta0 = start.clone().requires_grad_(True)  # a leaf the unroll can differentiate through
        with unroll_layout(self.student, self.precision, self.device) as lay, \
                bf16_autocast(self.device, self.precision):
            final, _ = sgd_unroll(self.student, self._unflatten(theta0), self.images, self._labels_dev,
                                  steps=self.syn_steps, lr=self.syn_lr, batch_size=self.batch_syn, generator=g,
                                  augment=self._augment if self.aug is not None else None, layout=lay)
        student = torch.cat([final[k].reshape(-1) for k in self._shapes])
        return ((student - target) ** 2).sum() / ((start - target) ** 2).sum().clamp_min(1e-12)

    def _draw(self, g: torch.Generator) -> tuple[int, int]:
        return int(torch.randint(self.num_experts, (1,), generator=g)), int(torch.randint(self.max_start_epoch, (1,),
                                                                                         generator=g))

    def _step(self, t, dataset, g):
        self.opt_img.zero_grad(set_to_none=True)
        self.opt_lr.zero_grad(set_to_none=True)
        if self.trajectories == 1 and parallel.world()[1] == 1:  # the paper's iteration, on the iteration's stream
            loss = self._segment_loss(*self._draw(g), g)
            loss.backward(inputs=[self.images, self.syn_lr])
            total = loss.item()
        else:
            # every rank draws every segment; each unroll has its own generator, so a rank needs
            # only its segments' draws; each segment's graph is freed by its own backward
            segments = [(*self._draw(g), int(torch.randint(2**62, (1,), generator=g))) for _ in range(self.trajectories)]
            total = 0.0
            for j, (expert, start_epoch, seed) in enumerate(segments):
                if not parallel.mine(j):
                    continue
                loss = self._segment_loss(expert, start_epoch, generator(seed)) / self.trajectories
                loss.backward(inputs=[self.images, self.syn_lr])
                total += loss.item()
            for p in (self.images, self.syn_lr):
                parallel.all_reduce_grad(p)  # a no-op in one process
            total = parallel.all_reduce_sum(total, self.device)
        self.opt_img.step()
        self.opt_lr.step()
        with torch.no_grad():  # a rate <= 0 would stop or reverse the student: keep it positive
            self.syn_lr.clamp_(min=self.lr_teacher * LR_FLOOR)
        return total

    def _fit(self, dataset, ctx):
        images, labels = super()._fit(dataset, ctx)
        self.syn_lr_ = float(self.syn_lr.detach())
        return images, labels

    def to_proxy(self):
        proxy = super().to_proxy()
        proxy.meta["syn_lr"] = self.syn_lr_
        proxy.meta["experts"] = {"key": self.buffer_.key(self.dataset_), "arch": self.buffer_.arch_id,
                                 "num_experts": self.num_experts, "train_epochs": self.train_epochs}
        return proxy
