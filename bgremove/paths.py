"""Where things live: the shipped model, and the optional shared assets (pretrained encoder, data)."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

DEFAULT_MODEL_NAME = "bgremove.tflite"  # int8
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
    return weights_dir() / DEFAULT_MODEL_NAME


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
