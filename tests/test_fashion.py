"""The fashion-scenes world: real Fashion-MNIST photos composed into scenes with the shapes world's
schema. Determinism, split separation (checked against the photos' own pixels), every annotation
against the pixels, the language against the objects, the data spec, `unio eval`, a recipe's
training steps, the preview and the shipped tokenizer.

The checks recompute each fact with their own small parsers and pixel arithmetic rather than the
generator's code paths. Without Debian's dataset-fashion-mnist the tests that need it skip.
"""
import gzip
import hashlib
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unio.cli.shapes import annotation_record
from unio.data.fashion_items import (CATEGORIES, COLORS, PLURALS, ROOT_ENV, SIZES, fashion_root)
from unio.errors import DataError, InputError, UnioError

ROOT = Path(__file__).resolve().parent.parent
S = 128
N = 60
try:
    fashion_root()
    HAVE_DATA = True
except DataError:
    HAVE_DATA = False
needs_data = pytest.mark.skipif(not HAVE_DATA, reason="Fashion-MNIST is not installed: apt-get install -y "
                                "dataset-fashion-mnist (or set $UNIO_FASHION_MNIST to a folder of its IDX files)")
CAT = "|".join(re.escape(c) for c in sorted(CATEGORIES, key=len, reverse=True))
COL = "|".join(COLORS)
SINGULAR = {p: c for c, p in PLURALS.items()}
PLUR = "|".join(re.escape(p) for p in sorted(SINGULAR, key=len, reverse=True))
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def _read(root: Path, name: str) -> np.ndarray:
    raw = gzip.decompress((root / f"{name}.gz").read_bytes())
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw[4:4 + 4 * ndim], ">u4"))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


@pytest.fixture(scope="module")
def photos():
    """The official files read here, independently of unio: {split: (images, labels)}."""
    root = fashion_root()
    return {"train": (_read(root, "train-images-idx3-ubyte"), _read(root, "train-labels-idx1-ubyte")),
            "test": (_read(root, "t10k-images-idx3-ubyte"), _read(root, "t10k-labels-idx1-ubyte"))}


@pytest.fixture(scope="module")
def world():
    from unio.data.fashion import FashionScenes
    return FashionScenes(S, seed=0, split="train")


@pytest.fixture(scope="module")
def samples(world):
    return [world[i] for i in range(N)]


def centre(o):
    x1, y1, x2, y2 = o["box"]
    return (x1 + x2) / 2, (y1 + y2) / 2


def scaled(photo: np.ndarray, side: int) -> np.ndarray:
    """Reference scaling: nearest repetition, after a rounded 2x2 mean for odd multiples of 14."""
    p = photo.astype(np.int64)
    if side % 28:
        p = (p.reshape(14, 2, 14, 2).sum(axis=(1, 3)) + 2) // 4
    idx = np.arange(side) * p.shape[0] // side
    return p[idx][:, idx]


def tinted(v: np.ndarray, color: str) -> np.ndarray:
    return np.array([[c * (1275 - 2 * int(x)) // 1275 for c in COLORS[color]] for x in v.ravel()],
                    dtype=np.uint8).reshape(v.shape + (3,))


def fingerprint(s) -> str:
    h = hashlib.sha256(s["image"].tobytes())
    for o in s["objects"]:
        h.update(np.packbits(o["mask"]).tobytes())
    h.update(json.dumps(annotation_record(s), sort_keys=True).encode())
    return h.hexdigest()


# ------------------------------------------------------------------------------ without the data
def test_missing_data_says_how_to_install(tmp_path, monkeypatch):
    from unio.data.fashion import FashionScenes
    from unio.data.specs import open_data
    with pytest.raises(DataError, match=re.escape("apt-get install -y dataset-fashion-mnist")):
        FashionScenes(root=tmp_path / "nowhere")
    monkeypatch.setenv(ROOT_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(UnioError, match=re.escape(f"${ROOT_ENV}")):
        open_data("fashion-scenes:1")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="has no t10k-images-idx3-ubyte"):
        FashionScenes(root=tmp_path / "empty", split="test")


def test_other_idx_files_are_refused_unless_asked(tmp_path):
    """Scenes are defined on the official files; other files (here random photos in the test
    split's shape) are refused, or used with verify=False, their own pixels painted."""
    from unio.data.fashion import FashionScenes
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10000, 28, 28), dtype=np.uint8)
    labels = (np.arange(10000) % 10).astype(np.uint8)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(bytes([0, 0, 8, 3]) + np.array([10000, 28, 28], ">u4").tobytes()
                                                      + images.tobytes())
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1]) + np.array([10000], ">u4").tobytes()
                                                      + labels.tobytes())
    with pytest.raises(DataError, match="not the official Fashion-MNIST test files"):
        FashionScenes(root=tmp_path, split="test")
    w = FashionScenes(root=tmp_path, split="test", verify=False, image_size=64)
    s, layout = w[0], w.layout(0)
    for o, p in zip(s["objects"], layout):
        x0, y0, side = p["window"]
        ref = np.zeros((64, 64), np.int64)
        ref[y0:y0 + side, x0:x0 + side] = scaled(images[o["item"]], side)
        assert CATEGORIES[labels[o["item"]]] == o["category"]
        assert np.array_equal(np.asarray(s["image"])[o["mask"]], tinted(ref[o["mask"]], o["color"]))


@pytest.mark.parametrize("kwargs, message", [
    ({"image_size": 100}, "multiple of 64"), ({"image_size": 1024}, "multiple of 64"),
    ({"seed": -1}, "seed >= 0"), ({"split": "val"}, "use 'train'"), ({"max_objects": 7}, "<= 6"),
    ({"min_objects": 3, "max_objects": 2}, "min_objects=3, max_objects=2"), ({"image_size": "128"}, "must be an int"),
])
def test_bad_arguments(kwargs, message):
    from unio.data.fashion import FashionScenes
    with pytest.raises(InputError, match=re.escape(message)):
        FashionScenes(**kwargs)


def test_spec_names_the_test_split():
    from unio.data.specs import parse_data_spec
    assert parse_data_spec("fashion-scenes:3") == {"source": "fashion-scenes", "seed": 3, "split": "test"}
    assert parse_data_spec("fashion-scenes:") == {"source": "fashion-scenes", "seed": 1, "split": "test"}
    assert parse_data_spec("fashion-scenes:2,split=train,image_size=64") == {
        "source": "fashion-scenes", "seed": 2, "split": "train", "image_size": 64}
    with pytest.raises(DataError, match=re.escape("e.g. fashion-scenes:1")):
        parse_data_spec("fashion-scenes:-1")
    assert parse_data_spec("shapes:4") == {"source": "shapes", "seed": 4}


# ------------------------------------------------------------------------------ schema, determinism
@needs_data
def test_schema(samples):
    sizes = {"small": 28, "large": 56}
    for s in samples:
        assert set(s) == {"image", "objects", "caption", "qa", "refexps", "label"}  # no depth map
        assert isinstance(s["image"], Image.Image) and s["image"].mode == "RGB" and s["image"].size == (S, S)
        assert 1 <= len(s["objects"]) <= 4
        for o in s["objects"]:
            assert set(o) == {"box", "category", "color", "size", "label", "mask", "item"}
            assert all(isinstance(c, float) for c in o["box"]) and len(o["box"]) == 4
            assert o["category"] in CATEGORIES and o["color"] in COLORS and o["size"] in SIZES
            assert o["label"] == f"{o['size']} {o['color']} {o['category']}"
            assert o["mask"].dtype == bool and o["mask"].shape == (S, S) and isinstance(o["item"], int)
            x1, y1, x2, y2 = o["box"]
            assert x2 - x1 <= sizes[o["size"]] and y2 - y1 <= sizes[o["size"]]
        assert len({(o["category"], o["color"]) for o in s["objects"]}) == len(s["objects"])
        assert s["label"] in CATEGORIES and isinstance(s["caption"], str)
    assert {len(s["objects"]) for s in samples} == {1, 2, 3, 4}
    assert {o["category"] for s in samples for o in s["objects"]} == set(CATEGORIES)


# Pinned so that any change to generation (intended or not) is noticed: if you change the world on
# purpose, update these and say so (tokenizers/fashion and trained models depend on it).
GOLDEN = {
    ("train", 0): "f53c343bd257d954bb950471c39a520036d45902639a07a8eae690ac1f2f3a8f",
    ("train", 1): "35e1306f3b107a8a3b5c2604ef664a09e7981cd505f2d0fbc8736ec441a55b3b",
    ("train", 7): "9a208b9c2deb7e352f2475875b6ff58df8daba1a314c0155c76ec8c7ab232771",
    ("test", 0): "72502f15da217113decb63608480a5fd5db7dc00df8f9c91a561549757dc7f30",
}


@needs_data
def test_deterministic_and_golden():
    from unio.data.fashion import FashionScenes
    a, b = FashionScenes(S, seed=3, split="test"), FashionScenes(S, seed=3, split="test")
    for i in (0, 5, 12345):
        assert fingerprint(a[i]) == fingerprint(b[i])
        assert a.image(i).tobytes() == a[i]["image"].tobytes()
    assert fingerprint(a[0]) != fingerprint(a[1]) != fingerprint(FashionScenes(S, seed=4, split="test")[1])
    assert fingerprint(pickle.loads(pickle.dumps(a))[5]) == fingerprint(a[5])  # as DataLoader workers get it
    got = {(split, i): fingerprint(FashionScenes(S, seed=0, split=split)[i]) for split, i in GOLDEN}
    assert got == GOLDEN


@needs_data
@pytest.mark.parametrize("split", ["train", "test"])
def test_split_separation_by_the_photos_pixels(split, photos):
    """Every item is a photo of its own split: its index is in range, its class is the file's label,
    and the painted pixels are that photo's (so not a photo of the other split)."""
    from unio.data.fashion import FashionScenes
    images, labels = photos[split]
    other = photos["test" if split == "train" else "train"][0]
    w = FashionScenes(S, seed=11, split=split)
    used = set()
    for i in range(25):
        s, layout = w[i], w.layout(i)
        img = np.asarray(s["image"])
        for o, p in zip(s["objects"], layout):
            k = o["item"]
            assert 0 <= k < len(images) and CATEGORIES[labels[k]] == o["category"] == p["category"]
            x0, y0, side = p["window"]
            ref = np.zeros((S, S), np.int64)
            ref[y0:y0 + side, x0:x0 + side] = scaled(images[k], side)
            assert np.array_equal(p["full_mask"], ref >= 32)  # the silhouette: intensity >= 32
            assert np.array_equal(img[o["mask"]], tinted(ref[o["mask"]], o["color"]))
            if k < len(other) and not np.array_equal(images[k], other[k]):
                alt = np.zeros((S, S), np.int64)
                alt[y0:y0 + side, x0:x0 + side] = scaled(other[k], side)
                assert not np.array_equal(img[o["mask"]], tinted(alt[o["mask"]], o["color"]))
            used.add(k)
    if split == "train":
        assert max(used) >= 10000  # indices beyond the test file's: the training file is read


@needs_data
@pytest.mark.parametrize("size", [64, 192, 512])
def test_any_size(size, photos):
    """Items are 14 and 28 px per 64 px of image (a 2x2 mean first for odd multiples of 14)."""
    from unio.data.fashion import FashionScenes
    images = photos["test"][0]
    w = FashionScenes(size, seed=2, split="test", max_objects=6)
    for i in range(3):
        s, layout = w[i], w.layout(i)
        img = np.asarray(s["image"])
        assert s["image"].size == (size, size)
        union = np.zeros((size, size), bool)
        for o, p in zip(s["objects"], layout):
            x0, y0, side = p["window"]
            assert side == {"small": 14, "large": 28}[o["size"]] * size // 64
            assert 0 <= x0 and x0 + side <= size and 0 <= y0 and y0 + side <= size
            ref = np.zeros((size, size), np.int64)
            ref[y0:y0 + side, x0:x0 + side] = scaled(images[o["item"]], side)
            assert np.array_equal(img[o["mask"]], tinted(ref[o["mask"]], o["color"]))
            union |= o["mask"]
        assert np.array_equal(img.min(axis=2) < 128, union)


# ------------------------------------------------------------------------------ annotations vs pixels
@needs_data
def test_masks_boxes_and_occlusion_agree_with_the_pixels(world, samples):
    for i, s in enumerate(samples):
        img = np.asarray(s["image"]).astype(np.int64)
        layout = world.layout(i)
        union = np.zeros((S, S), int)
        for o, p in zip(s["objects"], layout):
            ys, xs = np.nonzero(o["mask"])
            assert o["box"] == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)  # tight around the mask
            nearer = np.zeros((S, S), bool)
            for q in layout:
                if q["z"] > p["z"]:
                    nearer |= q["full_mask"]
            assert np.array_equal(o["mask"], p["full_mask"] & ~nearer)  # own silhouette minus nearer items
            assert o["mask"].sum() >= max(8, 0.7 * p["full_mask"].sum())  # never hidden beyond recognition
            union += o["mask"]
        assert union.max() <= 1
        item_pixels = img.min(axis=2) < 128
        assert np.array_equal(item_pixels, union == 1)  # the picture alone tells items from background
        assert img[union == 0].min() >= 180
        for y in range(S):  # plain or vertical gradient: one colour per row
            row = img[y][union[y] == 0]
            assert len(row) == 0 or (row == row[0]).all()
        for a in range(len(layout)):  # nearer = silhouette reaching lower (ties: later placed)
            for b in range(len(layout)):
                low_a = np.nonzero(layout[a]["full_mask"].any(axis=1))[0].max()
                low_b = np.nonzero(layout[b]["full_mask"].any(axis=1))[0].max()
                if low_a > low_b:
                    assert layout[a]["z"] > layout[b]["z"]


@needs_data
def test_same_colour_items_never_touch_and_label_is_the_largest(samples):
    for s in samples:
        objs = s["objects"]
        for a in range(len(objs)):
            for b in range(a + 1, len(objs)):
                if objs[a]["color"] == objs[b]["color"]:
                    grown = objs[a]["mask"].copy()
                    grown[1:] |= grown[:-1].copy()
                    grown[:-1] |= grown[1:].copy()
                    grown[:, 1:] |= grown[:, :-1].copy()
                    grown[:, :-1] |= grown[:, 1:].copy()
                    assert not (grown & objs[b]["mask"]).any()
        areas = [int(o["mask"].sum()) for o in objs]
        assert s["label"] in {o["category"] for o, a in zip(objs, areas) if a == max(areas)}


# ------------------------------------------------------------------------------ language
def _select(objects, size=None, color=None, category=None):
    return [k for k, o in enumerate(objects) if (size is None or o["size"] == size)
            and (color is None or o["color"] == color) and (category is None or o["category"] == category)]


def _holds(a, b, word, m):
    (ax, ay), (bx, by) = centre(a), centre(b)
    delta = {"left of": bx - ax, "right of": ax - bx, "above": by - ay, "below": ay - by}[word]
    return True if delta > m else False if delta < -m else None


def _region(x, y):
    col = "left" if x < S / 3 else "right" if x >= 2 * S / 3 else "middle"
    row = "top" if y < S / 3 else "bottom" if y >= 2 * S / 3 else "middle"
    names = {"middle middle": "center", "middle left": "left", "middle right": "right", "top middle": "top",
             "bottom middle": "bottom"}
    return names.get(f"{row} {col}", f"{row} {col}")


def _extremes(objects, word, m):
    axis, sign = {"leftmost": (0, 1), "rightmost": (0, -1), "topmost": (1, 1), "bottommost": (1, -1)}[word]
    return lambda ks: [k for k in ks if all(sign * centre(objects[k])[axis] + m < sign * centre(objects[j])[axis]
                                            for j in ks if j != k)]


def _answer(q, objects, m):
    one = lambda ks: (len(ks) == 1 or pytest.fail(f"{q!r} refers to {len(ks)} objects")) and ks[0]
    if q == "how many objects are there?":
        return NUMBERS[len(objects)]
    if g := re.fullmatch(rf"what color is the (?:(small|large) )?({CAT})\?", q):
        return objects[one(_select(objects, size=g[1], category=g[2]))]["color"]
    if g := re.fullmatch(rf"what is the (leftmost|rightmost|topmost|bottommost) object\?", q):
        return objects[one(_extremes(objects, g[1], m)(list(range(len(objects)))))]["category"]
    if g := re.fullmatch(rf"what is the (?:(small|large) )?({COL}) object\?", q):
        return objects[one(_select(objects, size=g[1], color=g[2]))]["category"]
    if g := re.fullmatch(rf"what size is the ({COL}) ({CAT})\?", q):
        return objects[one(_select(objects, color=g[1], category=g[2]))]["size"]
    if g := re.fullmatch(rf"where is the ({COL}) ({CAT})\?", q):
        x, y = centre(objects[one(_select(objects, color=g[1], category=g[2]))])
        assert all(abs(v - t) > 0.05 * S for v in (x, y) for t in (S / 3, 2 * S / 3)), f"ambiguous region: {q}"
        return _region(x, y)
    if g := re.fullmatch(rf"how many ({COL}) objects are there\?", q):
        return NUMBERS[len(_select(objects, color=g[1]))]
    if g := re.fullmatch(rf"how many ({PLUR}) are there\?", q):
        return NUMBERS[len(_select(objects, category=SINGULAR[g[1]]))]
    if g := re.fullmatch(rf"is there an? ({COL}) ({CAT})\?", q):
        return "yes" if _select(objects, color=g[1], category=g[2]) else "no"
    if g := re.fullmatch(rf"is there an? ({CAT})\?", q):
        return "yes" if _select(objects, category=g[1]) else "no"
    if g := re.fullmatch(rf"is the ({COL}) ({CAT}) (left of|right of|above|below) the ({COL}) ({CAT})\?", q):
        a = objects[one(_select(objects, color=g[1], category=g[2]))]
        b = objects[one(_select(objects, color=g[4], category=g[5]))]
        holds = _holds(a, b, g[3], m)
        assert holds is not None, f"ambiguous relation asked: {q!r}"
        return "yes" if holds else "no"
    pytest.fail(f"unknown question template: {q!r}")


@needs_data
def test_every_answer_is_true(samples):
    m = 0.1 * S
    kinds = set()
    for s in samples:
        assert len({q for q, _ in s["qa"]}) == len(s["qa"]), "questions repeat within a sample"
        for q, a in s["qa"]:
            assert _answer(q, s["objects"], m) == a, q
            kinds.add(" ".join(q.split()[:2]))
    assert {"what color", "what is", "what size", "where is", "how many", "is there", "is the"} <= kinds
    yes_no = [a for s in samples for q, a in s["qa"] if a in ("yes", "no")]
    assert 0.35 < yes_no.count("yes") / len(yes_no) < 0.65
    exist = [a for s in samples for q, a in s["qa"] if q.startswith("is there")]
    assert 0.4 < exist.count("yes") / len(exist) < 0.6


@needs_data
def test_every_referring_expression_is_unique(samples):
    m = 0.1 * S
    for s in samples:
        objs, referred = s["objects"], set()
        for e, k in s["refexps"]:
            g = re.fullmatch(rf"the (?:(leftmost|rightmost|topmost|bottommost) )?(?:(small|large) )?(?:({COL}) )?"
                             rf"({CAT}|object)", e)
            assert g, f"unknown expression template: {e!r}"
            ks = _select(objs, size=g[2], color=g[3], category=None if g[4] == "object" else g[4])
            if g[1]:
                ks = _extremes(objs, g[1], m)(ks)
            assert ks == [k], e
            referred.add(k)
        assert referred == set(range(len(objs)))


@needs_data
def test_caption_lists_items_left_to_right_with_a_true_relation(samples):
    m = 0.1 * S
    for s in samples:
        cap, objs = s["caption"], s["objects"]
        assert [centre(o)[0] for o in objs] == sorted(centre(o)[0] for o in objs)
        if len(objs) == 1:
            o = objs[0]
            where = _region(*centre(o))
            phrase = {"top": "at the top", "bottom": "at the bottom", "left": "on the left", "right": "on the right",
                      "center": "in the center"}.get(where, f"in the {where}")
            assert cap == f"{'an' if o['label'][0] in 'aeiou' else 'a'} {o['label']} {phrase}."
            continue
        g = re.fullmatch(rf"(.*)\. the ({COL}) ({CAT}) is (left of|right of|above|below) the ({COL}) ({CAT})\.", cap)
        assert g, cap
        listed = [re.sub(r"^an? ", "", x) for x in re.split(r", | and ", g[1])]
        assert listed == [o["label"] for o in objs]
        a, b = objs[_select(objs, color=g[2], category=g[3])[0]], objs[_select(objs, color=g[5], category=g[6])[0]]
        assert _holds(a, b, g[4], m) is True


# ------------------------------------------------------------------------------ spec, eval, training
@needs_data
def test_the_spec_opens_the_test_split_and_recipes_must_name_one():
    from unio.data.fashion import FashionScenes
    from unio.data.formats import open_source
    from unio.data.specs import open_data
    source, entry = open_data("fashion-scenes:3,image_size=64")
    assert source.endless and source.world.split == "test" and source.classes == list(CATEGORIES)
    assert fingerprint(source[2]) == fingerprint(FashionScenes(64, seed=3, split="test")[2])
    assert len(source.object_labels) == 2 * len(COLORS) * len(CATEGORIES)
    with pytest.raises(DataError, match="needs split: train"):
        open_source({"source": "fashion-scenes", "seed": 0})


@needs_data
def test_unio_eval_on_fashion_scenes(micro_fast_export, tmp_path):
    """Every task of a model runs on the spec; depth, which needs depth maps, is skipped and said
    so. Also a model made with the shipped fashion tokenizers (text and box tasks only)."""
    import torch

    from unio.data.fashion import fashion_classes
    from unio.evaluate import evaluate
    from unio.export import init_export
    from unio.resources import data_path
    res = evaluate(micro_fast_export, "fashion-scenes:1,image_size=64", n=2, progress=False)
    assert "depth" in res["run"]["skipped_tasks"] and "depth maps" not in res
    assert {"caption", "vqa", "detect", "ground", "classify", "segment"} <= set(res)
    assert res["run"]["data_entry"]["split"] == "test"
    torch.manual_seed(0)
    export = init_export("tiny", data_path("tokenizers", "fashion"), tmp_path / "m", image_size=64, quiet=True,
                         d_model=64, encoder_layers=1, decoder_layers=1, num_heads=2)
    res = evaluate(export, "fashion-scenes:1,image_size=64", tasks=["caption", "vqa", "detect", "classify"], n=2,
                   progress=False)
    assert all(res[t]["n"] == 2 for t in ("caption", "vqa", "detect", "classify"))
    meta = json.loads((export / "unio.json").read_text())
    assert meta["classes"] == fashion_classes()


@needs_data
def test_the_recipe_trains_a_few_steps(tmp_path, monkeypatch):
    from unio.recipe import load_recipe
    from unio.training import train
    monkeypatch.chdir(ROOT)
    recipe = load_recipe(ROOT / "recipes" / "fashion-scenes.yaml", [
        f"out={tmp_path / 'run'}", "model.d_model=64", "model.encoder_layers=1", "model.decoder_layers=1",
        "model.num_heads=2", "model.image_size=64", "data.train.0.image_size=64", "data.eval=[]",
        "train.steps=2", "train.batch_size=4", "train.warmup=1", "train.log_every=1", "train.save_every=0"])
    assert recipe["data"]["train"][0]["split"] == "train"
    train(recipe)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all(np.isfinite(r["loss"]) for r in records)
    classes = json.loads((tmp_path / "run" / "classes.json").read_text())
    assert classes["image"] == list(CATEGORIES)


# ------------------------------------------------------------------------------ preview, corpus, tokenizer
@needs_data
def test_preview_and_text_corpus(tmp_path):
    from unio.cli.fashion import write_preview, write_text_corpus
    from unio.data.fashion import FashionScenes, fashion_texts
    write_preview(n=3, out=tmp_path / "p", seed=5, split="test", image_size=64)
    records = [json.loads(x) for x in (tmp_path / "p" / "annotations.jsonl").read_text().splitlines()]
    w = FashionScenes(64, seed=5, split="test")
    for r in records:
        s = w[r["index"]]
        assert Image.open(tmp_path / "p" / r["image"]).tobytes() == s["image"].tobytes()
        assert r["caption"] == s["caption"] and r["split"] == "test"
        assert [o["item"] for o in r["objects"]] == [o["item"] for o in s["objects"]]
    assert (tmp_path / "p" / "grid.png").is_file()
    lines = write_text_corpus(tmp_path / "c.txt", n=3, seed=0, prompt_repeats=0)
    assert (tmp_path / "c.txt").read_text().splitlines() == list(fashion_texts(3, seed=0)) and lines > 3


@needs_data
def test_cli(tmp_path, capsys):
    from unio.cli.main import main
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "unio", "fashion", "--n", "2", "--out", str(tmp_path / "p")],
                         capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stderr
    assert len((tmp_path / "p" / "annotations.jsonl").read_text().splitlines()) == 2
    assert main(["fashion", "--n", "1", "--root", str(tmp_path / "none"), "--texts", str(tmp_path / "t")]) == 2
    assert "apt-get install" in capsys.readouterr().err


@needs_data
def test_shipped_tokenizer_fits_the_language(samples):
    from unio.resources import data_path
    from unio.tokenizers.text import TextTokenizer
    tok = TextTokenizer.load(data_path("tokenizers", "fashion") / "text.model")
    classes = json.loads((data_path("tokenizers", "fashion") / "classes.json").read_text())
    from unio.data.fashion import fashion_classes
    assert classes == fashion_classes()
    words = {w for s in samples for t in [s["caption"], *[x for qa in s["qa"] for x in qa]]
             for w in re.findall(r"[a-z-]+", t)}
    assert {w for w in words if len(tok.encode(w)) > 1} <= {"t-shirt", "t-shirts"}
    for s in samples[:10]:
        assert tok.decode(tok.encode(s["caption"])) == s["caption"]
