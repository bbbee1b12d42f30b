"""Many photos in one run: which files to cut, where each cutout goes, and doing it in parallel.

Planning is pure (no model) so it is easy to test: inputs (files, folders, glob patterns) become jobs
with a source and a destination. Running spreads the photos over a thread pool (OpenCV, Pillow and
LiteRT release the GIL): with a .tflite model each worker cuts whole photos with its own interpreter;
with a .keras model the main thread runs batched model calls between the workers' decoding and
encoding. Either way each file is reported, in order, as it ends.
"""

from __future__ import annotations

import glob
import os
import signal
import threading
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .fileio import remove_stale_temps
from .images import READ_EXTS, ImageError, Photo, encode, open_photo, write_atomic
from .pipeline import Remover, Zoom
from .runtime import LiteRTRuntime

CUTOUT_SUFFIX = ".cutout"


@dataclass
class Job:
    src: Path
    dst: Path
    from_folder: bool  # found by walking a folder (skipped when its output exists, so reruns resume)
    note: str = ""


@dataclass
class Plan:
    jobs: list[Job]
    errors: list[tuple[str, str]] = field(default_factory=list)  # (input, reason)


@dataclass
class Result:
    job: Job
    status: str  # written | skipped | failed
    message: str = ""
    error: BaseException | None = None  # what made it fail, for --debug


@dataclass
class Summary:
    written: int = 0
    skipped: int = 0
    failed: int = 0
    interrupted: bool = False

    def add(self, status: str) -> None:
        setattr(self, status, getattr(self, status) + 1)


def _real(path: Path) -> Path:
    """The path with every link resolved; unlike Path.resolve (Python < 3.13), a link loop does not raise."""
    return Path(os.path.realpath(path))


def _walk(folder: Path, exclude: Path | None, errors: list[tuple[str, str]]) -> Iterator[Path]:
    """Image files under ``folder``, each once; follows folder symlinks but never loops.

    Hidden files and folders are skipped: they hold other tools' data, and our own temporary files
    (``.NAME.XXXXXXXX.tmp.png``, left by a killed run) must never be taken for photos. Folders that
    cannot be listed are reported in ``errors`` rather than silently left out.
    """
    seen: set[tuple[int, int]] = set()

    def unreadable(exc: OSError) -> None:
        errors.append((str(exc.filename or folder), f"cannot read folder ({(exc.strerror or str(exc)).lower()})"))

    for root, dirs, files in os.walk(folder, followlinks=True, onerror=unreadable):
        try:
            st = os.stat(root)
        except OSError as exc:
            unreadable(exc)
            dirs[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        root_path = Path(root)
        if exclude is not None and _real(root_path) == exclude:
            dirs[:] = []
            continue
        # Real folders before links to folders: a file reachable both ways keeps its real path.
        dirs[:] = sorted((d for d in dirs if not d.startswith(".")), key=lambda d: (os.path.islink(root_path / d), d))
        for name in sorted(files):
            path = root_path / name
            if not name.startswith(".") and path.suffix.lower() in READ_EXTS and not path.stem.endswith(CUTOUT_SUFFIX):
                yield path


def _expand(inputs: list[str], output: Path | None) -> tuple[list[tuple[Path, Path | None]], list[tuple[str, str]]]:
    """Each input -> (file, folder it was found in or None for files named directly)."""
    exclude = _real(output) if output is not None else None
    found: list[tuple[Path, Path | None]] = []
    errors: list[tuple[str, str]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            if exclude is not None and _real(path) == exclude:
                errors.append((item, "is also the output folder (-o); choose another one for the cutouts"))
                continue
            found += [(p, path) for p in _walk(path, exclude, errors)]
        elif path.exists() or path.is_symlink():
            found.append((path, None))
        elif glob.has_magic(item):
            matches = sorted(glob.glob(item, recursive=True))
            files = [Path(m) for m in matches if Path(m).is_file()]
            if not files:
                errors.append((item, "pattern matches no files"))
            found += [(p, None) for p in files]
        else:
            errors.append((item, "no such file or folder"))
    return found, errors


def plan(inputs: list[str], output: Path | None, ext: str = "png") -> Plan:
    """Decide every destination; names that would collide get the source's extension added."""
    found, errors = _expand(inputs, output)
    jobs: list[Job] = []
    seen_src: set[Path] = set()
    for src, base in found:
        key = _real(src)
        if key in seen_src:  # the same file given twice (e.g. a file and its folder)
            continue
        seen_src.add(key)
        if output is None:
            dst = src.with_name(src.stem + CUTOUT_SUFFIX + "." + ext)
        elif base is None:
            dst = output / (src.stem + "." + ext)
        else:
            dst = output / src.relative_to(base).with_suffix("." + ext)
        jobs.append(Job(src, dst, from_folder=base is not None))

    by_dst: dict[Path, list[Job]] = defaultdict(list)
    for job in jobs:
        by_dst[_real(job.dst)].append(job)
    taken = set(by_dst)
    for dst, group in by_dst.items():
        if len(group) < 2:
            continue
        for n, job in enumerate(group):
            stem = job.dst.name[: -len(ext) - 1]
            candidate = job.dst.with_name(f"{stem}_{job.src.suffix.lstrip('.').lower()}.{ext}")
            i = 2
            while _real(candidate) in taken:
                candidate = job.dst.with_name(f"{stem}_{job.src.suffix.lstrip('.').lower()}-{i}.{ext}")
                i += 1
            taken.add(_real(candidate))
            job.note = f"named {candidate.name}: {job.dst.name} is shared by {len(group)} inputs"
            job.dst = candidate
    return Plan(jobs, errors)


@dataclass
class RunOptions:
    fmt: str = "png"
    png_compression: int = 1
    overwrite: bool = False
    skip_existing: bool | None = None  # None: skip for files found in folders, redo for files named directly
    batch_size: int = 4  # photos per model call of a .keras model (a .tflite model takes one per call)
    workers: int = 2  # threads that decode, run a .tflite model, and encode


def _should_skip(job: Job, opts: RunOptions) -> bool:
    if opts.overwrite or not job.dst.exists():
        return False
    return job.from_folder if opts.skip_existing is None else opts.skip_existing


@contextmanager
def _first_ctrl_c_sets(stop: threading.Event) -> Iterator[None]:
    """While the block runs, a first Ctrl-C only sets ``stop``; a second one interrupts at once.

    A KeyboardInterrupt could land anywhere (inside a model call, between counting and reporting a
    file); a flag is checked only between photos (or batches). Installed only on the main thread over Python's
    default handler, so a program that handles SIGINT itself keeps its handling.
    """
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return

    def handler(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def run(
    jobs: list[Job], remover: Remover, opts: RunOptions, on_result: Callable[[Result], None] = lambda r: None
) -> Summary:
    """Cut every job; never raises for a bad file. Ctrl-C finishes the images in flight and stops."""
    summary = Summary()
    stop = threading.Event()
    remove_stale_temps(job.dst for job in jobs)  # what a killed run left; its outputs are redone below
    inputs = {_real(job.src) for job in jobs}
    todo: list[Job] = []
    for job in jobs:
        if _real(job.dst) in inputs:
            result = Result(job, "failed", "the output would overwrite an input file")
        elif _should_skip(job, opts):
            result = Result(job, "skipped", "output exists")
        else:
            todo.append(job)
            continue
        summary.add(result.status)
        on_result(result)

    def load(job: Job) -> tuple[Photo, np.ndarray]:
        photo = open_photo(job.src, remover.max_pixels)
        return photo, remover.model_input(photo)

    def save(job: Job, photo: Photo, small: np.ndarray, zoom: Zoom | None) -> str:
        rendered = remover.finish(photo, remover.photo_alpha(photo, small, zoom))
        data = encode(rendered.pixels, opts.fmt, opts.png_compression)
        write_atomic(job.dst, data)
        return "; ".join(filter(None, [job.note, *photo.notes, *rendered.notes]))

    def finish(job: Job, fut: Future) -> None:
        try:
            note = fut.result()
            result = Result(job, "written", note)
        except ImageError as exc:
            result = Result(job, "failed", str(exc), exc)
        except Exception as exc:  # noqa: BLE001 - one broken file must not stop the batch
            result = Result(job, "failed", f"{type(exc).__name__}: {exc}", exc)
        summary.add(result.status)
        on_result(result)

    def failed(exc: BaseException) -> Future:
        fut: Future = Future()
        fut.set_exception(exc)
        return fut

    workers = max(1, opts.workers)
    ahead = max(opts.batch_size * 2, 2 * workers, 4)  # photos in flight: bounds memory
    in_flight: list[tuple[Job, Future]] = []  # in order, so results are reported in order

    def report_done() -> None:
        while in_flight and (in_flight[0][1].done() or len(in_flight) > ahead):
            finish(*in_flight.pop(0))

    def in_workers(pool: ThreadPoolExecutor) -> None:
        """LiteRT: each worker cuts whole photos (decode, model, encode) with an interpreter of its own.

        The first worker takes the remover's interpreter, the others a clone with as many threads (``cut``
        gives it one thread when there are several photos). No worker waits for another thread: on 2 cores
        this keeps both busy, where one 2-threaded interpreter on the main thread stalls on its threads while
        the workers decode and encode (203 photos: 0.84 against 0.77 times the I/O floor, in one process).
        """
        local = threading.local()
        spare = [remover.runtime]
        lock = threading.Lock()

        def cut(job: Job) -> str:
            photo, model_input = load(job)
            if not hasattr(local, "runtime"):
                with lock:
                    local.runtime = spare.pop() if spare else remover.runtime.clone()
            try:
                small = remover.predict_small([model_input], local.runtime)[0]
                zoom = remover.look_closer([photo], [small], local.runtime)[0]
            except Exception as exc:  # noqa: BLE001
                raise ImageError(f"model failed: {exc}") from exc
            return save(job, photo, small, zoom)

        for job in todo:
            if stop.is_set():
                break
            in_flight.append((job, pool.submit(cut, job)))
            report_done()

    def batched(pool: ThreadPoolExecutor) -> None:
        """Keras (e.g. on a GPU): the main thread runs the model calls of each batch (the closer look's
        crops as a second call); the workers decode and shrink (load), and upscale, render and encode
        (save), so the main thread never waits on their work."""
        loads: list[tuple[Job, Future]] = [(j, pool.submit(load, j)) for j in todo[:ahead]]
        next_index = len(loads)
        try:
            while loads and not stop.is_set():
                batch, loads = loads[: opts.batch_size], loads[opts.batch_size :]
                refill = todo[next_index : next_index + len(batch)]
                loads += [(j, pool.submit(load, j)) for j in refill]
                next_index += len(refill)
                decoded: list[tuple] = []  # (job, photo, model input) or (job, error, None), in order
                for job, fut in batch:
                    try:
                        decoded.append((job, *fut.result()))
                    except Exception as exc:  # noqa: BLE001
                        decoded.append((job, exc, None))
                model_error = None
                try:
                    good = [(photo, x) for _, photo, x in decoded if x is not None]
                    smalls = remover.predict_small([x for _, x in good])
                    zooms = remover.look_closer([photo for photo, _ in good], smalls)
                    alphas = iter(zip(smalls, zooms))
                except Exception as exc:  # noqa: BLE001 - e.g. out of memory on a huge batch
                    model_error = ImageError(f"model failed: {exc}")
                for job, photo_or_error, model_input in decoded:
                    if model_input is None:
                        fut = failed(photo_or_error)
                    elif model_error is not None:
                        fut = failed(model_error)
                    else:
                        fut = pool.submit(save, job, photo_or_error, *next(alphas))
                    in_flight.append((job, fut))
                report_done()
        finally:
            for _, fut in loads:  # left only when stopped: photos not decoded yet are dropped
                fut.cancel()

    with ThreadPoolExecutor(workers) as pool, _first_ctrl_c_sets(stop):
        try:
            (in_workers if isinstance(remover.runtime, LiteRTRuntime) else batched)(pool)
        except KeyboardInterrupt:
            if stop.is_set():  # a second Ctrl-C: stop waiting (writes are atomic, nothing is left half-done)
                raise
            stop.set()
        if stop.is_set():  # photos not started are dropped; the ones being cut finish
            in_flight[:] = [(job, fut) for job, fut in in_flight if not fut.cancel()]
        for job, fut in in_flight:
            finish(job, fut)
    summary.interrupted = stop.is_set() and summary.written + summary.skipped + summary.failed < len(jobs)
    return summary


def keep_freed_memory(limit_mb: int = 128) -> bool:
    """Ask glibc to keep freed buffers up to ``limit_mb`` for reuse; False where it cannot (not glibc).

    Every photo allocates and frees buffers of megabytes (the decoded photo, its alpha, the RGBA, the
    PNG). glibc gives such buffers back to the kernel (mmap, heap trimming), and the next photo faults
    every page in again: 7 % of a batch's wall time on 2 cores. A process-wide setting, so the library
    leaves it to the application (``bgremove cut`` sets it for a batch).
    """
    import ctypes

    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    size = limit_mb * 2**20
    return bool(mallopt(m_mmap_threshold, size)) and bool(mallopt(m_trim_threshold, 2 * size))


def cut_one(source: Path | bytes, remover: Remover, opts: RunOptions) -> tuple[bytes, list[str]]:
    """One photo (a path or its bytes, e.g. from stdin) to encoded output bytes, with its notes.

    For pipes, where there is no destination file; raises ImageError with the one-line reason.
    """
    photo = open_photo(source, remover.max_pixels)
    rendered = remover.finish(photo, remover.predict_alphas([photo])[0])
    return encode(rendered.pixels, opts.fmt, opts.png_compression), [*photo.notes, *rendered.notes]
