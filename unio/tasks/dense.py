"""Dense outputs as VQ image codes (Unified-IO's way): segment (expression -> mask) and depth.

The target map is letterboxed like the input image, but at the image tokenizer's resolution,
drawn as an image by unio.tokenizers.dense, and encoded into exactly h*w codes, then eos.
Reading back decodes the codes, draws the mask / depth out of the image, and maps it to the
caller's original size with unio.images.unletterbox. When the image tokenizer has a refiner for
the kind (unio.tokenizers.refine), the input picture guides the decoded edges (option
``refine``, on by default; ``refine=False`` reads the codes alone).
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from ..images import Letterbox, unletterbox
from .base import Example, Task, TaskContext
from .constraints import ImageCodesProcessor
from .ground import expression_and_object


def letterbox_array(arr: np.ndarray, size: int, fill: float, nearest: bool) -> np.ndarray:
    """An (H, W) mask or depth map placed top-left in a size x size canvas (as images.letterbox)."""
    arr = np.asarray(arr)
    info = Letterbox(arr.shape[1], arr.shape[0], int(size))
    w, h = info.content
    if nearest:
        small = np.asarray(Image.fromarray(arr.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > 127
        out = np.full((size, size), bool(fill))
    else:
        small = np.asarray(Image.fromarray(arr.astype(np.float32), mode="F").resize((w, h), Image.BILINEAR))
        out = np.full((size, size), fill, dtype=np.float32)
    out[:h, :w] = small
    return out


def image_codes(ids, ctx: TaskContext) -> np.ndarray:
    """The first h*w image codes of a generation (padded with code 0 when short): (h, w) local codes."""
    n, side = ctx.image_codes, ctx.image_tokenizer.grid_size
    lo, hi = ctx.vocab.image_range
    eos = ctx.vocab.eos_id
    codes = []
    for g in ids:
        g = int(g)
        if g == eos:
            break
        if lo <= g < hi:
            codes.append(g - lo)
            if len(codes) == n:
                break
    codes += [0] * (n - len(codes))
    return np.asarray(codes, dtype=np.int64).reshape(side, side)


def guide(kw) -> list | None:
    """The picture that guides the refiner, from parse's keywords (None: no refinement)."""
    image = kw.get("image")
    return [image] if image is not None and kw.get("refine", True) is not False else None


def to_original(dense, info: Letterbox | None, ctx: TaskContext):
    """A map at the tokenizer's resolution -> the caller's original frame (model frame without info)."""
    T = ctx.image_tokenizer.image_size
    if info is None:
        info = Letterbox(ctx.image_size, ctx.image_size, ctx.image_size)
    return unletterbox(dense, Letterbox(info.width, info.height, T))


class DenseTask(Task):
    max_new_tokens = 0  # set from the image tokenizer

    def logits_processors(self, ctx, example: Example | None = None, **overrides) -> list:
        return [ImageCodesProcessor(ctx.vocab, ctx.image_codes)]

    def generation_kwargs(self, ctx, **overrides) -> dict:
        return {"max_new_tokens": ctx.image_codes + 1}

    def _codes_target(self, ctx, codes) -> list[int]:
        flat = np.asarray(codes.detach().cpu() if hasattr(codes, "detach") else codes).reshape(-1)
        return [int(i) for i in ctx.vocab.image_ids(flat)] + [ctx.vocab.eos_id]


class Segment(DenseTask):
    name = "segment"
    placeholders = frozenset({"expression"})

    def can_build(self, sample: dict) -> bool:
        objects = sample.get("objects") or []
        return super().can_build(sample) and bool(sample.get("refexps")) and any("mask" in o for o in objects)

    def build(self, sample, ctx, rng=None, **inputs) -> Example:
        image, info = self._image(sample, ctx)
        expression, obj = expression_and_object(sample, rng, inputs, self.name)
        prompt, ids = self._prompt(ctx, rng, (info.width, info.height), template=inputs.get("prompt"),
                                   expression=expression)
        labels, mask = [], None
        if obj is not None and obj.get("mask") is not None:
            mask = np.asarray(obj["mask"], dtype=bool)
            square = letterbox_array(mask, ctx.image_tokenizer.image_size, False, nearest=True)
            labels = self._codes_target(ctx, ctx.image_tokenizer.encode_mask(square[None]))
        return self._example(ctx, prompt, ids, image, info, labels, expression=expression, mask=mask)

    def parse(self, ids, ctx, info=None, **kw) -> np.ndarray:
        """Bool mask (H, W) of the original image."""
        mask = ctx.image_tokenizer.decode_mask(image_codes(ids, ctx)[None], guide=guide(kw))[0]
        return np.asarray(to_original(np.asarray(mask, dtype=bool), info, ctx), dtype=bool)

    def metric(self, predictions, examples) -> dict[str, float]:
        from ..metrics import miou
        return {"miou": float(miou(predictions, [e.meta.get("mask") for e in examples]))}


class Depth(DenseTask):
    name = "depth"

    def can_build(self, sample: dict) -> bool:
        return super().can_build(sample) and sample.get("depth") is not None

    def build(self, sample, ctx, rng=None, **inputs) -> Example:
        image, info = self._image(sample, ctx)
        prompt, ids = self._prompt(ctx, rng, (info.width, info.height), template=inputs.get("prompt"))
        labels, depth = [], sample.get("depth")
        if depth is not None:
            depth = np.asarray(depth, dtype=np.float32)
            far = ctx.image_tokenizer.depth_range[1]
            square = letterbox_array(np.nan_to_num(depth, nan=far), ctx.image_tokenizer.image_size, far, nearest=False)
            labels = self._codes_target(ctx, ctx.image_tokenizer.encode_depth(square[None]))
        return self._example(ctx, prompt, ids, image, info, labels, depth=depth)

    def parse(self, ids, ctx, info=None, **kw) -> np.ndarray:
        """Depth float32 (H, W) of the original image, in the image tokenizer's depth units."""
        depth = ctx.image_tokenizer.decode_depth(image_codes(ids, ctx)[None], guide=guide(kw))[0]
        return np.asarray(to_original(np.asarray(depth, dtype=np.float32), info, ctx), dtype=np.float32)

    def metric(self, predictions, examples) -> dict[str, float]:
        from ..metrics import depth_metrics
        return {k: float(v) for k, v in depth_metrics(predictions, [e.meta.get("depth") for e in examples]).items()}
