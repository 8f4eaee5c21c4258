"""`unio predict`: JSONL records in the original frame, COCO results pycocotools accepts, pictures,
and one clear message (exit 2, no traceback) for each bad input."""
import contextlib
import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from unio.cli import main
from unio.data.shapes import shapes_classes

W, H = 300, 120


@pytest.fixture(scope="module")
def model(micro_export):
    return str(micro_export)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i in (1, 2, 3):
        p = d / f"{i:06d}.png"
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


def predict(*argv):
    """Run `unio predict ...` in-process -> (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["predict", *map(str, argv)])
    return code, out.getvalue(), err.getvalue()


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_detect_jsonl_and_pictures(model, images, tmp_path):
    code, _, err = predict("detect", "--model", model, *images, "--out", tmp_path / "p.jsonl", "--viz", tmp_path / "viz")
    assert code == 0, err
    records = read_jsonl(tmp_path / "p.jsonl")
    assert [r["image"] for r in records] == images
    for r in records:
        assert (r["width"], r["height"]) == (W, H)
        assert len(r["boxes"]) == len(r["labels"]) == len(r["scores"]) > 0
        assert all(0 <= b[0] <= b[2] <= W and 0 <= b[1] <= b[3] <= H for b in r["boxes"])
        assert all(0 < s < 1 for s in r["scores"])
        assert Image.open(r["viz_png"]).size == (384, round(H * 384 / W))  # small images are drawn larger


def test_coco_results_load_in_pycocotools(model, images, tmp_path):
    from pycocotools.coco import COCO
    out = tmp_path / "dets.json"
    code, _, err = predict("detect", "--model", model, *images, "--format", "coco", "--out", out)
    assert code == 0, err
    categories = json.loads((tmp_path / "dets.categories.json").read_text())
    assert categories[0] == {"id": 1, "name": shapes_classes()["object"][0]}
    gt = COCO()
    gt.dataset = {"images": [{"id": i, "width": W, "height": H} for i in (1, 2, 3)],
                  "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 40], "area": 2000,
                                   "iscrowd": 0}],
                  "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt = gt.loadRes(str(out))
    assert len(dt.getAnnIds()) == len(json.loads(out.read_text())) > 0
    assert set(dt.getImgIds()) <= {1, 2, 3}


def test_segment_rle_and_depth_files(model, images, tmp_path):
    from pycocotools import mask as mask_utils
    code, _, err = predict("segment", "--model", model, images[0], "--text", "the red circle",
                           "--out", tmp_path / "seg.jsonl", "--viz", tmp_path / "viz")
    assert code == 0, err
    (rec,) = read_jsonl(tmp_path / "seg.jsonl")
    mask = mask_utils.decode({"size": rec["mask"]["size"], "counts": rec["mask"]["counts"].encode()})
    assert mask.shape == (H, W) and int(mask.sum()) == rec["area"]
    assert Image.open(rec["viz_png"]).size == (384, round(H * 384 / W))

    code, _, err = predict("depth", "--model", model, *images[:2], "--out", tmp_path / "depth.jsonl")
    assert code == 0, err
    for rec in read_jsonl(tmp_path / "depth.jsonl"):
        assert np.load(rec["depth_npy"]).shape == (H, W)
        assert Image.open(rec["depth_png"]).size == (W, H)
        assert rec["min"] <= rec["max"]


def test_text_tasks_to_stdout_and_folders(model, images, tmp_path):
    code, out, err = predict("caption", "--model", model, images[0])
    assert code == 0, err
    (rec,) = [json.loads(line) for line in out.splitlines()]
    assert rec["task"] == "caption" and isinstance(rec["text"], str)
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = predict("vqa", "--model", model, empty, "--text", "what?")
    assert code == 2 and "holds no image files" in err
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in images[:2]:
        shutil.copy(p, folder)
    code, out, err = predict("classify", "--model", model, folder, "--labels", "cat,dog")
    assert code == 0, err
    assert [json.loads(line)["label"] in ("cat", "dog") for line in out.splitlines()] == [True, True]


def test_region_tasks_and_images(model, images, tmp_path):
    code, out, err = predict("classify_region", "--model", model, images[0], "--box", "10,10,100,100")
    assert code == 0, err
    assert json.loads(out)["label"] in shapes_classes()["object"]
    code, _, err = predict("inpaint", "--model", model, images[0], "--box", "10,10,100,100", "--text", "a star",
                           "--out", tmp_path / "inp.jsonl")
    assert code == 0, err
    (rec,) = read_jsonl(tmp_path / "inp.jsonl")
    assert Image.open(rec["image_png"]).size == (W, H)
    code, _, err = predict("generate_image", "--model", model, "--text", "a red circle", "--out", tmp_path / "g.jsonl")
    assert code == 0, err
    assert Image.open(read_jsonl(tmp_path / "g.jsonl")[0]["image_png"]).size == (64, 64)


def test_out_may_name_the_picture_itself(model, images, tmp_path):
    code, out, err = predict("generate_image", "--model", model, "--text", "a red circle", "--out", tmp_path / "g.png")
    assert code == 0 and out == "", err
    assert Image.open(tmp_path / "g.png").size == (64, 64) and not (tmp_path / "g_files").exists()
    code, out, err = predict("inpaint", "--model", model, images[0], "--box", "10,10,100,100", "--text", "a star",
                             "--out", tmp_path / "sub" / "i.jpg")
    assert code == 0 and out == "", err
    with Image.open(tmp_path / "sub" / "i.jpg") as im:
        assert im.format == "JPEG" and im.size == (W, H)
    code, _, err = predict("depth", "--model", model, images[1], "--out", tmp_path / "d.npy")
    assert code == 0, err
    depth = np.load(tmp_path / "d.npy")
    assert depth.shape == (H, W) and depth.dtype == np.float32
    code, _, err = predict("depth", "--model", model, images[1], "--out", tmp_path / "d.png")
    assert code == 0, err
    assert Image.open(tmp_path / "d.png").size == (W, H)


@pytest.mark.parametrize("argv, message", [
    (["caption", "--model", "M", "I", "--out", "x.png"], "names a picture file, but caption writes JSON records"),
    (["inpaint", "--model", "M", "I", "I", "--box", "1,1,5,5", "--text", "x", "--out", "x.png"],
     "names one picture, but 2 images were given"),
    (["generate_image", "--model", "M", "--text", "x", "--out", "x.npy"], ".npy holds depth maps"),
    (["depth", "--model", "M", "I", "--out", "x.png", "--viz", "v"], "nothing for --viz to draw"),
    (["colorize", "--model", "M", "I"], "unknown task 'colorize'; choose one of: caption"),
    (["vqa", "--model", "M", "I"], "needs --text (the question)"),
    (["ground", "--model", "M", "I"], "needs --text (the expression)"),
    (["inpaint", "--model", "M", "I", "--text", "x"], "needs --box"),
    (["describe_region", "--model", "M", "I", "--box", "5,5,1,1"], "empty or inverted"),
    (["caption", "--model", "M"], "no images given"),
    (["caption", "--model", "M", "BAD"], "could not read"),
    (["caption", "--model", "M", "MISSING"], "does not exist"),
    (["caption", "--model", "M", "I", "--format", "coco"], "--format coco is for detect"),
    (["caption", "--model", "NOMODEL", "I"], "neither an export directory nor a shipped model"),
    (["caption", "--model", "M", "I", "--text", "x"], "takes no --text; to write its prompt yourself use --option"),
    (["caption", "--model", "M", "I", "--box", "1,1,5,5"], "--box is for classify_region, describe_region, inpaint"),
    (["detect", "--model", "M", "I", "--labels", "a,b"], "--labels is for classify and classify_region"),
    (["caption", "--model", "M", "I", "--option", "beams"], "is not KEY=VALUE"),
    (["caption", "--model", "M", "I", "--option", "guidance=3"], "unknown option(s) ['guidance'] for caption"),
    (["caption", "--model", "M", "I", "--option", "detect.threshold=0.5"], "names task 'detect', but this command"),
    # option values are typed by the task and checked before the model loads (NOMODEL is never read)
    (["detect", "--model", "NOMODEL", "I", "--option", "threshold=abc"], "option threshold='abc' of detect: must be a number"),
    (["detect", "--model", "NOMODEL", "I", "--option", "max_objects=0"], "option max_objects=0 of detect: must be >= 1"),
    (["caption", "--model", "NOMODEL", "I", "--option", "num_beams=two"], "num_beams='two' of caption: must be a whole"),
    (["generate_image", "--model", "NOMODEL", "--text", "x", "--option", "rerank=clip"], "must be one of recaption"),
    (["depth", "--model", "NOMODEL", "I", "--option", "refine=maybe"], "refine='maybe' of depth: must be true or false"),
])
def test_bad_input_gives_one_message(model, images, tmp_path, argv, message):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    subst = {"M": model, "I": images[0], "BAD": bad, "MISSING": tmp_path / "missing.png", "NOMODEL": tmp_path / "x"}
    code, out, err = predict(*[subst.get(a, a) for a in argv])
    assert code == 2 and out == ""
    assert message in err and "Traceback" not in err
    assert err.startswith("unio predict: error: ") and err.count("\n") == 1


def test_bad_input_from_the_shell(model):
    proc = subprocess.run([sys.executable, "-m", "unio", "predict", "vqa", "--model", model, "nope.png"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "unio predict: error: `unio predict vqa` needs --text (the question)"


def test_options_reach_the_model(model, images, tmp_path):
    code, _, err = predict("caption", "--model", model, images[0], "--option", "max_new_tokens=1",
                           "--out", tmp_path / "c.jsonl")
    assert code == 0, err
    assert len(read_jsonl(tmp_path / "c.jsonl")[0]["text"].split()) <= 1
    code, _, err = predict("detect", "--model", model, *images[:2], "--option", "threshold=1.01",
                           "--out", tmp_path / "d.jsonl")
    assert code == 0, err
    assert [r["boxes"] for r in read_jsonl(tmp_path / "d.jsonl")] == [[], []]
    for seed in (0, 0, 1):
        code, _, err = predict("generate_image", "--model", model, "--text", "a red circle", "--option", "guidance=2",
                               "--option", f"seed={seed}", "--out", tmp_path / f"g{seed}.jsonl")
        assert code == 0, err
    pixels = [np.asarray(Image.open(read_jsonl(tmp_path / f"g{s}.jsonl")[0]["image_png"])) for s in (0, 1)]
    assert not np.array_equal(*pixels)


def test_viz_threshold_leaves_low_scores_out_of_the_picture(model, images, tmp_path):
    from unio.viz import enlarge
    code, _, err = predict("detect", "--model", model, images[0], "--viz", tmp_path / "none", "--viz-threshold", "1.01",
                           "--out", tmp_path / "a.jsonl")
    assert code == 0, err
    rec = read_jsonl(tmp_path / "a.jsonl")[0]
    assert rec["boxes"]  # the record keeps every box ...
    drawn = np.asarray(Image.open(rec["viz_png"]))
    plain = np.asarray(enlarge(Image.open(images[0]), 384 / W))
    assert np.array_equal(drawn, plain)  # ... the picture shows none above 1.01
