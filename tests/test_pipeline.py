"""The Python API on a tiny untrained model: every method returns its documented type, in the
caller's original frame (a 300 x 120 image), single items and lists alike; export directories."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import unio
from conftest import MICRO, shipped_tokenizers
from unio.errors import BoxError, CheckpointError, ImageError, InputError, TaskError, VocabMismatchError
from unio.images import letterbox
from unio.export import init_export, load_export
from unio.pipeline import Pipeline, Run
from unio.tasks import Box, Detection, Label, get_task

W, H = 300, 120


@pytest.fixture(scope="module")
def export(micro_export):
    return micro_export


@pytest.fixture(scope="module")
def pipe(export):
    return unio.load(export, device="cpu")


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8))


def inside(box, w=W, h=H):
    x1, y1, x2, y2 = box
    return 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h


# ---------------------------------------------------------------------------- every method
def test_text_methods(pipe, image):
    assert isinstance(pipe.caption(image, max_new_tokens=6), str)
    assert isinstance(pipe.ask(image, "what color is the star?", max_new_tokens=4), str)
    assert isinstance(pipe.describe_region(image, (10, 10, 120, 100), max_new_tokens=4), str)


def test_classify_returns_a_scored_label(pipe, image):
    label = pipe.classify(image)
    assert isinstance(label, Label) and label in pipe.classes["image"] and 0 < label.score <= 1
    own = pipe.classify(image, labels=["cat", "dog", "hot dog"])
    assert own in ("cat", "dog", "hot dog")
    region = pipe.classify_region(image, Box(10, 10, 120, 100))
    assert region in pipe.classes["object"]
    assert json.loads(json.dumps(own.to_dict()))["label"] == own


def test_detect_in_original_frame_with_real_scores(pipe, image):
    dets = pipe.detect(image, max_objects=4)
    assert dets and all(isinstance(d, Detection) for d in dets)
    assert all(inside(d.box) and d.label in pipe.classes["object"] for d in dets)
    scores = [d.score for d in dets]
    assert all(0 < s < 1 for s in scores) and scores == sorted(scores, reverse=True)
    assert len(pipe.detect(image, max_objects=2)) <= 2
    sampled = pipe.detect(image, max_objects=3, top_p=0.5)
    assert all(inside(d.box) for d in sampled)
    assert pipe.detect(image, max_objects=3, threshold=1.1) == []
    json.dumps([d.to_dict() for d in dets])


def test_ground_in_original_frame(pipe, image):
    box = pipe.ground(image, "the red circle")
    assert isinstance(box, Box) and inside(box) and box.x2 > box.x1 and box.y2 > box.y1


def test_dense_outputs_have_the_original_size(pipe, image):
    mask = pipe.segment(image, "the red circle")
    assert mask.shape == (H, W) and mask.dtype == bool
    depth = pipe.depth(image)
    assert depth.shape == (H, W) and depth.dtype == np.float32 and np.isfinite(depth).all()


def test_generate_image_and_inpaint(pipe, image):
    out = pipe.generate_image("a red circle", seed=0)
    assert isinstance(out, Image.Image)
    assert pipe.generate_image("a red circle", seed=0).tobytes() == out.tobytes()  # seeded
    two = pipe.generate_image(["a red circle", "a blue star"], guidance=3.0, seed=1, size=(32, 16))
    assert [im.size for im in two] == [(32, 16), (32, 16)]
    box = (40, 20, 140, 90)
    painted = pipe.inpaint(image, box, "a red circle", seed=0)
    assert painted.size == (W, H)
    a, b = np.asarray(image), np.asarray(painted)
    outside = np.ones((H, W), bool)
    outside[20:90, 40:140] = False
    assert (a[outside] == b[outside]).all()


def test_score_ranks_texts(pipe, image):
    scores = pipe.score(image, ["a red circle", "two large blue squares and a star"])
    assert len(scores) == 2 and all(isinstance(s, float) and s < 0 for s in scores)
    rows = pipe.score([image, image], ["a red circle"])
    assert len(rows) == 2 and rows[0] == pytest.approx(rows[1], rel=1e-5)
    assert rows[0][0] == pytest.approx(scores[0], rel=1e-4)


def test_generate_returns_typed_runs(pipe, image):
    runs = pipe.generate("List the objects in the image with their locations.", image, max_new_tokens=12)
    assert isinstance(runs, list) and all(isinstance(r, Run) for r in runs)
    for r in runs:
        assert r.kind in ("text", "boxes", "image", "codes")
        if r.kind == "boxes":
            assert all(inside(b) for b in r.value)
    assert isinstance(pipe.generate(["Describe the image."] * 2, max_new_tokens=4), list)


def test_parse_reads_raw_ids_in_the_image_frame(pipe, image):
    sample = {"image": image, "objects": [{"box": (30.0, 40.0, 150.0, 110.0), "label": "small red circle"}]}
    ex = get_task("detect").build(sample, pipe.ctx)
    dets = pipe.parse("detect", ex.labels, image=image)
    assert dets[0].label == "small red circle"
    assert np.allclose(dets[0].box, (30, 40, 150, 110), atol=W / 1000)
    assert pipe.parse("detect", torch.tensor(ex.labels))[0].box[2] < 64  # model frame without an image


def test_run_dispatches_by_name(pipe, image):
    assert pipe.run("ground", image, expression="the red circle") == pipe.ground(image, "the red circle")
    assert isinstance(pipe.run("generate_image", text="a star", seed=0), Image.Image)
    with pytest.raises(TaskError, match="unknown task"):
        pipe.run("translate", image)


def test_run_takes_the_task_methods_options(pipe, image, monkeypatch):
    seen = []
    real = pipe._generate
    def spy(examples, processors, gen_kw, want_scores):
        seen.append(dict(gen_kw))
        return real(examples, processors, gen_kw, want_scores)
    monkeypatch.setattr(pipe, "_generate", spy)
    pipe.run("caption", image, num_beams=2, max_new_tokens=3)
    assert seen[-1]["num_beams"] == 2 and seen[-1]["max_new_tokens"] == 3
    pipe.run("vqa", [image, image], question="what color?", repetition_penalty=1.3, max_new_tokens=2)
    assert seen[-1]["repetition_penalty"] == 1.3
    assert pipe.run("detect", image, threshold=1.01) == []  # no score exceeds 1
    assert pipe.run("detect", image, max_objects=1, threshold=0.0) == pipe.detect(image, max_objects=1)
    with pytest.raises(InputError, match=r"unknown option\(s\) \['guidence'\] for generate_image; it takes .*guidance"):
        pipe.run("generate_image", text="a star", guidence=3)
    with pytest.raises(InputError, match=r"\['threshold'\] for caption"):
        pipe.run("caption", image, threshold=0.5)
    with pytest.raises(InputError, match="caption takes no question"):
        pipe.run("caption", image, question="what?")
    with pytest.raises(TaskError, match="needs question"):
        pipe.run("vqa", image)


def test_option_strings_parse_and_scope():
    from unio.pipeline import options_for
    from unio.tasks.options import parse_options
    opts = parse_options(["num_beams=3", "generate_image.guidance=2.5", "detect.threshold=0.5", "prompt=none",
                          "do_sample=false"])
    assert opts == {None: {"num_beams": 3, "prompt": None, "do_sample": False},
                    "generate_image": {"guidance": 2.5}, "detect": {"threshold": 0.5}}
    assert options_for("detect", opts) == {"num_beams": 3, "prompt": None, "do_sample": False, "threshold": 0.5}
    with pytest.raises(InputError, match=r"scope it, e.g. --option detect.threshold="):
        options_for("caption", parse_options(["threshold=0.5"]))
    for bad, message in [("beams", "not KEY=VALUE"), ("=3", "not KEY=VALUE"), ("a=", "not KEY=VALUE"),
                         ("colorize.x=1", "unknown task 'colorize'")]:
        with pytest.raises(unio.UnioError, match=message):
            parse_options([bad])


# ---------------------------------------------------------------------------- batching
def test_lists_are_batched_and_match_single_calls(pipe, image, tmp_path):
    other = Image.fromarray(np.asarray(image)[:, ::-1].copy())
    path = tmp_path / "img.png"
    other.save(path)
    images = [image, np.asarray(other), str(path)]
    questions = ["what?", "how many large purple squares are left of the small cyan cross?", "is it red?"]
    batched = pipe.ask(images, questions, max_new_tokens=5, batch_size=2)
    assert batched == [pipe.ask(im, q, max_new_tokens=5) for im, q in zip(images, questions)]
    dets = pipe.detect(images, max_objects=3)
    singles = [pipe.detect(im, max_objects=3) for im in images]
    for got, want in zip(dets, singles):
        assert [(d.box, d.label) for d in got] == [(d.box, d.label) for d in want]
        assert [d.score for d in got] == pytest.approx([d.score for d in want], rel=1e-3)
    boxes = pipe.ground(images, ["the red circle", "the star", "the square"])
    assert len(boxes) == 3 and all(inside(b) for b in boxes)
    regions = pipe.describe_region(images, [(1, 1, 50, 50), (10, 10, 60, 60), (0, 0, 300, 120)], max_new_tokens=3)
    assert len(regions) == 3


# ---------------------------------------------------------------------------- bad inputs
def test_bad_inputs_raise_clear_errors(pipe, image):
    with pytest.raises(TaskError, match="needs question"):
        pipe.ask(image, None)
    with pytest.raises(BoxError, match="empty or inverted"):
        pipe.describe_region(image, (50, 50, 10, 10))
    with pytest.raises(InputError, match="one box per image"):
        pipe.describe_region([image, image], [(1, 1, 5, 5)] * 3)
    with pytest.raises(InputError, match="list of 2 strings"):
        pipe.ask([image, image], ["one question"])
    with pytest.raises(InputError, match="empty list of images"):
        pipe.caption([])
    with pytest.raises(ImageError, match="does not exist"):
        pipe.caption("no/such/file.png")
    with pytest.raises(InputError, match="non-empty list"):
        pipe.classify(image, labels=[])
    with pytest.raises(InputError, match=r"unknown option\(s\) \['guidance'\] for detect"):
        pipe.detect(image, guidance=2.0)
    with pytest.raises(InputError, match="non-empty"):
        pipe.score(image, [])


# ---------------------------------------------------------------------------- export directories
def test_export_directory_contents(export):
    names = {p.name for p in export.iterdir()}
    assert {"config.json", "model.safetensors", "text.model", "image", "prompts", "unio.json"} <= names
    assert not [p for p in export.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    meta = json.loads((export / "unio.json").read_text())
    for key in ("versions", "vocab_fingerprint", "vocab", "classes", "image_size", "patch_size", "num_bins"):
        assert key in meta
    assert meta["versions"]["unio"] == unio.__version__ and meta["trained"] is False
    assert "small red circle" in meta["classes"]["object"]
    assert (export / "prompts" / "prompts.yaml").is_file()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")
def test_export_files_are_as_readable_as_the_umask_allows(export):
    # safetensors writes weights owner-only (0600); an export must read like any other file
    mask = os.umask(0)
    os.umask(mask)
    modes = {p.relative_to(export).as_posix(): p.stat().st_mode & 0o777 for p in export.rglob("*") if p.is_file()}
    assert "model.safetensors" in modes and "image/model.safetensors" in modes
    assert modes == dict.fromkeys(modes, 0o666 & ~mask)


def test_load_refuses_mismatched_tokenizers(export, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(export, bad)
    from unio.tokenizers.text import TextTokenizer
    TextTokenizer.train(["a completely different corpus of words"] * 50, 300, bad / "text.model")
    with pytest.raises(VocabMismatchError, match="text tokenizer"):
        unio.load(bad)


def test_load_errors(export, tmp_path):
    with pytest.raises(CheckpointError, match="neither an export directory nor a shipped model"):
        unio.load(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="shipped"):
        unio.load("shapes-demo-that-does-not-exist")
    partial = tmp_path / "partial"
    shutil.copytree(export, partial)
    (partial / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing model.safetensors"):
        unio.load(partial)
    from safetensors.torch import load_file, save_file
    state = load_file(export / "model.safetensors")
    name = sorted(state)[0]
    state["renamed." + name] = state.pop(name)
    save_file(state, partial / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="do not fit this version of the model"):
        unio.load(partial)
    (partial / "unio.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        unio.load(partial)


def test_device_dtype_and_device_map(export, image):
    p = unio.load(export, device="cpu", dtype="float32")
    assert p.device.type == "cpu" and p.dtype == torch.float32
    model, ctx, meta = load_export(export, device_map={"": "cpu"})
    assert isinstance(Pipeline(model, ctx, meta).ground(image, "the star"), Box)


def test_list_models_and_lazy_import():
    assert isinstance(unio.list_models(), list)
    code = "import sys, unio; print('torch' in sys.modules, unio.UnioError.__name__, sorted(unio.__all__))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("False UnioError") and "'list_models', 'load'" in out
    assert callable(unio.load) and callable(unio.list_models)


def test_unio_init_command(tmp_path):
    from unio.cli import main
    tok = shipped_tokenizers()
    assert main(["init", "--preset", "tiny", "--tokenizers", str(tok), "--out", str(tmp_path / "m"),
                 "--num-bins", "64"]) == 0
    assert json.loads((tmp_path / "m" / "unio.json").read_text())["num_bins"] == 64
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not empty"):
        init_export("tiny", tok, tmp_path / "other", quiet=True, **MICRO)


def test_swap_image_tokenizer_takes_a_decoder_that_makes_the_same_codes(micro_fast_export, tmp_path, capsys):
    from unio.cli import main as cli
    from unio.export import swap_image_tokenizer
    from unio.tokenizers.image import ImageTokenizer
    own = ImageTokenizer.load(micro_fast_export / "image")
    better = ImageTokenizer.load(micro_fast_export / "image")
    with torch.no_grad():
        better.decoder.conv_out.bias.add_(0.25)      # stands for a fine-tuned decoder
    better.save(tmp_path / "better")
    before = {str(p.relative_to(micro_fast_export)): p.read_bytes() for p in micro_fast_export.rglob("*") if p.is_file()}

    out = swap_image_tokenizer(micro_fast_export, tmp_path / "better", tmp_path / "swapped")
    pipe = unio.load(out, device="cpu")
    assert pipe.ctx.image_tokenizer.fingerprint == better.fingerprint
    meta = json.loads((out / "unio.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert meta["vocab_fingerprint"] == config["vocab_fingerprint"] == pipe.ctx.vocab.fingerprint
    assert meta["vocab_fingerprint"] != json.loads((micro_fast_export / "unio.json").read_text())["vocab_fingerprint"]
    assert meta["image_tokenizer_swaps"] == [{"from": own.fingerprint, "to": better.fingerprint,
                                              "codes_fingerprint": own.codes_fingerprint, "to_training": {}}]
    assert (out / "model.safetensors").read_bytes() == before["model.safetensors"]  # the network is untouched
    codes = torch.randint(0, own.codebook_size, (1, 8, 8))
    assert torch.allclose(pipe.ctx.image_tokenizer.decode(codes), better.decode(codes))
    assert {str(p.relative_to(micro_fast_export)): p.read_bytes() for p in micro_fast_export.rglob("*") if p.is_file()} == before

    # in place, through the command; a second swap is recorded after the first
    assert cli(["tokenizer", "swap-image", "--model", str(out), "--tokenizer", str(micro_fast_export / "image"),
                "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert unio.load(out, device="cpu").ctx.vocab.fingerprint == \
        json.loads((micro_fast_export / "unio.json").read_text())["vocab_fingerprint"]
    assert len(json.loads((out / "unio.json").read_text())["image_tokenizer_swaps"]) == 2


def test_swap_image_tokenizer_refuses_other_codes_and_full_folders(micro_fast_export, tmp_path, capsys):
    from unio.cli import main as cli
    from unio.tokenizers.image import ImageTokenizer
    other = ImageTokenizer.load(micro_fast_export / "image")
    with torch.no_grad():
        other.encoder.conv_in.bias.add_(0.25)
    other.save(tmp_path / "other")
    args = ["tokenizer", "swap-image", "--model", str(micro_fast_export), "--out", str(tmp_path / "o")]
    assert cli(args + ["--tokenizer", str(tmp_path / "other")]) == 2
    assert "makes other codes" in capsys.readouterr().err and not (tmp_path / "o").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("keep me")
    assert cli(args[:-1] + [str(tmp_path / "full"), "--tokenizer", str(micro_fast_export / "image")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "full" / "notes.txt").read_text() == "keep me"
    assert cli(["tokenizer", "swap-image", "--model", str(tmp_path / "nothing"), "--tokenizer", str(tmp_path / "other"),
                "--out", str(tmp_path / "o")]) == 2
    assert "neither an export directory" in capsys.readouterr().err


def test_task_defaults_in_unio_json_set_the_decoding_the_caller_leaves_open(micro_fast_export, tmp_path):
    import shutil
    out = tmp_path / "with-defaults"
    shutil.copytree(micro_fast_export, out)
    meta = json.loads((out / "unio.json").read_text())
    meta["task_defaults"] = {"generate_image": {"guidance": 2.0, "temperature": 0.5}}
    (out / "unio.json").write_text(json.dumps(meta))
    plain, tuned = unio.load(micro_fast_export, device="cpu"), unio.load(out, device="cpu")
    assert tuned.task_defaults == {"generate_image": {"guidance": 2.0, "temperature": 0.5}}
    text = "a small red circle"
    same = lambda a, b: np.array_equal(np.asarray(a), np.asarray(b))
    assert same(tuned.generate_image(text, seed=3), plain.generate_image(text, seed=3, guidance=2.0, temperature=0.5))
    assert not same(plain.generate_image(text, seed=3), plain.generate_image(text, seed=3, guidance=2.0,
                                                                          temperature=0.5))  # the defaults matter
    # the caller's values win; guidance=1 turns guidance off
    assert same(tuned.generate_image(text, seed=3, guidance=1, temperature=1.0), plain.generate_image(text, seed=3))
    assert same(tuned.generate_image(text, seed=3, temperature=1.0),
                plain.generate_image(text, seed=3, guidance=2.0))
    from unio.evaluate import evaluate
    run = evaluate(tuned, "shapes:1", tasks=["generate_image"], n=2)["run"]
    assert run["task_defaults"] == tuned.task_defaults


@pytest.mark.parametrize("defaults, message", [
    ({"generate_image": {"guidnce": 2}}, "unknown option(s) ['guidnce']"),
    ({"paint": {"guidance": 2}}, "paint"),
    ({"generate_image": 2}, "must map task names"),
    (["generate_image"], "must map task names")])
def test_bad_task_defaults_are_refused_at_load(micro_fast_export, tmp_path, defaults, message):
    import shutil
    from unio.errors import CheckpointError
    out = tmp_path / "bad"
    shutil.copytree(micro_fast_export, out)
    meta = json.loads((out / "unio.json").read_text())
    meta["task_defaults"] = defaults
    (out / "unio.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="task_defaults in .*unio.json") as err:
        unio.load(out, device="cpu")
    assert message in str(err.value)


def test_candidates_keep_the_sample_the_text_explains_best(micro_fast_export, monkeypatch):
    pipe = unio.load(micro_fast_export, device="cpu")
    seen, calls = {}, []
    generate = pipe._generate

    def spy(rows, *args, **kwargs):
        seen["rows"], seen["outs"] = len(rows), generate(rows, *args, **kwargs)
        return seen["outs"]

    def loglik(examples, targets):  # conditional calls favour the last sample of each text
        calls.append((len(examples), all(t[-1] == pipe.ctx.vocab.eos_id for t in targets)))
        if len(calls) % 2:
            return np.array([float(i % 3 == 2) for i in range(len(examples))])
        return np.zeros(len(examples))

    monkeypatch.setattr(pipe, "_generate", spy)
    monkeypatch.setattr(pipe, "target_loglik", loglik)
    texts = ["a small red circle", "a large blue square"]
    images = pipe.generate_image(texts, seed=0, candidates=3, rerank="pmi")
    assert seen["rows"] == 6 and calls == [(6, True), (6, True)]
    task = get_task("generate_image")
    for j, image in enumerate(images):
        assert np.array_equal(np.asarray(image), np.asarray(task.parse(seen["outs"][j * 3 + 2][0], pipe.ctx)))
    pipe.generate_image(texts, seed=0, candidates=3, guidance=2.0, rerank="pmi")
    assert seen["rows"] == 12  # each candidate has its unconditional row


def test_caption_rerank_scores_each_drawn_picture_against_its_text(micro_fast_export, monkeypatch):
    pipe = unio.load(micro_fast_export, device="cpu")
    assert "caption" in pipe.tasks
    seen, calls = {}, []
    generate = pipe._generate

    def spy(rows, *args, **kwargs):
        seen["outs"] = generate(rows, *args, **kwargs)
        return seen["outs"]

    def loglik(examples, targets):  # the caption of the middle sample of each text fits best
        calls.append((examples, targets))
        return np.array([float(i % 3 == 1) for i in range(len(examples))])

    monkeypatch.setattr(pipe, "_generate", spy)
    monkeypatch.setattr(pipe, "target_loglik", loglik)
    texts = ["a small red circle", "a large blue square"]
    images = pipe.generate_image(texts, seed=0, candidates=3, rerank="caption")
    assert len(calls) == 1
    examples, targets = calls[0]
    task = get_task("generate_image")
    eos = pipe.ctx.vocab.eos_id
    for j, text in enumerate(texts):
        for c in range(3):
            row, drawn = examples[j * 3 + c], task.parse(seen["outs"][j * 3 + c][0], pipe.ctx)
            assert row.task == "caption" and targets[j * 3 + c] == pipe.ctx.encode_text(text) + [eos]
            assert row.prompt == get_task("caption").build({"image": drawn}, pipe.ctx).prompt
            diff = np.abs(np.asarray(row.image, np.int16) - np.asarray(letterbox(drawn, pipe.ctx.image_size)[0], np.int16))
            assert diff.max() <= 1, diff.max()  # decoded in one batch vs alone: rounding only
        assert np.array_equal(np.asarray(images[j]), np.asarray(task.parse(seen["outs"][j * 3 + 1][0], pipe.ctx)))


def test_candidates_bound_the_rows_of_each_generate_call(micro_fast_export, monkeypatch):
    import unio.pipeline as pipeline_module
    pipe = unio.load(micro_fast_export, device="cpu")
    rows_per_call = []
    generate = pipe._generate

    def spy(rows, *args, **kwargs):
        rows_per_call.append(len(rows))
        return generate(rows, *args, **kwargs)

    monkeypatch.setattr(pipe, "_generate", spy)
    monkeypatch.setattr(pipe, "target_loglik", lambda ex, tg: np.zeros(len(ex)))
    monkeypatch.setattr(pipeline_module, "CANDIDATE_ROWS", 6)
    images = pipe.generate_image(["a small red circle"] * 3, seed=0, candidates=3, rerank="pmi", batch_size=8)
    assert len(images) == 3 and rows_per_call == [6, 3]  # two texts' candidates, then the third's
    rows_per_call.clear()
    pipe.generate_image(["a small red circle"] * 3, seed=0, candidates=3, guidance=2.0, rerank="pmi", batch_size=8)
    assert rows_per_call == [12, 6]  # guidance adds an unconditional row per candidate


def test_text_recall_counts_words_and_pairs_in_any_order():
    from unio.metrics import text_recall
    # 9 words + 8 pairs wanted; the reordered caption lacks only the pair ("star", "and")
    assert text_recall("a small red star and a large blue circle.", "A large blue circle and a small red star") \
        == pytest.approx(16 / 17)
    assert text_recall("a red star", "a red circle") == pytest.approx(3 / 5)  # a, red, (a red) of a, red, star + 2 pairs
    assert text_recall("two stars", "two two stars stars") == 1.0
    assert text_recall("a a", "a") == pytest.approx(1 / 3)  # repeats count: one "a" of two, no ("a", "a")
    assert text_recall("", "anything") == 1.0  # nothing asked, nothing missed


def test_recaption_rerank_keeps_the_picture_whose_caption_names_the_text(micro_fast_export, monkeypatch):
    pipe = unio.load(micro_fast_export, device="cpu")
    seen = {}
    generate, predict = pipe._generate, pipe.predict_examples

    def spy(rows, *args, **kwargs):
        seen["outs"] = generate(rows, *args, **kwargs)
        return seen["outs"]

    said = {}

    def captions(task_name, examples, **kwargs):  # the model's own captions of the drawn pictures
        if task_name != "caption":
            return predict(task_name, examples, **kwargs)
        assert all(e.task == "caption" for e in examples)
        return [said[i % 3] for i in range(len(examples))]

    monkeypatch.setattr(pipe, "_generate", spy)
    monkeypatch.setattr(pipe, "predict_examples", captions)
    # the likelihood prefers the middle candidate of each text
    monkeypatch.setattr(pipe, "target_loglik", lambda ex, tg: np.array([float(i % 3 == 1) for i in range(len(ex))]))
    task = get_task("generate_image")
    texts = ["a small red circle", "a small red circle"]
    said.update({0: "a large blue square", 1: "a small red square", 2: "a small red circle"})
    images = pipe.generate_image(texts, seed=0, candidates=3)  # recaption is the default reranker
    for j in range(2):  # only the last candidate's caption names all the text: it wins over the likelihood
        assert np.array_equal(np.asarray(images[j]), np.asarray(task.parse(seen["outs"][j * 3 + 2][0], pipe.ctx)))
    said.update({0: "a small red circle", 1: "a small red circle", 2: "a small red circle"})
    images = pipe.generate_image(texts, seed=0, candidates=3, rerank="recaption")
    for j in range(2):  # captions tie: the likelihood decides
        assert np.array_equal(np.asarray(images[j]), np.asarray(task.parse(seen["outs"][j * 3 + 1][0], pipe.ctx)))


def test_rerank_is_checked_and_falls_back_to_pmi_without_a_caption_prompt(micro_fast_export, monkeypatch):
    pipe = unio.load(micro_fast_export, device="cpu")
    with pytest.raises(InputError, match="rerank='clip' of generate_image: must be one of recaption, caption, pmi"):
        pipe.generate_image("a small red circle", candidates=2, rerank="clip")
    with pytest.raises(InputError, match="unknown option"):
        pipe.run("caption", Image.new("RGB", (32, 32)), rerank="pmi")
    example = get_task("detect").build({"image": Image.new("RGB", (32, 32))}, pipe.ctx)
    with pytest.raises(InputError, match=r"unknown option\(s\) \['rerank'\] for detect"):
        pipe.predict_examples("detect", [example], rerank="pmi")
    monkeypatch.setattr(type(pipe.ctx.prompts), "tasks", property(lambda self: ["generate_image"]))
    for rerank in ("caption", "recaption"):
        with pytest.raises(InputError, match="caption prompt, and this model has none"):
            pipe.generate_image("a small red circle", candidates=2, rerank=rerank)
    calls = []
    monkeypatch.setattr(pipe, "target_loglik", lambda examples, targets: calls.append(examples) or np.zeros(len(examples)))
    pipe.generate_image("a small red circle", seed=0, candidates=2)
    assert len(calls) == 2 and all(e.task == "generate_image" for e in calls[0])  # pmi: conditional, unconditional


def test_candidates_run_for_real_and_are_checked(micro_fast_export):
    pipe = unio.load(micro_fast_export, device="cpu")
    images = pipe.generate_image(["a small red circle", "a large blue square"], seed=1, candidates=2, guidance=2.0)
    assert len(images) == 2 and images[0].size == images[1].size
    for bad, why in ((0, "must be >= 1"), (1.5, "must be a whole number"), (True, "must be a whole number")):
        with pytest.raises(InputError, match=f"candidates={bad!r} of generate_image: {why}"):
            pipe.generate_image("a small red circle", candidates=bad)
    with pytest.raises(InputError, match="unknown option"):
        pipe.run("caption", Image.new("RGB", (32, 32)), candidates=2)
    task = get_task("detect")
    example = task.build({"image": Image.new("RGB", (32, 32))}, pipe.ctx)
    with pytest.raises(InputError, match=r"unknown option\(s\) \['candidates'\] for detect"):
        pipe.predict_examples("detect", [example], candidates=2)


def test_export_functions_moved_with_a_deprecation_path():
    import unio.export
    import unio.pipeline
    with pytest.warns(DeprecationWarning, match="moved to unio.export.init_export"):
        assert unio.pipeline.init_export is unio.export.init_export
    with pytest.raises(AttributeError):
        unio.pipeline.no_such_name


def test_one_image_many_questions_is_one_batch_with_the_same_answers(pipe, image, monkeypatch):
    questions = ["what?", "how many large purple squares are left of the small cyan cross?", "is it red?"]
    singles = [pipe.ask(image, q, max_new_tokens=5) for q in questions]
    calls = []
    generate = pipe._generate
    monkeypatch.setattr(pipe, "_generate", lambda rows, *a, **k: calls.append(len(rows)) or generate(rows, *a, **k))
    assert pipe.ask(image, questions, max_new_tokens=5) == singles
    assert calls == [3]  # one decoding pass for the three questions
    boxes = [(1, 1, 50, 50), (10, 10, 60, 60)]
    assert pipe.describe_region(image, boxes, max_new_tokens=3) == \
        [pipe.describe_region(image, b, max_new_tokens=3) for b in boxes]
    assert isinstance(pipe.describe_region(image, boxes[0], max_new_tokens=3), str)  # one box: one answer


def test_a_progress_bar_changes_nothing(pipe, image):
    before = pipe.caption(image, max_new_tokens=4)
    pipe.progress = True
    try:
        assert pipe.caption(image, max_new_tokens=4) == before
    finally:
        pipe.progress = False
