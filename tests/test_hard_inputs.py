"""Hard inputs and interruptions: every bad file gets one clear line, nothing is lost or half-written.

Every file is built here, byte by byte where needed. The model is always the tiny session model; a
photo is cut with ``--threshold 0`` where its colours are checked, so every pixel is visible and the
cutout's RGB must equal the photo's exactly (or the reference conversion, for CMYK).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps
from typer.testing import CliRunner

from bgremove import images
from bgremove.batch import plan
from bgremove.cli import app
from bgremove.images import ImageError, open_photo

from conftest import sigint_reaches_child, synthetic_pair

runner = CliRunner()
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp\..+")  # atomic_path's temporary files


def cut(model: Path, *args: object):
    """``bgremove cut --model MODEL ARGS`` in this process (options first, so ``--`` can end the list)."""
    return runner.invoke(app, ["cut", "--model", str(model), *map(str, args)])


def rgb_photo(width: int = 48, height: int = 64, seed: int = 0) -> np.ndarray:
    if width >= 16 and height >= 16:
        return cv2.cvtColor(synthetic_pair(seed, width, height)[0], cv2.COLOR_BGR2RGB)
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)


def save(path: Path, rgb: np.ndarray | None = None, **params) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb_photo() if rgb is None else rgb).save(path, **params)
    return path


def report_lines(output: str, name: str) -> list[str]:
    return [line for line in output.splitlines() if name in line]


def assert_complete_cutouts(out: Path, size: tuple[int, int]) -> list[Path]:
    """Every PNG there decodes to the end and has the photo's size; no temporary file is left."""
    pngs = sorted(out.rglob("*.png"))
    for png in pngs:
        with Image.open(png) as im:
            im.load()  # raises on a truncated file
            assert im.size == size and im.mode == "RGBA", png
    assert not [p.name for p in out.rglob(".*")], "temporary files left behind"
    return pngs


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR (with a correct CRC) declares width x height; the pixel data is a token."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def encoded(rgb: np.ndarray, fmt: str) -> bytes:
    ok, buf = cv2.imencode(f".{fmt}", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


# ---------------------------------------------------------------- bad files


BAD_FILES = {  # name -> expected reason
    "zero.jpg": "empty file (0 bytes)",
    "cut-short.jpg": "truncated or corrupt image",
    "cut-short.png": "truncated or corrupt image",
    "cut-header.jpg": "truncated or corrupt image",
    "letter.jpg": "not an image, or a format bgremove cannot read",
    "huge.png": "50000x50000 pixels is above the limit of 150,000,000 (raise it with --max-pixels)",
}


def make_bad_files(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    photo = rgb_photo(120, 90)
    jpg, png = encoded(photo, "jpg"), encoded(photo, "png")
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "cut-short.jpg").write_bytes(jpg[: len(jpg) // 2])
    (folder / "cut-short.png").write_bytes(png[: len(png) // 2])
    (folder / "cut-header.jpg").write_bytes(jpg[:40])
    (folder / "letter.jpg").write_text("Dear reader, this is not a photo.\n")
    (folder / "huge.png").write_bytes(png_header_only(50_000, 50_000))


def test_each_bad_file_is_one_line_and_the_others_are_cut(tmp_path: Path, tiny_tflite: Path):
    make_bad_files(tmp_path / "in")
    save(tmp_path / "in" / "good.jpg")
    save(tmp_path / "in" / "sub" / "good2.png")
    result = cut(tiny_tflite, tmp_path / "in", tmp_path / "gone.jpg", "-o", tmp_path / "out")
    assert result.exit_code == 1, result.output
    for name, reason in {**BAD_FILES, "gone.jpg": "no such file or folder"}.items():
        lines = report_lines(result.output, name)
        assert len(lines) == 1 and lines[0].endswith(f"{name}: {reason}"), (name, result.output)
    assert "2 written, 0 skipped, 7 failed" in result.output
    assert "Traceback" not in result.output
    written = assert_complete_cutouts(tmp_path / "out", (48, 64))
    assert [p.relative_to(tmp_path / "out").as_posix() for p in written] == ["good.png", "sub/good2.png"]


def test_a_huge_header_is_refused_before_any_pixel_is_allocated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "huge.png"
    path.write_bytes(png_header_only(50_000, 50_000))

    def no_decoding(self):
        raise AssertionError("the pixels of a refused image were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    limit = r"50000x50000 pixels is above the limit of 150,000,000 \(raise it with --max-pixels\)"
    with pytest.raises(ImageError, match=limit):
        open_photo(path)


def test_max_pixels_is_the_limit(tmp_path: Path, tiny_tflite: Path):
    save(tmp_path / "p.png")  # 48 x 64 = 3072 pixels
    result = cut(tiny_tflite, "--max-pixels", 3000, tmp_path / "p.png", "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert "p.png: 48x64 pixels is above the limit of 3,000" in result.output
    assert cut(tiny_tflite, "--max-pixels", 3072, tmp_path / "p.png", "-o", tmp_path / "out").exit_code == 0


def test_a_missing_input_alone_is_a_failure_not_a_crash(tmp_path: Path, tiny_tflite: Path):
    result = cut(tiny_tflite, tmp_path / "nope.jpg", "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert f"{tmp_path / 'nope.jpg'}: no such file or folder" in result.output
    assert "0 written, 0 skipped, 1 failed" in result.output
    assert not (tmp_path / "out").exists()


def test_unexpected_errors_show_a_traceback_only_with_debug(tmp_path: Path, tiny_tflite: Path,
                                                           monkeypatch: pytest.MonkeyPatch):
    save(tmp_path / "in" / "a.png")
    save(tmp_path / "in" / "b.png")
    real_encode = images.encode

    def encode(pixels, *args, **kwargs):
        if pixels.shape[1] == 48 and encode.calls == 0:
            encode.calls += 1
            raise RuntimeError("boom")
        return real_encode(pixels, *args, **kwargs)

    for debug in ([], ["--debug"]):
        encode.calls = 0
        monkeypatch.setattr("bgremove.batch.encode", encode)
        result = cut(tiny_tflite, *debug, tmp_path / "in", "-o", tmp_path / "out", "--overwrite", "--workers", 1)
        assert result.exit_code == 1
        assert "RuntimeError: boom" in result.output and "1 written, 0 skipped, 1 failed" in result.output
        assert ("Traceback" in result.output) == bool(debug)


# ---------------------------------------------------------------- formats people have


def cmyk_blocks() -> np.ndarray:
    """Flat blocks of CMYK ink (flat, so JPEG keeps them nearly exact)."""
    inks = [(200, 0, 0, 50), (0, 180, 30, 0), (10, 20, 230, 120), (0, 0, 0, 255), (60, 60, 60, 0), (0, 0, 0, 0)]
    cmyk = np.zeros((48, 96, 4), np.uint8)
    for i, ink in enumerate(inks):
        cmyk[(i // 3) * 24:(i // 3 + 1) * 24, (i % 3) * 32:(i % 3 + 1) * 32] = ink
    return cmyk


def case_cmyk(folder: Path):
    cmyk = cmyk_blocks()
    path = folder / "cmyk.jpg"
    Image.fromarray(cmyk, "CMYK").save(path, quality=100)
    # Photoshop's convention, which Pillow writes too: an Adobe APP14 marker and inverted ink values.
    # Reading them as plain CMYK would give a negative.
    assert b"Adobe" in path.read_bytes()[:200]
    ink = cmyk.astype(np.float64) / 255.0
    reference = np.rint(255.0 * (1 - ink[..., :3]) * (1 - ink[..., 3:])).astype(np.uint8)  # naive CMYK -> RGB
    # An independent decoder (OpenCV's libjpeg path) agrees with the reference.
    np.testing.assert_allclose(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB), reference, atol=3)
    return path, reference, None, 3


def case_gray16(folder: Path):
    values = np.array([[0, 257, 32768, 65535, 128, 65280, 1000, 40000]], np.uint16)
    path = folder / "gray16.png"
    Image.fromarray(np.repeat(values, 4, axis=0)).save(path)
    assert Image.open(path).mode.startswith("I;16")
    expected = np.repeat(np.array([[0, 1, 128, 255, 0, 254, 4, 156]], np.uint8), 4, axis=0)
    return path, np.repeat(expected[..., None], 3, axis=2), None, 0


def case_gray16_dark(folder: Path):
    """A dark 16-bit photo (every value below 256) is still 16-bit: it stays dark."""
    values = np.array([[0, 100, 200, 255]], np.uint16)
    path = folder / "gray16-dark.png"
    Image.fromarray(np.repeat(values, 4, axis=0)).save(path)
    expected = np.repeat(np.array([[0, 0, 1, 1]], np.uint8), 4, axis=0)
    return path, np.repeat(expected[..., None], 3, axis=2), None, 0


def case_rgb16(folder: Path):
    rgb16 = np.zeros((4, 4, 3), np.uint16)
    rgb16[0] = (65535, 32768, 0)
    rgb16[1] = (257 * 100, 257 * 200, 257 * 7)
    rgb16[2] = (0, 65535, 32768)
    rgb16[3] = (257, 0, 65535)
    path = folder / "rgb16.png"
    cv2.imwrite(str(path), rgb16[..., ::-1])
    with open(path, "rb") as fh:
        assert fh.read(26)[24] == 16  # IHDR bit depth
    expected = np.array([[255, 128, 0], [100, 200, 7], [0, 255, 128], [1, 0, 255]], np.uint8)
    return path, np.repeat(expected[:, None, :], 4, axis=1), None, 0


def case_gray_jpeg(folder: Path):
    gray = cv2.cvtColor(rgb_photo(), cv2.COLOR_RGB2GRAY)
    path = folder / "gray.jpg"
    Image.fromarray(gray, "L").save(path, quality=90)
    decoded = np.asarray(Image.open(path))
    assert decoded.ndim == 2
    return path, np.repeat(decoded[..., None], 3, axis=2), None, 0


def case_palette_transparency(folder: Path):
    index = (np.arange(48 * 64).reshape(64, 48) // 300 % 4).astype(np.uint8)
    palette = [0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 12)
    im = Image.fromarray(index, "P")
    im.putpalette(palette)
    path = folder / "palette.png"
    im.save(path, transparency=0)  # index 0 is see-through
    colours = np.array(palette[:12], np.uint8).reshape(4, 3)
    return path, colours[index], np.where(index == 0, 0, 255).astype(np.uint8), 0


def case_la(folder: Path):
    gray = cv2.cvtColor(rgb_photo(), cv2.COLOR_RGB2GRAY)
    alpha = np.tile(np.linspace(0, 255, 48).astype(np.uint8), (64, 1))
    path = folder / "la.png"
    Image.fromarray(np.dstack([gray, alpha]), "LA").save(path)
    return path, np.repeat(gray[..., None], 3, axis=2), alpha, 0


def case_animated_gif(folder: Path):
    frames = [np.full((64, 48, 3), colour, np.uint8) for colour in ((200, 30, 30), (30, 200, 30), (30, 30, 200))]
    frames[0][10:20, 10:20] = (250, 250, 250)
    path = folder / "anim.gif"
    Image.fromarray(frames[0]).save(path, save_all=True, append_images=[Image.fromarray(f) for f in frames[1:]],
                                    duration=100, loop=0)
    assert Image.open(path).n_frames == 3
    first = np.asarray(Image.open(path).convert("RGB"))
    return path, first, None, 0


def case_tiff(folder: Path):
    rgb = rgb_photo(seed=4)
    return save(folder / "photo.tiff", rgb, compression="tiff_lzw"), rgb, None, 0


def case_webp(folder: Path):
    rgb = rgb_photo(seed=5)
    return save(folder / "photo.webp", rgb, lossless=True), rgb, None, 0


def case_exif_rotated(folder: Path):
    rgb = rgb_photo(64, 40, seed=6)  # stored 64 wide, 40 high
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = 8  # shown rotated 90 degrees counter-clockwise
    path = folder / "rotated.jpg"
    im.save(path, exif=exif, quality=95)
    shown = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    assert shown.shape == (64, 40, 3)
    return path, shown, None, 0


def case_one_pixel(folder: Path):
    rgb = np.array([[[12, 34, 56]]], np.uint8)
    return save(folder / "one.png", rgb), rgb, None, 0


def case_strip(folder: Path):
    rgb = rgb_photo(10_000, 10, seed=7)
    return save(folder / "strip.png", rgb), rgb, None, 0


FORMAT_CASES = [case_cmyk, case_gray16, case_gray16_dark, case_rgb16, case_gray_jpeg, case_palette_transparency,
                case_la, case_animated_gif, case_tiff, case_webp, case_exif_rotated, case_one_pixel, case_strip]


@pytest.mark.parametrize("case", FORMAT_CASES, ids=lambda c: c.__name__.removeprefix("case_"))
def test_formats_people_have(tmp_path: Path, tiny_tflite: Path, case):
    (tmp_path / "in").mkdir()
    path, rgb, alpha, tolerance = case(tmp_path / "in")
    result = cut(tiny_tflite, "--threshold", 0, path, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    out = np.asarray(Image.open(tmp_path / "out" / (path.stem + ".png")))
    assert out.shape == (*rgb.shape[:2], 4)
    expected_alpha = np.full(rgb.shape[:2], 255, np.uint8) if alpha is None else alpha
    np.testing.assert_array_equal(out[..., 3], expected_alpha)
    visible = expected_alpha > 0
    diff = np.abs(out[..., :3][visible].astype(int) - rgb[visible].astype(int))
    assert diff.max(initial=0) <= tolerance, f"colours off by up to {diff.max()}"
    if case is case_animated_gif:
        assert "(3 frames: used the first)" in result.output


def test_the_frames_note_is_said_for_a_single_photo_too(tmp_path: Path, tiny_tflite: Path):
    path = case_animated_gif(tmp_path)[0]
    result = cut(tiny_tflite, path, "-o", "-")
    assert result.exit_code == 0
    assert result.stderr.strip() == f"note: {path}: 3 frames: used the first"
    assert result.stdout_bytes.startswith(b"\x89PNG")


# ---------------------------------------------------------------- names and paths


ODD_NAMES = ["with space.jpg", "été 写真.png", "-x.jpg", "[draft] me.jpg", "--y.png"]


def test_odd_file_names_in_a_folder(tmp_path: Path, tiny_tflite: Path):
    for i, name in enumerate(ODD_NAMES):
        save(tmp_path / "in" / name, rgb_photo(seed=i))
    (tmp_path / "in" / "[b]roken.jpg").write_text("not a photo")
    result = cut(tiny_tflite, tmp_path / "in", "-o", tmp_path / "out")
    assert result.exit_code == 1, result.output
    for name in ODD_NAMES:
        assert f"{tmp_path / 'in' / name} -> {tmp_path / 'out' / Path(name).with_suffix('.png')}" in result.output
    # The name is printed as it is, not read as markup.
    assert f"failed: {tmp_path / 'in' / '[b]roken.jpg'}: not an image" in result.output
    assert sorted(p.name for p in assert_complete_cutouts(tmp_path / "out", (48, 64))) == sorted(
        str(Path(n).with_suffix(".png")) for n in ODD_NAMES)


def test_leading_dash_names_after_double_dash(tmp_path: Path, tiny_tflite: Path, monkeypatch: pytest.MonkeyPatch):
    save(tmp_path / "-x.jpg")
    save(tmp_path / "--y.png")
    monkeypatch.chdir(tmp_path)
    result = cut(tiny_tflite, "-o", "out", "--", "-x.jpg", "--y.png")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["--y.png", "-x.png"]


def test_a_directory_symlink_loop_ends_and_cuts_each_file_once(tmp_path: Path, tiny_tflite: Path):
    src = tmp_path / "in"
    save(src / "a.jpg")
    save(src / "sub" / "b.jpg")
    (src / "sub" / "up").symlink_to("..")  # back to in/
    (src / "sub" / "self").symlink_to(".")
    (src / "alias").symlink_to("sub")  # the same folder under a second name
    (src / "loop1.jpg").symlink_to("loop2.jpg")  # a file link loop
    (src / "loop2.jpg").symlink_to("loop1.jpg")
    found: list = []
    walker = threading.Thread(target=lambda: found.append(plan([str(src)], tmp_path / "out")), daemon=True)
    walker.start()
    walker.join(timeout=20)
    assert not walker.is_alive(), "the folder walk did not end"
    assert sorted(j.src.relative_to(src).as_posix() for j in found[0].jobs) == ["a.jpg", "loop1.jpg", "loop2.jpg",
                                                                               "sub/b.jpg"]
    result = cut(tiny_tflite, src, "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert "loop1.jpg: too many levels of symbolic links" in result.output
    assert "2 written, 0 skipped, 2 failed" in result.output
    written = assert_complete_cutouts(tmp_path / "out", (48, 64))
    assert [p.relative_to(tmp_path / "out").as_posix() for p in written] == ["a.png", "sub/b.png"]


@pytest.mark.skipif(AS_ROOT, reason="root reads files whatever their permissions")
def test_an_unreadable_file_for_real(tmp_path: Path, tiny_tflite: Path):
    save(tmp_path / "in" / "ok.jpg")
    locked = save(tmp_path / "in" / "locked.jpg")
    locked.chmod(0)
    try:
        result = cut(tiny_tflite, tmp_path / "in", "-o", tmp_path / "out")
    finally:
        locked.chmod(0o644)
    assert result.exit_code == 1
    assert "locked.jpg: permission denied" in result.output and "1 written, 0 skipped, 1 failed" in result.output


def test_an_unreadable_file(tmp_path: Path, tiny_tflite: Path, monkeypatch: pytest.MonkeyPatch):
    """What the kernel does for a normal user with chmod 000, made to happen as root too."""
    save(tmp_path / "in" / "ok.jpg")
    locked = save(tmp_path / "in" / "locked.jpg")

    def guarded_open(file, *args, **kwargs):
        if Path(file) == locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return open(file, *args, **kwargs)

    monkeypatch.setattr(images, "open", guarded_open, raising=False)
    result = cut(tiny_tflite, tmp_path / "in", "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert report_lines(result.output, "locked.jpg") == [f"failed: {locked}: permission denied"]
    assert "1 written, 0 skipped, 1 failed" in result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ok.png"]


@pytest.mark.skipif(AS_ROOT, reason="root writes into folders whatever their permissions")
def test_a_read_only_output_folder_for_real(tmp_path: Path, tiny_tflite: Path):
    save(tmp_path / "in" / "a.jpg")
    (tmp_path / "out").mkdir()
    (tmp_path / "out").chmod(0o555)
    try:
        result = cut(tiny_tflite, tmp_path / "in", "-o", tmp_path / "out")
    finally:
        (tmp_path / "out").chmod(0o755)
    assert result.exit_code == 1
    assert f"cannot write to {tmp_path / 'out'} (permission denied)" in result.output
    assert list((tmp_path / "out").iterdir()) == []


def test_a_read_only_output_folder(tmp_path: Path, tiny_tflite: Path, monkeypatch: pytest.MonkeyPatch):
    save(tmp_path / "in" / "a.jpg")
    save(tmp_path / "in" / "b.jpg")
    out = tmp_path / "out"
    out.mkdir()
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == out:
            raise PermissionError(errno.EACCES, "Permission denied", str(dir))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    result = cut(tiny_tflite, tmp_path / "in", "-o", out)
    assert result.exit_code == 1
    for name in ("a.jpg", "b.jpg"):
        assert report_lines(result.output, name) == [
            f"failed: {tmp_path / 'in' / name}: cannot write to {out} (permission denied)"]
    assert "0 written, 0 skipped, 2 failed" in result.output and "Traceback" not in result.output
    assert list(out.iterdir()) == []


def test_an_output_path_that_is_a_file(tmp_path: Path, tiny_tflite: Path):
    save(tmp_path / "a.jpg")
    (tmp_path / "taken").write_text("keep me")
    result = cut(tiny_tflite, tmp_path / "a.jpg", "-o", tmp_path / "taken")
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {tmp_path / 'taken'}: exists and is not a folder"
    assert (tmp_path / "taken").read_text() == "keep me"


def test_a_file_where_an_output_subfolder_must_go(tmp_path: Path, tiny_tflite: Path):
    save(tmp_path / "in" / "a.jpg")
    save(tmp_path / "in" / "sub" / "b.jpg")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "sub").write_text("keep me")
    result = cut(tiny_tflite, tmp_path / "in", "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert f"b.jpg: cannot write b.png: {tmp_path / 'out' / 'sub'} is not a folder" in result.output
    assert (tmp_path / "out" / "sub").read_text() == "keep me" and (tmp_path / "out" / "a.png").is_file()


def test_an_output_equal_to_an_input(tmp_path: Path, tiny_tflite: Path):
    a = save(tmp_path / "in" / "a.png")
    save(tmp_path / "in" / "b.jpg")
    before = a.read_bytes()
    result = cut(tiny_tflite, a, tmp_path / "in" / "b.jpg", "-o", tmp_path / "in")
    assert result.exit_code == 1
    assert f"failed: {a}: the output would overwrite an input file" in result.output
    assert "1 written, 0 skipped, 1 failed" in result.output
    assert a.read_bytes() == before and (tmp_path / "in" / "b.png").is_file()
    # The whole folder as its own output: refused in one line, nothing touched.
    result = cut(tiny_tflite, tmp_path / "in", "-o", tmp_path / "in")
    assert result.exit_code == 1
    assert f"{tmp_path / 'in'}: is also the output folder (-o)" in result.output
    assert a.read_bytes() == before


# ---------------------------------------------------------------- write failures and leftovers


def test_a_full_disk_fails_that_file_only_and_leaves_nothing_partial(tmp_path: Path, tiny_tflite: Path,
                                                                     monkeypatch: pytest.MonkeyPatch):
    for name in ("a", "b", "c"):
        save(tmp_path / "in" / f"{name}.jpg")

    class FillsUp:
        """A file that takes a few bytes of b.png's cutout, then finds the disk full."""

        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            self.fh.write(data[:100])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def full_disk_open(file, mode="r", *args, **kwargs):
        fh = open(file, mode, *args, **kwargs)
        return FillsUp(fh) if "w" in mode and Path(file).name.startswith(".b.png.") else fh

    monkeypatch.setattr(images, "open", full_disk_open, raising=False)
    result = cut(tiny_tflite, tmp_path / "in", "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert report_lines(result.output, "b.jpg") == [
        f"failed: {tmp_path / 'in' / 'b.jpg'}: cannot write b.png: no space left on device"]
    assert "2 written, 0 skipped, 1 failed" in result.output
    assert [p.name for p in assert_complete_cutouts(tmp_path / "out", (48, 64))] == ["a.png", "c.png"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "c.png"]


def test_leftover_temporary_files_are_never_inputs_and_are_cleaned(tmp_path: Path, tiny_tflite: Path):
    src = tmp_path / "in"
    save(src / "a.jpg")
    stale_beside = src / ".a.cutout.png.k3x_9q0z.tmp.png"  # left by a killed run writing beside the photo
    stale_beside.write_bytes(b"\x89PNG half")
    keep = [  # hidden, but not ours: never cut, never removed
        src / ".thumb.png",
        src / ".a.cutout.png.tmp.png",  # not mkstemp's pattern
        src / ".a.cutout.png.k3x_9q0z.tmp.jpg",  # another suffix than the destination's
        src / ".cache" / "c.jpg",
    ]
    for path in keep:
        save(path)
    result = cut(tiny_tflite, src)
    assert result.exit_code == 0, result.output
    assert "1 written, 0 skipped, 0 failed" in result.output
    assert not stale_beside.exists() and all(p.exists() for p in keep)
    assert sorted(p.name for p in src.rglob("*.cutout.png")) == ["a.cutout.png"]  # hidden ones were not cut
    # Into an output folder: leftovers for planned destinations go, another's stays.
    out = tmp_path / "out"
    out.mkdir()
    (out / ".a.png.abcdefgh.tmp.png").write_bytes(b"half")
    (out / ".zzz.png.abcdefgh.tmp.png").write_bytes(b"not planned here")
    result = cut(tiny_tflite, src, "-o", out)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [".zzz.png.abcdefgh.tmp.png", "a.png"]


# ---------------------------------------------------------------- interruptions (real processes)

COUNT = 80
SIZE = (320, 240)


@pytest.fixture(scope="module")
def eighty_photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("eighty") / "in"
    folder.mkdir()
    for i in range(COUNT):
        cv2.imwrite(str(folder / f"p{i:03d}.png"), synthetic_pair(i, *SIZE)[0])
    return folder


def bgremove_exe() -> str:
    return shutil.which("bgremove", path=os.path.dirname(sys.executable)) or shutil.which("bgremove")


def start_and_signal(cmd: list[str], out: Path, sig: int, after: int = 3) -> subprocess.Popen:
    """Start ``cmd``; send ``sig`` once ``after`` finished cutouts exist in ``out``."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=sigint_reaches_child)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if out.is_dir() and sum(1 for p in out.iterdir() if not p.name.startswith(".")) >= after:
            proc.send_signal(sig)
            break
        time.sleep(0.005)
    return proc


def test_kill_9_mid_folder_leaves_no_partial_file_and_a_rerun_finishes(tmp_path: Path, tiny_tflite: Path,
                                                                        eighty_photos: Path):
    out = tmp_path / "out"
    cmd = [bgremove_exe(), "cut", str(eighty_photos), "-o", str(out), "--model", str(tiny_tflite), "--workers", "2"]
    proc = start_and_signal(cmd, out, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    done = [p for p in out.iterdir() if not p.name.startswith(".")]
    assert 0 < len(done) < COUNT
    for png in done:  # each one complete, whatever was in flight
        with Image.open(png) as im:
            im.load()
            assert im.size == SIZE and im.mode == "RGBA"
    leftovers = [p for p in out.iterdir() if p.name.startswith(".")]
    assert all(TEMP_NAME.fullmatch(p.name) for p in leftovers), leftovers

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{COUNT - len(done)} written, {len(done)} skipped, 0 failed" in rerun.stdout
    assert len(assert_complete_cutouts(out, SIZE)) == COUNT


def test_ctrl_c_stops_after_the_images_in_flight(tmp_path: Path, tiny_tflite: Path, eighty_photos: Path):
    out = tmp_path / "out"
    cmd = [bgremove_exe(), "cut", str(eighty_photos), "-o", str(out), "--model", str(tiny_tflite), "--workers", "2"]
    proc = start_and_signal(cmd, out, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, (stdout, stderr)
    written = len(assert_complete_cutouts(out, SIZE))
    assert 0 < written < COUNT
    assert f"{written} written, 0 skipped, 0 failed (interrupted)" in stdout + stderr
    assert "Traceback" not in stderr


# ---------------------------------------------------------------- models


def model_files(folder: Path, tiny_tflite: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, expected reason), every one a file given to --model by mistake."""
    folder.mkdir(parents=True, exist_ok=True)
    photo = save(folder / "photo.jpg")
    renamed = folder / "photo.tflite"
    shutil.copy(photo, renamed)
    data = tiny_tflite.read_bytes()
    truncated = folder / "truncated.tflite"
    truncated.write_bytes(data[: len(data) // 2])
    files = {
        "missing": (folder / "missing.tflite", "model file not found"),
        "jpeg renamed": (renamed, "not a valid LiteRT model"),
        "truncated": (truncated, "not a valid LiteRT model"),
    }
    for suffix in (".h5", ".pkl", ".pt"):
        path = folder / f"model{suffix}"
        path.write_bytes(b"\x80\x04 pickled")
        files[suffix] = (path, f"unsupported model format {suffix}; use a .tflite or .keras file")
    return files


def test_wrong_model_files_are_one_line_and_exit_2(tmp_path: Path, tiny_tflite: Path):
    save(tmp_path / "p.jpg")
    for label, (path, reason) in model_files(tmp_path / "models", tiny_tflite).items():
        result = cut(path, tmp_path / "p.jpg", "-o", tmp_path / "out")
        assert result.exit_code == 2, (label, result.output)
        assert result.output.strip().splitlines() == [result.output.strip()], (label, result.output)
        assert result.output.startswith(f"error: {path}: {reason}"), (label, result.output)
        assert not (tmp_path / "out").exists(), label  # nothing made before the model is known to work


def test_a_keras_model_from_another_project_is_refused(tmp_path: Path):
    keras = pytest.importorskip("keras")
    save(tmp_path / "p.jpg")
    classifier = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(10)])
    classifier.save(tmp_path / "classifier.keras")
    result = cut(tmp_path / "classifier.keras", tmp_path / "p.jpg", "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert result.output.strip() == (f"error: {tmp_path / 'classifier.keras'}: gives output (None, 10), "
                                     "not a one-channel alpha (N, H, W, 1)")


def test_a_keras_model_with_python_code_is_refused_not_run(tmp_path: Path):
    keras = pytest.importorskip("keras")
    save(tmp_path / "p.jpg")
    marker = tmp_path / "ran"
    # What a malicious Lambda does: anything, here leave a file, whenever the layer is built or called.
    payload = eval(f"lambda x, marker={str(marker)!r}: (open(marker, 'w').write('code ran'), x)[1]")
    inputs = keras.Input((32, 32, 3))
    hidden = keras.layers.Lambda(payload)(inputs)
    keras.Model(inputs, keras.layers.Conv2D(1, 1, activation="sigmoid")(hidden)).save(tmp_path / "lambda.keras")
    marker.unlink()
    result = cut(tmp_path / "lambda.keras", tmp_path / "p.jpg", "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert result.output.strip().startswith(f"error: {tmp_path / 'lambda.keras'}: refused: the model holds Python code")
    assert len(result.output.strip().splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "out").exists()
