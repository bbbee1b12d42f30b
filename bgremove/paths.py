"""Where things live: the shipped model, and the optional shared assets (pretrained encoder, data)."""

from __future__ import annotations

import os
from functools import lru_cache
from importlib import resources
from pathlib import Path

DEFAULT_MODEL_NAME = "bgremove.tflite"  # int8
FLOAT_MODEL_NAME = "bgremove-float32.tflite"  # the same weights, unquantized
PRETRAINED_NAME = "mobilenet_v2_0.35_no_top.weights.h5"


def weights_dir() -> Path:
    """The ``weights/`` folder shipped inside the installed package (``bgremove.weights``).

    Imported straight from a source checkout (e.g. ``python -c`` in the repository root), the package
    has no ``bgremove.weights``: the checkout's own top-level ``weights/`` is the same folder.
    """
    try:
        return Path(str(resources.files("bgremove.weights")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "weights"


def default_model_path() -> Path:
    """The shipped model: int8, except on CPUs with AMX, where its float32 twin is the faster of the two.

    XNNPACK runs int8 convolutions there on AMX tiles 64 output channels wide, and most of this model's
    layers have 8 to 96 channels: the padding makes int8 take about 1.2x float32's time on a Sapphire
    Rapids Xeon, while on CPUs without AMX int8 is about 1.6x faster. The two agree to about 0.003 IoU.
    """
    weights = weights_dir()
    if cpu_has_amx() and (weights / FLOAT_MODEL_NAME).is_file():
        return weights / FLOAT_MODEL_NAME
    return weights / DEFAULT_MODEL_NAME


@lru_cache(maxsize=1)
def cpu_has_amx(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU has AMX int8 tiles (Linux reports it in /proc/cpuinfo; elsewhere: assumed not)."""
    try:
        with cpuinfo.open() as lines:
            for line in lines:
                if line.startswith("flags"):  # the first core's; all cores have the same
                    return "amx_int8" in line.split()
    except OSError:
        pass
    return False


def _shared_candidates() -> list[Path]:
    """``shared/`` folders beside the working directory or the source checkout, nearest first."""
    roots = [Path.cwd(), *Path.cwd().parents, Path(__file__).resolve().parent, *Path(__file__).resolve().parents]
    seen, found = set(), []
    for root in roots:
        cand = root / "shared"
        if cand not in seen:
            seen.add(cand)
            if cand.is_dir():
                found.append(cand)
    return found


def find_shared(relative: str, env: str | None = None) -> Path | None:
    """Locate ``shared/<relative>``; the environment variable ``env`` wins when set."""
    if env and os.environ.get(env):
        path = Path(os.environ[env])
        return path if path.exists() else None
    for shared in _shared_candidates():
        if (shared / relative).exists():
            return shared / relative
    return None


def find_pretrained_encoder() -> Path | None:
    return find_shared(f"pretrained/{PRETRAINED_NAME}", env="BGREMOVE_PRETRAINED")
