"""Readers for the datasets users already have on disk, all yielding the shared sample schema.

Every reader is a :class:`Source`: a sequence whose items are sample dicts (``image`` PIL RGB,
``objects``, ``caption``, ``qa``, ``refexps``, ``depth``, ``label``; any key may be absent), so
every task can be trained from any source that carries what the task needs. Annotation files are
parsed and validated when the source is opened; images (and masks, depth maps) are read only when
a sample is fetched.

A bad record raises :class:`~unio.errors.DataError` naming the file and the line or record, or,
with ``on_bad_record="skip"``, is left out and counted in ``source.skipped``.

Formats (the ``source:`` name in a recipe, then its keys):

========== ===================================================================================
shapes     the built-in shapes world: ``seed``, ``image_size``, ``max_objects``, ``n``
coco       COCO ``images`` folder + ``captions`` and/or ``instances`` JSON (unio.data.coco)
vqa        VQAv2 ``images`` folder + ``questions`` + ``annotations`` JSON (unio.data.coco)
refcoco    RefCOCO ``images`` + ``refs`` (JSON or the original .p) + ``instances`` (unio.data.coco)
classes    ImageNet-style ``root`` with one folder per class; optional ``labels`` file (unio.data.folders)
depth      ``images`` + ``depth`` folders matched by stem: 16-bit PNG in mm or .npy in m (unio.data.folders)
masks      ``images`` + ``masks`` folders matched by stem: non-zero pixels are the object (unio.data.folders)
jsonl      a manifest, one JSON record per line (unio.data.jsonl)
webdataset WebDataset ``.tar`` shards: a folder or a pattern of them as ``path`` (unio.data.shards)
folder     a ``path`` folder of images and nothing else (``recursive`` by default): samples hold only
           ``image`` and ``path``, for tasks that need no annotation (masked_image pretraining)
========== ===================================================================================

Also ``idx`` (MNIST-style IDX files, unio.data.idx) and ``fashion-scenes`` (scenes composed of real
Fashion-MNIST photos, unio.data.fashion: ``seed``, ``split``, ``image_size``, ``max_objects``, ``root``),
``shapes-pairs`` (shapes-world image pairs with true / false statements, unio.data.shapes_pairs: ``seed``,
``image_size``, ``max_objects``, ``statements``) and ``shapes-clips`` (shapes-world clips where one object
acts, unio.data.shapes_clips: ``seed``, ``image_size``, ``frames``, ``max_objects``); their samples carry
``images`` (a pair, a clip's frames) instead of ``image``.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import DataError, ImageError
from ..images import IMAGE_EXTENSIONS, load_image
from .shapes import ShapesWorld, shapes_classes, shapes_texts

__all__ = ["Source", "BadRecords", "open_source", "source_keys", "SOURCES", "ShapesSource", "ImageFolderSource",
           "sample_texts", "read_json", "mask_box", "read_mask", "read_depth", "files_by_stem", "same_size"]

# Keys every source spec may carry, used by the mixture and the evaluator, not by the reader.
COMMON_KEYS = {"source", "weight", "tasks", "n", "on_bad_record"}


class BadRecords:
    """What to do with a malformed record: raise (``"error"``) or count and go on (``"skip"``)."""

    def __init__(self, policy: str = "error"):
        if policy not in ("error", "skip"):
            raise DataError(f"on_bad_record must be 'error' or 'skip', got {policy!r}")
        self.policy, self.count, self.examples = policy, 0, []

    def __call__(self, where: str, problem: str) -> None:
        if self.policy == "error":
            raise DataError(f"{where}: {problem}; fix or remove the record, or set "
                            "data.on_bad_record: skip to leave such records out")
        self.count += 1
        if len(self.examples) < 5:
            self.examples.append(f"{where}: {problem}")


class Source:
    """A sequence of samples read from files. Subclasses fill ``self.records`` and ``_load``."""

    name = "source"
    #: path keys (required, optional) and option defaults a recipe spec may give this source
    REQUIRED: tuple[str, ...] = ()
    OPTIONAL_PATHS: tuple[str, ...] = ()
    FOLDER_KEYS = ("images", "root", "depth", "masks")  # path keys that name folders (the others: files)
    OPTIONS: dict[str, Any] = {}

    def __init__(self, on_bad_record: str = "error"):
        self.bad = on_bad_record if isinstance(on_bad_record, BadRecords) else BadRecords(on_bad_record)
        self.records: list = []

    @property
    def skipped(self) -> int:
        return self.bad.count

    def __len__(self) -> int:
        return len(self.records)

    def limit(self, n: int) -> None:
        """Keep only the first ``n`` samples."""
        self.records = self.records[:n]

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.name} source has {len(self)} samples, index {index} is out of range")
        record = self.records[index]
        try:
            return self._load(record)
        except ImageError as exc:
            raise DataError(f"{self._where(record)}: {exc}") from None

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def _load(self, record) -> dict:
        raise NotImplementedError

    def _text_fields(self, record) -> dict:
        """The text-bearing fields of a record (no image read); by default the loaded sample."""
        return self._load(record)

    def texts(self, limit: int | None = None) -> list[str]:
        """Captions, questions, answers, expressions and labels of the first records (tokenizer corpus)."""
        out: list[str] = []
        for record in self.records[:limit]:
            out.extend(sample_texts(self._text_fields(record)))
        return out

    def _where(self, record) -> str:
        return f"{self.name} record"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} samples, {self.skipped} bad records skipped)"


# ----------------------------------------------------------------------------- helpers
def sample_texts(sample: dict) -> list[str]:
    """Every text of a sample: captions, questions and answers, expressions, labels."""
    out: list[str] = []
    cap = sample.get("caption")
    out.extend([cap] if isinstance(cap, str) else list(cap or []))
    for q, a in sample.get("qa") or []:
        out += [q, a]
    out.extend(e for e, _ in sample.get("refexps") or [])
    out.extend(o["label"] for o in sample.get("objects") or [] if o.get("label"))
    if sample.get("label"):
        out.append(sample["label"])
    return [str(t) for t in out if t]


def read_json(path: Path, what: str = "annotation file"):
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist; check the path in the recipe")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} line {exc.lineno} column {exc.colno}: invalid JSON ({exc.msg}); "
                        "fix the file or export it again") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc.reason}); save it as UTF-8 JSON") from None


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """Tight pixel box (x1, y1, x2, y2) of a boolean mask, or None when it is empty."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return None
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def read_mask(path: Path) -> np.ndarray:
    """Integer label array (H, W) of a mask image (palette, grey or RGB: any non-zero is foreground)."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im if im.mode in ("P", "L", "I", "I;16", "1") else im.convert("L"))
    except OSError as exc:
        raise DataError(f"could not read mask {path} ({exc}); masks must be PNG images") from None
    return arr.astype(np.int64)


def read_depth(path: Path, png_scale: float) -> np.ndarray:
    """Depth map in metres, float32 (H, W): 16-bit PNG values times ``png_scale``, or a .npy in metres."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"could not read depth map {path} ({exc}); save it with numpy.save") from None
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim != 2:
            raise DataError(f"depth map {path} has shape {arr.shape}; it must be (H, W) in metres")
        arr = arr.astype(np.float32)
    else:
        try:
            with Image.open(path) as im:
                arr = np.asarray(im).astype(np.float32) * float(png_scale)
        except OSError as exc:
            raise DataError(f"could not read depth map {path} ({exc}); use 16-bit PNG (mm) or .npy (m)") from None
        if arr.ndim != 2:
            raise DataError(f"depth map {path} has {arr.shape[-1]} channels; depth PNGs must be single-channel "
                            "16-bit images in millimetres")
    if not np.isfinite(arr).all():
        raise DataError(f"depth map {path} contains NaN or infinite values; store missing depth as 0")
    return arr


def files_by_stem(folder: Path, extensions, what: str) -> dict[str, Path]:
    """{stem: path} of the files directly in ``folder`` with one of ``extensions``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{what} folder {folder} does not exist; check the path in the recipe")
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in extensions:
            out.setdefault(p.stem, p)
    return out


def same_size(where: str, image: Image.Image, arr: np.ndarray, what: str) -> None:
    if arr.shape[:2] != (image.height, image.width):
        raise DataError(f"{where}: the {what} is {arr.shape[1]}x{arr.shape[0]} but the image is "
                        f"{image.width}x{image.height}; they must have the same size")


# ----------------------------------------------------------------------------- seeded worlds
class WorldSource(Source):
    """A seeded world (``self.world``) as a data source: endless unless ``n`` is given; a subclass
    sets ``name``, opens its world and says its label sets (``_labels``)."""

    ENDLESS = 2 ** 31 - 1  # the worlds' own length: any index below it is a fresh scene

    def _labels(self) -> dict[str, list[str]]:
        raise NotImplementedError

    @property
    def endless(self) -> bool:
        return self.n is None

    def limit(self, n: int) -> None:
        self.n = int(n)

    def __len__(self) -> int:
        return self.ENDLESS if self.n is None else self.n

    @property
    def classes(self) -> list[str]:
        """Image classes (classify), as every reader names them."""
        return self._labels()["image"]

    @property
    def object_labels(self) -> list[str]:
        """Object labels (detect, region tasks)."""
        return self._labels()["object"]

    @property
    def class_lists(self) -> dict[str, list[str]]:
        """Every closed label set the world declares ("image", "object", "action" for clips, ...)."""
        return {k: list(v) for k, v in self._labels().items() if v}

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"{self.name} source has {len(self)} samples, index {index} is out of range")
        return self.world[int(index)]


class ShapesSource(WorldSource):
    """The procedural shapes world (unio.data.shapes): endless unless ``n`` is given."""

    name = "shapes"
    OPTIONS = {"seed": 0, "image_size": 64, "max_objects": 4, "min_objects": 1}

    def __init__(self, seed=0, image_size=64, max_objects=4, min_objects=1, on_bad_record="error"):
        super().__init__(on_bad_record)
        self.world = ShapesWorld(image_size=int(image_size), seed=int(seed), max_objects=int(max_objects),
                                 min_objects=int(min_objects))
        self.n: int | None = None

    def texts(self, limit: int | None = None) -> list[str]:
        w = self.world
        n = min(limit or 20000, len(self))
        return list(shapes_texts(n, seed=w.seed, image_size=w.image_size, max_objects=w.max_objects))

    def _labels(self) -> dict[str, list[str]]:
        return shapes_classes()


class ImageFolderSource(Source):
    """A folder of pictures without annotations: each sample is ``{"image", "path"}``, the files in
    sorted path order (sub-folders too unless ``recursive: false``)."""

    name = "folder"
    REQUIRED = ("path",)
    FOLDER_KEYS = ("path",)
    OPTIONS = {"recursive": True}

    def __init__(self, path, recursive=True, on_bad_record="error"):
        super().__init__(on_bad_record)
        root = Path(path)
        if not root.is_dir():
            raise DataError(f"image folder {root} does not exist; check the path in the recipe")
        files = root.rglob("*") if recursive else root.iterdir()
        self.records = sorted(p for p in files if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not self.records:
            raise DataError(f"image folder {root} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                            "point path at a folder of pictures")

    def _where(self, record) -> str:
        return str(record)

    def _text_fields(self, record) -> dict:
        return {}

    def _load(self, record) -> dict:
        return {"image": load_image(record), "path": str(record)}


# ----------------------------------------------------------------------------- registry
# name -> "module:Class"; the COCO-family readers live in unio.data.coco and load on first use.
SOURCES: dict[str, str] = {
    "shapes": "formats:ShapesSource",
    "coco": "coco:CocoSource",
    "vqa": "coco:VqaSource",
    "refcoco": "coco:RefcocoSource",
    "classes": "folders:ClassFolderSource",
    "depth": "folders:DepthFolderSource",
    "masks": "folders:MaskFolderSource",
    "jsonl": "jsonl:JsonlSource",
    "webdataset": "shards:WebDatasetSource",
    "idx": "idx:IdxSource",
    "fashion-scenes": "fashion:FashionScenesSource",
    "shapes-pairs": "shapes_pairs:ShapesPairsSource",
    "shapes-clips": "shapes_clips:ShapesClipsSource",
    "folder": "formats:ImageFolderSource",
}


def _source_class(name: str) -> type[Source]:
    if name not in SOURCES:
        raise DataError(f"unknown data source {name!r}; use one of {sorted(SOURCES)}")
    module, cls = SOURCES[name].split(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), cls)


def folder_keys(name: str) -> tuple[str, ...]:
    """The path keys of source ``name`` that name folders (the other path keys name files)."""
    return tuple(_source_class(name).FOLDER_KEYS)


def pattern_keys(name: str) -> tuple[str, ...]:
    """The path keys of source ``name`` that may hold a glob or brace pattern of files (not one path)."""
    return tuple(getattr(_source_class(name), "PATTERN_KEYS", ()))


def source_keys(name: str) -> tuple[tuple[str, ...], tuple[str, ...], dict[str, Any]]:
    """(required path keys, optional path keys, option defaults) a spec of source ``name`` accepts."""
    cls = _source_class(name)
    return cls.REQUIRED, cls.OPTIONAL_PATHS, dict(cls.OPTIONS)


def open_source(spec: dict, on_bad_record: str | BadRecords = "error") -> Source:
    """Open the source a recipe's data entry describes, e.g. ``{source: jsonl, path: train.jsonl}``.

    ``n`` keeps the first n samples; ``weight`` and ``tasks`` belong to the mixture and are ignored here.
    """
    spec = dict(spec)
    name = spec.pop("source", None)
    if name is None:
        raise DataError(f"data entry {spec} has no 'source'; use one of {sorted(SOURCES)}")
    cls = _source_class(name)
    # a source may have its own default (shards skip bad samples unless their entry says stop)
    policy = spec.pop("on_bad_record", getattr(cls, "BAD_RECORD_DEFAULT", None) or on_bad_record)
    n = spec.pop("n", None)
    for key in COMMON_KEYS:
        spec.pop(key, None)
    allowed = set(cls.REQUIRED) | set(cls.OPTIONAL_PATHS) | set(cls.OPTIONS)
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise DataError(f"the {name} source does not take {unknown}; it takes {sorted(allowed | COMMON_KEYS)}")
    missing = [k for k in cls.REQUIRED if spec.get(k) in (None, "")]
    if missing:
        raise DataError(f"the {name} source needs {missing}, e.g. {{source: {name}, "
                        + ", ".join(f"{k}: ..." for k in cls.REQUIRED) + "}")
    source = cls(**spec, on_bad_record=policy)
    if n is not None:
        source.limit(int(n))
    return source
