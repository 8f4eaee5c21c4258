"""The non-learned shapes judge: it reads the world's own pictures as their captions say, and it
catches what a wrong picture gets wrong (a missing object, a wrong colour, shape or size, an extra
object, a wrong relation or region); no reranker may call it."""
import numpy as np
import pytest
from PIL import Image, ImageFilter

from unio.data import shapes_judge
from unio.data.shapes import ShapesWorld
from unio.data.shapes_draw import COLORS, _stamp
from unio.data.shapes_judge import judge, judge_many, read_picture, read_text
from unio.errors import InputError


def draw(objects, side=64) -> Image.Image:
    """A picture in the world's style: (shape, colour, radius, cx, cy), painted in order."""
    t = (np.arange(side) + 0.5) / side
    top, bottom = np.array([232, 230, 224.0]), np.array([190, 188, 182.0])
    rows = np.rint(top[None] * (1 - t[:, None]) + bottom[None] * t[:, None])
    canvas = np.repeat(rows[:, None, :], side, axis=1).astype(np.uint8)
    for shape, color, r, cx, cy in objects:
        m = _stamp(shape, r)
        window = canvas[cy - r:cy + r + 1, cx - r:cx + r + 1]
        window[m] = COLORS[color]
    return Image.fromarray(canvas)


SCENE = [("circle", "red", 11, 18, 40), ("star", "blue", 6, 46, 20)]
TEXT = "a large red circle and a small blue star. the red circle is left of the blue star."


def test_the_worlds_own_pictures_pass():
    for side, seed, n in ((64, 11, 60), (96, 12, 15)):
        world = ShapesWorld(side, seed=seed)
        samples = [world[i] for i in range(n)]
        got = judge_many([s["image"] for s in samples], [s["caption"] for s in samples])
        assert got["consistency"] == 1.0, [(s["caption"], v) for s, v in zip(samples, got["verdicts"]) if not v.ok]
        assert got["extra_rate"] == 0.0


def test_a_slightly_soft_picture_still_reads():
    world = ShapesWorld(64, seed=13)
    samples = [world[i] for i in range(20)]
    soft = [s["image"].filter(ImageFilter.GaussianBlur(0.6)) for s in samples]
    assert judge_many(soft, [s["caption"] for s in samples])["consistency"] >= 0.95


def test_a_known_scene_reads_with_shapes_sizes_and_positions():
    seen = read_picture(draw(SCENE))
    assert [s.label for s in seen] == ["large red circle", "small blue star"]
    assert seen[0].radius == 11 and seen[0].center == (18, 40) and seen[0].fit == 1.0
    v = judge(draw(SCENE), TEXT)
    assert v.ok and (v.wanted, v.found, v.extra, v.relation_ok) == (2, 2, 0, True)


@pytest.mark.parametrize("scene, text, why", [
    ([SCENE[0]], TEXT, "missing object"),
    ([SCENE[0], ("star", "green", 6, 46, 20)], TEXT, "wrong colour"),
    ([SCENE[0], ("diamond", "blue", 6, 46, 20)], TEXT, "wrong shape"),
    ([SCENE[0], ("star", "blue", 11, 46, 20)], TEXT, "wrong size"),
    (SCENE + [("square", "yellow", 5, 50, 50)], TEXT, "extra object"),
    (SCENE, "a large red circle and a small blue star. the red circle is right of the blue star.", "relation"),
    ([SCENE[0]], "a large red circle in the top right.", "region"),
])
def test_wrong_pictures_fail(scene, text, why):
    v = judge(draw(scene), text)
    assert not v.ok, why
    if why == "extra object":
        assert v.found == 2 and v.extra == 1
    if why in ("relation", "region"):
        assert v.found == v.wanted and v.relation_ok is False


def test_an_occluded_object_is_still_read_and_a_split_one_is_one():
    # The red square stands in front of the blue circle and cuts it in two.
    scene = [("circle", "blue", 11, 32, 32), ("square", "red", 5, 32, 32)]
    assert sorted(s.label for s in read_picture(draw(scene))) == ["large blue circle", "small red square"]
    # A dark band (no colour of the world: something in front) cuts the circle in two.
    picture = np.asarray(draw([("circle", "blue", 11, 32, 32)])).copy()
    picture[:, 31:34] = (20, 20, 20)
    seen = read_picture(picture)
    assert [s.label for s in seen] == ["large blue circle"] and seen[0].center == (32, 32)


def test_texts_people_type_are_read():
    c = read_text("a small red star")
    assert c.objects == [("small", "red", "star")] and c.relation is None and c.region is None
    c = read_text("Two red circles and a square")
    assert c.objects == [(None, "red", "circle")] * 2 + [(None, None, "square")]
    c = read_text(TEXT)
    assert c.objects == [("large", "red", "circle"), ("small", "blue", "star")]
    assert c.relation == (("red", "circle"), "right of" if "right" in TEXT else "left of", ("blue", "star"))
    assert read_text("a small red star in the top left.").region == "in the top left"
    assert read_text("a photo of a cat") is None and judge(draw(SCENE), "a photo of a cat") is None
    # Fewer words than the world's captions give only what they say.
    assert judge(draw([SCENE[1]]), "a blue star").ok
    assert not judge(draw([SCENE[1]]), "a red star").ok


def test_bad_input():
    with pytest.raises(InputError, match="RGB"):
        read_picture(np.zeros((8, 8)))
    with pytest.raises(InputError, match="text"):
        read_text(None)


def test_no_reranker_calls_the_judge(micro_fast_export, monkeypatch):
    """Choosing among candidates must never read the judge that grades the choice."""
    import unio
    from unio.tasks import image_gen

    def refuse(*a, **k):
        raise AssertionError("a reranker called the judge")

    for module in (shapes_judge, image_gen):
        for name in ("judge", "judge_many", "read_picture", "read_text", "inpainted_as_asked"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, refuse)
    pipe = unio.load(micro_fast_export, device="cpu")
    for rerank in ("recaption", "caption", "pmi"):
        out = pipe.generate_image("a small red circle", candidates=2, rerank=rerank, seed=0)
        assert out.size[0] > 0
