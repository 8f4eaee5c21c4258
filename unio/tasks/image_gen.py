"""Image outputs as VQ codes: generate_image (text -> image) and inpaint (image + box + text).

Both targets are the h*w codes of an image at the image tokenizer's resolution, then eos.

- generate_image: no input image. In training the text is replaced by the task's
  ``unconditional`` prompt with probability ``p_uncond`` (condition dropout), which is what
  classifier-free guidance (Ho & Salimans, 2022) needs at inference.
- inpaint: the patches under the box are hidden from the encoder (``patch_mask``); the prompt
  gives the box as location tokens and the text to draw; the target is the whole image. At
  inference the generated content of the box is pasted into the caller's original image.

Sampling (top-k / top-p / temperature / guidance) is done by :class:`GuidedSampler`.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from ..errors import TaskError
from ..images import Letterbox, letterbox, load_image
from .base import Example, Task, TaskContext, check_box, pick
from .constraints import GuidedSampler, ImageCodesProcessor
from .dense import image_codes
from .text import _texts


def to_pil(pixels) -> Image.Image:
    """A decoded picture, float (3, H, W) in [0, 1], as an 8-bit RGB PIL image."""
    arr = (pixels.float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(arr)


class ImageTask(Task):
    def logits_processors(self, ctx, example: Example | None = None, *, guidance=None, top_k=None, top_p=0.9,
                          temperature=1.0, seed=None, **overrides) -> list:
        gen = None
        if seed is not None:
            gen = torch.Generator().manual_seed(int(seed))
        return [ImageCodesProcessor(ctx.vocab, ctx.image_codes),
                GuidedSampler(guidance=guidance, temperature=temperature, top_k=top_k, top_p=top_p, generator=gen)]

    def generation_kwargs(self, ctx, **overrides) -> dict:
        return {"max_new_tokens": ctx.image_codes + 1, "do_sample": False}

    def _codes_target(self, ctx, pil: Image.Image) -> list[int]:
        T = ctx.image_tokenizer.image_size
        square, _ = letterbox(pil, T)
        codes = ctx.image_tokenizer.encode([square]).reshape(-1).cpu().numpy()
        return [int(i) for i in ctx.vocab.image_ids(codes)] + [ctx.vocab.eos_id]

    def _decode(self, ids, ctx) -> Image.Image:
        return to_pil(ctx.image_tokenizer.decode(image_codes(ids, ctx)[None])[0])

    def metric(self, predictions, examples) -> dict[str, float]:
        """PSNR against the target image (inpainting: inside the box only)."""
        from ..metrics import psnr
        values = []
        for pred, e in zip(predictions, examples):
            target = e.meta.get("target")
            if target is None:
                continue
            pred = np.asarray(pred.convert("RGB").resize(target.size, Image.BICUBIC))
            mask = None
            if e.meta.get("box") is not None:
                x1, y1, x2, y2 = (int(round(v)) for v in e.meta["box"])
                mask = np.zeros(pred.shape[:2], dtype=bool)
                mask[max(0, y1):y2, max(0, x1):x2] = True
                if not mask.any():
                    continue
            values.append(psnr(pred, np.asarray(target), mask=mask))
        return {"psnr": float(np.mean(values)) if values else float("nan")}


class GenerateImage(ImageTask):
    name = "generate_image"
    placeholders = frozenset({"text"})
    needs_image = False

    def __init__(self, p_uncond: float = 0.1):
        self.p_uncond = float(p_uncond)

    def can_build(self, sample: dict) -> bool:
        return sample.get("image") is not None and bool(_texts(sample.get("caption")))

    def build(self, sample, ctx, rng=None, **inputs) -> Example:
        text = inputs.get("text")
        if text is None:
            captions = _texts(sample.get("caption"))
            if not captions:
                raise TaskError("generate_image needs text='...' (or a sample with a caption)")
            text = pick(captions, rng)
        if not isinstance(text, str) or not text.strip():
            raise TaskError(f"generate_image needs a non-empty text, got {text!r}")
        template = inputs.get("prompt")
        if rng is not None and template is None and rng.random() < self.p_uncond:
            template = ctx.prompts.unconditional(self.name)
        prompt, ids = self._prompt(ctx, rng, None, template=template, text=text)
        target = load_image(sample["image"]) if sample.get("image") is not None else None
        labels = self._codes_target(ctx, target) if target is not None else []
        return self._example(ctx, prompt, ids, None, None, labels, text=text, target=target)

    def unconditional(self, ctx) -> Example:
        """The second branch of classifier-free guidance: the prompt without the text."""
        template = ctx.prompts.unconditional(self.name)
        if template is None:
            raise TaskError("classifier-free guidance needs an 'unconditional' prompt for generate_image in "
                            "prompts/*.yaml")
        prompt, ids = self._prompt(ctx, None, None, template=template)
        return self._example(ctx, prompt, ids, None, None)

    def parse(self, ids, ctx, info=None, **kw) -> Image.Image:
        """A PIL image at the image tokenizer's resolution (``info`` resizes it to info's W x H)."""
        image = self._decode(ids, ctx)
        if info is not None and (info.width, info.height) != image.size:
            image = image.resize((info.width, info.height), Image.BICUBIC)
        return image


class Inpaint(ImageTask):
    name = "inpaint"
    placeholders = frozenset({"region", "text"})

    def can_build(self, sample: dict) -> bool:
        return super().can_build(sample) and bool(sample.get("objects"))

    def build(self, sample, ctx, rng=None, **inputs) -> Example:
        image, info = self._image(sample, ctx)
        original = load_image(sample["image"])
        box, text = inputs.get("box"), inputs.get("text")
        if box is None or text is None:
            objects = sample.get("objects") or []
            if not objects:
                raise TaskError("inpaint needs box=(x1, y1, x2, y2) and text='...' (or a sample with objects)")
            obj = pick(objects, rng)
            box = box if box is not None else obj["box"]
            text = text if text is not None else obj.get("label", "")
        if not isinstance(text, str) or not text.strip():
            raise TaskError(f"inpaint needs a non-empty text describing what to draw, got {text!r}")
        box = check_box(box)
        prompt, ids = self._prompt(ctx, rng, (info.width, info.height), template=inputs.get("prompt"),
                                   region=box, text=text)
        labels = self._codes_target(ctx, original) if "objects" in sample else []
        return self._example(ctx, prompt, ids, image, info, labels, patch_mask=box_patches(box, info, ctx),
                             box=box, text=text, original=original, target=original if labels else None)

    def parse(self, ids, ctx, info=None, *, meta=None, **kw) -> Image.Image:
        """The original image with the box replaced by the generated content (needs ``meta``)."""
        generated = self._decode(ids, ctx)
        meta = meta or {}
        original, box = meta.get("original"), meta.get("box")
        T = ctx.image_tokenizer.image_size
        if info is None or original is None or box is None:
            return generated
        full = generated.crop((0, 0, *Letterbox(info.width, info.height, T).content)).resize(
            (info.width, info.height), Image.BICUBIC)
        x1, y1 = max(0, math.floor(box[0])), max(0, math.floor(box[1]))
        x2, y2 = min(info.width, math.ceil(box[2])), min(info.height, math.ceil(box[3]))
        out = load_image(original).copy()
        if x2 > x1 and y2 > y1:
            out.paste(full.crop((x1, y1, x2, y2)), (x1, y1))
        return out


def box_patches(box, info: Letterbox, ctx: TaskContext) -> np.ndarray:
    """Bool (S/P, S/P): the patches of the letterboxed input that a pixel box overlaps."""
    G, P, s = ctx.patch_grid, ctx.patch_size, info.scale
    x1, y1, x2, y2 = (v * s for v in box)
    mask = np.zeros((G, G), dtype=bool)
    c0, r0 = min(G - 1, int(x1 // P)), min(G - 1, int(y1 // P))
    c1, r1 = max(c0 + 1, min(G, math.ceil(x2 / P))), max(r0 + 1, min(G, math.ceil(y2 / P)))
    mask[r0:r1, c0:c1] = True
    return mask
