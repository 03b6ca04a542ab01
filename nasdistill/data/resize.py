"""How images are resized, one way for every path: ImageFolder trees and arrays, in RAM and streamed."""

from __future__ import annotations

import numpy as np

from .._params import is_whole
from ..errors import DatasetError


def check_resolution(resolution) -> int | None:
    """``resolution`` as None or an ``int`` (a NumPy integer too); a one-line :class:`DatasetError`
    unless it is None or a positive integer."""
    if resolution is None:
        return None
    if not is_whole(resolution) or resolution < 1:
        raise DatasetError(f"--resolution must be a positive integer, got {resolution!r}", "pass e.g. --resolution 64")
    return int(resolution)


def pil_array(im, size: tuple[int, int] | None) -> np.ndarray:
    """A PIL image as uint8 ``(H, W, C)``, resized bilinearly to ``size`` first when it differs:
    how every resizing path (trees and arrays, in RAM and streamed) resizes."""
    from PIL import Image

    if size is not None and im.size != (size[1], size[0]):
        im = im.resize((size[1], size[0]), Image.BILINEAR)
    arr = np.asarray(im, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def resize_images(x: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """uint8 images ``(N, H, W[, C])`` as ``(N, size..., C)``, each resized by :func:`pil_array`
    (returned as they are, with a channel axis, when they already have that size)."""
    from PIL import Image

    x = np.asarray(x, dtype=np.uint8)
    x = x[..., None] if x.ndim == 3 else x
    if size is None or x.shape[1:3] == tuple(size):
        return x
    return np.stack([pil_array(Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img), size) for img in x])
