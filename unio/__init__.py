"""unio: unified sequence-to-sequence vision-language models.

    >>> import unio
    >>> pipe = unio.load("path/to/export")     # or a shipped model name, see unio.list_models()
    >>> pipe.caption("photo.jpg")

Heavy modules (torch, transformers) are imported on first use, so ``import unio`` stays fast.
"""
from .errors import UnioError

__version__ = "0.1.0"
__all__ = ["load", "list_models", "UnioError", "__version__"]

_LAZY = {"load": "pipeline", "list_models": "export", "Pipeline": "pipeline"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'unio' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
