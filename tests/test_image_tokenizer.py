"""The VQ image tokenizer: shapes, dtypes, save/load, training, its command, and bad inputs."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from unio.cli import main as cli
from unio.errors import ImageError, TokenizerError, UnioError
from unio.tokenizers.image import ImageTokenizer, ImageTokenizerConfig

TINY = dict(image_size=32, channels=(16, 16, 32))


@pytest.fixture(scope="module")
def tok():
    torch.manual_seed(0)
    return ImageTokenizer(**TINY).eval()


def test_encode_decode_shapes_and_dtypes(tok):
    x = torch.rand(2, 3, 32, 32)
    codes = tok.encode(x)
    assert codes.shape == (2, 4, 4) and codes.dtype == torch.long
    assert 0 <= int(codes.min()) and int(codes.max()) < tok.codebook_size == 8 * 8 * 6 * 5
    out = tok.decode(codes)
    assert out.shape == (2, 3, 32, 32) and out.dtype == torch.float32
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert (tok.downsample, tok.image_size, tok.grid_size, tok.tokens_per_image) == (8, 32, 4, 16)
    assert torch.equal(tok.decode(codes.flatten(1)), out)         # flat (B, h*w) codes too
    assert tok.encode(torch.rand(1, 3, 48, 16)).shape == (1, 6, 2)  # any multiple of 8


def test_encode_accepts_pil_lists_and_uint8(tok):
    x = torch.rand(2, 3, 32, 32)
    x8 = (x * 255).round().to(torch.uint8)
    pils = [Image.fromarray(a.permute(1, 2, 0).numpy()) for a in x8]
    assert torch.equal(tok.encode(pils), tok.encode(x8.float() / 255))
    assert torch.equal(tok.encode(x8), tok.encode(x8.float() / 255))


def test_codebook_usage(tok):
    usage = tok.codebook_usage(torch.tensor([[[0, 0], [1, 2]]]))
    assert usage["usage"] == pytest.approx(3 / tok.codebook_size)
    assert usage["perplexity"] == pytest.approx(np.exp(-(0.5 * np.log(0.5) + 2 * 0.25 * np.log(0.25))))


@pytest.mark.parametrize("quantizer", ["fsq", "vq", "lfq"])
def test_save_load_gives_identical_codes(tmp_path, quantizer):
    torch.manual_seed(0)
    t = ImageTokenizer(**TINY, quantizer=quantizer, codebook_size=256)
    x = torch.rand(4, 3, 32, 32)
    t(x)  # one training-mode pass: vq initialises its codebook by k-means
    t.eval()
    codes = t.encode(x)
    t.save(tmp_path / "tok")
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == ["config.json", "model.safetensors"]
    loaded = ImageTokenizer.load(tmp_path / "tok")
    assert torch.equal(loaded.encode(x), codes)
    assert torch.equal(loaded.decode(codes), t.decode(codes))
    assert loaded.fingerprint == t.fingerprint and len(t.fingerprint) == 64
    assert loaded.codebook_size == t.codebook_size


def test_fp16_weights_keep_the_fingerprint(tmp_path):
    t = ImageTokenizer(**TINY, weights_dtype="float16")
    t.save(tmp_path / "half")
    loaded = ImageTokenizer.load(tmp_path / "half")
    assert loaded.fingerprint == t.fingerprint
    other = ImageTokenizer(**TINY)
    assert other.fingerprint != t.fingerprint


def test_a_few_training_steps_lower_the_loss():
    from unio.data.pictures import make_pictures
    from unio.training.image_tokenizer import train_step
    torch.manual_seed(0)
    t = ImageTokenizer(**TINY)
    opt = torch.optim.AdamW(t.parameters(), lr=3e-3)
    x = make_pictures("shapes", 32).batch(range(8))
    losses = [train_step(t, opt, x)["loss"] for _ in range(25)]
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])


def test_training_command_writes_a_loadable_tokenizer_and_resumes(tmp_path, capsys):
    out = tmp_path / "image"
    args = ["tokenizer", "image", "--data", "shapes", "--out", str(out), "--image-size", "32",
            "--channels", "8,16,16", "--batch-size", "4", "--eval-every", "2", "--eval-n", "4", "--threads", "1"]
    assert cli(args + ["--steps", "2"]) == 0
    tok = ImageTokenizer.load(out)
    assert tok.config.training["steps"] == 2 and "psnr" in tok.config.training["held_out_quality"]
    records = [json.loads(line) for line in (tmp_path / "image.run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 2 and {"psnr", "usage", "mask_iou", "depth_absrel"} <= set(records[-1])
    assert cli(args + ["--steps", "2"]) == 2  # a second run into the same folder needs --resume
    assert "--resume" in capsys.readouterr().err
    assert cli(args + ["--steps", "4", "--resume"]) == 0
    assert ImageTokenizer.load(out).config.training["steps"] == 4


def test_training_on_a_folder(tmp_path):
    folder = tmp_path / "pics" / "nested"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (20 + i, 30, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "tok"
    assert cli(["tokenizer", "image", "--data", f"folder:{tmp_path / 'pics'}", "--out", str(out), "--image-size", "32",
                "--channels", "8,16,16", "--steps", "2", "--batch-size", "2", "--eval-every", "2", "--threads", "1"]) == 0
    assert ImageTokenizer.load(out).encode(torch.rand(1, 3, 32, 32)).shape == (1, 4, 4)


@pytest.mark.parametrize("data, message", [("folder:/no/such/folder", "does not exist"),
                                           ("folder:EMPTY", "holds no images"),
                                           ("imagenet", "use 'shapes', 'folder:PATH' or a data spec")])
def test_training_command_rejects_bad_data(tmp_path, capsys, data, message):
    data = data.replace("EMPTY", str(tmp_path))
    assert cli(["tokenizer", "image", "--data", data, "--out", str(tmp_path / "o"), "--steps", "1",
                "--channels", "8,16,16", "--image-size", "32"]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("images, message", [
    (torch.rand(1, 1, 32, 32), "(B, 3, H, W)"),
    (torch.rand(1, 4, 32, 32), "(B, 3, H, W)"),
    (torch.rand(1, 3, 30, 32), "not a multiple of the downsampling factor 8"),
    (torch.rand(1, 3, 32, 32) * 255, "must be in [0, 1]"),
    (torch.full((1, 3, 32, 32), float("nan")), "NaN"),
    (torch.zeros(1, 3, 32, 32, dtype=torch.int32), "float in [0, 1] or uint8"),
    ("picture.png", "float tensor (B, 3, H, W)"),
    ([], "empty list"),
    (["/no/such/image.png"], "does not exist"),
    ([Image.new("RGB", (32, 32)), Image.new("RGB", (16, 16))], "share one size"),
])
def test_bad_images_raise_image_errors(tok, images, message):
    with pytest.raises(ImageError) as info:
        tok.encode(images)
    assert message in str(info.value)


@pytest.mark.parametrize("codes, message", [
    (torch.full((1, 4, 4), 1920), "must be in [0, 1920)"),
    (torch.full((1, 4, 4), -1), "must be in [0, 1920)"),
    (torch.zeros(1, 4, 4), "must be integers"),
    (torch.zeros(1, 15, dtype=torch.long), "(B, h, w), or (B, 16)"),
    (torch.zeros(4, dtype=torch.long), "(B, h, w)"),
    ([[1, 2], [3, 4]], "integer tensor"),
    (torch.zeros(0, 4, 4, dtype=torch.long), "empty"),
])
def test_bad_codes_raise_tokenizer_errors(tok, codes, message):
    with pytest.raises(TokenizerError) as info:
        tok.decode(codes)
    assert message in str(info.value)


def test_bad_folders_raise_tokenizer_errors(tmp_path, tok):
    with pytest.raises(TokenizerError, match="does not exist"):
        ImageTokenizer.load(tmp_path / "missing")
    d = tok.save(tmp_path / "t")
    (d / "model.safetensors").unlink()
    with pytest.raises(TokenizerError, match="has no model.safetensors"):
        ImageTokenizer.load(d)
    d = tok.save(tmp_path / "t")
    (d / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(TokenizerError, match="corrupt"):
        ImageTokenizer.load(d)
    d = tok.save(tmp_path / "t")
    (d / "config.json").write_text("{broken")
    with pytest.raises(TokenizerError, match="not valid JSON"):
        ImageTokenizer.load(d)
    d = tok.save(tmp_path / "t")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "channels": [16, 16, 64]}))
    with pytest.raises(TokenizerError, match="does not match config.json"):
        ImageTokenizer.load(d)
    (d / "config.json").write_text(json.dumps({**cfg, "colour": 1}))
    with pytest.raises(TokenizerError, match="unknown keys"):
        ImageTokenizer.load(d)


@pytest.mark.parametrize("kwargs, message", [(dict(downsample=4), "downsample must be 8 or 16"),
                                             (dict(quantizer="rq"), "unknown quantizer"),
                                             (dict(quantizer="lfq", codebook_size=1000), "power-of-2"),
                                             (dict(levels=(8, 2)), "levels must each be >= 3"),
                                             (dict(channels=(8, 8)), "one width per resolution"),
                                             (dict(image_size=36), "not a multiple of downsample")])
def test_bad_configs(kwargs, message):
    with pytest.raises(UnioError, match=message):
        ImageTokenizerConfig(**kwargs)


def test_dense_helpers_go_through_the_tokenizer(tok):
    depth = np.random.default_rng(0).uniform(0.2, 0.9, (2, 32, 32)).astype(np.float32)
    assert tok.decode_depth(tok.encode_depth(depth)).shape == (2, 32, 32)
    mask = np.zeros((32, 32), dtype=bool)
    mask[8:20, 4:30] = True
    out = tok.decode_mask(tok.encode_mask(mask))
    assert out.shape == (1, 32, 32) and out.dtype == bool


def test_shipped_shapes_tokenizer_reconstructs_shapes():
    from unio.resources import data_path
    try:
        folder = data_path("tokenizers", "shapes", "image")
    except UnioError:
        pytest.skip("no shipped image tokenizer in this checkout")
    from unio.data.shapes import ShapesWorld
    from unio.metrics import psnr
    tok = ImageTokenizer.load(folder)
    assert ImageTokenizer.load("shapes").fingerprint == tok.fingerprint
    world = ShapesWorld(image_size=tok.image_size, seed=1)
    images = [world[i]["image"] for i in range(16)]
    codes = tok.encode(images)
    assert codes.shape == (16, 8, 8) and tok.codebook_size <= 4096
    x = torch.from_numpy(np.stack([np.asarray(im, np.float32) / 255 for im in images])).permute(0, 3, 1, 2)
    assert float(psnr(tok.decode(codes), x, per_image=True).mean()) > PSNR_FLOOR


PSNR_FLOOR = 25.0  # the shipped tokenizer measures ~28 dB on held-out scenes (tokenizers/shapes/README.md)


def test_codes_fingerprint_covers_what_makes_the_codes_and_not_the_decoder(tmp_path):
    torch.manual_seed(0)
    t = ImageTokenizer(**TINY, weights_dtype="float16")
    t.save(tmp_path / "a")
    a = ImageTokenizer.load(tmp_path / "a")
    with torch.no_grad():
        a.decoder.conv_out.bias.add_(0.5)           # another decoder: same codes
    assert a.codes_fingerprint == t.codes_fingerprint and a.fingerprint != t.fingerprint
    a.config.weights_dtype = "float32"              # float16 values stored as float32: same codes
    assert a.codes_fingerprint == t.codes_fingerprint
    with torch.no_grad():
        a.encoder.conv_in.bias.add_(0.5)            # another encoder: other codes
    assert a.codes_fingerprint != t.codes_fingerprint
    b = ImageTokenizer(**{**TINY, "depth_range": (0.0, 2.0)})
    b.load_state_dict(t.state_dict())
    assert b.codes_fingerprint != t.codes_fingerprint  # depth maps drawn differently


def test_decoder_only_fine_tuning_keeps_every_code(tmp_path, capsys):
    torch.manual_seed(0)
    parent = ImageTokenizer(image_size=32, channels=(8, 16, 16), weights_dtype="float16")
    parent.save(tmp_path / "parent")
    parent = ImageTokenizer.load(tmp_path / "parent")
    out = tmp_path / "child"
    args = ["tokenizer", "image", "--data", "shapes", "--out", str(out), "--init", str(tmp_path / "parent"),
            "--decoder-only", "--batch-size", "4", "--eval-every", "3", "--eval-n", "4", "--threads", "1",
            "--lr", "1e-2"]
    assert cli(args + ["--steps", "3"]) == 0
    assert "decoder only" in capsys.readouterr().out
    child = ImageTokenizer.load(out)
    assert child.config.weights_dtype == "float16"  # the parent's storage unless --fp16 asks otherwise
    assert child.codes_fingerprint == parent.codes_fingerprint and child.fingerprint != parent.fingerprint
    x = torch.rand(6, 3, 32, 32)
    codes = parent.encode(x)
    assert torch.equal(child.encode(x), codes)
    assert not torch.allclose(child.decode(codes), parent.decode(codes))
    assert child.config.training["fine_tuned"] == {"init": str(tmp_path / "parent"), "decoder_only": True,
                                                   "init_fingerprint": parent.fingerprint,
                                                   "init_training": parent.config.training}
    assert cli(args[:8] + ["--steps", "5", "--resume", "--eval-every", "5", "--eval-n", "4",
                           "--batch-size", "4"]) == 2  # --resume with --init: the run knows its start
    assert "drop --init" in capsys.readouterr().err
    assert cli(["tokenizer", "image", "--out", str(out), "--steps", "5", "--resume", "--eval-every", "5",
                "--eval-n", "4", "--batch-size", "4", "--threads", "1"]) == 0
    resumed = ImageTokenizer.load(out)
    assert resumed.config.training["steps"] == 5 and resumed.codes_fingerprint == parent.codes_fingerprint
    assert resumed.config.training["fine_tuned"] == child.config.training["fine_tuned"]


@pytest.mark.parametrize("extra, message", [([], "add --init DIR"),
                                            (["--init", "PARENT", "--levels", "5,5,5"], "drop --levels"),
                                            (["--init", "PARENT", "--image-size", "64"], "--image-size 32"),
                                            (["--init", "/no/such/tokenizer"], "does not exist")])
def test_decoder_only_needs_a_tokenizer_to_start_from(tmp_path, capsys, extra, message):
    ImageTokenizer(image_size=32, channels=(8, 16, 16)).save(tmp_path / "parent")
    extra = [str(tmp_path / "parent") if e == "PARENT" else e for e in extra]
    assert cli(["tokenizer", "image", "--out", str(tmp_path / "o"), "--steps", "1", "--decoder-only", *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
