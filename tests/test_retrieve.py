"""Image-text retrieval: the contrastive head (CoCa), its loss and training, embeddings and their
fingerprint, retrieve-then-rerank, recall@K and its evaluation; models without the head unchanged."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import unio
from unio.data.collate import collate
from unio.data.shapes import ShapesWorld
from unio.errors import InputError, TaskError
from unio.evaluate import evaluate
from unio.metrics import retrieval_ranks, retrieval_recall
from unio.model import UnioConfig, UnioForConditionalGeneration
from unio.model.contrastive import INIT_LOGIT_SCALE, info_nce
from unio.tasks import TaskContext, get_task
from unio.tasks.retrieve import Embeddings, Retrieve
from unio.tasks.text import Caption

from conftest import shipped_tokenizers, write_micro_export

S = 32  # image side of the training tests: a 4 x 4 patch grid


@pytest.fixture(scope="module")
def head_export(tmp_path_factory):
    return write_micro_export(tmp_path_factory.mktemp("retrieve") / "model", shipped_tokenizers(), projection_dim=32)


@pytest.fixture(scope="module")
def pipe(head_export):
    return unio.load(head_export, device="cpu")


@pytest.fixture(scope="module")
def world():
    w = ShapesWorld(image_size=64, seed=1)
    return [w[i] for i in range(8)]


@pytest.fixture(scope="module")
def ctx():
    return TaskContext.from_dir(shipped_tokenizers(), image_size=S, patch_size=8)


def _model(ctx, seed=0, **overrides):
    torch.manual_seed(seed)
    config = UnioConfig.preset("tiny", vocab=ctx.vocab, image_size=S, patch_size=8, d_model=64, num_heads=2,
                               encoder_layers=1, decoder_layers=1, **overrides)
    return UnioForConditionalGeneration(config)


def _retrieve_batch(ctx, n=8, seed=0, extra=()):
    w = ShapesWorld(image_size=S, seed=seed)
    task = get_task(Retrieve.name)
    examples = [task.build(w[i], ctx, np.random.default_rng(i)) for i in range(n)] + list(extra)
    return collate(examples, ctx.vocab, 8, image_size=S, patch_size=8)


# ----------------------------------------------------------------------------- metrics and loss
def test_recall_at_k_on_a_hand_made_matrix():
    sim = np.array([[0.9, 0.1, 0.2, 0.0],     # image 0: its text 0 first
                    [0.3, 0.2, 0.8, 0.1],     # image 1: its texts 1, 3 at places 2 and 3 -> rank 2
                    [0.1, 0.7, 0.6, 0.5]])    # image 2: its text 2 second -> rank 1
    image_of = [0, 1, 2, 1]                  # text 3 also describes image 1
    i2t, t2i = retrieval_ranks(sim, image_of)
    assert i2t.tolist() == [0, 2, 1]
    assert t2i.tolist() == [0, 1, 1, 1]       # text 3's column (0, 0.1, 0.5): image 1 second
    r = retrieval_recall(sim, image_of, ks=(1, 2))
    assert r == {"i2t_r1": pytest.approx(1 / 3), "i2t_r2": pytest.approx(2 / 3), "t2i_r1": 0.25, "t2i_r2": 1.0}
    assert retrieval_recall(np.eye(5))["i2t_r1"] == retrieval_recall(np.eye(5))["t2i_r1"] == 1.0
    ties = np.ones((3, 3))  # ties go to the lower index
    assert retrieval_ranks(ties)[0].tolist() == [0, 1, 2]
    with pytest.raises(InputError, match="every image with a text"):
        retrieval_ranks(np.eye(3), [0, 0, 1])


def test_info_nce_on_a_hand_made_case():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    s = 2.0
    # logits s*I: each row's cross-entropy is log(1 + e^-s), both directions alike
    assert info_nce(a, a, s).item() == pytest.approx(math.log(1 + math.exp(-s)), rel=1e-4)
    b = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # swapped pairs: log(1 + e^s)
    assert info_nce(a, b, s).item() == pytest.approx(math.log(1 + math.exp(s)), rel=1e-4)
    # 3 pairs, by hand: log-softmax of each row and column of s * cosine similarities
    i, t = torch.nn.functional.normalize(torch.randn(3, 4, generator=torch.Generator().manual_seed(0)), dim=1), \
        torch.nn.functional.normalize(torch.randn(3, 4, generator=torch.Generator().manual_seed(1)), dim=1)
    sim = (s * i @ t.T).tolist()
    rows = [-sim[k][k] + math.log(sum(math.exp(x) for x in sim[k])) for k in range(3)]
    cols = [-sim[k][k] + math.log(sum(math.exp(sim[j][k]) for j in range(3))) for k in range(3)]
    assert info_nce(i, t, s).item() == pytest.approx((sum(rows) + sum(cols)) / 6, rel=1e-5)
    with pytest.raises(InputError, match="must both be"):
        info_nce(a, a[:1], s)


# ----------------------------------------------------------------------------- the network
def test_retrieve_examples_carry_their_caption_and_collate_pairs_them(ctx):
    w = ShapesWorld(image_size=S, seed=0)
    ex = get_task(Retrieve.name).build(w[0], ctx)
    assert ex.labels == ex.meta["contrast_ids"] and ex.labels[-1] == ctx.vocab.eos_id
    assert ex.meta["text"] == w[0]["caption"] and ex.prompt == "Describe the image."
    caption = get_task(Caption.name).build(w[1], ctx)
    batch = _retrieve_batch(ctx, n=2, extra=[caption])
    assert batch["contrast_ids"].shape[0] == 3 and batch["contrast_mask"].shape == batch["contrast_ids"].shape
    assert batch["contrast_mask"][:2].any(1).all() and not batch["contrast_mask"][2].any()
    assert collate([caption], ctx.vocab)["contrast_ids"] is None


def test_contrastive_loss_joins_the_loss_and_training_lowers_it(ctx):
    model = _model(ctx, projection_dim=32).train()
    assert model.contrastive.logit_scale.item() == pytest.approx(INIT_LOGIT_SCALE)
    batch = _retrieve_batch(ctx, n=8)
    out = model(**batch)
    token_only = model(**{k: v for k, v in batch.items() if not k.startswith("contrast")}).loss
    assert out.contrastive_loss is not None and out.loss.item() == pytest.approx(
        token_only.item() + out.contrastive_loss.item(), rel=1e-4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    first = None
    for _ in range(25):
        out = model(**batch)
        first = out.contrastive_loss.item() if first is None else first
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
    assert out.contrastive_loss.item() < first - 0.5, (first, out.contrastive_loss.item())
    # contrastive_weight scales the term
    half = _model(ctx, projection_dim=32, contrastive_weight=0.5).train()
    full = _model(ctx, projection_dim=32).train()
    assert half(**batch).contrastive_loss.item() == pytest.approx(full(**batch).contrastive_loss.item() / 2, rel=1e-4)


def test_every_head_parameter_takes_part_without_retrieve_rows(ctx):
    """ZeRO needs every parameter in every step: a batch without retrieve rows touches the head
    with weight 0 in training, and computes nothing at inference."""
    model = _model(ctx, projection_dim=32).train()
    caption = get_task(Caption.name).build(ShapesWorld(image_size=S, seed=0)[0], ctx)
    batch = collate([caption], ctx.vocab, 8, image_size=S, patch_size=8)
    out = model(**batch)
    assert out.contrastive_loss.item() == 0.0
    out.loss.backward()
    for name, p in model.contrastive.named_parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) == 0, name
    model.eval()
    with torch.no_grad():
        assert model(**batch).contrastive_loss is None


def test_a_model_without_the_head_is_unchanged_and_says_how_to_get_one(ctx, tmp_path):
    plain = _model(ctx).eval()
    assert plain.contrastive is None and not any("contrastive" in k for k in plain.state_dict())
    plain.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for key in ("projection_dim", "contrastive_weight"):  # a config written before the head existed
        config.pop(key, None)
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = UnioForConditionalGeneration.from_pretrained(tmp_path, vocab=ctx.vocab).eval()
    assert loaded.config.projection_dim == 0 and loaded.contrastive is None
    batch = _retrieve_batch(ctx, n=2)
    plain_inputs = {k: v for k, v in batch.items() if not k.startswith("contrast")}
    with torch.no_grad():
        torch.testing.assert_close(loaded(**plain_inputs).logits, plain(**plain_inputs).logits, rtol=0, atol=0)
        with pytest.raises(InputError, match="no embedding head"):
            loaded(**batch)
    with pytest.raises(InputError, match="projection_dim"):
        UnioConfig.preset("tiny", vocab=ctx.vocab, projection_dim=-1)


def test_shipped_style_export_without_head_loads_and_refuses_embeddings(micro_export, world):
    pipe = unio.load(micro_export, device="cpu")  # exports refuse missing or unexpected weights
    assert pipe.model.config.projection_dim == 0
    with pytest.raises(TaskError, match="no embedding head.*projection_dim"):
        pipe.embed_images([world[0]["image"]])
    with pytest.raises(TaskError, match="no embedding head"):
        pipe.retrieve("a red circle", [world[0]["image"]])


def test_an_export_without_the_head_fine_tunes_into_one(micro_export):
    plain = UnioForConditionalGeneration.from_pretrained(micro_export)
    model, info = UnioForConditionalGeneration.from_pretrained(micro_export, projection_dim=16,
                                                               output_loading_info=True)
    assert sorted(info["missing_keys"]) == ["contrastive.image_proj.weight", "contrastive.logit_scale",
                                            "contrastive.text_proj.weight"] and not info["unexpected_keys"]
    assert model.contrastive.logit_scale.item() == pytest.approx(INIT_LOGIT_SCALE)
    assert 0.01 < model.contrastive.image_proj.weight.std().item() < 0.03  # the model's initializer_range
    torch.testing.assert_close(model.shared.weight, plain.shared.weight, rtol=0, atol=0)


RECIPE = """\
model: {preset: tiny, image_size: 32, patch_size: 8, d_model: 64, encoder_layers: 1, decoder_layers: 1, num_heads: 2,
        projection_dim: 32}
num_bins: 100
data:
  train: [{source: shapes, seed: 0, image_size: 32, tasks: {CAPTION: 1, RETRIEVE: 2}}]
  eval: [{source: shapes, seed: 1, image_size: 32}]
  eval_tasks: [RETRIEVE]
train: {steps: 3, batch_size: 8, lr: 1.0e-3, warmup: 1, log_every: 1, eval_every: 0, eval_n: 4, save_every: 0, seed: 0}
deepspeed: zero0
"""


def test_unio_train_adds_the_contrastive_loss_and_exports_the_head(tmp_path):
    from unio.recipe import load_recipe
    from unio.training import export, train

    (tmp_path / "r.yaml").write_text(RECIPE.replace("RETRIEVE", Retrieve.name).replace("CAPTION", Caption.name))
    run = tmp_path / "run"
    train(load_recipe(tmp_path / "r.yaml", [f"out={run}", f"tokenizers={shipped_tokenizers()}"]))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(r["loss/contrastive"] > 0 for r in records)
    evals = json.loads((run / "eval.jsonl").read_text().splitlines()[-1])
    assert 0 <= evals[f"{Retrieve.name}/t2i_r1"] <= 1 and f"{Retrieve.name}/i2t_r1_reranked" in evals
    pipe = unio.load(export(run, tmp_path / "export"), device="cpu")
    assert pipe.model.config.projection_dim == 32 and Retrieve.name in pipe.tasks
    assert pipe.embed_texts("a red circle").vectors.shape == (1, 32)


# ----------------------------------------------------------------------------- embeddings and retrieval
def test_embeddings_are_deterministic_unit_norm_and_batch_independent(pipe, world):
    images = [s["image"] for s in world]
    a, b = pipe.embed_images(images), pipe.embed_images(images, batch_size=3)
    assert a.vectors.shape == (8, 32) and a.vectors.dtype == np.float32 and a.kind == "image"
    np.testing.assert_allclose(np.linalg.norm(a.vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-5)
    assert np.array_equal(a.vectors, pipe.embed_images(images).vectors)
    t = pipe.embed_texts([s["caption"] for s in world])
    np.testing.assert_allclose(np.linalg.norm(t.vectors, axis=1), 1.0, atol=1e-5)
    assert t.kind == "text" and t.fingerprint == a.fingerprint and len(t) == 8
    with pytest.raises(InputError, match="non-empty strings"):
        pipe.embed_texts(["a cat", " "])


def test_export_round_trip_keeps_the_head_and_its_fingerprint(pipe, head_export, world, tmp_path):
    again = unio.load(head_export, device="cpu")
    e1, e2 = pipe.embed_texts(world[0]["caption"]), again.embed_texts(world[0]["caption"])
    assert e1.fingerprint == e2.fingerprint and np.array_equal(e1.vectors, e2.vectors)
    path = e1.save(tmp_path / "texts.npz")
    back = Embeddings.load(path)
    assert back.items == e1.items and back.fingerprint == e1.fingerprint and np.array_equal(back.vectors, e1.vectors)


def test_embeddings_of_another_model_are_refused(pipe, tmp_path, world):
    other_dir = write_micro_export(tmp_path / "other", shipped_tokenizers(), projection_dim=32)
    other = unio.load(other_dir, device="cpu")
    with torch.no_grad():
        other.model.contrastive.text_proj.weight.normal_()
    theirs = other.embed_texts([s["caption"] for s in world[:3]])
    with pytest.raises(InputError, match="another model.*fingerprint"):
        pipe.retrieve(world[0]["image"], theirs)
    with pytest.raises(InputError, match="another model"):
        pipe.retrieve(theirs, pipe.embed_images([world[0]["image"]]))


def test_retrieve_both_ways(pipe, world):
    images, texts = [s["image"] for s in world], [s["caption"] for s in world]
    gallery = pipe.embed_images(images)
    hits = pipe.retrieve(texts[0], gallery, top_k=3)
    sims = gallery.vectors @ pipe.embed_texts(texts[0]).vectors[0]
    assert [h.index for h in hits] == np.argsort(-sims, kind="stable")[:3].tolist()
    assert hits[0].item is images[hits[0].index] and hits[0].loglik is None
    many = pipe.retrieve(images[:2], texts, top_k=20)  # image -> text; top_k past the gallery: all of it
    assert len(many) == 2 and len(many[0]) == 8 and isinstance(many[0][0].item, str)
    assert [h.similarity for h in many[1]] == sorted((h.similarity for h in many[1]), reverse=True)
    with pytest.raises(InputError, match="mixes texts"):
        pipe.retrieve(texts[0], [texts[1], images[0]])
    with pytest.raises(InputError, match="both images"):
        pipe.retrieve(images[0], gallery, rerank=2)
    with pytest.raises(InputError, match="top_k"):
        pipe.retrieve(texts[0], gallery, top_k=0)
    with pytest.raises(TaskError, match="pipe.retrieve"):
        pipe.run(Retrieve.name, images[0])


def test_rerank_reorders_the_top_candidates_by_the_likelihood(pipe, world, monkeypatch):
    images, texts = [s["image"] for s in world], [s["caption"] for s in world]
    plain = pipe.retrieve(images[0], texts, top_k=6)
    real = pipe.retrieve(images[0], texts, top_k=6, rerank=4)
    assert {h.index for h in real[:4]} == {h.index for h in plain[:4]} and real[4:] == plain[4:]
    assert [h.loglik for h in real[:4]] == sorted((h.loglik for h in real[:4]), reverse=True)
    # the likelihood is the caption log-likelihood pipe.score computes (the same canonical prompt)
    assert real[0].loglik == pytest.approx(pipe.score(images[0], [real[0].item])[0], abs=1e-3)

    def backwards(examples, targets, batch_size=None):  # a likelihood that reverses the similarity order
        return np.arange(len(examples), dtype=np.float64)

    monkeypatch.setattr(pipe, "target_loglik", backwards)
    flipped = pipe.retrieve(texts[0], images, top_k=5, rerank=3)
    order = [h.index for h in pipe.retrieve(texts[0], images, top_k=5)]
    assert [h.index for h in flipped] == order[:3][::-1] + order[3:]
    assert [h.loglik for h in flipped[:3]] == [2.0, 1.0, 0.0] and flipped[3].loglik is None


# ----------------------------------------------------------------------------- evaluation
def test_eval_reports_recall_before_and_after_rerank(pipe):
    results, details = evaluate(pipe, "shapes:1", tasks=[Retrieve.name], n=6, batch_size=4, progress=False,
                                options={Retrieve.name: {"rerank": 3}}, return_details=True)
    m = results[Retrieve.name]
    assert m["n"] == 6 and m["gallery"] == 6
    for d in ("i2t", "t2i"):
        for k in (1, 5, 10):
            for s in ("", "_reranked"):
                assert 0.0 <= m[f"{d}_r{k}{s}"] <= 1.0
        assert m[f"{d}_r10"] == 1.0 and m[f"{d}_r5_reranked"] == m[f"{d}_r5"]  # re-ordering the top 3 keeps the top 5
    examples, _, preds = details[Retrieve.name]
    sim = pipe.embed_images([e.image for e in examples]).vectors @ \
        pipe.embed_texts([e.meta["text"] for e in examples]).vectors.T
    expected = retrieval_recall(sim)
    assert all(m[k] == pytest.approx(v) for k, v in expected.items())
    assert len(preds) == 6 and len(preds[0]["top_texts"]) == 5
    plain = evaluate(pipe, "shapes:1", tasks=[Retrieve.name], n=6, progress=False,
                     options={Retrieve.name: {"rerank": 0}})[Retrieve.name]
    assert "t2i_r1_reranked" not in plain and plain["t2i_r1"] == m["t2i_r1"]
