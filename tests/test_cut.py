"""`bgremove cut` end to end through the CLI, and the Python API, on images made here."""

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from bgremove import Remover
from bgremove.batch import plan
from bgremove.cli import app
from bgremove.paths import DEFAULT_MODEL_NAME, default_model_path, weights_dir

from conftest import ROOT, synthetic_pair

runner = CliRunner()


def write_photo(path: Path, seed: int = 0, size=(48, 64)) -> np.ndarray:
    """Write a synthetic photo; return its RGB pixels as decoded back from the file."""
    bgr, _ = synthetic_pair(seed, *size)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), bgr)
    return np.asarray(Image.open(path).convert("RGB"))


def check_cutout(out: Path, rgb: np.ndarray) -> np.ndarray:
    cut = Image.open(out)
    assert cut.mode == "RGBA"
    assert cut.size == (rgb.shape[1], rgb.shape[0])
    rgba = np.asarray(cut)
    visible = rgba[..., 3] > 0
    assert visible.any()
    # Straight alpha: every visible pixel keeps the photo's colour exactly.
    np.testing.assert_array_equal(rgba[visible][:, :3], rgb[visible])
    return rgba


def test_cut_one_photo_keeps_size_and_colours(tmp_path: Path, tiny_tflite: Path):
    rgb = write_photo(tmp_path / "in" / "p.png", size=(70, 90))
    result = runner.invoke(app, ["cut", str(tmp_path / "in" / "p.png"), "-o", str(tmp_path / "out"),
                                 "--model", str(tiny_tflite)])
    assert result.exit_code == 0, result.output
    rgba = check_cutout(tmp_path / "out" / "p.png", rgb)
    assert rgba[..., 3].std() > 20  # the alpha follows the figure, not a constant
    assert "1 written, 0 skipped, 0 failed" in result.output


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_keep_freed_memory_sets_glibc_thresholds_in_a_fresh_process():
    """Run in a fresh process, where it cannot disturb other tests: glibc accepts both settings."""
    script = "from bgremove.batch import keep_freed_memory; print(keep_freed_memory(64), keep_freed_memory(0))"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True"]


def test_help_loads_no_model_library_and_a_usage_error_is_one_line():
    """`bgremove --help` is the first thing a user times: in a fresh process it imports neither the image
    and model libraries nor typer's rich help (rich.markdown and markdown-it, ~60 ms); a usage error is
    click's one line after the usage."""
    script = (
        "import sys\nfrom bgremove.cli import app\n"
        "try:\n    app(['cut', '--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = ('numpy', 'cv2', 'PIL', 'tensorflow', 'ai_edge_litert', 'typer.rich_utils', 'rich.markdown')\n"
        "print('loaded:', [m for m in heavy if m in sys.modules])"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--output" in proc.stdout and "PHOTO..." in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "loaded: []"
    result = runner.invoke(app, ["cut", "--no-such-option", "p.jpg"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == "Error: No such option: --no-such-option"


@pytest.mark.parametrize("kind", ["tflite", "keras", "keep.tflite", "keep.keras"])
def test_a_threaded_batch_writes_what_one_photo_at_a_time_writes(tmp_path: Path, request, kind: str):
    """.tflite: each worker cuts whole photos with its own interpreter; .keras: the main thread runs batched
    model calls (keep: photos of several shapes in one batch). Either way: the same pixels as Remover.cut,
    every file reported once and in order, and a bad file fails alone."""
    if kind.endswith("keras") or kind.startswith("keep"):
        pytest.importorskip("tensorflow")
    run = request.getfixturevalue("keep_run" if kind.startswith("keep") else "trained_run")
    model = run / f"model.{kind.split('.')[-1]}"
    sizes = [(48, 64), (90, 70), (33, 120), (64, 64), (100, 41), (56, 77), (70, 90)]
    for i, size in enumerate(sizes):
        write_photo(tmp_path / "in" / f"p{i}.png", seed=i, size=size)
    (tmp_path / "in" / "p3b.png").write_bytes(b"not a png")  # a bad file between good ones
    result = runner.invoke(app, ["cut", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model",
                                 str(model), "--workers", "3", "--batch-size", "3"])
    assert result.exit_code == 1, result.output
    assert f"{len(sizes)} written, 0 skipped, 1 failed" in result.output
    assert "p3b.png" in result.output and "Traceback" not in result.output
    reported = [line.split()[1] for line in result.output.splitlines() if line.startswith(("written:", "failed:"))]
    names = ["p0", "p1", "p2", "p3", "p3b", "p4", "p5", "p6"]
    assert reported == [str(tmp_path / "in" / f"{name}.png") + (":" if name == "p3b" else "") for name in names]
    remover = Remover(model)
    for i in range(len(sizes)):
        one = np.asarray(remover.cut(tmp_path / "in" / f"p{i}.png"))
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / f"p{i}.png")), one)


def test_the_tiny_model_finds_the_figure(tmp_path: Path, tiny_tflite: Path):
    bgr, mask = synthetic_pair(7, 48, 64)
    alpha = Remover(tiny_tflite).alpha(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    assert alpha.shape == mask.shape
    assert alpha[mask > 0].mean() > alpha[mask == 0].mean() + 0.3



def test_tta_averages_the_photo_and_its_mirror_image(tmp_path: Path, tiny_tflite: Path):
    """--tta: the alpha is the mean of the model's alpha and the mirrored alpha of the mirrored photo, so
    it is exactly mirror-symmetric, which the model alone is not; cut writes that alpha."""
    bgr, _ = synthetic_pair(7, 32, 32)  # the tiny model's own size: no resizing between photo and model
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    plain, tta = Remover(tiny_tflite), Remover(tiny_tflite, tta=True)
    alpha, mirrored = plain.alpha(rgb), plain.alpha(rgb[:, ::-1].copy())[:, ::-1]
    assert np.abs(alpha - mirrored).max() > 0.01
    both = tta.alpha(rgb)
    np.testing.assert_allclose(both, (alpha + mirrored) / 2, atol=1e-6)
    np.testing.assert_allclose(tta.alpha(rgb[:, ::-1].copy()), both[:, ::-1], atol=1e-6)
    cv2.imwrite(str(tmp_path / "p.png"), bgr)
    result = runner.invoke(app, ["cut", str(tmp_path / "p.png"), "-o", str(tmp_path / "o"), "--mask", "--tta",
                                 "--model", str(tiny_tflite)])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "o" / "p.png")), tta.mask(tmp_path / "p.png"))

def test_threshold_gives_a_hard_mask(tmp_path: Path, tiny_tflite: Path):
    write_photo(tmp_path / "p.png")
    result = runner.invoke(app, ["cut", str(tmp_path / "p.png"), "-o", str(tmp_path / "o"), "--threshold", "0.5",
                                 "--model", str(tiny_tflite)])
    assert result.exit_code == 0
    assert set(np.unique(np.asarray(Image.open(tmp_path / "o" / "p.png"))[..., 3])) <= {0, 255}


def test_exif_rotated_photo_gives_rotated_cutout(tmp_path: Path, tiny_tflite: Path):
    bgr, _ = synthetic_pair(3, 64, 40)  # stored 64 wide, 40 high
    img = Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img.save(tmp_path / "r.jpg", exif=exif)
    result = runner.invoke(app, ["cut", str(tmp_path / "r.jpg"), "-o", str(tmp_path / "o"), "--model", str(tiny_tflite)])
    assert result.exit_code == 0
    assert Image.open(tmp_path / "o" / "r.png").size == (40, 64)


def test_folder_tree_is_mirrored_and_reruns_skip(tmp_path: Path, tiny_tflite: Path):
    src = tmp_path / "photos"
    write_photo(src / "a.jpg", 1)
    write_photo(src / "trip" / "day1" / "b.png", 2)
    write_photo(src / "trip" / "c.webp", 3)
    (src / "notes.txt").write_text("not a photo")
    args = ["cut", str(src), "-o", str(tmp_path / "out"), "--model", str(tiny_tflite)]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png")) == [
        "a.png", "trip/c.png", "trip/day1/b.png"]
    stamp = (tmp_path / "out" / "a.png").stat().st_mtime_ns
    second = runner.invoke(app, args)
    assert "0 written, 3 skipped, 0 failed" in second.output
    assert (tmp_path / "out" / "a.png").stat().st_mtime_ns == stamp
    third = runner.invoke(app, [*args, "--overwrite"])
    assert "3 written, 0 skipped" in third.output


def test_colliding_names_never_overwrite_each_other(tmp_path: Path, tiny_tflite: Path):
    write_photo(tmp_path / "in" / "a.jpg", 1)
    write_photo(tmp_path / "in" / "a.png", 2)
    write_photo(tmp_path / "in" / "b.png", 3)
    result = runner.invoke(app, ["cut", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", str(tiny_tflite)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_jpg.png", "a_png.png", "b.png"]


def test_without_output_folder_cutouts_go_beside_inputs(tmp_path: Path, tiny_tflite: Path):
    rgb = write_photo(tmp_path / "x.png")
    before = (tmp_path / "x.png").read_bytes()
    result = runner.invoke(app, ["cut", str(tmp_path / "x.png"), "--model", str(tiny_tflite)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "x.png").read_bytes() == before
    check_cutout(tmp_path / "x.cutout.png", rgb)
    # A rerun on the folder does not cut the cutouts.
    again = runner.invoke(app, ["cut", str(tmp_path), "--model", str(tiny_tflite)])
    assert "0 written, 1 skipped" in again.output
    assert not (tmp_path / "x.cutout.cutout.png").exists()


def test_output_equal_to_input_is_refused(tmp_path: Path, tiny_tflite: Path):
    write_photo(tmp_path / "same.png")
    before = (tmp_path / "same.png").read_bytes()
    result = runner.invoke(app, ["cut", str(tmp_path / "same.png"), "-o", str(tmp_path), "--model", str(tiny_tflite)])
    assert result.exit_code == 1
    assert "would overwrite an input" in result.output
    assert (tmp_path / "same.png").read_bytes() == before


def test_bad_files_fail_alone_and_set_the_exit_code(tmp_path: Path, tiny_tflite: Path):
    write_photo(tmp_path / "in" / "good.jpg")
    (tmp_path / "in" / "text.jpg").write_text("hello")
    (tmp_path / "in" / "empty.png").write_bytes(b"")
    result = runner.invoke(app, ["cut", str(tmp_path / "in"), str(tmp_path / "missing.jpg"), "-o",
                                 str(tmp_path / "out"), "--model", str(tiny_tflite)])
    assert result.exit_code == 1
    assert "text.jpg: not an image" in result.output
    assert "empty.png: empty file" in result.output
    assert "missing.jpg: no such file or folder" in result.output
    assert "1 written, 0 skipped, 3 failed" in result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.png"]


def test_glob_patterns_and_plan(tmp_path: Path):
    for name in ["a.jpg", "b.jpg", "c.png"]:
        write_photo(tmp_path / name)
    jobs = plan([str(tmp_path / "*.jpg")], tmp_path / "out").jobs
    assert [j.dst.name for j in jobs] == ["a.png", "b.png"]
    assert not any(j.from_folder for j in jobs)


def test_bad_model_is_one_line(tmp_path: Path):
    write_photo(tmp_path / "p.png")
    (tmp_path / "m.tflite").write_bytes(b"garbage")
    result = runner.invoke(app, ["cut", str(tmp_path / "p.png"), "--model", str(tmp_path / "m.tflite")])
    assert result.exit_code == 2
    assert "not a valid LiteRT model" in result.output and "Traceback" not in result.output


def test_python_api_accepts_paths_pil_and_numpy(tmp_path: Path, tiny_tflite: Path):
    rgb = write_photo(tmp_path / "p.png")
    remover = Remover(tiny_tflite)
    from_path = remover.cut(tmp_path / "p.png")
    from_pil = remover.cut(Image.open(tmp_path / "p.png"))
    from_numpy = remover.cut(rgb)
    assert isinstance(from_path, Image.Image) and from_path.mode == "RGBA"
    assert isinstance(from_numpy, np.ndarray) and from_numpy.shape == (*rgb.shape[:2], 4)
    np.testing.assert_array_equal(np.asarray(from_path), from_numpy)
    np.testing.assert_array_equal(np.asarray(from_pil), from_numpy)
    np.testing.assert_array_equal(remover.mask(rgb), from_numpy[..., 3])


def test_input_transparency_is_kept(tmp_path: Path, tiny_tflite: Path):
    rgb = write_photo(tmp_path / "p.png")
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    rgba[:, : rgb.shape[1] // 2, 3] = 0  # left half already transparent
    out = Remover(tiny_tflite).cut(rgba)
    assert (out[:, : rgb.shape[1] // 2, 3] == 0).all()


@pytest.mark.skipif(not default_model_path().is_file(), reason="no shipped model in weights/")
def test_installed_package_cuts_with_its_shipped_model(tmp_path: Path):
    """From an unrelated folder, with no --model: the package's own weights are found."""
    example = next((ROOT / "examples").glob("*.jpg"), None)
    if example is None:
        pytest.skip("no example photos")
    shutil.copy(example, tmp_path / "photo.jpg")
    exe = shutil.which("bgremove", path=os.path.dirname(sys.executable)) or shutil.which("bgremove")
    proc = subprocess.run([exe, "cut", "photo.jpg", "-o", "out"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "XNNPACK" not in proc.stderr  # LiteRT's start-up note is not the user's business
    rgb = np.asarray(Image.open(example).convert("RGB"))
    rgba = check_cutout(tmp_path / "out" / "photo.png", rgb)
    # A real person photo: a real share of the frame is kept, and a real share removed.
    coverage = (rgba[..., 3] > 127).mean()
    assert 0.05 < coverage < 0.95


def test_amx_is_read_from_the_cpu_flags(tmp_path: Path):
    from bgremove.runtime import cpu_has_amx

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512_vnni amx_bf16 amx_tile amx_int8\n\nprocessor\t: 1\n")
    assert cpu_has_amx.__wrapped__(info)
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512_vnni amx_tile\n")  # tiles, but no int8
    assert not cpu_has_amx.__wrapped__(info)
    assert not cpu_has_amx.__wrapped__(tmp_path / "missing")  # macOS, Windows


# Run in a fresh process each: XNNPACK decides about AMX once per process, and a test process that had
# asked for the tiles (a plain interpreter does) would keep them.
_AMX_PROBE = """
import ctypes, sys
import numpy as np
if sys.argv[1] == "bgremove":
    from bgremove.runtime import ModelError, load_runtime
    if sys.argv[3:] == ["after-a-bad-model"]:  # a model that fails to load must not use up the set-up
        import tempfile
        with tempfile.NamedTemporaryFile(suffix=".tflite") as bad:
            bad.write(b"TFL3 not really a model")
            bad.flush()
            try:
                load_runtime(bad.name)
            except ModelError:
                pass
    runtime = load_runtime(threads=int(sys.argv[2]))
    runtime.predict(np.zeros((1, *runtime.size, 3), np.float32))
else:
    from ai_edge_litert.interpreter import Interpreter
    from bgremove.paths import default_model_path
    interpreter = Interpreter(model_path=str(default_model_path()), num_threads=1)
    runner = interpreter.get_signature_runner(next(iter(interpreter.get_signature_list())))
    shape = next(iter(runner.get_input_details().values()))["shape"]
    runner(image=np.zeros(shape, np.float32))
permitted = ctypes.c_uint64()
ctypes.CDLL(None).syscall(158, 0x1022, ctypes.byref(permitted))  # arch_prctl(ARCH_GET_XCOMP_PERM)
print(bool(permitted.value >> 18 & 1))  # XFEATURE_XTILEDATA: the AMX tiles
"""


def test_the_int8_model_runs_without_amx_tiles():
    """XNNPACK pads this model's narrow int8 layers to AMX tiles 64 channels wide and runs them slower than
    without (see runtime.xnnpack_without_amx): bgremove's interpreters must not get the tiles, a plain one
    (the control: this CPU and kernel would give them) does."""
    from bgremove.runtime import cpu_has_amx

    if not cpu_has_amx():
        pytest.skip("this CPU has no AMX int8 tiles")

    def tiles(*args: str) -> bool:
        out = subprocess.run([sys.executable, "-c", _AMX_PROBE, *args], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.split()[-1] == "True"

    assert tiles("plain")
    assert not tiles("bgremove", "1")
    assert not tiles("bgremove", "2")  # XNNPACK's own threads too
    assert not tiles("bgremove", "1", "after-a-bad-model")


_STACK_PROBE = """
import ctypes
from bgremove import runtime

libc = ctypes.CDLL(None, use_errno=True)
mine = ctypes.create_string_buffer(64 * 1024)
stack = runtime._SignalStack(ctypes.cast(mine, ctypes.c_void_p), 0, len(mine))
assert libc.sigaltstack(ctypes.byref(stack), None) == 0
inside, after, again = runtime._SignalStack(), runtime._SignalStack(), runtime._SignalStack()
with runtime.xnnpack_without_amx():
    libc.sigaltstack(None, ctypes.byref(inside))
libc.sigaltstack(None, ctypes.byref(after))
with runtime.xnnpack_without_amx():  # once an interpreter could be made in it, no more lending
    libc.sigaltstack(None, ctypes.byref(again))
print(inside.ss_sp == stack.ss_sp, inside.ss_size, after.ss_sp == stack.ss_sp, after.ss_size, after.ss_flags,
      again.ss_sp == stack.ss_sp)
"""


def test_the_signal_stack_is_given_back():
    """xnnpack_without_amx lends the thread a smaller alternate signal stack only while the first
    interpreter is made: afterwards the thread has exactly the one it had (here: one of its own, as
    faulthandler sets). In a fresh process: one that already holds the AMX tiles (TensorFlow asks for
    them) takes no stack that small, and keeps them."""
    from bgremove.runtime import cpu_has_amx

    if not cpu_has_amx():
        pytest.skip("this CPU has no AMX int8 tiles: nothing is lent")
    out = subprocess.run([sys.executable, "-c", _STACK_PROBE], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    lent_same, lent_size, after_same, after_size, after_flags, again_same = out.stdout.split()
    assert lent_same == "False" and 4096 < int(lent_size) < 64 * 1024  # lent while inside
    assert (after_same, after_size, after_flags) == ("True", str(64 * 1024), "0")  # its own stack, back
    assert again_same == "True"


def test_the_shipped_int8_model_is_the_shipped_keras_model():
    """bgremove.tflite must be re-exported whenever bgremove.keras changes. Where the model is sure (alpha
    below 0.1 or above 0.9) the two keep and drop the same pixels; where it is unsure (the cameraman's
    dark coat on dark grass) int8 rounding may tip a pixel either way; an old export would differ far more."""
    pytest.importorskip("tensorflow")
    for example in sorted((ROOT / "examples").glob("*.jpg")):
        int8 = Remover(weights_dir() / DEFAULT_MODEL_NAME).alpha(example)
        f32 = Remover(weights_dir() / "bgremove.keras").alpha(example)
        sure = (int8 < 0.1) | (int8 > 0.9)
        assert sure.mean() > 0.85 and ((int8[sure] > 0.5) == (f32[sure] > 0.5)).mean() > 0.999, example.name
        assert np.abs(int8 - f32).mean() < 0.03, example.name
        both, either = ((int8 > 0.5) & (f32 > 0.5)).sum(), ((int8 > 0.5) | (f32 > 0.5)).sum()
        assert both / either > 0.9, example.name
