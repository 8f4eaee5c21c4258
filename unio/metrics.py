"""Metrics shared by every task and evaluator: plain functions of predictions and references.

Captions: corpus BLEU-4 (Papineni et al., 2002) and CIDEr-D (Vedantam et al., 2015), both
following the conventions of the coco-caption toolkit, on a simple tokenisation (lowercase,
punctuation removed). VQA: the VQAv2 accuracy (Antol et al., 2015; Goyal et al., 2017).
Detection: COCO mAP through pycocotools. Grounding: Acc@0.5. Segmentation: mask IoU. Depth:
AbsRel, RMSE, delta < 1.25 (Eigen et al., 2014). Images: PSNR. Retrieval: recall@K.
"""
from __future__ import annotations

import contextlib
import io
import math
import re
from collections import Counter
from typing import Iterable, Sequence

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .errors import InputError

__all__ = [
    "caption_tokens", "bleu", "bleu4", "cider", "cider_scores", "text_recall", "normalize_answer", "exact_match",
    "accuracy", "vqa_accuracy", "box_iou", "grounding_acc", "coco_detection_map", "coco_matched",
    "coco_resampled_aps", "mask_iou", "miou", "depth_metrics", "psnr", "interval95", "mean_interval95", "retrieval_ranks", "retrieval_recall",
]


# ---------------------------------------------------------------------- captions
def caption_tokens(text: str) -> list[str]:
    """Lowercase, drop apostrophes ("don't" -> "dont"), turn other punctuation into spaces, split."""
    text = str(text).lower().replace("'", "").replace("\u2019", "")
    return re.sub(r"[^\w\s]|_", " ", text).split()


def _pairs(predictions, references_list) -> tuple[list[str], list[list[str]]]:
    if isinstance(predictions, str):  # one prediction with its references
        predictions, references_list = [predictions], [references_list]
    predictions, references_list = list(predictions), list(references_list)
    if len(predictions) != len(references_list):
        raise InputError(f"{len(predictions)} predictions but {len(references_list)} reference lists; "
                         "give one list of references per prediction")
    refs = [[r] if isinstance(r, str) else list(r) for r in references_list]
    for i, r in enumerate(refs):
        if not r:
            raise InputError(f"prediction {i} has no reference; give at least one reference per prediction")
    return predictions, refs


def _ngrams(tokens: Sequence[str], n_max: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for n in range(1, n_max + 1) for i in range(len(tokens) - n + 1))


def bleu(predictions, references_list, max_n: int = 4) -> float:
    """Corpus BLEU-``max_n`` in [0, 1]: clipped n-gram precisions pooled over the corpus, geometric
    mean, brevity penalty against the closest reference length (ties: the shorter), as coco-caption.

    No smoothing: a corpus without a single matching n-gram of some order scores 0.
    """
    predictions, refs = _pairs(predictions, references_list)
    matched, total = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for pred, rs in zip(predictions, refs):
        hyp = caption_tokens(pred)
        rtoks = [caption_tokens(r) for r in rs]
        hyp_len += len(hyp)
        ref_len += min((abs(len(r) - len(hyp)), len(r)) for r in rtoks)[1]
        max_ref = Counter()
        for r in rtoks:
            for gram, c in _ngrams(r, max_n).items():
                max_ref[gram] = max(max_ref[gram], c)
        for gram, c in _ngrams(hyp, max_n).items():
            matched[len(gram) - 1] += min(c, max_ref[gram])
            total[len(gram) - 1] += c
    if hyp_len == 0 or min(matched) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matched, total)) / max_n
    brevity = min(0.0, 1.0 - ref_len / hyp_len)
    return math.exp(log_precision + brevity)


def bleu4(predictions, references_list) -> float:
    return bleu(predictions, references_list, 4)


def cider_scores(predictions, references_list, sigma: float = 6.0, n_max: int = 4) -> np.ndarray:
    """CIDEr-D of each prediction (coco-caption's ``CiderD``): tf-idf n-gram vectors (n = 1..4)
    with document frequencies from the references of *this* corpus, candidate counts clipped to the
    reference's, a gaussian length penalty (``sigma``), averaged over n and references, times 10.

    The idf comes from the corpus, so one image alone scores 0 (every n-gram is in "all" images)
    and scores are comparable only on the same reference set.
    """
    predictions, refs = _pairs(predictions, references_list)
    hyps = [_ngrams(caption_tokens(p), n_max) for p in predictions]
    # length = number of bigrams, as coco-caption counts it (token count - 1, at least 0)
    hyp_lens = [max(len(caption_tokens(p)) - 1, 0) for p in predictions]
    ref_toks = [[caption_tokens(r) for r in rs] for rs in refs]
    ref_grams = [[_ngrams(r, n_max) for r in rs] for rs in ref_toks]
    doc_freq = Counter()
    for grams in ref_grams:
        doc_freq.update(set().union(*grams))
    log_docs = math.log(max(len(predictions), 1))

    def vector(counts: Counter):
        vec = [dict() for _ in range(n_max)]
        norm = np.zeros(n_max)
        for gram, tf in counts.items():
            weight = tf * (log_docs - math.log(max(1.0, doc_freq[gram])))
            vec[len(gram) - 1][gram] = weight
            norm[len(gram) - 1] += weight * weight
        return vec, np.sqrt(norm)

    scores = np.zeros(len(predictions))
    for i, (hyp, hyp_len) in enumerate(zip(hyps, hyp_lens)):
        h_vec, h_norm = vector(hyp)
        total = np.zeros(n_max)
        for r_counts, r_toks in zip(ref_grams[i], ref_toks[i]):
            r_vec, r_norm = vector(r_counts)
            sim = np.array([sum(min(w, r_vec[n].get(g, 0.0)) * r_vec[n].get(g, 0.0) for g, w in h_vec[n].items())
                            for n in range(n_max)], dtype=np.float64)  # float even for an empty prediction
            ok = (h_norm > 0) & (r_norm > 0)
            sim[ok] /= h_norm[ok] * r_norm[ok]
            delta = hyp_len - max(len(r_toks) - 1, 0)
            total += sim * math.exp(-(delta ** 2) / (2 * sigma ** 2))
        scores[i] = 10.0 * total.mean() / len(ref_grams[i])
    return scores


def cider(predictions, references_list, sigma: float = 6.0) -> float:
    """Corpus CIDEr-D: the mean of :func:`cider_scores` (0 for an empty corpus)."""
    scores = cider_scores(predictions, references_list, sigma)
    return float(scores.mean()) if scores.size else 0.0


def text_recall(wanted: str, said: str) -> float:
    """The share of ``wanted``'s words and adjacent word pairs (with repeats, in
    :func:`caption_tokens`) that ``said`` also contains: 1.0 when ``said`` names everything
    ``wanted`` names, in any order. ``recaption`` reranking compares a text with the model's
    caption of the picture drawn for it; pairs keep the attribute bound to its object ("red star"
    is not "red" and "star" apart)."""
    want, got = _ngrams(caption_tokens(wanted), 2), _ngrams(caption_tokens(said), 2)
    total = sum(want.values())
    return sum(min(c, got[g]) for g, c in want.items()) / total if total else 1.0


# ---------------------------------------------------------------------- answers
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
            "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
# The VQA evaluation maps apostrophe-less contractions back to their spelling ("dont" -> "don't").
_CONTRACTIONS = {c.replace("'", ""): c for c in (
    "aren't can't couldn't couldn't've didn't doesn't don't hadn't hasn't haven't he'd he'll he's how'd how'll "
    "how's i'd i'll i'm i've isn't it'd it'll it's let's ma'am mightn't might've mustn't must've needn't "
    "o'clock oughtn't shan't she'd she'll she's shouldn't should've that's there'd there's they'd they'll "
    "they're they've wasn't we'd we'll we're we've weren't what'll what're what's what've when's where'd "
    "where's where've who'd who'll who's who've why's won't wouldn't would've y'all you'd you'll you're you've"
).split()}
_PUNCT = ";/[]\"{}()=+\\_->@`,?!<"
_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")
_PERIOD = re.compile(r"\.(?!\d)")  # a period that is not a decimal point


def normalize_answer(answer: str) -> str:
    """The VQA evaluation's answer normalisation: whitespace, punctuation, number words, articles,
    contractions; lowercased (the official script expects lowercase answers)."""
    original = str(answer).replace("\n", " ").replace("\t", " ").strip().lower()
    glued = _COMMA_IN_NUMBER.search(original) is not None
    text = original
    for p in _PUNCT:
        # punctuation next to a space (or any, given a comma inside a number) vanishes; else it splits words
        text = text.replace(p, "" if (p + " " in original or " " + p in original or glued) else " ")
    text = _PERIOD.sub("", text)
    words = [_NUMBERS.get(w, w) for w in text.split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def vqa_accuracy(pred, answers) -> float:
    """VQAv2 accuracy: ``min(#humans who gave the answer / 3, 1)`` averaged over the 10 subsets of
    9 of the 10 human answers. ``pred`` a string with ``answers`` its human answers, or a list of
    predictions with a list of answer lists (the mean is returned).

    Unlike the official script, which normalises only when the humans disagree, both sides are
    always normalised (so "Two" matches ten "2"s). With fewer than ten answers the score is
    ``min(#matching / min(3, n), 1)``, so a single reference answer acts as exact match.
    """
    if not isinstance(pred, str):
        preds, answer_lists = _pairs(pred, answers)
        return float(np.mean([vqa_accuracy(p, a) for p, a in zip(preds, answer_lists)])) if preds else 0.0
    gts = [normalize_answer(a) for a in ([answers] if isinstance(answers, str) else answers)]
    if not gts:
        raise InputError("vqa_accuracy needs the human answers (VQAv2 has 10 per question)")
    p = normalize_answer(pred)
    same = sum(g == p for g in gts)
    if len(gts) < 10:
        # Fewer humans than VQAv2's ten (e.g. one generated answer in the shapes world): the
        # leave-one-out rule would score a correct single answer 0, so ask for min(3, n) votes.
        return min(1.0, same / min(3, len(gts)))
    # leaving out answer i leaves `same - (gts[i] == p)` matching humans among the others
    return sum(min(1.0, (same - (g == p)) / 3.0) for g in gts) / len(gts)


def exact_match(predictions, references, normalize: bool = True) -> float:
    """Fraction of predictions equal to (any of) their reference(s), after :func:`normalize_answer`
    unless ``normalize`` is False."""
    predictions, refs = _pairs(predictions, references)
    if not predictions:
        return 0.0
    norm = normalize_answer if normalize else (lambda s: str(s).strip())
    return float(np.mean([norm(p) in {norm(r) for r in rs} for p, rs in zip(predictions, refs)]))


def accuracy(predictions: Sequence, targets: Sequence) -> float:
    """Fraction of exact equalities (classification labels)."""
    predictions, targets = list(predictions), list(targets)
    if len(predictions) != len(targets):
        raise InputError(f"{len(predictions)} predictions but {len(targets)} targets")
    return float(np.mean([p == t for p, t in zip(predictions, targets)])) if predictions else 0.0


def retrieval_ranks(sim, image_of=None) -> tuple[np.ndarray, np.ndarray]:
    """Ranks (0: first) of the true matches in an (I, T) image-text similarity matrix: per image, of its
    first true text among all texts (image->text); per text, of its image (text->image). ``image_of``
    (T,) is each text's image (default: text i describes image i). Ties go to the lower index."""
    sim = np.asarray(sim, dtype=np.float64)
    image_of = np.arange(sim.shape[1] if sim.ndim == 2 else 0) if image_of is None else np.asarray(image_of)
    if sim.ndim != 2 or image_of.shape != sim.shape[1:] or not np.isin(np.arange(sim.shape[0]), image_of).all() \
            or (image_of < 0).any() or (image_of >= sim.shape[0]).any():
        raise InputError(f"retrieval needs an (images, texts) similarity matrix and the image of each text, every "
                         f"image with a text; got {sim.shape} and {image_of.shape}")
    hits = image_of[np.argsort(-sim, axis=1, kind="stable")] == np.arange(sim.shape[0])[:, None]  # (I, T)
    t2i = np.argsort(-sim.T, axis=1, kind="stable") == image_of[:, None]  # (T, I)
    return hits.argmax(1), t2i.argmax(1)


def retrieval_recall(sim, image_of=None, ks=(1, 5, 10)) -> dict[str, float]:
    """Recall@K both ways (the COCO / Flickr30k protocol): ``i2t_rK``, the fraction of images with a true text
    among their K most similar texts; ``t2i_rK``, of texts with their image among the K most similar images."""
    i2t, t2i = retrieval_ranks(sim, image_of)
    return {**{f"i2t_r{k}": float(np.mean(i2t < k)) for k in ks}, **{f"t2i_r{k}": float(np.mean(t2i < k)) for k in ks}}


# ---------------------------------------------------------------------- boxes
def _boxes(x, what: str) -> np.ndarray:
    arr = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float64)
    if arr.ndim == 1 and arr.size == 4:
        arr = arr[None]
    if arr.size == 0:
        arr = arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise InputError(f"{what} must be (x1, y1, x2, y2) boxes of shape (4,) or (N, 4), got {arr.shape}")
    return arr


def box_iou(a, b):
    """IoU of (x1, y1, x2, y2) boxes: (N, 4) x (M, 4) -> (N, M); two single boxes -> a float."""
    single = np.ndim(a) == 1 and np.ndim(b) == 1
    a, b = _boxes(a, "boxes"), _boxes(b, "boxes")
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return float(iou[0, 0]) if single else iou


def grounding_acc(pred_boxes: Sequence, gt_boxes: Sequence, thr: float = 0.5) -> float:
    """Fraction of predicted boxes with IoU >= ``thr`` against their target (Acc@0.5 of RefCOCO).
    A missing prediction (None) counts as a miss."""
    pred_boxes, gt_boxes = list(pred_boxes), list(gt_boxes)
    if len(pred_boxes) != len(gt_boxes):
        raise InputError(f"{len(pred_boxes)} predicted boxes but {len(gt_boxes)} targets")
    hits = [p is not None and box_iou(np.ravel(p), np.ravel(g)) >= thr for p, g in zip(pred_boxes, gt_boxes)]
    return float(np.mean(hits)) if hits else 0.0


def _field(item, name: str, index: int):
    if isinstance(item, dict):
        return item.get(name)
    if hasattr(item, name):
        return getattr(item, name)
    return item[index] if isinstance(item, (tuple, list)) and len(item) > index else None


def interval95(draws) -> list[float]:
    """[2.5th, 97.5th] percentile of bootstrap draws: a 95% percentile interval (Efron & Tibshirani, 1993)."""
    return [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))]


def mean_interval95(values, rng: np.random.Generator, resamples: int = 2000) -> list[float]:
    """95% percentile-bootstrap interval of the mean of ``values`` (resampled with replacement)."""
    values = np.asarray(values, dtype=np.float64)
    return interval95(values[rng.integers(0, len(values), (resamples, len(values)))].mean(axis=1))


def coco_detection_map(predictions: Sequence[Sequence], ground_truths: Sequence[Sequence],
                       categories: Sequence[str] | None = None, resamples: int = 0, seed: int = 0) -> dict:
    """COCO box mAP (IoU .50:.95), mAP@.50 and mAP@.75 through pycocotools' COCOeval.

    ``predictions[i]`` are image i's detections: dicts with ``box`` (x1, y1, x2, y2 pixels),
    ``label`` and ``score``, or ``Detection``-like objects / (box, label, score) tuples;
    ``ground_truths[i]`` its objects (dicts with ``box`` and ``label``, the sample schema).
    Labels are names from ``categories`` (default: every ground-truth label); predicted labels
    outside them are dropped. Values are nan where no ground-truth box exists at all. ``resamples``
    > 0 adds ``map_ci95``, ``map50_ci95``, ``map75_ci95``: 95% percentile bootstrap intervals over
    images (seeded by ``seed``; matched once, each resample only re-accumulated).
    """
    ev, names = coco_matched(predictions, ground_truths, categories), ("map", "map50", "map75")
    if ev is None:
        return dict.fromkeys(names, float("nan"))
    n = ev.per_image_shape[2]
    out: dict = dict(zip(names, coco_resampled_aps(ev, np.arange(n))))  # every image once: COCOeval's own figures
    if resamples:
        rng = np.random.default_rng(seed)
        draws = np.asarray([coco_resampled_aps(ev, rng.integers(0, n, n)) for _ in range(int(resamples))])
        out.update({f"{k}_ci95": interval95(draws[:, j]) for j, k in enumerate(names)})
    return out


def coco_matched(predictions: Sequence[Sequence], ground_truths: Sequence[Sequence],
                 categories: Sequence[str] | None = None):
    """pycocotools' COCOeval of :func:`coco_detection_map`'s inputs with the per-image matching done;
    None where no ground-truth box exists at all. :func:`coco_resampled_aps` reads it."""
    if len(predictions) != len(ground_truths):
        raise InputError(f"{len(predictions)} prediction lists but {len(ground_truths)} ground-truth lists; "
                         "give one list per image (empty for an image without detections)")
    if categories is None:
        categories = sorted({str(_field(o, "label", 1)) for objs in ground_truths for o in objs})
    cat_ids = {str(name): k + 1 for k, name in enumerate(categories)}
    images, gts, dts = [], [], []
    for img_id, (preds, objs) in enumerate(zip(predictions, ground_truths), start=1):
        images.append({"id": img_id})
        for o in objs:
            label = str(_field(o, "label", 1))
            if label not in cat_ids:
                raise InputError(f"ground-truth label {label!r} is not among the categories {list(cat_ids)[:10]}; "
                                 "pass every label in categories")
            x1, y1, x2, y2 = _boxes(_field(o, "box", 0), "ground-truth box")[0]
            gts.append({"id": len(gts) + 1, "image_id": img_id, "category_id": cat_ids[label], "iscrowd": 0,
                        "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})
        for p in preds:
            score = _field(p, "score", 2)
            if score is None:
                raise InputError("every detection needs a score (the model's confidence) for COCO mAP")
            label = str(_field(p, "label", 1))
            if label in cat_ids:
                x1, y1, x2, y2 = _boxes(_field(p, "box", 0), "predicted box")[0]
                dts.append({"id": len(dts) + 1, "image_id": img_id, "category_id": cat_ids[label],
                            "score": float(score), "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                            "iscrowd": 0})
    if not gts:
        return None
    cats = [{"id": i, "name": n} for n, i in cat_ids.items()]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco_gt, coco_dt = COCO(), COCO()
        coco_gt.dataset = {"images": images, "annotations": gts, "categories": cats}
        coco_dt.dataset = {"images": images, "annotations": dts, "categories": cats}
        coco_gt.createIndex()
        coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.evaluate()
    ev.per_image = list(ev.evalImgs)  # (category, area, image) order: what every resample picks from
    params = ev._paramsEval
    ev.per_image_shape = (len(params.catIds), len(params.areaRng), len(params.imgIds))
    return ev


def coco_resampled_aps(ev, idx) -> tuple[float, float, float]:
    """(AP, AP50, AP75) of a :func:`coco_matched` COCOeval over the images ``idx`` (repeats allowed: a
    bootstrap resample; all areas, the largest detection budget), re-accumulated, never re-matched."""
    n_cat, n_area, n_img = ev.per_image_shape
    if len(idx) != n_img:
        raise InputError(f"a resample keeps the number of images ({n_img}), got {len(idx)}")
    for p in (ev.params, ev._paramsEval):  # only what the three figures read: all areas, the largest budget
        p.areaRng, p.areaRngLbl, p.maxDets = p.areaRng[:1], p.areaRngLbl[:1], p.maxDets[-1:]
    ev.evalImgs = [ev.per_image[k * n_area * n_img + i] for k in range(n_cat) for i in idx]
    ev.params.imgIds = ev._paramsEval.imgIds = list(range(n_img))  # resampled images as new ids
    with contextlib.redirect_stdout(io.StringIO()):
        ev.accumulate()
    precision = ev.eval["precision"][:, :, :, 0, -1]  # (iou thresholds, recalls, categories)
    out = []
    for rows in (slice(None), np.isclose(ev.params.iouThrs, 0.5), np.isclose(ev.params.iouThrs, 0.75)):
        p = precision[rows]
        p = p[p > -1]
        out.append(max(float(p.mean()), 0.0) if p.size else 0.0)
    return tuple(out)


# ---------------------------------------------------------------------- dense outputs
def _same_shape(a, b, what: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise InputError(f"{what}: prediction shape {a.shape} differs from target shape {b.shape}; "
                         "resize the prediction to the original image first (unio.images.unletterbox)")
    return a, b


def mask_iou(pred, gt) -> float:
    """IoU of two boolean masks of one shape; 1.0 when both are empty."""
    p, g = _same_shape(pred, gt, "mask_iou")
    p, g = p.astype(bool), g.astype(bool)
    union = np.logical_or(p, g).sum()
    return float(np.logical_and(p, g).sum() / union) if union else 1.0


def miou(preds: Iterable, gts: Iterable) -> float:
    """Mean over samples of :func:`mask_iou` (the referring-segmentation mIoU)."""
    preds, gts = list(preds), list(gts)
    if len(preds) != len(gts):
        raise InputError(f"{len(preds)} predicted masks but {len(gts)} targets")
    return float(np.mean([mask_iou(p, g) for p, g in zip(preds, gts)])) if preds else 0.0


def depth_metrics(pred, gt, mask=None) -> dict[str, float]:
    """AbsRel, RMSE and delta1 (fraction with max(p/g, g/p) < 1.25) over pixels where ``gt`` > 0,
    finite, and ``mask`` (if given) is true. Lists of maps give the mean of per-image values."""
    if isinstance(pred, (list, tuple)):
        masks = mask if mask is not None else [None] * len(pred)
        if not len(pred) == len(gt) == len(masks):
            raise InputError(f"{len(pred)} predicted depth maps, {len(gt)} targets and {len(masks)} masks")
        per = [depth_metrics(p, g, m) for p, g, m in zip(pred, gt, masks)]
        return {k: float(np.mean([d[k] for d in per])) for k in ("absrel", "rmse", "delta1")}
    p, g = _same_shape(pred, gt, "depth_metrics")
    p, g = p.astype(np.float64), g.astype(np.float64)
    valid = np.isfinite(g) & (g > 0)
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != g.shape:
            raise InputError(f"depth mask shape {m.shape} differs from depth shape {g.shape}")
        valid &= m
    if not valid.any():
        raise InputError("no valid depth pixels: the target must be > 0 and finite where the mask is true")
    p, g = p[valid], g[valid]
    if not np.isfinite(p).all():
        raise InputError("the predicted depth contains NaN or infinite values at valid pixels")
    safe = np.where(p > 0, p, 1.0)
    ratio = np.where(p > 0, np.maximum(safe / g, g / safe), np.inf)  # a depth <= 0 is never within 1.25
    return {"absrel": float(np.mean(np.abs(p - g) / g)), "rmse": float(np.sqrt(np.mean((p - g) ** 2))),
            "delta1": float(np.mean(ratio < 1.25))}


def psnr(a, b, data_range: float | None = None, mask=None, per_image: bool = False):
    """Peak signal-to-noise ratio in dB; inf for identical inputs.

    ``a``, ``b``: PIL images, arrays or torch tensors of one shape. ``data_range`` defaults to 255
    for integer (uint8) inputs and 1.0 for floats. ``mask`` (H, W) restricts it to some pixels
    (inpainting).

    ``per_image``: ``a`` and ``b`` are batches (B, ...), and the result holds one PSNR per image: a
    float32 tensor when either input is a tensor (else a float64 array), with each image's MSE
    floored at 1e-10, so that a perfect reconstruction counts 100 dB (at range 1), not inf, and a
    mean over images stays finite (how the image tokenizer's training reports its quality).
    """
    if per_image:
        return _psnr_per_image(a, b, data_range, mask)
    x, y = _same_shape(_array(a), _array(b), "psnr")
    if data_range is None:
        data_range = 255.0 if x.dtype.kind in "ui" and y.dtype.kind in "ui" else 1.0
    diff = x.astype(np.float64) - y.astype(np.float64)
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != diff.shape[:m.ndim]:
            raise InputError(f"psnr mask shape {m.shape} does not match the image shape {diff.shape}")
        diff = diff[m]
        if diff.size == 0:
            raise InputError("the psnr mask selects no pixels")
    mse = float(np.mean(diff ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(data_range ** 2 / mse)


def _psnr_per_image(a, b, data_range, mask):
    if mask is not None:
        raise InputError("psnr(per_image=True) takes no mask; compute masked PSNRs one image at a time")
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        x = torch.as_tensor(a)
        y = torch.as_tensor(b, device=x.device)
        if x.shape != y.shape:
            raise InputError(f"psnr: prediction shape {tuple(x.shape)} differs from target shape {tuple(y.shape)}")
        if data_range is None:
            data_range = 1.0 if x.is_floating_point() or y.is_floating_point() else 255.0
        mse = (x.float() - y.float()).pow(2).flatten(1).mean(1).clamp_min(1e-10)
        return -10 * torch.log10(mse) + 20 * math.log10(data_range)
    x, y = _same_shape(_array(a), _array(b), "psnr")
    if data_range is None:
        data_range = 255.0 if x.dtype.kind in "ui" and y.dtype.kind in "ui" else 1.0
    diff = x.astype(np.float64) - y.astype(np.float64)
    mse = np.maximum((diff ** 2).reshape(len(diff), -1).mean(1), 1e-10)
    return -10 * np.log10(mse) + 20 * math.log10(data_range)


def _array(value) -> np.ndarray:
    """A PIL image, array or (any device's) tensor as a numpy array."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return (value.float() if value.dtype == torch.bfloat16 else value).numpy()
    return np.asarray(value)
