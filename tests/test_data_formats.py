"""Each dataset reader reads a tiny fixture written here, yields the shared sample schema, and
reports a bad record by file and line (or skips and counts it)."""
import json
import pickle

import numpy as np
import pytest
from PIL import Image

from unio.data.formats import open_source, source_keys
from unio.errors import DataError


def _image(path, size=(40, 30), color=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _instances(images=((1, "000000000001.jpg"), (2, "000000000002.jpg")), extra=()):
    anns = [
        {"id": 10, "image_id": 1, "category_id": 3, "bbox": [2, 3, 10, 8], "iscrowd": 0,
         "segmentation": [[2, 3, 12, 3, 12, 11, 2, 11]]},
        {"id": 11, "image_id": 1, "category_id": 4, "bbox": [20, 5, 6, 6], "iscrowd": 0, "segmentation": []},
        {"id": 12, "image_id": 2, "category_id": 3, "bbox": [0, 0, 5, 5], "iscrowd": 1, "segmentation": []},
        {"id": 13, "image_id": 2, "category_id": 4, "bbox": [1, 1, 0, 4], "iscrowd": 0},  # no area: left out
        {"id": 14, "image_id": 2, "category_id": 3, "bbox": [5, 5, 10, 10], "iscrowd": 0},
        *extra,
    ]
    return {"images": [{"id": i, "file_name": f, "width": 40, "height": 30} for i, f in images],
            "annotations": anns, "categories": [{"id": 3, "name": "cat"}, {"id": 4, "name": "dog"}]}


@pytest.fixture
def coco(tmp_path):
    for name in ("000000000001.jpg", "000000000002.jpg"):
        _image(tmp_path / "images" / name)
    caps = {"images": [{"id": 1, "file_name": "000000000001.jpg"}, {"id": 2, "file_name": "000000000002.jpg"}],
            "annotations": [{"image_id": 1, "caption": "A cat. "}, {"image_id": 1, "caption": "a dog"},
                            {"image_id": 2, "caption": "two pets"}]}
    return {"images": tmp_path / "images", "captions": _write(tmp_path / "captions.json", caps),
            "instances": _write(tmp_path / "instances.json", _instances()), "root": tmp_path}


def test_coco_captions_and_instances(coco):
    src = open_source({"source": "coco", "images": coco["images"], "captions": coco["captions"],
                       "instances": coco["instances"], "masks": True})
    assert len(src) == 2
    s = src[0]
    assert s["image"].size == (40, 30) and s["image"].mode == "RGB"
    assert s["caption"] == ["A cat.", "a dog"]
    assert [o["label"] for o in s["objects"]] == ["cat", "dog"]
    assert s["objects"][0]["box"] == (2.0, 3.0, 12.0, 11.0)  # xywh -> xyxy
    assert s["objects"][0]["mask"].shape == (30, 40) and s["objects"][0]["mask"][5, 5]
    assert "mask" not in s["objects"][1]  # no segmentation given
    # crowd and area-less boxes are left out, as detection codebases do
    assert [o["box"] for o in src[1]["objects"]] == [(5.0, 5.0, 15.0, 15.0)]
    assert set(src.object_labels) == {"cat", "dog"}
    assert "two pets" in src.texts()


def test_coco_captions_only_and_images_are_lazy(coco):
    src = open_source({"source": "coco", "images": coco["images"], "captions": coco["captions"]})
    assert "objects" not in src[0]
    (coco["images"] / "000000000002.jpg").unlink()  # opening did not read images; fetching does
    with pytest.raises(DataError, match="000000000002.jpg"):
        src[1]


def test_coco_bad_annotation_names_file_and_record(coco, tmp_path):
    bad = _instances(extra=[{"id": 99, "image_id": 7, "category_id": 3, "bbox": [0, 0, 1, 1]}])
    path = _write(tmp_path / "bad_instances.json", bad)
    with pytest.raises(DataError, match=r"bad_instances.json annotations\[5\] \(id 99\): image_id 7 .*on_bad_record: skip"):
        open_source({"source": "coco", "images": coco["images"], "instances": path})
    src = open_source({"source": "coco", "images": coco["images"], "instances": path, "on_bad_record": "skip"})
    assert src.skipped == 1 and len(src) == 2


def test_coco_invalid_json_names_line(tmp_path, coco):
    path = tmp_path / "broken.json"
    path.write_text('{"images": [\n  {"id": 1,}\n]}')
    with pytest.raises(DataError, match=r"broken.json line 2 column .*invalid JSON"):
        open_source({"source": "coco", "images": coco["images"], "captions": path})


def test_vqa(tmp_path):
    _image(tmp_path / "img" / "COCO_train2014_000000000005.jpg")
    q = _write(tmp_path / "q.json", {"questions": [
        {"question_id": 50, "image_id": 5, "question": "What color is it?"},
        {"question_id": 51, "image_id": 5, "question": "Is it red?"}]})
    a = _write(tmp_path / "a.json", {"annotations": [
        {"question_id": 50, "image_id": 5, "multiple_choice_answer": "red", "answers": [{"answer": "red"}]},
        {"question_id": 51, "image_id": 5, "multiple_choice_answer": "yes"}]})
    src = open_source({"source": "vqa", "images": tmp_path / "img", "questions": q, "annotations": a})
    assert len(src) == 1 and src[0]["qa"] == [("What color is it?", "red"), ("Is it red?", "yes")]
    q2 = _write(tmp_path / "q2.json", {"questions": [{"question_id": 52, "image_id": 5, "question": "Why?"}]})
    with pytest.raises(DataError, match=r"q2.json questions\[0\]: question_id 52 has no answer"):
        open_source({"source": "vqa", "images": tmp_path / "img", "questions": q2, "annotations": a})


@pytest.mark.parametrize("fmt", ["json", "p"])
def test_refcoco(coco, tmp_path, fmt):
    refs = [{"ref_id": 0, "ann_id": 10, "image_id": 1, "split": "train",
             "sentences": [{"sent": "the cat on the left"}, {"sent": "left cat"}]},
            {"ref_id": 1, "ann_id": 14, "image_id": 2, "split": "val", "sentences": [{"sent": "the cat"}]}]
    path = tmp_path / f"refs.{fmt}"
    if fmt == "json":
        _write(path, refs)
    else:
        path.write_bytes(pickle.dumps(refs, protocol=2))
    src = open_source({"source": "refcoco", "images": coco["images"], "refs": path,
                       "instances": coco["instances"], "split": "train"})
    assert len(src) == 1
    s = src[0]
    assert s["refexps"] == [("the cat on the left", 0), ("left cat", 0)]
    assert s["objects"][0]["box"] == (2.0, 3.0, 12.0, 11.0)


def test_refcoco_pickle_with_objects_is_refused(coco, tmp_path):
    path = tmp_path / "evil.p"
    path.write_bytes(pickle.dumps([{"ann_id": 10, "sentences": [], "x": np.float64(1.0)}]))
    with pytest.raises(DataError, match="only plain data"):
        open_source({"source": "refcoco", "images": coco["images"], "refs": path, "instances": coco["instances"]})


def test_class_folders(tmp_path):
    _image(tmp_path / "train" / "n01_tabby_cat" / "a.png")
    _image(tmp_path / "train" / "n02" / "b.jpg")
    (tmp_path / "train" / "n02" / "notes.txt").write_text("not an image")
    labels = tmp_path / "labels.txt"
    labels.write_text("n02 golden retriever, dog\n")
    src = open_source({"source": "classes", "root": tmp_path / "train", "labels": labels})
    assert [s["label"] for s in src] == ["n01 tabby cat", "golden retriever"]
    assert src.classes == ["golden retriever", "n01 tabby cat"]


def test_depth_png_mm_and_npy_m(tmp_path):
    _image(tmp_path / "rgb" / "a.png", (8, 6))
    _image(tmp_path / "rgb" / "b.png", (8, 6))
    mm = np.full((6, 8), 1500, np.uint16)
    mm[0, 0] = 0  # missing depth stays 0
    (tmp_path / "d").mkdir()
    Image.fromarray(mm).save(tmp_path / "d" / "a.png")
    np.save(tmp_path / "d" / "b.npy", np.full((6, 8), 2.25, np.float32))
    src = open_source({"source": "depth", "images": tmp_path / "rgb", "depth": tmp_path / "d"})
    a, b = src[0]["depth"], src[1]["depth"]
    assert a.dtype == np.float32 and a.shape == (6, 8) and a[1, 1] == pytest.approx(1.5) and a[0, 0] == 0
    assert b[3, 3] == pytest.approx(2.25)


def test_depth_size_mismatch_and_missing_map(tmp_path):
    _image(tmp_path / "rgb" / "a.png", (8, 6))
    _image(tmp_path / "rgb" / "lonely.png", (8, 6))
    (tmp_path / "d").mkdir()
    np.save(tmp_path / "d" / "a.npy", np.ones((5, 5), np.float32))
    with pytest.raises(DataError, match=r"lonely.png: no depth map named lonely.png or lonely.npy"):
        open_source({"source": "depth", "images": tmp_path / "rgb", "depth": tmp_path / "d"})
    src = open_source({"source": "depth", "images": tmp_path / "rgb", "depth": tmp_path / "d", "on_bad_record": "skip"})
    assert src.skipped == 1
    with pytest.raises(DataError, match=r"a.npy: the depth map is 5x5 but the image is 8x6"):
        src[0]


def test_mask_folders(tmp_path):
    _image(tmp_path / "rgb" / "x.jpg", (10, 10))
    m = np.zeros((10, 10), np.uint8)
    m[1:4, 2:6] = 1
    m[6:9, 6:9] = 2
    (tmp_path / "m").mkdir()
    Image.fromarray(m).save(tmp_path / "m" / "x.png")
    one = open_source({"source": "masks", "images": tmp_path / "rgb", "masks": tmp_path / "m", "label": "leaf"})[0]
    assert len(one["objects"]) == 1 and one["objects"][0]["box"] == (2.0, 1.0, 9.0, 9.0)
    assert one["refexps"] == [("leaf", 0)] and one["objects"][0]["mask"].sum() == 12 + 9
    many = open_source({"source": "masks", "images": tmp_path / "rgb", "masks": tmp_path / "m", "instances": True})[0]
    assert [o["box"] for o in many["objects"]] == [(2.0, 1.0, 6.0, 4.0), (6.0, 6.0, 9.0, 9.0)]


def test_jsonl_manifest(tmp_path):
    _image(tmp_path / "a.png", (20, 10))
    m = np.zeros((10, 20), np.uint8)
    m[2:5, 3:7] = 255
    Image.fromarray(m).save(tmp_path / "a_mask.png")
    np.save(tmp_path / "a_depth.npy", np.ones((10, 20), np.float32))
    records = [
        {"image": "a.png", "caption": ["one", "two"], "question": "what?", "answer": "this",
         "objects": [{"box": [1, 1, 5, 5], "label": "box"}], "refexps": [["the box", 0]], "label": "thing"},
        {"image": "a.png", "qa": [["q1", "a1"]], "mask": "a_mask.png", "mask_label": "blob", "depth": "a_depth.npy"},
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    src = open_source({"source": "jsonl", "path": path})
    s0, s1 = src[0], src[1]
    assert s0["caption"] == ["one", "two"] and s0["qa"] == [("what?", "this")]
    assert s0["objects"] == [{"box": (1.0, 1.0, 5.0, 5.0), "label": "box"}] and s0["refexps"] == [("the box", 0)]
    assert s0["label"] == "thing" and s1["qa"] == [("q1", "a1")]
    assert s1["objects"][0]["label"] == "blob" and s1["objects"][0]["box"] == (3.0, 2.0, 7.0, 5.0)
    assert s1["depth"].shape == (10, 20)
    assert set(src.texts()) >= {"one", "what?", "the box", "thing", "q1"}
    xywh = tmp_path / "xywh.jsonl"
    xywh.write_text(json.dumps({"image": "a.png", "objects": [{"box": [1, 1, 4, 4], "label": "b"}]}))
    assert open_source({"source": "jsonl", "path": xywh, "box_format": "xywh"})[0]["objects"][0]["box"] == (1, 1, 5, 5)


@pytest.mark.parametrize("line, message", [
    ('{"image": "a.png", "caption": "x"', "invalid JSON"),
    ('{"caption": "x"}', "no 'image' path"),
    ('{"image": "missing.png"}', "image file .*missing.png does not exist"),
    ('{"image": "a.png", "objects": [{"box": [5, 5, 1, 1], "label": "b"}]}', "object 0: box .* is empty or inverted"),
    ('{"image": "a.png", "objects": [{"box": [1, "x", 3, 4]}]}', "object 0: a box must be 4 numbers"),
    ('{"image": "a.png", "question": "why?"}', "'question' and 'answer' must come together"),
    ('{"image": "a.png", "refexps": [["it", 3]]}', r"refexps\[0\] must be"),
    ('{"image": "a.png", "colour": "red"}', r"unknown key\(s\) \['colour'\]"),
])
def test_jsonl_bad_record_names_line(tmp_path, line, message):
    _image(tmp_path / "a.png")
    path = tmp_path / "m.jsonl"
    path.write_text('{"image": "a.png", "caption": "fine"}\n\n' + line + "\n")
    with pytest.raises(DataError, match=f"m.jsonl line 3: {message}"):
        open_source({"source": "jsonl", "path": path})
    src = open_source({"source": "jsonl", "path": path, "on_bad_record": "skip"})
    assert len(src) == 1 and src.skipped == 1


def test_spec_errors(tmp_path):
    with pytest.raises(DataError, match="unknown data source 'cocoa'"):
        open_source({"source": "cocoa"})
    with pytest.raises(DataError, match=r"does not take \['imgs'\]"):
        open_source({"source": "jsonl", "path": "x.jsonl", "imgs": "y"})
    with pytest.raises(DataError, match="manifest .*nope.jsonl does not exist"):
        open_source({"source": "jsonl", "path": tmp_path / "nope.jsonl"})
    assert source_keys("vqa")[0] == ("images", "questions", "annotations")


def test_shapes_source_and_limit():
    src = open_source({"source": "shapes", "seed": 3, "image_size": 32})
    assert src.endless and len(src) > 10 ** 9
    assert src[0]["image"].size == (32, 32)
    assert len(open_source({"source": "shapes", "n": 5})) == 5


def test_every_format_builds_task_examples(coco, tmp_path):
    """Readers and tasks meet in the sample schema: a task builds from any source that has its fields."""
    from unio.tasks import TaskContext, get_task

    ctx = TaskContext.from_dir("tokenizers/shapes", image_size=32, patch_size=8)
    rng = np.random.default_rng(0)
    cases = [
        ({"source": "coco", "images": coco["images"], "captions": coco["captions"], "instances": coco["instances"]},
         ["caption", "detect"]),
        ({"source": "refcoco", "images": coco["images"], "instances": coco["instances"],
          "refs": _write(tmp_path / "refs.json", [{"ann_id": 10, "image_id": 1, "sentences": [{"sent": "a cat"}]}])},
         ["ground"]),
    ]
    for spec, tasks in cases:
        sample = open_source(spec)[0]
        for name in tasks:
            task = get_task(name)
            assert task.can_build(sample), (spec["source"], name)
            ex = task.build(sample, ctx, rng)
            assert ex.labels and ex.labels[-1] == ctx.vocab.eos_id and ex.image.size == (32, 32)


def test_encode_mask_round_trips_through_coco_rle():
    """What eval --predictions and predict write for masks reads back through the COCO reader's decoder
    (compressed RLE from the JSON string) and through pycocotools' own area."""
    import numpy as np
    from pycocotools import mask as mask_utils

    from unio.data.coco import _decode_mask, encode_mask
    mask = np.zeros((7, 5), dtype=bool)
    mask[1:4, 2:5] = True
    mask[6, 0] = True
    rle = encode_mask(mask)
    assert rle["size"] == [7, 5] and isinstance(rle["counts"], str)
    back = _decode_mask({"size": rle["size"], "counts": rle["counts"].encode()}, 7, 5)
    assert back.dtype == bool and (back == mask).all()
    assert int(mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode()})) == 10
    empty = encode_mask(np.zeros((3, 4), dtype=bool))
    assert not _decode_mask({"size": empty["size"], "counts": empty["counts"].encode()}, 3, 4).any()
