"""The `cut` options: the image operations on hand-made alphas (exact), then the wiring through the
pipeline, the Python API and the CLI (stdin/stdout included) with the tiny model."""

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from bgremove import Remover, effects
from bgremove.cli import app
from bgremove.effects import Background, Margin
from bgremove.images import Photo
from bgremove.pipeline import CutOptions, render, to_photo_alpha

from conftest import synthetic_pair

runner = CliRunner()


def photo_of(seed: int = 0, size=(64, 48)) -> np.ndarray:
    """A synthetic RGB photo, ``size`` = (width, height)."""
    bgr, _ = synthetic_pair(seed, *size)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def rect_alpha(w=64, h=48, box=(10, 5, 30, 45), soft=True) -> np.ndarray:
    """An opaque rectangle [x0, x1) x [y0, y1), with a one-pixel semi-transparent rim outside it."""
    x0, y0, x1, y1 = box
    a = np.zeros((h, w), np.uint8)
    if soft:
        a[max(0, y0 - 1) : y1 + 1, max(0, x0 - 1) : x1 + 1] = 100
    a[y0:y1, x0:x1] = 255
    return a


# ---------------------------------------------------------------- crop


def test_crop_box_is_the_subject_exactly():
    a = rect_alpha(soft=False)
    assert effects.subject_box(a) == (10, 5, 30, 45)
    assert effects.subject_box(a, Margin.parse("3")) == (7, 2, 33, 48)  # bottom clipped at the image
    # 10% of a 20 x 40 box: 2 px left and right, 4 px above and below (clipped to 48).
    assert effects.subject_box(a, Margin.parse("10%")) == (8, 1, 32, 48)
    # Rounds half up: 2.5% of 20 = 0.5 -> 1; of 40 -> 1.
    assert effects.subject_box(a, Margin.parse("2.5%")) == (9, 4, 31, 46)
    assert effects.subject_box(a, Margin.parse(100)) == (0, 0, 64, 48)
    assert effects.subject_box(np.zeros((8, 8), np.uint8)) is None
    # Any visible pixel counts, however faint.
    faint = np.zeros((20, 20), np.uint8)
    faint[3, 17] = 1
    faint[9, 4] = 200
    assert effects.subject_box(faint) == (4, 3, 18, 10)


@pytest.mark.parametrize("bad", ["-1", "5px", "%", "1.5", "abc"])
def test_bad_margins_are_refused(bad):
    with pytest.raises(ValueError, match="margin"):
        Margin.parse(bad)


def test_crop_in_the_pipeline_and_empty_alpha_keeps_the_frame():
    rgb = photo_of()
    alpha = rect_alpha().astype(np.float32) / 255.0
    out = render(Photo(rgb), alpha, CutOptions(crop=True, margin="2"))
    # The soft rim is visible (alpha > 0), so the box is the rim's: x 9..31, y 4..46, plus 2 px.
    assert out.pixels.shape == (46, 26, 4) and not out.notes
    np.testing.assert_array_equal(out.pixels[..., :3][out.pixels[..., 3] > 0], rgb[2:48, 7:33][out.pixels[..., 3] > 0])
    empty = render(Photo(rgb), np.zeros((48, 64), np.float32), CutOptions(crop=True))
    assert empty.pixels.shape == (48, 64, 4)
    assert empty.notes == ["nothing kept: not cropped"]


# ---------------------------------------------------------------- subject: largest, clean


def two_blobs() -> np.ndarray:
    a = np.zeros((60, 80), np.uint8)
    cv2.circle(a, (20, 30), 12, 255, -1)  # big
    cv2.circle(a, (65, 15), 5, 255, -1)  # small
    return cv2.GaussianBlur(a, (5, 5), 0)  # soft edges around both


def test_largest_keeps_the_biggest_region_with_its_soft_edge():
    a = two_blobs()
    out = effects.keep_largest(a)
    left, right = np.s_[:, :45], np.s_[:, 45:]
    np.testing.assert_array_equal(out[left], a[left])  # the big one, edge included, untouched
    assert a[right].max() == 255 and (out[right] == 0).all()  # the small one and its fringe are gone
    # One region, or none: nothing to choose.
    single = a.copy()
    single[right] = 0
    np.testing.assert_array_equal(effects.keep_largest(single), single)
    np.testing.assert_array_equal(effects.keep_largest(np.zeros_like(a)), np.zeros_like(a))


def test_clean_drops_specks_and_fills_small_holes_only():
    a = np.zeros((100, 100), np.uint8)
    a[20:80, 20:60] = 255  # the subject, 2400 px
    a[40:43, 40:43] = 0  # a 9 px hole: filled
    a[60:72, 30:42] = 0  # a 144 px hole: kept (above 1% of 10,000)
    a[10:13, 80:83] = 255  # a 9 px speck: dropped
    a[11, 79] = 90  # ... with its soft edge
    a[0:5, 0:30] = 255  # 150 px at the border: kept (big enough)
    a[50:52, 98:100] = 0
    out = effects.clean_alpha(a, min_area=0.01)
    expected = a.copy()
    expected[40:43, 40:43] = 255
    expected[10:13, 79:83] = 0
    np.testing.assert_array_equal(out, expected)
    # A gap touching the image border is background, not a hole, however small.
    b = np.full((20, 20), 255, np.uint8)
    b[0:2, 9:11] = 0
    np.testing.assert_array_equal(effects.clean_alpha(b, 0.5), b)


# ---------------------------------------------------------------- backgrounds


def test_background_colours_are_exact_where_alpha_is_0_and_255():
    rgb = photo_of()
    alpha = np.zeros((48, 64), np.uint8)
    alpha[10:30, 20:40] = 255
    alpha[30:35, 20:40] = 128
    for spec, colour in [("white", (255, 255, 255)), ("Black", (0, 0, 0)), ("#10a0ff", (16, 160, 255)),
                         ("#f0a", (255, 0, 170)), ("gray", (128, 128, 128)), ("green", (0, 255, 0))]:
        out = render(Photo(rgb), alpha.astype(np.float32) / 255.0, CutOptions(bg=spec)).pixels
        assert out.shape == (48, 64, 3) and out.dtype == np.uint8
        assert (out[alpha == 0] == colour).all()
        np.testing.assert_array_equal(out[alpha == 255], rgb[alpha == 255])
        mixed = out[alpha == 128].astype(int)
        expected = (rgb[alpha == 128].astype(int) * 128 + np.array(colour) * 127 + 127) // 255
        np.testing.assert_array_equal(mixed, expected)


@pytest.mark.parametrize("bad", ["nocolour", "#12345", "#ggg", "blur:0", "blur:x", "blur:-3"])
def test_bad_backgrounds_are_one_clear_error(bad, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # "nocolour" must not be found as a file
    with pytest.raises(ValueError, match="--bg"):
        Background.parse(bad)


def test_background_image_covers_the_frame_centred(tmp_path):
    bg = np.zeros((20, 40, 3), np.uint8)
    bg[:, :20] = (255, 0, 0)
    bg[:, 20:] = (0, 0, 255)
    Image.fromarray(bg).save(tmp_path / "bg.png")
    parsed = Background.parse(str(tmp_path / "bg.png"))
    assert parsed.kind == "image"
    # 20x20 frame: no scaling, the centre 20 columns (10 red, 10 blue).
    tile = effects.cover(parsed.image, 20, 20)
    assert tile.shape == (20, 20, 3)
    assert (tile[:, :10] == (255, 0, 0)).all() and (tile[:, 10:] == (0, 0, 255)).all()
    # 40 high x 10 wide: scaled x2 (to 80x40), the centre 10 columns straddle the two halves.
    tall = effects.cover(parsed.image, 10, 40)
    assert tall.shape == (40, 10, 3)
    assert (tall[:, :4] == (255, 0, 0)).all() and (tall[:, 6:] == (0, 0, 255)).all()
    # Through the pipeline, with crop: the image covers the cropped frame.
    rgb = photo_of()
    out = render(Photo(rgb), np.zeros((48, 64), np.float32), CutOptions(bg=parsed)).pixels
    assert out.shape == (48, 64, 3)
    assert (out[:, :30] == (255, 0, 0)).all() and (out[:, 34:] == (0, 0, 255)).all()


def test_blur_background_is_the_photo_blurred():
    bgr, alpha = synthetic_pair(0, 96, 128)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    opts = CutOptions(bg="blur:6")
    out = render(Photo(rgb), alpha.astype(np.float32) / 255.0, opts).pixels
    assert out.shape == (128, 96, 3)
    np.testing.assert_array_equal(out[alpha == 255], rgb[alpha == 255])
    # Smoother than the noisy original, but the same colours on average.
    bg = alpha == 0
    assert out[bg].std(axis=0).mean() < rgb[bg].std(axis=0).mean()
    assert np.abs(out[:20].mean(axis=(0, 1)) - rgb[:20].mean(axis=(0, 1))).max() < 6
    # The subject is left out of the average: no warm halo next to it.
    ring = (cv2.dilate(alpha, np.ones((9, 9), np.uint8)) > 0) & bg
    assert np.abs(out[ring].mean(axis=0) - rgb[bg].mean(axis=0)).max() < 8
    plain = cv2.GaussianBlur(rgb, (0, 0), 3)  # a blur of everything picks up the subject's colour
    assert np.abs(plain[ring].mean(axis=0) - rgb[bg].mean(axis=0)).max() > 20
    assert CutOptions(bg="blur").bg.radius is None  # default: 2% of the diagonal


# ---------------------------------------------------------------- refine, decontaminate


def sharp_scene(w=320, h=240):
    """A warm disc on a cool textured background, its exact mask, and the alpha a 64x48 model would give."""
    rng = np.random.default_rng(1)
    bg = rng.integers(0, 60, (h, w, 3)).astype(np.int32)
    bg[..., 2] += 120
    gt = np.zeros((h, w), np.uint8)
    cv2.circle(gt, (w // 2, h // 2), h // 3, 255, -1)
    cv2.rectangle(gt, (w // 2 - 10, h // 2), (w // 2 + 10, h - 1), 255, -1)
    rgb = np.where(gt[..., None] > 0, np.array([210, 140, 60]), bg).astype(np.uint8)
    small = cv2.resize(gt.astype(np.float32) / 255.0, (w // 5, h // 5), interpolation=cv2.INTER_AREA)
    return rgb, gt.astype(np.float32) / 255.0, to_photo_alpha(small, w, h)


def test_refine_snaps_a_blocky_alpha_to_the_photo_edges():
    rgb, gt, coarse = sharp_scene()
    refined = effects.refine_alpha(rgb, coarse, radius=5)
    assert refined.shape == coarse.shape and refined.dtype == coarse.dtype
    before, after = np.abs(coarse - gt).mean(), np.abs(refined - gt).mean()
    assert after < before / 2, (before, after)
    # Far from the boundary (over 2 radii from any uncertain pixel), nothing changes.
    uncertain = ((coarse > 0.02) & (coarse < 0.98)).astype(np.uint8)
    near = cv2.dilate(uncertain, np.ones((21, 21), np.uint8)) > 0
    np.testing.assert_array_equal(refined[~near], coarse[~near])
    assert (~near).mean() > 0.5 and (refined[near] != coarse[near]).any()
    # Through the pipeline, the output keeps the photo's size.
    out = render(Photo(rgb), coarse, CutOptions(refine=True), upscale=5).pixels
    assert out.shape == (240, 320, 4)


def test_refine_of_a_sure_alpha_changes_nothing():
    rgb, gt, _ = sharp_scene()
    np.testing.assert_array_equal(effects.refine_alpha(rgb, gt, radius=4), gt)


def test_decontaminate_changes_only_semi_transparent_pixels_towards_the_subject_colour():
    h, w = 60, 80
    fg, bgc = np.array([200, 40, 40]), np.array([20, 60, 230])
    alpha = np.zeros((h, w), np.uint8)
    alpha[:, :40] = 255
    alpha[:, 40:50] = np.linspace(230, 25, 10).astype(np.uint8)  # a soft edge, like hair
    a = alpha[..., None].astype(np.float32) / 255.0
    rgb = np.rint(a * fg + (1 - a) * bgc).astype(np.uint8)  # the photo mixes the two there
    out = effects.decontaminate(rgb, alpha)
    semi = (alpha > 0) & (alpha < 255)
    np.testing.assert_array_equal(out[~semi], rgb[~semi])
    err_before = np.abs(rgb[semi].astype(int) - fg).mean()
    err_after = np.abs(out[semi].astype(int) - fg).mean()
    assert err_after < err_before / 4, (err_before, err_after)
    # In the cutout, the semi-transparent pixels carry the estimated colour, with the alpha unchanged.
    cut = render(Photo(rgb), alpha.astype(np.float32) / 255.0, CutOptions(decontaminate=True)).pixels
    np.testing.assert_array_equal(cut[..., 3], alpha)
    np.testing.assert_array_equal(cut[..., :3][semi], out[semi])


def test_mask_equals_the_cutouts_alpha_under_every_option():
    rgb = photo_of(3, size=(64, 80))
    _, gt = synthetic_pair(3, 64, 80)
    alpha = cv2.GaussianBlur(gt.astype(np.float32) / 255.0, (7, 7), 0)
    alpha[2:5, 2:5] = 1.0  # a speck
    common = dict(refine=True, clean=True, largest=True, crop=True, margin="10%")
    cut = render(Photo(rgb), alpha, CutOptions(**common), upscale=3).pixels
    mask = render(Photo(rgb), alpha, CutOptions(mask=True, **common), upscale=3).pixels
    assert mask.ndim == 2 and mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, cut[..., 3])
    assert mask.shape != alpha.shape  # cropped
    with pytest.raises(ValueError, match="--mask"):
        CutOptions(mask=True, bg="white")


# ---------------------------------------------------------------- the Python API and the CLI


def test_python_api_takes_the_options(tiny_tflite: Path):
    rgb = photo_of(5, size=(48, 64))
    remover = Remover(tiny_tflite, options=CutOptions(crop=True, margin=2, largest=True))
    cut = remover.cut(rgb)
    np.testing.assert_array_equal(remover.mask(rgb), cut[..., 3])
    on_white = Remover(tiny_tflite, options=CutOptions(bg="white")).cut(Image.fromarray(rgb))
    assert isinstance(on_white, Image.Image) and on_white.mode == "RGB" and on_white.size == (48, 64)


def write_photo(path: Path, seed: int = 0, size=(48, 64)) -> np.ndarray:
    bgr, _ = synthetic_pair(seed, *size)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), bgr)
    return np.asarray(Image.open(path).convert("RGB"))


def test_cli_mask_equals_the_cutout_alpha(tmp_path: Path, tiny_tflite: Path):
    write_photo(tmp_path / "p.png")
    base = ["cut", str(tmp_path / "p.png"), "--model", str(tiny_tflite), "--crop", "--margin", "5%"]
    assert runner.invoke(app, [*base, "-o", str(tmp_path / "cut")]).exit_code == 0
    result = runner.invoke(app, [*base, "-o", str(tmp_path / "mask"), "--mask"])
    assert result.exit_code == 0, result.output
    mask = Image.open(tmp_path / "mask" / "p.png")
    assert mask.mode == "L"
    np.testing.assert_array_equal(np.asarray(mask), np.asarray(Image.open(tmp_path / "cut" / "p.png"))[..., 3])


def test_cli_formats_set_the_extension(tmp_path: Path, tiny_tflite: Path):
    rgb = write_photo(tmp_path / "in" / "p.png")
    model = ["--model", str(tiny_tflite)]
    result = runner.invoke(app, ["cut", str(tmp_path / "in"), "-o", str(tmp_path / "w"), "--format", "webp", *model])
    assert result.exit_code == 0, result.output
    webp = Image.open(tmp_path / "w" / "p.webp")
    assert webp.mode == "RGBA"
    cut = np.asarray(webp)
    visible = cut[..., 3] > 0
    np.testing.assert_array_equal(cut[..., :3][visible], rgb[visible])  # lossless
    result = runner.invoke(app, ["cut", str(tmp_path / "in" / "p.png"), "--format", "jpg", "--bg", "#00ff00", *model])
    assert result.exit_code == 0, result.output
    jpg = Image.open(tmp_path / "in" / "p.cutout.jpg")
    assert jpg.format == "JPEG" and jpg.mode == "RGB" and jpg.size == (48, 64)


def test_jpeg_without_a_background_is_refused_before_any_work(tmp_path: Path):
    write_photo(tmp_path / "p.png")
    # The model does not exist: the format error must come first.
    result = runner.invoke(app, ["cut", str(tmp_path / "p.png"), "--format", "jpg", "--model", str(tmp_path / "none.tflite")])
    assert result.exit_code == 2
    assert "JPEG has no transparency" in result.output and "--bg" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png"]


@pytest.mark.parametrize("args, message", [
    (["--bg", "nocolour"], "--bg 'nocolour': not a colour"),
    (["--margin", "5%"], "--margin only applies with --crop"),
    (["--crop", "--margin", "x"], "margin 'x'"),
    (["--mask", "--bg", "white"], "--mask writes the alpha alone"),
    (["--format", "gif"], "--format gif"),
])
def test_bad_option_values_are_one_line(tmp_path: Path, args, message):
    write_photo(tmp_path / "p.png")
    result = runner.invoke(app, ["cut", str(tmp_path / "p.png"), *args])
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_stdin_to_stdout_through_a_real_pipe(tmp_path: Path, tiny_tflite: Path):
    write_photo(tmp_path / "p.jpg")
    exe = shutil.which("bgremove", path=os.path.dirname(sys.executable)) or shutil.which("bgremove")
    with open(tmp_path / "p.jpg", "rb") as stdin:
        proc = subprocess.run([exe, "cut", "-", "-o", "-", "--model", str(tiny_tflite), "--bg", "white"],
                              stdin=stdin, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    out = Image.open(io.BytesIO(proc.stdout))
    assert out.format == "PNG" and out.mode == "RGB" and out.size == (48, 64)
    # Nothing but the PNG on stdout: its signature first, its end chunk last.
    assert proc.stdout.startswith(b"\x89PNG\r\n\x1a\n") and proc.stdout.endswith(b"IEND\xaeB`\x82")


def test_stdin_and_stdout_with_the_cli_runner(tmp_path: Path, tiny_tflite: Path):
    write_photo(tmp_path / "p.png")
    data = (tmp_path / "p.png").read_bytes()
    model = ["--model", str(tiny_tflite)]
    piped = runner.invoke(app, ["cut", "-", *model], input=data)  # stdin without -o: stdout
    assert piped.exit_code == 0, piped.stderr
    cut = np.asarray(Image.open(io.BytesIO(piped.stdout_bytes)))
    assert cut.shape == (64, 48, 4)
    # The same as cutting the file.
    assert runner.invoke(app, ["cut", str(tmp_path / "p.png"), "-o", str(tmp_path / "o"), *model]).exit_code == 0
    np.testing.assert_array_equal(cut, np.asarray(Image.open(tmp_path / "o" / "p.png")))
    # A file to stdout, as a mask.
    masked = runner.invoke(app, ["cut", str(tmp_path / "p.png"), "-o", "-", "--mask", *model])
    assert masked.exit_code == 0
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(masked.stdout_bytes))), cut[..., 3])
    # stdin into a folder.
    into = runner.invoke(app, ["cut", "-", "-o", str(tmp_path / "f"), "--format", "webp", *model], input=data)
    assert into.exit_code == 0, into.output
    assert (tmp_path / "f" / "stdin.webp").is_file()


@pytest.mark.parametrize("args, input_bytes, message", [
    (["-", "-o", "-"], b"not an image", "stdin: not an image"),
    (["-", "-o", "-"], b"", "stdin: empty input"),
    (["-", "other.png"], b"", "must be the only input"),
])
def test_stdin_errors_are_one_line_and_nothing_on_stdout(tmp_path: Path, tiny_tflite: Path, args, input_bytes, message):
    result = runner.invoke(app, ["cut", *args, "--model", str(tiny_tflite)], input=input_bytes)
    assert result.exit_code != 0
    assert message in result.stderr and result.stdout_bytes == b""


def test_stdout_takes_a_single_image(tmp_path: Path, tiny_tflite: Path):
    write_photo(tmp_path / "a.png", 1)
    write_photo(tmp_path / "b.png", 2)
    result = runner.invoke(app, ["cut", str(tmp_path), "-o", "-", "--model", str(tiny_tflite)])
    assert result.exit_code == 2 and "writes one image" in result.stderr and result.stdout_bytes == b""
