"""Other ways to run an export than torch: ONNX graphs (:mod:`.onnx_export`) run by onnxruntime
(:mod:`.ort`), the optional dependency ``pip install "unio[onnx]"``.

    unio export shapes-demo my-onnx --onnx          # the export, plus encoder.onnx and decoder.onnx
    >>> pipe = unio.load("my-onnx", backend="onnxruntime")

What the two modules share lives here: the names of the graph files, the ``onnx`` entry of
``unio.json`` and the metadata each graph carries, and the check for the optional packages.
"""
from __future__ import annotations

import importlib

from ..errors import BackendError

__all__ = ["require", "ENCODER_FILE", "DECODER_FILE", "ONNX_KEY", "ONNX_FORMAT_VERSION", "GRAPH_KEY",
           "FINGERPRINT_KEY"]

ENCODER_FILE = "encoder.onnx"     # pixels + prompt -> cross-attention keys/values of every decoder layer
DECODER_FILE = "decoder.onnx"     # new ids + past self-attention keys/values -> logits + present keys/values
ONNX_KEY = "onnx"                 # the entry of unio.json that describes the graphs
ONNX_FORMAT_VERSION = 1
GRAPH_KEY = "unio.graph"                          # metadata of each graph: "encoder" or "decoder"
FINGERPRINT_KEY = "unio.vocab_fingerprint"        # ... and the vocabulary it was exported with


def require(*names: str) -> list:
    """The modules ``names`` (``onnx``, ``onnxruntime``), or a :class:`BackendError` saying how to install them."""
    out = []
    for name in names:
        try:
            out.append(importlib.import_module(name))
        except ImportError:
            raise BackendError(f"the ONNX backend needs the {name} package, which is not installed here; "
                               "install it with: pip install \"unio[onnx]\"") from None
    return out
