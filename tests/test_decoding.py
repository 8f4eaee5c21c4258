"""unio.model.decoding.greedy_decode gives what transformers' generate gives: the same ids, scores
and pictures for every kind of constraint (free text, label tries, boxes with scores, image codes
sampled by GuidedSampler with and without classifier-free guidance), on the shipped model and
on an untrained one (near-uniform logits: the hardest case for ties). Scores agree to float32
rounding (1e-5): the lean loop takes each written id's log-softmax row by row as it goes, generate's
path over the stacked steps afterwards, two reduction orders of the same sums."""
import numpy as np
import pytest
import torch

import unio
from unio.data.shapes import ShapesWorld
from unio.model.decoding import StaticCache


def both(pipe, fn):
    """fn(pipe) through the lean loop and through generate()."""
    pipe.lean = False
    try:
        reference = fn(pipe)
    finally:
        pipe.lean = True
    return fn(pipe), reference


def same(a, b):
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if hasattr(a, "convert"):  # PIL
        return np.array_equal(np.asarray(a), np.asarray(b))
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    if hasattr(a, "score") and isinstance(a, str):
        return str(a) == str(b) and a.score == pytest.approx(b.score, abs=1e-5)
    if hasattr(a, "to_dict"):
        da, db = a.to_dict(), b.to_dict()
        return da.keys() == db.keys() and all(
            da[k] == pytest.approx(db[k], abs=1e-5) if k == "score" else da[k] == db[k] for k in da)
    return a == b


@pytest.fixture(scope="module")
def pipe(demo_or_micro):
    return demo_or_micro


@pytest.fixture(scope="module")
def images():
    world = ShapesWorld(seed=77)
    return [world[i]["image"] for i in range(3)]


CALLS = {
    "caption": lambda p, im: p.caption(im),
    "vqa": lambda p, im: p.ask(im, "what color is the largest object?"),
    "classify": lambda p, im: p.classify(im),
    "detect": lambda p, im: p.detect(im, max_objects=5),
    "ground": lambda p, im: p.ground(im, "the red object"),
    "segment": lambda p, im: p.segment(im, "the red object"),
    "depth": lambda p, im: p.depth(im),
    "inpaint": lambda p, im: p.inpaint(im, (8, 8, 40, 40), "a small red star", seed=3),
    "generate": lambda p, im: p.generate_image(["a small red star", "a large blue circle"], seed=5, guidance=1),
    "guided": lambda p, im: p.generate_image(["a small red star", "a large blue circle"], seed=5, guidance=2.5,
                                             temperature=0.6, candidates=2, rerank="pmi"),
}


@pytest.mark.parametrize("call", sorted(CALLS))
def test_the_lean_loop_decodes_what_generate_decodes(pipe, images, call):
    lean, reference = both(pipe, lambda p: CALLS[call](p, images))
    assert same(lean, reference)


def test_beam_search_still_goes_through_generate(pipe, images, monkeypatch):
    calls = []
    generate = pipe.model.generate
    monkeypatch.setattr(pipe.model, "generate", lambda *a, **k: calls.append(k.get("num_beams")) or generate(*a, **k))
    pipe.caption(images, num_beams=3)
    assert calls == [3]
    pipe.caption(images)
    assert calls == [3]  # greedy: the lean loop


def test_the_static_cache_writes_each_step_in_place(micro_export):
    pipe = unio.load(micro_export, device="cpu")
    cache = StaticCache(pipe.model.config, batch=2, length=5, dtype=torch.float32, device="cpu")
    selfc = cache.self_attention_cache
    H, D = pipe.model.config.num_heads, pipe.model.config.head_dim
    for step in range(3):
        for layer in range(pipe.model.config.decoder_layers):
            k, v = torch.full((2, H, 1, D), float(step)), torch.full((2, H, 1, D), -float(step))
            keys, values = selfc.update(k, v, layer)
            assert keys.shape == (2, H, step + 1, D) and keys.data_ptr() == selfc.keys[layer].data_ptr()
        assert cache.get_seq_length() == step + 1
    assert selfc.keys[0, 0, 0, :3, 0].tolist() == [0.0, 1.0, 2.0]
