"""The shapes world: schema, determinism, and that every annotation is true of the pixels.

The checks recompute each fact (boxes, depth, answers, referents) from the masks and boxes
with their own small parsers rather than trusting the generator's code paths.
"""
import hashlib
import json
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from unio.cli.shapes import annotation_record, write_preview, write_text_corpus
from unio.data import shapes
from unio.data.shapes import (CLASSES, COLORS, NUMBER_WORDS, PLURALS, SHAPES, SIZES, ShapesWorld, relation_margin,
                              shapes_texts)
from unio.errors import DataError, InputError, UnioError

N = 80
SINGULAR = {p: s for s, p in PLURALS.items()}


@pytest.fixture(scope="module")
def world():
    return ShapesWorld(image_size=64, seed=0)


@pytest.fixture(scope="module")
def samples(world):
    return [world[i] for i in range(N)]


def centre(obj):
    x1, y1, x2, y2 = obj["box"]
    return (x1 + x2) / 2, (y1 + y2) / 2


def test_constants():
    assert len(SHAPES) >= 5 and {"circle", "square", "triangle"} <= set(SHAPES)
    assert len(COLORS) >= 6 and len(SIZES) >= 2
    assert tuple(CLASSES) == tuple(SHAPES)


def test_schema(samples):
    for s in samples:
        assert set(s) == {"image", "objects", "depth", "caption", "qa", "refexps", "label", "hypotheses", "absent"}
        assert isinstance(s["image"], Image.Image) and s["image"].mode == "RGB" and s["image"].size == (64, 64)
        assert s["depth"].dtype == np.float32 and s["depth"].shape == (64, 64)
        assert 1 <= len(s["objects"]) <= 4
        for o in s["objects"]:
            assert set(o) == {"box", "shape", "color", "size", "label", "mask", "depth"}
            assert len(o["box"]) == 4 and all(isinstance(c, float) for c in o["box"])
            assert o["shape"] in SHAPES and o["color"] in COLORS and o["size"] in SIZES
            assert o["label"] == f"{o['size']} {o['color']} {o['shape']}"
            assert o["mask"].dtype == bool and o["mask"].shape == (64, 64)
            assert isinstance(o["depth"], float)
        assert isinstance(s["caption"], str) and s["caption"]
        assert all(isinstance(q, str) and isinstance(a, str) for q, a in s["qa"])
        assert all(isinstance(e, str) and isinstance(k, int) for e, k in s["refexps"])
        assert s["label"] in CLASSES
    counts = {len(s["objects"]) for s in samples}
    assert counts == {1, 2, 3, 4}, "object counts should span 1..max_objects"


def _fingerprint(s) -> str:
    h = hashlib.sha256()
    h.update(s["image"].tobytes())
    h.update(s["depth"].astype("<f4").tobytes())
    for o in s["objects"]:
        h.update(np.packbits(o["mask"]).tobytes())
    h.update(json.dumps(annotation_record(s), sort_keys=True).encode())
    return h.hexdigest()


def test_deterministic_across_instances():
    a, b = ShapesWorld(64, seed=3), ShapesWorld(64, seed=3)
    for i in (0, 1, 17, 12345):
        assert _fingerprint(a[i]) == _fingerprint(b[i])
    # Order of access does not matter, and other seeds / indices give other scenes.
    assert _fingerprint(a[5]) == _fingerprint(ShapesWorld(64, seed=3)[5])
    assert _fingerprint(a[0]) != _fingerprint(a[1])
    assert _fingerprint(a[0]) != _fingerprint(ShapesWorld(64, seed=4)[0])


# Pinned so that any change to generation (intended or not) is noticed: if you change the
# world on purpose, update these and say so (trained models and tokenizers depend on it).
GOLDEN = {
    0: "4a89bd30e9a733725768fcf290f841736f169fd764d0328654e57a390289c98d",
    1: "bc027d8739a34fa83b4e0505fbb2bcc82f680b7f95f6d10f38c3046f835ce10a",
    7: "2acbd3a41a9577ed029faf82a554ee431db4c0603280cca02f2daca2bbc0f4d1",
}


def test_golden_samples(world):
    got = {i: _fingerprint(world[i]) for i in GOLDEN}
    assert got == GOLDEN


def test_image_shortcut_matches_sample(world):
    for i in range(10):
        assert world.image(i).tobytes() == world[i]["image"].tobytes()


def test_boxes_are_tight_extent_of_masks(samples):
    for s in samples:
        for o in s["objects"]:
            ys, xs = np.nonzero(o["mask"])
            assert o["box"] == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_masks_disjoint_and_pixels_coloured(samples):
    for s in samples:
        img = np.asarray(s["image"])
        union = np.zeros((64, 64), int)
        for o in s["objects"]:
            assert o["mask"].sum() >= shapes.MIN_VISIBLE_PIXELS
            union += o["mask"]
            assert (img[o["mask"]] == COLORS[o["color"]]).all()
        assert union.max() == 1
        background = img[union == 0]
        for rgb in COLORS.values():
            assert not (background == rgb).all(axis=1).any()


def test_depth_agrees_with_drawing_order(world, samples):
    for i, s in enumerate(samples):
        layout = world.layout(i)
        assert [(p["shape"], p["color"]) for p in layout] == [(o["shape"], o["color"]) for o in s["objects"]]
        union = np.zeros((64, 64), bool)
        for o, p in zip(s["objects"], layout):
            assert np.all(s["depth"][o["mask"]] == np.float32(o["depth"]))
            assert 0.0 <= o["depth"] < 0.8
            # Painter's algorithm: visible = own shape minus every nearer object's shape.
            nearer = np.zeros((64, 64), bool)
            for q in layout:
                if q["depth"] < p["depth"]:
                    nearer |= q["full_mask"]
            assert np.array_equal(o["mask"], p["full_mask"] & ~nearer)
            # Nothing hidden beyond recognition.
            assert o["mask"].sum() >= shapes.MIN_VISIBLE_FRACTION * p["full_mask"].sum()
            union |= o["mask"]
        bg = s["depth"][~union]
        assert bg.min() >= 0.85 - 1e-6 and bg.max() <= 1.0
        assert bg.min() > max(o["depth"] for o in s["objects"])
        # The background recedes towards the top: farther in every upper row.
        rows = [s["depth"][y][~union[y]] for y in range(64)]
        means = [r.mean() for r in rows if r.size]
        assert all(a > b for a, b in zip(means, means[1:]))


def test_depth_is_read_from_the_base_row(world, samples):
    # Objects stand on the floor: depth is a linear function of the row of the base of the
    # circumscribed circle (0.75 on the top row, 0.15 on the bottom), up to a tie-breaking jitter,
    # so the lower of two objects is the nearer one.
    lo, hi = shapes.OBJECT_DEPTH
    for i, s in enumerate(samples):
        layout = world.layout(i)
        for o, p in zip(s["objects"], layout):
            base = p["center"][1] + p["radius"]
            assert o["depth"] == pytest.approx(hi + (lo - hi) * base / 64, abs=shapes.DEPTH_JITTER / 2 + 1e-4)
        for p in layout:
            for q in layout:
                if p["center"][1] + p["radius"] > q["center"][1] + q["radius"]:
                    assert p["depth"] < q["depth"]


def test_label_is_shape_of_largest_object(samples):
    for s in samples:
        areas = [(o["mask"].sum(), -o["depth"]) for o in s["objects"]]
        assert s["label"] == s["objects"][int(np.argmax([a[0] * 10 + a[1] for a in areas]))]["shape"]


def _select(objects, size=None, color=None, shape=None):
    return [k for k, o in enumerate(objects) if (size is None or o["size"] == size)
            and (color is None or o["color"] == color) and (shape is None or o["shape"] == shape)]


def _relation_holds(a, b, word, m):
    (ax, ay), (bx, by) = centre(a), centre(b)
    delta = {"left of": bx - ax, "right of": ax - bx, "above": by - ay, "below": ay - by}[word]
    if delta > m:
        return True
    if delta < -m:
        return False
    return None  # too close to call: the world must never ask


def _answer(question, objects, m):
    """Recompute the answer to a templated question from the objects alone."""
    one = lambda ks: (len(ks) == 1 or pytest.fail(f"{question!r} refers to {len(ks)} objects")) and ks[0]
    if question == "how many objects are there?":
        return NUMBER_WORDS[len(objects)]
    if g := re.fullmatch(r"what color is the (?:(small|large) )?(\w+)\?", question):
        return objects[one(_select(objects, size=g[1], shape=g[2]))]["color"]
    if g := re.fullmatch(r"what shape is the (?:(small|large) )?(\w+) object\?", question):
        return objects[one(_select(objects, size=g[1], color=g[2]))]["shape"]
    if g := re.fullmatch(r"what size is the (\w+) (\w+)\?", question):
        return objects[one(_select(objects, color=g[1], shape=g[2]))]["size"]
    if g := re.fullmatch(r"how many (\w+) objects are there\?", question):
        return NUMBER_WORDS[len(_select(objects, color=g[1]))]
    if g := re.fullmatch(r"how many (\w+) are there\?", question):
        return NUMBER_WORDS[len(_select(objects, shape=SINGULAR[g[1]]))]
    if g := re.fullmatch(r"is there an? (\w+) (\w+)\?", question):
        return "yes" if _select(objects, color=g[1], shape=g[2]) else "no"
    if g := re.fullmatch(r"is there an? (\w+)\?", question):
        return "yes" if _select(objects, shape=g[1]) else "no"
    if g := re.fullmatch(r"is the (\w+) (\w+) (left of|right of|above|below) the (\w+) (\w+)\?", question):
        a = objects[one(_select(objects, color=g[1], shape=g[2]))]
        b = objects[one(_select(objects, color=g[4], shape=g[5]))]
        holds = _relation_holds(a, b, g[3], m)
        assert holds is not None, f"ambiguous relation asked: {question!r}"
        return "yes" if holds else "no"
    pytest.fail(f"unknown question template: {question!r}")


def test_every_answer_is_true(samples):
    m = relation_margin(64)
    kinds = set()
    for s in samples:
        assert len({q for q, _ in s["qa"]}) == len(s["qa"]), "questions repeat within a sample"
        for q, a in s["qa"]:
            assert _answer(q, s["objects"], m) == a, q
            kinds.add(q.split()[0] + " " + q.split()[1])
    # colour, shape, size, count, existence, relative position all occur
    assert {"what color", "what shape", "how many", "is there", "is the"} <= kinds
    answers = [a for s in samples for _, a in s["qa"] if a in ("yes", "no")]
    assert 0.3 < answers.count("yes") / len(answers) < 0.7


def _referents(expression, objects, m):
    g = re.fullmatch(r"the (?:(leftmost|rightmost|topmost|bottommost) )?(?:(small|large) )?"
                     r"(?:(red|orange|yellow|green|cyan|blue|purple) )?(\w+)", expression)
    assert g, f"unknown expression template: {expression!r}"
    extreme, size, color, noun = g.groups()
    shape = None if noun == "object" else noun
    ks = _select(objects, size=size, color=color, shape=shape)
    if extreme:
        axis, sign = {"leftmost": (0, 1), "rightmost": (0, -1), "topmost": (1, 1), "bottommost": (1, -1)}[extreme]
        ks = [k for k in ks if all(sign * centre(objects[k])[axis] + m < sign * centre(objects[j])[axis]
                                   for j in ks if j != k)]
    return ks


def test_every_referring_expression_is_unique(samples):
    m = relation_margin(64)
    for s in samples:
        referred = set()
        for expression, k in s["refexps"]:
            assert _referents(expression, s["objects"], m) == [k], expression
            referred.add(k)
        assert referred == set(range(len(s["objects"]))), "every object gets an expression"
    texts = {e.split()[1] for s in samples for e, _ in s["refexps"]}
    assert {"leftmost", "rightmost", "topmost", "bottommost"} <= texts


def test_caption_names_every_object_and_a_true_relation(samples):
    m = relation_margin(64)
    for s in samples:
        cap, objs = s["caption"], s["objects"]
        listed = re.findall(r"\ban? (small|large) (\w+) (\w+)", cap)
        assert [" ".join(x) for x in listed] == [o["label"] for o in objs]
        assert [centre(o)[0] for o in objs] == sorted(centre(o)[0] for o in objs), "listed left to right"
        if len(objs) == 1:
            x, y = centre(objs[0])
            assert cap.endswith(shapes.region_of(x, y, 64) + ".")
            continue
        g = re.search(r"\. the (\w+) (\w+) is (left of|right of|above|below|in front of|behind) "
                      r"the (\w+) (\w+)\.$", cap)
        assert g, cap
        a = objs[_select(objs, color=g[1], shape=g[2])[0]]
        b = objs[_select(objs, color=g[4], shape=g[5])[0]]
        if g[3] in ("in front of", "behind"):
            assert (a["depth"] < b["depth"]) == (g[3] == "in front of")
        else:
            assert _relation_holds(a, b, g[3], m) is True


@pytest.mark.parametrize("size", [16, 32, 100, 256, 512])
def test_any_size(size):
    w = ShapesWorld(image_size=size, seed=1)
    for i in range(3):
        s = w[i]
        assert s["image"].size == (size, size) and s["depth"].shape == (size, size)
        for o in s["objects"]:
            x1, y1, x2, y2 = o["box"]
            assert 0 <= x1 < x2 <= size and 0 <= y1 < y2 <= size
            assert o["mask"].shape == (size, size)
    if size >= 64:  # objects scale with the image
        side = [o["box"][2] - o["box"][0] for i in range(10) for o in w[i]["objects"] if o["size"] == "large"]
        assert 0.15 * size < max(side) < 0.4 * size


def test_min_and_max_objects():
    w = ShapesWorld(64, seed=2, min_objects=3, max_objects=3)
    assert all(len(w[i]["objects"]) == 3 for i in range(10))
    w = ShapesWorld(128, seed=2, min_objects=8, max_objects=8)
    assert len(w[0]["objects"]) == 8


def test_sequence_helpers(world):
    assert len(world) >= 10**6
    few = world[2:5]
    assert [s["caption"] for s in few] == [world[i]["caption"] for i in (2, 3, 4)]
    assert [s["caption"] for s in world.take(2, start=3)] == [world[3]["caption"], world[4]["caption"]]
    assert next(iter(world))["caption"] == world[0]["caption"]
    assert world[np.int64(4)]["caption"] == world[4]["caption"]


@pytest.mark.parametrize("kwargs, message", [
    ({"image_size": 8}, "image_size=8 is out of range"),
    ({"image_size": 1000}, "use 16..512"),
    ({"image_size": "64"}, "must be an int"),
    ({"seed": -1}, "use a seed >= 0"),
    ({"max_objects": 0}, "min_objects <= max_objects"),
    ({"max_objects": 9}, "<= 8"),
    ({"min_objects": 3, "max_objects": 2}, "min_objects=3, max_objects=2"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(InputError, match=re.escape(message)):
        ShapesWorld(**kwargs)


def test_bad_index(world):
    for bad in (-1, 1.5, "3", True):
        with pytest.raises(InputError, match="index must be an int >= 0"):
            world[bad]
    with pytest.raises(InputError, match="non-negative start and stop"):
        world[3:]


def test_crowded_scene_is_a_clear_error():
    w = ShapesWorld(16, seed=0, min_objects=8, max_objects=8)
    with pytest.raises(DataError, match="lower min_objects or raise image_size"):
        w[0]


def test_shapes_texts():
    texts = list(shapes_texts(5, seed=0))
    w = ShapesWorld(64, seed=0)
    expected = []
    for i in range(5):
        s = w[i]
        expected += [s["caption"]] + [t for qa in s["qa"] for t in qa] + [e for e, _ in s["refexps"]]
    assert texts == expected


# ------------------------------------------------------------------------------ preview / CLI
def test_write_preview(tmp_path, capsys):
    info = write_preview(n=3, out=tmp_path / "p", seed=5, image_size=32, max_objects=3)
    out = tmp_path / "p"
    assert (out / "grid.png").is_file() and info["n"] == 3
    records = [json.loads(line) for line in (out / "annotations.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == [0, 1, 2] and all(r["seed"] == 5 for r in records)
    w = ShapesWorld(32, seed=5, max_objects=3)
    for r in records:
        s = w[r["index"]]
        img = Image.open(out / r["image"])
        assert img.tobytes() == s["image"].tobytes()
        assert r["caption"] == s["caption"] and r["label"] == s["label"]
        assert [o["box"] for o in r["objects"]] == [list(o["box"]) for o in s["objects"]]
        assert all("mask" not in o for o in r["objects"])
    assert "grid.png" in capsys.readouterr().out


@pytest.mark.parametrize("kwargs, message", [
    ({"n": 0}, "--n must be a positive number"),
    ({"n": -3}, "--n must be a positive number"),
    ({"image_size": 8}, "--image-size must be 16..512"),
    ({"image_size": 600}, "--image-size must be 16..512"),
])
def test_write_preview_bad_arguments(tmp_path, kwargs, message):
    args = {"n": 2, "out": tmp_path / "x", **kwargs}
    with pytest.raises(InputError, match=re.escape(message)):
        write_preview(**args)
    assert isinstance(InputError("x"), UnioError)


def test_cli_end_to_end(tmp_path):
    out = tmp_path / "preview"
    run = subprocess.run([sys.executable, "-m", "unio", "shapes", "--n", "4", "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "grid.png" in run.stdout
    assert (out / "grid.png").is_file()
    assert len((out / "annotations.jsonl").read_text().splitlines()) == 4
    assert sorted(p.name for p in (out / "images").iterdir()) == ["0000.png", "0001.png", "0002.png", "0003.png"]
    bad = subprocess.run([sys.executable, "-m", "unio", "shapes", "--n", "0", "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert "--n must be a positive number" in bad.stderr and "Traceback" not in bad.stderr


def test_text_corpus_with_prompts(tmp_path):
    prompts = tmp_path / "p.yaml"
    prompts.write_text('ground:\n  canonical: "Where is {expression}?"\n  paraphrases: ["Find {expression} now."]\n')
    path = tmp_path / "corpus.txt"
    lines = write_text_corpus(path, n=3, seed=0, prompt_files=[prompts], prompt_repeats=2)
    text = path.read_text().splitlines()
    assert len(text) == lines == len(list(shapes_texts(3, seed=0))) + 4
    assert text[-2:] == ["Where is ?", "Find now."]
    with pytest.raises(InputError, match="positive number of samples"):
        write_text_corpus(path, n=0)
    with pytest.raises(DataError, match="cannot read prompt file"):
        write_text_corpus(path, n=1, prompt_files=[tmp_path / "missing.yaml"])


def test_cli_writes_text_corpus(tmp_path):
    path = tmp_path / "c.txt"
    run = subprocess.run([sys.executable, "-m", "unio", "shapes", "--n", "2", "--texts", str(path)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert path.read_text().splitlines() == list(shapes_texts(2, seed=0))


def test_shipped_text_tokenizer_fits_the_language():
    from unio.resources import data_path
    from unio.tokenizers.text import TextTokenizer

    tok = TextTokenizer.load(data_path("tokenizers", "shapes", "text.model"))
    texts = list(shapes_texts(30, seed=9))
    words = {w for t in texts for w in re.findall(r"[a-z]+", t)}
    # The world's words are whole pieces (a rare few in two): retrain it if the wording changes.
    assert max(len(tok.encode(w)) for w in words) <= 2
    assert all(tok.decode(tok.encode(t)) == t for t in texts)
