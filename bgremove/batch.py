"""Many photos in one run: which files to cut, where each cutout goes, and doing it in parallel.

Planning is pure (no model) so it is easy to test: inputs (files, folders, glob patterns) become jobs
with a source and a destination. Running overlaps decoding and encoding (thread pool; OpenCV and
Pillow release the GIL) with the model calls on the main thread, and reports each file as it ends.
"""

from __future__ import annotations

import glob
import os
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

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


@dataclass
class Summary:
    written: int = 0
    skipped: int = 0
    failed: int = 0
    interrupted: bool = False

    def add(self, status: str) -> None:
        setattr(self, status, getattr(self, status) + 1)


def _walk(folder: Path, exclude: Path | None) -> Iterator[Path]:
    """Image files under ``folder``; follows folder symlinks but never loops."""
    seen: set[tuple[int, int]] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        st = os.stat(root)
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        root_path = Path(root)
        if exclude is not None and root_path.resolve() == exclude:
            dirs[:] = []
            continue
        dirs.sort()
        for name in sorted(files):
            path = root_path / name
            if path.suffix.lower() in READ_EXTS and not path.stem.endswith(CUTOUT_SUFFIX):
                yield path


def _expand(inputs: list[str], output: Path | None) -> tuple[list[tuple[Path, Path | None]], list[tuple[str, str]]]:
    """Each input -> (file, folder it was found in or None for files named directly)."""
    exclude = output.resolve() if output is not None else None
    found: list[tuple[Path, Path | None]] = []
    errors: list[tuple[str, str]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += [(p, path) for p in _walk(path, exclude)]
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
        key = src.resolve()
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
        by_dst[job.dst.resolve()].append(job)
    taken = set(by_dst)
    for dst, group in by_dst.items():
        if len(group) < 2:
            continue
        for n, job in enumerate(group):
            stem = job.dst.name[: -len(ext) - 1]
            candidate = job.dst.with_name(f"{stem}_{job.src.suffix.lstrip('.').lower()}.{ext}")
            i = 2
            while candidate.resolve() in taken:
                candidate = job.dst.with_name(f"{stem}_{job.src.suffix.lstrip('.').lower()}-{i}.{ext}")
                i += 1
            taken.add(candidate.resolve())
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


def run(
    jobs: list[Job], remover: Remover, opts: RunOptions, on_result: Callable[[Result], None] = lambda r: None
) -> Summary:
    """Cut every job; never raises for a bad file. Ctrl-C finishes the images in flight and stops."""
    summary = Summary()
    inputs = {job.src.resolve() for job in jobs}
    todo: list[Job] = []
    for job in jobs:
        if job.dst.resolve() in inputs:
            result = Result(job, "failed", "the output would overwrite an input file")
        elif _should_skip(job, opts):
            result = Result(job, "skipped", "output exists")
        else:
            todo.append(job)
            continue
        summary.add(result.status)
        on_result(result)

    def load(job: Job):
        return open_photo(job.src, remover.max_pixels)

    def save(job: Job, photo: Photo, alpha) -> str:
        rendered = remover.finish(photo, alpha)
        data = encode(rendered.pixels, opts.fmt, opts.png_compression)
        job.dst.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(job.dst, data)
        return "; ".join(filter(None, [job.note, *rendered.notes]))

    def finish(job: Job, fut: Future) -> None:
        try:
            note = fut.result()
            result = Result(job, "written", note)
        except ImageError as exc:
            result = Result(job, "failed", str(exc))
        except Exception as exc:  # noqa: BLE001 - one broken file must not stop the batch
            result = Result(job, "failed", f"{type(exc).__name__}: {exc}")
        summary.add(result.status)
        on_result(result)

    with ThreadPoolExecutor(max(1, opts.workers)) as pool:
        ahead = max(opts.batch_size * 2, 4)
        loads: list[tuple[Job, Future]] = [(j, pool.submit(load, j)) for j in todo[:ahead]]
        next_index = len(loads)
        writes: list[tuple[Job, Future]] = []
        try:
            while loads:
                batch, loads = loads[: opts.batch_size], loads[opts.batch_size :]
                refill = todo[next_index : next_index + len(batch)]
                loads += [(j, pool.submit(load, j)) for j in refill]
                next_index += len(refill)
                photos, ready = [], []
                for job, fut in batch:
                    try:
                        photos.append(fut.result())
                        ready.append(job)
                    except Exception as exc:  # noqa: BLE001
                        failed = Future()
                        failed.set_exception(exc)
                        finish(job, failed)
                try:
                    alphas = remover.predict_alphas(photos)
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
            summary.interrupted = True
            for _, fut in loads:
                fut.cancel()
        for job, fut in writes:
            finish(job, fut)
    return summary


def cut_one(source: Path | bytes, remover: Remover, opts: RunOptions) -> tuple[bytes, list[str]]:
    """One photo (a path or its bytes, e.g. from stdin) to encoded output bytes, with its notes.

    For pipes, where there is no destination file; raises ImageError with the one-line reason.
    """
    photo = open_photo(source, remover.max_pixels)
    rendered = remover.finish(photo, remover.predict_alphas([photo])[0])
    return encode(rendered.pixels, opts.fmt, opts.png_compression), [*photo.notes, *rendered.notes]
