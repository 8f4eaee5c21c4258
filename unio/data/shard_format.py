"""The sample format of WebDataset shards, shared by the writer (``unio data pack``) and the
``webdataset`` source: how one sample becomes tar members and back, exactly.

A shard is a plain POSIX tar. The members of one sample are consecutive and share a key, the part
of the member name before the first dot of its file name (WebDataset's convention)::

    00000007.png          the image: the bytes of the file it was read from (.jpg, .png, ...),
                          or PNG for a picture made in memory (the shapes world, IDX arrays)
    00000007.json         every other field: caption, qa, refexps, label, ids, and objects
                          (box, label, ...; a mask as COCO's uncompressed RLE {size, counts})
    00000007.depth.npy    each array field (the depth map), as numpy's .npy (no pickles)

The JSON's ``__members__`` lists the sample's members, so a missing one is noticed. Shards made by
other tools (img2dataset: ``.jpg`` + ``.txt`` + ``.json``) read too: ``.txt`` is the caption and
``.cls`` the label when the JSON has none.
"""
from __future__ import annotations

import io
import json
import posixpath
import re
import tarfile

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError, ImageError
from ..images import IMAGE_EXTENSIONS, load_image

__all__ = ["IMAGE_MEMBERS", "encode_sample", "decode_sample", "decode_texts", "split_name", "tar_samples",
           "rle_encode", "rle_decode", "add_member"]

IMAGE_MEMBERS = tuple(e.lstrip(".") for e in IMAGE_EXTENSIONS)  # png, jpg, jpeg, ...
_FIELD = re.compile(r"^[A-Za-z0-9_]+$")  # array fields become KEY.FIELD.npy members


# ----------------------------------------------------------------------------- masks
def rle_encode(mask) -> dict:
    """A boolean (H, W) mask as COCO's uncompressed RLE: column-major run lengths, zeros first."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise DataError(f"a mask must be (H, W), got shape {mask.shape}")
    flat = mask.ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def rle_decode(rle) -> np.ndarray:
    """Inverse of :func:`rle_encode` (also reads pycocotools' uncompressed RLE)."""
    try:
        h, w = (int(v) for v in rle["size"])
        counts = np.asarray(rle["counts"], dtype=np.int64)
    except (TypeError, KeyError, ValueError):
        raise DataError(f"a mask must be RLE {{size: [h, w], counts: [...]}}, got {str(rle)[:80]}") from None
    if counts.ndim != 1 or (counts < 0).any() or int(counts.sum()) != h * w:
        raise DataError(f"a mask's RLE counts add up to {int(counts.sum())}, not {h} x {w}")
    flat = np.repeat(np.arange(len(counts)) % 2 == 1, counts)
    return flat.reshape((h, w), order="F")


# ----------------------------------------------------------------------------- writing
def _json_value(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "__fspath__"):
        return str(value)
    raise TypeError(f"a {type(value).__name__} cannot be stored as JSON")


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _image_member(sample: dict) -> tuple[str, bytes]:
    """(extension, bytes): the file the image came from when the sample names one that holds it
    (same size, EXIF rotation counted), else the picture as PNG."""
    image = sample["image"]
    path = sample.get("path")
    if isinstance(image, Image.Image) and isinstance(path, str) and path.lower().endswith(IMAGE_EXTENSIONS):
        try:
            with open(path, "rb") as f:
                data = f.read()
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # stored sideways, shown upright
                    w, h = h, w
            if (w, h) == image.size:
                return posixpath.splitext(path)[1].lower().lstrip("."), data
        except (OSError, UnidentifiedImageError):
            pass
    image = load_image(image)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "png", buf.getvalue()


def encode_sample(sample: dict) -> list[tuple[str, bytes]]:
    """The members (extension, bytes) of one sample: image, JSON, one .npy per array field."""
    if sample.get("image") is None:
        raise DataError("the sample has no image; every WebDataset sample carries one")
    ext, image = _image_member(sample)
    ann, arrays = {}, []
    for key, value in sample.items():
        if key == "image" or key.startswith("__"):
            continue
        if isinstance(value, np.ndarray):
            if not _FIELD.match(key):
                raise DataError(f"the array field {key!r} needs a name of letters, digits and _ to be stored")
            arrays.append((f"{key}.npy", _npy(value)))
        elif key == "objects":
            ann[key] = [{k: (rle_encode(v) if k == "mask" else v) for k, v in o.items()} for o in value or []]
        else:
            ann[key] = value
    ann["__members__"] = [ext, "json", *(name for name, _ in arrays)]
    try:
        text = json.dumps(ann, default=_json_value, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise DataError(f"the sample cannot be stored: {exc}") from None
    return [(ext, image), ("json", text.encode("utf-8")), *arrays]


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """One regular file in ``tar`` with fixed owner, mode and time (the same shards every time)."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


# ----------------------------------------------------------------------------- reading
def split_name(name: str) -> tuple[str, str] | tuple[None, None]:
    """(key, extension) of a member name: ``dir/000007.depth.npy`` -> (``dir/000007``, ``depth.npy``)."""
    folder, base = posixpath.split(name)
    stem, dot, ext = base.partition(".")
    if not dot or not stem or not ext:
        return None, None
    return posixpath.join(folder, stem) if folder else stem, ext.lower()


def tar_samples(fileobj):
    """(key, {extension: bytes}) of each sample of a tar stream, in order (tarfile in stream mode:
    one pass, nothing but the current sample in memory). A damaged tar raises tarfile's error."""
    key, members = None, {}
    with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
        for info in tar:
            if not info.isfile():
                continue
            k, ext = split_name(info.name)
            if k is None:
                continue
            data = tar.extractfile(info).read()
            if k != key:
                if key is not None:
                    yield key, members
                key, members = k, {}
            members[ext] = data
    if key is not None:
        yield key, members


def _annotations(members: dict) -> dict:
    if "json" not in members:
        return {}
    try:
        ann = json.loads(members["json"].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"its .json member is not valid JSON ({exc})") from None
    if not isinstance(ann, dict):
        raise DataError("its .json member must hold an object")
    return ann


def _texts(ann: dict, members: dict) -> dict:
    for field, ext in (("caption", "txt"), ("label", "cls")):
        if field not in ann and ext in members:
            try:
                ann[field] = members[ext].decode("utf-8").strip()
            except UnicodeDecodeError:
                raise DataError(f"its .{ext} member is not UTF-8 text") from None
    return ann


def decode_texts(members: dict) -> dict:
    """The annotations of a sample without decoding its image or arrays (a text corpus)."""
    return _texts(_annotations(members), members)


def decode_sample(key: str, members: dict, required=()) -> dict:
    """The sample dict of one sample's members; :class:`DataError` saying what is missing or broken.
    ``required``: members every sample of the shard set has (its index says so)."""
    if "json" in required and "json" not in members:
        raise DataError("its member .json is missing")
    ann = _annotations(members)
    listed = ann.pop("__members__", None)
    missing = [m for m in dict.fromkeys([*(listed or []), *required]) if m not in members]
    if missing:
        raise DataError(f"its member(s) {', '.join('.' + m for m in missing)} are missing")
    images = [e for e in members if e in IMAGE_MEMBERS]
    if not images:
        raise DataError(f"it has no image member (.{', .'.join(IMAGE_MEMBERS[:4])}, ...)")
    try:
        with Image.open(io.BytesIO(members[images[0]])) as im:
            im.load()
            sample = {"image": load_image(im)}
    except (OSError, UnidentifiedImageError, ImageError, ValueError) as exc:
        raise DataError(f"its .{images[0]} member is not a readable image ({exc})") from None
    ann = _texts(ann, members)
    try:
        for k, o in enumerate(ann.get("objects") or []):
            if "box" in o:
                o["box"] = tuple(float(v) for v in o["box"])
            if "mask" in o:
                o["mask"] = rle_decode(o["mask"])
        for field in ("qa", "refexps", "hypotheses", "statements"):  # lists of (text, answer) pairs
            if field in ann:
                ann[field] = [tuple(item) for item in ann[field]]
    except (TypeError, ValueError, AttributeError, DataError) as exc:
        raise DataError(f"its annotations are malformed ({exc})") from None
    sample.update(ann)
    for ext, data in members.items():
        if ext.endswith(".npy") and _FIELD.match(ext[:-4]):
            try:
                sample[ext[:-4]] = np.load(io.BytesIO(data), allow_pickle=False)
            except (OSError, ValueError, EOFError) as exc:
                raise DataError(f"its .{ext} member is not a readable .npy array ({exc})") from None
    sample["__key__"] = key
    return sample
