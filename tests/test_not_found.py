""""Not there" for ground and segment: the shapes world's absent expressions name nothing, negatives
are built in training only, the answer "none" is decoded only for a model that says it learned it
(its class list ``not_found``), parses to None, and the not-found figures on hand-made cases."""
import numpy as np
import pytest
import torch

from unio.data.shapes import COLORS, SHAPES, SIZES, ShapesWorld, shapes_classes
from unio.errors import TaskError
from unio.tasks import Box, TaskContext, get_task
from unio.tasks.constraints import BoxesProcessor
from unio.tasks.dense import Segment
from unio.tasks.ground import ASK_ABSENT, NONE, NOT_FOUND, BoxOrAnswer, Ground, one_expression
from conftest import shipped_tokenizers


def context(not_found: bool) -> TaskContext:
    classes = {**shapes_classes(), **({NOT_FOUND: [NONE]} if not_found else {})}
    return TaskContext.from_dir(shipped_tokenizers(), image_size=64, patch_size=8, classes=classes)


@pytest.fixture(scope="module")
def plain():
    """A model's context that was trained without negatives (as shapes-demo)."""
    return context(False)


@pytest.fixture(scope="module")
def knows():
    """A model's context that says it was trained to answer "not there"."""
    return context(True)


@pytest.fixture(scope="module")
def sample():
    return ShapesWorld(64, seed=0)[3]


def step_allowed(proc, prefix, vocab):
    out = proc(torch.tensor([[vocab.bos_id] + list(prefix)]), torch.zeros(1, vocab.size))
    return torch.isfinite(out[0])


def admits(proc, seq, vocab) -> bool:
    return all(step_allowed(proc, seq[:i], vocab)[seq[i]] for i in range(len(seq)))


# ---------------------------------------------------------------------------- the data
def names(expression: str, objects: list) -> list:
    """The objects an expression of the absent grammar names (checked without the generator)."""
    words = expression.split()
    assert words[0] == "the" and 2 <= len(words) <= 4, expression
    said = words[1:]
    if said[-1] == "object":
        said = said[:-1]
    assert said and all(w in SIZES or w in COLORS or w in SHAPES for w in said), expression
    return [o for o in objects if all(w in (o["size"], o["color"], o["shape"]) for w in said)]


def test_absent_expressions_name_nothing():
    count = 0
    for world, n in ((ShapesWorld(64, seed=21), 200), (ShapesWorld(96, seed=22, max_objects=8), 80)):
        for i in range(n):
            s = world[i]
            absent = s["absent"]
            assert len(absent) == 3 and len(set(absent)) == 3
            refexps = {e for e, _ in s["refexps"]}
            for expression in absent:
                assert names(expression, s["objects"]) == [], (i, expression)
                assert expression not in refexps
                count += 1
            for expression, k in s["refexps"]:  # the checker itself: a name of the grammar names its object
                if len(expression.split()) <= 4 and not any(w in expression for w in ("most", "left", "right")):
                    assert s["objects"][k] in names(expression, s["objects"]), expression
    assert count == 840


# ---------------------------------------------------------------------------- building
def test_training_draws_negatives_inference_never(plain, knows, sample):
    task = get_task(Ground.name)
    rng = np.random.default_rng(0)
    built = [task.build(sample, plain, rng) for _ in range(600)]
    negatives = [e for e in built if e.meta.get("negative")]
    assert 0.10 < len(negatives) / len(built) < 0.20  # negative_rate 0.15
    for e in negatives:
        assert e.meta["expression"] in sample["absent"] and e.meta["box"] is None
        assert e.labels == plain.encode_text(NONE) + [plain.vocab.eos_id]
        assert e.meta["expression"] in e.prompt
        assert task.parse(e.labels, plain, e.info) is None  # the target reads back as "not there"
    for ctx in (plain, knows):  # rng=None: never a negative, whatever the model
        ex = task.build(sample, ctx)
        assert not ex.meta.get("negative") and len(ex.labels) == 5
        assert not task.build(sample, ctx, expression=sample["absent"][0]).meta.get("negative")
    without = {k: v for k, v in sample.items() if k != "absent"}
    assert not any(task.build(without, plain, np.random.default_rng(k)).meta.get("negative") for k in range(60))
    never = get_task(Ground.name, negative_rate=0.0)
    assert not any(never.build(sample, plain, np.random.default_rng(k)).meta.get("negative") for k in range(60))
    with pytest.raises(TaskError, match="negative_rate"):
        get_task(Ground.name, negative_rate=1.5)


def test_evaluation_asks_absent_only_where_the_model_says_not_found(plain, knows, sample):
    task = get_task(Ground.name)
    picks = [task.pick_item(sample, np.random.default_rng([7, i])) for i in range(400)]
    asked = [p for p in picks if p.get(ASK_ABSENT)]
    assert 0.14 < len(asked) / len(picks) < 0.26  # eval_negatives 0.2
    for i, p in enumerate(picks):  # the expression asked otherwise is drawn as before negatives existed
        assert p["refexps"] == one_expression(sample, np.random.default_rng([7, i]))["refexps"]
    p = asked[0]
    assert len(p["absent"]) == 1 and p["absent"][0] in sample["absent"]
    same, unasked = task.build(p, plain), task.build({**p, ASK_ABSENT: False}, plain)
    assert not same.meta.get("negative")  # trained without negatives: the positive, as ever
    assert (same.prompt, same.labels, same.meta) == (unasked.prompt, unasked.labels, unasked.meta)
    neg = task.build(p, knows)
    assert neg.meta == {"expression": p["absent"][0], "box": None, "negative": True}
    assert neg.labels == knows.encode_text(NONE) + [knows.vocab.eos_id]


# ---------------------------------------------------------------------------- decoding and parsing
def test_none_is_decoded_only_for_a_model_that_learned_it(plain, knows, sample):
    task = get_task(Ground.name)
    v = plain.vocab
    ex = task.build(sample, plain)
    old = task.logits_processors(plain, ex, batch=[ex])[0]
    assert type(old) is BoxesProcessor  # as before negatives existed
    assert task.generation_kwargs(plain)["max_new_tokens"] == 5
    none = plain.encode_text(NONE) + [v.eos_id]
    assert not admits(old, none, v) and admits(old, ex.labels, v)
    proc = task.logits_processors(knows, ex, batch=[ex])[0]
    assert isinstance(proc, BoxOrAnswer)
    assert admits(proc, none, v) and admits(proc, ex.labels, v)
    first = step_allowed(proc, [], v)
    assert not first[v.eos_id] and first[none[0]] and first[ex.labels[0]]
    assert int(first[slice(*v.text_range)].sum()) == 1  # only the first piece of "none"
    assert not step_allowed(proc, ex.labels[:1], v)[none[0]]  # no text inside a box
    after = step_allowed(proc, none[:-1], v)
    assert after.sum() == 1 and after[v.eos_id]
    assert task.generation_kwargs(knows)["max_new_tokens"] >= len(none)


def test_parse_box_score_and_records(plain, sample):
    task = get_task(Ground.name)
    ex = task.build(sample, plain)
    box = task.parse(ex.labels, plain, ex.info, logprobs=[-0.5] * 5)
    assert isinstance(box, Box) and box.score == pytest.approx(np.exp(-2.5))
    assert box.to_dict() == {"box": box.to_list()}  # the score is beside the box, not in its dict
    assert np.isnan(task.parse(ex.labels, plain, ex.info).score)
    none = plain.encode_text(NONE) + [plain.vocab.eos_id]
    assert task.parse(none, plain, ex.info, logprobs=[-0.1] * len(none)) is None
    rec = task.to_record(box, {"expression": "the red circle"}, None, "x")
    assert rec["found"] is True and rec["score"] == pytest.approx(np.exp(-2.5)) and len(rec["box"]) == 4
    assert task.to_record(None, {"expression": "the red cross"}, None, "x") == \
        {"expression": "the red cross", "box": None, "found": False, "score": None}


# ---------------------------------------------------------------------------- metrics
def test_ground_not_found_figures_on_hand_made_cases(plain, sample):
    task = get_task(Ground.name)
    pos = task.build(sample, plain)
    b = pos.meta["box"]
    neg = task.build({**sample, ASK_ABSENT: True, "absent": ["the red cross"]}, context(True))
    far = Box(b[0] + 30, b[1] + 30, b[2] + 30, b[3] + 30)
    examples = [pos, pos, pos, neg, neg]
    preds = [Box(*b), far, None, None, Box(*b)]
    got = task.metric(preds, examples)
    assert got["acc50"] == pytest.approx(1 / 3) and got["mean_iou"] == pytest.approx(1 / 3)
    assert got["not_found_precision"] == 0.5 and got["not_found_recall"] == 0.5 and got["negatives"] == 2
    for key in ("not_found_precision", "not_found_recall"):  # two examples each: bootstrap intervals
        assert got[f"{key}_ci95"][0] <= 0.5 <= got[f"{key}_ci95"][1]
    assert set(task.metric(preds[:3], examples[:3])) == {"acc50", "mean_iou"}  # no negatives: as before
    assert task.metric([None, None], [neg, neg])["not_found_recall"] == 1.0
    assert np.isnan(task.metric([Box(*b)], [neg])["not_found_precision"])
    records = [task.example_record(p, e, sample) for p, e in zip(preds, examples)]
    assert set(records[0]) == {"prediction", "truth", "expression", "iou", "hit50"}
    assert records[2]["none_correct"] is False and records[3]["none_correct"] is True
    assert records[3]["none_found"] is True and records[4]["none_found"] is False and records[4]["truth"] is None
    assert "none_correct" not in records[4] and "iou" not in records[3]
    found = [r["none_found"] for r in records if "none_found" in r]
    correct = [r["none_correct"] for r in records if "none_correct" in r]
    assert np.mean(found) == got["not_found_recall"] and np.mean(correct) == got["not_found_precision"]
    assert task.summary(None, neg) == ("the red cross (not there)", "none")
    assert "(not there)" in task.panels(neg.image, None, neg)[0][1]


def test_segment_negative_is_an_empty_mask(plain, knows, sample):
    task = get_task(Segment.name)
    rng = np.random.default_rng(3)
    negatives = [e for e in (task.build(sample, plain, rng) for _ in range(80)) if e.meta.get("negative")]
    assert negatives
    ex = negatives[0]
    assert ex.meta["expression"] in sample["absent"] and not ex.meta["mask"].any()
    assert ex.meta["mask"].shape == (64, 64) and len(ex.labels) == plain.image_codes + 1
    empty = task.parse(ex.labels, plain, ex.info)
    assert empty.shape == (64, 64) and not empty.any()  # the target decodes to "not there"
    for i in range(50):
        p = task.pick_item(sample, np.random.default_rng([1, i]))
        if p.get(ASK_ABSENT):
            break
    assert p.get(ASK_ABSENT) and not task.build(p, plain).meta.get("negative")
    neg = task.build(p, knows)
    pos = task.build(sample, plain)
    assert neg.meta["negative"] and not neg.meta["mask"].any()
    full, none = pos.meta["mask"], np.zeros_like(pos.meta["mask"])
    got = task.metric([full, none, none, full], [pos, pos, neg, neg])
    assert got["miou"] == 0.5 and got["not_found_precision"] == 0.5 and got["not_found_recall"] == 0.5
    assert task.metric([full], [pos]) == {"miou": 1.0}
    rec = task.example_record(none, neg, sample)
    assert rec["negative"] and rec["none_found"] and rec["none_correct"] and "iou" not in rec
    assert "iou" in task.example_record(full, pos, sample)
    assert task.summary(none, neg)[0].endswith("(not there)")


# ---------------------------------------------------------------------------- through evaluation
def test_evaluation_reports_not_found_for_a_model_that_learned_it(micro_fast_export):
    import unio
    from unio.evaluate import evaluate
    pipe = unio.load(micro_fast_export, device="cpu")
    before = evaluate(pipe, "shapes:3", tasks=[Ground.name], n=12, batch_size=6, progress=False)[Ground.name]
    assert set(before) == {"acc50", "mean_iou", "acc50_ci95", "mean_iou_ci95", "n", "seconds"}
    pipe.ctx.classes[NOT_FOUND] = [NONE]
    after, details = evaluate(pipe, "shapes:3", tasks=[Ground.name], n=12, batch_size=6, progress=False,
                              return_details=True)
    examples, _, preds = details[Ground.name]
    negatives = [e for e in examples if e.meta.get("negative")]
    assert after[Ground.name]["negatives"] == len(negatives) > 0
    assert 0 <= after[Ground.name]["not_found_recall"] <= 1
    assert all(p is None or isinstance(p, Box) for p in preds)
    answers = pipe.ground([e.image for e in examples[:3]], ["the red cross"] * 3)
    assert all(a is None or np.isfinite(a.score) for a in answers)
