"""``pipe.run_many``: requests of several tasks in one model call give what separate ``pipe.run``
calls give (ids exactly, scores to float tolerance), on the shipped model and on the untrained
micro model (whose answers run to their token limits: the per-row limits are exercised); rows
that have ended leave the network's batch; requests that cannot share decoding still run.
A :class:`~unio.batching.Stream` (the server's step batching) gives the same answers when requests
join and leave at any step, and its network state (:class:`~unio.model.decoding.LiveBatch`) gives
each row the logits a batch of its own gives."""
import numpy as np
import pytest
import torch

from unio.batching import Parse, Stream
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


# ---------------------------------------------------------------------- step batching (Stream)
def requests_of(images):
    return [{"task": t, "image": images[i % len(images)], **kw} for i, (t, kw) in enumerate(REQUESTS)]


def alone(pipe, r):
    return pipe.run(r["task"], r["image"], **{k: v for k, v in r.items() if k not in ("task", "image")})


def test_a_stream_answers_as_separate_runs_when_requests_join_and_leave_at_any_step(pipe, images):
    reqs = requests_of(images)
    want = [alone(pipe, r) for r in reqs]
    stream, got, tasks_per_step, step = Stream(pipe, max_rows=4), {}, [], 0
    todo = list(range(len(reqs)))
    while todo or stream.busy:
        if todo and step % 3 == 0:           # a newcomer every third step, whatever is decoding
            i = todo.pop(0)
            stream.add(reqs[i], handle=i)
        for handle, result in stream.step():
            got[handle] = result
        assert stream.rows <= 4
        tasks_per_step.append({r.plan.name for r in stream.live})
        step += 1
    for i, r in enumerate(reqs):
        assert not isinstance(got[i], Exception), got[i]
        assert same(got[i], want[i]), (r["task"], got[i], want[i])
    assert max(len(t) for t in tasks_per_step) >= 3  # several tasks decoded in one step


def test_a_dropped_request_leaves_and_the_others_answer(pipe, images):
    reqs = [{"task": "depth", "image": images[0]}, {"task": "caption", "image": images[1]},
            {"task": "depth", "image": images[2]}]
    stream = Stream(pipe)
    for i, r in enumerate(reqs):
        stream.add(r, handle=i)
    stream.step(), stream.step()
    assert stream.rows == 3
    stream.drop(0)                              # its caller went away mid-decoding
    assert stream.rows == 2
    got = {}
    while stream.busy:
        got.update(stream.step())
    assert sorted(got) == [1, 2]
    assert got[1] == pipe.caption(images[1])
    assert np.abs(got[2] - pipe.depth(images[2])).max() < 1e-4
    assert stream.batch is None                 # an idle stream holds no cache


def test_a_stream_can_leave_the_reading_of_answers_to_its_caller(pipe, images):
    stream = Stream(pipe, parse_later=True)     # the server reads answers in another thread
    stream.add({"task": "caption", "image": images[0]}, handle=0)
    stream.add({"task": "depth", "image": images[1]}, handle=1)
    got = {}
    while stream.busy:
        got.update(stream.step())
    assert all(isinstance(p, Parse) for p in got.values())
    assert got[0]() == pipe.caption(images[0])
    assert np.abs(got[1]() - pipe.depth(images[1])).max() < 1e-4


def test_a_stream_takes_greedy_requests_only_and_checks_them_first(pipe, images):
    stream = Stream(pipe)
    with pytest.raises(InputError, match="pipe.run"):
        stream.add({"task": "caption", "image": images[0], "num_beams": 2})
    with pytest.raises(InputError, match="threshold"):
        stream.add({"task": "caption", "image": images[0], "threshold": 2})
    assert not stream.busy


def test_live_batch_rows_get_the_logits_of_a_batch_of_their_own(pipe):
    """Rows joining at steps 0 and 3, one leaving at step 6, the free slot taken at step 7, then
    compacted: every row's logits as :class:`TorchSteps` gives them to its own batch."""
    model, cfg = pipe.model, pipe.model.config
    g = torch.Generator().manual_seed(0)

    def inputs(n, length):
        return dict(pixel_values=torch.rand(n, 3, cfg.image_size, cfg.image_size, generator=g) * 2 - 1,
                    input_ids=torch.randint(5, 300, (n, length), generator=g))

    steps, start = 10, cfg.decoder_start_token_id
    groups = [(inputs(2, 7), 0), (inputs(3, 12), 3), (inputs(1, 4), 7)]  # (inputs, the step it joins)
    ids = [torch.randint(5, 300, (steps, len(x["input_ids"])), generator=g) for x, _ in groups]
    with torch.inference_mode():
        own = []
        for (x, _), chosen in zip(groups, ids):
            ref, last, out = decoding.TorchSteps(model, steps, **x), torch.full((len(chosen[0]), 1), start), []
            for t in range(steps):
                out.append(ref(last))
                last = chosen[t][:, None]
            own.append(out)
        live, slots, worst = decoding.LiveBatch(model), {}, 0.0
        for t in range(10):
            for k, (x, at) in enumerate(groups):
                if t == at:
                    enc = model.get_encoder()(**x)
                    slots[k] = live.join(enc.last_hidden_state, enc.attention_mask)
            if t == 6:
                live.release(slots[0][:1])
                slots[0] = slots[0][1:]
            if t == 7:
                assert live.slots == 5              # the newcomer took the free slot
            last = torch.zeros(live.slots, 1, dtype=torch.long)
            for k, sl in slots.items():
                n = t - groups[k][1]
                last[sl] = (ids[k][n - 1, -len(sl):] if n else torch.full((len(sl),), start))[:, None]
            logits = live.step(last)
            for k, sl in slots.items():
                n = t - groups[k][1]
                worst = max(worst, float((logits[sl] - own[k][n][-len(sl):]).abs().max()))
            if t == 8:
                live.release(slots.pop(2))
                where = live.compact()
                slots = {k: where[sl] for k, sl in slots.items()}
                assert live.slots == 4 and live.rows == 4
    assert worst < 1e-4, worst
