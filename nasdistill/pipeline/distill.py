"""Distil (or reuse) a proxy, relabel it with a teacher, build the expert trajectories a method matches."""

from __future__ import annotations

import os
from pathlib import Path

from .._params import is_whole
from ..data import ImageDataset, Proxy
from ..data.proxy import PROXY_FILE
from ..checks import check_method_settings
from ..distill import distill, method_class, method_names
from ..errors import ConfigError
from .log import Log, quiet


def method_settings(method: str, settings: dict | None, *, budget: str = "auto", device: str = "cpu") -> dict:
    """The method's settings: its paper defaults, replaced by its CPU preset when ``budget`` is
    ``cpu`` (or ``auto`` on a CPU), then by explicit ``settings``."""
    cls = method_class(method)
    if budget not in ("auto", "cpu", "paper"):
        raise ConfigError(f"unknown budget {budget!r}", "use auto, cpu or paper")
    use_cpu = budget == "cpu" or (budget == "auto" and not str(device).startswith("cuda"))
    merged = cls.preset("cpu" if use_cpu else "paper", self_prepare=False)
    given = {k: v for k, v in (settings or {}).items() if v is not None}
    merged.update(check_method_settings(cls, given))
    return merged


def distill_step(dataset: ImageDataset, method: str, *, ipc: int, settings: dict | None = None,
                 budget: str = "auto", seed: int = 0, device: str = "cpu", out_dir: str | os.PathLike | None = None,
                 store: str | os.PathLike | None | bool = None, progress: bool | None = None,
                 log: Log = quiet, relabel: str | None = None, teacher_epochs: int | None = None,
                 temperature: float = 1.0) -> Proxy:
    """Distil (or reuse) a proxy; copy it to ``out_dir/proxy.{safetensors,json,png}``.

    With ``relabel`` (a teacher architecture id of the ``convnet`` space) the proxy's labels become
    that teacher's soft labels at ``temperature`` (:func:`relabel_step`); the proxy written is the
    relabelled one and its meta records the teacher.
    """
    params = method_settings(method, settings, budget=budget, device=device)
    if relabel is not None:  # a bad teacher is refused before any work
        make_teacher(relabel, teacher_epochs=teacher_epochs, seed=seed, device=device)
    out = Path(out_dir) if out_dir else None
    proxy = distill(dataset, method, ipc=ipc, seed=seed, device=device, store=store,
                    checkpoint_dir=out / "checkpoints" if out else None, progress=progress, log=log, **params)
    if not proxy.meta.get("reused"):
        log(f"distilled {method} proxy ({len(proxy)} images, ipc {ipc}) in {proxy.meta.get('wall_time_s', 0):.1f}s"
            + (f", resumed from iteration {proxy.meta['resumed_from_iteration']}"
               if proxy.meta.get("resumed_from_iteration") else ""))
    if relabel is not None:
        proxy = relabel_step(dataset, proxy, teacher=relabel, teacher_epochs=teacher_epochs, temperature=temperature,
                             seed=seed, device=device, log=log)
    from ..distill.parallel import is_writer

    if out is not None and is_writer():  # under torchrun only rank 0 writes
        path = proxy.save(out / PROXY_FILE)
        proxy.save_grid(out / "proxy.png")
        ckpt_dir = out / "checkpoints"
        if ckpt_dir.is_dir() and not any(ckpt_dir.iterdir()):
            ckpt_dir.rmdir()
        proxy.meta["out_path"] = str(path)
    return proxy


def make_teacher(arch: str, *, teacher_epochs: int | None = None, seed: int = 0, device: str = "cpu"):
    """An unfitted :class:`~nasdistill.distill.relabel.Teacher` of ``arch`` (checked here: a bad id
    or epoch count is a :class:`ConfigError` before any work)."""
    from ..distill.relabel import Teacher, default_teacher_train

    if teacher_epochs is not None and (not is_whole(teacher_epochs) or teacher_epochs < 1):
        raise ConfigError(f"--teacher-epochs must be an integer >= 1, got {teacher_epochs!r}", "pass e.g. 10")
    budget = default_teacher_train(device, **({} if teacher_epochs is None else {"epochs": int(teacher_epochs)}))
    teacher = Teacher(arch=arch, train=budget, seed=seed, device=device)
    teacher._arch()
    return teacher


def relabel_step(dataset: ImageDataset, proxy: Proxy, *, teacher: str, teacher_epochs: int | None = None,
                 temperature: float = 1.0, seed: int = 0, device: str = "cpu", log: Log = quiet) -> Proxy:
    """``proxy`` with the soft labels of a ``teacher`` (an architecture id of the ``convnet`` space)
    trained on ``dataset``'s full training split (or reloaded from ``$NASDISTILL_HOME/teachers``)
    for ``teacher_epochs`` (None: :func:`~nasdistill.distill.relabel.default_teacher_train`'s)."""
    from ..distill.relabel import relabel

    fitted = make_teacher(teacher, teacher_epochs=teacher_epochs, seed=seed, device=device).fit(dataset)
    log(f"teacher {fitted.arch_id_}: test acc {fitted.test_acc_:.4f} "
        + ("(reused)" if fitted.reused_ else f"(trained in {fitted.wall_time_:.1f}s)"))
    return relabel(proxy, fitted, temperature=temperature)


def expert_methods() -> list[str]:
    """The methods that match expert trajectories (their class maps ``nasdistill experts``'s options)."""
    return [m for m in method_names() if method_class(m).expert_options]


def experts_step(dataset: ImageDataset, *, method: str = "mtt", num_experts: int | None = None,
                 train_epochs: int | None = None, net: str | None = None, space: str | None = None,
                 lr: float | None = None, batch_size: int | None = None, augment: str | None = None,
                 budget: str = "auto", seed: int = 0, device: str = "cpu", root: str | os.PathLike | None = None,
                 progress: bool | None = None, log: Log = quiet):
    """Train (or reuse) the expert trajectories that ``method`` matches (its
    :meth:`~nasdistill.distill.Distiller.prepare`) and return the built
    :class:`~nasdistill.distill.experts.ExpertBuffer`.

    The options are named as ``nasdistill experts`` names them; the method's ``expert_options``
    maps them to its settings (``mtt``: ``lr`` is ``lr_teacher``, ``seed`` is ``expert_seed``,
    ``root`` is ``experts_dir``...). Options left as None take the method's values for ``budget``
    (its paper defaults, or its CPU preset), so ``nasdistill experts`` builds exactly the buffer
    ``nasdistill distill --method mtt`` with the same budget looks for.
    """
    cls = method_class(method)
    names = cls.expert_options
    if not names:
        raise ConfigError(f"method {method!r} matches no expert trajectories",
                          f"use --method {' or '.join(expert_methods())}")
    given = {"num_experts": num_experts, "train_epochs": train_epochs, "net": net, "space": space, "lr": lr,
             "batch_size": batch_size, "augment": augment}
    params = method_settings(method, {names[k]: v for k, v in given.items()}, budget=budget, device=device)
    if augment in ("none", ""):
        params[names["augment"]] = None
    params[names["seed"]] = seed
    params[names["root"]] = str(root) if root else None
    buffer = cls(**params, device=device).prepare(dataset, progress=progress, log=log)
    log(f"experts: {buffer.num_experts} x {buffer.train_epochs} epochs of {buffer.arch_id} on {dataset.name} "
        f"({len(buffer.trained_)} trained now, {len(buffer.reused_)} reused) in {buffer.dir_}")
    return buffer


__all__ = ["method_settings", "distill_step", "make_teacher", "relabel_step", "expert_methods", "experts_step"]
