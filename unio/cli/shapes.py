"""``unio shapes``: a preview of the shapes world (grid, images, annotations) and the text corpus
a shapes-world tokenizer is trained on (every caption, question, answer, referring expression
and prompt template)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

import yaml
from PIL import Image

from .. import viz
from ..data.shapes import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, ShapesWorld, shapes_texts
from ..errors import DataError, InputError

__all__ = ["annotation_record", "write_preview", "write_text_corpus", "prompt_texts", "write_world_preview",
           "check_preview_n", "write_corpus_lines"]


# ---------------------------------------------------------------------------------- text corpus
def _yaml_strings(node) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _yaml_strings(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _yaml_strings(value)


def prompt_texts(files) -> list[str]:
    """Every template string of prompt YAML files, placeholders removed (tokenizer corpus)."""
    texts = []
    for f in files:
        try:
            data = yaml.safe_load(Path(f).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise DataError(f"cannot read prompt file {f} ({exc}); pass readable prompts/*.yaml files") from None
        for t in _yaml_strings(data):
            t = re.sub(r"\s+", " ", re.sub(r"\{\w+\}", " ", t)).strip()
            if t:
                texts.append(t)
    return texts


def write_text_corpus(path: str | Path, n: int = 20000, seed: int = 0, prompt_files=(),
                      prompt_repeats: int = 100) -> int:
    """Write the text a shapes-world model reads and writes, one line each; returns the line count.

    The lines are :func:`unio.data.shapes.shapes_texts` of ``n`` samples plus every prompt
    template of ``prompt_files`` (repeated ``prompt_repeats`` times so their words earn whole
    pieces).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise InputError(f"the text corpus needs a positive number of samples, got n={n!r}")
    prompts = prompt_texts(prompt_files)
    return write_corpus_lines(path, shapes_texts(n, seed=seed), prompts, prompt_repeats)


def write_corpus_lines(path: str | Path, texts, prompts: list[str], prompt_repeats: int) -> int:
    """Write ``texts`` and then ``prompts`` ``prompt_repeats`` times, one line each; the line count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = 0
    with open(path, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(t + "\n")
            lines += 1
        for _ in range(prompt_repeats):
            for t in prompts:
                f.write(t + "\n")
                lines += 1
    return lines


# ---------------------------------------------------------------------------------- preview
def annotation_record(sample: dict, index: int | None = None, seed: int | None = None,
                      image_file: str | None = None) -> dict:
    """A JSON-ready record of a sample: everything but pixels (masks and depth map dropped)."""
    rec = {}
    if index is not None:
        rec["index"] = int(index)
    if seed is not None:
        rec["seed"] = int(seed)
    if image_file is not None:
        rec["image"] = image_file
    w, h = sample["image"].size
    rec.update({
        "width": w, "height": h,
        "objects": [{k: (list(v) if k == "box" else v) for k, v in o.items() if k != "mask"}
                    for o in sample["objects"]],
        "caption": sample["caption"],
        "qa": [list(p) for p in sample["qa"]],
        "refexps": [list(p) for p in sample["refexps"]],
        "label": sample["label"],
    })
    return rec


def check_preview_n(n) -> None:
    """--n of a preview: a positive number of samples, at most 10000."""
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise InputError(f"--n must be a positive number of samples, got {n!r}")
    if n > 10000:
        raise InputError(f"--n {n} is too many for a preview; use at most 10000")


def write_world_preview(world, n: int, out: str | Path, seed: int, scale: int | None = None, extra: dict | None = None,
                        what: str = "samples") -> dict:
    """Write ``out/grid.png``, ``out/images/NNNN.png`` and ``out/annotations.jsonl`` for samples
    0..n-1 of a seeded world (shapes or fashion scenes); ``extra`` is added to every record."""
    image_size = world.image_size
    out = Path(out)
    try:
        (out / "images").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder {out} ({exc}); choose a writable --out") from None
    if scale is None:  # small images are upscaled so boxes and labels stay readable
        scale = max(1, 256 // image_size)
    tiles, captions = [], []
    with open(out / "annotations.jsonl", "w", encoding="utf-8") as f:
        for i in range(n):
            s = world[i]
            name = f"images/{i:04d}.png"
            s["image"].save(out / name)
            f.write(json.dumps({**annotation_record(s, i, seed, name), **(extra or {})}) + "\n")
            big = s["image"].resize((image_size * scale, image_size * scale), Image.NEAREST)
            boxes = [[c * scale for c in o["box"]] for o in s["objects"]]
            tiles.append(viz.draw_boxes(big, boxes, labels=[o["label"] for o in s["objects"]]))
            captions.append(s["caption"])
    grid = viz.image_grid(tiles, captions=captions, cols=min(n, 4))
    grid.save(out / "grid.png")
    print(f"wrote {out / 'grid.png'} ({n} {what}, {image_size}x{image_size}, seed {seed})")
    print(f"wrote {out / 'annotations.jsonl'} and {n} images under {out / 'images'}")
    return {"grid": str(out / "grid.png"), "annotations": str(out / "annotations.jsonl"), "n": n}


def write_preview(n: int = 16, out: str | Path = "shapes-preview", seed: int = 0, image_size: int = 64,
                  max_objects: int = 4, scale: int | None = None) -> dict:
    """Write ``out/grid.png``, ``out/images/NNNN.png`` and ``out/annotations.jsonl`` for n samples."""
    check_preview_n(n)
    if (isinstance(image_size, bool) or not isinstance(image_size, int)
            or not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE):
        raise InputError(f"--image-size must be {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE} pixels, got {image_size!r}")
    world = ShapesWorld(image_size=image_size, seed=seed, max_objects=max_objects)
    return write_world_preview(world, n, out, seed, scale)
