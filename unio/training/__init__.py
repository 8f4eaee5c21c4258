"""Training: ``unio train`` under DeepSpeed, runs -> export directories, and the image tokenizer's
own trainer (``unio tokenizer image``).

- ``unio.training.loop``        :func:`train` (the loop) and :func:`main` (``unio train``)
- ``unio.training.prepare``     the run directory, text tokenizer training, the model at step 0, batches
- ``unio.training.engine``      DeepSpeed import, process group, DeepSpeed JSON, ``deepspeed.initialize``
- ``unio.training.schedule``    the one learning-rate schedule (warmup, then cosine) of both trainers
- ``unio.training.checkpoint``  save / ``latest`` / RNG state / resume / consolidated fp32 weights
- ``unio.training.evaluator``   the periodic held-out evaluation during training
- ``unio.training.run_export``  a run's checkpoint -> an export directory, with its provenance
- ``unio.training.image_tokenizer`` (+ ``image_tokenizer_eval``)  the VQ image tokenizer's trainer

Names are imported on first use, so ``import unio.training`` stays light (and deepspeed is only
imported when a run starts).
"""
from __future__ import annotations

from ..resources import lazy_exports

_EXPORTS = {
    "train": ".loop",
    "main": ".loop",
    "export": ".run_export",
    "build_ds_config": ".engine",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
