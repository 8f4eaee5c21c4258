"""Depth maps and masks <-> images (unio.tokenizers.dense): exact round trips and clear errors."""
import numpy as np
import pytest
import torch
from PIL import Image

from unio.errors import ImageError, UnioError
from unio.tokenizers.dense import (METRIC_DEPTH_RANGE, SHAPES_DEPTH_RANGE, depth_to_image, image_to_depth,
                                   image_to_mask, mask_to_image)


def test_depth_round_trip_is_exact_for_float_images():
    rng = np.random.default_rng(0)
    depth = rng.uniform(0, 1, (2, 16, 12)).astype(np.float32)
    img = depth_to_image(depth, 1.0)
    assert img.shape == (2, 3, 16, 12) and img.dtype == np.float32
    assert img.min() >= 0 and img.max() <= 1
    assert np.array_equal(img[:, 0], img[:, 1]) and np.array_equal(img[:, 0], img[:, 2])  # grey
    np.testing.assert_allclose(image_to_depth(img, 1.0), depth, atol=1e-6)


def test_depth_metric_range_and_torch_in_torch_out():
    lo, hi = METRIC_DEPTH_RANGE
    depth = torch.linspace(lo, hi, 64).reshape(8, 8)
    img = depth_to_image(depth, hi)
    assert isinstance(img, torch.Tensor) and img.shape == (3, 8, 8)
    back = image_to_depth(img, hi)
    assert isinstance(back, torch.Tensor) and back.shape == (8, 8)
    torch.testing.assert_close(back, depth, atol=1e-5, rtol=0)
    assert SHAPES_DEPTH_RANGE == (0.0, 1.0)


def test_depth_through_8_bit_images_errs_at_most_half_a_grey_level():
    rng = np.random.default_rng(1)
    max_depth = 10.0
    depth = rng.uniform(0, max_depth, (32, 32)).astype(np.float32)
    img = depth_to_image(depth, max_depth)
    pil = Image.fromarray(np.rint(img.transpose(1, 2, 0) * 255).astype(np.uint8))
    back = image_to_depth(pil, max_depth)
    assert isinstance(back, np.ndarray) and back.shape == (32, 32)
    bound = max_depth / 510
    assert np.abs(back - depth).max() <= bound + 1e-5
    uint8 = np.rint(img * 255).astype(np.uint8)  # channels-first uint8 array
    assert np.abs(image_to_depth(uint8, max_depth) - depth).max() <= bound + 1e-5


def test_depth_with_min_depth_and_clipping():
    depth = np.array([[0.5, 1.0], [2.0, 3.0]], dtype=np.float32)
    img = depth_to_image(depth, max_depth=2.0, min_depth=1.0)
    np.testing.assert_allclose(img[0], [[0.0, 0.0], [1.0, 1.0]])  # 0.5 and 3.0 are clipped
    np.testing.assert_allclose(image_to_depth(img, 2.0, min_depth=1.0), [[1, 1], [2, 2]])


def test_mask_round_trip_is_exact():
    rng = np.random.default_rng(2)
    mask = rng.random((3, 10, 14)) > 0.5
    img = mask_to_image(mask)
    assert img.shape == (3, 3, 10, 14) and set(np.unique(img)) <= {0.0, 1.0}
    assert np.array_equal(image_to_mask(img), mask)
    single = torch.from_numpy(mask[0].astype(np.int64))  # 0/1 integers work too
    back = image_to_mask(mask_to_image(single))
    assert isinstance(back, torch.Tensor) and back.dtype == torch.bool and torch.equal(back, single.bool())


def test_mask_survives_reconstruction_noise():
    mask = np.zeros((16, 16), dtype=bool)
    mask[4:12, 3:9] = True
    noisy = mask_to_image(mask) + np.random.default_rng(3).uniform(-0.3, 0.3, (3, 16, 16)).astype(np.float32)
    assert np.array_equal(image_to_mask(np.clip(noisy, 0, 1)), mask)


@pytest.mark.parametrize("call, message", [
    (lambda: depth_to_image(np.full((4, 4), np.nan), 1.0), "NaN"),
    (lambda: depth_to_image(np.zeros((2, 3, 4, 4)), 1.0), "(H, W) or (B, H, W)"),
    (lambda: depth_to_image(np.zeros((4, 4)), max_depth=0.0), "min_depth < max_depth"),
    (lambda: depth_to_image("depth.png", 1.0), "numpy array or torch tensor"),
    (lambda: mask_to_image(np.full((4, 4), 0.7)), "threshold soft masks"),
    (lambda: mask_to_image(np.zeros((5,), dtype=bool)), "(H, W) or (B, H, W)"),
    (lambda: image_to_mask(np.zeros((4, 4, 3), dtype=np.float32)), "channels first"),
    (lambda: image_to_depth(np.zeros((1, 4, 4), dtype=np.float32), 1.0), "(3, H, W)"),
    (lambda: image_to_depth(np.zeros((3, 4, 4), dtype=np.int32), 1.0), "float in [0, 1] or uint8"),
])
def test_bad_inputs_raise_clear_errors(call, message):
    with pytest.raises(ImageError, match=None) as info:
        call()
    assert isinstance(info.value, UnioError)
    assert message in str(info.value)
