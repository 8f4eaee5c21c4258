"""Image outputs as VQ codes: generate_image (text -> image) and inpaint (image + box + text).

Both targets are the h*w codes of an image at the image tokenizer's resolution, then eos.

- generate_image: no input image. In training the text is replaced by the task's
  ``unconditional`` prompt with probability ``p_uncond`` (condition dropout), which is what
  classifier-free guidance (Ho & Salimans, 2022) needs at inference.
- inpaint: the patches under the box are hidden from the encoder (``patch_mask``); the prompt
  gives the box as location tokens and the text to draw; the target is the whole image. At
  inference the generated content of the box is pasted into the caller's original image.

Sampling (top-k / top-p / temperature / guidance) is done by :class:`GuidedSampler`;
``candidates`` = k draws k pictures per text and keeps one (:meth:`GenerateImage.choose`).

generate_image is scored by ``consistency`` and ``object_recall`` (see :func:`consistency`), and
the same two on the image tokenizer's reconstruction of each real image
(``reference_consistency``, ``reference_object_recall``): what a generator that wrote exactly
the real image's codes would score, the ceiling that the detector and the image tokenizer leave
the metric. inpaint is scored by ``psnr`` inside the box against the original image.
"""
from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np
import torch
from PIL import Image

from .. import viz
from ..data.shapes_judge import judge_many, read_picture, read_text
from ..errors import InputError, TaskError
from ..images import IMAGE_EXTENSIONS, Letterbox, letterbox, load_image
from ..metrics import psnr, text_recall
from .registry import get_task, register
from .base import Example, Task, TaskContext, box_list, check_box, fmt_box, one_object, pick, short
from .constraints import GuidedSampler, ImageCodesProcessor
from .dense import image_codes
from .detect import Detect
from .options import Option
from .text import Caption, _texts

CONSISTENCY_THRESHOLD = 0.5   # a generated object counts as found when its detection scores at least this
RERANKERS = ("recaption", "caption", "pmi")  # how generate_image chooses among candidates
SAMPLING = {
    "top_k": Option(int, min=1, doc="sample among the k most likely codes"),
    "top_p": Option(float, 0.9, above=0, max=1, doc="nucleus sampling mass"),
    "temperature": Option(float, 1.0, above=0, doc="sampling temperature"),
    "seed": Option(int, min=0, doc="seed of the sampler: the same seed draws the same picture"),
}


def to_pil(pixels) -> Image.Image:
    """A decoded picture, float (3, H, W) in [0, 1], as an 8-bit RGB PIL image."""
    arr = (pixels.float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(arr)


class ImageTask(Task):
    writes_image = True
    options = SAMPLING
    picture_files = IMAGE_EXTENSIONS

    def logits_processors(self, ctx, example: Example | None = None, *, guidance=None, top_k=None, top_p=None,
                          temperature=None, seed=None, **overrides) -> list:
        gen = None
        if seed is not None:
            gen = torch.Generator().manual_seed(int(seed))
        return [ImageCodesProcessor(ctx.vocab, ctx.image_codes),
                GuidedSampler(guidance=None if guidance == 1 else guidance,
                              temperature=SAMPLING["temperature"].default if temperature is None else temperature,
                              top_k=top_k, top_p=SAMPLING["top_p"].default if top_p is None else top_p, generator=gen)]

    def save_picture(self, result, path) -> None:
        result.save(path)

    def generation_kwargs(self, ctx, **overrides) -> dict:
        return {"max_new_tokens": ctx.image_codes + 1, "do_sample": False}

    def _codes_target(self, ctx, pil: Image.Image) -> list[int]:
        T = ctx.image_tokenizer.image_size
        square, _ = letterbox(pil, T)
        codes = ctx.image_tokenizer.encode([square]).reshape(-1).cpu().numpy()
        return [int(i) for i in ctx.vocab.image_ids(codes)] + [ctx.vocab.eos_id]

    def _decode(self, ids, ctx) -> Image.Image:
        return to_pil(ctx.image_tokenizer.decode(image_codes(ids, ctx)[None])[0])

    def metric(self, predictions, examples, samples=None, judge=None) -> dict[str, float]:
        """PSNR against the target image (inpainting: inside the box only)."""
        values = [v for v in (box_psnr(p, e) for p, e in zip(predictions, examples)) if v is not None]
        return {"psnr": float(np.mean(values)) if values else float("nan")}


def box_psnr(pred, example) -> float | None:
    """PSNR of a picture against the example's target, inside its box where it has one."""
    target = example.meta.get("target")
    if target is None:
        return None
    pred = np.asarray(pred.convert("RGB").resize(target.size, Image.BICUBIC))
    mask = None
    if example.meta.get("box") is not None:
        x1, y1, x2, y2 = (int(round(v)) for v in example.meta["box"])
        mask = np.zeros(pred.shape[:2], dtype=bool)
        mask[max(0, y1):y2, max(0, x1):x2] = True
        if not mask.any():
            return None
    return psnr(pred, np.asarray(target), mask=mask)


@register
class GenerateImage(ImageTask):
    name = "generate_image"
    placeholders = frozenset({"text"})
    inputs = ("text",)
    options = {
        **SAMPLING,
        "guidance": Option(float, 1.0, above=0, doc="classifier-free guidance scale (1: none)"),
        "candidates": Option(int, 1, min=1, doc="draw k pictures per text and keep the one that matches it best"),
        "rerank": Option(str, choices=RERANKERS, doc="how candidates are chosen (default recaption, else pmi)"),
        "size": Option("size", doc="(width, height) of the returned picture"),
    }
    headline = "consistency"
    means = {"consistency": "judged_ok"}
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

    # -- sampling several candidates and choosing one (Pipeline.predict_examples calls these)
    def before_run(self, ctx, options: dict) -> None:
        rerank = options.get("rerank")
        if rerank in ("caption", "recaption") and Caption.name not in ctx.prompts.tasks:
            raise InputError(f"rerank={rerank!r} scores pictures with the model's caption prompt, and this model has "
                             f"none (its tasks: {', '.join(ctx.prompts.tasks)}); use rerank='pmi'")

    def candidates(self, options: dict) -> int:
        return int(options.get("candidates") or 1)

    def extra_rows(self, ctx, rows: list, options: dict) -> list:
        """Classifier-free guidance: the unconditional branch beside the conditional rows."""
        return [self.unconditional(ctx)] * len(rows) if options.get("guidance") not in (None, 1) else []

    def choose(self, runner, cond: list, outs: list, k: int, options: dict) -> list:
        """Of each example's ``k`` samples, the one that matches its text best.

        ``rerank="caption"``: the text's log-likelihood as the caption of the drawn picture (the
        model read as an image-to-text scorer, as DALL-E reranked its samples with CLIP, Ramesh et
        al., 2021). ``rerank="recaption"`` (the default where the model has a caption prompt): the
        model also captions each picture, and the picture whose caption repeats most of the text's
        words and word pairs wins (``text_recall``), the caption log-likelihood breaking ties.
        ``rerank="pmi"``: log p(codes | prompt) - log p(codes | unconditional prompt), the pointwise
        mutual information of image and text under the model (the implicit classifier of
        classifier-free guidance, Ho & Salimans, 2022); the codes scored are those of the picture as
        drawn (decoded, then encoded again). ``runner`` is the Pipeline (``ctx``,
        ``target_loglik``, ``predict_examples``).
        """
        ctx = runner.ctx
        rerank = options.get("rerank") or ("recaption" if Caption.name in ctx.prompts.tasks else "pmi")
        tok, vocab = ctx.image_tokenizer, ctx.vocab
        sampled = torch.as_tensor(np.stack([image_codes(ids, ctx) for ids, _, _ in outs[: len(cond)]]))
        pictures = [tok.decode(sampled[i:i + 64]) for i in range(0, len(sampled), 64)]
        match = np.zeros(len(cond))
        if rerank in ("caption", "recaption"):
            caption = get_task(Caption.name)
            rows = [caption.build({"image": to_pil(p)}, ctx) for chunk in pictures for p in chunk]
            score = runner.target_loglik(rows, [ctx.encode_text(ex.meta["text"]) + [vocab.eos_id] for ex in cond])
            if rerank == "recaption":
                said = runner.predict_examples(Caption.name, rows)
                match = np.array([text_recall(ex.meta["text"], s) for ex, s in zip(cond, said)])
        else:
            drawn = torch.cat([tok.encode(p) for p in pictures])
            targets = [[int(t) for t in vocab.image_ids(c.flatten().cpu().numpy())] + [vocab.eos_id] for c in drawn]
            score = runner.target_loglik(cond, targets) - runner.target_loglik([self.unconditional(ctx)] * len(cond),
                                                                               targets)
        best = [j * k + max(range(k), key=lambda c: (match[j * k + c], score[j * k + c])) for j in range(len(cond) // k)]
        return [outs[b] for b in best]

    def finish(self, results, options) -> list:
        size = options.get("size")
        return [im.resize(tuple(size), Image.BICUBIC) for im in results] if size is not None else results

    # -- scoring
    def metric(self, predictions, examples, samples=None, judge=None) -> dict:
        """Text-to-image figures read by the non-learned shapes judge (:mod:`unio.data.shapes_judge`):
        ``consistency`` (everything the text says holds and nothing else is drawn), ``all_found``,
        ``object_recall``, ``extra_rate``, ``position_accuracy``, ``by_objects``, and the same on the
        image tokenizer's reconstructions of the real images (``reference_*``: the ceiling the
        tokenizer leaves a generator). Texts that name no shapes-world object are not judged (NaN).

        ``self_consistency`` (with ``self_object_recall``, ``self_by_objects``) is a diagnostic only:
        the model under test (``judge``, the pipeline) reading its own pictures with its detector."""
        texts = [str(e.meta.get("text", "")) for e in examples]
        judged = judge_many(predictions, texts)
        verdicts = judged.pop("verdicts")
        metrics = {"psnr": super().metric(predictions, examples)["psnr"], **judged}
        ctx = getattr(judge, "ctx", None)  # decodes the real images' codes; it judges nothing
        if ctx is not None and all(e.labels for e in examples):
            reference = judge_many([self.parse(e.labels, ctx) for e in examples], texts)
            metrics.update({f"reference_{k}": v for k, v in reference.items()
                            if k in ("consistency", "all_found", "object_recall", "by_objects")})
        if judge is not None:
            requested = [requested_labels(e, s) for e, s in zip(examples, samples or [{}] * len(examples))]
            own = consistency(judge, predictions, requested)
            metrics.update({"self_consistency": own["consistency"], "self_object_recall": own["object_recall"],
                            "self_by_objects": own["by_objects"]})
        metrics["per_example"] = [{} if v is None else
                                  {"judged_ok": v.ok, "wanted": v.wanted, "found": v.found, "extra": v.extra,
                                   "position_ok": v.relation_ok, "seen": v.seen} for v in verdicts]
        return metrics

    def example_record(self, prediction, example, sample) -> dict:
        return {"prediction": None, "truth": None, "text": example.meta.get("text")}

    def to_record(self, result, inputs, files, stem) -> dict:
        files.mkdir(parents=True, exist_ok=True)
        result.save(files / f"{stem}.png")
        return {"text": inputs["text"], "image_png": str(files / f"{stem}.png")}

    def summary(self, prediction, example, judge=None) -> tuple[str, str]:
        """The text, and what the non-learned shapes judge reads in the picture."""
        seen = read_picture(prediction)
        said = ", ".join(o.label or f"unrecognised {o.color} shape" for o in seen[:4]) or "(no object)"
        return short(example.meta["text"]), f"judge reads: {said}"

    def panels(self, image, result, example=None, scale=1.0, judge=None, inputs=None, threshold=None) -> list:
        text = example.meta["text"] if example is not None else (inputs or {}).get("text", "")
        seen = read_picture(result)
        return [(viz.boxes_panel(result, [o.box for o in seen], [o.label or "?" for o in seen], [o.fit for o in seen],
                                 scale=scale), f"generate: '{short(text, 60)}' (boxes: the shapes judge)")]


def consistency(judge, images, requested: list[list[str]], batch_size: int = 32,
                threshold: float = CONSISTENCY_THRESHOLD, found_out: list | None = None) -> dict:
    """Text-to-image consistency: ``judge``'s detector (``judge.run(Detect.name, images)``) run on
    the generated images.

    ``requested[i]`` are the object labels the text of image ``i`` asked for (with repeats). A
    requested object is *found* when a detection with that label and score >= ``threshold`` is
    left to match it (each detection matches one object). Returns

    - ``consistency``: the fraction of images in which every requested object is found (the
      all-or-nothing rule of object-focused benchmarks such as GenEval, Ghosh et al., 2023);
    - ``object_recall``: the mean over images of the fraction of requested objects found;
    - ``by_objects``: ``consistency`` over the images that request 1, 2, ... objects.

    Images that request nothing are left out; both are NaN when none is left. ``found_out``, a
    list, receives per image the number of requested objects found (None where nothing was
    requested). When ``judge`` is the model that generated the images, this is a diagnostic of
    the model reading its own pictures, not an independent measurement.
    """
    keep = [k for k, r in enumerate(requested) if r]
    if not keep:
        if found_out is not None:
            found_out.extend([None] * len(requested))
        return {"consistency": float("nan"), "object_recall": float("nan"), "threshold": float(threshold),
                "by_objects": {}}
    detections = []
    for start in range(0, len(keep), batch_size):
        chunk = [images[k] for k in keep[start:start + batch_size]]
        detections.extend(judge.run(Detect.name, chunk, batch_size=len(chunk)))
    complete, recall = [], []
    found_per_image: list = [None] * len(requested)
    for k, dets in zip(keep, detections):
        want = Counter(requested[k])
        have = Counter(d.label for d in dets if d.score >= threshold)
        found = sum(min(c, have[label]) for label, c in want.items())
        found_per_image[k] = found
        complete.append(found == sum(want.values()))
        recall.append(found / sum(want.values()))
    if found_out is not None:
        found_out.extend(found_per_image)
    by_count: dict[int, list[bool]] = {}
    for k, ok in zip(keep, complete):
        by_count.setdefault(len(requested[k]), []).append(ok)
    return {"consistency": float(np.mean(complete)), "object_recall": float(np.mean(recall)),
            "threshold": float(threshold),
            "by_objects": {str(c): float(np.mean(v)) for c, v in sorted(by_count.items())}}


def requested_labels(example, sample) -> list[str]:
    """Labels of the sample's objects that the generation text names as whole words (shapes
    captions name every object by its label)."""
    text = str(example.meta.get("text", "")).lower()
    named = lambda label: re.search(rf"\b{re.escape(label.lower())}\b", text) is not None  # noqa: E731
    return [str(o["label"]) for o in sample.get("objects") or [] if o.get("label") and named(str(o["label"]))]


@register
class Inpaint(ImageTask):
    name = "inpaint"
    placeholders = frozenset({"region", "text"})
    inputs = ("box", "text")
    headline = "psnr"
    means = {"psnr": "psnr", "judged_accuracy": "judged_ok"}

    def pick_item(self, sample, rng):
        return one_object(sample, rng)

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


    def metric(self, predictions, examples, samples=None, judge=None) -> dict[str, float]:
        """``psnr`` inside the box against the original, and ``judged_accuracy``: the share of
        inpainted pictures in which the non-learned shapes judge finds the object the text asks for
        (every attribute it gives) centred inside the box (NaN where no text names a shapes object)."""
        read = [inpainted_as_asked(p, e) for p, e in zip(predictions, examples)]
        judged = [r for r in read if r is not None]
        return {**super().metric(predictions, examples),
                "judged_accuracy": float(np.mean(judged)) if judged else float("nan"),
                "per_example": [{"psnr": box_psnr(p, e), "judged_ok": r} for p, e, r in zip(predictions, examples, read)]}

    def example_record(self, prediction, example, sample) -> dict:
        m = example.meta
        return {"prediction": None, "truth": None, "text": m.get("text"), "box": box_list(m.get("box"))}

    def to_record(self, result, inputs, files, stem) -> dict:
        files.mkdir(parents=True, exist_ok=True)
        png = files / f"{stem}_inpaint.png"
        result.save(png)
        return {"text": inputs["text"], "box": list(inputs["box"]), "image_png": str(png)}

    def summary(self, prediction, example, judge=None) -> tuple[str, str]:
        m = example.meta
        return f"{m['text']} at {fmt_box(m['box'])}", f"PSNR {box_psnr(prediction, example):.1f} dB in the box"

    def panels(self, image, result, example=None, scale=1.0, judge=None, inputs=None, threshold=None) -> list:
        if example is None:
            return [(viz.enlarge(result, scale), f"inpaint: '{(inputs or {}).get('text', '')}'")]
        m = example.meta
        hidden = np.asarray(m["original"]).copy()
        x1, y1, x2, y2 = (int(round(v)) for v in m["box"])
        hidden[max(0, y1):y2, max(0, x1):x2] = 128
        return [(viz.boxes_panel(Image.fromarray(hidden), [m["box"]], colors=[viz.TRUTH], scale=scale),
                 f"inpaint: input, '{m['text']}'"),
                (viz.boxes_panel(result, [m["box"]], colors=[viz.PRED], scale=scale),
                 f"inpaint: PSNR {box_psnr(result, example):.1f} dB in the box")]


def inpainted_as_asked(picture, example) -> bool | None:
    """Does the shapes judge find, in an inpainted picture, the object the text asks for with its
    centre inside the box? None when the text names no shapes-world object."""
    claims = read_text(str(example.meta.get("text", "")))
    if claims is None:
        return None
    x1, y1, x2, y2 = example.meta["box"]
    want = claims.objects[0]
    for o in read_picture(picture):
        cx, cy = o.box_center
        if x1 <= cx <= x2 and y1 <= cy <= y2 and o.shape == want[2] and want[1] in (None, o.color) \
                and want[0] in (None, o.size):
            return True
    return False


def box_patches(box, info: Letterbox, ctx: TaskContext) -> np.ndarray:
    """Bool (S/P, S/P): the patches of the letterboxed input that a pixel box overlaps."""
    G, P, s = ctx.patch_grid, ctx.patch_size, info.scale
    x1, y1, x2, y2 = (v * s for v in box)
    mask = np.zeros((G, G), dtype=bool)
    c0, r0 = min(G - 1, int(x1 // P)), min(G - 1, int(y1 // P))
    c1, r1 = max(c0 + 1, min(G, math.ceil(x2 / P))), max(r0 + 1, min(G, math.ceil(y2 / P)))
    mask[r0:r1, c0:c1] = True
    return mask
