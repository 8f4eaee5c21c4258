"""Location tokens: boxes, points and polygons <-> bins over the image's long side."""
import numpy as np
import pytest
import torch

from unio.errors import BoxError, TokenizerError, UnioError
from unio.tokenizers import LocationTokenizer

SIZES = [1, 2, 3, 7, 31, 64, 100, 333, 640, 1000, 1333, 2047, 4000]


def random_boxes(rng, w, h, n):
    x = np.sort(rng.uniform(0, w, size=(n, 2)), axis=1)
    y = np.sort(rng.uniform(0, h, size=(n, 2)), axis=1)
    boxes = np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)
    # keep a positive area even when the two draws coincide
    boxes[:, 2] = np.maximum(boxes[:, 2], boxes[:, 0] + 1e-6 * w)
    boxes[:, 3] = np.maximum(boxes[:, 3], boxes[:, 1] + 1e-6 * h)
    return np.minimum(boxes, [w, h, w, h])


@pytest.mark.parametrize("num_bins", [2, 100, 1000])
def test_box_round_trip_error_at_most_half_a_bin(num_bins):
    tok = LocationTokenizer(num_bins)
    rng = np.random.default_rng(num_bins)
    for long_side in SIZES:
        for short_side in sorted({1, max(1, long_side // 3), long_side}):
            for w, h in [(long_side, short_side), (short_side, long_side)]:
                boxes = random_boxes(rng, w, h, 200)
                bins = tok.encode_boxes(boxes, (w, h))
                assert bins.shape == (200, 4) and bins.dtype == np.int64
                assert bins.min() >= 0 and bins.max() < num_bins
                decoded = tok.decode_boxes(bins, (w, h))
                half = tok.bin_size((w, h)) / 2
                assert half == pytest.approx(max(w, h) / num_bins / 2)
                err = np.abs(decoded - boxes).max()
                assert err <= half * (1 + 1e-9), (w, h, err, half)
                # decoded boxes stay inside the image
                assert (decoded >= 0).all() and (decoded <= [w, h, w, h]).all()


def test_normalised_by_long_side_so_letterboxing_keeps_bins():
    # The same relative box in a 200 x 100 image and in its 2x scaled copy has the same bins, and
    # y uses the long side's scale: 50 px down a 100 px-high image is bin 250 of 1000, not 500.
    tok = LocationTokenizer(1000)
    assert tok.encode_boxes([0, 0, 100, 50], (200, 100)).tolist() == [0, 0, 500, 250]
    assert tok.encode_boxes([0, 0, 200, 100], (400, 200)).tolist() == [0, 0, 500, 250]
    # far edges fall in the last bin of the long side
    assert tok.encode_boxes([0, 0, 200, 100], (200, 100)).tolist() == [0, 0, 999, 500]


def test_decode_returns_bin_centres():
    tok = LocationTokenizer(10)
    # 100 px long side, 10 px bins: bin k decodes to 10 k + 5
    assert tok.decode_boxes([0, 1, 2, 3], (100, 100)).tolist() == [5.0, 15.0, 25.0, 35.0]
    # on the short side a centre past the edge is clipped to the image
    assert tok.decode_boxes([0, 0, 9, 4], (100, 42)).tolist() == [5.0, 5.0, 95.0, 42.0]


def test_single_box_keeps_its_shape_and_batches_are_vectorised():
    tok = LocationTokenizer()
    one = tok.encode_boxes((10, 20, 30, 40), (64, 64))
    assert one.shape == (4,)
    many = tok.encode_boxes([(10, 20, 30, 40), (0, 0, 64, 64)], (64, 64))
    assert many.shape == (2, 4) and (many[0] == one).all()
    assert tok.decode_boxes(one, (64, 64)).shape == (4,)
    empty = tok.encode_boxes(np.zeros((0, 4)), (64, 64))
    assert empty.shape == (0, 4)
    assert tok.encode_boxes([], (64, 64)).shape == (0, 4)
    assert tok.decode_boxes(empty, (64, 64)).shape == (0, 4)


def test_accepts_lists_arrays_and_tensors():
    tok = LocationTokenizer()
    box = [3.5, 4.25, 50.0, 60.75]
    expected = tok.encode_boxes(box, (100, 80))
    for given in (tuple(box), np.array(box, dtype=np.float32), torch.tensor(box), torch.tensor([box])):
        assert tok.encode_boxes(given, (100, 80)).reshape(-1).tolist() == expected.tolist()
    decoded = tok.decode_boxes(expected, (100, 80))
    assert tok.decode_boxes(torch.tensor(expected), (100, 80)).tolist() == decoded.tolist()


def test_boxes_partly_outside_are_clipped():
    tok = LocationTokenizer(100)
    bins = tok.encode_boxes([-20, -5, 150, 40], (100, 50))
    assert bins.tolist() == tok.encode_boxes([0, 0, 100, 40], (100, 50)).tolist() == [0, 0, 99, 40]


def test_points_round_trip_and_clipping():
    tok = LocationTokenizer(1000)
    rng = np.random.default_rng(0)
    for w, h in [(1, 1), (5, 3), (3, 5), (640, 480), (480, 640), (4000, 7), (7, 4000)]:
        pts = rng.uniform(0, 1, size=(300, 2)) * [w, h]
        bins = tok.encode_points(pts, (w, h))
        assert bins.shape == (300, 2)
        err = np.abs(tok.decode_points(bins, (w, h)) - pts).max()
        assert err <= tok.bin_size((w, h)) / 2 * (1 + 1e-9)
    assert tok.encode_points((5, 5), (10, 10)).tolist() == [500, 500]
    assert tok.encode_points([(-3, 12)], (10, 10)).tolist() == [[0, 999]]


def test_polygons_are_flat_point_sequences():
    tok = LocationTokenizer(100)
    poly = [(0, 0), (50, 0), (50, 25), (10, 40)]
    flat = tok.encode_polygon(poly, (100, 50))
    assert flat.shape == (8,) and flat.tolist() == [0, 0, 50, 0, 50, 25, 10, 40]
    assert flat.tolist() == tok.encode_polygon(np.array(poly).reshape(-1), (100, 50)).tolist()
    back = tok.decode_polygon(flat, (100, 50))
    assert back.shape == (4, 2)
    assert np.abs(back - np.array(poly)).max() <= 0.5 + 1e-9


def test_bin_helpers():
    tok = LocationTokenizer(1000)
    assert tok.bin_size((4000, 3000)) == 4.0
    assert tok.bins_per_pixel((500, 1000)) == 1.0
    assert LocationTokenizer(500) == LocationTokenizer(500) != LocationTokenizer(1000)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("box, words", [
    ([float("nan"), 0, 10, 10], ["NaN", "finite"]),
    ([0, 0, float("inf"), 10], ["infinite"]),
    ([10, 0, 5, 10], ["inverted", "swap", "(x, y, x + w, y + h)"]),
    ([0, 10, 10, 5], ["inverted"]),
    ([5, 5, 5, 9], ["zero area", "drop it"]),
    ([120, 0, 150, 10], ["outside", "not normalised"]),
    ([-10, -10, -1, 5], ["outside"]),
])
def test_bad_boxes_raise_box_error_saying_what_to_do(box, words):
    with pytest.raises(BoxError) as info:
        LocationTokenizer().encode_boxes([[0, 0, 1, 1], box], (100, 100))
    message = str(info.value)
    assert "box 1" in message  # which box of the batch
    for word in words:
        assert word in message


@pytest.mark.parametrize("size", [(0, 10), (10, -1), (float("nan"), 5), (10,), "big", None])
def test_bad_image_sizes(size):
    with pytest.raises(BoxError, match="image_size must be"):
        LocationTokenizer().encode_boxes([0, 0, 1, 1], size)


@pytest.mark.parametrize("boxes", [[1, 2, 3], [[1, 2, 3, 4, 5]], np.zeros((2, 2, 4))])
def test_wrong_box_shapes(boxes):
    with pytest.raises(BoxError, match=r"shape \(4,\) or \(N, 4\)"):
        LocationTokenizer().encode_boxes(boxes, (10, 10))


def test_unreadable_boxes():
    with pytest.raises(BoxError, match="could not read"):
        LocationTokenizer().encode_boxes(["a", "b", "c", "d"], (10, 10))


def test_bad_bins():
    tok = LocationTokenizer(100)
    with pytest.raises(BoxError, match=r"\[0, 100\).*to_local"):
        tok.decode_boxes([0, 0, 100, 5], (10, 10))
    with pytest.raises(BoxError, match="integers"):
        tok.decode_boxes([0.5, 0, 1, 5], (10, 10))
    with pytest.raises(BoxError, match=r"\(2,\) or \(N, 2\)"):
        tok.decode_points([1, 2, 3], (10, 10))


def test_bad_polygons_and_points():
    tok = LocationTokenizer()
    with pytest.raises(BoxError, match="at least 3 points"):
        tok.encode_polygon([(0, 0), (1, 1)], (10, 10))
    with pytest.raises(BoxError, match="even length"):
        tok.encode_polygon([0, 0, 1, 1, 2], (10, 10))
    with pytest.raises(BoxError, match="NaN"):
        tok.encode_points([(0, float("nan"))], (10, 10))


@pytest.mark.parametrize("num_bins", [1, 0, 2.5, True])
def test_bad_num_bins(num_bins):
    with pytest.raises(TokenizerError, match="num_bins must be an integer >= 2"):
        LocationTokenizer(num_bins)


def test_errors_are_unio_errors():
    assert issubclass(BoxError, UnioError) and issubclass(BoxError, ValueError)


def test_docstring_examples_run():
    import doctest

    import unio.tokenizers.locations as module
    assert doctest.testmod(module).failed == 0
