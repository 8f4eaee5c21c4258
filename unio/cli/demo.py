"""``unio demo``: one model doing every task on shapes images it has never seen.

It loads the model shipped with unio (``unio.load("shapes-demo")``; nothing is trained or
downloaded) or, with ``--model DIR``, any export directory, then

- evaluates every task on fresh seeded shapes images (seed 1000 by default; training recipes use
  seed 0 and evaluation seed 1) through :func:`unio.evaluate.evaluate`;
- prints one table: for each task, the truth and the prediction on one example and the task's
  headline metric over ``n`` images;
- writes ``DIR/demo.png`` (one sheet: boxes, masks, colour-mapped depth, answers, generated and
  inpainted images) and ``DIR/metrics.json`` (every metric, as ``unio eval`` writes it).

Image-output tasks (segment, depth, generate_image, inpaint) decode a whole code grid per image,
so they get a fifth of ``n`` images.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import CheckpointError, InputError

__all__ = ["run_demo", "main", "DEMO_MODEL", "HEADLINE"]

DEMO_MODEL = "shapes-demo"
CELL = 192          # side of one picture on the sheet (shapes images are 64 px: drawn 3x)
IMAGE_TASKS = ("segment", "depth", "generate_image", "inpaint")
# The one number per task the table shows (every metric is in metrics.json).
HEADLINE = {"caption": "exact_match", "vqa": "accuracy", "classify": "accuracy", "detect": "map50",
            "ground": "acc50", "describe_region": "cider", "classify_region": "accuracy", "segment": "miou",
            "depth": "absrel", "generate_image": "consistency", "inpaint": "psnr"}
TRUTH, PRED = (44, 160, 44), (214, 39, 40)


def _demo_model(model):
    from ..export import list_models
    if model is not None:
        return model
    if DEMO_MODEL not in list_models():
        raise CheckpointError(f"the {DEMO_MODEL} model is not installed in this unio package (shipped models: "
                              f"{', '.join(list_models()) or 'none'}); install a unio release that ships it, or "
                              "run the demo on your own export directory: unio demo --model DIR "
                              "(e.g. one written by `unio init` or `unio export`)")
    return DEMO_MODEL


def _big(image) -> tuple[Image.Image, float]:
    from ..images import load_image
    image = load_image(image)
    scale = CELL / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.NEAREST), scale


def _boxes(image, boxes, labels=None, colors=None, scores=None) -> Image.Image:
    from ..viz import draw_boxes
    big, s = _big(image)
    boxes = [[v * s for v in b] for b in boxes]
    return draw_boxes(big, boxes, labels=labels, scores=scores, colors=colors, width=2)


def _mask(image, mask, color) -> Image.Image:
    from ..viz import overlay_mask
    big, _ = _big(image)
    m = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255).resize(big.size, Image.NEAREST)
    return overlay_mask(big, np.asarray(m) > 127, color=color, alpha=0.6)


def _depth(depth, vmax: float) -> Image.Image:
    from ..viz import colorize_depth
    return _big(colorize_depth(depth, vmin=0.0, vmax=vmax, reverse=True))[0]


def _short(text, n: int = 44) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."


def _cells(pipe, task: str, ex, sample, pred) -> tuple[list, str, str]:
    """Pictures for the sheet, and (truth, prediction) as short text, for one example."""
    from ..metrics import box_iou, depth_metrics, mask_iou, psnr
    m, image = ex.meta, sample.get("image")
    if task in ("caption", "vqa", "classify"):
        truth = {"caption": (m.get("references") or [""])[0], "vqa": (m.get("answers") or [""])[0],
                 "classify": m.get("label")}[task]
        ask = f"Q: {m['question']} " if task == "vqa" else ""
        return [(_big(image)[0], f"{task}: {ask}{_short(pred, 60)} (truth: {truth})")], str(truth), str(pred)
    if task == "detect":
        top = sorted(pred, key=lambda d: -d.score)[:8]
        cells = [(_boxes(image, [d.box for d in top], [d.label for d in top], scores=[d.score for d in top]),
                  f"detect: {len(pred)} boxes (top {len(top)})"),
                 (_boxes(image, m["boxes"], m["labels"], colors=[TRUTH] * len(m["boxes"])), "detect: truth")]
        return cells, ", ".join(m["labels"]), ", ".join(f"{d.label} {d.score:.2f}" for d in top[:3]) or "(none)"
    if task == "ground":
        boxes, colors = [m["box"]], [TRUTH]
        if pred is not None:
            boxes, colors = boxes + [tuple(pred)], colors + [PRED]
        iou = box_iou(np.ravel(tuple(pred)), np.ravel(m["box"])) if pred is not None else 0.0
        return ([(_boxes(image, boxes, colors=colors), f"ground '{m['expression']}': IoU {iou:.2f} (green: truth)")],
                f"{m['expression']} {_fmt_box(m['box'])}", f"{_fmt_box(pred)} IoU {iou:.2f}")
    if task in ("describe_region", "classify_region"):
        truth = (m.get("references") or [""])[0] if task == "describe_region" else m.get("label")
        return ([(_boxes(image, [m["box"]], colors=[TRUTH]), f"{task}: {_short(pred, 60)} (truth: {truth})")],
                f"{truth} at {_fmt_box(m['box'])}", str(pred))
    if task == "segment":
        iou = mask_iou(pred, m["mask"])
        return ([(_mask(image, pred, PRED), f"segment '{m['expression']}': IoU {iou:.2f}"),
                 (_mask(image, m["mask"], TRUTH), "segment: truth")],
                f"{m['expression']}: {int(np.sum(m['mask']))} px", f"{int(np.sum(pred))} px, IoU {iou:.2f}")
    if task == "depth":
        far = float(pipe.ctx.image_tokenizer.depth_range[1]) if pipe.ctx.image_tokenizer is not None else 1.0
        absrel = depth_metrics(pred, m["depth"])["absrel"]
        return ([(_depth(pred, far), f"depth: AbsRel {absrel:.2f} (bright = near)"),
                 (_depth(m["depth"], far), "depth: truth")],
                f"depth {np.min(m['depth']):.2f}..{np.max(m['depth']):.2f}", f"AbsRel {absrel:.2f} (all pixels)")
    if task == "generate_image":
        dets = sorted(pipe.detect(pred), key=lambda d: -d.score)[:6]
        return ([(_boxes(pred, [d.box for d in dets], [d.label for d in dets], scores=[d.score for d in dets]),
                  f"generate: '{m['text']}' (boxes: its detector)")],
                _short(m["text"]), ", ".join(f"{d.label} {d.score:.2f}" for d in dets[:3]) or "(nothing detected)")
    if task == "inpaint":
        value = psnr(*_box_pair(pred, m["target"], m["box"]))
        hidden = np.asarray(m["original"]).copy()
        x1, y1, x2, y2 = (int(round(v)) for v in m["box"])
        hidden[max(0, y1):y2, max(0, x1):x2] = 128
        return ([(_boxes(Image.fromarray(hidden), [m["box"]], colors=[TRUTH]), f"inpaint: input, '{m['text']}'"),
                 (_boxes(pred, [m["box"]], colors=[PRED]), f"inpaint: PSNR {value:.1f} dB in the box")],
                f"{m['text']} at {_fmt_box(m['box'])}", f"PSNR {value:.1f} dB in the box")
    return [], "", _short(pred)


def _box_pair(pred, target, box):
    a, b = np.asarray(pred.convert("RGB").resize(target.size)), np.asarray(target.convert("RGB"))
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    return a[max(0, y1):y2, max(0, x1):x2], b[max(0, y1):y2, max(0, x1):x2]


def _fmt_box(box) -> str:
    return "none" if box is None else "(" + ", ".join(f"{float(v):.0f}" for v in box) + ")"


def _fmt(v) -> str:
    return "n/a" if not isinstance(v, (int, float)) or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def run_demo(model=None, out="unio-demo", n: int = 50, seed: int = 1000, device=None, batch_size: int = 32,
             progress: bool = True) -> dict:
    """Run the demo (see the module docstring) and return the metrics written to ``out/metrics.json``."""
    from ..evaluate import evaluate, write_json
    from ..pipeline import Pipeline, load
    from ..viz import image_grid
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"--n must be a positive number of images per task, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"--seed must be an integer >= 0, got {seed!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder; choose a folder for demo.png and metrics.json")
    name = _demo_model(model) if not isinstance(model, Pipeline) else model
    pipe = name if isinstance(name, Pipeline) else load(name, device=device, batch_size=batch_size)
    counts = {"default": n, **{t: max(1, n // 5) for t in IMAGE_TASKS}}
    results, details = evaluate(pipe, f"shapes:{seed}", n=counts, batch_size=batch_size, seed=seed,
                                progress=progress, return_details=True)
    results["run"]["model"] = str(name) if not isinstance(name, Pipeline) else results["run"]["model"]
    cells, rows = [], [("task", "truth (one example)", "prediction", "metric on n images")]
    for task, (examples, samples, preds) in details.items():
        pictures, truth, pred = _cells(pipe, task, examples[0], samples[0], preds[0])
        cells += pictures
        key = HEADLINE.get(task)
        metric = f"{key} {_fmt(results[task].get(key))} (n={results[task]['n']})" if key else f"n={results[task]['n']}"
        rows.append((task, _short(truth), _short(pred), metric))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    print("\n".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}" for r in rows))
    for task, why in results["run"]["skipped_tasks"].items():
        print(f"(skipped {task}: {why})")
    out.mkdir(parents=True, exist_ok=True)
    if cells:
        image_grid([c[0] for c in cells], [c[1] for c in cells], cols=4).save(out / "demo.png")
    write_json(results, out / "metrics.json")
    print(f"wrote {out / 'demo.png'} and {out / 'metrics.json'} ({results['run']['seconds']:.0f} s of evaluation)")
    return results


def main(args) -> int:
    """``unio demo [--model DIR] [--out DIR] [--n N] [--seed S] [--device D] [--threads T]``."""
    from ..evaluate import set_threads
    set_threads(getattr(args, "threads", None))
    run_demo(getattr(args, "model", None), out=args.out, n=args.n, seed=args.seed, device=args.device)
    return 0
