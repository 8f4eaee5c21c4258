"""Modality tokenizers: text pieces (text.py), location bins (locations.py), image codes.

Names are imported on first use, so ``import unio.tokenizers.locations`` stays light.
"""
from __future__ import annotations

from ..resources import lazy_exports

_EXPORTS = {
    "TextTokenizer": ".text",
    "LocationTokenizer": ".locations",
    "ImageTokenizer": ".image",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
