"""Image-guided refiners of decoded depth maps and masks: the module, the tokenizer, training, the pipeline."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import unio
from unio.cli import main as cli
from unio.errors import ImageError, TokenizerError
from unio.tokenizers.image import ImageTokenizer, ImageTokenizerConfig
from unio.tokenizers.refine import GuidedRefiner, RefinerConfig

TINY = dict(image_size=32, channels=(8, 16, 16))


def _scramble(refiner: GuidedRefiner, seed: int = 0, scale: float = 3.0) -> GuidedRefiner:
    """Random weights in the last layer: a refiner that does something picture-dependent."""
    g = torch.Generator().manual_seed(seed)
    last = refiner.net[-1]
    with torch.no_grad():
        last.weight.copy_(torch.randn(last.weight.shape, generator=g) * scale / last.weight[0].numel() ** 0.5)
        last.bias.copy_(torch.randn(last.bias.shape, generator=g))
    return refiner


@pytest.mark.parametrize("kwargs, message", [({"kernel": 4}, "odd"), ({"kernel": 17}, "odd, from 3 to 15"),
                                             ({"kernel": 9.0}, "integer"), ({"layers": 1}, "layers"),
                                             ({"channels": 2}, "channels"), ({"kernel": True}, "integer")])
def test_refiner_config_is_checked(kwargs, message):
    with pytest.raises(TokenizerError, match=message):
        RefinerConfig(**kwargs)


@pytest.mark.parametrize("refiners, message", [({"rgb": {}}, "not \\['rgb'\\]"), ({"depth": {"size": 3}}, "unknown keys"),
                                               ({"depth": 9}, "must be a mapping"), (["depth"], "must be a mapping")])
def test_tokenizer_config_checks_its_refiners(refiners, message):
    with pytest.raises(TokenizerError, match=message):
        ImageTokenizerConfig(**TINY, refiners=refiners)


def test_refined_values_stay_inside_each_neighbourhood():
    torch.manual_seed(0)
    refiner = _scramble(GuidedRefiner(RefinerConfig(kernel=5, channels=8, layers=3)))
    value, guide = torch.rand(2, 1, 16, 16), torch.rand(2, 3, 16, 16)
    out = refiner(value, guide)
    padded = F.pad(value, (2, 2, 2, 2), mode="replicate")
    hi = F.max_pool2d(padded, 5, stride=1)
    lo = -F.max_pool2d(-padded, 5, stride=1)
    assert out.shape == value.shape
    assert bool((out <= hi + 1e-6).all() and (out >= lo - 1e-6).all())
    assert not torch.allclose(out, value)  # it did move values
    # a flat map stays flat whatever the picture shows: the refiner cannot invent depth
    flat = torch.full((2, 1, 16, 16), 0.37)
    assert torch.allclose(refiner(flat, guide), flat, atol=1e-6)


def test_an_untrained_refiner_is_a_box_filter():
    refiner = GuidedRefiner(RefinerConfig(kernel=3, channels=4, layers=2))
    value, guide = torch.rand(1, 1, 8, 8), torch.rand(1, 3, 8, 8)
    box = F.avg_pool2d(F.pad(value, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    assert torch.allclose(refiner(value, guide), box, atol=1e-6)


def test_refiner_refuses_mismatched_inputs():
    refiner = GuidedRefiner(RefinerConfig(kernel=3, channels=4, layers=2))
    with pytest.raises(TokenizerError, match="maps \\(B, 1, H, W\\)"):
        refiner(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))
    with pytest.raises(TokenizerError, match="guide must be pictures"):
        refiner(torch.rand(1, 1, 8, 8), torch.rand(1, 3, 4, 4))


def test_a_refiner_changes_neither_codes_nor_the_plain_decoder(tmp_path):
    torch.manual_seed(0)
    tok = ImageTokenizer(**TINY, weights_dtype="float16")
    tok.save(tmp_path / "plain")
    plain = ImageTokenizer.load(tmp_path / "plain")
    refined = ImageTokenizer.load(tmp_path / "plain")
    _scramble(refined.add_refiner("depth", RefinerConfig(kernel=5, channels=8, layers=3)))
    assert refined.has_refiner("depth") and not refined.has_refiner("mask") and "refiners=depth" in refined.extra_repr()
    assert refined.codes_fingerprint == plain.codes_fingerprint and refined.fingerprint != plain.fingerprint
    with pytest.raises(TokenizerError, match="already has a depth refiner"):
        refined.add_refiner("depth")
    with pytest.raises(TokenizerError, match="not 'rgb'"):
        refined.add_refiner("rgb")

    depth = torch.rand(3, 32, 32) * 0.8 + 0.1
    pictures = torch.rand(3, 3, 32, 32)
    codes = plain.encode_depth(depth)
    assert torch.equal(refined.encode_depth(depth), codes)
    assert np.array_equal(refined.decode_depth(codes), plain.decode_depth(codes))  # no guide: the codes alone
    guided = refined.decode_depth(codes, guide=pictures)
    assert guided.shape == (3, 32, 32) and not np.allclose(guided, plain.decode_depth(codes))
    assert np.array_equal(plain.decode_depth(codes, guide=pictures), plain.decode_depth(codes))  # no refiner
    # masks have no refiner here: the guide is not used
    assert np.array_equal(refined.decode_mask(codes, guide=pictures), plain.decode_mask(codes))

    # saved and loaded: same refiner, same outputs; the config names it
    refined.save(tmp_path / "refined")
    again = ImageTokenizer.load(tmp_path / "refined")
    assert json.loads((tmp_path / "refined" / "config.json").read_text())["refiners"] == {
        "depth": {"kernel": 5, "channels": 8, "layers": 3}}
    assert again.fingerprint == refined.fingerprint
    assert np.allclose(again.decode_depth(codes, guide=pictures), guided, atol=2e-3)  # float16 storage


def test_guides_are_resized_and_checked():
    torch.manual_seed(0)
    tok = ImageTokenizer(**TINY)
    _scramble(tok.add_refiner("mask", RefinerConfig(kernel=3, channels=4, layers=2)))
    codes = tok.encode(torch.rand(2, 3, 32, 32))
    big = torch.rand(2, 3, 64, 64)
    small = F.interpolate(big, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    assert np.array_equal(tok.decode_mask(codes, guide=big), tok.decode_mask(codes, guide=small))
    pil = [Image.fromarray((np.random.default_rng(i).random((32, 32, 3)) * 255).astype(np.uint8)) for i in range(2)]
    assert tok.decode_mask(codes, guide=pil).shape == (2, 32, 32)
    with pytest.raises(ImageError, match="2 maps but 1 guide"):
        tok.decode_mask(codes, guide=big[:1])
    with pytest.raises(ImageError, match="guide: image values must be in \\[0, 1\\]"):
        tok.decode_mask(codes, guide=big * 3)
    with pytest.raises(TokenizerError, match="--refine depth"):
        tok.refine("depth", torch.rand(2, 1, 32, 32), big)


def test_refiner_training_lowers_its_loss():
    from unio.data.pictures import ShapesPictures
    from unio.training.image_tokenizer import refine_step
    torch.manual_seed(0)
    tok = ImageTokenizer(**TINY)
    tok.add_refiner("depth", RefinerConfig(kernel=5, channels=8, layers=3))
    tok.add_refiner("mask", RefinerConfig(kernel=5, channels=8, layers=3))
    for name, p in tok.named_parameters():
        p.requires_grad_(name.startswith("refiners."))
    opt = torch.optim.Adam([p for p in tok.parameters() if p.requires_grad], lr=1e-2)
    batch = ShapesPictures(image_size=32, seed=3).guided(range(8))
    assert batch["rgb"].shape == (8, 3, 32, 32) and batch["depth"].shape == batch["mask"].shape == (8, 32, 32)
    frozen = {k: v.clone() for k, v in tok.state_dict().items() if not k.startswith("refiners.")}
    losses = [refine_step(tok, opt, batch, ("depth", "mask")) for _ in range(25)]
    assert set(losses[0]) == {"loss", "loss_depth", "loss_mask"}
    assert losses[-1]["loss_depth"] < 0.95 * losses[0]["loss_depth"]
    assert losses[-1]["loss_mask"] < losses[0]["loss_mask"]
    assert all(torch.equal(v, tok.state_dict()[k]) for k, v in frozen.items())  # only the refiners learnt


def test_refine_command_trains_only_the_refiners_and_resumes(tmp_path, capsys):
    torch.manual_seed(0)
    ImageTokenizer(**TINY, weights_dtype="float16").save(tmp_path / "parent")
    parent = ImageTokenizer.load(tmp_path / "parent")
    out = tmp_path / "child"
    args = ["tokenizer", "image", "--out", str(out), "--init", str(tmp_path / "parent"), "--refine", "depth",
            "--refine-kernel", "5", "--batch-size", "4", "--eval-every", "3", "--eval-n", "4", "--threads", "1",
            "--lr", "1e-2"]
    assert cli(args + ["--steps", "3"]) == 0
    assert "depth refiner(s) only" in capsys.readouterr().out
    child = ImageTokenizer.load(out)
    assert child.has_refiner("depth") and child.config.refiners["depth"]["kernel"] == 5
    assert child.codes_fingerprint == parent.codes_fingerprint
    assert all(torch.equal(v, child.state_dict()[k]) for k, v in parent.state_dict().items())  # decoder too
    trained = child.refiners["depth"].net[-1].weight.detach().clone()
    assert float(trained.abs().sum()) > 0  # it left the box filter it started as
    record = child.config.training
    assert record["fine_tuned"]["refine"] == ["depth"] and record["fine_tuned"]["init_fingerprint"] == parent.fingerprint
    assert {"depth_absrel", "depth_absrel_refined", "mask_iou"} <= set(record["held_out_quality"])
    assert "mask_iou_refined" not in record["held_out_quality"]
    assert cli(["tokenizer", "image", "--out", str(out), "--steps", "5", "--resume", "--eval-every", "5",
                "--eval-n", "4", "--batch-size", "4", "--threads", "1"]) == 0
    resumed = ImageTokenizer.load(out)
    assert resumed.config.training["steps"] == 5 and resumed.config.training["fine_tuned"] == record["fine_tuned"]
    assert not torch.equal(resumed.refiners["depth"].net[-1].weight, trained)


@pytest.mark.parametrize("extra, message", [
    (["--refine", "depth"], "add --init DIR"),
    (["--init", "PARENT", "--refine", "rgb"], "--refine takes depth, mask"),
    (["--init", "PARENT", "--refine", "depth", "--decoder-only"], "fine-tune the decoder first"),
    (["--init", "PARENT", "--refine", "depth", "--data", "folder:PARENT"], "use --data shapes"),
    (["--init", "PARENT", "--refine-kernel", "5"], "add --refine depth"),
    (["--init", "PARENT", "--refine", "depth", "--refine-kernel", "4"], "odd")])
def test_refine_command_refuses_bad_flags(tmp_path, capsys, extra, message):
    ImageTokenizer(**TINY).save(tmp_path / "parent")
    extra = [e.replace("PARENT", str(tmp_path / "parent")) for e in extra]
    assert cli(["tokenizer", "image", "--out", str(tmp_path / "o"), "--steps", "1", "--threads", "1", *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_pipeline_refines_depth_with_the_input_picture(micro_fast_export, tmp_path, capsys):
    from unio.export import swap_image_tokenizer
    own = ImageTokenizer.load(micro_fast_export / "image")
    _scramble(own.add_refiner("depth", RefinerConfig(kernel=5, channels=8, layers=3)), scale=6.0)
    own.save(tmp_path / "refined")
    out = swap_image_tokenizer(micro_fast_export, tmp_path / "refined", tmp_path / "model")
    plain, pipe = unio.load(micro_fast_export, device="cpu"), unio.load(out, device="cpu")
    images = [Image.fromarray((np.random.default_rng(i).random((48, 40, 3)) * 255).astype(np.uint8)) for i in range(2)]
    base = plain.depth(images)
    assert all(np.array_equal(a, b) for a, b in zip(pipe.depth(images, refine=False), base))
    refined = pipe.depth(images)
    assert refined[0].shape == (48, 40) and not all(np.allclose(a, b) for a, b in zip(refined, base))
    assert all(np.array_equal(a, b) for a, b in zip(pipe.run("depth", images), refined))
    # the masks have no refiner: unchanged either way
    assert np.array_equal(pipe.segment(images[0], "the object"), plain.segment(images[0], "the object"))
    # from the command line
    images[0].save(tmp_path / "a.png")
    assert cli(["predict", "depth", "--model", str(out), str(tmp_path / "a.png"), "--option", "refine=false",
                "--out", str(tmp_path / "pred.jsonl")]) == 0
    capsys.readouterr()
    assert (tmp_path / "pred.jsonl").read_text().strip()


def _depth_folder(root, n=6, size=(48, 40)):
    """n pictures with metric depth maps (.npy, metres; a few missing pixels), matched by stem."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    (root / "depth").mkdir()
    for i in range(n):
        w, h = size
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(root / "img" / f"{i:03d}.png")
        d = np.full((h, w), 6.0, np.float32)
        d[h // 3:, : w // 2] = 2.0 + i * 0.3
        d[0, :5] = 0.0  # missing
        np.save(root / "depth" / f"{i:03d}.npy", d)
    return f"depth:images={root / 'img'},depth={root / 'depth'}"


def test_refiners_train_on_a_dataset_of_your_own(tmp_path, capsys):
    from unio.data.pictures import GuidedPictures
    spec = _depth_folder(tmp_path / "data")
    ImageTokenizer(**TINY, depth_range=(0.0, 10.0)).save(tmp_path / "parent")
    source = GuidedPictures(spec, 32, (0.0, 10.0), ("depth",), held_out=128)
    assert (source.train_n, source.held_out) == (5, 1)  # at most a fifth is held out
    b = source.guided(range(3))
    assert b["rgb"].shape == (3, 3, 32, 32) and b["depth"].shape == b["valid"].shape == (3, 32, 32)
    assert not bool(b["valid"][:, 0, :3].any())          # missing depth is out of the loss
    assert not bool(b["valid"][:, -2:, :].any())         # and so is the letterbox padding (40/48 of 32 rows)
    assert float(b["depth"][b["valid"]].min()) >= 2.0 and not bool(b["has_mask"].any())
    out = tmp_path / "child"
    assert cli(["tokenizer", "image", "--out", str(out), "--init", str(tmp_path / "parent"), "--refine", "depth",
                "--data", spec, "--steps", "2", "--batch-size", "2", "--eval-every", "2", "--eval-n", "4",
                "--threads", "1"]) == 0
    quality = ImageTokenizer.load(out).config.training["held_out_quality"]
    assert quality["images"] == 1 and {"depth_absrel", "depth_absrel_refined"} <= set(quality)
    # a dataset without the maps the refiner needs
    assert cli(["tokenizer", "image", "--out", str(tmp_path / "o"), "--init", str(tmp_path / "parent"),
                "--refine", "mask", "--data", spec, "--steps", "1", "--threads", "1"]) == 2
    assert "has no object masks" in capsys.readouterr().err and not (tmp_path / "o").exists()
