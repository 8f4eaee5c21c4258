"""``unio predict TASK --model DIR IMAGE... [--text T] [--out preds.jsonl] [--viz DIR] [--format coco]
[--option KEY=VALUE ...]``.

Writes one JSON record per image (JSONL; to stdout without ``--out``): text answers, labels with
scores, boxes as x1 y1 x2 y2 pixels of the original image, masks as COCO RLE, depth maps and
images as files (.npy / .png) next to the predictions. ``--viz`` draws pictures of the
predictions; ``--format coco`` writes detection results that pycocotools' ``COCO.loadRes``
reads (plus ``<out>.categories.json`` naming the category ids).

For the tasks whose answer is a picture (generate_image, inpaint, depth) ``--out`` may instead
name that picture (``--out cat.png``; for depth also ``.npy``, the raw float32 map): it is
written there and nothing else, which needs exactly one answer.

Every input is checked before the model is loaded, so a typo fails in a second with one message.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ..errors import InputError, TaskError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# task -> (what --text means, or None when the task takes no text)
TEXT_ROLE = {"caption": None, "vqa": "question", "classify": None, "detect": None, "ground": "expression",
             "describe_region": None, "classify_region": None, "segment": "expression", "depth": None,
             "generate_image": "text", "inpaint": "text"}
NEEDS_BOX = {"describe_region", "classify_region", "inpaint"}
PICTURE_TASKS = {"generate_image", "inpaint", "depth"}  # answers that --out may name as a picture file


def main(args) -> int:
    from ..tasks import task_names
    task = args.task
    if task not in task_names():
        raise TaskError(f"unknown task {task!r}; choose one of: {', '.join(task_names())}")
    role = TEXT_ROLE.get(task)
    if role and not (args.text and args.text.strip()):
        raise InputError(f"`unio predict {task}` needs --text (the {role})")
    if args.text and not role and task in TEXT_ROLE:
        raise InputError(f"`unio predict {task}` takes no --text; to write its prompt yourself use "
                         "--option prompt='...'")
    box = _parse_box(args.box) if args.box else None
    if box is not None and task not in NEEDS_BOX and task in TEXT_ROLE:
        raise InputError(f"--box is for {', '.join(sorted(NEEDS_BOX))}, not {task}; drop it")
    if task in NEEDS_BOX and box is None:
        raise InputError(f"`unio predict {task}` needs --box x1,y1,x2,y2 (pixels of the input images)")
    if args.labels and task not in ("classify", "classify_region"):
        raise InputError(f"--labels is for classify and classify_region, not {task}; drop it")
    if args.format == "coco" and task != "detect":
        raise InputError(f"--format coco is for detect results only, not {task}; use --format jsonl")
    from ..pipeline import options_for, parse_options
    parsed = parse_options(getattr(args, "options", None))
    other = sorted(t for t in parsed if t not in (None, task))
    if other:
        raise InputError(f"--option names task {other[0]!r}, but this command runs {task}; drop the "
                         f"'{other[0]}.' prefix or run `unio predict {other[0]}`")
    options = options_for(task, parsed, several_tasks=False)
    images = _image_paths(args.images, task)
    out = Path(args.out) if args.out else None
    picture_out = _picture_out(task, out, images, args)
    files = Path(args.viz) if args.viz else (out.parent / f"{out.stem}_files" if out else Path("unio-predict-files"))
    viz = Path(args.viz) if args.viz else None

    import unio
    pipe = unio.load(args.model, device=args.device)
    if picture_out:
        _write_picture(pipe, task, images, args, box, options, out)
        return 0
    records = []
    if task == "generate_image":
        files.mkdir(parents=True, exist_ok=True)
        image = pipe.generate_image(args.text, **options)
        path = files / "generated.png"
        image.save(path)
        records.append({"task": task, "text": args.text, "image_png": str(path)})
    else:
        records = _run_images(pipe, task, images, args, box, files, viz, options)
    _write(records, task, out, args.format, pipe)
    return 0


def _picture_out(task: str, out: Path | None, images: list, args) -> bool:
    """Whether ``--out`` names the answer's picture itself rather than a predictions file; a
    picture path that cannot be written that way is an error before anything runs."""
    if out is None:
        return False
    suffix = out.suffix.lower()
    if suffix not in IMAGE_SUFFIXES and suffix != ".npy":
        return False
    if task not in PICTURE_TASKS:
        raise InputError(f"--out {out} names a picture file, but {task} writes JSON records; give a .jsonl "
                         "path, or leave --out out to print them")
    if suffix == ".npy" and task != "depth":
        raise InputError(f"--out {out}: .npy holds depth maps; {task} writes a picture (.png, .jpg, ...)")
    if args.viz:
        raise InputError(f"--out {out} names the picture itself, so there is nothing for --viz to draw; "
                         "drop --viz, or write predictions with --out preds.jsonl")
    n = 1 if task == "generate_image" else len(images)
    if n != 1:
        raise InputError(f"--out {out} names one picture, but {n} images were given; give a .jsonl path "
                         f"(the pictures then go to {out.stem}_files/ beside it), or one image")
    return True


def _write_picture(pipe, task: str, images: list, args, box, options: dict, out: Path) -> None:
    from .. import viz as draw
    from ..images import load_image
    if task == "generate_image":
        result = pipe.generate_image(args.text, **options)
    else:
        pil = load_image(images[0])
        result = _call(pipe, task, [pil], args.text, box, None, 1, options)[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    if task == "depth":
        if out.suffix.lower() == ".npy":
            np.save(out, result.astype(np.float32))
        else:
            _save_picture(draw.colorize_depth(result), out)
    else:
        _save_picture(result, out)
    print(f"wrote the {task} picture to {out}", file=sys.stderr)


def _save_picture(picture, out: Path) -> None:
    try:
        picture.save(out)
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"could not write {out} ({e}); use a .png path") from None


def _run_images(pipe, task, paths, args, box, files: Path, viz: Path | None, options: dict) -> list[dict]:
    from tqdm import tqdm

    from ..images import load_image
    labels = [s.strip() for s in args.labels.split(",") if s.strip()] if args.labels else None
    bs = max(1, int(args.batch_size))
    records = []
    with tqdm(total=len(paths), unit="img", desc=f"unio predict {task}", file=sys.stderr,
              disable=len(paths) < 2) as bar:
        for start in range(0, len(paths), bs):
            chunk = paths[start:start + bs]
            pils = [load_image(p) for p in chunk]
            results = _call(pipe, task, pils, args.text, box, labels, bs, options)
            for k, (path, pil, result) in enumerate(zip(chunk, pils, results)):
                index = start + k
                rec = {"image": str(path), "task": task, "width": pil.width, "height": pil.height}
                rec.update(_record(task, result, pil, index, path, args.text, box, files, viz))
                records.append(rec)
            bar.update(len(chunk))
    return records


def _call(pipe, task, pils, text, box, labels, bs, options):
    inputs = {TEXT_ROLE[task]: text} if TEXT_ROLE.get(task) else {}
    if task in NEEDS_BOX:
        inputs["box"] = box
    if labels is not None:
        inputs["labels"] = labels
    return pipe.run(task, pils, batch_size=bs, **inputs, **options)


def _record(task, result, pil, index, path, text, box, files: Path, viz: Path | None) -> dict:
    from .. import viz as draw
    stem = f"{index:05d}_{Path(path).stem}"
    picture = None
    if task in ("caption", "vqa", "describe_region"):
        rec = {"text": result}
        if text:
            rec["question" if task == "vqa" else "prompt_text"] = text
        picture = draw.image_grid([pil], captions=[result or "(empty)"]) if viz else None
    elif task in ("classify", "classify_region"):
        rec = {"label": str(result), "score": _num(result.score)}
        picture = draw.image_grid([pil], captions=[f"{result} {result.score:.2f}"]) if viz else None
    elif task == "detect":
        rec = {"boxes": [[round(float(v), 2) for v in d.box] for d in result], "labels": [d.label for d in result],
               "scores": [_num(d.score) for d in result]}
        picture = draw.draw_boxes(pil, [d.box for d in result], [d.label for d in result],
                                  [d.score for d in result]) if viz else None
    elif task == "ground":
        rec = {"expression": text, "box": [round(float(v), 2) for v in result] if result is not None else None}
        picture = draw.draw_boxes(pil, [tuple(result)] if result is not None else [], [text] if result else None) \
            if viz else None
    elif task == "segment":
        from ..data.coco import encode_mask
        rec = {"expression": text, "mask": encode_mask(result), "area": int(result.sum())}
        picture = draw.overlay_mask(pil, result) if viz else None
    elif task == "depth":
        files.mkdir(parents=True, exist_ok=True)
        npy, png = files / f"{stem}_depth.npy", files / f"{stem}_depth.png"
        np.save(npy, result.astype(np.float32))
        draw.colorize_depth(result).save(png)
        rec = {"depth_npy": str(npy), "depth_png": str(png), "min": _num(result.min()), "max": _num(result.max())}
    elif task == "inpaint":
        files.mkdir(parents=True, exist_ok=True)
        png = files / f"{stem}_inpaint.png"
        result.save(png)
        rec = {"text": text, "box": list(box), "image_png": str(png)}
    else:
        rec = {"result": getattr(result, "to_dict", lambda: result)()}
    if picture is not None:
        viz.mkdir(parents=True, exist_ok=True)
        picture.save(viz / f"{stem}_{task}.png")
        rec["viz_png"] = str(viz / f"{stem}_{task}.png")
    return rec


def _write(records: list[dict], task: str, out: Path | None, fmt: str, pipe) -> None:
    if fmt == "coco":
        results, categories = coco_results(records, pipe.classes.get("object") or [])
        text = json.dumps(results)
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text + "\n")
            cats = out.with_name(out.stem + ".categories.json")
            cats.write_text(json.dumps(categories, indent=1) + "\n")
            print(f"wrote {len(results)} detections on {len(records)} images to {out} (categories: {cats})",
                  file=sys.stderr)
        else:
            print(text)
        return
    lines = "".join(json.dumps(r) + "\n" for r in records)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(lines)
        print(f"wrote {len(records)} {task} predictions to {out}", file=sys.stderr)
    else:
        sys.stdout.write(lines)


def coco_results(records: list[dict], classes: list[str]) -> tuple[list[dict], list[dict]]:
    """Detection records -> COCO results ([x, y, w, h] boxes) and the category table.

    image_id is the file name's number when it is one (COCO's 000000397133.jpg -> 397133), else the
    1-based position; category_id is the 1-based index in the model's object classes, labels outside
    them numbered after.
    """
    cat_ids = {name: k + 1 for k, name in enumerate(classes)}
    results = []
    for pos, rec in enumerate(records, start=1):
        stem = Path(rec["image"]).stem
        image_id = int(stem) if stem.isdigit() else pos
        for b, label, score in zip(rec["boxes"], rec["labels"], rec["scores"]):
            if label not in cat_ids:
                cat_ids[label] = len(cat_ids) + 1
            x1, y1, x2, y2 = b
            results.append({"image_id": image_id, "category_id": cat_ids[label], "label": label,
                            "bbox": [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)], "score": score})
    return results, [{"id": i, "name": n} for n, i in cat_ids.items()]


def _image_paths(items, task) -> list[Path]:
    """The image files given (folders expanded), each checked readable."""
    from ..images import load_image
    if task == "generate_image":
        if items:
            raise InputError("generate_image makes an image from --text alone; do not pass image files")
        return []
    if not items:
        raise InputError(f"no images given: pass one or more image files (or folders) after `unio predict {task}`")
    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise InputError(f"folder {p} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
            paths += found
        else:
            paths.append(p)
    for p in paths:
        load_image(p)  # ImageError naming the file and what to do
    return paths


def _parse_box(text: str) -> tuple[float, float, float, float]:
    from ..images import check_box
    try:
        values = [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        raise InputError(f"--box must be four numbers x1,y1,x2,y2 in pixels, got {text!r}") from None
    if len(values) != 4:
        raise InputError(f"--box must be four numbers x1,y1,x2,y2 in pixels, got {text!r}")
    return check_box(values)


def _num(v) -> float | None:
    v = float(v)
    return v if np.isfinite(v) else None
