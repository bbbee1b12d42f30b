"""bgremove: cut people out of photos with a Keras U-Net."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["CutOptions", "Remover", "__version__"]


def __getattr__(name: str):
    # Lazy, so that `import bgremove` (and `bgremove --help`) stay fast.
    if name in ("Remover", "CutOptions"):
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'bgremove' has no attribute {name!r}")
