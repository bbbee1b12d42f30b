"""Tests for bgremove.metrics: hand-computed values, conventions and
independent brute-force references on tiny arrays."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest

from bgremove import metrics as M

SEG_FUNCS = [M.pixel_accuracy, M.iou, M.mean_iou, M.dice, M.boundary_iou, M.boundary_f]
MAT_FUNCS = [M.sad, M.mse, M.mad, M.gradient_error, M.connectivity_error]
SUMMARIES = [M.segmentation_metrics, M.matting_metrics, M.all_metrics]


def rect(shape: tuple[int, int], r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros(shape, dtype=np.float64)
    m[r0:r1, c0:c1] = 1.0
    return m


def disk_mask(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r).astype(np.float64)


def soft_matte(shape: tuple[int, int] = (64, 64)) -> np.ndarray:
    h, w = shape
    return cv2.GaussianBlur(disk_mask(shape, h / 2, w / 2, min(h, w) / 3), (0, 0), 1.0)


# ------------------------------------------------------------ region metrics


def test_overlapping_rectangles_hand_computed() -> None:
    # gt: rows/cols 2..5 (16 px); pred: rows/cols 4..7 (16 px); overlap 2x2 = 4.
    gt = rect((10, 10), 2, 6, 2, 6)
    pred = rect((10, 10), 4, 8, 4, 8)
    assert M.iou(pred, gt) == pytest.approx(4 / 28)
    assert M.dice(pred, gt) == pytest.approx(2 * 4 / 32)
    assert M.pixel_accuracy(pred, gt) == pytest.approx(76 / 100)
    # background: |P'∩G'| = 100 - 28 = 72, |P'∪G'| = 100 - 4 = 96
    assert M.mean_iou(pred, gt) == pytest.approx((4 / 28 + 72 / 96) / 2)
    # symmetric metrics
    assert M.iou(gt, pred) == pytest.approx(M.iou(pred, gt))
    assert M.dice(gt, pred) == pytest.approx(M.dice(pred, gt))


def test_threshold_is_inclusive_and_configurable() -> None:
    gt = np.array([[1.0, 1.0, 0.0, 0.0]])
    pred = np.array([[0.5, 0.49, 0.7, 0.0]])
    # at 0.5: pred fg = {0, 2}; gt fg = {0, 1}
    assert M.iou(pred, gt) == pytest.approx(1 / 3)
    assert M.pixel_accuracy(pred, gt) == pytest.approx(2 / 4)
    # at 0.8: pred fg = {} ; gt fg = {0, 1}
    assert M.iou(pred, gt, threshold=0.8) == 0.0
    assert M.pixel_accuracy(pred, gt, threshold=0.8) == pytest.approx(2 / 4)


def test_empty_mask_conventions() -> None:
    z = np.zeros((20, 30))
    one = np.ones((20, 30))
    some = rect((20, 30), 5, 10, 5, 10)
    for f in SEG_FUNCS:
        assert f(z, z) == 1.0, f.__name__  # both empty: perfect agreement
        assert f(one, one) == 1.0, f.__name__  # both full (bg empty)
    for f in (M.iou, M.dice, M.boundary_iou, M.boundary_f):
        assert f(z, some) == 0.0, f.__name__  # empty pred, non-empty gt
        assert f(some, z) == 0.0, f.__name__  # non-empty pred, empty gt
    assert M.mean_iou(z, some) == pytest.approx((0.0 + (600 - 25) / 600) / 2)


# ------------------------------------------------------------ boundary IoU


def _boundary_band_reference(mask: np.ndarray, d: int) -> np.ndarray:
    """Mask pixels with a background or outside-image pixel within Chebyshev d."""
    padded = np.pad(mask, d, constant_values=False)
    win = np.lib.stride_tricks.sliding_window_view(padded, (2 * d + 1, 2 * d + 1))
    return mask & ~win.all(axis=(-2, -1))


def test_boundary_iou_hand_computed_shift() -> None:
    # 100x100 -> d = round(0.02 * 141.4) = 3; a 20x20 square has a band of
    # 400 - 14*14 = 204 px.  Shifting one column right: both bands lie in the
    # 20x19 overlap minus the union of the two 14x14 / 14x14 cores (14x15):
    # intersection 380 - 210 = 170, union 204 + 204 - 170 = 238.
    gt = rect((100, 100), 40, 60, 40, 60)
    pred = rect((100, 100), 40, 60, 41, 61)
    assert M.boundary_iou(gt, gt) == 1.0
    assert M.boundary_iou(pred, gt) == pytest.approx(170 / 238)


def test_boundary_iou_image_border_counts_as_boundary() -> None:
    # Whole-image masks differing only deep inside: the band along the image
    # border (width d = 3) is shared, the interior hole adds its own band.
    gt = np.ones((100, 100))
    pred = gt.copy()
    pred[45:55, 45:55] = 0.0
    ring = 100 * 100 - 94 * 94  # band along the image border
    hole_band = 16 * 16 - 10 * 10  # pixels within Chebyshev 3 of the hole
    assert M.boundary_iou(pred, gt) == pytest.approx(ring / (ring + hole_band))


def test_boundary_iou_matches_bruteforce_reference() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        shape = tuple(int(s) for s in rng.integers(20, 45, size=2))
        blobs = [cv2.GaussianBlur(rng.random(shape), (0, 0), 2.5) for _ in range(2)]
        pred, gt = (b > np.median(b) for b in blobs)
        d = max(1, int(round(0.05 * np.hypot(*shape))))
        pb = _boundary_band_reference(pred, d)
        gb = _boundary_band_reference(gt, d)
        expected = np.sum(pb & gb) / np.sum(pb | gb)
        got = M.boundary_iou(pred.astype(float), gt.astype(float), dilation_ratio=0.05)
        assert got == pytest.approx(expected)


def test_boundary_iou_decreases_with_shift() -> None:
    gt = disk_mask((200, 300), 100, 150, 60)
    scores = [M.boundary_iou(np.roll(gt, s, axis=1), gt) for s in (0, 1, 3, 6, 12, 24)]
    assert scores[0] == 1.0
    assert all(a > b for a, b in zip(scores, scores[1:])), scores


# ------------------------------------------------------------ boundary F


def _seg2bmap_reference(seg: np.ndarray) -> np.ndarray:
    """Loop version: differs from whichever of right/bottom/bottom-right exist."""
    h, w = seg.shape
    out = np.zeros_like(seg)
    for i, j in itertools.product(range(h), range(w)):
        nbrs = []
        if j + 1 < w:
            nbrs.append(seg[i, j + 1])
        if i + 1 < h:
            nbrs.append(seg[i + 1, j])
        if i + 1 < h and j + 1 < w:
            nbrs.append(seg[i + 1, j + 1])
        out[i, j] = any(n != seg[i, j] for n in nbrs)
    return out


def _boundary_f_reference(pred: np.ndarray, gt: np.ndarray, r: int) -> float:
    pb, gb = _seg2bmap_reference(pred), _seg2bmap_reference(gt)
    pc, gc = np.argwhere(pb), np.argwhere(gb)
    d2 = ((pc[:, None, :] - gc[None, :, :]) ** 2).sum(-1)
    precision = np.mean(d2.min(axis=1) <= r * r)
    recall = np.mean(d2.min(axis=0) <= r * r)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def test_seg2bmap_single_pixel() -> None:
    seg = np.zeros((5, 5), dtype=bool)
    seg[2, 2] = True
    expected = np.zeros_like(seg)
    expected[[1, 1, 2, 2], [1, 2, 1, 2]] = True  # up-left 2x2 block
    np.testing.assert_array_equal(M._seg2bmap(seg), expected)
    np.testing.assert_array_equal(_seg2bmap_reference(seg), expected)


def test_boundary_f_matches_bruteforce_reference() -> None:
    rng = np.random.default_rng(1)
    for _ in range(4):
        shape = tuple(int(s) for s in rng.integers(20, 40, size=2))
        blobs = [cv2.GaussianBlur(rng.random(shape), (0, 0), 2.5) for _ in range(2)]
        pred, gt = (b > np.median(b) for b in blobs)
        ratio = 0.05
        r = int(np.ceil(ratio * np.hypot(*shape)))
        expected = _boundary_f_reference(pred, gt, r)
        got = M.boundary_f(pred.astype(float), gt.astype(float), tolerance_ratio=ratio)
        assert got == pytest.approx(expected)


def test_boundary_f_shift_tolerance() -> None:
    # 300x400 -> diagonal 500, tolerance ceil(0.008 * 500) = 4 px.
    gt = disk_mask((300, 400), 150, 200, 80)
    assert M.boundary_f(gt, gt) == 1.0
    assert M.boundary_f(np.roll(gt, 1, axis=1), gt) == 1.0
    assert M.boundary_f(np.roll(gt, 4, axis=0), gt) == 1.0
    assert M.boundary_f(np.roll(gt, 1, axis=1), gt, tolerance_ratio=0.0) < 1.0
    scores = [M.boundary_f(np.roll(gt, s, axis=1), gt) for s in (4, 6, 10, 20, 40)]
    assert scores[0] == 1.0
    assert all(a > b for a, b in zip(scores, scores[1:])), scores
    assert scores[-1] < 0.5


# ------------------------------------------------------------ matting errors


def test_sad_mse_mad_hand_computed() -> None:
    pred = np.array([[0.0, 0.5], [1.0, 0.25]])
    gt = np.array([[0.0, 1.0], [0.5, 0.25]])
    assert M.sad(pred, gt) == pytest.approx(1.0 / 1000)
    assert M.mad(pred, gt) == pytest.approx(0.25)
    assert M.mse(pred, gt) == pytest.approx(0.125)
    for f in (M.sad, M.mad, M.mse):
        assert f(gt, gt) == 0.0


def _gradient_error_reference(
    pred: np.ndarray, gt: np.ndarray, sigma: float = 1.4
) -> float:
    """Transcription of DIM ``compute_gradient_loss`` with an explicit 2-D kernel."""
    eps = 1e-2
    half = int(np.ceil(sigma * np.sqrt(-2 * np.log(np.sqrt(2 * np.pi) * sigma * eps))))

    def gauss(x: float) -> float:
        return np.exp(-(x**2) / (2 * sigma**2)) / (sigma * np.sqrt(2 * np.pi))

    size = 2 * half + 1
    hx = np.zeros((size, size))
    for i, j in itertools.product(range(size), range(size)):
        hx[i, j] = gauss(i - half) * -(j - half) * gauss(j - half) / sigma**2
    hx /= np.sqrt(np.sum(hx * hx))

    def convolve(im: np.ndarray, k: np.ndarray) -> np.ndarray:  # 'nearest' border
        padded = np.pad(im, half, mode="edge")
        win = np.lib.stride_tricks.sliding_window_view(padded, k.shape)
        return np.einsum("ijkl,kl->ij", win, k[::-1, ::-1])

    def amp(im: np.ndarray) -> np.ndarray:
        return np.hypot(convolve(im, hx), convolve(im, hx.T))

    return float(np.sum((amp(pred) - amp(gt)) ** 2)) / 1000


def test_gradient_error_matches_reference() -> None:
    rng = np.random.default_rng(2)
    gt = soft_matte((24, 31))
    pred = np.clip(gt + 0.2 * rng.standard_normal(gt.shape), 0, 1)
    expected = _gradient_error_reference(pred, gt)
    assert M.gradient_error(pred, gt) == pytest.approx(expected)


def test_gradient_error_zero_then_monotonic_in_blur() -> None:
    gt = disk_mask((64, 64), 32, 32, 20)
    assert M.gradient_error(gt, gt) == 0.0
    sigmas = (0.5, 1, 2, 4, 8)
    errs = [M.gradient_error(cv2.GaussianBlur(gt, (0, 0), s), gt) for s in sigmas]
    assert errs[0] > 0
    assert all(a <= b for a, b in zip(errs, errs[1:])), errs


def _largest_cc_reference(mask: np.ndarray) -> np.ndarray:
    """Largest 4-connected True component by flood fill (first found wins ties)."""
    seen = np.zeros_like(mask)
    best: list[tuple[int, int]] = []
    h, w = mask.shape
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start] = True
        comp, stack = [], [start]
        while stack:
            i, j = stack.pop()
            comp.append((i, j))
            for ni, nj in ((i + 1, j), (i - 1, j), (i, j + 1), (i, j - 1)):
                if 0 <= ni < h and 0 <= nj < w and mask[ni, nj] and not seen[ni, nj]:
                    seen[ni, nj] = True
                    stack.append((ni, nj))
        if len(comp) > len(best):
            best = comp
    out = np.zeros_like(mask)
    for p in best:
        out[p] = True
    return out


def _connectivity_reference(
    pred: np.ndarray, gt: np.ndarray, step: float = 0.1
) -> float:
    """Transcription of the MATLAB ``compute_connectivity_error`` loop."""
    steps = np.round(np.arange(0, 1 + step / 2, step), 12)
    l_map = -np.ones_like(pred)
    for i in range(1, len(steps)):
        omega = _largest_cc_reference((pred >= steps[i]) & (gt >= steps[i]))
        l_map[(l_map == -1) & ~omega] = steps[i - 1]
    l_map[l_map == -1] = 1
    pd, gd = pred - l_map, gt - l_map
    pred_phi, gt_phi = 1 - pd * (pd >= 0.15), 1 - gd * (gd >= 0.15)
    return float(np.sum(np.abs(pred_phi - gt_phi))) / 1000


def test_connectivity_error_matches_reference() -> None:
    rng = np.random.default_rng(3)
    for _ in range(3):
        gt = cv2.GaussianBlur(rng.random((18, 22)), (0, 0), 1.5)
        gt = (gt - gt.min()) / np.ptp(gt)
        pred = np.clip(gt + rng.normal(0, 0.2, gt.shape), 0, 1)
        expected = _connectivity_reference(pred, gt)
        assert M.connectivity_error(pred, gt) == pytest.approx(expected)


def test_connectivity_error_hand_computed_holes() -> None:
    # Binary matte with a k x k hole: only hole pixels differ (phi 1 vs 0).
    gt = rect((40, 40), 5, 35, 5, 35)
    assert M.connectivity_error(gt, gt) == 0.0
    for k in (1, 3, 6):
        pred = gt.copy()
        pred[15 : 15 + k, 15 : 15 + k] = 0.0
        assert M.connectivity_error(pred, gt) == pytest.approx(k * k / 1000)


def test_connectivity_error_monotonic_in_hole_size_soft() -> None:
    gt = soft_matte((64, 64))
    assert M.connectivity_error(gt, gt) == 0.0
    errs = []
    for k in (2, 4, 8, 16):
        pred = gt.copy()
        pred[32 - k : 32 + k, 32 - k : 32 + k] *= 0.1
        errs.append(M.connectivity_error(pred, gt))
    assert errs[0] > 0
    assert all(a <= b for a, b in zip(errs, errs[1:])), errs


# ------------------------------------------------------------ API / inputs


@pytest.mark.parametrize(
    "f", SEG_FUNCS + MAT_FUNCS + SUMMARIES, ids=lambda f: f.__name__
)
def test_shape_mismatch_raises(f) -> None:
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(5, 4\)"):
        f(np.zeros((4, 5)), np.zeros((5, 4)))


def test_non_2d_raises() -> None:
    with pytest.raises(ValueError, match=r"\(4, 5, 3\)"):
        M.iou(np.zeros((4, 5, 3)), np.zeros((4, 5, 3)))


def test_uint8_input_equals_float_input() -> None:
    rng = np.random.default_rng(4)
    gt8 = (soft_matte((40, 50)) * 255).round().astype(np.uint8)
    noise = rng.integers(-40, 40, gt8.shape)
    pred8 = np.clip(gt8.astype(int) + noise, 0, 255).astype(np.uint8)
    got = M.all_metrics(pred8, gt8)
    ref = M.all_metrics(pred8 / 255.0, gt8 / 255.0)
    assert got.keys() == ref.keys()
    for key in ref:
        assert got[key] == pytest.approx(ref[key]), key
    # 128/255 >= 0.5 is foreground, 127/255 is not
    a = np.array([[128, 127]], dtype=np.uint8)
    assert M.iou(a, np.array([[1.0, 0.0]])) == 1.0


def test_summaries_keys_and_perfect_scores() -> None:
    gt = soft_matte((48, 48))
    seg, mat = M.segmentation_metrics(gt, gt), M.matting_metrics(gt, gt)
    both = M.all_metrics(gt, gt)
    seg_keys = ["accuracy", "iou", "mean_iou", "dice", "boundary_iou", "boundary_f"]
    assert list(seg) == seg_keys
    assert list(mat) == ["sad", "mse", "mad", "grad", "conn"]
    assert both == {**seg, **mat}
    assert set(M.METRIC_INFO) == set(both)
    for key, value in both.items():
        desc, higher_is_better = M.METRIC_INFO[key]
        assert isinstance(desc, str) and desc
        assert isinstance(value, float)
        assert value == (1.0 if higher_is_better else 0.0), key


def test_summaries_worse_prediction_scores_worse() -> None:
    gt = soft_matte((48, 48))
    good = cv2.GaussianBlur(gt, (0, 0), 0.7)
    bad = np.roll(gt, 6, axis=1)
    sg, sb = M.all_metrics(good, gt), M.all_metrics(bad, gt)
    for key, (_, higher_is_better) in M.METRIC_INFO.items():
        if higher_is_better:
            assert sg[key] >= sb[key], key
        else:
            assert sg[key] <= sb[key], key
