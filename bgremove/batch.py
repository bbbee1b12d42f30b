"""Many photos in one run: which files to cut, where each cutout goes, and doing it in parallel.

Planning is pure (no model) so it is easy to test: inputs (files, folders, glob patterns) become jobs
with a source and a destination. Running overlaps decoding and encoding (thread pool; OpenCV and
Pillow release the GIL) with the model calls on the main thread, and reports each file as it ends.
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

from .fileio import remove_stale_temps
from .images import READ_EXTS, ImageError, Photo, encode, open_photo, write_atomic
from .pipeline import Remover

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
    batch_size: int = 4
    workers: int = 2


def _should_skip(job: Job, opts: RunOptions) -> bool:
    if opts.overwrite or not job.dst.exists():
        return False
    return job.from_folder if opts.skip_existing is None else opts.skip_existing


@contextmanager
def _first_ctrl_c_sets(stop: threading.Event) -> Iterator[None]:
    """While the block runs, a first Ctrl-C only sets ``stop``; a second one interrupts at once.

    A KeyboardInterrupt could land anywhere (inside a model call, between counting and reporting a
    file); a flag is checked only between batches. Installed only on the main thread over Python's
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

    # The workers decode and shrink (load), and upscale, render and encode (save); the main thread
    # only runs the model and never waits on work a worker could do.
    def load(job: Job) -> tuple[Photo, object]:
        photo = open_photo(job.src, remover.max_pixels)
        return photo, remover.model_input(photo)

    def save(job: Job, photo: Photo, small) -> str:
        rendered = remover.finish(photo, remover.photo_alpha(photo, small))
        data = encode(rendered.pixels, opts.fmt, opts.png_compression)
        write_atomic(job.dst, data)
        return "; ".join(filter(None, [job.note, *rendered.notes]))

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

    with ThreadPoolExecutor(max(1, opts.workers)) as pool, _first_ctrl_c_sets(stop):
        ahead = max(opts.batch_size * 2, 4)
        loads: list[tuple[Job, Future]] = [(j, pool.submit(load, j)) for j in todo[:ahead]]
        next_index = len(loads)
        writes: list[tuple[Job, Future]] = []
        try:
            while loads and not stop.is_set():
                batch, loads = loads[: opts.batch_size], loads[opts.batch_size :]
                refill = todo[next_index : next_index + len(batch)]
                loads += [(j, pool.submit(load, j)) for j in refill]
                next_index += len(refill)
                photos, inputs, ready = [], [], []
                for job, fut in batch:
                    try:
                        photo, model_input = fut.result()
                        photos.append(photo)
                        inputs.append(model_input)
                        ready.append(job)
                    except Exception as exc:  # noqa: BLE001
                        failed = Future()
                        failed.set_exception(exc)
                        finish(job, failed)
                try:
                    alphas = remover.predict_small(inputs)
                except Exception as exc:  # noqa: BLE001 - e.g. out of memory on a huge batch
                    for job in ready:
                        failed = Future()
                        failed.set_exception(ImageError(f"model failed: {exc}"))
                        finish(job, failed)
                    continue
                for job, photo, alpha in zip(ready, photos, alphas):
                    if photo.notes:
                        job.note = "; ".join(filter(None, [job.note, *photo.notes]))
                    writes.append((job, pool.submit(save, job, photo, alpha)))
                # Report finished writes in order, keeping memory bounded.
                while writes and (writes[0][1].done() or len(writes) > ahead):
                    finish(*writes.pop(0))
        except KeyboardInterrupt:
            if stop.is_set():  # a second Ctrl-C: stop waiting (writes are atomic, nothing is left half-done)
                raise
            stop.set()
        if stop.is_set():
            for _, fut in loads:  # photos not being decoded yet are dropped; the others end unused
                fut.cancel()
        for job, fut in writes:
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
