"""The pipeline's pixel steps (done in OpenCV for speed) against their plain numpy definitions."""

import numpy as np
import pytest

from bgremove.pipeline import CutOptions, compose_rgba, finish_alpha, to_model_input, to_photo_alpha

rng = np.random.default_rng(7)


@pytest.fixture
def alpha() -> np.ndarray:
    a = rng.random((60, 80)).astype(np.float32)
    a[:10] = 0.0
    a[10:20] = 1.0
    a[20:25] = 0.5
    a[25:30] = 0.5 / 255  # rounds to 0 (half to even)
    a[30:35] = 1.5 / 255  # rounds to 2
    return a


def snapped(a8: np.ndarray, levels: int = 5) -> np.ndarray:
    """The plain definition of CutOptions.snap = 0.02: 8-bit alphas within 5 levels of 0 or 255 go there."""
    return np.where(a8 <= levels, 0, np.where(a8 >= 255 - levels, 255, a8)).astype(np.uint8)


def test_soft_alpha_is_round_255_alpha(alpha):
    expected = np.rint(alpha * 255.0).astype(np.uint8)
    raw = CutOptions(snap=0)
    np.testing.assert_array_equal(finish_alpha(alpha, raw), expected)
    np.testing.assert_array_equal(finish_alpha(alpha.astype(np.float64), raw), expected)


def test_soft_alpha_snaps_its_ends_by_default(alpha):
    expected = snapped(np.rint(alpha * 255.0).astype(np.uint8))
    out = finish_alpha(alpha, CutOptions())
    np.testing.assert_array_equal(out, expected)
    assert out[30:35].max() == 0  # 1.5/255 rounds to 2, within the snap
    near = finish_alpha(np.array([[5.4 / 255, 5.6 / 255, 0.5, 249.4 / 255, 249.6 / 255]], np.float32), CutOptions())
    assert near.tolist() == [[0, 6, 128, 249, 255]]
    with pytest.raises(ValueError, match="snap 0.5"):
        CutOptions(snap=0.5)


def test_threshold_is_inclusive(alpha):
    out = finish_alpha(alpha, CutOptions(threshold=0.5))
    np.testing.assert_array_equal(out, np.where(alpha >= 0.5, 255, 0))
    one_pixel = finish_alpha(np.array([[0.7]], np.float32), CutOptions(threshold=0.5))
    assert one_pixel.tolist() == [[255]]


def test_photo_transparency_scales_the_alpha(alpha):
    photo_alpha = rng.integers(0, 256, alpha.shape, dtype=np.uint8)
    soft = snapped(np.rint(alpha * 255.0).astype(np.uint8)).astype(np.uint16)
    expected = ((soft * photo_alpha + 127) // 255).astype(np.uint8)
    np.testing.assert_array_equal(finish_alpha(alpha, CutOptions(), photo_alpha), expected)


def test_rgba_keeps_colour_where_visible_and_zeroes_it_where_not(alpha):
    rgb = rng.integers(0, 256, (*alpha.shape, 3), dtype=np.uint8)
    a8 = finish_alpha(alpha, CutOptions())
    rgba = compose_rgba(rgb, a8)
    assert rgba.shape == (*alpha.shape, 4) and rgba.dtype == np.uint8
    np.testing.assert_array_equal(rgba[..., 3], a8)
    visible = a8 > 0
    np.testing.assert_array_equal(rgba[visible, :3], rgb[visible])
    assert not rgba[~visible, :3].any()


def test_alpha_upscale_stays_in_range_and_matches_the_photo():
    small = rng.normal(0.5, 0.6, (32, 32)).astype(np.float32)  # a runtime may overshoot [0, 1]
    big = to_photo_alpha(small, 300, 200)
    assert big.shape == (200, 300) and big.dtype == np.float32
    assert big.min() >= 0.0 and big.max() <= 1.0
    same = to_photo_alpha(small, 32, 32)
    np.testing.assert_array_equal(same, np.clip(small, 0, 1))


@pytest.mark.parametrize("shape", [(3000, 4000), (481, 855), (100, 50)])
def test_model_input_is_the_area_average_of_the_photo(shape):
    # A smooth photo: the fast pre-shrink of big photos must not change what the model sees.
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    rgb = np.dstack([xx * 255 // shape[1], yy * 255 // shape[0], np.full_like(xx, 128)]).astype(np.uint8)
    out = to_model_input(rgb, (64, 64))
    assert out.shape == (64, 64, 3) and out.dtype == np.float32
    # Reference: the mean of each output cell's block of pixels (up to the cells' fractional edges).
    rows = np.linspace(0, shape[0], 65).astype(int)
    cols = np.linspace(0, shape[1], 65).astype(int)
    ref = np.array([[rgb[rows[i] : max(rows[i + 1], rows[i] + 1), cols[j] : max(cols[j + 1], cols[j] + 1)]
                     .reshape(-1, 3).mean(0) for j in range(64)] for i in range(64)])
    tolerance = 2.0 if shape[0] >= 64 and shape[1] >= 64 else 6.0  # upscaled: bilinear, not area
    assert np.abs(out - ref).mean() < tolerance
