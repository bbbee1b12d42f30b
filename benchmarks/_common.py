"""Helpers shared by the benchmark scripts (not a benchmark itself).

Kept beside the scripts, which put their own folder on ``sys.path``; nothing here is part of the
``bgremove`` package.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from types import ModuleType

from bgremove.paths import default_model_path, find_shared


def need_shared(relative: str, what: str) -> Path:
    """``shared/<relative>`` or a clean exit with a one-line message (status 0: nothing to measure)."""
    path = find_shared(relative)
    if path is None:
        print(f"skipped: {what} not found (looked for shared/{relative} beside the working directory and the "
              f"bgremove checkout); nothing to measure.")
        sys.exit(0)
    return path


def load_peers(folder: Path, threads: int | None) -> ModuleType:
    """Import shared/peers/peers.py under its own module name; PEERS_NUM_THREADS is read at import."""
    if threads:
        os.environ["PEERS_NUM_THREADS"] = str(threads)
    spec = importlib.util.spec_from_file_location("shared_peers", folder / "peers.py")
    if spec is None or spec.loader is None:
        raise SystemExit(f"error: cannot import {folder / 'peers.py'}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["shared_peers"] = module
    spec.loader.exec_module(module)
    return module


def choose_peers(module: ModuleType, spec: str | None) -> list[str]:
    """``--peers a,b`` (or all, in the module's order); unknown names end the run with the valid ones."""
    names = list(module.PEERS)
    if spec is None or spec.strip().lower() in ("", "all"):
        return _runnable(module, names)
    if spec.strip().lower() == "none":
        return []
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [w for w in wanted if w not in module.PEERS]
    if unknown:
        raise SystemExit(f"error: unknown peer(s) {', '.join(unknown)}; choose from {', '.join(names)}")
    return _runnable(module, wanted)


def _runnable(module: ModuleType, names: list[str]) -> list[str]:
    """The peers, each run once on a small image (which also loads its model before anything is timed); a
    peer whose runtime is not installed ends the run with what to install, not with a traceback."""
    import numpy as np

    probe = np.full((64, 48, 3), 128, np.uint8)
    for name in names:
        try:
            module.PEERS[name](probe)
        except ImportError as exc:
            raise SystemExit(f"error: peer {name} needs {exc.name or exc}: pip install -e '.[bench]' "
                             f"(or leave it out with --peers)") from None
    return names


def model_or_exit(path: Path | None) -> Path:
    """The model to benchmark (default: the shipped one), or a clear message when the file is missing."""
    path = Path(path) if path else default_model_path()
    if not path.is_file():
        raise SystemExit(f"error: model {path} not found (pass --model PATH, e.g. a run's model.tflite)")
    return path


def bgremove_command() -> list[str]:
    """The ``bgremove`` console script of this interpreter's environment (what users run)."""
    beside = Path(sys.executable).parent / "bgremove"
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("bgremove")
    return [found] if found else [sys.executable, "-m", "bgremove"]


def machine() -> str:
    """A short description: CPU model, cores, OS."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {cores} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def busy_cores(seconds: float = 1.0) -> float | None:
    """Cores kept busy by other work right now (from /proc/stat over ``seconds``); None where unknown.

    Unlike the load average, which decays over minutes, this is right straight after other work pauses.
    """
    def times() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    try:
        total0, idle0 = times()
        time.sleep(seconds)
        total1, idle1 = times()
    except (OSError, ValueError, IndexError):
        return None
    if total1 == total0:
        return None
    return (1 - (idle1 - idle0) / (total1 - total0)) * (os.cpu_count() or 1)


def text_table(header: list[str], rows: list[list[str]], right: set[int] | None = None) -> str:
    """A plain-text table with aligned columns (numeric columns right-aligned)."""
    right = right if right is not None else set(range(1, len(header)))
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def fmt(row):
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths)))

    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *map(fmt, rows)])


def markdown_table(header: list[str], rows: list[list[str]], right: set[int] | None = None) -> str:
    right = right if right is not None else set(range(1, len(header)))
    align = ["---:" if i in right else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def proc_memory(pid: int, field: str = "VmHWM") -> int | None:
    """A memory figure of a running process from /proc (VmHWM: its peak RSS; VmRSS: now), in bytes.

    None on systems without /proc or once the process has ended.
    """
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
