"""Object detection as a sequence, after Pix2Seq (Chen et al., 2022).

Target: every object as ``x1 y1 x2 y2`` location tokens followed by its label's text pieces,
then eos. In training (``rng`` given):

- objects come in a random order (Pix2Seq found random ordering best);
- *sequence augmentation*: synthetic noise objects (jittered duplicates of real boxes and random
  boxes) are appended after the real ones with the label ``"noise"``. Their coordinate tokens get
  ``noise_coord_weight`` (0: the model is not taught to place them) and their label tokens
  ``noise_label_weight`` (Pix2Seq's ``noise_bbox_weight``, 1.0), so the model learns to call such
  boxes noise instead of learning to emit them as real objects; eos gets ``eos_weight``
  (Pix2Seq's ``eos_token_weight``, 0.1) so stopping early is cheap to get wrong.

At inference (``rng`` None) the target lists objects in a canonical raster order (top to bottom,
then left to right). Decoding is constrained to well-formed boxes whose label is one of the
model's object classes (the noise label excluded) or free text when the model has no class list.
Each box's score is the probability the model gave its label (Pix2Seq's class-token score),
read from the unconstrained distribution, so a box the model thinks is noise scores low.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .. import viz
from ..errors import BoxError, InputError
from ..metrics import coco_detection_map
from .registry import register
from .base import Detection, Example, Task, TaskContext, box_list, finite, location_limits
from .constraints import BoxesProcessor, LabelTrie
from .options import Option

NOISE = "noise"


@register
class Detect(Task):
    name = "detect"
    options = {
        "max_objects": Option(int, 20, min=1, doc="most boxes to write"),
        "top_p": Option(float, above=0, max=1, doc="nucleus sampling of the sequence (Pix2Seq); default greedy"),
        "temperature": Option(float, above=0, doc="sampling temperature with top_p"),
        "threshold": Option(float, min=0, doc="drop boxes scoring below this (scores are probabilities)"),
    }
    headline = "map50"
    needs_scores = True

    def __init__(self, max_objects: int = 20, max_noise: int = 4, noise_coord_weight: float = 0.0,
                 noise_label_weight: float = 1.0, eos_weight: float = 0.1, augment: bool = True,
                 score: str = "label", max_label_len: int = 8):
        if score not in ("label", "mean"):
            raise ValueError(f"score must be 'label' or 'mean', got {score!r}")
        self.max_objects, self.max_noise = int(max_objects), int(max_noise)
        self.noise_coord_weight, self.noise_label_weight = float(noise_coord_weight), float(noise_label_weight)
        self.eos_weight, self.augment, self.score = float(eos_weight), bool(augment), score
        self.max_label_len = int(max_label_len)

    def can_build(self, sample: dict) -> bool:
        return super().can_build(sample) and "objects" in sample

    # ------------------------------------------------------------------ targets
    def build(self, sample, ctx, rng=None, **inputs) -> Example:
        image, info = self._image(sample, ctx)
        size = (info.width, info.height)
        prompt, ids = self._prompt(ctx, rng, size, template=inputs.get("prompt"))
        objects = []
        for obj in sample.get("objects") or []:
            try:
                bins = ctx.locations.encode_boxes(obj["box"], size)
            except (BoxError, KeyError, TypeError):
                continue  # a degenerate annotation cannot be a target
            objects.append((bins, str(obj.get("label", "")), tuple(float(v) for v in obj["box"])))
        meta = {"boxes": [o[2] for o in objects], "labels": [o[1] for o in objects]}
        if "objects" not in sample:
            return self._example(ctx, prompt, ids, image, info, **meta)
        if rng is None:
            order = sorted(range(len(objects)), key=lambda k: (objects[k][0][1], objects[k][0][0]))
        else:
            order = list(rng.permutation(len(objects)))
        order = order[: self.max_objects]
        labels: list[int] = []
        weights: list[float] = []
        for k in order:
            bins, label, _ = objects[k]
            labels += [int(i) for i in ctx.vocab.location_ids(bins)] + ctx.encode_text(label)
            weights += [1.0] * (4 + len(ctx.encode_text(label)))
        if rng is not None and self.augment:
            room = self.max_objects - len(order)
            noise_label = ctx.encode_text(NOISE)
            for box in self._noise_boxes(rng, [objects[k][2] for k in order], size, min(room, self.max_noise)):
                try:
                    bins = ctx.locations.encode_boxes(box, size)
                except BoxError:
                    continue
                labels += [int(i) for i in ctx.vocab.location_ids(bins)] + noise_label
                weights += [self.noise_coord_weight] * 4 + [self.noise_label_weight] * len(noise_label)
        labels.append(ctx.vocab.eos_id)
        weights.append(self.eos_weight if rng is not None else 1.0)
        return self._example(ctx, prompt, ids, image, info, labels, weights if rng is not None else None, **meta)

    @staticmethod
    def _noise_boxes(rng, real: list[tuple], size: tuple[int, int], n_max: int) -> list[tuple]:
        """Pix2Seq's synthetic objects: jittered copies of real boxes, or random boxes."""
        if n_max <= 0:
            return []
        W, H = size
        out = []
        for _ in range(int(rng.integers(0, n_max + 1))):
            if real and rng.random() < 0.5:
                x1, y1, x2, y2 = real[int(rng.integers(len(real)))]
                w, h = x2 - x1, y2 - y1
                cx, cy = (x1 + x2) / 2 + rng.normal(0, 0.2) * w, (y1 + y2) / 2 + rng.normal(0, 0.2) * h
                w, h = w * math.exp(rng.normal(0, 0.25)), h * math.exp(rng.normal(0, 0.25))
            else:
                cx, cy = rng.random() * W, rng.random() * H
                w, h = (0.05 + 0.45 * rng.random()) * W, (0.05 + 0.45 * rng.random()) * H
            out.append((max(0.0, cx - w / 2), max(0.0, cy - h / 2), min(W, cx + w / 2), min(H, cy + h / 2)))
        return out

    # ------------------------------------------------------------------ decoding
    def _label_trie(self, ctx: TaskContext) -> LabelTrie | None:
        classes = [c for c in (ctx.class_list("object") or []) if c != NOISE]
        return LabelTrie(ctx.encode_text(c) for c in classes) if classes else None

    def logits_processors(self, ctx, example: Example | None = None, **overrides) -> list:
        max_objects = int(overrides.get("max_objects") or self.max_objects)
        batch = overrides.get("batch") or ([example] if example is not None else [])
        return [BoxesProcessor(ctx.vocab, labels=self._label_trie(ctx), max_boxes=max_objects,
                               max_label_len=self.max_label_len, limits=location_limits(ctx, batch))]

    def generation_kwargs(self, ctx, **overrides) -> dict:
        max_objects = int(overrides.get("max_objects") or self.max_objects)
        classes = ctx.class_list("object")
        label_len = max(len(ctx.encode_text(c)) for c in classes) if classes else self.max_label_len
        kw = {"max_new_tokens": int(overrides.get("max_new_tokens") or max_objects * (4 + label_len) + 1)}
        if overrides.get("top_p") is not None:  # Pix2Seq decodes with nucleus sampling
            kw.update(do_sample=True, top_p=float(overrides["top_p"]),
                      temperature=float(overrides.get("temperature") or 1.0))
        return kw

    def parse(self, ids, ctx, info=None, *, raw_logprobs=None, logprobs=None, **kw) -> list[Detection]:
        """Boxes + labels in the original image; malformed pieces are skipped, never raised on."""
        ids = [int(i) for i in ids]
        probs = list(raw_logprobs) if raw_logprobs is not None else None
        size = self._size(info, ctx)
        kinds = ctx.vocab.kinds(ids) if ids else np.zeros(0, dtype=np.int8)
        loc0 = ctx.vocab.location_range[0]
        objects, cur = [], None  # cur: {"loc": [positions], "text": [positions]}
        for pos, (g, kind) in enumerate(zip(ids, kinds.tolist())):
            if g == ctx.vocab.eos_id:
                break
            if kind == 1:  # location
                if cur is None or cur["text"] or len(cur["loc"]) == 4:
                    cur = {"loc": [], "text": []}
                    objects.append(cur)
                cur["loc"].append(pos)
            elif kind == 0 and cur is not None and len(cur["loc"]) == 4:
                cur["text"].append(pos)
        out: dict[tuple, Detection] = {}  # an exact repeat (same bins, same label) keeps its best score
        for obj in objects:
            if len(obj["loc"]) != 4:
                continue
            bins = np.array([ids[p] - loc0 for p in obj["loc"]])
            bins = np.array([min(bins[0], bins[2]), min(bins[1], bins[3]), max(bins[0], bins[2]),
                             max(bins[1], bins[3])])
            label = ctx.decode_text([ids[p] for p in obj["text"]])
            if label == NOISE:
                continue
            key = (tuple(int(b) for b in bins), label)
            score = self._score(obj, probs)
            if key in out and out[key].score >= score:
                continue
            box = tuple(float(v) for v in ctx.locations.decode_boxes(bins, size))
            out[key] = Detection(box=box, label=label, score=score)
        return list(out.values())

    def _score(self, obj, probs) -> float:
        if probs is None:
            return 1.0
        lp = lambda ps: [float(probs[p]) for p in ps if p < len(probs)]  # noqa: E731
        label, coords = lp(obj["text"]), lp(obj["loc"])
        if self.score == "label" and label:
            total = sum(label)
        else:
            both = label + coords
            total = sum(both) / max(len(both), 1)
        return math.exp(total) if math.isfinite(total) else 0.0

    def finish(self, results, options) -> list:
        """Detections sorted by score, those under ``threshold`` dropped."""
        threshold = options.get("threshold")
        return [[d for d in sorted(dets, key=lambda d: -d.score) if threshold is None or d.score >= threshold]
                for dets in results]

    def metric(self, predictions, examples, samples=None, judge=None) -> dict[str, float]:
        """COCO mAP@[.5:.95] (``map``), ``map50``, ``map75`` through pycocotools, with the model's own
        scores (the probability of each box's label)."""
        return coco_detection_map(predictions, [truth(e) for e in examples])

    def metric_intervals(self, predictions, examples, samples, resamples: int, seed: int) -> dict:
        """95% bootstrap intervals of ``map``, ``map50``, ``map75`` over images (matching done once)."""
        got = coco_detection_map(predictions, [truth(e) for e in examples], resamples=resamples, seed=seed)
        return {k: v for k, v in got.items() if k.endswith("_ci95")}

    def example_record(self, prediction, example, sample) -> dict:
        return {"prediction": [d.to_dict() for d in prediction],
                "truth": [{"box": box_list(t["box"]), "label": t["label"]} for t in truth(example)]}

    def to_record(self, result, inputs, files, stem) -> dict:
        return {"boxes": [[round(float(v), 2) for v in d.box] for d in result], "labels": [d.label for d in result],
                "scores": [finite(d.score) for d in result]}

    def coco_results(self, records: list[dict], classes: list[str], gt: dict | None = None
                     ) -> tuple[list[dict], list[dict]]:
        """``unio predict --format coco``: records -> COCO results ([x, y, w, h] boxes) and categories.

        With ``gt`` (a COCO instances file, loaded), labels take the ground truth's category ids by
        name and images its image ids by file name, so pycocotools scores the file against it; a
        label or image it cannot map is an InputError naming them (nothing is guessed). Without it,
        image_id is the file name's number when it is one (COCO's 000000397133.jpg -> 397133), else
        the 1-based position, and category_id the 1-based index in the model's object classes,
        labels outside them numbered after.
        """
        if gt is not None:
            image_ids, cat_ids = coco_gt_images(gt, [rec["image"] for rec in records]), coco_gt_categories(gt)
            unknown = sorted({lb for rec in records for lb in rec["labels"]} - set(cat_ids))
            if unknown:
                raise InputError(f"the model detected {len(unknown)} label(s) that are no category of the ground "
                                 f"truth: {unknown[:5]}; its categories are {sorted(cat_ids)[:8]}...; map the model's "
                                 "classes to the ground truth's names, or leave --gt out")
        else:
            cat_ids = {name: k + 1 for k, name in enumerate(classes)}
            image_ids = {}
        results = []
        for pos, rec in enumerate(records, start=1):
            stem = Path(rec["image"]).stem
            image_id = image_ids.get(rec["image"], int(stem) if stem.isdigit() else pos)
            for b, label, score in zip(rec["boxes"], rec["labels"], rec["scores"]):
                if label not in cat_ids:
                    cat_ids[label] = len(cat_ids) + 1
                x1, y1, x2, y2 = b
                results.append({"image_id": image_id, "category_id": cat_ids[label], "label": label,
                                "bbox": [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)], "score": score})
        return results, [{"id": i, "name": n} for n, i in cat_ids.items()]

    def summary(self, prediction, example, judge=None) -> tuple[str, str]:
        top = sorted(prediction, key=lambda d: -d.score)[:3]
        return ", ".join(example.meta["labels"]), ", ".join(f"{d.label} {d.score:.2f}" for d in top) or "(none)"

    def panels(self, image, result, example=None, scale=1.0, judge=None, inputs=None, threshold=None) -> list:
        top = sorted(result, key=lambda d: -d.score)
        top = top[:8] if example is not None else [d for d in top if threshold is None or d.score >= threshold]
        drawn = viz.boxes_panel(image, [d.box for d in top], [d.label for d in top], [d.score for d in top],
                                scale=scale)
        if example is None:
            return [(drawn, "")]
        m = example.meta
        return [(drawn, f"detect: {len(result)} boxes (top {len(top)})"),
                (viz.boxes_panel(image, m["boxes"], m["labels"], colors=[viz.TRUTH] * len(m["boxes"]), scale=scale),
                 "detect: truth")]


def coco_gt_categories(gt: dict) -> dict[str, int]:
    """{category name: id} of a COCO instances file."""
    cats = gt.get("categories") if isinstance(gt, dict) else None
    if not isinstance(cats, list) or not all(isinstance(c, dict) and "id" in c and "name" in c for c in cats):
        raise InputError("the --gt file has no 'categories' list of {id, name}; give a COCO instances file")
    return {str(c["name"]): c["id"] for c in cats}


def coco_gt_images(gt: dict, paths) -> dict[str, int]:
    """{path: image id} for image files, matched to a COCO instances file's images by file name."""
    images = gt.get("images") if isinstance(gt, dict) else None
    if not isinstance(images, list) or not all(isinstance(im, dict) and "id" in im and "file_name" in im
                                               for im in images):
        raise InputError("the --gt file has no 'images' list of {id, file_name}; give a COCO instances file")
    by_name = {Path(im["file_name"]).name: im["id"] for im in images}
    missing = [str(p) for p in paths if Path(p).name not in by_name]
    if missing:
        raise InputError(f"{len(missing)} image(s) are not in the --gt file's images (matched by file name): "
                         f"{missing[:3]}; predict on the ground truth's images, or leave --gt out")
    return {str(p): by_name[Path(p).name] for p in paths}


def truth(example: Example) -> list[dict]:
    return [{"box": b, "label": lb} for b, lb in zip(example.meta.get("boxes", []), example.meta.get("labels", []))]
