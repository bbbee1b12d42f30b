"""Atomic file writes: a reader (or a rerun after kill -9) sees the old file or the new one, never half."""

from __future__ import annotations

import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; finished files get the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


# The names atomic_path gives its temporary files: ".{name}.XXXXXXXX.tmp{suffix}" (mkstemp adds 8 characters).
_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp(?P<suffix>.*)")


def remove_stale_temps(paths: Iterable[Path]) -> int:
    """Delete temporary files that a killed run left for these destinations; returns how many.

    Only exact matches of atomic_path's naming for one of ``paths`` go, so nothing else in the folder is
    touched. (A second bgremove writing the same destinations at the same time would lose its temporary
    file too; two runs into one folder are not supported anyway.)
    """
    by_folder: dict[Path, set[str]] = {}
    for path in paths:
        by_folder.setdefault(path.parent, set()).add(path.name)
    removed = 0
    for folder, names in by_folder.items():
        try:
            entries = [e.name for e in os.scandir(folder) if e.name.startswith(".")]
        except OSError:  # no such folder yet, or unreadable: nothing of ours in it
            continue
        for entry in entries:
            m = _TEMP_NAME.fullmatch(entry)
            if m and m["name"] in names and m["suffix"] == Path(m["name"]).suffix:
                try:
                    (folder / entry).unlink()
                    removed += 1
                except OSError:
                    pass
    return removed
