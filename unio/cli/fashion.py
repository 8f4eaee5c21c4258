"""``unio fashion``: a preview of the fashion-scenes world (grid, images, annotations) and the text
corpus its tokenizer is trained on (every caption, question, answer, referring expression and
prompt template)."""
from __future__ import annotations

from pathlib import Path

from ..data.fashion import IMAGE_SIZES, FashionScenes, fashion_texts
from ..errors import InputError
from .shapes import check_preview_n, prompt_texts, write_corpus_lines, write_world_preview

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
    return write_corpus_lines(path, texts, prompts, prompt_repeats)


def write_preview(n: int = 16, out: str | Path = "fashion-preview", seed: int = 0, split: str = "train",
                  image_size: int = 128, max_objects: int = 4, root=None) -> dict:
    """Write ``out/grid.png``, ``out/images/NNNN.png`` and ``out/annotations.jsonl`` for n samples."""
    check_preview_n(n)
    if isinstance(image_size, bool) or image_size not in IMAGE_SIZES:
        raise InputError(f"--image-size must be a multiple of 64 in 64..512, got {image_size!r}")
    world = FashionScenes(image_size=image_size, seed=seed, split=split, max_objects=max_objects, root=root)
    return write_world_preview(world, n, out, seed, extra={"split": split}, what=f"{split} scenes")
