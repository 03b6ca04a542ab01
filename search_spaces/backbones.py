"""torchvision's classification backbones, found by name: a space of whole networks.

Two uses. As a search space it asks the macro question "which backbone" (``--space backbones``).
As a *teacher* space it lets large-scale distillation start from the networks the papers use:
``--method sre2l --set teacher_space=backbones --set teacher=resnet18 --set
teacher_weights=PATH`` recovers from a ResNet-18 whose weights are a local file (a torchvision
state dict saved with ``torch.save`` or as ``.safetensors``; nothing is downloaded), as SRe2L does
on ImageNet-1k.

An architecture is ``{"model": NAME}``; its id is ``NAME``. :meth:`BackboneSpace.build` calls
``torchvision.models.get_model(NAME, num_classes=K, weights=None)`` and, for inputs that do not
have three channels, replaces the first convolution by one with as many input channels (its
other settings kept). The state-dict keys are torchvision's own, so its weight files load as they are.
Its convolutions and pooling layers are nasdistill's drop-ins (:func:`nasdistill.spaces.dropin.fast_layers`).

Inputs must be at least :data:`MIN_SIDE` pixels a side: these networks downsample 32x, and below
17 px a strided convolution meets a 1x1 map, where PyTorch 2.14's CPU bfloat16 weight gradient is
wrong in about half the calls (measured: relative error up to 1e30; a 1x1 input is also a
degenerate use of these nets). Resize with ``--stream --resolution 32`` or use ``convnet``.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from torch import nn

from nasdistill.errors import ConfigError
from nasdistill.spaces import CategoricalSpace
from nasdistill.spaces.dropin import fast_layers

#: small-to-mid torchvision classifiers that train on a CPU and accept 32 px inputs
MODELS = ["resnet18", "resnet34", "resnet50", "mobilenet_v3_small", "mobilenet_v2", "efficientnet_b0",
          "shufflenet_v2_x1_0", "regnet_y_400mf"]
#: the smallest image side accepted (five stride-2 stages never see a 1x1 map above it)
MIN_SIDE = 17


def _first_conv_for(model: nn.Module, channels: int) -> None:
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels == channels:
                return
            parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            setattr(parent, name.rpartition(".")[2], nn.Conv2d(
                channels, module.out_channels, module.kernel_size, module.stride, module.padding, module.dilation,
                1, module.bias is not None))
            return


class BackboneSpace(CategoricalSpace):
    name = "backbones"
    choices = {"model": MODELS}

    def default_arch(self) -> dict:
        return {"model": "resnet18"}

    def arch_id(self, arch: Mapping) -> str:
        return self.validate(arch)["model"]

    def parse_id(self, arch_id: str) -> dict:
        if "=" in arch_id:
            return super().parse_id(arch_id)
        if arch_id not in MODELS:
            raise ConfigError(f"unknown backbone {arch_id!r}", f"use one of {', '.join(MODELS)}")
        return {"model": arch_id}

    def check_input(self, input_shape: Sequence[int]) -> None:
        if min(int(v) for v in input_shape[1:]) < MIN_SIDE:
            raise ConfigError(f"torchvision backbones need images of at least {MIN_SIDE} px a side, got "
                              f"{tuple(input_shape[1:])}", "resize them (--stream --resolution 32) or use the "
                              "convnet space")

    def build(self, arch: Mapping, input_shape: Sequence[int], num_classes: int) -> nn.Module:
        import torchvision

        self.check_input(input_shape)
        model = torchvision.models.get_model(self.validate(arch)["model"], num_classes=int(num_classes), weights=None)
        _first_conv_for(model, int(input_shape[0]))
        return fast_layers(model)  # the same network, its convolutions and pools nasdistill's (same values)


space = BackboneSpace()
