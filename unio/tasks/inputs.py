"""The per-item inputs of a call: one item or a batch of them, and inputs broadcast over the items.

An item is what a task reads besides its text inputs: one picture for most tasks, several for a
task with ``num_images`` != 1 (an image pair for ``reason``, the frames of a clip for the video
tasks: a list of pictures, a folder of frames, an animated GIF or a video file). The Pipeline, the
server and the CLI shape what callers give them with these, so all three accept the same things.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from ..data.frames import is_clip_source, load_frames
from ..errors import InputError
from ..images import load_image
from .base import Box, check_box

__all__ = ["is_batch", "count_items", "broadcast", "several_image_items"]


def is_batch(x) -> bool:
    if isinstance(x, (list, tuple)):
        return True
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return x.ndim == 4
    return False


def count_items(name: str, value) -> int | None:
    """How many items a per-item input lists (a list of strings, an (n, 4) array of boxes); None for one."""
    if name == "box":
        try:
            arr = np.asarray([list(b) for b in value] if isinstance(value, (list, tuple)) and value
                             and not np.isscalar(value[0]) else value, dtype=np.float64)
        except (TypeError, ValueError):
            return None
        return len(arr) if arr.ndim == 2 else None
    return len(value) if isinstance(value, (list, tuple)) else None


def broadcast(name: str, value, n: int, batch: bool) -> list:
    """A per-item input (question, expression, box, text) for each of ``n`` items."""
    if name == "box":
        rows = value.to_list() if isinstance(value, Box) else value
        try:
            arr = np.asarray([list(b) if isinstance(b, Box) else b for b in rows]
                             if isinstance(rows, (list, tuple)) else rows, dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError(f"box must be (x1, y1, x2, y2) or a list of such boxes, got {value!r}") from None
        if arr.shape == (4,):
            return [check_box(arr)] * n
        if batch and arr.shape == (n, 4):
            return [check_box(b) for b in arr]
        raise InputError(f"box must be (x1, y1, x2, y2), or one box per image ({n}, 4); got shape {arr.shape}")
    if isinstance(value, str):
        return [value] * n
    if batch and isinstance(value, (list, tuple)) and len(value) == n:
        return list(value)
    raise InputError(f"{name} must be a string, or a list of {n} strings (one per image); got {value!r:.80}")


def _picture_like(x) -> bool:
    """One picture (not a clip source, not a list of pictures)."""
    if isinstance(x, (Image.Image,)):
        return True
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return x.ndim in (2, 3)
    return isinstance(x, (str, os.PathLike)) and not is_clip_source(x)


def several_image_items(image, num_images: int | None, frames: int | None = None,
                        max_side: int | None = None) -> tuple[list[list[Image.Image]], bool]:
    """What a task of several images per item was given -> (items, each a list of RGB pictures; batch?).

    One item: a list/tuple of pictures (``[left, right]``, a clip's frames), a folder of frames, an
    animated GIF or a video file. A batch: a list of such items. ``frames``: clips are read as that many
    frames spread evenly (:func:`unio.data.frames.load_frames`); pairs are read as given.
    """
    clip = num_images is None

    def item(x) -> list[Image.Image]:
        if clip:
            return load_frames(x, frames)
        if isinstance(x, (list, tuple)):
            return [load_image(p, max_side=max_side) for p in x]
        if is_clip_source(x):
            return load_frames(x)
        return [load_image(x, max_side=max_side)]

    if isinstance(image, (list, tuple)):
        if not image:
            raise InputError("got an empty list of images; pass the item's images (e.g. [left, right]) "
                             "or a list of such items")
        if all(_picture_like(x) for x in image):
            return [item(list(image))], False
        return [item(x) for x in image], True
    return [item(image)], False
