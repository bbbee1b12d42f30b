"""tf.data input pipelines for training: cached or streamed pairs, augmentation, batching, prefetch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from .data import Sample, SampleError, Shape, load_resized
from .shapes import all_shapes

AUTOTUNE = tf.data.AUTOTUNE
DEGRADATIONS = ("rotate", "blur", "defocus", "jpeg")  # what AugmentConfig.degrade_kinds may name


@dataclass
class AugmentConfig:
    """Random changes applied to training pairs; each one is a photo a user could plausibly send."""

    flip: bool = True
    # Side of the random crop box relative to the image; > 1 zooms out (people smaller, more background).
    scale: tuple[float, float] = (0.6, 1.15)
    full_view_prob: float = 0.35  # keep the whole frame unchanged: what inference sees
    brightness: float = 0.15
    contrast: tuple[float, float] = (0.7, 1.3)
    saturation: tuple[float, float] = (0.6, 1.4)
    hue: float = 0.04
    grayscale_prob: float = 0.08
    noise_std: float = 0.03
    # Paste the person of one training crop over another (the label is the union of both masks):
    # people on backgrounds and in groups the data set does not have.
    paste_prob: float = 0.25
    # Photo degradations, each of ``degrade_kinds`` drawn on its own for this share of the crops: a
    # tilted camera (rotate: up to ``max_rotation`` degrees, zoomed in so no corner is empty), a soft or
    # upscaled photo (blur: Gaussian, sigma up to ``max_blur`` pixels at the model's shape, the mask kept
    # sharp), a photo out of focus as a whole (defocus: the same blur on photo and mask, since the matte of
    # a blurred scene is as soft as its edges) and a recompressed one (jpeg: quality from ``jpeg_quality``).
    # The masks hold few such photos; users send many.
    degrade_prob: float = 0.0
    degrade_kinds: tuple[str, ...] = ("rotate", "blur", "jpeg")
    max_rotation: float = 15.0
    max_blur: float = 2.0
    jpeg_quality: tuple[int, int] = (20, 90)


def _random_box(aug: AugmentConfig) -> tf.Tensor:
    side = tf.random.uniform([], *aug.scale)
    aspect = tf.exp(tf.random.uniform([], -0.15, 0.15))
    h, w = side * aspect, side / aspect
    y0 = tf.random.uniform([], tf.minimum(0.0, 1.0 - h), tf.maximum(0.0, 1.0 - h))
    x0 = tf.random.uniform([], tf.minimum(0.0, 1.0 - w), tf.maximum(0.0, 1.0 - w))
    box = tf.stack([y0, x0, y0 + h, x0 + w])
    full = tf.constant([0.0, 0.0, 1.0, 1.0])
    return tf.where(tf.random.uniform([]) < aug.full_view_prob, full, box)


def _sometimes(prob: float, change, x: tf.Tensor) -> tf.Tensor:
    """``change(x)`` with probability ``prob``, else ``x``; the change is only computed when drawn."""
    if prob <= 0:
        return x
    return tf.cond(tf.random.uniform([]) < prob, lambda: change(x), lambda: x)


def rotate(both: tf.Tensor, degrees: tf.Tensor) -> tf.Tensor:
    """(H, W, C) rotated about its centre and zoomed in just enough that no corner falls outside."""
    h, w = tf.unstack(tf.cast(tf.shape(both)[:2], tf.float32))
    theta = degrees * np.pi / 180.0
    cos, sin = tf.cos(theta), tf.abs(tf.sin(theta))
    zoom = tf.maximum(cos + sin * w / h, cos + sin * h / w)  # the rotated frame's bounding box / the frame
    c, s = cos / zoom, tf.sin(theta) / zoom  # the sine keeps its sign: it sets the direction of the turn
    cx, cy = (w - 1) / 2, (h - 1) / 2
    # Output pixel (x, y) samples the input at the centre + the rotated, shrunk offset.
    transform = tf.stack([c, -s, cx - c * cx + s * cy, s, c, cy - s * cx - c * cy, 0.0, 0.0])[tf.newaxis]
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=both[tf.newaxis], transforms=transform, output_shape=tf.shape(both)[:2], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="NEAREST")[0]


def gaussian_blur(image: tf.Tensor, sigma: tf.Tensor) -> tf.Tensor:
    """(H, W, C) blurred by a separable Gaussian of 15 taps (3 sigma wide up to sigma 2.3; edges mirrored)."""
    x = tf.range(-7.0, 8.0)
    k = tf.exp(-0.5 * tf.square(x / sigma))
    k = k / tf.reduce_sum(k)
    pad = tf.pad(image[tf.newaxis], [[0, 0], [7, 7], [7, 7], [0, 0]], mode="SYMMETRIC")
    channels = image.shape[-1]
    rows = tf.tile(tf.reshape(k, [15, 1, 1, 1]), [1, 1, channels, 1])
    cols = tf.tile(tf.reshape(k, [1, 15, 1, 1]), [1, 1, channels, 1])
    out = tf.nn.depthwise_conv2d(pad, rows, [1, 1, 1, 1], "VALID")
    return tf.nn.depthwise_conv2d(out, cols, [1, 1, 1, 1], "VALID")[0]


def augment(image: tf.Tensor, mask: tf.Tensor, shape, aug: AugmentConfig):
    """image (H, W, 3) float in [0, 1], mask (H, W, 1) float in [0, 1] -> the same at ``shape``
    (a square side, or a (rows, cols) tensor)."""
    both = tf.concat([image, mask], axis=-1)[tf.newaxis]
    crop = [shape, shape] if isinstance(shape, int) else shape
    both = tf.image.crop_and_resize(both, _random_box(aug)[tf.newaxis], [0], crop)[0]
    if aug.flip:
        both = tf.image.random_flip_left_right(both)
    p = {kind: aug.degrade_prob if kind in aug.degrade_kinds else 0.0 for kind in DEGRADATIONS}

    def random_blur(x):  # defocus blurs photo and mask together, blur the photo alone
        return gaussian_blur(x, tf.random.uniform([], 0.5, aug.max_blur))

    both = _sometimes(p["rotate"], lambda b: rotate(b, tf.random.uniform([], -aug.max_rotation, aug.max_rotation)), both)
    both = _sometimes(p["defocus"], random_blur, both)
    image, mask = both[..., :3], both[..., 3:]
    image = _sometimes(p["blur"], random_blur, image)
    image = tf.image.random_brightness(image, aug.brightness)
    image = tf.image.random_contrast(image, *aug.contrast)
    image = tf.image.random_saturation(image, *aug.saturation)
    image = tf.image.random_hue(image, aug.hue)
    gray = tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(image))
    image = tf.where(tf.random.uniform([]) < aug.grayscale_prob, gray, image)
    image = image + tf.random.normal(tf.shape(image), stddev=tf.random.uniform([], 0, aug.noise_std))
    image = tf.clip_by_value(image, 0.0, 1.0)
    image = _sometimes(p["jpeg"], lambda i: tf.reshape(tf.image.random_jpeg_quality(i, *aug.jpeg_quality), tf.shape(i)),
                       image)
    return image, tf.clip_by_value(mask, 0.0, 1.0)


def _to_model(image, mask, size: int):
    image = tf.image.resize(image, [size, size], antialias=True)
    mask = tf.image.resize(mask, [size, size], antialias=True)
    return image * 255.0, tf.clip_by_value(mask, 0.0, 1.0)


def _from_uint8(image, mask):
    return tf.cast(image, tf.float32) / 255.0, tf.cast(mask, tf.float32)[..., tf.newaxis] / 255.0


def from_arrays(images: np.ndarray, masks: np.ndarray) -> tf.data.Dataset:
    """uint8 pairs; they stay uint8 until after the shuffle buffer, which then costs 4x less memory."""
    return tf.data.Dataset.from_tensor_slices((images, masks))


def from_files(samples: list[Sample], shape: Shape, on_error=None) -> tf.data.Dataset:
    """Stream pairs from disk (for sets too large to cache); bad pairs are dropped and passed to on_error.

    ``shape``: a square side, (rows, cols), or (rows, cols) from each photo's (height, width) (see
    data.load_resized).
    """
    fixed = (shape, shape) if isinstance(shape, int) else shape if isinstance(shape, tuple) else (None, None)

    def load(index):
        sample = samples[int(index)]
        try:
            image, mask = load_resized(sample, shape)
            return image, mask, True
        except (SampleError, Exception) as err:  # noqa: BLE001
            if on_error is not None:
                on_error(sample.image, str(err))
            rows, cols = fixed[0] or 32, fixed[1] or 32
            return np.zeros((rows, cols, 3), np.uint8), np.zeros((rows, cols), np.uint8), False

    def py_load(index):
        image, mask, ok = tf.numpy_function(load, [index], [tf.uint8, tf.uint8, tf.bool])
        image.set_shape([*fixed, 3])
        mask.set_shape(fixed)
        return image, mask, ok

    ds = tf.data.Dataset.range(len(samples)).map(py_load, num_parallel_calls=AUTOTUNE)
    return ds.filter(lambda image, mask, ok: ok).map(lambda image, mask, ok: (image, mask))


def paste_pairs(images: tf.Tensor, masks: tf.Tensor, prob: float):
    """Two augmented pairs -> with probability ``prob`` the first one's person pasted over the second.

    Both inputs are people, so the label of the composite is exact: the pasted mask over the mask below.
    """
    a_img, b_img, a_m, b_m = images[0], images[1], masks[0], masks[1]
    pasted_img = a_img * a_m + b_img * (1.0 - a_m)
    pasted_m = a_m + b_m * (1.0 - a_m)
    use = tf.random.uniform([]) < prob
    first_img = tf.where(use, pasted_img, a_img)
    first_m = tf.where(use, pasted_m, a_m)
    return tf.stack([first_img, b_img]), tf.stack([first_m, b_m])


def paste_within(images: tf.Tensor, masks: tf.Tensor, prob: float):
    """paste_pairs over a whole batch: each pair, with probability ``prob`` / 2 (paste_pairs' rate: one of
    each two), gets the person of the pair before it pasted over it."""
    above_img, above_m = tf.roll(images, 1, axis=0), tf.roll(masks, 1, axis=0)
    n = tf.shape(images)[0]
    use = (tf.random.uniform([n, 1, 1, 1]) < prob / 2) & (n > 1)
    return (tf.where(use, above_img * above_m + images * (1.0 - above_m), images),
            tf.where(use, above_m + masks * (1.0 - above_m), masks))


def source_shares(sizes: list[int], weighting: str) -> list[float]:
    """The fraction of each epoch drawn from each source (see mix_sources for the weightings)."""
    power = {"none": 1.0, "sqrt": 0.5, "equal": 0.0}[weighting]
    weights = [n**power for n in sizes]
    return [w / sum(weights) for w in weights]


def mix_sources(parts: list[tf.data.Dataset], sizes: list[int], weighting: str, seed: int,
                shuffle: int) -> tf.data.Dataset:
    """One epoch (as many pairs as there are in all parts) drawn from per-source streams.

    ``weighting``: ``none`` keeps each source's natural share; ``sqrt`` draws a source in proportion to the
    square root of its size, so 400 video frames are not drowned by 1,200 portraits, yet a small source is
    not repeated so often that the model learns it by heart; ``equal`` gives every source the same share.
    """
    total = sum(sizes)
    if len(parts) == 1 or weighting == "none":
        ds = parts[0]
        for part in parts[1:]:
            ds = ds.concatenate(part)
        return ds.shuffle(min(total, shuffle), seed=seed, reshuffle_each_iteration=True)
    streams = [part.shuffle(min(n, shuffle), seed=seed + i, reshuffle_each_iteration=True).repeat()
               for i, (part, n) in enumerate(zip(parts, sizes))]
    return tf.data.Dataset.sample_from_datasets(streams, source_shares(sizes, weighting), seed=seed).take(total)


def training_pipeline(
    ds: tf.data.Dataset, size: int, batch_size: int, aug: AugmentConfig, drop_remainder: bool = False,
    aspect: str = "stretch",
) -> tf.data.Dataset:
    """``ds`` yields uint8 pairs already in training order (mix_sources shuffles them).

    With aspect keep, the pairs come at (a multiple of) the shape nearest their aspect (see shapes.py), are
    cropped to that shape, and batched with pairs of the same shape. The number of batches then varies
    from one pass to the next (a partial batch per shape), so that stream repeats without end and
    fit() counts the steps of an epoch.
    """
    if aspect != "stretch":
        return _keep_aspect_pipeline(ds, size, batch_size, aug, drop_remainder, aspect)
    ds = ds.map(_from_uint8, num_parallel_calls=AUTOTUNE)
    ds = ds.map(lambda i, m: augment(i, m, size, aug), num_parallel_calls=AUTOTUNE)
    if aug.paste_prob > 0:
        ds = ds.batch(2, drop_remainder=True).map(lambda i, m: paste_pairs(i, m, aug.paste_prob),
                                                   num_parallel_calls=AUTOTUNE).unbatch()
    ds = ds.map(lambda i, m: (i * 255.0, m), num_parallel_calls=AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(AUTOTUNE)


def _keep_aspect_pipeline(ds, size: int, batch_size: int, aug: AugmentConfig, drop_remainder: bool, aspect: str):
    shapes = all_shapes(size, aspect)
    table = tf.constant(shapes, tf.int32)
    ratios = tf.constant([np.log(cols / rows) for rows, cols in shapes], tf.float32)

    def to_shape(image, mask):
        hw = tf.cast(tf.shape(image)[:2], tf.float32)
        k = tf.argmin(tf.abs(tf.math.log(hw[1] / hw[0]) - ratios), output_type=tf.int32)
        image, mask = augment(image, mask, table[k], aug)
        return image, mask, k

    ds = ds.repeat().map(_from_uint8, num_parallel_calls=AUTOTUNE).map(to_shape, num_parallel_calls=AUTOTUNE)
    ds = ds.group_by_window(key_func=lambda i, m, k: tf.cast(k, tf.int64),
                            reduce_func=lambda k, pairs: pairs.batch(batch_size, drop_remainder=drop_remainder),
                            window_size=batch_size)
    ds = ds.map(lambda i, m, k: (i, m))
    if aug.paste_prob > 0:
        ds = ds.map(lambda i, m: paste_within(i, m, aug.paste_prob), num_parallel_calls=AUTOTUNE)
    return ds.map(lambda i, m: (i * 255.0, m), num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


def with_teacher(ds: tf.data.Dataset, teacher, weight: float) -> tf.data.Dataset:
    """Knowledge distillation: each training target becomes ``(1 - weight) * mask + weight * teacher alpha``.

    The teacher sees the batch as the student does (after augmentation and pasting) and also mirrored;
    the two alphas are averaged (the mirror average is a better model than the teacher alone: see
    ``cut --tta``). Binary masks cannot say how soft an edge should be; the teacher's alpha can, so a
    cheaper student learns the teacher's edges, and a student of the teacher's own size learns what the
    mirror average knows. BCE and Dice are linear or smooth in the target, so a blended target is the
    usual weighted sum of a mask loss and a distillation loss.
    """

    def soft(images):
        alpha = teacher(images, training=False)
        mirrored = tf.reverse(teacher(tf.reverse(images, [2]), training=False), [2])
        return tf.cast((alpha + mirrored) / 2, tf.float32)

    def blend(images, masks):
        return images, (1.0 - weight) * masks + weight * soft(images)

    return ds.map(blend).prefetch(AUTOTUNE)


def validation_pipeline(
    ds: tf.data.Dataset, size: int | None, batch_size: int, drop_remainder: bool = False
) -> tf.data.Dataset:
    """``size`` None: the pairs are already at the model's shape (keep aspect)."""
    ds = ds.map(_from_uint8, num_parallel_calls=AUTOTUNE)
    if size is None:
        ds = ds.map(lambda i, m: (i * 255.0, m), num_parallel_calls=AUTOTUNE)
    else:
        ds = ds.map(lambda i, m: _to_model(i, m, size), num_parallel_calls=AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(AUTOTUNE)
