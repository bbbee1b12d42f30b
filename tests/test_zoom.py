"""cut's closer look at small people: where it looks (zoom_box) and what it writes (Remover zoom)."""

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from bgremove import Remover
from bgremove.cli import app
from bgremove.metrics import iou
from bgremove.pipeline import ZOOM_MARGIN, ZOOM_MIN_PIXELS, to_model_input, to_photo_alpha, zoom_box

from conftest import synthetic_background, synthetic_pair


def blob(rows: int, cols: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    small = np.full((rows, cols), 0.1, np.float32)
    small[y0:y1, x0:x1] = 0.9
    return small


def test_the_box_is_the_person_widened_by_the_margin_in_photo_pixels():
    # A person of 50 x 40 of a 200 x 100 model alpha (columns x rows), for a photo of 800 x 400.
    box = zoom_box(blob(100, 200, 30, 70, 70, 120), width=800, height=400)
    pad = ZOOM_MARGIN * 200  # the longer side in photo pixels: 50 columns = 200 photo columns
    assert box == (round(280 - pad), round(120 - pad), round(480 + pad), round(280 + pad))


def test_no_second_look_for_people_who_fill_the_photo_or_for_specks():
    assert zoom_box(blob(100, 100, 10, 10, 90, 90), 400, 400) is None  # the box would cover over half
    assert zoom_box(blob(100, 100, 50, 50, 52, 52), 400, 400) is None  # 4 pixels: too little person
    assert zoom_box(np.zeros((100, 100), np.float32), 400, 400) is None
    # A photo with no more pixels than the model's: the crop cannot keep twice them and cover under half.
    assert zoom_box(blob(100, 100, 40, 40, 60, 60), 100, 100) is None


def test_the_box_is_clipped_to_the_photo_never_blown_up_and_at_most_four_times_closer():
    box = zoom_box(blob(100, 100, 0, 0, 20, 10), 400, 400)  # at the corner: the margin is cut off
    assert box[:2] == (0, 0)
    # 90 photo pixels + the margin: fewer than twice the model's pixels, so it grows about its centre.
    x0, y0, x1, y1 = zoom_box(blob(100, 100, 35, 35, 65, 65), 300, 300)
    assert (x1 - x0) * (y1 - y0) == pytest.approx(ZOOM_MIN_PIXELS * 100 * 100, rel=0.02)
    assert (x0 + x1) / 2 == pytest.approx(150, abs=1) and (y0 + y1) / 2 == pytest.approx(150, abs=1)
    # 4 model pixels = 64 photo pixels + the margin: would be 9x closer, grows to a quarter of the photo.
    x0, y0, x1, y1 = zoom_box(blob(50, 50, 25, 25, 29, 29), 800, 800)
    assert (x1 - x0, y1 - y0) == (200, 200)
    assert (x0 + x1) / 2 == pytest.approx(432, abs=1) and (y0 + y1) / 2 == pytest.approx(432, abs=1)


def small_figure(size=(128, 96), seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """A 48 x 64 figure in a corner of a bigger photo of the same background: a person far away."""
    width, height = size
    rgb = synthetic_background(np.random.default_rng(seed), width, height)
    mask = np.zeros((height, width), np.uint8)
    fig_bgr, mask[20:84, 30:78] = synthetic_pair(seed, 48, 64)
    rgb[20:84, 30:78] = cv2.cvtColor(fig_bgr, cv2.COLOR_BGR2RGB)
    return rgb, mask


def test_a_small_person_is_cut_again_from_the_crop_around_them(tiny_tflite: Path):
    rgb, mask = small_figure()
    one_pass, zoomed = Remover(tiny_tflite, zoom=False), Remover(tiny_tflite)
    small = one_pass.predict_small([one_pass.model_input(one_pass.load(rgb))])[0]
    box = zoom_box(small, rgb.shape[1], rgb.shape[0])
    assert box is not None
    x0, y0, x1, y1 = box
    assert x0 < 54 < x1 and y0 < 52 < y1  # around the figure's centre
    first, second = one_pass.alpha(rgb), zoomed.alpha(rgb)
    crop = rgb[y0:y1, x0:x1]
    closer = one_pass.predict_small([to_model_input(crop, one_pass.runtime.shape_for(*crop.shape[:2]))])[0]
    np.testing.assert_allclose(second[y0:y1, x0:x1], to_photo_alpha(closer, x1 - x0, y1 - y0), atol=1e-6)
    outside = np.ones(mask.shape, bool)
    outside[y0:y1, x0:x1] = False
    np.testing.assert_array_equal(second[outside], first[outside])
    # The figure had 6 x 8 of the model's 32 x 32 pixels; in the crop it has most of them.
    assert iou(second, mask / 255.0) > iou(first, mask / 255.0) + 0.05


def test_cut_zooms_by_default_and_no_zoom_writes_one_pass(tmp_path: Path, tiny_tflite: Path):
    rgb, _ = small_figure()
    Image.fromarray(rgb).save(tmp_path / "far.png")
    runner = CliRunner()
    for flag, remover in (([], Remover(tiny_tflite)), (["--no-zoom"], Remover(tiny_tflite, zoom=False))):
        out = tmp_path / f"out{len(flag)}"
        result = runner.invoke(app, ["cut", str(tmp_path / "far.png"), "-o", str(out), "--mask",
                                     "--model", str(tiny_tflite), *flag])
        assert result.exit_code == 0, result.output
        np.testing.assert_array_equal(np.asarray(Image.open(out / "far.png")), remover.mask(tmp_path / "far.png"))
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "out0" / "far.png")),
                              np.asarray(Image.open(tmp_path / "out1" / "far.png")))


@pytest.mark.parametrize("suffix", ["tflite", "keras"])
def test_a_batch_looks_closer_as_one_photo_at_a_time_does(tmp_path: Path, trained_run: Path, suffix: str):
    """.tflite: each worker takes both looks with its own interpreter; .keras: the main thread runs the
    second look of a whole batch as one more model call. Either way the cutouts are Remover.cut's."""
    if suffix == "keras":
        pytest.importorskip("tensorflow")
    model = trained_run / f"model.{suffix}"
    remover = Remover(model)
    zoomed = 0
    for seed in range(5):
        rgb, _ = small_figure(seed=seed)
        Image.fromarray(rgb).save(tmp_path / f"far{seed}.png")
        small = remover.predict_small([remover.model_input(remover.load(rgb))])[0]
        zoomed += zoom_box(small, rgb.shape[1], rgb.shape[0]) is not None
    assert zoomed >= 2
    result = CliRunner().invoke(app, ["cut", str(tmp_path), "-o", str(tmp_path / "out"), "--model", str(model),
                                      "--workers", "2", "--batch-size", "3"])
    assert result.exit_code == 0, result.output
    for seed in range(5):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / f"far{seed}.png")),
                                      np.asarray(remover.cut(tmp_path / f"far{seed}.png")))
