"""Pictures for training the VQ image tokenizer (``unio tokenizer image --data ...``): not samples
with annotations, as the readers of :mod:`.formats` give, but image tensors.

- :class:`ShapesPictures` (``--data shapes``): seeded shapes scenes, drawn as RGB pictures, depth
  maps or object masks (as images, :mod:`unio.tokenizers.dense`) in a fixed mix; rendered on the
  fly, so every step sees fresh scenes. Its :meth:`~ShapesPictures.guided` batches pair pictures
  with their depth maps and masks, for the tokenizer's refiners.
- :class:`FolderPictures` (``--data folder:PATH``): the user's images, letterboxed.
- :class:`GuidedPictures` (``--refine`` with ``--data SPEC``): pictures with their depth maps and
  object masks from any data spec ``unio eval`` reads (:func:`unio.data.specs.open_data`).
- :func:`make_pictures`: ``shapes``, ``folder:PATH`` or any data spec -> the source.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import DataError, ImageError
from ..images import IMAGE_EXTENSIONS, letterbox, letterbox_array
from ..tokenizers.dense import depth_to_image, mask_to_image
from .shapes import ShapesWorld
from .specs import open_data

__all__ = ["KINDS", "ShapesPictures", "FolderPictures", "SamplePictures", "GuidedPictures", "make_pictures"]

KINDS = ("rgb", "depth", "mask")  # what a picture for the image tokenizer can be drawn from


def _mix_schedule(mix: dict[str, float], n: int = 16) -> list[str]:
    """A fixed cycle of kinds with the requested proportions (deterministic, no sampling noise)."""
    total = sum(mix.values())
    counts = {k: round(n * v / total) for k, v in mix.items()}
    return [k for k in KINDS for _ in range(counts.get(k, 0))] or ["rgb"]


class ShapesPictures:
    """Seeded shapes scenes as tokenizer inputs: the picture, its depth map or one object's mask."""

    def __init__(self, image_size: int = 64, seed: int = 0, mix: dict[str, float] | None = None,
                 depth_range=(0.0, 1.0)):
        self.world = ShapesWorld(image_size=image_size, seed=seed)
        self.cycle = _mix_schedule(mix or {"rgb": 2, "depth": 1, "mask": 1})
        self.depth_range = depth_range

    def item(self, index: int) -> np.ndarray:
        """float32 (3, S, S) in [0, 1]."""
        kind = self.cycle[index % len(self.cycle)]
        s = self.world[index]
        if kind == "depth":
            return depth_to_image(s["depth"], self.depth_range[1], min_depth=self.depth_range[0])
        if kind == "mask":
            k = (index // len(self.cycle)) % len(s["objects"])
            return mask_to_image(s["objects"][k]["mask"])
        return np.asarray(s["image"], dtype=np.float32).transpose(2, 0, 1) / 255.0

    def batch(self, indices) -> torch.Tensor:
        return torch.from_numpy(np.stack([self.item(int(i)) for i in indices]))

    def guided(self, indices) -> dict[str, torch.Tensor]:
        """Scenes for refiner training: ``rgb`` (B, 3, S, S) in [0, 1], ``depth`` (B, S, S) and one
        object's ``mask`` (B, S, S) per scene (the objects taken in turn)."""
        rgb, depth, mask = [], [], []
        for i in indices:
            s = self.world[int(i)]
            rgb.append(np.asarray(s["image"], dtype=np.float32).transpose(2, 0, 1) / 255.0)
            depth.append(s["depth"])
            mask.append(s["objects"][(int(i) // 7) % len(s["objects"])]["mask"])
        depth = torch.from_numpy(np.stack(depth).astype(np.float32))
        return {"rgb": torch.from_numpy(np.stack(rgb)), "depth": depth, "valid": depth > 0,
                "mask": torch.from_numpy(np.stack(mask)), "has_mask": torch.ones(len(rgb), dtype=torch.bool)}


class GuidedPictures:
    """Pictures with their depth maps and object masks from any dataset reader (the data specs of
    ``unio eval``: ``depth:images=DIR,depth=DIR``, a JSONL manifest, ``coco:...``), letterboxed to
    the tokenizer's size as the depth and segment tasks do, for refiner training. The last
    ``held_out`` samples are kept apart for evaluation. Missing depth (NaN, <= 0) is drawn as far,
    as the depth task draws it, and left out of the loss and the figures."""

    def __init__(self, spec: str, image_size: int, depth_range, kinds: tuple[str, ...], held_out: int = 128):
        self.source, _ = open_data(spec)
        n = len(self.source)
        if n < 2:
            raise DataError(f"--data {spec!r} has {n} sample(s); refiner training needs at least 2 (one held out)")
        self.held_out = max(1, min(int(held_out), n // 5))
        self.train_n = n - self.held_out
        self.size, self.depth_range, self.spec = int(image_size), tuple(depth_range), spec
        first = self.source[0]
        if "depth" in kinds and first.get("depth") is None:
            raise DataError(f"--data {spec!r} has no depth maps (its first sample has none); --refine depth needs "
                            "pictures with depth, e.g. depth:images=DIR,depth=DIR")
        if "mask" in kinds and not any(o.get("mask") is not None for o in first.get("objects") or []):
            raise DataError(f"--data {spec!r} has no object masks (its first sample has none); --refine mask needs "
                            "them, e.g. mask:images=DIR,masks=DIR or COCO instances")

    def guided(self, indices, held_out: bool = False) -> dict[str, torch.Tensor]:
        """As :meth:`ShapesPictures.guided`, plus ``valid`` depth pixels and ``has_mask`` per scene."""
        S, hi = self.size, self.depth_range[1]
        rgb, depth, valid, mask, has_mask = [], [], [], [], []
        for i in indices:
            i = int(i)
            index = self.train_n + i % self.held_out if held_out else i % self.train_n
            s = self.source[index]
            rgb.append(np.asarray(letterbox(s["image"], S)[0], dtype=np.float32).transpose(2, 0, 1) / 255.0)
            d = s.get("depth")
            if d is None:
                depth.append(np.full((S, S), hi, np.float32))
                valid.append(np.zeros((S, S), bool))
            else:
                d = np.asarray(d, dtype=np.float32)
                ok = np.isfinite(d) & (d > 0)
                depth.append(letterbox_array(np.where(ok, d, hi), S, hi, nearest=False))
                valid.append(letterbox_array(ok, S, False, nearest=True))
            objects = [o for o in s.get("objects") or [] if o.get("mask") is not None]
            has_mask.append(bool(objects))
            if objects:
                m = np.asarray(objects[(i // 7) % len(objects)]["mask"], dtype=bool)
                mask.append(letterbox_array(m, S, False, nearest=True))
            else:
                mask.append(np.zeros((S, S), bool))
        return {"rgb": torch.from_numpy(np.stack(rgb)), "depth": torch.from_numpy(np.stack(depth)),
                "valid": torch.from_numpy(np.stack(valid)), "mask": torch.from_numpy(np.stack(mask)),
                "has_mask": torch.tensor(has_mask)}


class FolderPictures:
    """The user's images (recursively, :data:`unio.images.IMAGE_EXTENSIONS`), letterboxed to ``image_size``.

    The last 5% of the sorted file list (at least one, at most 256) is held out for evaluation.
    """

    def __init__(self, path, image_size: int = 64, held_out: bool = False):
        root = Path(path)
        if not root.is_dir():
            raise DataError(f"image folder {root} does not exist; pass --data folder:PATH with a folder of images")
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise DataError(f"image folder {root} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                            "point --data folder:PATH at a folder with pictures")
        n_eval = min(256, max(1, len(files) // 20)) if len(files) > 1 else 0
        self.files = files[len(files) - n_eval:] if held_out else files[:len(files) - n_eval]
        if not self.files:  # a single image: train and evaluate on it
            self.files = files
        self.image_size = image_size
        self._cache: dict[int, np.ndarray] = {}
        self._cache_limit = max(1, (1 << 30) // (3 * image_size * image_size))  # ~1 GB of uint8

    def item(self, index: int) -> np.ndarray:
        k = index % len(self.files)
        if k not in self._cache:
            try:
                square, _ = letterbox(self._picture(k), self.image_size)
            except ImageError as exc:
                raise DataError(f"could not use {self.files[k]} for training: {exc}") from None
            arr = np.asarray(square, dtype=np.uint8).transpose(2, 0, 1)
            if len(self._cache) >= self._cache_limit:
                return arr.astype(np.float32) / 255.0
            self._cache[k] = arr
        return self._cache[k].astype(np.float32) / 255.0

    def _picture(self, k: int):
        return self.files[k]

    def batch(self, indices) -> torch.Tensor:
        return torch.from_numpy(np.stack([self.item(int(i)) for i in indices]))


class SamplePictures(FolderPictures):
    """The images of any dataset a data spec names (``idx:images=FILE``, ``coco:images=DIR,...``, a
    JSONL manifest), letterboxed; the last 5% (at least one, at most 256) held out like folders."""

    def __init__(self, spec: str, image_size: int = 64, held_out: bool = False):
        self.source, _ = open_data(spec)
        n = len(self.source)
        n_eval = min(256, max(1, n // 20)) if n > 1 else 0
        self.files = list(range(n - n_eval, n)) if held_out else list(range(n - n_eval))
        if not self.files:
            self.files = list(range(n))
        self.image_size = image_size
        self._cache: dict[int, np.ndarray] = {}
        self._cache_limit = max(1, (1 << 30) // (3 * image_size * image_size))

    def _picture(self, k: int):
        return self.source[self.files[k]]["image"]


def make_pictures(spec: str, image_size: int, seed: int = 0, held_out: bool = False, mix=None,
                  depth_range=(0.0, 1.0)):
    """``shapes``, ``folder:PATH`` or any data spec (``idx:images=FILE``) -> a source with
    ``batch(indices)``; held_out picks the evaluation split."""
    if spec == "shapes":
        return ShapesPictures(image_size, seed + 1 if held_out else seed, mix, depth_range)
    if spec.startswith("folder:") and len(spec) > len("folder:"):
        return FolderPictures(spec[len("folder:"):], image_size, held_out=held_out)
    try:
        return SamplePictures(spec, image_size, held_out=held_out)
    except DataError as exc:
        raise DataError(f"--data {spec!r}: use 'shapes', 'folder:PATH' or a data spec such as idx:images=FILE "
                        f"({exc})") from None
