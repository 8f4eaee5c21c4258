"""unio.viz: pictures come back as new PIL images and bad inputs say what to fix."""
import numpy as np
import pytest
from PIL import Image

from unio import viz
from unio.errors import InputError


def grey(w=40, h=30):
    return Image.new("RGB", (w, h), (128, 128, 128))


def test_draw_boxes_draws_outline_and_keeps_input():
    img = grey()
    out = viz.draw_boxes(img, [(5, 5, 20, 15)], colors=[(255, 0, 0)], width=1)
    assert out is not img and out.size == img.size and out.mode == "RGB"
    assert np.asarray(img).max() == 128, "input must not be modified"
    a = np.asarray(out)
    assert tuple(a[10, 5]) == (255, 0, 0) and tuple(a[10, 19]) == (255, 0, 0)  # left / right edges
    assert tuple(a[10, 12]) == (128, 128, 128)  # inside untouched
    assert tuple(a[10, 20]) == (128, 128, 128)  # x2 is exclusive
    tagged = np.asarray(viz.draw_boxes(img, [(5, 5, 20, 15)], labels=["cat"], scores=[0.9], width=1))
    assert (tagged != a).any() and (tagged.min(axis=2) > 180).any(), "white tag text is drawn"


def test_draw_boxes_accepts_numpy_and_no_boxes():
    arr = np.zeros((20, 20, 3), np.uint8)
    assert viz.draw_boxes(arr, []).size == (20, 20)
    assert viz.draw_boxes(arr, np.array([[0, 0, 20, 20]], float)).size == (20, 20)


def test_draw_boxes_bad_inputs():
    with pytest.raises(InputError, match="2 boxes but 1 labels"):
        viz.draw_boxes(grey(), [(0, 0, 5, 5), (1, 1, 4, 4)], labels=["a"])
    with pytest.raises(InputError, match="NaN or infinite"):
        viz.draw_boxes(grey(), [(0, 0, float("nan"), 5)])


def test_overlay_mask_blends_only_masked_pixels():
    mask = np.zeros((30, 40), bool)
    mask[:10, :10] = True
    out = np.asarray(viz.overlay_mask(grey(), mask, color=(255, 0, 0), alpha=1.0))
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[20, 20]) == (128, 128, 128)
    half = np.asarray(viz.overlay_mask(grey(), mask, color=(0, 0, 0), alpha=0.5))
    assert tuple(half[0, 0]) == (64, 64, 64)


def test_overlay_mask_bad_inputs():
    with pytest.raises(InputError, match="does not match the image"):
        viz.overlay_mask(grey(), np.zeros((5, 5), bool))
    with pytest.raises(InputError, match=r"alpha=2 must be in \[0, 1\]"):
        viz.overlay_mask(grey(), np.zeros((30, 40), bool), alpha=2)


def test_colorize_depth_uses_viridis_ends_and_is_monotonic_in_brightness():
    ramp = np.linspace(0, 1, 256, dtype=np.float32)[None, :].repeat(4, 0)
    a = np.asarray(viz.colorize_depth(ramp, 0.0, 1.0)).astype(float)
    assert tuple(a[0, 0]) == tuple(viz.VIRIDIS[0]) and tuple(a[0, -1]) == tuple(viz.VIRIDIS[-1])
    luma = a[0] @ np.array([0.299, 0.587, 0.114])
    assert np.all(np.diff(luma) >= -1.0)
    rev = np.asarray(viz.colorize_depth(ramp, 0.0, 1.0, reverse=True))
    assert tuple(rev[0, 0]) == tuple(viz.VIRIDIS[-1].astype(int))


def test_colorize_depth_defaults_clipping_and_nan():
    d = np.array([[0.5, 2.0], [np.nan, 9.0]])
    a = np.asarray(viz.colorize_depth(d, vmin=0.5, vmax=2.0))
    assert tuple(a[0, 1]) == tuple(a[1, 1])  # clipped above vmax
    assert tuple(a[1, 0]) == (0, 0, 0)       # NaN drawn black
    assert viz.colorize_depth(np.full((3, 3), 7.0)).size == (3, 3)  # flat map: no division by zero
    with pytest.raises(InputError, match=r"expects an \(H, W\) array"):
        viz.colorize_depth(np.zeros((2, 2, 2)))


def test_image_grid_layout_and_captions():
    ims = [grey(20, 10)] * 5
    g = viz.image_grid(ims, cols=2, pad=2)
    assert g.size == (2 * 22 + 2, 3 * 12 + 2)
    with_caps = viz.image_grid(ims, captions=["a long caption to wrap over lines"] * 5, cols=2, pad=2)
    assert with_caps.width == g.width and with_caps.height > g.height
    assert np.asarray(with_caps).min() == 0, "caption text is drawn in black"


def test_image_grid_bad_inputs():
    with pytest.raises(InputError, match="at least one image"):
        viz.image_grid([])
    with pytest.raises(InputError, match="2 images but 1 captions"):
        viz.image_grid([grey(), grey()], captions=["x"])
