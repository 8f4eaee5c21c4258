"""masked_image: masked visual-token prediction on images without annotations (BEiT, Bao et al. 2021).

Some patches of the input are hidden from the encoder (``patch_mask``: the model puts its learned
mask embedding in their place, as for inpainting) and the target is the image's VQ codes under the
image tokenizer (the h*w codes of the picture letterboxed at the tokenizer's size, then eos, as
generate_image writes them). Only the codes of hidden regions count in the loss
(``Example.label_weights``: 1 on a code cell that a hidden patch overlaps, 0 elsewhere, 0 on eos),
so the model learns to fill in what it cannot see from what it can. No annotation is needed: any
image source trains it (``{source: folder, path: DIR}``).

The mask is BEiT's blockwise masking over the patches that show the picture (not the letterbox's
padding): rectangles of random area and aspect ratio are added until ``mask_ratio`` (0.4) of those
patches are hidden. The code grid may differ from the patch grid; a code cell counts as hidden when
any patch it overlaps is hidden (:func:`code_cells`).

In training the mask is drawn from the example's generator; at inference (``rng=None``) it is a
pure function of the ``mask_seed`` option and the letterboxed picture's pixels, so building the
same image twice hides the same patches, and different images get different masks.

Decoding writes exactly h*w image codes, then eos. With ``force_visible`` (the default) the codes
of the visible cells are the tokenizer's own codes of the input (the model is only asked about the
hidden cells, as in training, where the decoder reads the true codes of earlier cells).

``parse`` -> :class:`MaskedCodes`: the code grid, the hidden cells and the decoded picture in the
caller's frame. Metrics: ``code_accuracy`` (share of hidden cells whose code is the tokenizer's,
per image, averaged), ``psnr`` of the decoded picture against the original inside the hidden
cells (capped at 100 dB), ``baseline_accuracy`` (a non-learned guess: every hidden cell gets the
most frequent code of the image's visible cells) and, given the pipeline, ``reference_psnr`` (the
tokenizer's own reconstruction scored the same way: the ceiling a perfect predictor reaches).
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from transformers import LogitsProcessor

from .. import viz
from ..errors import TaskError
from ..images import IMAGE_EXTENSIONS, Letterbox, letterbox, load_image, unletterbox
from ..metrics import psnr
from .base import Example, Task, TaskContext, short
from .dense import image_codes
from .image_gen import to_pil
from .options import Option
from .registry import register

__all__ = ["MaskedImage", "MaskedCodes", "block_mask", "code_cells", "content_patches", "ForcedCodesProcessor"]

PSNR_CAP = 100.0  # dB: a region decoded exactly would otherwise count as infinite


@dataclass
class MaskedCodes:
    """What masked_image reads from a generation: the code grid (h, w) of local image codes, the
    code cells that were hidden (h, w) bool (None when unknown), and the picture the codes decode
    to, in the caller's original frame (at the tokenizer's size without one)."""

    codes: np.ndarray
    masked: np.ndarray | None
    picture: Image.Image

    def to_dict(self) -> dict:
        return {"codes": np.asarray(self.codes).tolist(),
                "masked": None if self.masked is None else np.asarray(self.masked, dtype=bool).tolist()}


# ---------------------------------------------------------------------------- masks
def block_mask(rows: int, cols: int, count: int, rng: np.random.Generator, min_block: int | None = None,
               aspect: float = 0.3) -> np.ndarray:
    """BEiT's blockwise masking: bool (rows, cols) with ``count`` cells set, made of rectangles.

    Each rectangle has an area drawn between ``min_block`` and the cells still to hide and a log
    aspect ratio uniform in [log aspect, log 1/aspect]; it is kept when it adds new cells without
    passing ``count`` (10 tries, as BEiT's MaskingGenerator). ``min_block`` defaults to BEiT's 16
    of 196 patches scaled to this grid. When no rectangle fits any more, single cells are added
    until ``count`` is reached (small grids), so the count is exact.
    """
    count = max(0, min(int(count), rows * cols))
    mask = np.zeros((rows, cols), dtype=bool)
    if min_block is None:
        min_block = max(1, round(16 * rows * cols / 196))
    log_aspect = (math.log(aspect), math.log(1 / aspect))
    while mask.sum() < count:
        left = count - int(mask.sum())
        added = 0
        for _ in range(10):
            area = rng.uniform(min(min_block, left), left)
            ratio = math.exp(rng.uniform(*log_aspect))
            h, w = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
            if not (0 < h < rows and 0 < w < cols):
                continue
            top, lft = int(rng.integers(0, rows - h + 1)), int(rng.integers(0, cols - w + 1))
            new = h * w - int(mask[top:top + h, lft:lft + w].sum())
            if 0 < new <= left:
                mask[top:top + h, lft:lft + w] = True
                added = new
                break
        if not added:
            free = np.flatnonzero(~mask.ravel())
            mask.ravel()[rng.choice(free, size=left, replace=False)] = True
    return mask


def content_patches(info: Letterbox, patch_size: int) -> tuple[int, int]:
    """(rows, cols) of the patches that show some of the picture (letterboxing pads right and below)."""
    w, h = info.content
    return max(1, math.ceil(h / patch_size)), max(1, math.ceil(w / patch_size))


def code_cells(patch_mask: np.ndarray, side: int) -> np.ndarray:
    """Bool (side, side): the code cells that a hidden patch overlaps. Both grids cover the same
    square (the letterboxed picture at the model's size, and at the tokenizer's), so code cell i
    spans patch rows [floor(i G / side), ceil((i + 1) G / side)) of a G x G patch grid."""
    patch_mask = np.asarray(patch_mask, dtype=bool)
    G = patch_mask.shape[0]
    out = np.zeros((side, side), dtype=bool)
    span = [(i * G // side, max(i * G // side + 1, -(-(i + 1) * G // side))) for i in range(side)]
    for i, (r0, r1) in enumerate(span):
        for j, (c0, c1) in enumerate(span):
            out[i, j] = bool(patch_mask[r0:r1, c0:c1].any())
    return out


def cell_pixels(cells: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bool (height, width) of the original frame: the pixels inside the given code cells (a pixel
    at (x, y) lies in cell (floor(y n / L), floor(x n / L)), L the long side, n the grid side)."""
    n, long = cells.shape[0], max(width, height)
    rows = np.minimum(((np.arange(height) + 0.5) * n / long).astype(int), n - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * n / long).astype(int), n - 1)
    return cells[rows[:, None], cols[None, :]]


class ForcedCodesProcessor(LogitsProcessor):
    """Exactly ``num_codes`` image codes, then eos; where a row has a known code for a position
    (``forced[row][pos] >= 0``, a global id), that code only. Beam rows map to their example."""

    def __init__(self, vocab, num_codes: int, forced: list, prefix_len: int = 1):
        self.num_codes, self.prefix_len = int(num_codes), int(prefix_len)
        self.codes = vocab.allowed_mask("image", eos=False)
        self.eos = torch.zeros(vocab.size, dtype=torch.bool)
        self.eos[vocab.eos_id] = True
        rows = [np.full(self.num_codes, -1) if f is None else np.asarray(f, dtype=np.int64) for f in forced] \
            or [np.full(self.num_codes, -1)]
        self.forced = torch.as_tensor(np.stack(rows), dtype=torch.long)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        position = input_ids.shape[1] - self.prefix_len
        V = scores.shape[-1]
        allowed = (self.codes if position < self.num_codes else self.eos)[:V].to(scores.device)
        out = scores.masked_fill(~allowed, float("-inf"))
        if position >= self.num_codes:
            return out
        B, R = scores.shape[0], len(self.forced)
        want = self.forced[[min(r * R // B, R - 1) for r in range(B)], position].to(scores.device)
        rows = (want >= 0).nonzero()[:, 0]
        if len(rows):
            keep = out[rows, want[rows]]
            keep = torch.where(torch.isfinite(keep), keep, torch.zeros_like(keep))
            out[rows] = float("-inf")
            out[rows, want[rows]] = keep
        return out


# ---------------------------------------------------------------------------- the task
@register
class MaskedImage(Task):
    """Hidden patches -> the image's VQ codes (only the hidden cells' codes count)."""

    name = "masked_image"
    headline = "code_accuracy"
    means = {"code_accuracy": "code_accuracy", "psnr": "psnr"}
    writes_image = True
    picture_files = IMAGE_EXTENSIONS
    prompts = {"canonical": "Write the visual tokens of the image, hidden patches included.",
               "paraphrases": ["Fill in the hidden patches as image tokens.",
                               "Give the image tokens of the whole picture.",
                               "Restore the masked parts of the image as visual tokens.",
                               "What are the visual tokens of this image?",
                               "Complete the image tokens where patches are missing."]}
    options = {
        "mask_seed": Option(int, 0, min=0, doc="which patches are hidden at inference (with the picture's pixels)"),
        "mask_ratio": Option(float, above=0, max=1, doc="share of the picture's patches hidden (default 0.4)"),
        "force_visible": Option(bool, True, doc="write the visible cells' codes as the image tokenizer reads "
                                                "them (False: the model writes every code)"),
    }

    def __init__(self, mask_ratio: float = 0.4, min_block: int | None = None, aspect: float = 0.3):
        if not 0 < float(mask_ratio) <= 1:
            raise TaskError(f"masked_image mask_ratio must be in (0, 1], got {mask_ratio!r}")
        if not 0 < float(aspect) <= 1:
            raise TaskError(f"masked_image aspect must be in (0, 1], got {aspect!r}")
        self.mask_ratio, self.min_block, self.aspect = float(mask_ratio), min_block, float(aspect)

    # -- building
    def patch_mask(self, image: Image.Image, info: Letterbox, ctx: TaskContext, rng=None, mask_seed=None,
                   mask_ratio=None) -> np.ndarray:
        """Bool (G, G) over the model's patch grid: the hidden patches of the letterboxed ``image``.
        ``rng`` None: drawn from ``mask_seed`` (default 0) and a checksum of the picture's pixels."""
        if rng is None:
            pixels = zlib.crc32(np.ascontiguousarray(np.asarray(image, dtype=np.uint8)).tobytes())
            rng = np.random.default_rng([int(mask_seed or 0), pixels, 0xBE17])
        rows, cols = content_patches(info, ctx.patch_size)
        rows, cols = min(rows, ctx.patch_grid), min(cols, ctx.patch_grid)
        count = max(1, round(float(mask_ratio or self.mask_ratio) * rows * cols))
        mask = np.zeros((ctx.patch_grid, ctx.patch_grid), dtype=bool)
        mask[:rows, :cols] = block_mask(rows, cols, count, rng, self.min_block, self.aspect)
        return mask

    def build(self, sample, ctx, rng=None, **inputs) -> Example:
        if ctx.image_tokenizer is None:
            raise TaskError("masked_image predicts VQ codes, but no image tokenizer is loaded; load tokenizers "
                            "that include image/ (e.g. tokenizers/shapes)")
        image, info = self._image(sample, ctx)
        original = load_image(sample["image"])
        hidden = self.patch_mask(image, info, ctx, rng, inputs.get("mask_seed"), inputs.get("mask_ratio"))
        tok = ctx.image_tokenizer
        square, _ = letterbox(original, tok.image_size)
        codes = tok.encode([square])[0].cpu().numpy().astype(np.int64)
        cells = code_cells(hidden, tok.grid_size)
        labels = [int(i) for i in ctx.vocab.image_ids(codes.reshape(-1))] + [ctx.vocab.eos_id]
        weights = [float(c) for c in cells.reshape(-1)] + [0.0]
        prompt, ids = self._prompt(ctx, rng, (info.width, info.height), template=inputs.get("prompt"))
        return self._example(ctx, prompt, ids, image, info, labels, weights, patch_mask=hidden,
                             codes=codes, masked=cells, original=original)

    # -- decoding
    def logits_processors(self, ctx, example: Example | None = None, *, force_visible=None, batch=None,
                          **overrides) -> list:
        rows = list(batch or ([example] if example is not None else []))
        forced = []
        for ex in rows:
            meta = getattr(ex, "meta", None) or {}
            if force_visible is False or meta.get("codes") is None or meta.get("masked") is None:
                forced.append(None)
                continue
            known = np.asarray(ctx.vocab.image_ids(np.asarray(meta["codes"]).reshape(-1)), dtype=np.int64)
            forced.append(np.where(np.asarray(meta["masked"]).reshape(-1), -1, known))
        return [ForcedCodesProcessor(ctx.vocab, ctx.image_codes, forced)]

    def generation_kwargs(self, ctx, **overrides) -> dict:
        return {"max_new_tokens": ctx.image_codes + 1, "do_sample": False}

    def parse(self, ids, ctx, info=None, *, meta=None, **kw) -> MaskedCodes:
        """The code grid of a generation (padded with code 0 when short; never raises on malformed
        ids), the hidden cells of the example (``meta``) and the decoded picture in ``info``'s frame."""
        codes = image_codes(ids, ctx)
        masked = (meta or {}).get("masked")
        return MaskedCodes(codes=codes, masked=None if masked is None else np.asarray(masked, dtype=bool),
                           picture=decode_picture(codes, ctx, info))

    # -- scoring
    def metric(self, predictions, examples, samples=None, judge=None) -> dict:
        """``code_accuracy``, ``psnr``, ``baseline_accuracy``, ``reference_psnr`` (see the module)."""
        ctx = getattr(judge, "ctx", None)
        rows = []
        for pred, ex in zip(predictions, examples):
            row = example_scores(pred, ex)
            if ctx is not None and row.get("psnr") is not None:
                truth = decode_picture(ex.meta["codes"], ctx, ex.info)
                row["reference_psnr"] = masked_psnr(truth, ex, row["cells"])
            rows.append(row)
        out = {}
        for key in ("code_accuracy", "psnr", "baseline_accuracy", "reference_psnr"):
            values = [r[key] for r in rows if r.get(key) is not None]
            out[key] = float(np.mean(values)) if values else float("nan")
        out["masked_cells"] = float(np.mean([r["masked_cells"] for r in rows])) if rows else float("nan")
        out["per_example"] = [{k: r.get(k) for k in ("code_accuracy", "psnr", "masked_cells")} for r in rows]
        return out

    def example_record(self, prediction, example, sample) -> dict:
        return {"prediction": None, "truth": None}

    def to_record(self, result, inputs, files, stem) -> dict:
        files.mkdir(parents=True, exist_ok=True)
        png = files / f"{stem}_masked.png"
        result.picture.save(png)
        return {"image_png": str(png), **result.to_dict()}

    def save_picture(self, result, path) -> None:
        result.picture.save(path)

    def summary(self, prediction, example, judge=None) -> tuple[str, str]:
        row = example_scores(prediction, example)
        acc = row.get("code_accuracy")
        return (f"{row['masked_cells']} hidden code cells",
                short(f"codes right: {acc:.2f}" if acc is not None else "no hidden cell"))

    def panels(self, image, result, example=None, scale=1.0, judge=None, inputs=None, threshold=None) -> list:
        out = []
        if image is not None and result.masked is not None:
            hidden = np.asarray(load_image(image)).copy()
            hidden[cell_pixels(result.masked, hidden.shape[1], hidden.shape[0])] = 128
            out.append((viz.enlarge(Image.fromarray(hidden), scale), "masked_image: input, hidden cells grey"))
        out.append((viz.enlarge(result.picture, scale), "masked_image: the codes decoded"))
        return out


def decode_picture(codes, ctx: TaskContext, info: Letterbox | None = None) -> Image.Image:
    """A code grid (h, w) decoded by the image tokenizer, in ``info``'s original frame when given."""
    picture = to_pil(ctx.image_tokenizer.decode(torch.as_tensor(np.asarray(codes))[None])[0])
    if info is None:
        return picture
    return unletterbox(picture, Letterbox(info.width, info.height, ctx.image_tokenizer.image_size), Image.BICUBIC)


def masked_psnr(picture: Image.Image, example: Example, cells: np.ndarray) -> float | None:
    """PSNR (dB, capped) of ``picture`` against the example's original inside ``cells``."""
    original = example.meta.get("original")
    if original is None or not cells.any():
        return None
    original = load_image(original)
    pixels = cell_pixels(cells, *original.size)
    if not pixels.any():
        return None
    pred = np.asarray(picture.convert("RGB").resize(original.size, Image.BICUBIC))
    return min(PSNR_CAP, psnr(pred, np.asarray(original), mask=pixels))


def example_scores(prediction: MaskedCodes, example: Example) -> dict:
    """One example's figures: accuracy of the codes of its hidden cells, the non-learned baseline
    (the most frequent visible code everywhere), the PSNR inside them, and how many there are."""
    truth = example.meta.get("codes")
    cells = prediction.masked if prediction.masked is not None else example.meta.get("masked")
    if truth is None or cells is None:
        return {"masked_cells": 0, "cells": np.zeros((1, 1), dtype=bool)}
    truth, cells = np.asarray(truth), np.asarray(cells, dtype=bool)
    row = {"masked_cells": int(cells.sum()), "cells": cells}
    if cells.any():
        row["code_accuracy"] = float(np.mean(np.asarray(prediction.codes)[cells] == truth[cells]))
        visible = truth[~cells]
        guess = np.bincount(visible).argmax() if visible.size else -1
        row["baseline_accuracy"] = float(np.mean(truth[cells] == guess))
        row["psnr"] = masked_psnr(prediction.picture, example, cells)
    return row
