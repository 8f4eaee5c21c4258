"""Modality tokenizers: text pieces (text.py), location bins (locations.py), image codes.

Names are imported on first use, so ``import unio.tokenizers.locations`` stays light.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "TextTokenizer": ".text",
    "LocationTokenizer": ".locations",
    "ImageTokenizer": ".image",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
