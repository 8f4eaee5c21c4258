"""Visual entailment: the shapes world's hypotheses (each label checked against its scene by a
checker written independently of the generator, three labels balanced) and the entail task
(build -> parse, constrained decoding, parse on random ids, metrics on hand-made cases)."""
import re
from collections import Counter

import numpy as np
import pytest
import torch

from unio.data.shapes import ShapesWorld, shapes_classes
from unio.errors import DataError, InputError, TaskError
from unio.tasks import Label, TaskContext, get_task
from unio.tasks.entail import LABELS, Entail
from conftest import shipped_tokenizers

ENT, NEU, CON = "entailment", "neutral", "contradiction"
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
PLURAL = {"circles": "circle", "squares": "square", "triangles": "triangle", "diamonds": "diamond",
          "crosses": "cross", "stars": "star"}
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


@pytest.fixture(scope="module")
def ctx():
    return TaskContext.from_dir(shipped_tokenizers(), image_size=64, patch_size=8, classes=shapes_classes())


def worlds():
    """Scenes of every crowding: the default world, a crowded one, a small and a large picture."""
    yield ShapesWorld(64, seed=11), 150
    yield ShapesWorld(96, seed=12, max_objects=8), 80
    yield ShapesWorld(32, seed=13, max_objects=2), 60


# ---------------------------------------------------------------------------- the independent checker
def holds(a, b, word, size) -> bool | None:
    """True if ``a`` is clearly ``word`` ``b`` (centres of the boxes, a margin of a tenth of the
    image), False if clearly the opposite, None if the picture leaves it unclear."""
    m = 0.1 * size
    (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) = a["box"], b["box"]
    ax, ay, bx, by = (ax1 + ax2) / 2, (ay1 + ay2) / 2, (bx1 + bx2) / 2, (by1 + by2) / 2
    d = {"left of": bx - ax, "right of": ax - bx, "above": by - ay, "below": ay - by}[word]
    return True if d > m else False if d < -m else None


def truth(text: str, objects: list, size: int):
    """What the scene says of ``text``: True, False, "neutral" (not depicted), or None (unclear)."""
    by_name = {f"{o['color']} {o['shape']}": o for o in objects}
    shapes = Counter(o["shape"] for o in objects)
    if m := re.fullmatch(r"there is one object|there are (\w+) objects", text):
        return len(objects) == (WORDS.index(m.group(1)) if m.group(1) else 1)
    if m := re.fullmatch(r"there are no (\w+)", text):
        return shapes[PLURAL[m.group(1)]] == 0
    if m := re.fullmatch(r"there is one (\w+)", text):
        return shapes[m.group(1)] == 1
    if m := re.fullmatch(r"there are (\w+) (\w+)", text):
        return shapes[PLURAL[m.group(2)]] == WORDS.index(m.group(1))
    if m := re.fullmatch(r"no object is (\w+)", text):
        return all(o["color"] != m.group(1) for o in objects)
    if m := re.fullmatch(r"the picture shows an? (\w+ \w+)", text):
        return m.group(1) in by_name
    if m := re.fullmatch(r"the (\w+ \w+) is (small|large)", text):
        return by_name[m.group(1)]["size"] == m.group(2)
    if m := re.fullmatch(r"the (\w+ \w+) is (left of|right of|above|below) the (\w+ \w+)", text):
        return holds(by_name[m.group(1)], by_name[m.group(3)], m.group(2), size)
    if m := re.fullmatch(r"there is an? (\w+) object (left of|right of|above|below) an? (\w+)", text):
        said = [holds(a, b, m.group(2), size) for a in objects for b in objects
                if a is not b and a["color"] == m.group(1) and b["shape"] == m.group(3)]
        assert said, text  # the claim is about objects of the scene
        return True if any(s is True for s in said) else False if all(s is False for s in said) else None
    neutral = [r"the (\w+ \w+) is made of (wood|metal|paper|glass|stone)", r"the back of the (\w+ \w+) is \w+",
               r"the (\w+ \w+) is about to move (left|right|up|down)", r"the (\w+ \w+) is heavier than the (\w+ \w+)",
               r"a moment ago the (\w+ \w+) was (?:left of|right of|above|below) the (\w+ \w+)"]
    for pattern in neutral:
        if m := re.fullmatch(pattern, text):
            named = [g for g in m.groups() if g and " " in g]
            assert all(n in by_name for n in named), text  # about objects that are there
            assert len(set(named)) == len(named), text
            return "neutral"
    raise AssertionError(f"a hypothesis in no known wording: {text!r}")


def test_every_label_agrees_with_its_scene():
    seen = Counter()
    for world, n in worlds():
        for i in range(n):
            s = world[i]
            for text, label in s["hypotheses"]:
                said = truth(text, s["objects"], world.image_size)
                want = {True: ENT, False: CON, "neutral": NEU}.get(said)
                assert want == label, (world, i, text, label, said)
                seen[(label, text.split()[1])] += 1
    # every wording of entailed and contradicted hypotheses is used for both labels
    for word in ("are", "is", "picture", "object"):
        assert seen[(ENT, word)] and seen[(CON, word)], word


def test_labels_balanced_and_order_drawn():
    positions = {w: Counter() for w in LABELS}
    for world, n in worlds():
        for i in range(n):
            hyps = world[i]["hypotheses"]
            assert Counter(label for _, label in hyps) == {ENT: 2, NEU: 2, CON: 2}
            assert len({t for t, _ in hyps}) == len(hyps)
            for k, (_, label) in enumerate(hyps):
                positions[label][k] += 1
    for label, where in positions.items():  # no label sits in one place of the list
        assert len(where) == 6 and max(where.values()) < 3 * min(where.values()), (label, where)


def test_hypotheses_are_seeded_and_leave_the_other_fields_alone(monkeypatch):
    import unio.data.shapes as shapes
    world = ShapesWorld(64, seed=5)
    a, b = world[3], ShapesWorld(64, seed=5)[3]
    assert a["hypotheses"] == b["hypotheses"] and a["absent"] == b["absent"]
    monkeypatch.setattr(shapes, "hypotheses", lambda *args, **kw: [])
    monkeypatch.setattr(shapes, "absent_expressions", lambda *args, **kw: [])
    c = world[3]
    assert (c["caption"], c["qa"], c["refexps"], c["label"]) == (a["caption"], a["qa"], a["refexps"], a["label"])
    assert c["image"].tobytes() == a["image"].tobytes()


# ---------------------------------------------------------------------------- the task
def sample_with(hyps, seed=0):
    return {**ShapesWorld(64, seed=seed)[0], "hypotheses": hyps}


def step_allowed(proc, prefix, vocab):
    out = proc(torch.tensor([[vocab.bos_id] + list(prefix)]), torch.zeros(1, vocab.size))
    return torch.isfinite(out[0])


def test_build_parse_round_trip(ctx):
    task = get_task(Entail.name)
    for label in LABELS:
        ex = task.build(sample_with([("there is one object", label)]), ctx)
        assert ex.meta == {"hypothesis": "there is one object", "label": label}
        assert "there is one object" in ex.prompt and ex.labels[-1] == ctx.vocab.eos_id
        got = task.parse(ex.labels, ctx, ex.info, logprobs=[-0.1] * len(ex.labels))
        assert isinstance(got, Label) and got == label
        assert got.score == pytest.approx(np.exp(-0.1 * len(ex.labels)))
        v = ctx.vocab
        proc = task.logits_processors(ctx, ex)[0]
        for i in range(len(ex.labels)):  # the target is admitted step by step
            assert step_allowed(proc, ex.labels[:i], v)[ex.labels[i]]
    first = step_allowed(task.logits_processors(ctx)[0], [], ctx.vocab)
    assert int(first.sum()) <= 3 and not first[ctx.vocab.eos_id]
    assert not first[ctx.vocab.location_range[0]:].any()
    assert task.generation_kwargs(ctx)["max_new_tokens"] == max(len(ctx.encode_text(w)) for w in LABELS) + 1


def test_caller_hypothesis_and_bad_input(ctx):
    task = get_task(Entail.name)
    ex = task.build({"image": ShapesWorld(64)[0]["image"]}, ctx, hypothesis="  the red circle is small ")
    assert ex.meta == {"hypothesis": "the red circle is small", "label": None} and ex.labels == []
    with pytest.raises(InputError, match="non-empty hypothesis"):
        task.build({"image": ex.image}, ctx, hypothesis="  ")
    with pytest.raises(TaskError, match="hypothesis="):
        task.build({"image": ex.image}, ctx)
    with pytest.raises(DataError, match="label hypotheses"):
        task.build(sample_with([("there is one object", "maybe")]), ctx)
    with pytest.raises(DataError, match="as \\(text, label\\)"):
        task.build(sample_with(["there is one object"]), ctx)
    assert not task.can_build({"image": ex.image}) and task.can_build(sample_with([("x", ENT)]))


def test_parse_never_raises_on_random_ids(ctx):
    task = get_task(Entail.name)
    rng = np.random.default_rng(0)
    v = ctx.vocab
    for k in range(1500):
        n = int(rng.integers(0, 30))
        ids = rng.integers(-2, v.size + 3, n).tolist() if k % 2 else rng.integers(*v.text_range, n).tolist()
        if k % 3 == 0:
            ids = ids + [v.eos_id] + ids
        lp = rng.normal(-1, 1, len(ids)).tolist() if k % 5 else None
        got = task.parse(ids, ctx, None, logprobs=lp)
        assert isinstance(got, Label) and (np.isnan(got.score) or 0 <= got.score <= 1 or got.score > 0)


def test_pick_item_is_seeded():
    task = get_task(Entail.name)
    s = ShapesWorld(64, seed=2)[4]
    picks = [task.pick_item(s, np.random.default_rng(k))["hypotheses"] for k in range(40)]
    assert all(len(p) == 1 and tuple(p[0]) in map(tuple, s["hypotheses"]) for p in picks)
    assert picks[7] == task.pick_item(s, np.random.default_rng(7))["hypotheses"]
    assert len({p[0][0] for p in picks}) > 3


def test_metric_on_hand_made_cases(ctx):
    task = get_task(Entail.name)
    truths = [ENT, ENT, NEU, CON, CON, CON]
    preds = [ENT, NEU, NEU, CON, ENT, CON]
    examples = [task.build(sample_with([("there is one object", t)]), ctx) for t in truths]
    got = task.metric([Label(p, 0.5) for p in preds], examples)
    assert got == pytest.approx({"accuracy": 4 / 6, "accuracy_entailment": 1 / 2, "accuracy_neutral": 1.0,
                                 "accuracy_contradiction": 2 / 3})
    one = task.metric([Label(NEU)], examples[2:3])
    assert one["accuracy"] == 1.0 and np.isnan(one["accuracy_entailment"])
    rec = task.example_record(Label(NEU, 0.25), examples[0], None)
    assert rec == {"hypothesis": "there is one object", "prediction": NEU, "score": 0.25, "truth": ENT,
                   "correct": False, "correct_entailment": False, "correct_neutral": None,
                   "correct_contradiction": None}
    assert task.to_record(Label(CON, 0.75), {"hypothesis": "h"}, None, "x") == \
        {"hypothesis": "h", "label": CON, "score": 0.75}
    assert task.to_record(Label(CON), {"hypothesis": "h"}, None, "x")["score"] is None
    assert task.summary(Label(ENT), examples[0]) == (f"there is one object: {ENT}", ENT)
    (picture, said), = task.panels(examples[0].image, Label(ENT, 0.9), examples[0], scale=2.0)
    assert picture.size == (128, 128) and "truth: entailment" in said
    assert task.means["accuracy_neutral"] == "correct_neutral"


def test_own_prompts_take_the_hypothesis(ctx):
    task = get_task(Entail.name)
    prompts = task.prompts_in(ctx)
    assert Entail.name in prompts and len(prompts.paraphrases(Entail.name)) >= 5
    assert prompts.placeholders(Entail.name) == set(Entail.placeholders)
    said = {task.build(sample_with([("there are no stars", ENT)]), ctx, np.random.default_rng(k)).prompt
            for k in range(60)}
    assert len(said) == 6 and all("there are no stars" in p for p in said)
