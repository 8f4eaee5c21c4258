"""A generic JSONL manifest: one JSON record per line, one image each, any annotations.

See :mod:`unio.data.formats` for the shared reader interface.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..errors import BoxError
from ..images import check_box, load_image
from .formats import Source, mask_box, read_depth, read_mask, same_size

__all__ = ["JsonlSource"]


class JsonlSource(Source):
    """A manifest with one JSON object per line. Keys (all but ``image`` optional)::

        {"image": "img/0001.jpg",                       # relative to ``root`` (default: the manifest's folder)
         "caption": "a dog" | ["a dog", "a brown dog"],
         "question": "what is it?", "answer": "a dog",  # or "qa": [["what is it?", "a dog"], ...]
         "objects": [{"box": [x1, y1, x2, y2], "label": "dog", "mask": "masks/0001_0.png"}],
         "refexps": [["the brown dog", 0]],              # expression, index into objects
         "label": "dog",                                 # class, for classification
         "mask": "masks/0001.png", "mask_label": "dog",  # one object given by a mask file
         "depth": "depth/0001.png"}                      # 16-bit PNG in mm or .npy in m

    ``box_format: xywh`` reads boxes as COCO's (x, y, width, height).
    """

    name = "jsonl"
    REQUIRED = ("path",)
    OPTIONAL_PATHS = ("root",)
    OPTIONS = {"box_format": "xyxy", "png_scale": 0.001}
    KNOWN = {"image", "caption", "question", "answer", "qa", "objects", "refexps", "label", "mask",
             "mask_label", "depth", "id"}

    def __init__(self, path, root=None, box_format="xyxy", png_scale=0.001, on_bad_record="error"):
        super().__init__(on_bad_record)
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"manifest {self.path} does not exist; check the path in the recipe")
        if box_format not in ("xyxy", "xywh"):
            raise DataError(f"box_format must be 'xyxy' or 'xywh', got {box_format!r}")
        self.root = Path(root) if root else self.path.parent
        self.box_format, self.png_scale = box_format, float(png_scale)
        with open(self.path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{self.path} line {lineno}"
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    self.bad(where, f"invalid JSON ({exc.msg} at column {exc.colno})")
                    continue
                problem = self._check(rec)
                if problem:
                    self.bad(where, problem)
                else:
                    self.records.append((lineno, rec))
        if not self.records:
            raise DataError(f"manifest {self.path} has no usable records")
        self.classes = sorted({str(r["label"]) for _, r in self.records if "label" in r})
        self.object_labels = sorted({str(o.get("label", "object")) for _, r in self.records
                                     for o in r.get("objects", [])})

    def _text_fields(self, record) -> dict:
        rec = dict(record[1])
        qa = [tuple(p) for p in rec.get("qa", [])] + ([(rec["question"], rec["answer"])] if "question" in rec else [])
        return {"caption": rec.get("caption"), "qa": qa, "refexps": rec.get("refexps"),
                "objects": rec.get("objects"), "label": rec.get("label")}

    def _file(self, name) -> Path:
        p = Path(name)
        return p if p.is_absolute() else self.root / p

    def _check(self, rec) -> str | None:
        if not isinstance(rec, dict):
            return f"a record must be a JSON object, got {type(rec).__name__}"
        unknown = sorted(set(rec) - self.KNOWN)
        if unknown:
            return f"unknown key(s) {unknown}; known keys: {sorted(self.KNOWN)}"
        if not isinstance(rec.get("image"), str):
            return "no 'image' path"
        for key in ("image", "mask", "depth"):
            if key in rec and not self._file(rec[key]).is_file():
                return f"{key} file {self._file(rec[key])} does not exist"
        cap = rec.get("caption")
        if cap is not None and not (isinstance(cap, str) or (isinstance(cap, list) and all(isinstance(c, str) for c in cap))):
            return "caption must be a string or a list of strings"
        if ("question" in rec) != ("answer" in rec):
            return "'question' and 'answer' must come together"
        qa = rec.get("qa", [])
        if not isinstance(qa, list) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in qa):
            return "qa must be a list of [question, answer] pairs"
        objects = rec.get("objects", [])
        if not isinstance(objects, list):
            return "objects must be a list"
        for k, obj in enumerate(objects):
            if not isinstance(obj, dict) or "box" not in obj:
                return f"object {k} has no 'box'"
            problem = self._box_problem(obj["box"])
            if problem:
                return f"object {k}: {problem}"
            if "mask" in obj and not self._file(obj["mask"]).is_file():
                return f"object {k}: mask file {self._file(obj['mask'])} does not exist"
        for k, ref in enumerate(rec.get("refexps", [])):
            if not (isinstance(ref, (list, tuple)) and len(ref) == 2 and isinstance(ref[1], int)
                    and 0 <= ref[1] < len(objects)):
                return f"refexps[{k}] must be [expression, index of one of the {len(objects)} objects]"
        return None

    def _box(self, box):
        if self.box_format == "xywh" and isinstance(box, (list, tuple)) and len(box) == 4:
            try:
                x, y, w, h = (float(v) for v in box)
                box = (x, y, x + w, y + h)
            except (TypeError, ValueError):
                pass
        return check_box(box)

    def _box_problem(self, box) -> str | None:
        try:
            self._box(box)
        except BoxError as exc:
            return str(exc)
        return None

    def _where(self, record) -> str:
        return f"{self.path} line {record[0]}"

    def _load(self, record) -> dict:
        lineno, rec = record
        where = self._where(record)
        image = load_image(self._file(rec["image"]))
        sample: dict[str, Any] = {"image": image, "path": str(self._file(rec["image"]))}
        if "caption" in rec:
            sample["caption"] = rec["caption"]
        qa = [tuple(p) for p in rec.get("qa", [])]
        if "question" in rec:
            qa.insert(0, (rec["question"], rec["answer"]))
        if qa:
            sample["qa"] = [(str(q), str(a)) for q, a in qa]
        objects = []
        for obj in rec.get("objects", []):
            o = {"box": self._box(obj["box"]), "label": str(obj.get("label", "object"))}
            if "mask" in obj:
                m = read_mask(self._file(obj["mask"]))
                same_size(where, image, m, "mask")
                o["mask"] = m != 0
            objects.append(o)
        if "mask" in rec:
            m = read_mask(self._file(rec["mask"]))
            same_size(where, image, m, "mask")
            box = mask_box(m != 0)
            if box is not None:
                objects.append({"box": box, "label": str(rec.get("mask_label", "object")), "mask": m != 0})
        if objects or "objects" in rec:
            sample["objects"] = objects
        if rec.get("refexps"):
            sample["refexps"] = [(str(e), int(i)) for e, i in rec["refexps"]]
        if "label" in rec:
            sample["label"] = str(rec["label"])
        if "depth" in rec:
            depth = read_depth(self._file(rec["depth"]), self.png_scale)
            same_size(where, image, depth, "depth map")
            sample["depth"] = depth
        return sample
