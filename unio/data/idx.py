"""IDX files, the format of MNIST, Fashion-MNIST, EMNIST and KMNIST (LeCun et al.'s MNIST page):
an images file (N, H, W) or (N, H, W, C) and a labels file (N,), raw or gzipped.

    unio eval --model M --data idx:images=t10k-images-idx3-ubyte.gz,labels=t10k-labels-idx1-ubyte.gz
    data: {train: [{source: idx, images: train-images-idx3-ubyte.gz, labels: ..., tasks: {classify: 1}}]}

Class names: ``names: fashion-mnist`` (T-shirt/top, Trouser, ... as the dataset documents them),
``digits`` ("0" to "9"), a text file with one name per line, or ``auto`` (the default: Fashion-MNIST
names when a file name says "fashion" and there are 10 classes, else the label numbers as text).
Samples: ``image`` (greyscale drawn as RGB), ``label`` (the class name) and ``index``.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError
from .formats import Source

__all__ = ["IdxSource", "read_idx", "FASHION_MNIST"]

# The Fashion-MNIST classes in label order (Xiao, Rasul & Vollgraf, 2017).
FASHION_MNIST = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot")
_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """The array in an IDX file (``.gz`` read through gzip); DataError naming what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"IDX file {path} does not exist; check the path")
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _TYPES:
        raise DataError(f"{path} is not an IDX file (its magic number is {raw[:4].hex() or 'missing'}); give MNIST-"
                        "style files such as train-images-idx3-ubyte(.gz)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4")) if ndim else ()
    dtype = np.dtype(_TYPES[raw[2]])
    size = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != size:
        raise DataError(f"{path}: the header says {shape} of {dtype} ({size} bytes) but {len(raw) - header} bytes "
                        "follow; the file is truncated or not IDX")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


class IdxSource(Source):
    """Classification samples from an IDX images file and its labels file."""

    name = "idx"
    REQUIRED = ("images",)
    OPTIONAL_PATHS = ("labels",)
    OPTIONS = {"names": "auto"}
    FOLDER_KEYS = ()  # images and labels are files

    def __init__(self, images, labels=None, names="auto", on_bad_record="error"):
        super().__init__(on_bad_record)
        self.images = read_idx(images)
        if self.images.ndim not in (3, 4) or (self.images.ndim == 4 and self.images.shape[-1] not in (1, 3)):
            raise DataError(f"{images}: images must be (N, H, W) or (N, H, W, 1|3), got {self.images.shape}")
        self.labels = None
        if labels is not None:
            self.labels = read_idx(labels)
            if self.labels.ndim != 1 or len(self.labels) != len(self.images):
                raise DataError(f"{labels}: expected {len(self.images)} labels (one per image of {images}), got "
                                f"shape {self.labels.shape}")
        self.names = self._names(names, images, labels)
        self.records = list(range(len(self.images)))
        self.classes = list(self.names) if self.labels is not None else []

    def _names(self, names, images, labels) -> list[str]:
        if self.labels is None:
            return []
        count = int(self.labels.max()) + 1
        if names == "auto":
            fashion = "fashion" in f"{images} {labels}".lower() and count <= len(FASHION_MNIST)
            return list(FASHION_MNIST[:count]) if fashion else [str(k) for k in range(count)]
        if names == "fashion-mnist":
            if count > len(FASHION_MNIST):
                raise DataError(f"{labels} has {count} classes; Fashion-MNIST has {len(FASHION_MNIST)}")
            return list(FASHION_MNIST[:count])
        if names == "digits":
            return [str(k) for k in range(count)]
        path = Path(str(names))
        if not path.is_file():
            raise DataError(f"names={names!r}: use auto, fashion-mnist, digits, or a text file with one class name "
                            "per line")
        listed = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if len(listed) < count:
            raise DataError(f"{path} names {len(listed)} classes but {labels} uses {count}")
        return listed

    def _where(self, record) -> str:
        return f"idx image {record}"

    def _text_fields(self, record) -> dict:
        return {"label": self.names[int(self.labels[record])] if self.labels is not None else None}

    def _load(self, record) -> dict:
        pixels = np.asarray(self.images[record])
        if pixels.dtype != np.uint8:  # other IDX types: scaled to 0..255 by the dataset's own range
            lo, hi = float(self.images.min()), float(self.images.max())
            pixels = np.round((pixels.astype(np.float64) - lo) / max(hi - lo, 1e-12) * 255).astype(np.uint8)
        if pixels.ndim == 3 and pixels.shape[-1] == 1:
            pixels = pixels[..., 0]
        image = Image.fromarray(pixels).convert("RGB")
        sample = {"image": image, "index": int(record)}
        if self.labels is not None:
            sample["label"] = self.names[int(self.labels[record])]
        return sample
