"""A new distillation method in one file: subclass Distiller, register it, run it from the CLI.

The method keeps the first ``ipc`` training images of each class. Registering it is all it takes
for ``nasdistill distill --method first-n`` to find it, store its proxy under a key and write it.
"""

from __future__ import annotations

import json

import pytest
import torch

from nasdistill.cli import main
from nasdistill.data import load_dataset, load_proxy
from nasdistill.distill import METHODS, Distiller, get_method, register
from nasdistill.errors import UnknownNameError


class FirstImages(Distiller):
    name = "first-n"
    summary = "the first ipc training images of each class (a test method)"

    def __init__(self, ipc: int = 10, seed: int = 0, device: str = "cpu"):
        super().__init__(ipc=ipc, seed=seed, device=device)

    def _fit(self, dataset, ctx):
        idx = torch.cat([c[: self.ipc] for c in dataset.indices_by_class()])
        return dataset.x_train[idx].clone(), dataset.y_train[idx].clone()


@pytest.fixture
def first_images():
    register(FirstImages)
    yield FirstImages
    METHODS.unregister(FirstImages.name)


def test_a_registered_method_runs_through_the_cli(first_images, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["distill", "--method", "first-n", "--data", "digits", "--ipc", "2", "--no-progress",
            "--store", str(tmp_path / "store"), "--out", str(out)]
    assert main(argv) == 0
    assert "proxy:" in capsys.readouterr().out
    proxy = load_proxy(out / "proxy.safetensors")
    dataset = load_dataset("digits")
    expected = torch.cat([c[:2] for c in dataset.indices_by_class()])
    assert len(proxy) == 2 * dataset.num_classes
    assert torch.equal(proxy.images, dataset.x_train[expected].float())
    assert torch.equal(proxy.labels, dataset.y_train[expected])
    meta = json.loads((out / "proxy.json").read_text())
    assert meta["method"] == "first-n" and meta["ipc"] == 2
    assert meta["key"] == get_method("first-n", ipc=2).key(dataset)

    assert main(argv) == 0  # the second run finds the stored proxy
    assert "reusing stored proxy" in capsys.readouterr().out


def test_an_unregistered_method_is_gone(first_images):
    METHODS.unregister("first-n")
    with pytest.raises(UnknownNameError, match="unknown distillation method 'first-n'"):
        get_method("first-n")
    register(FirstImages)  # the fixture removes it again
