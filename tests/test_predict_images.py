"""`unio predict` over folders with files it cannot read: --on-error stop (the default) ends before
the model loads with the file and the reason; --on-error skip predicts on the rest, lists what it
left out and why, and exits 1. Large files are read small and answered in their own pixels."""
import contextlib
import io
import json

import numpy as np
import pytest
from PIL import Image

from unio.cli import main


def predict(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["predict", *map(str, argv)])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def folder(tmp_path):
    """Two good pictures, a truncated JPEG, an empty file, a HEIC-looking file, and a macOS
    '._' companion file (hidden: never read)."""
    d = tmp_path / "photos"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "c.png"):
        Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(d / name)
    good = (d / "a.jpg").read_bytes()
    (d / "b_cut.jpg").write_bytes(good[: len(good) // 2])
    (d / "d_empty.png").write_bytes(b"")
    (d / "._a.jpg").write_bytes(b"\0\5\26\7 Mac OS X")
    return d


def test_an_unreadable_image_stops_before_the_model_loads(folder, tmp_path):
    code, out, err = predict("caption", "--model", tmp_path / "no-model", folder, "--out", tmp_path / "p.jsonl")
    assert code == 2 and out == "" and not (tmp_path / "p.jsonl").exists()
    assert "b_cut.jpg as an image: it is truncated" in err and "--on-error skip" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_skip_predicts_on_the_rest_and_lists_what_it_left_out(micro_export, folder, tmp_path):
    code, _, err = predict("caption", "--model", micro_export, folder, "--on-error", "skip",
                           "--out", tmp_path / "p.jsonl")
    assert code == 1, err
    records = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["image"] for r in records] == [str(folder / "a.jpg"), str(folder / "c.png")]
    listed = err[err.index("skipped 2 of 4 images"):].splitlines()
    assert listed[1].startswith(f"  {folder / 'b_cut.jpg'}: ") and "truncated" in listed[1]
    assert listed[2].startswith(f"  {folder / 'd_empty.png'}: ") and "empty (0 bytes" in listed[2]
    assert "._a.jpg" not in err


def test_skip_with_nothing_readable_is_an_error(micro_export, folder, tmp_path):
    code, _, err = predict("caption", "--model", micro_export, folder / "b_cut.jpg", folder / "d_empty.png",
                           "--on-error", "skip")
    assert code == 2 and "none of the 2 images could be read" in err


def test_a_large_picture_is_drawn_and_answered_in_its_own_pixels(micro_export, tmp_path):
    """1200 x 900 is read at 300 x 225 (four times the micro model's 64 px); records and --viz
    pictures are in the file's 1200 x 900 frame."""
    Image.new("RGB", (1200, 900), (90, 140, 200)).save(tmp_path / "wide.jpg")
    code, _, err = predict("detect", "--model", micro_export, tmp_path / "wide.jpg", "--out", tmp_path / "p.jsonl",
                           "--viz", tmp_path / "viz", "--option", "threshold=0")
    assert code == 0, err
    record = json.loads((tmp_path / "p.jsonl").read_text())
    assert (record["width"], record["height"]) == (1200, 900) and record["boxes"]
    assert all(0 <= b[0] <= b[2] <= 1200 and 0 <= b[1] <= b[3] <= 900 for b in record["boxes"])
    assert Image.open(record["viz_png"]).size == (1200, 900)
