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

from .. import viz
from ..data.coco import encode_mask
from ..images import IMAGE_EXTENSIONS, Letterbox, letterbox_array, unletterbox
from ..metrics import depth_metrics, mask_iou, miou
from .registry import register
from .base import Example, Task, TaskContext, finite
from .constraints import ImageCodesProcessor
from .ground import NotThere, ask_absent, expression_and_object, not_found_figures, not_found_record, one_expression
from .options import Option

REFINE = Option(bool, True, doc="let the input picture guide the decoded edges when the image tokenizer has a refiner")


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
    writes_image = True
    options = {"refine": REFINE}

    def logits_processors(self, ctx, example: Example | None = None, **overrides) -> list:
        return [ImageCodesProcessor(ctx.vocab, ctx.image_codes)]

    def generation_kwargs(self, ctx, **overrides) -> dict:
        return {"max_new_tokens": ctx.image_codes + 1}

    def _codes_target(self, ctx, codes) -> list[int]:
        flat = np.asarray(codes.detach().cpu() if hasattr(codes, "detach") else codes).reshape(-1)
        return [int(i) for i in ctx.vocab.image_ids(flat)] + [ctx.vocab.eos_id]


@register
class Segment(NotThere, DenseTask):
    """Referring expression -> mask (empty: "not there"). Scored by ``miou``, the mean over the
    expressions that name an object of the mask IoU, and by ``not_found_precision`` /
    ``not_found_recall`` (an empty predicted mask) where there are negatives (see unio.tasks.ground)."""

    name = "segment"
    placeholders = frozenset({"expression"})
    inputs = ("expression",)
    headline = "miou"
    means = {"miou": "iou"}

    def pick_item(self, sample, rng):
        return ask_absent(one_expression(sample, rng, with_mask=True), rng, self.eval_negatives)

    def can_build(self, sample: dict) -> bool:
        objects = sample.get("objects") or []
        return super().can_build(sample) and bool(sample.get("refexps")) and any("mask" in o for o in objects)

    def build(self, sample, ctx, rng=None, **inputs) -> Example:
        image, info = self._image(sample, ctx)
        expression, obj = expression_and_object(sample, rng, inputs, self.name)
        negative = self.negative(sample, ctx, rng, inputs)
        prompt, ids = self._prompt(ctx, rng, (info.width, info.height), template=inputs.get("prompt"),
                                   expression=negative or expression)
        labels, mask = [], None
        if negative is not None:  # the answer is an empty mask
            obj, expression = {"mask": np.zeros((info.height, info.width), dtype=bool)}, negative
        if obj is not None and obj.get("mask") is not None:
            mask = np.asarray(obj["mask"], dtype=bool)
            square = letterbox_array(mask, ctx.image_tokenizer.image_size, False, nearest=True)
            labels = self._codes_target(ctx, ctx.image_tokenizer.encode_mask(square[None]))
        return self._example(ctx, prompt, ids, image, info, labels, expression=expression, mask=mask,
                             **({"negative": True} if negative is not None else {}))

    def parse(self, ids, ctx, info=None, **kw) -> np.ndarray:
        """Bool mask (H, W) of the original image."""
        mask = ctx.image_tokenizer.decode_mask(image_codes(ids, ctx)[None], guide=guide(kw))[0]
        return np.asarray(to_original(np.asarray(mask, dtype=bool), info, ctx), dtype=bool)

    def metric(self, predictions, examples, samples=None, judge=None) -> dict[str, float]:
        negative = [bool(e.meta.get("negative")) for e in examples]
        pairs = [(p, e.meta.get("mask")) for p, e, n in zip(predictions, examples, negative) if not n]
        out = {"miou": float(miou([p for p, _ in pairs], [m for _, m in pairs]))}
        return {**out, **not_found_figures([not np.any(p) for p in predictions], negative)}

    def example_record(self, prediction, example, sample) -> dict:
        m = example.meta
        rec = {"prediction": encode_mask(prediction), "truth": encode_mask(m["mask"]), "expression": m.get("expression")}
        if not m.get("negative"):
            rec["iou"] = mask_iou(prediction, m["mask"])
        return {**rec, **not_found_record(not np.any(prediction), bool(m.get("negative")))}

    def to_record(self, result, inputs, files, stem) -> dict:
        return {"expression": inputs.get("expression"), "mask": encode_mask(result), "area": int(result.sum())}

    def summary(self, prediction, example, judge=None) -> tuple[str, str]:
        m = example.meta
        if m.get("negative"):
            return f"{m['expression']} (not there)", f"{int(np.sum(prediction))} px"
        return (f"{m['expression']}: {int(np.sum(m['mask']))} px",
                f"{int(np.sum(prediction))} px, IoU {mask_iou(prediction, m['mask']):.2f}")

    def panels(self, image, result, example=None, scale=1.0, judge=None, inputs=None, threshold=None) -> list:
        if example is None:
            return [(viz.mask_panel(image, result, scale=scale), "")]
        m = example.meta
        said = "(not there)" if m.get("negative") else f"IoU {mask_iou(result, m['mask']):.2f}"
        return [(viz.mask_panel(image, result, viz.PRED, scale), f"segment '{m['expression']}': {said}"),
                (viz.mask_panel(image, m["mask"], viz.TRUTH, scale), "segment: truth")]


@register
class Depth(DenseTask):
    """Depth map. Scored by ``absrel``, ``rmse``, ``delta1`` over the pixels named by ``pixels``:
    ``"objects"`` (the union of the object masks) where the sample has masks, since the background
    would dominate an all-pixel mean; ``absrel_all`` over every valid pixel."""

    name = "depth"
    headline = "absrel"
    means = {"absrel": "absrel"}
    picture_files = (*IMAGE_EXTENSIONS, ".npy")

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

    def metric(self, predictions, examples, samples=None, judge=None) -> dict:
        truth = [e.meta["depth"] for e in examples]
        if samples is None:
            return {k: float(v) for k, v in depth_metrics(predictions, truth).items()}
        masks = [object_pixels(s) for s in samples]
        n_objects = sum(m is not None for m in masks)
        out: dict = depth_metrics(predictions, truth, masks)
        out["pixels"] = ("objects" if n_objects == len(samples) else "all" if n_objects == 0
                         else "objects where masked, else all")
        out["absrel_all"] = depth_metrics(predictions, truth)["absrel"]
        return out

    def example_record(self, prediction, example, sample) -> dict:
        union = object_pixels(sample)
        return {"prediction": None, "truth": None, "absrel": depth_metrics(prediction, example.meta["depth"], union)["absrel"],
                "pixels": "objects" if union is not None else "all"}

    def to_record(self, result, inputs, files, stem) -> dict:
        files.mkdir(parents=True, exist_ok=True)
        npy, png = files / f"{stem}_depth.npy", files / f"{stem}_depth.png"
        np.save(npy, result.astype(np.float32))
        viz.colorize_depth(result).save(png)
        return {"depth_npy": str(npy), "depth_png": str(png), "min": finite(result.min()), "max": finite(result.max())}

    def save_picture(self, result, path) -> None:
        if path.suffix.lower() == ".npy":
            np.save(path, result.astype(np.float32))
        else:
            viz.colorize_depth(result).save(path)

    def summary(self, prediction, example, judge=None) -> tuple[str, str]:
        d = example.meta["depth"]
        return (f"depth {np.min(d):.2f}..{np.max(d):.2f}",
                f"AbsRel {depth_metrics(prediction, d)['absrel']:.2f} (all pixels)")

    def panels(self, image, result, example=None, scale=1.0, judge=None, inputs=None, threshold=None) -> list:
        if example is None:
            return []  # the map itself is written beside the records
        far = float(judge.ctx.image_tokenizer.depth_range[1]) if judge is not None else float(np.max(result))
        draw = lambda d: viz.enlarge(viz.colorize_depth(d, vmin=0.0, vmax=far, reverse=True), scale)  # noqa: E731
        absrel = depth_metrics(result, example.meta["depth"])["absrel"]
        return [(draw(result), f"depth: AbsRel {absrel:.2f} (bright = near)"), (draw(example.meta["depth"]), "depth: truth")]


def object_pixels(sample) -> np.ndarray | None:
    """The union of the sample's object masks; None without masks or when it is empty."""
    masks = [np.asarray(o["mask"], dtype=bool) for o in sample.get("objects") or [] if o.get("mask") is not None]
    union = np.logical_or.reduce(masks) if masks else None
    return union if union is not None and union.any() else None
