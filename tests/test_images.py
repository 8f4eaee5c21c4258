"""unio.images.load_image: any picture file read as a viewer shows it (upright by EXIF, every mode
to RGB, transparency on white, 16-bit tones kept), huge files decoded small yet answered in their
own pixels, and everything else refused with one message saying why and what to do."""
import contextlib
import io
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from unio import images

from unio.errors import ImageError, InputError
from unio.images import letterbox, load_image, original_size


@pytest.fixture
def sideways(tmp_path):
    """A 40 x 20 picture, blue on its left, stored as a phone stores a portrait shot: with EXIF
    orientation 6 (the viewer turns it 90 degrees clockwise)."""
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    im.paste((0, 0, 255), (0, 0, 10, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "portrait.jpg"
    im.save(path, exif=exif.tobytes(), quality=95)
    return path


def test_exif_orientation_turns_the_picture_upright(sideways):
    got = load_image(sideways)
    assert got.size == (20, 40)  # upright: portrait
    top = np.asarray(got)[:8].reshape(-1, 3).mean(0)
    assert top[2] > 200 and top[0] < 60  # the stored left edge (blue) is now on top
    with Image.open(sideways) as im:  # a PIL image opened by the caller reads the same
        assert np.array_equal(np.asarray(load_image(im)), np.asarray(got))
    small = load_image(sideways, max_side=10)  # decoded at 1/4, turned, and still in the upright frame
    assert small.size == (5, 10) and original_size(small) == (20, 40)
    assert letterbox(small, 8)[1].width == 20


def test_sixteen_bit_pictures_keep_their_tones(tmp_path):
    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    Image.fromarray(ramp).save(tmp_path / "depthy.png")
    with Image.open(tmp_path / "depthy.png") as im:
        assert im.mode.startswith("I")
    for source in (tmp_path / "depthy.png", ramp):
        got = np.asarray(load_image(source))[..., 0].astype(int)
        assert got.min() == 0 and got.max() == 255 and len(np.unique(got)) > 200  # a ramp, not a white sheet
        assert np.abs(got - np.rint(ramp / 257)).max() <= 1
    assert np.asarray(load_image(np.full((4, 4), 0.5)))[0, 0, 0] == 128  # floats in [0, 1] as before


# ---------------------------------------------------------------------- every mode, read right
def pixel(image, xy):
    return tuple(int(v) for v in np.asarray(image)[xy[1], xy[0]])


def close(got, want, tol=3):
    return all(abs(g - w) <= tol for g, w in zip(got, want))


def test_grey_palette_and_one_bit_pictures(tmp_path):
    Image.new("L", (8, 8), 100).save(tmp_path / "grey.png")
    assert pixel(load_image(tmp_path / "grey.png"), (3, 3)) == (100, 100, 100)
    pal = Image.new("P", (8, 8), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * 759)
    pal.putpixel((0, 0), 2)
    pal.save(tmp_path / "palette.png")
    got = load_image(tmp_path / "palette.png")
    assert pixel(got, (3, 3)) == (255, 0, 0) and pixel(got, (0, 0)) == (0, 0, 255)
    bits = Image.new("1", (8, 8), 0)
    bits.putpixel((2, 2), 1)
    bits.save(tmp_path / "bits.png")
    got = load_image(tmp_path / "bits.png")
    assert got.mode == "RGB" and pixel(got, (2, 2)) == (255, 255, 255) and pixel(got, (0, 0)) == (0, 0, 0)


def test_transparent_pictures_are_composited_on_white_or_a_chosen_colour(tmp_path):
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))        # red, fully transparent
    rgba.putpixel((1, 1), (0, 0, 255, 255))                 # opaque blue
    rgba.putpixel((2, 2), (0, 0, 0, 128))                   # half-transparent black
    rgba.save(tmp_path / "rgba.png")
    got = load_image(tmp_path / "rgba.png")
    assert pixel(got, (5, 5)) == (255, 255, 255)  # not the hidden red
    assert pixel(got, (1, 1)) == (0, 0, 255) and close(pixel(got, (2, 2)), (127, 127, 127), 1)
    assert pixel(load_image(tmp_path / "rgba.png", background="black"), (5, 5)) == (0, 0, 0)
    assert pixel(load_image(rgba, background=(0, 255, 0)), (5, 5)) == (0, 255, 0)
    assert pixel(load_image(np.asarray(rgba)), (5, 5)) == (255, 255, 255)  # (H, W, 4) arrays too
    la = Image.new("LA", (8, 8), (50, 0))
    la.putpixel((1, 1), (50, 255))
    la.save(tmp_path / "la.png")
    got = load_image(tmp_path / "la.png")
    assert pixel(got, (5, 5)) == (255, 255, 255) and pixel(got, (1, 1)) == (50, 50, 50)
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.putpixel((1, 1), 1)
    for name in ("palette.png", "palette.gif"):
        pal.save(tmp_path / name, transparency=0)
        got = load_image(tmp_path / name)
        assert pixel(got, (5, 5)) == (255, 255, 255) and pixel(got, (1, 1)) == (255, 0, 0), name
    with pytest.raises(InputError, match="background must be a colour"):
        load_image(rgba, background="no-such-colour")


def test_cmyk_jpeg_reads_in_its_colours(tmp_path):
    patches = {(0, 255, 255, 0): (255, 0, 0), (255, 0, 255, 0): (0, 255, 0), (255, 255, 0, 0): (0, 0, 255),
               (255, 0, 0, 0): (0, 255, 255), (0, 0, 0, 255): (0, 0, 0), (0, 0, 0, 0): (255, 255, 255)}
    im = Image.new("CMYK", (16 * len(patches), 16))
    for k, cmyk in enumerate(patches):
        im.paste(cmyk, (16 * k, 0, 16 * k + 16, 16))
    im.save(tmp_path / "print.jpg", quality=95)
    with Image.open(tmp_path / "print.jpg") as f:
        assert f.mode == "CMYK"
    got = load_image(tmp_path / "print.jpg")
    for k, rgb in enumerate(patches.values()):
        assert close(pixel(got, (16 * k + 8, 8)), rgb, 6), (k, pixel(got, (16 * k + 8, 8)), rgb)


def test_integer_and_float_pictures(tmp_path):
    ramp = np.arange(64, dtype=np.int32).reshape(8, 8) * 1000  # 0 .. 63000: a 16-bit range in 32 bits
    Image.fromarray(ramp, "I").save(tmp_path / "i.tif")
    got = np.asarray(load_image(tmp_path / "i.tif"))[..., 0].astype(int)
    assert np.abs(got - np.rint(ramp / 257)).max() <= 1
    small = np.arange(64, dtype=np.int32).reshape(8, 8) * 4    # 0 .. 252: already 8-bit values
    Image.fromarray(small, "I").save(tmp_path / "i8.tif")
    assert np.array_equal(np.asarray(load_image(tmp_path / "i8.tif"))[..., 0], small)
    unit = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(unit, "F").save(tmp_path / "f.tif")
    got = np.asarray(load_image(tmp_path / "f.tif"))[..., 0].astype(int)
    assert got.min() == 0 and got.max() == 255 and np.abs(got - np.rint(unit * 255)).max() <= 1


# ---------------------------------------------------------------------- what is refused, and how
def refusal(source, **kw) -> str:
    with pytest.raises(ImageError) as info:
        load_image(source, **kw)
    return str(info.value)


@pytest.fixture
def jpeg_bytes():
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_truncated_files(tmp_path, fmt):
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    message = refusal(path)
    assert f"could not read {path} as an image: it is truncated" in message
    assert "pass the complete file" in message


def test_missing_empty_folder_and_url(tmp_path, jpeg_bytes):
    assert "does not exist; check the path" in refusal(tmp_path / "nope.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert "is empty (0 bytes" in refusal(tmp_path / "empty.jpg")
    assert "is a folder, not an image file" in refusal(tmp_path)
    for url in ("https://example.com/cat.jpg", Path("http://example.com/cat.jpg")):
        message = refusal(url)
        assert "is a URL; unio reads local files and downloads nothing" in message
        assert "://example.com/cat.jpg" in message and "pass the local file" in message
    assert "data: URI is not a file" in refusal("data:image/png;base64,iVBORw0KGgo=")
    (tmp_path / "ok.jpg").write_bytes(jpeg_bytes)
    assert load_image((tmp_path / "ok.jpg").as_uri()).size == (64, 64)  # file:// URLs are local files


def test_a_decompression_bomb_names_the_limit_and_how_to_raise_it(tmp_path, monkeypatch):
    Image.new("L", (100, 100)).save(tmp_path / "bomb.png")  # 10,000 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)    # Pillow refuses over twice this
    message = refusal(tmp_path / "bomb.png")
    assert "has 10,000 pixels, more than the 2,000 Pillow decodes" in message
    assert "PIL.Image.MAX_IMAGE_PIXELS = 10000" in message and "UNIO_MAX_IMAGE_PIXELS=10000" in message
    Image.new("L", (40, 40)).save(tmp_path / "big.png")     # 1,600: over the limit, under twice it
    with warnings.catch_warnings():
        warnings.simplefilter("error")                        # read, without Pillow's warning
        assert load_image(tmp_path / "big.png").size == (40, 40)
    monkeypatch.setenv("UNIO_MAX_IMAGE_PIXELS", "20000")      # what the unio command reads
    images._limit_from_environment()
    assert Image.MAX_IMAGE_PIXELS == 20000 and load_image(tmp_path / "bomb.png").size == (100, 100)
    monkeypatch.setenv("UNIO_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ImageError, match="UNIO_MAX_IMAGE_PIXELS='lots' is not a number"):
        images._limit_from_environment()


def ftyp(*brands: bytes) -> bytes:
    """The first box of an ISO media file (HEIF, AVIF, MP4), then bytes no decoder takes."""
    return (8 + 4 * (len(brands) + 1)).to_bytes(4, "big") + b"ftyp" + brands[0] + b"\0\0\0\0" \
        + b"".join(brands[1:]) + b"\0\0\0\x10junk" + bytes(64)


@pytest.mark.skipif(images.register_heif_opener is not None, reason="pillow-heif is installed: HEIC files read")
def test_heic_without_its_plugin_names_the_plugin(tmp_path):
    (tmp_path / "IMG_0001.HEIC").write_bytes(ftyp(b"heic", b"mif1", b"heic", b"miaf"))
    message = refusal(tmp_path / "IMG_0001.HEIC")
    assert "HEIC/HEIF photo" in message and "pip install pillow-heif" in message


def test_avif_reads_natively_or_names_its_plugin(tmp_path, monkeypatch):
    if features.check("avif"):  # a Pillow built with libavif (recent wheels are) reads AVIF itself
        Image.new("RGB", (16, 16), (255, 0, 0)).save(tmp_path / "red.avif")
        assert close(pixel(load_image(tmp_path / "red.avif"), (8, 8)), (255, 0, 0), 8)
    (tmp_path / "x.avif").write_bytes(ftyp(b"avif", b"mif1", b"avif"))
    monkeypatch.setattr(images.features, "check", lambda name: False)  # a Pillow built without AVIF
    message = refusal(tmp_path / "x.avif")
    assert "AVIF picture" in message and "pip install pillow-avif-plugin" in message


@pytest.mark.parametrize("content, words", [
    (b"not an image at all\n", "it is a text file"),
    (b"<!DOCTYPE html><html><body>404</body></html>", "it is a web page (HTML)"),
    (b"<?xml version='1.0'?><svg xmlns='http://www.w3.org/2000/svg'/>", "it is an SVG drawing"),
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "it is a PDF document"),
    (ftyp(b"isom", b"mp41"), "it is a video"),
    (bytes(range(256)) * 4, "not a picture format Pillow reads"),
])
def test_files_that_are_not_pictures_say_what_they_are(tmp_path, content, words):
    (tmp_path / "photo.jpg").write_bytes(content)
    message = refusal(tmp_path / "photo.jpg")
    assert message.startswith(f"could not read {tmp_path / 'photo.jpg'} as an image") and words in message


def test_bad_arguments():
    with pytest.raises(InputError, match="max_side must be a positive number"):
        load_image(Image.new("RGB", (4, 4)), max_side=0)


# ---------------------------------------------------------------------- huge files, read small, answered in full
HUGE = (12000, 9000)  # a 108-megapixel phone photo: 324 MB as RGB


@pytest.fixture(scope="module")
def huge(tmp_path_factory):
    """A 12000 x 9000 JPEG of a shapes-world scene (padded to 4:3), and the scene's objects in the
    JPEG's pixels."""
    from unio.data.shapes import ShapesWorld

    sample = ShapesWorld(64, seed=0)[4]
    small = Image.new("RGB", (86, 64), sample["image"].getpixel((0, 0)))
    small.paste(sample["image"], (0, 0))
    fx, fy = HUGE[0] / small.width, HUGE[1] / small.height
    path = tmp_path_factory.mktemp("huge") / "huge.jpg"
    small.resize(HUGE, Image.NEAREST).save(path, quality=90)
    objects = [(o["label"], np.array(o["box"]) * (fx, fy, fx, fy)) for o in sample["objects"]]
    return path, objects


def test_a_huge_jpeg_is_decoded_small_and_remembers_its_size(huge):
    path, _ = huge
    script = (
        "import sys\n"
        "from unio.images import letterbox, load_image, original_size\n"
        "def peak():\n"  # the process's peak resident memory (KiB) since the last reset
        "    with open('/proc/self/status') as f:\n"
        "        return next(int(line.split()[1]) for line in f if line.startswith('VmHWM:'))\n"
        "def reset():\n"
        "    with open('/proc/self/clear_refs', 'w') as f:\n"
        "        f.write('5')\n"
        "reset(); before = peak()\n"
        "im = load_image(sys.argv[1], max_side=256)\n"
        "square, info = letterbox(im, 64)\n"
        "small = peak() - before\n"
        "reset(); before = peak()\n"
        "load_image(sys.argv[1])\n"  # the same file read in full, to show what was saved
        "print(small, peak() - before, *im.size, *original_size(im), info.width, info.height)\n")
    try:
        open("/proc/self/clear_refs", "w").close()
    except OSError:
        pytest.skip("measures peak memory through Linux's /proc/self/clear_refs, not writable here")
    out = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True)
    small_kib, full_kib, w, h, *frames = map(int, out.stdout.split())
    assert small_kib < 48 * 1024, f"reading it small grew the process by {small_kib / 1024:.0f} MiB"
    assert full_kib > 250 * 1024, full_kib  # a full decode really costs the 324 MB (so the measure measures)
    assert 256 <= max(w, h) < 512 and frames == [*HUGE, *HUGE]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not Pillow's decompression-bomb warning: it is not decoded in full
        im = load_image(path, max_side=256)
    assert original_size(im) == HUGE and original_size(im.copy()) == HUGE
    assert original_size(im.crop((0, 0, 10, 10))) == (10, 10)  # a new picture made from it is its own frame


def iou(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def demo():
    import unio

    return unio.load("shapes-demo", device="cpu")


def test_a_huge_jpeg_is_answered_in_its_own_pixels(huge, demo):
    path, objects = huge
    label, truth = objects[0]
    image = load_image(path, max_side=4 * demo.ctx.image_size)
    box = demo.ground(image, label)
    assert box is not None and 0 <= box.x1 < box.x2 <= HUGE[0] and 0 <= box.y1 < box.y2 <= HUGE[1]
    assert iou(tuple(box), truth) > 0.5, (tuple(box), truth)  # in the reduced frame it would be ~40x too small
    for d in demo.detect(image, threshold=0.0):
        assert 0 <= d.box[0] <= d.box[2] <= HUGE[0] and 0 <= d.box[1] <= d.box[3] <= HUGE[1]
    assert demo.segment(image, label).shape == HUGE[::-1]


def test_unio_predict_reads_a_huge_jpeg_small_and_answers_in_its_pixels(huge, demo, tmp_path):
    from unio.cli import main

    path, objects = huge
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["predict", "ground", "--model", "shapes-demo", str(path), "--text", objects[0][0],
                     "--out", str(tmp_path / "p.jsonl")])
    assert code == 0, err.getvalue()
    record = json.loads((tmp_path / "p.jsonl").read_text())
    assert (record["width"], record["height"]) == HUGE
    assert iou(record["box"], objects[0][1]) > 0.5, record


# ---------------------------------------------------------------------- a real photo, every task
def test_every_task_answers_a_real_photo_in_its_own_frame(demo):
    cbook = pytest.importorskip("matplotlib.cbook", reason="matplotlib's sample photo grace_hopper.jpg is the "
                                "real photo (pip install matplotlib)")
    path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    W, H = load_image(path).size  # 512 x 600, a JPEG from a camera, out of the shapes model's domain
    box = (W * 0.25, H * 0.2, W * 0.75, H * 0.6)
    given = {"question": "what colour is the circle?", "expression": "the red circle", "text": "a red circle",
             "box": box}
    from unio.tasks import get_task

    for name in demo.tasks:
        task = get_task(name)
        if not task.needs_image:
            continue
        result = demo.run(name, path, **{k: given[k] for k in task.inputs})
        boxes = [d.box for d in result] if isinstance(result, list) else [tuple(result)] \
            if hasattr(result, "x1") else []
        for b in boxes:
            assert 0 <= b[0] <= b[2] <= W and 0 <= b[1] <= b[3] <= H, (name, b)
        if isinstance(result, np.ndarray):
            assert result.shape == (H, W), name
        elif isinstance(result, Image.Image):
            assert result.size == (W, H), name
        elif not boxes and result is not None and not isinstance(result, list):
            assert isinstance(result, str), (name, result)
