"""Held-out quality of the VQ image tokenizer, as its trainer (``unio tokenizer image``) records it
at every evaluation and ``benchmarks/vq_quality.py`` measures it: PSNR of RGB round trips (per
image, :func:`unio.metrics.psnr`), codebook usage and perplexity, depth AbsRel / RMSE and mask IoU
of depth maps and masks drawn as images, from the codes alone and refined with the picture; on the
shapes world also ``judge``: the share of reconstructions that the non-learned shapes judge
(:mod:`unio.data.shapes_judge`) reads as their caption says (the ceiling the tokenizer leaves
text-to-image), beside ``judge_real``, the same judge on the real pictures (its calibration)."""
from __future__ import annotations

import numpy as np
import torch

from ..data.pictures import GuidedPictures, make_pictures
from ..data.shapes import ShapesWorld
from ..data.shapes_judge import judge as judge_text
from ..metrics import depth_metrics, psnr
from ..tokenizers.dense import depth_to_image, mask_to_image
from ..tokenizers.image import ImageTokenizer

__all__ = ["evaluate", "evaluate_guided"]


@torch.no_grad()
def evaluate(tok: ImageTokenizer, source="shapes", n: int = 500, seed: int = 1, batch_size: int = 50,
             dense: bool = True, calibrate: bool = False) -> dict[str, float]:
    """Reconstruction quality on ``n`` held-out images (``calibrate``: also the judge on the real
    pictures, ``judge_real``, which no training changes, so the trainer leaves it out).

    For shapes (``source="shapes"``, ``seed`` not used in training) also the round trip of
    depth maps (AbsRel and RMSE on object pixels, averaged per image: the background dominates
    an all-pixel average) and of every object's mask (IoU, averaged over objects); for a kind
    with a refiner, the same figures with the scene's picture as the guide (``*_refined``).
    """
    image_size = tok.image_size
    if isinstance(source, str) and source == "shapes":
        world = ShapesWorld(image_size=image_size, seed=seed)
        samples = (world[i] for i in range(n))
    else:
        src = source if not isinstance(source, str) else make_pictures(source, image_size, held_out=True)
        count = min(n, len(src.files))
        samples = ({"image": src.item(i)} for i in range(count))
        dense = False
    lo, hi = tok.depth_range
    psnrs, rgb_codes, all_codes, absrel, rmse, ious = [], [], [], [], [], []
    judged, judged_real = [], []
    refined: dict[str, list[float]] = {"depth_absrel": [], "depth_rmse": [], "mask_iou": []}

    def flush(batch):
        rgb = torch.from_numpy(np.stack([_rgb(s["image"]) for s in batch]))
        codes = tok.encode(rgb)
        decoded = tok.decode(codes).cpu()
        psnrs.append(psnr(decoded, rgb, per_image=True))
        rgb_codes.append(codes.cpu())
        all_codes.append(codes.cpu())
        if not dense:
            return
        pictures = (decoded.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        for s, picture in zip(batch, pictures):
            judged.append(judge_text(picture, s["caption"]).ok)
            if calibrate:
                judged_real.append(judge_text(np.asarray(s["image"].convert("RGB")), s["caption"]).ok)
        depth = np.stack([s["depth"] for s in batch])
        codes = tok.encode(torch.from_numpy(depth_to_image(depth, hi, min_depth=lo)))
        all_codes.append(codes.cpu())
        objects = [np.any([o["mask"] for o in s["objects"]], axis=0) for s in batch]

        def depth_errors(pred, into_absrel, into_rmse):
            for obj, p, d in zip(objects, pred, depth):
                m = depth_metrics(p, d, obj)
                into_absrel.append(m["absrel"])
                into_rmse.append(m["rmse"])

        depth_errors(tok.decode_depth(codes), absrel, rmse)
        if tok.has_refiner("depth"):
            depth_errors(tok.decode_depth(codes, guide=rgb), refined["depth_absrel"], refined["depth_rmse"])
        masks = np.stack([o["mask"] for s in batch for o in s["objects"]])
        owner = torch.tensor([j for j, s in enumerate(batch) for _ in s["objects"]])
        for i in range(0, len(masks), batch_size):
            m = masks[i:i + batch_size]
            codes = tok.encode(torch.from_numpy(mask_to_image(m)))
            all_codes.append(codes.cpu())
            ious.extend(_ious(tok.decode_mask(codes), m))
            if tok.has_refiner("mask"):
                refined["mask_iou"].extend(_ious(tok.decode_mask(codes, guide=rgb[owner[i:i + batch_size]]), m))

    batch = []
    for s in samples:
        batch.append(s)
        if len(batch) == batch_size:
            flush(batch)
            batch = []
    if batch:
        flush(batch)
    rgb_usage = tok.codebook_usage(torch.cat(rgb_codes))
    out = {"images": int(sum(len(p) for p in psnrs)), "psnr": float(torch.cat(psnrs).mean()),
           "usage": rgb_usage["usage"], "perplexity": rgb_usage["perplexity"]}
    if dense:
        every = tok.codebook_usage(torch.cat(all_codes))
        if judged_real:
            out["judge_real"] = float(np.mean(judged_real))
        out.update({"judge": float(np.mean(judged)),
                    "depth_absrel": float(np.mean(absrel)), "depth_rmse": float(np.mean(rmse)),
                    "mask_iou": float(np.mean(ious)), "masks": len(ious),
                    "usage_all": every["usage"], "perplexity_all": every["perplexity"]})
        out.update({f"{k}_refined": float(np.mean(v)) for k, v in refined.items() if v})
    return out


@torch.no_grad()
def evaluate_guided(tok: ImageTokenizer, source: GuidedPictures, n: int = 128, batch_size: int = 32) -> dict:
    """Depth and mask round trips on the held-out samples of a dataset, from the codes alone and,
    for a kind with a refiner, refined with the picture (AbsRel over valid depth pixels per image)."""
    lo, hi = tok.depth_range
    count = min(int(n), source.held_out)
    out: dict[str, list[float]] = {k: [] for k in ("depth_absrel", "depth_absrel_refined", "mask_iou",
                                                   "mask_iou_refined")}
    for start in range(0, count, batch_size):
        b = source.guided(range(start, min(count, start + batch_size)), held_out=True)
        codes = tok.encode(torch.as_tensor(depth_to_image(b["depth"], hi, min_depth=lo)))
        truth, valid = b["depth"].numpy(), b["valid"].numpy()
        for key, guide in (("depth_absrel", None), ("depth_absrel_refined", b["rgb"])):
            if guide is not None and not tok.has_refiner("depth"):
                continue
            for p, d, v in zip(tok.decode_depth(codes, guide=guide), truth, valid):
                if v.any():
                    out[key].append(depth_metrics(p, d, v)["absrel"])
        rows = b["has_mask"].numpy()
        if rows.any():
            m = b["mask"].numpy()[rows]
            codes = tok.encode(torch.from_numpy(mask_to_image(m)))
            out["mask_iou"].extend(_ious(tok.decode_mask(codes), m))
            if tok.has_refiner("mask"):
                out["mask_iou_refined"].extend(_ious(tok.decode_mask(codes, guide=b["rgb"][rows]), m))
    result = {k: float(np.mean(v)) for k, v in out.items() if v}
    result["images"] = count
    return result


def _ious(pred: np.ndarray, truth: np.ndarray) -> list[float]:
    inter = (pred & truth).sum((1, 2))
    union = (pred | truth).sum((1, 2))
    return (inter / np.maximum(union, 1)).tolist()


def _rgb(image) -> np.ndarray:
    if isinstance(image, np.ndarray):
        return image.astype(np.float32)
    return np.asarray(image.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0
