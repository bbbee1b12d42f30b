#!/usr/bin/env python
"""Soak check of ``bgremove cut``: one process over 1,000 mixed photos, 5 % of them bad, and its memory.

What it does

a. Builds ``--count`` (default 1000) photos in one folder: real photos from shared/data/people/images
   spread over the set (synthetic figures on noise when the data is not there, or with ``--synthetic``),
   resized so the longest side cycles through 64 to 1600 pixels, and written in a cycle of the formats
   people have: JPEG, PNG, WebP, TIFF, BMP, grayscale JPEG, RGBA and LA PNG, palette PNG with
   transparency, 16-bit gray and RGB PNG, CMYK JPEG (Adobe, inverted), EXIF-rotated JPEG, 2-frame GIF,
   a 1x1 photo and a 2000x4 strip. Every ``--bad-every``-th file (default 20: 5 %) is bad instead, in a
   cycle of kinds: empty, truncated JPEG, truncated PNG, header-only JPEG, text named .jpg, a PNG header
   declaring 50,000 x 50,000 pixels, PNG signature followed by noise, broken symbolic link.
b. Runs ONE ``bgremove cut DIR -o OUT`` subprocess over it, and another over the first quarter
   (``--small``, default 250, same mix: hard links to the same files), each to a fresh output folder.
c. Checks, for each run: the exit status is 1 (something failed); every good photo has its cutout, which
   decodes to the end with the photo's displayed size (EXIF applied) and RGBA; no other file and no
   temporary file is in OUT; every bad file is named in exactly one ``failed:`` line with a reason; the
   summary line reads "G written, 0 skipped, B failed"; each GIF's line carries the "frames" note.
d. Memory: peak RSS (the child's VmHWM, polled) of both runs, compared against the limit
   speed.py uses, max(10 %, 20 MB). A peak is a maximum, though: a 4x longer run meets more unlucky moments
   (several big photos in flight at once) and includes the allocator's warm-up, so the verdict "flat" is
   taken inside the 1000-photo run, from its RSS read every 0.1 s (/proc, Linux): the peak of its second
   half must be within max(10 %, 20 MB) of the peak of its first half. Memory that grows per photo fails it.

Prints a table per run, the bad files by kind with the reason given, and exits 1 when a check fails.

Examples
    python benchmarks/soak.py                                  # the full check (a few minutes on 2 cores)
    python benchmarks/soak.py --count 200 --small 50 --model /tmp/m.tflite   # a quick one
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import bgremove_command, load_average, machine, model_or_exit, text_table, proc_memory  # noqa: E402
from bgremove.paths import find_shared  # noqa: E402

MB = 1_000_000
SAMPLE_S = 0.1  # how often the child's VmRSS is read
SIDES = (64, 320, 480, 640, 800, 1024, 1600)  # longest side, in a cycle of 7
GOOD_KINDS = ("jpeg", "png", "webp", "tiff", "bmp", "gray-jpeg", "rgba-png", "la-png", "palette-png", "gray16-png",
              "rgb16-png", "cmyk-jpeg", "exif-jpeg", "gif-2frames", "jpeg", "png", "1x1", "strip")  # 18: coprime to 7
BAD_KINDS = {  # kind -> what the failure line must say
    "empty": "empty file (0 bytes)",
    "truncated-jpeg": "truncated or corrupt image",
    "truncated-png": "truncated or corrupt image",
    "header-only-jpeg": "truncated or corrupt image",
    "text-as-jpeg": "not an image",
    "huge-header-png": "50000x50000 pixels is above the limit",
    "png-noise": "",  # any reason
    "broken-link": "broken symbolic link",
}


@dataclass
class Item:
    path: Path
    kind: str
    size: tuple[int, int] | None  # (w, h) of the cutout; None for a bad file


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Soak check of `bgremove cut`: 1000 mixed photos, 5 % bad, one process.",
                                epilog="See the module docstring (or benchmarks/README.md).")
    p.add_argument("--model", type=Path, default=None, help="model (default: the shipped weights/bgremove.tflite)")
    p.add_argument("--count", type=int, default=1000, help="photos in the big run (default 1000)")
    p.add_argument("--small", type=int, default=250, help="photos in the comparison run: the first N (default 250)")
    p.add_argument("--bad-every", type=int, default=20, help="every Nth file is bad (default 20: 5 %%)")
    p.add_argument("--workers", type=int, default=2, help="as `bgremove cut --workers` (default 2)")
    p.add_argument("--synthetic", action="store_true", help="synthetic photos even when shared/data/people is there")
    p.add_argument("--workdir", type=Path, default=None, help="where to build (default: a temporary folder, removed)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = p.parse_args(argv)
    if not (4 <= args.small <= args.count) or args.bad_every < 2 or args.workers < 1:
        p.error("need 4 <= --small <= --count, --bad-every >= 2, --workers >= 1")
    return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ (a) photos


def synthetic(seed: int, width: int = 640, height: int = 480) -> np.ndarray:
    """A warm figure (ellipse and head) on a cool noisy background, RGB."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 90, (height, width, 3), dtype=np.uint8)
    rgb[..., 2] = np.clip(rgb[..., 2].astype(int) + 120, 0, 255)
    mask = np.zeros((height, width), np.uint8)
    cx = int(rng.integers(width // 3, 2 * width // 3))
    cv2.ellipse(mask, (cx, int(height * 0.7)), (width // 5, height // 3), 0, 0, 360, 255, -1)
    cv2.circle(mask, (cx, int(height * 0.3)), max(3, width // 9), 255, -1)
    rgb[mask > 0] = (210, 140, 70)
    return rgb


def sources(use_synthetic: bool) -> list[Path] | None:
    images = None if use_synthetic else find_shared("data/people/images")
    return sorted(images.glob("*.jpg")) if images is not None else None


def source_rgb(photos: list[Path] | None, i: int, count: int) -> np.ndarray:
    if photos is None:
        return synthetic(i)
    with Image.open(photos[int(i * len(photos) / count) % len(photos)]) as im:
        return np.asarray(im.convert("RGB"))


def fit(rgb: np.ndarray, side: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def write_good(folder: Path, i: int, kind: str, rgb: np.ndarray) -> Item:
    """One photo of ``kind``; returns it with the size its cutout must have."""
    h, w = rgb.shape[:2]
    im = Image.fromarray(rgb)
    gray = np.asarray(im.convert("L"))
    stem = f"{i:04d}_{kind}"
    ext = {"png": "png", "webp": "webp", "tiff": "tif", "bmp": "bmp", "rgba-png": "png", "la-png": "png",
           "palette-png": "png", "gray16-png": "png", "rgb16-png": "png", "gif-2frames": "gif", "1x1": "png",
           "strip": "png"}.get(kind, "jpg")
    path = folder / f"{stem}.{ext}"
    size = (w, h)
    if kind in ("jpeg", "png", "webp", "tiff", "bmp"):
        im.save(path, **({"quality": 90} if kind in ("jpeg", "webp") else {}))
    elif kind == "gray-jpeg":
        Image.fromarray(gray, "L").save(path, quality=90)
    elif kind == "rgba-png":
        alpha = np.tile(np.linspace(0, 255, w).astype(np.uint8), (h, 1))
        Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(path)
    elif kind == "la-png":
        alpha = np.tile(np.linspace(255, 0, h).astype(np.uint8)[:, None], (1, w))
        Image.fromarray(np.dstack([gray, alpha]), "LA").save(path)
    elif kind == "palette-png":
        im.quantize(64).save(path, transparency=0)
    elif kind == "gray16-png":
        Image.fromarray(gray.astype(np.uint16) * 257).save(path)
    elif kind == "rgb16-png":
        cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257)
    elif kind == "cmyk-jpeg":
        im.convert("CMYK").save(path, quality=90)
    elif kind == "exif-jpeg":
        exif = im.getexif()
        exif[0x0112] = 6  # shown rotated 90 degrees clockwise
        im.save(path, exif=exif, quality=90)
        size = (h, w)
    elif kind == "gif-2frames":
        im.save(path, save_all=True, append_images=[Image.fromarray(255 - rgb)], duration=100, loop=0)
    elif kind == "1x1":
        Image.fromarray(rgb[:1, :1]).save(path)
        size = (1, 1)
    elif kind == "strip":
        Image.fromarray(cv2.resize(rgb, (2000, 4), interpolation=cv2.INTER_AREA)).save(path)
        size = (2000, 4)
    else:
        raise ValueError(kind)
    return Item(path, kind, size)


def png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return len(data).to_bytes(4, "big") + kind + data + crc.to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b"")


def write_bad(folder: Path, i: int, kind: str, rgb: np.ndarray) -> Item:
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    stem = f"{i:04d}_bad_{kind}"
    path = folder / f"{stem}.{'png' if 'png' in kind else 'jpg'}"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind in ("truncated-jpeg", "header-only-jpeg"):
        data = cv2.imencode(".jpg", bgr)[1].tobytes()
        path.write_bytes(data[: len(data) // 2] if kind == "truncated-jpeg" else data[:40])
    elif kind == "truncated-png":
        data = cv2.imencode(".png", bgr)[1].tobytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "text-as-jpeg":
        path.write_text("This is a text file with a photo's name.\n")
    elif kind == "huge-header-png":
        path.write_bytes(png_header_only(50_000, 50_000))
    elif kind == "png-noise":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + np.random.default_rng(i).bytes(2000))
    elif kind == "broken-link":
        path.symlink_to(f"{stem}-target-that-does-not-exist.jpg")
    else:
        raise ValueError(kind)
    return Item(path, kind, None)


def build(folder: Path, count: int, bad_every: int, photos: list[Path] | None) -> list[Item]:
    folder.mkdir(parents=True)
    items, bad_kinds = [], list(BAD_KINDS)
    t0 = time.perf_counter()
    for i in range(count):
        rgb = fit(source_rgb(photos, i, count), SIDES[i % len(SIDES)])
        if i % bad_every == bad_every // 2:
            items.append(write_bad(folder, i, bad_kinds[(i // bad_every) % len(bad_kinds)], rgb))
        else:
            items.append(write_good(folder, i, GOOD_KINDS[i % len(GOOD_KINDS)], rgb))
        if (i + 1) % 200 == 0:
            log(f"  built {i + 1}/{count} ({time.perf_counter() - t0:.0f} s)")
    return items


def link_first(items: list[Item], folder: Path, n: int) -> list[Item]:
    """The first ``n`` items in a second folder: hard links (the same bytes), links copied as links."""
    folder.mkdir(parents=True)
    out = []
    for item in items[:n]:
        dst = folder / item.path.name
        if item.path.is_symlink():
            dst.symlink_to(os.readlink(item.path))
        else:
            os.link(item.path, dst)
        out.append(Item(dst, item.kind, item.size))
    return out


# ------------------------------------------------------------------------------------------ (b, c) run and check


@dataclass
class RunResult:
    label: str
    items: list[Item]
    status: int
    wall: float
    peak: int
    halves: tuple[int, int] | None  # sampled peak RSS in the first and second half of the run
    problems: list[str]
    written: int
    valid: int
    bad_reported: int
    reasons: dict[str, str]  # bad kind -> first reason seen


def run_cut(cmd: list[str], logs: Path) -> tuple[int, float, int, list[tuple[float, int]], str, str]:
    """Run to the end; (exit status, wall s, peak RSS bytes of that child, (s, RSS) samples, stdout, stderr)."""
    samples: list[tuple[float, int]] = []
    hwm = 0
    with open(logs / "stdout.txt", "wb") as out, open(logs / "stderr.txt", "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # this child's own rusage, once it ends
            if pid:
                break
            hwm = max(hwm, proc_memory(proc.pid) or 0)
            rss = proc_memory(proc.pid, "VmRSS")
            if rss is not None:
                samples.append((time.perf_counter() - t0, rss))
            time.sleep(SAMPLE_S)
        wall = time.perf_counter() - t0
    # Not usage.ru_maxrss: it also counts what the child shared with this process between fork and exec.
    peak = hwm
    return (os.waitstatus_to_exitcode(status), wall, peak, samples, (logs / "stdout.txt").read_text(errors="replace"),
            (logs / "stderr.txt").read_text(errors="replace"))


def halves(samples: list[tuple[float, int]], wall: float) -> tuple[int, int] | None:
    """Peak sampled RSS in the first and the second half of the run (None without samples)."""
    first = [rss for t, rss in samples if t < wall / 2]
    second = [rss for t, rss in samples if t >= wall / 2]
    return (max(first), max(second)) if first and second else None


def check(label: str, items: list[Item], src: Path, out: Path, model: Path, workers: int, logs: Path) -> RunResult:
    cmd = [*bgremove_command(), "cut", str(src), "-o", str(out), "--model", str(model), "--workers", str(workers)]
    log(f"running: {' '.join(cmd)}")
    logs.mkdir(parents=True)
    status, wall, peak, samples, stdout, stderr = run_cut(cmd, logs)
    problems: list[str] = []
    good = [it for it in items if it.size is not None]
    bad = [it for it in items if it.size is None]
    if status != 1:
        problems.append(f"exit status {status}, expected 1")

    failed: dict[str, list[str]] = {}  # "failed: PATH: REASON" (our paths hold no ": ")
    for line in stderr.splitlines():
        if line.startswith("failed: ") and ": " in line[8:]:
            name, reason = line[8:].split(": ", 1)
            failed.setdefault(name, []).append(reason)
    reasons: dict[str, str] = {}
    reported = 0
    for it in bad:
        lines = failed.pop(str(it.path), [])
        expected = BAD_KINDS[it.kind]
        if len(lines) == 1 and expected in lines[0]:
            reported += 1
            reasons.setdefault(it.kind, lines[0])
        else:
            problems.append(f"{it.path.name}: reported {lines!r}, expected one line with {expected!r}")
    for name, lines in failed.items():
        problems.append(f"{name}: a good photo failed: {lines}")

    valid = 0
    expected_outputs = {it.path.stem + ".png" for it in good}
    present = {p.name for p in out.iterdir()} if out.is_dir() else set()
    for extra in sorted(present - expected_outputs):
        problems.append(f"unexpected file in the output: {extra}")
    for it in good:
        png = out / (it.path.stem + ".png")
        try:
            with Image.open(png) as im:
                im.load()
                if im.size != it.size or im.mode != "RGBA":
                    raise ValueError(f"{im.size} {im.mode}, expected {it.size} RGBA")
            valid += 1
        except Exception as exc:  # noqa: BLE001 - every kind of invalid output is a finding
            problems.append(f"{png.name}: {type(exc).__name__}: {exc}")
    written = len(present & expected_outputs)
    summary = f"{len(good)} written, 0 skipped, {len(bad)} failed"
    if summary not in stderr + stdout:
        problems.append(f"summary line {summary!r} not found")
    written_lines = {line[9:].split(" -> ", 1)[0]: line for line in stdout.splitlines() if line.startswith("written: ")}
    gifs = [it for it in good if it.kind == "gif-2frames"]
    noted = sum(1 for it in gifs if "(2 frames: used the first)" in written_lines.get(str(it.path), ""))
    if noted != len(gifs):
        problems.append(f"the frames note is missing for {len(gifs) - noted} of {len(gifs)} GIFs")
    if "Traceback" in stderr:
        problems.append("a traceback was printed")
    return RunResult(label, items, status, wall, peak, halves(samples, wall), problems, written, valid, reported,
                     reasons)


# ------------------------------------------------------------------------------------------ main


def main(argv=None) -> int:
    args = parse_args(argv)
    model = model_or_exit(args.model)
    photos = sources(args.synthetic)
    log(f"machine: {machine()}")
    load_start = load_average()
    log(f"load average at start: {load_start}")
    log(f"photos: {'shared/data/people/images (' + str(len(photos)) + ' files)' if photos else 'synthetic'}; "
        f"model: {model}")
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bgremove-soak-"))
    try:
        if args.workdir and root.exists():
            shutil.rmtree(root)
        log(f"building {args.count} files in {root / 'big'} ...")
        items = build(root / "big", args.count, args.bad_every, photos)
        small = link_first(items, root / "small", args.small)
        runs = [
            check(f"{args.small}", small, root / "small", root / "out_small", model, args.workers, root / "logs_small"),
            check(f"{args.count}", items, root / "big", root / "out_big", model, args.workers, root / "logs_big"),
        ]
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
        elif args.keep:
            log(f"kept {root}")
    load_end = load_average()

    rows = []
    for r in runs:
        good = sum(1 for it in r.items if it.size is not None)
        bad = len(r.items) - good
        rows.append([r.label, str(good), str(bad), f"{r.written}/{good}", f"{r.valid}/{good}",
                     f"{r.bad_reported}/{bad}", str(r.status), f"{r.wall:.1f}", f"{len(r.items) / r.wall:.1f}",
                     f"{r.peak / MB:.0f}"])
    print()
    print(text_table(["photos", "good", "bad", "written", "valid", "bad reported", "exit", "wall s", "files/s",
                      "peak RSS MB"], rows))
    small_peak, big_peak = runs[0].peak, runs[1].peak
    growth = big_peak - small_peak
    allowed = max(0.10 * small_peak, 20 * MB)
    print(f"\npeak RSS: {big_peak / MB:.0f} MB over {args.count} photos vs {small_peak / MB:.0f} MB over {args.small}: "
          f"{growth / MB:+.0f} MB ({growth / small_peak:+.1%}); "
          f"{'within' if growth <= allowed else 'above'} max(10 %, 20 MB) = {allowed / MB:.0f} MB")
    flat = growth <= allowed
    if runs[1].halves is not None:
        # A peak is a maximum: a longer run meets more unlucky moments (several big photos in flight at once)
        # and the allocator's warm-up. Growth with the number of photos shows as a later peak above an earlier one.
        first, second = runs[1].halves
        within = second - first
        allowed_within = max(0.10 * first, 20 * MB)
        flat = within <= allowed_within
        print(f"within the {args.count}-photo run (RSS read every {SAMPLE_S} s): peak {first / MB:.0f} MB in the first "
              f"half, {second / MB:.0f} MB in the second: {within / MB:+.0f} MB ({within / first:+.1%}); "
              f"allowed max(10 %, 20 MB) = {allowed_within / MB:.0f} MB")
    print(f"memory: {'flat' if flat else 'GROWS with the number of photos'}")
    print("\nbad files by kind (the reason bgremove gave, first of each kind):")
    big = runs[1]
    kinds = []
    for kind in BAD_KINDS:
        n = sum(1 for it in big.items if it.size is None and it.kind == kind)
        kinds.append([kind, str(n), big.reasons.get(kind, "(not reported as expected)") if n else "-"])
    print(text_table(["kind", "files", "reason"], kinds, right={1}))
    print(f"\nload average (1, 5, 15 min) at start: {load_start}; at end: {load_end}")
    problems = [f"[{r.label}] {p}" for r in runs for p in r.problems]
    if not flat:
        problems.append("peak memory grows with the number of photos")
    if problems:
        print(f"\nFAILED: {len(problems)} problem(s):")
        for p in problems[:40]:
            print(f"  {p}")
        return 1
    print("\nall checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
