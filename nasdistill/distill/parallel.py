"""Data-parallel distillation on ``torch.distributed``.

Launched with ``torchrun`` (``torchrun --nproc-per-node 2 -m nasdistill.cli distill ...``), every
process holds the same synthetic images and draws the same randomness (iteration ``t``'s generator
is seeded by ``(seed, t)`` on every rank); each rank computes the loss of its share of the work
(``dm``: of the classes; ``sre2l``: of the groups of one image per class), the gradients on the
synthetic images are summed across ranks (``all_reduce``) before the identical optimiser steps, so
the images stay the same on every rank and equal a one-process run's (to float tolerance). Only
rank 0 writes checkpoints, stores and output files; a checkpoint holds the whole state, so a run
resumes with any world size.

Gloo serves CPUs, NCCL GPUs (:func:`init_from_env` picks by device). Outside ``torchrun`` all of
this is a no-op: one rank of one.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist


def init_from_env(device: str = "cpu") -> bool:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1 in the environment);
    return whether this process runs distributed."""
    if dist.is_available() and dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    backend = "nccl" if str(device).startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


_left = False


def shutdown() -> None:
    """Leave the process group (a no-op outside one): every rank waits for the others, then the
    group is destroyed. The process should then end through :func:`exit_now`."""
    global _left
    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()
            _left = True


def exit_now(code: int) -> None:
    """After :func:`shutdown` (a no-op otherwise): flush the standard streams and end the process
    with ``code`` at once, skipping the interpreter's finalisation. There, with the group destroyed
    and every file written, Gloo's C++ threads still abort a rank now and then ("terminate called
    without an active exception", no Python frame left: 3 of ~150 two-rank runs here), which torchrun
    reports as the whole job failing."""
    if _left:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_writer() -> bool:
    """True on the one process that writes files (rank 0)."""
    return world()[0] == 0


def mine(i: int) -> bool:
    """Whether work item ``i`` (a class, a group) belongs to this rank (round-robin)."""
    rank, size = world()
    return i % size == rank


def all_reduce_grad(tensor: torch.Tensor) -> None:
    """Sum ``tensor.grad`` over ranks (a rank with no share gets zeros first)."""
    rank, size = world()
    if size == 1:
        return
    if tensor.grad is None:
        tensor.grad = torch.zeros_like(tensor)
    dist.all_reduce(tensor.grad, op=dist.ReduceOp.SUM)


def all_reduce_sum(value: float, device: str | torch.device = "cpu") -> float:
    """``value`` summed over ranks."""
    if world()[1] == 1:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item())


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


__all__ = ["init_from_env", "shutdown", "exit_now", "world", "is_writer", "mine", "all_reduce_grad", "all_reduce_sum", "barrier"]
