"""`unio predict detect --format coco --gt instances.json`: results that pycocotools scores against
the user's own ground truth, with the same AP that `unio eval` reports on those images."""
import contextlib
import io
import json

import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from unio.cli import main
from unio.data.shapes import ShapesWorld, shapes_classes
from unio.evaluate import evaluate

N = 6


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    """Held-out shapes images as a COCO dataset: files, and instances with ids unio does not use."""
    root = tmp_path_factory.mktemp("coco")
    (root / "images").mkdir()
    categories = [{"id": 100 + 7 * k, "name": name} for k, name in enumerate(shapes_classes()["object"])]
    by_name = {c["name"]: c["id"] for c in categories}
    images, annotations = [], []
    world = ShapesWorld(seed=4243)
    for i in range(N):
        sample = world[i]
        name = f"shape_{i:03d}.png"
        sample["image"].save(root / "images" / name)
        images.append({"id": 5000 + i, "file_name": name, "width": 64, "height": 64})
        for obj in sample["objects"]:
            x1, y1, x2, y2 = obj["box"]
            annotations.append({"id": len(annotations) + 1, "image_id": 5000 + i, "category_id": by_name[obj["label"]],
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    gt = root / "instances.json"
    gt.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return root, gt


def predict(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["predict", *map(str, argv)])
    return code, out.getvalue(), err.getvalue()


def test_pycocotools_ap_equals_unio_eval(coco, tmp_path):
    root, gt = coco
    results = tmp_path / "results.json"
    code, _, err = predict("detect", "--model", "shapes-demo", root / "images", "--format", "coco", "--gt", gt,
                           "--out", results)
    assert code == 0, err
    truth = COCO(str(gt))
    found = truth.loadRes(str(results))
    assert {r["image_id"] for r in json.loads(results.read_text())} <= {5000 + i for i in range(N)}
    run = COCOeval(truth, found, "bbox")
    with contextlib.redirect_stdout(io.StringIO()):
        run.evaluate()
        run.accumulate()
        run.summarize()
    ours = evaluate("shapes-demo", {"source": "coco", "images": str(root / "images"), "instances": str(gt)},
                    tasks=["detect"], n=N, progress=False)["detect"]
    assert ours["n"] == N
    assert run.stats[0] == pytest.approx(ours["map"], abs=2e-3) and run.stats[1] == pytest.approx(ours["map50"], abs=2e-3)
    assert ours["map50"] > 0.5  # the shipped model finds the objects: a real score, not an id mismatch's 0


def test_unmapped_images_and_labels_are_refused(coco, tmp_path):
    root, gt = coco
    other = tmp_path / "other.png"
    ShapesWorld(seed=1)[0]["image"].save(other)
    code, out, err = predict("detect", "--model", "NOMODEL", other, "--format", "coco", "--gt", gt)
    assert code == 2 and "not in the --gt file's images" in err and "other.png" in err and out == ""
    data = json.loads(gt.read_text())
    data["categories"] = [{"id": 1, "name": "circle"}]  # the model's labels are "small red circle", ...
    narrow = tmp_path / "narrow.json"
    narrow.write_text(json.dumps(data))
    code, _, err = predict("detect", "--model", "shapes-demo", root / "images", "--format", "coco", "--gt", narrow,
                           "--out", tmp_path / "r.json")
    assert code == 2 and "no category of the ground truth" in err and not (tmp_path / "r.json").exists()
    code, _, err = predict("detect", "--model", "NOMODEL", other, "--gt", gt)
    assert code == 2 and "use it with --format coco" in err
