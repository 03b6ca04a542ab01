"""The ``krr`` case of the throughput benchmark: FRePo's distillation loop as plain PyTorch, against nasdistill.

The reference side is a minimal re-implementation, written for this benchmark only, of one
distillation iteration of FRePo (Zhou, Nezhadarya & Ba, NeurIPS 2022, "Dataset Distillation using
Neural Feature Regression"), laid out as a straightforward PyTorch port of its JAX loop
(``proto_train_and_evaluate`` in yongchao97/FRePo, ``lib/datadistillation/frepo.py``) would be:

* the synthetic set as a small ``nn.Module`` holding the pixels and the label parameters (FRePo's
  ``ProtoHolder``), optimised by one ``torch.optim`` optimiser whose learning rate follows FRePo's
  cosine decay to 10% (set by hand each step, as optax's schedule is read each step);
* a model pool: a plain list of online states (a :class:`~_plain.PlainConvNet`, its own Adam, its
  step count), the counts staggered by ``reset_every // pool_size`` at the start, the network of the
  next iteration drawn with ``np.random.randint`` at the end of each iteration;
* each iteration: a batch of real images drawn at random; their features computed apart, without a
  graph (FRePo's ``jit_feat_fn``); the synthetic features with a graph; the kernel ridge regression
  written out (``K_ss``, ridge relative to its mean diagonal, the solve, ``K_ts``); the loss read with
  ``.item()``; then the drawn network either re-initialised (old enough) or trained one step on
  the synthetic set (FRePo's ``jit_nn_train_step_online``).

It computes the same math as nasdistill's ``krr`` with :data:`KRR_SETTINGS`, which are FRePo's
released defaults (pool of 10, one online Adam step at lr 3e-4, reset after 100 steps, ridge 1e-6,
MSE against centred one-hot targets, learned labels, real init, pixel and label lr 3e-4, real
batches of 1,024 images drawn from all classes, no augmentation) and nasdistill's ``krr`` defaults
alike. Both sides use DC's ConvNet (``_plain.ARCH``). ``args.batch_real`` (real images *a class*
in ``throughput.py``) is not used: the real batch is FRePo's 1,024 images in all (krr's own
``batch_real``), capped by the training split's size on both sides.

Where the reference follows nasdistill's ``krr`` rather than FRePo (the two sides must compute the
same thing; these are nasdistill's deviations from FRePo's math, see ``nasdistill/distill/methods/krr.py``):

* pixels and labels are optimised by Adam (FRePo: LAMB, not in torch); same lr and cosine decay;
* labels are ``softmax(logits)`` (init 0.9 on the class, 0.1 spread over the rest), centred by
  ``1/K`` as regression targets; FRePo learns the centred label vectors themselves (init centred
  one-hot) and adds a label-margin regulariser (``lb_margin_th``) to the loss;
* the loss is ``sum over classes of (pred - target)^2``, mean over the batch (FRePo: half of it);
* the online step trains on all synthetic images with soft cross-entropy against ``softmax(logits)``
  (FRePo: MSE of the logits against the label vectors, on at most 1,000 synthetic images - all of
  them at ipc <= 100 on ten classes);
* a pool network is re-initialised once it has had ``reset_every`` online steps (FRePo's
  ``step > max_online_updates``: one step more);
* the kernel solve runs in float64 with ``torch.linalg.solve`` (FRePo: float32, ``sym_pos``);
* the network is DC's ConvNet (width 128 throughout, instance norm); FRePo's default ConvNet has
  no normalisation, doubles its width each block (128, 256, 512) and pads MNIST's first conv by 3.

Setup cost: nasdistill's ``fit()`` builds its pool (10 networks and their optimisers) and the
synthetic set on every call; the reference builds its pool on every call too (inside the returned
callable), while its synthetic set and optimiser are built once by :func:`krr_case` (negligible
next to the pool).

    OMP_NUM_THREADS=1 python benchmarks/plain_krr.py      # smoke check: tiny sizes, one iteration a side
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from _plain import ARCH, PlainConvNet, ours_variants
from torch import nn

from nasdistill.distill import get_method

#: The settings both sides run with: FRePo's released defaults (nasdistill's krr defaults too).
KRR_SETTINGS = {"pool_size": 10, "online_steps": 1, "reset_every": 100, "online_lr": 3e-4, "reg": 1e-6,
                "loss": "mse", "learn_labels": True, "lr_img": 3e-4, "lr_label": 3e-4, "batch_real": 1024,
                "init": "real", "augment": None}

#: Initial probability of a synthetic image's own class (nasdistill's LABEL_INIT_CONFIDENCE).
LABEL_INIT = 0.9


# --- the reference side: plain PyTorch, written for this benchmark ------------------------------
class PlainProtos(nn.Module):
    """The synthetic set (FRePo's ``ProtoHolder``): pixels and label logits as parameters; returns the
    pixels and the centred label distributions, the regression targets."""

    def __init__(self, images, classes, num_classes):
        super().__init__()
        self.k = num_classes
        self.x_proto = nn.Parameter(images.clone())
        logits = torch.full((len(classes), num_classes), math.log((1 - LABEL_INIT) / (num_classes - 1)))
        logits[torch.arange(len(classes)), classes.cpu()] = math.log(LABEL_INIT)
        self.y_logits = nn.Parameter(logits.to(images.device))

    def labels(self):
        return torch.softmax(self.y_logits, dim=1)

    def forward(self):
        return self.x_proto, self.labels() - 1.0 / self.k


class OnlineState:
    """One pool member: a network, its optimiser and how many online steps it has taken."""

    def __init__(self, net, lr, step=0):
        self.net, self.step = net, step
        self.opt = torch.optim.Adam(net.parameters(), lr=lr)


class PlainKRR:
    """FRePo's loop state: all training images, the synthetic set and its optimiser (built once)."""

    def __init__(self, ds, ipc, settings, device):
        self.s, self.device = settings, device
        self.x, self.y = ds.x_train.to(device), ds.y_train.to(device)
        self.k, self.shape = ds.num_classes, ds.image_shape
        self.batch = min(settings["batch_real"], len(self.x))
        first = torch.cat([idx[:ipc] for idx in ds.indices_by_class()])
        self.protos = PlainProtos(self.x[first], self.y[first], self.k).to(device)
        self.opt = torch.optim.Adam([{"params": [self.protos.x_proto], "lr": settings["lr_img"]},
                                     {"params": [self.protos.y_logits], "lr": settings["lr_label"]}])
        self.base_lrs = [settings["lr_img"], settings["lr_label"]]

    def new_online_state(self, step=0):
        net = PlainConvNet(self.shape[0], self.shape[1], self.k).to(self.device)
        return OnlineState(net, self.s["online_lr"], step)

    def build_pool(self):
        n, reset = self.s["pool_size"], self.s["reset_every"]
        return [self.new_online_state((reset // n) * i) for i in range(n)]

    def predict(self, feat_s, y_s, feat_t):
        """Kernel ridge regression with the linear kernel, ridge relative to the mean diagonal, in float64."""
        fs, ft = feat_s.double(), feat_t.double()
        k_ss = fs @ fs.T
        k_ts = ft @ fs.T
        n = k_ss.shape[0]
        k_reg = k_ss + self.s["reg"] * torch.trace(k_ss) / n * torch.eye(n, dtype=k_ss.dtype, device=k_ss.device)
        return (k_ts @ torch.linalg.solve(k_reg, y_s.double())).float()

    def run(self, iterations, pool=None):
        """``iterations`` distillation iterations with a fresh pool (or ``pool``); returns every loss."""
        if pool is None:
            pool = self.build_pool()
        idx = np.random.randint(0, len(pool))
        losses = []
        for step in range(iterations):
            # --- train the synthetic set ---
            frac = 0.5 * (1 + math.cos(math.pi * step / max(1, iterations)))
            for group, base in zip(self.opt.param_groups, self.base_lrs):
                group["lr"] = base * (0.1 + 0.9 * frac)  # optax.cosine_decay_schedule(alpha=0.1)
            net = pool[idx].net
            net.eval()
            for p in net.parameters():
                p.requires_grad = False
            pick = torch.from_numpy(np.random.permutation(len(self.x))[:self.batch]).to(self.device)
            real, target = self.x[pick], F.one_hot(self.y[pick], self.k).float() - 1.0 / self.k
            with torch.no_grad():
                feat_t = net.embed(real)
            x_proto, y_proto = self.protos()
            pred = self.predict(net.embed(x_proto), y_proto, feat_t)
            loss = ((pred - target) ** 2).sum(1).mean()
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            losses.append(loss.item())
            # --- update the drawn model, or re-initialise it; then draw the next one ---
            state = pool[idx]
            if state.step >= self.s["reset_every"]:
                pool[idx] = self.new_online_state()
            else:
                net.train()
                for p in net.parameters():
                    p.requires_grad = True
                img, lab = self.protos.x_proto.detach(), self.protos.labels().detach()
                for _ in range(self.s["online_steps"]):
                    out = net(img)
                    nn_loss = -(lab * F.log_softmax(out, dim=1)).sum(1).mean()
                    state.opt.zero_grad()
                    nn_loss.backward()
                    state.opt.step()
                    state.step += 1
            idx = np.random.randint(0, len(pool))
        return losses


# --- the case ------------------------------------------------------------------------------------
def krr_case(ds, args, iterations: int):
    """-> (reference, {variant_label: ours}) : zero-arg callables, each running ``iterations`` krr iterations.

    Both return the last iteration's loss. ``args``: ``.ipc``, ``.device``, ``.precisions`` (krr's
    ``precision``: the real batch's features in bf16); ``.batch_real`` is not used (see the module docstring).
    """
    ref = PlainKRR(ds, args.ipc, KRR_SETTINGS, args.device)

    def reference():
        return ref.run(iterations)[-1]

    return reference, ours_variants("krr", ds, args, iterations, **KRR_SETTINGS)


def same_math_check(ds, ipc, iterations=3, device="cpu"):
    """Both sides from the same start (nasdistill's initial images and pool network, a pool of one so
    the draw is fixed, the whole training split as the real batch so the order does not matter):
    returns (reference losses, nasdistill losses), which should agree to float rounding."""
    settings = {**KRR_SETTINGS, "pool_size": 1, "batch_real": len(ds.x_train)}
    kw = dict(ipc=ipc, net=ARCH, device=device, checkpoint_every=0, **settings)
    ours = get_method("krr", iterations=iterations, **kw).fit(ds, progress=False)
    start = get_method("krr", iterations=0, **kw).fit(ds, progress=False)  # the same initial state, untrained
    ref = PlainKRR(ds, ipc, settings, device)
    pool = ref.build_pool()
    with torch.no_grad():
        ref.protos.x_proto.copy_(start.images_.to(device))
        for a, b in zip(pool[0].net.parameters(), start.pool[0].parameters(), strict=True):
            a.copy_(b)
    return ref.run(iterations, pool=pool), list(ours.history_)


def main() -> int:
    from types import SimpleNamespace

    from _common import data_root

    from nasdistill.data import load_dataset

    ds = load_dataset("mnist", root=data_root(), train_per_class=16, test_per_class=10)
    args = SimpleNamespace(ipc=2, batch_real=16, device="cpu", precisions=["fp32"])
    reference, variants = krr_case(ds, args, iterations=1)
    for label, fn in [("reference", reference), *(("ours " + k, v) for k, v in variants.items())]:
        t0 = time.perf_counter()
        loss = fn()
        print(f"{label:>10}: 1 iteration in {time.perf_counter() - t0:.3f} s, loss {loss:.6f}")
    ref_losses, our_losses = same_math_check(ds, args.ipc)
    print("same start, pool of 1, full batch:")
    print("  reference losses:", " ".join(f"{v:.6f}" for v in ref_losses))
    print("  ours losses:     ", " ".join(f"{v:.6f}" for v in our_losses))
    worst = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(ref_losses, our_losses))
    print(f"  max relative difference: {worst:.2e}")
    return 0 if worst < 1e-3 else 1


if __name__ == "__main__":
    raise SystemExit(main())
