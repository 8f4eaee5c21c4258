"""Results in the formats other tools read: ``supervision.Detections`` (roboflow's supervision).

    >>> import supervision as sv
    >>> from unio.interop import to_supervision
    >>> dets = to_supervision(pipe.detect(image), classes=pipe.classes["object"])
    >>> sv.BoxAnnotator().annotate(image.copy(), dets)

Detections keep their boxes, confidences (the label probability unio scores each box with),
labels (``data["class_name"]``) and class ids (the label's index in ``classes``, the model's
object classes, so they match ``unio predict --format coco``'s categories minus one; labels
outside them are numbered after, in order of appearance). A grounding box (:class:`Box`) becomes one
detection, a segmentation mask (bool (H, W)) one detection with its mask and tight box.
supervision is an optional dependency (``pip install "unio[interop]"``); COCO results are
:meth:`unio.tasks.detect.Detect.coco_results`.
"""
from __future__ import annotations

import importlib

import numpy as np

from .errors import InputError, UnioError
from .tasks import Box, Detection

__all__ = ["to_supervision"]


def _supervision():
    try:  # optional dependency, imported only when a conversion is asked for
        return importlib.import_module("supervision")
    except ImportError:
        raise UnioError('converting to supervision needs the supervision package: pip install "unio[interop]" '
                        '(or pip install supervision)') from None


def to_supervision(result, classes: list[str] | None = None, label: str | None = None):
    """A unio result as ``supervision.Detections``: a list of :class:`Detection` (detect), a
    :class:`Box` or None (ground), or a bool (H, W) mask (segment); ``label`` names a box or mask."""
    sv = _supervision()
    ids = {name: k for k, name in enumerate(classes or [])}

    def class_id(name: str) -> int:
        return ids.setdefault(name, len(ids))

    if result is None:
        return sv.Detections.empty()
    if isinstance(result, np.ndarray) and result.dtype == bool and result.ndim == 2:
        ys, xs = np.nonzero(result)
        if not len(xs):
            return sv.Detections.empty()
        box = [[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]]
        names = [label or "mask"]
        return sv.Detections(xyxy=np.asarray(box, dtype=np.float32), mask=result[None].copy(),
                             class_id=np.array([class_id(names[0])]), data={"class_name": np.array(names)})
    if isinstance(result, Box):
        names = [label or "box"]
        return sv.Detections(xyxy=np.asarray([result.to_list()], dtype=np.float32),
                             class_id=np.array([class_id(names[0])]), data={"class_name": np.array(names)})
    if isinstance(result, list) and all(isinstance(d, Detection) for d in result):
        if not result:
            return sv.Detections.empty()
        names = [d.label for d in result]
        return sv.Detections(xyxy=np.asarray([d.box for d in result], dtype=np.float32),
                             confidence=np.asarray([d.score for d in result], dtype=np.float32),
                             class_id=np.array([class_id(n) for n in names]), data={"class_name": np.array(names)})
    raise InputError(f"to_supervision takes detections, a grounding Box or a segmentation mask, got "
                     f"{type(result).__name__}; run it on one image's result (map it over a batch)")
