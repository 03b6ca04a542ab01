"""The reference side of a ``dd`` throughput case: one Dataset Distillation iteration in plain PyTorch.

A minimal re-implementation, written for this benchmark only, of the distillation loop of Dataset
Distillation (Wang, Zhu, Torralba & Efros, 2018; github SsnL/dataset-distillation,
``train_distilled_image.py``), laid out as that code base writes it and computing what nasdistill's
``dd`` computes with the settings :func:`dd_case` gives it:

* the synthetic set is a list of ``distill_steps`` leaf tensors, one per inner step, each holding
  ``ipc / distill_steps`` noise images a class (class-major, labels ``[0, 0, ..., 1, 1, ...]``);
  the ``distill_steps x distill_epochs`` step sizes are ``softplus(raw)`` with ``raw`` initialised at
  ``log(expm1(lr))``; Adam (betas 0.5, 0.999) on images and raw step sizes, ``StepLR`` decay;
* the network is a plain ``nn.Module`` (DC's ConvNet, :class:`_plain.PlainConvNet`, nasdistill's
  ``net``) run from ONE flat parameter vector (the reference's ``ReparamModule``), re-initialised
  every iteration (its ``unknown_init``) with the reference's ``init_weights`` for ``--init default``:
  ``reset_parameters()`` on conv/linear layers, weight 1 and bias 0 on norm layers;
* forward: a Python loop over the steps, ``gw = autograd.grad(ce, w, lr, create_graph=True)``,
  ``w <- (w - gw)`` detached into a new leaf; then the cross-entropy of the last ``w`` on a real batch
  drawn from a shuffled ``DataLoader``;
* backward as the reference writes it: ``dL/dw`` of the last step, then for each step in reverse one
  Hessian-vector product ``autograd.grad(gw, (w, data, lr), -dw)`` giving that step's image and
  step-size gradients and ``dw`` of the step before; image gradients are added to ``.grad`` and the
  step-size ones back-propagated through the softplus in one ``autograd.backward``; the gradients
  are divided by the networks sampled; ``optimizer.step()``; the loss read with ``.item()``.

This is the same math as nasdistill's single backward through the whole unrolled graph (``dd``'s
``_unroll``/``_step``): the ``__main__`` check feeds both the same initial images, network and
real batch and compares loss and gradients.

Settings, the same on both sides (the paper's MNIST settings for random initialisations, which are
nasdistill's defaults): 10 inner steps x 3 epochs, step sizes initialised at 0.02 and learned,
Adam lr 0.01 halved every 2,340 iterations, one fresh network per iteration, noise init, no
augmentation, ``ipc / steps`` images a class per step (nasdistill's ``split_steps``). Deviations from
the paper's code, all shared by both sides: DC's ConvNet (instance norm) instead of LeNet; PyTorch's
default initialisation (the reference's ``--init default``; its default is ``xavier``, which
nasdistill does not offer); real batches of ``args.batch_real`` (256) instead of 1,024, full batches
only (``drop_last``) as nasdistill always scores exactly ``batch_real`` images; the decay counted in
iterations (nasdistill's ``lr_decay_every``) instead of ``StepLR`` stepped per epoch of the loader.
Reference-side details that change no result: ``zero_grad(set_to_none=False)`` (the reference was
written when ``zero_grad`` zeroed in place, and adds into ``.grad``); the loss is read every
iteration (the reference reads it every ``log_interval``); ``model.eval()`` for the final loss
(nothing in the ConvNet depends on the mode). The reference needs ``ipc`` to be a multiple of the
inner steps (distinct images per step); :func:`dd_case` raises otherwise.

    cd benchmarks && OMP_NUM_THREADS=1 python plain_dd.py      # smoke check: tiny settings
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from _plain import ARCH, PlainConvNet, ours_variants
from torch import nn

from nasdistill.distill import get_method

#: The settings both sides run with (nasdistill's ``dd`` names); ``dd_case`` adds ``batch_real``.
DD_SETTINGS = {"inner_steps": 10, "inner_epochs": 3, "lr_inner": 0.02, "lr_img": 0.01, "lr_decay": 0.5,
               "lr_decay_every": 2_340, "n_inits": 1, "split_steps": True, "init": "noise", "augment": None}


# --- the reference side: plain PyTorch, written for this benchmark ------------------------------
class FlatNet:
    """A plain module run from one flat parameter vector (the reference's ``ReparamModule``)."""

    def __init__(self, net: nn.Module):
        self.net = net
        self.names = [k for k, _ in net.named_parameters()]
        self.shapes = [p.shape for _, p in net.named_parameters()]
        self.numels = [p.numel() for _, p in net.named_parameters()]

    def reset(self) -> torch.Tensor:
        """Re-initialise as the reference's ``init_weights`` with ``--init default``; the flat vector."""
        with torch.no_grad():
            for m in self.net.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    m.reset_parameters()
                elif "Norm" in type(m).__name__:
                    m.weight.fill_(1)
                    m.bias.zero_()
            return torch.cat([p.reshape(-1) for p in self.net.parameters()])

    def forward_with_param(self, x, flat):
        params = {k: t.view(s) for k, t, s in zip(self.names, flat.split(self.numels), self.shapes)}
        return torch.func.functional_call(self.net, params, (x,))


class PlainDD:
    """The reference ``Trainer``'s state and loop: per-step synthetic tensors, raw step sizes, Adam."""

    def __init__(self, ds, ipc, batch_real, device, inner_steps=10, inner_epochs=3, lr_inner=0.02, lr_img=0.01,
                 lr_decay=0.5, lr_decay_every=2_340, n_nets=1, images=None):
        if ipc % inner_steps:
            raise ValueError(f"the reference needs ipc ({ipc}) to be a multiple of the inner steps ({inner_steps})")
        self.device, self.n_nets = device, n_nets
        self.T = inner_steps * inner_epochs
        self.epochs = inner_epochs
        k, per_step = ds.num_classes, ipc // inner_steps
        label = torch.arange(k, device=device).repeat(per_step, 1).t().reshape(-1)  # [0, 0, ..., 1, 1, ...]
        self.labels = [label for _ in range(inner_steps)]
        if images is None:  # noise, one tensor a step
            self.data = [torch.randn(k * per_step, *ds.image_shape, device=device, requires_grad=True)
                         for _ in range(inner_steps)]
        else:  # nasdistill's layout (class-major, ipc a class): step s holds within-class indices s, s + G, ...
            images = images.reshape(k, ipc, *ds.image_shape)
            self.data = [images[:, s::inner_steps].reshape(-1, *ds.image_shape).clone().to(device).requires_grad_()
                         for s in range(inner_steps)]
        raw = torch.tensor(lr_inner, device=device).repeat(self.T, 1)
        self.raw_lrs = raw.expm1_().log_().requires_grad_()  # the inverse of the softplus
        self.params = [*self.data, self.raw_lrs]
        self.optimizer = torch.optim.Adam(self.params, lr=lr_img, betas=(0.5, 0.999))
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=lr_decay_every or 1 << 62,
                                                         gamma=lr_decay)
        for p in self.params:
            p.grad = torch.zeros_like(p)
        c, h = ds.image_shape[0], ds.image_shape[1]
        self.model = FlatNet(PlainConvNet(c, h, k).to(device))
        self.loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(ds.x_train, ds.y_train),
                                                  batch_size=batch_real, shuffle=True, drop_last=True)
        self._batches = self._real_batches()

    def _real_batches(self):
        while True:
            yield from self.loader

    def get_steps(self):
        lrs = F.softplus(self.raw_lrs).unbind()
        data_labels = (x for _ in range(self.epochs) for x in zip(self.data, self.labels))
        return [(data, label, lr) for (data, label), lr in zip(data_labels, lrs)]

    def forward(self, w, rdata, rlabel, steps):
        self.model.net.train()
        w = w.requires_grad_()
        params, gws = [w], []
        for data, label, lr in steps:
            loss = F.cross_entropy(self.model.forward_with_param(data, w), label)
            gw, = torch.autograd.grad(loss, w, lr.squeeze(), create_graph=True)  # lr * dloss/dw
            with torch.no_grad():
                w = w.sub(gw).requires_grad_()
            params.append(w)
            gws.append(gw)
        self.model.net.eval()
        final = F.cross_entropy(self.model.forward_with_param(rdata, params[-1]), rlabel)
        return final, (final, params, gws)

    def backward(self, steps, saved):
        final, params, gws = saved
        dw, = torch.autograd.grad(final, (params[-1],))
        self.model.net.train()
        datas, gdatas, lrs, glrs = [], [], [], []
        for (data, _, lr), w, gw in reversed(list(zip(steps, params, gws))):
            gw_w, gdata, glr = torch.autograd.grad(outputs=(gw,), inputs=(w, data, lr), grad_outputs=(dw.neg(),))
            with torch.no_grad():
                datas.append(data)
                gdatas.append(gdata)
                lrs.append(lr)
                glrs.append(glr)
                dw.add_(gw_w)  # dL/dw of the step before
        return datas, gdatas, lrs, glrs

    def accumulate_grad(self, grad_infos):
        outs, grads = [], []
        for datas, gdatas, lrs, glrs in grad_infos:
            outs += lrs
            grads += glrs
            for d, g in zip(datas, gdatas):
                d.grad.add_(g)
        torch.autograd.backward(outs, grads)

    def iteration(self, rdata, rlabel, starts=None) -> float:
        """One outer iteration on a real batch; ``starts``: the networks' flat initial parameters
        (default: ``n_nets`` fresh initialisations)."""
        self.optimizer.zero_grad(set_to_none=False)
        rdata, rlabel = rdata.to(self.device), rlabel.to(self.device)
        steps = self.get_steps()
        losses, grad_infos = [], []
        for j in range(self.n_nets):
            w = starts[j] if starts is not None else self.model.reset()
            final, saved = self.forward(w, rdata, rlabel, steps)
            losses.append(final.detach())
            grad_infos.append(self.backward(steps, saved))
            del final, saved
        self.accumulate_grad(grad_infos)
        losses = torch.stack(losses, 0).sum()
        for t in [p.grad for p in self.params] + [losses]:
            t.div_(self.n_nets)
        self.optimizer.step()
        self.scheduler.step()
        return losses.item()

    def train(self, iterations: int) -> float:
        loss = float("nan")
        for _ in range(iterations):
            rdata, rlabel = next(self._batches)
            loss = self.iteration(rdata, rlabel)
        return loss


# --- the case -----------------------------------------------------------------------------------
def dd_settings(args) -> dict:
    """nasdistill's ``dd`` settings for a case (``args.dd_steps``/``args.dd_epochs`` override 10 x 3)."""
    return {**DD_SETTINGS, "inner_steps": getattr(args, "dd_steps", DD_SETTINGS["inner_steps"]),
            "inner_epochs": getattr(args, "dd_epochs", DD_SETTINGS["inner_epochs"]), "batch_real": args.batch_real}


def plain_dd(ds, args, images=None) -> PlainDD:
    """The reference loop with the case's settings (``images``: start from these instead of noise)."""
    s = dd_settings(args)
    return PlainDD(ds, args.ipc, s["batch_real"], args.device, s["inner_steps"], s["inner_epochs"], s["lr_inner"],
                   s["lr_img"], s["lr_decay"], s["lr_decay_every"], s["n_inits"], images=images)


def dd_case(ds, args, iterations: int):
    """-> (reference, {variant_label: ours}) : zero-arg callables, each running `iterations` dd iterations.

    Both return the last iteration's loss. The reference's state (synthetic images, step sizes, Adam)
    is built once here and carried on by every call; ours runs ``fit`` from scratch each call.
    Variants: ``fp32``, plus one per ``args.precisions`` entry if ``dd`` takes a ``precision``."""
    settings = dd_settings(args)
    ref = plain_dd(ds, args)

    def reference():
        return ref.train(iterations)

    return reference, ours_variants("dd", ds, args, iterations, **settings)


# --- smoke check ----------------------------------------------------------------------------------
def _same_math(ds, args) -> dict:
    """Run one iteration of each side from the same images, network and real batch; the differences."""
    from nasdistill._seed import derive_seed, generator

    settings = dd_settings(args)
    common = dict(ipc=args.ipc, net=ARCH, device=args.device, checkpoint_every=0, **settings)
    start = get_method("dd", iterations=0, **common).fit(ds, progress=False).images_
    d = get_method("dd", iterations=1, **common).fit(ds, progress=False)
    net = d.network_sampler().build(d.seed, 0, ds, args.device)  # iteration 0's network and real batch
    idx = torch.randperm(len(ds.x_train), generator=generator(derive_seed(d.seed, "step", 0)))[: args.batch_real]
    ref = plain_dd(ds, args, images=start)
    flat = torch.cat([p.detach().reshape(-1) for p in net.parameters()]).to(args.device)
    loss = ref.iteration(ds.x_train[idx], ds.y_train[idx], starts=[flat])
    k, steps = ds.num_classes, settings["inner_steps"]
    ours_grad = d.images.grad.reshape(k, args.ipc, -1)
    ref_grad = torch.stack([g.grad.reshape(k, -1, ours_grad.shape[-1]) for g in ref.data], 2).reshape_as(ours_grad)
    rel = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
    return {"loss ours": d.history_[0], "loss reference": loss,
            "image grad rel. diff": rel(ref_grad, ours_grad),
            "step-size grad rel. diff": rel(ref.raw_lrs.grad.reshape(-1), d.raw_lrs.grad.reshape(-1)),
            "steps": steps}


if __name__ == "__main__":
    import types

    from _common import data_root

    from nasdistill.data import load_dataset

    torch.manual_seed(0)
    ds = load_dataset("mnist", root=data_root(), train_per_class=16, test_per_class=10)
    args = types.SimpleNamespace(ipc=2, batch_real=32, device="cpu", precisions=["fp32"], dd_steps=2, dd_epochs=2)
    print("settings:", dd_settings(args), "ipc", args.ipc)
    print("same inputs:", _same_math(ds, args))
    reference, variants = dd_case(ds, args, iterations=1)
    for label, fn in [("reference", reference), *variants.items()]:
        t0 = time.perf_counter()
        loss = fn()
        print(f"{label}: {time.perf_counter() - t0:.3f} s, loss {loss:.4f}")
