"""unio: unified sequence-to-sequence vision-language models.

    >>> import unio
    >>> pipe = unio.load("path/to/export")     # or a shipped model name, see unio.list_models()
    >>> pipe.caption("photo.jpg")

Heavy modules (torch, transformers) are imported on first use, so ``import unio`` stays fast.
"""
from .errors import UnioError
from .resources import lazy_exports

__version__ = "0.1.0"
__all__ = ["load", "list_models", "UnioError", "__version__"]

__getattr__, __dir__ = lazy_exports(__name__, {"load": ".pipeline", "list_models": ".export",
                                               "Pipeline": ".pipeline"}, globals())
