"""Scale benchmark: images/s in RAM vs streamed from the uint8 cache, dm in 1 vs 2 processes, and
sre2l's per-image costs (teacher training, recovery), with the ImageNet-1k estimates they imply.

    python benchmarks/scale.py --train-per-class 500 --out scale.json

Writes JSON (``--out``) and prints a Markdown table. Everything runs on the CIFAR-10 JPEG tree in
``$NASDISTILL_DATA/cifar10-jpeg``; the ImageNet-1k figures are *estimates* from these per-image
costs scaled by forward FLOPs (ResNet-18 at 224² = 1.82 GFLOPs), never measurements.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import REPO, data_root, dumps, table, write_results  # noqa: E402

RESNET18_224_FLOPS = 1.82e9  # forward, one image (He et al. 2016; torchvision's figure)
IMAGENET_TRAIN = 1_281_167
IMAGENET_CLASSES = 1000


def bench_reading(tree: Path, tpc: int, batch: int) -> list[dict]:
    from nasdistill.data import load_dataset
    from nasdistill.data.stream import StreamingDataset, build_cache

    rows = []
    t = time.perf_counter()
    ds = load_dataset(f"imagefolder:{tree}", train_per_class=tpc, test_per_class=10)
    rows.append({"what": "in-RAM decode + float32", "images": len(ds.y_train), "s": time.perf_counter() - t})
    g = torch.Generator().manual_seed(0)
    t = time.perf_counter()
    n = 0
    for idx in torch.randperm(len(ds.y_train), generator=g).split(batch):
        n += len(ds.x_train[idx])
    rows.append({"what": "in-RAM epoch", "images": n, "s": time.perf_counter() - t})
    with tempfile.TemporaryDirectory() as cache:
        t = time.perf_counter()
        data = StreamingDataset(build_cache(tree, train_per_class=tpc, test_per_class=10, cache_dir=cache))
        rows.append({"what": "streaming cache build (decode to uint8 memmap)", "images": len(data),
                     "s": time.perf_counter() - t})
        for workers in (0, 2):
            t = time.perf_counter()
            n = sum(len(y) for _, y in data.loader("train", batch_size=batch, workers=workers))
            rows.append({"what": f"streamed epoch, {workers} workers", "images": n, "s": time.perf_counter() - t})
    for r in rows:
        r["images_per_s"] = r["images"] / r["s"]
    return rows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_processes(tree: Path, tpc: int, iterations: int, method: list[str], label: str,
                    images_per_iteration: int) -> list[dict]:
    rows = []
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "NASDISTILL_PROGRESS": "0"}
    base = ["distill", "--data", f"imagefolder:{tree}", "--train-per-class", str(tpc), "--test-per-class", "10",
            "--ipc", "10", "--iterations", str(iterations), *method, "--device", "cpu", "--no-progress"]
    with tempfile.TemporaryDirectory() as tmp:
        env["NASDISTILL_HOME"] = tmp
        # warm-up: decode cache and (sre2l) teacher, so the timed runs time the distillation only
        subprocess.run([sys.executable, "-m", "nasdistill.cli", *base, "--iterations", "1", "--out", f"{tmp}/w",
                        "--store", f"{tmp}/sw"], env=env, cwd=REPO, check=True, capture_output=True)
        for procs in (1, 2):
            cmd = ([sys.executable, "-m", "nasdistill.cli"] if procs == 1 else
                   [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
                    "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m", "nasdistill.cli"])
            t = time.perf_counter()
            subprocess.run([*cmd, *base, "--out", f"{tmp}/o{procs}", "--store", f"{tmp}/s{procs}"], env=env, cwd=REPO,
                           check=True, capture_output=True)
            s = time.perf_counter() - t
            rows.append({"what": f"{label}, {procs} process{'es' if procs > 1 else ''}", "processes": procs, "s": s,
                         "images": iterations * images_per_iteration,
                         "images_per_s": iterations * images_per_iteration / s})
    return rows


def bench_sre2l_costs(tree: Path, tpc: int, iterations: int, teacher_epochs: int) -> dict:
    from nasdistill.data import load_dataset
    from nasdistill.distill import get_method
    from nasdistill.spaces import get_space

    ds = load_dataset(f"imagefolder:{tree}", train_per_class=tpc, test_per_class=50)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["NASDISTILL_HOME"] = tmp
        m = get_method("sre2l", ipc=10, iterations=iterations, teacher_epochs=teacher_epochs)
        t = time.perf_counter()
        teacher = m.prepare(ds)
        teach_s = time.perf_counter() - t
        t = time.perf_counter()
        m.fit(ds, progress=False)
        recover_s = time.perf_counter() - t
    space = get_space("convnet")
    flops = space.complexity(space.parse_id(m.teacher), ds.image_shape, ds.num_classes)["flops"]
    n_syn = ds.num_classes * 10
    return {"teacher": m.teacher, "teacher_flops": flops, "teacher_test_acc": teacher.test_acc_,
            "teacher_s_per_image_epoch": teach_s / (len(ds.y_train) * teacher_epochs),
            "recover_s_per_image_iteration": recover_s / (n_syn * iterations), "train_images": len(ds.y_train)}


def imagenet_estimate(costs: dict, ipc: int, teacher_epochs: int = 100, recover_iterations: int = 1000,
                      relabel_epochs: int = 300) -> dict:
    """ImageNet-1k with sre2l, from the measured per-image costs scaled by forward FLOPs (ResNet-18 at 224²).

    Estimates, not measurements: CPU seconds here; divide by the CPU/GPU throughput ratio for GPU-hours."""
    scale = RESNET18_224_FLOPS / costs["teacher_flops"]
    n_syn = ipc * IMAGENET_CLASSES
    teacher_h = costs["teacher_s_per_image_epoch"] * scale * IMAGENET_TRAIN * teacher_epochs / 3600
    recover_h = costs["recover_s_per_image_iteration"] * scale * n_syn * recover_iterations / 3600
    return {"ipc": ipc, "synthetic_images": n_syn, "teacher_epochs": teacher_epochs,
            "recover_iterations": recover_iterations,
            "teacher_cpu_core_hours": teacher_h, "recover_cpu_core_hours": recover_h,
            "soft_labels_per_image_gb": n_syn * IMAGENET_CLASSES * 4 / 1e9,
            "soft_labels_per_crop_gb": n_syn * relabel_epochs * IMAGENET_CLASSES * 4 / 1e9,
            "relabel_epochs": relabel_epochs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-per-class", type=int, default=500)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--iterations", type=int, default=20, help="dm/sre2l iterations timed per run")
    ap.add_argument("--teacher-epochs", type=int, default=2)
    ap.add_argument("--out", default="scale.json", help="JSON output (default: ./scale.json)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tree = data_root() / "cifar10-jpeg"
    rows = bench_reading(tree, args.train_per_class, args.batch)
    rows += bench_processes(tree, args.train_per_class, args.iterations,
                            ["--method", "dm", "--set", "batch_real=64"], "dm", 10 * 64)
    rows += bench_processes(tree, args.train_per_class, args.iterations,
                            ["--method", "sre2l", "--set", f"teacher_epochs={args.teacher_epochs}"], "sre2l recover", 100)
    costs = bench_sre2l_costs(tree, args.train_per_class, args.iterations, args.teacher_epochs)
    estimates = [imagenet_estimate(costs, ipc) for ipc in (10, 50)]
    path = write_results("scale", {"rows": rows, "sre2l_costs": costs, "imagenet_estimates": estimates}, args.out)
    print(table(rows, ["what", "images", "s", "images_per_s"]))
    print()
    print(dumps(costs))
    print(table(estimates, ["ipc", "teacher_cpu_core_hours", "recover_cpu_core_hours", "soft_labels_per_image_gb",
                            "soft_labels_per_crop_gb"]))
    print(f"\nwritten: {path}")


if __name__ == "__main__":
    main()
