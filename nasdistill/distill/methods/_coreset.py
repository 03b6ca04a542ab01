"""Shared machinery of the coreset baselines (``herding``, ``kcenter``).

A coreset method keeps ``ipc`` *real* training images of each class, chosen in the feature space
of a network trained briefly on the real data (as DC's coreset baselines, Zhao et al., ICLR 2021,
which select with the penultimate features of a ConvNet trained on the training set). The
pipeline is: build the network (``net`` in ``space``, by default the space's default ConvNet),
train it with :func:`nasdistill.training.train` for ``feature_epochs`` (optionally on a seeded
per-class subsample), embed every training image with ``model.embed`` in eval mode, then let the
method pick indices class by class. The seed controls the network's initial weights, the
subsample and the training batches; the selection rule itself is deterministic.
"""

from __future__ import annotations

from abc import abstractmethod

import torch

from ..._seed import derive_seed, generator
from ...data import ImageDataset
from ...training import TrainConfig, train
from ..base import Distiller, NetworkSampler


def train_feature_net(dataset: ImageDataset, *, space: str = "convnet", net: str | None = None, epochs: int = 10,
                      samples_per_class: int | None = None, seed: int = 0,
                      device: str | torch.device = "cpu") -> torch.nn.Module:
    """A network (``net`` in ``space``) trained briefly on ``dataset``'s training split, seeded by ``seed``.

    With ``samples_per_class`` it trains on that many images of each class, drawn with the seed.
    """
    model = NetworkSampler(space, net).build(seed, 0, dataset, device)
    x, y = dataset.x_train, dataset.y_train  # whole: a streamed split stays on disk, read a batch at a time
    if samples_per_class is not None:
        g = generator(derive_seed(seed, "feature-subsample"))
        idx = torch.cat([c[torch.randperm(len(c), generator=g)[:samples_per_class]]
                         for c in dataset.indices_by_class()])
        x, y = x[idx], y[idx]
    train(model, x, y, TrainConfig(epochs=epochs, seed=derive_seed(seed, "feature-train")), device=device)
    return model.eval()


@torch.no_grad()
def embed_all(model: torch.nn.Module, x: torch.Tensor, *, device: str | torch.device = "cpu",
              batch_size: int = 512) -> torch.Tensor:
    """``model.embed`` of every image of ``x`` in eval mode, batched, as a float32 CPU (N, D) tensor."""
    was_training = model.training
    model.eval()
    out = [model.embed(x[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)]
    model.train(was_training)
    return torch.cat(out)


class CoresetDistiller(Distiller):
    """Base of the coreset baselines: real images picked per class in a trained network's feature space.

    Subclasses implement :meth:`select` (features of one class -> ``k`` local indices). After
    ``fit``, ``indices_`` holds the selected indices into ``dataset.x_train`` (class by class).
    """

    def __init__(self, ipc: int = 10, feature_epochs: int = 10, feature_samples_per_class: int | None = None,
                 net: str | None = None, space: str = "convnet", seed: int = 0, device: str = "cpu"):
        """Defaults follow DC's coreset baselines: features of DC's default ConvNet trained on the
        whole training split (here for ``feature_epochs`` epochs of DC's training recipe).

        Args:
            feature_epochs: epochs of training of the feature network on the real data.
            feature_samples_per_class: train the feature network on this many images of each
                class (a seeded subsample) instead of all of them; every image is still embedded.
            net: architecture id of the feature network in ``space`` (default: its default architecture).
            space: the search space ``net`` belongs to.
        """
        super().__init__(ipc=ipc, seed=seed, device=device)
        self.feature_epochs = feature_epochs
        self.feature_samples_per_class = feature_samples_per_class
        self.net = net
        self.space = space

    def check(self, dataset: ImageDataset) -> None:
        super().check(dataset)
        self._check_ints("feature_epochs")
        self._check_ints("feature_samples_per_class", optional=True)  # None: every image
        NetworkSampler(self.space, self.net)  # unknown space / architecture -> ConfigError

    def features(self, dataset: ImageDataset) -> torch.Tensor:
        """Features (N, D) of every training image under the seeded, briefly trained network."""
        model = train_feature_net(dataset, space=self.space, net=self.net, epochs=self.feature_epochs,
                                  samples_per_class=self.feature_samples_per_class, seed=self.seed,
                                  device=self.device)
        return embed_all(model, dataset.x_train, device=self.device)

    @staticmethod
    @abstractmethod
    def select(features: torch.Tensor, k: int) -> torch.Tensor:
        """Indices (k,) into ``features`` (the images of one class) of the images to keep."""

    def _fit(self, dataset, ctx):
        feats = self.features(dataset).double()
        picks = [idx[self.select(feats[idx], self.ipc)] for idx in dataset.indices_by_class()]
        self.indices_ = torch.cat(picks)
        return dataset.x_train[self.indices_].clone(), dataset.y_train[self.indices_].clone()
