"""Differentiable augmentation in the style of DSA (Zhao & Bilen, ICML 2021).

Every transformation is differentiable with respect to the images, so synthetic images can be
learned *through* it. Parameters are sampled separately from application: sample once and apply
the same parameters to a real and a synthetic batch ("siamese" augmentation), or let each call
sample its own.

>>> aug = DiffAugment("color_crop_cutout_flip_scale_rotate")
>>> p = aug.sample(1, generator)          # one transformation shared by both batches
>>> aug(real, p), aug(syn, p)
>>> aug(x, generator=generator)           # per-image random transformations (training)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..errors import ConfigError

DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"


def default_strategy(num_channels: int) -> str:
    """DSA's strategy; flips are dropped for single-channel (digit-like) data, where they change the class."""
    return DEFAULT_STRATEGY if num_channels != 1 else DEFAULT_STRATEGY.replace("_flip", "")


def _u(n: int, g: torch.Generator | None, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device="cpu").to(device)


@dataclass
class AugParams:
    """Sampled parameters: ``values[op]`` holds per-image tensors (batch of 1 broadcasts)."""

    ops: list[str]
    values: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    n: int = 1


class DiffAugment:
    """DSA's differentiable augmentations: ``color``, ``crop``, ``cutout``, ``flip``, ``scale``, ``rotate``.

    Args:
        strategy: op names joined by ``_``.
        mode: ``"single"`` applies one op drawn at random per call (DSA's default), ``"all"`` applies each in turn.
        scale, rotate, crop, cutout: DSA's ratios (scale factor up to 1.2, +-15 degrees,
            translation up to 1/8 of the size, cutout square of half the size).
    """

    OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")

    def __init__(self, strategy: str = DEFAULT_STRATEGY, mode: str = "single", *, scale: float = 1.2,
                 rotate: float = 15.0, crop: float = 0.125, cutout: float = 0.5, brightness: float = 1.0,
                 saturation: float = 2.0, contrast: float = 0.5):
        ops = [o for o in strategy.split("_") if o and o != "none"]
        bad = [o for o in ops if o not in self.OPS]
        if bad:
            raise ConfigError(f"unknown augmentation {bad[0]!r}", f"use ops from {', '.join(self.OPS)} joined by '_'")
        if mode not in ("single", "all"):
            raise ConfigError(f"unknown augmentation mode {mode!r}", "use 'single' or 'all'")
        self.ops, self.mode, self.strategy = ops, mode, "_".join(ops) or "none"
        self.ratio = dict(scale=scale, rotate=rotate, crop=crop, cutout=cutout, brightness=brightness,
                          saturation=saturation, contrast=contrast)

    def __repr__(self) -> str:
        return f"DiffAugment({self.strategy!r}, mode={self.mode!r})"

    # --- sampling ------------------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None, device="cpu") -> AugParams:
        """Draw parameters for ``n`` images (``n=1`` gives one transformation for a whole batch)."""
        if not self.ops:
            return AugParams([], {}, n)
        if self.mode == "single":
            ops = [self.ops[int(torch.randint(len(self.ops), (1,), generator=generator))]]
        else:
            ops = list(self.ops)
        g, r = generator, self.ratio
        vals: dict[str, dict[str, torch.Tensor]] = {}
        for op in ops:
            if op == "color":
                vals[op] = {"b": _u(n, g, device) - 0.5, "s": _u(n, g, device), "c": _u(n, g, device)}
            elif op == "crop":
                vals[op] = {"tx": (_u(n, g, device) * 2 - 1) * r["crop"], "ty": (_u(n, g, device) * 2 - 1) * r["crop"]}
            elif op == "cutout":
                vals[op] = {"cx": _u(n, g, device), "cy": _u(n, g, device)}
            elif op == "flip":
                vals[op] = {"p": _u(n, g, device)}
            elif op == "scale":
                lo = 1.0 / r["scale"]
                vals[op] = {"sx": lo + _u(n, g, device) * (r["scale"] - lo), "sy": lo + _u(n, g, device) * (r["scale"] - lo)}
            elif op == "rotate":
                vals[op] = {"theta": (_u(n, g, device) * 2 - 1) * r["rotate"] * math.pi / 180}
        return AugParams(ops, vals, n)

    # --- application ---------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, params: AugParams | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        if not self.ops:
            return x
        if params is None:
            params = self.sample(len(x), generator, x.device)
        elif params.n not in (1, len(x)):
            raise ValueError(f"augmentation parameters for {params.n} images applied to {len(x)}")
        for op in params.ops:
            x = getattr(self, f"_{op}")(x, {k: v.to(x.device) for k, v in params.values[op].items()})
        return x

    @staticmethod
    def _view(v: torch.Tensor) -> torch.Tensor:
        return v.view(-1, 1, 1, 1)

    def _color(self, x, p):
        r, v = self.ratio, self._view
        x = x + v(p["b"]) * r["brightness"]
        m = x.mean(dim=1, keepdim=True)
        x = (x - m) * v(p["s"]) * r["saturation"] + m
        m = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - m) * (v(p["c"]) + r["contrast"]) + m

    def _affine(self, x, theta):
        theta = theta.expand(len(x), 2, 3) if theta.shape[0] == 1 else theta
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def _crop(self, x, p):
        h, w = x.shape[-2:]
        # whole-pixel translation, as DSA's crop (pad-and-crop) does
        tx = torch.round(p["tx"] * w) * 2 / w
        ty = torch.round(p["ty"] * h) * 2 / h
        one, zero = torch.ones_like(tx), torch.zeros_like(tx)
        theta = torch.stack([torch.stack([one, zero, tx], 1), torch.stack([zero, one, ty], 1)], 1)
        return self._affine(x, theta)

    def _scale(self, x, p):
        zero = torch.zeros_like(p["sx"])
        theta = torch.stack([torch.stack([p["sx"], zero, zero], 1), torch.stack([zero, p["sy"], zero], 1)], 1)
        return self._affine(x, theta)

    def _rotate(self, x, p):
        t, zero = p["theta"], torch.zeros_like(p["theta"])
        theta = torch.stack([torch.stack([t.cos(), -t.sin(), zero], 1), torch.stack([t.sin(), t.cos(), zero], 1)], 1)
        return self._affine(x, theta)

    def _flip(self, x, p):
        return torch.where(self._view(p["p"] < 0.5), x.flip(3), x)

    def _cutout(self, x, p):
        h, w = x.shape[-2:]
        ch, cw = max(1, int(h * self.ratio["cutout"] + 0.5)), max(1, int(w * self.ratio["cutout"] + 0.5))
        cy = (p["cy"] * (h + 1)).long().clamp(max=h).view(-1, 1, 1)  # square centre, anywhere in the image
        cx = (p["cx"] * (w + 1)).long().clamp(max=w).view(-1, 1, 1)
        ys = torch.arange(h, device=x.device).view(1, h, 1)
        xs = torch.arange(w, device=x.device).view(1, 1, w)
        inside = (ys >= cy - ch // 2) & (ys < cy - ch // 2 + ch) & (xs >= cx - cw // 2) & (xs < cx - cw // 2 + cw)
        return x * (~inside).unsqueeze(1).to(x.dtype)


def make_augment(spec: str | DiffAugment | None, num_channels: int = 3) -> DiffAugment | None:
    """``None``/``"none"`` -> no augmentation; ``"dsa"`` -> DSA's default strategy for the data; else a strategy."""
    if spec is None or isinstance(spec, DiffAugment):
        return spec
    if spec in ("", "none"):
        return None
    if spec == "dsa":
        return DiffAugment(default_strategy(num_channels))
    return DiffAugment(spec)
