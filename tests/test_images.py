"""unio.images.load_image: pictures come upright (EXIF orientation) and 16-bit ones keep their
tones (scaled to 8 bits, not clipped to white)."""
import numpy as np
import pytest
from PIL import Image

from unio.images import load_image


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
