#!/usr/bin/env python
"""Speed and memory of ``bgremove cut`` on a CPU, against its targets, measured in one run on the same photos.

What it measures (every figure on the same machine, in the same run, on the same files)

a. Benchmark folder: ``--count`` (default 200) real photos from shared/data/people/images, spread over the
   whole set (portraits 600x800, video frames 854x480, varied web photos), plus ``--big`` (default 3)
   12-megapixel photos (4000x3000, bicubic upscales of 640x480 photos, JPEG quality 92). All are copies.
b. I/O floor: what any tool must spend on these files without a model -- decode each photo with Pillow
   (load + EXIF transpose, as bgremove.images.open_photo does), make an opaque RGBA image of it, encode it
   with cv2.imencode as PNG with the pipeline's settings (bgremove.images.png_params: the Up filter, at
   the compression level ``--png-compression``, default 1), write
   the file; in a ThreadPoolExecutor with as many workers as ``bgremove cut --workers`` (``--workers``,
   default 2). Measured in this (warm) Python process; files are read once beforehand so the page cache is
   equally warm for (b) and (c). Reported as images/s. (b) and (c) alternate ``--rounds`` times (default 3):
   each round's ratio compares runs seconds apart, and the median ratio is the figure (one pair of runs
   can be off by 0.05 on a shared machine).
c. Batch: ``bgremove cut DIR -o OUT`` as a subprocess on the same folder, fresh output folder; the wall time
   of the whole process (start-up and model load included) -> images/s, and its ratio to the floor.
   Target: >= 0.8 x floor (the model and the alpha work should hide behind decoding and encoding).
   Note: a cutout's fully transparent pixels are written as colour 0, which encodes a little faster than
   the floor's opaque image, so the ratio is not capped at 1.
d. Cold start: wall time of the whole process ``bgremove cut photo.jpg -o OUT`` for one 600x800 photo
   (target <= 0.6 s) and one 12 MP photo (median of 3 each; one untimed run first, so the disk cache is warm
   but every timed run is a new process), and of ``bgremove --help`` (median of 5; target <= 0.3 s).
e. Peak memory: the maximum resident set size of the ``bgremove`` process (its kernel high-water mark,
   VmHWM, polled every 20 ms; not ru_maxrss, which also counts what the child shared with this process
   between fork and exec) of ``bgremove cut`` over ``--mem-count`` (default 1000) 854x480 photos -- copies of the davis16
   frames under distinct names -- and over a quarter as many. Target: <= 400 MB (10^6 bytes) and flat:
   the peak must not grow with the number of photos (allowed: max(10 %, 20 MB)).
f. Model time: our model alone through LiteRT (bgremove.runtime.load_runtime(path).predict on a 1-image
   batch at the model's input size), median of 50 calls after 5 warm-up calls; target <= 15 ms; and the
   same on one thread (the model's CPU time per photo, which a batch pays; steadier on a shared machine). For
   comparison, on the same 600x800 photo (median of 20 after one warm-up): our whole alpha
   (Remover.predict_alphas: resize in, model, resize out) and every peer of shared/peers
   (``PEERS[name](rgb)``, which also resizes in and out). Peers get the same thread count as our model
   (PEERS_NUM_THREADS).

g. CPU per photo: in this process, photo by photo over the batch folder, the CPU time of each step of
   cut's work on a photo (decode, model input, model with the closer look, alpha at the photo's size,
   render, PNG encode; the model on one thread, as in a batch) and of the floor's (decode, opaque RGBA,
   PNG encode). With the batch ratio of (c), the model cost at which the batch would reach 0.8 x floor:
   both cores are busy throughout a batch, so its wall time follows the CPU it spends per photo.

The cores busy with other work (over 1 s, at the start) and the load average are printed: figures taken
while other work runs on the machine are not the ones to record.

Examples
    python benchmarks/speed.py                                   # the full measurement (several minutes)
    python benchmarks/speed.py --model /tmp/m.tflite --count 20 --mem-count 40 --big 1   # a quick check
    python benchmarks/speed.py --workdir /tmp/bench --skip-peers --skip-memory
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    bgremove_command, busy_cores, choose_peers, load_average, load_peers, machine, model_or_exit, need_shared, text_table, proc_memory,
)
from bgremove.paths import find_shared  # noqa: E402

BIG_SIZE = (4000, 3000)  # width, height: 12 megapixels
MB = 1_000_000

TARGETS = {
    "batch_ratio": 0.8,  # x floor, at least
    "cold_small_s": 0.6,
    "help_s": 0.3,
    "peak_mb": 400.0,
    "model_ms": 15.0,
}


class BenchError(Exception):
    pass


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Speed and memory of `bgremove cut` on this CPU against its targets (one run, same photos).",
        epilog="See the module docstring (or benchmarks/README.md) for how each figure is measured.",
    )
    p.add_argument("--model", type=Path, default=None, help="model to measure (default: the shipped weights/bgremove.tflite)")
    p.add_argument("--count", type=int, default=200, help="real photos in the batch folder (default 200; the target is for >= 200)")
    p.add_argument("--big", type=int, default=3, help="12-megapixel photos added to the batch folder (default 3)")
    p.add_argument("--mem-count", type=int, default=1000, help="854x480 photos for the peak-memory run (default 1000)")
    p.add_argument("--workers", type=int, default=2, help="decode/encode threads, as `bgremove cut --workers` (default 2)")
    p.add_argument("--png-compression", type=int, default=1, help="PNG level, as `bgremove cut --png-compression` (default 1)")
    p.add_argument("--no-zoom", action="store_true",
                   help="measure `bgremove cut --no-zoom` (one model pass per photo, no closer look at small people)")
    p.add_argument("--threads", type=int, default=None, help="model threads, as `bgremove cut --threads` (default: cut's own: 1 per worker for a batch, all cores for one photo)")
    p.add_argument("--rounds", type=int, default=3,
                   help="floor and batch runs, alternating; the ratio is the median of the rounds' (default 3)")
    p.add_argument("--workdir", type=Path, default=None, help="where to build the folders (default: a temporary folder, removed at the end)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    p.add_argument("--skip-memory", action="store_true", help="skip the peak-memory runs (e)")
    p.add_argument("--skip-peers", action="store_true", help="skip the peer model timings in (f)")
    p.add_argument("--peers", default="all", help="comma-separated peers to time (default: all)")
    args = p.parse_args(argv)
    if args.count < 1 or args.big < 0 or args.mem_count < 4 or args.workers < 1 or args.rounds < 1:
        p.error("need --count >= 1, --big >= 0, --mem-count >= 4, --workers >= 1, --rounds >= 1")
    return args


# ------------------------------------------------------------------------------------------ helpers


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def median(values: list[float]) -> float:
    return statistics.median(values)


def fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def run_process(cmd: list[str], log_path: Path) -> tuple[float, int]:
    """Run ``cmd`` to the end; (wall seconds, peak RSS in bytes of that child). Output goes to ``log_path``."""
    with open(log_path, "ab") as fh:
        fh.write(("$ " + " ".join(cmd) + "\n").encode())
        fh.flush()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT)
        # The child's ru_maxrss counts the memory it shared with this (large) process between fork and
        # exec, so read the kernel's high-water mark of the exec'd program itself while it runs.
        hwm = 0
        while proc.poll() is None:
            hwm = max(hwm, proc_memory(proc.pid) or 0)
            time.sleep(0.02)
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
        raise BenchError(f"`{' '.join(cmd)}` exited with status {proc.returncode}:\n  " + "\n  ".join(tail))
    return wall, hwm



def count_outputs(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*.png"))


# ------------------------------------------------------------------------------------------ (a) folders


def manifest_rows(data: Path) -> list[dict]:
    with open(data / "manifest.csv", newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if (data / "images" / f"{r['stem']}.jpg").is_file()]
    if not rows:
        raise BenchError(f"{data}: no photos listed in manifest.csv")
    return rows


def spread(rows: list[dict], n: int) -> list[dict]:
    """``n`` rows spread over the whole list (cycling when n is larger than the list)."""
    if n <= len(rows):
        step = len(rows) / n
        return [rows[int(i * step)] for i in range(n)]
    return [rows[i % len(rows)] for i in range(n)]


def build_batch(data: Path, rows: list[dict], folder: Path, count: int, big: int) -> tuple[list[Path], Path, Path | None]:
    """Copies of ``count`` photos plus ``big`` 12 MP upscales; returns (files, a 600x800 photo, a 12 MP photo)."""
    import cv2

    fresh(folder)
    files = []
    for i, row in enumerate(spread(rows, count)):
        name = f"{row['stem']}.jpg" if count <= len(rows) else f"{i:05d}_{row['stem']}.jpg"
        shutil.copyfile(data / "images" / f"{row['stem']}.jpg", folder / name)
        files.append(folder / name)
    landscape = [r for r in rows if (r["width"], r["height"]) == ("640", "480")] or rows
    big_files = []
    for i, row in enumerate(spread(landscape, big) if big else []):
        bgr = cv2.imread(str(data / "images" / f"{row['stem']}.jpg"), cv2.IMREAD_COLOR)
        up = cv2.resize(bgr, BIG_SIZE, interpolation=cv2.INTER_CUBIC)
        path = folder / f"big12mp_{i}_{row['stem']}.jpg"
        if not cv2.imwrite(str(path), up, [cv2.IMWRITE_JPEG_QUALITY, 92]):
            raise BenchError(f"cannot write {path}")
        big_files.append(path)
    portraits = [r for r in rows if (r["width"], r["height"]) == ("600", "800")]
    if not portraits:
        raise BenchError(f"{data}: no 600x800 photo for the cold-start test")
    small = folder.parent / f"cold_{portraits[0]['stem']}.jpg"
    shutil.copyfile(data / "images" / f"{portraits[0]['stem']}.jpg", small)
    return files + big_files, small, (big_files[0] if big_files else None)


def build_memory_folder(data: Path, rows: list[dict], folder: Path, count: int) -> None:
    frames = [r for r in rows if r["source"] == "davis16" and (r["width"], r["height"]) == ("854", "480")]
    if not frames:
        raise BenchError(f"{data}: no 854x480 davis16 photos for the memory test")
    fresh(folder)
    for i in range(count):
        row = frames[i % len(frames)]
        shutil.copyfile(data / "images" / f"{row['stem']}.jpg", folder / f"{i:05d}_{row['stem']}.jpg")


# ------------------------------------------------------------------------------------------ (b) floor


def floor_photo(src: Path, level: int, lap: Callable[[str], None] = lambda step: None) -> bytes:
    """What the floor does to one photo: decode it as open_photo does, make an opaque BGRA image, encode it
    as PNG with the pipeline's settings. ``lap(step)`` is called at the end of each step (see Laps)."""
    import cv2
    import numpy as np
    from PIL import Image, ImageOps

    from bgremove.images import png_params

    with open(src, "rb") as fh, Image.open(fh) as im:
        im.load()
        im = ImageOps.exif_transpose(im)
        rgb = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
    lap("decode")
    bgra = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA)  # the cheapest opaque BGRA: one pass, alpha 255
    lap("opaque RGBA")
    ok, buf = cv2.imencode(".png", bgra, png_params(level))  # the pipeline's own encoder settings
    if not ok:
        raise BenchError(f"cannot encode {src}")
    lap("PNG encode")
    return buf.tobytes()


def io_floor(files: list[Path], out: Path, workers: int, level: int) -> float:
    """Seconds to decode every file and write an opaque RGBA PNG of it, ``workers`` threads, no model."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    fresh(out)

    def one(src: Path) -> None:
        (out / (src.stem + ".png")).write_bytes(floor_photo(src, level))

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, files))
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------ (f) model


def model_times(model: Path, photo: Path, threads: int | None, zoom: bool = True) -> tuple[float, float, tuple[int, int]]:
    """(LiteRT call ms at the model's shape for the photo, median of 50; whole alpha ms at the photo size,
    median of 20; that shape)."""
    from bgremove.images import open_photo
    from bgremove.pipeline import Remover, to_model_input

    remover = Remover(model, threads=threads, zoom=zoom)
    runtime = remover.runtime
    photo_ = open_photo(photo)
    shape = runtime.shape_for(*photo_.rgb.shape[:2])
    batch = to_model_input(photo_.rgb, shape)[None]
    for _ in range(5):
        runtime.predict(batch)
    calls = []
    for _ in range(50):
        t0 = time.perf_counter()
        runtime.predict(batch)
        calls.append(time.perf_counter() - t0)
    remover.predict_alphas([photo_])
    alphas = []
    for _ in range(20):
        t0 = time.perf_counter()
        remover.predict_alphas([photo_])
        alphas.append(time.perf_counter() - t0)
    return median(calls) * 1000, median(alphas) * 1000, shape


class Laps:
    """CPU seconds of this thread, added up per step: ``lap(step)`` charges the time since the last lap."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self.start()

    def start(self) -> None:
        self.last = time.thread_time()

    def __call__(self, step: str) -> None:
        now = time.thread_time()
        self.totals[step] = self.totals.get(step, 0.0) + now - self.last
        self.last = now


def cpu_per_photo(model: Path, files: list[Path], level: int, zoom: bool) -> tuple[dict[str, float], dict[str, float], int]:
    """(g) Milliseconds of CPU per photo of each step of cut's work on a photo (in bgremove.batch.run's
    order, the model on one thread as in a batch) and of the floor's, photo by photo in turn, so that a
    slow moment of the machine weighs on both; and how many photos took the closer look."""
    import numpy as np

    from bgremove.images import encode, open_photo
    from bgremove.pipeline import Remover

    remover = Remover(model, threads=1, zoom=zoom)
    for shape in remover.runtime.shapes:  # an entry point's first call sets it up: not part of a photo's cost
        remover.runtime.predict(np.zeros((1, *shape, 3), np.float32))
    cut, floor, zoomed = Laps(), Laps(), 0
    for src in files:
        cut.start()
        photo = open_photo(src, remover.max_pixels)
        cut("decode")
        model_input = remover.model_input(photo)
        cut("model input")
        small = remover.predict_small([model_input])[0]
        closer = remover.look_closer([photo], [small])[0]
        cut("model")
        alpha = remover.photo_alpha(photo, small, closer)
        cut("alpha")
        rendered = remover.finish(photo, alpha)
        cut("render")
        encode(rendered.pixels, "png", level)
        cut("PNG encode")
        zoomed += closer is not None
        floor.start()
        floor_photo(src, level, floor)
    n = len(files)
    return ({k: 1000 * v / n for k, v in cut.totals.items()}, {k: 1000 * v / n for k, v in floor.totals.items()},
            zoomed)


def model_budget(cut_ms: dict[str, float], ratio: float, target: float) -> float:
    """The model's CPU per photo at which the batch would reach ``target`` x the floor, given the ratio
    measured with the model's present cost: both cores are busy throughout a batch, so its wall time
    follows the CPU it spends per photo (start-up and the threads' efficiency stay as measured)."""
    total = sum(cut_ms.values())
    return total * ratio / target - (total - cut_ms["model"])


def peer_times(peers_dir: Path, names_spec: str, photo: Path, threads: int) -> dict[str, float]:
    from bgremove.images import open_photo

    module = load_peers(peers_dir, threads)
    rgb = open_photo(photo).rgb
    times = {}
    for name in choose_peers(module, names_spec):
        fn = module.PEERS[name]
        fn(rgb)  # loads the model
        calls = []
        for _ in range(20):
            t0 = time.perf_counter()
            fn(rgb)
            calls.append(time.perf_counter() - t0)
        times[name] = median(calls) * 1000
        log(f"  {name}: {times[name]:.1f} ms")
    return times


# ------------------------------------------------------------------------------------------ main


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("ok" if ok else "MISSED")


def main(argv=None) -> int:
    args = parse_args(argv)
    data = need_shared("data/people", "the labelled photos (shared/data/people)")
    peers_dir = None if args.skip_peers else find_shared("peers")
    model = model_or_exit(args.model).resolve()
    threads = args.threads or os.cpu_count() or 1
    bgremove = bgremove_command()
    temporary = args.workdir is None
    work = Path(tempfile.mkdtemp(prefix="bgremove-speed-")) if temporary else args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    load_start = load_average()
    busy_start = busy_cores()
    started = dt.datetime.now().isoformat(timespec="seconds")
    log(f"machine: {machine()}; load average {load_start}; work folder {work}")
    if args.count < 200:
        log(f"note: --count {args.count} is below 200; the batch figure is only a check, not the target measurement")
    if args.mem_count < 1000:
        log(f"note: --mem-count {args.mem_count} is below 1000; the memory figure is only a check")

    cut_opts = ["--model", str(model), "--workers", str(args.workers), "--png-compression", str(args.png_compression)]
    if args.threads:
        cut_opts += ["--threads", str(args.threads)]
    if args.no_zoom:
        cut_opts.append("--no-zoom")
    rows: list[list[str]] = []
    figures: dict[str, str] = {}
    try:
        # (a)
        photos = manifest_rows(data)
        log(f"(a) building the batch folder: {args.count} photos + {args.big} x 12 MP")
        files, small, big = build_batch(data, photos, work / "batch", args.count, args.big)
        n = len(files)
        for f in files:  # warm the page cache for both (b) and (c)
            f.read_bytes()

        # (b) and (c), alternating: each ratio compares a floor and a cut measured seconds apart.
        floors, cuts = [], []
        for r in range(args.rounds):
            log(f"(b) I/O floor over {n} photos, {args.workers} worker(s) [round {r + 1}/{args.rounds}]")
            floors.append(io_floor(files, work / "floor_out", args.workers, args.png_compression))
            log(f"(c) bgremove cut on the same {n} photos [round {r + 1}/{args.rounds}]")
            out = fresh(work / "cut_out")
            cut_s, _ = run_process([*bgremove, "cut", str(work / "batch"), "-o", str(out), *cut_opts], logs / "cut_batch.log")
            if count_outputs(out) != n:
                raise BenchError(f"bgremove cut wrote {count_outputs(out)} of {n} cutouts; see {logs / 'cut_batch.log'}")
            cuts.append(cut_s)
        ratios = [floor_s / cut_s for floor_s, cut_s in zip(floors, cuts)]
        floor_rate, cut_rate, ratio = n / median(floors), n / median(cuts), median(ratios)
        each = ", ".join(f"{r:.2f}" for r in ratios)
        rows.append([f"I/O floor: decode + RGBA PNG encode, {n} photos, {args.workers} workers (median of {args.rounds})",
                     f"{floor_rate:.1f} img/s ({median(floors):.1f} s)", "-", "-"])
        rows.append([f"bgremove cut DIR, same {n} photos (whole process; median of {args.rounds})",
                     f"{cut_rate:.1f} img/s ({median(cuts):.1f} s) = {ratio:.2f} x floor ({each})",
                     f">= {TARGETS['batch_ratio']} x floor", verdict(ratio >= TARGETS["batch_ratio"])])
        figures["batch"] = f"{cut_rate:.1f} img/s = {ratio:.2f}x floor ({floor_rate:.1f}; rounds {each})"

        # (d)
        log("(d) cold start: one photo per process")

        def cold(photo: Path, label: str, repeats: int = 3) -> float:
            run_process([*bgremove, "cut", str(photo), "-o", str(fresh(work / "cold_out")), *cut_opts],
                        logs / f"cold_{label}.log")  # untimed: warms the disk cache
            times = []
            for i in range(repeats):
                dst = fresh(work / f"cold_out_{i}")
                wall, _ = run_process([*bgremove, "cut", str(photo), "-o", str(dst), *cut_opts], logs / f"cold_{label}.log")
                if count_outputs(dst) != 1:
                    raise BenchError(f"bgremove cut {photo} wrote no cutout; see {logs / f'cold_{label}.log'}")
                times.append(wall)
            return median(times)

        cold_small = cold(small, "600x800")
        rows.append(["cold `bgremove cut photo.jpg`, 600x800 (median of 3)", f"{cold_small:.2f} s",
                     f"<= {TARGETS['cold_small_s']} s", verdict(cold_small <= TARGETS["cold_small_s"])])
        figures["cold 600x800"] = f"{cold_small:.2f} s"
        if big is not None:
            cold_big = cold(big, "12mp")
            rows.append(["cold `bgremove cut photo.jpg`, 4000x3000 (median of 3)", f"{cold_big:.2f} s", "-", "-"])
            figures["cold 12MP"] = f"{cold_big:.2f} s"
        run_process([*bgremove, "--help"], logs / "help.log")
        helps = [run_process([*bgremove, "--help"], logs / "help.log")[0] for _ in range(5)]
        help_s = median(helps)
        rows.append(["`bgremove --help` (median of 5)", f"{help_s:.2f} s", f"<= {TARGETS['help_s']} s",
                     verdict(help_s <= TARGETS["help_s"])])
        figures["--help"] = f"{help_s:.2f} s"

        # (e)
        if not args.skip_memory:
            quarter = max(1, args.mem_count // 4)
            log(f"(e) peak memory: bgremove cut over {quarter} and {args.mem_count} photos of 854x480")
            peaks = {}
            for count in (quarter, args.mem_count):
                folder = work / f"mem_{count}"
                build_memory_folder(data, photos, folder, count)
                out = fresh(work / f"mem_out_{count}")
                wall, peak = run_process([*bgremove, "cut", str(folder), "-o", str(out), *cut_opts],
                                         logs / f"mem_{count}.log")
                if count_outputs(out) != count:
                    raise BenchError(f"bgremove cut wrote {count_outputs(out)} of {count} cutouts; see {logs}")
                peaks[count] = (peak, wall)
                shutil.rmtree(out)
            big_peak, big_wall = peaks[args.mem_count]
            small_peak, _ = peaks[quarter]
            growth = big_peak - small_peak
            allowed = max(0.10 * small_peak, 20 * MB)
            rows.append([f"peak RSS, bgremove cut of {args.mem_count} photos 854x480",
                         f"{big_peak / MB:.0f} MB ({args.mem_count / big_wall:.1f} img/s)",
                         f"<= {TARGETS['peak_mb']:.0f} MB", verdict(big_peak / MB <= TARGETS["peak_mb"])])
            rows.append([f"peak RSS, bgremove cut of {quarter} photos 854x480", f"{small_peak / MB:.0f} MB", "-", "-"])
            rows.append([f"peak RSS growth, {quarter} -> {args.mem_count} photos",
                         f"{growth / MB:+.0f} MB ({100 * growth / small_peak:+.0f} %)",
                         "flat (<= max(10 %, 20 MB))", verdict(growth <= allowed)])
            figures["peak RSS"] = f"{big_peak / MB:.0f} MB ({growth / MB:+.0f} MB vs {quarter})"

        # (f)
        log("(f) model time")
        call_ms, alpha_ms, size = model_times(model, small, args.threads, zoom=not args.no_zoom)
        rows.append([f"model: LiteRT call at {size[1]}x{size[0]}, 1 image (median of 50)", f"{call_ms:.1f} ms",
                     f"<= {TARGETS['model_ms']:.0f} ms", verdict(call_ms <= TARGETS["model_ms"])])
        rows.append(["bgremove alpha of a 600x800 photo: resize + model + resize (median of 20)",
                     f"{alpha_ms:.1f} ms", "-", "-"])
        # One thread: the model's CPU cost, steadier than two threads on a shared machine.
        one_ms, _, _ = model_times(model, small, 1)
        rows.append(["model on 1 thread (its CPU time per photo, median of 50)", f"{one_ms:.1f} ms", "-", "-"])
        figures["model"] = f"{call_ms:.1f} ms ({one_ms:.1f} ms on 1 thread)"
        if not args.skip_peers:
            if peers_dir is None:
                log("shared/peers not found: peer timings skipped")
            else:
                for name, ms in peer_times(peers_dir, args.peers, small, threads).items():
                    rows.append([f"peer {name}: PEERS[name](rgb), 600x800 (median of 20)", f"{ms:.1f} ms", "-", "-"])

        # (g)
        log(f"(g) CPU per photo: cut's steps and the floor's, one thread, over the {n} photos")
        cut_ms, floor_ms, zoomed = cpu_per_photo(model, files, args.png_compression, zoom=not args.no_zoom)
        rows.append([f"CPU per photo, cut (1 model thread): {' / '.join(cut_ms)}",
                     f"{' / '.join(f'{v:.1f}' for v in cut_ms.values())} = {sum(cut_ms.values()):.1f} ms "
                     f"(closer look on {zoomed} of {n})", "-", "-"])
        rows.append([f"CPU per photo, floor: {' / '.join(floor_ms)}",
                     f"{' / '.join(f'{v:.1f}' for v in floor_ms.values())} = {sum(floor_ms.values()):.1f} ms", "-", "-"])
        budget = model_budget(cut_ms, ratio, TARGETS["batch_ratio"])
        share = f"{100 * (1 - budget / cut_ms['model']):.0f} % less" if budget < cut_ms["model"] else "met"
        rows.append([f"model CPU per photo that would give {TARGETS['batch_ratio']} x floor",
                     f"<= {budget:.1f} ms (now {cut_ms['model']:.1f}: {share})", "-", "-"])
        figures["CPU per photo"] = (f"cut {sum(cut_ms.values()):.1f} ms, model {cut_ms['model']:.1f} of it; floor "
                                    f"{sum(floor_ms.values()):.1f} ms; model budget for {TARGETS['batch_ratio']}x "
                                    f"{budget:.1f} ms")
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if temporary and not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    load_end = load_average()
    print()
    print(f"bgremove speed benchmark, {started}")
    print(f"machine: {machine()}")
    print(f"model: {model}; model threads: {args.threads or 'as cut: 1 per worker in a batch, all cores for one photo'}; workers: {args.workers}; "
          f"PNG level {args.png_compression}")
    busy = "unknown" if busy_start is None else f"{busy_start:.2f}"
    print(f"other work at the start: {busy} core(s) busy over 1 s; load average (1/5/15 min): {load_start} "
          f"at the start, {load_end} at the end"
          + ("  <- other work was running when it started: do not record these figures"
             if busy_start is not None and busy_start > 0.2 else ""))
    print()
    print(text_table(["figure", "measured", "target", "verdict"], rows, right=set()))
    print()
    print("row for benchmarks/README.md:")
    print(f"| {started[:10]} | {machine()} | " + "; ".join(f"{k} {v}" for k, v in figures.items()) + " |")
    if not temporary or args.keep:
        print(f"files and logs: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
