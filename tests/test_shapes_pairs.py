"""Image pairs of the shapes world and the reason task: every statement's label is recomputed from
the objects by an independent reader of the statements; reason builds, parses, scores and runs."""
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

import unio
from unio.cli import main as cli
from unio.data.language import NUMBER_WORDS
from unio.data.shapes import COLORS, PLURALS, SHAPES, SIZES, ShapesWorld, shapes_classes
from unio.data.shapes_pairs import ShapesPairs, ShapesPairsSource
from unio.data.specs import open_data
from unio.errors import DataError, InputError, TaskError
from unio.tasks import Label, TaskContext
from unio.tasks.constraints import TrieProcessor
from unio.tasks.reason import LABELS, Reason
from conftest import shipped_tokenizers, write_micro_export

N = 120
SINGULAR = {p: s for s, p in PLURALS.items()}
TASK = unio.tasks.get_task(Reason.name)


@pytest.fixture(scope="module")
def ctx():
    return TaskContext.from_dir(shipped_tokenizers(), image_size=64, patch_size=8, classes=shapes_classes())


@pytest.fixture(scope="module")
def pairs():
    world = ShapesPairs(64, seed=0)
    return [world[i] for i in range(N)]


# ---------------------------------------------------------------------------- an independent judge
def matches(phrase: str, obj: dict) -> bool:
    """Does an object fit a noun phrase ("red circles", "a large object", "star")?"""
    words = phrase.split()
    if words[0] in ("a", "an"):
        words = words[1:]
    *mods, noun = words
    ok = True if noun in ("object", "objects") else obj["shape"] == SINGULAR.get(noun, noun)
    assert noun in ("object", "objects") or SINGULAR.get(noun, noun) in SHAPES, phrase
    for m in mods:
        assert m in COLORS or m in SIZES, phrase
        ok = ok and (obj["color"] == m if m in COLORS else obj["size"] == m)
    return ok


def judge(text: str, left: list, right: list) -> bool:
    """The truth of a statement, read with regular expressions and counted from the objects."""
    side = {"left": left, "right": right}
    count = lambda phrase, objs: sum(matches(phrase, o) for o in objs)  # noqa: E731
    if m := re.fullmatch(r"the (left|right) image has more (.+) than the (left|right) image", text):
        assert m[1] != m[3]
        return count(m[2], side[m[1]]) > count(m[2], side[m[3]])
    if m := re.fullmatch(r"the two images show the same number of (.+)", text):
        return count(m[1], left) == count(m[1], right)
    if m := re.fullmatch(r"the (left|right) image has exactly (\w+) (.+)", text):
        n = NUMBER_WORDS.index(m[2])
        assert (n == 1) == (m[3].split()[-1] in ("object", *SHAPES)), text  # "one circle", "two circles"
        return count(m[3], side[m[1]]) == n
    if m := re.fullmatch(r"both images contain (.+)", text):
        return count(m[1], left) > 0 and count(m[1], right) > 0
    if m := re.fullmatch(r"only the (left|right) image has (.+)", text):
        other = "right" if m[1] == "left" else "left"
        return count(m[2], side[m[1]]) > 0 and count(m[2], side[other]) == 0
    if m := re.fullmatch(r"neither image has (.+)", text):
        return count(m[1], left) == 0 and count(m[1], right) == 0
    if m := re.fullmatch(r"at least one image has (.+)", text):
        return count(m[1], left) + count(m[1], right) > 0
    raise AssertionError(f"a statement no template reads: {text!r}")


# ---------------------------------------------------------------------------- the data
def test_schema_and_balance(pairs):
    for s in pairs:
        assert set(s) == {"images", "objects", "statements"}
        assert len(s["images"]) == 2 and all(isinstance(im, Image.Image) and im.size == (64, 64)
                                             for im in s["images"])
        assert len(s["objects"]) == 2 and all(1 <= len(objs) <= 4 for objs in s["objects"])
        labels = [label for _, label in s["statements"]]
        assert set(labels) <= set(LABELS) and labels.count("true") == labels.count("false") >= 1
        texts = [t for t, _ in s["statements"]]
        assert len(set(texts)) == len(texts)
    assert np.mean([len(s["statements"]) for s in pairs]) > 5  # 3 + 3 nearly always


def test_every_label_is_true_of_the_objects(pairs):
    for s in pairs:
        left, right = s["objects"]
        for text, label in s["statements"]:
            assert judge(text, left, right) == (label == "true"), (text, label)


WORDINGS = {  # a statement's wording: its text with the counted or sought objects left out
    "more": r"the (left|right) image has more .+ than the (left|right) image", "same": r"the two images show .+",
    "exactly": r"the (left|right) image has exactly .+", "both": r"both images contain .+",
    "only": r"only the (left|right) image has .+", "neither": r"neither image has .+",
    "at least": r"at least one image has .+"}


def wording(text: str) -> str:
    (name,) = [k for k, rx in WORDINGS.items() if re.fullmatch(rx, text)]
    return name + (" " + text.split()[1] if name == "more" else "") + (" " + text.split()[2] if name == "only" else "")


def test_every_wording_is_as_often_true_as_false(pairs):
    """Statements come in (true, false) pairs of one wording: a wording does not give the answer away."""
    seen = set()
    for s in pairs:
        st = s["statements"]
        for (a, la), (b, lb) in zip(st[::2], st[1::2]):
            assert (la, lb) == ("true", "false") and wording(a) == wording(b), (a, b)
            seen.add(next(k for k in WORDINGS if wording(a).startswith(k)))
    assert seen == set(WORDINGS)


def test_pairs_are_shapes_world_scenes(pairs):
    world = ShapesWorld(64, seed=0)
    for i in (0, 7):
        for k in (0, 1):
            scene = world[2 * i + k]
            assert np.array_equal(np.asarray(pairs[i]["images"][k]), np.asarray(scene["image"]))
            assert [o["label"] for o in pairs[i]["objects"][k]] == [o["label"] for o in scene["objects"]]


def test_deterministic(pairs):
    again = ShapesPairs(64, seed=0)
    for i in (0, 5, 33):
        s = again[i]
        assert s["statements"] == pairs[i]["statements"]
        assert all(a.tobytes() == b.tobytes() for a, b in zip(s["images"], pairs[i]["images"]))
    other = ShapesPairs(64, seed=1)
    assert [other[i]["statements"] for i in range(5)] != [pairs[i]["statements"] for i in range(5)]
    assert len(ShapesPairs(seed=2, statements=1)[3]["statements"]) == 2


@pytest.mark.parametrize("kwargs, message", [
    ({"statements": 0}, "statements=0"), ({"image_size": 8}, "image_size=8"), ({"seed": -1}, "seed=-1"),
    ({"max_objects": 9}, "max_objects"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(InputError, match=re.escape(message)):
        ShapesPairs(**kwargs)


def test_source_and_spec():
    source, entry = open_data("shapes-pairs:3,statements=2")
    assert entry == {"source": "shapes-pairs", "seed": 3, "statements": 2} and isinstance(source, ShapesPairsSource)
    assert source[0]["statements"] == ShapesPairs(seed=3, statements=2)[0]["statements"]
    assert source.classes == [] and source.object_labels == []
    texts = source.texts(4)
    assert {"true", "false"} <= set(texts) and all(t for t in texts)
    with pytest.raises(DataError, match="does not take"):
        open_data({"source": "shapes-pairs", "frames": 3})


# ---------------------------------------------------------------------------- the task
def test_build_parse_round_trip(ctx, pairs):
    for s in pairs[:6]:
        for k, (text, label) in enumerate(s["statements"]):
            ex = TASK.build({**s, "statements": [s["statements"][k]]}, ctx)
            assert len(ex.images) == 2 and ex.image is ex.images[0] and ex.images[1].size == (64, 64)
            assert text in ex.prompt and ex.meta["statement"] == text and ex.meta["label"] == label
            got = TASK.parse(ex.labels, ctx, ex.info, logprobs=[0.0] * len(ex.labels))
            assert isinstance(got, Label) and got == label and got.score == 1.0
            assert TASK.metric([got], [ex])["accuracy"] == 1.0


def test_the_trie_admits_exactly_true_and_false(ctx, pairs):
    ex = TASK.build(pairs[0], ctx)
    proc = TASK.logits_processors(ctx, ex)[0]
    assert isinstance(proc, TrieProcessor)
    v = ctx.vocab

    def allowed(prefix):
        out = proc(torch.tensor([[v.bos_id] + list(prefix)]), torch.zeros(1, v.size))
        return set(torch.nonzero(torch.isfinite(out[0])).flatten().tolist())

    for word in LABELS:
        seq = ctx.encode_text(word) + [v.eos_id]
        assert all(seq[i] in allowed(seq[:i]) for i in range(len(seq)))
    assert allowed([]) == {ctx.encode_text("true")[0], ctx.encode_text("false")[0]}
    longest = max(len(ctx.encode_text(w)) for w in LABELS) + 1
    assert TASK.generation_kwargs(ctx) == {"max_new_tokens": longest}


def test_inputs_and_errors(ctx, pairs):
    s = pairs[1]
    ex = TASK.build({"images": s["images"]}, ctx, statement="  both images contain a star ")
    assert ex.labels == [] and ex.meta["statement"] == "both images contain a star"
    with pytest.raises(InputError, match="reads 2 images per item, got 1"):
        TASK.build({"images": s["images"][:1], "statements": s["statements"]}, ctx)
    with pytest.raises(InputError, match="got 3"):
        TASK.build({"images": s["images"] + s["images"][:1]}, ctx, statement="x")
    with pytest.raises(InputError, match="got 1"):
        TASK.build({"image": s["images"][0]}, ctx, statement="x")
    with pytest.raises(TaskError, match="statement="):
        TASK.build({"images": s["images"]}, ctx)
    with pytest.raises(InputError, match="non-empty statement"):
        TASK.build({"images": s["images"]}, ctx, statement="  ")
    with pytest.raises(DataError, match="labelled 'maybe'"):
        TASK.build({"images": s["images"], "statements": [("a star", "maybe")]}, ctx)
    assert TASK.build({"images": s["images"], "statements": [("a star", True)]}, ctx).meta["label"] == "true"
    assert not TASK.can_build({"image": s["images"][0], "statements": s["statements"]})
    assert TASK.can_build(s) and not TASK.can_build({**s, "statements": []})


def test_pick_item_is_seeded(pairs):
    s = pairs[2]
    a = TASK.pick_item(s, np.random.default_rng(5))["statements"]
    assert len(a) == 1 and a == TASK.pick_item(s, np.random.default_rng(5))["statements"]
    assert len({TASK.pick_item(s, np.random.default_rng(k))["statements"][0] for k in range(40)}) > 1


def test_parse_never_raises(ctx):
    rng = np.random.default_rng(0)
    for _ in range(500):
        ids = rng.integers(-3, ctx.vocab.size + 3, int(rng.integers(0, 12))).tolist()
        lp = rng.normal(-1, 1, len(ids)).tolist() if rng.random() < 0.5 else None
        assert isinstance(TASK.parse(ids, ctx, None, logprobs=lp), Label)


def test_metric_by_hand(ctx, pairs):
    s = pairs[0]
    truths = ["true", "true", "false", "false", "false"]
    examples = [TASK.build({"images": s["images"], "statements": [("x", t)]}, ctx) for t in truths]
    preds = [Label("true", 0.9), Label("false", 0.6), Label("false", 0.7), Label("true", 0.5), Label("false", 0.8)]
    m = TASK.metric(preds, examples)
    assert m == {"accuracy": pytest.approx(3 / 5), "accuracy_true": 0.5, "accuracy_false": pytest.approx(2 / 3)}
    rec = TASK.example_record(preds[1], examples[1], s)
    assert rec["correct"] is False and rec["correct_true"] is False and rec["correct_false"] is None
    assert rec["truth"] == "true" and rec["prediction"] == "false" and rec["score"] == pytest.approx(0.6)
    assert np.isnan(TASK.metric(preds[:1], examples[:1])["accuracy_false"])
    assert TASK.to_record(preds[0], {"statement": "x"}, None, "a") == {"statement": "x", "label": "true",
                                                                       "score": 0.9}
    assert TASK.summary(preds[0], examples[0]) == ("x: true", "true")


def test_panels_show_both_images(ctx, pairs):
    ex = TASK.build(pairs[0], ctx)
    (picture, caption), = TASK.panels(ex.image, Label("true", 0.8), example=ex, scale=2)
    assert picture.width >= 4 * 64 and picture.height >= 128 and "truth" in caption
    (alone, said), = TASK.panels(list(pairs[0]["images"]), Label("false", 0.1), inputs={"statement": "abc"})
    assert alone.width >= 128 and said == "abc: false"


# ---------------------------------------------------------------------------- through a model
@pytest.fixture(scope="module")
def pair_export(tmp_path_factory):
    return write_micro_export(tmp_path_factory.mktemp("pairs") / "model", shipped_tokenizers(), max_images=2)


def test_pipeline_and_eval(pair_export, pairs, tmp_path):
    pipe = unio.load(pair_export, device="cpu")
    left, right = pairs[0]["images"]
    got = pipe.run(Reason.name, [left, right], statement="both images contain a red object")
    assert isinstance(got, Label) and got in LABELS and 0 <= got.score <= 1
    many = pipe.run(Reason.name, [[left, right], [right, left]], statement=["neither image has a star", "x"])
    assert len(many) == 2 and all(g in LABELS for g in many)
    out, preds = tmp_path / "m.json", tmp_path / "p.jsonl"
    assert cli(["eval", "--model", str(pair_export), "--data", "shapes-pairs:1", "--tasks", Reason.name,
                "--n", "6", "--out", str(out), "--predictions", str(preds)]) == 0
    metrics = json.loads(out.read_text())[Reason.name]
    assert metrics["n"] == 6 and 0 <= metrics["accuracy"] <= 1
    records = [json.loads(line) for line in preds.read_text().splitlines()]
    world = ShapesPairs(seed=1)
    for r in records:
        assert (r["statement"], r["truth"]) in world[r["sample"]]["statements"]
