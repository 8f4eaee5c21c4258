"""`unio demo`: the sheet and the metrics of one model on every task (a tiny untrained model, and
the shipped shapes-demo model)."""
import json

import pytest
from PIL import Image

from unio import cli

TASKS = {"caption", "vqa", "classify", "detect", "ground", "describe_region", "classify_region", "segment", "depth",
         "generate_image", "inpaint", "entail", "masked_image"}  # pairs, clips, retrieval: not in the shapes world
SHIPPED = TASKS - {"entail", "masked_image"}  # what shapes-demo was trained on


@pytest.fixture(scope="module")
def model_dir(micro_fast_export):
    return micro_fast_export


def test_demo_writes_sheet_and_metrics(model_dir, tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--model", str(model_dir), "--out", str(out), "--n", "2", "--seed", "1000"]) == 0
    printed = capsys.readouterr().out
    for task in TASKS:
        assert f"\n{task} " in printed or printed.startswith(f"{task} ")
    assert "truth (one example)" in printed and "map50" in printed and "wrote" in printed
    with Image.open(out / "demo.png") as sheet:
        assert sheet.mode == "RGB" and sheet.width >= 4 * 192 and sheet.height >= 4 * 192
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == TASKS | {"run"}
    assert metrics["run"]["data"] == "shapes:1000" and metrics["run"]["model"] == str(model_dir)
    assert metrics["caption"]["n"] == 2 and metrics["depth"]["n"] == 1  # image-output tasks get n // 5 (>= 1)
    assert isinstance(metrics["generate_image"]["consistency"], float)


def test_demo_shows_pairs_clips_and_retrieval(micro_tokenizers, tmp_path, capsys):
    """A model that reads several images and embeds: reason on the shapes world's pairs, the video
    tasks on its clips, retrieve on its scenes, all on one sheet and in one metrics file."""
    from conftest import write_micro_export
    model = write_micro_export(tmp_path / "m", micro_tokenizers, max_images=4, projection_dim=16)
    out = tmp_path / "demo"
    assert cli.main(["demo", "--model", str(model), "--out", str(out), "--n", "2", "--seed", "7"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    new = {"reason", "video_classify", "video_caption", "retrieve"}
    assert set(metrics) == TASKS | new | {"run"} and metrics["run"]["skipped_tasks"] == {}
    assert metrics["run"]["data_by_task"] == {"reason": "shapes-pairs:7", "video_classify": "shapes-clips:7",
                                              "video_caption": "shapes-clips:7"}
    assert metrics["reason"]["n"] == 2 and 0 <= metrics["reason"]["accuracy"] <= 1
    for task in new:
        assert f"\n{task} " in printed
    with Image.open(out / "demo.png") as sheet:
        assert sheet.height >= 5 * 192


def test_demo_without_the_shipped_model(monkeypatch, tmp_path, capsys):
    import unio.cli.demo
    monkeypatch.setattr(unio.cli.demo, "list_models", lambda: [])
    assert cli.main(["demo", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "shapes-demo model is not installed" in err and "unio demo --model DIR" in err
    assert "Traceback" not in err and not (tmp_path / "x").exists()


@pytest.mark.parametrize("argv, message", [
    (["--n", "0"], "--n must be a positive number"),
    (["--seed", "-3"], "--seed must be an integer >= 0"),
])
def test_demo_bad_arguments(model_dir, tmp_path, capsys, argv, message):
    assert cli.main(["demo", "--model", str(model_dir), "--out", str(tmp_path / "d"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_demo_out_is_a_file(model_dir, tmp_path, capsys):
    (tmp_path / "f").write_text("")
    assert cli.main(["demo", "--model", str(model_dir), "--out", str(tmp_path / "f")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_demo_missing_model_dir(tmp_path, capsys):
    assert cli.main(["demo", "--model", str(tmp_path / "none"), "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "neither an export directory nor a shipped model" in err and "Traceback" not in err


def test_shipped_demo_model(tmp_path, capsys):
    """The README's main command: the shipped model, found by name, every task, a sheet."""
    from unio.export import list_models, read_meta
    from unio.resources import data_path

    assert "shapes-demo" in list_models()
    meta = read_meta(data_path("models", "shapes-demo"))
    assert meta["trained"] and meta["step"] > 0 and set(meta["tasks"]) >= SHIPPED
    assert cli.main(["demo", "--out", str(tmp_path), "--n", "5"]) == 0
    assert (tmp_path / "demo.png").is_file()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) == SHIPPED | {"run"} and metrics["run"]["model"] == "shapes-demo"
