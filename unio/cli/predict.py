"""``unio predict TASK --model DIR IMAGE... [--text T] [--out preds.jsonl] [--viz DIR] [--format coco]
[--option KEY=VALUE ...]``.

Tasks that read several pictures at once take them as ONE item: ``unio predict reason --model M
left.png right.png --text "..."``; a video task a clip's frame files in order, a folder of frames, an
animated GIF or a video file (``--option frames=N`` reads N frames spread evenly).

Writes one JSON record per image (JSONL; to stdout without ``--out``): text answers, labels with
scores, boxes as x1 y1 x2 y2 pixels of the original image, masks as COCO RLE, depth maps and
images as files (.npy / .png) next to the predictions. ``--viz`` draws pictures of the
predictions; ``--format coco`` writes detection results that pycocotools' ``COCO.loadRes``
reads (plus ``<out>.categories.json`` naming the category ids).

For the tasks whose answer is a picture (generate_image, inpaint, depth) ``--out`` may instead
name that picture (``--out cat.png``; for depth also ``.npy``, the raw float32 map): it is
written there and nothing else, which needs exactly one answer.

Every input is checked before the model is loaded, so a typo fails in a second with one message.
An image that cannot be read stops the command there (``--on-error stop``, the default: exit
status 2, nothing written); with ``--on-error skip`` such images are left out, listed on stderr at
the end with the reason for each, and the exit status is 1 (0 when every image was read). Large
files are decoded at four times the model's input side (JPEGs by DCT scaling, never in full; depth
and inpaint, whose answer is a picture of the file's size, read it in full), and every result is
given in the pixels of the file itself.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from PIL import Image
from tqdm import tqdm

import unio

from .. import viz
from ..errors import ImageError, InputError, TaskError
from ..evaluate import set_threads
from ..data.formats import read_json
from ..images import HEIF_EXTENSIONS, IMAGE_EXTENSIONS, check_box, load_image, original_size
from ..pipeline import READ_SIDE, options_for
from ..tasks import get_task, task_names
from ..tasks.detect import coco_gt_categories, coco_gt_images
from ..tasks.inputs import several_image_items
from ..tasks.options import parse_options


VIZ_SIDE = 384        # --viz draws pictures with a shorter long side at this size
VIZ_THRESHOLD = 0.3   # --viz leaves out detections scoring below this (--viz-threshold)
CHECK_SIDE = 64       # ... and checked, before the model loads, at this long side (a JPEG's 1/8 DCT scale)


def main(args) -> int:
    if args.task not in task_names():
        raise TaskError(f"unknown task {args.task!r}; choose one of: {', '.join(task_names())}")
    task = get_task(args.task)
    name, role = task.name, task.text_input
    if role and not (args.text and args.text.strip()):
        raise InputError(f"`unio predict {name}` needs --text (the {role})")
    if args.text and not role:
        raise InputError(f"`unio predict {name}` takes no --text; to write its prompt yourself use "
                         "--option prompt='...'")
    box = _parse_box(args.box) if args.box else None
    box_tasks = [n for n in task_names() if "box" in get_task(n).inputs]
    if box is not None and "box" not in task.inputs:
        raise InputError(f"--box is for {', '.join(sorted(box_tasks))}, not {name}; drop it")
    if "box" in task.inputs and box is None:
        raise InputError(f"`unio predict {name}` needs --box x1,y1,x2,y2 (pixels of the input images)")
    if args.labels and "labels" not in task.options:
        takers = [n for n in task_names() if "labels" in get_task(n).options]
        raise InputError(f"--labels is for {' and '.join(takers)}, not {name}; drop it")
    if args.format == "coco" and not hasattr(task, "coco_results"):
        raise InputError(f"--format coco is for detect results only, not {name}; use --format jsonl")
    gt = getattr(args, "gt", None)
    if gt and args.format != "coco":
        raise InputError("--gt maps COCO results to a ground-truth file's ids; use it with --format coco")
    parsed = parse_options(getattr(args, "options", None))
    other = sorted(t for t in parsed if t not in (None, name))
    if other:
        raise InputError(f"--option names task {other[0]!r}, but this command runs {name}; drop the "
                         f"'{other[0]}.' prefix or run `unio predict {other[0]}`")
    options = options_for(name, parsed, several_tasks=False)
    if args.labels:
        options["labels"] = task.check_options({"labels": args.labels})["labels"]
    inputs = {role: args.text} if role else {}
    if box is not None:
        inputs["box"] = box
    on_error = getattr(args, "on_error", "stop") or "stop"
    if task.needs_image and task.num_images != 1:  # one item of several pictures: a pair, a clip
        return _predict_item(task, args, inputs, options)
    images, failed = _readable(_image_paths(args.images, task), task, on_error)
    if gt:
        gt = read_json(Path(gt), "--gt ground-truth file")
        coco_gt_images(gt, images)  # every image must be in it, before the model loads
        coco_gt_categories(gt)
    out = Path(args.out) if args.out else None
    picture_out = _picture_out(task, out, images, args)
    files = Path(args.viz) if args.viz else (out.parent / f"{out.stem}_files" if out else Path("unio-predict-files"))
    viz_dir = Path(args.viz) if args.viz else None

    set_threads(getattr(args, "threads", None))
    pipe = unio.load(args.model, device=args.device, backend=getattr(args, "backend", "torch"))
    pipe.progress = True
    # a picture answer (inpaint, depth) is made at the file's full size; other answers need only S pixels
    side = None if task.picture_files else READ_SIDE * pipe.ctx.image_size
    if picture_out:
        result = pipe.run(name, load_image(images[0]) if images else None, batch_size=1, **inputs, **options)
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            task.save_picture(result, out)
        except (OSError, ValueError, KeyError) as e:
            raise InputError(f"could not write {out} ({e}); use a .png path") from None
        print(f"wrote the {name} picture to {out}", file=sys.stderr)
        return 0
    if task.needs_image:
        records = _run_images(pipe, task, images, inputs, options, args.batch_size, files, viz_dir,
                              getattr(args, "viz_threshold", VIZ_THRESHOLD), side, on_error, failed)
    else:  # the answer is made from the text alone (generate_image)
        result = pipe.run(name, **inputs, **options)
        records = [{"task": name, **task.to_record(result, inputs, files, "generated")}]
    _write(records, task, out, args.format, pipe, gt)
    return _report(failed, len(records) + len(failed))


def _predict_item(task, args, inputs: dict, options: dict) -> int:
    """A task reading several pictures at once: the IMAGE arguments are ONE item (reason: the two
    images of the pair, in order; a video task: the clip's frames, a folder of frames, an animated
    GIF or a video file), read and checked before the model loads; one record is written."""
    name, given = task.name, list(args.images or [])
    if not given:
        raise InputError(f"no images given: `unio predict {name}` reads "
                         + ("the two images of a pair: IMAGE_LEFT IMAGE_RIGHT" if task.num_images == 2 else
                            f"{task.num_images} images" if task.num_images else
                            "a clip: its frame files in order, a folder of frames, an animated GIF or a video file"))
    if task.num_images is None and len(given) == 1:
        source = given[0]
    else:
        source = [Path(p) for p in given]
    frames = task.frames(options)
    items, _ = several_image_items(source, task.num_images, frames, READ_SIDE * 64)
    if task.num_images is not None and len(items[0]) != task.num_images:
        raise InputError(f"`unio predict {name}` reads {task.num_images} images (one item), got {len(items[0])}")
    out = Path(args.out) if args.out else None
    if out is not None and out.suffix.lower() in IMAGE_EXTENSIONS:
        raise InputError(f"--out {out} names a picture file, but {name} writes JSON records; give a .jsonl path")
    files = Path(args.viz) if args.viz else (out.parent / f"{out.stem}_files" if out else Path("unio-predict-files"))
    set_threads(getattr(args, "threads", None))
    pipe = unio.load(args.model, device=args.device, backend=getattr(args, "backend", "torch"))
    result = pipe.run(name, items[0], **inputs, **options)
    rec = {"images": [str(p) for p in given], "task": name, "frames": len(items[0]),
           **task.to_record(result, inputs, files, "item")}
    if args.viz:
        panels = task.panels(items[0], result, inputs=inputs, scale=max(1.0, VIZ_SIDE / max(items[0][0].size)))
        if panels:
            viz_dir = Path(args.viz)
            viz_dir.mkdir(parents=True, exist_ok=True)
            picture = panels[0][0] if len(panels) == 1 and not panels[0][1] else \
                viz.image_grid([p for p, _ in panels], [c for _, c in panels], cols=len(panels))
            picture.save(viz_dir / f"item_{name}.png")
            rec["viz_png"] = str(viz_dir / f"item_{name}.png")
    _write([rec], task, out, args.format, pipe)
    return 0


def _picture_out(task, out: Path | None, images: list, args) -> bool:
    """Whether ``--out`` names the answer's picture itself rather than a predictions file; a
    picture path that cannot be written that way is an error before anything runs."""
    if out is None:
        return False
    suffix = out.suffix.lower()
    if suffix not in IMAGE_EXTENSIONS and suffix != ".npy":
        return False
    if not task.picture_files:
        raise InputError(f"--out {out} names a picture file, but {task.name} writes JSON records; give a .jsonl "
                         "path, or leave --out out to print them")
    if suffix not in task.picture_files:
        raise InputError(f"--out {out}: .npy holds depth maps; {task.name} writes a picture (.png, .jpg, ...)")
    if args.viz:
        raise InputError(f"--out {out} names the picture itself, so there is nothing for --viz to draw; "
                         "drop --viz, or write predictions with --out preds.jsonl")
    n = len(images) if task.needs_image else 1
    if n != 1:
        raise InputError(f"--out {out} names one picture, but {n} images were given; give a .jsonl path "
                         f"(the pictures then go to {out.stem}_files/ beside it), or one image")
    return True


def _run_images(pipe, task, paths, inputs: dict, options: dict, batch_size: int, files: Path,
                viz_dir: Path | None, viz_threshold: float, side: int | None = None, on_error: str = "stop",
                failed: list | None = None) -> list[dict]:
    """Records of ``paths`` in order; with ``on_error="skip"`` an image that cannot be read now
    (changed since the check) joins ``failed`` instead of stopping the run."""
    bs = max(1, int(batch_size))
    records = []
    with tqdm(total=len(paths), unit="img", desc=f"unio predict {task.name}", file=sys.stderr,
              disable=len(paths) < 2) as bar:
        for start in range(0, len(paths), bs):
            chunk, pils = [], []
            for p in paths[start:start + bs]:
                try:
                    pils.append(load_image(p, max_side=side))
                    chunk.append(p)
                except ImageError as e:
                    if on_error != "skip":
                        raise
                    failed.append((p, str(e)))
            results = pipe.run(task.name, pils, batch_size=bs, **inputs, **options) if pils else []
            for k, (path, pil, result) in enumerate(zip(chunk, pils, results)):
                stem = f"{start + k:05d}_{Path(path).stem}"
                width, height = original_size(pil)  # the file's own frame, whatever size it was decoded at
                rec = {"image": str(path), "task": task.name, "width": width, "height": height,
                       **task.to_record(result, inputs, files, stem)}
                if viz_dir is not None and pil.size != (width, height):  # drawn in the results' frame
                    pil = pil.resize((width, height), Image.BICUBIC)
                scale = max(1.0, VIZ_SIDE / max(pil.size))  # small images drawn big enough to read the labels
                panels = task.panels(pil, result, inputs=inputs, scale=scale, threshold=viz_threshold) \
                    if viz_dir is not None else []
                if panels:
                    viz_dir.mkdir(parents=True, exist_ok=True)
                    picture = panels[0][0] if len(panels) == 1 and not panels[0][1] else \
                        viz.image_grid([p for p, _ in panels], [c for _, c in panels], cols=len(panels))
                    picture.save(viz_dir / f"{stem}_{task.name}.png")
                    rec["viz_png"] = str(viz_dir / f"{stem}_{task.name}.png")
                records.append(rec)
            bar.update(len(chunk))
    return records


def _write(records: list[dict], task, out: Path | None, fmt: str, pipe, gt=None) -> None:
    if fmt == "coco":
        results, categories = task.coco_results(records, pipe.classes.get("object") or [], gt)
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
        print(f"wrote {len(records)} {task.name} predictions to {out}", file=sys.stderr)
    else:
        sys.stdout.write(lines)


def _image_paths(items, task) -> list[Path]:
    """The image files given, folders expanded to the pictures in them (hidden files left out)."""
    if not task.needs_image:
        if items:
            raise InputError(f"{task.name} makes an image from --text alone; do not pass image files")
        return []
    if not items:
        raise InputError(f"no images given: pass one or more image files (or folders) after `unio predict {task.name}`")
    paths: list[Path] = []
    kinds = IMAGE_EXTENSIONS + HEIF_EXTENSIONS  # HEIC photos too: read with pillow-heif, else named as skipped
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in kinds and not f.name.startswith("."))
            if not found:
                raise InputError(f"folder {p} holds no image files ({', '.join(sorted(kinds))})")
            paths += found
        else:
            paths.append(p)
    return paths


def _readable(paths: list[Path], task, on_error: str) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(the images that read, [(image, why not)]): each one decoded once before the model loads.
    ``stop``: the first that does not read raises its ImageError; ``skip``: it is set aside."""
    if on_error not in ("stop", "skip"):
        raise InputError(f"--on-error {on_error!r}: choose stop or skip")
    side = None if task.picture_files else CHECK_SIDE
    good, failed = [], []
    for p in paths:
        try:
            load_image(p, max_side=side)  # ImageError naming the file and what to do
            good.append(p)
        except ImageError as e:
            if on_error == "stop" or len(paths) == 1:
                hint = " (--on-error skip goes on without it)" if len(paths) > 1 else ""
                raise ImageError(f"{e}{hint}") from None
            failed.append((p, str(e)))
    if paths and not good:
        raise ImageError(f"none of the {len(paths)} images could be read; the first: {failed[0][1]}")
    return good, failed


def _report(failed: list[tuple[Path, str]], total: int) -> int:
    """The exit status: 0, or 1 after listing on stderr the images --on-error skip left out."""
    if not failed:
        return 0
    lines = [f"unio predict: skipped {len(failed)} of {total} images that could not be read:"]
    lines += [f"  {path}: {why}" for path, why in failed]
    print("\n".join(lines), file=sys.stderr)
    return 1


def _parse_box(text: str) -> tuple[float, float, float, float]:
    try:
        values = [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        raise InputError(f"--box must be four numbers x1,y1,x2,y2 in pixels, got {text!r}") from None
    if len(values) != 4:
        raise InputError(f"--box must be four numbers x1,y1,x2,y2 in pixels, got {text!r}")
    return check_box(values)
