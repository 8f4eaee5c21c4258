"""Fashion-MNIST items for the fashion-scenes world (:mod:`unio.data.fashion`): where the files are,
checking that they are the official ones, the class names, and the integer pixel operations that
scale, threshold and tint an item and paint the background.

Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017, arXiv:1708.07747): 70,000 28x28 greyscale photographs
of Zalando products in 10 classes, 60,000 for training and 10,000 for testing. It is available
offline on Debian and Ubuntu (``apt-get install dataset-fashion-mnist``, files under
/usr/share/datasets/fashion-mnist); any folder holding the four official IDX files (raw or
gzipped) works too, given as ``root=`` or in ``$UNIO_FASHION_MNIST``.

Every pixel operation here is integer arithmetic in numpy (repeat, sums, floor division), so no
resampling filter of any library version can move a pixel.
"""
from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import numpy as np

from ..errors import DataError
from .idx import read_idx

__all__ = ["CATEGORIES", "PLURALS", "COLORS", "SIZES", "THRESHOLD", "MIN_ITEM_PIXELS", "DEFAULT_ROOT", "ROOT_ENV",
           "FashionItems", "load_items", "fashion_root", "item_sides", "scale_item", "tint", "background"]

# The Fashion-MNIST classes in label order, as the scenes' language names them.
CATEGORIES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
PLURALS = {"t-shirt": "t-shirts", "trouser": "trousers", "pullover": "pullovers", "dress": "dresses",
           "coat": "coats", "sandal": "sandals", "shirt": "shirts", "sneaker": "sneakers", "bag": "bags",
           "ankle boot": "ankle boots"}
# Tints (saturated, each with a channel below 80) far from the light backgrounds (every channel >= 180):
# a pixel belongs to an item exactly when its darkest channel is below 128.
COLORS = {
    "red": (214, 39, 40),
    "orange": (247, 129, 16),
    "yellow": (240, 206, 30),
    "green": (44, 160, 44),
    "blue": (31, 78, 210),
    "purple": (148, 72, 189),
}
SIZES = ("small", "large")
THRESHOLD = 32         # an item's pixel is part of the item when its (scaled) intensity is >= this
MIN_ITEM_PIXELS = 64   # photos with fewer such pixels at 28x28 (faint or near-empty ones) are not used
DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
ROOT_ENV = "UNIO_FASHION_MNIST"
_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_COUNTS = {"train": 60000, "test": 10000}
# sha256 of the decompressed arrays (pixels, then labels) of the official files.
_SHA256 = {
    "train": ("2e487a6c89124f78f2d7521542223cafe96f7123c3ca13d447772ac6ecbb3012",
              "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7"),
    "test": ("c867c93ff95360594e8ec3287995350b824dd110b11595c0e13d5423f621867a",
             "3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9"),
}
_INSTALL = ("install Debian's dataset-fashion-mnist (apt-get install -y dataset-fashion-mnist), or point "
            f"root= (or ${ROOT_ENV}) at a folder with the four Fashion-MNIST IDX files")
# Backgrounds: (top, bottom) light tones; top == bottom is a plain background.
BACKGROUNDS = (
    ((236, 234, 228), (200, 198, 192)),
    ((226, 231, 238), (190, 198, 210)),
    ((240, 233, 222), (212, 200, 184)),
    ((222, 234, 224), (186, 204, 190)),
    ((232, 232, 232), (232, 232, 232)),
    ((244, 238, 226), (244, 238, 226)),
)


def fashion_root(root=None) -> Path:
    """The folder of the Fashion-MNIST files: ``root``, else ``$UNIO_FASHION_MNIST``, else Debian's."""
    given = root if root not in (None, "") else os.environ.get(ROOT_ENV) or None
    path = Path(given).expanduser() if given is not None else DEFAULT_ROOT
    if not path.is_dir():
        where = "root=" if root not in (None, "") else f"${ROOT_ENV}" if given is not None else "Debian's folder"
        raise DataError(f"Fashion-MNIST was not found at {path} ({where}); {_INSTALL}")
    return path


def _file(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise DataError(f"{root} has no {stem}(.gz); {_INSTALL}")


class FashionItems:
    """One split of Fashion-MNIST: ``images`` (N, 28, 28) uint8, ``labels`` (N,) and, per class, the
    indices of the usable photos (``by_class``: at least MIN_ITEM_PIXELS pixels >= THRESHOLD)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, split: str, root: Path):
        self.images, self.labels, self.split, self.root = images, labels, split, root
        area = (images >= THRESHOLD).sum(axis=(1, 2))
        self.by_class = tuple(np.flatnonzero((labels == c) & (area >= MIN_ITEM_PIXELS)) for c in range(len(CATEGORIES)))
        if any(len(ids) == 0 for ids in self.by_class):
            raise DataError(f"the Fashion-MNIST {split} files in {root} lack usable photos of some class; {_INSTALL}")

    def __len__(self) -> int:
        return len(self.images)


@functools.lru_cache(maxsize=4)
def _load(root: str, split: str, verify: bool) -> FashionItems:
    folder = Path(root)
    images_file, labels_file = (_file(folder, stem) for stem in _FILES[split])
    images, labels = read_idx(images_file), read_idx(labels_file)
    n = _COUNTS[split]
    if images.shape != (n, 28, 28) or images.dtype != np.uint8 or labels.shape != (n,) or int(labels.max()) > 9:
        raise DataError(f"{images_file} and {labels_file} hold {images.shape} {images.dtype} images and {labels.shape} "
                        f"labels; the Fashion-MNIST {split} split is ({n}, 28, 28) uint8 with {n} labels 0..9")
    if verify:
        got = (hashlib.sha256(images.tobytes()).hexdigest(), hashlib.sha256(labels.tobytes()).hexdigest())
        if got != _SHA256[split]:
            raise DataError(f"{images_file} and {labels_file} are not the official Fashion-MNIST {split} files "
                            f"(sha256 of their contents {got[0][:12]}…, {got[1][:12]}…); scenes are defined on the "
                            "official files: use those, or pass verify=False to compose scenes from these anyway")
    images.flags.writeable = False
    labels.flags.writeable = False
    return FashionItems(images, labels, split, folder)


def load_items(root=None, split: str = "train", verify: bool = True) -> FashionItems:
    """The photos of one split (read once per process and folder; ``split`` is train or test)."""
    if split not in _FILES:
        raise DataError(f"split={split!r}: Fashion-MNIST has the splits 'train' and 'test'")
    return _load(str(fashion_root(root).resolve()), split, bool(verify))


# ---------------------------------------------------------------------------------- pixels
def item_sides(image_size: int) -> dict[str, int]:
    """Side in pixels of a small and a large item: 14 and 28 px per 64 px of image (so 28 and 56
    px, Fashion-MNIST's own 28 px and twice it, in the default 128 px scenes)."""
    unit = image_size // 64
    return {"small": 14 * unit, "large": 28 * unit}


def scale_item(pixels: np.ndarray, side: int) -> np.ndarray:
    """A 28x28 uint8 photo at ``side`` px (a multiple of 14): nearest-neighbour repetition by an
    integer factor, after a 2x2 box average (rounded half up) when ``side`` is an odd multiple of 14."""
    if side % 14 or side < 14:
        raise DataError(f"item side {side} must be a positive multiple of 14 px")
    if side % 28 == 0:
        p, k = pixels, side // 28
    else:
        q = pixels.astype(np.uint16)
        p = ((q[0::2, 0::2] + q[1::2, 0::2] + q[0::2, 1::2] + q[1::2, 1::2] + 2) // 4).astype(np.uint8)
        k = side // 14
    return np.repeat(np.repeat(p, k, axis=0), k, axis=1) if k > 1 else np.array(p)


def tint(intensity: np.ndarray, rgb) -> np.ndarray:
    """Item pixels (uint8 intensities, Fashion-MNIST's 255 = darkest part of the product) as RGB:
    the tint at intensity 0 down to 60% of it at 255, ``rgb * (1275 - 2 v) // 1275``."""
    v = intensity.astype(np.int32)[..., None]
    return (np.asarray(rgb, dtype=np.int32) * (1275 - 2 * v) // 1275).astype(np.uint8)


@functools.lru_cache(maxsize=32)
def background(size: int, kind: int) -> np.ndarray:
    """The empty scene (S, S, 3) uint8 of background ``kind``: a vertical gradient from its top tone
    to its bottom tone, row y at ``top + (bottom - top) * (2y + 1) // (2S)`` (floor division)."""
    top, bottom = (np.asarray(c, dtype=np.int64) for c in BACKGROUNDS[kind])
    rows = 2 * np.arange(size, dtype=np.int64)[:, None] + 1
    line = (top[None, :] + (bottom - top)[None, :] * rows // (2 * size)).astype(np.uint8)
    out = np.ascontiguousarray(np.broadcast_to(line[:, None, :], (size, size, 3)))
    out.flags.writeable = False
    return out
