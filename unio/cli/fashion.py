"""``unio fashion``: a preview of the fashion-scenes world (grid, images, annotations) and the text
corpus its tokenizer is trained on (every caption, question, answer, referring expression and
prompt template)."""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from .. import viz
from ..data.fashion import IMAGE_SIZES, FashionScenes, fashion_texts
from ..errors import InputError
from .shapes import annotation_record, prompt_texts

__all__ = ["write_preview", "write_text_corpus"]


def _check_n(n) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise InputError(f"--n must be a positive number of samples, got {n!r}")


def write_text_corpus(path: str | Path, n: int = 20000, seed: int = 0, prompt_files=(), prompt_repeats: int = 100,
                      split: str = "train", root=None) -> int:
    """Write the text a fashion-scenes model reads and writes, one line each; returns the line count:
    :func:`unio.data.fashion.fashion_texts` of ``n`` samples of ``split`` plus every prompt template
    of ``prompt_files`` (repeated ``prompt_repeats`` times so their words earn whole pieces)."""
    _check_n(n)
    prompts = prompt_texts(prompt_files)
    texts = fashion_texts(n, seed=seed, split=split, root=root)
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


def write_preview(n: int = 16, out: str | Path = "fashion-preview", seed: int = 0, split: str = "train",
                  image_size: int = 128, max_objects: int = 4, root=None) -> dict:
    """Write ``out/grid.png``, ``out/images/NNNN.png`` and ``out/annotations.jsonl`` for n samples."""
    _check_n(n)
    if n > 10000:
        raise InputError(f"--n {n} is too many for a preview; use at most 10000")
    if isinstance(image_size, bool) or image_size not in IMAGE_SIZES:
        raise InputError(f"--image-size must be a multiple of 64 in 64..512, got {image_size!r}")
    world = FashionScenes(image_size=image_size, seed=seed, split=split, max_objects=max_objects, root=root)
    out = Path(out)
    try:
        (out / "images").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder {out} ({exc}); choose a writable --out") from None
    scale = max(1, 256 // image_size)
    tiles, captions = [], []
    with open(out / "annotations.jsonl", "w", encoding="utf-8") as f:
        for i in range(n):
            s = world[i]
            name = f"images/{i:04d}.png"
            s["image"].save(out / name)
            rec = annotation_record(s, i, seed, name)
            rec["split"] = split
            f.write(json.dumps(rec) + "\n")
            big = s["image"].resize((image_size * scale, image_size * scale), Image.NEAREST)
            boxes = [[c * scale for c in o["box"]] for o in s["objects"]]
            tiles.append(viz.draw_boxes(big, boxes, labels=[o["label"] for o in s["objects"]]))
            captions.append(s["caption"])
    grid = viz.image_grid(tiles, captions=captions, cols=min(n, 4))
    grid.save(out / "grid.png")
    print(f"wrote {out / 'grid.png'} ({n} {split} scenes, {image_size}x{image_size}, seed {seed})")
    print(f"wrote {out / 'annotations.jsonl'} and {n} images under {out / 'images'}")
    return {"grid": str(out / "grid.png"), "annotations": str(out / "annotations.jsonl"), "n": n}
