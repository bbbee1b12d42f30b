"""tf.data input pipelines for training: cached or streamed pairs, augmentation, batching, prefetch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from .data import Sample, SampleError, load_resized

AUTOTUNE = tf.data.AUTOTUNE


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


def _random_box(aug: AugmentConfig) -> tf.Tensor:
    side = tf.random.uniform([], *aug.scale)
    aspect = tf.exp(tf.random.uniform([], -0.15, 0.15))
    h, w = side * aspect, side / aspect
    y0 = tf.random.uniform([], tf.minimum(0.0, 1.0 - h), tf.maximum(0.0, 1.0 - h))
    x0 = tf.random.uniform([], tf.minimum(0.0, 1.0 - w), tf.maximum(0.0, 1.0 - w))
    box = tf.stack([y0, x0, y0 + h, x0 + w])
    full = tf.constant([0.0, 0.0, 1.0, 1.0])
    return tf.where(tf.random.uniform([]) < aug.full_view_prob, full, box)


def augment(image: tf.Tensor, mask: tf.Tensor, size: int, aug: AugmentConfig):
    """image (H, W, 3) float in [0, 1], mask (H, W, 1) float in [0, 1] -> the same at (size, size)."""
    both = tf.concat([image, mask], axis=-1)[tf.newaxis]
    both = tf.image.crop_and_resize(both, _random_box(aug)[tf.newaxis], [0], [size, size])[0]
    if aug.flip:
        both = tf.image.random_flip_left_right(both)
    image, mask = both[..., :3], both[..., 3:]
    image = tf.image.random_brightness(image, aug.brightness)
    image = tf.image.random_contrast(image, *aug.contrast)
    image = tf.image.random_saturation(image, *aug.saturation)
    image = tf.image.random_hue(image, aug.hue)
    gray = tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(image))
    image = tf.where(tf.random.uniform([]) < aug.grayscale_prob, gray, image)
    image = image + tf.random.normal(tf.shape(image), stddev=tf.random.uniform([], 0, aug.noise_std))
    return tf.clip_by_value(image, 0.0, 1.0), tf.clip_by_value(mask, 0.0, 1.0)


def _to_model(image, mask, size: int):
    image = tf.image.resize(image, [size, size], antialias=True)
    mask = tf.image.resize(mask, [size, size], antialias=True)
    return image * 255.0, tf.clip_by_value(mask, 0.0, 1.0)


def _from_uint8(image, mask):
    return tf.cast(image, tf.float32) / 255.0, tf.cast(mask, tf.float32)[..., tf.newaxis] / 255.0


def from_arrays(images: np.ndarray, masks: np.ndarray) -> tf.data.Dataset:
    """uint8 pairs; they stay uint8 until after the shuffle buffer, which then costs 4x less memory."""
    return tf.data.Dataset.from_tensor_slices((images, masks))


def from_files(samples: list[Sample], load_size: int, on_error=None) -> tf.data.Dataset:
    """Stream pairs from disk (for sets too large to cache); bad pairs are dropped and passed to on_error."""
    def load(index):
        sample = samples[int(index)]
        try:
            image, mask = load_resized(sample, load_size)
            return image, mask, True
        except (SampleError, Exception) as err:  # noqa: BLE001
            if on_error is not None:
                on_error(sample.image, str(err))
            return np.zeros((load_size, load_size, 3), np.uint8), np.zeros((load_size, load_size), np.uint8), False

    def py_load(index):
        image, mask, ok = tf.numpy_function(load, [index], [tf.uint8, tf.uint8, tf.bool])
        image.set_shape([load_size, load_size, 3])
        mask.set_shape([load_size, load_size])
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
) -> tf.data.Dataset:
    """``ds`` yields uint8 pairs already in training order (mix_sources shuffles them)."""
    ds = ds.map(_from_uint8, num_parallel_calls=AUTOTUNE)
    ds = ds.map(lambda i, m: augment(i, m, size, aug), num_parallel_calls=AUTOTUNE)
    if aug.paste_prob > 0:
        ds = ds.batch(2, drop_remainder=True).map(lambda i, m: paste_pairs(i, m, aug.paste_prob),
                                                   num_parallel_calls=AUTOTUNE).unbatch()
    ds = ds.map(lambda i, m: (i * 255.0, m), num_parallel_calls=AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(AUTOTUNE)


def validation_pipeline(
    ds: tf.data.Dataset, size: int, batch_size: int, drop_remainder: bool = False
) -> tf.data.Dataset:
    ds = ds.map(_from_uint8, num_parallel_calls=AUTOTUNE)
    ds = ds.map(lambda i, m: _to_model(i, m, size), num_parallel_calls=AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(AUTOTUNE)
