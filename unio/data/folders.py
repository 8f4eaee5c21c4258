"""Folder datasets: ImageNet-style class folders, image + depth-map folders, image + mask folders.

Images and their depth maps or masks are matched by file stem (``img/0001.jpg`` <->
``depth/0001.png``). See :mod:`unio.data.formats` for the shared reader interface.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from ..images import IMAGE_EXTENSIONS, load_image
from .formats import Source, files_by_stem, mask_box, read_depth, read_json, read_mask, same_size

__all__ = ["ClassFolderSource", "DepthFolderSource", "MaskFolderSource"]


class ClassFolderSource(Source):
    """ImageNet-style classification: ``root/<class>/<image>``; the folder name is the label unless
    ``labels`` (a JSON object or a text file of ``folder label`` lines) maps it to a text label."""

    name = "classes"
    REQUIRED = ("root",)
    OPTIONAL_PATHS = ("labels",)

    def __init__(self, root, labels=None, on_bad_record="error"):
        super().__init__(on_bad_record)
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"class folder root {self.root} does not exist; check the path in the recipe")
        names = self._label_map(Path(labels)) if labels else {}
        classes = sorted(d for d in self.root.iterdir() if d.is_dir())
        if not classes:
            raise DataError(f"{self.root} has no class sub-folders; put each class's images in root/<class>/")
        for d in classes:
            label = names.get(d.name, d.name.replace("_", " "))
            for p in sorted(d.iterdir()):
                if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
                    self.records.append((p, label))
        self.classes = sorted({label for _, label in self.records})

    @staticmethod
    def _label_map(path: Path) -> dict[str, str]:
        if path.suffix.lower() == ".json":
            data = read_json(path, "label map")
            if not isinstance(data, dict):
                raise DataError(f"{path} must be a JSON object {{folder: label}}")
            return {str(k): str(v) for k, v in data.items()}
        if not path.is_file():
            raise DataError(f"label map {path} does not exist; check the path in the recipe")
        out = {}
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                parts = line.strip().split(None, 1)
                if len(parts) != 2:
                    raise DataError(f"{path} line {lineno}: expected 'folder label', got {line!r}")
                out[parts[0]] = parts[1].split(",")[0].strip()  # ImageNet lists synonyms; keep the first
        return out

    def _where(self, record) -> str:
        return str(record[0])

    def _text_fields(self, record) -> dict:
        return {"label": record[1]}

    def _load(self, record) -> dict:
        path, label = record
        return {"image": load_image(path), "label": label, "path": str(path)}


def _pair_by_stem(source: Source, images, maps, extensions, kind: str, noun: str, missing) -> None:
    """Records (image, map) of the images in ``images`` that have a map with the same file stem in
    ``maps``; an image without one is a bad record (message ``missing(stem)``)."""
    imgs = files_by_stem(Path(images), IMAGE_EXTENSIONS, "image")
    found = files_by_stem(Path(maps), extensions, kind)
    for stem, path in imgs.items():
        if stem in found:
            source.records.append((path, found[stem]))
        else:
            source.bad(str(path), missing(stem))
    if not source.records:
        raise DataError(f"no image in {images} has {noun} with the same name in {maps}")


class DepthFolderSource(Source):
    """Image + depth folders matched by file stem. Depth is 16-bit PNG in millimetres (``png_scale``
    0.001 turns it into metres; NYU-v2 and KITTI ship this way) or float .npy in metres. Zero marks
    missing depth, as in those datasets."""

    name = "depth"
    REQUIRED = ("images", "depth")
    OPTIONS = {"png_scale": 0.001}

    def __init__(self, images, depth, png_scale=0.001, on_bad_record="error"):
        super().__init__(on_bad_record)
        self.png_scale = float(png_scale)
        _pair_by_stem(self, images, depth, (".png", ".npy"), "depth", "a depth map",
                      lambda stem: f"no depth map named {stem}.png or {stem}.npy in {depth}")

    def _text_fields(self, record) -> dict:
        return {}

    def _where(self, record) -> str:
        return str(record[0])

    def _load(self, record) -> dict:
        image = load_image(record[0])
        depth = read_depth(record[1], self.png_scale)
        same_size(str(record[1]), image, depth, "depth map")
        return {"image": image, "depth": depth, "objects": [], "path": str(record[0])}


class MaskFolderSource(Source):
    """Image + mask folders matched by file stem. Non-zero mask pixels are the object, named
    ``label``; with ``instances: true`` each distinct non-zero value is a separate object."""

    name = "masks"
    REQUIRED = ("images", "masks")
    OPTIONS = {"label": "object", "instances": False}

    def __init__(self, images, masks, label="object", instances=False, on_bad_record="error"):
        super().__init__(on_bad_record)
        self.label, self.instances = str(label), bool(instances)
        _pair_by_stem(self, images, masks, (".png", ".bmp", ".tif", ".tiff", ".gif"), "mask", "a mask",
                      lambda stem: f"no mask named {stem}.png in {masks}")
        self.object_labels = [self.label]

    def _text_fields(self, record) -> dict:
        return {"label": self.label}

    def _where(self, record) -> str:
        return str(record[0])

    def _load(self, record) -> dict:
        image = load_image(record[0])
        labels = read_mask(record[1])
        same_size(str(record[1]), image, labels, "mask")
        values = [v for v in np.unique(labels) if v != 0] if self.instances else [None]
        objects = []
        for v in values:
            mask = labels != 0 if v is None else labels == v
            box = mask_box(mask)
            if box is not None:
                objects.append({"box": box, "label": self.label, "mask": mask})
        sample = {"image": image, "objects": objects, "path": str(record[0])}
        if len(objects) == 1:
            sample["refexps"] = [(self.label, 0)]
        return sample
