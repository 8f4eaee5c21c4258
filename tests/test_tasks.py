"""Tasks: build -> ids -> parse recovers the target (a perfect model), constraints admit exactly the
well-formed outputs, parse never raises, metrics of perfect predictions are perfect."""
import numpy as np
import pytest
import torch
from PIL import Image

from unio.data.shapes import ShapesWorld
from unio.errors import BoxError, InputError, TaskError
from unio.images import Letterbox
from unio.data.shapes import shapes_classes
from unio.tasks import TASKS, Box, Detection, Label, TaskContext, get_task
from unio.tasks.constraints import (AllowedIdsProcessor, BoxesProcessor, GuidedSampler, ImageCodesProcessor,
                                    LabelTrie, TrieProcessor)
from unio.tasks.dense import image_codes, letterbox_array
from conftest import shipped_tokenizers

W, H = 100, 64  # a non-square original frame


@pytest.fixture(scope="module")
def ctx():
    return TaskContext.from_dir(shipped_tokenizers(), image_size=64, patch_size=8,
                                classes=shapes_classes())


@pytest.fixture(scope="module")
def small_ctx(micro_tokenizers):
    return TaskContext.from_dir(micro_tokenizers, image_size=64, patch_size=8,
                                classes=shapes_classes())


def wide_sample(index=3, left=20, right=16):
    """A shapes sample pasted into a W x H canvas, annotations moved along."""
    s = ShapesWorld(64, seed=0)[index]
    canvas = Image.new("RGB", (64 + left + right, 64), (200, 200, 200))
    canvas.paste(s["image"], (left, 0))
    pad = lambda a, v: np.pad(a, ((0, 0), (left, right)), constant_values=v)  # noqa: E731
    objects = [{**o, "box": (o["box"][0] + left, o["box"][1], o["box"][2] + left, o["box"][3]),
                "mask": pad(o["mask"], False)} for o in s["objects"]]
    return {**s, "image": canvas, "objects": objects, "depth": pad(s["depth"], 1.0).astype(np.float32)}


@pytest.fixture(scope="module")
def sample():
    s = wide_sample()
    assert s["image"].size == (W, H)
    return s


def half_bin(ctx):
    return max(W, H) / ctx.vocab.num_bins / 2 + 1e-6


# ---------------------------------------------------------------------------- build -> parse
@pytest.mark.parametrize("name", ["caption", "vqa", "describe_region"])
def test_text_tasks_round_trip(ctx, sample, name):
    task = get_task(name)
    ex = task.build(sample, ctx)
    assert ex.labels[-1] == ctx.vocab.eos_id and ex.input_ids[-1] == ctx.vocab.eos_id
    assert ex.image.size == (64, 64) and ex.info == Letterbox(W, H, 64)
    expected = {"caption": sample["caption"], "vqa": sample["qa"][0][1]}.get(name) or ex.meta["references"][0]
    assert task.parse(ex.labels, ctx, ex.info) == expected
    assert all(k == 0 for k in ctx.vocab.kinds(ex.labels[:-1]).tolist())


@pytest.mark.parametrize("name", ["classify", "classify_region"])
def test_classification_round_trip_with_score(ctx, sample, name):
    task = get_task(name)
    ex = task.build(sample, ctx)
    label = task.parse(ex.labels, ctx, ex.info, logprobs=[0.0] * len(ex.labels))
    assert isinstance(label, Label) and isinstance(label, str)
    assert label == ex.meta["label"] and label.score == 1.0
    assert task.metric([label], [ex]) == {"accuracy": 1.0}


def test_detect_round_trip_canonical_order(ctx, sample):
    task = get_task("detect")
    ex = task.build(sample, ctx)
    assert ex.label_weights is None
    dets = task.parse(ex.labels, ctx, ex.info)
    truth = sorted(zip(ex.meta["boxes"], ex.meta["labels"]), key=lambda bl: (bl[0][1], bl[0][0]))
    assert [d.label for d in dets] == [label for _, label in truth]
    for d, (box, _) in zip(dets, truth):
        assert isinstance(d, Detection)
        assert np.allclose(d.box, box, atol=half_bin(ctx))
    assert task.metric(dets and [dets], [ex])["map"] == pytest.approx(1.0)


def test_detect_training_sequence_augmentation(ctx, sample):
    """Pix2Seq: random order, noise boxes labelled noise with zero coordinate weight, eos weight 0.1."""
    task = get_task("detect", max_noise=6)
    orders, noisy = set(), 0
    for seed in range(40):
        ex = task.build(sample, ctx, rng=np.random.default_rng(seed))
        assert len(ex.label_weights) == len(ex.labels)
        assert ex.labels[-1] == ctx.vocab.eos_id and ex.label_weights[-1] == pytest.approx(0.1)
        dets = task.parse(ex.labels, ctx, ex.info)  # noise objects are read back and dropped
        assert sorted(d.label for d in dets) == sorted(ex.meta["labels"])
        orders.add(tuple(d.label for d in dets))
        noise = ctx.encode_text("noise")
        n_real = sum(4 + len(ctx.encode_text(lab)) for lab in ex.meta["labels"])
        tail, weights = ex.labels[n_real:-1], ex.label_weights[n_real:-1]
        assert len(tail) % (4 + len(noise)) == 0
        for k in range(0, len(tail), 4 + len(noise)):
            assert tail[k + 4:k + 4 + len(noise)] == noise
            assert weights[k:k + 4] == [0.0] * 4 and weights[k + 4:k + 4 + len(noise)] == [1.0] * len(noise)
            noisy += 1
    assert len(orders) > 1 and noisy > 0


def test_detect_scores_come_from_probabilities(ctx, sample):
    task = get_task("detect")
    ex = task.build(sample, ctx)
    logprobs = np.log(np.linspace(0.9, 0.2, len(ex.labels))).tolist()
    dets = task.parse(ex.labels, ctx, ex.info, raw_logprobs=logprobs)
    assert all(0 < d.score < 1 for d in dets)
    assert dets[0].score > dets[-1].score



def test_detect_exact_repeats_keep_the_best_score(ctx, sample):
    task = get_task("detect")
    ex = task.build(sample, ctx)
    once = task.parse(ex.labels, ctx, ex.info)
    n0 = 4 + len(ctx.encode_text(once[0].label))
    first = ex.labels[:n0]  # the first object of the target sequence
    ids = first + ex.labels[:-1] + first + [ctx.vocab.eos_id]  # ... written three times
    n = len(ex.labels) - 1
    logprobs = [np.log(0.3)] * n0 + [np.log(0.9)] * n + [np.log(0.5)] * n0 + [0.0]
    dets = task.parse(ids, ctx, ex.info, raw_logprobs=logprobs)
    assert [(d.box, d.label) for d in dets] == [(d.box, d.label) for d in once]
    assert dets[0].score == pytest.approx(0.9 ** (n0 - 4))  # the best of the three
    moved = list(first)
    moved[0] = moved[0] + 1 if moved[0] + 1 < ctx.vocab.location_range[1] else moved[0] - 1  # one bin off
    assert len(task.parse(moved + ex.labels, ctx, ex.info)) == len(once) + 1


def test_ground_round_trip(ctx, sample):
    task = get_task("ground")
    ex = task.build(sample, ctx)
    box = task.parse(ex.labels, ctx, ex.info)
    assert isinstance(box, Box) and len(ex.labels) == 5
    assert np.allclose(tuple(box), ex.meta["box"], atol=half_bin(ctx))
    got = task.metric([box], [ex])
    assert got["acc50"] == 1.0 and got["mean_iou"] > 0.9  # bin centres: within half a bin


def test_segment_and_depth_round_trip(ctx, sample):
    """A perfect model emits the target codes; parse gives what the VQ tokenizer reconstructs, in the original frame."""
    T = ctx.image_tokenizer.image_size
    seg = get_task("segment")
    ex = seg.build(sample, ctx)
    assert len(ex.labels) == ctx.image_codes + 1
    mask = seg.parse(ex.labels, ctx, ex.info)
    assert mask.shape == (H, W) and mask.dtype == bool
    square = letterbox_array(ex.meta["mask"], T, False, nearest=True)
    recon = ctx.image_tokenizer.decode_mask(ctx.image_tokenizer.encode_mask(square[None]))[0]
    from unio.images import unletterbox
    assert (mask == unletterbox(recon, Letterbox(W, H, T))).all()

    dep = get_task("depth")
    ex = dep.build(sample, ctx)
    depth = dep.parse(ex.labels, ctx, ex.info)
    assert depth.shape == (H, W) and depth.dtype == np.float32
    square = letterbox_array(sample["depth"], T, 1.0, nearest=False)
    recon = ctx.image_tokenizer.decode_depth(ctx.image_tokenizer.encode_depth(square[None]))[0]
    assert np.allclose(depth, unletterbox(recon.astype(np.float32), Letterbox(W, H, T)), atol=1e-5)


def test_generate_image_and_inpaint_round_trip(ctx, sample):
    gen = get_task("generate_image")
    ex = gen.build(sample, ctx)
    assert ex.image is None and len(ex.labels) == ctx.image_codes + 1
    image = gen.parse(ex.labels, ctx)
    assert image.size == (ctx.image_tokenizer.image_size,) * 2

    inp = get_task("inpaint")
    box = (30.0, 10.0, 60.0, 40.0)
    ex = inp.build({"image": sample["image"]}, ctx, box=box, text="a red circle")
    assert ex.patch_mask.shape == (8, 8) and ex.patch_mask.any() and not ex.patch_mask.all()
    assert len(ex.labels) == 0  # inference: the caller's box, no target
    train = inp.build(sample, ctx, rng=np.random.default_rng(0))
    out = inp.parse(train.labels, ctx, train.info, meta=train.meta)
    assert out.size == (W, H)
    orig, got = np.asarray(sample["image"]), np.asarray(out)
    x1, y1, x2, y2 = (int(v) for v in train.meta["box"])
    outside = np.ones((H, W), bool)
    outside[y1:y2 + 1, x1:x2 + 1] = False
    assert (got[outside] == orig[outside]).all()  # only the box is replaced


def test_patch_mask_covers_the_box(ctx):
    from unio.tasks.image_gen import box_patches
    info = Letterbox(128, 64, 64)  # scale 0.5
    m = box_patches((16, 16, 48, 32), info, ctx)  # -> (8, 8, 24, 16) in the square: patches 1..2 x 1
    assert m.sum() == 2 and m[1, 1] and m[1, 2]


def test_paraphrases_in_training_canonical_at_inference(ctx, sample):
    task = get_task("caption")
    assert {task.build(sample, ctx).prompt for _ in range(3)} == {ctx.prompts.canonical("caption")}
    prompts = {task.build(sample, ctx, rng=np.random.default_rng(s)).prompt for s in range(50)}
    assert len(prompts) >= 5


def test_generate_image_condition_dropout(ctx, sample):
    task = get_task("generate_image", p_uncond=0.5)
    prompts = {task.build(sample, ctx, rng=np.random.default_rng(s)).prompt for s in range(30)}
    assert ctx.prompts.unconditional("generate_image") in prompts


# ---------------------------------------------------------------------------- bad inputs
def test_missing_inputs_and_bad_boxes(ctx):
    img = {"image": np.zeros((H, W, 3), np.uint8)}
    with pytest.raises(TaskError, match="question"):
        get_task("vqa").build(img, ctx)
    with pytest.raises(TaskError, match="expression"):
        get_task("ground").build(img, ctx)
    with pytest.raises(TaskError, match="box"):
        get_task("describe_region").build(img, ctx)
    with pytest.raises(BoxError, match="empty or inverted"):
        get_task("describe_region").build(img, ctx, box=(10, 10, 5, 20))
    with pytest.raises(BoxError, match="4 finite"):
        get_task("classify_region").build(img, ctx, box=(1, 2, 3))
    with pytest.raises(InputError, match="non-empty list"):
        get_task("classify").build(img, ctx, labels=[])
    with pytest.raises(TaskError, match="needs an image"):
        get_task("caption").build({}, ctx)
    with pytest.raises(TaskError, match="unknown task 'nope'; known tasks: caption"):
        get_task("nope")


# ---------------------------------------------------------------------------- constraints
def step_allowed(proc, prefix, vocab, next_id=None):
    """Allowed-id mask after ``prefix`` (decoder start prepended), or whether ``next_id`` is allowed."""
    ids = torch.tensor([[vocab.bos_id] + list(prefix)])
    out = proc(ids, torch.zeros(1, vocab.size))
    allowed = torch.isfinite(out[0])
    return allowed if next_id is None else bool(allowed[next_id])


def admits(proc, seq, vocab):
    return all(step_allowed(proc, seq[:i], vocab, seq[i]) for i in range(len(seq)))


def test_text_constraint_refuses_locations_and_images(ctx):
    proc = get_task("caption").logits_processors(ctx)[0]
    assert isinstance(proc, AllowedIdsProcessor)
    allowed = step_allowed(proc, [], ctx.vocab)
    lo, hi = ctx.vocab.text_range
    assert allowed[lo:hi].sum() > 0 and allowed[ctx.vocab.eos_id]
    assert not allowed[ctx.vocab.location_range[0]:].any()
    assert not allowed[ctx.vocab.pad_id] and not allowed[ctx.vocab.bos_id]


def test_trie_constraint(ctx):
    labels = ["circle", "square", "small red circle"]
    proc = TrieProcessor(ctx.vocab, LabelTrie(ctx.encode_text(s) for s in labels))
    for s in labels:
        assert admits(proc, ctx.encode_text(s) + [ctx.vocab.eos_id], ctx.vocab)
    assert not admits(proc, ctx.encode_text("triangle") + [ctx.vocab.eos_id], ctx.vocab)
    assert not step_allowed(proc, [], ctx.vocab, ctx.vocab.eos_id)  # no empty label
    after = step_allowed(proc, ctx.encode_text("square"), ctx.vocab)
    assert after.sum() == 1 and after[ctx.vocab.eos_id]
    task = get_task("classify")
    ex = task.build({"image": np.zeros((8, 8, 3), np.uint8)}, ctx, labels=labels)
    assert admits(task.logits_processors(ctx, ex)[0], ctx.encode_text("square") + [ctx.vocab.eos_id], ctx.vocab)


def test_detect_constraint_admits_targets_and_rejects_malformed(ctx, sample):
    task = get_task("detect")
    ex = task.build(sample, ctx)
    proc = task.logits_processors(ctx, ex, batch=[ex])[0]
    assert isinstance(proc, BoxesProcessor)
    v, seq = ctx.vocab, ex.labels
    assert admits(proc, seq, v)
    assert admits(proc, [v.eos_id], v)  # no objects
    first_box = seq[:4]
    loc = lambda b: v.location_ids([b])[0]  # noqa: E731
    assert not step_allowed(proc, first_box, v, v.eos_id)  # a label must follow a box
    assert not step_allowed(proc, first_box, v, loc(3))  # no fifth coordinate
    assert not step_allowed(proc, first_box[:3], v, v.eos_id)  # no eos inside a box
    assert not step_allowed(proc, [], v, ctx.encode_text("circle")[0])  # no text before a box
    assert not step_allowed(proc, [loc(500)], v, v.eos_id)
    x1 = v.to_local([first_box[0]], "location")[0]
    assert not step_allowed(proc, first_box[:2], v, loc(x1 - 1))  # x2 > x1
    assert not step_allowed(proc, [loc(10)], v, loc(int(H / W * 1000) + 2))  # y inside the 100 x 64 image
    assert not step_allowed(proc, [], v, loc(999)) or W >= H  # x bins span the long side
    assert not admits(proc, first_box + ctx.encode_text("noise") + [v.eos_id], v)  # noise is never emitted
    assert not admits(proc, first_box + ctx.encode_text("purple unicorn") + [v.eos_id], v)
    capped = task.logits_processors(ctx, ex, batch=[ex], max_objects=1)[0]
    one = seq[:4 + len(ctx.encode_text(ex.meta["labels"][0]))]
    assert not step_allowed(capped, one, v, seq[len(one)]) and step_allowed(capped, one, v, v.eos_id)


def test_ground_constraint_exactly_one_box(ctx, sample):
    task = get_task("ground")
    ex = task.build(sample, ctx)
    proc = task.logits_processors(ctx, ex, batch=[ex])[0]
    v = ctx.vocab
    assert admits(proc, ex.labels, v)
    assert not step_allowed(proc, [], v, v.eos_id)
    assert not step_allowed(proc, ex.labels[:4], v, ctx.encode_text("circle")[0])
    allowed = step_allowed(proc, ex.labels[:4], v)
    assert allowed.sum() == 1 and allowed[v.eos_id]


def test_image_constraint_exact_length(ctx, sample):
    v, n = ctx.vocab, ctx.image_codes
    proc = ImageCodesProcessor(v, n)
    codes = list(v.image_ids(np.arange(n) % v.codebook_size))
    assert admits(proc, codes + [v.eos_id], v)
    assert not step_allowed(proc, [], v, v.eos_id)
    assert not step_allowed(proc, codes[:3], v, ctx.encode_text("circle")[0])
    assert not step_allowed(proc, codes[:3], v, v.location_ids([1])[0])
    assert not step_allowed(proc, codes, v, codes[0])
    ex = get_task("depth").build(sample, ctx)
    assert admits(get_task("depth").logits_processors(ctx, ex)[0], ex.labels, v)


def test_guided_sampler_pairs_rows_and_filters():
    torch.manual_seed(0)
    scores = torch.randn(4, 50)
    scores[:, 40:] = float("-inf")
    sampler = GuidedSampler(guidance=3.0, top_k=5, generator=torch.Generator().manual_seed(0))
    out = sampler(torch.zeros(4, 1, dtype=torch.long), scores)
    chosen = out.argmax(-1)
    assert (torch.isfinite(out).sum(-1) == 1).all()
    assert chosen[0] == chosen[2] and chosen[1] == chosen[3] and (chosen < 40).all()
    greedy = GuidedSampler(top_k=1)(torch.zeros(4, 1, dtype=torch.long), scores).argmax(-1)
    assert torch.equal(greedy, scores.argmax(-1))


# ---------------------------------------------------------------------------- parse never raises
def random_sequences(vocab, n, rng, max_len=90):
    """Random global-id sequences: uniform over every id (padding included) and structured mixes."""
    pools = [np.arange(*vocab.text_range), np.arange(*vocab.location_range), np.arange(*vocab.image_range),
             np.array([vocab.eos_id, vocab.pad_id, vocab.bos_id, vocab.size - 1, vocab.size + 5, -1])]
    for k in range(n):
        length = int(rng.integers(0, max_len))
        if k % 2:
            yield rng.integers(-2, vocab.size + 3, length).tolist()
        else:
            which = rng.integers(0, len(pools), length)
            draws = np.stack([rng.choice(pool, length) for pool in pools]) if length else np.zeros((4, 0), int)
            yield draws[which, np.arange(length)].tolist()


DECODES_IMAGES = ("segment", "depth", "generate_image", "inpaint", "masked_image")


@pytest.mark.parametrize("name", list(TASKS))
def test_parse_never_raises(small_ctx, sample, name):
    """Thousands of random id sequences through every parse; tasks that decode images through the VQ
    decoder run a few hundred full parses (their id reading, image_codes, gets thousands below)."""
    ctx, task = small_ctx, get_task(name)
    rng = np.random.default_rng(sum(map(ord, name)))
    info = Letterbox(W, H, 64)
    meta = {"original": sample["image"], "box": (10.0, 5.0, 40.0, 30.0)}
    n = 2000 if name not in DECODES_IMAGES else 100
    for ids in random_sequences(ctx.vocab, n, rng):
        lp = rng.normal(-1, 1, len(ids)).tolist() if rng.random() < 0.5 else None
        task.parse(ids, ctx, info if rng.random() < 0.8 else None, logprobs=lp, raw_logprobs=lp, meta=meta)
    if name in DECODES_IMAGES:
        for ids in random_sequences(ctx.vocab, 3000, rng):
            codes = image_codes(ids, ctx)
            assert codes.shape == (8, 8) and codes.min() >= 0 and codes.max() < ctx.vocab.codebook_size


def test_image_codes_reads_malformed_runs(small_ctx):
    ctx = small_ctx
    v, n = ctx.vocab, ctx.image_codes
    assert image_codes([], ctx).shape == (8, 8)
    codes = list(v.image_ids([5] * (n + 10)))
    assert (image_codes(codes, ctx) == 5).all()
    mixed = [v.location_ids([3])[0]] + list(v.image_ids([7, 9])) + [v.eos_id] + list(v.image_ids([1]))
    got = image_codes(mixed, ctx).reshape(-1)
    assert got[:2].tolist() == [7, 9] and (got[2:] == 0).all()


def test_metrics_of_perfect_predictions(ctx, sample):
    task = get_task("vqa")
    ex = task.build(sample, ctx)
    assert task.metric([task.parse(ex.labels, ctx, ex.info)], [ex])["exact_match"] == 1.0
    ex.meta["answers"] = [ex.meta["answers"][0]] * 10  # VQAv2 has ten human answers
    assert task.metric([task.parse(ex.labels, ctx, ex.info)], [ex])["accuracy"] == 1.0
    task = get_task("caption")
    exs = [task.build(wide_sample(i), ctx) for i in range(4)]
    assert task.metric([task.parse(e.labels, ctx, e.info) for e in exs], exs)["bleu4"] == pytest.approx(1.0)
    seg = get_task("segment")
    ex = seg.build(sample, ctx)
    assert seg.metric([ex.meta["mask"]], [ex]) == {"miou": 1.0}
    dep = get_task("depth")
    ex = dep.build(sample, ctx)
    assert dep.metric([ex.meta["depth"]], [ex])["absrel"] == 0.0
    gen = get_task("generate_image")
    ex = gen.build(sample, ctx)
    assert gen.metric([sample["image"]], [ex])["psnr"] == float("inf")
