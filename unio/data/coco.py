"""Readers for the COCO family of annotation files: COCO captions + instances, VQAv2, RefCOCO.

All three index images by COCO image id; the JSON layouts are those of the official releases
(Lin et al., 2014; Goyal et al., 2017; Yu et al., 2016 / Kazemzadeh et al., 2014). Crowd
annotations and boxes without area are left out, as detection codebases do (detectron2,
mmdetection); they are not bad records.
"""
from __future__ import annotations

import pickle
import re
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from ..errors import DataError
from ..images import IMAGE_EXTENSIONS, load_image
from .formats import Source, read_json

__all__ = ["CocoSource", "VqaSource", "RefcocoSource", "encode_mask"]


def _records(data, key: str, path: Path) -> list:
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise DataError(f"{path} has no '{key}' list; is it a COCO-style {key} file?")
    return data[key]


class _Instances:
    """The parts of a COCO instances file the readers use: images, categories, boxes per image."""

    def __init__(self, path: Path, bad, crowd: bool = False):
        data = read_json(path, "instances file")
        self.path = Path(path)
        self.images: dict[int, dict] = {}
        for k, im in enumerate(_records(data, "images", path)):
            if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
                bad(f"{path} images[{k}]", "an image entry needs 'id' and 'file_name'")
                continue
            self.images[im["id"]] = im
        self.names = {}
        for k, c in enumerate(data.get("categories", [])):
            if isinstance(c, dict) and "id" in c and "name" in c:
                self.names[c["id"]] = str(c["name"])
            else:
                bad(f"{path} categories[{k}]", "a category needs 'id' and 'name'")
        self.by_image: dict[int, list[dict]] = defaultdict(list)
        self.by_id: dict[int, dict] = {}
        for k, ann in enumerate(_records(data, "annotations", path)):
            where = f"{path} annotations[{k}]" + (f" (id {ann['id']})" if isinstance(ann, dict) and "id" in ann else "")
            problem = self._check(ann)
            if problem:
                bad(where, problem)
                continue
            if ann.get("iscrowd", 0) and not crowd:
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            if w <= 0 or h <= 0:
                continue
            obj = {"box": (x, y, x + w, y + h), "label": self.names[ann["category_id"]],
                   "segmentation": ann.get("segmentation")}
            self.by_image[ann["image_id"]].append(obj)
            if "id" in ann:
                self.by_id[ann["id"]] = obj

    def _check(self, ann) -> str | None:
        if not isinstance(ann, dict):
            return "an annotation must be a JSON object"
        if ann.get("image_id") not in self.images:
            return f"image_id {ann.get('image_id')!r} is not in the file's images"
        if ann.get("category_id") not in self.names:
            return f"category_id {ann.get('category_id')!r} is not in the file's categories"
        box = ann.get("bbox")
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            return f"bbox {box!r} must be [x, y, width, height]"
        if not np.isfinite(box).all():
            return f"bbox {box!r} contains NaN or infinity"
        return None


def encode_mask(mask) -> dict:
    """bool (H, W) -> compressed COCO RLE as JSON (``{"size": [H, W], "counts": str}``), what COCO
    results files and ``pycocotools.mask.decode`` (after ``counts.encode()``) read."""
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _decode_mask(segmentation, height: int, width: int) -> np.ndarray | None:
    """COCO polygons or RLE -> bool (H, W), with pycocotools (the reference implementation)."""
    if not segmentation:
        return None
    if isinstance(segmentation, list):  # polygons
        rles = mask_utils.frPyObjects(segmentation, height, width)
        rle = mask_utils.merge(rles)
    elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    with warnings.catch_warnings():  # pycocotools predates numpy 2's __array__(copy=) protocol
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle).astype(bool)


class _CocoImages(Source):
    """Shared loading: a record is an image entry; objects come from an :class:`_Instances`."""

    def _load_image(self, im: dict):
        return load_image(Path(self.images_dir) / im["file_name"])

    def _objects(self, image_id, image, instances, masks: bool) -> list[dict]:
        out = []
        for obj in instances.by_image.get(image_id, []):
            o = {"box": obj["box"], "label": obj["label"]}
            if masks:
                m = _decode_mask(obj["segmentation"], image.height, image.width)
                if m is not None:
                    o["mask"] = m
            out.append(o)
        return out

    def _where(self, record) -> str:
        return f"{self.name} image {record['file_name']}"


class CocoSource(_CocoImages):
    """COCO ``images`` folder with ``captions`` (captions_*.json) and/or ``instances``
    (instances_*.json). ``masks: true`` decodes the instance masks (needed by segmentation)."""

    name = "coco"
    REQUIRED = ("images",)
    OPTIONAL_PATHS = ("captions", "instances")
    OPTIONS = {"masks": False, "crowd": False}

    def __init__(self, images, captions=None, instances=None, masks=False, crowd=False, on_bad_record="error"):
        super().__init__(on_bad_record)
        if captions is None and instances is None:
            raise DataError("the coco source needs 'captions' and/or 'instances' (COCO annotation JSON files)")
        self.images_dir, self.masks = Path(images), bool(masks)
        if not self.images_dir.is_dir():
            raise DataError(f"image folder {self.images_dir} does not exist; check the path in the recipe")
        entries: dict[int, dict] = {}
        self.instances = _Instances(Path(instances), self.bad, crowd) if instances else None
        if self.instances:
            entries.update(self.instances.images)
        self.captions: dict[int, list[str]] = defaultdict(list)
        if captions:
            data = read_json(Path(captions), "captions file")
            cap_images = {im["id"]: im for im in _records(data, "images", captions) if isinstance(im, dict) and "id" in im}
            for k, ann in enumerate(_records(data, "annotations", captions)):
                if not isinstance(ann, dict) or not isinstance(ann.get("caption"), str):
                    self.bad(f"{captions} annotations[{k}]", "a caption annotation needs a 'caption' string")
                elif ann.get("image_id") not in cap_images:
                    self.bad(f"{captions} annotations[{k}]", f"image_id {ann.get('image_id')!r} is not in the file's images")
                else:
                    self.captions[ann["image_id"]].append(ann["caption"].strip())
            for i, im in cap_images.items():
                entries.setdefault(i, im)
        # Images without any annotation of the requested kinds teach nothing; leave them out.
        self.records = [entries[i] for i in sorted(entries)
                        if self.captions.get(i) or (self.instances and self.instances.by_image.get(i))]
        if not self.records:
            raise DataError(f"no annotated image in {captions or instances}")
        self.object_labels = sorted(set(self.instances.names.values())) if self.instances else []

    def _text_fields(self, record) -> dict:
        objs = self.instances.by_image.get(record["id"], []) if self.instances else []
        return {"caption": self.captions.get(record["id"]), "objects": objs}

    def _load(self, record) -> dict:
        image = self._load_image(record)
        sample = {"image": image, "image_id": record["id"], "path": str(self.images_dir / record["file_name"])}
        if self.captions.get(record["id"]):
            sample["caption"] = list(self.captions[record["id"]])
        if self.instances is not None:
            sample["objects"] = self._objects(record["id"], image, self.instances, self.masks)
        return sample


_TRAILING_NUMBER = re.compile(r"(\d+)$")


def _images_by_id(folder: Path) -> dict[int, Path]:
    """{image id: path} from COCO file names (``COCO_train2014_000000000009.jpg``, ``000000000009.jpg``)."""
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist; check the path in the recipe")
    out = {}
    for p in folder.iterdir():
        m = _TRAILING_NUMBER.search(p.stem)
        if m and p.suffix.lower() in IMAGE_EXTENSIONS:
            out.setdefault(int(m.group(1)), p)
    return out


class VqaSource(Source):
    """VQAv2: ``images`` folder (COCO file names), ``questions`` (v2_OpenEnded_mscoco_*_questions.json)
    and ``annotations`` (v2_mscoco_*_annotations.json). One sample per image with all its questions;
    the answer is the annotators' most common one (``multiple_choice_answer``)."""

    name = "vqa"
    REQUIRED = ("images", "questions", "annotations")

    def __init__(self, images, questions, annotations, on_bad_record="error"):
        super().__init__(on_bad_record)
        by_id = _images_by_id(Path(images))
        answers = {}
        for k, ann in enumerate(_records(read_json(Path(annotations), "annotations file"), "annotations", annotations)):
            if not isinstance(ann, dict) or "question_id" not in ann or not isinstance(ann.get("multiple_choice_answer"), str):
                self.bad(f"{annotations} annotations[{k}]", "needs 'question_id' and a 'multiple_choice_answer' string")
                continue
            answers[ann["question_id"]] = ann["multiple_choice_answer"]
        qa: dict[int, list] = defaultdict(list)
        for k, q in enumerate(_records(read_json(Path(questions), "questions file"), "questions", questions)):
            where = f"{questions} questions[{k}]"
            if not isinstance(q, dict) or not isinstance(q.get("question"), str) or "question_id" not in q:
                self.bad(where, "needs 'question_id', 'image_id' and a 'question' string")
            elif q["question_id"] not in answers:
                self.bad(where, f"question_id {q['question_id']} has no answer in {annotations}")
            elif q.get("image_id") not in by_id:
                self.bad(where, f"image {q.get('image_id')!r} is not in {images}")
            else:
                qa[q["image_id"]].append((q["question"].strip(), answers[q["question_id"]].strip()))
        self.records = [(i, by_id[i], qa[i]) for i in sorted(qa)]
        if not self.records:
            raise DataError(f"no usable question in {questions}")

    def _text_fields(self, record) -> dict:
        return {"qa": record[2]}

    def _where(self, record) -> str:
        return f"vqa image {record[1]}"

    def _load(self, record) -> dict:
        image_id, path, qa = record
        return {"image": load_image(path), "qa": list(qa), "image_id": image_id, "path": str(path)}


class _DataOnlyUnpickler(pickle.Unpickler):
    """Reads pickles of plain data (dicts, lists, strings, numbers) and refuses anything else,
    so a refs file cannot run code (RefCOCO's refs(unc).p holds only plain data)."""

    def find_class(self, module, name):
        raise DataError(f"the refs pickle refers to {module}.{name}; only plain data (dicts, lists, "
                        "strings, numbers) is read. Convert the file to JSON")


def _read_refs(path: Path) -> list:
    if not path.is_file():
        raise DataError(f"refs file {path} does not exist; check the path in the recipe")
    if path.suffix.lower() == ".json":
        data = read_json(path, "refs file")
    else:
        try:
            with open(path, "rb") as f:
                data = _DataOnlyUnpickler(f, encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, ValueError) as exc:
            raise DataError(f"could not read {path} as a refs pickle ({exc}); pass the refs as JSON") from None
    if not isinstance(data, list):
        raise DataError(f"{path} must hold a list of refs (dicts with image_id, ann_id, sentences)")
    return data


class RefcocoSource(_CocoImages):
    """RefCOCO / RefCOCO+ / RefCOCOg: ``images`` (COCO train2014), ``refs`` (refs(unc).p or JSON),
    ``instances`` (the dataset's instances.json); ``split`` keeps refs of one split (train, val,
    testA, ...). One sample per image: all its instances as objects and every referring sentence
    as ``(expression, object index)``."""

    name = "refcoco"
    REQUIRED = ("images", "refs", "instances")
    OPTIONS = {"split": None, "masks": False}

    def __init__(self, images, refs, instances, split=None, masks=False, on_bad_record="error"):
        super().__init__(on_bad_record)
        self.images_dir, self.masks = Path(images), bool(masks)
        if not self.images_dir.is_dir():
            raise DataError(f"image folder {self.images_dir} does not exist; check the path in the recipe")
        self.instances = _Instances(Path(instances), self.bad)
        sentences: dict[int, list] = defaultdict(list)
        for k, ref in enumerate(_read_refs(Path(refs))):
            where = f"{refs} ref {k}"
            if not isinstance(ref, dict) or "ann_id" not in ref or not isinstance(ref.get("sentences"), list):
                self.bad(where, "a ref needs 'ann_id', 'image_id' and a 'sentences' list")
                continue
            if split is not None and ref.get("split") != split:
                continue
            obj = self.instances.by_id.get(ref["ann_id"])
            if obj is None or ref.get("image_id") not in self.instances.images:
                self.bad(where, f"ann_id {ref['ann_id']} / image_id {ref.get('image_id')} is not in {instances}")
                continue
            for s in ref["sentences"]:
                text = s.get("sent") if isinstance(s, dict) else s
                if isinstance(text, str) and text.strip():
                    sentences[ref["image_id"]].append((text.strip(), obj))
        self.records = [dict(self.instances.images[i], _sentences=sentences[i]) for i in sorted(sentences)]
        if not self.records:
            raise DataError(f"no usable ref in {refs}" + (f" for split {split!r}" if split else ""))
        self.object_labels = sorted(set(self.instances.names.values()))

    def _text_fields(self, record) -> dict:
        return {"refexps": [(text, 0) for text, _ in record["_sentences"]],
                "objects": self.instances.by_image.get(record["id"], [])}

    def _load(self, record) -> dict:
        image = self._load_image(record)
        image_id = record["id"]
        originals = self.instances.by_image.get(image_id, [])
        objects = self._objects(image_id, image, self.instances, self.masks)
        index = {id(o): k for k, o in enumerate(originals)}
        refexps = [(text, index[id(obj)]) for text, obj in record["_sentences"]]
        return {"image": image, "objects": objects, "refexps": refexps, "image_id": image_id,
                "path": str(self.images_dir / record["file_name"])}
