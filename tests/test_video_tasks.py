"""Clips of the shapes world and the video tasks: every action is read back from the rendered frames
(masks checked against the pixels, then centroids, areas, presence and colours), and video_classify /
video_caption build, parse, score and run on clips of any length."""
import json
import re

import numpy as np
import pytest
from PIL import Image

import unio
from unio.cli import main as cli
from unio.data.shapes import COLORS, shapes_classes
from unio.data.shapes_clips import ACTIONS, MOVES, ShapesClips, ShapesClipsSource
from unio.data.specs import open_data
from unio.errors import InputError
from unio.tasks import Label, TaskContext
from unio.tasks.video import VideoCaption, VideoClassify
from conftest import shipped_tokenizers, write_micro_export

N = 90
S = 64
CLASSIFY = unio.tasks.get_task(VideoClassify.name)
CAPTION = unio.tasks.get_task(VideoCaption.name)


@pytest.fixture(scope="module")
def ctx():
    return TaskContext.from_dir(shipped_tokenizers(), image_size=64, patch_size=8, classes=shapes_classes())


@pytest.fixture(scope="module")
def clips():
    world = ShapesClips(S, seed=0, frames=4)
    return [world[i] for i in range(N)]


# ---------------------------------------------------------------------------- the data, from the pixels
def check_masks_against_pixels(clip):
    """Each mask is painted its object's colour, objects never touch, and every other pixel is the
    empty background: the same along a row, the same in every frame, none of the objects' colours."""
    background = None
    for frame, objects in zip(clip["images"], clip["objects"]):
        rgb = np.asarray(frame).astype(int)
        covered = np.zeros((S, S), bool)
        for o in objects:
            assert (rgb[o["mask"]] == COLORS[o["color"]]).all()
            grown = np.zeros((S + 2, S + 2), bool)  # the mask grown by a pixel: nothing else may be there
            for dy in (0, 1, 2):
                for dx in (0, 1, 2):
                    grown[dy:dy + S, dx:dx + S] |= o["mask"]
            assert not (grown[1:-1, 1:-1] & covered).any()
            covered |= o["mask"]
            ys, xs = np.nonzero(o["mask"])
            assert o["box"] == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            assert o["label"] == f"{o['size']} {o['color']} {o['shape']}"
        rows = np.where(covered[..., None], -1, rgb)
        for y in range(S):
            row = rows[y][~covered[y]]
            assert (row == row[0]).all() and tuple(row[0]) not in COLORS.values()
            if background is not None and len(row):
                assert (row[0] == background[y]).all()
        if background is None:
            background = {y: rows[y][~covered[y]][0] for y in range(S) if (~covered[y]).any()}
        background = {**background, **{y: rows[y][~covered[y]][0] for y in range(S) if (~covered[y]).any()}}


def track(clip, k):
    """Per frame, object ``k``'s dict or None."""
    return [next((o for o in objs if o["id"] == k), None) for objs in clip["objects"]]


def centroid(o):
    ys, xs = np.nonzero(o["mask"])
    return xs.mean(), ys.mean()


def test_schema(clips):
    for c in clips:
        assert set(c) == {"images", "action", "caption", "objects", "subject"}
        assert len(c["images"]) == 4 and all(isinstance(f, Image.Image) and f.size == (S, S) for f in c["images"])
        assert c["action"] in ACTIONS and len(c["objects"]) == 4
        ids = {o["id"] for objs in c["objects"] for o in objs}
        assert 1 <= len(ids) <= 3 and c["subject"] in ids
        for objs in c["objects"]:  # every name names one object in every frame
            names = [(o["color"], o["shape"]) for o in objs]
            assert len(set(names)) == len(names)
    assert {c["action"] for c in clips} == set(ACTIONS)


def test_every_action_is_seen_in_the_frames(clips):
    for c in clips:
        check_masks_against_pixels(c)
        mine = track(c, c["subject"])
        seen = [o for o in mine if o is not None]
        action = c["action"]
        if action in MOVES:
            dx, dy = MOVES[action]
            xy = np.array([centroid(o) for o in mine])
            step = np.diff(xy, axis=0)
            travel = xy[-1] - xy[0]
            along, across = (travel[0] * dx, travel[1]) if dx else (travel[1] * dy, travel[0])
            assert along >= S / 10 and abs(across) < 1e-9, (action, travel)
            assert ((step[:, 0] * dx + step[:, 1] * dy) > 0).all()  # it moves in every frame
            assert len({int(o["mask"].sum()) for o in mine}) == 1
        elif action in ("grows", "shrinks"):
            areas = [int(o["mask"].sum()) for o in mine]
            first, last = (areas[0], areas[-1]) if action == "grows" else (areas[-1], areas[0])
            assert last >= 2 * first and (mine[0]["size"], mine[-1]["size"]) == (
                ("small", "large") if action == "grows" else ("large", "small"))
            assert np.allclose(centroid(mine[0]), centroid(mine[-1]), atol=S / 20)  # it grows where it is
        elif action in ("appears", "disappears"):
            present = [o is not None for o in mine]
            if action == "disappears":
                present = present[::-1]
            assert not present[0] and present[-1] and present == sorted(present)  # once there, it stays
        else:
            assert action == "changes color"
            assert mine[0]["color"] != mine[-1]["color"] and len({o["color"] for o in mine}) == 2
            assert all(np.array_equal(o["mask"], mine[0]["mask"]) for o in mine)
        for k in {o["id"] for objs in c["objects"] for o in objs} - {c["subject"]}:  # the others stay still
            others = track(c, k)
            assert all(o is not None and np.array_equal(o["mask"], others[0]["mask"]) and
                       o["color"] == others[0]["color"] for o in others)
        first = seen[0]
        words = f"turns {seen[-1]['color']}" if action == "changes color" else action
        assert c["caption"] == f"the {first['color']} {first['shape']} {words}."


def test_deterministic_and_frames_option(clips):
    again = ShapesClips(S, seed=0, frames=4)
    for i in (0, 11, 50):
        c = again[i]
        assert (c["action"], c["caption"]) == (clips[i]["action"], clips[i]["caption"])
        assert all(a.tobytes() == b.tobytes() for a, b in zip(c["images"], clips[i]["images"]))
    long = ShapesClips(96, seed=3, frames=7)
    for i in range(6):
        c = long[i]
        assert len(c["images"]) == 7 and c["images"][0].size == (96, 96)
    assert [ShapesClips(seed=1)[i]["caption"] for i in range(6)] != [c["caption"] for c in clips[:6]]
    assert list(ShapesClips(seed=0).texts(5))[len(ACTIONS):] == [c["caption"] for c in clips[:5]]


@pytest.mark.parametrize("kwargs, message", [
    ({"frames": 1}, "frames=1"), ({"frames": 17}, "frames=17"), ({"image_size": 16}, "image_size=16"),
    ({"max_objects": 4}, "max_objects"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(InputError, match=re.escape(message)):
        ShapesClips(**kwargs)


def test_source_and_spec():
    source, entry = open_data("shapes-clips:2,frames=5")
    assert entry == {"source": "shapes-clips", "seed": 2, "frames": 5} and isinstance(source, ShapesClipsSource)
    assert len(source[0]["images"]) == 5 and source.classes == [] and source.actions == list(ACTIONS)
    assert set(ACTIONS) <= set(source.texts(3))


# ---------------------------------------------------------------------------- the tasks
@pytest.mark.parametrize("frames", [2, 4, 6])
def test_round_trips_on_any_number_of_frames(ctx, frames):
    clip = ShapesClips(S, seed=4, frames=frames)[1]
    ex = CLASSIFY.build(clip, ctx)
    assert len(ex.images) == frames and ex.meta["frames"] == frames and ex.meta["label_set"] == list(ACTIONS)
    got = CLASSIFY.parse(ex.labels, ctx, ex.info, logprobs=[0.0] * len(ex.labels))
    assert isinstance(got, Label) and got == clip["action"] and got.score == 1.0
    assert CLASSIFY.metric([got], [ex]) == {"accuracy": 1.0}
    ex = CAPTION.build(clip, ctx)
    assert len(ex.images) == frames and CAPTION.parse(ex.labels, ctx, ex.info) == clip["caption"]
    assert CAPTION.metric([clip["caption"]], [ex])["exact_match"] == 1.0


def test_label_sets(ctx, clips):
    assert CLASSIFY.actions(ctx) == list(ACTIONS)
    with_actions = TaskContext(ctx.vocab, ctx.text, ctx.locations, None, ctx.prompts, 64, 8,
                               classes={**ctx.classes, "action": ["moves left", "grows"]})
    assert CLASSIFY.actions(with_actions) == ["moves left", "grows"]
    ex = CLASSIFY.build(clips[0], ctx, labels="grows, shrinks")
    assert ex.meta["label_set"] == ["grows", "shrinks"]
    longest = max(len(ctx.encode_text(a)) for a in ACTIONS) + 1
    assert CLASSIFY.generation_kwargs(ctx) == {"max_new_tokens": longest}
    assert CLASSIFY.generation_kwargs(ctx, max_new_tokens=3) == {"max_new_tokens": 3}
    CLASSIFY.before_run(ctx, {})  # no class list needed
    assert CLASSIFY.check_options({"frames": 8}) == {"frames": 8}
    with pytest.raises(InputError, match="frames"):
        CAPTION.check_options({"frames": 0})


def test_bad_frames(ctx, clips):
    frames = clips[0]["images"]
    with pytest.raises(InputError, match="frames of a clip, got none"):
        CLASSIFY.build({"images": [], "action": "grows"}, ctx)
    with pytest.raises(InputError, match="share one size"):
        CAPTION.build({"images": [frames[0], frames[1].resize((32, 32))], "caption": "x"}, ctx)
    assert not CLASSIFY.can_build({"image": frames[0], "action": "grows"})
    assert not CAPTION.can_build({"images": frames})
    assert len(CLASSIFY.build({"images": frames[:1]}, ctx).images) == 1  # one frame is a clip too


def test_parse_never_raises(ctx):
    rng = np.random.default_rng(1)
    for _ in range(400):
        ids = rng.integers(-3, ctx.vocab.size + 3, int(rng.integers(0, 30))).tolist()
        lp = rng.normal(-1, 1, len(ids)).tolist() if rng.random() < 0.5 else None
        assert isinstance(CLASSIFY.parse(ids, ctx, None, logprobs=lp), Label)
        assert isinstance(CAPTION.parse(ids, ctx, None), str)


def test_metrics_by_hand(ctx, clips):
    examples = [CLASSIFY.build({"images": clips[0]["images"], "action": a}, ctx)
                for a in ("grows", "appears", "moves up", "shrinks")]
    preds = [Label("grows", 0.9), Label("appears", 0.4), Label("moves down", 0.5), Label("grows", 0.2)]
    assert CLASSIFY.metric(preds, examples) == {"accuracy": 0.5}
    rec = CLASSIFY.example_record(preds[2], examples[2], clips[0])
    assert rec["correct"] is False and rec["truth"] == "moves up" and CLASSIFY.means == {"accuracy": "correct"}
    caps = [CAPTION.build({"images": clips[0]["images"], "caption": c}, ctx)
            for c in ("the red circle grows.", "the blue star moves left.")]
    m = CAPTION.metric(["the red circle grows.", "the blue star moves right."], caps)
    assert m["exact_match"] == 0.5 and 0 < m["bleu4"] < 1 and set(m) == {"bleu4", "cider", "exact_match"}


def test_panels_are_strips(ctx, clips):
    ex = CLASSIFY.build(clips[0], ctx)
    (strip, said), = CLASSIFY.panels(ex.image, Label(clips[0]["action"], 1.0), example=ex, scale=2)
    assert strip.width >= 4 * 128 and strip.height >= 128 and "truth" in said
    ex = CAPTION.build(clips[0], ctx)
    (strip, said), = CAPTION.panels(list(clips[0]["images"]), "the red circle grows.")
    assert strip.width >= 4 * 64 and said == "the red circle grows."


# ---------------------------------------------------------------------------- through a model
@pytest.fixture(scope="module")
def clip_export(tmp_path_factory):
    return write_micro_export(tmp_path_factory.mktemp("clips") / "model", shipped_tokenizers(), max_images=4)


def test_pipeline_and_eval(clip_export, clips, tmp_path):
    pipe = unio.load(clip_export, device="cpu")
    got = pipe.run(VideoClassify.name, clips[0]["images"])
    assert isinstance(got, Label) and got in ACTIONS
    assert isinstance(pipe.run(VideoCaption.name, clips[0]["images"], max_new_tokens=4), str)
    both = pipe.run(VideoClassify.name, [clips[1]["images"], clips[2]["images"]], labels=["grows", "shrinks"])
    assert len(both) == 2 and all(g in ("grows", "shrinks") for g in both)
    out = tmp_path / "m.json"
    assert cli(["eval", "--model", str(clip_export), "--data", "shapes-clips:1", "--tasks",
                f"{VideoClassify.name},{VideoCaption.name}", "--n", "3", "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics[VideoClassify.name]["n"] == 3 and 0 <= metrics[VideoClassify.name]["accuracy"] <= 1
    assert 0 <= metrics[VideoCaption.name]["exact_match"] <= 1
