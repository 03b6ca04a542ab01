"""Throughput: nasdistill's distillation iterations and candidate training against plain loops.

In one process, alternating A/B (then B/A) over ``--rounds`` rounds, so that a busy machine slows
both sides alike, it times:

(a) one distillation iteration of each iterative method against a minimal re-implementation, written
    for this benchmark only (``_plain.py``, ``plain_<method>.py``), of the reference loops' math
    (DatasetCondensation's ``main_DM.py`` for ``dm``, its ``main.py`` with DSA for ``dsa``,
    mtt-distillation's ``distill.py`` for ``mtt``: flat parameter vector, one create_graph gradient a
    student step; CAFE's, Dataset Distillation's and FRePo's loops for ``cafe``, ``dd`` and ``krr``):
    a plain ConvNet, per-class real batches drawn with a permutation, DSA's siamese augmentation
    seeded per call, the loss read with ``.item()`` where the reference reads it;
(b) training a candidate on a proxy (``ipc`` images a class) plus its test accuracy, against a
    plain PyTorch loop as DC's ``evaluate_synset``: ``TensorDataset`` + ``DataLoader``, per-batch
    DSA augmentation, ``.item()`` and NumPy accuracy per batch, a test ``DataLoader`` of 256; one
    more row trains fewer epochs at equal accuracy (cosine schedule, lr from ``--recipe-lrs``, the
    fewest epochs whose accuracy on the real images outside the proxy and the test split reaches
    the plain loop's), in the fastest precision timed;
(c) ``seeds``: one architecture trained for ``--seeds-repeats`` seeds at once under ``torch.func.vmap``
    (``nasdistill.training.vectorized``, what ``--vectorize-repeats`` runs) against nasdistill's own
    loop training them one at a time (here the "reference" is that loop; "accuracy_plain" its accuracy).

nasdistill's side runs in each precision of ``--precisions``: by default fp32, plus bf16 only where
the device computes it in hardware (CUDA with bf16, CPUs with AMX or AVX512-BF16; elsewhere bf16 is
emulated and slower than fp32, so its rows would time the emulation).

It reports speed-ups (reference time / nasdistill time: above 1 means nasdistill is faster) as the
median and the [min, max] over rounds, never absolute times, and writes them to
``benchmarks/results/throughput-<hardware>.json`` (``cpu-avx2``, ``cpu-amx``, ``cuda-<gpu>``...: the
figures belong to the machine; the JSON's ``machine`` block names it).

    OMP_NUM_THREADS=1 python benchmarks/throughput.py                    # the committed setting
    python benchmarks/throughput.py --quick                              # smoke run
    python benchmarks/throughput.py --device cuda --batch-real 256       # on a GPU
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _common import RESULTS, data_root, hardware_tag, table, write_results
from _plain import ARCH, PlainConvNet, PlainDSA, ours_variants, plain_distance, plain_epoch

from nasdistill.data import load_dataset
from nasdistill.distill import get_method
from nasdistill.spaces import get_space
from nasdistill.training import TrainConfig, evaluate, native_bf16, train
from nasdistill.training.memory import set_allocator_thresholds
from nasdistill.training.vectorized import train_seeds

#: The reference runs with glibc's allocator as a fresh process has it after warm-up: its dynamic
#: mmap threshold at its maximum (32 MB) and the trim threshold twice that. nasdistill's side raises
#: them itself (nasdistill.training.memory) on every train()/fit() call.
REFERENCE_ALLOCATOR = (32 << 20, 64 << 20)


class PlainReference:
    """The reference loops' state: all training images, per-class index lists, the synthetic set."""

    def __init__(self, ds, ipc, batch_real, device):
        self.x = ds.x_train.to(device)
        self.indices = [idx.tolist() for idx in ds.indices_by_class()]
        self.k, self.ipc, self.batch_real, self.device = ds.num_classes, ipc, batch_real, device
        self.shape = ds.image_shape
        first = torch.cat([torch.tensor(i[:ipc]) for i in self.indices])
        self.syn = self.x[first].clone().requires_grad_(True)
        self.labels = torch.arange(self.k, device=device).repeat_interleave(ipc)
        self.aug = PlainDSA()

    def net(self):
        return PlainConvNet(self.shape[0], self.shape[1], self.k).to(self.device)

    def real(self, c, n):
        return self.x[np.random.permutation(self.indices[c])[:n]]

    def dm_iteration(self, opt):
        net = self.net()
        net.train()
        for p in net.parameters():
            p.requires_grad = False
        loss = torch.tensor(0.0, device=self.device)
        for c in range(self.k):
            real = self.real(c, self.batch_real)
            syn = self.syn[c * self.ipc:(c + 1) * self.ipc]
            seed = int(time.time() * 1000) % 100000
            real, syn = self.aug(real, seed), self.aug(syn, seed)
            out_real = net.embed(real).detach()
            out_syn = net.embed(syn)
            loss = loss + torch.sum((out_real.mean(0) - out_syn.mean(0)) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    def dsa_iteration(self, opt, outer, inner, lr_net=0.01):
        net = self.net()
        net.train()
        params = list(net.parameters())
        net_opt = torch.optim.SGD(net.parameters(), lr=lr_net)
        total = 0.0
        for ol in range(outer):
            loss = torch.tensor(0.0, device=self.device)
            for c in range(self.k):
                real = self.real(c, self.batch_real)
                syn = self.syn[c * self.ipc:(c + 1) * self.ipc]
                lab_r = torch.full((len(real),), c, device=self.device)
                lab_s = torch.full((len(syn),), c, device=self.device)
                seed = int(time.time() * 1000) % 100000
                real, syn = self.aug(real, seed), self.aug(syn, seed)
                gr = [g.detach().clone() for g in torch.autograd.grad(F.cross_entropy(net(real), lab_r), params)]
                gs = torch.autograd.grad(F.cross_entropy(net(syn), lab_s), params, create_graph=True)
                loss = loss + plain_distance(gs, gr)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
            if ol == outer - 1:
                break
            loader = torch.utils.data.DataLoader(
                torch.utils.data.TensorDataset(self.syn.detach().clone(), self.labels.clone()),
                batch_size=256, shuffle=True, num_workers=0)
            for _ in range(inner):
                plain_epoch(net, loader, net_opt, self.aug, self.device, train=True)
        return total / (outer * self.k)


def plain_mtt_iteration(net, flat_start, flat_target, syn, labels, syn_lr, opt_img, opt_lr, syn_steps, batch_syn,
                        aug):
    """mtt-distillation's ``distill.py`` iteration: the student's parameters as one flat vector
    (its ``ReparamModule``), mini-batches popped from shuffled index chunks, DSA per batch, one
    ``autograd.grad(create_graph=True)`` per step, the normalised parameter distance, one backward."""
    names = [k for k, _ in net.named_parameters()]
    shapes = [p.shape for _, p in net.named_parameters()]
    sizes = [p.numel() for _, p in net.named_parameters()]

    def forward(flat, x):
        params = {k: t.view(sh) for k, t, sh in zip(names, flat.split(sizes), shapes)}
        return torch.func.functional_call(net, params, (x,))

    student = [flat_start.clone().requires_grad_(True)]
    chunks: list = []
    for _ in range(syn_steps):
        if not chunks:
            chunks = list(torch.split(torch.randperm(len(syn)), batch_syn))
        idx = chunks.pop()
        x = aug(syn[idx])
        ce = F.cross_entropy(forward(student[-1], x), labels[idx])
        grad = torch.autograd.grad(ce, student[-1], create_graph=True)[0]
        student.append(student[-1] - syn_lr * grad)
    loss = F.mse_loss(student[-1], flat_target, reduction="sum") / F.mse_loss(flat_start, flat_target, reduction="sum")
    opt_img.zero_grad()
    opt_lr.zero_grad()
    loss.backward()
    opt_img.step()
    opt_lr.step()
    return loss.item()


def plain_candidate(x, y, xt, yt, epochs, device, seed):
    """DC's ``evaluate_synset``: SGD 0.01 momentum 0.9 wd 5e-4, lr x0.1 at half, batch 256, then test."""
    torch.manual_seed(seed)
    net = PlainConvNet(x.shape[1], x.shape[2], int(y.max()) + 1).to(device)
    lr = 0.01
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=0.0005)
    train_loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=256, shuffle=True,
                                               num_workers=0)
    aug = PlainDSA()
    for ep in range(epochs):
        plain_epoch(net, train_loader, opt, aug, device, train=True)
        if ep == epochs // 2 - 1:
            lr *= 0.1
            opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=0.0005)
    test_loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xt, yt), batch_size=256, shuffle=False)
    with torch.no_grad():
        return plain_epoch(net, test_loader, None, aug, device, train=False)[1]


# --- nasdistill's side ---------------------------------------------------------------------------
def ours_candidate(x, y, xt, yt, epochs, device, seed, precision, **recipe):
    """nasdistill's ``train`` + ``evaluate`` with DC's recipe (lr 0.01, x0.1 at half) unless ``recipe``
    changes it (e.g. ``lr=0.03, schedule="cosine"``)."""
    space = get_space("convnet")
    model = space.build_seeded(space.parse_id(ARCH), tuple(x.shape[1:]), int(y.max()) + 1, seed)
    train(model, x, y, TrainConfig(epochs=epochs, augment="dsa", precision=precision, seed=seed, **recipe),
          device=device)
    return evaluate(model, xt, yt, device=device, precision=precision)  # as the search's evaluator scores


#: The schedule of benchmarks/protocol.py's cosine protocols (chosen there on validation rankings); the
#: recipe row tries it at each of ``--recipe-lrs`` (lr 0.03 is protocol.py's).
COSINE_RECIPE = {"lr": 0.03, "schedule": "cosine"}


def recipe_choice(x, y, xv, yv, plain_epochs, device, precision, lrs=(0.03,), seeds=3) -> tuple[dict, dict]:
    """The cheapest cosine recipe that trains as well as the plain loop: for epochs from a fifth of
    ``plain_epochs`` up (in steps of a tenth), each lr of ``lrs``, the first whose mean accuracy on
    (xv, yv) (images outside the proxy and the test split) over ``seeds`` seeds reaches the plain loop's;
    ``plain_epochs`` at lr 0.03 if none does. Returns (recipe, every mean accuracy tried). The timed
    rounds' test accuracy then checks "equal accuracy" on images the choice never saw."""
    mean = lambda f: statistics.mean(f(s) for s in range(seeds))  # noqa: E731
    tried = {"plain": mean(lambda s: plain_candidate(x, y, xv, yv, plain_epochs, device, 100 + s))}
    step = max(1, plain_epochs // 10)
    for e in range(max(1, plain_epochs // 5), plain_epochs, step):
        for lr in lrs:
            recipe = {**COSINE_RECIPE, "lr": lr}
            tried[f"lr {lr}, {e} epochs"] = acc = mean(
                lambda s, e=e, r=recipe: ours_candidate(x, y, xv, yv, e, device, 100 + s, precision, **r))
            print(f"recipe: lr {lr}, {e} epochs: {acc:.4f} (plain {tried['plain']:.4f})", file=sys.stderr, flush=True)
            if acc >= tried["plain"]:
                return {**recipe, "epochs": e}, tried
    return {**COSINE_RECIPE, "epochs": plain_epochs}, tried


def precisions_for(spec: str, device: str) -> list[str]:
    """``auto``: fp32, plus bf16 where the device runs it in hardware (elsewhere bf16 is emulated, slower
    than fp32, and its rows would measure the emulation); else the comma-separated list as given."""
    if spec == "auto":
        return ["fp32", "bf16"] if native_bf16(device) else ["fp32"]
    return [p.strip() for p in spec.split(",") if p.strip()]


def mtt_case(ds, args):
    """(reference, {variant: ours}) for one mtt iteration of ``--mtt-steps`` student steps on all the
    synthetic images (batch_syn = N images), DC's ConvNet, experts of 2 epochs built once (untimed)."""
    import tempfile

    from nasdistill.distill.experts import ExpertBuffer

    root = Path(tempfile.mkdtemp(prefix="throughput-experts-"))
    settings = {"num_experts": 2, "train_epochs": 2, "expert_epochs": 1, "max_start_epoch": 1, "lr_teacher": 0.01}
    buffer = ExpertBuffer(num_experts=2, train_epochs=2, lr=0.01, batch_size=256, augment="dsa", net=ARCH,
                          root=str(root)).build(ds, progress=False)
    start, target = buffer.fetch(0, 0, 1)
    # the reference's student is a plain ConvNet as mtt-distillation's (nn.Conv2d, nn.GroupNorm, nn.ReLU,
    # nn.AvgPool2d), not nasdistill's network with its faster layers; the same parameters in the same order
    net = PlainConvNet(ds.image_shape[0], ds.image_shape[1], ds.num_classes).to(args.device)
    shapes = lambda m: [tuple(p.shape) for p in m.parameters()]  # noqa: E731
    assert shapes(net) == shapes(buffer.network(ds, 0)), "the plain ConvNet no longer matches ARCH's parameters"
    for p in net.parameters():
        p.requires_grad_(False)
    idx = torch.cat([i[:args.ipc] for i in ds.indices_by_class()])
    syn = ds.x_train[idx].clone().to(args.device).requires_grad_(True)
    labels = ds.y_train[idx].to(args.device)
    syn_lr = torch.tensor(0.01, device=args.device).requires_grad_(True)
    opt_img = torch.optim.SGD([syn], lr=100.0, momentum=0.5)
    opt_lr = torch.optim.SGD([syn_lr], lr=1e-5, momentum=0.5)
    aug = PlainDSA()

    def reference():
        return [plain_mtt_iteration(net, start.to(args.device), target.to(args.device), syn, labels, syn_lr, opt_img,
                                    opt_lr, args.mtt_steps, len(syn), aug) for _ in range(args.mtt_iterations)]

    def ours(precision):
        def run():
            d = get_method("mtt", ipc=args.ipc, iterations=args.mtt_iterations, syn_steps=args.mtt_steps, net=ARCH,
                           experts_dir=str(root), device=args.device, checkpoint_every=0, precision=precision,
                           **settings)
            d.fit(ds, progress=False)
            return d.history_[-1]
        return run

    names = {"fp32": "fp32", "bf16": "bf16 student"}
    return reference, {names[p]: ours(p) for p in args.precisions}


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--batch-real", type=int, default=256, help="real images a class per iteration (paper: 256)")
    ap.add_argument("--dm-iterations", type=int, default=2, help="dm iterations timed per round and side")
    ap.add_argument("--dsa-iterations", type=int, default=1)
    ap.add_argument("--dsa-loops", default="2,5", help="outer,inner loops of dsa (paper at ipc 10: 10,50)")
    ap.add_argument("--mtt-iterations", type=int, default=2)
    ap.add_argument("--mtt-steps", type=int, default=30, help="mtt's N student steps (paper: 30)")
    ap.add_argument("--cafe-iterations", type=int, default=2,
                    help="2: the last iteration of a run never trains its network")
    ap.add_argument("--dd-iterations", type=int, default=2)
    ap.add_argument("--krr-iterations", type=int, default=5)
    ap.add_argument("--candidate-epochs", type=int, default=20)
    ap.add_argument("--test-per-class", type=int, default=100)
    ap.add_argument("--precisions", default="auto",
                    help="precisions timed on nasdistill's side: auto (fp32, plus bf16 where the device computes it "
                         "in hardware) or a list such as fp32,bf16")
    ap.add_argument("--recipe-lrs", default="0.03",
                    help="learning rates the fewer-epochs recipe row tries (cosine schedule; on MNIST's selection "
                         "images lr 0.1 trailed 0.03 at every epoch count tried)")
    ap.add_argument("--no-compile", dest="compile", action="store_false",
                    help="leave out the rows with compile=True of the methods that take it (dm, cafe, krr; timed "
                         "after the warm-up has compiled it; needs a C++ compiler on a CPU)")
    ap.add_argument("--no-recipe", dest="recipe", action="store_false",
                    help="leave out the candidate row with the cosine recipe at fewer epochs (chosen outside the test split)")
    ap.add_argument("--seeds-repeats", type=int, default=4,
                    help="seeds of the 'seeds' part: one architecture trained for that many seeds under vmap "
                         "(nasdistill.training.vectorized) against nasdistill's loop, one seed at a time")
    ap.add_argument("--parts", default="dm,dsa,mtt,cafe,dd,krr,candidate,seeds")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-warmup", dest="warmup", action="store_false", help="skip the untimed first call")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny settings, 1 round")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    args.precisions = precisions_for(args.precisions, args.device)
    if args.quick:
        args.rounds, args.batch_real, args.dm_iterations, args.candidate_epochs = 1, 16, 1, 2
        args.dsa_loops, args.test_per_class, args.mtt_steps, args.mtt_iterations = "1,1", 10, 3, 1
        args.cafe_iterations, args.dd_iterations, args.krr_iterations = 2, 1, 1
    outer, inner = (int(v) for v in args.dsa_loops.split(","))
    parts = args.parts.split(",")
    ds = load_dataset("mnist", root=data_root(), train_per_class=max(args.batch_real, args.ipc),
                      test_per_class=args.test_per_class)
    proxy_idx = torch.cat([i[:args.ipc] for i in ds.indices_by_class()])
    px, py = ds.x_train[proxy_idx], ds.y_train[proxy_idx]
    ref = PlainReference(ds, args.ipc, args.batch_real, args.device)
    dm_opt = torch.optim.SGD([ref.syn], lr=1.0, momentum=0.5)
    dsa_opt = torch.optim.SGD([ref.syn], lr=0.1, momentum=0.5)

    # each entry: name -> (reference side, {variant: nasdistill side}, units timed)
    cases = {}
    recipe_info = None
    seed_acc: dict[str, list[float]] = {}
    labels = {"dm": {"fp32": "fp32", "bf16": "bf16 real path"},
              "dsa": {"fp32": "fp32", "bf16": "bf16 no-pixel-gradient passes"}}
    loops = {"dm": {}, "dsa": {"outer_loop": outer, "inner_loop": inner}}
    for m in ("dm", "dsa"):
        if m in parts:
            ref_iteration = ((lambda: ref.dm_iteration(dm_opt)) if m == "dm" else
                             (lambda: ref.dsa_iteration(dsa_opt, outer, inner)))
            n_iter = args.dm_iterations if m == "dm" else args.dsa_iterations
            cases[m] = (lambda f=ref_iteration, n=n_iter: [f() for _ in range(n)],
                        ours_variants(m, ds, args, n_iter, labels[m], batch_real=args.batch_real, **loops[m]))
    if "mtt" in parts:
        cases["mtt"] = mtt_case(ds, args)
    for m in ("cafe", "dd", "krr"):  # their reference loops live in plain_<method>.py
        if m in parts:
            case = getattr(importlib.import_module(f"plain_{m}"), f"{m}_case")
            cases[m] = case(ds, args, getattr(args, f"{m}_iterations"))
    if "candidate" in parts:
        acc: dict[str, list[float]] = {}
        seed_of = {"r": 0}

        def cand(label, precision="fp32", epochs=args.candidate_epochs, **recipe):
            """One timed candidate: the plain loop (``label == "plain"``) or ours; accuracy kept under ``label``."""
            def run():
                s = seed_of["r"]
                a = (plain_candidate(px, py, ds.x_test, ds.y_test, epochs, args.device, s) if label == "plain" else
                     ours_candidate(px, py, ds.x_test, ds.y_test, epochs, args.device, s, precision, **recipe))
                acc.setdefault(label, []).append(a)
                return a
            return label, run

        variants = dict(cand(p, p) for p in args.precisions)
        if args.recipe:  # fewer steps at equal accuracy: the recipe chosen on every real image outside the
            # proxy and the test split (training images the proxy does not hold, and the validation
            # split): thousands, so that seed noise does not pick it; in the fastest precision timed
            rest = torch.ones(len(ds.y_train), dtype=torch.bool)
            rest[proxy_idx] = False
            xs, ys = torch.cat([ds.x_train[rest], ds.x_val]), torch.cat([ds.y_train[rest], ds.y_val])
            fastest = "bf16" if "bf16" in args.precisions else "fp32"
            lrs = tuple(float(v) for v in args.recipe_lrs.split(","))
            chosen, tried = recipe_choice(px, py, xs, ys, args.candidate_epochs, args.device, fastest, lrs)
            print(f"recipe: {chosen} (selection accuracy: {tried})", file=sys.stderr)
            recipe_info = {**chosen, "precision": fastest, "lrs_tried": list(lrs),
                           "selection_accuracy": tried, "selection_images": len(ys)}
            epochs = chosen.pop("epochs")
            variants.update([cand(f"{fastest} + cosine lr {chosen['lr']}, {epochs} epochs", fastest, epochs,
                                  **chosen)])
        cases["candidate"] = (cand("plain")[1], variants)
    if "seeds" in parts:  # vmap over seeds (training.vectorized) against nasdistill's own loop, one seed at a time
        seeds = list(range(args.seeds_repeats))

        def seed_models():
            space = get_space("convnet")
            return [space.build_seeded(space.parse_id(ARCH), tuple(px.shape[1:]), int(py.max()) + 1, s) for s in seeds]

        def seed_run(vectorized):
            def run():
                models = seed_models()
                configs = [TrainConfig(epochs=args.candidate_epochs, augment="dsa", seed=s) for s in seeds]
                if vectorized:
                    train_seeds(models, px, py, configs, device=args.device)
                else:
                    for m, c in zip(models, configs):
                        train(m, px, py, c, device=args.device)
                a = statistics.mean(evaluate(m, ds.x_test, ds.y_test, device=args.device) for m in models)
                seed_acc.setdefault("vmap" if vectorized else "loop", []).append(a)
                return a
            return run

        cases["seeds"] = (seed_run(False), {f"vmap over {len(seeds)} seeds (reference: the loop)": seed_run(True)})

    rows = []
    for name, (reference, variants) in cases.items():
        times: dict[str, list[float]] = {"reference": [], **{v: [] for v in variants}}
        warmup_s = {}
        if args.warmup:  # one call of each side left out of the rounds: kernel selection, first allocations,
            # compilation; its time is kept (warmup_s) so that one-time costs can be read beside the rounds
            set_allocator_thresholds(*REFERENCE_ALLOCATOR)
            warmup_s["reference"] = timed(reference)[0]
            for v, fn in variants.items():
                warmup_s[v] = timed(fn)[0]
            if name == "candidate":
                acc.clear()
            seed_acc.clear()
        for r in range(args.rounds):
            if name == "candidate":
                seed_of["r"] = r
            order = [("reference", reference), *variants.items()]
            if r % 2:
                order.reverse()  # A/B, then B/A
            for label, fn in order:
                if label == "reference":
                    set_allocator_thresholds(*REFERENCE_ALLOCATOR)
                times[label].append(timed(fn)[0])
            print(f"{name} round {r + 1}/{args.rounds}: " + ", ".join(
                f"{k} {times['reference'][-1] / v[-1]:.2f}x" for k, v in times.items() if k != "reference"),
                file=sys.stderr, flush=True)
        for v in variants:
            speedups = [a / b for a, b in zip(times["reference"], times[v])]
            row = {"case": name, "variant": v, "speedup_median": statistics.median(speedups),
                   "speedup_range": [min(speedups), max(speedups)], "speedups": speedups}
            if warmup_s:  # the first call over the rounds' median, for each side (above 1: a one-time cost)
                row["warmup_over_median"] = {side: warmup_s[side] / statistics.median(times[side])
                                             for side in ("reference", v)}
            if name == "candidate":
                row["accuracy"] = statistics.mean(acc[v])
                row["accuracy_plain"] = statistics.mean(acc["plain"])
            if name == "seeds":  # the reference here is nasdistill's own loop
                row["accuracy"] = statistics.mean(seed_acc["vmap"])
                row["accuracy_plain"] = statistics.mean(seed_acc["loop"])
            rows.append(row)
    settings = {"dataset": "mnist", "arch": ARCH, "ipc": args.ipc, "batch_real": args.batch_real,
                "rounds": args.rounds, "dm_iterations": args.dm_iterations, "dsa_iterations": args.dsa_iterations,
                "dsa_loops": [outer, inner], "candidate_epochs": args.candidate_epochs,
                "cafe_iterations": args.cafe_iterations, "dd_iterations": args.dd_iterations,
                "krr_iterations": args.krr_iterations, "seeds_repeats": args.seeds_repeats,
                "mtt": {"iterations": args.mtt_iterations, "syn_steps": args.mtt_steps, "batch_syn": "all",
                        "experts": "2 x 2 epochs, lr 0.01, DSA (built once, not timed)"},
                "test_images": len(ds.y_test), "warmup": args.warmup,
                "reference_allocator": "glibc mmap threshold 32 MB, trim 64 MB (its dynamic maximum)", "device": args.device, "omp_threads": torch.get_num_threads(),
                "quick": args.quick, "precisions": args.precisions,
                **({"candidate_recipe": recipe_info} if recipe_info else {})}
    # cases not run this time keep their rows from the output file (a run of --parts dsa updates dsa's)
    out_path = Path(args.out) if args.out else RESULTS / f"throughput-{hardware_tag(args.device)}.json"
    kept_settings = {}
    if out_path.is_file():
        old = json.loads(out_path.read_text())
        rows = [r for r in old.get("rows", []) if r["case"] not in cases] + rows
        kept_settings = old.get("settings_by_case", {})
    by_case = {**kept_settings, **{name: settings for name in cases}}
    path = write_results("throughput", {"settings": settings, "settings_by_case": by_case, "rows": rows,
                                        "note": "speedup = reference time / nasdistill time, per round"},
                         str(out_path))
    print(table(rows, ["case", "variant", "speedup_median", "speedup_range", "accuracy", "accuracy_plain"]))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
