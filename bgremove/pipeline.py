"""The cutout pipeline, shared by ``cut``, ``eval`` and the Python API.

photo (any size) -> resize to the model's input -> alpha -> resize back to the photo's size
-> optional threshold -> straight RGBA (each visible pixel keeps the photo's colour).

The alpha is brought back to the ORIGINAL resolution, so a cutout has exactly the input's width and
height. The soft alpha is kept by default: the model's probabilities make smoother edges than a hard
step (see the model card for the measurements behind that default); ``threshold`` gives a hard mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Union

import cv2
import numpy as np

from .images import DEFAULT_MAX_PIXELS, Photo, open_photo
from .runtime import Runtime, load_runtime

ImageLike = Union[str, Path, np.ndarray, "PIL.Image.Image"]  # noqa: F821


@dataclass
class CutOptions:
    threshold: float | None = None  # None keeps the soft alpha


def to_model_input(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Stretch to the model's (H, W); area averaging when shrinking avoids aliasing on big photos."""
    h, w = size
    shrinking = rgb.shape[0] > h or rgb.shape[1] > w
    small = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return small.astype(np.float32)


def to_photo_alpha(alpha: np.ndarray, width: int, height: int) -> np.ndarray:
    """The model's alpha resized (bilinear) to the photo's size, in [0, 1]."""
    if alpha.shape != (height, width):
        alpha = cv2.resize(alpha, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(alpha, 0.0, 1.0)


def finish_alpha(alpha: np.ndarray, options: CutOptions, photo_alpha: np.ndarray | None = None) -> np.ndarray:
    """Float alpha -> uint8 alpha, thresholded if asked; the photo's own transparency is kept."""
    if options.threshold is not None:
        out = np.where(alpha >= options.threshold, 255, 0).astype(np.uint8)
    else:
        out = np.rint(alpha * 255.0).astype(np.uint8)
    if photo_alpha is not None:
        out = ((out.astype(np.uint16) * photo_alpha + 127) // 255).astype(np.uint8)
    return out


def compose_rgba(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Straight (not premultiplied) RGBA: soft edges keep the photo's colour, so no dark halo.

    Fully transparent pixels get colour 0: invisible either way, and the PNG is smaller and faster.
    """
    rgba = np.empty((*rgb.shape[:2], 4), np.uint8)
    rgba[..., :3] = rgb
    rgba[..., 3] = alpha
    rgba[alpha == 0, :3] = 0
    return rgba


class Remover:
    """Cut people out of photos; the model is loaded once and reused.

    >>> from bgremove import Remover
    >>> remover = Remover()                      # the shipped model
    >>> cutout = remover.cut("photo.jpg")        # PIL RGBA image
    >>> alpha = remover.alpha(numpy_rgb)         # float32 HxW in [0, 1]
    """

    def __init__(
        self,
        model: str | Path | None = None,
        threshold: float | None = None,
        size: int | None = None,
        threads: int | None = None,
        device: str = "auto",
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ):
        self.runtime: Runtime = load_runtime(model, size=size, threads=threads, device=device)
        self.options = CutOptions(threshold=threshold)
        self.max_pixels = max_pixels

    # -- inputs
    def load(self, image: ImageLike) -> Photo:
        """Accept a path, a PIL image or an RGB/RGBA/gray uint8 numpy array."""
        if isinstance(image, (str, Path)):
            return open_photo(Path(image), self.max_pixels)
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8:
                raise TypeError("numpy images must be uint8")
            if image.ndim == 2:
                return Photo(np.repeat(image[:, :, None], 3, axis=2))
            if image.ndim == 3 and image.shape[2] == 4:
                return Photo(np.ascontiguousarray(image[..., :3]), np.ascontiguousarray(image[..., 3]))
            if image.ndim == 3 and image.shape[2] == 3:
                return Photo(np.ascontiguousarray(image))
            raise TypeError(f"unsupported array shape {image.shape}")
        from PIL import Image

        if isinstance(image, Image.Image):
            from .images import _to_rgb

            rgb, alpha = _to_rgb(image)
            return Photo(np.ascontiguousarray(rgb), alpha)
        raise TypeError(f"unsupported image type {type(image).__name__}")

    # -- model
    def predict_alphas(self, photos: list[Photo]) -> list[np.ndarray]:
        """Float alphas at each photo's own resolution, from one batched model call."""
        if not photos:
            return []
        batch = np.stack([to_model_input(p.rgb, self.runtime.size) for p in photos])
        small = self.runtime.predict(batch)
        return [to_photo_alpha(a, *p.size) for a, p in zip(small, photos)]

    # -- outputs
    def render(self, photo: Photo, alpha: np.ndarray) -> np.ndarray:
        return compose_rgba(photo.rgb, finish_alpha(alpha, self.options, photo.alpha))

    def alpha(self, image: ImageLike) -> np.ndarray:
        return self.predict_alphas([self.load(image)])[0]

    def mask(self, image: ImageLike) -> np.ndarray:
        """uint8 alpha (HxW) as written by ``cut --mask``."""
        photo = self.load(image)
        return finish_alpha(self.predict_alphas([photo])[0], self.options, photo.alpha)

    def cut(self, image: ImageLike):
        """RGBA cutout: a numpy array for numpy input, else a PIL image."""
        photo = self.load(image)
        rgba = self.render(photo, self.predict_alphas([photo])[0])
        if isinstance(image, np.ndarray):
            return rgba
        from PIL import Image

        return Image.fromarray(rgba, "RGBA")
