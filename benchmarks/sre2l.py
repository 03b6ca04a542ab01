"""Does ``sre2l`` beat a random subset on CIFAR-10 at ipc 10, with a teacher trained here?

Whole CIFAR-10 JPEG training split (45,000 images; 500 a class held out), the ``sre2l`` teacher
(DC's ConvNet D3-W64 with BatchNorm, ``--teacher-epochs`` epochs, DSA, bf16) trained once and
stored; ``--iterations`` recover iterations. Against: the random class-balanced subset with hard
labels (what users compare against) and the same subset relabelled by the same teacher (so the gain
of sre2l's *images* is told apart from the gain of soft labels). ``--init real`` adds sre2l started from
real images (the random subset's own selection rule) instead of noise. Each proxy trains a student
(``--student``, ``--steps`` DSA steps) from ``--seeds`` seeded initialisations; test accuracy on the
whole test split, mean and spread.

    python benchmarks/sre2l.py                  # ~25 min on one CPU core
    python benchmarks/sre2l.py --iterations 200 --teacher-epochs 5

Writes benchmarks/results/sre2l.json and prints a table.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from _common import load_full, table, write_results

from nasdistill.distill import distill, get_method
from nasdistill.distill.relabel import relabel
from nasdistill.spaces import get_space
from nasdistill.training import TrainConfig, evaluate, train


def student_accuracy(proxy, ds, arch_id: str, config: TrainConfig, seed: int, device: str) -> float:
    space = get_space("convnet")
    model = space.build_seeded(space.parse_id(arch_id), ds.image_shape, ds.num_classes, seed)
    train(model, proxy.images, proxy.labels, config.replace(seed=seed), device=device)
    return evaluate(model, ds.x_test, ds.y_test, device=device)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--iterations", type=int, default=500, help="recover iterations (the paper: 1,000)")
    ap.add_argument("--teacher-epochs", type=int, default=10)
    ap.add_argument("--student", default="D3-W32-relu-instancenorm-avgpool")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--init", default="noise,real",
                    help="sre2l initialisations to run, a comma list: noise (the paper's) and/or real "
                         "(the random subset's images, then recovered)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    ds = load_full("cifar10")
    settings = {"iterations": args.iterations, "teacher_epochs": args.teacher_epochs}
    method = get_method("sre2l", ipc=args.ipc, device=args.device, **settings)
    teacher = method.make_teacher()
    print(f"teacher {teacher.arch} ({args.teacher_epochs} epochs)", flush=True)
    teacher.fit(ds)
    print(f"teacher test accuracy {teacher.test_acc_:.4f}", flush=True)
    proxies = {"random (hard labels)": distill(ds, "random", ipc=args.ipc, seed=0, device=args.device)}
    for init in args.init.split(","):
        name = "sre2l" if init == "noise" else f"sre2l ({init} init)"
        proxies[name] = distill(ds, "sre2l", ipc=args.ipc, seed=0, device=args.device, init=init, **settings)
    proxies["random, relabelled by the teacher"] = relabel(proxies["random (hard labels)"], teacher)
    config = TrainConfig(steps=args.steps, augment="dsa")
    rows = []
    for name, proxy in proxies.items():
        accs = [student_accuracy(proxy, ds, args.student, config, s, args.device) for s in range(args.seeds)]
        rows.append({"proxy": name, "test acc (mean)": float(np.mean(accs)), "std": float(np.std(accs)),
                     "min": float(min(accs)), "max": float(max(accs)), "accs": accs,
                     "distill_s": proxy.meta.get("wall_time_s")})
        print(f"{name}: {np.mean(accs):.4f} ± {np.std(accs):.4f} {accs}", flush=True)
    payload = {"settings": vars(args), "dataset": ds.describe(),
               "teacher": {"arch": teacher.arch_id_, "test_acc": teacher.test_acc_, "train": teacher.train.budget(),
                           "wall_s": teacher.wall_time_},
               "student_train": config.budget(), "rows": rows, "wall_s": time.perf_counter() - t0}
    path = write_results("sre2l", payload, args.out)
    print("\n" + table(rows, ["proxy", "test acc (mean)", "std", "min", "max", "distill_s"]))
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
