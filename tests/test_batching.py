"""``pipe.run_many``: requests of several tasks in one model call give what separate ``pipe.run``
calls give (ids exactly, scores to float tolerance), on the shipped model and on the untrained
micro model (whose answers run to their token limits: the per-row limits are exercised); rows
that have ended leave the network's batch; requests that cannot share decoding still run."""
import numpy as np
import pytest

from unio.data.shapes import ShapesWorld
from unio.errors import InputError
from unio.model import decoding

BOX = (4.0, 6.0, 40.0, 44.0)
REQUESTS = [  # (task, inputs and options): every greedy task of the shapes models, mixed lengths
    ("caption", {}),
    ("vqa", {"question": "how many circles are there?"}),
    ("detect", {"max_objects": 4}),
    ("ground", {"expression": "the red circle"}),
    ("depth", {}),
    ("classify", {}),
    ("describe_region", {"box": BOX}),
    ("classify_region", {"box": BOX}),
    ("segment", {"expression": "the red circle"}),
    ("vqa", {"question": "what color is the largest object?", "max_new_tokens": 2}),
    ("caption", {"max_new_tokens": 3}),
]


@pytest.fixture(scope="module")
def pipe(demo_or_micro):
    return demo_or_micro


@pytest.fixture(scope="module")
def images():
    world = ShapesWorld(seed=31)
    return [world[i]["image"] for i in range(4)]


def same(a, b):
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray):
        return a.shape == b.shape and np.allclose(a, b, atol=1e-4)
    if hasattr(a, "to_dict"):
        da, db = a.to_dict(), b.to_dict()
        return da.keys() == db.keys() and all(same(da[k], db[k]) for k in da)
    if isinstance(a, float):
        return a == pytest.approx(b, abs=1e-5)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if hasattr(a, "score") and isinstance(a, str):
        return str(a) == str(b) and a.score == pytest.approx(b.score, abs=1e-5)
    if hasattr(a, "__array__") and not isinstance(a, (str, int)):
        return same(np.asarray(a), np.asarray(b))
    return a == b


def test_mixed_tasks_in_one_call_answer_as_separate_runs(pipe, images):
    reqs = [{"task": t, "image": images[i % len(images)], **kw} for i, (t, kw) in enumerate(REQUESTS)]
    want = [pipe.run(r["task"], r["image"], **{k: v for k, v in r.items() if k not in ("task", "image")})
            for r in reqs]
    calls = []
    encoder = pipe.model.get_encoder()
    hook = encoder.register_forward_hook(lambda m, a, o: calls.append(1))
    try:
        got = pipe.run_many(reqs)
    finally:
        hook.remove()
    for r, g, w in zip(reqs, got, want):
        assert same(g, w), (r["task"], g, w)
    assert len(calls) == 1  # one encoder pass for all eleven requests


def test_ended_rows_leave_the_networks_batch(pipe, images, monkeypatch):
    rows = []
    call = decoding.TorchSteps.__call__
    monkeypatch.setattr(decoding.TorchSteps, "__call__", lambda self, ids: rows.append(ids.shape[0]) or call(self, ids))
    pipe.run_many([{"task": "caption", "image": images[0], "max_new_tokens": 2},  # a longer caption, cut
                   {"task": "depth", "image": images[1]}])
    # two tokens of the caption, then its forced end (step 3), then the depth codes alone
    assert rows[:4] == [2, 2, 2, 1] and rows[-1] == 1 and len(rows) > 10, rows


def test_requests_that_cannot_share_decoding_still_run(pipe, images):
    reqs = [{"task": "caption", "image": images[0], "num_beams": 2},
            {"task": "caption", "image": images[1]},
            {"task": "caption", "image": images[2], "num_beams": 2},
            {"task": "generate_image", "text": "a small red star in the center.", "seed": 3, "guidance": 2.0}]
    assert not pipe.shares_decoding("caption", {"num_beams": 2})
    assert pipe.shares_decoding("caption", {})
    assert not pipe.shares_decoding("generate_image", {"guidance": 2.0})
    got = pipe.run_many(reqs)
    assert got[0] == pipe.caption(images[0], num_beams=2) and got[2] == pipe.caption(images[2], num_beams=2)
    assert got[1] == pipe.caption(images[1])
    want = pipe.generate_image("a small red star in the center.", seed=3, guidance=2.0)
    assert np.array_equal(np.asarray(got[3]), np.asarray(want))


def test_a_batch_inside_one_request_comes_back_as_a_list(pipe, images):
    got = pipe.run_many([{"task": "vqa", "image": images[0], "question": ["how many circles are there?", "is there a star?"]},
                         {"task": "caption", "image": images[:2]}])
    assert got[0] == pipe.ask(images[0], ["how many circles are there?", "is there a star?"])
    assert got[1] == pipe.caption(images[:2])


def test_bad_requests_raise_before_the_model_runs(pipe, images, monkeypatch):
    monkeypatch.setattr(pipe.model, "forward", lambda *a, **k: pytest.fail("the model ran"))
    with pytest.raises(InputError, match="list of requests"):
        pipe.run_many({"task": "caption", "image": images[0]})
    with pytest.raises(InputError, match="list of requests"):
        pipe.run_many([{"image": images[0]}])
    with pytest.raises(InputError, match="threshold"):
        pipe.run_many([{"task": "caption", "image": images[0]}, {"task": "caption", "image": images[0], "threshold": 2}])
