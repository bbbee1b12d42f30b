"""Evaluation metrics for predicted alpha mattes against ground truth.

Conventions (shared by every function here):

* ``pred`` and ``gt`` are non-empty 2-D ``H x W`` arrays of the same shape;
  anything else raises ``ValueError`` naming the shapes.  ``uint8`` arrays
  are read as ``value / 255``; every other dtype (float, bool) is taken to be
  in [0, 1] already and is not clipped.
* Segmentation metrics binarise both inputs with ``alpha >= threshold``
  (default 0.5) and score the *foreground* (the person) unless stated
  otherwise.  Ratios whose denominator is empty (e.g. IoU of two empty masks)
  are defined as 1.0: a prediction that agrees perfectly scores perfectly.
* Boundary IoU follows Cheng et al., "Boundary IoU: Improving Object-Centric
  Image Segmentation Evaluation", CVPR 2021, and its official
  ``boundary-iou-api`` (``mask_to_boundary``): band width
  ``d = max(1, round(0.02 * diagonal))``, the image border counts as
  background.
* Boundary F follows Perazzi et al., "A Benchmark Dataset and Evaluation
  Methodology for Video Object Segmentation", CVPR 2016, as implemented by the
  DAVIS toolkit (``db_eval_boundary`` / ``seg2bmap``): 1-pixel contours,
  tolerance ``ceil(0.008 * diagonal)`` pixels matched with a disk.
* Matting metrics are computed on the soft mattes over the *whole image*
  (no trimap), with the scaling of the standard Deep Image Matting /
  alphamatting.com evaluation code (Rhemann et al., "A Perceptually Motivated
  Online Benchmark for Image Matting", CVPR 2009): SAD, gradient and
  connectivity errors are sums divided by 1000; MSE and MAD are plain means
  over pixels (not multiplied by 1e3 as some papers print them).  The
  connectivity error uses the largest 4-connected *foreground* component, as
  the MATLAB reference (``bwconncomp(., 4)``) does.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

__all__ = [
    "METRIC_INFO",
    "all_metrics",
    "boundary_f",
    "boundary_iou",
    "connectivity_error",
    "dice",
    "gradient_error",
    "iou",
    "mad",
    "matting_metrics",
    "mean_iou",
    "mse",
    "pixel_accuracy",
    "sad",
    "segmentation_metrics",
]

METRIC_INFO: dict[str, tuple[str, bool]] = {
    "accuracy": ("pixel accuracy of masks binarised at alpha >= threshold", True),
    "iou": ("foreground IoU of binarised masks (1.0 if both empty)", True),
    "mean_iou": ("mean of foreground and background IoU of binarised masks", True),
    "dice": ("Dice / F1 of binarised foreground masks (1.0 if both empty)", True),
    "boundary_iou": (
        "Boundary IoU (Cheng et al. CVPR 2021), band d = 2% of image diagonal",
        True,
    ),
    "boundary_f": (
        "DAVIS boundary F-measure (Perazzi et al. CVPR 2016), "
        "tolerance 0.8% of image diagonal",
        True,
    ),
    "sad": ("sum of absolute alpha differences / 1000, whole image", False),
    "mse": ("mean squared alpha error over all pixels (alpha in [0, 1])", False),
    "mad": ("mean absolute alpha error over all pixels (alpha in [0, 1])", False),
    "grad": (
        "gradient error (Rhemann et al. CVPR 2009), Gaussian-derivative "
        "sigma 1.4, / 1000, whole image",
        False,
    ),
    "conn": (
        "connectivity error (Rhemann et al. CVPR 2009), step 0.1, theta 0.15, "
        "/ 1000, whole image",
        False,
    ),
}


# ---------------------------------------------------------------- helpers


def _as_alpha(a: np.ndarray) -> np.ndarray:
    """Return ``a`` as float64 in alpha units (``uint8`` is divided by 255)."""
    a = np.asarray(a)
    if a.dtype == np.uint8:
        return a.astype(np.float64) / 255.0
    return a.astype(np.float64, copy=False)


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate shapes (same, 2-D) and convert both inputs to float alpha."""
    pred_arr, gt_arr = np.asarray(pred), np.asarray(gt)
    if pred_arr.shape != gt_arr.shape:
        raise ValueError(
            f"pred and gt must have the same shape, got pred {pred_arr.shape} "
            f"and gt {gt_arr.shape}"
        )
    if pred_arr.ndim != 2 or pred_arr.size == 0:
        raise ValueError(
            f"pred and gt must be non-empty 2-D H x W mattes, got shape "
            f"{pred_arr.shape}"
        )
    return _as_alpha(pred_arr), _as_alpha(gt_arr)


def _binarise(
    pred: np.ndarray, gt: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Checked boolean foreground masks ``alpha >= threshold``."""
    p, g = _check_pair(pred, gt)
    return p >= threshold, g >= threshold


def _ratio(num: int | float, den: int | float) -> float:
    """``num / den`` with the empty-denominator convention 0/0 -> 1.0."""
    return 1.0 if den == 0 else float(num) / float(den)


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks; 1.0 when both are empty."""
    inter = np.count_nonzero(a & b)
    union = np.count_nonzero(a | b)
    return _ratio(inter, union)


# ---------------------------------------------------------- segmentation


def pixel_accuracy(pred: np.ndarray, gt: np.ndarray, threshold: float = 0.5) -> float:
    """Fraction of pixels whose binarised label (``alpha >= threshold``) agrees."""
    p, g = _binarise(pred, gt, threshold)
    return float(np.count_nonzero(p == g)) / p.size


def iou(pred: np.ndarray, gt: np.ndarray, threshold: float = 0.5) -> float:
    """Foreground intersection-over-union (Jaccard); 1.0 if both masks empty."""
    p, g = _binarise(pred, gt, threshold)
    return _mask_iou(p, g)


def mean_iou(pred: np.ndarray, gt: np.ndarray, threshold: float = 0.5) -> float:
    """Mean of foreground IoU and background IoU (two-class mIoU).

    Each class uses the 1.0 convention when it is absent from both masks.
    """
    p, g = _binarise(pred, gt, threshold)
    return 0.5 * (_mask_iou(p, g) + _mask_iou(~p, ~g))


def dice(pred: np.ndarray, gt: np.ndarray, threshold: float = 0.5) -> float:
    """Dice coefficient ``2|P&G| / (|P| + |G|)``; 1.0 if both masks empty."""
    p, g = _binarise(pred, gt, threshold)
    inter = np.count_nonzero(p & g)
    return _ratio(2 * inter, np.count_nonzero(p) + np.count_nonzero(g))


def _mask_to_boundary(mask: np.ndarray, dilation: int) -> np.ndarray:
    """Inner boundary band ``G_d ∩ G`` of a boolean mask.

    As ``mask_to_boundary`` in the official boundary-iou-api: pad with a
    1-pixel zero border so the image edge acts as background, erode with a
    3x3 kernel ``dilation`` times, subtract the erosion from the mask.
    """
    h, w = mask.shape
    m = mask.astype(np.uint8)
    padded = cv2.copyMakeBorder(m, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    eroded = cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=dilation)
    return mask & (eroded[1 : h + 1, 1 : w + 1] == 0)


def boundary_iou(
    pred: np.ndarray,
    gt: np.ndarray,
    threshold: float = 0.5,
    dilation_ratio: float = 0.02,
) -> float:
    """Boundary IoU (Cheng et al., CVPR 2021), official definition.

    ``|(G_d ∩ G) ∩ (P_d ∩ P)| / |(G_d ∩ G) ∪ (P_d ∩ P)|``, where ``X_d ∩ X``
    is the set of mask pixels within ``d = max(1, round(dilation_ratio *
    diagonal))`` of the mask contour (image border counts as contour).
    1.0 when both boundary bands are empty (both masks empty).
    """
    p, g = _binarise(pred, gt, threshold)
    h, w = p.shape
    d = max(1, int(round(dilation_ratio * float(np.sqrt(h * h + w * w)))))
    pb = _mask_to_boundary(p, d)
    gb = _mask_to_boundary(g, d)
    return _mask_iou(pb, gb)


def _seg2bmap(seg: np.ndarray) -> np.ndarray:
    """1-pixel boundary map as DAVIS ``seg2bmap`` (at native resolution).

    A pixel is boundary if it differs from its right, bottom or bottom-right
    neighbour; the last row/column only compare along the edge and the
    bottom-right corner is never boundary (toolkit quirks kept on purpose).
    """
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


@lru_cache(maxsize=16)
def _disk(radius: int) -> np.ndarray:
    """``skimage.morphology.disk(radius)`` as a uint8 kernel (x²+y² <= r²)."""
    r = np.arange(-radius, radius + 1)
    return ((r[:, None] ** 2 + r[None, :] ** 2) <= radius * radius).astype(np.uint8)


def boundary_f(
    pred: np.ndarray,
    gt: np.ndarray,
    threshold: float = 0.5,
    tolerance_ratio: float = 0.008,
) -> float:
    """DAVIS boundary F-measure (Perazzi et al., CVPR 2016; ``db_eval_boundary``).

    Contours from ``seg2bmap``; a contour pixel is matched if the other
    contour lies within a disk of radius ``ceil(tolerance_ratio * diagonal)``.
    Precision/recall as the toolkit: both contours empty -> F = 1, exactly
    one empty -> F = 0.
    """
    p, g = _binarise(pred, gt, threshold)
    bound_pix = int(np.ceil(tolerance_ratio * np.linalg.norm(p.shape)))
    pb = _seg2bmap(p)
    gb = _seg2bmap(g)
    n_p = np.count_nonzero(pb)
    n_g = np.count_nonzero(gb)
    if n_p == 0 or n_g == 0:
        return 1.0 if n_p == n_g else 0.0
    kernel = _disk(bound_pix)
    p_dil = cv2.dilate(pb.astype(np.uint8), kernel) > 0
    g_dil = cv2.dilate(gb.astype(np.uint8), kernel) > 0
    precision = np.count_nonzero(pb & g_dil) / n_p
    recall = np.count_nonzero(gb & p_dil) / n_g
    if precision + recall == 0:
        return 0.0
    return float(2.0 * precision * recall / (precision + recall))


# --------------------------------------------------------------- matting


def sad(pred: np.ndarray, gt: np.ndarray) -> float:
    """Sum of absolute differences / 1000 (DIM / alphamatting.com scaling)."""
    p, g = _check_pair(pred, gt)
    return float(np.abs(p - g).sum()) / 1000.0


def mse(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean squared error over all pixels, alpha in [0, 1]."""
    p, g = _check_pair(pred, gt)
    return float(np.mean((p - g) ** 2))


def mad(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean absolute difference over all pixels, alpha in [0, 1]."""
    p, g = _check_pair(pred, gt)
    return float(np.mean(np.abs(p - g)))


@lru_cache(maxsize=8)
def _gauss_kernels(sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """1-D factors of the evaluation code's ``gaussgradient`` kernel.

    The reference builds ``hx[i, j] = G(i) * dG(j)`` on a half-size of
    ``ceil(sigma * sqrt(-2 ln(sqrt(2 pi) sigma eps)))`` with ``eps = 1e-2``,
    then divides by its L2 norm; since ``||G dG^T|| = ||G|| ||dG||`` the
    separable factors are each L2-normalised.  ``dG`` is returned flipped so
    OpenCV's correlation equals the reference's convolution.
    """
    eps = 1e-2
    half = int(
        np.ceil(sigma * np.sqrt(-2.0 * np.log(np.sqrt(2 * np.pi) * sigma * eps)))
    )
    x = np.arange(-half, half + 1, dtype=np.float64)
    g = np.exp(-(x**2) / (2 * sigma**2)) / (sigma * np.sqrt(2 * np.pi))
    dg = -x * g / sigma**2
    g = g / np.linalg.norm(g)
    dg = dg / np.linalg.norm(dg)
    return g, dg[::-1].copy()


def _gradient_magnitude(a: np.ndarray, sigma: float) -> np.ndarray:
    """|grad a| via Gaussian-derivative filters, replicate border (as reference)."""
    g, dg = _gauss_kernels(float(sigma))
    gx = cv2.sepFilter2D(a, cv2.CV_64F, dg, g, borderType=cv2.BORDER_REPLICATE)
    gy = cv2.sepFilter2D(a, cv2.CV_64F, g, dg, borderType=cv2.BORDER_REPLICATE)
    return np.sqrt(gx * gx + gy * gy)


def gradient_error(pred: np.ndarray, gt: np.ndarray, sigma: float = 1.4) -> float:
    """Gradient error (Rhemann et al., CVPR 2009), as ``compute_gradient_loss``.

    Sum over the image of the squared difference of Gaussian-derivative
    gradient magnitudes (sigma 1.4, normalised kernels), divided by 1000.
    """
    p, g = _check_pair(pred, gt)
    diff = _gradient_magnitude(p, sigma) - _gradient_magnitude(g, sigma)
    return float(np.sum(diff * diff)) / 1000.0


def _threshold_steps(step: float) -> np.ndarray:
    """Thresholds ``0:step:1`` (MATLAB colon semantics, rounded to kill FP drift)."""
    if not 0 < step <= 1:
        raise ValueError(f"step must be in (0, 1], got {step}")
    n = int(np.floor(1.0 / step + 1e-9))
    return np.round(np.arange(n + 1) * step, 12)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """Largest 4-connected foreground component (MATLAB ``bwconncomp(., 4)``)."""
    n, labels = cv2.connectedComponents(
        mask.view(np.uint8), connectivity=4, ltype=cv2.CV_32S
    )
    if n <= 1:
        return np.zeros(mask.shape, dtype=bool)
    sizes = np.bincount(labels[mask], minlength=n)
    return labels == 1 + int(np.argmax(sizes[1:]))


def connectivity_error(
    pred: np.ndarray, gt: np.ndarray, step: float = 0.1, theta: float = 0.15
) -> float:
    """Connectivity error (Rhemann et al., CVPR 2009; ``compute_connectivity_error``).

    For thresholds ``t_i = 0:step:1`` take Ω_i, the largest 4-connected
    component of ``(pred >= t_i) & (gt >= t_i)``; each pixel's level ``l`` is
    ``t_{i-1}`` for the first ``i`` where it leaves Ω_i (1 if never).  With
    ``d = α - l`` and ``φ = 1 - d·[d >= theta]``, return
    ``sum|φ_pred - φ_gt| / 1000``.  Follows the MATLAB reference (largest
    *foreground* component), not the common Python port whose ``bincount``
    can pick the background label.
    """
    p, g = _check_pair(pred, gt)
    thresholds = _threshold_steps(step)
    n = len(thresholds) - 1
    # connected: pixel still inside every Ω so far; kept counts those steps, so
    # a pixel that leaves at step i has kept == i - 1 and level t_{i-1}.
    connected = np.ones(p.shape, dtype=bool)
    kept = np.zeros(p.shape, dtype=np.uint8)
    for t in thresholds[1:]:
        connected &= _largest_component((p >= t) & (g >= t))
        if not connected.any():
            break
        kept += connected
    level = np.append(thresholds[:n], 1.0)[kept]  # never left -> level 1
    pd = p - level
    gd = g - level
    pd[pd < theta] = 0.0  # 1 - φ = d·[d >= θ]
    gd[gd < theta] = 0.0
    return float(np.abs(pd - gd).sum()) / 1000.0


# ------------------------------------------------------------- summaries


def segmentation_metrics(
    pred: np.ndarray, gt: np.ndarray, threshold: float = 0.5
) -> dict[str, float]:
    """Binarised-mask metrics (accuracy, iou, mean_iou, dice, boundary_iou/_f)."""
    p, g = _check_pair(pred, gt)
    return {
        "accuracy": pixel_accuracy(p, g, threshold),
        "iou": iou(p, g, threshold),
        "mean_iou": mean_iou(p, g, threshold),
        "dice": dice(p, g, threshold),
        "boundary_iou": boundary_iou(p, g, threshold),
        "boundary_f": boundary_f(p, g, threshold),
    }


def matting_metrics(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Soft-matte metrics on the whole image: sad, mse, mad, grad, conn."""
    p, g = _check_pair(pred, gt)
    return {
        "sad": sad(p, g),
        "mse": mse(p, g),
        "mad": mad(p, g),
        "grad": gradient_error(p, g),
        "conn": connectivity_error(p, g),
    }


def all_metrics(
    pred: np.ndarray, gt: np.ndarray, threshold: float = 0.5
) -> dict[str, float]:
    """Union of :func:`segmentation_metrics` and :func:`matting_metrics`."""
    p, g = _check_pair(pred, gt)
    return {**segmentation_metrics(p, g, threshold), **matting_metrics(p, g)}
