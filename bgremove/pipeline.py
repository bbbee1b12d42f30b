"""The cutout pipeline, shared by ``cut``, ``eval`` and the Python API.

photo (any size) -> resize to the model's input -> alpha -> resize back to the photo's size
-> [refine] -> optional threshold -> [clean, largest] -> [crop] -> straight RGBA (each visible pixel
keeps the photo's colour, or its estimated foreground colour with decontaminate), or the photo on a new
background (RGB), or the mask alone. The options in brackets are in ``effects`` and off by default.

The alpha is brought back to the ORIGINAL resolution, so a cutout has exactly the input's width and
height. The soft alpha is kept by default: the model's probabilities make smoother edges than a hard
step (see the model card for the measurements behind that default); ``threshold`` gives a hard mask.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Union

import cv2
import numpy as np

from . import effects
from .effects import Background, Box, Margin
from .images import DEFAULT_MAX_PIXELS, Photo, open_photo
from .runtime import Runtime, load_runtime

if TYPE_CHECKING:
    import PIL.Image

ImageLike = Union[str, Path, np.ndarray, "PIL.Image.Image"]


@dataclass
class CutOptions:
    """How a cutout is finished; every option is off by default. Strings are parsed (ValueError if bad)."""

    threshold: float | None = None  # None keeps the soft alpha
    # Soft alphas within this of 0 or 1 become exactly transparent or opaque. A sigmoid rarely reaches
    # either end: without this a tenth of a typical cutout is a faint (<= 2 %) veil of background or
    # person that is almost but not quite opaque. 0 keeps the model's values.
    snap: float = 0.02
    refine: bool = False  # guided filter on the edge band at the photo's resolution
    decontaminate: bool = False  # estimate the foreground colour of semi-transparent pixels
    largest: bool = False  # keep only the largest region of alpha >= 0.5
    clean: bool = False  # drop specks and fill holes smaller than min_area
    min_area: float = 0.0005  # fraction of the image
    crop: bool = False  # crop to the subject's bounding box
    margin: Margin | str | int = field(default_factory=Margin)  # 20 (pixels) or "5%" (of the box size)
    mask: bool = False  # output the alpha alone (8-bit gray)
    bg: Background | str | None = None  # colour name, #rrggbb, image path, "blur" or "blur:RADIUS"

    def __post_init__(self) -> None:
        self.margin = Margin.parse(self.margin)
        if self.bg is not None:
            self.bg = Background.parse(self.bg)
        if not 0.0 <= self.snap < 0.5:
            raise ValueError(f"snap {self.snap}: must be at least 0 and below 0.5")
        if not 0.0 <= self.min_area <= 1.0:
            raise ValueError(f"min_area {self.min_area}: must be a fraction of the image between 0 and 1")
        if self.mask and self.bg is not None:
            raise ValueError("--mask writes the alpha alone; it cannot have a background (--bg)")

    @property
    def has_alpha(self) -> bool:
        """Whether outputs are RGBA (a format without transparency, JPEG, needs a background or --mask)."""
        return not self.mask and self.bg is None


@dataclass
class Rendered:
    """A finished output and what is worth telling the user about it."""

    pixels: np.ndarray  # (H, W, 4) cutout, (H, W, 3) on a background, or (H, W) mask; uint8
    notes: list[str] = field(default_factory=list)


def to_model_input(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Stretch to the model's (H, W); area averaging when shrinking avoids aliasing on big photos.

    A big photo is first shrunk by a whole factor (OpenCV's fast path for area averaging, 4x faster on
    12 MP), keeping at least twice the model's size. Area averaging straight to the model's size is slow
    for a ratio that is not whole (1.8 ms for 854x480 -> 320x320), so the photo goes bilinearly to twice
    the size and is then averaged 2x2 (the fast path again): 0.8 ms, within 0.4 levels of the exact one.
    """
    h, w = size
    rows, cols = rgb.shape[:2]
    if rows > h or cols > w:
        factor = min(rows // h, cols // w) // 2
        if factor > 1:
            rgb = cv2.resize(rgb, (cols // factor, rows // factor), interpolation=cv2.INTER_AREA)
        rgb = cv2.resize(rgb, (2 * w, 2 * h), interpolation=cv2.INTER_LINEAR)
        small = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
    else:
        small = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)
    return small.astype(np.float32)


def to_photo_alpha(alpha: np.ndarray, width: int, height: int) -> np.ndarray:
    """The model's alpha resized (bilinear) to the photo's size, in [0, 1].

    Clipped before the resize: bilinear weights keep values inside [0, 1], and the small alpha is
    ~1,000x cheaper to clip than a 12 MP one.
    """
    alpha = np.clip(alpha, 0.0, 1.0, dtype=np.float32)
    if alpha.shape != (height, width):
        alpha = cv2.resize(alpha, (width, height), interpolation=cv2.INTER_LINEAR)
    return alpha


# The second, closer look (Remover zoom): at people whose box, widened by ZOOM_MARGIN of its longer side,
# covers at most ZOOM_MAX_SHARE of the photo. Less than ZOOM_MIN_PERSON of the model's pixels is too little
# person (a speck on a photo without one) to zoom into. The crop keeps at least ZOOM_MIN_PIXELS times the
# model's pixels and a quarter (1 / ZOOM_MAX) of the photo's width and height: a smaller one grows.
ZOOM_MARGIN = 0.2
ZOOM_MAX_SHARE = 0.5
ZOOM_MIN_PERSON = 0.005
ZOOM_MIN_PIXELS = 2.0
ZOOM_MAX = 4.0


@dataclass
class Zoom:
    """A second model pass on the part of the photo around the people: ``box`` (x0, y0, x1, y1) in the
    photo's pixels and the model's alpha of that crop."""

    box: Box
    small: np.ndarray


def zoom_box(small: np.ndarray, width: int, height: int) -> Box | None:
    """Where a closer look pays, from the model's alpha ``small`` of a photo of ``width`` x ``height``.

    The model sees every photo at about 352x352 pixels, so a person who fills a fifth of a video frame
    gets a few thousand of them, and the edges of thin limbs are guessed from a pixel or two. The box
    around every pixel called person (alpha >= 0.5), with a margin for what the first look missed, cut
    out of the full photo and fed at the model's shape again, gives the person two or more times the
    pixels (full-body frames: IoU 0.84 -> 0.88; see the model card). The crop is never blown up: it keeps
    at least twice the model's pixels, since an enlarged soft photo only shows the model more blur (on
    photos blurred first, zooming as far as the box allows lost what it gained on sharp ones). None when
    the crop would cover more than ZOOM_MAX_SHARE of the photo (little to gain) or too little person was
    found.
    """
    person = (small >= 0.5).astype(np.uint8)
    rows, cols = person.shape
    if cv2.countNonZero(person) < ZOOM_MIN_PERSON * rows * cols:
        return None
    x, y, w, h = cv2.boundingRect(person)
    sx, sy = width / cols, height / rows
    x0, y0, x1, y1 = x * sx, y * sy, (x + w) * sx, (y + h) * sy
    pad = ZOOM_MARGIN * max(x1 - x0, y1 - y0)
    x0, y0, x1, y1 = x0 - pad, y0 - pad, x1 + pad, y1 + pad
    # A box too small for ZOOM_MIN_PIXELS or ZOOM_MAX grows about its centre.
    grow = max(1.0, width / ZOOM_MAX / (x1 - x0), height / ZOOM_MAX / (y1 - y0),
               (ZOOM_MIN_PIXELS * rows * cols / (x1 - x0) / (y1 - y0)) ** 0.5)
    cx, cy, half_w, half_h = (x0 + x1) / 2, (y0 + y1) / 2, grow * (x1 - x0) / 2, grow * (y1 - y0) / 2
    box = (max(0, round(cx - half_w)), max(0, round(cy - half_h)),
           min(width, round(cx + half_w)), min(height, round(cy + half_h)))
    if (box[2] - box[0]) * (box[3] - box[1]) > ZOOM_MAX_SHARE * width * height:
        return None
    return box


@lru_cache(maxsize=8)
def _snap_table(snap: float) -> np.ndarray:
    """8-bit lookup: alphas within ``snap`` of 0 or 1 become exactly 0 or 255."""
    k = int(snap * 255)
    table = np.arange(256, dtype=np.uint8)
    table[: k + 1] = 0
    table[255 - k :] = 255
    return table


def finish_alpha(alpha: np.ndarray, options: CutOptions, photo_alpha: np.ndarray | None = None) -> np.ndarray:
    """Float alpha -> uint8 alpha, thresholded if asked; the photo's own transparency is kept."""
    alpha = alpha.astype(np.float32, copy=False)
    if options.threshold is not None:
        out = np.multiply(alpha >= options.threshold, 255, dtype=np.uint8)
    else:
        out = cv2.convertScaleAbs(alpha, alpha=255.0)  # round(255 * alpha), saturated: one pass in C
        if options.snap:
            out = cv2.LUT(out, _snap_table(options.snap))
    if photo_alpha is not None:
        out = cv2.multiply(out, photo_alpha, scale=1 / 255)  # rounded, as (out * photo_alpha + 127) // 255
    return out


def compose_rgba(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Straight (not premultiplied) RGBA: soft edges keep the photo's colour, so no dark halo.

    Fully transparent pixels get colour 0: invisible either way, and the PNG is smaller and faster.
    (OpenCV does the masking and interleaving: 10x faster than numpy's boolean indexing on 12 MP.)
    """
    rgba = cv2.cvtColor(cv2.bitwise_and(rgb, rgb, mask=alpha), cv2.COLOR_RGB2RGBA)
    rgba[..., 3] = alpha
    return rgba


def render(photo: Photo, alpha: np.ndarray, options: CutOptions, upscale: float = 1.0) -> Rendered:
    """Apply every option to the float alpha (at the photo's size) and make the output pixels.

    ``upscale`` is how much the model's alpha was enlarged (photo size / model size): the edge band
    that ``refine`` works on is about that wide.
    """
    notes: list[str] = []
    if options.refine:
        alpha = effects.refine_alpha(photo.rgb, alpha, radius=max(2, round(upscale)))
    a8 = finish_alpha(alpha, options, photo.alpha)
    if options.clean:
        a8 = effects.clean_alpha(a8, options.min_area)
    if options.largest:
        a8 = effects.keep_largest(a8)
    height, width = a8.shape
    box = (0, 0, width, height)
    if options.crop:
        found = effects.subject_box(a8, options.margin)
        if found is None:
            notes.append("nothing kept: not cropped")
        else:
            box = found
    x0, y0, x1, y1 = box
    if options.mask:
        return Rendered(np.ascontiguousarray(a8[y0:y1, x0:x1]), notes)
    rgb = effects.decontaminate(photo.rgb, a8) if options.decontaminate else photo.rgb
    fg, a8_box = rgb[y0:y1, x0:x1], a8[y0:y1, x0:x1]
    if options.bg is not None:
        background = options.bg.render(photo.rgb, a8, box)  # the blur sees the whole photo, not just the box
        return Rendered(effects.composite(fg, a8_box, background), notes)
    return Rendered(compose_rgba(fg, a8_box), notes)


class Remover:
    """Cut people out of photos; the model is loaded once and reused.

    >>> from bgremove import Remover
    >>> remover = Remover()                      # the shipped model
    >>> cutout = remover.cut("photo.jpg")        # PIL RGBA image
    >>> alpha = remover.alpha(numpy_rgb)         # float32 HxW in [0, 1]
    >>> Remover(options=CutOptions(refine=True, bg="white", crop=True, margin="5%")).cut("photo.jpg")
    """

    def __init__(
        self,
        model: str | Path | None = None,
        threshold: float | None = None,
        size: int | None = None,
        threads: int | None = None,
        device: str = "auto",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        options: CutOptions | None = None,
        tta: bool = False,
        zoom: bool = True,
    ):
        self.runtime: Runtime = load_runtime(model, size=size, threads=threads, device=device)
        # Test-time augmentation: each photo also goes through the model mirrored, and the two alphas
        # are averaged. The model is not mirror-symmetric, so part of its error cancels out.
        self.tta = tta
        # A second, closer look at people who fill little of the photo (see zoom_box).
        self.zoom = zoom
        self.options = options or CutOptions()
        if threshold is not None:
            self.options = replace(self.options, threshold=threshold)
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
    # Four steps, so that a batch can run them where it likes (batch.run: the model calls on the main
    # thread for a .keras model, all in one worker for a .tflite model):
    # model_input -> predict_small -> look_closer -> photo_alpha.
    def model_input(self, photo: Photo) -> np.ndarray:
        """The photo as the model takes it (resized to the model's shape for it, float32)."""
        return to_model_input(photo.rgb, self.runtime.shape_for(*photo.rgb.shape[:2]))

    def predict_small(self, inputs: list[np.ndarray], runtime: Runtime | None = None) -> list[np.ndarray]:
        """Batched model calls on model_input() arrays (one per shape among them) -> alphas at those shapes.

        ``runtime``: another copy of the model (``LiteRTRuntime.clone``), for a thread of its own.
        """
        runtime = runtime or self.runtime
        alphas: list[np.ndarray] = [np.empty(0)] * len(inputs)
        by_shape: dict[tuple, list[int]] = {}
        for i, x in enumerate(inputs):
            by_shape.setdefault(x.shape, []).append(i)
        for indices in by_shape.values():
            batch = np.stack([inputs[i] for i in indices])
            small = runtime.predict(batch)
            if self.tta:
                mirrored = runtime.predict(np.ascontiguousarray(batch[:, :, ::-1]))
                small = (small + mirrored[:, :, ::-1]) / 2
            for i, alpha in zip(indices, small):
                alphas[i] = alpha
        return alphas

    def look_closer(self, photos: list[Photo], smalls: list[np.ndarray], runtime: Runtime | None = None
                    ) -> list[Zoom | None]:
        """The second pass (``zoom``): for each photo whose people fill little of it (zoom_box), the model's
        alpha of the crop around them; batched like predict_small. None where there is no second look."""
        boxes = [zoom_box(small, *photo.size) if self.zoom else None for photo, small in zip(photos, smalls)]
        chosen = [i for i, box in enumerate(boxes) if box is not None]
        crops = []
        for i in chosen:
            x0, y0, x1, y1 = boxes[i]
            crop = photos[i].rgb[y0:y1, x0:x1]
            crops.append(to_model_input(crop, self.runtime.shape_for(*crop.shape[:2])))
        zooms: list[Zoom | None] = [None] * len(photos)
        for i, small in zip(chosen, self.predict_small(crops, runtime) if crops else []):
            zooms[i] = Zoom(boxes[i], small)
        return zooms

    @staticmethod
    def photo_alpha(photo: Photo, small: np.ndarray, zoom: Zoom | None = None) -> np.ndarray:
        """A model-size alpha (and its closer look, if any) -> float alpha at the photo's own resolution."""
        alpha = to_photo_alpha(small, *photo.size)
        if zoom is not None:
            x0, y0, x1, y1 = zoom.box
            alpha[y0:y1, x0:x1] = to_photo_alpha(zoom.small, x1 - x0, y1 - y0)
        return alpha

    def predict_alphas(self, photos: list[Photo]) -> list[np.ndarray]:
        """Float alphas at each photo's own resolution, from one batched model call (and one more for the
        closer look, if any photo takes it)."""
        return self.predict_alphas_timed(photos)[0]

    def predict_alphas_timed(self, photos: list[Photo]) -> tuple[list[np.ndarray], float]:
        """The alphas and the seconds of the model calls (with the closer look's crop and resize: eval
        reports model and pipeline time apart)."""
        inputs = [self.model_input(p) for p in photos]
        t0 = time.perf_counter()
        small = self.predict_small(inputs)
        zooms = self.look_closer(photos, small)
        seconds = time.perf_counter() - t0
        return [self.photo_alpha(p, a, z) for a, p, z in zip(small, photos, zooms)], seconds

    # -- outputs
    def finish(self, photo: Photo, alpha: np.ndarray, options: CutOptions | None = None) -> Rendered:
        """The output pixels for this photo and its float alpha, with notes (e.g. an empty crop)."""
        (h, w) = photo.rgb.shape[:2]
        mh, mw = self.runtime.shape_for(h, w)
        return render(photo, alpha, options or self.options, upscale=max(h / mh, w / mw))

    def render(self, photo: Photo, alpha: np.ndarray) -> np.ndarray:
        return self.finish(photo, alpha).pixels

    def alpha(self, image: ImageLike) -> np.ndarray:
        return self.predict_alphas([self.load(image)])[0]

    def mask(self, image: ImageLike) -> np.ndarray:
        """uint8 alpha (HxW) as written by ``cut --mask``: every option that shapes the alpha applies."""
        photo = self.load(image)
        options = replace(self.options, mask=True, bg=None)
        return self.finish(photo, self.predict_alphas([photo])[0], options).pixels

    def cut(self, image: ImageLike):
        """The output (RGBA cutout, RGB on --bg, or gray mask): numpy for numpy input, else a PIL image."""
        photo = self.load(image)
        pixels = self.render(photo, self.predict_alphas([photo])[0])
        if isinstance(image, np.ndarray):
            return pixels
        from PIL import Image

        return Image.fromarray(pixels)
